"""Choosing each row's next token from its logits: the one rule both decode loops share.

`choose_tokens` is what makes the static and the slot decode (`r1.sampling.slots`) draw the same
samples: a row's token depends only on its logits and its own key, fold_in(fold_in(key, row id),
token index), never on the batch it sits in.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from r1.sampling import filters


def step_keys(row_keys: jax.Array, token_index: jax.Array) -> jax.Array:
    """Per-row keys for one token: fold_in(row_keys[b], token_index[b]) (token_index int32[B]
    or a scalar shared by all rows)."""
    index = jnp.broadcast_to(jnp.asarray(token_index, jnp.int32), row_keys.shape)
    return jax.vmap(jax.random.fold_in)(row_keys, index)


def unfiltered(config: Any) -> bool:
    """True when the sampled distribution is the model's own (greedy, or temperature 1 with no
    filter), so the sampling log-prob is the raw one."""
    return config.greedy or (
        config.temperature == 1.0
        and config.top_k <= 0
        and config.top_p >= 1.0
        and config.min_p <= 0.0
    )


def picked_logprob(logits: jax.Array, token: jax.Array) -> jax.Array:
    """log softmax(logits)[token] per row, float32[B], without materialising [B, V] log-probs."""
    picked = jnp.take_along_axis(logits, token[:, None], axis=1)[:, 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def choose_tokens(
    logits: jax.Array, keys: jax.Array | None, config: Any
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Next tokens int32[B] for logits [B, V] under a `SamplingConfig`, with their log-probs
    float32[B] under the model (temperature 1, no filter: GRPO's pi_old) and under the
    distribution sampled from. keys: per-row keys [B] (`step_keys`; unused when greedy)."""
    logits = logits.astype(jnp.float32)
    if config.greedy:
        token = filters.argmax_rows(logits)
        filtered = logits
    else:
        filtered = filters.apply_filters(
            logits, config.temperature, config.top_k, config.top_p, config.min_p
        )
        token = filters.sample_rows(keys, filtered)
    raw_logp = picked_logprob(logits, token)
    sampling_logp = raw_logp if unfiltered(config) else picked_logprob(filtered, token)
    return token, raw_logp, sampling_logp


def force_eos(
    logits: jax.Array, index: jax.Array, lengths: jax.Array, eos: jax.Array | int
) -> jax.Array:
    """Logits [B, V] where row b must end at exactly lengths[b] tokens: EOS the only choice at
    token index lengths[b] - 1 (index: int32[B] or a scalar), EOS excluded before (a
    length workload for benchmarks and tests, as a `LogitsProcessor` would force it)."""
    logits = logits.astype(jnp.float32)
    is_eos = jnp.arange(logits.shape[-1])[None, :] == eos
    at_end = (jnp.broadcast_to(index, lengths.shape) == lengths - 1)[:, None]
    return jnp.where(at_end, jnp.where(is_eos, 0.0, -jnp.inf), jnp.where(is_eos, -jnp.inf, logits))


def choose_at(
    logits: jax.Array,
    token_index: jax.Array,
    row_keys: jax.Array,
    config: Any,
    forced_lengths: jax.Array | None = None,
    eos: jax.Array | int = -1,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`choose_tokens` for token `token_index` (int32[B] or a scalar) of rows with keys
    row_keys [B]: each row's key folded with the index (`step_keys`), and with forced_lengths
    int32[B] each row ending at exactly that many tokens with `eos` (`force_eos`)."""
    if forced_lengths is not None:
        logits = force_eos(logits, token_index, forced_lengths, eos)
    keys = None if config.greedy else step_keys(row_keys, token_index)
    return choose_tokens(logits, keys, config)
