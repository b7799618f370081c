"""The paper's two ablations of the R1 pipeline, run beside it in the same run directory.

* **R1 versus R1-Zero** (`ZERO`): GRPO from the *base* with R1-Zero's rewards (the reasoning
  stage's rewards without the language term: accuracy + format) and the reasoning stage's
  budget (same steps, prompts, group size, optimizer), evaluated like every stage. The curves
  of both runs' in-training held-out evaluation (`reasoning_rl.eval`: accuracy and response
  length against the RL step) go into one PNG, `r1_vs_zero.png`; R1's run starts from the
  cold-start model, R1-Zero's from the base.
* **Language-consistency reward** (`NO_LANGUAGE`): stage 2 again from the cold-start model
  with the language term removed, evaluated like every stage, to set its accuracy and language
  consistency beside stage 2's.

Each is a stage of `r1.recipes.stages` (its own sub-directory, `DONE.json`, resumable);
`comparisons.json` and `comparisons.md` hold their evaluation rows next to stage 2's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from r1 import logging as r1_logging
from r1.recipes import pipeline, pipeline_configs, stage_eval
from r1.recipes.stages import Stage, atomic_json, is_main, run_stages

ZERO = "r1_zero"
NO_LANGUAGE = "2_reasoning_rl_no_language"
COMPARISONS = "comparisons.json"
PLOT = "r1_vs_zero.png"
LANGUAGE_REWARD = "language"


def without_language(rewards: Any) -> Any:
    """`rewards` (a tuple of (name, weight, kwargs), or {domain: tuple}) without the language
    consistency term; raises when nothing would be left."""
    if isinstance(rewards, Mapping):
        return {domain: without_language(terms) for domain, terms in rewards.items()}
    kept = tuple(tuple(t) for t in rewards if tuple(t)[0] != LANGUAGE_REWARD)
    if not kept:
        raise ValueError(f"rewards {rewards!r}: nothing is left without the language term")
    return kept


def ablation_config(config: Any, start: str) -> ml_collections.ConfigDict:
    """The reasoning stage's GRPO config from `start` with the language term removed."""
    cfg = pipeline_configs.rl_config(config, config.reasoning_rl, start)
    rewards = pipeline_configs.reward_entries(cfg.rewards)
    del cfg.rewards
    cfg.rewards = without_language(rewards)
    return cfg


def _no_general(config: Any) -> ml_collections.ConfigDict:
    """`config` without the general-prompt evaluation (the ablations measure reasoning)."""
    out = ml_collections.ConfigDict(config.to_dict())
    out.eval.general_prompts = 0
    return out


def make_stages(
    config: Any,
    workdir: str,
    cold_start_export: str,
    *,
    zero: bool,
    no_language: bool,
    restart: bool = False,
) -> list[Stage]:
    """The requested ablation stages. cold_start_export: stage 1's model (the no-language run
    starts there); R1-Zero starts from `config.init.hf_path`."""
    eval_config = _no_general(config)

    def grpo_stage(name: str, start: str):
        def run(directory: str, outputs: Mapping) -> dict[str, Any]:
            cfg = ablation_config(config, start)
            run_dir = os.path.join(directory, "rl")
            pipeline.run_grpo(cfg, run_dir, restart)
            export = os.path.join(directory, "export")
            step = pipeline.grpo_export(cfg, run_dir, export)
            pipeline.evaluate_stage(eval_config, export, directory, name)
            return {
                "export": os.path.relpath(export, workdir),
                "eval": os.path.relpath(os.path.join(directory, pipeline.EVAL), workdir),
                "step": step,
            }

        return Stage(name, run)

    stages = []
    if zero:
        stages.append(grpo_stage(ZERO, str(config.init.hf_path)))
    if no_language:
        stages.append(grpo_stage(NO_LANGUAGE, cold_start_export))
    return stages


def run_comparisons(
    config: Any,
    workdir: str,
    *,
    zero: bool = True,
    no_language: bool = True,
    restart: bool = False,
) -> dict[str, Any]:
    """Runs the requested ablations after the pipeline in `workdir` (stage 1 must be done),
    then writes `comparisons.json` / `comparisons.md` and, with `zero`, `r1_vs_zero.png`.
    Returns {run name: evaluation row}."""
    workdir = os.path.abspath(workdir)
    done = os.path.join(workdir, pipeline.STAGES[0], "DONE.json")
    if not os.path.exists(done):
        raise FileNotFoundError(f"{done}: run the pipeline's stage 1 before its ablations")
    with open(done) as f:
        cold_start = os.path.join(workdir, json.load(f)["outputs"]["export"])
    stages = make_stages(
        config, workdir, cold_start, zero=zero, no_language=no_language, restart=restart
    )
    run_stages(stages, workdir)
    rows = {}
    for name in (pipeline.STAGES[1], *(s.name for s in stages)):
        path = os.path.join(workdir, name, pipeline.EVAL)
        if os.path.exists(path):
            with open(path) as f:
                rows[name] = stage_eval.stage_row(json.load(f))
    if is_main():
        atomic_json(os.path.join(workdir, COMPARISONS), rows)
        with open(os.path.join(workdir, "comparisons.md"), "w") as f:
            f.write(stage_eval.summary_table(rows))
        if zero:
            plot_runs(
                {
                    "R1 (cold start -> RL)": os.path.join(workdir, pipeline.STAGES[1], "rl"),
                    "R1-Zero (base -> RL)": os.path.join(workdir, ZERO, "rl"),
                },
                os.path.join(workdir, PLOT),
            )
    return rows


CURVES = (
    ("held-out accuracy (greedy)", "eval/accuracy"),
    ("held-out response length (tokens)", "eval/response_length/mean"),
)


def curve(metrics_path: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of `key` in a metrics.jsonl, in step order (the last row of a step wins)."""
    points = {}
    for row in r1_logging.read_jsonl(metrics_path):
        if isinstance(row.get(key), (int, float)) and "step" in row:
            points[int(row["step"])] = float(row[key])
    return sorted(points.items())


def plot_runs(runs: Mapping[str, str], out_path: str, curves: Sequence = CURVES) -> None:
    """One PNG with a panel per (title, metric key) of `curves`, one line per run
    ({label: GRPO run directory holding metrics.jsonl})."""
    panels = [
        (
            title,
            [
                (label, curve(os.path.join(run_dir, "metrics.jsonl"), key))
                for label, run_dir in runs.items()
            ],
        )
        for title, key in curves
    ]
    r1_logging.plot_lines(panels, out_path, xlabel="RL step")
