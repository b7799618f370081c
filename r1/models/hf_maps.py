"""How each Hugging Face tensor maps onto r1's variables and back (`r1.models.hf`): one
`TensorMap` per HF tensor group (transposes, head splits, stacked experts), for Llama, Qwen2
and DeepSeek-V3 layouts, unscanned or scanned layers.

With `ModelConfig.fused_projections` one r1 variable joins several HF tensors (q/k/v, gate/up,
experts' gate/up, MLA's q_a_proj + kv_a_proj_with_mqa): import joins them lazily (`join`: a
device's slice reads only the overlapping slices of the parts), export splits them again, so
the HF files are the same either way."""

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


def _full_index(index: tuple[slice, ...], ndim: int) -> tuple[slice, ...]:
    return tuple(index) + (slice(None),) * (ndim - len(index))


def expand(part: HostTensor, axis: int) -> HostTensor:
    """`part` with a new axis of size 1 at `axis` (a view for arrays, lazy for `Lazy`)."""
    if not isinstance(part, Lazy):
        return np.expand_dims(part, axis)
    shape = (*part.shape[:axis], 1, *part.shape[axis:])

    def get(index):
        index = _full_index(index, len(shape))
        value = np.expand_dims(np.asarray(part[index[:axis] + index[axis + 1 :]]), axis)
        return value[(slice(None),) * axis + (index[axis],)]

    return Lazy(shape, get)


def join(parts: Sequence[HostTensor], axis: int) -> Lazy:
    """`np.concatenate(parts, axis)` on demand: a slice reads only the parts' overlapping
    slices (so a device materialises only its own shard of a joined tensor)."""
    sizes = [part.shape[axis] for part in parts]
    offsets = np.cumsum([0, *sizes]).tolist()
    shape = list(parts[0].shape)
    shape[axis] = offsets[-1]

    def get(index):
        index = _full_index(index, len(shape))
        start, stop, step = index[axis].indices(shape[axis])
        if step != 1:
            raise ValueError(f"join: strided index {index[axis]} is not supported")
        pieces = []
        for part, lo, size in zip(parts, offsets, sizes):
            a = min(max(start - lo, 0), size)
            b = min(max(stop - lo, 0), size)
            if a < b or (not pieces and part is parts[-1]):  # parts outside are never read
                local = index[:axis] + (slice(a, b),) + index[axis + 1 :]
                pieces.append(np.asarray(part[local]))
        return np.concatenate(pieces, axis=axis)

    return Lazy(shape, get)


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


def _mlp_maps(prefix: Path, hf: str, fused: bool = False) -> list[TensorMap]:
    down = _linear((*prefix, "down"), f"{hf}.down_proj.weight")
    if not fused:
        return [
            _linear((*prefix, "gate"), f"{hf}.gate_proj.weight"),
            _linear((*prefix, "up"), f"{hf}.up_proj.weight"),
            down,
        ]
    # gate_up [in, 2, out] <-> gate_proj.weight, up_proj.weight [out, in]
    names = (f"{hf}.gate_proj.weight", f"{hf}.up_proj.weight")
    gate_up = TensorMap(
        ((*prefix, "gate_up"),),
        names,
        lambda read: [join([expand(read(name).T, 1) for name in names], axis=1)],
        lambda a: [a[0][:, 0].T, a[0][:, 1].T],
    )
    return [gate_up, down]


def _stacked_experts(read: Callable[[str], np.ndarray], names: Sequence[str]) -> Lazy:
    """HF Linear weights `names` (one per expert, [out, in]) as a lazy r1 [E, in, out]: a slice
    reads only its experts."""
    n = len(names)
    out_dim, in_dim = read(names[0]).shape

    def get(index):
        index = _full_index(index, 3)
        experts = range(n)[index[0]]
        stacked = np.stack([np.asarray(read(names[e]).T) for e in experts])
        return stacked[(slice(None), *index[1:])]

    return Lazy((n, in_dim, out_dim), get)


def _expert_names(hf: str, proj: str, n: int) -> tuple[str, ...]:
    return tuple(f"{hf}.experts.{e}.{proj}.weight" for e in range(n))


def _experts(path: Path, hf: str, proj: str, n: int) -> TensorMap:
    """Per-expert HF Linear weights `{hf}.experts.{e}.{proj}.weight` [out, in] <-> r1 [E, in, out],
    read lazily so a device only materialises its own experts."""
    names = _expert_names(hf, proj, n)
    return TensorMap(
        (path,),
        names,
        lambda read: [_stacked_experts(read, names)],
        lambda a: [w.T for w in a[0]],
    )


def _experts_gate_up(path: Path, hf: str, n: int) -> TensorMap:
    """Experts' gate_proj and up_proj weights [out, in] <-> r1 w_gate_up [E, in, 2, out]
    (fused_projections), lazily like `_experts`."""
    gates, ups = _expert_names(hf, "gate_proj", n), _expert_names(hf, "up_proj", n)

    def to_r1(read):
        parts = [expand(_stacked_experts(read, names), 2) for names in (gates, ups)]
        return [join(parts, axis=2)]

    def to_hf(a):
        return [w[:, 0].T for w in a[0]] + [w[:, 1].T for w in a[0]]

    return TensorMap((path,), gates + ups, to_r1, to_hf)


def _fused_qkv_maps(cfg: ModelConfig, p: Path, hf: str) -> list[TensorMap]:
    """q/k/v_proj.weight [heads * head_dim, in] (+ .bias) <-> r1 qkv_proj [in, kv_heads,
    groups + 2, head_dim] (+ qkv_bias [kv_heads, groups + 2, head_dim]); query head h =
    kv_head * groups + g."""
    h, kv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    g = h // kv

    def tensor_map(path: Path, kind: str, transpose: bool) -> TensorMap:
        names = tuple(f"{hf}.{x}_proj.{kind}" for x in "qkv")

        def r1_part(w, heads):  # [heads * hd, in] or [heads * hd] -> [(in,) kv, heads/kv, hd]
            lead = (w.shape[1],) if transpose else ()
            return (w.T if transpose else w).reshape(*lead, kv, heads // kv, hd)

        def to_r1(read):
            q, k, v = (read(name) for name in names)
            parts = [r1_part(q, h), r1_part(k, kv), r1_part(v, kv)]
            return [join(parts, axis=len(parts[0].shape) - 2)]

        def to_hf(a):
            w = a[0]
            lead = w.shape[:-3]
            parts = (w[..., :g, :], w[..., g, :], w[..., g + 1, :])
            flat = [x.reshape(*lead, -1) for x in parts]
            return [x.T for x in flat] if transpose else flat

        return TensorMap((path,), names, to_r1, to_hf)

    maps = [tensor_map((*p, "qkv_proj"), "weight", True)]
    if cfg.attention_bias:
        maps.append(tensor_map((*p, "qkv_bias"), "bias", False))
    return maps


def _attention_maps(cfg: ModelConfig, p: Path, hf: str) -> list[TensorMap]:
    h, kv = cfg.num_heads, cfg.num_kv_heads
    if cfg.attention_type == "gqa" and cfg.fused_projections:
        return [
            *_fused_qkv_maps(cfg, p, hf),
            _heads_out((*p, "o_proj"), f"{hf}.o_proj.weight", h, cfg.head_dim),
        ]
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
    if cfg.q_lora_rank is None and not cfg.fused_projections:
        maps.append(_heads_in((*p, "q_proj"), f"{hf}.q_proj.weight", h, qk))
    elif cfg.q_lora_rank is not None:
        if not cfg.fused_projections:
            maps.append(_linear((*p, "q_a_proj"), f"{hf}.q_a_proj.weight"))
        maps += [
            _copy((*p, "q_a_norm", "weight"), f"{hf}.q_a_layernorm.weight"),
            _heads_in((*p, "q_b_proj"), f"{hf}.q_b_proj.weight", h, qk),
        ]
    mqa = f"{hf}.kv_a_proj_with_mqa.weight"
    rank = cfg.kv_lora_rank
    if cfg.fused_projections:
        # qkv_a_proj [in, P + C + R] <-> (q_a_proj or q_proj).weight [P, in] and
        # kv_a_proj_with_mqa.weight [C + R, in], side by side.
        q_name = f"{hf}.q_proj.weight" if cfg.q_lora_rank is None else f"{hf}.q_a_proj.weight"
        q_dim = cfg.q_lora_rank if cfg.q_lora_rank is not None else h * qk
        maps.append(
            TensorMap(
                ((*p, "qkv_a_proj"),),
                (q_name, mqa),
                lambda read: [join([read(q_name).T, read(mqa).T], axis=1)],
                lambda a: [a[0][:, :q_dim].T, a[0][:, q_dim:].T],
            )
        )
    else:
        maps.append(
            TensorMap(
                ((*p, "kv_a_proj"), (*p, "k_rope_proj")),
                (mqa,),
                lambda read: [read(mqa)[:rank].T, read(mqa)[rank:].T],
                lambda a: [np.concatenate([a[0].T, a[1].T], axis=0)],
            )
        )
    maps += [
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
    fused = cfg.fused_projections
    if not cfg.is_moe_layer(layer_index):
        return maps + _mlp_maps((*p, "mlp"), f"{hf}.mlp", fused)
    m, e = (*p, "mlp"), cfg.n_routed_experts
    maps += [
        _linear((*m, "gate"), f"{hf}.mlp.gate.weight"),
        _copy((*m, "e_score_correction_bias"), f"{hf}.mlp.gate.e_score_correction_bias"),
    ]
    if fused:
        maps.append(_experts_gate_up((*m, "w_gate_up"), f"{hf}.mlp", e))
    else:
        maps += [
            _experts((*m, "w_gate"), f"{hf}.mlp", "gate_proj", e),
            _experts((*m, "w_up"), f"{hf}.mlp", "up_proj", e),
        ]
    maps.append(_experts((*m, "w_down"), f"{hf}.mlp", "down_proj", e))
    if cfg.n_shared_experts:
        maps += _mlp_maps((*m, "shared_experts"), f"{hf}.mlp.shared_experts", fused)
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
