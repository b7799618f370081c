"""Rewards at pod scale: with `CompiledSpec.shard_rows` each device's host callback scores the
rows it holds, so each process of a 2-process job scores only its own half of the batch, and
the totals and failure counts equal one process's."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(REPO, "tests", "rewards", "host_rows_worker.py")
ROWS = 16


def _start(out, devices, *distributed):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] = "gloo"
    command = [sys.executable, WORKER, str(out), *map(str, distributed)]
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(proc, out):
    output = proc.communicate(timeout=240)[0]
    assert proc.returncode == 0, output[-3000:]
    with open(out) as f:
        return json.load(f)


def test_each_process_scores_only_its_own_rows(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outs = [tmp_path / f"p{i}.json" for i in range(2)]
    procs = [_start(outs[i], 4, f"127.0.0.1:{port}", 2, i) for i in range(2)]
    single_out = tmp_path / "single.json"
    results = [_finish(p, o) for p, o in zip(procs, outs)]
    single = _finish(_start(single_out, 8), single_out)

    assert single["seen"] == list(range(ROWS)) and single["devices"] == 8
    expected_total = np.float32(np.arange(ROWS) / 10).tolist()
    assert single["total"] == expected_total and single["odd"] == ROWS // 2
    # Rows are laid out over (data, fsdp); each process holds a contiguous half.
    assert [r["seen"] for r in results] == [list(range(8)), list(range(8, 16))]
    for result in results:
        assert result["devices"] == 8
        assert result["total"] == expected_total and result["odd"] == ROWS // 2
