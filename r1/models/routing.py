"""DeepSeekMoE routing as pure functions (`r1.models.moe` re-exports them): the router's
top-k choice, routing replay of recorded choices, an optional per-expert capacity, per-layer
routing statistics with the sequence-wise balance loss, and the aux-loss-free bias update."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from r1.models.config import ModelConfig


# ------------------------------------------------------------------------------- routing
def route(
    logits: jax.Array,
    bias: jax.Array,
    cfg: ModelConfig,
    *,
    group_fill: float = -math.inf,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """DeepSeek-V3 router (matches transformers `DeepseekV3TopkRouter`).

    Args:
      logits: float32[N, E] router logits u_t . e_i.
      bias: float32[E] balancing bias b_i (used for the choice only, never for the weights).
      cfg: uses n_routed_experts, num_experts_per_tok, n_group, topk_group, norm_topk_prob,
        routed_scaling_factor and scoring_func.
      group_fill: value given to the biased scores of experts in groups that were not kept.
        The installed transformers (5.x) and DeepSeek's reference `inference/model.py` use -inf
        (the default). Older transformers releases (4.4x-4.5x) filled with 0.0; the two differ
        when biased scores are negative (a negative-scored expert of a kept group can lose to a
        0.0-filled expert of a dropped group). Pass 0.0 to reproduce those releases.

    Returns:
      topk_idx: int32[N, k] chosen experts (sorted by biased score, best first).
      topk_weight: float32[N, k] gate weights: the unbiased affinities of the chosen experts,
        normalised over the chosen when norm_topk_prob, times routed_scaling_factor.
      scores: float32[N, E] affinities: sigmoid(logits) ("sigmoid", V3) or softmax(logits)
        ("softmax", V2).

    Selection: groups are ranked by the sum of their top-2 biased scores (sigmoid, V3) or by
    their max biased score (softmax, DeepSeek-V2 `group_limited_greedy`); the best `topk_group`
    groups are kept and the top-k experts are chosen among them on the biased scores.
    """
    n, e = logits.shape
    k, n_group = cfg.num_experts_per_tok, cfg.n_group
    logits = logits.astype(jnp.float32)
    if cfg.scoring_func == "sigmoid":
        scores = jax.nn.sigmoid(logits)
    elif cfg.scoring_func == "softmax":
        scores = jax.nn.softmax(logits, axis=-1)
    else:
        raise ValueError(f"ModelConfig.scoring_func: unknown {cfg.scoring_func!r}")
    choice = scores + jax.lax.stop_gradient(bias.astype(jnp.float32))[None, :]
    if n_group > 1:
        per_group = e // n_group
        grouped = choice.reshape(n, n_group, per_group)
        if cfg.scoring_func == "sigmoid":
            group_scores = jax.lax.top_k(grouped, min(2, per_group))[0].sum(-1)  # [N, G]
        else:
            group_scores = grouped.max(-1)
        _, group_idx = jax.lax.top_k(group_scores, cfg.topk_group)  # [N, topk_group]
        group_keep = jnp.zeros((n, n_group), bool).at[jnp.arange(n)[:, None], group_idx].set(True)
        expert_keep = jnp.repeat(group_keep, per_group, axis=1)  # [N, E]
        choice = jnp.where(expert_keep, choice, jnp.float32(group_fill))
    _, topk_idx = jax.lax.top_k(choice, k)
    topk_weight = jnp.take_along_axis(scores, topk_idx, axis=-1)
    if cfg.norm_topk_prob:
        topk_weight = topk_weight / (topk_weight.sum(-1, keepdims=True) + 1e-20)
    topk_weight = topk_weight * cfg.routed_scaling_factor
    return topk_idx.astype(jnp.int32), topk_weight, scores


def replay_routes(
    own_idx: jax.Array, scores: jax.Array, replay: jax.Array, cfg: ModelConfig
) -> tuple[jax.Array, jax.Array]:
    """Routing replay: the experts a token uses and their gates when a recorded choice is
    replayed (the rollout's routes in the training forward).

    own_idx: int32[N, k] the router's own choice; scores: float32[N, E] its affinities;
    replay: int[N, k] recorded experts, a row of -1 where nothing was recorded (the token
    then routes itself). Returns (topk_idx int32[N, k], topk_weight float32[N, k]): the
    gates are the current router's affinities of the used experts, normalised and scaled as
    in `route`, so the router still gets its gradient through them.
    """
    recorded = replay[:, :1] >= 0  # [N, 1]
    idx = jnp.where(recorded, replay.astype(jnp.int32), own_idx)
    weight = jnp.take_along_axis(scores, idx, axis=-1)
    if cfg.norm_topk_prob:
        weight = weight / (weight.sum(-1, keepdims=True) + 1e-20)
    return idx, weight * cfg.routed_scaling_factor


def capacity_keep_mask(
    topk_idx: jax.Array, valid: jax.Array, n_experts: int, capacity: int
) -> jax.Array:
    """Which assignments fit in a per-expert capacity.

    topk_idx: int32[N, k]; valid: bool[N] (padding tokens never take capacity). Priority goes
    slot by slot (every token's first choice before any second choice), then token order.
    Returns bool[N, k], False for padding and for assignments beyond `capacity`.
    """
    n, k = topk_idx.shape
    onehot = jax.nn.one_hot(topk_idx, n_experts, dtype=jnp.int32)  # [N, k, E]
    onehot = onehot * valid[:, None, None].astype(jnp.int32)
    slot_major = jnp.swapaxes(onehot, 0, 1).reshape(k * n, n_experts)
    position = jnp.cumsum(slot_major, axis=0) - 1  # position within expert, per assignment
    position = jnp.sum(position * slot_major, axis=-1).reshape(k, n).T  # [N, k]
    return valid[:, None] & (position < capacity)


def expert_capacity(n_tokens: int, cfg: ModelConfig) -> int | None:
    """Static per-expert capacity ceil(capacity_factor * N * k / E), or None (dropless)."""
    if cfg.capacity_factor is None:
        return None
    cap = cfg.capacity_factor * n_tokens * cfg.num_experts_per_tok / cfg.n_routed_experts
    return max(1, math.ceil(cap))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RoutingStats:
    """One MoE layer's routing statistics of a forward pass (a pytree; `ModelOutput.moe` holds
    one per MoE layer in forward order). All float32:

    expert_load [E]: valid token assignments per expert (before any capacity drop).
    balance_loss []: the alpha-weighted sequence-wise balance loss (`routing_stats`).
    max_mean_load_ratio []: max(load) / mean(load).
    dead_expert_fraction []: share of experts with zero load.
    dropped_fraction [] or None: share of valid assignments dropped by the expert capacity
      (None for dropless routing).
    routes int32[B, T, k] or None: the experts this layer's own router picked for each token
      (best first; -1 for padding), whatever a replay then used (`MoE.__call__`); the sampler
      records them for routing replay and the trainer compares them with the recorded ones.

    Stacked (a scanned block's layers, micro-batch slices) each field gains leading axes.
    """

    expert_load: jax.Array
    balance_loss: jax.Array
    max_mean_load_ratio: jax.Array
    dead_expert_fraction: jax.Array
    dropped_fraction: jax.Array | None = None
    routes: jax.Array | None = None


def total_balance_loss(stats: Sequence[RoutingStats]) -> jax.Array:
    """float32[]: the layers' (alpha-weighted) balance losses added in forward order; 0 when
    there are none (a dense model)."""
    return sum((s.balance_loss for s in stats), jnp.zeros((), jnp.float32))


def load_diagnostics(stats: Sequence[RoutingStats]) -> dict[str, jax.Array]:
    """{"moe/max_mean_load_ratio", "moe/dead_expert_fraction"}: float32[] means over the MoE
    layers ({} for a dense model)."""
    if not stats:
        return {}
    return {
        "moe/max_mean_load_ratio": jnp.mean(jnp.stack([s.max_mean_load_ratio for s in stats])),
        "moe/dead_expert_fraction": jnp.mean(jnp.stack([s.dead_expert_fraction for s in stats])),
    }


def routing_stats(
    topk_idx: jax.Array,
    scores: jax.Array,
    token_mask: jax.Array,
    cfg: ModelConfig,
    keep: jax.Array | None = None,
) -> RoutingStats:
    """Per-layer routing statistics and the sequence-wise balance loss.

    Args:
      topk_idx: int32[B, T, k] chosen experts. scores: float32[B, T, E] affinities.
      token_mask: bool[B, T], False for padding (ignored everywhere).
      keep: optional bool[B, T, k] capacity mask (adds `dropped_fraction`).

    Returns the `RoutingStats`:
      expert_load [E]: valid token assignments per expert (before any capacity drop).
      balance_loss []: aux_loss_alpha * mean over sequences (with >= 1 valid token) of
        sum_i f_i P_i, f_i = E / (k T_b) * #tokens choosing i, P_i = mean_t s_i / sum_j s_j
        (DeepSeek-V3 complementary sequence-wise loss; T_b = valid tokens in sequence b).
      max_mean_load_ratio []: max(load) / mean(load). dead_expert_fraction []: share of
      experts with zero load. dropped_fraction []: share of valid assignments dropped by the
      capacity (only when `keep` is given).
    """
    e, k = cfg.n_routed_experts, cfg.num_experts_per_tok
    valid = token_mask.astype(jnp.float32)  # [B, T]
    chosen = jax.nn.one_hot(topk_idx, e, dtype=jnp.float32).sum(-2)  # [B, T, E]
    chosen = chosen * valid[..., None]
    counts = chosen.sum(1)  # [B, E]
    load = counts.sum(0)  # [E]
    n_valid = valid.sum(1)  # [B]
    denom = jnp.maximum(n_valid, 1.0)[:, None]
    f = counts * (e / k) / denom  # [B, E]
    normed = scores / (scores.sum(-1, keepdims=True) + 1e-20)
    p = jnp.sum(normed * valid[..., None], axis=1) / denom  # [B, E]
    per_seq = jnp.sum(f * p, axis=-1)  # [B]
    has_tokens = (n_valid > 0).astype(jnp.float32)
    seq_loss = jnp.sum(per_seq * has_tokens) / jnp.maximum(has_tokens.sum(), 1.0)
    mean_load = jnp.mean(load)
    dropped_fraction = None
    if keep is not None:
        total = jnp.sum(valid) * k
        dropped = jnp.sum((~keep).astype(jnp.float32) * valid[..., None])
        dropped_fraction = dropped / jnp.maximum(total, 1.0)
    return RoutingStats(
        expert_load=load,
        balance_loss=(cfg.aux_loss_alpha * seq_loss).astype(jnp.float32),
        max_mean_load_ratio=jnp.max(load) / jnp.maximum(mean_load, 1e-9),
        dead_expert_fraction=jnp.mean((load == 0).astype(jnp.float32)),
        dropped_fraction=dropped_fraction,
    )


def update_routing_bias(bias: jax.Array, expert_load: jax.Array, rate: float) -> jax.Array:
    """Auxiliary-loss-free balancing: b_i += rate * sign(mean(load) - load_i).

    bias, expert_load: float32[E]. Overloaded experts go down, underloaded ones up; rate 0
    returns `bias` unchanged.
    """
    load = expert_load.astype(jnp.float32)
    step = jnp.sign(jnp.mean(load) - load)
    return (bias.astype(jnp.float32) + rate * step).astype(bias.dtype)
