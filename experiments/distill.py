r"""Distillation entry point: traces (teacher rejection sampling or local trace files) -> student
evaluation -> student SFT -> evaluation again.

    python -m experiments.distill --config=configs/distill.py:tiny --workdir=runs/distill_tiny
    python -m experiments.distill --config=configs/distill.py:qwen2_5_math_1_5b \
        --config.student.hf_path=/ckpt/Qwen2.5-Math-1.5B \
        --config.traces.files=/data/r1_traces/*.jsonl \
        --config.eval_data.files=/data/math500/test.jsonl --workdir=/runs/distill_qwen_1_5b

Writes into the workdir: `traces/` (the SFT rows and their counts; `traces/teacher/` when the
teacher is sampled), `eval_before.json`, `eval_teacher.json` (with `teacher.evaluate`), `sft/`
(checkpoints, metrics, `sft/export` in Hugging Face layout), `eval_after.json`,
`distill_report.json` and `distill_report.md`. Re-running the same command resumes: finished
stages are skipped. On a multi-host slice run the same command on every host with --distributed.
See configs/distill.py and docs/distillation.md.
"""

from __future__ import annotations

import logging

from absl import app, flags
from ml_collections import config_flags

from experiments import cli, cpu_devices
from r1 import sharding
from r1.recipes.distill import distill, to_markdown

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<file>.py:<variant>")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (traces, sft, evaluations).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize().")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def config_name() -> str:
    """`configs/x.py:variant` plus the command-line overrides (the teacher samples'
    provenance)."""
    holder = flags.FLAGS["config"]
    flat = []

    def walk(prefix, value):
        if isinstance(value, dict):
            for key in sorted(value):
                walk(f"{prefix}.{key}", value[key])
        else:
            flat.append(f"--config{prefix}={value}")

    walk("", config_flags.get_override_values(holder))
    return " ".join([config_flags.get_config_filename(holder), *flat])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None or not _WORKDIR.value:
        raise app.UsageError("--config=configs/distill.py:<variant> and --workdir are required")
    logging.getLogger("absl").setLevel(logging.WARNING)
    cpu_devices.apply()
    if _DISTRIBUTED.value:
        sharding.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    cpu_devices.describe()
    report = distill(_CONFIG.value, _WORKDIR.value, config_name())
    print(to_markdown(report))
    print(
        f"traces: {report['traces']['kept']} kept of {report['traces']['read']}; "
        + ", ".join(f"{k} {v:+.3f}" for k, v in report["delta"].items())
    )


if __name__ == "__main__":
    cli.run(main)
