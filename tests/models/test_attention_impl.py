"""ModelConfig.attention_impl: the Pallas splash kernel (interpret mode on CPU) and the cuDNN
call's semantics (jax.nn.dot_product_attention with implementation="xla") against the XLA path,
alone, sharded, inside the model and the sampler's prefill, and inside a TPU-compiled step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1 import sharding
from r1.models import attention_kernels as kernels
from r1.models.attention import SegmentMask, dot_product_attention
from r1.models.transformer import Transformer
from r1.sampling.kv_cache import forward_with_cache, init_cache
from r1.testing import random_tokens, tiny_dense_config, tiny_moe_config

B, T = 4, 80  # T not a multiple of the 128-lane tile: the kernel pads and slices back


def _mask(b: int = B, t: int = T) -> SegmentMask:
    """Two packed segments per row plus right padding (rows 0, 2) and left padding (row 1)."""
    seg = np.ones((b, t), np.int32)
    seg[:, t // 2 :] = 2
    valid = np.ones((b, t), bool)
    valid[0, t - 7 :] = False
    valid[1, :5] = False
    valid[2, t - 1 :] = False
    return SegmentMask(jnp.asarray(seg), jnp.asarray(valid))


def _qkv(h: int, kh: int, dk: int, dv: int, dtype=jnp.float32, seed: int = 0):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(kq, (B, T, h, dk), dtype)
    k = jax.random.normal(kk, (B, T, kh, dk), dtype)
    v = jax.random.normal(kv, (B, T, kh, dv), dtype)
    return q, k, v


def _rows_with_keys(mask: SegmentMask) -> np.ndarray:
    """bool[B, T]: queries with at least one valid key (the rows every impl agrees on)."""
    return np.asarray(jnp.any(mask.dense(), axis=-1))


# (heads, kv heads, qk dim, v dim): GQA and MLA-shaped (v dim != qk dim, one kv head per head)
SHAPES = {"gqa": (4, 2, 16, 16), "mla": (4, 4, 24, 16)}


@pytest.mark.parametrize("shape", ["gqa", "mla"])
def test_pallas_matches_xla_forward_and_gradients(shape):
    h, kh, dk, dv = SHAPES[shape]
    q, k, v = _qkv(h, kh, dk, dv)
    mask, scale = _mask(), dk**-0.5
    rows = jnp.asarray(_rows_with_keys(mask), jnp.float32)[:, :, None, None]
    w = jax.random.normal(jax.random.key(1), (B, T, h, dv))

    def loss(impl):
        def f(q, k, v):
            out = kernels.attend(q, k, v, mask, scale, impl)
            return jnp.sum(out * w * rows), out

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(q, k, v)

    (_, out_x), grads_x = loss("xla")
    (_, out_p), grads_p = loss("pallas")
    assert out_p.shape == (B, T, h, dv) and out_p.dtype == q.dtype
    keep = _rows_with_keys(mask)
    np.testing.assert_allclose(np.asarray(out_p)[keep], np.asarray(out_x)[keep], atol=2e-5)
    for name, gp, gx in zip("qkv", grads_p, grads_x):
        np.testing.assert_allclose(np.asarray(gp), np.asarray(gx), atol=5e-5, err_msg=name)


def test_pallas_bfloat16_and_sharded_over_the_mesh(devices):
    """bf16 inputs; on the 8-device mesh (batch over data x fsdp, heads over tensor) the
    kernel runs in a shard_map per shard and equals the unsharded call. MQA (1 kv head, which
    the tensor axis cannot split) repeats the kv heads to match the query heads' sharding."""
    mask = _mask()
    keep = _rows_with_keys(mask)
    q, k, v = _qkv(4, 2, 16, 16, jnp.bfloat16)
    ref = dot_product_attention(q, k, v, mask.dense(), 0.25)
    out = jax.jit(lambda q, k, v: kernels.attend(q, k, v, mask, 0.25, "pallas"))(q, k, v)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.asarray(out, np.float32)[keep], np.asarray(ref, np.float32)[keep], atol=3e-2
    )
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2), devices)
    for kh in (2, 1):
        q, k, v = _qkv(4, kh, 16, 16, seed=kh)
        single = jax.jit(lambda q, k, v: kernels.attend(q, k, v, mask, 0.25, "pallas"))(q, k, v)
        with sharding.use_mesh(mesh):
            sharded = jax.jit(lambda q, k, v: kernels.attend(q, k, v, mask, 0.25, "pallas"))(
                q, k, v
            )
        np.testing.assert_allclose(np.asarray(sharded), np.asarray(single), atol=1e-6)


@pytest.mark.parametrize("shape", ["gqa", "mla"])
def test_the_cudnn_call_means_our_attention(shape):
    """The exact jax.nn.dot_product_attention call the cudnn impl makes (mask form, is_causal,
    GQA heads, MLA's padded values, even-length padding), run by jax's XLA implementation."""
    h, kh, dk, dv = SHAPES[shape]
    q, k, v = _qkv(h, kh, dk, dv)
    q, k, v = q[:, :-1], k[:, :-1], v[:, :-1]  # odd T
    mask = SegmentMask(_mask().segment_ids[:, :-1], _mask().valid[:, :-1])
    scale = dk**-0.5
    ref = dot_product_attention(q, k, v, mask.dense(), scale)
    keep = _rows_with_keys(mask)
    for form in (mask, mask.dense()):
        out = kernels.cudnn_attention(q, k, v, form, scale, implementation="xla")
        assert out.shape == ref.shape
        np.testing.assert_allclose(np.asarray(out)[keep], np.asarray(ref)[keep], atol=1e-5)


def test_cudnn_off_gpu_and_pallas_with_a_dense_mask_raise_naming_the_field():
    q, k, v = _qkv(4, 2, 16, 16, jnp.bfloat16)
    mask = _mask()
    with pytest.raises(ValueError, match=r"attention_impl='cudnn' needs a GPU backend"):
        kernels.attend(q, k, v, mask, 0.25, "cudnn")
    with pytest.raises(ValueError, match=r"attention_impl='pallas' needs the factored"):
        kernels.attend(q, k, v, mask.dense(), 0.25, "pallas")
    with pytest.raises(ValueError, match=r"attention_impl"):
        kernels.attend(q, k, v, mask, 0.25, "flash")


@pytest.mark.parametrize("kind", ["gqa", "mla"])
def test_transformer_and_prefill_with_pallas_equal_xla(kind):
    """A tiny model's forward (packed segments + padding) and the sampler's prefill over a
    left-padded prompt cache give the same logits with attention_impl='pallas' as with 'xla'."""
    make = tiny_dense_config if kind == "gqa" else tiny_moe_config
    cfg = make(num_layers=2, num_mtp_layers=0) if kind == "mla" else make()
    tokens = jnp.asarray(random_tokens(0, B, T, cfg.vocab_size))
    mask = _mask()
    keep = _rows_with_keys(mask)
    models = {
        impl: Transformer(cfg.replace(attention_impl=impl), rngs=nnx.Rngs(0))
        for impl in ("xla", "pallas")
    }
    logits = {
        impl: nnx.jit(lambda m, t: m(t, segment_ids=mask.segment_ids, attention_mask=mask.valid))(
            model, tokens
        )
        for impl, model in models.items()
    }
    np.testing.assert_allclose(
        np.asarray(logits["pallas"])[keep], np.asarray(logits["xla"])[keep], atol=1e-4
    )
    prompt_mask = jnp.arange(T)[None, :] >= jnp.asarray([0, 3, 9, 0])[:, None]
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0).astype(jnp.int32)
    prefill = {}
    for impl, model in models.items():
        cache = init_cache(cfg, B, T + 4)
        prefill[impl] = nnx.jit(
            lambda m, t, c: forward_with_cache(m, t, positions, prompt_mask, c, 0)
        )(model, tokens, cache)
    rows = np.asarray(prompt_mask)
    np.testing.assert_allclose(
        np.asarray(prefill["pallas"][0])[rows], np.asarray(prefill["xla"][0])[rows], atol=1e-4
    )


def test_sft_step_compiled_for_tpu_runs_the_pallas_kernel():
    """The SFT trainer's real step (MLA + MoE, fsdp over v5e:2x2) with attention_impl='pallas'
    compiles for a TPU topology with the splash kernel inside: the compiled HLO holds the Mosaic
    custom calls, forward and fused backward, for each attention layer (about 6 s here)."""
    pytest.importorskip("libtpu", reason="needs the tpu extra: pip install -e .[tpu]")
    from r1 import aot, configlib

    config = configlib.load_config("configs/sft.py:tiny")
    config.model.attention_impl = "pallas"
    config.model.num_layers = 2
    mesh = aot.build_mesh(config, aot.topology_devices("v5e:2x2"))
    program = aot.sft_program(config, mesh)
    with sharding.use_mesh(mesh):
        lowered = program.step.lower(*program.args())
    assert "tpu_custom_call" in lowered.as_text()
    hlo = lowered.compile().as_text()
    calls = [line for line in hlo.splitlines() if 'custom_call_target="tpu_custom_call"' in line]
    layers = int(config.model.num_layers)
    assert sum("splash_mha_fwd" in line for line in calls) >= layers, calls
    assert sum("splash_mha_dkv" in line for line in calls) >= layers, calls
