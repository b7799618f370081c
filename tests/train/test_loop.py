"""The shared run loop (r1/train/loop.py) on a toy job: cadences, resume, the non-finite stop,
SIGTERM, data exhaustion, the asynchronous metric fetch and main-process-only writes."""

from __future__ import annotations

import json
import os
import signal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from r1 import checkpoint as ckpt_lib
from r1 import logging as r1_logging
from r1.train import loop as loop_lib
from r1.train.loop import LoopHooks, LoopSettings, NonFiniteError, run_loop
from r1.train.state import TrainState


def _state() -> tuple[TrainState, TrainState]:
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params={"w": jnp.arange(4, dtype=jnp.float32)},
        extra={},
        opt_state=(),
        rng=jax.random.key_data(jax.random.key(0)),
    )
    single = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return state, jax.tree.map(lambda _: single, state)


@jax.jit
def _toy_step(state: TrainState, batch: jax.Array, nan_at: jax.Array):
    step = state.step + 1
    w = state.params["w"] * 0.9 + batch
    loss = jnp.where(step == nan_at, jnp.nan, jnp.sum(w))
    new = TrainState(step, {"w": w}, state.extra, state.opt_state, state.rng)
    return new, {"loss": loss, "grad_norm": jnp.float32(1.0)}, {"w": w}


class ToyJob:
    """Batches are `step * 0.01`; records the order of the loop's calls."""

    def __init__(self, nan_at: int = -1, end_after: int = 10**9, sigterm_at: int = -1):
        self.nan_at, self.end_after, self.sigterm_at = nan_at, end_after, sigterm_at
        self.calls: list[tuple[str, int]] = []
        self.position = 0
        self.evaluated: list[int] = []

    def next_batch(self, step: int):
        if step > self.end_after:
            return None
        self.position = step
        return step, jnp.float32(step * 0.01)

    def run_step(self, state, batch):
        step, value = batch
        self.calls.append(("dispatch", step))
        if step == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return _toy_step(state, value, jnp.int32(self.nan_at))

    def host_metrics(self, step, batch, metrics, outputs, seconds):
        self.calls.append(("fetch", step))
        return {"w0": float(np.asarray(outputs["w"])[0]), "batch": float(batch[1])}

    def evaluate(self, state):
        self.evaluated.append(int(state.step))
        return {"eval/w_sum": float(jnp.sum(state.params["w"]))}

    def hooks(self, evaluate: bool = True) -> LoopHooks:
        return LoopHooks(
            next_batch=self.next_batch,
            run_step=self.run_step,
            host_metrics=self.host_metrics,
            evaluate=self.evaluate if evaluate else None,
            data_state=lambda: {"position": self.position},
            restore_data=lambda d: setattr(self, "position", d["position"]),
        )


def _settings(**kw) -> LoopSettings:
    base = dict(name="toy", steps=8, checkpoint_every=3, eval_every=4, eval_at_start=True)
    base.update(kw)
    return LoopSettings(**base)


def _rows(workdir) -> list[dict]:
    return r1_logging.read_jsonl(os.path.join(workdir, "metrics.jsonl"))


def _values(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "step_seconds"} for r in rows]


def test_cadences_and_the_asynchronous_fetch(tmp_path):
    job = ToyJob()
    state, shardings = _state()
    result = run_loop(str(tmp_path), state, shardings, _settings(), job.hooks())
    assert result.finished and result.step == 8 and int(result.state.step) == 8
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == list(range(9))
    assert job.evaluated == [0, 4, 8]
    assert [r["step"] for r in rows if "eval/w_sum" in r] == [0, 4, 8]
    assert all(r["step_seconds"] >= 0 for r in rows[1:])
    checkpointer = ckpt_lib.Checkpointer(str(tmp_path))
    assert checkpointer.all_steps() == [3, 6, 8]
    checkpointer.close()
    # Steps that are neither saved nor evaluated are fetched after the next dispatch; the
    # others before it.
    order = job.calls
    for step in (1, 2, 5, 7):
        assert order.index(("dispatch", step + 1)) < order.index(("fetch", step))
    for step in (3, 4, 6):
        assert order.index(("fetch", step)) < order.index(("dispatch", step + 1))


def test_resume_equals_an_unbroken_run(tmp_path):
    state, shardings = _state()
    unbroken = tmp_path / "unbroken"
    run_loop(str(unbroken), state, shardings, _settings(), ToyJob().hooks())
    broken = tmp_path / "broken"
    state, shardings = _state()
    first = run_loop(str(broken), state, shardings, _settings(steps=5), ToyJob().hooks())
    assert first.finished and first.step == 5
    state, shardings = _state()
    job = ToyJob()
    second = run_loop(str(broken), state, shardings, _settings(), job.hooks())
    assert second.start_step == 5 and job.calls[0] == ("dispatch", 6)

    # The same rows, except that the 5-step run also evaluated its last step.
    def training(rows):
        return [{k: v for k, v in r.items() if not k.startswith("eval/")} for r in _values(rows)]

    assert training(_rows(broken)) == training(_rows(unbroken))
    assert float(second.state.params["w"][0]) == _rows(unbroken)[-1]["w0"]


def _corrupt(workdir, step):
    """Truncates every array file of checkpoint `step` (what a bad disk or copy leaves)."""
    for root, _, files in os.walk(os.path.join(workdir, "checkpoints", str(step), "state")):
        for name in files:
            if os.path.getsize(os.path.join(root, name)) > 0 and "/d" in root:
                with open(os.path.join(root, name), "r+b") as f:
                    f.truncate(1)


def test_a_corrupt_checkpoint_is_moved_aside_and_the_run_passes_it(tmp_path):
    state, shardings = _state()
    unbroken = tmp_path / "unbroken"
    run_loop(str(unbroken), state, shardings, _settings(), ToyJob().hooks())
    broken = tmp_path / "broken"
    state, shardings = _state()
    run_loop(str(broken), state, shardings, _settings(), ToyJob().hooks())
    _corrupt(broken, 8)
    state, shardings = _state()
    again = run_loop(str(broken), state, shardings, _settings(), ToyJob().hooks())
    # The same command again: resumed from 6, recomputed 7 and 8 and saved 8 anew.
    assert again.start_step == 6 and again.finished and again.step == 8
    aside = [d for d in os.listdir(broken / "checkpoints") if d.startswith("8.corrupt-")]
    assert len(aside) == 1
    checkpointer = ckpt_lib.Checkpointer(str(broken))
    assert checkpointer.all_steps() == [3, 6, 8]
    checkpointer.close()
    state, shardings = _state()
    more = run_loop(str(broken), state, shardings, _settings(steps=9), ToyJob().hooks())
    assert more.start_step == 8 and more.step == 9  # and the run goes on past it
    rows = [r for r in _values(_rows(broken)) if r["step"] <= 8 and "eval/w_sum" not in r]
    expected = [r for r in _values(_rows(unbroken)) if "eval/w_sum" not in r]
    assert rows == expected


def test_when_no_checkpoint_restores_the_run_stops_unless_restarted(tmp_path):
    state, shardings = _state()
    run_loop(str(tmp_path), state, shardings, _settings(steps=3), ToyJob().hooks())
    _corrupt(tmp_path, 3)
    state, shardings = _state()
    with pytest.raises(ckpt_lib.NoCheckpointRestores, match="--restart"):
        run_loop(str(tmp_path), state, shardings, _settings(steps=3), ToyJob().hooks())
    assert os.listdir(tmp_path / "checkpoints") == ["3"]  # nothing moved
    state, shardings = _state()
    fresh = run_loop(
        str(tmp_path), state, shardings, _settings(steps=3, restart=True), ToyJob().hooks()
    )
    assert fresh.start_step == 0 and fresh.finished
    names = sorted(os.listdir(tmp_path / "checkpoints"))
    assert names[0] == "3" and names[1].startswith("3.corrupt-")
    # The first run's rows are kept beside the new ones, not overwritten.
    (kept,) = [n for n in os.listdir(tmp_path) if n.startswith("metrics.jsonl.corrupt-")]
    assert [r["step"] for r in r1_logging.read_jsonl(str(tmp_path / kept))] == [0, 1, 2, 3]
    assert [r["step"] for r in _rows(tmp_path)] == [0, 1, 2, 3]


@pytest.mark.parametrize("nan_at", [2, 3])
def test_non_finite_stops_before_anything_of_the_step_is_saved(tmp_path, nan_at):
    state, shardings = _state()
    with pytest.raises(NonFiniteError, match=f"step {nan_at}: non-finite loss"):
        run_loop(str(tmp_path), state, shardings, _settings(), ToyJob(nan_at=nan_at).hooks())
    assert [r["step"] for r in _rows(tmp_path)] == list(range(nan_at))
    checkpointer = ckpt_lib.Checkpointer(str(tmp_path))
    assert nan_at not in checkpointer.all_steps()
    checkpointer.close()


def test_sigterm_saves_the_step_in_flight_and_returns(tmp_path):
    state, shardings = _state()
    job = ToyJob(sigterm_at=5)
    result = run_loop(str(tmp_path), state, shardings, _settings(), job.hooks())
    assert not result.finished and result.step == 5
    checkpointer = ckpt_lib.Checkpointer(str(tmp_path))
    assert checkpointer.all_steps()[-1] == 5
    checkpointer.close()
    assert signal.getsignal(signal.SIGTERM) is not None
    assert _rows(tmp_path)[-1]["step"] == 5


def test_data_exhaustion_saves_the_last_step(tmp_path):
    state, shardings = _state()
    job = ToyJob(end_after=4)
    result = run_loop(str(tmp_path), state, shardings, _settings(), job.hooks())
    assert result.finished and result.step == 4
    checkpointer = ckpt_lib.Checkpointer(str(tmp_path))
    assert checkpointer.all_steps() == [3, 4]
    checkpointer.close()


def test_log_every_keeps_evaluation_rows_and_the_last_step(tmp_path):
    state, shardings = _state()
    settings = _settings(steps=7, log_every=3, eval_every=5, eval_at_start=False)
    run_loop(str(tmp_path), state, shardings, settings, ToyJob().hooks())
    assert [r["step"] for r in _rows(tmp_path)] == [3, 5, 6, 7]


def test_only_the_main_process_writes(tmp_path, monkeypatch):
    config = ml_collections.ConfigDict({"a": 1})
    loop_lib.write_config(str(tmp_path / "main"), config)
    assert json.loads((tmp_path / "main" / "config.json").read_text()) == {"a": 1}
    monkeypatch.setattr(loop_lib, "is_main_process", lambda: False)
    loop_lib.write_config(str(tmp_path / "other"), config)
    assert not (tmp_path / "other" / "config.json").exists()
    state, shardings = _state()
    run_loop(str(tmp_path / "other"), state, shardings, _settings(steps=2), ToyJob().hooks())
    assert not (tmp_path / "other" / "metrics.jsonl").exists()


def test_settings_are_validated():
    with pytest.raises(ValueError, match="checkpoint_every"):
        LoopSettings(name="x", steps=3, checkpoint_every=0)
