"""Dense decoder behaviour: packing, padding, remat, dtypes, rope variants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1 import testing
from r1.models.config import ModelConfig, RopeScaling
from r1.models.layers import apply_rope, rope_frequencies
from r1.models.transformer import Transformer


def _model(**overrides):
    return Transformer(testing.tiny_dense_config(**overrides), rngs=nnx.Rngs(0))


def test_default_call_is_causal():
    model = _model()
    tokens = jnp.asarray(testing.random_tokens(0, 2, 10, 128))
    full = model(tokens)
    prefix = model(tokens[:, :6])
    np.testing.assert_allclose(full[:, :6], prefix, rtol=1e-5, atol=1e-5)
    assert full.shape == (2, 10, 128) and full.dtype == jnp.float32


def test_packed_segments_equal_separate_sequences():
    model = _model()
    a = testing.random_tokens(1, 1, 7, 128)
    b = testing.random_tokens(2, 1, 5, 128)
    packed = jnp.asarray(np.concatenate([a, b], axis=1))
    segment_ids = jnp.asarray([[1] * 7 + [2] * 5])
    positions = jnp.asarray([list(range(7)) + list(range(5))])
    out = model(packed, positions=positions, segment_ids=segment_ids)
    np.testing.assert_allclose(out[:, :7], model(jnp.asarray(a)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[:, 7:], model(jnp.asarray(b)), rtol=1e-5, atol=1e-5)


def test_left_padding_does_not_change_real_tokens():
    model = _model()
    real = testing.random_tokens(3, 1, 6, 128)
    padded = np.concatenate([np.zeros((1, 3), np.int32), real], axis=1)
    mask = np.array([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    out = model(
        jnp.asarray(padded), positions=jnp.asarray(positions), attention_mask=jnp.asarray(mask)
    )
    assert np.isfinite(np.asarray(out)).all()
    np.testing.assert_allclose(out[:, 3:], model(jnp.asarray(real)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("policy", ["full", "dots_saveable"])
def test_remat_gives_identical_gradients(policy):
    tokens = jnp.asarray(testing.random_tokens(4, 2, 9, 128))

    def grads(cfg):
        graphdef, state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))

        def loss(s):
            return jnp.mean(nnx.merge(graphdef, s)(tokens) ** 2)

        return jax.jit(jax.grad(loss))(state)

    base = grads(testing.tiny_dense_config())
    remat = grads(testing.tiny_dense_config(remat_policy=policy))
    for x, y in zip(jax.tree.leaves(base), jax.tree.leaves(remat)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_bfloat16_compute_with_float32_params():
    model = _model(dtype="bfloat16", param_dtype="float32")
    assert model.layers[0].mlp.gate[...].dtype == jnp.float32
    tokens = jnp.asarray(testing.random_tokens(5, 2, 8, 128))
    out = model(tokens)
    ref = _model()(tokens)
    assert out.dtype == jnp.float32
    assert float(jnp.abs(out - ref).max() / jnp.abs(ref).max()) < 5e-2


def test_tied_embeddings_have_no_lm_head():
    model = _model(tie_word_embeddings=True)
    assert not hasattr(model, "lm_head")
    params = nnx.state(model, nnx.Param)
    assert "lm_head" not in params


def test_rope_default_matches_closed_form():
    inv_freq, factor = rope_frequencies(8, 10000.0, None, 128)
    np.testing.assert_allclose(inv_freq, 1.0 / 10000.0 ** (np.arange(0, 8, 2) / 8), rtol=1e-6)
    assert factor == 1.0
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 3, 1, 8)), jnp.float32)
    positions = jnp.asarray([[0, 1, 2]])
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)[None, None, :]
    out = np.asarray(apply_rope(x, jnp.cos(angles), jnp.sin(angles)))
    xn = np.asarray(x)
    ang = np.asarray(angles)[0, :, :]
    x1, x2 = xn[0, :, 0, :4], xn[0, :, 0, 4:]
    expected = np.concatenate(
        [x1 * np.cos(ang) - x2 * np.sin(ang), x2 * np.cos(ang) + x1 * np.sin(ang)], -1
    )
    np.testing.assert_allclose(out[0, :, 0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[:, 0], x[:, 0], rtol=1e-6)  # position 0 is the identity


def test_llama3_and_yarn_frequencies_match_transformers():
    import transformers as transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    llama = transformers.LlamaConfig(
        hidden_size=128,
        num_attention_heads=2,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    )
    ref, ref_factor = ROPE_INIT_FUNCTIONS["llama3"](llama, None)
    ours, factor = rope_frequencies(
        64,
        500000.0,
        RopeScaling(
            "llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=64,
        ),
        2048,
    )
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-6)
    assert factor == ref_factor

    qwen = transformers.Qwen2Config(
        hidden_size=128,
        num_attention_heads=2,
        max_position_embeddings=4096,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024},
    )
    ref, ref_factor = ROPE_INIT_FUNCTIONS["yarn"](qwen, None)
    ours, factor = rope_frequencies(
        64,
        qwen.rope_parameters["rope_theta"],
        RopeScaling("yarn", factor=4.0, original_max_position_embeddings=1024),
        4096,
    )
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-6)
    assert abs(factor - ref_factor) < 1e-7


def test_config_rejects_bad_fields_by_name():
    with pytest.raises(ValueError, match="unknown field.*bogus"):
        ModelConfig.from_dict({"bogus": 1})
    with pytest.raises(TypeError, match="model.num_layers: expected int"):
        ModelConfig.from_dict({"num_layers": "four"})
    with pytest.raises(ValueError, match="num_kv_heads"):
        ModelConfig(num_heads=6, num_kv_heads=4)
    with pytest.raises(ValueError, match="rope_type"):
        ModelConfig.from_dict({"rope_scaling": {"rope_type": "ntk"}})
    cfg = ModelConfig.from_dict({"rope_scaling": {"rope_type": "yarn", "factor": 4}})
    assert cfg.rope_scaling.factor == 4.0
