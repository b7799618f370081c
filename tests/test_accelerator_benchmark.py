"""benchmarks/accelerator.py in its CPU smoke mode: the accelerator script (run on a lent GPU
for minutes at a time) must not be found broken only there."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_accelerator_benchmark_runs_its_sections_at_tiny_sizes(tmp_path):
    out = tmp_path / "lines.jsonl"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "accelerator.py"),
            "--smoke",
            "--only",
            "chip,decode,decode_scanned,grpo",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "failed" not in proc.stdout and "timed out" not in proc.stdout, proc.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    by_section = {}
    for row in rows:
        by_section.setdefault(row["section"], []).append(row)
    assert set(by_section) == {"chip", "decode", "grpo"}
    assert by_section["chip"][0]["platform"] == "cpu"
    decode = {(r["variant"], r["param_dtype"], r["batch"]): r for r in by_section["decode"]}
    # the default run (bf16 at batches 1 and 4, float32 at 4) and the scanned-sampler variant
    assert set(decode) == {
        ("default", "bfloat16", 1),
        ("default", "bfloat16", 4),
        ("default", "float32", 4),
        ("scanned", "bfloat16", 1),
        ("scanned", "bfloat16", 4),
    }
    for row in decode.values():
        assert row["model"] == "qwen2_tiny" and row["tokens_per_sec"] > 0
        # the bytes a step must read: at least the weights, in bf16 even for float32 masters
        assert row["bytes_per_step"] >= row["param_bytes"] > 0
    assert (
        decode[("default", "float32", 4)]["param_bytes"]
        < 1.01 * decode[("default", "bfloat16", 4)]["param_bytes"]
    )
    grpo = by_section["grpo"][0]
    assert grpo["generated_tokens_per_step"] == grpo["rows"] * grpo["new_tokens"]
    assert grpo["seconds_per_step"] > 0 and math.isfinite(grpo["kl"])
    assert "grpo:" in proc.stdout and "MFU" in proc.stdout
