"""The attention math the attention modules share: causal / packed masks (dense and factored),
dense grouped-query attention with a float32 softmax, and the blockwise (flash) form with a
recomputing backward."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from r1.loop_scopes import loop_scope

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


# ------------------------------------------------------------------ masks in factored form
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SegmentMask:
    """The mask of `make_attention_mask` in factored form: O(T) memory instead of O(T^2).

    segment_ids: int32[B, T]; valid: bool[B, T] (False at padding). Query t attends to key s
    when s <= t, segment_ids[s] == segment_ids[t] and valid[s]. Attention modules accept it
    wherever they accept a dense bool[B, T, T] mask; blockwise attention builds only the
    [block, block] tiles it needs from it.
    """

    segment_ids: jax.Array
    valid: jax.Array

    def dense(self) -> jax.Array:
        """bool[B, T, T], identical to `make_attention_mask(segment_ids, valid)`."""
        return make_attention_mask(self.segment_ids, self.valid)


AttentionMask = jax.Array | SegmentMask


def dense_mask(mask: AttentionMask) -> jax.Array:
    """bool[B, T, S] from either mask form."""
    return mask.dense() if isinstance(mask, SegmentMask) else mask


def use_blockwise(mask: AttentionMask, length: int, block_size: int) -> bool:
    """True when self-attention over `length` tokens should run blockwise: a factored mask,
    `block_size` > 0 and the sequence longer than one block."""
    return isinstance(mask, SegmentMask) and block_size > 0 and length > block_size


# ------------------------------------------------------------------ blockwise attention
# Blocked layouts: q [n, B, bs, K, G, Dk], k [n, B, bs, K, Dk], v [n, B, bs, K, Dv],
# segment ids / valid [n, B, bs], log-sum-exp [n, B, K, G, bs]; n = number of blocks.


def _tile_mask(seg, valid, i, j, bs: int) -> jax.Array:
    """bool[B, bs, bs] for query block i and key block j (causal by index within segments)."""
    q_idx = i * bs + jnp.arange(bs)
    k_idx = j * bs + jnp.arange(bs)
    causal = (q_idx[:, None] >= k_idx[None, :])[None]
    same = seg[i][:, :, None] == seg[j][:, None, :]
    return causal & same & valid[j][:, None, :]


def _tile_scores(q_i, k_j, mask, scale: float) -> jax.Array:
    """float32[B, K, G, bs_q, bs_k] scaled scores with MASK_VALUE where masked."""
    s = jnp.einsum("bqkgd,bskd->bkgqs", q_i, k_j, preferred_element_type=jnp.float32) * scale
    return jnp.where(mask[:, None, None], s, MASK_VALUE)


def _flash_forward(q, k, v, seg, valid, scale: float):
    n, b, bs, kh, g, _ = q.shape
    dv = v.shape[-1]

    def query_block(i):
        q_i = q[i]

        def body(j, carry):
            m, denom, acc = carry
            mask = _tile_mask(seg, valid, i, j, bs)
            s = _tile_scores(q_i, k[j], mask, scale)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))
            p = jnp.where(mask[:, None, None], jnp.exp(s - m_new[..., None]), 0.0)
            corr = jnp.exp(m - m_new)
            denom = denom * corr + jnp.sum(p, axis=-1)
            pv = jnp.einsum(
                "bkgqs,bskd->bkgqd", p.astype(v.dtype), v[j], preferred_element_type=jnp.float32
            )
            return m_new, denom, acc * corr[..., None] + pv

        init = (
            jnp.full((b, kh, g, bs), -jnp.inf, jnp.float32),
            jnp.zeros((b, kh, g, bs), jnp.float32),
            jnp.zeros((b, kh, g, bs, dv), jnp.float32),
        )
        with jax.named_scope(loop_scope("causal_key_tiles", (n + 1) / 2)):
            m, denom, acc = jax.lax.fori_loop(0, i + 1, body, init)  # causal: key blocks 0..i
        out = acc / jnp.maximum(denom, jnp.finfo(jnp.float32).tiny)[..., None]
        lse = m + jnp.log(denom)  # -inf for rows without a valid key
        return jnp.einsum("bkgqd->bqkgd", out).astype(q.dtype), lse

    return jax.lax.map(query_block, jnp.arange(n))


def _tile_probs(q_i, k_j, lse_i, mask, scale: float) -> jax.Array:
    s = _tile_scores(q_i, k_j, mask, scale)
    return jnp.where(mask[:, None, None], jnp.exp(s - lse_i[..., None]), 0.0)


def _flash_backward(q, k, v, seg, valid, out, lse, d_out, scale: float):
    n, _, bs = q.shape[:3]
    delta = jnp.einsum("nbqkgd,nbqkgd->nbkgq", d_out.astype(jnp.float32), out.astype(jnp.float32))

    def tile_grads(i, j):
        """dS (float32[B, K, G, bs, bs], already scaled) and P for tile (i, j)."""
        mask = _tile_mask(seg, valid, i, j, bs)
        p = _tile_probs(q[i], k[j], lse[i], mask, scale)
        dp = jnp.einsum("bqkgd,bskd->bkgqs", d_out[i], v[j], preferred_element_type=jnp.float32)
        return p * (dp - delta[i][..., None]) * scale, p

    def dq_block(i):
        def body(j, dq):
            ds, _ = tile_grads(i, j)
            return dq + jnp.einsum(
                "bkgqs,bskd->bqkgd", ds.astype(k.dtype), k[j], preferred_element_type=jnp.float32
            )

        with jax.named_scope(loop_scope("causal_key_tiles", (n + 1) / 2)):
            dq = jax.lax.fori_loop(0, i + 1, body, jnp.zeros(q.shape[1:], jnp.float32))
        return dq.astype(q.dtype)

    def dkv_block(j):
        def body(i, carry):
            dk, dv = carry
            ds, p = tile_grads(i, j)
            dk = dk + jnp.einsum(
                "bkgqs,bqkgd->bskd", ds.astype(q.dtype), q[i], preferred_element_type=jnp.float32
            )
            dv = dv + jnp.einsum(
                "bkgqs,bqkgd->bskd",
                p.astype(d_out.dtype),
                d_out[i],
                preferred_element_type=jnp.float32,
            )
            return dk, dv

        init = (jnp.zeros(k.shape[1:], jnp.float32), jnp.zeros(v.shape[1:], jnp.float32))
        with jax.named_scope(loop_scope("causal_query_tiles", (n + 1) / 2)):
            dk, dv = jax.lax.fori_loop(j, n, body, init)  # causal: query blocks j..n-1
        return dk.astype(k.dtype), dv.astype(v.dtype)

    dq = jax.lax.map(dq_block, jnp.arange(n))
    dk, dv = jax.lax.map(dkv_block, jnp.arange(n))
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q, k, v, seg, valid, scale: float):
    return _flash_forward(q, k, v, seg, valid, scale)[0]


def _flash_fwd(q, k, v, seg, valid, scale: float):
    out, lse = _flash_forward(q, k, v, seg, valid, scale)
    return out, (q, k, v, seg, valid, out, lse)


def _flash_bwd(scale: float, residuals, d_out):
    q, k, v, seg, valid, out, lse = residuals
    dq, dk, dv = _flash_backward(q, k, v, seg, valid, out, lse, d_out, scale)
    return dq, dk, dv, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def check_self_attention_shapes(q: jax.Array, k: jax.Array, v: jax.Array, where: str) -> None:
    """Raises unless q [B, T, H, Dk], k [B, T, K, Dk], v [B, T, K, Dv] with K dividing H
    (self-attention: keys at the queries' positions)."""
    b, t, h, _ = q.shape
    if k.shape[:2] != (b, t) or v.shape[:3] != k.shape[:3] or h % k.shape[2]:
        raise ValueError(
            f"{where}: q {q.shape}, k {k.shape}, v {v.shape} are not [B, T, H, D] / "
            "[B, T, K, D] with H a multiple of K (self-attention)"
        )


def blockwise_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: SegmentMask,
    scale: float,
    block_size: int,
) -> jax.Array:
    """Causal self-attention computed tile by tile (online softmax), never holding [T, T].

    q: float[B, T, H, Dk], k: float[B, T, K, Dk], v: float[B, T, K, Dv] with H a multiple of
    K (grouped-query); mask: the factored causal-within-segment mask; block_size: query and key
    tile length (T is padded up to a multiple of it). Returns float[B, T, H, Dv] in q's dtype.

    Equals `dot_product_attention(q, k, v, mask.dense(), scale)` up to float rounding for every
    query with at least one valid key; queries without one (e.g. left padding) return 0 instead
    of the dense path's uniform average, and pass no gradient. Key tiles after the query tile
    are skipped (causality). The backward pass (`jax.custom_vjp`) recomputes each tile from q,
    k, v and the saved float32 log-sum-exp [B, H, T], so memory is O(T * block) per layer.
    """
    if not isinstance(mask, SegmentMask):
        raise ValueError(f"blockwise_attention: mask must be a SegmentMask, got {type(mask)}")
    if block_size <= 0:
        raise ValueError(f"blockwise_attention: block_size must be > 0, got {block_size}")
    check_self_attention_shapes(q, k, v, "blockwise_attention")
    b, t, h, dk = q.shape
    kh = k.shape[2]
    n = -(-t // block_size)
    pad = n * block_size - t
    seg, valid = mask.segment_ids.astype(jnp.int32), mask.valid.astype(bool)
    if pad:
        widths = ((0, 0), (0, pad), (0, 0), (0, 0))
        q, k, v = jnp.pad(q, widths), jnp.pad(k, widths), jnp.pad(v, widths)
        seg = jnp.pad(seg, ((0, 0), (0, pad)), constant_values=-1)
        valid = jnp.pad(valid, ((0, 0), (0, pad)))

    def blocks(x):  # [B, n * bs, ...] -> [n, B, bs, ...]
        return jnp.moveaxis(x.reshape(b, n, block_size, *x.shape[2:]), 1, 0)

    qb = blocks(q).reshape(n, b, block_size, kh, h // kh, dk)
    out = _flash(qb, blocks(k), blocks(v), blocks(seg), blocks(valid), float(scale))
    out = jnp.moveaxis(out, 0, 1).reshape(b, n * block_size, h, v.shape[-1])
    return out[:, :t]
