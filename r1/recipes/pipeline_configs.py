"""The R1 pipeline's sub-configs: each stage's trainer config (configs/sft.py, r1_zero.py,
rejection_sample.py, reward_model.py layouts) derived from the pipeline config (configs/r1.py),
and `check_stage_configs`, which parses them all before stage 1 runs (r1/recipes/pipeline.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

from r1.evaluation import runner
from r1.judge import data as judge_data
from r1.rejection import experiment as rejection_experiment
from r1.rl import config as grpo_sections
from r1.rm import config as rm_sections
from r1.sft import config as sft_sections
from r1.train import build

STAGES = ("1_cold_start", "2_reasoning_rl", "3_rejection_sft", "4_all_scenarios_rl")


def as_plain(value: Any) -> Any:
    """A ConfigDict section as a plain dict (other values unchanged)."""
    return value.to_dict() if hasattr(value, "to_dict") else value


def common_sections(config: Any, hf_path: str) -> dict[str, Any]:
    """model, mesh, seed, init (`hf_path`) and tokenizer of the policy; an "hf" tokenizer with
    no path reads the base checkpoint's (`config.init.hf_path`)."""
    tokenizer = dict(as_plain(config.tokenizer))
    if tokenizer.get("kind") == "hf" and not tokenizer.get("path"):
        tokenizer["path"] = build.resolve_path(str(config.init.hf_path))
    return {
        "model": as_plain(config.model),
        "mesh": as_plain(config.mesh),
        "seed": int(config.seed),
        "init": {"hf_path": hf_path},
        "tokenizer": tokenizer,
    }


def reward_entries(rewards: Any) -> Any:
    """A stage's `rewards` as plain data: (name, weight, kwargs) tuples, or {domain: tuples}
    (per-domain rewards of a file-driven stage)."""
    rewards = as_plain(rewards)
    if isinstance(rewards, Mapping):
        return {domain: tuple(tuple(t) for t in terms) for domain, terms in rewards.items()}
    return tuple(tuple(t) for t in rewards)


def task_of(config: Any) -> tuple[str, dict[str, Any]]:
    """The pipeline's procedural task: (`config.task.name`, its kwargs)."""
    return str(config.task.name), dict(as_plain(config.task.kwargs))


def sft_config(
    config: Any, section: Any, hf_path: str, files: Sequence[str]
) -> ml_collections.ConfigDict:
    """The SFT trainer's config (configs/sft.py layout) for `section` (config.cold_start or
    config.sft) on `files`, starting from `hf_path`, exporting its final model."""
    task, kwargs = task_of(config)
    data = dict(as_plain(section.data))
    data.update(source="files", files=tuple(files), task=task, task_kwargs=kwargs)
    out = common_sections(config, hf_path)
    out.update(
        data=data,
        sft=as_plain(section.sft),
        optimizer=as_plain(section.optimizer),
        train={**as_plain(section.train), "export": True},
        eval={"every": 0, "per_difficulty": 1, "max_new_tokens": 1},
    )
    return ml_collections.ConfigDict(out)


def rl_config(
    config: Any,
    section: Any,
    hf_path: str,
    *,
    steps: int | None = None,
    model_rewards: tuple = (),
) -> ml_collections.ConfigDict:
    """The GRPO trainer's config (configs/r1_zero.py layout) for `section` (reasoning_rl or
    all_scenarios_rl), starting from `hf_path`; `steps` overrides `train.steps`. A section
    whose `data.files` is set trains on those files (the procedural task stays the fallback)."""
    task, kwargs = task_of(config)
    out = common_sections(config, hf_path)
    train = dict(as_plain(section.train))
    if steps is not None:
        train["steps"] = steps
    out.update(
        data={**as_plain(section.data), "task": task, "task_kwargs": kwargs},
        rl=as_plain(section.rl),
        rewards=reward_entries(section.rewards),
        model_rewards=model_rewards,
        optimizer=as_plain(section.optimizer),
        train=train,
        eval=as_plain(section.eval),
    )
    return ml_collections.ConfigDict(out)


def rejection_config(config: Any, hf_path: str, judge_path: str = "") -> ml_collections.ConfigDict:
    """The rejection sampler's config (configs/rejection_sample.py layout) on the task's
    training prompts, sampling `hf_path`; rows of `rejection.judge.tasks` are graded by the
    judge at `judge_path` (see `stage_judge`)."""
    section = config.rejection
    task, kwargs = task_of(config)
    out = common_sections(config, hf_path)
    data = dict(as_plain(section.data))
    data.update(source="procedural", task=task, task_kwargs=kwargs, files="", layout="auto")
    judge = section.get("judge", None)
    tasks = tuple(judge.tasks) if judge is not None else ()
    if tasks and not judge_path:
        raise ValueError("config.rejection.judge.tasks is set but no judge path was given")
    out.update(
        data=data,
        sampling=as_plain(section.sampling),
        rewards=tuple(tuple(t) for t in section.rewards),
        select=as_plain(section.select),
        filters=as_plain(section.filters),
        judge=dict(
            path=judge_path if tasks else "",
            tasks=tasks,
            batch_size=int(judge.batch_size) if judge is not None else 8,
        ),
    )
    return ml_collections.ConfigDict(out)


def judge_training(config: Any) -> judge_data.TrainJudgeConfig | None:
    """How stage 3 trains its judge (`config.rejection.judge`): None when no task is judged or
    `path` names a judge. Raises ValueError naming the field when a judge is needed and the
    settings cannot train one."""
    section = config.rejection.get("judge", None)
    if section is None or not tuple(section.tasks) or str(section.path):
        return None
    steps = int(section.train_steps)
    if steps < 1:
        raise ValueError(
            "config.rejection.judge: tasks are judged but neither path nor train_steps > 0 is set"
        )
    batch = int(section.train_batch_size)
    if batch < 1:
        raise ValueError(f"config.rejection.judge.train_batch_size: expected >= 1, got {batch}")
    return judge_data.TrainJudgeConfig(steps=steps, batch_size=batch, seed=int(config.seed))


def reward_model_config(config: Any) -> ml_collections.ConfigDict:
    """The RM trainer's config (configs/reward_model.py layout): its own model section, the
    policy's tokenizer and mesh."""
    section = config.reward_model
    init = dict(as_plain(section.init))
    if bool(section.get("from_base", False)) and not init.get("hf_path"):
        init["hf_path"] = str(config.init.hf_path)
    out = common_sections(config, "")
    out.update(
        model=as_plain(section.model),
        init=init,
        data=as_plain(section.data),
        rm=as_plain(section.rm),
        optimizer=as_plain(section.optimizer),
        train=as_plain(section.train),
        eval=as_plain(section.eval),
    )
    return ml_collections.ConfigDict(out)


def all_scenarios_configs(
    config: Any, start: str, reward_model: str, general: Sequence[str]
) -> tuple[ml_collections.ConfigDict | None, ml_collections.ConfigDict]:
    """Stage 4's GRPO configs from `start` (stage 3's export), one run directory for both: the
    rule phase, rule rewards only for `train.steps - rm_steps` steps (None when rm_steps is all
    of them), then the whole run to `train.steps`, the reward model at `reward_model` joining
    for the last `rm_steps` steps (R1: the last 400 of 1,700, against reward hacking). With it
    come stage 3's general rows (`general`: their files) as `general_fraction` of the prompts:
    rule rewards score the reasoning prompts, the reward model only the general ones."""
    section = config.all_scenarios_rl
    total, rm_steps = int(section.train.steps), int(section.rm_steps)
    if not 0 <= rm_steps <= total:
        raise ValueError(
            f"config.all_scenarios_rl.rm_steps: expected 0..train.steps={total}, got {rm_steps}"
        )
    rule_phase = None
    if total - rm_steps > 0:
        rule_phase = rl_config(config, section, start, steps=total - rm_steps)
        # A re-run of the pipeline meets the second phase's checkpoints (general prompts).
        rule_phase.data.allow_changed = rm_steps > 0
    fraction = float(section.get("general_fraction", 0.0))
    rm_kwargs = {"path": reward_model, "region": str(section.rm_region)}
    if fraction > 0:
        rm_kwargs["rows"] = "general"
    model_rewards = (("reward_model", float(section.rm_weight), rm_kwargs),)
    whole = rl_config(config, section, start, model_rewards=model_rewards if rm_steps else ())
    if rm_steps and fraction > 0:
        if not general:
            raise ValueError(
                "config.all_scenarios_rl.general_fraction > 0 needs stage 3's general rows"
            )
        whole.data.general_files = ",".join(general)
        whole.data.general_fraction = fraction
        # The general prompts join the run the rule phase checkpointed: by design.
        whole.data.allow_changed = True
    return rule_phase, whole


def check_stage_configs(config: Any, num_devices: int | None = None) -> None:
    """Derives every stage's trainer config from `config` as the stages do, with placeholder
    paths for what earlier stages make (nothing is opened), and parses each as its trainer
    does, with the mesh checked against `num_devices`: a bad value in any stage's section
    fails before stage 1 trains, finished stages' sections included. Raises what the parser
    raised (ValueError; TypeError for a value of the wrong type; AttributeError or KeyError for
    a missing field), its message prefixed with the stage (or "the reward model", which the
    evaluation of general prompts may train before stage 1) and its section; the field keeps
    the trainer's name for it, e.g. `config.rl.group_size`."""

    def made_by(stage: str) -> str:
        return os.path.join(f"<{stage}>", "export")

    def check(stage: str, sections: str, *parses: Callable[[], Any]) -> None:
        try:
            for parse in parses:
                parse()
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise type(err)(f"{stage} ({sections}): {err}") from err

    base = str(config.init.hf_path)
    check(
        STAGES[0],
        "config.cold_start",
        lambda: sft_sections.parse(
            sft_config(config, config.cold_start, base, ["<traces>"]), num_devices
        ),
    )
    check(
        STAGES[0],
        "config.eval",
        lambda: runner.EvalConfig.from_config(config.eval.eval, "config.eval.eval"),
    )
    check(
        STAGES[1],
        "config.reasoning_rl",
        lambda: grpo_sections.parse(
            rl_config(config, config.reasoning_rl, made_by(STAGES[0])), num_devices
        ),
    )
    judge = config.rejection.get("judge", None)
    judge_path = "<judge>" if judge is not None and tuple(judge.tasks) else ""
    check(
        STAGES[2],
        "config.rejection",
        lambda: judge_training(config),
        lambda: rejection_experiment.parse_config(
            rejection_config(config, made_by(STAGES[1]), judge_path), num_devices
        ),
    )
    check(
        STAGES[2],
        "config.sft",
        lambda: sft_sections.parse(sft_config(config, config.sft, base, ["<traces>"]), num_devices),
    )
    check(
        "the reward model",
        "config.reward_model",
        lambda: rm_sections.parse(reward_model_config(config), num_devices),
    )

    def stage_4() -> None:
        phases = all_scenarios_configs(
            config, made_by(STAGES[2]), "<reward model>", ["<general rows>"]
        )
        for cfg in phases:
            if cfg is not None:
                grpo_sections.parse(cfg, num_devices)

    check(STAGES[3], "config.all_scenarios_rl", stage_4)
