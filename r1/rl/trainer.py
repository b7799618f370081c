"""The GRPO trainer: the GRPO-specific pieces plugged into the shared run loop.

    python -m experiments.train --config=configs/r1_zero.py:tiny --workdir=runs/demo

`train(config, workdir)` parses the config once into typed sections (`r1.rl.config.parse`),
builds the mesh, tokenizer, policy (a local HF-layout base checkpoint or random), the prompt
stream (grain), the rewards and the held-out evaluator, and hands `r1.train.loop.run_loop` the
GRPO step (one compiled program per prompt-batch shape, `r1.rl.step.make_grpo_step`) and its
host-side hooks: behaviour metrics of each step's completions, `workdir/samples.jsonl`, the
progress bar's fields. Restore, SIGTERM, the non-finite stop, checkpoints, metrics and
`workdir/curves.png` are the loop's (see r1/train/loop.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import defaultdict
from typing import Any

import jax
import numpy as np

from r1 import logging as r1_logging
from r1 import sharding
from r1.data import pipeline, procedural, sources
from r1.data.fingerprint import files_fingerprint
from r1.data.mixture import GeneralMixture, WeightedMixture, load_general_prompts
from r1.evaluation.runner import EvalConfig
from r1.metrics.behaviour import behaviour_metrics
from r1.rewards import CompiledSpec
from r1.rl import config as rl_config
from r1.rl.model_rewards import build_scorer
from r1.rl.step import make_grpo_step
from r1.train import build
from r1.train.distributed import gather_to_host, global_batch
from r1.train.export import export_model
from r1.train.heldout import make_file_evaluator, make_heldout_evaluator
from r1.train.loop import LoopHooks, LoopSettings, run_loop, write_config

log = logging.getLogger(__name__)

CURVE_PANELS = (
    ("reward", ("reward/total",)),
    ("accuracy", ("accuracy", "eval/accuracy", "eval/pass@1")),
    ("response length", ("response_length/mean", "eval/response_length/mean")),
    ("KL", ("kl",)),
    ("held-out accuracy by difficulty", ("eval/accuracy/difficulty_*", "eval/pass@1/difficulty_*")),
    ("held-out pass@1 by domain", ("eval/pass@1/domain/*",)),
    ("held-out length by difficulty", ("eval/response_length/difficulty_*",)),
    ("reflection words per 1k tokens", ("behaviour/reflection_per_1k",)),
    ("reward by domain", ("reward/domain/*",)),
    ("accuracy by domain", ("accuracy/domain/*",)),
    ("response length by domain", ("response_length/domain/*",)),
    ("sampler-trainer mismatch (nats)", ("mismatch/logp_abs_mean", "mismatch/logp_abs_max")),
)


# ----------------------------------------------------------------------------- data
class IndexedRows:
    """Rows with their index in the source as `row_index` (the sampler keys rows by it, so a
    row draws the same completions wherever it lands in a batch or on which host)."""

    def __init__(self, rows: Any):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.rows[index], "row_index": index}


@dataclasses.dataclass
class PromptStream:
    """The training prompts: `iterator` (grain, checkpointable) of batches of this process's
    share of `rl.prompts_per_step`; `rows`: this process's rows per epoch (files; 0 for the
    endless procedural stream); `skipped`: {category: rows} dropped when the files were read."""

    iterator: Any
    rows: int = 0
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """`data/epoch` (epochs begun, fractional), `data/position` (rows drawn by this process,
        too-long ones included) and `data/skipped/<category>` (cumulative)."""
        stats = self.iterator.stats()
        out = {f"data/skipped/{k}": float(v) for k, v in self.skipped.items()}
        out["data/skipped/too_long"] = float(stats["skipped_too_long"])
        if self.rows:
            position = stats["rows"] + stats["skipped_too_long"]
            out["data/position"] = float(position)
            out["data/epoch"] = position / self.rows
        return out


def file_rows(data: rl_config.DataSection, seed: int) -> tuple[Any, dict[str, int]]:
    """The rows of `data.files` (concatenated, or a `WeightedMixture` by `data.mixture`) and
    {category: rows skipped} while reading them."""
    entries = sources.load_entries(
        data.files,
        data.layout,
        domains=data.domains,
        tfds_data_dir=data.tfds_data_dir or None,
    )
    skipped = sources.skipped_counts([r for e in entries for r in e.reports])
    if data.mixture:
        return WeightedMixture([e.rows for e in entries], data.mixture_weights, seed), skipped
    return [row for e in entries for row in e.rows], skipped


def heldout_evaluator(exp: rl_config.GRPOExperiment, tokenizer, graphdef, mesh):
    """The evaluator of `eval.every`: on `eval.files` (k samples per problem, pass@1 / cons@k
    by domain and difficulty), else on the procedural task's held-out set when the run trains
    on it; None for a file-driven run without eval files."""
    if exp.eval.files:
        rows, _ = sources.load_sources(
            exp.eval.files, exp.eval.layout, tfds_data_dir=exp.data.tfds_data_dir or None
        )
        template = exp.data.template
        if template != "r1_zero":  # prompted as in training: rendered here, then sent as is
            render = pipeline.prompt_renderer(
                template, tokenizer, exp.data.system_prompt, exp.data.instruction
            )
            rows = [{**row, "prompt": render(row)} for row in rows]
        config = EvalConfig(
            template="r1_zero" if template == "r1_zero" else "plain",
            add_bos=template != "chat",
            num_samples=exp.eval.num_samples,
            temperature=exp.eval.temperature,
            top_p=exp.eval.top_p,
            max_new_tokens=exp.eval.max_new_tokens or exp.rl.max_new_tokens,
            batch_size=exp.eval.batch_size,
            seed=exp.seed + 1,
            language=exp.language,
        )
        rows = rows[: exp.eval.max_problems] if exp.eval.max_problems else rows
        return make_file_evaluator(rows, tokenizer, graphdef, mesh, config)
    if exp.data.files:
        return None
    return make_heldout_evaluator(
        procedural.make_task(exp.data.task, **dict(exp.data.task_kwargs or {})),
        exp.seed,
        exp.eval.per_difficulty,
        tokenizer,
        graphdef,
        mesh,
        exp.rl.max_new_tokens,
        exp.rl.unstack_layers,
    )


def prompt_stream(
    exp: rl_config.GRPOExperiment, tokenizer: Any, reward_fields: tuple[str, ...] = ()
) -> PromptStream:
    """The training prompts: the rows of `data.files` (shuffled with the run's seed, repeated
    `data.num_epochs` times or forever; mixed by `data.mixture`), else the procedural task's
    train split; mixed with general prompts when `data.general_fraction` > 0; rendered and
    bucketed by the grain pipeline, each process reading its share of `rl.prompts_per_step`.
    Batches carry the rows' `reward_fields` (e.g. a code row's ``tests``) besides the
    pipeline's default fields."""
    fields = tuple(dict.fromkeys((*pipeline.DEFAULT_FIELDS, *reward_fields)))
    skipped: dict[str, int] = {}
    if exp.data.files:
        source, skipped = file_rows(exp.data, exp.seed)
    else:
        task = procedural.make_task(exp.data.task, **dict(exp.data.task_kwargs or {}))
        source = procedural.ProceduralSource(task, exp.seed, split="train")
    if exp.data.general_fraction > 0:
        general = load_general_prompts(str(exp.data.general_files))
        source = GeneralMixture(source, general, exp.data.general_fraction, exp.seed)
        fields = (*fields, "general")
    if exp.data.files:
        source = IndexedRows(source)
        fields = (*fields, "row_index", "domain")
    processes = jax.process_count()
    buckets = tuple(exp.data.buckets)
    dataset = pipeline.prompt_dataset(
        source,
        tokenizer,
        render=pipeline.prompt_renderer(
            exp.data.template, tokenizer, exp.data.system_prompt, exp.data.instruction
        ),
        # A chat template writes the BOS text itself when its family has one.
        add_bos=exp.data.template != "chat",
        fields=fields,
        batch_size=exp.rl.prompts_per_step // processes,
        # Every process must pad to the same length to form one global batch.
        buckets=buckets if processes == 1 else (max(buckets),),
        seed=exp.seed,
        shuffle=bool(exp.data.files),  # procedural rows are already random
        num_epochs=exp.data.num_epochs or None,
        num_threads=1,
    )
    rows = len(source) // processes if exp.data.files else 0
    return PromptStream(iter(dataset), rows, skipped)


# Pipeline batch keys that are not reward fields: the prompt itself and host-side bookkeeping.
NOT_REWARD_FIELDS = (
    "tokens",
    "mask",
    "lengths",
    "valid",
    "prompt_text",
    "prompt",
    "id",
    "task",
    "difficulty",
    "row_index",
)


def batch_arrays(
    batch: dict[str, Any], scorer: CompiledSpec
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Pipeline batch (numpy, object fields) -> the step's batch (arrays only: prompt tokens and
    mask, `row_index`, and the reward fields `scorer.encode_fields` makes of the rows' columns)
    and the host-side values {"prompt_texts": [P] str, "difficulty": int32[P] or None}."""
    arrays = {"prompt_tokens": batch["tokens"].astype(np.int32), "prompt_mask": batch["mask"]}
    if "row_index" in batch:
        arrays["row_index"] = np.asarray(batch["row_index"], np.int32)
    elif "id" in batch:
        # Procedural ids end in the row's index: sampling keys follow the row, not its position
        # in the batch, so a batch split across hosts samples what one host would.
        try:
            arrays["row_index"] = np.asarray(
                [int(str(i).rsplit("-", 1)[1]) for i in batch["id"]], np.int32
            )
        except (IndexError, ValueError):
            pass
    columns = {k: list(v) for k, v in batch.items() if k not in NOT_REWARD_FIELDS}
    arrays.update(scorer.encode_fields(columns))
    host = {
        "prompt_texts": list(batch["prompt_text"]),
        "difficulty": (
            np.asarray(batch["difficulty"], np.int32) if "difficulty" in batch else None
        ),
    }
    return arrays, host


# ----------------------------------------------------------------------------- the job
class GRPOJob:
    """The GRPO hooks of the run loop: batches, the compiled step (one per batch shape),
    behaviour metrics and samples of each step's completions."""

    def __init__(self, exp, workdir, tokenizer, mesh, graphdef, state, optimizer):
        self.exp, self.workdir, self.tokenizer, self.mesh = exp, workdir, tokenizer, mesh
        self.graphdef, self.optimizer = graphdef, optimizer
        self.template_state = state
        self.grpo_cfg = exp.grpo_config(eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
        self.scorer, self.frozen = build_scorer(exp.rewards, exp.model_rewards, tokenizer, mesh)
        self.prompts = prompt_stream(exp, tokenizer, self.scorer.spec.fields())
        self.compiled: dict[tuple, Any] = {}
        self.gathered: tuple[int, Any] = (-1, None)

    def next_batch(self, step: int):
        try:
            raw = next(self.prompts.iterator)
        except StopIteration:  # data.num_epochs passes are done
            return None
        return batch_arrays(raw, self.scorer)

    def _step_fn(self, arrays: dict[str, np.ndarray]):
        key = tuple((k, v.shape) for k, v in sorted(arrays.items()))
        if key not in self.compiled:
            processes = jax.process_count()
            abstract_batch = {
                k: jax.ShapeDtypeStruct((v.shape[0] * processes, *v.shape[1:]), v.dtype)
                for k, v in arrays.items()
            }
            self.compiled[key] = (
                make_grpo_step(
                    self.graphdef,
                    self.optimizer,
                    self.grpo_cfg,
                    self.scorer,
                    self.mesh,
                    self.template_state,
                    abstract_batch,
                    bias_update_rate=self.exp.model.bias_update_rate,
                    frozen=self.frozen or None,
                ),
                sharding.batch_shardings(abstract_batch, self.mesh),
            )
        return self.compiled[key]

    def run_step(self, state, batch):
        arrays, _ = batch
        step_fn, batch_sh = self._step_fn(arrays)
        device_batch = {k: global_batch(v, batch_sh[k]) for k, v in arrays.items()}
        with sharding.use_mesh(self.mesh):
            if self.scorer.model_names:
                return step_fn(state, device_batch, self.frozen)
            return step_fn(state, device_batch)

    def host_metrics(self, step, batch, metrics, samples, seconds) -> dict[str, float]:
        _, host = batch
        out = {"tokens_per_sec": metrics["generated_tokens"] / seconds, **self.prompts.metrics()}
        if self.scorer.text_terms:  # this process's time in the reward callback
            out["time/rewards"] = self.scorer.take_host_seconds()
        samples = gather_to_host(samples)  # a collective: every process takes part
        self.gathered = (step, samples)
        difficulty = gather_to_host(host["difficulty"])
        out.update(
            step_behaviour(
                samples, self.tokenizer, difficulty, self.exp.rl.group_size, self.exp.language
            )
        )
        return out

    def on_logged(self, step, batch, metrics, samples) -> None:
        every = self.exp.train.samples_every
        if jax.process_index() != 0 or every <= 0 or not (step % every == 0 or step == 1):
            return
        prompt_texts = batch[1]["prompt_texts"]
        gathered_step, gathered = self.gathered
        if gathered_step != step:
            raise RuntimeError(f"GRPO samples of step {gathered_step} logged as step {step}")
        write_samples(
            self.workdir,
            step,
            self.tokenizer,
            prompt_texts,
            gathered,
            self.exp.rl.group_size,
            self.exp.train.samples_per_log,
        )

    def on_resume(self, step: int) -> None:
        path = os.path.join(self.workdir, "samples.jsonl")
        if jax.process_index() == 0 and os.path.exists(path):
            rows = [r for r in r1_logging.read_jsonl(path) if r["step"] <= step]
            with open(path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)

    @staticmethod
    def postfix(metrics: dict[str, float]) -> dict[str, str]:
        return {
            "reward": f"{metrics['reward/total']:.3f}",
            "acc": f"{metrics.get('accuracy', float('nan')):.2f}",
            "len": f"{metrics['response_length/mean']:.1f}",
            "tok_s": f"{metrics['tokens_per_sec']:.0f}",
            "steps": f"{metrics['rollout/decode_steps']:.0f}",
            "occ": f"{metrics['rollout/slot_occupancy']:.2f}",
        }


def train(config: Any, workdir: str, restart: bool = False) -> dict[str, float]:
    """Runs (or resumes) a GRPO experiment in `workdir`; returns the last metrics."""
    exp = rl_config.parse(config, num_devices=jax.device_count())
    write_config(workdir, config)
    run = build.start_policy(exp, exp.train.steps, with_reference=exp.rl.beta > 0)
    mesh, tokenizer, graphdef, state = run.mesh, run.tokenizer, run.graphdef, run.state
    optimizer, state_sh = run.optimizer, run.state_shardings
    exp = dataclasses.replace(exp, model=run.model)  # the checkpoint's architecture
    job = GRPOJob(exp, workdir, tokenizer, mesh, graphdef, state, optimizer)
    evaluator = heldout_evaluator(exp, tokenizer, graphdef, mesh)
    settings = LoopSettings(
        restart=restart,
        data_fingerprint=files_fingerprint(exp.data.files, exp.data.general_files),
        allow_data_change=exp.data.allow_changed,
        name="grpo",
        steps=exp.train.steps,
        checkpoint_every=exp.train.checkpoint_every,
        keep_checkpoints=exp.train.keep_checkpoints,
        eval_every=exp.eval.every if evaluator else 0,
        eval_at_start=evaluator is not None and exp.eval.every > 0,
        curve_panels=CURVE_PANELS,
    )
    hooks = LoopHooks(
        next_batch=job.next_batch,
        run_step=job.run_step,
        host_metrics=job.host_metrics,
        on_logged=job.on_logged,
        evaluate=evaluator,
        data_state=job.prompts.iterator.get_state,
        restore_data=job.prompts.iterator.set_state,
        on_resume=job.on_resume,
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


# ----------------------------------------------------------------------------- host metrics
def step_behaviour(samples, tokenizer, difficulty, group: int, language: str) -> dict[str, float]:
    """Reasoning-behaviour metrics of this step's completions (reflection words, length and
    accuracy per difficulty; r1/metrics/behaviour.py). `difficulty`: int[P] of the whole batch
    (gathered from every process), or None."""
    tokens = np.asarray(samples["tokens"])
    mask = np.asarray(samples["mask"])
    texts = [tokenizer.decode(tokens[r][mask[r]].tolist()) for r in range(len(tokens))]
    rows_difficulty = None
    if difficulty is not None and len(difficulty) * group == len(tokens):
        rows_difficulty = np.repeat(np.asarray(difficulty), group).tolist()
    return behaviour_metrics(
        texts,
        mask.sum(axis=1).tolist(),
        np.asarray(samples["correct"]).astype(bool).tolist(),
        rows_difficulty,
        language=language,
    )


def write_samples(workdir, step, tokenizer, prompt_texts, samples, group, limit) -> None:
    """Appends up to `limit` of this step's completions (prompt tail, text, reward) to
    `workdir/samples.jsonl`."""
    tokens = np.asarray(samples["tokens"])
    mask = np.asarray(samples["mask"])
    rewards = np.asarray(samples["rewards"])
    rows = []
    for r in range(min(limit, len(tokens))):
        prompt = prompt_texts[r // group] if r // group < len(prompt_texts) else ""
        rows.append(
            {
                "prompt": prompt[-200:],
                "completion": tokenizer.decode(tokens[r][mask[r]].tolist()),
                "reward": float(rewards[r]),
            }
        )
    r1_logging.append_samples(os.path.join(workdir, "samples.jsonl"), step, rows)


def per_difficulty(rows: list[dict[str, Any]], key: str) -> dict[int, float]:
    """Mean of `key` per difficulty over metric rows (helper for notebooks and plots)."""
    out = defaultdict(list)
    for row in rows:
        for name, value in row.items():
            if name.startswith(f"{key}/difficulty_"):
                out[int(name.rsplit("_", 1)[1])].append(value)
    return {d: float(np.mean(v)) for d, v in sorted(out.items())}
