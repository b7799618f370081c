"""The one run loop under every trainer (GRPO, SFT, reward model).

    result = run_loop(workdir, state, state_shardings, settings, hooks)

A trainer supplies its step and its host-side pieces as `LoopHooks`; the loop owns what every
long job needs and does the same way for all of them:

* **restore or init**: the newest checkpoint of `workdir/checkpoints` that restores (train state
  + data iterator position, `r1.checkpoint`), metrics rows after it dropped, else the given state;
* **SIGTERM**: the step in flight finishes, is checkpointed, and the loop returns (`finished`
  False);
* **non-finite stop**: a NaN/inf `loss` or `grad_norm` raises `NonFiniteError` before anything
  of that step is written or saved;
* **progress bar, metric writer** (`metrics.jsonl` + TensorBoard), **main-process-only writes**
  (the writer, `config.json`, `curves.png`);
* **cadences**: evaluation every `eval_every` steps (and at the start and the last step),
  checkpoints every `checkpoint_every` steps and at the end, a metrics row every `log_every`
  steps (and every evaluation row and the last step).

Asynchronous metrics (as nanodo does): step N is dispatched before step N-1's metrics are
fetched, so the host does not block the device every step; host work on step N-1's outputs
(decoding completions, behaviour metrics, writing samples) overlaps step N on the device. A step
that is checkpointed, evaluated, the last one, or the one after a SIGTERM is fetched at once,
before its state is saved or evaluated, so nothing non-finite is ever saved. The numbers are
the same as with a blocking fetch; only the schedule changes. `step_seconds` is the time from
the later of the step's dispatch and the previous step's completion to its completion (from its
dispatch, for a step fetched at once).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax

from r1 import checkpoint as ckpt_lib
from r1 import logging as r1_logging
from r1.train.state import TrainState, abstract_with_shardings

log = logging.getLogger(__name__)

Metrics = dict[str, float]


class NonFiniteError(RuntimeError):
    """The loss or gradient became NaN/inf."""


class DataChanged(RuntimeError):
    """The run's data files differ from those its checkpoint was saved with."""


FINGERPRINT_KEY = "data_fingerprint"  # in a checkpoint's data state


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """The loop's cadences. name: the progress bar's label. steps: the last step number.
    eval_every: 0 = only at the start (when `eval_at_start`). log_every: write a metrics row
    every this many steps (evaluation rows and the last step always). finite_keys: metrics that
    must be finite for a step to count. restart: when checkpoints exist but none restores, move
    them aside and start from step 0 (default: stop with `r1.checkpoint.NoCheckpointRestores`).
    data_fingerprint: the run's data files (`r1.data.fingerprint.files_fingerprint`; "" for
    none), saved in every checkpoint; a resume whose data differs stops with `DataChanged`
    unless `allow_data_change` (the config's ``data.allow_changed``)."""

    name: str
    steps: int
    checkpoint_every: int
    keep_checkpoints: int = 3
    restart: bool = False
    data_fingerprint: str = ""
    allow_data_change: bool = False
    eval_every: int = 0
    eval_at_start: bool = False
    log_every: int = 1
    finite_keys: tuple[str, ...] = ("loss", "grad_norm")
    curve_panels: tuple = ()

    def __post_init__(self):
        if self.steps < 0 or self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ValueError(
                f"LoopSettings({self.name}): steps >= 0, checkpoint_every >= 1 and "
                f"keep_checkpoints >= 1 expected, got {self.steps}, {self.checkpoint_every}, "
                f"{self.keep_checkpoints}"
            )

    def evaluates(self, step: int) -> bool:
        return self.eval_every > 0 and (step % self.eval_every == 0 or step == self.steps)

    def saves(self, step: int) -> bool:
        return step % self.checkpoint_every == 0 or step == self.steps

    def logs(self, step: int) -> bool:
        return step % max(self.log_every, 1) == 0 or step == self.steps


def _no_postfix(metrics: Metrics) -> dict[str, str]:
    return {}


@dataclasses.dataclass
class LoopHooks:
    """What a trainer plugs into `run_loop`.

    next_batch(step) -> the host batch of (1-based) `step`, or None when the data is exhausted.
    run_step(state, batch) -> (new state, device metrics {name: scalar}, device outputs or None);
      dispatched asynchronously (the state is donated).
    host_metrics(step, batch, metrics, outputs, seconds) -> more metrics, computed on the host
      from the fetched metrics and outputs (throughput, behaviour, data statistics); called on
      every process in step order (it may run collectives).
    on_logged(step, batch, metrics, outputs) -> None: after a row is written (samples files).
    evaluate(state) -> metrics, or None for no evaluation.
    data_state() / restore_data(state): the data iterator's position, saved in checkpoints.
    on_resume(step): after a restore (e.g. trim sample files past the checkpoint).
    postfix(metrics) -> the progress bar's fields.
    """

    next_batch: Callable[[int], Any]
    run_step: Callable[[TrainState, Any], tuple[TrainState, Mapping[str, Any], Any]]
    host_metrics: Callable[[int, Any, Metrics, Any, float], Metrics] = lambda *a: {}
    on_logged: Callable[[int, Any, Metrics, Any], None] = lambda *a: None
    evaluate: Callable[[TrainState], Metrics] | None = None
    data_state: Callable[[], dict] = dict
    restore_data: Callable[[dict], None] = lambda data_state: None
    on_resume: Callable[[int], None] = lambda step: None
    postfix: Callable[[Metrics], dict[str, str]] = _no_postfix


@dataclasses.dataclass
class LoopResult:
    """state: the last good state. step: its step number. last: the last metrics row.
    finished: the run reached `steps` or the end of its data (False after a SIGTERM).
    start_step: where this invocation started (0, or the restored checkpoint's step)."""

    state: TrainState
    step: int
    last: Metrics
    finished: bool
    start_step: int


@dataclasses.dataclass
class _Pending:
    step: int
    batch: Any
    metrics: Mapping[str, Any]
    outputs: Any
    dispatched: float


def is_main_process() -> bool:
    return jax.process_index() == 0


def write_config(workdir: str, config: Any) -> None:
    """`workdir/config.json` from the experiment's ConfigDict (the main process writes it)."""
    os.makedirs(workdir, exist_ok=True)
    if is_main_process():
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))


class _Run:
    """The loop's mutable pieces for one `run_loop` call."""

    def __init__(self, workdir: str, settings: LoopSettings, hooks: LoopHooks):
        self.settings, self.hooks = settings, hooks
        self.checkpointer = ckpt_lib.Checkpointer(workdir, keep=settings.keep_checkpoints)
        self.writer = r1_logging.MetricWriter(workdir, enabled=is_main_process())
        self.stop_requested = False
        self.last: Metrics = {}
        self.previous_done = 0.0
        self.progress = None

    def finish(self, pending: _Pending, state: TrainState | None, at_once: bool = False) -> Metrics:
        """Fetches `pending`'s metrics, checks them, adds host metrics (and an evaluation of
        `state` when due), writes the row and returns it. at_once: fetched right after its own
        dispatch (its time is dispatch to completion); otherwise after the next step's dispatch
        (its time is from the later of its dispatch and the previous completion)."""
        metrics = {k: float(v) for k, v in jax.device_get(dict(pending.metrics)).items()}
        done = time.perf_counter()
        start = pending.dispatched if at_once else max(pending.dispatched, self.previous_done)
        seconds = done - start
        self.previous_done = done
        bad = {k: metrics.get(k) for k in self.settings.finite_keys}
        if not all(v is None or math.isfinite(v) for v in bad.values()):
            raise NonFiniteError(
                f"step {pending.step}: non-finite "
                + ", ".join(f"{k} ({v})" for k, v in bad.items())
                + "; stopping without saving this step. The last checkpoint is intact in "
                f"{self.checkpointer.directory}"
            )
        metrics["step_seconds"] = seconds
        metrics.update(
            self.hooks.host_metrics(pending.step, pending.batch, metrics, pending.outputs, seconds)
        )
        if state is not None and self.hooks.evaluate and self.settings.evaluates(pending.step):
            metrics.update(self.hooks.evaluate(state))
        logged = self.settings.logs(pending.step) or any(k.startswith("eval/") for k in metrics)
        if logged:
            self.writer.write(pending.step, metrics)
            self.hooks.on_logged(pending.step, pending.batch, metrics, pending.outputs)
        self.last = metrics
        self.progress.update(1)
        self.progress.set_postfix(**self.hooks.postfix(metrics))
        return metrics

    def data_state(self) -> dict:
        """The data iterator's state plus the data fingerprint, as checkpoints save it."""
        fingerprint = self.settings.data_fingerprint
        return {
            **self.hooks.data_state(),
            **({FINGERPRINT_KEY: fingerprint} if fingerprint else {}),
        }

    def restore(self, state: TrainState, shardings: TrainState) -> tuple[int, TrainState]:
        had_checkpoints = bool(self.checkpointer.all_steps())
        restored = self.checkpointer.restore_latest(
            abstract_with_shardings(state, shardings), restart=self.settings.restart
        )
        if restored is None:
            if had_checkpoints:  # --restart moved them aside: their rows go aside with them
                self.writer.move_aside(time.strftime("corrupt-%Y%m%dT%H%M%SZ", time.gmtime()))
            else:  # killed before its first checkpoint: the rows are recomputed
                self.writer.truncate_after(-1)
            return 0, state
        start_step, state, data_state = restored
        data_state = dict(data_state)
        saved = data_state.pop(FINGERPRINT_KEY, "")
        current = self.settings.data_fingerprint
        if saved and current and saved != current:
            if not self.settings.allow_data_change:
                raise DataChanged(
                    f"the data files changed since checkpoint {start_step} in "
                    f"{self.checkpointer.directory} was saved (fingerprint {saved[:12]} -> "
                    f"{current[:12]}); resuming would not continue the same data. Restore the "
                    "files, use a new --workdir, or pass --config.data.allow_changed=True to "
                    "resume at the saved position in the new data"
                )
            log.warning("data files changed since step %d; resuming anyway", start_step)
        if data_state:
            self.hooks.restore_data(data_state)
        self.writer.truncate_after(start_step)
        self.hooks.on_resume(start_step)
        log.warning("resumed from step %d in %s", start_step, self.checkpointer.directory)
        return start_step, state


def run_loop(
    workdir: str,
    state: TrainState,
    state_shardings: TrainState,
    settings: LoopSettings,
    hooks: LoopHooks,
) -> LoopResult:
    """Runs (or resumes) steps `start + 1 .. settings.steps` of a job in `workdir`.

    state: the freshly initialised state (placed with `state_shardings`); replaced by the newest
    checkpoint that restores. Returns the final state and metrics; see the module docstring.
    """
    from tqdm import tqdm  # noqa: PLC0415 - a progress bar only for jobs that run the loop

    run = _Run(workdir, settings, hooks)
    previous = signal.signal(signal.SIGTERM, lambda *_: setattr(run, "stop_requested", True))
    start_step, step, finished = 0, 0, False
    try:
        start_step, state = run.restore(state, state_shardings)
        step = start_step
        run.progress = tqdm(
            total=settings.steps,
            initial=start_step,
            disable=not is_main_process(),
            desc=settings.name,
            unit="step",
        )
        if start_step == 0 and settings.eval_at_start and hooks.evaluate is not None:
            run.last = hooks.evaluate(state)
            run.writer.write(0, run.last)
        state, step, finished = _steps(run, state, start_step)
    except Exception as err:
        if jax.process_count() > 1:
            _explain_peer_failure(run, err)
        raise
    finally:
        if run.progress is not None:
            run.progress.close()
        signal.signal(signal.SIGTERM, previous)
        run.checkpointer.close()
        run.writer.close()
    if is_main_process() and settings.curve_panels and os.path.exists(run.writer.path):
        r1_logging.plot_curves(
            run.writer.path, os.path.join(workdir, "curves.png"), settings.curve_panels
        )
    return LoopResult(state, step, run.last, finished, start_step)


def _explain_peer_failure(run: _Run, err: Exception) -> None:
    """Logs, on a multi-process job, the one line that says what to do when a step fails
    because another process died (its collectives fail here: 'connection closed by peer')."""
    saved = run.checkpointer.all_steps()
    log.error(
        "process %d of %d stopped: %s: %s. If another process of this job died or was "
        "preempted, this one cannot go on alone: run the same command on every host again; it "
        "resumes from checkpoint %s in %s",
        jax.process_index(),
        jax.process_count(),
        type(err).__name__,
        str(err).splitlines()[0] if str(err) else "",
        saved[-1] if saved else "(none: from the start)",
        run.checkpointer.directory,
    )


def _steps(run: _Run, state: TrainState, start_step: int) -> tuple[TrainState, int, bool]:
    """The stepping part of `run_loop`: (last good state, its step, finished)."""
    settings, hooks = run.settings, run.hooks
    pending: _Pending | None = None
    step = start_step
    while step < settings.steps:
        batch = hooks.next_batch(step + 1)
        if batch is None:
            if pending is not None:
                run.finish(pending, state)
                pending = None
            log.warning("data exhausted after %d steps", step)
            if step > start_step and step not in run.checkpointer.all_steps():
                run.checkpointer.save(step, state, run.data_state())
            return state, step, True
        step += 1
        dispatched = time.perf_counter()
        state, metrics, outputs = hooks.run_step(state, batch)
        if pending is not None:
            run.finish(pending, None)
        pending = _Pending(step, batch, metrics, outputs, dispatched)
        stop = run.stop_requested
        if stop or settings.saves(step) or settings.evaluates(step):
            run.finish(pending, state, at_once=True)
            pending = None
            if stop or settings.saves(step):
                run.checkpointer.save(step, state, run.data_state())
            if stop:
                log.warning("SIGTERM: saved step %d, exiting", step)
                return state, step, False
    if pending is not None:
        run.finish(pending, state)
    return state, step, True
