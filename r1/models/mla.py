"""Multi-head Latent Attention (DeepSeek-V2/V3), matching transformers' `DeepseekV3Attention`.

Shapes: B batch, T query length, S key length, D hidden, H heads, N = qk_nope_head_dim,
R = qk_rope_head_dim, V = v_head_dim, C = kv_lora_rank, Q = q_lora_rank.

    q        = x @ q_proj                       (or q_b_proj(q_a_norm(x @ q_a_proj)))  [B,T,H,N+R]
    q_nope, q_rope = split(q);  q_rope = rope(q_rope)
    kv_latent = kv_a_norm(x @ kv_a_proj)                                              [B,S,C]
    k_rope    = rope(x @ k_rope_proj)           one rope key shared by all heads      [B,S,R]
    k_nope, v = split(kv_latent @ kv_b_proj)    W_UK = kv_b_proj[..., :N], W_UV = [..., N:]
    scores    = (q_nope . k_nope + q_rope . k_rope) * scale,  softmax in float32
    out       = (probs @ v) @ o_proj

Only `kv_latent` and `k_rope` (C + R values per token and layer) need caching: `attend_latent`
evaluates the same attention in the absorbed form, folding W_UK into the query and W_UV into
the output, so the per-head keys and values are never materialised.

Rope: with `cfg.rope_interleave` the rope channels are rotated as adjacent pairs (x[2i],
x[2i+1]) as DeepSeek's checkpoints store them; the rotated q_rope / k_rope come back in
half-split order (evens then odds), like transformers. Scores do not depend on that order.

Softmax scale: qk_head_dim^-0.5, times mscale(factor, mscale_all_dim)^2 when rope scaling is
not "default" and `mscale_all_dim` is set (transformers' `yarn_apply_mscale`; DeepSeek-V3:
192^-0.5 * (0.1 ln 40 + 1)^2). The YaRN cos/sin "attention factor" (mscale / mscale_all_dim
ratio) comes from `layers.rope_frequencies`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from r1.models.attention import (
    MASK_VALUE,
    AttentionMask,
    dense_mask,
    use_blockwise,
)
from r1.models.attention_kernels import attend
from r1.models.config import ModelConfig
from r1.models.layers import (
    RMSNorm,
    apply_rope,
    dtype_of,
    param,
    rope_cos_sin,
    rope_frequencies,
)
from r1.sharding import relayout, shard

# transformers and DeepSeek's reference build q_a_layernorm / kv_a_layernorm with the RMSNorm
# default eps (1e-6), not `config.rms_norm_eps`.
LATENT_NORM_EPS = 1e-6


def _yarn_get_mscale(scale: float, mscale: float) -> float:
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def mla_softmax_scale(cfg: ModelConfig) -> float:
    """qk_head_dim^-0.5, with DeepSeek's YaRN mscale_all_dim correction squared."""
    scale = cfg.qk_head_dim**-0.5
    rs = cfg.rope_scaling
    if rs is not None and rs.rope_type != "default" and rs.mscale_all_dim:
        m = _yarn_get_mscale(rs.factor, rs.mscale_all_dim)
        scale = scale * m * m
    return scale


# The absorbed attention's layout: where the decode's cache rows are.
_AT_CACHE = ("cache_batch", "length", "cache_heads", None)


def _masked_softmax(scores: jax.Array, mask: jax.Array) -> jax.Array:
    """scores: float32[B, H, T, S], mask: bool[B, T, S] -> float32 probabilities.

    Rows without any valid key get a uniform (finite) average, as in `dot_product_attention`.
    """
    scores = jnp.where(mask[:, None, :, :], scores, MASK_VALUE)
    return jax.nn.softmax(scores, axis=-1)


class MLAttention(nnx.Module):
    """Multi-head Latent Attention. `__call__(x, positions, mask)` like `attention.Attention`.

    Parameters (logical axes) and their transformers (`DeepseekV3Attention`) counterparts, where
    an `nn.Linear` weight W is [out, in] and y = x @ W.T:

      q_a_proj    [embed, q_lora]            = q_a_proj.weight.T                (q_lora_rank set)
      q_a_norm    RMSNorm weight [q_lora]    = q_a_layernorm.weight
      q_b_proj    [q_lora, heads, head_dim]  = q_b_proj.weight.T.reshape(Q, H, N + R)
      q_proj      [embed, heads, head_dim]   = q_proj.weight.T.reshape(D, H, N + R) (q_lora None)
      kv_a_proj   [embed, kv_lora]           = kv_a_proj_with_mqa.weight[:C].T
      k_rope_proj [embed, head_dim]          = kv_a_proj_with_mqa.weight[C:].T  (R columns)
      kv_a_norm   RMSNorm weight [kv_lora]   = kv_a_layernorm.weight
      kv_b_proj   [kv_lora, heads, head_dim] = kv_b_proj.weight.T.reshape(C, H, N + V)
      o_proj      [heads, head_dim, embed]   = o_proj.weight.T.reshape(H, V, D)

    transformers fuses kv_a_proj and k_rope_proj into `kv_a_proj_with_mqa` ([C + R, D]); they
    are split here so the latent and the rope key carry their own logical axes.

    With `cfg.fused_projections` the three projections that read x are one kernel, run as one
    GEMM: `qkv_a_proj` [embed, P + C + R] = [q_a_proj | kv_a_proj | k_rope_proj] (P = q_lora)
    or [q_proj flattened to H * (N + R) | kv_a_proj | k_rope_proj] (q_lora_rank None), its
    output axis unsharded; HF: the transposes of q_a_proj.weight (or q_proj.weight) and
    kv_a_proj_with_mqa.weight side by side. Biases then join the same way in `qkv_a_bias`
    [Q + C + R] (or [C + R]: the full-rank q_proj has none). With
    `cfg.attention_bias` (not used by DeepSeek checkpoints) the biases are q_a_bias [q_lora]
    (= q_a_proj.bias), kv_a_bias [kv_lora] and k_rope_bias [head_dim] (= the two parts of
    kv_a_proj_with_mqa.bias) and o_bias [embed] (= o_proj.bias); the full-rank q_proj has none.
    """

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        if cfg.attention_type != "mla":
            raise ValueError(
                f"ModelConfig.attention_type: MLAttention needs 'mla', got {cfg.attention_type!r}"
            )
        d, h = cfg.hidden_size, cfg.num_heads
        n, r, v, c = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
        pd = cfg.param_dtype
        self.dtype = cfg.dtype
        self.num_heads = h
        self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim = n, r, v
        self.kv_lora_rank = c
        self.q_lora_rank = cfg.q_lora_rank
        self.rope_interleave = cfg.rope_interleave
        self.use_bias = cfg.attention_bias
        self.fused = cfg.fused_projections
        # Width of the q part of the fused kernel: the q latent, or the flattened full-rank q.
        self.q_in_dim = cfg.q_lora_rank if cfg.q_lora_rank is not None else h * (n + r)
        if self.fused:
            self.qkv_a_proj = param(rngs, (d, self.q_in_dim + c + r), ("embed", None), pd)

        if cfg.q_lora_rank is not None:
            ql = cfg.q_lora_rank
            if not self.fused:
                self.q_a_proj = param(rngs, (d, ql), ("embed", "q_lora"), pd)
            self.q_a_norm = RMSNorm(ql, LATENT_NORM_EPS, pd, cfg.dtype)
            self.q_b_proj = param(rngs, (ql, h, n + r), ("q_lora", "heads", "head_dim"), pd)
            if self.use_bias and not self.fused:
                self.q_a_bias = param(None, (ql,), ("q_lora",), pd, init="zeros")
        elif not self.fused:
            self.q_proj = param(rngs, (d, h, n + r), ("embed", "heads", "head_dim"), pd)
        if not self.fused:
            self.kv_a_proj = param(rngs, (d, c), ("embed", "kv_lora"), pd)
            self.k_rope_proj = param(rngs, (d, r), ("embed", "head_dim"), pd)
        self.kv_a_norm = RMSNorm(c, LATENT_NORM_EPS, pd, cfg.dtype)
        self.kv_b_proj = param(rngs, (c, h, n + v), ("kv_lora", "heads", "head_dim"), pd)
        self.o_proj = param(rngs, (h, v, d), ("heads", "head_dim", "embed"), pd, fan_in=h * v)
        if self.use_bias and self.fused:
            q_bias = cfg.q_lora_rank or 0
            self.qkv_a_bias = param(None, (q_bias + c + r,), (None,), pd, init="zeros")
        if self.use_bias and not self.fused:
            self.kv_a_bias = param(None, (c,), ("kv_lora",), pd, init="zeros")
            self.k_rope_bias = param(None, (r,), ("head_dim",), pd, init="zeros")
        if self.use_bias:
            self.o_bias = param(None, (d,), ("embed",), pd, init="zeros")

        inv_freq, attention_factor = rope_frequencies(
            r, cfg.rope_theta, cfg.rope_scaling, cfg.max_position_embeddings
        )
        self.inv_freq = tuple(float(f) for f in inv_freq)
        self.rope_attention_factor = attention_factor
        self.scale = mla_softmax_scale(cfg)
        self.block_size = cfg.attention_block_size
        self.attention_impl = cfg.attention_impl
        self.use_decode_kernel = cfg.use_decode_kernel

    # ------------------------------------------------------------------ projections
    def _rope(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        """x: float[B, T, H, R] -> rotated, in half-split order when interleaved."""
        cos, sin = rope_cos_sin(
            positions, jnp.asarray(self.inv_freq, jnp.float32), self.rope_attention_factor
        )
        return apply_rope(x, cos, sin, interleaved=self.rope_interleave)

    def _fused_inputs(
        self, x: jax.Array, part: slice = slice(None)
    ) -> tuple[jax.Array | None, jax.Array | None, jax.Array | None]:
        """The fused projections of x: float[B, T, D] in one GEMM with the `part` columns of
        `qkv_a_proj` (all: the whole of it) -> (q input: the q latent [B, T, Q] or the full-rank
        q [B, T, H, N + R], kv latent [B, T, C] before its norm, rope key [B, T, R] before
        rope), biases added; the pieces outside `part` come back as None."""
        dt = dtype_of(self.dtype)
        p, c = self.q_in_dim, self.kv_lora_rank
        start, stop, _ = part.indices(p + c + self.qk_rope_head_dim)
        y = jnp.einsum("btd,de->bte", x, self.qkv_a_proj[...][:, start:stop].astype(dt))
        if self.use_bias:
            # The bias covers columns [offset, P + C + R): the full-rank q_proj has none.
            offset = 0 if self.q_lora_rank is not None else p
            lo = max(start, offset)
            if lo < stop:
                bias = self.qkv_a_bias[...][lo - offset : stop - offset].astype(dt)
                y = y + jnp.pad(bias, (lo - start, 0))[None, None, :]
        y = shard(y, ("batch", "length", None))
        bounds = ((0, p), (p, p + c), (p + c, p + c + self.qk_rope_head_dim))
        pieces = [
            y[..., lo - start : hi - start] if start <= lo and hi <= stop else None
            for lo, hi in bounds
        ]
        if pieces[0] is not None and self.q_lora_rank is None:
            b, t, _ = x.shape
            pieces[0] = pieces[0].reshape(b, t, self.num_heads, self.qk_head_dim)
        return pieces[0], pieces[1], pieces[2]

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def _queries_from(self, q_in: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """q_in: the biased q latent float[B, T, Q], or q float[B, T, H, N + R] (q_lora_rank
        None) -> (q_nope [B, T, H, N], q_rope [B, T, H, R] rotated)."""
        if self.q_lora_rank is not None:
            q_latent = self.q_a_norm(shard(q_in, ("batch", "length", None)))
            q = jnp.einsum(
                "btq,qhk->bthk", q_latent, self.q_b_proj[...].astype(dtype_of(self.dtype))
            )
        else:
            q = q_in
        q = shard(q, ("batch", "length", "act_heads", None))
        q_nope = q[..., : self.qk_nope_head_dim]
        q_rope = self._rope(q[..., self.qk_nope_head_dim :], positions)
        return q_nope, shard(q_rope, ("batch", "length", "act_heads", None))

    def _kv_from(
        self, kv_latent: jax.Array, k_rope: jax.Array, positions: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """The biased projections kv_latent float[B, T, C], k_rope float[B, T, R] -> the cache
        entry (kv_latent after kv_a_norm, k_rope rotated)."""
        kv_latent = self.kv_a_norm(kv_latent)
        k_rope = self._rope(k_rope[:, :, None, :], positions)[:, :, 0, :]
        kv_latent = shard(kv_latent, ("batch", "length", None))
        k_rope = shard(k_rope, ("batch", "length", None))
        return kv_latent, k_rope

    def queries(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x: float[B, T, D], positions: int32[B, T] -> (q_nope float[B, T, H, N],
        q_rope float[B, T, H, R] rotated)."""
        dt = dtype_of(self.dtype)
        if self.fused:
            q_in = self._fused_inputs(x, slice(0, self.q_in_dim))[0]
        elif self.q_lora_rank is not None:
            q_in = jnp.einsum("btd,dq->btq", x, self.q_a_proj[...].astype(dt))
            if self.use_bias:
                q_in = q_in + self.q_a_bias[...].astype(dt)[None, None, :]
        else:
            q_in = jnp.einsum("btd,dhk->bthk", x, self.q_proj[...].astype(dt))
        return self._queries_from(q_in, positions)

    def compress_kv(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The per-token cache entry.

        x: float[B, T, D], positions: int32[B, T] -> (kv_latent float[B, T, C] after kv_a_norm,
        k_rope float[B, T, R] rotated): C + R values per token and layer.
        """
        dt = dtype_of(self.dtype)
        if self.fused:
            _, kv_latent, k_rope = self._fused_inputs(x, slice(self.q_in_dim, None))
            return self._kv_from(kv_latent, k_rope, positions)
        kv_latent = jnp.einsum("btd,dc->btc", x, self.kv_a_proj[...].astype(dt))
        k_rope = jnp.einsum("btd,dr->btr", x, self.k_rope_proj[...].astype(dt))
        if self.use_bias:
            kv_latent = kv_latent + self.kv_a_bias[...].astype(dt)[None, None, :]
            k_rope = k_rope + self.k_rope_bias[...].astype(dt)[None, None, :]
        return self._kv_from(kv_latent, k_rope, positions)

    def project(
        self, x: jax.Array, positions: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """`queries` and `compress_kv` of x: float[B, T, D] -> (q_nope [B, T, H, N], q_rope
        [B, T, H, R], kv_latent [B, T, C], k_rope [B, T, R]); one GEMM of x with
        `fused_projections`."""
        if not self.fused:
            return (*self.queries(x, positions), *self.compress_kv(x, positions))
        q_in, kv_latent, k_rope = self._fused_inputs(x)
        return (*self._queries_from(q_in, positions), *self._kv_from(kv_latent, k_rope, positions))

    def output(self, attn: jax.Array) -> jax.Array:
        """attn: float[B, T, H, V] -> float[B, T, D]."""
        dt = dtype_of(self.dtype)
        out = jnp.einsum("bthv,hvd->btd", attn, self.o_proj[...].astype(dt))
        if self.use_bias:
            out = out + self.o_bias[...].astype(dt)[None, None, :]
        return shard(out, ("batch", "length", "act_embed"))

    def _split_kv_b(self) -> tuple[jax.Array, jax.Array]:
        """W_UK float[C, H, N] and W_UV float[C, H, V] in the compute dtype."""
        w = self.kv_b_proj[...].astype(dtype_of(self.dtype))
        return w[..., : self.qk_nope_head_dim], w[..., self.qk_nope_head_dim :]

    # ------------------------------------------------------------------ attention
    def attend_expanded(
        self,
        q_nope: jax.Array,
        q_rope: jax.Array,
        kv_latent: jax.Array,
        k_rope: jax.Array,
        mask: AttentionMask,
    ) -> jax.Array:
        """Naive form: expand the latent into per-head keys/values (training, prefill).

        q_nope: [B, T, H, N], q_rope: [B, T, H, R], kv_latent: [B, S, C], k_rope: [B, S, R],
        mask: bool[B, T, S], or a `SegmentMask` for self-attention (S = T) -> float[B, T, D].
        With `ModelConfig.attention_impl` "xla" a dense mask (or a T within
        `attention_block_size`) runs the einsums below, which never broadcast the shared rope
        key over heads, and a longer `SegmentMask` runs `blockwise_attention`; "cudnn" and
        "pallas" (and the blockwise path) take per-head keys [k_nope | k_rope] of Dk = N + R
        and values of V != Dk through `attention_kernels.attend`.
        """
        w_uk, w_uv = self._split_kv_b()
        k_nope = shard(
            jnp.einsum("bsc,chn->bshn", kv_latent, w_uk), ("batch", "length", "act_heads", None)
        )
        v = shard(
            jnp.einsum("bsc,chv->bshv", kv_latent, w_uv), ("batch", "length", "act_heads", None)
        )
        if self.attention_impl != "xla" or use_blockwise(mask, q_nope.shape[1], self.block_size):
            # One key per head: [k_nope | k_rope] with the shared rope key broadcast over heads.
            q = jnp.concatenate([q_nope, q_rope], axis=-1)
            rope_shape = (*k_nope.shape[:3], k_rope.shape[-1])
            k_rope_h = jnp.broadcast_to(k_rope[:, :, None, :], rope_shape)
            k = shard(
                jnp.concatenate([k_nope, k_rope_h.astype(k_nope.dtype)], axis=-1),
                ("batch", "length", "act_heads", None),
            )
            attn = attend(q, k, v, mask, self.scale, self.attention_impl, self.block_size)
            return self.output(shard(attn, ("batch", "length", "act_heads", None)))
        mask = dense_mask(mask)
        # The rope key is shared by all heads: no need to broadcast it into [B, S, H, R].
        scores = jnp.einsum(
            "bthn,bshn->bhts", q_nope, k_nope, preferred_element_type=jnp.float32
        ) + jnp.einsum("bthr,bsr->bhts", q_rope, k_rope, preferred_element_type=jnp.float32)
        probs = _masked_softmax(scores * self.scale, mask).astype(v.dtype)
        attn = jnp.einsum("bhts,bshv->bthv", probs, v)
        return self.output(shard(attn, ("batch", "length", "act_heads", None)))

    def attend_latent(
        self,
        q_nope: jax.Array,
        q_rope: jax.Array,
        kv_latent: jax.Array,
        k_rope: jax.Array,
        mask: AttentionMask,
    ) -> jax.Array:
        """Absorbed form over the latent cache (decoding).

        W_UK is folded into the query (q_latent = q_nope @ W_UK^T, a query in latent space) and
        W_UV into the output (attention-weighted latent, then W_UV, then o_proj), so the cost
        per cached token is C + R per head instead of N + V and nothing per head is cached.

        q_nope: [B, T, H, N], q_rope: [B, T, H, R] (rotated), kv_latent: [B, S, C],
        k_rope: [B, S, R] (rotated), mask: bool[B, T, S] -> float[B, T, D].
        """
        mask = dense_mask(mask)
        q_latent, q_rope = self.latent_queries(q_nope, q_rope)
        scores = jnp.einsum(
            "bthc,bsc->bhts", q_latent, kv_latent, preferred_element_type=jnp.float32
        ) + jnp.einsum("bthr,bsr->bhts", q_rope, k_rope, preferred_element_type=jnp.float32)
        probs = _masked_softmax(scores * self.scale, mask).astype(kv_latent.dtype)
        return self.latent_output(jnp.einsum("bhts,bsc->bthc", probs, kv_latent))

    def latent_queries(self, q_nope: jax.Array, q_rope: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The absorbed attention's queries where the cache rows are: q_nope [B, T, H, N],
        q_rope [B, T, H, R] -> q_latent [B, T, H, C] (q_nope @ W_UK^T), q_rope, laid out as
        ("cache_batch", "length", "cache_heads", None)."""
        w_uk, _ = self._split_kv_b()
        q_latent = jnp.einsum("bthn,chn->bthc", q_nope, w_uk)
        # The attention runs where the cache rows are (`cache_batch`); the projections on
        # either side may split rows differently (`r1.sharding.STATIONARY_DECODE_RULES`).
        q_latent = relayout(q_latent, ("batch", "length", "act_heads", "kv_lora"), _AT_CACHE)
        return q_latent, relayout(q_rope, ("batch", "length", "act_heads", None), _AT_CACHE)

    def latent_output(self, o_latent: jax.Array) -> jax.Array:
        """The attention-weighted latent [B, T, H, C], laid out where the cache rows are, ->
        float[B, T, D] (through W_UV and o_proj)."""
        _, w_uv = self._split_kv_b()
        o_latent = relayout(o_latent, _AT_CACHE, ("batch", "length", "act_heads", "kv_lora"))
        attn = jnp.einsum("bthc,chv->bthv", o_latent, w_uv)
        return self.output(shard(attn, ("batch", "length", "act_heads", None)))

    def __call__(self, x: jax.Array, positions: jax.Array, mask: AttentionMask) -> jax.Array:
        """x: float[B, T, D]; positions: int32[B, T]; mask: bool[B, T, T] or a `SegmentMask`
        -> float[B, T, D]."""
        q_nope, q_rope, kv_latent, k_rope = self.project(x, positions)
        return self.attend_expanded(q_nope, q_rope, kv_latent, k_rope, mask)
