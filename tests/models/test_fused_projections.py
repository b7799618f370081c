"""`ModelConfig.fused_projections`: q/k/v (MLA: the projections of x) and gate/up stored joined
load from HF checkpoints, give the unfused model's (and transformers') logits, save back the
original HF tensors, and hold as many parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1 import sharding, testing
from r1.models import hf
from r1.models.hf_maps import Lazy, expand, join
from r1.models.mla import MLAttention
from r1.models.moe import grouped_ffn
from r1.models.safetensors_io import SafetensorsDirectory
from r1.models.transformer import Transformer
from r1.sampling.kv_cache import forward_with_cache, init_cache
from tests.models.test_deepseek import _inputs, _reference_model, _torch_routing
from tests.models.test_hf import _llama, _padded_batch, _qwen2, _r1_logits, _rel_err, _torch_logits


def _num_params(model: nnx.Module) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _assert_same_tensors(src, out) -> None:
    a, b = SafetensorsDirectory(str(src)), SafetensorsDirectory(str(out))
    names = set(a.names())
    assert names == set(b.names())
    for name in names:
        np.testing.assert_array_equal(np.asarray(b.get(name)), np.asarray(a.get(name)), name)


@pytest.mark.parametrize("builder", [lambda: _qwen2(False), _llama], ids=["qwen2", "llama"])
def test_gqa_fused_parity_and_round_trip(builder, tmp_path):
    ref_model = builder()
    ref_model.save_pretrained(tmp_path / "src")
    mesh = sharding.make_mesh(sharding.MeshConfig(fsdp=4, tensor=2))
    _, plain = hf.load(str(tmp_path / "src"), mesh=mesh)
    cfg, fused = hf.load(str(tmp_path / "src"), mesh=mesh, fused_projections=True)
    attn = fused.layers[0].attn
    assert "q_proj" not in nnx.state(attn, nnx.Param)
    assert attn.qkv_proj[...].shape == (64, 2, 4, 16)  # [D, kv_heads, groups + 2, hd]
    assert attn.qkv_proj[...].sharding.spec == jax.sharding.PartitionSpec(
        "fsdp", "tensor", None, None
    )
    assert hasattr(attn, "qkv_bias") == cfg.attention_bias
    assert fused.layers[0].mlp.gate_up[...].shape == (64, 2, 128)
    assert _num_params(fused) == _num_params(plain)

    tokens, mask, positions = _padded_batch()
    valid = mask.astype(bool)
    ours = _r1_logits(fused, tokens, mask, positions)
    assert _rel_err(ours, _r1_logits(plain, tokens, mask, positions), valid) < 1e-5
    assert _rel_err(ours, _torch_logits(ref_model, tokens, mask, positions), valid) < 1e-4

    hf.save(fused, cfg, str(tmp_path / "out"))
    _assert_same_tensors(tmp_path / "src", tmp_path / "out")


def test_deepseek_v3_fused_scanned_parity_and_round_trip(tmp_path):
    ref_model = _reference_model()
    ref_model.save_pretrained(tmp_path / "src")
    mesh = sharding.make_mesh(sharding.MeshConfig(fsdp=2, expert=2, tensor=2))
    src = str(tmp_path / "src")
    cfg, fused = hf.load(src, mesh=mesh, fused_projections=True, scan_layers=True)
    _, plain = hf.load(src, mesh=mesh, scan_layers=True)
    moe = fused.layers[1].layer
    assert moe.attn.qkv_a_proj[...].shape == (2, 64, 32 + 16 + 8)  # [layers, D, Q + C + R]
    assert moe.mlp.w_gate_up[...].shape == (2, 8, 64, 2, 32)  # [layers, E, D, 2, F]
    assert moe.mlp.shared_experts.gate_up[...].shape == (2, 64, 2, 32)
    assert _num_params(fused) == _num_params(plain)

    tokens, mask, positions = _inputs()
    valid = mask.astype(bool)
    ref_logits, _ = _torch_routing(ref_model, tokens, mask, positions)
    ours = _r1_logits(fused, tokens, mask, positions)
    assert _rel_err(ours, _r1_logits(plain, tokens, mask, positions), valid) < 1e-5
    assert _rel_err(ours, ref_logits, valid) < 1e-4

    hf.save(fused, cfg, str(tmp_path / "out"))
    _assert_same_tensors(src, tmp_path / "out")


@pytest.mark.parametrize("q_lora_rank", [None, 32])
def test_mla_fused_matches_unfused_with_biases(q_lora_rank):
    """MLA without q-LoRA (the full-rank q joined) and with biases; `queries` / `compress_kv`
    alone (the cache's callers) agree with `project`'s one GEMM."""
    cfg = testing.tiny_moe_config(q_lora_rank=q_lora_rank, attention_bias=True)
    plain = MLAttention(cfg, nnx.Rngs(0))
    fused = MLAttention(cfg.replace(fused_projections=True), nnx.Rngs(0))
    rng = np.random.default_rng(0)
    q_part = plain.q_proj[...].reshape(64, -1) if q_lora_rank is None else plain.q_a_proj[...]
    fused.qkv_a_proj[...] = jnp.concatenate(
        [q_part, plain.kv_a_proj[...], plain.k_rope_proj[...]], 1
    )
    biases = [plain.kv_a_bias, plain.k_rope_bias] + ([plain.q_a_bias] if q_lora_rank else [])
    for b in biases:
        b[...] = jnp.asarray(rng.normal(size=b[...].shape), jnp.float32)
    fused.qkv_a_bias[...] = jnp.concatenate([b[...] for b in biases[2:] + biases[:2]])
    for name in ("kv_b_proj", "o_proj", "o_bias", "q_b_proj"):
        if hasattr(plain, name):
            getattr(fused, name)[...] = getattr(plain, name)[...]
    assert _num_params(fused) == _num_params(plain)

    x = jnp.asarray(rng.normal(size=(2, 5, 64)), jnp.float32)
    positions = jnp.tile(jnp.arange(5, dtype=jnp.int32), (2, 1))
    want = plain.project(x, positions)
    for got in (
        fused.project(x, positions),
        (*fused.queries(x, positions), *fused.compress_kv(x, positions)),
    ):
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["ragged_dot", "blocked"])
def test_grouped_ffn_with_joined_gate_up(impl):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(20, 16)), jnp.float32)
    w_gate, w_up = (jnp.asarray(rng.normal(size=(4, 16, 8)), jnp.float32) for _ in range(2))
    w_down = jnp.asarray(rng.normal(size=(4, 8, 16)), jnp.float32)
    sizes = jnp.asarray([5, 0, 9, 4], jnp.int32)  # 2 rows past the groups
    want = grouped_ffn(x, sizes, w_gate, w_up, w_down, impl)
    got = grouped_ffn(x, sizes, jnp.stack([w_gate, w_up], axis=2), None, w_down, impl)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_fused_mla_cached_prefill_and_decode_match_forward():
    """The KV-cache forward of a fused MLA + MoE model (`MLAttention.project`, one GEMM):
    prefill then one decode step give the logits of the plain forward over the sequence."""
    cfg = testing.tiny_moe_config(num_layers=2, num_mtp_layers=0, fused_projections=True)
    model = Transformer(cfg, rngs=nnx.Rngs(1))
    tokens = jnp.asarray(testing.random_tokens(0, 2, 7, cfg.vocab_size))
    positions = jnp.tile(jnp.arange(7, dtype=jnp.int32), (2, 1))
    mask = jnp.ones((2, 7), bool)

    @nnx.jit
    def run(model, tokens):
        cache = init_cache(cfg, 2, 8)
        first, cache = forward_with_cache(
            model, tokens[:, :6], positions[:, :6], mask[:, :6], cache, 0
        )
        last, _ = forward_with_cache(model, tokens[:, 6:], positions[:, 6:], mask[:, 6:], cache, 6)
        return jnp.concatenate([first, last], axis=1), model(tokens)

    cached, want = run(model, tokens)
    np.testing.assert_allclose(cached, want, rtol=2e-5, atol=2e-5)


def test_lazy_join_reads_only_the_requested_slices():
    a, b = np.arange(24.0).reshape(2, 3, 4), -np.arange(12.0).reshape(2, 3, 2)
    asked = []

    def lazy(x):
        return Lazy(x.shape, lambda index: asked.append(index) or x[index])

    joined = join([lazy(a), expand(lazy(b[..., 0]), 2), b[..., 1:]], axis=2)
    full = np.concatenate([a, b], axis=2)
    assert joined.shape == full.shape
    for index in [(slice(None),), (slice(1, 2), slice(0, 2), slice(3, 6))]:
        np.testing.assert_array_equal(joined[index], full[index])
    asked.clear()
    np.testing.assert_array_equal(joined[(slice(None), slice(None), slice(0, 2))], full[..., :2])
    assert asked == [(slice(None), slice(None), slice(0, 2))]  # b's parts read nothing
