"""The SFT trainer: the SFT-specific pieces plugged into the shared run loop.

    python -m experiments.sft --config=configs/sft.py:tiny --workdir=runs/sft_tiny

`train_sft(config, workdir)` parses the config once (`r1.sft.config.parse`), builds the mesh,
tokenizer and policy (`r1.train.build`: a local HF-layout checkpoint via `config.init.hf_path`,
or random), the packed data stream (`r1.sft.data`) and, for procedural data, the held-out
evaluator (`r1.train.heldout`), and hands `r1.train.loop.run_loop` the compiled SFT step
(`r1.sft.step.make_sft_step`). Restore (train state + data iterator position), SIGTERM, the
non-finite stop, checkpoints, metrics and `workdir/curves.png` are the loop's.

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
import os
from typing import Any

import jax
import numpy as np

from r1 import sharding
from r1.data import procedural
from r1.data.fingerprint import files_fingerprint
from r1.sft import config as sft_config
from r1.sft import data as sft_data
from r1.sft.config import DataSection
from r1.sft.step import SFTConfig, make_sft_step
from r1.train import build
from r1.train.distributed import global_batch
from r1.train.export import export_model
from r1.train.heldout import make_heldout_evaluator
from r1.train.loop import LoopHooks, LoopSettings, run_loop, write_config

log = logging.getLogger(__name__)

CURVE_PANELS = (
    ("loss", ("loss", "loss/next_token", "loss/mtp")),
    ("token accuracy", ("token_accuracy",)),
    ("grad norm", ("grad_norm",)),
    ("eval accuracy", ("eval/accuracy", "eval/format")),
)
TIMING_KEYS = ("step_seconds", "tokens_per_sec")


def build_source(data: DataSection, seed: int) -> tuple[Any, list[sft_data.LoadReport]]:
    """The random-access row source of `config.data` and the file load reports."""
    if data.source == "procedural":
        task = procedural.make_task(data.task, **dict(data.task_kwargs or {}))
        return sft_data.ProceduralTraces(task, seed), []
    files = [data.files] if isinstance(data.files, str) else list(data.files)
    rows: list[dict[str, Any]] = []
    reports = []
    for f in files:
        r, rep = sft_data.load_rows(build.resolve_path(f))
        rows += r
        reports += rep
    return rows, reports


class SFTJob:
    """The SFT hooks of the run loop: packed batches, the compiled step, throughput."""

    def __init__(self, exp, tokenizer, mesh, graphdef, state, optimizer):
        self.exp, self.mesh, self.graphdef, self.optimizer = exp, mesh, graphdef, optimizer
        self.template_state = state
        self.sft_cfg = SFTConfig(
            num_microbatches=exp.sft.num_microbatches,
            mtp_weight=exp.model.mtp_loss_weight if exp.model.num_mtp_layers else 0.0,
        )
        source, reports = build_source(exp.data, exp.seed)
        d = exp.data
        self.data_iter = iter(
            sft_data.sft_dataset(
                source,
                tokenizer,
                batch_size=exp.sft.batch_size // jax.process_count(),
                seq_len=d.seq_len,
                pack_examples=d.pack,
                template=d.template,
                response_format=d.response_format,
                add_bos=d.add_bos,
                seed=exp.seed,
                shuffle=d.shuffle and d.source == "files",
                num_epochs=d.num_epochs or None,
                num_threads=1,
                max_consecutive_skips=d.max_consecutive_skips,
            )
        )
        self.load_skips: dict[str, float] = {}
        for report in reports:
            for reason, n in report.skipped.items():
                key = f"data/load_skipped/{reason}"
                self.load_skips[key] = self.load_skips.get(key, 0.0) + float(n)
        self.step_fn = None
        self.batch_sh = None

    def next_batch(self, step: int):
        """(host batch, the data iterator's counters right after it) or None at the end."""
        try:
            batch = next(self.data_iter)
        except StopIteration:
            return None
        return batch, self.data_iter.stats()

    def run_step(self, state, batch):
        arrays, _ = batch
        if self.step_fn is None:
            processes = jax.process_count()
            abstract_batch = {
                k: jax.ShapeDtypeStruct((v.shape[0] * processes, *v.shape[1:]), v.dtype)
                for k, v in arrays.items()
            }
            self.step_fn = make_sft_step(
                self.graphdef,
                self.optimizer,
                self.sft_cfg,
                self.mesh,
                self.template_state,
                abstract_batch,
                bias_update_rate=self.exp.model.bias_update_rate,
            )
            self.batch_sh = sharding.batch_shardings(abstract_batch, self.mesh)
        device_batch = {k: global_batch(v, self.batch_sh[k]) for k, v in arrays.items()}
        with sharding.use_mesh(self.mesh):
            new_state, metrics = self.step_fn(state, device_batch)
        return new_state, metrics, None

    def host_metrics(self, step, batch, metrics, outputs, seconds) -> dict[str, float]:
        arrays, stats = batch
        processes = jax.process_count()
        tokens = float(np.sum(arrays["segment_ids"] > 0)) * processes
        out = {
            "tokens": tokens,
            "packing_efficiency": tokens / float(arrays["tokens"].size * processes),
            "tokens_per_sec": tokens / seconds,
        }
        out.update({f"data/{k}": float(v) for k, v in stats.items()})
        out.update(self.load_skips)
        return out

    @staticmethod
    def postfix(metrics: dict[str, float]) -> dict[str, str]:
        return {
            "loss": f"{metrics['loss']:.4f}",
            "acc": f"{metrics['token_accuracy']:.3f}",
            "tok_s": f"{metrics['tokens_per_sec']:.0f}",
        }


def train_sft(config: Any, workdir: str, restart: bool = False) -> dict[str, float]:
    """Runs (or resumes) an SFT experiment in `workdir`; returns the last metrics.

    Stops after `train.steps` steps or when the data ends (`data.num_epochs` > 0), saving a
    checkpoint there; with `train.export` then writes `workdir/export` (HF layout).
    """
    exp = sft_config.parse(config, num_devices=jax.device_count())
    if exp.data.seq_len > exp.model.max_position_embeddings:
        log.warning(
            "data.seq_len=%d exceeds model max_position_embeddings=%d",
            exp.data.seq_len,
            exp.model.max_position_embeddings,
        )
    if exp.sft.batch_size % jax.process_count():
        raise ValueError(
            f"config.sft.batch_size={exp.sft.batch_size} is not divisible by "
            f"the {jax.process_count()} processes"
        )
    write_config(workdir, config)
    run = build.start_policy(exp, exp.train.steps)
    mesh, tokenizer, graphdef, state = run.mesh, run.tokenizer, run.graphdef, run.state
    optimizer, state_sh = run.optimizer, run.state_shardings
    exp = dataclasses.replace(exp, model=run.model)  # the checkpoint's architecture
    job = SFTJob(exp, tokenizer, mesh, graphdef, state, optimizer)
    evaluator = None
    if exp.eval.every > 0 and exp.data.source == "procedural":
        evaluator = make_heldout_evaluator(
            procedural.make_task(exp.data.task, **dict(exp.data.task_kwargs or {})),
            exp.seed,
            exp.eval.per_difficulty,
            tokenizer,
            graphdef,
            mesh,
            exp.eval.max_new_tokens,
        )
    settings = LoopSettings(
        restart=restart,
        data_fingerprint=files_fingerprint(exp.data.files if exp.data.source == "files" else ()),
        allow_data_change=exp.data.allow_changed,
        name="sft",
        steps=exp.train.steps,
        checkpoint_every=exp.train.checkpoint_every,
        keep_checkpoints=exp.train.keep_checkpoints,
        eval_every=exp.eval.every if evaluator is not None else 0,
        eval_at_start=evaluator is not None,
        curve_panels=CURVE_PANELS,
    )
    hooks = LoopHooks(
        next_batch=job.next_batch,
        run_step=job.run_step,
        host_metrics=job.host_metrics,
        evaluate=evaluator,
        data_state=job.data_iter.get_state,
        restore_data=job.data_iter.set_state,
        postfix=job.postfix,
    )
    result = run_loop(workdir, state, state_sh, settings, hooks)
    if result.finished and exp.train.export:
        export_model(
            graphdef,
            result.state,
            exp.model,
            tokenizer,
            exp.tokenizer.path,
            os.path.join(workdir, "export"),
            exp.train.export_dtype,
        )
    return result.last
