"""Pairwise reward-model losses, as pure functions of scores.

Bradley-Terry: P(chosen > rejected) = sigmoid(r_c - r_r), so the negative log-likelihood of a
pair is `-log sigmoid(r_c - r_r - m)` with an optional margin m >= 0 (Llama 2 style: pairs the
annotators separated more must be separated more by the model).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _pair_mask(r_chosen: jax.Array, mask: jax.Array | None) -> jax.Array:
    if mask is None:
        return jnp.ones(r_chosen.shape, jnp.float32)
    if mask.shape != r_chosen.shape:
        raise ValueError(f"pair mask has shape {mask.shape}, expected {r_chosen.shape}")
    return mask.astype(jnp.float32)


def _check(r_chosen: jax.Array, r_rejected: jax.Array) -> None:
    if r_chosen.ndim != 1 or r_chosen.shape != r_rejected.shape:
        raise ValueError(
            f"scores: expected r_chosen and r_rejected of one shape [P], got "
            f"{r_chosen.shape} and {r_rejected.shape}"
        )


def bradley_terry_losses(
    r_chosen: jax.Array, r_rejected: jax.Array, margin: jax.Array | float = 0.0
) -> jax.Array:
    """Per-pair loss float32[P]: `-log sigmoid(r_chosen - r_rejected - margin)`.

    r_chosen, r_rejected: float[P] scores; margin: float[P] or a scalar.
    """
    _check(r_chosen, r_rejected)
    diff = r_chosen.astype(jnp.float32) - r_rejected.astype(jnp.float32)
    margin = jnp.asarray(margin, jnp.float32)
    if margin.ndim:
        if margin.shape != diff.shape:
            raise ValueError(f"margin has shape {margin.shape}, expected {diff.shape} or scalar")
    else:
        margin = jnp.broadcast_to(margin, diff.shape)
    return -jax.nn.log_sigmoid(diff - margin)


def bradley_terry_loss(
    r_chosen: jax.Array,
    r_rejected: jax.Array,
    margin: jax.Array | float = 0.0,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Mean Bradley-Terry loss (float32 scalar) over the pairs where `mask` (bool[P]) is True."""
    losses = bradley_terry_losses(r_chosen, r_rejected, margin)
    weights = _pair_mask(r_chosen, mask)
    return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def pair_accuracy(
    r_chosen: jax.Array, r_rejected: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """Fraction of pairs ranked right (float32 scalar): r_chosen > r_rejected counts 1, a tie
    0.5, else 0; averaged over the pairs where `mask` (bool[P]) is True."""
    _check(r_chosen, r_rejected)
    diff = r_chosen.astype(jnp.float32) - r_rejected.astype(jnp.float32)
    right = jnp.where(diff > 0, 1.0, jnp.where(diff == 0, 0.5, 0.0))
    weights = _pair_mask(r_chosen, mask)
    return jnp.sum(right * weights) / jnp.maximum(jnp.sum(weights), 1.0)
