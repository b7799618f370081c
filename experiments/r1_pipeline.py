r"""DeepSeek-R1 pipeline entry point: the four stages of configs/r1.py, resumable.

    python -m experiments.r1_pipeline --config=configs/r1.py:tiny --workdir=runs/r1_tiny
    python -m experiments.r1_pipeline --config=configs/r1.py:mini --workdir=runs/r1_mini \
        --compare_zero --ablate_language

Each stage writes `DIR/<n>_<stage>/` with its `eval.json` (held-out evaluation) and a
`DONE.json` marker; `DIR/eval_summary.json` collects the evaluations. Re-running the command
on the same workdir skips finished stages and resumes the interrupted one from its checkpoints.
On a multi-host slice run the same command on every host with --distributed. See
docs/r1_pipeline.md. --compare_zero also runs R1-Zero from the base with stage 2's RL budget
(`W/r1_zero/`, `W/r1_vs_zero.png`); --ablate_language runs stage 2 again without the
language-consistency reward (`W/2_reasoning_rl_no_language/`); both write `W/comparisons.json`.
"""

from __future__ import annotations

import json
import logging

from absl import app, flags
from ml_collections import config_flags

from experiments import cli, cpu_devices
from r1 import sharding
from r1.recipes.comparisons import run_comparisons
from r1.recipes.pipeline import run_pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/r1.py:<variant>")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (one sub-directory per stage).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize().")
_COMPARE_ZERO = flags.DEFINE_bool(
    "compare_zero",
    False,
    "Also run R1-Zero (GRPO from the base, stage 2's rewards without the language term, stage "
    "2's budget) and draw both runs' held-out curves in W/r1_vs_zero.png.",
)
_ABLATE_LANGUAGE = flags.DEFINE_bool(
    "ablate_language",
    False,
    "Also run stage 2 without the language-consistency reward (W/2_reasoning_rl_no_language).",
)
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
    if _COMPARE_ZERO.value or _ABLATE_LANGUAGE.value:
        rows = run_comparisons(
            _CONFIG.value,
            _WORKDIR.value,
            zero=_COMPARE_ZERO.value,
            no_language=_ABLATE_LANGUAGE.value,
            restart=_RESTART.value,
        )
        print(json.dumps({"comparisons": rows}, indent=2, sort_keys=True))


if __name__ == "__main__":
    cli.run(main)
