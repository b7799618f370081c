"""The typed boundary of the trainers: every trainer config parses into frozen sections, the
GRPO settings become the step's `GRPOConfig` as before, errors name the field the user typed,
and `make_optimizer` is bitwise the optimizers the trainers built before."""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from absl import flags
from ml_collections import config_flags

from r1 import configlib
from r1.recipes import distill, pipeline_configs
from r1.rl import config as rl_config
from r1.rl.grpo import GRPOLossConfig
from r1.rl.step import GRPOConfig
from r1.rm import config as rm_config
from r1.sampling.sampler import SamplingConfig
from r1.sft import config as sft_config
from r1.train.config import OptimizerSection, TrainSection, make_optimizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
PARSERS = {
    "configs/r1_zero.py": rl_config.parse,
    "configs/sft.py": sft_config.parse,
    "configs/reward_model.py": rm_config.parse,
}
DIRECT = [(path, variant) for path in PARSERS for variant in configlib.variants(str(ROOT / path))]


def _load(spec: str) -> ml_collections.ConfigDict:
    """An unlocked copy of a config file's variant."""
    return ml_collections.ConfigDict(configlib.load_config(str(ROOT / spec)).to_dict())


def _flags(argv: list[str]) -> ml_collections.ConfigDict:
    """The config as `--config=... --config.x=...` gives it to an entry point."""
    values = flags.FlagValues()
    argv = ["prog", *argv]
    config_flags.DEFINE_config_file(
        "config", None, "config", flag_values=values, lock_config=True, sys_argv=argv
    )
    values(argv)
    return values.config


# ----------------------------------------------------------------------------- every variant
# Variants whose docstring command sets a field the file leaves empty.
COMMAND_LINE = {
    "configs/sft.py:qwen2_5_1_5b_traces": ("data", "files", ("/data/traces.jsonl",)),
    "configs/r1_zero.py:qwen2_5_1_5b_gsm8k": ("data", "files", "/data/gsm8k/train.jsonl"),
    "configs/r1_zero.py:qwen2_5_7b_math": ("data", "files", "/data/math/train.jsonl"),
    "configs/r1_zero.py:deepseek_v3": ("data", "files", "/data/math.jsonl,/data/code.jsonl"),
}


@pytest.mark.parametrize("path,variant", DIRECT)
def test_config_file_variant_parses(path, variant):
    config = configlib.load_config(str(ROOT / f"{path}:{variant}"))
    if f"{path}:{variant}" in COMMAND_LINE:
        section, field, value = COMMAND_LINE[f"{path}:{variant}"]
        with pytest.raises(ValueError, match=rf"config\.{section}.*{field}"):
            PARSERS[path](config)
        config = _load(f"{path}:{variant}")
        config[section][field] = value
    exp = PARSERS[path](config)
    assert dataclasses.is_dataclass(exp)
    for field in dataclasses.fields(exp):
        value = getattr(exp, field.name)
        if dataclasses.is_dataclass(value):
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(value, dataclasses.fields(value)[0].name, None)
    if variant == "tiny":
        PARSERS[path](config, num_devices=8)


def test_per_domain_rewards_mixture_and_domains_from_the_command_line():
    config = _flags(
        [
            "--config=configs/r1_zero.py:qwen2_5_1_5b_gsm8k",
            "--config.data.files=/d/math.jsonl,/d/code.jsonl",
            "--config.data.layout=gsm8k,mbpp",
            "--config.data.mixture=0.6,0.4",
            "--config.data.domains=,python",
            "--config.rewards.code=(('code', 1.0, {'all_or_nothing': True}),)",
        ]
    )
    exp = rl_config.parse(config)
    assert exp.data.mixture_weights == (0.6, 0.4) and exp.data.domains == ",python"
    terms = {t.label: t for t in exp.rewards.terms}
    assert set(terms) == {"math", "format_strict", "code"}
    assert terms["math"].rows == "domain:math" and terms["code"].rows == "domain:code"
    assert terms["code"].kwargs == {"all_or_nothing": True}
    assert exp.rl.accuracy_reward == "math,code"


@pytest.mark.parametrize(
    "field, value, pattern",
    [
        ("data.mixture", "0.5", r"config\.data\.mixture: 1 weights for 2 files"),
        ("data.mixture", "0.5,x", r"config\.data\.mixture: expected comma-separated numbers"),
        ("data.mixture", "0,0", r"config\.data\.mixture: weights must be"),
        ("data.domains", "a,b,c", r"config\.data\.domains: 3 items"),
        ("data.layout", "gsm8k,math,mbpp", r"config\.data\.layout: 3 items"),
        ("rewards", {"math": (("nope", 1.0, {}),)}, r"config\.rewards\.math.*nope"),
        ("rl.accuracy_reward", "math,judge", r"config\.rl\.accuracy_reward: 'judge'"),
    ],
)
def test_data_and_per_domain_reward_errors_name_the_field(field, value, pattern):
    config = _load("configs/r1_zero.py:qwen2_5_1_5b_gsm8k")
    config.data.files = "/d/a.jsonl,/d/b.jsonl"
    section, name = field.split(".") if "." in field else (None, field)
    if section is None:
        del config[name]
        config[name] = value
    else:
        config[section][name] = value
    with pytest.raises(ValueError, match=pattern):
        rl_config.parse(config)


@pytest.mark.parametrize("variant", configlib.variants(str(ROOT / "configs/r1.py")))
def test_pipeline_stage_configs_parse(variant):
    """The four-stage pipeline's SFT, GRPO and reward-model sub-configs (configs/r1.py)."""
    config = configlib.load_config(str(ROOT / f"configs/r1.py:{variant}"))
    for section in (config.cold_start, config.sft):
        exp = sft_config.parse(
            pipeline_configs.sft_config(config, section, "/ckpt", ["/d/a.jsonl"])
        )
        assert exp.data.files == ("/d/a.jsonl",) and exp.train.export
    reasoning = rl_config.parse(
        pipeline_configs.rl_config(config, config.reasoning_rl, "/s1/export")
    )
    assert reasoning.init.hf_path == "/s1/export"
    if variant in ("tiny", "mini"):  # the procedural task
        assert reasoning.rl.accuracy_reward == "arithmetic_tokens" and not reasoning.data.files
    else:  # reasoning files scored per domain, with language consistency
        assert reasoning.rl.accuracy_reward == "math,code" and reasoning.data.files
        labels = {t.label for t in reasoning.rewards.terms}
        assert {"math", "code", "math.language", "code.language"} <= labels
    stage4 = pipeline_configs.rl_config(config, config.all_scenarios_rl, "/s3/export", steps=3)
    stage4.data.update(general_files="/g.jsonl", general_fraction=0.25)
    exp = rl_config.parse(stage4)
    assert exp.rl.temperature == 0.7 and exp.train.steps == 3
    assert exp.data.general_fraction == 0.25
    rm = rm_config.parse(pipeline_configs.reward_model_config(config))
    assert rm.rm.region == "summary"


@pytest.mark.parametrize("variant", configlib.variants(str(ROOT / "configs/distill.py")))
def test_distill_sft_config_parses(variant):
    config = _load(f"configs/distill.py:{variant}")
    if config.student.tokenizer.kind == "hf" and not config.student.tokenizer.path:
        config.student.tokenizer.path = "/ckpt/student"  # as the docstring's command sets
    exp = sft_config.parse(distill.sft_config(config, "/w/traces/sft.jsonl"))
    assert exp.data.source == "files" and exp.train.export


# ----------------------------------------------------------------------------- the rl section
def test_rl_section_is_generated_from_the_step_dataclasses():
    names = {f.name for f in dataclasses.fields(rl_config.RLSection)}
    grpo = {f.name for f in dataclasses.fields(GRPOConfig)} - {"sampling", "loss"}
    loss = {f.name for f in dataclasses.fields(GRPOLossConfig)} - {"max_length"}
    assert (grpo - {"advantage_method"}) | {"advantage"} <= names
    assert loss <= names
    assert {"max_new_tokens", "temperature", "top_p", "top_k", "unstack_layers"} <= names
    assert {"prompts_per_step", "dual_clip", "std_ddof"} <= names
    assert not names & {"num_samples", "eos_ids", "pad_id", "max_length", "advantage_method"}
    # Config files build their rl section from it: every field is there to override.
    for spec in ("configs/r1_zero.py:tiny", "configs/r1_zero.py:deepseek_v3"):
        assert set(configlib.load_config(str(ROOT / spec)).rl) == names
    assert set(configlib.load_config(str(ROOT / "configs/r1.py:tiny")).reasoning_rl.rl) == names


@pytest.mark.parametrize("variant", ["tiny", "qwen2_5_1_5b_harmlessness"])
def test_rm_sections_are_generated_from_their_dataclasses(variant):
    config = configlib.load_config(str(ROOT / f"configs/reward_model.py:{variant}"))
    for name, cls in (
        ("data", rm_config.DataSection),
        ("rm", rm_config.RMSection),
        ("train", rm_config.RMTrainSection),
        ("eval", rm_config.RMEvalSection),
        ("optimizer", OptimizerSection),
    ):
        assert set(config[name]) == {f.name for f in dataclasses.fields(cls)}, name
    assert set(config.data.synthetic) == {"rule", "num_train", "num_eval"}
    config = _flags(
        [
            f"--config={ROOT}/configs/reward_model.py:{variant}",
            "--config.rm.use_margin=True",
            "--config.data.synthetic.num_train=64",
        ]
    )
    exp = rm_config.parse(config)
    assert exp.rm.use_margin and exp.data.synthetic.num_train == 64


def test_grpo_config_of_r1_zero_tiny():
    """What `grpo_config_from` built for configs/r1_zero.py:tiny, written out by hand."""
    exp = rl_config.parse(configlib.load_config(str(ROOT / "configs/r1_zero.py:tiny")))
    expected = GRPOConfig(
        group_size=8,
        sampling=SamplingConfig(
            max_new_tokens=112,
            num_samples=8,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            eos_ids=(3,),
            pad_id=0,
            unstack_layers=True,
        ),
        loss=GRPOLossConfig(
            eps_low=0.2,
            eps_high=0.28,
            beta=0.0,
            ratio_level="token",
            aggregation="sequence_mean",
            max_length=112,
            mask_truncated=False,
            drop_zero_variance_groups=False,
        ),
        advantage_method="std",
        num_iterations=1,
        num_minibatches=1,
        num_microbatches=1,
        ref_update_every=0,
        accuracy_reward="arithmetic_tokens",
    )
    assert exp.grpo_config(eos_id=3, pad_id=0) == expected
    assert exp.sampling_config(eos_id=3, pad_id=0) == expected.sampling
    assert exp.rl.prompts_per_step == 16 and exp.data.buckets == (32, 48)
    assert [(t.name, t.weight, dict(t.kwargs), t.kind) for t in exp.rewards.terms] == [
        ("arithmetic_tokens", 1.0, {}, "token"),
        ("format_strict_tokens", 0.1, {}, "token"),
    ]
    assert exp.model_rewards == () and exp.language == "en"
    assert exp.train.samples_every == 10 and exp.eval.per_difficulty == 16


def test_grpo_config_of_deepseek_v3():
    config = _load("configs/r1_zero.py:deepseek_v3")
    config.data.files = "/data/math.jsonl,/data/code.jsonl"
    exp = rl_config.parse(config)
    assert {t.rows for t in exp.rewards.terms} == {"domain:math", "domain:code"}
    grpo = exp.grpo_config(eos_id=1, pad_id=2)
    assert grpo.group_size == 16 and grpo.sampling.max_new_tokens == 32768
    assert grpo.num_microbatches == 0 and grpo.ref_update_every == 200
    assert grpo.num_minibatches == 2 and grpo.sampling.slots == 512
    assert grpo.loss.beta == 0.001 and grpo.loss.eps_high == 0.2
    assert grpo.sampling.unstack_layers is False and grpo.std_ddof == 1


def test_dual_clip_and_std_ddof_from_the_command_line():
    config = _flags(
        [
            f"--config={ROOT}/configs/r1_zero.py:tiny",
            "--config.rl.dual_clip=3.0",
            "--config.rl.std_ddof=0",
            "--config.rl.advantage=batch_std",
            "--config.rl.decode_segments=2",
        ]
    )
    exp = rl_config.parse(config)
    assert exp.rl.dual_clip == 3.0 and exp.rl.std_ddof == 0
    grpo = exp.grpo_config(eos_id=3, pad_id=0)
    assert grpo.loss.dual_clip == 3.0 and grpo.std_ddof == 0
    assert grpo.advantage_method == "batch_std" and grpo.sampling.decode_segments == 2


def test_rl_defaults_overrides_and_placeholders():
    rl = rl_config.rl_defaults(group_size=4, dual_clip=2.5)
    assert rl.group_size == 4 and rl.dual_clip == 2.5 and rl.std_ddof == 1
    rl = rl_config.rl_defaults()
    rl.dual_clip = 4.0  # a None default is a typed placeholder, still settable
    assert rl.dual_clip == 4.0
    with pytest.raises(ValueError, match="rl.*not_a_field"):
        rl_config.rl_defaults(not_a_field=1)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "field,value,error,pattern",
    [
        ("group_size", 0, ValueError, r"config\.rl\.group_size"),
        ("eps_low", 2.0, ValueError, r"config\.rl\.eps_low"),
        ("dual_clip", 0.5, ValueError, r"config\.rl\.dual_clip"),
        ("top_p", 0.0, ValueError, r"config\.rl\.top_p"),
        ("slots", -1, ValueError, r"config\.rl\.slots must be >= 0"),
        ("max_new_tokens", 0, ValueError, r"config\.rl\.max_new_tokens"),
        ("advantage", "median", ValueError, r"config\.rl\.advantage"),
        ("std_ddof", -1, ValueError, r"config\.rl\.std_ddof"),
        ("ratio_level", "row", ValueError, r"config\.rl\.ratio_level"),
        ("num_minibatches", 3, ValueError, r"config\.rl\.prompts_per_step.*num_minibatches"),
        ("group_size", "eight", TypeError, r"config\.rl\.group_size"),
        ("dual_clip", "big", TypeError, r"config\.rl\.dual_clip"),
    ],
)
def test_rl_errors_name_the_field(field, value, error, pattern):
    config = _load("configs/r1_zero.py:tiny").to_dict()  # a mapping takes any type
    config["rl"][field] = value
    with pytest.raises(error, match=pattern):
        rl_config.parse(config)


def test_command_line_group_size_zero_is_named():
    config = _flags([f"--config={ROOT}/configs/r1_zero.py:tiny", "--config.rl.group_size=0"])
    with pytest.raises(ValueError, match=r"config\.rl\.group_size") as info:
        rl_config.parse(config)
    assert "SamplingConfig" not in str(info.value)


@pytest.mark.parametrize("section", ["rl", "data", "train", "eval", "optimizer", "init"])
def test_unknown_field_is_named(section):
    config = _load("configs/r1_zero.py:tiny")
    config[section].not_a_field = 1
    with pytest.raises(ValueError, match=rf"config\.{section}.*not_a_field"):
        rl_config.parse(config)


def test_section_errors_name_the_field():
    config = _load("configs/r1_zero.py:tiny")
    config.optimizer.schedule = "x"
    with pytest.raises(ValueError, match=r"config\.optimizer\.schedule"):
        rl_config.parse(config)
    config = _load("configs/r1_zero.py:tiny")
    config.tokenizer.kind = "spm"
    with pytest.raises(ValueError, match=r"config\.tokenizer\.kind"):
        rl_config.parse(config)
    config = _load("configs/r1_zero.py:tiny")
    config.train.checkpoint_every = 0
    with pytest.raises(ValueError, match=r"config\.train\.checkpoint_every"):
        rl_config.parse(config)
    config = _load("configs/r1_zero.py:tiny")
    config.data.general_fraction = 0.5
    with pytest.raises(ValueError, match=r"config\.data\.general_files"):
        rl_config.parse(config)
    config = _load("configs/r1_zero.py:tiny")
    config.rewards = (("arithmetic_tokens",),)
    with pytest.raises(TypeError, match=r"config\.rewards\[0\]"):
        rl_config.parse(config)
    config = _load("configs/r1_zero.py:tiny")
    config.model_rewards = (("reward_model", 1.0),)
    with pytest.raises(TypeError, match=r"config\.model_rewards\[0\]"):
        rl_config.parse(config)
    for rewards, message in (
        ((("no_such_reward", 1.0),), r"config\.rewards: reward term 'no_such_reward'"),
        ((("math", 1.0), ("math", 0.5)), r"config\.rewards: duplicate term labels"),
    ):
        config = _load("configs/r1_zero.py:tiny")
        config.rewards = rewards
        with pytest.raises(ValueError, match=message):
            rl_config.parse(config)
    for entries, message in (
        ((("critic", 1.0, {"path": "/m"}),), r"model_rewards\[0\]: unknown kind 'critic'"),
        ((("judge", 1.0, {}),), r"model_rewards\[0\]: judge needs kwargs `path`"),
        ((("judge", 1.0, {"path": "/j", "region": "whole"}),), r"\[0\]: unknown judge options"),
        (
            (("reward_model", 1.0, {"path": "/m", "region": "tail"}),),
            r"model_rewards\[0\]: region: expected one of",
        ),
        (
            (("judge", 1.0, {"path": "/a"}), ("judge", 1.0, {"path": "/b"})),
            r"model_rewards\[1\]: only one judge",
        ),
        (
            (("reward_model", 1.0, {"path": "/m", "name": "arithmetic_tokens"}),),
            r"model_rewards\[0\]: name 'arithmetic_tokens' is also a rule reward",
        ),
    ):
        config = _load("configs/r1_zero.py:tiny")
        config.model_rewards = entries
        with pytest.raises(ValueError, match=message):
            rl_config.parse(config)
    config = _load("configs/r1_zero.py:tiny")
    config.model_rewards = (
        ("reward_model", 0.5, {"path": "/m", "rows": "general"}),
        ("reward_model", 0.2, {"path": "/n", "region": "whole"}),
    )
    exp = rl_config.parse(config)
    assert [(e.name, e.path, dict(e.options)) for e in exp.model_rewards] == [
        ("reward_model", "/m", {"rows": "general"}),
        ("reward_model_1", "/n", {"region": "whole"}),
    ]
    config.rl.accuracy_reward = "reward_model_1"
    assert rl_config.parse(config).rl.accuracy_reward == "reward_model_1"
    config.rl.accuracy_reward = "math"
    with pytest.raises(ValueError, match=r"config\.rl\.accuracy_reward: 'math' is not among"):
        rl_config.parse(config)
    config = _load("configs/r1_zero.py:tiny")
    config.language = "xx"
    with pytest.raises(ValueError, match=r"config\.language"):
        rl_config.parse(config)
    config = _load("configs/r1_zero.py:tiny")
    config.trainer = ml_collections.ConfigDict({"steps": 1})
    with pytest.raises(ValueError, match=r"trainer"):
        rl_config.parse(config)


def test_sft_and_rm_errors_name_the_field():
    config = _load("configs/sft.py:tiny")
    config.sft.num_microbatches = 3
    with pytest.raises(ValueError, match=r"config\.sft.*divisible"):
        sft_config.parse(config)
    config = _load("configs/sft.py:tiny")
    config.sft.not_a_field = 1
    with pytest.raises(ValueError, match=r"config\.sft.*not_a_field"):
        sft_config.parse(config)
    cases = [
        ("rm", "region", "answer", r"config\.rm\.region"),
        ("rm", "missing_summary", "skip", r"config\.rm\.missing_summary"),
        ("data", "template", "chatml", r"config\.data\.template"),
        ("train", "num_microbatches", 0, r"config\.train\.num_microbatches"),
        ("train", "num_microbatches", 3, r"config\.train\.batch_size.*num_microbatches"),
        ("eval", "batch_size", 0, r"config\.eval\.batch_size"),
        ("data", "not_a_field", 1, r"config\.data.*not_a_field"),
    ]
    for section, field, value, pattern in cases:
        config = _load("configs/reward_model.py:tiny")
        config[section][field] = value
        with pytest.raises(ValueError, match=pattern):
            rm_config.parse(config)
    config = _load("configs/reward_model.py:tiny")
    config.train.update(steps=0, epochs=0.0)
    with pytest.raises(ValueError, match=r"config\.train: set steps"):
        rm_config.parse(config)
    config = _load("configs/reward_model.py:tiny").to_dict()
    config["data"]["synthetic"]["num_train"] = "many"
    with pytest.raises(TypeError, match=r"config\.data\.synthetic\.num_train"):
        rm_config.parse(config)


def test_train_section_defaults():
    train = TrainSection()
    assert (train.log_every, train.samples_every, train.export, train.slices) == (1, 0, False, 1)


# ----------------------------------------------------------------------------- the optimizer
def _old_constant(opt: OptimizerSection) -> optax.GradientTransformation:
    """The GRPO / RM trainers' optimizer before the typed sections, inline."""
    lr, warmup = opt.learning_rate, opt.warmup_steps
    schedule = optax.warmup_constant_schedule(0.0, lr, warmup) if warmup > 0 else lr
    parts = []
    if opt.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(opt.grad_clip))
    parts.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay))
    return optax.chain(*parts)


def _old_cosine(opt: OptimizerSection, total_steps: int) -> optax.GradientTransformation:
    """The SFT trainer's cosine optimizer before the typed sections, inline."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0,
        opt.learning_rate,
        warmup_steps=opt.warmup_steps,
        decay_steps=max(total_steps, opt.warmup_steps + 1),
        end_value=opt.end_learning_rate,
    )
    parts = [optax.clip_by_global_norm(opt.grad_clip)] if opt.grad_clip > 0 else []
    parts.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay))
    return optax.chain(*parts)


def _run(optimizer: optax.GradientTransformation, steps: int = 3):
    params = {
        "w": jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float32).reshape(3, 4),
        "b": jnp.asarray([0.5, -0.25], jnp.float32),
    }
    state = optimizer.init(params)
    for i in range(steps):
        grads = jax.tree.map(lambda p, i=i: jnp.sin(p * (i + 2.0)) * 3.0, params)
        updates, state = optimizer.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


@pytest.mark.parametrize(
    "opt",
    [
        OptimizerSection(learning_rate=5e-2),
        OptimizerSection(learning_rate=5e-2, warmup_steps=2, weight_decay=0.1),
        OptimizerSection(learning_rate=1e-2, grad_clip=0.0, b2=0.999),
        OptimizerSection(learning_rate=5e-2, warmup_steps=1, schedule="cosine"),
        OptimizerSection(
            learning_rate=5e-2, grad_clip=0.5, schedule="cosine", end_learning_rate=1e-3
        ),
    ],
)
def test_make_optimizer_is_the_old_optimizer(opt):
    total = 4
    old = _old_cosine(opt, total) if opt.schedule == "cosine" else _old_constant(opt)
    new, expected = _run(make_optimizer(opt, total)), _run(old)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(new["w"]), np.linspace(-1, 1, 12).reshape(3, 4))
