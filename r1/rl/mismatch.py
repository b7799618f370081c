"""Sampler-trainer mismatch: how far the sampler's log-probs of the sampled tokens are from the
trainer's at the same parameters (pure functions; `r1.rl.step` reports them every step).

Both sides run the same model code from the same parameters, but not the same program: a cached
decode against a full-sequence forward, different batch shapes and reduction orders, bf16
against float32, and for a MoE the top-k expert choice on near-tied router scores. The metrics
are built from sums (:func:`mismatch_partials`) so that a batch seen in slices (gradient
accumulation) gives the same numbers as seen whole (:func:`combine_mismatch`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# A token ratio pi_train / pi_sampler outside [1/2, 2] counts as a large mismatch.
MISMATCH_LOG_BOUND = math.log(2.0)


def mismatch_partials(
    logp_train: jax.Array, logp_sampler: jax.Array, mask: jax.Array
) -> dict[str, jax.Array]:
    """The sums the sampler-trainer mismatch metrics of a batch are made of (float32[] each),
    so that slices of a batch can be combined (:func:`combine_mismatch`) before
    :func:`mismatch_metrics`. d_it = logp_train_it - logp_sampler_it over valid tokens (`mask`
    bool[B, T]): ``abs_sum`` sum |d|, ``abs_max`` max |d|, ``tokens``, ``outside`` tokens with
    |d| > ln 2 (ratio outside [1/2, 2]), ``sequences`` rows with a valid token, and over those
    rows the log-sum-exps ``seq_lse`` of L_i = sum_t d_it and ``seq_lse2`` of 2 L_i (the
    sequence weights w_i = exp(L_i), kept in log space)."""
    mask = mask.astype(bool)
    d = jnp.where(mask, logp_train.astype(jnp.float32) - logp_sampler.astype(jnp.float32), 0.0)
    d = jax.lax.stop_gradient(d)
    has_tokens = jnp.any(mask, axis=1)
    seq = jnp.where(has_tokens, jnp.sum(d, axis=1), -jnp.inf)
    return {
        "abs_sum": jnp.sum(jnp.abs(d)),
        "abs_max": jnp.max(jnp.abs(d), initial=0.0),
        "tokens": jnp.sum(mask.astype(jnp.float32)),
        "outside": jnp.sum((jnp.abs(d) > MISMATCH_LOG_BOUND).astype(jnp.float32)),
        "sequences": jnp.sum(has_tokens.astype(jnp.float32)),
        "seq_lse": jax.nn.logsumexp(seq),
        "seq_lse2": jax.nn.logsumexp(2.0 * seq),
    }


def routing_partials(own: jax.Array, recorded: jax.Array, replayed: bool) -> dict[str, jax.Array]:
    """Routing terms of the mismatch (float32[] sums, combined like :func:`mismatch_partials`).

    own: int[B, T, M, k] the experts the training forward's routers picked per token and MoE
    layer; recorded: int[B, T, M, k] the sampler's (-1 where it fed no token). Over recorded
    token-layers, a decision differs when the two sets of k experts differ. ``route_decisions``
    recorded token-layers; ``route_overridden`` those where the trainer's router disagrees with
    the sampler's; ``route_differ`` those where the experts the training forward used differ
    from the sampler's: the same count without replay, 0 with it (it uses the recorded ones)."""
    valid = recorded[..., 0] >= 0  # [B, T, M]
    same = jnp.all(jnp.sort(own, axis=-1) == jnp.sort(recorded.astype(own.dtype), axis=-1), -1)
    overridden = jnp.sum((valid & ~same).astype(jnp.float32))
    return {
        "route_decisions": jnp.sum(valid.astype(jnp.float32)),
        "route_overridden": overridden,
        "route_differ": jnp.zeros_like(overridden) if replayed else overridden,
    }


def combine_mismatch(stacked: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """:func:`mismatch_partials` of slices stacked on a leading axis -> those of their union."""
    out = {k: jnp.sum(v, axis=0) for k, v in stacked.items()}
    out["abs_max"] = jnp.max(stacked["abs_max"], axis=0)
    for key in ("seq_lse", "seq_lse2"):
        out[key] = jax.nn.logsumexp(stacked[key], axis=0)
    return out


def mismatch_metrics(partials: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Sampler-trainer mismatch metrics from :func:`mismatch_partials`: ``mismatch/logp_abs_mean``
    and ``mismatch/logp_abs_max`` (nats per token), ``mismatch/ratio_outside_frac`` (tokens
    whose ratio pi_train / pi_sampler leaves [1/2, 2]) and ``mismatch/seq_ess_frac``, the
    effective sample size of the sequence weights over the number of rows,
    (sum w)^2 / (n sum w^2) in (0, 1] (1: no mismatch; 1 when there is no row). With the
    routing terms (:func:`routing_partials`, MoE): ``mismatch/routing_diff_frac`` (token-layer
    decisions whose experts differ between sampling and training; 0 under routing replay) and
    ``mismatch/router_disagree_frac`` (those where the trainer's own router disagrees: what
    replay overrides)."""
    tokens = jnp.maximum(partials["tokens"], 1.0)
    sequences = partials["sequences"]
    ess = jnp.exp(2.0 * partials["seq_lse"] - partials["seq_lse2"]) / jnp.maximum(sequences, 1.0)
    out = {}
    if "route_decisions" in partials:
        decisions = jnp.maximum(partials["route_decisions"], 1.0)
        out["mismatch/routing_diff_frac"] = partials["route_differ"] / decisions
        out["mismatch/router_disagree_frac"] = partials["route_overridden"] / decisions
    return out | {
        "mismatch/logp_abs_mean": partials["abs_sum"] / tokens,
        "mismatch/logp_abs_max": partials["abs_max"],
        "mismatch/ratio_outside_frac": partials["outside"] / tokens,
        "mismatch/seq_ess_frac": jnp.where(sequences > 0, jnp.minimum(ess, 1.0), 1.0),
    }
