r"""Compile a config's real training step for a TPU topology on this (CPU-only) host.

    pip install -e .[tpu]          # libtpu describes TPU topologies; no TPU needed
    python -m experiments.aot --config=configs/r1_zero.py:tiny --topology=v5e:2x2
    python -m experiments.aot --config=configs/r1_zero.py:deepseek_v3 --topology=v5p:8x8x16
    python -m experiments.aot --config=configs/r1_zero.py:deepseek_v3 --topology=v5p:8x8x16 \
        --slices=2
    python -m experiments.aot --config=configs/r1_zero.py:deepseek_v3   # its train.topology

Prints the per-device memory plan (parameters, optimizer state, reference, KV cache,
temporaries, outputs against the chip's HBM), the compiler's cost-model estimate (flops per step
and per generated token, seconds per step, tokens/s, MFU) and, when the step does not fit, the
largest buffers and what would help. The last line of standard output is one JSON object
(`fits`, `per_chip_bytes`, `hbm_bytes`, `flops`, `estimated_seconds`, `chips`, ...). Exit status
1 when the step does not fit.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile for TPU; run nothing here

import json  # noqa: E402
import sys  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from experiments import cli  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<file>.py:<variant>")
_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "TPU topology, e.g. v5p:8x8x16 (default: the config's train.topology)"
)
_SLICES = flags.DEFINE_integer("slices", None, "Slices joined by DCN (default: the config's).")
_STEP = flags.DEFINE_enum(
    "step",
    None,
    ["grpo", "sft", "rm"],
    "Which step to compile (default: the config's own: rl -> grpo, rm -> rm, sft -> sft).",
)
_BUFFERS = flags.DEFINE_integer("buffers", 8, "How many of the largest buffers to list.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None:
        raise app.UsageError("--config=configs/<file>.py:<variant> is required")
    from r1 import aot

    config = _CONFIG.value
    name = config_flags.get_config_filename(flags.FLAGS["config"])
    topology, slices = aot.target_of(config)
    topology = _TOPOLOGY.value or topology
    slices = _SLICES.value or slices
    if not topology:
        raise app.UsageError(f"{name} names no train.topology: pass --topology=<chip>:<shape>")
    try:
        report = aot.run(config, name, topology, slices, _STEP.value or "")
    except ValueError as err:
        print(cli.config_error_line(err) or f"error: {err}", file=sys.stderr)
        print(json.dumps({"fits": False, "error": str(err)}))
        sys.exit(2)
    print(report.text())
    print(json.dumps(report.summary()))
    sys.exit(0 if report.fits else 1)


if __name__ == "__main__":
    cli.run(main)
