r"""Rejection sampling entry point (DeepSeek-R1 stage 3): writes an SFT dataset of correct,
readable, deduplicated samples of a checkpoint.

    python -m experiments.rejection_sample --config=configs/rejection_sample.py:tiny \
        --workdir=runs/rejection_tiny

Writes `workdir/traces.jsonl` (one row per kept sample; format in docs/rejection_sampling.md),
`workdir/report.json` (counts of candidates, kept rows and drops by reason, mean rewards) and
`workdir/progress.json`. Re-running the same command on the workdir resumes without duplicating
rows. On a multi-host slice run the same command on every host with --distributed (every host
samples, the first one writes).
"""

from __future__ import annotations

import json
import logging

from absl import app, flags
from ml_collections import config_flags

from experiments import cli, cpu_devices
from r1 import sharding
from r1.rejection.experiment import run_from_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<file>.py:<variant>")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (traces, report, progress).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize().")
_RESTART = flags.DEFINE_bool(
    "restart",
    False,
    "When the workdir's progress files (traces.jsonl, progress.json) are damaged, move them "
    "aside and sample from the first prompt (default: stop, nothing moved).",
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def config_name() -> str:
    """`configs/x.py:variant` plus the command-line overrides, for provenance."""
    holder = flags.FLAGS["config"]
    name = config_flags.get_config_filename(holder)
    overrides = config_flags.get_override_values(holder)
    flat = []

    def walk(prefix, value):
        if isinstance(value, dict):
            for key in sorted(value):
                walk(f"{prefix}.{key}", value[key])
        else:
            flat.append(f"--config{prefix}={value}")

    walk("", overrides)
    return " ".join([name, *flat])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None or not _WORKDIR.value:
        raise app.UsageError("--config=configs/<file>.py:<variant> and --workdir are required")
    logging.getLogger("absl").setLevel(logging.WARNING)
    cpu_devices.apply()
    if _DISTRIBUTED.value:
        sharding.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    cpu_devices.describe()
    report = run_from_config(_CONFIG.value, _WORKDIR.value, config_name(), restart=_RESTART.value)
    summary = {k: report[k] for k in ("prompts", "candidates", "kept", "dropped")}
    print(json.dumps(summary))


if __name__ == "__main__":
    cli.run(main)
