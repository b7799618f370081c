"""Resumable multi-stage runs (`r1.recipes.pipeline` runs R1's four stages with it).

Each stage works in `workdir/<stage name>/`; a finished stage leaves `DONE.json` (its outputs,
written atomically) and is skipped when the run is started again, an interrupted one runs again.
`workdir/pipeline_log.jsonl` records what each invocation did (`skip`, `start`, `resume`,
`done`). Multi-host: process 0 writes, every process runs the stages, barriers keep them in step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

log = logging.getLogger(__name__)

DONE = "DONE.json"
LOG = "pipeline_log.jsonl"


@dataclasses.dataclass(frozen=True)
class Stage:
    """A pipeline stage: `run(directory, previous)` does the work in `directory` and returns its
    outputs (JSON values; paths relative to the run directory), `previous` maps earlier stage
    names to their outputs."""

    name: str
    run: Callable[[str, Mapping[str, Mapping[str, Any]]], dict[str, Any]]


def is_main() -> bool:
    """Whether this is process 0 (the one that writes files)."""
    return jax.process_index() == 0


def atomic_json(path: str, value: Any) -> None:
    """Writes `value` as JSON to `path` via a fsync'd temporary file and a rename, so a reader
    (or a restarted run) sees the old file or the new one, never a torn write."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def barrier(name: str) -> None:
    """Waits for every process (a no-op with one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415

        multihost_utils.sync_global_devices(name)


def log_event(workdir: str, stage: str, event: str, **extra: Any) -> None:
    """Logs a stage event and appends it to `workdir/pipeline_log.jsonl` (process 0)."""
    log.warning("stage %s: %s %s", stage, event, extra or "")
    if is_main():
        with open(os.path.join(workdir, LOG), "a") as f:
            f.write(json.dumps({"time": time.time(), "stage": stage, "event": event, **extra}))
            f.write("\n")


def read_done(directory: str) -> dict[str, Any] | None:
    """The `DONE.json` of a stage directory, or None when the stage is not complete."""
    path = os.path.join(directory, DONE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def run_stages(stages: Sequence[Stage], workdir: str) -> dict[str, dict[str, Any]]:
    """Runs `stages` in order under `workdir/<stage.name>/`, skipping completed ones.

    A stage whose directory holds `DONE.json` is skipped (its recorded outputs are passed on);
    otherwise it runs ("resume" when its directory already has content from an interrupted
    run) and `DONE.json` is written, atomically, after it returns. An exception leaves no
    marker, so the next invocation runs that stage again. Returns {stage name: outputs}.
    """
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must be unique, got {names}")
    os.makedirs(workdir, exist_ok=True)
    outputs: dict[str, dict[str, Any]] = {}
    for stage in stages:
        directory = os.path.join(workdir, stage.name)
        done = read_done(directory)
        if done is not None:
            log_event(workdir, stage.name, "skip")
            outputs[stage.name] = dict(done.get("outputs", {}))
            continue
        partial = os.path.isdir(directory) and bool(os.listdir(directory))
        log_event(workdir, stage.name, "resume" if partial else "start")
        os.makedirs(directory, exist_ok=True)
        start = time.perf_counter()
        result = stage.run(directory, dict(outputs))
        seconds = time.perf_counter() - start
        barrier(f"r1_pipeline_{stage.name}")
        if is_main():
            atomic_json(
                os.path.join(directory, DONE),
                {"stage": stage.name, "outputs": result, "seconds": seconds, "time": time.time()},
            )
        log_event(workdir, stage.name, "done", seconds=round(seconds, 1))
        outputs[stage.name] = result
    return outputs


def write_jsonl(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Writes `rows` as JSONL atomically (process 0 only; the others wait)."""
    if is_main():
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        os.replace(tmp, path)
    barrier(f"r1_pipeline_write_{os.path.basename(path)}")
