"""Rejection sampling from an experiment config (configs/rejection_sample.py): the typed
`data` / `sampling` / `judge` / `select` sections, the prompt rows, the judge, and
`run_from_config`, which builds mesh, tokenizer, policy and rewards and runs
`r1.rejection.runner.run` in a workdir.

    python -m experiments.rejection_sample --config=configs/rejection_sample.py:tiny \
        --workdir=runs/rejection_tiny
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax

from r1 import configlib, sharding
from r1.data import procedural, sources, templates
from r1.judge import Judge, JudgeConfig, load_judge_config
from r1.judge.data import with_word_answers
from r1.rejection.filters import FilterConfig
from r1.rejection.runner import SamplerPolicy, default_render, run
from r1.rejection.select import SelectConfig
from r1.rewards import RewardSpec
from r1.sampling.sampler import SamplingConfig
from r1.train import build

TEMPLATES = ("r1_zero", *templates.CHAT_FORMATS)
EXTRA_SECTIONS = (
    "init",
    "tokenizer",
    "data",
    "sampling",
    "rewards",
    "select",
    "filters",
    "judge",
)


@dataclasses.dataclass(frozen=True)
class DataSection:
    """`config.data`: where prompts come from and how they are rendered.

    source: "procedural" (`task`, `task_kwargs`, `split`, the first `num_prompts` rows for
    `config.seed`) or "files" (`files`: a path, glob or comma-separated paths of JSONL / JSON /
    Parquet in a `r1.data.sources` layout; the first `num_prompts` rows, 0: all).
    template: "r1_zero" or a chat format of `r1.data.templates.render_chat` (which opens
    ``<think>``). add_bos: the tokenizer prepends BOS (chat formats then omit their BOS text).
    answer_words_fraction: procedural only; that share of rows gets its answer written in words
    and task "<task>_words" (`r1.judge.data.with_word_answers`), for a judge to grade.
    """

    source: str = "procedural"
    task: str = "add"
    task_kwargs: dict = dataclasses.field(default_factory=dict)
    split: str = "train"
    files: str = ""
    layout: str = "auto"
    num_prompts: int = 0
    template: str = "r1_zero"
    add_bos: bool = True
    answer_words_fraction: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.answer_words_fraction <= 1.0:
            raise ValueError(
                f"answer_words_fraction: expected a value in [0, 1], got "
                f"{self.answer_words_fraction}"
            )
        if self.source not in ("procedural", "files"):
            raise ValueError(f"source: expected 'procedural' or 'files', got {self.source!r}")
        if self.template not in TEMPLATES:
            raise ValueError(f"template: expected one of {TEMPLATES}, got {self.template!r}")
        if self.num_prompts < 0 or (self.source == "procedural" and self.num_prompts == 0):
            raise ValueError(f"num_prompts: expected > 0 (>= 0 for files), got {self.num_prompts}")
        if self.source == "files" and not self.files:
            raise ValueError("files: source='files' needs a path, glob or comma-separated paths")


@dataclasses.dataclass(frozen=True)
class SamplingSection:
    """`config.sampling`: k = num_samples per prompt, prompts_per_batch per sampler call, the
    sampler's settings (`r1.sampling.sampler.SamplingConfig`; slots: rows decoded at once
    within a call, 0 = all) and the prompt bucket multiple."""

    num_samples: int = 8
    prompts_per_batch: int = 8
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    slots: int = 0
    bucket_multiple: int = 16

    def __post_init__(self):
        for name in ("num_samples", "prompts_per_batch", "bucket_multiple"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.slots < 0:
            raise ValueError(f"slots: expected >= 0 (0: static batch), got {self.slots}")


@dataclasses.dataclass(frozen=True)
class JudgeSection:
    """`config.judge`: path "" (no judge) or a judge directory (`Judge.load`: HF layout with its
    tokenizer and judge_config.json); tasks: the row tasks it grades; batch_size: rows per judge
    call; template / verdict_format / max_new_tokens: override the saved judging config ("" or
    0: as saved)."""

    path: str = ""
    tasks: tuple[str, ...] = ()
    batch_size: int = 8
    template: str = ""
    verdict_format: str = ""
    max_new_tokens: int = 0

    def __post_init__(self):
        if self.path and not self.tasks:
            raise ValueError("tasks: a judge needs the row tasks it grades (e.g. ('add_words',))")
        if self.tasks and not self.path:
            raise ValueError("path: judge.tasks is set but judge.path is empty")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {self.batch_size}")

    def judge_config(self, saved: JudgeConfig) -> JudgeConfig:
        """The saved judging config with this section's overrides."""
        changes: dict[str, Any] = {"batch_size": self.batch_size}
        if self.template:
            changes["template"] = self.template
        if self.verdict_format:
            changes["verdict_format"] = self.verdict_format
        if self.max_new_tokens:
            changes["max_new_tokens"] = self.max_new_tokens
        return dataclasses.replace(saved, **changes)


def build_judge(section: JudgeSection, mesh: jax.sharding.Mesh | None = None) -> Judge | None:
    """The judge of `config.judge` (None when its path is empty); load errors name the path."""
    if not section.path:
        return None
    path = os.path.expanduser(section.path)
    if not os.path.isabs(path) and not os.path.exists(path):
        path = os.path.join(configlib.REPO_ROOT, path)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"config.judge.path: {section.path} is not a directory (train one with "
            "`python -m experiments.train_judge --out=DIR`)"
        )
    try:
        config = section.judge_config(load_judge_config(path))
    except ValueError as err:
        raise ValueError(f"config.judge: {err}") from err
    return Judge.load(path, config, mesh=mesh)


def load_prompts(data: DataSection, seed: int) -> list[dict[str, Any]]:
    """The prompt rows of `config.data` (see `DataSection`)."""
    if data.source == "procedural":
        task = procedural.make_task(data.task, **dict(data.task_kwargs))
        rows = [procedural.generate(task, seed, i, data.split) for i in range(data.num_prompts)]
        if data.answer_words_fraction > 0:
            rows = with_word_answers(rows, data.answer_words_fraction)
        return rows
    paths: Any = data.files
    if "," in paths:
        paths = [p.strip() for p in paths.split(",") if p.strip()]
    rows, _ = sources.load_files(paths, data.layout)
    return rows[: data.num_prompts] if data.num_prompts else rows


def make_render(data: DataSection) -> Callable[[Mapping[str, Any]], str]:
    """Prompt row -> the text the policy continues, for `data.template`."""
    if data.template == "r1_zero":
        return default_render
    fmt, add_bos = data.template, not data.add_bos
    return lambda row: templates.render_chat(row["prompt"], format=fmt, add_bos=add_bos)


def parse_sections(config: Any) -> tuple[DataSection, SamplingSection, SelectConfig]:
    """The typed `data`, `sampling` and `select` (+ `filters`) sections; errors name the field."""
    data = configlib.to_dataclass(DataSection, config["data"], "config.data")
    sampling = configlib.to_dataclass(SamplingSection, config["sampling"], "config.sampling")
    filters = configlib.to_dataclass(FilterConfig, config["filters"], "config.filters")
    values = dict(config["select"])
    try:
        values["min_rewards"] = tuple((str(n), float(m)) for n, m in values.get("min_rewards", ()))
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"config.select.min_rewards: expected (label, minimum) pairs: {err}"
        ) from err
    select_cfg = configlib.to_dataclass(
        SelectConfig, {**values, "filters": filters}, "config.select"
    )
    return data, sampling, select_cfg


@dataclasses.dataclass(frozen=True)
class RejectionSettings:
    """A rejection-sampling config (configs/rejection_sample.py), parsed and checked."""

    experiment: configlib.Experiment
    data: DataSection
    sampling: SamplingSection
    select: SelectConfig
    judge: JudgeSection
    rewards: RewardSpec


def parse_config(config: Any, num_devices: int | None = None) -> RejectionSettings:
    """Every check `run_from_config` makes before it opens a file: the sections' fields, the
    mesh against `num_devices`, a checkpoint named, the rewards known. Errors name the field."""
    experiment = configlib.parse_experiment(
        config, num_devices=num_devices, extra_sections=EXTRA_SECTIONS
    )
    data, sampling_section, select_cfg = parse_sections(config)
    judge_section = configlib.to_dataclass(
        JudgeSection, config.get("judge", {}) or {}, "config.judge"
    )
    if not config.init.hf_path:
        raise ValueError("config.init.hf_path: rejection sampling needs a checkpoint to sample")
    spec = RewardSpec.from_config(config.rewards)
    return RejectionSettings(experiment, data, sampling_section, select_cfg, judge_section, spec)


def run_from_config(
    config: Any, workdir: str, config_name: str = "", restart: bool = False
) -> dict[str, Any]:
    """Builds mesh, tokenizer, policy (`config.init.hf_path`), prompts and rewards from an
    experiment config (configs/rejection_sample.py) and runs `run` in `workdir` (restart: see
    `run`)."""
    settings = parse_config(config, num_devices=jax.device_count())
    experiment, data, sampling_section = settings.experiment, settings.data, settings.sampling
    select_cfg, judge_section, spec = settings.select, settings.judge, settings.rewards
    mesh = sharding.make_mesh(experiment.mesh)
    tokenizer = build.build_tokenizer(str(config.tokenizer.kind), str(config.tokenizer.path))
    build.check_vocab(
        tokenizer,
        build.policy_config(str(config.init.hf_path), experiment.model),
        f"the checkpoint {config.init.hf_path}",
    )
    judge = build_judge(judge_section, mesh)  # before the policy: a bad judge fails at start
    with sharding.use_mesh(mesh):
        model = build.build_policy(
            str(config.init.hf_path), experiment.model, mesh, experiment.seed
        )
    sampling = SamplingConfig(
        max_new_tokens=sampling_section.max_new_tokens,
        num_samples=sampling_section.num_samples,
        temperature=sampling_section.temperature,
        top_p=sampling_section.top_p,
        top_k=sampling_section.top_k,
        min_p=sampling_section.min_p,
        slots=sampling_section.slots,
        eos_ids=(tokenizer.eos_id,),
        pad_id=tokenizer.pad_id,
    )
    policy = SamplerPolicy(
        model,
        tokenizer,
        sampling,
        seed=experiment.seed,
        batch_size=sampling_section.prompts_per_batch,
        mesh=mesh,
        add_bos=data.add_bos,
        bucket_multiple=sampling_section.bucket_multiple,
    )
    prompts = load_prompts(data, experiment.seed)
    provenance = {
        "checkpoint": str(config.init.hf_path),
        "seed": experiment.seed,
        "config": config_name,
        "sampling": dataclasses.asdict(sampling_section),
    }
    identity = {
        "provenance": provenance,
        "judge": repr(judge_section),
        "data": repr(data),
        "select": repr(select_cfg),
        "rewards": repr(spec.terms),
    }
    is_main = jax.process_index() == 0
    if is_main:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    return run(
        prompts,
        policy,
        spec,
        select_cfg,
        workdir,
        batch_size=sampling_section.prompts_per_batch,
        provenance=provenance,
        render=make_render(data),
        identity=identity,
        write=is_main,
        progress_bar=is_main,
        judge=judge,
        judge_tasks=judge_section.tasks,
        restart=restart,
    )
