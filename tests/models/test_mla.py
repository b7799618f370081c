"""Multi-head Latent Attention: parity with transformers' DeepseekV3Attention, the absorbed
latent-cache path, the cache size, sharded execution and the YaRN frequencies."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch as torch
import transformers.models.deepseek_v3.modeling_deepseek_v3 as hf_ds3
from flax import nnx
from transformers import DeepseekV3Config  # noqa: E402
from transformers.modeling_rope_utils import _compute_yarn_parameters  # noqa: E402

import r1.sharding
from r1.models.attention import make_attention_mask
from r1.models.config import RopeScaling
from r1.models.layers import rope_frequencies
from r1.models.mla import MLAttention, mla_softmax_scale
from r1.testing import tiny_moe_config

B, T = 3, 10


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _yarn(mscale: float | None, mscale_all_dim: float | None) -> RopeScaling:
    return RopeScaling(
        rope_type="yarn",
        factor=4.0,
        original_max_position_embeddings=64,
        beta_fast=32.0,
        beta_slow=1.0,
        mscale=mscale,
        mscale_all_dim=mscale_all_dim,
    )


def _hf_config(cfg) -> DeepseekV3Config:
    rs = cfg.rope_scaling
    rope = dict(
        rope_type="yarn",
        rope_theta=cfg.rope_theta,
        factor=rs.factor,
        original_max_position_embeddings=rs.original_max_position_embeddings,
        beta_fast=rs.beta_fast,
        beta_slow=rs.beta_slow,
    )
    if rs.mscale is not None:
        rope.update(mscale=rs.mscale, mscale_all_dim=rs.mscale_all_dim)
    hf = DeepseekV3Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        q_lora_rank=cfg.q_lora_rank,
        kv_lora_rank=cfg.kv_lora_rank,
        qk_nope_head_dim=cfg.qk_nope_head_dim,
        qk_rope_head_dim=cfg.qk_rope_head_dim,
        v_head_dim=cfg.v_head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters=rope,
        rope_interleave=cfg.rope_interleave,
        attention_bias=cfg.attention_bias,
        rms_norm_eps=cfg.rms_norm_eps,
    )
    hf._attn_implementation = "eager"
    return hf


def _t2j(t) -> jnp.ndarray:
    return jnp.asarray(t.detach().numpy())


def load_hf_attention(module: MLAttention, hf_attn) -> None:
    """Copies a DeepseekV3Attention's weights into `module` (the mapping documented in mla.py)."""
    h, c = module.num_heads, module.kv_lora_rank
    qk = module.qk_nope_head_dim + module.qk_rope_head_dim
    if module.q_lora_rank is not None:
        module.q_a_proj[...] = _t2j(hf_attn.q_a_proj.weight.T)
        module.q_a_norm.weight[...] = _t2j(hf_attn.q_a_layernorm.weight)
        module.q_b_proj[...] = _t2j(hf_attn.q_b_proj.weight.T).reshape(-1, h, qk)
        if module.use_bias:
            module.q_a_bias[...] = _t2j(hf_attn.q_a_proj.bias)
    else:
        module.q_proj[...] = _t2j(hf_attn.q_proj.weight.T).reshape(-1, h, qk)
    w = hf_attn.kv_a_proj_with_mqa.weight  # [C + R, D]
    module.kv_a_proj[...] = _t2j(w[:c].T)
    module.k_rope_proj[...] = _t2j(w[c:].T)
    module.kv_a_norm.weight[...] = _t2j(hf_attn.kv_a_layernorm.weight)
    module.kv_b_proj[...] = _t2j(hf_attn.kv_b_proj.weight.T).reshape(c, h, -1)
    module.o_proj[...] = _t2j(hf_attn.o_proj.weight.T).reshape(h, module.v_head_dim, -1)
    if module.use_bias:
        bias = hf_attn.kv_a_proj_with_mqa.bias
        module.kv_a_bias[...] = _t2j(bias[:c])
        module.k_rope_bias[...] = _t2j(bias[c:])
        module.o_bias[...] = _t2j(hf_attn.o_proj.bias)


def _batch(cfg, seed: int = 0, batch: int = B, length: int = T):
    """Random inputs with left padding in two rows and positions offset past the YaRN range."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, length, cfg.hidden_size)).astype(np.float32)
    pads = np.array([0, 3, 1, 0, 2, 0, 1, 0][:batch])
    valid = np.arange(length)[None, :] >= pads[:, None]
    offsets = np.array([0, 90, 37, 150, 5, 60, 7, 11][:batch])
    positions = np.maximum(np.arange(length)[None, :] - pads[:, None], 0) + offsets[:, None]
    mask = make_attention_mask(jnp.ones((batch, length), jnp.int32), jnp.asarray(valid))
    return jnp.asarray(x), jnp.asarray(positions, jnp.int32), mask, valid


@pytest.mark.parametrize(
    "q_lora_rank,mscale,mscale_all_dim,attention_bias,rope_interleave",
    [
        (32, 1.0, 1.0, False, True),  # DeepSeek-V3 layout
        (None, 1.0, 0.8, False, True),  # full-rank q (V2-Lite), cos/sin attention factor != 1
        (32, 0.707, 1.0, True, True),  # with biases
        (32, 1.0, 1.0, False, False),  # rotate-half rope
    ],
)
def test_parity_with_transformers(
    q_lora_rank, mscale, mscale_all_dim, attention_bias, rope_interleave
):
    cfg = tiny_moe_config(
        q_lora_rank=q_lora_rank,
        rope_scaling=_yarn(mscale, mscale_all_dim),
        attention_bias=attention_bias,
        rope_interleave=rope_interleave,
        rms_norm_eps=1e-5,
    )
    hf_cfg = _hf_config(cfg)
    torch.manual_seed(0)
    hf_attn = hf_ds3.DeepseekV3Attention(hf_cfg, layer_idx=0).eval()
    with torch.no_grad():
        for p in hf_attn.parameters():
            p.normal_(0.0, 0.3)
        for norm in (hf_attn.q_a_layernorm, hf_attn.kv_a_layernorm):
            if norm is not None:
                norm.weight.copy_(1.0 + 0.2 * torch.randn_like(norm.weight))
    rotary = hf_ds3.DeepseekV3RotaryEmbedding(hf_cfg)

    module = MLAttention(cfg, nnx.Rngs(0))
    load_hf_attention(module, hf_attn)
    assert module.scale == pytest.approx(hf_attn.scaling, rel=1e-12)
    assert module.rope_attention_factor == pytest.approx(rotary.attention_scaling, rel=1e-12)

    x, positions, mask, valid = _batch(cfg)
    xt = torch.from_numpy(np.array(x))
    pos_t = torch.from_numpy(np.array(positions)).long()
    additive = torch.zeros(mask.shape, dtype=torch.float32)
    additive.masked_fill_(~torch.from_numpy(np.array(mask)), torch.finfo(torch.float32).min)
    with torch.no_grad():
        ref, _ = hf_attn(
            hidden_states=xt,
            position_embeddings=rotary(xt, pos_t),
            attention_mask=additive[:, None],
        )
    ref = ref.numpy()

    out = np.asarray(module(x, positions, mask))
    assert out.shape == (B, T, cfg.hidden_size)
    assert _rel(out[valid], ref[valid]) < 1e-4

    q_nope, q_rope = module.queries(x, positions)
    kv_latent, k_rope = module.compress_kv(x, positions)
    absorbed = np.asarray(module.attend_latent(q_nope, q_rope, kv_latent, k_rope, mask))
    assert _rel(absorbed[valid], ref[valid]) < 1e-4


@pytest.mark.parametrize("q_lora_rank", [32, None])
def test_absorbed_latent_path_matches_call(q_lora_rank):
    cfg = tiny_moe_config(q_lora_rank=q_lora_rank)
    module = MLAttention(cfg, nnx.Rngs(1))
    x, positions, mask, _ = _batch(cfg, seed=1)
    full = np.asarray(module(x, positions, mask))

    q_nope, q_rope = module.queries(x, positions)
    kv_latent, k_rope = module.compress_kv(x, positions)
    absorbed = np.asarray(module.attend_latent(q_nope, q_rope, kv_latent, k_rope, mask))
    assert _rel(absorbed, full) < 1e-5

    # Decoding: the last token's query against the cached latents of all T tokens.
    last = np.asarray(
        module.attend_latent(q_nope[:, -1:], q_rope[:, -1:], kv_latent, k_rope, mask[:, -1:, :])
    )
    assert last.shape == (B, 1, cfg.hidden_size)
    assert _rel(last, full[:, -1:]) < 1e-5


def test_latent_cache_size():
    cfg = tiny_moe_config()
    module = MLAttention(cfg, nnx.Rngs(2))
    x, positions, _, _ = _batch(cfg)
    kv_latent, k_rope = module.compress_kv(x, positions)
    assert kv_latent.shape == (B, T, cfg.kv_lora_rank)
    assert k_rope.shape == (B, T, cfg.qk_rope_head_dim)
    per_token = kv_latent.shape[-1] + k_rope.shape[-1]
    assert per_token == cfg.kv_lora_rank + cfg.qk_rope_head_dim
    # versus what per-head keys and values would cost:
    assert per_token < cfg.num_heads * (cfg.qk_head_dim + cfg.v_head_dim)


def test_sharded_matches_single_device(devices):
    cfg = tiny_moe_config()
    x, positions, mask, _ = _batch(cfg, seed=3, batch=4, length=8)
    single = MLAttention(cfg, nnx.Rngs(3))
    want = np.asarray(single(x, positions, mask))

    mesh = r1.sharding.make_mesh(r1.sharding.MeshConfig(data=2, fsdp=2, tensor=2), devices)
    with r1.sharding.use_mesh(mesh):
        model = r1.sharding.create_sharded_model(lambda: MLAttention(cfg, nnx.Rngs(3)), mesh)
        graphdef, state = nnx.split(model)
        # The latent rank is a ZeRO-3 (fsdp) dimension, heads are tensor-parallel.
        assert state["kv_b_proj"].get_value().sharding.spec == jax.sharding.PartitionSpec(
            "fsdp", "tensor", None
        )

        @jax.jit
        def run(state, x, positions, mask):
            m = nnx.merge(graphdef, state)
            q_nope, q_rope = m.queries(x, positions)
            kv_latent, k_rope = m.compress_kv(x, positions)
            return m(x, positions, mask), m.attend_latent(q_nope, q_rope, kv_latent, k_rope, mask)

        got, got_latent = run(state, x, positions, mask)
    assert _rel(got, want) < 1e-5
    assert _rel(got_latent, want) < 1e-5


def test_bfloat16_compute():
    cfg = tiny_moe_config(dtype="bfloat16")
    module = MLAttention(cfg, nnx.Rngs(4))
    x, positions, mask, _ = _batch(cfg, seed=4)
    out = module(x.astype(jnp.bfloat16), positions, mask)
    assert out.dtype == jnp.bfloat16
    assert np.all(np.isfinite(np.asarray(out, np.float32)))


def test_deepseek_v3_softmax_scale():
    cfg = tiny_moe_config(
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        rope_scaling=RopeScaling(
            rope_type="yarn",
            factor=40.0,
            original_max_position_embeddings=4096,
            mscale=1.0,
            mscale_all_dim=1.0,
        ),
    )
    assert mla_softmax_scale(cfg) == pytest.approx(192**-0.5 * (0.1 * math.log(40) + 1) ** 2)
    assert mla_softmax_scale(tiny_moe_config(rope_scaling=None)) == pytest.approx(24**-0.5)


@pytest.mark.parametrize(
    "dim,theta,factor,original,mscale,mscale_all_dim",
    [
        (64, 10000.0, 40.0, 4096, 1.0, 1.0),  # DeepSeek-V3
        (64, 10000.0, 40.0, 4096, 0.707, 0.707),  # DeepSeek-V2
        (64, 10000.0, 40.0, 4096, 1.0, 0.5),
        (8, 10000.0, 4.0, 64, 1.0, 0.8),
        (16, 10000.0, 4.0, 64, None, None),
    ],
)
def test_yarn_frequencies_match_transformers(dim, theta, factor, original, mscale, mscale_all_dim):
    rope = dict(
        rope_type="yarn",
        rope_theta=theta,
        factor=factor,
        original_max_position_embeddings=original,
        beta_fast=32,
        beta_slow=1,
    )
    extra = {}
    if mscale is not None:
        extra = dict(mscale=mscale, mscale_all_dim=mscale_all_dim)
        rope.update(extra)
    hf = DeepseekV3Config(
        hidden_size=64,
        num_attention_heads=4,
        qk_rope_head_dim=dim,
        max_position_embeddings=int(original * factor),
        rope_parameters=rope,
    )
    want_inv, want_factor = _compute_yarn_parameters(hf)
    scaling = RopeScaling(
        rope_type="yarn", factor=factor, original_max_position_embeddings=original, **extra
    )
    inv, attention_factor = rope_frequencies(dim, theta, scaling, int(original * factor))
    np.testing.assert_allclose(inv, want_inv.numpy(), rtol=1e-6, atol=0)
    assert attention_factor == pytest.approx(want_factor, rel=1e-12)
