r"""DeepSeek-R1 pipeline entry point: the four stages of configs/r1.py, resumable.

    python -m experiments.r1_pipeline --config=configs/r1.py:tiny --workdir=runs/r1_tiny

Each stage writes `DIR/<n>_<stage>/` with its `eval.json` (held-out evaluation) and a
`DONE.json` marker; `DIR/eval_summary.json` collects the evaluations. Re-running the command
on the same workdir skips finished stages and resumes the interrupted one from its checkpoints.
On a multi-host slice run the same command on every host with --distributed. See
docs/r1_pipeline.md.
"""

from __future__ import annotations

import json
import logging

from absl import app, flags
from ml_collections import config_flags

from experiments import cli, cpu_devices
from r1 import sharding
from r1.recipes.pipeline import run_pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/r1.py:<variant>")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (one sub-directory per stage).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize().")
_RESTART = flags.DEFINE_bool(
    "restart",
    False,
    "When the workdir has checkpoints but none restores, move them aside and start from step 0 "
    "(default: stop, nothing moved).",
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None or not _WORKDIR.value:
        raise app.UsageError("--config=configs/r1.py:<variant> and --workdir are required")
    logging.getLogger("absl").setLevel(logging.WARNING)
    cpu_devices.apply()
    if _DISTRIBUTED.value:
        sharding.initialize_distributed()
    cpu_devices.describe()
    result = run_pipeline(_CONFIG.value, _WORKDIR.value, restart=_RESTART.value)
    print(json.dumps(result["summary"], indent=2, sort_keys=True))


if __name__ == "__main__":
    cli.run(main)
