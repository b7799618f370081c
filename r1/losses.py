"""Language-model losses as pure functions (next-token cross-entropy, MTP, MoE balance)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from r1.models.transformer import ModelOutput


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """logits: float[B, T, V], targets: int32[B, T] -> float32[B, T] negative log-likelihood."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def map_position_chunks(
    fn: Callable[[jax.Array, jax.Array], tuple[jax.Array, ...]],
    hidden: jax.Array,
    targets: jax.Array,
    chunk: int,
) -> tuple[jax.Array, ...]:
    """Per-position statistics of vocabulary logits without materialising [B, T, V] at once.

    fn: maps (hidden float[B, c, D], targets int32[B, c]) to a tuple of float/bool[B, c]
    (it builds the chunk's logits itself). hidden: float[B, T, D]; targets: int32[B, T]; chunk:
    positions per chunk (0: the whole sequence at once). T is padded up to a multiple of
    `chunk` (padded positions are computed and dropped). Each chunk runs under
    `jax.checkpoint` inside a `lax.scan`, so forward and backward hold one chunk's logits at a
    time. Returns fn's outputs at full length [B, T], differentiable.
    """
    if hidden.ndim != 3:
        raise ValueError(f"hidden: expected rank 3 [B, T, D], got shape {hidden.shape}")
    b, t, d = hidden.shape
    if targets.shape != (b, t):
        raise ValueError(f"targets: expected shape {(b, t)}, got {targets.shape}")
    if chunk < 0:
        raise ValueError(f"chunk: must be >= 0 (0: no chunking), got {chunk}")
    chunk = t if chunk == 0 else min(chunk, t)
    n = -(-t // chunk)
    pad = n * chunk - t
    targets = targets.astype(jnp.int32)
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    one_chunk = jax.checkpoint(fn)

    def body(carry, xs):
        return carry, tuple(one_chunk(*xs))

    h_chunks = jnp.moveaxis(hidden.reshape(b, n, chunk, d), 1, 0)
    y_chunks = jnp.moveaxis(targets.reshape(b, n, chunk), 1, 0)
    _, outs = jax.lax.scan(body, None, (h_chunks, y_chunks))
    return tuple(jnp.moveaxis(o, 0, 1).reshape(b, n * chunk)[:, :t] for o in outs)


def chunked_cross_entropy(
    hidden: jax.Array,
    unembed_fn: Callable[[jax.Array], jax.Array],
    targets: jax.Array,
    chunk: int,
) -> tuple[jax.Array, jax.Array]:
    """`token_cross_entropy` and top-1 correctness from hidden states, `chunk` positions of
    logits at a time (`map_position_chunks`).

    hidden: float[B, T, D] aligned with targets (position t predicts targets[:, t]);
    unembed_fn: float[B, c, D] -> logits float[B, c, V] (`Transformer.logits_from_hidden`).
    Returns (NLL float32[B, T], correct bool[B, T]: argmax == target).
    """

    def stats(h_c, y_c):
        logits = unembed_fn(h_c).astype(jnp.float32)
        nll = token_cross_entropy(logits, y_c)
        return nll, jnp.argmax(logits, axis=-1) == y_c

    return map_position_chunks(stats, hidden, targets, chunk)


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
    terms = [stats.balance_loss for stats in output.moe]
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
