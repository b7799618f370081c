"""KV caches as explicit pytrees and the cached forward pass used by the sampler.

Layout, one entry per block of `model.layers` (a list, so each block's cache is its own loop
variable): for an unscanned model one entry per decoder layer,
  GQA: {"k": float[B, KV, D, S], "v": float[B, KV, S, D]}   keys pre-transposed, so a decode
       step reads them as a matmul operand without XLA copying the whole cache.
  MLA: {"latent_rope": float[B, S, C + R]}   only the compressed latent and the shared rope
       key, joined ([latent | rope key]), C + R values per token and layer (the point of MLA);
       one array, so one write per token and a decode kernel reads each slot as one row.
and for a model with `scan_layers` one entry per `LayerStack`, the same arrays with a leading
[n_layers] axis; the scan over the block writes each layer's new slots into the stacked arrays
in place (the cache is the scan's carry). Plus `valid: bool[B, S]`, the slots holding real
(non-padding) tokens.

In the static decode all rows write the same slot range at each call (prompts are left-padded
to a common length), so writes are `dynamic_update_slice`s at one scalar index. A decode step's
attention over the cache runs a Pallas kernel of `r1.sampling.decode_kernel` for models whose
`ModelConfig.use_decode_kernel` holds (decode_attention_impl "pallas", or "auto" with
attention_impl "pallas"): GQA over each cache window of a multiple of 128 slots, MLA over the
whole latent cache with every row read up to its own last valid slot (no window is cut). Else
XLA dots (`_decode_attention`, `MLAttention.attend_latent`). In the slot
decode (`r1.sampling.slots`) each row is at its own token index: a decode step's one token per
row is scattered to slot `index[b]` of row b.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from r1.models.attention import MASK_VALUE, SegmentMask
from r1.models.attention_kernels import attend as kernel_attend
from r1.models.attention_kernels import pallas_interpret
from r1.models.config import ModelConfig
from r1.models.layers import dtype_of
from r1.models.transformer import LayerStack, Transformer
from r1.sampling import decode_kernel
from r1.sharding import cache_rows_apart, compute_platform, relayout, shard

Cache = dict[str, Any]

GQA_K_AXES = ("cache_batch", "cache_heads", None, None)
GQA_V_AXES = ("cache_batch", "cache_heads", None, None)
MLA_AXES = ("cache_batch", None, None)
# The slot decode's prompt cache (`by_position`): split over positions, rows whole.
PROMPT_AXES = {
    "k": (None, "act_kv_heads", None, "cache_prompt_length"),
    "v": (None, "act_kv_heads", "cache_prompt_length", None),
    "latent_rope": (None, "cache_prompt_length", None),
}


def _layer_entry(cfg: ModelConfig, lead: tuple[int, ...], batch: int, max_len: int, dt) -> Cache:
    if cfg.attention_type == "mla":
        return {
            "latent_rope": jnp.zeros(
                (*lead, batch, max_len, cfg.kv_lora_rank + cfg.qk_rope_head_dim), dt
            ),
        }
    kv, d = cfg.num_kv_heads, cfg.head_dim
    return {
        "k": jnp.zeros((*lead, batch, kv, d, max_len), dt),
        "v": jnp.zeros((*lead, batch, kv, max_len, d), dt),
    }


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: str | None = None) -> Cache:
    """An empty cache for `batch` rows of `max_len` slots (prompt bucket + max new tokens)."""
    dt = dtype_of(dtype or cfg.dtype)
    layers = [
        _layer_entry(cfg, (count,) if cfg.scan_layers else (), batch, max_len, dt)
        for _, count in cfg.layer_groups()
    ]
    return {"layers": layers, "valid": jnp.zeros((batch, max_len), bool)}


# Recorded routes int16[rows, tokens, M, k] (`SamplingConfig.record_routes`): split by rows.
ROUTE_AXES = ("cache_batch", None, None, None)


def init_routes(cfg: ModelConfig, rows: int, tokens: int) -> jax.Array:
    """int16[rows, tokens, M, k] of -1 (M = `num_moe_layers`, k = `num_experts_per_tok`): the
    buffer a decode loop fills with each completion token's experts (-1: none recorded)."""
    shape = (rows, tokens, cfg.num_moe_layers, cfg.num_experts_per_tok)
    return shard(jnp.full(shape, -1, jnp.int16), ROUTE_AXES)


def cache_bytes_per_token(cache: Cache) -> int:
    """Bytes the cache holds per token slot and row, summed over layers."""
    batch, max_len = cache["valid"].shape
    total = 0
    for layer in cache["layers"]:
        for array in layer.values():
            total += array.size * array.dtype.itemsize
    return total // (batch * max_len)


# The slot (sequence) axis of each cache entry, and its rank, in an unscanned layer's cache
# (a scanned block's arrays have one more, leading, axis).
SLOT_AXIS = {"k": 3, "v": 2, "latent_rope": 1, "valid": 1}
LAYER_RANK = {"k": 4, "v": 4, "latent_rope": 3, "valid": 2}


def _lead(name: str, array: jax.Array) -> int:
    """1 for a scanned block's stacked array, 0 for one layer's."""
    return array.ndim - LAYER_RANK[name]


def grow_cache(cache: Cache, max_len: int) -> Cache:
    """The cache with its slot axis zero-padded to `max_len` slots (the new slots invalid)."""

    def pad(name, array):
        axis = SLOT_AXIS[name] + _lead(name, array)
        extra = max_len - array.shape[axis]
        if extra < 0:
            raise ValueError(f"grow_cache: {name} has more than {max_len} slots already")
        widths = [(0, 0)] * array.ndim
        widths[axis] = (0, extra)
        return jnp.pad(array, widths)

    layers = [
        _constrain({name: pad(name, array) for name, array in layer.items()})
        for layer in cache["layers"]
    ]
    return {"layers": layers, "valid": pad("valid", cache["valid"])}


def repeat_rows(cache: Cache, repeats: int) -> Cache:
    """Each row repeated `repeats` times consecutively (prompt p -> rows p*G .. p*G+G-1)."""
    layers = [
        {name: jnp.repeat(a, repeats, axis=_lead(name, a)) for name, a in layer.items()}
        for layer in cache["layers"]
    ]
    return {"layers": layers, "valid": jnp.repeat(cache["valid"], repeats, axis=0)}


def refill_rows(cache: Cache, prompts: Cache, take: jax.Array, prompt_of_row: jax.Array) -> Cache:
    """The slot decode's refill: rows b with take[b] start a new completion of prompt
    prompt_of_row[b]. Their first L slots (L = the prompt cache's length) get that prompt's
    keys / values (copied from `prompts`, the prefill's cache of P rows) and its valid mask;
    their later slots become invalid. Other rows are unchanged.

    cache: B rows of L + N slots; prompts: P rows of L slots; take: bool[B];
    prompt_of_row: int32[B] in [0, P).
    """
    prompt_len = prompts["valid"].shape[1]

    def copy(name, array, source):
        lead = _lead(name, array)
        axis = SLOT_AXIS[name] + lead
        fresh = jnp.take(source, prompt_of_row, axis=lead).astype(array.dtype)
        fresh = _constrain({name: fresh})[name]  # by row, as the slots: one all-to-all
        kept = jax.lax.slice_in_dim(array, 0, prompt_len, axis=axis)
        select = take.reshape((1,) * lead + (-1,) + (1,) * (array.ndim - lead - 1))
        prefix = jnp.where(select, fresh, kept)
        return jax.lax.dynamic_update_slice_in_dim(array, prefix, 0, axis=axis)

    layers = [
        _constrain({name: copy(name, array, source[name]) for name, array in layer.items()})
        for layer, source in zip(cache["layers"], prompts["layers"])
    ]
    valid = cache["valid"]
    fresh = jnp.zeros_like(valid).at[:, :prompt_len].set(prompts["valid"][prompt_of_row])
    return {"layers": layers, "valid": jnp.where(take[:, None], fresh, valid)}


def by_position(cache: Cache) -> Cache:
    """The prefill's cache constrained to be split over positions (every device holds a slice of
    every prompt) instead of rows: what `refill_rows` reads from. On a mesh, a refill then
    gathers any prompt's prefix without gathering the whole prompt cache to every device."""
    layers = [
        {
            name: shard(value, (None,) * _lead(name, value) + PROMPT_AXES[name])
            for name, value in layer.items()
        }
        for layer in cache["layers"]
    ]
    return {"layers": layers, "valid": cache["valid"]}


def _constrain(layer: dict[str, jax.Array]) -> dict[str, jax.Array]:
    axes = {"k": GQA_K_AXES, "v": GQA_V_AXES, "latent_rope": MLA_AXES}
    return {
        name: shard(value, (None,) * _lead(name, value) + axes[name])
        for name, value in layer.items()
    }


def _write(array: jax.Array, new: jax.Array, index, slot_axis: int, layer_pos) -> jax.Array:
    """`array` with `new` written at slots [index, index + T) of its slot axis; for a stacked
    block's array (layer_pos not None) into layer `layer_pos` only, in place. index int32[B]
    (one token per row, T = 1): row b's token goes to slot index[b]."""
    new = new.astype(array.dtype)
    if jnp.ndim(index) == 1:
        return _write_rows(array, new, index, slot_axis, layer_pos)
    if layer_pos is None:
        return jax.lax.dynamic_update_slice_in_dim(array, new, index, axis=slot_axis)
    starts = [jnp.zeros((), jnp.int32)] * array.ndim
    starts[0] = jnp.asarray(layer_pos, jnp.int32)
    starts[slot_axis + 1] = jnp.asarray(index, jnp.int32)
    return jax.lax.dynamic_update_slice(array, new[None], starts)


def _write_rows(array: jax.Array, new: jax.Array, index: jax.Array, slot_axis: int, layer_pos):
    """One token per row at its own slot: new has length 1 on `slot_axis`; a scatter of B
    entries (each row's write touches only its own slot)."""
    if new.shape[slot_axis] != 1:
        raise ValueError("per-row cache writes take one token per row")
    rows = jnp.arange(new.shape[0])
    where = [slice(None)] * new.ndim
    where[0], where[slot_axis] = rows, index
    lead = () if layer_pos is None else (jnp.asarray(layer_pos, jnp.int32),)
    return array.at[(*lead, *where)].set(
        jnp.squeeze(new, axis=slot_axis), unique_indices=True, mode="promise_in_bounds"
    )


def _read(array: jax.Array, layer_pos) -> jax.Array:
    """One layer's cache array (layer `layer_pos` of a stacked block's array)."""
    if layer_pos is None:
        return array
    return jax.lax.dynamic_index_in_dim(array, layer_pos, axis=0, keepdims=False)


def _in_window(window, attend, operands):
    """attend(*arrays) over the first w slots of each (array, slot axis) in `operands`: w =
    sizes[i] for window = (i, sizes) with i traced (a `lax.switch`, one branch per size), or
    every slot when window is None. Slots past w must be masked out (exact zeros in softmax)."""
    arrays = tuple(array for array, _ in operands)
    if window is None:
        return attend(*arrays)
    index, sizes = window

    def branch(size):
        def run(*arrays):
            cut = (
                jax.lax.slice_in_dim(a, 0, size, axis=ax) for a, (_, ax) in zip(arrays, operands)
            )
            return attend(*cut)

        return run

    return jax.lax.switch(index, [branch(size) for size in sizes], *arrays)


def _gqa_cached(
    attn, x, positions, entry, index, mask, layer_pos=None, window=None, prefill_mask=None
):
    """Writes this call's keys/values at slots [index, index+T) and attends over all slots
    (decoding with `window`: over the first w, see `_in_window`). prefill_mask: a
    `SegmentMask` for a prefill at slot 0 (`_prefill_mask`): the prompt attends to itself
    through `ModelConfig.attention_impl` instead of over the slots."""
    q, k, v = attn.project_qkv(x, positions)  # q [B,T,H,D], k/v [B,T,KV,D]
    k_all = _write(entry["k"], k.transpose(0, 2, 3, 1), index, 3, layer_pos)
    v_all = _write(entry["v"], v.transpose(0, 2, 1, 3), index, 2, layer_pos)
    k_cache, v_cache = _read(k_all, layer_pos), _read(v_all, layer_pos)
    b, t, h, d = q.shape
    kv_heads = k_cache.shape[1]
    qg = q.reshape(b, t, kv_heads, h // kv_heads, d)
    if prefill_mask is not None:
        # The values the cache holds (its dtype), so decode and prefill read the same keys.
        k, v = (a.astype(entry["k"].dtype).astype(q.dtype) for a in (k, v))
        out = kernel_attend(q, k, v, prefill_mask, attn.scale, attn.attention_impl, attn.block_size)
    elif t == 1:
        apart = cache_rows_apart()
        at_cache = ("cache_batch", "length", "cache_heads", None, None)
        if apart:  # attend where the cache rows are (`r1.sharding.STATIONARY_DECODE_RULES`)
            qg = relayout(qg, ("batch", "length", "act_kv_heads", None, None), at_cache)

        def attend(k_cache, v_cache, mask):
            if (
                attn.use_decode_kernel
                and decode_kernel.supports(k_cache)
                and qg.dtype == k_cache.dtype  # a narrower cache (fp8) stays on the XLA form
            ):
                return decode_kernel.decode_attention(
                    qg[:, 0], k_cache, v_cache, mask[:, 0], attn.scale, pallas_interpret()
                )
            return _decode_attention(qg[:, 0], k_cache, v_cache, mask[:, 0], attn.scale)

        out = _in_window(window, attend, ((k_cache, 3), (v_cache, 2), (mask, 2)))
        if apart:
            out = relayout(out[:, None], at_cache, ("batch", "length", "act_kv_heads", None, None))
        out = out.reshape(b, 1, h, d)
    else:
        qg, k_cache, v_cache = _batched_dot_operands(qg, k_cache, v_cache)
        scores = jnp.einsum("btkgd,bkds->bkgts", qg, k_cache, preferred_element_type=jnp.float32)
        scores = jnp.where(mask[:, None, None, :, :], scores * attn.scale, MASK_VALUE)
        probs = jax.nn.softmax(scores, axis=-1).astype(v_cache.dtype)
        out = jnp.einsum("bkgts,bksd->btkgd", probs, v_cache).reshape(b, t, h, d).astype(q.dtype)
    return attn.output(out), {"k": k_all, "v": v_all}


def _batched_dot_operands(*arrays: jax.Array) -> tuple[jax.Array, ...]:
    """The prefill's attention operands as the platform can multiply them: XLA's CPU runtime
    has no batched bf16 x bf16 -> f32 dot (`DotThunk`), which layout assignment can produce
    from these einsums, so on CPU narrow operands go to float32 (the same products, exactly);
    accelerators keep them narrow and accumulate in float32."""
    if compute_platform() != "cpu":
        return arrays
    return tuple(a.astype(jnp.float32) if a.dtype.itemsize < 4 else a for a in arrays)


def _decode_attention(q, k_cache, v_cache, mask, scale):
    """One query token per row: q [B, KV, G, D]; k_cache: [B, KV, D, S]; v_cache: [B, KV, S, D];
    mask: bool[B, S] -> [B, KV, G, D], softmax in float32.

    On accelerators two batched dots read the cache in its stored dtype and accumulate in
    float32 (one pass over the cache, nothing upcast in memory). On CPU the same products as
    broadcast-multiply-and-reduce in float32: XLA fuses the reduce form into one pass over the
    cache, where the batched-dot form runs B x KV tiny GEMMs (3x slower at batch 32)."""
    if compute_platform() != "cpu":
        scores = jnp.einsum("bkgd,bkds->bkgs", q, k_cache, preferred_element_type=jnp.float32)
        scores = jnp.where(mask[:, None, None, :], scores * scale, MASK_VALUE)
        probs = jax.nn.softmax(scores, axis=-1).astype(v_cache.dtype)
        out = jnp.einsum("bkgs,bksd->bkgd", probs, v_cache, preferred_element_type=jnp.float32)
        return out.astype(v_cache.dtype)
    q32 = q.astype(jnp.float32)
    scores = jnp.sum(q32[..., None] * k_cache[:, :, None].astype(jnp.float32), axis=3)
    scores = jnp.where(mask[:, None, None, :], scores * scale, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.sum(probs[..., None] * v_cache[:, :, None].astype(jnp.float32), axis=3)
    return out.astype(v_cache.dtype)


def _mla_cached(
    attn, x, positions, entry, index, mask, layer_pos=None, window=None, prefill_mask=None
):
    """Caches only the latent + rope key (joined, one write) and attends in the absorbed
    (latent) form; a prefill with `prefill_mask` (see `_gqa_cached`) in the expanded form
    through the kernel."""
    q_nope, q_rope, kv_latent, k_rope = attn.project(x, positions)  # one GEMM when fused
    c = kv_latent.shape[-1]
    joined = _write(
        entry["latent_rope"], jnp.concatenate([kv_latent, k_rope], axis=-1), index, 1, layer_pos
    )
    if window is not None and x.shape[1] != 1:
        raise ValueError("attention windows are for decoding (one token per row)")
    if prefill_mask is not None:
        latent, rope = (a.astype(joined.dtype).astype(x.dtype) for a in (kv_latent, k_rope))
        out = attn.attend_expanded(q_nope, q_rope, latent, rope, prefill_mask)
        return out, {"latent_rope": joined}
    if (
        attn.use_decode_kernel
        and x.shape[1] == 1
        and decode_kernel.latent_supports(joined)
        and q_nope.dtype == joined.dtype  # a narrower cache (fp8) stays on the XLA form
    ):
        # Every row reads the cache only up to its own last valid slot, so no window is cut;
        # a stacked block's cache is read in place at its layer.
        q_latent, q_rope = attn.latent_queries(q_nope, q_rope)
        o_latent = decode_kernel.latent_decode_attention(
            q_latent[:, 0],
            q_rope[:, 0],
            joined,
            mask[:, 0],
            attn.scale,
            layer_pos,
            pallas_interpret(),
        )
        out = attn.latent_output(o_latent[:, None])
        return out, {"latent_rope": joined}

    def attend(cache, mask):
        return attn.attend_latent(q_nope, q_rope, cache[..., :c], cache[..., c:], mask)

    out = _in_window(window, attend, ((_read(joined, layer_pos), 1), (mask, 2)))
    return out, {"latent_rope": joined}


def _cached_layer(
    layer,
    x,
    positions,
    token_mask,
    entry,
    index,
    mask,
    layer_pos=None,
    window=None,
    prefill_mask=None,
):
    """One decoder layer over cached slots: (x float[B, T, D], its updated cache entry, the
    experts its router picked int32[B, T, k], None for a dense layer)."""
    h = layer.input_norm(x)
    cached = _gqa_cached if "k" in entry else _mla_cached
    attn_out, entry = cached(
        layer.attn, h, positions, entry, index, mask, layer_pos, window, prefill_mask
    )
    x = shard(x + attn_out, ("batch", "length", "act_embed"))
    h = layer.post_attn_norm(x)
    routes = None
    if layer.is_moe:
        h, stats = layer.mlp(h, token_mask)
        routes = stats.routes
    else:
        h = layer.mlp(h)
    return shard(x + h, ("batch", "length", "act_embed")), _constrain(entry), routes


def _prefill_mask(cfg: ModelConfig, token_mask: jax.Array, index) -> SegmentMask | None:
    """The prompt's own mask when a call is a prefill that can use the attention kernel, else
    None. At slot 0 (index the Python int 0, known while tracing) with T > 1 tokens, slot s of
    the cache attends exactly as token s of the prompt: the slots past T are later than every
    query (causal) and nothing is cached before, so the attention over the slots equals the
    prompt's causal self-attention with its padding (token_mask False) excluded; one segment.
    token_mask: bool[B, T]."""
    if cfg.attention_impl == "xla" or not isinstance(index, int) or index != 0:
        return None
    if token_mask.shape[1] < 2:
        return None
    segments = jnp.ones(token_mask.shape, jnp.int32)
    return SegmentMask(segments, token_mask.astype(bool))


def forward_with_cache(
    model: Transformer,
    tokens: jax.Array,
    positions: jax.Array,
    token_mask: jax.Array,
    cache: Cache,
    index: jax.Array | int,
    window: tuple[jax.Array, tuple[int, ...]] | None = None,
    with_routes: bool = False,
    last_logits_only: bool = False,
) -> tuple[jax.Array, Cache] | tuple[jax.Array, Cache, jax.Array]:
    """Runs tokens int32[B, T] that occupy cache slots [index, index + T).

    positions: int32[B, T]; token_mask: bool[B, T] (False = padding, never attended to).
    Returns (logits float32[B, T, V], updated cache). Prefill is T = prompt length at index 0,
    a decode step T = 1 at index = prompt length + step. index int32[B] (T = 1): each row at
    its own slot (the slot decode, whose rows are at different token indices); row b attends
    to its valid slots up to index[b]. window: (i, sizes) for a decode step, attention reads
    only the first sizes[i] slots (i traced: the caller knows no row attends past them).
    with_routes: also return the experts each MoE layer's router picked for each token,
    (logits, cache, routes int32[B, T, M, k]) with M = `ModelConfig.num_moe_layers` in forward
    order (best expert first; padding tokens get their router's choice too, the caller masks
    them). Raises ValueError for a model without MoE layers. last_logits_only: the logits of
    the last position only, float32[B, 1, V] (a left-padded prompt's next token: the prefill
    then never makes the [B, T, V] logits of a whole prompt). A prefill (index the int 0,
    T > 1) with `ModelConfig.attention_impl` other than "xla" runs the prompt's self-attention
    through that kernel (`_prefill_mask`); decode steps attend over the cache through the
    decode kernels (`ModelConfig.use_decode_kernel`) or in XLA.
    """
    if with_routes and model.config.num_moe_layers == 0:
        raise ValueError("forward_with_cache: with_routes needs a model with MoE layers")
    b, t = tokens.shape
    slots = cache["valid"].shape[1]
    if jnp.ndim(index) == 1:
        valid = _write_rows(cache["valid"], token_mask.astype(bool), index, 1, None)
    else:
        valid = jax.lax.dynamic_update_slice_in_dim(
            cache["valid"], token_mask.astype(bool), index, 1
        )
    query_slot = jnp.reshape(index, (-1, 1)) + jnp.arange(t)[None, :]  # [B or 1, T]
    causal = jnp.arange(slots)[None, None, :] <= query_slot[:, :, None]  # [B or 1, T, S]
    mask = causal & valid[:, None, :]
    prefill_mask = _prefill_mask(model.config, token_mask, index)
    x = shard(model.embed(tokens), ("batch", "length", "act_embed"))
    new_layers = []
    routes = []  # per MoE layer (or scanned MoE block) int32[n, B, T, k], forward order
    for block, entry in zip(model.layers, cache["layers"]):
        if isinstance(block, LayerStack):
            graphdef, state = nnx.split(block.layer)
            keep = with_routes and block.is_moe

            def body(carry, layer_state, graphdef=graphdef, keep=keep):
                x, entry, i = carry
                layer = nnx.merge(graphdef, layer_state)
                x, entry, layer_routes = _cached_layer(
                    layer, x, positions, token_mask, entry, index, mask, i, window, prefill_mask
                )
                return (x, entry, i + 1), layer_routes if keep else None

            (x, entry, _), block_routes = jax.lax.scan(body, (x, entry, jnp.int32(0)), state)
            if keep:
                routes.append(block_routes)
        else:
            x, entry, layer_routes = _cached_layer(
                block, x, positions, token_mask, entry, index, mask, None, window, prefill_mask
            )
            if with_routes and layer_routes is not None:
                routes.append(layer_routes[None])
        new_layers.append(entry)
    if last_logits_only:
        x = x[:, -1:, :]
    logits = model.logits_from_hidden(model.final_norm(x))
    new_cache = {"layers": new_layers, "valid": valid}
    if not with_routes:
        return logits, new_cache
    stacked = jnp.moveaxis(jnp.concatenate(routes, axis=0), 0, 2).astype(jnp.int32)
    return logits, new_cache, shard(stacked, ("batch", "length", None, None))
