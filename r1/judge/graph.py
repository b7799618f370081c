"""The judge inside a compiled program: prompts built from token arrays with static shapes,
greedy decoding with `sample`, verdicts parsed from token ids (`r1.judge`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from r1.judge.config import JudgeConfig, verdict_strings, verdict_values
from r1.rewards.tokens import TagIds, find_sequence
from r1.sampling.sampler import SamplingConfig, sample


@dataclasses.dataclass(frozen=True)
class JudgeTokens:
    """Static token ids of a judge: the template as id tuples and field names, the verdict id
    sequences with their scores, EOS, pad and `max_field_tokens`. Hashable (a static argument).
    """

    segments: tuple[tuple[int, ...] | str, ...]
    verdicts: tuple[tuple[int, ...], ...]
    values: tuple[float, ...]
    eos_id: int
    pad_id: int
    max_field_tokens: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, config: JudgeConfig) -> JudgeTokens:
        """Ids from `tokenizer.encode`; the verdicts must tokenise the same in any context."""
        segments: list[tuple[int, ...] | str] = []
        if config.add_bos and tokenizer.bos_id is not None:
            segments.append((int(tokenizer.bos_id),))
        for kind, value in config.segments():
            if kind == "text":
                segments.append(tuple(int(i) for i in tokenizer.encode(value)))
            else:
                segments.append(value)
        verdicts = tuple(
            tuple(int(i) for i in tokenizer.encode(v)) for v in verdict_strings(config)
        )
        if any(not v for v in verdicts):
            raise ValueError("JudgeTokens: a verdict string encodes to no tokens")
        return cls(
            tuple(segments),
            verdicts,
            verdict_values(config),
            int(tokenizer.eos_id),
            int(tokenizer.pad_id),
            config.max_field_tokens,
        )

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(s for s in self.segments if isinstance(s, str))

    def prompt_length(self) -> int:
        """Static length of `build_judge_prompt`'s output."""
        return sum(self.max_field_tokens if isinstance(s, str) else len(s) for s in self.segments)


def parse_verdict_tokens(
    tokens: jax.Array, mask: jax.Array, judge_tokens: JudgeTokens
) -> tuple[jax.Array, jax.Array]:
    """The verdict rule on ids: (scores float32[B], unparseable bool[B]).

    tokens: int32[B, N] verdict ids; mask: bool[B, N] (True on generated tokens). Parsed when
    exactly one verdict id sequence occurs at unmasked positions (score = its value); empty,
    none or several: unparseable, score 0.
    """
    mask = mask.astype(bool)
    counts = jnp.stack(
        [jnp.sum(find_sequence(tokens, mask, v), axis=1) for v in judge_tokens.verdicts], axis=1
    ).astype(jnp.int32)
    total = jnp.sum(counts, axis=1)
    values = jnp.asarray(judge_tokens.values, jnp.float32)
    parsed = total == 1
    score = jnp.sum(jnp.where(counts == 1, values[None, :], 0.0), axis=1)
    return jnp.where(parsed, score, 0.0).astype(jnp.float32), ~parsed


def _first_true(found: jax.Array) -> jax.Array:
    """int32[B]: the first True index of bool[B, T], or T."""
    index = jnp.arange(found.shape[1], dtype=jnp.int32)[None, :]
    return jnp.min(jnp.where(found, index, found.shape[1]), axis=1)


def _last_true(found: jax.Array) -> jax.Array:
    """int32[B]: the last True index of bool[B, T], or -1."""
    index = jnp.arange(found.shape[1], dtype=jnp.int32)[None, :]
    return jnp.max(jnp.where(found, index, -1), axis=1)


def _keep_first(mask: jax.Array, limit: int) -> jax.Array:
    """bool[B, T]: the first `limit` True positions of each row of `mask`."""
    return mask & (jnp.cumsum(mask.astype(jnp.int32), axis=1) <= limit)


def build_judge_prompt(
    judge_tokens: JudgeTokens, fields: Mapping[str, tuple[jax.Array, jax.Array]]
) -> tuple[jax.Array, jax.Array]:
    """The judging prompt from token arrays, left-padded, with a static shape.

    fields: name -> (tokens int32[B, X], mask bool[B, X]) for each template field; a field's
    tokens are its True positions in order (they need not be contiguous), cut to the first
    `max_field_tokens`. Returns (tokens int32[B, S], mask bool[B, S]) with S =
    `judge_tokens.prompt_length()`: the template's ids and the fields' ids concatenated and
    right-aligned, the same ids `encode_judge_prompt` gives for the same texts.
    """
    missing = [f for f in judge_tokens.fields if f not in fields]
    if missing:
        raise ValueError(f"build_judge_prompt: the template needs the field(s) {missing}")
    batch = next(iter(fields.values()))[0].shape[0]
    parts, valid = [], []
    for segment in judge_tokens.segments:
        if isinstance(segment, str):
            tokens, mask = fields[segment]
            if tokens.shape[0] != batch or tokens.shape != mask.shape:
                raise ValueError(f"build_judge_prompt: field {segment!r} has shape {tokens.shape}")
            keep = _keep_first(mask.astype(bool), judge_tokens.max_field_tokens)
            # Static width: exactly max_field_tokens slots per field (padding is masked).
            width = tokens.shape[1]
            if width < judge_tokens.max_field_tokens:
                extra = judge_tokens.max_field_tokens - width
                tokens = jnp.pad(tokens, ((0, 0), (0, extra)))
                keep = jnp.pad(keep, ((0, 0), (0, extra)))
            compact_tokens, compact_mask = _left_align(tokens.astype(jnp.int32), keep, 0)
            parts.append(compact_tokens[:, : judge_tokens.max_field_tokens])
            valid.append(compact_mask[:, : judge_tokens.max_field_tokens])
        elif segment:
            ids = jnp.asarray(segment, jnp.int32)[None, :]
            parts.append(jnp.broadcast_to(ids, (batch, len(segment))))
            valid.append(jnp.ones((batch, len(segment)), bool))
    tokens = jnp.concatenate(parts, axis=1)
    mask = jnp.concatenate(valid, axis=1)
    return _right_align(tokens, mask, judge_tokens.pad_id)


def _left_align(tokens: jax.Array, mask: jax.Array, pad_id: int) -> tuple[jax.Array, jax.Array]:
    """Moves the True positions of each row to the front, in order (static shape)."""
    length = tokens.shape[1]
    dest = jnp.where(mask, jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, length)
    return _scatter(tokens, mask, dest, pad_id)


def _right_align(tokens: jax.Array, mask: jax.Array, pad_id: int) -> tuple[jax.Array, jax.Array]:
    """Moves the True positions of each row to the end, in order (left padding)."""
    length = tokens.shape[1]
    after = jnp.flip(jnp.cumsum(jnp.flip(mask.astype(jnp.int32), axis=1), axis=1), axis=1)
    dest = jnp.where(mask, length - after, length)
    return _scatter(tokens, mask, dest, pad_id)


def _scatter(tokens, mask, dest, pad_id):
    batch, length = tokens.shape
    rows = jnp.broadcast_to(jnp.arange(batch, dtype=jnp.int32)[:, None], (batch, length))
    out = jnp.full((batch, length), pad_id, jnp.int32).at[rows, dest].set(tokens, mode="drop")
    out_mask = jnp.zeros((batch, length), bool).at[rows, dest].set(mask, mode="drop")
    return out, out_mask


def judge_in_graph(
    judge_model: nnx.Module,
    prompt_tokens: jax.Array,
    prompt_mask: jax.Array,
    judge_tokens: JudgeTokens,
    max_new_tokens: int,
) -> tuple[jax.Array, jax.Array]:
    """Greedy verdicts of `judge_model` for left-padded judging prompts, parsed on ids.

    prompt_tokens: int32[B, S], prompt_mask: bool[B, S] (e.g. from `build_judge_prompt`).
    Returns (scores float32[B] in [0, 1], unparseable bool[B]), both without gradient. Pure and
    jittable: call it inside a compiled step with `nnx.merge(graphdef, judge_state)`.
    """
    config = SamplingConfig(
        max_new_tokens=max_new_tokens,
        greedy=True,
        eos_ids=(judge_tokens.eos_id,),
        pad_id=judge_tokens.pad_id,
    )
    out = sample(judge_model, prompt_tokens, prompt_mask, jax.random.key(0), config)
    scores, unparseable = parse_verdict_tokens(out.tokens, out.mask, judge_tokens)
    return jax.lax.stop_gradient(scores), unparseable


def tag_span(
    tokens: jax.Array,
    mask: jax.Array,
    open_ids: Sequence[int],
    close_ids: Sequence[int],
    whitespace: Sequence[int] = (),
    last: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """(span bool[B, T], found bool[B]): the ids between the last (`last`) or first opening tag
    and the first closing tag after it, without leading/trailing `whitespace` ids; the token
    twin of `r1.rewards.extract.answer_content(...).strip()`."""
    mask = mask.astype(bool)
    length = tokens.shape[1]
    index = jnp.arange(length, dtype=jnp.int32)[None, :]
    opens = find_sequence(tokens, mask, open_ids)
    start_tag = _last_true(opens) if last else _first_true(opens)
    has_open = (start_tag >= 0) & (start_tag < length)
    start = start_tag + len(open_ids)
    closes = find_sequence(tokens, mask, close_ids) & (index >= start[:, None])
    end = _first_true(closes)
    found = has_open & (end < length)
    inside = (index >= start[:, None]) & (index < end[:, None]) & mask & found[:, None]
    is_space = jnp.zeros(tokens.shape, bool)
    for i in whitespace:
        is_space = is_space | (tokens == i)
    body = inside & ~is_space
    lo, hi = _first_true(body), _last_true(body)
    span = inside & (index >= lo[:, None]) & (index <= hi[:, None])
    return span, found


def judge_completions_in_graph(
    judge_model: nnx.Module,
    completion_tokens: jax.Array,
    completion_mask: jax.Array,
    reference_tokens: jax.Array,
    reference_mask: jax.Array,
    *,
    judge_tokens: JudgeTokens,
    tag_ids: TagIds,
    max_new_tokens: int,
    question: tuple[jax.Array, jax.Array] | None = None,
) -> dict[str, jax.Array]:
    """Judges policy completions in-graph: final answer (last ``<answer>`` content, stripped) as
    the prediction, the reference ids as the reference, the think content as ``{reasoning}``.

    completion_*: [B, N] policy ids (the judge's vocabulary must give them the same meaning);
    reference_*: [B, R]; question: optional (tokens, mask) [B, Q] for ``{question}``. Returns
    {"scores": float32[B] (0 where there is no answer), "unparseable": bool[B],
    "no_answer": bool[B], "prompt_tokens", "prompt_mask"}.
    """
    tags = tag_ids.tags
    answer, has_answer = tag_span(
        completion_tokens, completion_mask, tags[2], tags[3], tag_ids.whitespace, last=True
    )
    fields = {
        "reference": (reference_tokens, reference_mask.astype(bool)),
        "prediction": (completion_tokens, answer),
    }
    if "reasoning" in judge_tokens.fields:
        think, _ = tag_span(
            completion_tokens, completion_mask, tags[0], tags[1], tag_ids.whitespace, last=False
        )
        fields["reasoning"] = (completion_tokens, think)
    if "question" in judge_tokens.fields:
        if question is None:
            raise ValueError("judge_completions_in_graph: the template needs {question}")
        fields["question"] = (question[0], question[1].astype(bool))
    prompt_tokens, prompt_mask = build_judge_prompt(judge_tokens, fields)
    scores, unparseable = judge_in_graph(
        judge_model, prompt_tokens, prompt_mask, judge_tokens, max_new_tokens
    )
    return {
        "scores": jnp.where(has_answer, scores, 0.0),
        "unparseable": unparseable & has_answer,
        "no_answer": ~has_answer,
        "prompt_tokens": prompt_tokens,
        "prompt_mask": prompt_mask,
    }


JudgeRewardFn = Callable[
    [jax.Array, jax.Array, jax.Array, Mapping[str, jax.Array], Any],
    tuple[jax.Array, dict[str, jax.Array]],
]


def make_judge_reward(
    judge_graphdef: nnx.GraphDef,
    judge_tokens: JudgeTokens,
    tag_ids: TagIds,
    max_new_tokens: int,
    name: str = "judge",
) -> JudgeRewardFn:
    """A GRPO reward `fn(completion, completion_mask, truncated, fields, judge_state) ->
    (scores float32[B], {name: scores, name/unparseable: float32[B], name/no_answer: ...})`.

    fields must hold "judge_reference_tokens" int32[B, R] and "judge_reference_mask" bool[B, R]
    (per-prompt batch fields repeated per row by the step). judge_state: the judge's
    `nnx.split` state, a frozen input of the step (like the reference policy's params).
    """

    def reward(completion, completion_mask, truncated, fields, judge_state):
        del truncated
        for key in ("judge_reference_tokens", "judge_reference_mask"):
            if key not in fields:
                raise ValueError(f"judge reward: the batch needs the field {key!r}")
        judge = nnx.merge(judge_graphdef, judge_state)
        out = judge_completions_in_graph(
            judge,
            completion,
            completion_mask,
            fields["judge_reference_tokens"],
            fields["judge_reference_mask"],
            judge_tokens=judge_tokens,
            tag_ids=tag_ids,
            max_new_tokens=max_new_tokens,
        )
        parts = {
            name: out["scores"],
            f"{name}/unparseable": out["unparseable"].astype(jnp.float32),
            f"{name}/no_answer": out["no_answer"].astype(jnp.float32),
        }
        return out["scores"], parts

    return reward
