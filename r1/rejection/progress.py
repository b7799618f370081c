"""Resuming a rejection-sampling run: the identity fingerprint, the progress record and the
checks that traces.jsonl can be continued (see `r1.rejection.runner`'s module docstring)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

TRACES, PROGRESS = "traces.jsonl", "progress.json"


def fingerprint(identity: Mapping[str, Any]) -> str:
    """A short hash of the run's identity (JSON of it, keys sorted)."""
    text = json.dumps(identity, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fresh_progress(identity: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "fingerprint": fingerprint(identity),
        "prompts_done": 0,
        "batches_done": 0,
        "traces_bytes": 0,
        "candidates": 0,
        "kept": 0,
        "prompts_with_rows": 0,
        "dropped": {},
        "filter_hits": {},
        "reward_sums": {},
        "reward_failures": {},
        "seconds": 0.0,
    }


class ProgressUnusable(ValueError):
    """The workdir's traces.jsonl / progress.json cannot be continued (cut or foreign rows)."""


def _check_progress(
    workdir: str, identity: Mapping[str, Any], prompt_ids: Sequence[str], write: bool
) -> dict:
    """The recorded progress, checked: `ProgressUnusable` when the files are damaged,
    ValueError when they belong to another configuration."""
    traces, progress_path = os.path.join(workdir, TRACES), os.path.join(workdir, PROGRESS)
    if not os.path.exists(progress_path):
        if os.path.exists(traces) and os.path.getsize(traces) > 0:
            raise ProgressUnusable(
                f"{traces} exists without {PROGRESS}: not written by this tool's resumable "
                "loop; use a new workdir"
            )
        return fresh_progress(identity)
    try:
        with open(progress_path) as f:
            progress = json.load(f)
        recorded = int(progress["traces_bytes"]), int(progress["prompts_done"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ProgressUnusable(f"{progress_path} does not read ({err})") from err
    if progress.get("fingerprint") != fingerprint(identity):
        raise ValueError(
            f"{workdir} holds a rejection-sampling run with another configuration (checkpoint, "
            "seed, prompts, sampling, rewards or selection differ); use a new workdir"
        )
    if not write:
        return progress
    size = os.path.getsize(traces) if os.path.exists(traces) else 0
    if size < recorded[0]:
        raise ProgressUnusable(
            f"{traces} has {size} bytes but {PROGRESS} recorded {recorded[0]}: "
            "the traces file was cut; cannot resume"
        )
    if size > recorded[0]:
        log.warning("dropping %d bytes of an unfinished batch", size - recorded[0])
        with open(traces, "r+b") as f:
            f.truncate(recorded[0])
    done = set(prompt_ids[: recorded[1]])
    if os.path.exists(traces):
        with open(traces, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                try:
                    pid = json.loads(line)["prompt_id"]
                except (ValueError, KeyError, TypeError) as err:
                    raise ProgressUnusable(f"{traces} line {lineno} does not read ({err})") from err
                if pid not in done:
                    raise ProgressUnusable(
                        f"{traces} line {lineno}: prompt {pid!r} is not among the "
                        f"{recorded[1]} prompts recorded as done"
                    )
    return progress


def resume(
    workdir: str,
    identity: Mapping[str, Any],
    prompt_ids: Sequence[str],
    write: bool = True,
    restart: bool = False,
) -> dict:
    """The progress to continue from. With `write` (the writing process) traces.jsonl is
    truncated to its recorded size and its rows are checked against the prompts done. Damaged
    files raise `ProgressUnusable`, or with `restart` are moved aside to
    `<name>.corrupt-<UTC time>` and the run starts from the first prompt."""
    try:
        return _check_progress(workdir, identity, prompt_ids, write)
    except ProgressUnusable as err:
        if not restart:
            raise ProgressUnusable(
                f"{err}. Nothing was moved or deleted; rerun with --restart to move the files "
                "aside and sample from the first prompt"
            ) from err
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for name in (TRACES, PROGRESS):
            source = os.path.join(workdir, name)
            if write and os.path.exists(source):
                os.replace(source, f"{source}.corrupt-{stamp}")
        log.warning("%s; moved %s and %s aside (.corrupt-%s)", err, TRACES, PROGRESS, stamp)
        return fresh_progress(identity)
