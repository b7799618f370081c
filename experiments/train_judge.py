r"""Trains the tiny judge of the CPU R1 pipeline on synthetic verdict data and saves it.

    python -m experiments.train_judge --out=runs/tiny_judge

Writes `out/` in Hugging Face layout (config.json, model.safetensors) with the judge's tokenizer
(judge_tokenizer.json), its judging configuration (judge_config.json) and judge_report.json
(final loss, agreement with the truth on held-out (reference, prediction) pairs, seconds).
`r1.judge.Judge.load(out)` loads it; configs/rejection_sample.py:tiny_judge uses it.
Data and model: r1/judge/data.py; docs/judge.md.
"""

from __future__ import annotations

import json
import logging

from absl import app, flags

from r1.judge import data as judge_data

_OUT = flags.DEFINE_string("out", None, "Output directory (the judge, HF layout).")
_STEPS = flags.DEFINE_integer("steps", judge_data.TrainJudgeConfig.steps, "Training steps.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the data and the initialisation.")
_BATCH = flags.DEFINE_integer("batch_size", judge_data.TrainJudgeConfig.batch_size, "Batch size.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _OUT.value:
        raise app.UsageError("--out=DIR is required")
    logging.getLogger("absl").setLevel(logging.WARNING)
    train = judge_data.TrainJudgeConfig(
        steps=_STEPS.value, seed=_SEED.value, batch_size=_BATCH.value
    )
    trained = judge_data.train_tiny_judge(train)
    report = judge_data.save_judge(trained, _OUT.value)
    print(json.dumps({"out": _OUT.value, **report}))


if __name__ == "__main__":
    app.run(main)
