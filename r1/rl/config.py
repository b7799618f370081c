"""The GRPO experiment's typed sections (configs/r1_zero.py layout), parsed once.

    exp = parse(config, num_devices=jax.device_count())
    grpo = exp.grpo_config(eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)

`RLSection`, the `rl` section, is generated from the step's own dataclasses, so each GRPO
setting is written once, where it is used: every field of `GRPOConfig` (r1/rl/step.py) but the
nested `sampling` / `loss`, every field of `GRPOLossConfig` (r1/rl/grpo.py) but `max_length`
(it is `max_new_tokens`), the user-facing fields of `SamplingConfig` (r1/sampling/sampler.py),
and `prompts_per_step`. One name differs from its dataclass: `rl.advantage` sets
`GRPOConfig.advantage_method`. Config files build their `rl` section with `rl_defaults(...)`,
so every field is settable from the command line (`--config.rl.dual_clip=3.0`,
`--config.rl.std_ddof=0`). Errors name the field as the user typed it:
`--config.rl.group_size=0` fails with `config.rl.group_size: ...`.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any

import ml_collections

from r1 import configlib
from r1.data.pipeline import PROMPT_TEMPLATES
from r1.data.sources import LAYOUTS, split_list
from r1.metrics.behaviour import REFLECTION_WORDS
from r1.models.config import ModelConfig
from r1.rewards import RewardSpec
from r1.rewards.term import ROWS
from r1.rl.grpo import ADVANTAGE_METHODS, GRPOLossConfig
from r1.rl.step import GRPOConfig
from r1.sampling.sampler import SamplingConfig
from r1.sharding import MeshConfig
from r1.train.config import (
    InitSection,
    OptimizerSection,
    TokenizerSection,
    TrainSection,
    common_sections,
    section,
)

SECTIONS = (
    "init",
    "tokenizer",
    "data",
    "rl",
    "rewards",
    "model_rewards",
    "optimizer",
    "train",
    "eval",
    "language",
)


# ----------------------------------------------------------------------------- config.data
@dataclasses.dataclass(frozen=True)
class DataSection:
    """`config.data`: where the prompts come from and how they are padded.

    files: comma-separated local JSONL / JSON / Parquet paths or globs, and TFDS datasets as
    ``tfds:name/config:split`` (prepared in `tfds_data_dir`); when set they replace the
    procedural task. layout: "auto" or one of `r1.data.sources.LAYOUTS`, one for all files or
    one per file (comma-separated). domains: "" (each row's own domain, else its layout's:
    gsm8k / math -> "math", humaneval / mbpp / stdio -> "code"), or one domain name for all
    files or one per file (comma-separated; "" keeps the default of that file): per-domain
    rewards score a row by its domain. mixture: "" (the files' rows concatenated), or one
    sampling weight per file (comma-separated, e.g. "0.7,0.3"): each prompt comes from a file
    drawn by weight (`r1.data.mixture.WeightedMixture`). template: how a question becomes
    the prompt: "r1_zero" (R1-Zero's template), "chat" (the checkpoint's own chat template from
    its tokenizer_config.json, for instruct / distilled models; `system_prompt` an optional
    system turn) or "plain"; instruction: the answer-format line added to the question under
    "chat" / "plain" ("auto": `templates.BOXED_INSTRUCTION` for rows with a gold answer,
    nothing for code and general rows; "": none; else the text given). num_epochs: passes over
    the files
    (0: forever); rows are shuffled with the run's seed, differently each epoch. task /
    task_kwargs: the procedural task whose train split gives the prompts when no file is set
    (the demo); "" requires files. buckets: the prompt lengths (tokens) prompts are
    left-padded to; longer prompts are skipped and counted.
    general_files (comma-separated JSONL paths of `prompt` rows) and general_fraction (their
    share of the prompts, 0 <= f < 1): R1 stage 4's general prompts. allow_changed: resume
    even when the files differ from those the checkpoint was saved with (their fingerprint is
    saved in every checkpoint; by default a changed file stops the resume)."""

    task: str = "add"
    task_kwargs: Any = None
    files: str = ""
    layout: str = "auto"
    domains: str = ""
    mixture: str = ""
    template: str = "r1_zero"
    system_prompt: str = ""
    instruction: str = "auto"
    num_epochs: int = 0
    tfds_data_dir: str = ""
    buckets: tuple[int, ...] = (64, 128, 256)
    general_files: str = ""
    general_fraction: float = 0.0
    allow_changed: bool = False

    def __post_init__(self):
        buckets = (self.buckets,) if isinstance(self.buckets, int) else tuple(self.buckets)
        if not buckets or any(not isinstance(b, int) or b < 1 for b in buckets):
            raise ValueError(f"config.data.buckets: expected positive lengths, got {self.buckets}")
        object.__setattr__(self, "buckets", buckets)
        if not 0.0 <= self.general_fraction < 1.0:
            raise ValueError(
                f"config.data.general_fraction: expected 0 <= f < 1, got {self.general_fraction}"
            )
        if self.general_fraction > 0 and not self.general_files:
            raise ValueError("config.data.general_files: needed when general_fraction > 0")
        if not self.task and not self.files:
            raise ValueError(
                "config.data.files: this config reads prompt files and has no procedural task; "
                "set --config.data.files=PATH[,PATH...] (and --config.data.layout)"
            )
        if self.num_epochs < 0:
            raise ValueError(f"config.data.num_epochs: expected >= 0, got {self.num_epochs}")
        if self.template not in PROMPT_TEMPLATES:
            raise ValueError(
                f"config.data.template: expected one of {PROMPT_TEMPLATES}, got {self.template!r}"
            )
        for layout in split_list(self.layout):
            if layout != "auto" and layout not in LAYOUTS:
                raise ValueError(
                    f"config.data.layout: expected 'auto' or one of {LAYOUTS}, got {layout!r}"
                )
        files = split_list(self.files)
        for name, value in (("layout", self.layout), ("domains", self.domains)):
            items = value.split(",") if value.strip() else []
            if len(items) > 1 and len(items) != len(files):
                raise ValueError(
                    f"config.data.{name}: {len(items)} items {items} for {len(files)} files; give "
                    "one for all files or one per file"
                )
        if self.mixture:
            weights = self.mixture_weights
            if not files or len(weights) != len(files):
                raise ValueError(
                    f"config.data.mixture: {len(weights)} weights for {len(files)} files "
                    f"{files}; give one weight per file"
                )

    @property
    def mixture_weights(self) -> tuple[float, ...]:
        """`mixture` as numbers (a clear error naming the field when one is not >= 0)."""
        try:
            weights = tuple(float(w) for w in split_list(self.mixture))
        except ValueError:
            raise ValueError(
                f"config.data.mixture: expected comma-separated numbers, got {self.mixture!r}"
            ) from None
        if any(not w >= 0 or w == float("inf") for w in weights) or not sum(weights) > 0:
            raise ValueError(
                f"config.data.mixture: weights must be finite, >= 0 and not all 0, got "
                f"{self.mixture!r}"
            )
        return weights


# ----------------------------------------------------------------------------- config.rl
# SamplingConfig fields a config does not set: the step sets them (num_samples is group_size)
# or the tokenizer does (eos_ids, pad_id), or the policy (record_routes: an MoE's); RL never
# samples greedily.
_SAMPLING_SKIP = ("num_samples", "greedy", "eos_ids", "stop_sequences", "pad_id", "record_routes")
# GRPOLossConfig.max_length is the sampler's max_new_tokens.
_LOSS_SKIP = ("max_length",)
_GRPO_SKIP = ("sampling", "loss")
# config.rl names that differ from the dataclass field they set.
_RENAMED = {"advantage_method": "advantage"}
# Fields of the step's dataclasses that another rl field sets (for error messages).
_SET_BY = {"num_samples": "group_size", "max_length": "max_new_tokens"}


def _fields(cls: type, skip: tuple[str, ...]) -> dict[str, str]:
    """{config.rl name: field of `cls`} for the fields of `cls` a config sets."""
    return {
        _RENAMED.get(f.name, f.name): f.name for f in dataclasses.fields(cls) if f.name not in skip
    }


GRPO_FIELDS = _fields(GRPOConfig, _GRPO_SKIP)
SAMPLING_FIELDS = _fields(SamplingConfig, _SAMPLING_SKIP)
LOSS_FIELDS = _fields(GRPOLossConfig, _LOSS_SKIP)
# The rl fields that are no dataclass's: P, prompts per step (global; each takes G rows).
OWN_FIELDS: tuple[tuple[str, type, Any], ...] = (("prompts_per_step", int, 32),)


def _rl_fields() -> list[tuple[str, Any, dataclasses.Field]]:
    """(name, type, default) of every rl field, in the order configs list them."""
    out = [(name, kind, dataclasses.field(default=value)) for name, kind, value in OWN_FIELDS]
    seen = {name for name, _, _ in OWN_FIELDS}
    for cls, names in (
        (GRPOConfig, GRPO_FIELDS),
        (SamplingConfig, SAMPLING_FIELDS),
        (GRPOLossConfig, LOSS_FIELDS),
    ):
        hints = typing.get_type_hints(cls)
        defaults = {f.name: f for f in dataclasses.fields(cls)}
        for name, source in names.items():
            if name in seen:
                raise TypeError(f"RLSection: field {name!r} comes from two dataclasses")
            seen.add(name)
            field = defaults[source]
            if field.default is dataclasses.MISSING:
                raise TypeError(f"RLSection: {cls.__name__}.{source} needs a default")
            out.append((name, hints[source], dataclasses.field(default=field.default)))
    return out


def _named(err: ValueError) -> ValueError:
    """An error of the step's dataclasses (`SamplingConfig.top_p must ...`, `eps_low: ...`)
    naming the rl field the user set (`config.rl.top_p must ...`)."""
    text = str(err)
    for prefix in ("SamplingConfig.", "GRPOLossConfig.", "GRPOConfig.", "GRPOConfig: "):
        text = text.removeprefix(prefix)
    match = re.match(r"([a-z_]+)(.*)", text, re.DOTALL)
    if match:
        source, rest = match.groups()
        name = _SET_BY.get(source, _RENAMED.get(source, source))
        if name in RL_FIELD_NAMES:
            return ValueError(f"config.rl.{name}{rest}")
    return ValueError(f"config.rl: {text}")


def _step_config(rl: Any, eos_id: int, pad_id: int) -> GRPOConfig:
    """The step's `GRPOConfig` of an `RLSection`: sampling, loss and schedule."""

    def values(fields: dict[str, str]) -> dict[str, Any]:
        return {source: getattr(rl, name) for name, source in fields.items()}

    sampling = SamplingConfig(
        **values(SAMPLING_FIELDS), num_samples=rl.group_size, eos_ids=(eos_id,), pad_id=pad_id
    )
    loss = GRPOLossConfig(**values(LOSS_FIELDS), max_length=rl.max_new_tokens)
    grpo = values(GRPO_FIELDS)
    grpo["accuracy_reward"] = grpo["accuracy_reward"] or None  # "" (a config's none) -> None
    return GRPOConfig(**grpo, sampling=sampling, loss=loss)


def _check_rl(self) -> None:
    for name in ("prompts_per_step", "group_size"):
        if getattr(self, name) < 1:
            raise ValueError(f"config.rl.{name}: expected >= 1, got {getattr(self, name)}")
    if self.advantage not in ADVANTAGE_METHODS:
        raise ValueError(
            f"config.rl.advantage: expected one of {ADVANTAGE_METHODS}, got {self.advantage!r}"
        )
    if self.std_ddof < 0:
        raise ValueError(
            f"config.rl.std_ddof: expected >= 0 (0: population std, 1: sample std), got "
            f"{self.std_ddof}"
        )
    if self.ref_update_every < 0:
        raise ValueError(
            f"config.rl.ref_update_every: expected >= 0 (0: never), got {self.ref_update_every}"
        )
    try:
        config = _step_config(self, eos_id=0, pad_id=0)
    except ValueError as err:
        raise _named(err) from err
    if self.prompts_per_step % config.num_minibatches:
        raise ValueError(
            f"config.rl.prompts_per_step={self.prompts_per_step} is not divisible by "
            f"config.rl.num_minibatches={self.num_minibatches} (mini-batches of whole groups)"
        )


RLSection = dataclasses.make_dataclass(
    "RLSection",
    _rl_fields(),
    frozen=True,
    namespace={"__post_init__": _check_rl},
)
RLSection.__module__ = __name__
RLSection.__doc__ = """`config.rl`: the GRPO settings, one field per setting of the step's
dataclasses.

prompts_per_step: P prompts per step (global), each sampled group_size G times. Sampling
(`SamplingConfig`): max_new_tokens, temperature, top_k, top_p, min_p, cache_dtype,
decode_segments, unstack_layers, slots (rows decoded at once; 0: all of them), gather_weights
(the fsdp shards of the weights gathered once per rollout, not every decode step),
stationary_weights (the weights laid out once over every device for the decode, the
activations moving to them). Loss
(`GRPOLossConfig`): eps_low / eps_high (clip range), dual_clip (None or c > 1), beta (k3 KL
weight; 0 drops the reference), ratio_level, aggregation, mask_truncated,
drop_zero_variance_groups. Advantages: advantage (one of
`r1.rl.grpo.ADVANTAGE_METHODS`), std_ddof (0: population std, 1: sample std). Schedule
(`GRPOConfig`): num_iterations, num_minibatches, num_microbatches (0: one row per batch shard),
length_buckets (training widths: each micro-batch of length-ordered rows at the narrowest
holding its longest row; 0: full width), ref_update_every (0: never). accuracy_reward: the
0/1 reward logged as `accuracy` ("" or None: none). The dataclasses' docstrings give each
field's meaning and units.
"""
RL_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(RLSection))


def rl_defaults(**overrides: Any) -> ml_collections.ConfigDict:
    """The `rl` section for a config file: every `RLSection` field (defaults: the step's
    dataclasses'), `overrides` applied; None-valued fields stay settable (typed placeholders)."""
    return configlib.dataclass_dict(RLSection, overrides, "rl")


# ----------------------------------------------------------------------------- config.eval
@dataclasses.dataclass(frozen=True)
class EvalSection:
    """`config.eval`: held-out evaluation every `every` steps (0: never).

    Without `files`: greedy accuracy on `per_difficulty` problems per difficulty of the
    procedural task. With `files` (comma-separated paths / globs / ``tfds:``, `layout` as
    `config.data.layout`): `num_samples` completions per problem (temperature `temperature`,
    top-p `top_p`, at most `max_new_tokens` tokens, 0: rl.max_new_tokens) on the files' rows
    (the first `max_problems`, 0: all), graded by each row's accuracy reward (math-verify; the
    sandbox, all tests passing, for code rows), giving `eval/pass@1`, `eval/cons@<k>`,
    `eval/response_length/mean`, `eval/truncated_frac`, and the same per domain
    (`eval/pass@1/domain/<d>`, ...) and per difficulty (`eval/pass@1/difficulty_<n>`)."""

    every: int = 50
    per_difficulty: int = 16
    files: str = ""
    layout: str = "auto"
    num_samples: int = 4
    max_problems: int = 0
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 0
    batch_size: int = 16

    def __post_init__(self):
        if self.every < 0 or self.per_difficulty < 1:
            raise ValueError(
                f"config.eval: every >= 0 and per_difficulty >= 1 expected, got {self.every}, "
                f"{self.per_difficulty}"
            )
        for name in ("num_samples", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"config.eval.{name}: expected >= 1, got {getattr(self, name)}")
        for name in ("max_problems", "max_new_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"config.eval.{name}: expected >= 0, got {getattr(self, name)}")
        if not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise ValueError(
                f"config.eval: temperature > 0 and 0 < top_p <= 1 expected, got "
                f"{self.temperature}, {self.top_p}"
            )
        for layout in split_list(self.layout):
            if layout != "auto" and layout not in LAYOUTS:
                raise ValueError(
                    f"config.eval.layout: expected 'auto' or one of {LAYOUTS}, got {layout!r}"
                )


def eval_defaults(**overrides: Any) -> ml_collections.ConfigDict:
    """The `eval` section for a config file: every `EvalSection` field, `overrides` applied."""
    return configlib.dataclass_dict(EvalSection, overrides, "eval")


# ----------------------------------------------------------------------------- config.rewards
MODEL_REWARD_KINDS = ("reward_model", "judge")
# The kwargs each model-reward kind takes besides `path` and `name`, with their allowed values
# (r1/rm/reward.py: the region a reward model reads, what a response without `</think>` gives).
MODEL_REWARD_OPTIONS = {
    "reward_model": {
        "region": ("summary", "whole"),
        "missing": ("empty", "response"),
        "rows": ROWS,
    },
    "judge": {},
}


@dataclasses.dataclass(frozen=True)
class ModelRewardEntry:
    """One entry of `config.model_rewards`, a `(kind, weight, kwargs)` triple, typed.

    kind: "reward_model" (a directory written by `r1.rm.model.save`) or "judge" (a judge
    directory, r1/judge/). weight: its factor in the total reward. name: its label in the
    metrics (`reward/<name>`; kwargs ``name``, default the kind, `<kind>_<index>` when taken).
    path: the model's directory (checked when the model loads, at start). options: the kind's
    other kwargs (reward_model: ``region``, ``missing``, ``rows``; the judge takes none).
    """

    kind: str
    weight: float
    name: str
    path: str
    options: typing.Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in MODEL_REWARD_KINDS:
            raise ValueError(
                f"unknown kind {self.kind!r} (expected one of {', '.join(MODEL_REWARD_KINDS)})"
            )
        unknown = sorted(set(self.options) - set(MODEL_REWARD_OPTIONS[self.kind]))
        if unknown:
            raise ValueError(f"unknown {self.kind} options {unknown}")
        for option, value in self.options.items():
            allowed = MODEL_REWARD_OPTIONS[self.kind][option]
            if value not in allowed:
                raise ValueError(f"{option}: expected one of {allowed}, got {value!r}")
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(f"{self.kind} needs kwargs `path` (a directory), got {self.path!r}")
        if not isinstance(self.weight, (int, float)) or isinstance(self.weight, bool):
            raise ValueError(f"weight must be a number, got {self.weight!r}")


def model_reward_entries(entries: tuple) -> tuple[ModelRewardEntry, ...]:
    """`(kind, weight, kwargs)` triples -> `ModelRewardEntry`s (errors name
    `config.model_rewards[i]`); at most one judge per run."""
    out: list[ModelRewardEntry] = []
    for index, (kind, weight, kwargs) in enumerate(entries):
        where = f"config.model_rewards[{index}]"
        if kwargs is not None and not isinstance(kwargs, typing.Mapping):
            raise ValueError(f"{where}: kwargs must be a mapping, got {kwargs!r}")
        options = dict(kwargs or {})
        taken = {e.name for e in out}
        name = str(options.pop("name", kind if kind not in taken else f"{kind}_{index}"))
        try:
            entry = ModelRewardEntry(kind, weight, name, options.pop("path", None), options)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        if name in taken:
            raise ValueError(f"{where}: name {name!r} is taken by an earlier model reward")
        if kind == "judge" and any(e.kind == "judge" for e in out):
            raise ValueError(f"{where}: only one judge reward per run")
        out.append(entry)
    return tuple(out)


def reward_spec(value: Any) -> RewardSpec:
    """The rule rewards of `config.rewards` as a `RewardSpec` (errors name `config.rewards`):
    a tuple of entries for every row, or a mapping {domain: entries} (per-domain rewards:
    each row is scored by its own domain's terms only, `RewardSpec.from_domains`)."""
    try:
        if isinstance(value, typing.Mapping):
            entries = {
                domain: _entries(e, f"config.rewards.{domain}", (2, 3), mappings=True)
                for domain, e in value.items()
            }
            return RewardSpec.from_domains(entries)
        return RewardSpec.from_config(_entries(value, "config.rewards", (2, 3), mappings=True))
    except ValueError as err:
        text = str(err)
        raise ValueError(
            f"config.{text}" if text.startswith("rewards") else f"config.rewards: {text}"
        ) from None


# ----------------------------------------------------------------------------- the experiment
@dataclasses.dataclass(frozen=True)
class GRPOExperiment:
    """A GRPO config, typed: model, mesh and seed (`configlib.Experiment`) plus its sections.

    rewards: the rule rewards of `config.rewards` (`(name, weight, kwargs)` / `(name, weight)`
    tuples, names or mappings, see `r1.rewards.spec.RewardSpec.from_config`), as a checked
    `RewardSpec`. model_rewards: the frozen-model rewards of `config.model_rewards` (`(kind,
    weight, kwargs)` triples), loaded at start by `r1.rl.model_rewards.build_scorer`.
    language: the language of the behaviour metrics' reflection words (top-level
    `config.language`, default "en")."""

    model: ModelConfig
    mesh: MeshConfig
    seed: int
    init: InitSection
    tokenizer: TokenizerSection
    data: DataSection
    rl: RLSection
    rewards: RewardSpec
    model_rewards: tuple[ModelRewardEntry, ...]
    optimizer: OptimizerSection
    train: TrainSection
    eval: EvalSection
    language: str = "en"

    def sampling_config(self, eos_id: int, pad_id: int) -> SamplingConfig:
        """How the step draws its G completions per prompt (`GRPOConfig.sampling`)."""
        return self.grpo_config(eos_id, pad_id).sampling

    def grpo_config(self, eos_id: int, pad_id: int) -> GRPOConfig:
        """The step's static settings (`r1.rl.step.GRPOConfig`); `eos_id` ends a completion,
        `pad_id` fills the rows after it."""
        return _step_config(self.rl, eos_id, pad_id)


def _entries(value: Any, where: str, sizes: tuple[int, ...], mappings: bool) -> tuple:
    """Reward entries as a tuple: each a name, a mapping (when `mappings`) or a sequence of one
    of `sizes` items starting with a name (`(name, weight, kwargs)`), made a tuple."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
        raise TypeError(f"{where}: expected a tuple of entries, got {type(value).__name__}")
    out = []
    for i, entry in enumerate(value):
        if hasattr(entry, "to_dict"):
            entry = entry.to_dict()
        if mappings and (isinstance(entry, str) or isinstance(entry, dict)):
            out.append(entry)
            continue
        if not isinstance(entry, (tuple, list)) or len(entry) not in sizes:
            raise TypeError(f"{where}[{i}]: expected (name, weight, kwargs), got {entry!r}")
        if not isinstance(entry[0], str):
            raise TypeError(f"{where}[{i}]: the first item must be a name, got {entry[0]!r}")
        out.append(tuple(entry))
    return tuple(out)


def parse(config: Any, num_devices: int | None = None) -> GRPOExperiment:
    """Validates a GRPO config into a `GRPOExperiment` (errors name `config.<section>.<field>`);
    with `num_devices`, also that the mesh fits that many devices."""
    common = common_sections(config, SECTIONS, num_devices)
    mapping = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    language = mapping.get("language", "en")
    if language not in REFLECTION_WORDS:
        raise ValueError(
            f"config.language: expected one of {sorted(REFLECTION_WORDS)}, got {language!r}"
        )
    rl = section(RLSection, config, "rl")
    rewards = reward_spec(mapping.get("rewards", ()))
    model_rewards = model_reward_entries(
        _entries(mapping.get("model_rewards", ()), "config.model_rewards", (3,), mappings=False)
    )
    labels = [t.label for t in rewards.terms]
    for index, entry in enumerate(model_rewards):
        if entry.name in labels:
            raise ValueError(
                f"config.model_rewards[{index}]: name {entry.name!r} is also a rule reward's "
                "label; set kwargs `name`"
            )
        labels.append(entry.name)
    for label in split_list(rl.accuracy_reward or ""):
        if label not in labels:
            raise ValueError(
                f"config.rl.accuracy_reward: {label!r} is not among the rewards {labels}"
            )
    return GRPOExperiment(
        **common,
        data=section(DataSection, config, "data"),
        rl=rl,
        rewards=rewards,
        model_rewards=model_rewards,
        train=section(TrainSection, config, "train"),
        eval=section(EvalSection, config, "eval"),
        language=language,
    )
