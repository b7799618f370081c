"""Decode attention as Pallas kernels: one query token per row against the KV cache, with
the scores kept on chip. `decode_attention` for GQA caches (below), `latent_decode_attention`
for MLA's joined latent cache (its own section at the end).

The XLA form (`r1.sampling.kv_cache._decode_attention`) computes the scores of every cached
slot as a float32 array in HBM, then reads it again for the softmax's max and sum and writes
the probabilities before the second product: for G query heads per kv head that is about
5 x 4 x G bytes per slot against the cache's 2 x 2 x D (bf16 keys and values), a quarter more
traffic than the cache itself at G = 7, D = 128 (Qwen2.5-7B). This kernel reads each key and
value tile once and keeps scores, running max, running sum and the output accumulator in VMEM
(online softmax over key tiles), so a decode step's attention reads the cache once and writes
only its output.

GQA layouts are the cache's own (`r1.sampling.kv_cache`): q [B, K, G, D] (G = query heads per
kv head), k_cache [B, K, D, S], v_cache [B, K, S, D], mask bool[B, S] (valid slots). Grid (B,
K, S / tile), the slot tiles innermost and sequential. MLA: query [B, H, C + R], the joined
cache [L, B, S, C + R] read at a layer index, grid (B, slot tiles of this device's share).
TPU compiles them (Mosaic); CPU runs them in Pallas interpret mode (the tests).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import PartitionSpec

from r1.models.attention import MASK_VALUE
from r1.sharding import logical_to_spec

LANES = 128
KERNEL_NAME = "r1_decode_attention"
TILES = (512, 384, 256, 128)  # slot tiles tried, largest first: each a multiple of LANES


def slot_tile(slots: int) -> int:
    """The largest of `TILES` dividing `slots`; 0 when none does (the XLA form then runs)."""
    return next((tile for tile in TILES if slots % tile == 0), 0)


def supports(k_cache: jax.Array) -> bool:
    """Whether the kernel takes a cache of this shape: its slot count a multiple of LANES."""
    return slot_tile(k_cache.shape[-1]) > 0


def _kernel(q_ref, k_ref, v_ref, mask_ref, out_ref, max_ref, sum_ref, acc_ref, *, scale):
    """One (row, kv head, slot tile) step of the online softmax; refs as `_call` lays out."""
    tile = pl.program_id(2)

    @pl.when(tile == 0)
    def _start():
        max_ref[...] = jnp.full(max_ref.shape, -jnp.inf, jnp.float32)
        sum_ref[...] = jnp.zeros(sum_ref.shape, jnp.float32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    q = q_ref[0, 0]  # [G, D]
    scores = jnp.dot(q, k_ref[0, 0], preferred_element_type=jnp.float32) * scale  # [G, T]
    scores = jnp.where(mask_ref[0] != 0, scores, MASK_VALUE)
    old_max = max_ref[...]
    new_max = jnp.maximum(old_max, jnp.max(scores, axis=1, keepdims=True))
    probs = jnp.exp(scores - new_max)
    carry = jnp.exp(old_max - new_max)
    sum_ref[...] = carry * sum_ref[...] + jnp.sum(probs, axis=1, keepdims=True)
    v = v_ref[0, 0]  # [T, D]
    acc_ref[...] = carry * acc_ref[...] + jnp.dot(
        probs.astype(v.dtype), v, preferred_element_type=jnp.float32
    )
    max_ref[...] = new_max

    @pl.when(tile == pl.num_programs(2) - 1)
    def _finish():
        out_ref[0, 0] = (acc_ref[...] / sum_ref[...]).astype(out_ref.dtype)


def _call(q, k_cache, v_cache, mask, scale: float, interpret: bool):
    """The kernel over unsharded (or per-shard) arrays: shapes as `decode_attention`, mask
    as int32[B, 1, S]."""
    b, kv, g, d = q.shape
    slots = k_cache.shape[-1]
    tile = slot_tile(slots)
    itemsize = jnp.dtype(k_cache.dtype).itemsize
    cost = pl.CostEstimate(
        flops=4 * b * kv * g * d * slots,
        transcendentals=b * kv * g * slots,
        bytes_accessed=2 * b * kv * slots * d * itemsize + 4 * b * slots + 2 * q.size * itemsize,
    )
    return pl.pallas_call(
        functools.partial(_kernel, scale=float(scale)),
        grid=(b, kv, slots // tile),
        in_specs=[
            pl.BlockSpec((1, 1, g, d), lambda i, h, t: (i, h, 0, 0)),
            pl.BlockSpec((1, 1, d, tile), lambda i, h, t: (i, h, 0, t)),
            pl.BlockSpec((1, 1, tile, d), lambda i, h, t: (i, h, t, 0)),
            pl.BlockSpec((1, 1, tile), lambda i, h, t: (i, 0, t)),
        ],
        out_specs=pl.BlockSpec((1, 1, g, d), lambda i, h, t: (i, h, 0, 0)),
        out_shape=jax.ShapeDtypeStruct((b, kv, g, d), v_cache.dtype),
        scratch_shapes=[
            pltpu.VMEM((g, 1), jnp.float32),
            pltpu.VMEM((g, 1), jnp.float32),
            pltpu.VMEM((g, d), jnp.float32),
        ],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")
        ),
        cost_estimate=cost,
        interpret=interpret,
        name=KERNEL_NAME,
    )(q.astype(k_cache.dtype), k_cache, v_cache, mask)


def decode_attention(
    q: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    mask: jax.Array,
    scale: float,
    interpret: bool = False,
) -> jax.Array:
    """Attention of one query token per row over the cache: q [B, K, G, D], k_cache
    [B, K, D, S], v_cache [B, K, S, D], mask bool[B, S] -> [B, K, G, D] in the cache's dtype.

    The same function as the XLA form: scores q.k x scale in float32 (products of the cache's
    dtype accumulated in float32), masked slots at MASK_VALUE, softmax in float32, the
    probabilities in the cache's dtype times the values, accumulated in float32. (The
    probabilities are rounded before normalising here, after it there: equal to the rounding
    of the cache dtype.) q is taken in the cache's dtype (the sampler calls the kernel only
    when they are the same). S must be a multiple of 128 (`supports`). Under a mesh the kernel
    runs in a `jax.shard_map` over the axes the rules give "batch" and "act_kv_heads"."""
    if not supports(k_cache):
        raise ValueError(
            f"decode_attention: {k_cache.shape[-1]} cache slots; the kernel tiles slots by "
            f"multiples of {LANES}"
        )
    flags = mask.astype(jnp.int32)[:, None, :]
    call = functools.partial(_call, scale=scale, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return call(q, k_cache, v_cache, flags)
    b, kv = q.shape[:2]
    rows, heads = logical_to_spec(("batch", "act_kv_heads"), (b, kv), mesh)
    cache_spec = PartitionSpec(rows, heads, None, None)
    run = jax.shard_map(
        call,
        mesh=mesh,
        in_specs=(cache_spec, cache_spec, cache_spec, PartitionSpec(rows, None, None)),
        out_specs=cache_spec,
        check_vma=False,
    )
    return run(q, k_cache, v_cache, flags)


# ------------------------------------------------------------------------ MLA (latent) decode
LATENT_KERNEL_NAME = "r1_latent_decode_attention"


def latent_supports(cache: jax.Array) -> bool:
    """Whether the latent kernel takes a joined latent cache of this shape ([..., S, C + R]): S
    a multiple of LANES."""
    return slot_tile(cache.shape[-2]) > 0


def row_ends(mask: jax.Array) -> jax.Array:
    """bool[B, S] valid slots -> int32[B]: one past each row's last valid slot, at least 1. The
    latent kernel reads a row's slot tiles up to its end only. A row with no valid slot still
    reads its first tile: a finite average of that tile's masked slots, where the XLA form
    averages every slot (such a row is an idle slot or padding: its token is not kept)."""
    slots = jnp.arange(1, mask.shape[-1] + 1, dtype=jnp.int32)
    return jnp.max(jnp.where(mask, slots, 1), axis=-1)


def _latent_kernel(
    layer_ref,
    ends_ref,
    part_ref,
    q_ref,
    cache_ref,
    mask_ref,
    acc_out,
    max_out,
    sum_out,
    max_ref,
    sum_ref,
    acc_ref,
    *,
    scale,
    tile_size,
    parts,
    latent_width,
):
    """One (row, slot tile) step of the online softmax over the latent cache; refs as
    `_latent_call` lays out. Step t reads slot tile t x parts + part; tiles past the row's last
    valid slot are skipped (their index map repeats this part's last tile of the row, so
    nothing is fetched for them either). Writes the unnormalised output, running max and sum."""
    del layer_ref
    row, step = pl.program_id(0), pl.program_id(1)

    @pl.when(step == 0)
    def _start():
        max_ref[...] = jnp.full(max_ref.shape, -jnp.inf, jnp.float32)
        sum_ref[...] = jnp.zeros(sum_ref.shape, jnp.float32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    @pl.when((step * parts + part_ref[0]) * tile_size < ends_ref[row])
    def _step():
        keys = cache_ref[0, 0]  # [T, C + R]: the latent (also the values) and the rope key
        scores = jax.lax.dot_general(
            q_ref[0], keys, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
        )  # [H, T]: q_latent . latent + q_rope . rope in one product
        latent = keys[:, :latent_width]
        scores = jnp.where(mask_ref[0] != 0, scores * scale, MASK_VALUE)
        old_max = max_ref[...]
        new_max = jnp.maximum(old_max, jnp.max(scores, axis=1, keepdims=True))
        probs = jnp.exp(scores - new_max)
        carry = jnp.exp(old_max - new_max)
        sum_ref[...] = carry * sum_ref[...] + jnp.sum(probs, axis=1, keepdims=True)
        acc_ref[...] = carry * acc_ref[...] + jnp.dot(
            probs.astype(latent.dtype), latent, preferred_element_type=jnp.float32
        )
        max_ref[...] = new_max

    @pl.when(step == pl.num_programs(1) - 1)
    def _finish():
        acc_out[0] = acc_ref[...]
        max_out[0] = max_ref[...]
        sum_out[0] = sum_ref[...]


def _latent_call(query, cache, mask, layer, part, *, width: int, parts: int, scale, interpret):
    """The latent kernel over unsharded (or per-shard) arrays: query [B, H, C + R] ([q_latent |
    q_rope]), cache [L, B, S, C + R], mask int32[B, 1, S], layer int32[1], part int32[1]: this
    call reads slot tiles part, part + parts, ... of each row; C = width. Returns the
    unnormalised output float32[B, H, C] and the running max and sum float32[B, H, 1]."""
    b, h, joined = query.shape
    slots = cache.shape[-2]
    tile = slot_tile(slots)
    steps = -(-(slots // tile) // parts)
    itemsize = jnp.dtype(cache.dtype).itemsize
    ends = row_ends(mask[:, 0, :] != 0)

    def at(i, t, part_ref, ends_ref):
        """The slot tile step t of row i reads: tile t x parts + part, at most this part's
        last tile of the row (later steps repeat it, so nothing more is fetched); a part with
        no tile in the row repeats the row's last tile."""
        part, last = part_ref[0], (ends_ref[i] + tile - 1) // tile - 1
        own_last = jnp.where(last >= part, part + (last - part) // parts * parts, last)
        return jnp.minimum(t * parts + part, own_last)

    read = steps * tile  # the slots one call reads at most
    cost = pl.CostEstimate(
        flops=2 * b * h * read * (joined + width),
        transcendentals=b * h * read,
        bytes_accessed=b * read * (joined * itemsize + 4)
        + query.size * itemsize
        + 4 * b * h * (width + 2),
    )
    row_block = lambda i, t, *_: (i, 0, 0)  # noqa: E731
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=3,
        grid=(b, steps),
        in_specs=[
            pl.BlockSpec((1, h, joined), row_block),
            pl.BlockSpec(
                (1, 1, tile, joined), lambda i, t, lr, er, pr: (lr[0], i, at(i, t, pr, er), 0)
            ),
            pl.BlockSpec((1, 1, tile), lambda i, t, lr, er, pr: (i, 0, at(i, t, pr, er))),
        ],
        out_specs=[
            pl.BlockSpec((1, h, width), row_block),
            pl.BlockSpec((1, h, 1), row_block),
            pl.BlockSpec((1, h, 1), row_block),
        ],
        scratch_shapes=[
            pltpu.VMEM((h, 1), jnp.float32),
            pltpu.VMEM((h, 1), jnp.float32),
            pltpu.VMEM((h, width), jnp.float32),
        ],
    )
    kernel = functools.partial(
        _latent_kernel, scale=float(scale), tile_size=tile, parts=parts, latent_width=width
    )
    return pl.pallas_call(
        kernel,
        grid_spec=grid_spec,
        out_shape=(
            jax.ShapeDtypeStruct((b, h, width), jnp.float32),
            jax.ShapeDtypeStruct((b, h, 1), jnp.float32),
            jax.ShapeDtypeStruct((b, h, 1), jnp.float32),
        ),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        cost_estimate=cost,
        interpret=interpret,
        name=LATENT_KERNEL_NAME,
    )(layer, ends, part, query.astype(cache.dtype), cache, mask)


def latent_decode_attention(
    q_latent: jax.Array,
    q_rope: jax.Array,
    cache: jax.Array,
    mask: jax.Array,
    scale: float,
    layer: jax.Array | int | None = None,
    interpret: bool = False,
) -> jax.Array:
    """MLA's absorbed attention of one query token per row over the joined latent cache:
    q_latent [B, H, C] (the query in latent space), q_rope [B, H, R] (rotated), cache
    [B, S, C + R] ([latent | rotated rope key] per slot, `r1.sampling.kv_cache`), or a stacked
    block's [L, B, S, C + R] with `layer` the index to read, mask bool[B, S] (valid slots) ->
    the attention-weighted latent [B, H, C] in the cache's dtype.

    The function of the XLA form (`r1.models.mla.MLAttention.attend_latent`): scores
    (q_latent . latent + q_rope . rope) x scale in float32, masked slots at MASK_VALUE, softmax
    in float32, the probabilities in the cache's dtype times the latent, accumulated in float32
    (rounded before normalising here, after it there). The latent is the values too, so each
    cached slot is read once, and only up to the row's last valid slot (`row_ends`): a row's
    tiles past it are neither fetched nor computed, so its bytes on the hardware follow its
    length (the stated cost estimate is every slot, the bound). A stacked cache is read in
    place at `layer` (no copy of the layer's cache). S must be a multiple of 128
    (`latent_supports`).

    Under a mesh the kernel runs in a `jax.shard_map`, rows over the axes the rules give
    "cache_batch". The latent is one key and value for every head, so the devices the rules
    split "cache_heads" over (each holding the whole row) split the row's slot tiles instead,
    interleaved (device p of P reads tiles p, p + P, ...: an even share at any row length),
    each for every head; their partial softmaxes are combined by a max and two sums over
    those devices ([B, H, C] float32), each keeping its heads."""
    if not latent_supports(cache):
        raise ValueError(
            f"latent_decode_attention: {cache.shape[-2]} cache slots; the kernel tiles slots "
            f"by multiples of {LANES}"
        )
    width = q_latent.shape[-1]
    if cache.shape[-1] != width + q_rope.shape[-1]:
        raise ValueError(
            f"latent_decode_attention: a cache of {cache.shape[-1]} values per slot for a "
            f"latent of {width} and a rope key of {q_rope.shape[-1]}"
        )
    if layer is None:
        if cache.ndim != 3:
            raise ValueError(
                "latent_decode_attention: a stacked [L, B, S, C + R] cache needs `layer`"
            )
        cache, layer = cache[None], 0
    layer = jnp.asarray(layer, jnp.int32).reshape(1)
    query = jnp.concatenate([q_latent, q_rope.astype(q_latent.dtype)], axis=-1)
    flags = mask.astype(jnp.int32)[:, None, :]
    out_dtype = cache.dtype
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        call = functools.partial(
            _latent_call, width=width, parts=1, scale=scale, interpret=interpret
        )
        acc, _, total = call(query, cache, flags, layer, jnp.zeros(1, jnp.int32))
        return (acc / total).astype(out_dtype)
    b, h = q_latent.shape[:2]
    rows, heads = logical_to_spec(("cache_batch", "cache_heads"), (b, h), mesh)
    split = () if heads is None else (heads,) if isinstance(heads, str) else tuple(heads)
    parts = math.prod(mesh.shape[axis] for axis in split)
    call = functools.partial(
        _latent_call, width=width, parts=parts, scale=scale, interpret=interpret
    )

    def combine(query, cache, flags, layer):
        part = jax.lax.axis_index(split) if split else 0
        acc, run_max, total = call(
            query, cache, flags, layer, jnp.asarray(part, jnp.int32).reshape(1)
        )
        if split:  # the slot shares' partial softmaxes, rescaled to the overall max
            overall = jax.lax.pmax(run_max, split)
            weight = jnp.exp(run_max - overall)
            acc = jax.lax.psum_scatter(acc * weight, split, scatter_dimension=1, tiled=True)
            total = jax.lax.psum_scatter(total * weight, split, scatter_dimension=1, tiled=True)
        return (acc / total).astype(out_dtype)

    whole_row = PartitionSpec(rows, None, None)
    run = jax.shard_map(
        combine,
        mesh=mesh,
        in_specs=(whole_row, PartitionSpec(None, rows, None, None), whole_row, PartitionSpec(None)),
        out_specs=PartitionSpec(rows, heads, None),
        check_vma=False,
    )
    return run(query, cache, flags, layer)
