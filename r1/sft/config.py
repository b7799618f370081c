"""The SFT experiment's typed sections (configs/sft.py layout), parsed once.

exp = parse(config, num_devices=jax.device_count())
"""

from __future__ import annotations

import dataclasses
from typing import Any

from r1.models.config import ModelConfig
from r1.sft import data as sft_data
from r1.sharding import MeshConfig
from r1.train.config import (
    InitSection,
    OptimizerSection,
    TokenizerSection,
    TrainSection,
    common_sections,
    section,
)

SECTIONS = ("init", "tokenizer", "data", "sft", "optimizer", "train", "eval")


@dataclasses.dataclass(frozen=True)
class DataSection:
    """`config.data`. source: "procedural" (thinking traces of `task`) or "files" (`files`,
    paths or glob patterns of JSONL/JSON/Parquet rows). template / response_format: see
    `r1.sft.data.render_example`. seq_len: T. pack: first-fit packing (else one example per
    row). num_epochs: passes over file data (0: forever). max_consecutive_skips: stop with an
    error after this many unusable rows in a row. allow_changed: resume even when `files`
    differ from those the checkpoint was saved with (default: stop)."""

    source: str = "procedural"
    task: str = "add"
    task_kwargs: Any = None
    files: Any = ()
    template: str = "r1_zero"
    response_format: str = "r1_zero"
    add_bos: bool = True
    seq_len: int = 512
    pack: bool = True
    shuffle: bool = True
    num_epochs: int = 0
    max_consecutive_skips: int = 1000
    allow_changed: bool = False

    def __post_init__(self):
        if self.source not in ("procedural", "files"):
            raise ValueError(f"source: expected 'procedural' or 'files', got {self.source!r}")
        if self.source == "files" and not self.files:
            raise ValueError("files: source 'files' needs at least one path")
        if self.template not in sft_data.TEMPLATES:
            raise ValueError(
                f"template: expected one of {sft_data.TEMPLATES}, got {self.template!r}"
            )
        if self.response_format not in sft_data.RESPONSE_FORMATS:
            raise ValueError(
                f"response_format: expected one of {sft_data.RESPONSE_FORMATS}, "
                f"got {self.response_format!r}"
            )
        if self.seq_len < 2 or self.num_epochs < 0:
            raise ValueError(
                f"seq_len >= 2 and num_epochs >= 0 expected, got {self.seq_len}, {self.num_epochs}"
            )


@dataclasses.dataclass(frozen=True)
class SFTSection:
    """`config.sft`. batch_size: rows of seq_len tokens per optimizer step (global);
    num_microbatches: gradient accumulation micro-batches. (The MTP loss weight is the model's
    `mtp_loss_weight`, used when it has MTP modules.)"""

    batch_size: int = 32
    num_microbatches: int = 1

    def __post_init__(self):
        if self.batch_size < 1 or self.num_microbatches < 1:
            raise ValueError("batch_size and num_microbatches must be >= 1")
        if self.batch_size % self.num_microbatches:
            raise ValueError(
                f"batch_size={self.batch_size} is not divisible by "
                f"num_microbatches={self.num_microbatches}"
            )


@dataclasses.dataclass(frozen=True)
class EvalSection:
    """`config.eval` (procedural data only): greedy accuracy on a held-out set of `task`
    every `every` steps (0: never) with the GRPO trainer's evaluator."""

    every: int = 0
    per_difficulty: int = 8
    max_new_tokens: int = 128


@dataclasses.dataclass(frozen=True)
class SFTExperiment:
    """An SFT config, typed: model, mesh and seed plus its sections."""

    model: ModelConfig
    mesh: MeshConfig
    seed: int
    init: InitSection
    tokenizer: TokenizerSection
    data: DataSection
    sft: SFTSection
    optimizer: OptimizerSection
    train: TrainSection
    eval: EvalSection


def parse(config: Any, num_devices: int | None = None) -> SFTExperiment:
    """Validates an SFT config into an `SFTExperiment` (errors name `config.<section>.<field>`)."""
    return SFTExperiment(
        **common_sections(config, SECTIONS, num_devices),
        data=section(DataSection, config, "data"),
        sft=section(SFTSection, config, "sft"),
        train=section(TrainSection, config, "train"),
        eval=section(EvalSection, config, "eval"),
    )
