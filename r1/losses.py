"""Language-model losses as pure functions (next-token cross-entropy, MTP, MoE balance)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from r1.models.transformer import ModelOutput


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """logits: float[B, T, V], targets: int32[B, T] -> float32[B, T] negative log-likelihood."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of values over mask (same shape); 0 when the mask is empty."""
    mask = mask.astype(jnp.float32)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def next_token_loss(logits: jax.Array, tokens: jax.Array, loss_mask: jax.Array) -> jax.Array:
    """Mean NLL of tokens[:, t+1] given logits[:, t], over positions where loss_mask[:, t+1].

    logits: float[B, T, V]; tokens: int32[B, T]; loss_mask: bool[B, T] marks the tokens that
    are targets (e.g. response tokens in SFT, all real tokens in pretraining).
    """
    nll = token_cross_entropy(logits[:, :-1], tokens[:, 1:])
    return masked_mean(nll, loss_mask[:, 1:])


def mtp_loss(mtp_logits: list[jax.Array], tokens: jax.Array, loss_mask: jax.Array) -> jax.Array:
    """Average over depths k = 1..K of the NLL of tokens[:, t+1+k] from mtp_logits[k-1][:, t]
    (DeepSeek-V3's multi-token prediction objective before its weight lambda)."""
    if not mtp_logits:
        return jnp.zeros((), jnp.float32)
    losses = []
    for k, logits in enumerate(mtp_logits, start=1):
        shift = 1 + k
        nll = token_cross_entropy(logits[:, :-shift], tokens[:, shift:])
        losses.append(masked_mean(nll, loss_mask[:, shift:]))
    return jnp.mean(jnp.stack(losses))


def balance_loss(output: ModelOutput) -> jax.Array:
    """Sum over MoE layers of their (already alpha-weighted) sequence-wise balance losses."""
    terms = [stats["balance_loss"] for stats in output.moe if "balance_loss" in stats]
    return jnp.sum(jnp.stack(terms)) if terms else jnp.zeros((), jnp.float32)


def language_model_loss(
    output: ModelOutput, tokens: jax.Array, loss_mask: jax.Array, mtp_weight: float = 0.0
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Next-token loss + mtp_weight * MTP loss + MoE balance loss, with the parts as metrics."""
    main = next_token_loss(output.logits, tokens, loss_mask)
    mtp = mtp_loss(output.mtp_logits, tokens, loss_mask)
    balance = balance_loss(output)
    total = main + mtp_weight * mtp + balance
    return total, {"loss/next_token": main, "loss/mtp": mtp, "loss/balance": balance}
