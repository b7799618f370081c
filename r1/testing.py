"""Tiny configs and a dummy tokenizer, for r1's tests and for downstream users' tests."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from r1.models.config import ModelConfig, RopeScaling
from r1.rewards import CompiledSpec, Reward, RewardSpec, RewardTerm


def tiny_dense_config(**overrides) -> ModelConfig:
    """A 2-layer Qwen2-style GQA model (vocab 128, width 64) that runs in milliseconds."""
    values = dict(
        family="qwen2",
        vocab_size=128,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        intermediate_size=128,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        attention_bias=True,
        max_position_embeddings=256,
    )
    values.update(overrides)
    return ModelConfig(**values)


def tiny_llama_config(**overrides) -> ModelConfig:
    """A 2-layer Llama-3.1-style model with llama3 rope scaling."""
    values = dict(
        family="llama",
        vocab_size=128,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        intermediate_size=128,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=RopeScaling(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=64,
        ),
        max_position_embeddings=256,
    )
    values.update(overrides)
    return ModelConfig(**values)


def tiny_moe_config(**overrides) -> ModelConfig:
    """A 3-layer DeepSeek-V3-style model: MLA, 1 dense layer, then MoE with 8 routed experts in
    2 groups, top-2 experts from the top-1 group, 1 shared expert, YaRN rope, one MTP depth."""
    values = dict(
        family="deepseek_v3",
        vocab_size=128,
        hidden_size=64,
        num_layers=3,
        num_heads=4,
        num_kv_heads=4,
        head_dim=0,
        intermediate_size=128,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        rope_scaling=RopeScaling(
            rope_type="yarn",
            factor=4.0,
            original_max_position_embeddings=64,
            beta_fast=32.0,
            beta_slow=1.0,
            mscale=1.0,
            mscale_all_dim=1.0,
        ),
        max_position_embeddings=256,
        attention_type="mla",
        q_lora_rank=32,
        kv_lora_rank=16,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        n_routed_experts=8,
        n_shared_experts=1,
        moe_intermediate_size=32,
        num_experts_per_tok=2,
        n_group=2,
        topk_group=1,
        routed_scaling_factor=2.5,
        norm_topk_prob=True,
        scoring_func="sigmoid",
        first_k_dense_replace=1,
        aux_loss_alpha=0.0001,
        bias_update_rate=0.001,
        num_mtp_layers=1,
    )
    values.update(overrides)
    return ModelConfig(**values)


class DummyTokenizer:
    """Byte-level tokenizer: ids 0..2 are pad/bos/eos, byte b is id b + 3 (vocab 259)."""

    pad_id, bos_id, eos_id = 0, 1, 2
    vocab_size = 259

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = [b + 3 for b in text.encode("utf-8")]
        return [self.bos_id, *ids] if add_bos else ids

    def decode(self, ids: Sequence[int]) -> str:
        data = bytes(int(i) - 3 for i in ids if int(i) >= 3)
        return data.decode("utf-8", errors="replace")


def random_tokens(seed: int, batch: int, length: int, vocab: int) -> np.ndarray:
    """int32[batch, length] uniform in [3, vocab)."""
    return np.random.default_rng(seed).integers(3, vocab, size=(batch, length), dtype=np.int32)


class _ByteIdsWithoutEos(DummyTokenizer):
    eos_id = None  # no token is masked out of what the reward sees


def token_share_scorer(token_id: int) -> CompiledSpec:
    """A compiled reward spec whose one token term scores the share of completion tokens
    equal to `token_id` (float32[B] in [0, 1]; no EOS masking): the benchmarks' stand-in for a
    rule reward, fused into the GRPO step."""

    def share(tokens: jax.Array, mask: jax.Array, ids: object, **fields: object) -> jax.Array:
        hits = jnp.sum((tokens == token_id) & mask, axis=1)
        return hits / jnp.maximum(jnp.sum(mask, axis=1), 1)

    term = RewardTerm("target_share", reward=Reward("target_share", "token", share))
    return RewardSpec((term,)).compile(_ByteIdsWithoutEos())
