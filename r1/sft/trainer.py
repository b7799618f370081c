"""The SFT trainer: the stateful shell around the compiled SFT step.

    python -m experiments.sft --config=configs/sft.py:tiny --workdir=runs/sft_tiny

It follows the GRPO trainer's conventions (`r1.rl.trainer`): the same mesh, tokenizer and policy
builders (a local HF-layout checkpoint via `config.init.hf_path`, or random), the same
`TrainState` and shardings, an orbax checkpoint (train state + data iterator position) every
`train.checkpoint_every` steps, at the end and on SIGTERM, exact resume from the latest
checkpoint of `workdir`, metrics to `workdir/metrics.jsonl` + TensorBoard, a progress bar, a
NaN/inf stop before anything of the bad step is saved, and `workdir/curves.png` at the end.

Data (`config.data`): rows with `prompt` and `response` (or `prompt`, `reasoning`, `answer`)
from local JSONL/JSON/Parquet files, or thinking traces of a procedural task (see
`r1.sft.data` and docs/sft.md). With `train.export` the final model is written in Hugging Face
layout (plus the tokenizer files) to `workdir/export`, which a next stage loads with
`config.init.hf_path=<workdir>/export`.

As a library: `train_sft(config, workdir) -> last metrics` (the R1 pipeline and distillation
call it with their own ConfigDicts of this layout, `configs/sft.py`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from r1 import checkpoint as ckpt_lib
from r1 import configlib, sharding
from r1 import logging as r1_logging
from r1.data import procedural
from r1.models import hf
from r1.rl import trainer as rl_trainer
from r1.rl.trainer import NonFiniteError, build_policy, build_tokenizer
from r1.sft import data as sft_data
from r1.sft.step import SFTConfig, make_sft_step
from r1.train.state import init_train_state, train_state_shardings

log = logging.getLogger(__name__)

EXTRA_SECTIONS = ("init", "tokenizer", "data", "sft", "optimizer", "train", "eval")
CURVE_PANELS = (
    ("loss", ("loss", "loss/next_token", "loss/mtp")),
    ("token accuracy", ("token_accuracy",)),
    ("grad norm", ("grad_norm",)),
    ("eval accuracy", ("eval/accuracy", "eval/format")),
)
TIMING_KEYS = ("step_seconds", "tokens_per_sec")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "generation_config.json",
)


# ----------------------------------------------------------------------------- config sections
@dataclasses.dataclass(frozen=True)
class DataSection:
    """`config.data`. source: "procedural" (thinking traces of `task`) or "files" (`files`,
    paths or glob patterns of JSONL/JSON/Parquet rows). template / response_format: see
    `r1.sft.data.render_example`. seq_len: T. pack: first-fit packing (else one example per
    row). num_epochs: passes over file data (0: forever). max_consecutive_skips: stop with an
    error after this many unusable rows in a row."""

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
class OptimizerSection:
    """`config.optimizer`: AdamW; schedule "constant" (linear warmup, then constant, as the
    GRPO trainer) or "cosine" (warmup, then cosine decay to end_learning_rate at the last
    step)."""

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
            raise ValueError(f"schedule: expected 'constant' or 'cosine', got {self.schedule!r}")


@dataclasses.dataclass(frozen=True)
class TrainSection:
    """`config.train`: steps, checkpoints, export of the final model (HF layout) to
    `workdir/export` (export_dtype "" keeps the parameter dtype); topology / slices: the TPU
    pod the config targets (read by `experiments.aot`, "" = none)."""

    steps: int = 1000
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    export: bool = False
    export_dtype: str = ""
    topology: str = ""
    slices: int = 1

    def __post_init__(self):
        if self.steps < 1 or self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("steps, checkpoint_every and keep_checkpoints must be >= 1")


@dataclasses.dataclass(frozen=True)
class EvalSection:
    """`config.eval` (procedural data only): greedy accuracy on a held-out set of `task`
    every `every` steps (0: never) with the GRPO trainer's evaluator."""

    every: int = 0
    per_difficulty: int = 8
    max_new_tokens: int = 128


@dataclasses.dataclass(frozen=True)
class Sections:
    data: DataSection
    sft: SFTSection
    optimizer: OptimizerSection
    train: TrainSection
    eval: EvalSection


def parse_sections(config: Any) -> Sections:
    """The SFT-specific sections, validated (errors name `config.<section>.<field>`)."""
    mapping = config.to_dict() if hasattr(config, "to_dict") else dict(config)

    def section(cls, name):
        return configlib.to_dataclass(cls, mapping.get(name, {}), f"config.{name}")

    return Sections(
        data=section(DataSection, "data"),
        sft=section(SFTSection, "sft"),
        optimizer=section(OptimizerSection, "optimizer"),
        train=section(TrainSection, "train"),
        eval=section(EvalSection, "eval"),
    )


# ----------------------------------------------------------------------------- builders
def build_optimizer(config: Any, total_steps: int) -> optax.GradientTransformation:
    """AdamW with global-norm clipping; the constant schedule is the GRPO trainer's."""
    opt = parse_sections(config).optimizer
    if opt.schedule == "constant":
        return rl_trainer.make_optimizer(config)
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


def build_source(data: DataSection, seed: int) -> tuple[Any, list[sft_data.LoadReport]]:
    """The random-access row source of `config.data` and the file load reports."""
    if data.source == "procedural":
        task = procedural.make_task(data.task, **dict(data.task_kwargs or {}))
        return sft_data.ProceduralTraces(task, seed), []
    files = [data.files] if isinstance(data.files, str) else list(data.files)
    resolved = []
    for f in files:
        f = os.path.expanduser(f)
        if not os.path.isabs(f) and not os.path.exists(f) and "*" not in f:
            candidate = os.path.join(configlib.REPO_ROOT, f)
            f = candidate if os.path.exists(candidate) else f
        resolved.append(f)
    rows: list[dict[str, Any]] = []
    reports = []
    for f in resolved:
        r, rep = sft_data.load_rows(f)
        rows += r
        reports += rep
    return rows, reports


def _evaluator(config, sections: Sections, tokenizer, graphdef, mesh, model_cfg):
    """The GRPO trainer's greedy held-out evaluator for the procedural task."""
    shim = ml_collections.ConfigDict(
        {
            "seed": int(config.seed),
            "data": {
                "task": sections.data.task,
                "task_kwargs": dict(sections.data.task_kwargs or {}),
            },
            "eval": {"per_difficulty": sections.eval.per_difficulty},
            "rl": {"max_new_tokens": sections.eval.max_new_tokens},
        }
    )
    return rl_trainer.make_evaluator(shim, tokenizer, graphdef, mesh, model_cfg)


def export_model(
    graphdef, state, model_cfg, tokenizer, tokenizer_path: str, out: str, dtype: str = ""
) -> None:
    """Writes the policy of `state` in HF layout to `out`, plus the tokenizer files (every
    process takes part; process 0 writes)."""
    import flax.nnx as nnx  # noqa: PLC0415

    params, extra = state.params, state.extra
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415

        params, extra = multihost_utils.process_allgather((params, extra), tiled=True)
    if jax.process_index() != 0:
        return
    model = nnx.merge(graphdef, params, extra)
    hf.save(model, model_cfg, out, dtype=dtype or None)
    if hasattr(tokenizer, "save"):  # the demo tokenizer
        tokenizer.save(os.path.join(out, "demo_tokenizer.json"))
    elif tokenizer_path:
        source = (
            tokenizer_path if os.path.isdir(tokenizer_path) else os.path.dirname(tokenizer_path)
        )
        for name in _TOKENIZER_FILES:
            if os.path.exists(os.path.join(source, name)):
                shutil.copy(os.path.join(source, name), os.path.join(out, name))


# ----------------------------------------------------------------------------- the loop
def train_sft(config: Any, workdir: str) -> dict[str, float]:
    """Runs (or resumes) an SFT experiment in `workdir`; returns the last metrics.

    Stops after `train.steps` steps or when the data ends (`data.num_epochs` > 0), saving a
    checkpoint there; with `train.export` then writes `workdir/export` (HF layout).
    """
    os.makedirs(workdir, exist_ok=True)
    experiment = configlib.parse_experiment(
        config, num_devices=jax.device_count(), extra_sections=EXTRA_SECTIONS
    )
    sections = parse_sections(config)
    model_cfg = experiment.model
    mesh = sharding.make_mesh(experiment.mesh)
    tokenizer = build_tokenizer(config)
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise ValueError(
            f"config.model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's "
            f"{tokenizer.vocab_size}"
        )
    if sections.data.seq_len > model_cfg.max_position_embeddings:
        log.warning(
            "data.seq_len=%d exceeds model max_position_embeddings=%d",
            sections.data.seq_len,
            model_cfg.max_position_embeddings,
        )
    processes = jax.process_count()
    if sections.sft.batch_size % processes:
        raise ValueError(
            f"config.sft.batch_size={sections.sft.batch_size} is not divisible by "
            f"the {processes} processes"
        )
    is_main = jax.process_index() == 0
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))

    steps = sections.train.steps
    optimizer = build_optimizer(config, steps)
    sft_cfg = SFTConfig(
        num_microbatches=sections.sft.num_microbatches,
        mtp_weight=model_cfg.mtp_loss_weight if model_cfg.num_mtp_layers else 0.0,
    )
    with sharding.use_mesh(mesh):
        policy = build_policy(config, model_cfg, mesh)
    graphdef, state = init_train_state(policy, optimizer, experiment.seed, with_reference=False)
    del policy
    state_sh = train_state_shardings(state, optimizer, mesh)
    state = jax.device_put(state, state_sh)

    source, reports = build_source(sections.data, experiment.seed)
    d = sections.data
    dataset = sft_data.sft_dataset(
        source,
        tokenizer,
        batch_size=sections.sft.batch_size // processes,
        seq_len=d.seq_len,
        pack_examples=d.pack,
        template=d.template,
        response_format=d.response_format,
        add_bos=d.add_bos,
        seed=experiment.seed,
        shuffle=d.shuffle and d.source == "files",
        num_epochs=d.num_epochs or None,
        num_threads=1,
        max_consecutive_skips=d.max_consecutive_skips,
    )
    data_iter = iter(dataset)
    load_skips: dict[str, float] = {}
    for report in reports:
        for reason, n in report.skipped.items():
            key = f"data/load_skipped/{reason}"
            load_skips[key] = load_skips.get(key, 0.0) + float(n)

    checkpointer = ckpt_lib.Checkpointer(workdir, keep=sections.train.keep_checkpoints)
    writer = r1_logging.MetricWriter(workdir, enabled=is_main)
    start_step = 0
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_sh
    )
    restored = checkpointer.restore_latest(abstract)
    if restored is not None:
        start_step, state, data_state = restored
        if data_state:
            data_iter.set_state(data_state)
        writer.truncate_after(start_step)
        log.warning("resumed from step %d in %s", start_step, workdir)

    evaluator = None
    if sections.eval.every > 0 and d.source == "procedural":
        evaluator = _evaluator(config, sections, tokenizer, graphdef, mesh, model_cfg)
    stop = rl_trainer._Stop()
    previous = signal.signal(signal.SIGTERM, lambda *_: setattr(stop, "requested", True))
    step_fn = None
    last: dict[str, float] = {}
    finished = start_step >= steps
    progress = _progress(steps, start_step, is_main)
    try:
        if start_step == 0 and evaluator is not None:
            last = evaluator(state)
            writer.write(0, last)
        step = start_step
        while step < steps:
            try:
                batch_np = next(data_iter)
            except StopIteration:
                log.warning(
                    "data exhausted after %d steps (data.num_epochs=%d)", step, d.num_epochs
                )
                if step > start_step and step not in checkpointer.all_steps():
                    checkpointer.save(step, state, data_iter.get_state())
                break
            step += 1
            if step_fn is None:
                abstract_batch = {
                    k: jax.ShapeDtypeStruct((v.shape[0] * processes, *v.shape[1:]), v.dtype)
                    for k, v in batch_np.items()
                }
                step_fn = make_sft_step(
                    graphdef,
                    optimizer,
                    sft_cfg,
                    mesh,
                    state,
                    abstract_batch,
                    bias_update_rate=model_cfg.bias_update_rate,
                )
                batch_sh = sharding.batch_shardings(abstract_batch, mesh)
            batch = {k: rl_trainer._global(v, batch_sh[k]) for k, v in batch_np.items()}
            start = time.perf_counter()
            with sharding.use_mesh(mesh):
                new_state, metrics = step_fn(state, batch)
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            seconds = time.perf_counter() - start
            if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
                raise NonFiniteError(
                    f"step {step}: non-finite loss ({metrics['loss']}) or gradient norm "
                    f"({metrics['grad_norm']}); stopping without saving this step. The last "
                    f"checkpoint is intact in {checkpointer.directory}"
                )
            state = new_state
            tokens = float(np.sum(batch_np["segment_ids"] > 0)) * processes
            metrics["tokens"] = tokens
            metrics["packing_efficiency"] = tokens / float(batch["tokens"].size)
            metrics["step_seconds"] = seconds
            metrics["tokens_per_sec"] = tokens / seconds
            metrics.update({f"data/{k}": float(v) for k, v in data_iter.stats().items()})
            metrics.update(load_skips)
            if evaluator is not None and (step % sections.eval.every == 0 or step == steps):
                metrics.update(evaluator(state))
            writer.write(step, metrics)
            last = metrics
            progress.update(1)
            progress.set_postfix(
                loss=f"{metrics['loss']:.4f}",
                acc=f"{metrics['token_accuracy']:.3f}",
                tok_s=f"{metrics['tokens_per_sec']:.0f}",
            )
            if step % sections.train.checkpoint_every == 0 or step == steps or stop.requested:
                checkpointer.save(step, state, data_iter.get_state())
            if stop.requested:
                log.warning("SIGTERM: saved step %d, exiting", step)
                break
        finished = not stop.requested
    finally:
        progress.close()
        signal.signal(signal.SIGTERM, previous)
        checkpointer.close()
        writer.close()
    if finished and sections.train.export:
        export_model(
            graphdef,
            state,
            model_cfg,
            tokenizer,
            str(config.tokenizer.get("path", "")),
            os.path.join(workdir, "export"),
            sections.train.export_dtype,
        )
    if is_main and os.path.exists(writer.path):
        r1_logging.plot_curves(writer.path, os.path.join(workdir, "curves.png"), CURVE_PANELS)
    return last


def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="sft", unit="step")
