"""Math accuracy via the `math-verify` library, with a hard per-item timeout.

The final answer is taken from the last ``<answer>`` (or the last ``\\boxed{}`` in it) else the
last ``\\boxed{}`` of the completion (`r1.rewards.extract.final_answer`); math-verify parses it
and the gold answer and decides equivalence (we do not re-implement it).

math-verify's own timeouts use ``signal.alarm``, which works only on a main thread and cannot
interrupt a C-level computation. So items run in a small pool of persistent worker processes
(`_math_worker.py`, started with ``subprocess``: no fork of the JAX process), each answering on
its main thread; the parent also holds a wall-clock deadline per item and kills and restarts a
worker that overruns it. That makes the reward safe to call from any thread, e.g. from
``jax.pure_callback``. The pool is shared by all callers and closed at exit.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from r1.rewards.base import register, row_field
from r1.rewards.extract import final_answer

_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_math_worker.py")
_START_TIMEOUT_S = 60.0
_MAX_FAILED_STARTS = 3  # workers of one batch that may exit before they are ready


class _Worker:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-u", _WORKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
            encoding="utf-8",
        )
        self.ready = False
        self.started = time.monotonic()
        self.deadline = 0.0
        self.item = -1

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()


class MathVerifyPool:
    """Persistent math-verify worker processes with per-item wall-clock deadlines."""

    def __init__(self, workers: int) -> None:
        self.size = max(1, workers)
        self.workers: list[_Worker] = []
        self.lock = threading.Lock()

    def close(self) -> None:
        with self.lock:
            for worker in self.workers:
                worker.kill()
            self.workers = []

    def run(self, items: Sequence[tuple[str, str]], timeout_s: float) -> list[tuple[bool, str]]:
        """Verify ``(gold, pred)`` pairs; returns ``(correct, reason)`` per item. An item whose
        worker died under it (killed, out of memory) is verified again once on a fresh worker:
        reason ``rescored`` with that outcome, or ``crash`` when the worker dies again."""
        with self.lock:
            return self._run(items, timeout_s)

    def _run(self, items: Sequence[tuple[str, str]], timeout_s: float) -> list[tuple[bool, str]]:
        results: list[tuple[bool, str] | None] = [None] * len(items)
        pending = list(range(len(items)))[::-1]
        alarm = max(1, math.ceil(timeout_s))
        # gold parse + pred parse + verify each have the alarm; add slack for IPC.
        budget = 3 * alarm + 1.0
        while len(self.workers) < min(self.size, max(1, len(items))):
            self.workers.append(_Worker())
        busy: dict[int, _Worker] = {}
        rescored: set[int] = set()
        failed_starts = 0
        while pending or busy:
            for worker in self.workers:
                if worker.ready and worker.item < 0 and pending:
                    index = pending.pop()
                    gold, pred = items[index]
                    request = {"gold": gold, "pred": pred, "timeout": alarm}
                    try:
                        worker.proc.stdin.write(json.dumps(request) + "\n")
                        worker.proc.stdin.flush()
                    except (BrokenPipeError, OSError):
                        pending.append(index)
                        self._restart(worker)
                        continue
                    worker.item, worker.deadline = index, time.monotonic() + budget
                    busy[worker.proc.pid] = worker
            waiting = [w for w in self.workers if w.item >= 0 or not w.ready]
            if not waiting:
                continue
            ready, _, _ = select.select([w.proc.stdout for w in waiting], [], [], 0.05)
            now = time.monotonic()
            for worker in waiting:
                if worker.proc.stdout in ready:
                    line = worker.proc.stdout.readline()
                    if not line:  # the worker died (killed, out of memory)
                        if not worker.ready:
                            failed_starts += 1
                        if failed_starts > _MAX_FAILED_STARTS:
                            raise RuntimeError(
                                "math-verify worker exited before it was ready; is math-verify "
                                "installed? (python -m r1.rewards._math_worker shows why)"
                            )
                        if worker.item >= 0 and worker.item not in rescored:
                            rescored.add(worker.item)
                            pending.append(worker.item)
                            busy.pop(worker.proc.pid, None)
                        elif worker.item >= 0:
                            results[worker.item] = (False, "crash")
                            busy.pop(worker.proc.pid, None)
                        self._restart(worker)
                        continue
                    try:
                        message = json.loads(line)
                    except ValueError:
                        message = {"ok": False, "reason": "error"}
                    if message.get("ready"):
                        worker.ready = True
                        continue
                    if worker.item >= 0:
                        ok, reason = bool(message["ok"]), str(message["reason"])
                        if worker.item in rescored and reason in ("", "wrong"):
                            reason = "rescored"
                        results[worker.item] = (ok, reason)
                        busy.pop(worker.proc.pid, None)
                        worker.item = -1
                elif worker.item >= 0 and now > worker.deadline:
                    results[worker.item] = (False, "timeout")
                    busy.pop(worker.proc.pid, None)
                    self._restart(worker)
                elif not worker.ready and now > worker.started + _START_TIMEOUT_S:
                    raise RuntimeError(
                        "math-verify worker did not start; is math-verify installed?"
                    )
        return [r if r is not None else (False, "error") for r in results]

    def _restart(self, worker: _Worker) -> None:
        worker.kill()
        fresh = _Worker()
        worker.__dict__.update(fresh.__dict__)


_POOLS: dict[int, MathVerifyPool] = {}
_POOLS_LOCK = threading.Lock()


def _pool(workers: int) -> MathVerifyPool:
    with _POOLS_LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = MathVerifyPool(workers)
        return _POOLS[workers]


@atexit.register
def _close_pools() -> None:
    for pool in list(_POOLS.values()):
        pool.close()


def default_workers() -> int:
    """Worker processes used by default: the cores this process may use, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


@register(
    "math",
    "text",
    fields=("answer",),
    doc="1 if the final answer equals the gold answer",
    reasons=(
        "no_answer",
        "unparsable",
        "bad_gold",
        "timeout",
        "memory",
        "crash",
        "error",
        "rescored",
    ),
)
def math_accuracy(
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    timeout: float = 5.0,
    workers: int | None = None,
    **fields: Any,
) -> tuple[np.ndarray, list[str]]:
    """float32[B]: 1.0 where math-verify finds the final answer equivalent to ``answer[i]``.

    Args:
      prompts, completions: list[str] of length B.
      answer: (field) gold answer strings, with or without ``$``/``\\boxed{}``.
      timeout: per-item seconds for each math-verify stage (rounded up to whole seconds).
      workers: worker processes (default `default_workers()`).
    Reasons: no_answer, unparsable, bad_gold, wrong, timeout, memory, crash, error, rescored (a
    worker died under the item and it was verified again: scored by the repeat, counted).
    """
    golds = row_field(fields, "answer", len(completions), "math")
    preds = [final_answer(text) for text in completions]
    todo = [i for i, p in enumerate(preds) if p is not None and p.strip()]
    scores = np.zeros(len(completions), np.float32)
    reasons = ["no_answer"] * len(completions)
    if todo:
        pool = _pool(workers or default_workers())
        items = [(str(golds[i]), preds[i]) for i in todo]
        for i, (ok, reason) in zip(todo, pool.run(items, timeout)):
            scores[i] = float(ok)
            reasons[i] = (
                reason if reason == "rescored" else ("" if ok or reason == "wrong" else reason)
            )
    return scores, reasons
