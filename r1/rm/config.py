"""The reward-model experiment's typed sections (configs/reward_model.py layout), parsed once.

exp = parse(config, num_devices=jax.device_count())
"""

from __future__ import annotations

import dataclasses
from typing import Any

from r1.models.config import ModelConfig
from r1.rm.data import TEMPLATES
from r1.rm.reward import MISSING_SUMMARY, REGIONS
from r1.sharding import MeshConfig
from r1.train.config import (
    InitSection,
    OptimizerSection,
    TokenizerSection,
    common_sections,
    section,
)

SECTIONS = ("init", "tokenizer", "data", "rm", "optimizer", "train", "eval")


@dataclasses.dataclass(frozen=True)
class SyntheticPairs:
    """`config.data.synthetic`: pairs with a learnable `rule` ("polite"), written to the workdir
    when no `train_files` are given."""

    rule: str = "polite"
    num_train: int = 2048
    num_eval: int = 256


@dataclasses.dataclass(frozen=True)
class DataSection:
    """`config.data`: JSONL preference pairs (`train_files`, `eval_files`; without eval files
    `eval_fraction` of the training pairs is held out), or `synthetic` pairs; `template` renders
    the prompt ("raw" | "r1_zero"); rows longer than `max_length` tokens are skipped.
    allow_changed: resume even when `train_files` differ from those the checkpoint was saved
    with (default: stop)."""

    train_files: tuple[str, ...] = ()
    eval_files: tuple[str, ...] = ()
    eval_fraction: float = 0.05
    synthetic: SyntheticPairs = SyntheticPairs()
    template: str = "r1_zero"
    add_bos: bool = True
    max_length: int = 8192
    allow_changed: bool = False

    def __post_init__(self):
        if self.template not in TEMPLATES:
            raise ValueError(
                f"config.data.template: expected one of {TEMPLATES}, got {self.template!r}"
            )
        if self.max_length < 2:
            raise ValueError(f"config.data.max_length: expected >= 2, got {self.max_length}")


@dataclasses.dataclass(frozen=True)
class RMSection:
    """`config.rm`: region scored ("summary": the text after the last `</think>`, for
    helpfulness; "whole": the whole response, for harmlessness), what a response without a
    summary scores as (`missing_summary`), and whether pairs' margins enter the loss."""

    region: str = "summary"
    missing_summary: str = "empty"
    use_margin: bool = False

    def __post_init__(self):
        if self.region not in REGIONS:
            raise ValueError(f"config.rm.region: expected one of {REGIONS}, got {self.region!r}")
        if self.missing_summary not in MISSING_SUMMARY:
            raise ValueError(
                f"config.rm.missing_summary: expected one of {MISSING_SUMMARY}, "
                f"got {self.missing_summary!r}"
            )


@dataclasses.dataclass(frozen=True)
class RMTrainSection:
    """`config.train`: `steps` (0: `epochs` passes over the pairs), `batch_size` pairs per step
    in `num_microbatches` slices, checkpoints, a metrics row every `log_every` steps;
    topology / slices: the TPU pod the config targets (`experiments.aot`)."""

    steps: int = 0
    epochs: float = 1.0
    batch_size: int = 256
    num_microbatches: int = 1
    checkpoint_every: int = 50
    keep_checkpoints: int = 3
    log_every: int = 1
    topology: str = ""
    slices: int = 1

    def __post_init__(self):
        for name in ("batch_size", "num_microbatches", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"config.train.{name}: expected >= 1, got {getattr(self, name)}")
        if self.batch_size % self.num_microbatches:
            raise ValueError(
                f"config.train.batch_size={self.batch_size} is not divisible by "
                f"config.train.num_microbatches={self.num_microbatches}"
            )
        if self.steps < 1 and self.epochs <= 0:
            raise ValueError("config.train: set steps >= 1 or epochs > 0")


@dataclasses.dataclass(frozen=True)
class RMEvalSection:
    """`config.eval`: held-out pair accuracy every `every` steps (0: at the start and the end
    only), `batch_size` pairs at a time."""

    every: int = 50
    batch_size: int = 64

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"config.eval.batch_size: expected >= 1, got {self.batch_size}")


@dataclasses.dataclass(frozen=True)
class RMExperiment:
    """A reward-model config, typed: model, mesh and seed plus its sections."""

    model: ModelConfig
    mesh: MeshConfig
    seed: int
    init: InitSection
    tokenizer: TokenizerSection
    data: DataSection
    rm: RMSection
    optimizer: OptimizerSection
    train: RMTrainSection
    eval: RMEvalSection


def parse(config: Any, num_devices: int | None = None) -> RMExperiment:
    """Validates a reward-model config (errors name `config.<section>.<field>`)."""
    return RMExperiment(
        **common_sections(config, SECTIONS, num_devices),
        data=section(DataSection, config, "data"),
        rm=section(RMSection, config, "rm"),
        train=section(RMTrainSection, config, "train"),
        eval=section(RMEvalSection, config, "eval"),
    )
