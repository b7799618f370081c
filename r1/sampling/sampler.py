"""The JAX-native sampler: prefill once per prompt, then a `lax.while_loop` decode with KV cache.

`sample` is a pure, jittable function of (model, prompt arrays, key): the GRPO step calls it
inside its one compiled program. Shapes are static: one compilation per (prompts, prompt
bucket, max_new_tokens, num_samples). Row layout of the outputs: prompt p's G completions are
rows p*G .. p*G + G - 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from r1.models.layers import in_compute_dtype
from r1.models.transformer import Transformer, unstack_layers
from r1.sampling.kv_cache import (
    ROUTE_AXES,
    by_position,
    forward_with_cache,
    grow_cache,
    init_cache,
    init_routes,
    repeat_rows,
)
from r1.sampling.layouts import decode_layout, gathered_over_fsdp
from r1.sampling.slots import decode_scope, slot_decode
from r1.sampling.tokens import choose_at
from r1.sharding import (
    axis_rules,
    named_sharding,
    place_state,
    relayout,
    shard,
    use_mesh,
)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to sample. All fields are static (part of the compiled program).

    eos_ids: tokens that end a completion (included in it). stop_sequences: token sequences that
    end a completion when generated (included). greedy: argmax instead of sampling.
    decode_segments: the decode loop runs as this many consecutive while-loops; segment j's KV
    cache holds only the slots that can be filled by its last step, so early tokens neither
    read nor carry the empty tail of the cache (about 40% less attention work with 4 segments).
    Each segment is one more compiled loop body. None: min(4, max(1, max_new_tokens // 64)).
    unstack_layers: a model with scanned layers (`scan_layers`) is sampled from with its
    layers separated (`r1.models.transformer.unstack_layers`): no inner loop over layers in a
    decode step (1.7x faster decoding of Qwen2.5-0.5B on an H200), at the price of a program
    that grows with depth (compile time; False for 61-layer DeepSeek-V3 on a pod) and, where
    the parameters are already in the compute dtype, a second copy of the layer weights while
    sampling (float32 master weights are cast to a copy anyway, which the split joins).
    slots: 0 decodes the N = P x G rows as one static batch until the last ends; S > 0 decodes
    S rows at a time, a finished row's slot taking the next waiting row at the next step
    (continuous batching, `r1.sampling.slots`): the same samples, a KV cache of
    min(S, N) x (prompt + max_new_tokens) slots, and decode steps that follow the rows'
    lengths instead of N x the longest. With slots, decode_segments is the number of attention
    windows: a decode step reads only the cache prefix (prompt + the window's end) that holds
    every active row's tokens, one `lax.switch` branch per window (None: min(16,
    max_new_tokens // 32)).
    gather_weights: on a mesh with an fsdp axis, gather the parameters' fsdp shards once, before
    the decode loop (in the compute dtype, still split over tensor / expert): each decode step
    then reads its shard of the weights with no all-gather, for a copy of the weights / (tensor
    x expert) per device. False: every step gathers them again (no extra memory).
    stationary_weights: decode in the weights-stationary layout
    (`r1.sharding.STATIONARY_DECODE_RULES`): before the decode loop the weights are laid out
    once split over every device (dense: embed over `expert`, heads / mlp / vocab over
    fsdp x tensor; routed experts: over `expert`, their hidden columns over fsdp x tensor), and
    each step moves the rows' activations to them instead of gathering weights: a step reads
    about its 1 / devices share of the weights, for small activation collectives per
    projection. For a mesh with `expert` and `fsdp` axes and few rows per device (DeepSeek-V3
    on a pod); the prefill keeps the training layout. The same samples up to the order of
    floating-point sums. Not with gather_weights.
    record_routes: also return, for every token fed to the model, the experts each MoE layer's
    router picked for it (`SampleOutput.routes`, for routing replay in training). Needs a
    model with MoE layers. The samples are the same with or without it.
    """

    max_new_tokens: int = 64
    num_samples: int = 1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    greedy: bool = False
    eos_ids: tuple[int, ...] = ()
    stop_sequences: tuple[tuple[int, ...], ...] = ()
    pad_id: int = 0
    cache_dtype: str | None = None
    decode_segments: int | None = None
    unstack_layers: bool = True
    slots: int = 0
    record_routes: bool = False
    gather_weights: bool = False
    stationary_weights: bool = False

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(
                f"SamplingConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}"
            )
        if self.num_samples < 1:
            raise ValueError(f"SamplingConfig.num_samples must be >= 1, got {self.num_samples}")
        if not self.greedy and self.temperature <= 0:
            raise ValueError("SamplingConfig.temperature must be > 0 (or greedy=True)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.decode_segments is not None and not (
            1 <= self.decode_segments <= self.max_new_tokens
        ):
            raise ValueError(
                "SamplingConfig.decode_segments must be in [1, max_new_tokens], got "
                f"{self.decode_segments}"
            )
        if self.slots < 0:
            raise ValueError(
                f"SamplingConfig.slots must be >= 0 (0: static batch), got {self.slots}"
            )
        if self.gather_weights and self.stationary_weights:
            raise ValueError(
                "SamplingConfig: gather_weights and stationary_weights are two layouts of the "
                "decode's weights; set at most one"
            )
        if any(len(s) == 0 for s in self.stop_sequences):
            raise ValueError("SamplingConfig.stop_sequences must not contain an empty sequence")

    def segment_ends(self) -> tuple[int, ...]:
        """The decode step at which each segment ends (the last one is max_new_tokens). With
        slots: the ends of the attention windows (`r1.sampling.slots`), by default
        min(16, max_new_tokens // 32) of them."""
        if self.slots:
            n = self.decode_segments or min(16, max(1, self.max_new_tokens // 32))
        else:
            n = self.decode_segments or min(4, max(1, self.max_new_tokens // 64))
        return tuple(-(-self.max_new_tokens * (j + 1) // n) for j in range(n))

    def decode_rows(self, rows: int) -> int:
        """Rows decoded at once for `rows` requested: min(slots, rows), or all of them."""
        return min(self.slots, rows) if self.slots else rows


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SampleOutput:
    """Completions for B = P * G rows.

    tokens: int32[B, N], pad_id after the end. mask: bool[B, N], True on generated tokens up to
    and including EOS / the stop sequence. lengths: int32[B]. truncated: bool[B], the row hit
    max_new_tokens without ending. logprobs: float32[B, N], log pi(token) under the model's own
    distribution (temperature 1, no filters) as GRPO's pi_old needs; sampling_logprobs: the same
    under the distribution actually sampled from (temperature and filters applied). Both are 0
    where mask is False. prompt_index: int32[B], the prompt each row continues.
    decode_steps: int32[], the decode loop's steps (each advances `config.decode_rows(B)` rows).
    routes: int16[B, L + N, M, k] with `SamplingConfig.record_routes` (else None): the experts
    (best first) the router of each of the M = `ModelConfig.num_moe_layers` MoE decoder layers
    (forward order, MTP excluded) picked for each token of the row's prompt + completion, k =
    `num_experts_per_tok`. Position t < L: prompt token t in the prefill (the prompt's rows
    share it); position L + j: completion token j in the decode step that fed it to the model.
    -1 (all k) where no token was fed: left padding, each row's last generated token (its
    routes are never used for a prediction), positions after the row ended.
    """

    tokens: jax.Array
    mask: jax.Array
    lengths: jax.Array
    truncated: jax.Array
    logprobs: jax.Array
    sampling_logprobs: jax.Array
    prompt_index: jax.Array
    decode_steps: jax.Array
    routes: jax.Array | None = None


def prompt_positions(prompt_mask: jax.Array) -> jax.Array:
    """Positions 0.. of the real tokens of left-padded prompts: int32[P, L] (padding gets 0)."""
    mask = prompt_mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)


def _stop_hit(buffer: jax.Array, step: jax.Array, sequences) -> jax.Array:
    """bool[B]: the tokens ending at `step` in buffer int32[B, N] equal one of `sequences`."""
    hit = jnp.zeros(buffer.shape[0], bool)
    for seq in sequences:
        m = len(seq)
        start = jnp.maximum(step - m + 1, 0)
        window = jax.lax.dynamic_slice_in_dim(buffer, start, m, axis=1)
        match = jnp.all(window == jnp.asarray(seq, jnp.int32)[None, :], axis=1)
        hit = hit | (match & (step >= m - 1))
    return hit


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecodeState:
    """The static decode `lax.while_loop`'s carry (B rows, N = max_new_tokens).

    step: int32[], the next token index. next_token: int32[B], that token, chosen from the
    logits of the forward before (so the loop carries no [B, V] logits: they are made and used
    within one iteration); next_logprob / next_sampling_logprob: float32[B], its log-probs
    (`choose_tokens`). done: bool[B], the row has ended. tokens: int32[B, N], mask: bool[B, N],
    logprobs / sampling_logprobs: float32[B, N]: what `SampleOutput` returns, filled up to
    `step`.
    cache: the KV cache (`r1.sampling.kv_cache`), grown between decode segments.
    routes: int16[B, N, M, k] (`record_routes`, else None), each completion token's experts as
    `SampleOutput.routes`, filled up to `step`.
    """

    step: jax.Array
    next_token: jax.Array
    next_logprob: jax.Array
    next_sampling_logprob: jax.Array
    done: jax.Array
    tokens: jax.Array
    mask: jax.Array
    logprobs: jax.Array
    sampling_logprobs: jax.Array
    cache: Any
    routes: jax.Array | None = None


def prompt_routes(routes: jax.Array, prompt_mask: jax.Array, group: int) -> jax.Array:
    """The prefill's routes int32[P, L, M, k] -> int16[P * G, L, M, k]: each prompt's rows
    (p*G .. p*G + G - 1) get its routes, -1 at left padding (prompt_mask bool[P, L] False)."""
    routes = jnp.where(prompt_mask[:, :, None, None], routes, -1).astype(jnp.int16)
    return shard(jnp.repeat(routes, group, axis=0), ROUTE_AXES)


def _check_routes(model: Transformer) -> None:
    """Raises unless `model` has MoE layers whose expert ids fit the int16 routes."""
    cfg = model.config
    if cfg.num_moe_layers == 0:
        raise ValueError(
            "SamplingConfig.record_routes=True needs a model with MoE layers; this "
            f"{cfg.family} model has none"
        )
    if cfg.n_routed_experts > jnp.iinfo(jnp.int16).max:
        raise ValueError(
            "SamplingConfig.record_routes stores expert ids as int16; n_routed_experts="
            f"{cfg.n_routed_experts} does not fit"
        )


def sample(
    model: Transformer,
    prompt_tokens: jax.Array,
    prompt_mask: jax.Array,
    key: jax.Array,
    config: SamplingConfig,
    row_ids: jax.Array | None = None,
    forced_lengths: jax.Array | None = None,
) -> SampleOutput:
    """Samples `config.num_samples` completions for each left-padded prompt.

    prompt_tokens: int32[P, L], prompt_mask: bool[P, L] (True on real tokens, which must be
    right-aligned: left padding). key: a PRNG key. row_ids: int32[P * G] global ids of the rows
    (default 0..P*G-1); row r's token t is drawn with fold_in(fold_in(key, row_ids[r]), t), so a
    row's sample depends neither on which other rows share the batch nor, with
    `config.slots`, on the slot and step it ran in. forced_lengths: int32[P * G] or None; row r
    ends with EOS (`config.eos_ids[0]`) at exactly forced_lengths[r] tokens (or is truncated
    at max_new_tokens): a length workload for benchmarks and tests. Returns a `SampleOutput`
    of P * G rows.

    Parameters stored wider than the compute dtype (float32 master weights of a bf16 model) are
    cast once, before the loop (`r1.models.layers.in_compute_dtype`): the same arithmetic, half
    the weight bytes read (and, sharded, gathered) per decode step. Scanned layers are split
    first where `config.unstack_layers` says so. Prompts are prefilled once each; their G rows
    share the prefill.
    """
    if forced_lengths is not None and not config.eos_ids:
        raise ValueError("sample: forced_lengths needs SamplingConfig.eos_ids (the token forced)")
    if config.record_routes:
        _check_routes(model)
    if config.unstack_layers:
        model = unstack_layers(model)
    model = in_compute_dtype(model)
    if config.gather_weights:
        model = gathered_over_fsdp(model)
    num_prompts, prompt_len = prompt_tokens.shape
    group = config.num_samples
    rows = num_prompts * group
    prompt_mask = prompt_mask.astype(bool)
    if row_ids is None:
        row_ids = jnp.arange(rows, dtype=jnp.int32)
    row_keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(row_ids)
    positions = prompt_positions(prompt_mask)
    prompt_lengths = jnp.sum(prompt_mask, axis=1).astype(jnp.int32)
    routes = None
    if config.slots:
        cache = init_cache(model.config, num_prompts, prompt_len, config.cache_dtype)
        prefill = forward_with_cache(
            model,
            prompt_tokens,
            positions,
            prompt_mask,
            cache,
            0,
            with_routes=config.record_routes,
            last_logits_only=True,
        )
        logits, cache = prefill[:2]
        prompt_cache = by_position(cache)
        decode_model, decode_rules = decode_layout(model, config.stationary_weights)
        with axis_rules(decode_rules):
            final = slot_decode(
                decode_model,
                prompt_cache,
                logits[:, -1, :],
                prompt_lengths,
                row_keys,
                config,
                forced_lengths,
            )
        tokens, mask, done, steps = final.tokens, final.mask, final.done, final.steps
        logp, slogp = final.logprobs, final.sampling_logprobs
        if config.record_routes:
            first = prompt_routes(prefill[2], prompt_mask, group)
            routes = shard(jnp.concatenate([first, final.routes], axis=1), ROUTE_AXES)
    else:
        tokens, mask, logp, slogp, done, steps, routes = _static_decode(
            model,
            prompt_tokens,
            prompt_mask,
            positions,
            prompt_lengths,
            row_keys,
            config,
            forced_lengths,
        )
    return SampleOutput(
        tokens=tokens,
        mask=mask,
        lengths=jnp.sum(mask, axis=1).astype(jnp.int32),
        truncated=~done,
        logprobs=logp,
        sampling_logprobs=slogp,
        prompt_index=jnp.repeat(jnp.arange(num_prompts, dtype=jnp.int32), group),
        decode_steps=steps,
        routes=routes,
    )


def _static_decode(
    model,
    prompt_tokens,
    prompt_mask,
    positions,
    prompt_lengths,
    row_keys,
    config,
    forced_lengths,
):
    """All rows at once until the last ends: (tokens, mask, logprobs, sampling_logprobs, done,
    decode steps, routes int16[B, L + N, M, k] or None), see `sample`."""
    num_prompts, prompt_len = prompt_tokens.shape
    group = config.num_samples
    rows = num_prompts * group
    new = config.max_new_tokens
    segment_ends = config.segment_ends()
    cache = init_cache(model.config, num_prompts, prompt_len + segment_ends[0], config.cache_dtype)
    record = config.record_routes
    prefill = forward_with_cache(
        model,
        prompt_tokens,
        positions,
        prompt_mask,
        cache,
        0,
        with_routes=record,
        last_logits_only=True,
    )
    logits, cache = prefill[:2]
    last_logits = logits[:, -1, :]
    if group > 1:
        cache = repeat_rows(cache, group)
        last_logits = jnp.repeat(last_logits, group, axis=0)
    next_position = jnp.repeat(prompt_lengths, group)
    eos = jnp.asarray(config.eos_ids or (-1,), jnp.int32)
    decode_model, decode_rules = decode_layout(model, config.stationary_weights)

    def choose(logits: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        return choose_at(logits, step, row_keys, config, forced_lengths, eos[0])

    def body(state: DecodeState) -> DecodeState:
        step = state.step
        token, lp, slp = state.next_token, state.next_logprob, state.next_sampling_logprob
        active = ~state.done
        token = jnp.where(active, token, config.pad_id)
        tokens = state.tokens.at[:, step].set(token)
        mask = state.mask.at[:, step].set(active)
        logp = state.logprobs.at[:, step].set(jnp.where(active, lp, 0.0))
        slogp = state.sampling_logprobs.at[:, step].set(jnp.where(active, slp, 0.0))
        ended = jnp.any(token[:, None] == eos[None, :], axis=1)
        if config.stop_sequences:
            ended = ended | _stop_hit(tokens, step, config.stop_sequences)
        done = state.done | (active & ended)
        position = (next_position + step)[:, None]
        fed = forward_with_cache(
            decode_model,
            token[:, None],
            position,
            active[:, None],
            state.cache,
            prompt_len + step,
            with_routes=record,
        )
        logits, cache = fed[:2]
        # Chosen where the row's cache is (`cache_batch`; see `STATIONARY_DECODE_RULES`).
        row_logits = relayout(logits[:, 0, :], ("batch", "act_vocab"), ("cache_batch", "act_vocab"))
        next_choice = choose(row_logits, step + 1)
        routes = state.routes
        if record:  # this token's routes, kept where the row goes on (it is not the last)
            keep = (active & ~ended & (step < new - 1))[:, None, None]
            routes = routes.at[:, step].set(jnp.where(keep, fed[2][:, 0], -1).astype(jnp.int16))
            routes = shard(routes, ROUTE_AXES)
        return DecodeState(step + 1, *next_choice, done, tokens, mask, logp, slogp, cache, routes)

    first_token, first_logprob, first_sampling_logprob = choose(
        last_logits, jnp.zeros((), jnp.int32)
    )
    state = DecodeState(
        step=jnp.zeros((), jnp.int32),
        next_token=first_token,
        next_logprob=first_logprob,
        next_sampling_logprob=first_sampling_logprob,
        done=jnp.zeros((rows,), bool),
        tokens=jnp.full((rows, new), config.pad_id, jnp.int32),
        mask=jnp.zeros((rows, new), bool),
        logprobs=jnp.zeros((rows, new), jnp.float32),
        sampling_logprobs=jnp.zeros((rows, new), jnp.float32),
        cache=cache,
        routes=init_routes(model.config, rows, new) if record else None,
    )
    for index, segment_end in enumerate(segment_ends):
        if index:
            state = dataclasses.replace(
                state, cache=grow_cache(state.cache, prompt_len + segment_end)
            )

        def cond(state: DecodeState, segment_end=segment_end):
            return (state.step < segment_end) & ~jnp.all(state.done)

        first_step = segment_ends[index - 1] if index else 0
        with jax.named_scope(decode_scope(segment_end - first_step)), axis_rules(decode_rules):
            state = jax.lax.while_loop(cond, body, state)
    routes = None
    if record:
        first = prompt_routes(prefill[2], prompt_mask, group)
        routes = shard(jnp.concatenate([first, state.routes], axis=1), ROUTE_AXES)
    return (
        state.tokens,
        state.mask,
        state.logprobs,
        state.sampling_logprobs,
        state.done,
        state.step,
        routes,
    )


def make_sampler(
    graphdef: nnx.GraphDef,
    config: SamplingConfig,
    mesh: Mesh | None = None,
    **jit_kwargs: Any,
):
    """A jitted `fn(state, prompt_tokens, prompt_mask, key, row_ids=None, forced_lengths=None)
    -> SampleOutput` for a model split with `nnx.split` (one compilation per input shape).

    mesh: trace and run under this mesh (`fn.lower(...)` too), so the decode is split as the
    sharding rules say (rows over the data-like axes): prompt rows (tokens, mask, row ids)
    given as host arrays are placed split over the rows, the state is used as placed (e.g. by
    `r1.sharding.place_state`). On a multi-core CPU host, a `data` mesh over
    `r1.sharding.use_cpu_devices()` devices decodes on every core.
    """

    def run(state, prompt_tokens, prompt_mask, key, row_ids=None, forced_lengths=None):
        model = nnx.merge(graphdef, state)
        return sample(model, prompt_tokens, prompt_mask, key, config, row_ids, forced_lengths)

    jitted = jax.jit(run, **jit_kwargs)
    return jitted if mesh is None else _MeshSampler(jitted, mesh)


class _MeshSampler:
    """`make_sampler`'s function bound to a mesh (see there)."""

    def __init__(self, jitted: Any, mesh: Mesh):
        self.jitted, self.mesh = jitted, mesh

    def _rows(self, array: Any) -> Any:
        """Host rows -> a global array split over the mesh by rows (any number of processes)."""
        if array is None or isinstance(array, jax.ShapeDtypeStruct):
            return array
        on_mesh = set(self.mesh.devices.flat)
        if isinstance(array, jax.Array) and array.sharding.device_set == on_mesh:
            return array
        array = np.asarray(array)
        names = ("batch",) + (None,) * (array.ndim - 1)
        target = named_sharding(names, array.shape, self.mesh)
        return jax.make_array_from_callback(array.shape, target, lambda index: array[index])

    def _args(self, state, prompt_tokens, prompt_mask, key, row_ids=None, forced_lengths=None):
        rows = [self._rows(a) for a in (prompt_tokens, prompt_mask, row_ids, forced_lengths)]
        args = (state, rows[0], rows[1], key, rows[2], rows[3])
        return args[: 6 if forced_lengths is not None else 5 if row_ids is not None else 4]

    def __call__(self, *args: Any) -> SampleOutput:
        with use_mesh(self.mesh):
            return self.jitted(*self._args(*args))

    def lower(self, *args: Any) -> Any:
        with use_mesh(self.mesh):
            return self.jitted.lower(*self._args(*args))


# ----------------------------------------------------------------------------- text level
def bucket_length(length: int, multiple: int = 16) -> int:
    """Prompt bucket: the next multiple of `multiple` (so few shapes get compiled)."""
    return max(multiple, -(-length // multiple) * multiple)


def left_pad(
    sequences: Sequence[Sequence[int]], length: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads token lists to int32[N, length] with a bool mask; raises if one is too long."""
    tokens = np.full((len(sequences), length), pad_id, np.int32)
    mask = np.zeros((len(sequences), length), bool)
    for i, seq in enumerate(sequences):
        if len(seq) > length:
            raise ValueError(f"prompt {i} has {len(seq)} tokens, more than the bucket {length}")
        if len(seq):
            tokens[i, length - len(seq) :] = seq
            mask[i, length - len(seq) :] = True
    return tokens, mask


def generate(
    model: Transformer,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    greedy: bool = False,
    seed: int = 0,
    stop_strings: Sequence[str] = (),
    add_bos: bool = True,
    mesh: Mesh | None = None,
) -> list[list[str]]:
    """Text in, text out, for notebooks and evaluation: `[prompt][sample] -> completion`.

    `tokenizer` needs `encode(str, add_bos=...) -> list[int]`, `decode(list[int]) -> str`,
    `pad_id` and `eos_id` (None or missing: no EOS). Prompts get the tokenizer's BOS first as in
    training (`add_bos`; a no-op for tokenizers without one, e.g. Qwen). Completions are decoded
    up to and including the end token. Compiles once per (number of prompts, prompt bucket,
    max_new_tokens). mesh: decode under this mesh, rows split as the sharding rules say (the
    model's state is placed on it; see `make_sampler`).
    """
    encoded = [list(tokenizer.encode(p, add_bos=add_bos)) for p in prompts]
    length = bucket_length(max(len(e) for e in encoded))
    tokens, mask = left_pad(encoded, length, tokenizer.pad_id)
    eos_id = getattr(tokenizer, "eos_id", None)
    config = SamplingConfig(
        max_new_tokens=max_new_tokens,
        num_samples=num_samples,
        temperature=temperature if not greedy else 1.0,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        greedy=greedy,
        eos_ids=() if eos_id is None else (int(eos_id),),
        stop_sequences=tuple(tuple(tokenizer.encode(s)) for s in stop_strings),
        pad_id=tokenizer.pad_id,
    )
    graphdef, state = nnx.split(model)
    if mesh is None:
        out = make_sampler(graphdef, config)(
            state, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(seed)
        )
    else:
        with use_mesh(mesh):
            state = place_state(state, mesh)
        out = make_sampler(graphdef, config, mesh)(state, tokens, mask, jax.random.key(seed))
    out_tokens, out_mask = np.asarray(out.tokens), np.asarray(out.mask)
    texts = [tokenizer.decode(out_tokens[r][out_mask[r]].tolist()) for r in range(len(out_tokens))]
    return [texts[p * num_samples : (p + 1) * num_samples] for p in range(len(prompts))]
