"""Rewards computed by frozen models inside the compiled GRPO step, built from a config.

`config.model_rewards` holds (kind, weight, kwargs) triples; `model_reward_terms` loads each
model (sharded, at start, so a bad path fails before the first step) and returns model
`r1.rewards.RewardTerm`s (their `score` and field `encode` callables close over the model's
graph) and their states (the step's `frozen` input, keyed by term label). Add the terms to the
run's `RewardSpec` and compile it: the scorer runs them after the rule terms. See docs/grpo.md,
"Rewards computed by frozen models inside the step", and docs/rewards.md.

`build_model_rewards` is a temporary shim with the old return value for r1/rl/trainer.py and
r1/aot/programs.py until they call the compiled spec.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
from flax import nnx

from r1 import judge as judge_lib
from r1.rewards import RewardTerm
from r1.rewards.tokens import TagIds
from r1.rl.step import ModelReward
from r1.rm import model as rm_model
from r1.rm.reward import make_frozen_scorer


def model_reward_terms(
    config, tokenizer, mesh, abstract: bool = False
) -> tuple[tuple[RewardTerm, ...], dict[str, Any]]:
    """The model `RewardTerm`s of `config.model_rewards` ((kind, weight, kwargs) triples) and
    their states {label: state} (loaded, sharded, at start so that a bad path fails before the
    first step). A judge term reads the rows' ``answer`` (`RewardTerm.encode` turns it into
    ``judge_reference_tokens`` int32[P, R] and ``judge_reference_mask`` bool[P, R]).

    kind "reward_model": kwargs `path` (a directory written by `r1.rm.model.save`, e.g. a
    `train_rm` export), `region` ("summary": the text after the last `</think>`, for
    helpfulness; "whole": the whole response, for harmlessness), optional `missing`, `rows`
    ("all", or "general" with `data.general_fraction` > 0: R1 stage 4, where rule rewards score
    the reasoning prompts and the reward model the general ones).
    kind "judge": kwargs `path` (a judge directory, e.g. from `experiments.train_judge`; its
    tokenizer must extend the policy's without moving ids). The judge reads each prompt's
    reference answer (the `answer` field, encoded with the judge's tokenizer) and the policy's
    final answer, and generates a verdict inside the step (r1/judge/).

    abstract: build the models without weights (their states are `jax.ShapeDtypeStruct`s), as
    `experiments.aot` does to compile the step for a pod.
    """
    terms, frozen = [], {}
    for index, entry in enumerate(config.get("model_rewards", ()) or ()):
        where = f"config.model_rewards[{index}]"
        try:
            kind, weight, kwargs = entry
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected (kind, weight, kwargs), got {entry!r}") from None
        kwargs = dict(kwargs or {})
        name = str(kwargs.pop("name", kind if kind not in frozen else f"{kind}_{index}"))
        if kind == "reward_model":
            path = kwargs.pop("path", None)
            rows = kwargs.pop("rows", "all")
            if not path or not os.path.isdir(path):
                raise ValueError(f"{where}: reward model path {path!r} is not a directory")
            _, rm = rm_model.load(path, mesh=mesh, abstract=abstract)
            rm_graphdef, rm_state = nnx.split(rm)
            scorer = make_frozen_scorer(
                rm_graphdef,
                region=kwargs.pop("region", "summary"),
                think_close=tokenizer.encode("</think>"),
                missing=kwargs.pop("missing", "empty"),
                eos_id=tokenizer.eos_id,
            )
            if kwargs:
                raise ValueError(f"{where}: unknown reward_model options {sorted(kwargs)}")

            def score(state, prompt_tokens, prompt_mask, completion, mask, fields, f=scorer):
                return f(state, prompt_tokens, prompt_mask, completion, mask), {}

            terms.append(RewardTerm(name, weight, kind="model", rows=rows, score=score))
            frozen[name] = rm_state
        elif kind == "judge":
            path = kwargs.pop("path", None)
            if kwargs:
                raise ValueError(f"{where}: unknown judge options {sorted(kwargs)}")
            if any(k == "judge" for k, _, _ in (config.model_rewards or ())[:index]):
                raise ValueError(f"{where}: only one judge reward per run")
            judge = judge_lib.Judge.load(path, mesh=mesh, abstract=abstract)
            judge_graphdef, judge_state = nnx.split(judge.model)
            judge_fn = judge_lib.make_judge_reward(
                judge_graphdef,
                judge_lib.JudgeTokens.from_tokenizer(judge.tokenizer, judge.config),
                TagIds.from_tokenizer(tokenizer),
                judge.config.max_new_tokens,
                name=name,
            )

            def score(
                state, prompt_tokens, prompt_mask, completion, mask, fields, f=judge_fn, n=name
            ):
                scores, parts = f(completion, mask, None, fields, state)
                prefix = f"{n}/"
                return scores, {k[len(prefix) :]: v for k, v in parts.items() if "/" in k}

            width = judge.config.max_field_tokens

            def encode(rows, tok=judge.tokenizer, width=width):
                ids = [list(tok.encode(str(a)))[:width] for a in rows["answer"]]
                tokens = np.full((len(ids), width), int(tok.pad_id), np.int32)
                field_mask = np.zeros((len(ids), width), bool)
                for row, row_ids in enumerate(ids):
                    tokens[row, : len(row_ids)] = row_ids
                    field_mask[row, : len(row_ids)] = True
                return {"judge_reference_tokens": tokens, "judge_reference_mask": field_mask}

            terms.append(
                RewardTerm(
                    name, weight, kind="model", score=score, fields=("answer",), encode=encode
                )
            )
            frozen[name] = judge_state
        else:
            raise ValueError(f"{where}: unknown kind {kind!r} (expected reward_model or judge)")
    return tuple(terms), frozen


def build_model_rewards(
    config, tokenizer, mesh, abstract: bool = False
) -> tuple[tuple[ModelReward, ...], dict[str, Any], list[Callable]]:
    """Temporary shim (removed when the trainer calls the compiled spec): `model_reward_terms`
    as the old (`r1.rl.step.ModelReward`s, states, encoders `encoder(answers) -> {field:
    array[P, ...]}`)."""
    terms, frozen = model_reward_terms(config, tokenizer, mesh, abstract=abstract)
    rewards = tuple(ModelReward(t.label, t.weight, t.score, rows=t.rows) for t in terms)
    encoders = [
        (lambda answers, f=t.encode: f({"answer": list(answers)}))
        for t in terms
        if t.encode is not None
    ]
    return rewards, frozen, encoders
