r"""Model presets: tiny models for CPU tests and demos, and the real published architectures.

Run a preset through the forward/benchmark job (2-core CPU, under a minute):

    python -m experiments.forward --config=configs/models.py:qwen2_tiny
    python -m experiments.forward --config=configs/models.py:qwen2_tiny \
        --config.model.num_layers=2 --steps=3
    python -m experiments.forward --config=configs/models.py:qwen2_small --steps=5
    python -m experiments.forward --config=configs/models.py:moe_tiny

Real-size presets are for accelerators (one GPU, or a TPU VM where every host runs the same
command), e.g.:

    python -m experiments.forward --config=configs/models.py:qwen2_5_1_5b --seq_len=1024
    python -m experiments.forward --config=configs/models.py:deepseek_v3 --config.mesh.expert=8

In a notebook or test: `r1.configlib.load_config("configs/models.py:qwen2_tiny")`.

Every variant has the fields
  model: exactly the fields of `r1.models.config.ModelConfig` (`rope_scaling` a nested dict of
         `RopeScaling` fields, or None);
  mesh:  sizes of the mesh axes data / fsdp / expert / tensor (-1: all remaining devices);
  seed:  the one seed all randomness flows from.
Every ModelConfig field is present (unset ones at ModelConfig's default); optional fields that
are None (e.g. `q_lora_rank`) are typed placeholders, so they can be set from the command line.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from r1 import configlib

VARIANTS = (
    "qwen2_tiny",
    "qwen2_small",
    "llama_tiny",
    "moe_tiny",
    "qwen2_5_0_5b",
    "qwen2_5_1_5b",
    "qwen2_5_7b",
    "r1_distill_qwen_1_5b",
    "r1_distill_qwen_7b",
    "qwen2_5_14b",
    "qwen2_5_32b",
    "llama3_1_8b",
    "llama3_3_70b",
    "deepseek_v2_lite",
    "deepseek_v3",
)


# ------------------------------------------------------------------------------ tiny (CPU)
def qwen2_tiny() -> dict[str, Any]:
    """Qwen2-style, 1.05M parameters: the CPU demo/test model (vocab 512, width 128)."""
    return dict(
        family="qwen2",
        vocab_size=512,
        hidden_size=128,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        intermediate_size=512,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        max_position_embeddings=2048,
        attention_bias=True,
        tie_word_embeddings=True,
    )


def qwen2_small() -> dict[str, Any]:
    """Qwen2-style, 23.6M parameters outside the (tied) 16.4M embedding: CPU benchmarks."""
    return dict(
        family="qwen2",
        vocab_size=32000,
        hidden_size=512,
        num_layers=8,
        num_heads=8,
        num_kv_heads=4,
        head_dim=64,
        intermediate_size=1408,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        max_position_embeddings=2048,
        attention_bias=True,
        tie_word_embeddings=True,
    )


def llama_tiny() -> dict[str, Any]:
    """Llama-3.1-style with llama3 rope scaling (original context 256 of 2048)."""
    return dict(
        family="llama",
        vocab_size=512,
        hidden_size=128,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        intermediate_size=512,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=256,
        ),
        max_position_embeddings=2048,
    )


def moe_tiny() -> dict[str, Any]:
    """DeepSeek-V3-style (as `r1.testing.tiny_moe_config`, wider): MLA, 1 dense layer then MoE
    with 16 routed experts in 2 groups (top-1 group, top-4 experts), 1 shared expert, YaRN,
    one MTP depth."""
    return dict(
        family="deepseek_v3",
        vocab_size=512,
        hidden_size=128,
        num_layers=4,
        num_heads=4,
        num_kv_heads=4,
        head_dim=0,
        intermediate_size=512,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        rope_scaling=dict(
            rope_type="yarn",
            factor=4.0,
            original_max_position_embeddings=512,
            beta_fast=32.0,
            beta_slow=1.0,
            mscale=1.0,
            mscale_all_dim=1.0,
        ),
        max_position_embeddings=2048,
        attention_type="mla",
        q_lora_rank=64,
        kv_lora_rank=32,
        qk_nope_head_dim=32,
        qk_rope_head_dim=16,
        v_head_dim=32,
        rope_interleave=True,
        n_routed_experts=16,
        n_shared_experts=1,
        moe_intermediate_size=64,
        num_experts_per_tok=4,
        n_group=2,
        topk_group=1,
        routed_scaling_factor=2.5,
        norm_topk_prob=True,
        scoring_func="sigmoid",
        first_k_dense_replace=1,
        aux_loss_alpha=0.0001,
        bias_update_rate=0.001,
        num_mtp_layers=1,
        mtp_loss_weight=0.3,
    )


# ------------------------------------------------------------------------------ published
# Real sizes compute in bfloat16 with float32 parameters (mixed-precision training); for
# inference-only use, `--config.model.param_dtype=bfloat16` halves the memory.
# Llama 3.1 / 3.3's rope scaling ("llama3": factor 8 over an original 8,192 positions).
LLAMA3_ROPE = dict(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=8192,
)


def _published(**fields: Any) -> dict[str, Any]:
    """A published architecture's fields plus how r1 runs real sizes on accelerators (which
    `fields` may override)."""
    return {
        "dtype": "bfloat16",
        "remat_policy": "full",
        "scan_layers": True,  # one layer program per kind: compile time independent of depth
        "attention_block_size": 512,  # long sequences: blockwise attention, chunked log-probs
        "logits_chunk_size": 128,  # positions per chunk, for all of a chip's rows at once
        **fields,
    }


def qwen2_5_0_5b() -> dict[str, Any]:
    """Qwen/Qwen2.5-0.5B (494,032,768 parameters, tied embeddings)."""
    return _published(
        family="qwen2",
        vocab_size=151936,
        hidden_size=896,
        num_layers=24,
        num_heads=14,
        num_kv_heads=2,
        head_dim=64,
        intermediate_size=4864,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        max_position_embeddings=32768,
        attention_bias=True,
        tie_word_embeddings=True,
    )


def qwen2_5_1_5b() -> dict[str, Any]:
    """Qwen/Qwen2.5-1.5B (1,543,714,304 parameters, tied embeddings)."""
    return _published(
        family="qwen2",
        vocab_size=151936,
        hidden_size=1536,
        num_layers=28,
        num_heads=12,
        num_kv_heads=2,
        head_dim=128,
        intermediate_size=8960,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        max_position_embeddings=131072,  # base model; the Instruct config says 32768
        attention_bias=True,
        tie_word_embeddings=True,
    )


def qwen2_5_7b() -> dict[str, Any]:
    """Qwen/Qwen2.5-7B (7,615,616,512 parameters, untied embeddings)."""
    return _published(
        family="qwen2",
        vocab_size=152064,
        hidden_size=3584,
        num_layers=28,
        num_heads=28,
        num_kv_heads=4,
        head_dim=128,
        intermediate_size=18944,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        max_position_embeddings=131072,  # base model; the Instruct config says 32768
        attention_bias=True,
        tie_word_embeddings=False,
    )


def r1_distill_qwen_1_5b() -> dict[str, Any]:
    """deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B (from Qwen2.5-Math-1.5B: theta 1e4, untied)."""
    return _published(
        family="qwen2",
        vocab_size=151936,
        hidden_size=1536,
        num_layers=28,
        num_heads=12,
        num_kv_heads=2,
        head_dim=128,
        intermediate_size=8960,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        max_position_embeddings=131072,  # verify against config.json
        attention_bias=True,
        tie_word_embeddings=False,
    )


def r1_distill_qwen_7b() -> dict[str, Any]:
    """deepseek-ai/DeepSeek-R1-Distill-Qwen-7B (from Qwen2.5-Math-7B: theta 1e4, untied;
    7,615,616,512 parameters, Qwen2.5-7B's shape; max_position_embeddings is the distilled
    model's, Qwen2.5-Math-7B's says 4096)."""
    return {**qwen2_5_7b(), "rope_theta": 10000.0}


def _qwen2_5_wide(num_layers: int, intermediate_size: int) -> dict[str, Any]:
    """Qwen2.5-14B / 32B: hidden 5,120, 40 query / 8 KV heads of 128, eps 1e-5, theta 1e6."""
    return _published(
        family="qwen2",
        vocab_size=152064,
        hidden_size=5120,
        num_layers=num_layers,
        num_heads=40,
        num_kv_heads=8,
        head_dim=128,
        intermediate_size=intermediate_size,
        rms_norm_eps=1e-5,
        rope_theta=1000000.0,
        max_position_embeddings=131072,
        attention_bias=True,
        tie_word_embeddings=False,
    )


def qwen2_5_14b() -> dict[str, Any]:
    """Qwen/Qwen2.5-14B (14,770,033,664 parameters), the R1-Distill-Qwen-14B student."""
    return _qwen2_5_wide(num_layers=48, intermediate_size=13824)


def qwen2_5_32b() -> dict[str, Any]:
    """Qwen/Qwen2.5-32B (32,763,876,352 parameters), the R1-Distill-Qwen-32B student."""
    return _qwen2_5_wide(num_layers=64, intermediate_size=27648)


def llama3_3_70b() -> dict[str, Any]:
    """meta-llama/Llama-3.3-70B-Instruct (70,553,706,496 parameters; Llama-3.1-70B's shape),
    the R1-Distill-Llama-70B student."""
    return _published(
        family="llama",
        vocab_size=128256,
        hidden_size=8192,
        num_layers=80,
        num_heads=64,
        num_kv_heads=8,
        head_dim=128,
        intermediate_size=28672,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=dict(LLAMA3_ROPE),
        max_position_embeddings=131072,
        attention_bias=False,
        tie_word_embeddings=False,
    )


def llama3_1_8b() -> dict[str, Any]:
    """meta-llama/Llama-3.1-8B (8,030,261,248 parameters)."""
    return _published(
        family="llama",
        vocab_size=128256,
        hidden_size=4096,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        intermediate_size=14336,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=dict(LLAMA3_ROPE),
        max_position_embeddings=131072,
        attention_bias=False,
        tie_word_embeddings=False,
    )


def deepseek_v2_lite() -> dict[str, Any]:
    """deepseek-ai/DeepSeek-V2-Lite (15.7B total, 2.4B active): MLA without q compression,
    64 routed experts (softmax gate, greedy top-6, no renormalisation) + 2 shared.
    From memory of its config.json: verify against config.json before loading weights."""
    return _published(
        family="deepseek_v2",
        vocab_size=102400,
        hidden_size=2048,
        num_layers=27,
        num_heads=16,
        num_kv_heads=16,
        head_dim=0,
        intermediate_size=10944,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        rope_scaling=dict(
            rope_type="yarn",
            factor=40.0,
            original_max_position_embeddings=4096,
            beta_fast=32.0,
            beta_slow=1.0,
            mscale=0.707,  # verify against config.json
            mscale_all_dim=0.707,  # verify against config.json
        ),
        max_position_embeddings=163840,
        attention_type="mla",
        q_lora_rank=None,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        rope_interleave=True,
        n_routed_experts=64,
        n_shared_experts=2,
        moe_intermediate_size=1408,
        num_experts_per_tok=6,
        n_group=1,
        topk_group=1,
        routed_scaling_factor=1.0,
        norm_topk_prob=False,
        scoring_func="softmax",
        first_k_dense_replace=1,
        aux_loss_alpha=0.001,
        moe_token_chunk_size=256,
    )


def deepseek_v3() -> dict[str, Any]:
    """deepseek-ai/DeepSeek-V3 (and R1, R1-Zero): 671B total, 37B active per token, + 1 MTP
    depth. Values as REFERENCE.md's DeepSeek-V3 section (its config.json)."""
    return _published(
        family="deepseek_v3",
        vocab_size=129280,
        hidden_size=7168,
        num_layers=61,
        num_heads=128,
        num_kv_heads=128,
        head_dim=0,
        intermediate_size=18432,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        rope_scaling=dict(
            rope_type="yarn",
            factor=40.0,
            original_max_position_embeddings=4096,
            beta_fast=32.0,
            beta_slow=1.0,
            mscale=1.0,
            mscale_all_dim=1.0,
        ),
        max_position_embeddings=163840,
        attention_type="mla",
        q_lora_rank=1536,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        rope_interleave=True,
        n_routed_experts=256,
        n_shared_experts=1,
        moe_intermediate_size=2048,
        num_experts_per_tok=8,
        n_group=8,
        topk_group=4,
        routed_scaling_factor=2.5,
        norm_topk_prob=True,
        scoring_func="sigmoid",
        first_k_dense_replace=3,
        aux_loss_alpha=0.0001,  # paper's sequence-wise alpha; the hub config.json says 0.001
        bias_update_rate=0.001,  # paper: gamma 0.001 for most of training, then 0
        num_mtp_layers=1,
        mtp_loss_weight=0.3,
        # Long-sequence execution (docs/pod_plan.md): blockwise attention over 512-token tiles,
        # log-probs 1,024 positions at a time, MoE dispatch 256 device-local tokens at a time.
        logits_chunk_size=1024,
        moe_token_chunk_size=256,
    )


# ------------------------------------------------------------------------------ assembly
def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(
            f"configs/models.py: unknown variant {variant!r}; choose one of {list(VARIANTS)} "
            "(e.g. --config=configs/models.py:qwen2_tiny)"
        )
    config = ml_collections.ConfigDict()
    config.model = configlib.model_dict(globals()[variant]())
    config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, expert=1, tensor=1))
    config.seed = 0
    return config
