"""Building blocks shared by every family: parameters with logical axes, RMSNorm, embeddings,
SwiGLU MLP and rotary position embeddings (default, llama3 and YaRN scaling)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r1.models.config import ModelConfig, RopeScaling
from r1.sharding import shard


def dtype_of(name: str) -> jnp.dtype:
    return jnp.dtype(name)


class KeyStream:
    """Parameter keys `fold_in(key, 1), fold_in(key, 2), ...`, duck-typed as `nnx.Rngs`.

    Drawing from `nnx.Rngs` updates a counter variable, and while tracing (`nnx.eval_shape`,
    a jitted initialiser) each update costs time proportional to the trace so far (a Flax/JAX
    interaction): quadratic in model size, 10 s for DeepSeek-V3. This stream draws one key from
    the `Rngs` and counts in Python.
    """

    def __init__(self, key: jax.Array):
        self._key = key
        self._count = 0

    def params(self) -> jax.Array:
        self._count += 1
        return jax.random.fold_in(self._key, self._count)


def key_stream(rngs: nnx.Rngs | KeyStream) -> KeyStream:
    """A `KeyStream` seeded from `rngs` (returned unchanged if it already is one)."""
    return rngs if isinstance(rngs, KeyStream) else KeyStream(rngs.params())


def param(
    rngs: nnx.Rngs | KeyStream | None,
    shape: Sequence[int],
    axes: Sequence[str | None],
    dtype: str,
    *,
    fan_in: int | None = None,
    init: str = "normal",
    keep_dtype: bool = False,
) -> nnx.Param:
    """A parameter carrying its logical axis names in the `axes` metadata.

    `init="normal"` draws N(0, 1/fan_in) (fan_in defaults to the first dimension), "ones" and
    "zeros" fill constants. keep_dtype: the forward uses this parameter in float32, not in the
    compute dtype (norm scales, router weights); `in_compute_dtype` leaves it as stored.
    """
    if len(shape) != len(axes):
        raise ValueError(f"parameter shape {tuple(shape)} and axes {tuple(axes)} differ in rank")
    dt = dtype_of(dtype)
    if init == "zeros":
        value = jnp.zeros(shape, dt)
    elif init == "ones":
        value = jnp.ones(shape, dt)
    elif init == "normal":
        if rngs is None:
            raise ValueError("a normal-initialised parameter needs rngs")
        scale = (fan_in if fan_in is not None else shape[0]) ** -0.5
        value = (jax.random.normal(rngs.params(), shape, jnp.float32) * scale).astype(dt)
    else:
        raise ValueError(f"unknown init {init!r}")
    if keep_dtype:
        return nnx.Param(value, axes=tuple(axes), keep_dtype=True)
    return nnx.Param(value, axes=tuple(axes))


def in_compute_dtype(model: nnx.Module) -> nnx.Module:
    """`model` (with a `config.dtype`) whose parameters are stored in its compute dtype.

    Every parameter is cast to the compute dtype where the forward uses it, except those
    created with `keep_dtype` (used in float32), so the copy computes exactly what `model`
    does; it only stores, reads and (when sharded) gathers half the bytes of float32 master
    weights. The sampler decodes from it: a decode step reads every weight once, so float32
    master weights would double its memory traffic. Returns `model` itself when nothing is
    wider than the compute dtype.
    """
    dt = jnp.dtype(dtype_of(model.config.dtype))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def castable(variable: nnx.Variable) -> bool:
        value = variable.get_value()
        return (
            not variable.get_metadata().get("keep_dtype")
            and jnp.issubdtype(value.dtype, jnp.floating)
            and value.dtype.itemsize > dt.itemsize
        )

    def narrower(variable: nnx.Variable) -> nnx.Variable:
        return variable.replace(variable.get_value().astype(dt)) if castable(variable) else variable

    is_variable = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    if not any(castable(v) for v in jax.tree.leaves(params, is_leaf=is_variable)):
        return model
    params = jax.tree.map(narrower, params, is_leaf=is_variable)
    return nnx.merge(graphdef, params, rest)


class RMSNorm(nnx.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in float32. x: [..., dim]."""

    def __init__(self, dim: int, eps: float, param_dtype: str = "float32", dtype: str = "float32"):
        self.eps = eps
        self.dtype = dtype
        self.weight = param(None, (dim,), ("norm",), param_dtype, init="ones", keep_dtype=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(var + self.eps)
        weight = self.weight[...].astype(jnp.float32).reshape((1,) * (y.ndim - 1) + (-1,))
        return (y * weight).astype(dtype_of(self.dtype))


class Embed(nnx.Module):
    """Token embedding table `[vocab, embed]`; `attend` projects back onto the vocabulary."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.dtype = cfg.dtype
        self.embedding = param(
            rngs,
            (cfg.vocab_size, cfg.hidden_size),
            ("vocab", "embed"),
            cfg.param_dtype,
            fan_in=cfg.hidden_size,
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """tokens: int32[B, T] -> float[B, T, D]."""
        table = self.embedding[...].astype(dtype_of(self.dtype))
        return jnp.take(table, tokens, axis=0)

    def attend(self, x: jax.Array) -> jax.Array:
        """x: float[B, T, D] -> logits float[B, T, V] with the tied table."""
        table = self.embedding[...].astype(dtype_of(self.dtype))
        return jnp.einsum("btd,vd->btv", x, table)


class MLP(nnx.Module):
    """SwiGLU feed-forward: down(silu(x @ gate) * (x @ up)).

    Parameters: gate, up [embed, mlp], down [mlp, embed]. With `cfg.fused_projections` gate and
    up are one kernel `gate_up` [embed, 2, mlp] (gate_up[:, 0] = gate, gate_up[:, 1] = up; the
    pair axis is never sharded, so an mlp-sharded split keeps each gate/up column pair on one
    device) and run as one GEMM.
    """

    def __init__(self, cfg: ModelConfig, intermediate_size: int, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, intermediate_size
        self.dtype = cfg.dtype
        self.fused = cfg.fused_projections
        if self.fused:
            self.gate_up = param(rngs, (d, 2, f), ("embed", None, "mlp"), cfg.param_dtype)
        else:
            self.gate = param(rngs, (d, f), ("embed", "mlp"), cfg.param_dtype)
            self.up = param(rngs, (d, f), ("embed", "mlp"), cfg.param_dtype)
        self.down = param(rngs, (f, d), ("mlp", "embed"), cfg.param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: float[B, T, D] -> float[B, T, D]."""
        dt = dtype_of(self.dtype)
        if self.fused:
            gate_up = jnp.einsum("btd,dcf->btcf", x, self.gate_up[...].astype(dt))
            gate, up = gate_up[:, :, 0], gate_up[:, :, 1]
        else:
            gate = jnp.einsum("btd,df->btf", x, self.gate[...].astype(dt))
            up = jnp.einsum("btd,df->btf", x, self.up[...].astype(dt))
        hidden = shard(jax.nn.silu(gate) * up, ("batch", "length", "act_mlp"))
        out = jnp.einsum("btf,fd->btd", hidden, self.down[...].astype(dt))
        return shard(out, ("batch", "length", "act_embed"))


# ------------------------------------------------------------------------- rotary embeddings
def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def rope_frequencies(
    dim: int, theta: float, scaling: RopeScaling | None, max_position_embeddings: int
) -> tuple[np.ndarray, float]:
    """Inverse frequencies float32[dim // 2] and the cos/sin scale ("attention factor").

    Follows the published definitions of default RoPE, Llama-3.1 ("llama3") scaling and YaRN
    (with DeepSeek's mscale / mscale_all_dim correction), matching Hugging Face transformers.
    """
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim
    inv_freq = (1.0 / (theta**exponents)).astype(np.float32)
    if scaling is None or scaling.rope_type == "default":
        return inv_freq, 1.0
    if scaling.rope_type == "llama3":
        factor = scaling.factor
        old_len = scaling.original_max_position_embeddings
        low_wavelen = old_len / scaling.low_freq_factor
        high_wavelen = old_len / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32), 1.0
    # yarn
    factor = scaling.factor
    attention_factor = scaling.attention_factor
    if attention_factor is None:
        if scaling.mscale and scaling.mscale_all_dim:
            attention_factor = _yarn_mscale(factor, scaling.mscale) / _yarn_mscale(
                factor, scaling.mscale_all_dim
            )
        else:
            attention_factor = _yarn_mscale(factor)
    original = scaling.original_max_position_embeddings

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low = correction_dim(scaling.beta_fast)
    high = correction_dim(scaling.beta_slow)
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extrapolation_weight = 1 - ramp
    pos_freqs = theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim)
    extrapolated = 1.0 / pos_freqs
    interpolated = 1.0 / (factor * pos_freqs)
    inv_freq = interpolated * (1 - extrapolation_weight) + extrapolated * extrapolation_weight
    return inv_freq.astype(np.float32), float(attention_factor)


def rope_cos_sin(
    positions: jax.Array, inv_freq: np.ndarray, attention_factor: float
) -> tuple[jax.Array, jax.Array]:
    """positions: int32[B, T] -> (cos, sin) float32[B, T, dim // 2]."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
    return jnp.cos(angles) * attention_factor, jnp.sin(angles) * attention_factor


def apply_rope(
    x: jax.Array, cos: jax.Array, sin: jax.Array, interleaved: bool = False
) -> jax.Array:
    """Rotates x: float[B, T, H, D] by (cos, sin): float32[B, T, D // 2].

    `interleaved=False` rotates the halves (x[:D/2], x[D/2:]) as Llama/Qwen do; `True` rotates
    adjacent pairs (x[2i], x[2i+1]) as DeepSeek does, returning them in half-split order (the
    order transformers uses; attention scores do not depend on it since q and k share it).
    """
    dtype = x.dtype
    x = x.astype(jnp.float32)
    if interleaved:
        x = jnp.concatenate([x[..., 0::2], x[..., 1::2]], axis=-1)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    out = jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
    return out.astype(dtype)
