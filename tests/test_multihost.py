"""Two local processes joined by jax.distributed run the sharded training step of one process."""

import os
import re
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(output: str) -> list[str]:
    return re.findall(r"^step \d+/\d+  loss (\S+)", output, flags=re.M)


def _run(devices: int, extra: list[str], process_id: int | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] = "gloo"
    command = [
        sys.executable,
        "-m",
        "experiments.forward",
        "--config=configs/models.py:qwen2_tiny",
        "--config.model.num_layers=2",
        "--steps=2",
        "--batch_size=8",
        "--seq_len=32",
        *extra,
    ]
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_two_processes_match_one_process():
    port = _free_port()
    procs = [
        _run(
            4,
            [
                "--distributed",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    single = _run(8, [])
    single_out = single.communicate(timeout=240)[0]
    assert single.returncode == 0, single_out[-3000:]
    expected = _losses(single_out)
    assert len(expected) == 2
    for out in outputs:
        assert "devices: 8 x cpu" in out
        assert _losses(out) == expected
