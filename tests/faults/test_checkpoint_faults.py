"""Faults around checkpoints, on the shared loop and checkpointer every trainer runs (GRPO, SFT,
RM, and each pipeline stage through them): each test runs the toy job (toy_job.py), injects one
fault, runs the same command again and checks that nothing is lost beyond the checkpoint
interval, that the metrics equal an unbroken run's (timings excluded) and that no good
checkpoint is lost."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest
import toy_job

from r1 import checkpoint as ckpt_lib
from r1.train.loop import DataChanged

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
STEPS, EVERY = 12, 3


def _rows(workdir) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.endswith("\n")]
    return [{k: v for k, v in r.items() if k != "step_seconds"} for r in rows]


def _steps_saved(workdir) -> list[int]:
    checkpointer = ckpt_lib.Checkpointer(str(workdir))
    try:
        return checkpointer.all_steps()
    finally:
        checkpointer.close()


@pytest.fixture
def data(tmp_path):
    return toy_job.write_data(str(tmp_path / "data.txt"), [0.5 * i - 3 for i in range(17)])


def _unbroken(tmp_path, data, size=8) -> list[dict]:
    toy_job.run(str(tmp_path / "unbroken"), data, STEPS, size)
    return _rows(tmp_path / "unbroken")


def _launch(workdir, data, *args: str) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    command = [sys.executable, os.path.join(HERE, "toy_job.py"), str(workdir), "--data", data]
    return subprocess.Popen(
        [*command, "--steps", str(STEPS), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# ----------------------------------------------------------------------------- killed runs
@pytest.mark.slow
def test_sigkill_at_random_points_resumes_exactly(tmp_path, data):
    expected = _unbroken(tmp_path, data)
    work = tmp_path / "killed"
    rng = random.Random(21)
    kills = 0
    for _ in range(3):
        before = len(_rows(work))
        proc = _launch(work, data, "--step_sleep", "0.06")
        while proc.poll() is None and len(_rows(work)) <= before:
            time.sleep(0.01)  # started and stepping
        time.sleep(rng.uniform(0.0, 0.5))
        if proc.poll() is not None:
            break
        proc.kill()
        proc.wait()
        kills += 1
        rows = _rows(work)
        saved = _steps_saved(work)
        last = rows[-1]["step"] if rows else 0
        assert (saved[-1] if saved else 0) >= last - EVERY  # lost at most one interval
    assert kills >= 2
    if proc.returncode is None or proc.returncode != 0:
        proc = _launch(work, data)
    assert proc.wait() == 0, proc.stderr.read()
    assert _rows(work) == expected
    assert _steps_saved(work) == [6, 9, 12]


@pytest.mark.slow
def test_sigkill_during_a_save_keeps_the_previous_checkpoint(tmp_path, data):
    """Killed while orbax writes checkpoint 6 (its temporary directory exists): the partial
    save is ignored, the run resumes from 3 and ends equal to an unbroken run."""
    size = 1 << 22  # 16 MiB of float32: a save long enough to be caught in the middle
    expected = _unbroken(tmp_path, data, size)
    work = tmp_path / "killed"
    proc = _launch(work, data, "--size", str(size))
    partial = None
    while proc.poll() is None and partial is None:
        names = os.listdir(work / "checkpoints") if (work / "checkpoints").exists() else []
        partial = next((n for n in names if n.startswith("6.") and "tmp" in n), None)
    proc.kill()
    proc.wait()
    assert partial is not None, "the save finished before the kill; enlarge the state"
    assert _steps_saved(work) == [3]
    proc = _launch(work, data, "--size", str(size))
    assert proc.wait() == 0, proc.stderr.read()
    assert "resumed from step 3" in proc.stderr.read()
    assert _rows(work) == expected
    assert _steps_saved(work) == [6, 9, 12]
    assert not [n for n in os.listdir(work / "checkpoints") if "tmp" in n]


@pytest.mark.slow
def test_disk_full_during_a_save_stops_clearly_and_keeps_the_previous_checkpoint(tmp_path, data):
    """Writes fail from step 5 on (a per-process file-size limit: EFBIG, as a full disk gives
    ENOSPC): the save of step 6 stops the run with `CheckpointSaveFailed`; checkpoint 3 is
    intact and the same command, with space again, resumes from it."""
    size = 1 << 18
    expected = _unbroken(tmp_path, data, size)
    work = tmp_path / "full"
    proc = _launch(
        work, data, "--size", str(size), "--file_size_limit", "65536", "--limit_from_step", "5"
    )
    assert proc.wait() != 0
    stderr = proc.stderr.read()
    error = next(
        (line for line in stderr.splitlines() if line.startswith("r1.checkpoint.")), stderr
    )
    assert error.startswith("r1.checkpoint.CheckpointSaveFailed: saving checkpoint 6")
    assert "is the disk full? The earlier checkpoints [3] are intact" in error
    assert _steps_saved(work) == [3]
    proc = _launch(work, data, "--size", str(size))
    assert proc.wait() == 0, proc.stderr.read()
    assert _rows(work) == expected


def test_sigterm_during_evaluation_and_during_a_save(tmp_path, data, monkeypatch):
    """SIGTERM while step 4 is evaluated: step 5 is the last, saved; SIGTERM while step 6 is
    saved: that save completes, step 7 is the last, saved. Each resume ends equal to an
    unbroken run."""
    expected = _unbroken(tmp_path, data)
    work = str(tmp_path / "term_eval")
    job = toy_job.ToyJob(data)
    job.on_eval = lambda step: step == 4 and os.kill(os.getpid(), signal.SIGTERM)
    first = toy_job.run(work, data, STEPS, job=job)
    assert not first.finished and first.step == 5 and _steps_saved(work)[-1] == 5
    again = toy_job.run(work, data, STEPS)
    assert again.start_step == 5 and _rows(work) == expected

    work = str(tmp_path / "term_save")
    real_save = ckpt_lib.Checkpointer.save

    def save_with_sigterm(self, step, state, data_state=None):
        if step == 6:
            os.kill(os.getpid(), signal.SIGTERM)
        real_save(self, step, state, data_state)

    monkeypatch.setattr(ckpt_lib.Checkpointer, "save", save_with_sigterm)
    first = toy_job.run(work, data, STEPS)
    monkeypatch.setattr(ckpt_lib.Checkpointer, "save", real_save)
    assert not first.finished and first.step == 7 and _steps_saved(work)[-2:] == [6, 7]
    again = toy_job.run(work, data, STEPS)
    assert again.start_step == 7 and _rows(work) == expected


# ----------------------------------------------------------------------------- damaged files
def _array_files(workdir, step) -> list[str]:
    root = os.path.join(workdir, "checkpoints", str(step), "state")
    return [os.path.join(d, n) for d, _, names in os.walk(root) for n in names if f"{os.sep}d" in d]


def _truncate(workdir, step):
    for path in _array_files(workdir, step):
        with open(path, "r+b") as f:
            f.truncate(1)


def _delete(workdir, step):
    for path in _array_files(workdir, step):
        os.remove(path)


def _drop_commit_marker(workdir, step):
    os.remove(os.path.join(workdir, "checkpoints", str(step), "commit_success.txt"))


@pytest.mark.parametrize("damage", [_truncate, _delete, _drop_commit_marker])
def test_a_damaged_latest_checkpoint(tmp_path, data, damage):
    """Truncated or deleted array files: the checkpoint is moved aside, the run resumes from
    the previous one and saves that step again. A missing commit_success.txt (written last on
    object stores; orbax renames the finished directory into place on local disks): the
    arrays are whole, so it restores as it is."""
    expected = _unbroken(tmp_path, data)
    work = str(tmp_path / "damaged")
    toy_job.run(work, data, STEPS)
    damage(work, STEPS)
    again = toy_job.run(work, data, STEPS)
    names = os.listdir(os.path.join(work, "checkpoints"))
    if damage is _drop_commit_marker:
        assert again.start_step == STEPS and not [n for n in names if "corrupt" in n]
    else:
        assert again.start_step == 9 and again.finished
        assert [n.split(".")[0] for n in names if ".corrupt-" in n] == [str(STEPS)]
    assert _steps_saved(work) == [6, 9, 12]
    assert _rows(work) == expected
    more = toy_job.run(work, data, STEPS + 2)
    assert more.start_step == STEPS and more.step == STEPS + 2


def test_a_checkpoint_of_another_config_names_both_shapes(tmp_path, data):
    work = str(tmp_path / "other")
    toy_job.run(work, data, 3, size=8)
    with pytest.raises(ckpt_lib.CheckpointMismatch) as err:
        toy_job.run(work, data, 6, size=16)
    message = str(err.value)
    assert "checkpoint 3" in message and "another configuration" in message
    assert "['w'] has shape (16,) in this run's state but (8,) in the checkpoint" in message
    with pytest.raises(ckpt_lib.CheckpointMismatch):
        toy_job.run(work, data, 6, size=16, restart=True)  # not corrupt: never moved aside
    assert sorted(os.listdir(os.path.join(work, "checkpoints"))) == ["3"]


def test_a_data_file_changed_between_stop_and_resume(tmp_path, data):
    work = str(tmp_path / "changed")
    toy_job.run(work, data, 6)
    with open(data, "a") as f:
        f.write("99\n")
    with pytest.raises(DataChanged, match="--config.data.allow_changed=True"):
        toy_job.run(work, data, STEPS)
    assert _steps_saved(work) == [3, 6]
    allowed = toy_job.run(work, data, STEPS, allow_data_change=True)
    assert allowed.start_step == 6 and allowed.finished


# ----------------------------------------------------------------------------- multi-host
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_pair(workdir, data, steps: int) -> list[subprocess.Popen]:
    port = _free_port()
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": ROOT,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
        "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
    }
    script = os.path.join(HERE, "toy_job.py")
    return [
        subprocess.Popen(
            [sys.executable, script, str(workdir), "--data", data, "--steps", str(steps)]
            + ["--step_sleep", "0.1", "--coordinator", f"127.0.0.1:{port}"]
            + ["--process_id", str(i), "--heartbeat_timeout", "10"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]


@pytest.mark.slow
def test_one_process_of_two_killed(tmp_path, data):
    """Process 1 of a 2-process job is SIGKILLed mid-run: process 0's next collective fails and
    it exits with an error saying what to do, bounded by the heartbeat timeout (no hang); both
    started again resume from the last checkpoint and finish equal to an unbroken run."""
    steps = 40
    toy_job.run(str(tmp_path / "unbroken"), data, steps)
    expected = _rows(tmp_path / "unbroken")
    work = tmp_path / "pair"
    first, second = _launch_pair(work, data, steps)
    while first.poll() is None and len(_rows(work)) < 8:
        time.sleep(0.05)
    second.kill()
    second.communicate()
    began = time.monotonic()
    output = first.communicate(timeout=120)[0]
    assert first.returncode != 0 and time.monotonic() - began < 90
    assert "process 0 of 2 stopped" in output and "run the same command on every host" in output
    assert _steps_saved(work)
    for proc in _launch_pair(work, data, steps):
        out = proc.communicate(timeout=120)[0]
        assert proc.returncode == 0, out[-3000:]
        assert "resumed from step" in out
    rows = _rows(work)
    assert [r["step"] for r in rows] == [r["step"] for r in expected]
    for got, want in zip(rows, expected):
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-5), (got["step"], key)
