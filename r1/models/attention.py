"""Attention: grouped-query attention (Llama, Qwen2) with optional q/k/v bias."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from r1.models.config import ModelConfig
from r1.models.layers import apply_rope, dtype_of, param, rope_cos_sin, rope_frequencies
from r1.sharding import shard

MASK_VALUE = -1e30


def make_attention_mask(
    segment_ids: jax.Array, attention_mask: jax.Array | None = None
) -> jax.Array:
    """Causal mask within segments: bool[B, T, T], True where query t may attend to key s.

    segment_ids: int32[B, T]; tokens attend only to earlier tokens of the same segment id
    (packing). attention_mask: bool/int[B, T] with 0 at padding; padding keys are never
    attended to.
    """
    t = segment_ids.shape[1]
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))[None]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    mask = causal & same
    if attention_mask is not None:
        mask = mask & attention_mask.astype(bool)[:, None, :]
    return mask


def dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float
) -> jax.Array:
    """Grouped-query attention with float32 softmax.

    q: float[B, T, H, Dk], k: float[B, S, K, Dk], v: float[B, S, K, Dv] with H a multiple of K;
    mask: bool[B, T, S]. Returns float[B, T, H, Dv] in q's dtype. Rows with no valid key get a
    uniform (finite) average instead of NaN.
    """
    b, t, h, dk = q.shape
    kv_heads = k.shape[2]
    groups = h // kv_heads
    qg = q.reshape(b, t, kv_heads, groups, dk)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32)
    scores = scores * scale
    scores = jnp.where(mask[:, None, None, :, :], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h, v.shape[-1])


class Attention(nnx.Module):
    """Grouped-query self-attention with rotary embeddings (rotate-half convention).

    Parameters: q [embed, heads, head_dim], k/v [embed, kv_heads, head_dim], o [heads, head_dim,
    embed], optional q/k/v biases (Qwen2).
    """

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, h, kv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        pd = cfg.param_dtype
        self.dtype = cfg.dtype
        self.num_heads, self.num_kv_heads, self.head_dim = h, kv, hd
        self.q_proj = param(rngs, (d, h, hd), ("embed", "heads", "head_dim"), pd)
        self.k_proj = param(rngs, (d, kv, hd), ("embed", "kv_heads", "head_dim"), pd)
        self.v_proj = param(rngs, (d, kv, hd), ("embed", "kv_heads", "head_dim"), pd)
        self.o_proj = param(rngs, (h, hd, d), ("heads", "head_dim", "embed"), pd, fan_in=h * hd)
        self.use_bias = cfg.attention_bias
        if cfg.attention_bias:
            self.q_bias = param(None, (h, hd), ("heads", "head_dim"), pd, init="zeros")
            self.k_bias = param(None, (kv, hd), ("kv_heads", "head_dim"), pd, init="zeros")
            self.v_bias = param(None, (kv, hd), ("kv_heads", "head_dim"), pd, init="zeros")
        inv_freq, attention_factor = rope_frequencies(
            hd, cfg.rope_theta, cfg.rope_scaling, cfg.max_position_embeddings
        )
        self.inv_freq = tuple(float(f) for f in inv_freq)
        self.rope_attention_factor = attention_factor
        self.scale = hd**-0.5

    def project_qkv(
        self, x: jax.Array, positions: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x: float[B, T, D], positions: int32[B, T] -> rotated q [B,T,H,hd], k, v [B,T,K,hd]."""
        dt = dtype_of(self.dtype)
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

    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
        """x: float[B, T, D]; positions: int32[B, T]; mask: bool[B, T, T] -> float[B, T, D]."""
        q, k, v = self.project_qkv(x, positions)
        attn = dot_product_attention(q, k, v, mask, self.scale)
        return self.output(attn)
