"""A GRPO step's sampled rows (`Rollout`) and their metrics (phase 6 of `r1.rl.step`):
rewards, lengths, accuracy, per-domain means and what the rows' lengths cost the sampler."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from r1.rewards import ScorerOutput
from r1.rl.grpo import zero_variance_groups
from r1.sampling.sampler import SamplingConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Rollout:
    """One step's sampled rows (B = P * G; row p * G + g is prompt p's g-th completion).

    prompt_tokens int32[P, L] (left-padded), prompt_mask bool[P, L]; completion int32[B, N],
    completion_mask bool[B, N] (through EOS), logprobs float32[B, N] (pi_old, from the
    sampler), lengths int32[B], truncated bool[B]; fields: the per-prompt batch fields repeated
    per row, {name: [B, ...]}. decode_steps: int32[], the sampler's decode steps. routes:
    int16[B, L + N, M, k], each fed token's experts in the M MoE layers as the sampler chose
    them (-1: not fed), for an MoE policy (`SamplingConfig.record_routes`); None otherwise.
    """

    prompt_tokens: jax.Array
    prompt_mask: jax.Array
    completion: jax.Array
    completion_mask: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    truncated: jax.Array
    fields: dict[str, jax.Array]
    decode_steps: jax.Array
    routes: jax.Array | None = None


def correct_rows(scores: ScorerOutput, accuracy_reward: str | None) -> jax.Array | None:
    """bool[B]: rows whose accuracy reward is > 0.5 (any of `accuracy_reward`'s
    comma-separated labels: per-domain accuracy rewards, each 0 off its domain), or None."""
    if not accuracy_reward:
        return None
    labels = [label.strip() for label in accuracy_reward.split(",") if label.strip()]
    missing = [label for label in labels if label not in scores.parts]
    if missing:
        raise ValueError(
            f"GRPOConfig.accuracy_reward={accuracy_reward!r}: {missing} not among the "
            f"rewards {sorted(scores.parts)}"
        )
    correct = scores.parts[labels[0]] > 0.5
    for label in labels[1:]:
        correct = correct | (scores.parts[label] > 0.5)
    return correct


def domain_metrics(
    rows: Rollout, scores: ScorerOutput, correct: jax.Array | None, domains: tuple[str, ...]
) -> dict[str, jax.Array]:
    """Per-domain `rows/domain/<d>` (count), `reward/domain/<d>`, `response_length/domain/<d>`
    and `accuracy/domain/<d>` (means over the domain's rows; 0 when it has none this step)."""
    out = {}
    lengths = rows.lengths.astype(jnp.float32)
    for index, name in enumerate(domains):
        selected = (rows.fields["domain"] == index).astype(jnp.float32)
        count = jnp.sum(selected)
        denominator = jnp.maximum(count, 1.0)
        out[f"rows/domain/{name}"] = count
        out[f"reward/domain/{name}"] = jnp.sum(scores.total * selected) / denominator
        out[f"response_length/domain/{name}"] = jnp.sum(lengths * selected) / denominator
        if correct is not None:
            out[f"accuracy/domain/{name}"] = (
                jnp.sum(correct.astype(jnp.float32) * selected) / denominator
            )
    return out


def step_metrics(
    rows: Rollout,
    scores: ScorerOutput,
    rewards_pg,
    accuracy_reward: str | None,
    sampling: SamplingConfig,
    domains: tuple[str, ...] = (),
) -> dict:
    """Phase 6: rollout and reward metrics (the update's come from `policy_update`), and per-
    domain ones for the scorer's `domains`."""
    lengths = rows.lengths.astype(jnp.float32)
    rewards = scores.total
    metrics = {
        "reward/total": jnp.mean(rewards),
        "reward/std": jnp.std(rewards),
        "response_length/mean": jnp.mean(lengths),
        "response_length/max": jnp.max(lengths),
        "truncated_frac": jnp.mean(rows.truncated.astype(jnp.float32)),
        "zero_variance_group_frac": jnp.mean(zero_variance_groups(rewards_pg).astype(jnp.float32)),
        "generated_tokens": jnp.sum(lengths),
        **rollout_length_metrics(rows, sampling),
    }
    for name, values in scores.parts.items():
        metrics[f"reward/{name}"] = jnp.mean(values.astype(jnp.float32))
    for name, count in scores.failures.items():
        metrics[f"reward_failures/{name}"] = count.astype(jnp.float32)
    correct = correct_rows(scores, accuracy_reward)
    if correct is not None:
        metrics["accuracy"] = jnp.mean(correct.astype(jnp.float32))
    if domains and "domain" in rows.fields:
        metrics.update(domain_metrics(rows, scores, correct, domains))
    return metrics


def rollout_length_metrics(rows: Rollout, sampling: SamplingConfig) -> dict[str, jax.Array]:
    """What the rollout's lengths cost: `rollout/decode_steps` (the decode loop's steps),
    `rollout/slot_occupancy` (the share of row-steps decoded that produced a real token:
    generated tokens / (steps x rows decoded at once, `SamplingConfig.decode_rows`)) and
    `rollout/longest_row` (tokens)."""
    steps = rows.decode_steps.astype(jnp.float32)
    width = sampling.decode_rows(rows.lengths.shape[0])
    generated = jnp.sum(rows.lengths.astype(jnp.float32))
    return {
        "rollout/decode_steps": steps,
        "rollout/slot_occupancy": generated / jnp.maximum(steps * width, 1.0),
        "rollout/longest_row": jnp.max(rows.lengths).astype(jnp.float32),
    }
