"""Reward-model scores inside compiled programs (the GRPO step, RM training and evaluation).

R1's last RL stage scores general data with reward models: helpfulness on the final summary
only (the text after the reasoning's `</think>`), harmlessness on the whole response. Both are
a *region* of the sequence the reward model reads: the prompt plus the judged part of the
response. Tokens outside the region are cut out exactly as if they were absent from the text
(no token attends to them, positions skip them), so a helpfulness model sees
`prompt + summary`, the input it was trained on.

Everything here is jax.numpy with static shapes: `score_sequences` runs inside `jax.jit` with
the reward model's parameters as a (frozen) input, on any mesh.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from r1.rewards.extract import THINK_CLOSE
from r1.rewards.tokens import TagIds, find_sequence
from r1.rm.model import RewardModel

REGIONS = ("summary", "whole")
MISSING_SUMMARY = ("empty", "response")


def think_close_ids(ids: TagIds | Sequence[int]) -> tuple[int, ...]:
    """The token ids of `</think>`: from a `TagIds` (its second tag) or given directly."""
    if isinstance(ids, TagIds):
        return tuple(ids.tags[1])
    out = tuple(int(i) for i in ids)
    if not out:
        raise ValueError("think_close: expected the non-empty token ids of '</think>'")
    return out


def region_settings(region: str, missing: str, tokenizer: Any) -> dict[str, Any]:
    """The static scoring settings of `region_mask` / `pair_scores` ({region, think_close,
    missing}): the `</think>` ids come from `tokenizer` when the region is "summary"."""
    if region not in REGIONS:
        raise ValueError(f"region: expected one of {REGIONS}, got {region!r}")
    close = think_close_ids(tokenizer.encode(THINK_CLOSE)) if region == "summary" else ()
    return {"region": region, "think_close": close, "missing": missing}


def summary_mask(
    tokens: jax.Array,
    response_mask: jax.Array,
    think_close: Sequence[int],
    missing: str = "empty",
) -> jax.Array:
    """bool[B, T]: the response tokens after the end of the response's LAST `</think>`.

    tokens: int32[B, T]; response_mask: bool[B, T], the real response tokens; think_close: the
    id sequence of `</think>` (static). missing: what a response without `</think>` yields,
    "empty" (no summary: the reward model sees the prompt alone) or "response" (all of it).
    """
    if missing not in MISSING_SUMMARY:
        raise ValueError(f"missing: expected one of {MISSING_SUMMARY}, got {missing!r}")
    close = think_close_ids(think_close)
    response_mask = response_mask.astype(bool)
    found = find_sequence(tokens, response_mask, close)
    index = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
    last_start = jnp.max(jnp.where(found, index, -1), axis=1)
    has = last_start >= 0
    after = index >= (last_start + len(close))[:, None]
    summary = response_mask & after & has[:, None]
    if missing == "response":
        summary = jnp.where(has[:, None], summary, response_mask)
    return summary


def region_mask(
    tokens: jax.Array,
    mask: jax.Array,
    response_mask: jax.Array,
    *,
    region: str,
    think_close: Sequence[int] = (),
    missing: str = "empty",
) -> jax.Array:
    """bool[B, T]: the tokens a reward model reads, the prompt plus the judged response part.

    mask: bool[B, T] every real token (prompt and response); response_mask: bool[B, T] the
    response's tokens (a subset of mask; leave the EOS token out, as rewards judge the text).
    region: "summary" (helpfulness: the tokens after the last `</think>`, see `summary_mask`)
    or "whole" (harmlessness: the whole response).
    """
    mask = mask.astype(bool)
    response = response_mask.astype(bool) & mask
    prompt = mask & ~response
    if region == "whole":
        return prompt | response
    if region == "summary":
        return prompt | summary_mask(tokens, response, think_close, missing)
    raise ValueError(f"region: expected one of {REGIONS}, got {region!r}")


def score_sequences(
    rm_model: RewardModel,
    tokens: jax.Array,
    mask: jax.Array,
    region_mask: jax.Array | None = None,
) -> jax.Array:
    """Reward-model scores float32[B]: the model reads the tokens in `mask & region_mask`.

    tokens: int32[B, T]; mask: bool[B, T] real tokens; region_mask: bool[B, T] from
    `region_mask(...)` (None: all of `mask`). Padding and tokens outside the region may sit
    anywhere: they are cut out, never attended to. Differentiable in the model's parameters
    (RM training); wrap the parameters in `jax.lax.stop_gradient` to use it as a frozen reward.
    """
    read = mask.astype(bool)
    if region_mask is not None:
        if region_mask.shape != mask.shape:
            raise ValueError(
                f"score_sequences: region_mask {region_mask.shape} and mask {mask.shape} differ"
            )
        read = read & region_mask.astype(bool)
    return rm_model(tokens, read)


def score_completions(
    rm_model: RewardModel,
    prompt_tokens: jax.Array,
    prompt_mask: jax.Array,
    completion_tokens: jax.Array,
    completion_mask: jax.Array,
    *,
    region: str,
    think_close: Sequence[int] = (),
    missing: str = "empty",
    eos_id: int | None = None,
) -> jax.Array:
    """Scores float32[B] of prompt + completion rows, the shape the GRPO step holds.

    prompt_tokens / prompt_mask: int32 / bool [B, L] (left-padded; repeat each prompt G times
    first, as the step does); completion_tokens / completion_mask: int32 / bool [B, N] from the
    sampler (its mask includes EOS; pass `eos_id` to leave it out of the judged text).
    """
    if prompt_tokens.shape[0] != completion_tokens.shape[0]:
        raise ValueError(
            f"score_completions: {prompt_tokens.shape[0]} prompt rows for "
            f"{completion_tokens.shape[0]} completions (repeat prompts per group first)"
        )
    completion_mask = completion_mask.astype(bool)
    if eos_id is not None:
        completion_mask = completion_mask & (completion_tokens != eos_id)
    tokens = jnp.concatenate([prompt_tokens, completion_tokens], axis=1)
    mask = jnp.concatenate([prompt_mask.astype(bool), completion_mask], axis=1)
    response = jnp.concatenate([jnp.zeros(prompt_mask.shape, bool), completion_mask], axis=1)
    regions = region_mask(
        tokens, mask, response, region=region, think_close=think_close, missing=missing
    )
    return score_sequences(rm_model, tokens, mask, regions)


def make_frozen_scorer(
    graphdef: nnx.GraphDef,
    *,
    region: str,
    think_close: Sequence[int] = (),
    missing: str = "empty",
    eos_id: int | None = None,
) -> Callable[..., jax.Array]:
    """`scorer(rm_state, prompt_tokens, prompt_mask, completion_tokens, completion_mask)` ->
    float32[B] for a compiled step: `rm_state` is the reward model's whole `nnx.State` (from
    `nnx.split(rm_model)`), an ordinary (not donated) input of the step, held under
    `jax.lax.stop_gradient`. Settings are static (bound here)."""
    if region not in REGIONS:
        raise ValueError(f"region: expected one of {REGIONS}, got {region!r}")
    close = think_close_ids(think_close) if region == "summary" else ()

    def scorer(rm_state, prompt_tokens, prompt_mask, completion_tokens, completion_mask):
        model = nnx.merge(graphdef, jax.lax.stop_gradient(rm_state))
        return score_completions(
            model,
            prompt_tokens,
            prompt_mask,
            completion_tokens,
            completion_mask,
            region=region,
            think_close=close,
            missing=missing,
            eos_id=eos_id,
        )

    return scorer
