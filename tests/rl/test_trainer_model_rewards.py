"""The GRPO trainer with rewards computed by frozen models (a reward model and a judge) inside
its one compiled step, built from `config.model_rewards`."""

import os

import pytest
from flax import nnx

from r1 import configlib, testing
from r1.judge import data as judge_data
from r1.rl import trainer
from r1.rm import model as rm_model


@pytest.mark.slow
def test_trainer_runs_reward_model_and_judge_in_the_step(tmp_path):
    judge = judge_data.train_tiny_judge(
        judge_data.TrainJudgeConfig(steps=2, num_train=64, num_eval=8, batch_size=8)
    )
    judge_dir = str(tmp_path / "judge")
    judge_data.save_judge(judge, judge_dir)
    rm_dir = str(tmp_path / "rm")
    rm = rm_model.RewardModel(testing.tiny_dense_config(vocab_size=384), rngs=nnx.Rngs(0))
    rm_model.save(rm, rm_dir)

    config = configlib.load_config("configs/r1_zero.py:tiny")
    config.train.update(steps=1, checkpoint_every=1, samples_every=0)
    config.eval.every = 0
    config.rl.update(prompts_per_step=4, max_new_tokens=24)
    config.model_rewards = (
        ("reward_model", 0.1, {"path": rm_dir, "region": "summary"}),
        ("judge", 0.5, {"path": judge_dir}),
    )
    metrics = trainer.train(config, str(tmp_path / "run"))
    for key in ("reward/reward_model", "reward/judge", "reward/judge/unparseable"):
        assert key in metrics, key
    assert 0.0 <= metrics["reward/judge"] <= 1.0
    assert os.path.exists(tmp_path / "run" / "metrics.jsonl")

    # R1 stage 4: general prompts mixed in, scored by the reward model only.
    general = tmp_path / "general.jsonl"
    general.write_text("".join(f'{{"prompt": "Say thanks {i}."}}\n' for i in range(8)))
    config.data.update(general_files=str(general), general_fraction=0.5, buckets=(32, 64))
    config.model_rewards = (
        ("reward_model", 1.0, {"path": rm_dir, "region": "whole", "rows": "general"}),
    )
    metrics = trainer.train(config, str(tmp_path / "run_general"))
    assert "reward/reward_model" in metrics

    config.model_rewards = (("reward_model", 1.0, {"path": str(tmp_path / "missing")}),)
    with pytest.raises(ValueError, match=r"model_rewards\[0\].*not a directory"):
        trainer.train(config, str(tmp_path / "run2"))
