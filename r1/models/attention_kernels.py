"""The self-attention kernel behind `ModelConfig.attention_impl`: one entry point, `attend`.

Training and prefill self-attention (GQA and MLA's expanded form) go through `attend`; decode
against the KV cache has its own kernels (`r1.sampling.decode_kernel`, GQA and MLA, chosen by
`ModelConfig.decode_attention_impl`) or the XLA form. The three choices compute the same
function of (q, k, v, mask):

  "xla"     `attention.dot_product_attention` (einsums, float32 softmax, a dense [B, T, S]
            mask), or `attention.blockwise_attention` (pure-JAX flash, custom VJP) for a
            factored `SegmentMask` longer than `attention_block_size`. Runs everywhere.
  "cudnn"   `jax.nn.dot_product_attention(..., implementation="cudnn")`, cuDNN's fused flash
            attention. GPU only, bfloat16 / float16 only (cuDNN has no float32 kernel).
  "pallas"  the Pallas TPU splash-attention kernel (`jax.experimental.pallas.ops.tpu.
            splash_attention`), in a `jax.shard_map` over the mesh axes that hold batch and
            heads. TPU, or CPU in Pallas interpret mode (how the tests run it).

Shapes: B batch, T query length, S key length (S = T for self-attention), H query heads,
K kv heads (H a multiple of K), Dk query/key head dim, Dv value head dim (MLA: Dv != Dk).

Every query with at least one valid key (padding queries included: they see the valid keys of
their segment, as in the dense mask) gets the same result from every implementation. Queries
without any valid key (e.g. left padding) are unspecified and differ (dense XLA: a uniform
average over all keys; blockwise: 0; cuDNN, Pallas: other finite averages); nothing downstream
reads them, and they pass no gradient when the loss masks them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from r1.models import attention_core as attention_lib
from r1.models.config import ATTENTION_IMPLS
from r1.sharding import compute_platform, logical_to_spec

# Pallas tile length (queries and keys) when `attention_block_size` is not a multiple of
# LANES; always capped at the sequence length rounded up to LANES.
PALLAS_BLOCK = 512
LANES = 128  # the TPU's lane width: splash-attention tiles are multiples of it


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: attention_lib.AttentionMask,
    scale: float,
    impl: str = "xla",
    block_size: int = 0,
) -> jax.Array:
    """Attention of q over k, v with `impl` (one of `ATTENTION_IMPLS`).

    q: float[B, T, H, Dk], k: float[B, S, K, Dk], v: float[B, S, K, Dv]; mask: bool[B, T, S] or
    a `SegmentMask` (causal self-attention within segments, padding keys excluded; S = T);
    scale: the softmax scale; block_size: `ModelConfig.attention_block_size` (xla: the
    blockwise threshold and tile; pallas: the tile when a multiple of 128).
    Returns float[B, T, H, Dv] in q's dtype.
    """
    if impl == "xla":
        t = q.shape[1]
        if attention_lib.use_blockwise(mask, t, block_size):
            return attention_lib.blockwise_attention(q, k, v, mask, scale, block_size)
        return attention_lib.dot_product_attention(q, k, v, attention_lib.dense_mask(mask), scale)
    if impl == "cudnn":
        return cudnn_attention(q, k, v, mask, scale)
    if impl == "pallas":
        return pallas_attention(q, k, v, mask, scale, block_size)
    raise ValueError(f"ModelConfig.attention_impl: expected one of {ATTENTION_IMPLS}, got {impl!r}")


# ------------------------------------------------------------------ cuDNN
def jax_nn_mask(mask: attention_lib.AttentionMask) -> tuple[jax.Array, bool]:
    """The mask in the form `jax.nn.dot_product_attention` takes: (bool[B, 1, T, S], is_causal).

    A `SegmentMask` becomes is_causal=True (cuDNN skips the tiles above the diagonal) plus
    same-segment-and-valid-key as a bool mask broadcast over heads; cuDNN has no segment-id
    input on this API (key_value_seq_lengths would only cover right padding, and prompts are
    left-padded), so the mask is materialised, O(B T^2) bytes. A dense mask passes as is.
    """
    if isinstance(mask, attention_lib.SegmentMask):
        seg, valid = mask.segment_ids, mask.valid.astype(bool)
        same = seg[:, :, None] == seg[:, None, :]
        return (same & valid[:, None, :])[:, None], True
    return mask.astype(bool)[:, None], False


def cudnn_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: attention_lib.AttentionMask,
    scale: float,
    implementation: str = "cudnn",
) -> jax.Array:
    """`jax.nn.dot_product_attention` with the mask of `jax_nn_mask` (shapes as `attend`).

    implementation="xla" runs the same call through jax's XLA reference (how the tests check
    the cuDNN call's semantics on CPU). GQA goes in natively (K dividing H). A value head dim
    unlike the key's (MLA) is zero-padded to Dk and the output sliced back (the API takes
    values shaped like keys). T is padded to even (cuDNN needs it with a mask in training).
    Raises ValueError off GPU or for float32 inputs with implementation="cudnn".
    """
    if implementation == "cudnn":
        platform = compute_platform()
        if platform != "gpu":
            raise ValueError(
                "ModelConfig.attention_impl='cudnn' needs a GPU backend (cuDNN flash attention); "
                f"the program is being built for {platform!r}. Use 'xla' (any backend) or "
                "'pallas' (TPU)."
            )
        if q.dtype not in (jnp.bfloat16, jnp.float16):
            raise ValueError(
                "ModelConfig.attention_impl='cudnn' needs ModelConfig.dtype bfloat16 or float16 "
                f"(cuDNN has no float32 attention), got {q.dtype}"
            )
    bool_mask, is_causal = jax_nn_mask(mask)
    t, s = q.shape[1], k.shape[1]
    dk, dv = q.shape[-1], v.shape[-1]
    if dv != dk:
        v = jnp.pad(v, ((0, 0), (0, 0), (0, 0), (0, dk - dv)))
    pad_t, pad_s = t % 2, s % 2
    if pad_t or pad_s:
        q = jnp.pad(q, ((0, 0), (0, pad_t), (0, 0), (0, 0)))
        k = jnp.pad(k, ((0, 0), (0, pad_s), (0, 0), (0, 0)))
        v = jnp.pad(v, ((0, 0), (0, pad_s), (0, 0), (0, 0)))
        bool_mask = jnp.pad(bool_mask, ((0, 0), (0, 0), (0, pad_t), (0, pad_s)))
    out = jax.nn.dot_product_attention(
        q,
        k.astype(q.dtype),
        v.astype(q.dtype),
        mask=bool_mask,
        scale=float(scale),
        is_causal=is_causal,
        implementation=implementation,
    )
    return out[:, :t, :, :dv]


# ------------------------------------------------------------------ Pallas (TPU splash)
def pallas_block(length: int, block_size: int = 0) -> int:
    """The splash tile for `length` tokens: `block_size` when a positive multiple of LANES,
    else PALLAS_BLOCK; at most `length` rounded up to LANES."""
    block = block_size if block_size > 0 and block_size % LANES == 0 else PALLAS_BLOCK
    return min(block, -(-length // LANES) * LANES)


def pallas_interpret() -> bool:
    """Whether the Pallas kernel runs interpreted: on CPU (tests), not on TPU. Raises
    ValueError elsewhere (the kernel is Mosaic TPU code; GPUs take 'cudnn')."""
    platform = compute_platform()
    if platform == "tpu":
        return False
    if platform == "cpu":
        return True
    raise ValueError(
        "ModelConfig.attention_impl='pallas' runs a Pallas TPU kernel: it needs a TPU (or CPU, "
        f"interpreted, for tests); the program is being built for {platform!r}. Use 'cudnn' or "
        "'xla' on GPU."
    )


def _splash_kernel(heads: int, length: int, block: int, interpret: bool):
    """A splash-attention kernel for one example: q [heads, length, Dk], k [K, length, Dk],
    v [K, length, Dv] (K dividing heads), causal, with segment ids; fused backward. Built at
    each trace (its mask tables become constants of the program being traced; splash caches
    the numpy mask processing itself)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    sizes = splash.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        use_fused_bwd_kernel=True,
    )
    mask = splash.MultiHeadMask([splash.CausalMask((length, length))] * heads)
    return splash.make_splash_mha(
        mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
    )


def _splash(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_seg: jax.Array,
    kv_seg: jax.Array,
    block: int,
    interpret: bool,
) -> jax.Array:
    """q: [B, H, T, Dk] (pre-scaled), k: [B, K, T, Dk], v: [B, K, T, Dv], q_seg / kv_seg:
    int32[B, T] -> [B, H, T, Dv]: the splash kernel mapped over rows."""
    from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds

    kernel = _splash_kernel(q.shape[1], q.shape[2], block, interpret)

    def one(q, k, v, q_seg, kv_seg):
        return kernel(q, k, v, segment_ids=SegmentIds(q_seg, kv_seg))

    return jax.vmap(one)(q, k, v, q_seg, kv_seg)


def _mesh_axes(spec: PartitionSpec) -> object:
    return spec[0] if len(spec) else None


def pallas_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: attention_lib.AttentionMask,
    scale: float,
    block_size: int = 0,
    interpret: bool | None = None,
) -> jax.Array:
    """Causal self-attention within segments through Pallas splash attention (shapes as
    `attend`; the mask must be a `SegmentMask`).

    - Masks: causality is the kernel's static causal mask; packing is its segment ids, query
      and key ids apart: the keys' ids put padding keys in a segment of their own (one below
      the row's smallest id), so no query sees them, while each query keeps its own id (the
      dense mask's semantics). A query without any valid key (left padding) gets a finite
      average (splash leaves such rows undefined; see the module docstring).
    - GQA: splash's multi-head kernel takes K kv heads for H query heads natively.
    - MLA: splash takes Dv != Dk natively (no padding of v).
    - Scale: folded into q (in float32, then q's dtype); softmax in float32 inside the kernel.
    - Length: T is padded up to a multiple of the tile (`pallas_block`) and sliced back.
    - Sharding: under a mesh the kernel runs in a `jax.shard_map` whose batch / head axes are
      those the rules give "batch", "act_heads", "act_kv_heads" (XLA cannot partition a
      Pallas call); kv heads split unlike query heads are repeated to H first.
    interpret: None picks `pallas_interpret()` (CPU: interpreted, TPU: compiled Mosaic).
    """
    if not isinstance(mask, attention_lib.SegmentMask):
        raise ValueError(
            "ModelConfig.attention_impl='pallas' needs the factored SegmentMask (causal "
            "self-attention within segments, as Transformer.forward passes); got a dense "
            f"mask of shape {getattr(mask, 'shape', None)}. Use attention_impl='xla' for "
            "arbitrary dense masks."
        )
    if interpret is None:
        interpret = pallas_interpret()
    attention_lib.check_self_attention_shapes(q, k, v, "pallas_attention")
    b, t, h, _ = q.shape
    kh = k.shape[2]
    block = pallas_block(t, block_size)
    padded = -(-t // block) * block
    q_seg = mask.segment_ids.astype(jnp.int32)
    pad_id = jnp.min(q_seg, axis=1, keepdims=True) - 1
    kv_seg = jnp.where(mask.valid.astype(bool), q_seg, pad_id)
    if padded != t:
        widths = ((0, 0), (0, padded - t), (0, 0), (0, 0))
        q, k, v = jnp.pad(q, widths), jnp.pad(k, widths), jnp.pad(v, widths)
        tail = jnp.broadcast_to(pad_id, (b, padded - t))
        q_seg, kv_seg = (jnp.concatenate([x, tail], axis=1) for x in (q_seg, kv_seg))
    q = (q.astype(jnp.float32) * scale).astype(q.dtype)
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k.astype(q.dtype), v.astype(q.dtype)))

    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        out = _splash(q, k, v, q_seg, kv_seg, block, interpret)
    else:
        batch = _mesh_axes(logical_to_spec(("batch",), (b,), mesh))
        heads = _mesh_axes(logical_to_spec(("act_heads",), (h,), mesh))
        kv_heads = _mesh_axes(logical_to_spec(("act_kv_heads",), (kh,), mesh))
        if kv_heads != heads:  # e.g. fewer kv heads than tensor shards: one kv head per query
            k, v = jnp.repeat(k, h // kh, axis=1), jnp.repeat(v, h // kh, axis=1)
        head_spec, row_spec = PartitionSpec(batch, heads, None, None), PartitionSpec(batch, None)
        run = jax.shard_map(
            functools.partial(_splash, block=block, interpret=interpret),
            mesh=mesh,
            in_specs=(head_spec, head_spec, head_spec, row_spec, row_spec),
            out_specs=head_spec,
            check_vma=False,
        )
        out = run(q, k, v, q_seg, kv_seg)
    return jnp.swapaxes(out, 1, 2)[:, :t]
