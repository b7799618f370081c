"""Token rewards: pure jax.numpy twins of the text rewards, jittable and fused into the step.

Signature: ``fn(completion_tokens int32[B, T], completion_mask bool[B, T], *, ids: TagIds,
**fields) -> float32[B]``. ``ids`` is static configuration (Python tuples of token ids), bound
with `functools.partial` before ``jax.jit``. Tags may span several tokens; a tag is found where
its whole id sequence occurs at consecutive unmasked positions. The rules are the ones in
`r1.rewards.format`, `r1.rewards.countdown` (arithmetic) and `r1.rewards.shaping`, so for a
tokenizer whose tags always encode to the same ids (special tokens, or a byte-level tokenizer)
token and text rewards agree exactly (tested with `r1.testing.DummyTokenizer`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from r1.rewards.base import register
from r1.rewards.extract import TAGS, WHITESPACE


class _Encoder(Protocol):
    def encode(self, text: str) -> list[int]: ...


@dataclasses.dataclass(frozen=True)
class TagIds:
    """Static token ids: the four tags (think-open, think-close, answer-open, answer-close) as
    id sequences, the whitespace ids, the ids of digits 0-9 and of ``-``."""

    tags: tuple[tuple[int, ...], ...]
    whitespace: tuple[int, ...]
    digits: tuple[int, ...] = ()
    minus: int = -1

    @classmethod
    def from_tokenizer(cls, tokenizer: _Encoder) -> TagIds:
        """Ids from ``tokenizer.encode`` (tags must encode context-free; digits to one id each)."""
        tags = tuple(tuple(int(i) for i in tokenizer.encode(t)) for t in TAGS)
        whitespace = tuple(int(tokenizer.encode(c)[0]) for c in WHITESPACE)
        digits = []
        for d in "0123456789":
            ids = tokenizer.encode(d)
            if len(ids) != 1:
                raise ValueError(f"TagIds: digit {d!r} encodes to {ids}, expected one id")
            digits.append(int(ids[0]))
        minus = tokenizer.encode("-")
        return cls(tags, whitespace, tuple(digits), int(minus[0]) if len(minus) == 1 else -1)


def find_sequence(tokens: jax.Array, mask: jax.Array, sequence: Sequence[int]) -> jax.Array:
    """bool[B, T]: True at t where ``tokens[:, t:t+len(sequence)] == sequence``, all unmasked."""
    batch, length = tokens.shape
    found = jnp.ones((batch, length), bool)
    for k, token_id in enumerate(sequence):
        shifted = jnp.pad(tokens[:, k:], ((0, 0), (0, min(k, length))), constant_values=-1)
        valid = jnp.pad(mask[:, k:], ((0, 0), (0, min(k, length))), constant_values=False)
        found = found & (shifted[:, :length] == token_id) & valid[:, :length]
    return found


def _first(found: jax.Array) -> jax.Array:
    """int32[B]: first True index, or T when none."""
    length = found.shape[1]
    index = jnp.arange(length, dtype=jnp.int32)[None, :]
    return jnp.min(jnp.where(found, index, length), axis=1)


def _last(found: jax.Array) -> jax.Array:
    """int32[B]: last True index, or -1 when none."""
    index = jnp.arange(found.shape[1], dtype=jnp.int32)[None, :]
    return jnp.max(jnp.where(found, index, -1), axis=1)


def _is_in(tokens: jax.Array, ids: Sequence[int]) -> jax.Array:
    out = jnp.zeros(tokens.shape, bool)
    for i in ids:
        out = out | (tokens == i)
    return out


def _tag_matches(tokens, mask, ids: TagIds):
    return [find_sequence(tokens, mask, tag) for tag in ids.tags]


@register("format_strict_tokens", "token", doc="token twin of format_strict")
def format_strict_tokens(
    completion_tokens: jax.Array, completion_mask: jax.Array, *, ids: TagIds, **_: Any
) -> jax.Array:
    """float32[B]: the strict format rule on token ids."""
    tokens, mask = completion_tokens, completion_mask.astype(bool)
    matches = _tag_matches(tokens, mask, ids)
    counts = [m.sum(axis=1) for m in matches]
    starts = [_first(m) for m in matches]
    lengths = [len(t) for t in ids.tags]
    nonws = mask & ~_is_in(tokens, ids.whitespace)
    index = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
    ok = jnp.ones(tokens.shape[0], bool)
    for c in counts:
        ok = ok & (c == 1)
    for a, b in zip(starts[:-1], starts[1:]):
        ok = ok & (a < b)
    ok = ok & (_first(nonws) == starts[0]) & (_last(nonws) == starts[3] + lengths[3] - 1)
    gap = (index >= (starts[1] + lengths[1])[:, None]) & (index < starts[2][:, None])
    ok = ok & ~jnp.any(gap & nonws, axis=1)
    return ok.astype(jnp.float32)


@register("format_lenient_tokens", "token", doc="token twin of format_lenient")
def format_lenient_tokens(
    completion_tokens: jax.Array, completion_mask: jax.Array, *, ids: TagIds, **_: Any
) -> jax.Array:
    """float32[B]: every tag present, first occurrences in order."""
    matches = _tag_matches(completion_tokens, completion_mask.astype(bool), ids)
    starts = [_first(m) for m in matches]
    length = completion_tokens.shape[1]
    ok = jnp.ones(completion_tokens.shape[0], bool)
    for s in starts:
        ok = ok & (s < length)
    for a, b in zip(starts[:-1], starts[1:]):
        ok = ok & (a < b)
    return ok.astype(jnp.float32)


@register("tag_count_tokens", "token", doc="token twin of tag_count")
def tag_count_tokens(
    completion_tokens: jax.Array, completion_mask: jax.Array, *, ids: TagIds, **_: Any
) -> jax.Array:
    """float32[B]: 0.25 per tag occurring exactly once."""
    matches = _tag_matches(completion_tokens, completion_mask.astype(bool), ids)
    return 0.25 * sum((m.sum(axis=1) == 1).astype(jnp.float32) for m in matches)


@register("arithmetic_tokens", "token", fields=("target",), doc="token twin of arithmetic")
def arithmetic_tokens(
    completion_tokens: jax.Array,
    completion_mask: jax.Array,
    *,
    ids: TagIds,
    target: jax.Array,
    **_: Any,
) -> jax.Array:
    """float32[B]: 1 where the last ``<answer>`` holds exactly the integer ``target`` int32[B].

    Digits are compared position by position, so answers of any length are exact.
    """
    if len(ids.digits) != 10:
        raise ValueError("arithmetic_tokens: ids.digits must hold the ids of 0-9")
    tokens, mask = completion_tokens, completion_mask.astype(bool)
    open_tag, close_tag = ids.tags[2], ids.tags[3]
    length = tokens.shape[1]
    index = jnp.arange(length, dtype=jnp.int32)[None, :]
    last_open = _last(find_sequence(tokens, mask, open_tag))
    start = last_open + len(open_tag)
    closes = find_sequence(tokens, mask, close_tag) & (index >= start[:, None])
    end = _first(closes)
    has = (last_open >= 0) & (end < length)
    inside = (index >= start[:, None]) & (index < end[:, None]) & mask
    nonws = inside & ~_is_in(tokens, ids.whitespace)
    a, b = _first(nonws), _last(nonws)
    body = (index >= a[:, None]) & (index <= b[:, None])
    digit_value = jnp.full(tokens.shape, -1, jnp.int32)
    for d, token_id in enumerate(ids.digits):
        digit_value = jnp.where(tokens == token_id, d, digit_value)
    first_token = jnp.take_along_axis(tokens, jnp.clip(a, 0, length - 1)[:, None], axis=1)[:, 0]
    negative = first_token == ids.minus
    digits_from = a + negative.astype(jnp.int32)
    in_number = body & (index >= digits_from[:, None])
    all_digits = ~jnp.any(in_number & (digit_value < 0), axis=1)
    n_digits = in_number.sum(axis=1)
    ok = has & (b >= a) & all_digits & (n_digits >= 1)
    # Digit k (from the right) of the answer against digit k of |target|.
    target = jnp.asarray(target, jnp.int32).reshape(-1)
    magnitude = jnp.abs(target)
    power = (b[:, None] - index).astype(jnp.int32)  # 0 for the last digit
    pow10 = jnp.asarray([10**k for k in range(10)], jnp.int32)
    expected = jnp.where(
        power <= 9,
        (magnitude[:, None] // pow10[jnp.clip(power, 0, 9)]) % 10,
        0,
    )
    digits_match = ~jnp.any(in_number & (digit_value != expected), axis=1)
    # |target| must have no digits beyond the answer's length.
    fits = jnp.where(n_digits <= 9, magnitude // pow10[jnp.clip(n_digits, 0, 9)] == 0, True)
    is_zero = magnitude == 0
    sign_ok = is_zero | (negative == (target < 0))
    return (ok & digits_match & fits & sign_ok).astype(jnp.float32)


@register("cosine_length_tokens", "token", fields=("correct",), doc="token twin of cosine_length")
def cosine_length_tokens(
    completion_tokens: jax.Array,
    completion_mask: jax.Array,
    *,
    correct: jax.Array,
    max_length: int,
    r_correct_0: float = 2.0,
    r_correct_max: float = 1.0,
    r_wrong_0: float = -10.0,
    r_wrong_max: float = 0.0,
    r_exceed: float = -10.0,
    **_: Any,
) -> jax.Array:
    """float32[B]; length = number of unmasked tokens; ``correct`` bool[B]."""
    lengths = completion_mask.astype(jnp.float32).sum(axis=1)
    correct = jnp.asarray(correct).astype(bool).reshape(-1)
    progress = jnp.clip(lengths / float(max_length), 0.0, 1.0)
    cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    hi = jnp.where(correct, r_correct_0, r_wrong_0)
    lo = jnp.where(correct, r_correct_max, r_wrong_max)
    value = lo + (hi - lo) * cosine
    return jnp.where(lengths >= max_length, r_exceed, value).astype(jnp.float32)


@register("overlong_tokens", "token", doc="token twin of overlong (DAPO)")
def overlong_tokens(
    completion_tokens: jax.Array,
    completion_mask: jax.Array,
    *,
    max_length: int,
    cache_length: int,
    **_: Any,
) -> jax.Array:
    """float32[B] in [-1, 0]."""
    lengths = completion_mask.astype(jnp.float32).sum(axis=1)
    start = float(max_length - cache_length)
    return jnp.clip((start - lengths) / float(max(cache_length, 1)), -1.0, 0.0)


def token_total(
    terms: Sequence[tuple[str, float, Mapping[str, Any]]],
    completion_tokens: jax.Array,
    completion_mask: jax.Array,
    **fields: Any,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted sum of token rewards (jittable when ``terms`` is static).

    Returns ``(total float32[B], {name: float32[B]})``.
    """
    from r1.rewards.base import get

    total = jnp.zeros(completion_tokens.shape[0], jnp.float32)
    breakdown = {}
    for name, weight, kwargs in terms:
        reward = get(name)
        if reward.kind != "token":
            raise ValueError(f"token_total: {name!r} is a text reward")
        scores = reward(completion_tokens, completion_mask, **fields, **dict(kwargs))
        breakdown[name] = scores
        total = total + weight * scores
    return total, breakdown


def encode_batch(
    tokenizer: _Encoder, texts: Sequence[str], length: int
) -> tuple[np.ndarray, np.ndarray]:
    """(int32[B, length], bool[B, length]) right-padded with 0; for tests and notebooks."""
    tokens = np.zeros((len(texts), length), np.int32)
    mask = np.zeros((len(texts), length), bool)
    for i, text in enumerate(texts):
        ids = tokenizer.encode(text)[:length]
        tokens[i, : len(ids)] = ids
        mask[i, : len(ids)] = True
    return tokens, mask
