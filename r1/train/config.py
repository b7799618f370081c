"""Config sections every trainer shares, as frozen dataclasses, and the one optimizer builder.

Each trainer's `parse(config)` (`r1.rl.config`, `r1.sft.config`, `r1.rm.config`) turns the
ConfigDict into these once, at the entry point; nothing below it reads a ConfigDict. Errors name
the field as the user typed it (`config.optimizer.schedule: ...`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import optax

from r1 import configlib


@dataclasses.dataclass(frozen=True)
class InitSection:
    """`config.init`: hf_path, a local Hugging Face checkpoint to start from ("" = random init
    from the seed); rm_path, a saved reward model to continue (reward-model trainer only)."""

    hf_path: str = ""
    rm_path: str = ""


@dataclasses.dataclass(frozen=True)
class TokenizerSection:
    """`config.tokenizer`: kind "demo" (r1's arithmetic tokenizer) or "hf" (a local
    `tokenizer.json` or a directory holding one, at `path`)."""

    kind: str = "hf"
    path: str = ""

    def __post_init__(self):
        if self.kind not in ("demo", "hf"):
            raise ValueError(f"config.tokenizer.kind: expected 'demo' or 'hf', got {self.kind!r}")


@dataclasses.dataclass(frozen=True)
class OptimizerSection:
    """`config.optimizer`: AdamW after optional global-norm clipping (`grad_clip` > 0). schedule
    "constant": linear warmup over `warmup_steps`, then `learning_rate`; "cosine": warmup, then
    cosine decay to `end_learning_rate` at the run's last step."""

    learning_rate: float = 1e-5
    warmup_steps: int = 0
    b1: float = 0.9
    b2: float = 0.95
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    schedule: str = "constant"
    end_learning_rate: float = 0.0

    def __post_init__(self):
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(
                f"config.optimizer.schedule: expected 'constant' or 'cosine', got {self.schedule!r}"
            )
        if self.learning_rate < 0 or self.warmup_steps < 0:
            raise ValueError(
                "config.optimizer: learning_rate and warmup_steps must be >= 0, got "
                f"{self.learning_rate}, {self.warmup_steps}"
            )


@dataclasses.dataclass(frozen=True)
class TrainSection:
    """`config.train`: the run loop's cadences. steps: optimizer steps; checkpoint_every /
    keep_checkpoints: orbax checkpoints; log_every: a metrics row every this many steps;
    samples_every / samples_per_log: completions written to `samples.jsonl` every this many
    steps, at most this many each time (GRPO; samples_every 0: never); export / export_dtype:
    the final model in HF layout to `workdir/export` ("" keeps the parameter dtype); topology /
    slices: the TPU pod the config targets (read by `experiments.aot`, "" = none)."""

    steps: int = 1000
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    log_every: int = 1
    samples_every: int = 0
    samples_per_log: int = 8
    export: bool = False
    export_dtype: str = ""
    topology: str = ""
    slices: int = 1

    def __post_init__(self):
        for name in ("steps", "checkpoint_every", "keep_checkpoints", "log_every", "slices"):
            if getattr(self, name) < 1:
                raise ValueError(f"config.train.{name}: expected >= 1, got {getattr(self, name)}")
        if self.samples_every < 0 or self.samples_per_log < 0:
            raise ValueError(
                "config.train: samples_every >= 0 and samples_per_log >= 0 expected, got "
                f"{self.samples_every}, {self.samples_per_log}"
            )


def section(cls: type, config: Any, name: str) -> Any:
    """`config.<name>` as `cls` (an absent section takes `cls`'s defaults)."""
    mapping = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return configlib.to_dataclass(cls, mapping.get(name, {}) or {}, f"config.{name}")


def common_sections(config: Any, sections: tuple[str, ...], num_devices: int | None) -> dict:
    """What every trainer's `parse` shares: model, mesh and seed (`configlib.parse_experiment`,
    which also rejects top-level sections outside `sections`), init, tokenizer, optimizer."""
    experiment = configlib.parse_experiment(
        config, extra_sections=sections, num_devices=num_devices
    )
    return dict(
        model=experiment.model,
        mesh=experiment.mesh,
        seed=experiment.seed,
        init=section(InitSection, config, "init"),
        tokenizer=section(TokenizerSection, config, "tokenizer"),
        optimizer=section(OptimizerSection, config, "optimizer"),
    )


def make_optimizer(opt: OptimizerSection, total_steps: int) -> optax.GradientTransformation:
    """The experiment's optimizer: optional clipping by global norm, then AdamW with the
    section's schedule over `total_steps` steps."""
    if opt.schedule == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(
            0.0,
            opt.learning_rate,
            warmup_steps=opt.warmup_steps,
            decay_steps=max(total_steps, opt.warmup_steps + 1),
            end_value=opt.end_learning_rate,
        )
    elif opt.warmup_steps > 0:
        schedule = optax.warmup_constant_schedule(0.0, opt.learning_rate, opt.warmup_steps)
    else:
        # optax's warmup with 0 steps would stay at its initial value (0) forever.
        schedule = opt.learning_rate
    parts = [optax.clip_by_global_norm(opt.grad_clip)] if opt.grad_clip > 0 else []
    parts.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay))
    return optax.chain(*parts)
