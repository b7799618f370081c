"""How each Hugging Face tensor maps onto r1's variables and back (`r1.models.hf`): one
`TensorMap` per HF tensor group (transposes, head splits, stacked experts), for Llama, Qwen2
and DeepSeek-V3 layouts, unscanned or scanned layers."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from r1.models.config import ModelConfig

Path = tuple[str | int, ...]


class Lazy:
    """A tensor produced on demand: only the requested slice is read and converted."""

    def __init__(self, shape: Sequence[int], getter: Callable[[tuple[slice, ...]], np.ndarray]):
        self.shape = tuple(shape)
        self._getter = getter

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        return self._getter(index)


HostTensor = np.ndarray | Lazy


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """How HF tensors `hf_names` become r1 variables at `paths` and back.

    to_r1(read) -> one host tensor per path, where read(name) returns the HF tensor (a memmap
    view). to_hf(r1 arrays) -> one numpy array per HF name.
    """

    paths: tuple[Path, ...]
    hf_names: tuple[str, ...]
    to_r1: Callable[[Callable[[str], np.ndarray]], list[HostTensor]]
    to_hf: Callable[[list[np.ndarray]], list[np.ndarray]]


def _linear(path: Path, name: str) -> TensorMap:
    """HF Linear weight [out, in] <-> r1 kernel [in, out]."""
    return TensorMap((path,), (name,), lambda read: [read(name).T], lambda a: [a[0].T])


def _copy(path: Path, name: str) -> TensorMap:
    return TensorMap((path,), (name,), lambda read: [read(name)], lambda a: [a[0]])


def _heads_in(path: Path, name: str, heads: int, head_dim: int) -> TensorMap:
    """HF [heads * head_dim, in] <-> r1 [in, heads, head_dim]."""

    def to_r1(read):
        w = read(name)
        return [w.T.reshape(w.shape[1], heads, head_dim)]

    return TensorMap((path,), (name,), to_r1, lambda a: [a[0].reshape(a[0].shape[0], -1).T])


def _heads_bias(path: Path, name: str, heads: int, head_dim: int) -> TensorMap:
    return TensorMap(
        (path,),
        (name,),
        lambda read: [read(name).reshape(heads, head_dim)],
        lambda a: [a[0].reshape(-1)],
    )


def _heads_out(path: Path, name: str, heads: int, head_dim: int) -> TensorMap:
    """HF o_proj [out, heads * head_dim] <-> r1 [heads, head_dim, out]."""

    def to_r1(read):
        w = read(name)
        return [w.T.reshape(heads, head_dim, w.shape[0])]

    return TensorMap((path,), (name,), to_r1, lambda a: [a[0].reshape(-1, a[0].shape[-1]).T])


def _mlp_maps(prefix: Path, hf: str) -> list[TensorMap]:
    return [
        _linear((*prefix, "gate"), f"{hf}.gate_proj.weight"),
        _linear((*prefix, "up"), f"{hf}.up_proj.weight"),
        _linear((*prefix, "down"), f"{hf}.down_proj.weight"),
    ]


def _experts(path: Path, hf: str, proj: str, n: int) -> TensorMap:
    """Per-expert HF Linear weights `{hf}.experts.{e}.{proj}.weight` [out, in] <-> r1 [E, in, out],
    read lazily so a device only materialises its own experts."""
    names = tuple(f"{hf}.experts.{e}.{proj}.weight" for e in range(n))

    def to_r1(read):
        out_dim, in_dim = read(names[0]).shape

        def get(index):
            index = tuple(index) + (slice(None),) * (3 - len(index))
            experts = range(n)[index[0]]
            stacked = np.stack([np.asarray(read(names[e]).T) for e in experts])
            return stacked[(slice(None), *index[1:])]

        return [Lazy((n, in_dim, out_dim), get)]

    return TensorMap((path,), names, to_r1, lambda a: [w.T for w in a[0]])


def _attention_maps(cfg: ModelConfig, p: Path, hf: str) -> list[TensorMap]:
    h, kv = cfg.num_heads, cfg.num_kv_heads
    if cfg.attention_type == "gqa":
        hd = cfg.head_dim
        maps = [
            _heads_in((*p, "q_proj"), f"{hf}.q_proj.weight", h, hd),
            _heads_in((*p, "k_proj"), f"{hf}.k_proj.weight", kv, hd),
            _heads_in((*p, "v_proj"), f"{hf}.v_proj.weight", kv, hd),
            _heads_out((*p, "o_proj"), f"{hf}.o_proj.weight", h, hd),
        ]
        if cfg.attention_bias:
            maps += [
                _heads_bias((*p, "q_bias"), f"{hf}.q_proj.bias", h, hd),
                _heads_bias((*p, "k_bias"), f"{hf}.k_proj.bias", kv, hd),
                _heads_bias((*p, "v_bias"), f"{hf}.v_proj.bias", kv, hd),
            ]
        return maps
    qk = cfg.qk_head_dim
    maps = []
    if cfg.q_lora_rank is None:
        maps.append(_heads_in((*p, "q_proj"), f"{hf}.q_proj.weight", h, qk))
    else:
        maps += [
            _linear((*p, "q_a_proj"), f"{hf}.q_a_proj.weight"),
            _copy((*p, "q_a_norm", "weight"), f"{hf}.q_a_layernorm.weight"),
            _heads_in((*p, "q_b_proj"), f"{hf}.q_b_proj.weight", h, qk),
        ]
    fused = f"{hf}.kv_a_proj_with_mqa.weight"
    rank = cfg.kv_lora_rank
    maps += [
        TensorMap(
            ((*p, "kv_a_proj"), (*p, "k_rope_proj")),
            (fused,),
            lambda read: [read(fused)[:rank].T, read(fused)[rank:].T],
            lambda a: [np.concatenate([a[0].T, a[1].T], axis=0)],
        ),
        _copy((*p, "kv_a_norm", "weight"), f"{hf}.kv_a_layernorm.weight"),
        _heads_in(
            (*p, "kv_b_proj"), f"{hf}.kv_b_proj.weight", h, cfg.qk_nope_head_dim + cfg.v_head_dim
        ),
        _heads_out((*p, "o_proj"), f"{hf}.o_proj.weight", h, cfg.v_head_dim),
    ]
    return maps


def _layer_maps(cfg: ModelConfig, p: Path, hf: str, layer_index: int) -> list[TensorMap]:
    maps = [
        _copy((*p, "input_norm", "weight"), f"{hf}.input_layernorm.weight"),
        _copy((*p, "post_attn_norm", "weight"), f"{hf}.post_attention_layernorm.weight"),
        *_attention_maps(cfg, (*p, "attn"), f"{hf}.self_attn"),
    ]
    if not cfg.is_moe_layer(layer_index):
        return maps + _mlp_maps((*p, "mlp"), f"{hf}.mlp")
    m, e = (*p, "mlp"), cfg.n_routed_experts
    maps += [
        _linear((*m, "gate"), f"{hf}.mlp.gate.weight"),
        _copy((*m, "e_score_correction_bias"), f"{hf}.mlp.gate.e_score_correction_bias"),
        _experts((*m, "w_gate"), f"{hf}.mlp", "gate_proj", e),
        _experts((*m, "w_up"), f"{hf}.mlp", "up_proj", e),
        _experts((*m, "w_down"), f"{hf}.mlp", "down_proj", e),
    ]
    if cfg.n_shared_experts:
        maps += _mlp_maps((*m, "shared_experts"), f"{hf}.mlp.shared_experts")
    return maps


def tensor_maps(cfg: ModelConfig) -> list[TensorMap]:
    """Every HF tensor of a `cfg` checkpoint and the r1 variable it becomes."""
    maps = [
        _copy(("embed", "embedding"), "model.embed_tokens.weight"),
        _copy(("final_norm", "weight"), "model.norm.weight"),
    ]
    if not cfg.tie_word_embeddings:
        maps.append(_linear(("lm_head",), "lm_head.weight"))
    for i in range(cfg.num_layers):
        maps += _layer_maps(cfg, ("layers", i), f"model.layers.{i}", i)
    for k in range(cfg.num_mtp_layers):
        index = cfg.num_layers + k
        hf, p = f"model.layers.{index}", ("mtp", k)
        maps += [
            _copy((*p, "enorm", "weight"), f"{hf}.enorm.weight"),
            _copy((*p, "hnorm", "weight"), f"{hf}.hnorm.weight"),
            _linear((*p, "eh_proj"), f"{hf}.eh_proj.weight"),
            _copy((*p, "final_norm", "weight"), f"{hf}.shared_head.norm.weight"),
            *_layer_maps(cfg, (*p, "block"), hf, index),
        ]
    return maps
