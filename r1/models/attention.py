"""Attention: grouped-query attention (Llama, Qwen2) with optional q/k/v bias. The shared math
(masks, dense and blockwise attention) lives in `r1.models.attention_core` and is re-exported
here; `r1.models.attention_kernels.attend` picks the kernel (`ModelConfig.attention_impl`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from r1.models.attention_core import (
    MASK_VALUE,
    AttentionMask,
    SegmentMask,
    blockwise_attention,
    dense_mask,
    dot_product_attention,
    make_attention_mask,
    use_blockwise,
)
from r1.models.attention_kernels import attend
from r1.models.config import ModelConfig
from r1.models.layers import apply_rope, dtype_of, param, rope_cos_sin, rope_frequencies
from r1.sharding import shard

__all__ = [
    "MASK_VALUE",
    "Attention",
    "AttentionMask",
    "SegmentMask",
    "blockwise_attention",
    "dense_mask",
    "dot_product_attention",
    "make_attention_mask",
    "use_blockwise",
]


class Attention(nnx.Module):
    """Grouped-query self-attention with rotary embeddings (rotate-half convention).

    Parameters: q [embed, heads, head_dim], k/v [embed, kv_heads, head_dim], o [heads, head_dim,
    embed], optional q/k/v biases (Qwen2). With `cfg.fused_projections` q, k and v are one
    kernel `qkv_proj` [embed, kv_heads, groups + 2, head_dim] (groups = heads // kv_heads; along
    the third axis: the kv head's `groups` query heads, then its key, then its value; query head
    h = kv_head * groups + g, the order `dot_product_attention` groups heads in) and the biases
    one `qkv_bias` [kv_heads, groups + 2, head_dim]: sharding over kv heads keeps each query
    group with its key and value, and the three projections run as one GEMM.
    """

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, h, kv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        pd = cfg.param_dtype
        self.dtype = cfg.dtype
        self.num_heads, self.num_kv_heads, self.head_dim = h, kv, hd
        self.fused = cfg.fused_projections
        groups = h // kv
        if self.fused:
            self.qkv_proj = param(
                rngs, (d, kv, groups + 2, hd), ("embed", "kv_heads", None, "head_dim"), pd
            )
        else:
            self.q_proj = param(rngs, (d, h, hd), ("embed", "heads", "head_dim"), pd)
            self.k_proj = param(rngs, (d, kv, hd), ("embed", "kv_heads", "head_dim"), pd)
            self.v_proj = param(rngs, (d, kv, hd), ("embed", "kv_heads", "head_dim"), pd)
        self.o_proj = param(rngs, (h, hd, d), ("heads", "head_dim", "embed"), pd, fan_in=h * hd)
        self.use_bias = cfg.attention_bias
        if cfg.attention_bias and self.fused:
            self.qkv_bias = param(
                None, (kv, groups + 2, hd), ("kv_heads", None, "head_dim"), pd, init="zeros"
            )
        elif cfg.attention_bias:
            self.q_bias = param(None, (h, hd), ("heads", "head_dim"), pd, init="zeros")
            self.k_bias = param(None, (kv, hd), ("kv_heads", "head_dim"), pd, init="zeros")
            self.v_bias = param(None, (kv, hd), ("kv_heads", "head_dim"), pd, init="zeros")
        inv_freq, attention_factor = rope_frequencies(
            hd, cfg.rope_theta, cfg.rope_scaling, cfg.max_position_embeddings
        )
        self.inv_freq = tuple(float(f) for f in inv_freq)
        self.rope_attention_factor = attention_factor
        self.scale = hd**-0.5
        self.block_size = cfg.attention_block_size
        self.attention_impl = cfg.attention_impl
        self.use_decode_kernel = cfg.use_decode_kernel

    def _fused_qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x: float[B, T, D] -> q [B, T, H, hd], k, v [B, T, K, hd] (biased, not rotated) from
        one GEMM with `qkv_proj` [D, K, G + 2, hd]."""
        dt = dtype_of(self.dtype)
        b, t, _ = x.shape
        groups = self.num_heads // self.num_kv_heads
        qkv = jnp.einsum("btd,dkgh->btkgh", x, self.qkv_proj[...].astype(dt))
        if self.use_bias:
            qkv = qkv + self.qkv_bias[...].astype(dt)[None, None]
        qkv = shard(qkv, ("batch", "length", "act_kv_heads", None, None))
        q = qkv[:, :, :, :groups].reshape(b, t, self.num_heads, self.head_dim)
        return q, qkv[:, :, :, groups], qkv[:, :, :, groups + 1]

    def project_qkv(
        self, x: jax.Array, positions: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x: float[B, T, D], positions: int32[B, T] -> rotated q [B,T,H,hd], k, v [B,T,K,hd]."""
        dt = dtype_of(self.dtype)
        if self.fused:
            q, k, v = self._fused_qkv(x)
        else:
            q = jnp.einsum("btd,dhk->bthk", x, self.q_proj[...].astype(dt))
            k = jnp.einsum("btd,dhk->bthk", x, self.k_proj[...].astype(dt))
            v = jnp.einsum("btd,dhk->bthk", x, self.v_proj[...].astype(dt))
            if self.use_bias:
                q = q + self.q_bias[...].astype(dt)[None, None]
                k = k + self.k_bias[...].astype(dt)[None, None]
                v = v + self.v_bias[...].astype(dt)[None, None]
        cos, sin = rope_cos_sin(
            positions, jnp.asarray(self.inv_freq, jnp.float32), self.rope_attention_factor
        )
        q = shard(apply_rope(q, cos, sin), ("batch", "length", "act_heads", None))
        k = shard(apply_rope(k, cos, sin), ("batch", "length", "act_kv_heads", None))
        v = shard(v, ("batch", "length", "act_kv_heads", None))
        return q, k, v

    def output(self, attn: jax.Array) -> jax.Array:
        """attn: float[B, T, H, hd] -> float[B, T, D]."""
        return jnp.einsum("bthk,hkd->btd", attn, self.o_proj[...].astype(dtype_of(self.dtype)))

    def __call__(self, x: jax.Array, positions: jax.Array, mask: AttentionMask) -> jax.Array:
        """x: float[B, T, D]; positions: int32[B, T]; mask: bool[B, T, T] or a `SegmentMask`
        -> float[B, T, D]. The attention runs through `ModelConfig.attention_impl`
        (`attention_kernels.attend`; "xla": blockwise when longer than
        `ModelConfig.attention_block_size`)."""
        # Imported here: attention_kernels builds on this module's functions.
        q, k, v = self.project_qkv(x, positions)
        attn = attend(q, k, v, mask, self.scale, self.attention_impl, self.block_size)
        return self.output(shard(attn, ("batch", "length", "act_heads", None)))
