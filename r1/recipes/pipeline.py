"""The DeepSeek-R1 pipeline: four stages, each in its own sub-directory of the run, resumable.

    python -m experiments.r1_pipeline --config=configs/r1.py:tiny --workdir=runs/r1_tiny

Stages (REFERENCE.md, "R1 (four stages)"), each built from the existing trainers by deriving
the sub-config they expect from the pipeline config (configs/r1.py; `r1.recipes.pipeline_configs`,
which also parses every stage's sub-config before stage 1 runs):

1. `1_cold_start`: SFT of the base (`init.hf_path`) on cold-start traces (`cold_start.files`,
   or `cold_start_rows`: readable traces of the procedural task) -> `sft/export`.
2. `2_reasoning_rl`: GRPO from stage 1 with accuracy + format + language-consistency rewards
   -> `rl/` (orbax checkpoints) and `export/` (the last checkpoint in HF layout).
3. `3_rejection_sft`: rejection sampling from stage 2 (`rejection/traces.jsonl`) plus general
   rows (`rejection.general_files`, or `general_rows`: synthetic polite replies), then SFT of
   the *base* model on both -> `sft/export`. Rows no rule can check (`rejection.judge.tasks`,
   e.g. sums whose reference answer is written in words) are graded by a generative judge:
   `rejection.judge.path`, or a tiny judge trained first into `judge/` (`stage_judge`).
4. `4_all_scenarios_rl`: the run's reward model (`W/reward_model/export`, the policy's tokenizer;
   `ensure_reward_model`), then GRPO from stage 3 with rule rewards, the reward model joining
   for the last `all_scenarios_rl.rm_steps` steps -> `rl/`, `export/`.

After each stage the model is evaluated on the task's held-out set, with the measurements of
`r1.recipes.stage_eval` (pass@1 interval, readable format, language consistency, general-prompt
scores): `<stage>/eval.json` and `eval.md`; `eval_summary.json` / `.md` in the run directory
collect them. A stage writes `DONE.json` only when everything it makes is complete; a stage
with one is skipped, a stage without one is run again and resumes through its trainer's own
checkpoints (SFT / GRPO / RM checkpoints, the rejection sampler's progress file).
`pipeline_log.jsonl` records what each invocation did (`skip`, `start`, `resume`, `done`). The
stage runner itself is `r1.recipes.stages`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections

from r1 import checkpoint as ckpt_lib
from r1 import configlib, sharding
from r1.data import procedural
from r1.evaluation import runner
from r1.judge import data as judge_data
from r1.recipes import stage_eval
from r1.recipes.pipeline_configs import (
    STAGES,
    all_scenarios_configs,
    check_stage_configs,
    common_sections,
    judge_training,
    rejection_config,
    reward_model_config,
    rl_config,
    sft_config,
    task_of,
)
from r1.recipes.pipeline_data import (
    cold_start_rows,
    general_pairs,
    general_prompts,
    general_rows,
)
from r1.recipes.stages import (
    Stage,
    atomic_json,
    barrier,
    is_main,
    run_stages,
    write_jsonl,
)
from r1.rejection.experiment import run_from_config
from r1.rl import config as grpo_sections
from r1.rl import trainer as rl_trainer
from r1.rm.trainer import train_rm
from r1.sft.trainer import train_sft
from r1.train import build
from r1.train.export import export_model
from r1.train.state import abstract_with_shardings

log = logging.getLogger(__name__)

EVAL = "eval.json"
SUMMARY = "eval_summary.json"
SUMMARY_TABLE = "eval_summary.md"
REWARD_MODEL_DIR = "reward_model"


# The config fields that set a stage-3 judge's training (`judge_training`).
_JUDGE_FIELDS = {
    "steps": "config.rejection.judge.train_steps",
    "batch_size": "config.rejection.judge.train_batch_size",
    "seed": "config.seed",
}


def _check_saved_judge(
    report: Mapping[str, Any], train: judge_data.TrainJudgeConfig, target: str
) -> None:
    """Raises ValueError when the judge saved in `target` was trained otherwise than `train`
    asks; a report without the record (a judge saved before it was kept) is reused, with a
    warning."""
    saved = report.get("train")
    if saved is None:
        log.warning("%s records no training settings; reusing it as it is", target)
        return
    if not isinstance(saved, Mapping):
        raise ValueError(
            f"{target}/judge_report.json: 'train' is not a mapping ({saved!r}); remove {target} "
            "to train a new judge"
        )
    wanted = json.loads(json.dumps(dataclasses.asdict(train)))
    changed = sorted(k for k in wanted.keys() | saved.keys() if wanted.get(k) != saved.get(k))
    if changed:
        differences = ", ".join(
            f"{_JUDGE_FIELDS.get(k, 'TrainJudgeConfig.' + k)}: saved {saved.get(k)!r}, "
            f"asked {wanted.get(k)!r}"
            for k in changed
        )
        raise ValueError(
            f"the stage-3 judge saved in {target} was trained with other settings "
            f"({differences}); remove {target} to train a new judge with these, or run with "
            "the settings it was trained with"
        )


def stage_judge(config: Any, directory: str) -> tuple[str, dict[str, Any]]:
    """The judge of stage 3 (`config.rejection.judge`): ("", {}) when no task is judged; its
    `path` when one is given; otherwise the tiny judge trained here for `train_steps` steps of
    `train_batch_size` synthetic verdicts (r1/judge/data.py) and saved to `directory/judge`
    (kept across re-runs: a saved judge is reused when its report records the same training
    settings, and an error names the ones that differ). Returns (path, its report)."""
    section = config.rejection.get("judge", None)
    if section is None or not tuple(section.tasks):
        return "", {}
    if str(section.path):
        return build.resolve_path(str(section.path)), {}
    train = judge_training(config)
    target = os.path.join(directory, "judge")
    report_path = os.path.join(target, "judge_report.json")
    if not os.path.exists(report_path):
        trained = judge_data.train_tiny_judge(train)
        if is_main():
            partial = target + ".partial"
            shutil.rmtree(partial, ignore_errors=True)
            judge_data.save_judge(trained, partial)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(partial, target)
        barrier("stage_judge")
    with open(report_path) as f:
        report = json.load(f)
    _check_saved_judge(report, train, target)
    return target, report


# ----------------------------------------------------------------------------- shared steps
def _sft(cfg: ml_collections.ConfigDict, directory: str, restart: bool = False) -> str:
    """Runs (or resumes) SFT in `directory`; returns its export directory, checked complete.
    restart: as `r1.train.loop.LoopSettings.restart`."""
    export = os.path.join(directory, "export")
    # A stale or half-written export must not pass for this run's: train_sft re-exports on a
    # resume that finds its last step done.
    if is_main() and os.path.isdir(export):
        shutil.rmtree(export)
    barrier("r1_pipeline_sft_clean")
    train_sft(cfg, directory, restart=restart)
    if not os.path.exists(os.path.join(export, "config.json")):
        raise RuntimeError(
            f"SFT in {directory} stopped before its last step (SIGTERM?); run the pipeline "
            "again to resume it"
        )
    return export


def grpo_export(cfg: ml_collections.ConfigDict, run_dir: str, out: str) -> int:
    """Restores the latest checkpoint of the GRPO run `run_dir` (made with `cfg`) and writes its
    policy in HF layout (plus tokenizer files) to `out`; returns the checkpoint's step."""
    exp = grpo_sections.parse(cfg, num_devices=jax.device_count())
    run = build.start_policy(exp, exp.train.steps, with_reference=exp.rl.beta > 0)
    abstract = abstract_with_shardings(run.state, run.state_shardings)
    graphdef, tokenizer = run.graphdef, run.tokenizer
    del run
    checkpointer = ckpt_lib.Checkpointer(run_dir, keep=exp.train.keep_checkpoints)
    try:
        restored = checkpointer.restore_latest(abstract)
    finally:
        checkpointer.close()
    if restored is None:
        raise FileNotFoundError(f"no GRPO checkpoint restores in {run_dir}/checkpoints")
    step, state, _ = restored
    export_model(graphdef, state, exp.model, tokenizer, exp.tokenizer.path, out)
    return int(step)


def run_grpo(cfg: ml_collections.ConfigDict, run_dir: str, restart: bool = False) -> None:
    """Runs (or resumes) GRPO in `run_dir` and checks it reached `train.steps`. restart: as
    `r1.train.loop.LoopSettings.restart`."""
    rl_trainer.train(cfg, run_dir, restart=restart)
    steps = int(cfg.train.steps)
    checkpointer = ckpt_lib.Checkpointer(run_dir)
    try:
        saved = checkpointer.all_steps()
    finally:
        checkpointer.close()
    if not saved or saved[-1] < steps:
        raise RuntimeError(
            f"GRPO in {run_dir} stopped at step {saved[-1] if saved else 0} of {steps} "
            "(SIGTERM?); run the pipeline again to resume it"
        )


def ensure_reward_model(config: Any, workdir: str, restart: bool = False) -> tuple[str, dict]:
    """Trains (or resumes) the pipeline's reward model in `workdir/reward_model` unless its export
    exists; returns (export path, {"eval/accuracy": held-out pair accuracy} when trained here or
    read back from `metrics.json`). Stage 4 trains with it and the evaluation of general prompts
    (config.eval.general_prompts > 0) scores with it from stage 1 on."""
    rm_dir = os.path.join(workdir, REWARD_MODEL_DIR)
    export = os.path.join(rm_dir, "export")
    summary = os.path.join(rm_dir, "rm_summary.json")
    if os.path.exists(os.path.join(export, "config.json")) and os.path.exists(summary):
        with open(summary) as f:
            return export, json.load(f)
    cfg = reward_model_config(config)
    num_pairs = int(config.reward_model.get("general_pairs", 0))
    if num_pairs > 0 and not tuple(cfg.data.train_files):
        # Preference pairs on the general requests: train pairs from the train split, held-out
        # pairs from the test split (the requests the evaluation samples).
        os.makedirs(rm_dir, exist_ok=True)
        files = []
        for split, num in (("train", num_pairs), ("test", max(1, num_pairs // 8))):
            target = os.path.join(rm_dir, f"general_pairs_{split}.jsonl")
            write_jsonl(target, general_pairs(num, int(config.seed), split))
            files.append(target)
        cfg.data.train_files, cfg.data.eval_files = (files[0],), (files[1],)
    metrics = train_rm(cfg, rm_dir, restart=restart)
    if not os.path.exists(os.path.join(export, "config.json")):
        raise RuntimeError(f"reward model training in {rm_dir} did not finish; run again")
    kept = {"eval/accuracy": float(metrics.get("eval/accuracy", float("nan")))}
    if is_main():
        atomic_json(summary, kept)
    barrier("r1_pipeline_reward_model")
    return export, kept


def evaluate_stage(
    config: Any, hf_path: str, directory: str, stage: str, reward_model: str = ""
) -> dict[str, Any]:
    """Evaluates the HF-layout model at `hf_path` on the task's held-out set (config.eval), adds
    the readable-format, language-consistency and pass@1-interval columns to `overall`, and,
    with `config.eval.general_prompts` > 0, the general-prompt scores of `reward_model`
    (`r1.recipes.stage_eval`); writes `directory/eval.json` and `eval.md`; returns the result."""
    cfg = ml_collections.ConfigDict(common_sections(config, hf_path))
    experiment = configlib.parse_experiment(
        cfg, num_devices=jax.device_count(), extra_sections=("init", "tokenizer")
    )
    mesh = sharding.make_mesh(experiment.mesh)
    tokenizer = build.build_tokenizer(str(cfg.tokenizer.kind), str(cfg.tokenizer.path))
    with sharding.use_mesh(mesh):
        model = build.build_policy(
            str(cfg.init.hf_path), experiment.model, mesh, experiment.seed, tokenizer
        )
    name, kwargs = task_of(config)
    rows = procedural.fixed_set(
        procedural.make_task(name, **kwargs),
        int(config.eval.seed),
        int(config.eval.per_difficulty),
        split=str(config.eval.split),
    )
    eval_cfg = runner.EvalConfig.from_config(config.eval.eval, "config.eval.eval")
    eval_cfg = dataclasses.replace(eval_cfg, keep_completions=True)
    result = runner.evaluate(model, tokenizer, rows, eval_cfg, mesh=mesh)
    language = str(config.eval.get("language", "en"))
    result["overall"].update(stage_eval.completion_metrics(result, language))
    num_general = int(config.eval.get("general_prompts", 0))
    if num_general > 0:
        if not reward_model:
            raise ValueError(f"{stage}: config.eval.general_prompts > 0 needs a reward model")
        general = stage_eval.general_scores(
            model,
            tokenizer,
            general_prompts(num_general),
            eval_cfg,
            reward_model,
            region=str(config.all_scenarios_rl.rm_region),
            missing=str(config.reward_model.rm.get("missing_summary", "empty")),
            mesh=mesh,
        )
        result["general"] = general
        result["overall"].update({k: general[k] for k in stage_eval.GENERAL_KEYS})
    result["stage"] = stage
    result["checkpoint"] = {"hf_path": hf_path}
    result["data"] = f"procedural:{name}:{config.eval.split}"
    if is_main():
        runner.write_json(result, os.path.join(directory, EVAL))
        runner.write_markdown(result, os.path.join(directory, "eval.md"))
    return result


def _judge_outputs(path: str, trained: Mapping, report: Mapping, rel: Callable) -> dict:
    """Stage 3's record of its judge: where it is, its held-out agreement when trained here, and
    the rejection sampler's judge counts (judged, correct, unparseable, no_answer)."""
    if not path:
        return {}
    out: dict[str, Any] = {"judge": rel(path) if os.path.isabs(path) else path}
    if "held_out_agreement" in trained:
        out["judge_held_out_agreement"] = float(trained["held_out_agreement"])
    out["judge_counts"] = dict(report.get("judge", {}))
    return out


# ----------------------------------------------------------------------------- the four stages
def make_stages(config: Any, workdir: str, restart: bool = False) -> list[Stage]:
    """The four R1 stages for `config` (configs/r1.py), writing under `workdir`. restart: a
    stage whose checkpoints (or rejection-sampling progress) exist but do not restore moves
    them aside and starts that stage's job fresh, instead of stopping."""
    base = str(config.init.hf_path)

    def rel(path: str) -> str:
        return os.path.relpath(path, workdir)

    def path(outputs: Mapping[str, Mapping[str, Any]], stage: str, key: str) -> str:
        return os.path.join(workdir, outputs[stage][key])

    def evaluate(export: str, directory: str, stage: str) -> None:
        scorer = ""
        if int(config.eval.get("general_prompts", 0)) > 0:
            scorer = ensure_reward_model(config, workdir, restart)[0]
        evaluate_stage(config, export, directory, stage, scorer)

    def cold_start(directory: str, outputs: Mapping) -> dict[str, Any]:
        section = config.cold_start
        files = [f.strip() for f in str(section.files).split(",") if f.strip()]
        if not files:
            name, kwargs = task_of(config)
            target = os.path.join(directory, "cold_start.jsonl")
            rows = cold_start_rows(
                procedural.make_task(name, **kwargs),
                int(section.num_examples),
                int(config.seed),
                second_language=str(section.get("second_language", "")),
                mixing=float(section.get("mixing", 0.0)),
                hasty=float(section.get("hasty", 0.0)),
            )
            write_jsonl(target, rows)
            files = [target]
        export = _sft(
            sft_config(config, section, base, files), os.path.join(directory, "sft"), restart
        )
        evaluate(export, directory, STAGES[0])
        return {"export": rel(export), "eval": rel(os.path.join(directory, EVAL))}

    def reasoning_rl(directory: str, outputs: Mapping) -> dict[str, Any]:
        start = path(outputs, STAGES[0], "export")
        cfg = rl_config(config, config.reasoning_rl, start)
        run_dir = os.path.join(directory, "rl")
        run_grpo(cfg, run_dir, restart)
        export = os.path.join(directory, "export")
        step = grpo_export(cfg, run_dir, export)
        evaluate(export, directory, STAGES[1])
        return {"export": rel(export), "eval": rel(os.path.join(directory, EVAL)), "step": step}

    def rejection_sft(directory: str, outputs: Mapping) -> dict[str, Any]:
        section = config.rejection
        sampled = path(outputs, STAGES[1], "export")
        rejection_dir = os.path.join(directory, "rejection")
        judge_path, judge_report = stage_judge(config, directory)
        report = run_from_config(
            rejection_config(config, sampled, judge_path),
            rejection_dir,
            "configs/r1.py:rejection",
            restart=restart,
        )
        if report.get("kept", 0) < 1:
            raise RuntimeError(
                f"rejection sampling kept no sample ({report.get('dropped')}); see "
                f"{rejection_dir}/report.json"
            )
        general = [f.strip() for f in str(section.general_files).split(",") if f.strip()]
        if not general:
            target = os.path.join(directory, "general.jsonl")
            write_jsonl(target, general_rows(int(section.general_examples), int(config.seed)))
            general = [target]
        traces = os.path.join(rejection_dir, "traces.jsonl")
        # Stage 3 fine-tunes the base model, not the stage-2 policy.
        export = _sft(
            sft_config(config, config.sft, base, [traces, *general]),
            os.path.join(directory, "sft"),
            restart,
        )
        evaluate(export, directory, STAGES[2])
        return {
            "export": rel(export),
            "eval": rel(os.path.join(directory, EVAL)),
            "traces": rel(traces),
            "general": [rel(os.path.abspath(g)) for g in general],
            "kept": int(report["kept"]),
            **_judge_outputs(judge_path, judge_report, report, rel),
        }

    def all_scenarios_rl(directory: str, outputs: Mapping) -> dict[str, Any]:
        rm_export, rm_metrics = ensure_reward_model(config, workdir, restart)
        start = path(outputs, STAGES[2], "export")
        general = [os.path.join(workdir, g) for g in outputs[STAGES[2]].get("general", [])]
        rule_phase, cfg = all_scenarios_configs(config, start, rm_export, general)
        run_dir = os.path.join(directory, "rl")
        # One run directory: the whole run resumes the rule phase's checkpoint.
        if rule_phase is not None:
            run_grpo(rule_phase, run_dir, restart)
        run_grpo(cfg, run_dir, restart)
        export = os.path.join(directory, "export")
        step = grpo_export(cfg, run_dir, export)
        evaluate(export, directory, STAGES[3])
        return {
            "export": rel(export),
            "eval": rel(os.path.join(directory, EVAL)),
            "reward_model": rel(rm_export),
            "reward_model_eval_accuracy": float(rm_metrics.get("eval/accuracy", float("nan"))),
            "step": step,
        }

    return [
        Stage(STAGES[0], cold_start),
        Stage(STAGES[1], reasoning_rl),
        Stage(STAGES[2], rejection_sft),
        Stage(STAGES[3], all_scenarios_rl),
    ]


def summarize(workdir: str, stage_names: Sequence[str] = STAGES) -> dict[str, Any]:
    """{stage: overall metrics of its eval.json} for every stage that has one; written to
    `workdir/eval_summary.json`."""
    summary: dict[str, Any] = {}
    for name in stage_names:
        path = os.path.join(workdir, name, EVAL)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            result = json.load(f)
        summary[name] = stage_eval.stage_row(result)
    if is_main():
        atomic_json(os.path.join(workdir, SUMMARY), summary)
        with open(os.path.join(workdir, SUMMARY_TABLE), "w") as f:
            f.write(stage_eval.summary_table(summary))
    return summary


def run_pipeline(config: Any, workdir: str, restart: bool = False) -> dict[str, Any]:
    """Runs (or resumes) the four R1 stages of `config` (configs/r1.py) in `workdir`.
    restart: see `make_stages`.

    Returns {"stages": {stage: outputs}, "summary": {stage: overall eval metrics}}.
    """
    configlib.parse_experiment(
        config,
        num_devices=jax.device_count(),
        extra_sections=(
            "init",
            "tokenizer",
            "task",
            "cold_start",
            "reasoning_rl",
            "rejection",
            "sft",
            "reward_model",
            "all_scenarios_rl",
            "eval",
        ),
    )
    check_stage_configs(config, num_devices=jax.device_count())
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    if is_main():
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    outputs = run_stages(make_stages(config, workdir, restart), workdir)
    return {"stages": outputs, "summary": summarize(workdir)}
