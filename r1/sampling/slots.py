"""Continuous batching inside one `lax.while_loop`: S decode slots fed from a queue of N rows.

The static decode (`r1.sampling.sampler`) runs all N = P x G rows until the longest one ends;
with long-tailed completion lengths most of its row-steps compute padding. Here S slots decode
at once. The N rows wait in a queue (row order 0..N-1) held in the loop state; at the start of
each decode step every idle slot takes the next waiting row: the row's prompt keys / values are
copied from the prefill's cache (one prefill per prompt, shared by its G rows), and the slot's
token index, mask, stop state and logits are reset. A row ends at EOS, a stop sequence or
`max_new_tokens`; its slot takes the next row at the next step. The loop ends when the queue
is empty and every slot is idle. Shapes are static (S, L + max_new_tokens, N).

Same samples: row r's token t is drawn with fold_in(fold_in(key, row_ids[r]), t) from logits
that depend only on the row's own tokens, so each row's completion equals the static decode's
whichever slot and step it ran in (up to float rounding of the batched arithmetic).

The decode-step count follows list scheduling: rows in queue order, each to the slot that
frees first, a row of length l occupying its slot for l steps (`expected_decode_steps`).
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from r1.loop_scopes import DECODE, branch_scope, loop_scope
from r1.sampling.kv_cache import (
    ROUTE_AXES,
    Cache,
    forward_with_cache,
    init_cache,
    init_routes,
    refill_rows,
)
from r1.sampling.tokens import choose_at
from r1.sharding import relayout, shard


def decode_scope(steps: int) -> str:
    """The named scope a decode `while_loop` runs under when it takes at most `steps` steps
    (`r1.loop_scopes`: the AOT cost report counts its body that often)."""
    return loop_scope(DECODE, steps)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SlotState:
    """The slot decode's loop carry: S slots, N queued rows, T = max_new_tokens, V vocabulary.

    next_row: int32[], the queue's head. steps: int32[], decode steps taken. row: int32[S], the
    row each slot decodes (N when the slot never held one). index: int32[S], the next token
    index of the slot's row. active: bool[S]. logits: float32[S, V], each slot's next-token
    logits. recent: int32[S, M], the slot's last M tokens (M: the longest stop sequence; -1
    before the row's first token). tokens / mask / logprobs / sampling_logprobs: [N, T] and
    done: bool[N], the outputs by row. cache: S rows of L + T slots. routes: int16[N, T, M', k]
    with `record_routes` (else None), each completion token's experts by row (M' MoE layers;
    -1 where none was recorded, see `r1.sampling.sampler.SampleOutput.routes`).
    """

    next_row: jax.Array
    steps: jax.Array
    row: jax.Array
    index: jax.Array
    active: jax.Array
    logits: jax.Array
    recent: jax.Array
    tokens: jax.Array
    mask: jax.Array
    logprobs: jax.Array
    sampling_logprobs: jax.Array
    done: jax.Array
    cache: Any
    routes: jax.Array | None = None


def _stop_hit(recent: jax.Array, index: jax.Array, sequences) -> jax.Array:
    """bool[S]: the slot's last tokens (recent int32[S, M], the newest last; the newest has
    token index `index`) equal one of `sequences`."""
    hit = jnp.zeros(recent.shape[0], bool)
    for seq in sequences:
        m = len(seq)
        window = recent[:, recent.shape[1] - m :]
        match = jnp.all(window == jnp.asarray(seq, jnp.int32)[None, :], axis=1)
        hit = hit | (match & (index >= m - 1))
    return hit


def slot_decode(
    model: Any,
    prompt_cache: Cache,
    prompt_logits: jax.Array,
    prompt_lengths: jax.Array,
    row_keys: jax.Array,
    config: Any,
    forced_lengths: jax.Array | None = None,
) -> SlotState:
    """Decodes the N = P x G rows through `config.slots` slots (at most N are used).

    prompt_cache: the prefill's cache, P rows of L slots; prompt_logits: float32[P, V], the
    logits after each prompt; prompt_lengths: int32[P], real prompt tokens (the first
    generated token's position); row_keys: [N] per-row PRNG keys; config: a `SamplingConfig`.
    forced_lengths: int32[N] or None; row r emits its first EOS at token forced_lengths[r] - 1
    (`r1.sampling.sampler.sample`). Returns the final `SlotState` (outputs by row; with
    `config.record_routes` its routes hold the completion tokens' experts, the prompts' come
    from the prefill).
    """
    num_prompts, prompt_len = prompt_cache["valid"].shape
    group = config.num_samples
    rows = num_prompts * group
    new = config.max_new_tokens
    slots = min(config.slots, rows)
    eos = jnp.asarray(config.eos_ids or (-1,), jnp.int32)
    stop_window = max([len(s) for s in config.stop_sequences] or [1])
    # Attention windows (cache prefixes a step reads), the static decode's segment ends.
    windows = tuple(prompt_len + end for end in config.segment_ends())
    cfg = model.config
    record = config.record_routes

    def refill(state: SlotState) -> SlotState:
        free = ~state.active
        candidate = state.next_row + jnp.cumsum(free.astype(jnp.int32)) - 1
        take = free & (candidate < rows)
        row = jnp.where(take, candidate, state.row)
        prompt = jnp.minimum(row, rows - 1) // group
        logits = jnp.where(take[:, None], prompt_logits[prompt], state.logits)
        return dataclasses.replace(
            state,
            next_row=state.next_row + jnp.sum(take.astype(jnp.int32)),
            row=row,
            index=jnp.where(take, 0, state.index),
            active=state.active | take,
            logits=shard(logits, ("cache_batch", "act_vocab")),
            recent=jnp.where(take[:, None], -1, state.recent),
            cache=refill_rows(state.cache, prompt_cache, take, prompt),
        )

    # For the cost report (`r1.loop_scopes`): the loop's most steps (every row at full length)
    # and, of them, at most one refill per row that waits for a slot, plus the first.
    steps = expected_decode_steps([new] * rows, slots)
    refills = min(steps, rows - slots + 1)

    def body(state: SlotState) -> SlotState:
        with jax.named_scope(branch_scope((steps - refills, refills))):
            state = jax.lax.cond(
                jnp.any(~state.active) & (state.next_row < rows), refill, lambda s: s, state
            )
        active, index = state.active, state.index
        safe_row = jnp.minimum(state.row, rows - 1)
        forced = None if forced_lengths is None else forced_lengths[safe_row]
        token, lp, slp = choose_at(state.logits, index, row_keys[safe_row], config, forced, eos[0])
        token = jnp.where(active, token, config.pad_id)
        out_row = jnp.where(active, state.row, rows)  # idle slots write nowhere ("drop")

        def put(buffer, value):
            return buffer.at[out_row, index].set(value, mode="drop")

        recent = jnp.concatenate([state.recent[:, 1:], token[:, None]], axis=1)
        ended = jnp.any(token[:, None] == eos[None, :], axis=1)
        if config.stop_sequences:
            ended = ended | _stop_hit(recent, index, config.stop_sequences)
        finished = active & (ended | (index == new - 1))
        position = jnp.take(prompt_lengths, jnp.minimum(state.row, rows - 1) // group) + index
        # Attention reads only the window that holds every active row's slots so far.
        needed = prompt_len + jnp.max(jnp.where(active, index, 0)) + 1
        wide = jnp.sum((jnp.asarray(windows) < needed).astype(jnp.int32))
        fed = forward_with_cache(
            model,
            token[:, None],
            position[:, None],
            active[:, None],
            state.cache,
            prompt_len + index,
            window=(jnp.minimum(wide, len(windows) - 1), windows),
            with_routes=record,
        )
        logits, cache = fed[:2]
        routes = state.routes
        if record:  # this token's routes, kept where the row goes on (it is not the last)
            keep = (active & ~finished)[:, None, None]
            routes = shard(
                put(routes, jnp.where(keep, fed[2][:, 0], -1).astype(jnp.int16)), ROUTE_AXES
            )
        return SlotState(
            next_row=state.next_row,
            steps=state.steps + 1,
            row=state.row,
            index=jnp.where(active & ~finished, index + 1, index),
            active=active & ~finished,
            # Chosen from where the slot's cache row is (`cache_batch`): under
            # `STATIONARY_DECODE_RULES` the forward's rows are on every device.
            logits=relayout(logits[:, 0, :], ("batch", "act_vocab"), ("cache_batch", "act_vocab")),
            recent=recent,
            tokens=put(state.tokens, token),
            mask=put(state.mask, active),
            logprobs=put(state.logprobs, jnp.where(active, lp, 0.0)),
            sampling_logprobs=put(state.sampling_logprobs, jnp.where(active, slp, 0.0)),
            done=state.done.at[out_row].set(active & ended, mode="drop"),
            cache=cache,
            routes=routes,
        )

    state = SlotState(
        next_row=jnp.zeros((), jnp.int32),
        steps=jnp.zeros((), jnp.int32),
        row=jnp.full((slots,), rows, jnp.int32),
        index=jnp.zeros((slots,), jnp.int32),
        active=jnp.zeros((slots,), bool),
        logits=jnp.zeros((slots, prompt_logits.shape[-1]), jnp.float32),
        recent=jnp.full((slots, stop_window), -1, jnp.int32),
        tokens=jnp.full((rows, new), config.pad_id, jnp.int32),
        mask=jnp.zeros((rows, new), bool),
        logprobs=jnp.zeros((rows, new), jnp.float32),
        sampling_logprobs=jnp.zeros((rows, new), jnp.float32),
        done=jnp.zeros((rows,), bool),
        cache=init_cache(cfg, slots, prompt_len + new, config.cache_dtype),
        routes=init_routes(cfg, rows, new) if record else None,
    )
    with jax.named_scope(decode_scope(steps)):
        return jax.lax.while_loop(lambda s: jnp.any(s.active) | (s.next_row < rows), body, state)


def expected_decode_steps(lengths: Sequence[int], slots: int) -> int:
    """The decode steps the slot loop takes for rows of these lengths (tokens each, queue
    order) with `slots` slots: list scheduling, each row to the slot that frees first."""
    free_at = [0] * max(1, min(slots, len(lengths)))
    heapq.heapify(free_at)
    end = 0
    for length in lengths:
        start = heapq.heappop(free_at)
        end = max(end, start + int(length))
        heapq.heappush(free_at, start + int(length))
    return end
