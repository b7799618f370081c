"""Typed, frozen model configuration.

Modules never read an `ml_collections.ConfigDict`: configs are converted at the boundary with
`ModelConfig.from_dict`, which rejects unknown fields and wrong types by name.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

ROPE_TYPES = ("default", "llama3", "yarn")
ATTENTION_TYPES = ("gqa", "mla")
# How training / prefill self-attention runs: "xla" (einsums, or the blockwise path past
# attention_block_size), "cudnn" (jax.nn.dot_product_attention's fused GPU kernel), "pallas"
# (a Pallas flash/splash kernel for TPU).
ATTENTION_IMPLS = ("xla", "cudnn", "pallas")
DECODE_ATTENTION_IMPLS = ("auto", "xla", "pallas")
SCORING_FUNCS = ("sigmoid", "softmax")
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling. `rope_type` is one of `ROPE_TYPES`.

    llama3 uses `factor`, `low_freq_factor`, `high_freq_factor`, `original_max_position_embeddings`.
    yarn uses `factor`, `original_max_position_embeddings`, `beta_fast`, `beta_slow`, `mscale`,
    `mscale_all_dim` (DeepSeek-V3 style attention-scale correction) and `attention_factor`.
    """

    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor: float | None = None
    truncate: bool = True

    def __post_init__(self):
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(
                f"rope_scaling.rope_type={self.rope_type!r} is not supported; expected one of "
                f"{ROPE_TYPES}"
            )


# The fields a run chooses and a checkpoint does not fix: precision, memory (remat, chunking,
# scan) and the MoE balancing / loss settings of training. Loading a checkpoint takes its
# architecture from its config.json and these from the run's config.
EXECUTION_FIELDS = (
    "dtype",
    "param_dtype",
    "remat_policy",
    "attention_block_size",
    "logits_chunk_size",
    "moe_token_chunk_size",
    "scan_layers",
    "attention_impl",
    "decode_attention_impl",
    "fused_projections",
    "aux_loss_alpha",
    "bias_update_rate",
    "capacity_factor",
    "mtp_loss_weight",
)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only transformer (Llama, Qwen2/2.5, DeepSeek-V3 families).

    Dense families use grouped-query attention (`attention_type="gqa"`). DeepSeek-V3 uses
    Multi-head Latent Attention (`attention_type="mla"`) and DeepSeekMoE layers after the first
    `first_k_dense_replace` dense layers whenever `n_routed_experts > 0`.
    """

    family: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 512
    num_layers: int = 8
    num_heads: int = 8
    num_kv_heads: int = 8
    head_dim: int = 64
    intermediate_size: int = 1408
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 4096
    attention_bias: bool = False
    tie_word_embeddings: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat_policy: str = "none"
    # Execution (not architecture; HF conversion ignores them). attention_block_size: training /
    # prefill self-attention longer than this runs blockwise in tiles of this many tokens
    # (0: always dense [T, T] scores). logits_chunk_size: log-probs over the vocabulary are
    # computed this many positions at a time (0: all at once). moe_token_chunk_size: the
    # expert-parallel MoE dispatches this many local tokens at a time (0: all at once).
    attention_block_size: int = 0
    logits_chunk_size: int = 0
    moe_token_chunk_size: int = 0
    # scan_layers: consecutive decoder layers of one kind (dense, MoE) keep their parameters
    # stacked on a leading "layers" axis and run under `lax.scan`, so a compiled program holds
    # one layer's code per kind instead of num_layers copies (compile time independent of
    # depth; the 61-layer DeepSeek-V3 step). Same numbers either way; checkpoints in HF layout
    # convert both ways.
    scan_layers: bool = False
    # attention_impl: the kernel training / prefill self-attention runs through (one of
    # ATTENTION_IMPLS).
    # decode_attention_impl: what a decode step's attention against the KV cache runs:
    # "pallas" a Pallas kernel (r1.sampling.decode_kernel: GQA, and MLA's absorbed attention
    # over the latent cache), "xla" the XLA form, "auto" the kernel when attention_impl is
    # "pallas" (so a model can decode through the kernel while training through XLA attention).
    # fused_projections: q/k/v (MLA: the projections of x) and the MLP / expert gate and up
    # weights are stored joined and run as one GEMM each; HF checkpoints are split and joined
    # at the boundary.
    attention_impl: str = "xla"
    decode_attention_impl: str = "auto"
    fused_projections: bool = False
    attention_type: str = "gqa"
    # Multi-head Latent Attention (attention_type="mla").
    q_lora_rank: int | None = None
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    rope_interleave: bool = True
    # DeepSeekMoE (n_routed_experts > 0).
    n_routed_experts: int = 0
    n_shared_experts: int = 0
    moe_intermediate_size: int = 0
    num_experts_per_tok: int = 0
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = True
    scoring_func: str = "sigmoid"
    first_k_dense_replace: int = 0
    aux_loss_alpha: float = 0.0
    bias_update_rate: float = 0.0
    capacity_factor: float | None = None
    # Multi-token prediction modules (DeepSeek-V3 `num_nextn_predict_layers`).
    num_mtp_layers: int = 0
    mtp_loss_weight: float = 0.3

    def __post_init__(self):
        def need(cond: bool, field: str, msg: str):
            if not cond:
                raise ValueError(f"ModelConfig.{field}: {msg}")

        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads"):
            need(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        need(self.dtype in DTYPES, "dtype", f"expected one of {DTYPES}, got {self.dtype!r}")
        need(self.param_dtype in DTYPES, "param_dtype", f"expected one of {DTYPES}")
        need(
            self.remat_policy in REMAT_POLICIES,
            "remat_policy",
            f"expected one of {REMAT_POLICIES}, got {self.remat_policy!r}",
        )
        for name in ("attention_block_size", "logits_chunk_size", "moe_token_chunk_size"):
            need(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        need(
            self.attention_impl in ATTENTION_IMPLS,
            "attention_impl",
            f"expected one of {ATTENTION_IMPLS}, got {self.attention_impl!r}",
        )
        need(
            self.decode_attention_impl in DECODE_ATTENTION_IMPLS,
            "decode_attention_impl",
            f"expected one of {DECODE_ATTENTION_IMPLS}, got {self.decode_attention_impl!r}",
        )
        need(
            self.attention_type in ATTENTION_TYPES,
            "attention_type",
            f"expected one of {ATTENTION_TYPES}, got {self.attention_type!r}",
        )
        need(
            self.num_heads % self.num_kv_heads == 0,
            "num_kv_heads",
            f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}",
        )
        if self.attention_type == "gqa":
            need(self.head_dim > 0, "head_dim", "must be > 0 for gqa attention")
        else:
            for name in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
                need(getattr(self, name) > 0, name, "must be > 0 for mla attention")
            need(self.qk_rope_head_dim % 2 == 0, "qk_rope_head_dim", "must be even")
        if self.n_routed_experts:
            need(self.num_experts_per_tok > 0, "num_experts_per_tok", "must be > 0 with experts")
            need(
                self.num_experts_per_tok <= self.n_routed_experts,
                "num_experts_per_tok",
                "cannot exceed n_routed_experts",
            )
            need(self.moe_intermediate_size > 0, "moe_intermediate_size", "must be > 0")
            need(
                self.n_routed_experts % self.n_group == 0,
                "n_group",
                f"n_routed_experts={self.n_routed_experts} must be divisible by n_group",
            )
            need(1 <= self.topk_group <= self.n_group, "topk_group", "must be in [1, n_group]")
            need(
                self.scoring_func in SCORING_FUNCS,
                "scoring_func",
                f"expected one of {SCORING_FUNCS}",
            )
            need(
                0 <= self.first_k_dense_replace <= self.num_layers,
                "first_k_dense_replace",
                "must be in [0, num_layers]",
            )

    # ------------------------------------------------------------------ derived quantities
    @property
    def use_decode_kernel(self) -> bool:
        """Whether decode attention against the KV cache runs the Pallas kernel
        (`decode_attention_impl`)."""
        impl = self.decode_attention_impl
        return impl == "pallas" or (impl == "auto" and self.attention_impl == "pallas")

    @property
    def is_moe(self) -> bool:
        return self.n_routed_experts > 0

    def is_moe_layer(self, layer_index: int) -> bool:
        return self.is_moe and layer_index >= self.first_k_dense_replace

    @property
    def num_moe_layers(self) -> int:
        """MoE decoder layers (the MTP modules not counted): the M of routing replay's
        int[B, T, M, k] routes (`Transformer.forward`)."""
        return sum(self.is_moe_layer(i) for i in range(self.num_layers))

    def layer_groups(self) -> tuple[tuple[int, int], ...]:
        """(first layer index, number of layers) of each block of the layer stack: with
        `scan_layers` the runs of consecutive layers of one kind (the dense layers before
        `first_k_dense_replace`, then the MoE layers), else one block per layer."""
        if not self.scan_layers:
            return tuple((i, 1) for i in range(self.num_layers))
        groups: list[tuple[int, int]] = []
        for i in range(self.num_layers):
            if groups and self.is_moe_layer(i) == self.is_moe_layer(groups[-1][0]):
                groups[-1] = (groups[-1][0], groups[-1][1] + 1)
            else:
                groups.append((i, 1))
        return tuple(groups)

    @property
    def qk_head_dim(self) -> int:
        """Width of one query/key head (nope + rope for MLA)."""
        if self.attention_type == "mla":
            return self.qk_nope_head_dim + self.qk_rope_head_dim
        return self.head_dim

    # ------------------------------------------------------------------ conversion
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "model") -> ModelConfig:
        """Builds a config from a mapping, naming unknown fields and wrong types."""
        return dataclass_from_dict(cls, values, where)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def dataclass_from_dict(cls: type, values: Mapping[str, Any], where: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; valid fields are {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}")
    return cls(**kwargs)


def _coerce(annotation: Any, value: Any, where: str):
    """Checks `value` against a simple annotation (int/float/bool/str/Optional/dataclass)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        concrete = [option for option in options if option is not type(None)]
        if len(concrete) == 1:
            return _coerce(concrete[0], value, where)
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, where)
            except (TypeError, ValueError) as err:
                errors.append(str(err))
        raise TypeError(f"{where}: {value!r} does not match {annotation}: {errors}")
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if isinstance(value, Mapping) or hasattr(value, "to_dict"):
            mapping = value.to_dict() if hasattr(value, "to_dict") else value
            return dataclass_from_dict(annotation, mapping, where)
        raise TypeError(f"{where}: expected a mapping for {annotation.__name__}, got {value!r}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"{where}: expected bool, got {type(value).__name__} {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError(f"{where}: expected int, got {type(value).__name__} {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError(f"{where}: expected float, got {type(value).__name__} {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise TypeError(f"{where}: expected str, got {type(value).__name__} {value!r}")
    return value
