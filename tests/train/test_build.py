"""The policy a trainer starts from: with `init.hf_path` the checkpoint is the model (its
architecture from its config.json, the run's execution fields on top), never the preset."""

import logging

import ml_collections
import pytest
from flax import nnx

from r1 import configlib, testing
from r1.models import hf
from r1.models.transformer import Transformer
from r1.rl import config as rl_config
from r1.train import build


def _checkpoint(tmp_path, **overrides):
    cfg = testing.tiny_dense_config(**{"vocab_size": 384, **overrides})
    path = str(tmp_path / "ckpt")
    hf.save(Transformer(cfg, rngs=nnx.Rngs(0)), cfg, path)
    return cfg, path


def _experiment(path):
    config = ml_collections.ConfigDict(
        configlib.load_config("configs/r1_zero.py:tiny").to_dict()
    )
    config.init.hf_path = path
    config.model.remat_policy = "full"  # an execution field: the run's choice is kept
    return rl_config.parse(config)


def test_the_checkpoint_is_the_model_and_the_preset_is_not_used(tmp_path, caplog):
    cfg, path = _checkpoint(tmp_path)
    exp = _experiment(path)
    assert exp.model.family == "deepseek_v3"  # the demo preset, unlike the checkpoint
    with caplog.at_level(logging.WARNING):
        run = build.start_policy(exp, total_steps=1)
    assert run.model.family == "qwen2" and run.model.hidden_size == cfg.hidden_size
    assert run.model.num_layers == cfg.num_layers and run.model.remat_policy == "full"
    assert "differs from the checkpoint" in caplog.text and "family" in caplog.text
    differ = build.architecture_differences(exp.model, run.model)
    assert "hidden_size" in differ and "remat_policy" not in differ


def test_a_tokenizer_larger_than_the_checkpoint_vocabulary_fails_naming_both(tmp_path):
    _, path = _checkpoint(tmp_path / "small", vocab_size=200)
    exp = _experiment(path)
    with pytest.raises(ValueError, match=rf"checkpoint {path}: vocab_size=200 .* 268 ids"):
        build.start_policy(exp, total_steps=1)
