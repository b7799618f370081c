"""Blockwise (flash-style) attention and chunked log-probs against their dense versions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1.models.attention import SegmentMask, blockwise_attention, dot_product_attention
from r1.models.transformer import Transformer
from r1.rl.grpo import chunked_token_logprobs, entropy_from_logits, token_logprobs
from r1.testing import tiny_dense_config, tiny_moe_config


def _mask_inputs(b: int, t: int):
    """Packed segments in row 0, left padding in row 1 (queries without any valid key)."""
    seg = np.ones((b, t), np.int32)
    seg[0, t // 3 :] = 2
    seg[0, 2 * t // 3 :] = 3
    valid = np.ones((b, t), bool)
    valid[1, :5] = False
    return SegmentMask(jnp.asarray(seg), jnp.asarray(valid)), valid


@pytest.mark.parametrize("block,heads,kv_heads", [(4, 4, 2), (8, 2, 2), (16, 4, 2)])
def test_blockwise_matches_dense_values_and_grads(block, heads, kv_heads):
    b, t, dk, dv = 2, 21, 8, 6  # t not a multiple of the block: padded tiles
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (b, t, heads, dk))
    k = jax.random.normal(keys[1], (b, t, kv_heads, dk))
    v = jax.random.normal(keys[2], (b, t, kv_heads, dv))
    w = jax.random.normal(keys[3], (b, t, heads, dv))
    mask, valid = _mask_inputs(b, t)
    has_key = jnp.asarray(valid)[:, :, None, None]  # a valid query has itself as a key
    scale = dk**-0.5

    def loss(fn, q, k, v):
        out = fn(q, k, v)
        return jnp.sum(jnp.where(has_key, out * w, 0.0)), out

    dense = lambda q, k, v: dot_product_attention(q, k, v, mask.dense(), scale)
    block_fn = lambda q, k, v: blockwise_attention(q, k, v, mask, scale, block)
    (l_d, out_d), g_d = jax.value_and_grad(lambda *a: loss(dense, *a), (0, 1, 2), has_aux=True)(
        q, k, v
    )
    (l_b, out_b), g_b = jax.jit(
        jax.value_and_grad(lambda *a: loss(block_fn, *a), (0, 1, 2), has_aux=True)
    )(q, k, v)
    sel = np.broadcast_to(valid[:, :, None, None], out_d.shape)
    np.testing.assert_allclose(np.asarray(out_b)[sel], np.asarray(out_d)[sel], atol=2e-5)
    assert np.all(np.asarray(out_b)[~sel] == 0.0)  # queries without a valid key: zeros
    np.testing.assert_allclose(float(l_b), float(l_d), rtol=1e-5)
    for name, gb, gd in zip("qkv", g_b, g_d):
        np.testing.assert_allclose(np.asarray(gb), np.asarray(gd), atol=5e-5, err_msg=name)


def test_blockwise_rejects_a_dense_mask():
    q = jnp.zeros((1, 8, 2, 4))
    with pytest.raises(ValueError, match="SegmentMask"):
        blockwise_attention(q, q, q, jnp.ones((1, 8, 8), bool), 1.0, 4)
    with pytest.raises(ValueError, match="block_size"):
        mask = SegmentMask(jnp.ones((1, 8), jnp.int32), jnp.ones((1, 8), bool))
        blockwise_attention(q, q, q, mask, 1.0, 0)


@pytest.mark.parametrize(
    "make_cfg", [tiny_dense_config, pytest.param(tiny_moe_config, marks=pytest.mark.slow)]
)
def test_model_blockwise_equals_dense(make_cfg):
    """The whole model (GQA or MLA + MoE) with attention_block_size set: same logits and
    gradients as the dense path, with padding and packed segments."""
    t = 19
    dense_cfg = make_cfg()
    model = Transformer(dense_cfg, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    block_model = Transformer(dense_cfg.replace(attention_block_size=8), rngs=nnx.Rngs(0))
    block_graphdef = nnx.graphdef(block_model)
    tokens = jax.random.randint(jax.random.key(1), (2, t), 0, dense_cfg.vocab_size)
    mask, valid = _mask_inputs(2, t)
    kwargs = dict(segment_ids=mask.segment_ids, attention_mask=mask.valid)
    weights = jax.random.normal(jax.random.key(2), (2, t, dense_cfg.vocab_size))

    def loss(gd, p):
        logits = nnx.merge(gd, p, rest)(tokens, **kwargs)
        return jnp.sum(jnp.where(jnp.asarray(valid)[..., None], logits * weights, 0.0)), logits

    (l_d, lg_d), g_d = jax.jit(jax.value_and_grad(lambda p: loss(graphdef, p), has_aux=True))(
        params
    )
    (l_b, lg_b), g_b = jax.jit(jax.value_and_grad(lambda p: loss(block_graphdef, p), has_aux=True))(
        params
    )
    np.testing.assert_allclose(np.asarray(lg_b)[valid], np.asarray(lg_d)[valid], atol=1e-4)
    np.testing.assert_allclose(float(l_b), float(l_d), rtol=1e-4)
    for gb, gd in zip(jax.tree.leaves(g_b), jax.tree.leaves(g_d)):
        np.testing.assert_allclose(np.asarray(gb), np.asarray(gd), atol=2e-4, rtol=2e-3)


@pytest.mark.parametrize("chunk", [0, 5])
def test_chunked_token_logprobs_matches_full(chunk):
    b, t, d, vocab = 2, 13, 8, 32
    keys = jax.random.split(jax.random.key(3), 4)
    hidden = jax.random.normal(keys[0], (b, t, d))
    w = jax.random.normal(keys[1], (d, vocab))
    targets = jax.random.randint(keys[2], (b, t), 0, vocab)
    coef = jax.random.normal(keys[3], (2, b, t))

    def unembed(h, w):
        return jnp.einsum("btd,dv->btv", h, w)

    def full(h, w):
        logits = unembed(h, w)
        return token_logprobs(logits, targets), entropy_from_logits(logits)

    def chunked(h, w):
        return chunked_token_logprobs(h, lambda x: unembed(x, w), targets, chunk)

    def loss(fn, h, w):
        logp, ent = fn(h, w)
        return jnp.sum(logp * coef[0] + ent * coef[1]), (logp, ent)

    (l_f, (lp_f, e_f)), g_f = jax.value_and_grad(lambda *a: loss(full, *a), (0, 1), has_aux=True)(
        hidden, w
    )
    (l_c, (lp_c, e_c)), g_c = jax.jit(
        jax.value_and_grad(lambda *a: loss(chunked, *a), (0, 1), has_aux=True)
    )(hidden, w)
    np.testing.assert_allclose(np.asarray(lp_c), np.asarray(lp_f), atol=1e-5)
    np.testing.assert_allclose(np.asarray(e_c), np.asarray(e_f), atol=1e-5)
    for gc, gf in zip(g_c, g_f):
        np.testing.assert_allclose(np.asarray(gc), np.asarray(gf), atol=1e-4)


def test_chunked_token_logprobs_temperature_and_errors():
    hidden = jax.random.normal(jax.random.key(0), (1, 6, 4))
    w = jax.random.normal(jax.random.key(1), (4, 10))
    targets = jnp.arange(6)[None] % 10
    unembed = lambda h: jnp.einsum("btd,dv->btv", h, w)
    logp, ent = chunked_token_logprobs(hidden, unembed, targets, 4, temperature=0.7)
    logits = unembed(hidden)
    np.testing.assert_allclose(
        np.asarray(logp), np.asarray(token_logprobs(logits, targets, temperature=0.7)), atol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(ent), np.asarray(entropy_from_logits(logits, temperature=0.7)), atol=1e-5
    )
    with pytest.raises(ValueError, match="targets"):
        chunked_token_logprobs(hidden, unembed, targets[:, :5], 4)
    with pytest.raises(ValueError, match="chunk"):
        chunked_token_logprobs(hidden, unembed, targets, -1)


@pytest.mark.parametrize("mesh_shape", [None, dict(fsdp=2, expert=2, tensor=2)])
def test_moe_token_chunks_match_unchunked(devices, mesh_shape):
    """moe_token_chunk_size: same outputs and gradients, with and without expert parallelism
    (a chunk that does not divide the local token count, so the last chunk is padded)."""
    from r1 import sharding
    from r1.models.moe import MoE

    cfg = tiny_moe_config(hidden_size=32, moe_intermediate_size=16)
    x = jax.random.normal(jax.random.key(0), (4, 10, 32))
    token_mask = jnp.asarray(np.arange(10)[None] >= np.array([0, 2, 0, 5])[:, None])

    def run(chunk):
        module = MoE(cfg.replace(moe_token_chunk_size=chunk), nnx.Rngs(0))
        graphdef, params, rest = nnx.split(module, nnx.Param, ...)

        def loss(p, x):
            y, _ = nnx.merge(graphdef, p, rest)(x, token_mask)
            return jnp.sum(y * jnp.cos(x)), y

        fn = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))
        if mesh_shape is None:
            return fn(params, x)
        mesh = sharding.make_mesh(sharding.MeshConfig(**mesh_shape), devices)
        with sharding.use_mesh(mesh):
            return fn(sharding.place_state(params, mesh), x)

    (l0, y0), g0 = run(0)
    (l1, y1), g1 = run(3)
    np.testing.assert_allclose(np.asarray(y1), np.asarray(y0), atol=1e-5)
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
