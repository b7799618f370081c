"""configs/r1.py:mini's data and the pipeline's stage measurements (no model runs here)."""

from __future__ import annotations

import json
import os
import pathlib

import ml_collections
import numpy as np
import pytest

from r1 import configlib, rewards
from r1.data import procedural, templates
from r1.recipes import comparisons, pipeline_configs, pipeline_data, stage_eval

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _mini():
    return configlib.load_config(str(ROOT / "configs/r1.py:mini"))


def test_eval_split_is_disjoint_from_every_training_source():
    config = _mini()
    task = procedural.make_task(str(config.task.name), **dict(config.task.kwargs))
    seed = int(config.seed)
    held_out = procedural.fixed_set(
        task, int(config.eval.seed), int(config.eval.per_difficulty), split=str(config.eval.split)
    )
    assert len(held_out) >= 200 and int(config.eval.eval.num_samples) >= 4
    assert len({r["difficulty"] for r in held_out}) == len(task.difficulties())
    eval_prompts = {r["prompt"] for r in held_out}
    # In-training evaluation of the GRPO stages (r1.train.heldout: seed + 1, test split).
    eval_prompts |= {
        r["prompt"]
        for r in procedural.fixed_set(task, seed + 1, int(config.reasoning_rl.eval.per_difficulty))
    }
    cold = pipeline_data.cold_start_rows(
        task,
        int(config.cold_start.num_examples),
        seed,
        second_language=str(config.cold_start.second_language),
        mixing=float(config.cold_start.mixing),
        hasty=float(config.cold_start.hasty),
    )
    rl_source = procedural.ProceduralSource(task, seed, split="train")
    rl_rows = [
        rl_source[i]
        for i in range(
            max(
                int(s.train.steps) * int(s.rl.prompts_per_step)
                for s in (config.reasoning_rl, config.all_scenarios_rl)
            )
        )
    ]
    rejection = [
        procedural.generate(task, seed, i, str(config.rejection.data.split))
        for i in range(int(config.rejection.data.num_prompts))
    ]
    sources = {
        "cold start": {r["prompt"] for r in cold},
        "GRPO stages": {r["prompt"] for r in rl_rows},
        "rejection sampling": {r["prompt"] for r in rejection},
    }
    for name, prompts in sources.items():
        assert prompts and not prompts & eval_prompts, name
    general_train = {
        r["prompt"] for r in pipeline_data.general_rows(int(config.rejection.general_examples), 0)
    }
    general_eval = set(pipeline_data.general_prompts(int(config.eval.general_prompts)))
    assert len(general_eval) == int(config.eval.general_prompts)
    assert general_train and not general_train & general_eval


def test_general_requests_split_and_bounds():
    train, test = ({r[0] for r in pipeline_data.general_requests(s)} for s in procedural.SPLITS)
    assert not train & test
    assert len(train) + len(test) == len(pipeline_data.GENERAL_REQUESTS) * len(
        pipeline_data.GENERAL_NAMES
    )
    with pytest.raises(ValueError, match="general_prompts"):
        pipeline_data.general_prompts(len(test) + 1)
    with pytest.raises(ValueError, match="split"):
        pipeline_data.general_requests("dev")


def test_general_pairs_prefer_the_polite_on_topic_reply():
    pairs = pipeline_data.general_pairs(30, seed=0, split="train")
    assert pairs == pipeline_data.general_pairs(30, seed=0, split="train")
    train = {r[0] for r in pipeline_data.general_requests("train")}
    assert {p["prompt"] for p in pairs} <= train
    held_out = pipeline_data.general_pairs(6, seed=0, split="test")
    assert not {p["prompt"] for p in held_out} & train
    for i, pair in enumerate(pairs):
        assert stage_eval.polite(pair["chosen"]) and not stage_eval.polite(pair["rejected"])
        assert pair["chosen"] != pair["rejected"]
        if i % 3 == 1:  # an off-topic sum
            assert "+" in pair["rejected"] and "+" not in pair["chosen"]
    with pytest.raises(ValueError, match="general_pairs"):
        pipeline_data.general_pairs(0, seed=0, split="train")


def test_cold_start_mixes_the_second_language_at_the_requested_rate():
    task = procedural.make_task("add", min_terms=2, max_terms=5, min_digits=1, max_digits=2)
    english = pipeline_data.cold_start_rows(task, 64, seed=0)
    mixed = pipeline_data.cold_start_rows(task, 400, seed=0, second_language="ru", mixing=0.5)
    foreign = pipeline_data.cold_start_rows(task, 32, seed=0, second_language="ru", mixing=1.0)
    completions = [r["response"] for r in mixed]
    prompts = [templates.render_r1_zero(r["prompt"]) for r in mixed]
    assert list(rewards.get("format_strict")(prompts, completions)) == [1.0] * 400
    answers = [r["answer"] for r in mixed]
    assert list(rewards.get("arithmetic")(prompts, completions, target=answers)) == [1.0] * 400
    language = rewards.get("language")
    assert set(language([""] * 64, [r["response"] for r in english], language="en")) == {1.0}
    assert max(language([""] * 32, [r["response"] for r in foreign], language="en")) == 0.0
    # Each of the two phrases is foreign with probability 0.5: a quarter of the traces are
    # wholly English, a quarter wholly foreign.
    shares = np.asarray(language(prompts, completions, language="en"))
    assert 0.15 < np.mean(shares == 1.0) < 0.35 and 0.15 < np.mean(shares == 0.0) < 0.35
    assert 0.4 < shares.mean() < 0.6
    assert all(stage_eval.is_readable(c) for c in completions)
    with pytest.raises(ValueError, match="second_language"):
        pipeline_data.cold_start_rows(task, 4, seed=0, second_language="xx", mixing=0.5)
    with pytest.raises(ValueError, match="mixing"):
        pipeline_data.cold_start_rows(task, 4, seed=0, mixing=0.5)


def test_hasty_cold_start_traces_write_the_sum_in_one_step():
    task = procedural.make_task("add", min_terms=3, max_terms=5, min_digits=1, max_digits=2)
    rows = pipeline_data.cold_start_rows(task, 300, seed=1, hasty=0.5)
    careful = pipeline_data.cold_start_rows(task, 300, seed=1)
    hasty = [r for r in rows if r["hasty"]]
    assert 0.4 < len(hasty) / len(rows) < 0.6 and not any(r["hasty"] for r in careful)
    for row, same in zip(rows, careful):
        assert row["prompt"] == same["prompt"] and row["answer"] == same["answer"]
        if row["hasty"]:
            assert f"{row['prompt']}={row['answer']}" in row["reasoning"]
            assert row["reasoning"].count("=") == 1
        else:
            assert row["reasoning"] == same["reasoning"]
    prompts = [templates.render_r1_zero(r["prompt"]) for r in rows]
    completions = [r["response"] for r in rows]
    answers = [r["answer"] for r in rows]
    assert list(rewards.get("arithmetic")(prompts, completions, target=answers)) == [1.0] * 300
    countdown = procedural.make_task("countdown")
    with pytest.raises(ValueError, match="hasty"):
        pipeline_data.cold_start_rows(countdown, 4, seed=0, hasty=0.5)
    with pytest.raises(ValueError, match="hasty"):
        pipeline_data.cold_start_rows(task, 4, seed=0, hasty=1.5)


def test_language_reward_on_a_mixed_completion_gives_the_english_share():
    # Words: Step, by, step (Latin) and Итак, сумма (Cyrillic); digits are not words.
    completion = " <think>Step by step: 3+4=7, 7+5=12. Итак сумма 12.</think> <answer>12</answer>"
    (share,) = rewards.get("language")([""], [completion], language="en")
    assert share == pytest.approx(3 / 5)
    assert stage_eval.language_consistency([completion], "en") == {
        "language_consistency": pytest.approx(0.6),
        "cot_with_words": 1.0,
    }
    no_words = " <think>3+4=7</think> <answer>7</answer>"
    out = stage_eval.language_consistency([completion, no_words], "en")
    assert out["language_consistency"] == pytest.approx(0.6) and out["cot_with_words"] == 0.5
    assert stage_eval.language_consistency([no_words], "en") == {
        "language_consistency": None,
        "cot_with_words": 0.0,
    }


def test_pass_interval_matches_a_numpy_reference():
    rng = np.random.default_rng(0)
    correct = rng.random((250, 4)) < np.linspace(0.1, 0.9, 250)[:, None]
    rates = correct.mean(axis=1)
    half = 1.959964 * rates.std(ddof=1) / np.sqrt(250)
    low, high = stage_eval.pass_interval(correct)
    assert low == pytest.approx(rates.mean() - half) and high == pytest.approx(rates.mean() + half)
    assert stage_eval.pass_interval(np.ones((5, 4))) == (1.0, 1.0)
    assert stage_eval.pass_interval([[1, 0]]) == (0.5, 0.5)
    with pytest.raises(ValueError, match="no problems"):
        stage_eval.pass_interval(np.zeros((0, 4)))


def test_readable_pattern_and_polite_summaries():
    readable = " <think>Add them: 1+2=3. So 3.</think> <answer>3</answer>"
    assert stage_eval.is_readable(readable)
    assert not stage_eval.is_readable("<think></think> <answer>3</answer>")  # no reasoning
    assert not stage_eval.is_readable("<think>1+2=3</think> <answer> </answer>")  # no summary
    assert not stage_eval.is_readable("1+2=3 <answer>3</answer>")
    assert stage_eval.readable_share([readable, "3"]) == 0.5
    assert stage_eval.polite("<think>ok</think> <answer>Hello there! Glad to help.</answer>")
    assert not stage_eval.polite("<think>Glad to help.</think> <answer>Whatever.</answer>")
    assert stage_eval.polite("<think>x</think> Hi. Kind regards.")


def test_completion_metrics_and_the_stage_table():
    result = {
        "num_samples": 2,
        "num_problems": 2,
        "overall": {"pass@1": 0.75, "cons@2": 1.0, "response_length": 20.0, "truncated": 0.0},
        "tasks": {"add": {"by_difficulty": {"2": {"pass@1": 1.0}, "3": {"pass@1": 0.5}}}},
        "problems": [
            {"num_correct": 2, "completions": [" <think>So 3.</think> <answer>3</answer>"] * 2},
            {"num_correct": 1, "completions": ["<think>Итак 5.</think> <answer>5</answer>", "5"]},
        ],
    }
    extra = stage_eval.completion_metrics(result, "en")
    assert extra["readable_format"] == 0.75
    assert extra["language_consistency"] == pytest.approx(2 / 3)  # 1, 1, 0; "5" has no words
    assert extra["ci95_pass@1"][0] < 0.75 < extra["ci95_pass@1"][1]
    result["overall"].update(extra)
    row = stage_eval.stage_row(result)
    assert row["pass@1_by_difficulty"] == {"2": 1.0, "3": 0.5} and row["num_problems"] == 2
    table = stage_eval.summary_table({"1_cold_start": row})
    header, rule, line = table.strip().splitlines()
    assert header.count("|") == rule.count("|") == line.count("|")
    assert "| 1_cold_start | 2 | 0.750 |" in line and "| 1.000 |" in line and "| - |" in line
    with pytest.raises(ValueError, match="kept no completions"):
        stage_eval.completion_metrics({**result, "problems": [{"num_correct": 0}]}, "en")


def test_ablations_drop_only_the_language_term(tmp_path):
    config = _mini()
    cfg = comparisons.ablation_config(config, "/ckpt")
    names = [t[0] for t in cfg.rewards]
    assert "language" not in names and names == [
        t[0] for t in config.reasoning_rl.rewards if t[0] != "language"
    ]
    assert cfg.init.hf_path == "/ckpt" and cfg.train.steps == config.reasoning_rl.train.steps
    per_domain = {"math": (("math", 1.0, {}), ("language", 1.0, {"language": "en"}))}
    assert comparisons.without_language(per_domain) == {"math": (("math", 1.0, {}),)}
    with pytest.raises(ValueError, match="nothing is left"):
        comparisons.without_language((("language", 1.0, {}),))


def test_r1_vs_zero_plot_reads_both_runs(tmp_path):
    runs = {}
    for label, offset in (("R1", 0.5), ("R1-Zero", 0.1)):
        run = tmp_path / label
        run.mkdir()
        rows = [
            {"step": s, "eval/accuracy": offset + 0.01 * s, "eval/response_length/mean": 50 + s}
            for s in (0, 10, 20)
        ]
        rows.append({"step": 21, "loss": 0.1})
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        runs[label] = str(run)
    assert comparisons.curve(os.path.join(runs["R1"], "metrics.jsonl"), "eval/accuracy") == [
        (0, 0.5),
        (10, 0.6),
        (20, 0.7),
    ]
    out = tmp_path / "r1_vs_zero.png"
    comparisons.plot_runs(runs, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_general_scores_are_the_same_on_a_mesh_and_unsharded(tmp_path):
    import jax
    from flax import nnx

    from r1 import sharding
    from r1.evaluation.runner import EvalConfig
    from r1.rm import config as rm_config
    from r1.rm import model as rm_model
    from r1.train import build

    config = configlib.load_config(str(ROOT / "configs/r1.py:tiny"))
    rm_cfg = rm_config.parse(
        configlib.load_config(str(ROOT / "configs/reward_model.py:tiny")),
        num_devices=jax.device_count(),
    ).model
    rm_model.save(rm_model.RewardModel(rm_cfg, rngs=nnx.Rngs(3)), str(tmp_path / "rm"))
    tokenizer = build.build_tokenizer("demo")
    prompts = pipeline_data.general_prompts(3)
    eval_config = EvalConfig(num_samples=2, max_new_tokens=24, batch_size=2, bucket_multiple=16)
    base = str(ROOT / "assets/demo_base")
    policy_cfg = configlib.parse_experiment(
        ml_collections.ConfigDict(pipeline_configs.common_sections(config, base)),
        num_devices=jax.device_count(),
        extra_sections=("init", "tokenizer"),
    ).model
    one_device = sharding.make_mesh(sharding.MeshConfig(fsdp=1), jax.devices()[:1])
    results = []
    for mesh in (None, sharding.make_mesh()):
        target = mesh if mesh is not None else one_device
        with sharding.use_mesh(target):
            policy = build.build_policy(base, policy_cfg, target, 0, tokenizer)
        results.append(
            stage_eval.general_scores(
                policy,
                tokenizer,
                prompts,
                eval_config,
                str(tmp_path / "rm"),
                region="summary",
                mesh=mesh,
                batch_size=4,
            )  # fmt: skip
        )
    local, sharded = results
    assert local["general_prompts"] == 3 and len(local["general_completions"]) == 6
    assert [c["completion"] for c in local["general_completions"]] == [
        c["completion"] for c in sharded["general_completions"]
    ]
    np.testing.assert_allclose(
        [c["score"] for c in sharded["general_completions"]],
        [c["score"] for c in local["general_completions"]],
        rtol=1e-4,
        atol=1e-4,
    )
    assert local["general_rm_score"] == pytest.approx(
        np.mean([c["score"] for c in local["general_completions"]])
    )
    assert 0.0 <= sharded["general_polite"] <= 1.0
