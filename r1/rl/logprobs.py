"""Log-probabilities and entropies of given tokens from logits or hidden states, in float32
(`r1.rl.grpo` re-exports them): per-token log-probs at a sampling temperature, entropies, and
both computed a chunk of positions at a time without [B, T, V] logits."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from r1.losses import map_position_chunks


def check_rank(name: str, x: jax.Array, rank: int, letters: str) -> None:
    if x.ndim != rank:
        raise ValueError(f"{name}: expected shape [{letters}] (rank {rank}), got {tuple(x.shape)}")


def token_logprobs(logits: jax.Array, tokens: jax.Array, *, temperature: float = 1.0) -> jax.Array:
    """log pi(tokens[b, t] | ...) from the logits at the same position, in float32.

    logits: float[B, T, V] (already aligned: logits[:, t] predicts tokens[:, t]);
    tokens: int32[B, T]; temperature: the sampling temperature (logits are divided by it, so
    log-probs match the distribution the sampler drew from). Returns float32[B, T].
    """
    check_rank("logits", logits, 3, "B, T, V")
    if tokens.shape != logits.shape[:2]:
        raise ValueError(f"tokens: expected shape {logits.shape[:2]}, got {tokens.shape}")
    z = logits.astype(jnp.float32)
    if temperature != 1.0:
        z = z / temperature
    picked = jnp.take_along_axis(z, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(z, axis=-1)


def entropy_from_logits(
    logits: jax.Array, mask: jax.Array | None = None, *, temperature: float = 1.0
) -> jax.Array:
    """Per-token entropy (nats) of softmax(logits / temperature), float32[B, T].

    logits: float[B, T, V]; mask: optional bool[B, T], positions where it is False get 0. The
    batch metric is ``sum(H) / sum(mask)`` (masked mean over valid tokens).
    """
    check_rank("logits", logits, 3, "B, T, V")
    z = logits.astype(jnp.float32)
    if temperature != 1.0:
        z = z / temperature
    logp = jax.nn.log_softmax(z, axis=-1)
    ent = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    if mask is None:
        return ent
    if mask.shape != ent.shape:
        raise ValueError(f"mask: expected shape {ent.shape}, got {mask.shape}")
    return jnp.where(mask.astype(jnp.bool_), ent, 0.0)


def chunked_token_logprobs(
    hidden: jax.Array,
    unembed_fn: Callable[[jax.Array], jax.Array],
    targets: jax.Array,
    chunk: int,
    *,
    temperature: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """`token_logprobs` and `entropy_from_logits` without materialising [B, T, V] logits.

    hidden: float[B, T, D] (aligned: position t predicts targets[:, t]); unembed_fn: maps
    float[B, c, D] to logits float[B, c, V] (e.g. `Transformer.logits_from_hidden`); targets:
    int32[B, T]; chunk: positions per chunk (0: the whole sequence at once). T is padded up to a
    multiple of `chunk`. Each chunk runs under `jax.checkpoint` inside a `lax.scan`, so the
    forward and the backward hold one chunk of logits at a time. Returns (log-probs
    float32[B, T], entropy float32[B, T] in nats), both differentiable.
    """
    check_rank("hidden", hidden, 3, "B, T, D")

    def stats(h_c, y_c):
        z = unembed_fn(h_c).astype(jnp.float32)
        if temperature != 1.0:
            z = z / temperature
        logp_all = jax.nn.log_softmax(z, axis=-1)
        picked = jnp.take_along_axis(logp_all, y_c[..., None], axis=-1)[..., 0]
        return picked, -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)

    logp, ent = map_position_chunks(stats, hidden, targets, chunk)
    return logp, ent
