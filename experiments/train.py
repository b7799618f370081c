r"""GRPO training entry point (R1-Zero and the RL stages of R1).

    python -m experiments.train --config=configs/r1_zero.py:tiny --workdir=runs/r1_zero_tiny
    python -m experiments.train --config=configs/r1_zero.py:tiny --workdir=runs/x \
        --config.rl.group_size=4 --config.train.steps=10

Re-running the same command on an existing workdir resumes from its last checkpoint. On a
multi-host slice run the same command on every host with --distributed. On a multi-core CPU
host, --cpu_devices=-1 gives jax one device per core and the config's mesh (fsdp=-1) spans them.
"""

from __future__ import annotations

import logging

from absl import app, flags
from ml_collections import config_flags

from experiments import cli, cpu_devices
from r1 import sharding
from r1.rl.trainer import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<file>.py:<variant>")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (metrics, checkpoints, plots).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize().")
_RESTART = flags.DEFINE_bool(
    "restart",
    False,
    "When the workdir has checkpoints but none restores, move them aside and start from step 0 "
    "(default: stop, nothing moved).",
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


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
    final = train(_CONFIG.value, _WORKDIR.value, restart=_RESTART.value)
    for key in ("eval/accuracy", "eval/response_length/mean", "reward/total"):
        if key in final:
            print(f"{key}: {final[key]:.4f}")


if __name__ == "__main__":
    cli.run(main)
