"""The GRPO trainer end to end: outputs, exact resume after SIGKILL, save on SIGTERM."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMING_KEYS = {"step_seconds", "tokens_per_sec", "time/rewards"}
# A random-init policy of the demo's architecture, shrunk so each step takes a fraction of a second.
FAST = [
    "--config.init.hf_path=",
    "--config.model.hidden_size=64",
    "--config.model.intermediate_size=128",
    "--config.model.moe_intermediate_size=32",
    "--config.rl.prompts_per_step=4",
    "--config.rl.group_size=4",
    "--config.rl.max_new_tokens=12",
    "--config.eval.every=2",
    "--config.eval.per_difficulty=1",
    "--config.train.samples_every=2",
    "--config.data.buckets=(48,)",
]


def _command(workdir, steps, checkpoint_every):
    return [
        sys.executable,
        "-m",
        "experiments.train",
        "--config=configs/r1_zero.py:tiny",
        f"--workdir={workdir}",
        f"--config.train.steps={steps}",
        f"--config.train.checkpoint_every={checkpoint_every}",
        *FAST,
    ]


def _env():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = REPO
    return env


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def _run(workdir, steps, checkpoint_every):
    proc = subprocess.run(
        _command(workdir, steps, checkpoint_every),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_kill_and_resume_reproduces_the_unbroken_run(tmp_path):
    unbroken = tmp_path / "unbroken"
    _run(unbroken, steps=6, checkpoint_every=2)
    expected = _rows(unbroken)
    assert [r["step"] for r in expected if "loss" in r] == [1, 2, 3, 4, 5, 6]
    for name in ("samples.jsonl", "curves.png", "config.json"):
        assert (unbroken / name).exists(), name
    assert any("eval/accuracy" in r for r in expected)

    broken = tmp_path / "broken"
    proc = subprocess.Popen(
        _command(broken, 6, 2),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 500
    while not (broken / "checkpoints" / "2").exists() and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    _run(broken, steps=6, checkpoint_every=2)
    assert _rows(broken) == expected


@pytest.mark.slow
def test_cpu_devices_flag_splits_the_step_over_every_core(tmp_path):
    """`--cpu_devices=2` gives jax two CPU devices (over the environment's one) and the
    config's mesh (fsdp=-1) spans them; the run trains and evaluates as usual."""
    command = _command(tmp_path / "run", steps=2, checkpoint_every=2) + ["--cpu_devices=2"]
    proc = subprocess.run(
        command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "devices: 2 x cpu" in proc.stderr
    rows = _rows(tmp_path / "run")
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert any("eval/accuracy" in r for r in rows)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.Popen(
        _command(workdir, 200, 1000),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 500
    while proc.poll() is None:
        metrics = workdir / "metrics.jsonl"
        if metrics.exists() and sum(1 for _ in open(metrics)) >= 3:
            break
        assert time.time() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    steps = sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit())
    assert steps and steps[-1] < 200
    last_logged = max(r["step"] for r in _rows(workdir))
    assert steps[-1] == last_logged


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _multihost(workdir, steps, port):
    env = _env()
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] = "gloo"
    procs = [
        subprocess.Popen(
            [
                *_command(workdir, steps, 1),
                "--distributed",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    for p, err in zip(procs, errors):
        assert p.returncode == 0, err[-4000:]


@pytest.mark.slow
def test_two_processes_with_checkpoint_restore_match_one_process(tmp_path):
    """The pod code path: jax.distributed with 2 local processes x 4 CPU devices (gloo), per-
    process data shards, a checkpoint save after step 2 and a restore for step 3."""
    env = _env()
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    single = tmp_path / "single"
    proc = subprocess.run(
        _command(single, 3, 1), cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    multi = tmp_path / "multi"
    _multihost(multi, 2, _free_port())
    assert (multi / "checkpoints" / "2").exists()
    _multihost(multi, 3, _free_port())  # restores step 2, runs step 3
    expected, got = _rows(single), _rows(multi)
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    mismatches = []
    for a, b in zip(expected, got):
        assert a.keys() == b.keys()
        for key in a:
            if key.startswith("reward_failures"):
                continue
            if a[key] != pytest.approx(b[key], rel=1e-4, abs=1e-5):
                mismatches.append((a["step"], key, a[key], b[key]))
    assert not mismatches, mismatches
