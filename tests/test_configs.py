"""Every variant of every config file parses, validates and builds abstractly (no allocation);
unknown fields and wrong types fail by name; command-line overrides reach the model."""

from __future__ import annotations

import math
import os
import pathlib
import re
import subprocess
import sys

import jax
import ml_collections
import pytest
from absl import flags
from flax import nnx
from ml_collections import config_flags

from r1 import configlib
from r1.models.config import ModelConfig
from r1.models.transformer import Transformer
from r1.sharding import MeshConfig

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG_FILES = sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "configs").glob("*.py") if p.name != "__init__.py"
)
MODELS = ROOT / "configs" / "models.py"
ALL_VARIANTS = [
    f"{path}:{variant}" for path in CONFIG_FILES for variant in configlib.variants(str(ROOT / path))
]


def _abstract_model(cfg: ModelConfig) -> Transformer:
    return nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))


def _num_params(model: nnx.Module, exclude: tuple[str, ...] = ()) -> int:
    total = 0
    for path, value in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if any(part in exclude for part in path):
            continue
        total += math.prod(value.get_value().shape)
    return total


def test_config_files_found():
    assert "configs/models.py" in CONFIG_FILES
    assert len(ALL_VARIANTS) >= 10


# Parameter totals: published (Hugging Face safetensors metadata / model cards) where exact, or
# (approximate total, relative tolerance). DeepSeek-V3's 671B excludes the MTP depth (about 11.5B
# of its own; the hub's 685B also counts the MTP's copies of the embedding and head, which r1
# shares with the main model).
EXPECTED_PARAMS = {
    "configs/models.py:qwen2_5_7b": 7_615_616_512,
    "configs/models.py:qwen2_5_1_5b": 1_543_714_304,
    "configs/models.py:qwen2_5_0_5b": 494_032_768,
    "configs/models.py:r1_distill_qwen_1_5b": 1_777_088_000,
    "configs/models.py:llama3_1_8b": 8_030_261_248,
    "configs/models.py:r1_distill_qwen_7b": 7_615_616_512,
    "configs/models.py:qwen2_5_14b": 14_770_033_664,
    "configs/models.py:qwen2_5_32b": 32_763_876_352,
    "configs/models.py:llama3_3_70b": 70_553_706_496,
    "configs/models.py:deepseek_v2_lite": (15.7e9, 0.01),
    "configs/models.py:deepseek_v3": (671e9, 0.005),
}


@pytest.mark.parametrize("spec", ALL_VARIANTS)
def test_variant_parses_and_builds(spec):
    config = configlib.load_config(str(ROOT / spec))
    assert config.is_locked
    extra = tuple(k for k in config if k not in configlib.COMMON_SECTIONS)
    experiment = configlib.parse_experiment(config, extra_sections=extra)
    cfg = experiment.model
    assert isinstance(cfg, ModelConfig) and isinstance(experiment.mesh, MeshConfig)
    # The config holds exactly ModelConfig's fields, so every field is overridable by flag.
    assert set(config.model) == set(cfg.to_dict())
    model = _abstract_model(cfg)
    leaves = jax.tree.leaves(nnx.state(model))
    assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    out = jax.eval_shape(lambda m, t: m(t), model, jax.ShapeDtypeStruct((2, 8), "int32"))
    assert out.shape == (2, 8, cfg.vocab_size)
    if spec in EXPECTED_PARAMS:
        expected = EXPECTED_PARAMS[spec]
        count = _num_params(model, exclude=("mtp",))
        if isinstance(expected, tuple):
            target, tolerance = expected
            assert abs(count - target) / target < tolerance, f"{count:,} parameters"
        else:
            assert count == expected


def test_qwen2_5_7b_parameter_count():
    """The acceptance check on its own: 7,615,616,512 (the published "7.6B"), no allocation."""
    cfg = configlib.model_config(configlib.load_config(str(ROOT / "configs/models.py:qwen2_5_7b")))
    assert _num_params(_abstract_model(cfg)) == 7_615_616_512


# ----------------------------------------------------------------------------------- errors
def _unlocked_copy(spec: str) -> ml_collections.ConfigDict:
    config = configlib.load_config(str(ROOT / spec))
    return ml_collections.ConfigDict(config.to_dict())


def test_unknown_model_field_is_named():
    config = _unlocked_copy("configs/models.py:qwen2_tiny")
    config.model.not_a_field = 3
    with pytest.raises(ValueError, match=r"config\.model.*not_a_field"):
        configlib.model_config(config)


def test_wrong_type_is_named():
    values = _unlocked_copy("configs/models.py:qwen2_tiny").to_dict()
    values["model"]["num_layers"] = "four"
    with pytest.raises(TypeError, match=r"config\.model\.num_layers"):
        configlib.model_config(values)


def test_wrong_nested_type_is_named():
    values = _unlocked_copy("configs/models.py:llama_tiny").to_dict()
    values["model"]["rope_scaling"]["factor"] = "eight"
    with pytest.raises(TypeError, match=r"config\.model\.rope_scaling\.factor"):
        configlib.model_config(values)


def test_invalid_value_is_named():
    values = _unlocked_copy("configs/models.py:qwen2_tiny").to_dict()
    values["model"]["num_kv_heads"] = 3
    with pytest.raises(ValueError, match=r"config\.model.*num_kv_heads"):
        configlib.model_config(values)


def test_unknown_mesh_field_and_section_are_named():
    config = _unlocked_copy("configs/models.py:qwen2_tiny")
    config.mesh.pipeline = 2
    with pytest.raises(ValueError, match=r"config\.mesh.*pipeline"):
        configlib.mesh_config(config)
    config = _unlocked_copy("configs/models.py:qwen2_tiny")
    config.trainer = ml_collections.ConfigDict({"steps": 1})
    with pytest.raises(ValueError, match=r"trainer"):
        configlib.parse_experiment(config)


def test_mesh_must_fit_devices():
    config = _unlocked_copy("configs/models.py:qwen2_tiny")
    config.mesh.fsdp = 3
    with pytest.raises(ValueError, match=r"mesh"):
        configlib.parse_experiment(config, num_devices=8)


def test_unknown_variant_and_missing_file():
    with pytest.raises(ValueError, match=r"qwen2_tiny"):
        configlib.load_config(str(ROOT / "configs/models.py:no_such_variant"))
    with pytest.raises(FileNotFoundError, match=r"nope\.py"):
        configlib.load_config("configs/nope.py:tiny")


def test_load_config_relative_to_repo_root(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    config = configlib.load_config("configs/models.py:qwen2_tiny")
    assert config.model.num_layers == 4


# --------------------------------------------------------------------------- command line
def _parse(argv: list[str]) -> ml_collections.ConfigDict:
    values = flags.FlagValues()
    argv = ["prog", *argv]
    config_flags.DEFINE_config_file(
        "config", None, "config", flag_values=values, lock_config=True, sys_argv=argv
    )
    values(argv)
    return values.config


def test_command_line_overrides():
    config = _parse(
        [
            f"--config={MODELS}:llama_tiny",
            "--config.model.num_layers=1",
            "--config.model.rope_scaling.factor=4.0",
            "--config.mesh.tensor=2",
        ]
    )
    cfg = configlib.model_config(config)
    assert cfg.num_layers == 1 and cfg.rope_scaling.factor == 4.0
    assert configlib.mesh_config(config).tensor == 2


def test_command_line_sets_none_placeholder():
    config = _parse([f"--config={MODELS}:deepseek_v2_lite", "--config.model.q_lora_rank=64"])
    assert configlib.model_config(config).q_lora_rank == 64


def test_command_line_rejects_unknown_field():
    # ml_collections names the missing key (AttributeError: 'not_a_field') before r1 sees it.
    with pytest.raises((AttributeError, KeyError), match=r"not_a_field"):
        _parse([f"--config={MODELS}:qwen2_tiny", "--config.model.not_a_field=1"])


def test_command_line_rejects_wrong_type():
    with pytest.raises(flags.IllegalFlagValueError, match=r"config\.model\.num_layers"):
        _parse([f"--config={MODELS}:qwen2_tiny", "--config.model.num_layers=x"])


def test_forward_job_runs_with_overrides():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [
            sys.executable, "-m", "experiments.forward",
            "--config=configs/models.py:qwen2_tiny",
            "--config.model.num_layers=1",
            "--steps=1", "--batch_size=8", "--seq_len=16",
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert "parameters: 311,936" in result.stdout  # 1 layer of qwen2_tiny, tied embeddings
    assert re.fullmatch(r"forward_tokens_per_sec: \d+(\.\d+)?", lines[-1]), lines[-1]
