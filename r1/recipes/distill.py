r"""Distillation: a student fine-tuned on a teacher's reasoning traces (DeepSeek-R1's distilled
Qwen and Llama models: SFT only, no RL), with the student's held-out accuracy before and after.

    python -m experiments.distill --config=configs/distill.py:tiny --workdir=runs/distill_tiny

`distill(config, workdir)` runs four stages in `workdir`, each skipped when its output is
complete, so a killed run resumes where it stopped:

1. **traces** -> `traces/sft.jsonl` (+ `traces/report.json`). Either local trace files
   (`config.traces.files`: JSONL / JSON / Parquet, fields mapped by `config.traces.*_field`) or,
   when none are given, rejection sampling of the teacher (`config.teacher`, `config.prompts`,
   `sampling`, `rewards`, `select`, `filters`; `r1.rejection.experiment.run_from_config`, which
   resumes by itself) into `traces/teacher/`. Every row becomes `{"prompt", "response"}` with the
   reasoning and answer rendered in the student's `data.response_format`; unusable rows are
   skipped and counted by reason (`prepare_traces`).
2. **eval_before** -> `eval_before.json`: the student as SFT starts it (its checkpoint, or the
   random init of `config.seed`) on the held-out rows (`config.eval_data`, `config.eval`);
   with `teacher.evaluate` also the teacher (`eval_teacher.json`).
3. **sft** -> `sft/` (checkpoints, metrics, `sft/export` in HF layout): `r1.sft.trainer.train_sft`
   on the traces, resuming from its last checkpoint.
4. **eval_after** -> `eval_after.json`: the exported student on the same rows and seeds.

Finally `distill_report.json` (and `distill_report.md`) holds the before / after (and teacher)
tables and the trace counts. Stage completion is recorded in `stages.json` with a fingerprint of
the configuration sections the stage depends on; a workdir whose finished stage was made with
different settings is refused (use a new workdir).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from r1 import configlib, sharding
from r1.data import procedural, sources
from r1.evaluation import runner as eval_runner
from r1.models import hf
from r1.models.config import EXECUTION_FIELDS
from r1.recipes.distill_traces import (
    TraceSection,
    prepare_traces,
    resolve_path,
)
from r1.recipes.distill_traces import read_records as read_records
from r1.recipes.distill_traces import split_response as split_response
from r1.recipes.distill_traces import trace_to_sft as trace_to_sft
from r1.recipes.stages import atomic_json
from r1.rejection.experiment import run_from_config
from r1.sft import data as sft_data
from r1.sft.trainer import train_sft
from r1.train import build

log = logging.getLogger(__name__)

SECTIONS = (
    "student",
    "teacher",
    "prompts",
    "sampling",
    "rewards",
    "select",
    "filters",
    "traces",
    "data",
    "sft",
    "optimizer",
    "train",
    "eval_data",
    "eval",
)
STAGES = ("traces", "eval_teacher", "eval_before", "sft", "eval_after")
TRACES_FILE = os.path.join("traces", "sft.jsonl")
STATE_FILE, REPORT_FILE = "stages.json", "distill_report.json"
# ModelConfig fields that say how to compute, not what the checkpoint is: taken from
# `config.model` when the architecture comes from a checkpoint's config.json.
TABLE_KEYS = ("count", "samples", "response_length", "truncated", "no_answer")


# ----------------------------------------------------------------------------- sub-configs
def _dict(value: Any) -> Any:
    return value.to_dict() if hasattr(value, "to_dict") else value


def _tokenizer(section: Any, hf_path: str) -> dict[str, str]:
    """A tokenizer section; an "hf" tokenizer without a path reads the checkpoint's."""
    kind, path = str(section.kind), str(section.path)
    if kind == "hf" and not path:
        if not hf_path:
            raise ValueError("tokenizer.path: empty, and there is no hf_path to read it from")
        path = resolve_path(hf_path)
    return {"kind": kind, "path": path}


def student_model(config: Any) -> dict[str, Any]:
    """The student's `ModelConfig` fields: `config.model`, or with `student.hf_path` the
    checkpoint's architecture (its config.json) with `config.model`'s execution fields
    (dtype, remat, chunking; `EXECUTION_FIELDS`). Differences are logged."""
    model = _dict(config.model)
    path = str(config.student.hf_path)
    if not path:
        return model
    config_path = os.path.join(resolve_path(path), "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"config.student.hf_path: no config.json in {path!r}")
    with open(config_path) as f:
        hf_config = json.load(f)
    overrides = {k: model[k] for k in EXECUTION_FIELDS if k in model}
    arch = hf.config_from_hf(hf_config, **overrides).to_dict()
    differ = sorted(k for k in arch if k in model and arch[k] != model[k])
    if differ:
        log.warning(
            "config.model differs from %s in %s; using the checkpoint's values", config_path, differ
        )
    return arch


def sft_config(config: Any, traces_path: str) -> ml_collections.ConfigDict:
    """The `configs/sft.py`-layout config of the student's SFT on `traces_path`."""
    data = dict(_dict(config.data))
    data.update(source="files", files=(traces_path,), task="add", task_kwargs={})
    train = dict(_dict(config.train))
    train["export"] = True
    return ml_collections.ConfigDict(
        {
            "model": student_model(config),
            "mesh": _dict(config.mesh),
            "seed": int(config.seed),
            "init": {"hf_path": resolve_path(str(config.student.hf_path))},
            "tokenizer": _tokenizer(config.student.tokenizer, str(config.student.hf_path)),
            "data": data,
            "sft": _dict(config.sft),
            "optimizer": _dict(config.optimizer),
            "train": train,
            "eval": {"every": 0, "per_difficulty": 1, "max_new_tokens": 1},
        }
    )


def teacher_config(config: Any) -> ml_collections.ConfigDict:
    """The `configs/rejection_sample.py`-layout config that samples the teacher."""
    teacher = config.teacher
    if not teacher.hf_path:
        raise ValueError(
            "config.teacher.hf_path: empty and config.traces.files is empty too; give a teacher "
            "checkpoint to sample or trace files"
        )
    return ml_collections.ConfigDict(
        {
            "model": _dict(teacher.model),
            "mesh": _dict(config.mesh),
            "seed": int(config.seed),
            "init": {"hf_path": resolve_path(str(teacher.hf_path))},
            "tokenizer": _tokenizer(teacher.tokenizer, str(teacher.hf_path)),
            "data": _dict(config.prompts),
            "sampling": _dict(config.sampling),
            "rewards": config.rewards,
            "select": _dict(config.select),
            "filters": _dict(config.filters),
        }
    )


def eval_rows(config: Any) -> list[dict[str, Any]]:
    """The held-out rows of `config.eval_data`: local files (`files`, `layout`) or `per_difficulty`
    procedural rows of each difficulty of `task` (`split`, `seed`); the first `limit` (0: all)."""
    data = config.eval_data
    if data.files:
        spec = str(data.files)
        paths: Any = [resolve_path(p.strip()) for p in spec.split(",") if p.strip()]
        rows, _ = sources.load_files(paths if len(paths) > 1 else paths[0], str(data.layout))
    else:
        task = procedural.make_task(str(data.task), **dict(_dict(data.task_kwargs)))
        rows = procedural.fixed_set(
            task, int(data.seed), int(data.per_difficulty), split=str(data.split)
        )
    limit = int(data.limit)
    if limit < 0:
        raise ValueError(f"config.eval_data.limit: expected >= 0 (0: all rows), got {limit}")
    return rows[:limit] if limit else rows


# ----------------------------------------------------------------------------- stage records
def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-able parts (ConfigDicts converted, keys sorted)."""
    text = json.dumps([_dict(p) for p in parts], sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stage_fingerprints(config: Any) -> dict[str, str]:
    """Per stage, the hash of what its output depends on (later stages chain earlier ones)."""
    teacher = {k: v for k, v in _dict(config.teacher).items() if k != "evaluate"}
    sampling = (config.prompts, config.sampling, config.rewards, config.select, config.filters)
    sampled = () if config.traces.files else (teacher, *sampling)
    traces = fingerprint(config.seed, config.traces, config.data.response_format, *sampled)
    evaluation = (config.eval_data, config.eval)
    student = (config.seed, config.model, config.student)
    sft = fingerprint(traces, *student, config.data, config.sft, config.optimizer, config.train)
    return {
        "traces": traces,
        "eval_teacher": fingerprint(teacher, *evaluation),
        "eval_before": fingerprint(*student, *evaluation),
        "sft": sft,
        "eval_after": fingerprint(sft, *evaluation),
    }


class StageLog:
    """`workdir/stages.json`: finished stages with their fingerprint and summary."""

    def __init__(self, workdir: str, fingerprints: Mapping[str, str], write: bool = True):
        self.path = os.path.join(workdir, STATE_FILE)
        self.fingerprints, self.write = dict(fingerprints), write
        self.done: dict[str, Any] = {}
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.done = json.load(f)

    def finished(self, stage: str, outputs: Sequence[str] = ()) -> bool:
        """Whether `stage` is complete with this configuration and its outputs exist. Raises
        `ValueError` when it was begun or finished with another configuration."""
        record = self.done.get(stage)
        if record is None:
            return False
        if record["fingerprint"] != self.fingerprints[stage]:
            raise ValueError(
                f"{self.path}: stage {stage!r} was made with another configuration; use a new "
                "workdir (or delete the stage's output and its entry to redo it)"
            )
        return bool(record.get("complete")) and all(os.path.exists(p) for p in outputs)

    def begin(self, stage: str) -> None:
        """Records that `stage` started with this configuration (so that resuming a half-done
        stage with other settings is refused too)."""
        if stage not in self.done:
            self._put(stage, {"fingerprint": self.fingerprints[stage], "complete": False})

    def record(self, stage: str, summary: Any) -> None:
        self._put(
            stage, {"fingerprint": self.fingerprints[stage], "complete": True, "summary": summary}
        )

    def _put(self, stage: str, value: Mapping[str, Any]) -> None:
        self.done[stage] = dict(value)
        if self.write:
            atomic_json(self.path, self.done)

    def summary(self, stage: str) -> Any:
        return self.done.get(stage, {}).get("summary")


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415

        multihost_utils.sync_global_devices(name)


# ----------------------------------------------------------------------------- evaluation
def eval_table(result: Mapping[str, Any]) -> dict[str, Any]:
    """The compact table of an evaluation result: overall and per task (and difficulty) rates,
    without the per-problem records."""

    def compact(t: Mapping[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in t.items() if k.startswith(("pass@", "cons@")) or k in TABLE_KEYS}
        if "by_difficulty" in t:
            out["by_difficulty"] = {d: compact(v) for d, v in t["by_difficulty"].items()}
        return out

    return {
        "overall": compact(result["overall"]),
        "tasks": {task: compact(t) for task, t in result["tasks"].items()},
    }


def _evaluate(
    model: nnx.Module,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    eval_cfg: eval_runner.EvalConfig,
    mesh: jax.sharding.Mesh,
    path: str,
    what: str,
) -> dict[str, Any]:
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"{what}: vocab_size {model.config.vocab_size} is smaller than its tokenizer's "
            f"{tokenizer.vocab_size}"
        )
    result = eval_runner.evaluate(model, tokenizer, rows, eval_cfg, mesh=mesh, progress=True)
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    result["model"] = {"what": what, "family": model.config.family, "params": params}
    if jax.process_index() == 0:
        eval_runner.write_json(result, path)
    log.warning("%s: pass@1 %.3f", what, result["overall"]["pass@1"])
    return {"params": params, **eval_table(result)}


def _load(sub_config: Any, mesh: jax.sharding.Mesh) -> tuple[nnx.Module, Any]:
    """Model and tokenizer of a sub-config (`init.hf_path`, else random init of `seed`)."""
    experiment = configlib.parse_experiment(
        sub_config,
        extra_sections=tuple(k for k in sub_config if k not in ("model", "mesh", "seed")),
    )
    tokenizer = build.build_tokenizer(
        str(sub_config.tokenizer.kind), str(sub_config.tokenizer.get("path", ""))
    )
    with sharding.use_mesh(mesh):
        model = build.build_policy(
            str(sub_config.init.hf_path), experiment.model, mesh, experiment.seed, tokenizer
        )
    return model, tokenizer


# ----------------------------------------------------------------------------- the pipeline
def distill(
    config: Any,
    workdir: str,
    config_name: str = "",
    *,
    sft_fn: Callable[[Any, str], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Runs (or resumes) the distillation stages in `workdir` (module docstring); returns the
    report also written to `workdir/distill_report.json`.

    config: a `configs/distill.py` config. config_name: the `--config` value and overrides,
    recorded as the teacher samples' provenance. sft_fn: the SFT trainer (default
    `r1.sft.trainer.train_sft`; tests pass a wrapper).
    """
    sft_fn = sft_fn or train_sft
    experiment = configlib.parse_experiment(
        config, extra_sections=SECTIONS, num_devices=jax.device_count()
    )
    fields = configlib.to_dataclass(TraceSection, config.traces, "config.traces")
    eval_cfg = eval_runner.EvalConfig.from_config(config.eval)
    if config.data.response_format not in sft_data.RESPONSE_FORMATS:
        raise ValueError(
            f"config.data.response_format: expected one of {sft_data.RESPONSE_FORMATS}, got "
            f"{config.data.response_format!r}"
        )
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    stages = StageLog(workdir, stage_fingerprints(config), write=is_main)
    mesh = sharding.make_mesh(experiment.mesh)
    traces_path = os.path.join(workdir, TRACES_FILE)

    # 1. traces
    if not stages.finished("traces", [traces_path]):
        stages.begin("traces")
        sampled = None
        if fields.files:
            paths = fields.paths()
        else:
            teacher_dir = os.path.join(workdir, "traces", "teacher")
            sampled = run_from_config(teacher_config(config), teacher_dir, config_name)
            paths = [os.path.join(teacher_dir, "traces.jsonl")]
            if not sampled["kept"]:
                raise ValueError(
                    f"the teacher produced no usable trace ({sampled['candidates']} candidates, "
                    f"dropped {sampled['dropped']}); see {teacher_dir}/report.json"
                )
        if is_main:
            report = prepare_traces(paths, fields, str(config.data.response_format), traces_path)
            if sampled is not None:
                report["teacher_sampling"] = {
                    k: sampled[k] for k in ("prompts", "candidates", "kept", "dropped", "seconds")
                }
            atomic_json(os.path.join(workdir, "traces", "report.json"), report)
            stages.record("traces", {k: v for k, v in report.items() if k != "examples"})
        _sync("distill_traces")
        stages = StageLog(workdir, stages.fingerprints, write=is_main)
    rows = eval_rows(config)
    sft_cfg = sft_config(config, traces_path)

    # 2. evaluations before SFT
    teacher_eval = os.path.join(workdir, "eval_teacher.json")
    if config.teacher.evaluate and not stages.finished("eval_teacher", [teacher_eval]):
        model, tokenizer = _load(teacher_config(config), mesh)
        stages.record(
            "eval_teacher",
            _evaluate(model, tokenizer, rows, eval_cfg, mesh, teacher_eval, "teacher"),
        )
        del model
    before = os.path.join(workdir, "eval_before.json")
    if not stages.finished("eval_before", [before]):
        model, tokenizer = _load(sft_cfg, mesh)
        stages.record(
            "eval_before", _evaluate(model, tokenizer, rows, eval_cfg, mesh, before, "student")
        )
        del model

    # 3. SFT
    sft_dir = os.path.join(workdir, "sft")
    export = os.path.join(sft_dir, "export")
    if not stages.finished("sft", [os.path.join(export, "config.json")]):
        stages.begin("sft")
        last = sft_fn(sft_cfg, sft_dir)
        _sync("distill_sft_export")
        if not os.path.exists(os.path.join(export, "config.json")):
            raise RuntimeError(
                f"SFT stopped before its end (no {export}); re-run the same command to resume"
            )
        keys = ("loss", "token_accuracy", "data/examples", "data/target_tokens")
        stages.record("sft", {k: float(last[k]) for k in keys if k in last})

    # 4. evaluation after SFT
    after = os.path.join(workdir, "eval_after.json")
    if not stages.finished("eval_after", [after]):
        trained = ml_collections.ConfigDict(sft_cfg.to_dict())
        trained.init.hf_path = export
        model, tokenizer = _load(trained, mesh)
        stages.record(
            "eval_after", _evaluate(model, tokenizer, rows, eval_cfg, mesh, after, "student")
        )
        del model

    report = make_report(config, stages)
    if is_main:
        atomic_json(os.path.join(workdir, REPORT_FILE), report)
        with open(os.path.join(workdir, "distill_report.md"), "w", encoding="utf-8") as f:
            f.write(to_markdown(report))
    return report


def make_report(config: Any, stages: StageLog) -> dict[str, Any]:
    """The distillation report: trace counts, SFT end metrics, and the before / after (and
    teacher) tables, with the change of every overall rate."""
    before, after = stages.summary("eval_before"), stages.summary("eval_after")
    delta = {
        k: after["overall"][k] - before["overall"][k]
        for k in before["overall"]
        if k.startswith(("pass@", "cons@"))
    }
    return {
        "student": {
            "hf_path": str(config.student.hf_path),
            "family": str(config.model.family),
        },
        "teacher": str(config.teacher.hf_path) if not config.traces.files else None,
        "traces": stages.summary("traces"),
        "sft": stages.summary("sft"),
        "eval_data": str(config.eval_data.files) or f"procedural:{config.eval_data.task}",
        "before": before,
        "after": after,
        "teacher_eval": stages.summary("eval_teacher"),
        "delta": delta,
    }


def to_markdown(report: Mapping[str, Any]) -> str:
    """The report's rates (percentages) per model, task and difficulty as one Markdown table."""
    columns = [k for k in report["before"]["overall"] if k.startswith(("pass@", "cons@"))]
    header = ["model", "params", "task", "difficulty", *(f"{c} (%)" for c in columns), "length"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    tables = (
        ("teacher", report.get("teacher_eval")),
        ("student before SFT", report["before"]),
        ("student after SFT", report["after"]),
    )
    for name, table in tables:
        if not table:
            continue
        for task, t in table["tasks"].items():
            for difficulty, row in [("all", t), *t.get("by_difficulty", {}).items()]:
                cells = [name, f"{table['params']:,}", task, str(difficulty)]
                cells += [f"{100 * row[c]:.1f}" for c in columns]
                cells.append(f"{row['response_length']:.1f}")
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
