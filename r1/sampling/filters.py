"""Sampling filters as pure functions of logits float32[B, V] (one row per sequence).

Each filter returns logits with the excluded tokens set to -inf; they compose in the order
temperature -> top-k -> top-p -> min-p (`apply_filters`). Parameters are Python scalars (static)
so that disabled filters cost nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from r1.sharding import compute_platform

NEG_INF = -jnp.inf


def apply_temperature(logits: jax.Array, temperature: float) -> jax.Array:
    """logits / temperature (temperature > 0)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (use greedy=True for argmax), got {temperature}")
    return logits if temperature == 1.0 else logits / temperature


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
    """Keeps the k largest logits per row (ties at the k-th value are kept); k <= 0 disables."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits >= kth, logits, NEG_INF)


def top_p_filter(logits: jax.Array, p: float) -> jax.Array:
    """Nucleus filter: keeps the smallest set of most likely tokens whose probability reaches p.

    A token is kept when the probability mass of the tokens strictly more likely than it is < p,
    so the most likely token is always kept. p >= 1 disables.
    """
    if p >= 1.0:
        return logits
    probs = jax.nn.softmax(logits, axis=-1)
    sorted_probs = jnp.sort(probs, axis=-1)[..., ::-1]
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    kept = mass_before < p
    # the smallest kept probability is the threshold
    threshold = jnp.min(jnp.where(kept, sorted_probs, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(probs >= threshold, logits, NEG_INF)


def min_p_filter(logits: jax.Array, min_p: float) -> jax.Array:
    """Keeps tokens with probability >= min_p * max probability; min_p <= 0 disables."""
    if min_p <= 0.0:
        return logits
    probs = jax.nn.softmax(logits, axis=-1)
    limit = min_p * jnp.max(probs, axis=-1, keepdims=True)
    return jnp.where(probs >= limit, logits, NEG_INF)


def apply_filters(
    logits: jax.Array,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
) -> jax.Array:
    """temperature, then top-k, top-p and min-p, on float32[B, V] logits."""
    logits = apply_temperature(logits.astype(jnp.float32), temperature)
    logits = top_k_filter(logits, top_k)
    logits = top_p_filter(logits, top_p)
    return min_p_filter(logits, min_p)


def argmax_rows(logits: jax.Array) -> jax.Array:
    """First index of the row maximum: float[B, V] -> int32[B] (as `jnp.argmax`, without NaNs).

    On CPU written as a max-reduce and a min-reduce over masked indices: two vectorised passes,
    where XLA's CPU lowering of argmax (a variadic value-index reduce) is several times slower;
    on accelerators that one variadic reduce, a single pass over the logits. The decode loop
    runs this once per generated token.
    """
    if compute_platform() != "cpu":
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    vocab = logits.shape[-1]
    best = jnp.max(logits, axis=-1, keepdims=True)
    index = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    return jnp.min(jnp.where(logits == best, index, vocab), axis=-1).astype(jnp.int32)


def sample_rows(keys: jax.Array, logits: jax.Array) -> jax.Array:
    """One categorical draw per row with that row's own key: keys [B] (typed or uint32[B, 2]),
    logits float32[B, V] -> int32[B]. A row's draw does not depend on the other rows.

    Gumbel-max: argmax(logits + Gumbel noise), the noise drawn per row from its key (the same
    draw `jax.random.categorical(key, row)` makes).
    """
    noise = jax.vmap(lambda key: jax.random.gumbel(key, logits.shape[-1:], logits.dtype))(keys)
    return argmax_rows(logits + noise)
