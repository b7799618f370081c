"""The GRPO run's reward scorer: its rule spec plus the frozen models scored inside the step.

    scorer, frozen = build_scorer(exp.rewards, exp.model_rewards, tokenizer, mesh)
    arrays = scorer.encode_fields(columns)    # per-prompt arrays the rewards read
    step = make_grpo_step(..., scorer, mesh, state, batch, frozen=frozen)

Each `r1.rl.config.ModelRewardEntry` becomes a model `r1.rewards.RewardTerm` whose `score`
(and, for the judge, field `encode`) closes over the model's graph; its weights are loaded,
sharded, at start (a bad path fails before the first step) and returned as `frozen`, the
step's input keyed by the term's label. See docs/grpo.md, "Rewards computed by frozen models
inside the step", and docs/rewards.md.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from flax import nnx
from jax.sharding import Mesh

from r1 import judge as judge_lib
from r1.rewards import CompiledSpec, RewardSpec, RewardTerm
from r1.rewards.tokens import TagIds
from r1.rl.config import ModelRewardEntry
from r1.rm import model as rm_model
from r1.rm.reward import make_frozen_scorer


def _checked_path(entry: ModelRewardEntry, index: int) -> str:
    if not os.path.isdir(entry.path):
        raise ValueError(
            f"config.model_rewards[{index}]: {entry.kind} path {entry.path!r} is not a directory"
        )
    return entry.path


def reward_model_term(
    entry: ModelRewardEntry, tokenizer: Any, mesh: Mesh, abstract: bool, index: int = 0
) -> tuple[RewardTerm, Any]:
    """A reward model (`r1.rm.model.save` directory) as a model term and its state.

    options: `region` ("summary": the text after the last `</think>`, for helpfulness;
    "whole": the whole response, for harmlessness), `missing` (`r1.rm.reward`), `rows` ("all",
    or "general" with `data.general_fraction` > 0: R1 stage 4, where rule rewards score the
    reasoning prompts and the reward model the general ones)."""
    _, rm = rm_model.load(_checked_path(entry, index), mesh=mesh, abstract=abstract)
    graphdef, state = nnx.split(rm)
    scorer = make_frozen_scorer(
        graphdef,
        region=entry.options.get("region", "summary"),
        think_close=tokenizer.encode("</think>"),
        missing=entry.options.get("missing", "empty"),
        eos_id=tokenizer.eos_id,
    )

    def score(rm_state, prompt_tokens, prompt_mask, completion, mask, fields):
        return scorer(rm_state, prompt_tokens, prompt_mask, completion, mask), {}

    rows = entry.options.get("rows", "all")
    return RewardTerm(entry.name, entry.weight, kind="model", rows=rows, score=score), state


def judge_term(
    entry: ModelRewardEntry, tokenizer: Any, mesh: Mesh, abstract: bool, index: int = 0
) -> tuple[RewardTerm, Any]:
    """A judge (r1/judge/ directory; its tokenizer extends the policy's without moving ids) as
    a model term and its state. The judge reads each prompt's reference answer (the ``answer``
    field, which the term's `encode` turns into ``judge_reference_tokens`` int32[P, R] and
    ``judge_reference_mask`` bool[P, R] with the judge's tokenizer) and the policy's final
    answer, and generates a verdict inside the step; its parts are the verdict counts."""
    judge = judge_lib.Judge.load(_checked_path(entry, index), mesh=mesh, abstract=abstract)
    graphdef, state = nnx.split(judge.model)
    judge_fn = judge_lib.make_judge_reward(
        graphdef,
        judge_lib.JudgeTokens.from_tokenizer(judge.tokenizer, judge.config),
        TagIds.from_tokenizer(tokenizer),
        judge.config.max_new_tokens,
        name=entry.name,
    )
    prefix = f"{entry.name}/"

    def score(judge_state, prompt_tokens, prompt_mask, completion, mask, fields):
        scores, parts = judge_fn(completion, mask, None, fields, judge_state)
        return scores, {k.removeprefix(prefix): v for k, v in parts.items() if "/" in k}

    width, judge_tokenizer = judge.config.max_field_tokens, judge.tokenizer

    def encode(rows):
        ids = [list(judge_tokenizer.encode(str(a)))[:width] for a in rows["answer"]]
        tokens = np.full((len(ids), width), int(judge_tokenizer.pad_id), np.int32)
        field_mask = np.zeros((len(ids), width), bool)
        for row, row_ids in enumerate(ids):
            tokens[row, : len(row_ids)] = row_ids
            field_mask[row, : len(row_ids)] = True
        return {"judge_reference_tokens": tokens, "judge_reference_mask": field_mask}

    term = RewardTerm(
        entry.name, entry.weight, kind="model", score=score, fields=("answer",), encode=encode
    )
    return term, state


MODEL_TERM_BUILDERS = {"reward_model": reward_model_term, "judge": judge_term}


def model_reward_terms(
    entries: tuple[ModelRewardEntry, ...], tokenizer: Any, mesh: Mesh, abstract: bool = False
) -> tuple[tuple[RewardTerm, ...], dict[str, Any]]:
    """The model terms of `entries` and their states {label: state}, loaded and sharded by
    `mesh`'s rules. abstract: build the models without weights (states of
    `jax.ShapeDtypeStruct`s), as `experiments.aot` does to compile the step for a pod."""
    terms, frozen = [], {}
    for index, entry in enumerate(entries):
        term, state = MODEL_TERM_BUILDERS[entry.kind](entry, tokenizer, mesh, abstract, index)
        terms.append(term)
        frozen[term.label] = state
    return tuple(terms), frozen


def build_scorer(
    rewards: RewardSpec,
    model_rewards: tuple[ModelRewardEntry, ...],
    tokenizer: Any,
    mesh: Mesh,
    abstract: bool = False,
) -> tuple[CompiledSpec, dict[str, Any]]:
    """The step's scorer (the rule terms of `rewards`, then the model terms) compiled with the
    policy's `tokenizer`, and the frozen model states it reads ({} without model rewards)."""
    terms, frozen = model_reward_terms(model_rewards, tokenizer, mesh, abstract)
    return RewardSpec((*rewards.terms, *terms)).compile(tokenizer), frozen
