"""Hugging Face interop: load a local HF model directory into a sharded r1 model, save it back.

    cfg, model = r1.models.hf.load("/path/to/Qwen2.5-7B")          # all devices, fsdp mesh
    cfg, model = r1.models.hf.load(path, mesh=mesh, param_dtype="bfloat16")
    r1.models.hf.save(model, cfg, "/path/out")                     # transformers can load it

Supported `model_type`s: see `SUPPORTED_MODEL_TYPES`. Each tensor is read from a memory map,
converted to r1's layout and placed straight into its sharded device array (only the slices each
local device needs are materialised), so the model never exists twice on the host. With
`fused_projections=True` (a config override) the HF q/k/v and gate/up tensors are joined into
r1's fused variables on load and split again on save (`hf_maps`); the files are the same.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_dtypes
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from r1 import sharding
from r1.models.config import ModelConfig, RopeScaling
from r1.models.hf_maps import HostTensor, Path, tensor_maps
from r1.models.safetensors_io import SafetensorsDirectory, write_file
from r1.models.transformer import Transformer, flat_variables

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "deepseek_v3")
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
}
MAX_SHARD_BYTES = 4 * 1024**3


# =============================================================================== configs
def _rope_from_hf(hf: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    params = dict(hf.get("rope_parameters") or {})
    legacy = dict(hf.get("rope_scaling") or {})
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    scaling = {**legacy, **params}
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) or "default"
    if rope_type == "default":
        return float(theta), None
    if rope_type not in ("llama3", "yarn"):
        raise ValueError(
            f"config.json: rope type {rope_type!r} is not supported (default, llama3, yarn)"
        )
    fields = {f.name for f in dataclasses.fields(RopeScaling)}
    values = {k: v for k, v in scaling.items() if k in fields and v is not None}
    values["rope_type"] = rope_type
    for key in ("factor", "low_freq_factor", "high_freq_factor", "beta_fast", "beta_slow"):
        if key in values:
            values[key] = float(values[key])
    for key in ("mscale", "mscale_all_dim", "attention_factor"):
        if key in values:
            values[key] = float(values[key])
    return float(theta), RopeScaling(**values)


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> ModelConfig:
    """Translates a transformers `config.json` dict into a `ModelConfig`."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"config.json: model_type {model_type!r} is not supported; supported model types: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    theta, scaling = _rope_from_hf(hf)
    heads = hf["num_attention_heads"]
    values: dict[str, Any] = dict(
        family=model_type,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        intermediate_size=hf["intermediate_size"],
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=hf.get("max_position_embeddings", 4096),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"config.json: hidden_act {act!r} is not supported (silu)")
    if model_type in ("llama", "qwen2"):
        values["head_dim"] = hf.get("head_dim") or hf["hidden_size"] // heads
        if model_type == "qwen2":
            values["attention_bias"] = True
            if hf.get("use_sliding_window"):
                raise ValueError("config.json: Qwen2 use_sliding_window=true is not supported")
        else:
            if hf.get("attention_bias") or hf.get("mlp_bias"):
                raise ValueError(
                    "config.json: Llama attention_bias/mlp_bias=true (o_proj and MLP biases) is "
                    "not supported"
                )
    else:
        scoring = hf.get("scoring_func", "sigmoid")
        values.update(
            head_dim=0,
            attention_type="mla",
            q_lora_rank=hf.get("q_lora_rank"),
            kv_lora_rank=hf["kv_lora_rank"],
            qk_nope_head_dim=hf["qk_nope_head_dim"],
            qk_rope_head_dim=hf["qk_rope_head_dim"],
            v_head_dim=hf["v_head_dim"],
            rope_interleave=bool(hf.get("rope_interleave", True)),
            n_routed_experts=hf.get("n_routed_experts") or 0,
            n_shared_experts=hf.get("n_shared_experts") or 0,
            moe_intermediate_size=hf.get("moe_intermediate_size") or 0,
            num_experts_per_tok=hf.get("num_experts_per_tok") or 0,
            n_group=hf.get("n_group") or 1,
            topk_group=hf.get("topk_group") or 1,
            routed_scaling_factor=float(hf.get("routed_scaling_factor", 1.0)),
            norm_topk_prob=bool(hf.get("norm_topk_prob", True)),
            scoring_func=scoring,
            first_k_dense_replace=hf.get("first_k_dense_replace", 0),
            aux_loss_alpha=float(hf.get("aux_loss_alpha", 0.0)),
            num_mtp_layers=hf.get("num_nextn_predict_layers", 0) or 0,
        )
        if hf.get("attention_bias"):
            raise ValueError("config.json: DeepSeek-V3 attention_bias=true is not supported")
    values.update(overrides)
    return ModelConfig.from_dict(values, where="config.json")


def config_to_hf(cfg: ModelConfig, torch_dtype: str = "float32") -> dict[str, Any]:
    """The transformers `config.json` dict for `cfg`."""
    if cfg.family not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"family {cfg.family!r} cannot be saved; supported: {SUPPORTED_MODEL_TYPES}"
        )
    rope: dict[str, Any] = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
    if cfg.rope_scaling is not None:
        s = cfg.rope_scaling
        rope["rope_type"] = s.rope_type
        if s.rope_type == "llama3":
            rope.update(
                factor=s.factor,
                low_freq_factor=s.low_freq_factor,
                high_freq_factor=s.high_freq_factor,
                original_max_position_embeddings=s.original_max_position_embeddings,
            )
        elif s.rope_type == "yarn":
            rope.update(
                factor=s.factor,
                original_max_position_embeddings=s.original_max_position_embeddings,
                beta_fast=s.beta_fast,
                beta_slow=s.beta_slow,
                truncate=s.truncate,
            )
            for key in ("mscale", "mscale_all_dim", "attention_factor"):
                if getattr(s, key) is not None:
                    rope[key] = getattr(s, key)
    hf: dict[str, Any] = dict(
        architectures=[ARCHITECTURES[cfg.family]],
        model_type=cfg.family,
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size,
        rms_norm_eps=cfg.rms_norm_eps,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        hidden_act="silu",
        rope_parameters=rope,
        rope_theta=cfg.rope_theta,
        torch_dtype=torch_dtype,
    )
    if cfg.family in ("llama", "qwen2"):
        hf["head_dim"] = cfg.head_dim
        if cfg.family == "llama":
            hf.update(attention_bias=False, mlp_bias=False)
        else:
            hf["use_sliding_window"] = False
    else:
        hf.update(
            q_lora_rank=cfg.q_lora_rank,
            kv_lora_rank=cfg.kv_lora_rank,
            qk_nope_head_dim=cfg.qk_nope_head_dim,
            qk_rope_head_dim=cfg.qk_rope_head_dim,
            v_head_dim=cfg.v_head_dim,
            head_dim=cfg.qk_rope_head_dim,
            rope_interleave=cfg.rope_interleave,
            n_routed_experts=cfg.n_routed_experts,
            n_shared_experts=cfg.n_shared_experts,
            moe_intermediate_size=cfg.moe_intermediate_size,
            num_experts_per_tok=cfg.num_experts_per_tok,
            n_group=cfg.n_group,
            topk_group=cfg.topk_group,
            routed_scaling_factor=cfg.routed_scaling_factor,
            norm_topk_prob=cfg.norm_topk_prob,
            scoring_func=cfg.scoring_func,
            topk_method="noaux_tc" if cfg.scoring_func == "sigmoid" else "greedy",
            first_k_dense_replace=cfg.first_k_dense_replace,
            aux_loss_alpha=cfg.aux_loss_alpha,
            num_nextn_predict_layers=cfg.num_mtp_layers,
            attention_bias=False,
        )
    return hf


# =============================================================================== load
def _read_config(path: str) -> dict[str, Any]:
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{path}: not a directory (expected a Hugging Face model directory)"
        )
    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{path}: no config.json (expected a Hugging Face model directory)")
    try:
        with open(config_path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path}: invalid JSON: {err}") from err


def read_config(path: str, **config_overrides: Any) -> ModelConfig:
    """The `ModelConfig` of the Hugging Face directory `path` (its config.json only)."""
    return config_from_hf(_read_config(path), **config_overrides)


def load_abstract(path: str, **config_overrides: Any) -> tuple[ModelConfig, Transformer]:
    """The model of the Hugging Face directory `path` without its weights: (config, a
    `Transformer` built with `nnx.eval_shape`, leaves `jax.ShapeDtypeStruct` with their
    logical-axis metadata). Reads only config.json; for ahead-of-time compilation."""
    cfg = config_from_hf(_read_config(path), **config_overrides)
    return cfg, nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))


def _dequantizing_reader(weights: SafetensorsDirectory, block: Sequence[int] | None):
    """read(name): the tensor; FP8 tensors with a `<name>_scale_inv` companion are dequantised
    block-wise (DeepSeek's published FP8 checkpoints) to float32."""

    def read(name: str) -> np.ndarray:
        if name not in weights:
            raise KeyError(name)
        tensor = weights.get(name)
        scale_name = f"{name}_scale_inv"
        if (tensor.dtype.itemsize == 1 and tensor.dtype.kind == "V") or scale_name in weights:
            if scale_name not in weights or block is None:
                raise ValueError(
                    f"tensor {name!r} is {tensor.dtype} without {scale_name!r} or "
                    "quantization_config.weight_block_size; cannot dequantise"
                )
            scale = np.asarray(weights.get(scale_name), np.float32)
            bh, bw = block
            full = np.repeat(np.repeat(scale, bh, axis=0), bw, axis=1)
            full = full[: tensor.shape[0], : tensor.shape[1]]
            return tensor.astype(np.float32) * full
        return tensor

    return read


def load(
    path: str,
    *,
    mesh: Mesh | None = None,
    rules: sharding.Rules | None = None,
    **config_overrides: Any,
) -> tuple[ModelConfig, Transformer]:
    """Loads a local Hugging Face model directory into a sharded r1 `Transformer`.

    path: directory with config.json and model.safetensors (or sharded shards + index).
    mesh: device mesh (default: all devices on the fsdp axis). config_overrides: ModelConfig
    fields to change, e.g. `param_dtype="bfloat16"`, `remat_policy="full"`.
    Returns (config, model); `model(tokens)` gives logits float32[B, T, V].
    """
    hf_config = _read_config(path)
    weights = SafetensorsDirectory(path)
    quant = hf_config.get("quantization_config") or {}
    if quant and quant.get("quant_method") not in (None, "fp8"):
        raise ValueError(
            f"{path}: quantization method {quant.get('quant_method')!r} is not supported "
            "(only DeepSeek's block FP8, which is dequantised on load)"
        )
    cfg = config_from_hf(hf_config, **config_overrides)
    if cfg.num_mtp_layers and f"model.layers.{cfg.num_layers}.eh_proj.weight" not in weights:
        log.info("%s: no multi-token-prediction weights; loading without MTP modules", path)
        cfg = cfg.replace(num_mtp_layers=0)
    mesh = mesh if mesh is not None else sharding.make_mesh()
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    shardings = sharding.state_shardings(abstract_state, mesh, rules)
    variables = flat_variables(abstract_state)
    target_shardings = flat_variables(shardings)
    read = _dequantizing_reader(weights, quant.get("weight_block_size"))

    def checked_read(name: str) -> np.ndarray:
        try:
            return read(name)
        except KeyError:
            raise ValueError(f"{path}: tensor {name!r} is missing from the checkpoint") from None

    placed: dict[Path, jax.Array] = {}
    slots = layer_slots(cfg)
    stacked: dict[Path, dict[int, HostTensor]] = {}
    for tmap in tensor_maps(cfg):
        hosts = tmap.to_r1(checked_read)
        for map_path, host in zip(tmap.paths, hosts):
            r1_path, j = _model_path(cfg, map_path, slots)
            if r1_path not in variables:
                raise RuntimeError(f"internal: no r1 variable at {r1_path} for {tmap.hf_names}")
            var = variables[r1_path]
            expected = tuple(var.get_value().shape)[0 if j is None else 1 :]
            if tuple(host.shape) != expected:
                hf_shapes = [tuple(weights.shape(n)) for n in tmap.hf_names[:2]]
                raise ValueError(
                    f"{path}: tensor {tmap.hf_names[0]!r} has shape {hf_shapes[0]}, which gives "
                    f"{tuple(host.shape)} for r1 variable {'/'.join(map(str, map_path))}; "
                    f"expected {expected} from config.json"
                )
            if j is not None:
                stacked.setdefault(r1_path, {})[j] = host
                continue
            dtype = var.get_value().dtype
            placed[r1_path] = _place(host, target_shardings[r1_path].get_value(), dtype)
    for r1_path, parts in stacked.items():
        # A scanned block: each device reads its slice of every layer's tensor.
        host = _Stacked([parts[j] for j in range(len(parts))])
        dtype = variables[r1_path].get_value().dtype
        placed[r1_path] = _place(host, target_shardings[r1_path].get_value(), dtype)
    missing = sorted("/".join(map(str, p)) for p in set(variables) - set(placed))
    if missing:
        raise RuntimeError(f"internal: r1 variables without a checkpoint mapping: {missing}")
    for key, variable in variables.items():
        variable.set_value(placed[key])
    return cfg, nnx.merge(graphdef, abstract_state)


def layer_slots(cfg: ModelConfig) -> dict[int, tuple[int, int]]:
    """Where decoder layer i lives in a model of `cfg`: {i: (block, position in the block)}
    (block = index into `model.layers`; position 0 for unscanned models)."""
    slots = {}
    for block, (first, count) in enumerate(cfg.layer_groups()):
        for j in range(count):
            slots[first + j] = (block, j)
    return slots


def _model_path(cfg: ModelConfig, path: Path, slots: dict) -> tuple[Path, int | None]:
    """An HF map's per-layer path ("layers", i, ...) -> (the variable's path in a model of
    `cfg`, the index on its stacked "layers" axis or None)."""
    if not cfg.scan_layers or path[0] != "layers":
        return path, None
    block, j = slots[int(path[1])]
    return ("layers", block, "layer", *path[2:]), j


class _Stacked:
    """Host tensors of the layers of one block as one [count, ...] tensor, read per slice."""

    def __init__(self, parts: Sequence[HostTensor]):
        self.parts = list(parts)
        self.shape = (len(self.parts), *self.parts[0].shape)

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        rest = tuple(index[1:])
        chosen = range(self.shape[0])[index[0]]
        return np.stack([np.asarray(self.parts[j][rest]) for j in chosen])


def _place(host: HostTensor, target: jax.sharding.Sharding, dtype: np.dtype) -> jax.Array:
    """Builds a sharded device array, converting only each device's slice of `host`."""
    dtype = np.dtype(dtype)

    def shard_of(index):
        return np.ascontiguousarray(np.asarray(host[index]).astype(dtype, copy=False))

    return jax.make_array_from_callback(tuple(host.shape), target, shard_of)


# =============================================================================== save
def save(
    model: Transformer,
    cfg: ModelConfig | None = None,
    path: str = "",
    *,
    dtype: str | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> None:
    """Writes `model` as a Hugging Face directory (config.json + safetensors) at `path`.

    dtype: storage dtype ("float32", "bfloat16"; default the parameters' dtype). Large models
    are split into shards of at most `max_shard_bytes` with a `model.safetensors.index.json`.
    """
    cfg = cfg or model.config
    if not path:
        raise ValueError("save: path is required")
    os.makedirs(path, exist_ok=True)
    variables = flat_variables(nnx.state(model))
    storage = (
        np.dtype(ml_dtypes.bfloat16)
        if dtype == "bfloat16"
        else (np.dtype(dtype) if dtype else None)
    )

    # How the model stores its layers (scanned or not) and projections (fused or not).
    layout = getattr(model, "config", cfg)
    slots = layer_slots(layout)
    maps = tensor_maps(cfg.replace(fused_projections=layout.fused_projections))

    def host(p: Path) -> np.ndarray:
        model_path, j = _model_path(layout, p, slots)
        value = variables[model_path].get_value()
        array = np.asarray(jax.device_get(value if j is None else value[j]))
        is_float = np.issubdtype(array.dtype, np.floating) or array.dtype == ml_dtypes.bfloat16
        return array.astype(storage) if storage is not None and is_float else array

    shards: list[list[tuple[str, np.ndarray]]] = [[]]
    sizes = [0]
    for tmap in maps:
        arrays = tmap.to_hf([host(p) for p in tmap.paths])
        for name, array in zip(tmap.hf_names, arrays):
            array = np.ascontiguousarray(array)
            if sizes[-1] and sizes[-1] + array.nbytes > max_shard_bytes:
                shards.append([])
                sizes.append(0)
            shards[-1].append((name, array))
            sizes[-1] += array.nbytes
    for k in range(cfg.num_mtp_layers):
        hf = f"model.layers.{cfg.num_layers + k}"
        shared = [(f"{hf}.embed_tokens.weight", host(("embed", "embedding")))]
        head = host(("embed", "embedding")) if cfg.tie_word_embeddings else host(("lm_head",)).T
        shared.append((f"{hf}.shared_head.head.weight", np.ascontiguousarray(head)))
        shards[-1].extend(shared)
    torch_dtype = dtype or str(next(iter(variables.values())).get_value().dtype)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config_to_hf(cfg, torch_dtype), f, indent=2)
    if len(shards) == 1:
        write_file(os.path.join(path, "model.safetensors"), shards[0])
        return
    weight_map = {}
    for i, shard_tensors in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_file(os.path.join(path, name), shard_tensors)
        weight_map.update({tensor: name for tensor, _ in shard_tensors})
    index = {"metadata": {"total_size": int(sum(sizes))}, "weight_map": weight_map}
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
