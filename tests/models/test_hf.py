"""Hugging Face interop: parity with transformers, round trips, and clear errors on bad input."""

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch as torch
import transformers as transformers
from jax.sharding import PartitionSpec as P

from r1 import sharding  # noqa: E402
from r1.models import hf  # noqa: E402
from r1.models.safetensors_io import SafetensorsFile, write_file  # noqa: E402

VOCAB = 96


def _perturb(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


def _qwen2(tie: bool):
    cfg = transformers.Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tie,
        max_position_embeddings=128,
    )
    return _perturb(transformers.Qwen2ForCausalLM(cfg))


def _llama():
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    )
    return _perturb(transformers.LlamaForCausalLM(cfg), seed=1)


def _padded_batch():
    tokens = np.random.default_rng(0).integers(0, VOCAB, (3, 14))
    mask = np.ones((3, 14), np.int64)
    mask[1, :4] = 0  # left padding
    mask[2, 10:] = 0  # right padding
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    return tokens, mask, positions


def _torch_logits(model, tokens, mask, positions):
    with torch.no_grad():
        out = model(
            torch.tensor(tokens),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(positions),
        )
    return out.logits.float().numpy()


def _r1_logits(model, tokens, mask, positions):
    return np.asarray(
        model(
            jnp.asarray(tokens, jnp.int32),
            positions=jnp.asarray(positions, jnp.int32),
            attention_mask=jnp.asarray(mask),
        )
    )


def _rel_err(a, b, valid):
    return float(np.abs(a[valid] - b[valid]).max() / np.abs(b[valid]).max())


@pytest.mark.parametrize(
    "builder",
    [lambda: _qwen2(False), lambda: _qwen2(True), _llama],
    ids=["qwen2-untied", "qwen2-tied", "llama3-rope"],
)
def test_parity_and_round_trip(builder, tmp_path):
    ref_model = builder()
    src = tmp_path / "src"
    ref_model.save_pretrained(src)
    mesh = sharding.make_mesh(sharding.MeshConfig(fsdp=4, tensor=2))
    cfg, model = hf.load(str(src), mesh=mesh)
    tokens, mask, positions = _padded_batch()
    valid = mask.astype(bool)
    ref = _torch_logits(ref_model, tokens, mask, positions)
    ours = _r1_logits(model, tokens, mask, positions)
    assert _rel_err(ours, ref, valid) < 1e-4
    # the default call convention: model(tokens) with positions 0..T-1 and a causal mask
    plain = np.asarray(model(jnp.asarray(tokens, jnp.int32)))
    plain_ref = _torch_logits(ref_model, tokens, np.ones_like(mask), np.tile(np.arange(14), (3, 1)))
    assert _rel_err(plain, plain_ref, np.ones_like(valid)) < 1e-4

    out = tmp_path / "out"
    hf.save(model, cfg, str(out))
    reloaded = type(ref_model).from_pretrained(out).eval()
    again = _torch_logits(reloaded, tokens, mask, positions)
    assert _rel_err(again, ref, valid) < 1e-6
    assert cfg.tie_word_embeddings == ref_model.config.tie_word_embeddings


def test_parameters_are_sharded_on_load(tmp_path):
    _qwen2(False).save_pretrained(tmp_path)
    mesh = sharding.make_mesh(sharding.MeshConfig(fsdp=4, tensor=2))
    _, model = hf.load(str(tmp_path), mesh=mesh)
    gate = model.layers[0].mlp.gate[...]
    assert gate.sharding.spec == P("fsdp", "tensor")
    assert len({s.data.shape for s in gate.addressable_shards}) == 1
    assert gate.addressable_shards[0].data.shape == (64 // 4, 128 // 2)


def test_sharded_checkpoint_and_bfloat16(tmp_path):
    ref_model = _qwen2(False)
    ref_model.save_pretrained(tmp_path / "src")
    cfg, model = hf.load(str(tmp_path / "src"))
    hf.save(model, cfg, str(tmp_path / "sharded"), max_shard_bytes=20_000)
    files = os.listdir(tmp_path / "sharded")
    assert "model.safetensors.index.json" in files
    assert sum(f.endswith(".safetensors") for f in files) > 2
    cfg2, model2 = hf.load(str(tmp_path / "sharded"))
    tokens, mask, positions = _padded_batch()
    a = _r1_logits(model, tokens, mask, positions)
    b = _r1_logits(model2, tokens, mask, positions)
    np.testing.assert_array_equal(a, b)
    hf.save(model, cfg, str(tmp_path / "bf16"), dtype="bfloat16")
    assert (
        SafetensorsFile(str(tmp_path / "bf16" / "model.safetensors"))
        .dtype("model.norm.weight")
        .name
        == "bfloat16"
    )
    _, model3 = hf.load(str(tmp_path / "bf16"), param_dtype="bfloat16", dtype="bfloat16")
    assert model3.layers[0].mlp.gate[...].dtype == jnp.bfloat16
    c = _r1_logits(model3, tokens, mask, positions)
    assert _rel_err(c, a, mask.astype(bool)) < 5e-2


# ------------------------------------------------------------------------------ bad input
def test_missing_directory_and_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        hf.load(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        hf.load(str(tmp_path))


def test_no_weights(tmp_path):
    _qwen2(False).config.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        hf.load(str(tmp_path))


def test_truncated_safetensors(tmp_path):
    _qwen2(False).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    size = os.path.getsize(weights)
    with open(weights, "r+b") as f:
        f.truncate(size - 1000)
    with pytest.raises(ValueError, match="truncated safetensors file: tensor"):
        hf.load(str(tmp_path))
    with open(weights, "r+b") as f:
        f.truncate(4)
    with pytest.raises(ValueError, match="truncated"):
        hf.load(str(tmp_path))


def test_wrong_shape_names_tensor_and_shapes(tmp_path):
    _qwen2(False).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    file = SafetensorsFile(str(weights))
    tensors = [(n, np.array(file.get(n))) for n in file.names()]
    tensors = [
        (n, a[:, :-1] if n == "model.layers.1.mlp.up_proj.weight" else a) for n, a in tensors
    ]
    del file
    write_file(str(weights), tensors)
    with pytest.raises(ValueError) as err:
        hf.load(str(tmp_path))
    message = str(err.value)
    assert "model.layers.1.mlp.up_proj.weight" in message
    assert "(128, 63)" in message and "(64, 128)" in message


def test_missing_tensor_is_named(tmp_path):
    _qwen2(False).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    file = SafetensorsFile(str(weights))
    tensors = [
        (n, np.array(file.get(n))) for n in file.names() if "layers.0.self_attn.k_proj" not in n
    ]
    del file
    write_file(str(weights), tensors)
    with pytest.raises(ValueError, match="model.layers.0.self_attn.k_proj.weight.*missing"):
        hf.load(str(tmp_path))


def test_unsupported_model_type_lists_supported(tmp_path):
    _qwen2(False).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model_type"] = "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="'gpt2' is not supported.*llama, qwen2, deepseek_v3"):
        hf.load(str(tmp_path))


def test_unknown_override_field_is_named(tmp_path):
    _qwen2(False).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not_a_field"):
        hf.load(str(tmp_path), not_a_field=1)


def test_index_pointing_to_missing_shard(tmp_path):
    src = tmp_path / "src"
    _qwen2(False).save_pretrained(src)
    cfg, model = hf.load(str(src))
    out = tmp_path / "out"
    hf.save(model, cfg, str(out), max_shard_bytes=20_000)
    shard = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))[0]
    os.remove(out / shard)
    with pytest.raises(FileNotFoundError, match="listed in the index but missing"):
        hf.load(str(out))
    shutil.rmtree(out)
