"""DeepSeek-V3 (MLA + DeepSeekMoE + MTP) against transformers' DeepseekV3ForCausalLM."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch as torch
import transformers as transformers
from flax import nnx

from r1 import sharding, testing  # noqa: E402
from r1.models import hf  # noqa: E402
from r1.models.moe import route  # noqa: E402
from r1.models.transformer import Transformer  # noqa: E402

VOCAB = 96


def _reference_model():
    cfg = transformers.DeepseekV3Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_routed_experts=8,
        n_shared_experts=1,
        num_experts_per_tok=2,
        n_group=4,
        topk_group=2,
        first_k_dense_replace=1,
        q_lora_rank=32,
        kv_lora_rank=16,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        routed_scaling_factor=2.5,
        max_position_embeddings=256,
        rope_scaling={
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 64,
            "beta_fast": 32,
            "beta_slow": 1,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
        },
    )
    torch.manual_seed(0)
    model = transformers.DeepseekV3ForCausalLM(cfg)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        for layer in model.model.layers[1:]:
            layer.mlp.gate.e_score_correction_bias.copy_(torch.randn(8, generator=gen) * 0.3)
    return model.eval()


def _inputs():
    tokens = np.random.default_rng(0).integers(0, VOCAB, (2, 12))
    mask = np.ones((2, 12), np.int64)
    mask[1, :3] = 0
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    return tokens, mask, positions


def _torch_routing(model, tokens, mask, positions):
    """Runs the reference and returns (logits, per-MoE-layer top-k expert indices [N, k])."""
    captured = []
    hooks = [
        layer.mlp.gate.register_forward_hook(lambda m, i, o: captured.append(o[2].numpy()))
        for layer in model.model.layers[1:]
    ]
    with torch.no_grad():
        logits = model(
            torch.tensor(tokens),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(positions),
        ).logits.numpy()
    for h in hooks:
        h.remove()
    return logits, captured


def _r1_routing(model, cfg, tokens, mask, positions):
    """Expert choices of each MoE layer, recomputed from the public pieces of the model."""
    from r1.models.attention import make_attention_mask

    tokens, positions = jnp.asarray(tokens, jnp.int32), jnp.asarray(positions, jnp.int32)
    token_mask = jnp.asarray(mask, bool)
    attn_mask = make_attention_mask(jnp.ones_like(tokens), token_mask)
    x = model.embed(tokens)
    choices = []
    for layer in model.layers:
        if layer.is_moe:
            h = x + layer.attn(layer.input_norm(x), positions, attn_mask)
            logits = layer.mlp.router_logits(layer.post_attn_norm(h))
            idx, _, _ = route(
                logits.reshape(-1, cfg.n_routed_experts),
                layer.mlp.e_score_correction_bias[...],
                cfg,
            )
            choices.append(np.asarray(idx))
        x, _ = layer(x, positions, attn_mask, token_mask)
    return choices


def test_deepseek_v3_parity_and_expert_choices(tmp_path):
    ref_model = _reference_model()
    ref_model.save_pretrained(tmp_path / "src")
    mesh = sharding.make_mesh(sharding.MeshConfig(fsdp=2, expert=2, tensor=2))
    cfg, model = hf.load(str(tmp_path / "src"), mesh=mesh)
    assert cfg.attention_type == "mla" and cfg.n_group == 4 and cfg.first_k_dense_replace == 1
    assert cfg.rope_scaling.rope_type == "yarn"
    bias = np.asarray(model.layers[1].mlp.e_score_correction_bias[...])
    np.testing.assert_allclose(
        bias, ref_model.model.layers[1].mlp.gate.e_score_correction_bias.numpy()
    )
    assert np.abs(bias).max() > 0

    tokens, mask, positions = _inputs()
    ref_logits, ref_choices = _torch_routing(ref_model, tokens, mask, positions)
    logits = np.asarray(
        model(
            jnp.asarray(tokens, jnp.int32),
            positions=jnp.asarray(positions, jnp.int32),
            attention_mask=jnp.asarray(mask),
        )
    )
    valid = mask.astype(bool)
    rel = np.abs(logits[valid] - ref_logits[valid]).max() / np.abs(ref_logits[valid]).max()
    assert rel < 1e-4

    ours = _r1_routing(model, cfg, tokens, mask, positions)
    assert len(ours) == len(ref_choices) == 2
    flat_valid = valid.reshape(-1)
    for mine, theirs in zip(ours, ref_choices):
        for row in np.flatnonzero(flat_valid):
            assert set(mine[row].tolist()) == set(theirs[row].tolist())

    hf.save(model, cfg, str(tmp_path / "out"))
    reloaded = transformers.DeepseekV3ForCausalLM.from_pretrained(tmp_path / "out").eval()
    again, _ = _torch_routing(reloaded, tokens, mask, positions)
    rel = np.abs(again[valid] - ref_logits[valid]).max() / np.abs(ref_logits[valid]).max()
    assert rel < 1e-5


def test_mtp_weights_round_trip(tmp_path):
    cfg = testing.tiny_moe_config()
    model = Transformer(cfg, rngs=nnx.Rngs(3))
    hf.save(model, cfg, str(tmp_path))
    cfg2, model2 = hf.load(str(tmp_path))
    assert cfg2.num_mtp_layers == 1
    tokens = jnp.asarray(testing.random_tokens(0, 2, 9, cfg.vocab_size))
    forward = nnx.jit(lambda m, t: m.forward(t, with_mtp=True))  # eager: op by op, slow
    a, b = forward(model, tokens), forward(model2, tokens)
    assert len(a.mtp_logits) == 1
    for x, y in [(a.logits, b.logits), (a.mtp_logits[0], b.mtp_logits[0])]:
        x, y = np.asarray(x), np.asarray(y)  # b is sharded over 8 devices: summation order differs
        assert np.abs(x - y).max() / np.abs(x).max() < 1e-5


def test_fp8_block_checkpoint_is_dequantised(tmp_path):
    import ml_dtypes

    from r1.models.safetensors_io import SafetensorsFile, write_file

    cfg = testing.tiny_moe_config(num_mtp_layers=0)
    model = Transformer(cfg, rngs=nnx.Rngs(4))
    hf.save(model, cfg, str(tmp_path))
    path = tmp_path / "model.safetensors"
    file = SafetensorsFile(str(path))
    tensors = []
    block = 16
    for name in file.names():
        w = np.array(file.get(name))
        if name.endswith("q_b_proj.weight"):
            rows, cols = -(-w.shape[0] // block), -(-w.shape[1] // block)
            scale = np.abs(w).max() / 448.0 * np.ones((rows, cols), np.float32)
            tensors.append((name, (w / scale[0, 0]).astype(ml_dtypes.float8_e4m3fn)))
            tensors.append((name + "_scale_inv", scale))
        else:
            tensors.append((name, w))
    del file
    write_file(str(path), tensors)
    import json

    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "weight_block_size": [block, block]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    _, loaded = hf.load(str(tmp_path))
    ref = np.asarray(model.layers[0].attn.q_b_proj[...])
    got = np.asarray(loaded.layers[0].attn.q_b_proj[...])
    assert np.abs(got - ref).max() <= 0.07 * np.abs(ref).max()
    assert not np.array_equal(got, ref)

    config["quantization_config"] = {"quant_method": "awq"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="'awq' is not supported"):
        hf.load(str(tmp_path))


def test_param_count_rule_for_deepseek_v3():
    """Total and activated parameter counts of the real DeepSeek-V3 shape (no allocation).

    Counting rule (the V3 report's): total = every parameter of the main model, embeddings and
    output head included, the MTP module excluded (671.0B; 682.6B with MTP). Activated per token
    = total minus the routed experts a token does not use (n_routed - top_k per MoE layer):
    37.6B, the report's "37B".
    """
    from r1 import configlib

    cfg = configlib.model_config(configlib.load_config("configs/models.py:deepseek_v3"))
    assert cfg.num_mtp_layers == 1 and cfg.n_routed_experts == 256
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    params = nnx.state(abstract, nnx.Param)
    total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    per_expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size
    moe_layers = cfg.num_layers - cfg.first_k_dense_replace
    mtp = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract.mtp, nnx.Param)))
    main = total - mtp
    inactive = moe_layers * (cfg.n_routed_experts - cfg.num_experts_per_tok) * per_expert
    activated = main - inactive
    assert 670.5e9 < main < 671.5e9, main
    assert 682e9 < total < 683e9, total
    assert 37.0e9 < activated < 38.0e9, activated
