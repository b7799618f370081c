"""Length-bucketed training: the GRPO step's training half at widths that follow its rows.

The sampler decodes only the tokens rows generate (`SamplingConfig.slots`), but the reference
forward and the policy forward + backward see every row at the full prompt + `max_new_tokens`
width. With R1's long-tailed lengths most of those positions are padding. Here the rows of each
mini-batch are ordered by length and split into its micro-batches (the gradient-accumulation
slices of `r1.train.state.accumulate_grads`), so each slice holds rows of similar length, and a
slice runs at the narrowest of a few fixed completion widths that holds its longest row: one
compiled branch per width, chosen at run time with `lax.switch`. The program stays one program
with static shapes; its cost follows the lengths generated.

Exactness: the loss is a sum over rows with a mini-batch-wide denominator, so which slice a row
sits in does not change the summed gradient; a row's log-probs at any width >= its length equal
those at full width (causal attention: later positions never reach earlier ones). What changes
with the slices' composition are the per-slice metric means that the step averages (clip
fractions, KL, entropy), as with any re-slicing, and for a MoE with a capacity factor the
per-expert capacity, which follows the tokens in the narrower batch (dropless MoE: no change).

Layout on a mesh: slices are interleaved (`interleaved_rows`: slice s holds rows r with
r mod n == s, so each device keeps its share). `sorted_layout` permutes rows once so that
interleaved slice s receives the rows of length ranks [s * c, (s + 1) * c); that permutation is
one gather of the per-row inputs (tokens, masks, log-probs: bytes per token, not activations).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from r1.train.state import interleaved_rows

# Per-row inputs of the training half, by the axis a width narrows: [rows, prompt + N] ...
SEQUENCE_KEYS = ("tokens", "mask", "positions", "routes")
# ... [rows, N] (completion-aligned) ...
COMPLETION_KEYS = (
    "completion",
    "completion_mask",
    "old_logp",
    "ref_logp",
    "train_logp",
    "loss_mask",
)
# ... and per-row values no width touches.
ROW_KEYS = ("advantages", "lengths")
WIDTH_MULTIPLE = 8


def bucket_widths(max_new_tokens: int, buckets: int) -> tuple[int, ...]:
    """The completion widths of `buckets` W length buckets for N = max_new_tokens: ceil(j * N
    / W) for j = 1..W, each rounded up to a multiple of 8 and capped at N, duplicates dropped.
    Ascending; the last is N. W <= 1: (N,), one width (no bucketing)."""
    if max_new_tokens < 1:
        raise ValueError(f"bucket_widths: max_new_tokens must be >= 1, got {max_new_tokens}")
    n, w = max_new_tokens, max(buckets, 1)
    widths = {
        min(n, math.ceil(math.ceil(j * n / w) / WIDTH_MULTIPLE) * WIDTH_MULTIPLE)
        for j in range(1, w + 1)
    }
    return tuple(sorted(widths))


def width_index(longest: jax.Array, widths: Sequence[int]) -> jax.Array:
    """int32[]: the index into ascending `widths` of the narrowest width >= `longest` (int[]),
    the last when none is (a longest row beyond every width cannot happen: the last is N)."""
    below = jnp.sum(jnp.asarray(widths, jnp.int32) < longest.astype(jnp.int32))
    return jnp.minimum(below, len(widths) - 1).astype(jnp.int32)


def sorted_layout(lengths: jax.Array, num_slices: int) -> jax.Array:
    """int32[R]: a row permutation for R rows with `lengths` int[R] such that, after
    `x[layout]`, interleaved slice s (`interleaved_rows(., s, num_slices)`) holds the rows of
    length ranks [s * c, (s + 1) * c), c = R / num_slices, shortest first (ties by row index)."""
    rows = lengths.shape[0]
    if rows % num_slices:
        raise ValueError(f"sorted_layout: {rows} rows do not split into {num_slices} slices")
    per_slice = rows // num_slices
    order = jnp.argsort(lengths, stable=True)
    position = jnp.arange(rows)
    return order[(position % num_slices) * per_slice + position // num_slices]


def take_rows(batch: dict[str, jax.Array], layout: jax.Array) -> dict[str, jax.Array]:
    """Every leaf of `batch` (leading row axis) in the row order `layout`."""
    return {k: jnp.take(v, layout, axis=0) for k, v in batch.items()}


def narrow(batch: dict[str, jax.Array], prompt_len: int, width: int) -> dict[str, jax.Array]:
    """`batch` cut to completion width `width`: SEQUENCE_KEYS to prompt_len + width columns,
    COMPLETION_KEYS to width columns, ROW_KEYS as they are. Any other key is an error (a new
    per-row input must say which axis a width narrows)."""
    out = {}
    for key, value in batch.items():
        if key in SEQUENCE_KEYS:
            out[key] = value[:, : prompt_len + width]
        elif key in COMPLETION_KEYS:
            out[key] = value[:, :width]
        elif key in ROW_KEYS:
            out[key] = value
        else:
            raise ValueError(
                f"narrow: per-row input {key!r} is in none of SEQUENCE_KEYS, COMPLETION_KEYS, "
                "ROW_KEYS (r1.rl.lengths)"
            )
    return out


def longest_row(batch: dict[str, jax.Array]) -> jax.Array:
    """int32[]: the longest completion in `batch` (its `completion_mask` holds every generated
    token through EOS, from column 0)."""
    return jnp.max(jnp.sum(batch["completion_mask"].astype(jnp.int32), axis=1))


def at_width(
    fn: Callable[[dict[str, jax.Array]], Any],
    batch: dict[str, jax.Array],
    prompt_len: int,
    widths: Sequence[int],
) -> Any:
    """`fn(narrow(batch, prompt_len, w))` for the narrowest w in `widths` holding the batch's
    longest row: one branch per width under `lax.switch` (differentiable; every branch must
    return the same structure and shapes). One width: `fn` at it, no switch."""
    branches = [lambda b, w=w: fn(narrow(b, prompt_len, w)) for w in widths]
    if len(branches) == 1:
        return branches[0](batch)
    return jax.lax.switch(width_index(longest_row(batch), widths), branches, batch)


def pad_columns(x: jax.Array, columns: int) -> jax.Array:
    """x [rows, w, ...] zero-padded on axis 1 to `columns`."""
    pad = [(0, 0)] * x.ndim
    pad[1] = (0, columns - x.shape[1])
    return jnp.pad(x, pad)


def bucketed_logprobs(
    logprob_fn: Callable[[dict[str, jax.Array]], jax.Array],
    batch: dict[str, jax.Array],
    prompt_len: int,
    widths: Sequence[int],
    num_slices: int,
) -> jax.Array:
    """Per-token log-probs float32[R, N] of `batch`'s R rows (N its completion width), computed
    `num_slices` slices at a time (`lax.map`), rows ordered by length so that each slice runs
    at the narrowest width holding its longest row; columns past a slice's width are 0 (they
    are past every row's end). logprob_fn: narrowed batch -> float32[rows, width]."""
    new_tokens = batch["completion"].shape[1]
    lengths = jnp.sum(batch["completion_mask"].astype(jnp.int32), axis=1)
    layout = sorted_layout(lengths, num_slices)
    arranged = take_rows(batch, layout)

    def one_slice(slot):
        chunk = {k: interleaved_rows(v, slot, num_slices) for k, v in arranged.items()}
        return at_width(lambda b: pad_columns(logprob_fn(b), new_tokens), chunk, prompt_len, widths)

    per_slice = jax.lax.map(one_slice, jnp.arange(num_slices))  # [n, c, N]
    in_layout = jnp.swapaxes(per_slice, 0, 1).reshape(lengths.shape[0], new_tokens)
    return jnp.take(in_layout, jnp.argsort(layout), axis=0)
