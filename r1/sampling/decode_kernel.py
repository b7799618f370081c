"""Decode attention as one Pallas kernel: one query token per row against the KV cache, with
the scores kept on chip.

The XLA form (`r1.sampling.kv_cache._decode_attention`) computes the scores of every cached
slot as a float32 array in HBM, then reads it again for the softmax's max and sum and writes
the probabilities before the second product: for G query heads per kv head that is about
5 x 4 x G bytes per slot against the cache's 2 x 2 x D (bf16 keys and values), a quarter more
traffic than the cache itself at G = 7, D = 128 (Qwen2.5-7B). This kernel reads each key and
value tile once and keeps scores, running max, running sum and the output accumulator in VMEM
(online softmax over key tiles), so a decode step's attention reads the cache once and writes
only its output.

Layouts are the cache's own (`r1.sampling.kv_cache`): q [B, K, G, D] (G = query heads per kv
head), k_cache [B, K, D, S], v_cache [B, K, S, D], mask bool[B, S] (valid slots). Grid (B, K,
S / tile), the slot tiles innermost and sequential. TPU compiles it (Mosaic); CPU runs it in
Pallas interpret mode (the tests).
"""

from __future__ import annotations

import functools

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
