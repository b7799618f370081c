"""Grouped SwiGLU matmuls over rows sorted by expert (`grouped_ffn`), the routed experts'
compute in `r1.models.moe`.

Implementations (`grouped_ffn(impl="auto")`, chosen by the platform of the ambient mesh): on
GPU `jax.lax.ragged_dot` lowers to a native grouped matmul. On CPU, and on TPU with jax 0.10.2 /
libtpu 0.0.52, XLA lowers `ragged_dot` densely (a `convolution` producing [experts, rows, out]:
every expert applied to every row, then a select; E_local times the routed FLOPs). So on TPU
`grouped_ffn` uses the Pallas megablox kernel (`gmm`, with `tgmm` for the weight gradient: one
`tpu_custom_call` per matmul, cost 2*m*k*n), run in interpret mode elsewhere for tests; on CPU a
blocked equivalent: rows are padded per expert to a multiple of a tile size and each tile is
multiplied by its expert's weights in one batched matmul. All give the same numbers; FLOPs grow
with experts-per-token, not with the number of experts.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from r1.sharding import compute_platform

__all__ = [
    "GMM_IMPLS",
    "MEGABLOX_TILING",
    "block_size",
    "dense_ffn",
    "grouped_ffn",
    "resolve_gmm_impl",
]

GMM_IMPLS = ("auto", "ragged_dot", "blocked", "megablox")
_RAGGED_DOT_PLATFORMS = ("gpu", "cuda", "rocm")


def resolve_gmm_impl(impl: str) -> str:
    """The grouped-matmul implementation `impl` names (one of GMM_IMPLS), "auto" resolved by
    the platform of the ambient mesh: megablox on TPU, ragged_dot on GPU, blocked elsewhere."""
    if impl not in GMM_IMPLS:
        raise ValueError(f"grouped matmul impl {impl!r}: expected one of {GMM_IMPLS}")
    if impl != "auto":
        return impl
    # The mesh's platform, not the default backend: compiling ahead of time for a TPU topology
    # on a CPU host must pick the TPU kernel.
    platform = compute_platform()
    if platform == "tpu":
        return "megablox"
    return "ragged_dot" if platform in _RAGGED_DOT_PLATFORMS else "blocked"


def _swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
    return jax.nn.silu(gate) * up


def _scaled(h: jax.Array, row_scale: jax.Array | None) -> jax.Array:
    return h if row_scale is None else h * row_scale[:, None].astype(h.dtype)


def _ragged_ffn(x, group_sizes, w_gate, w_up, w_down, row_scale=None):
    if w_up is None:  # joined [G, D, 2, F]: one grouped matmul for gate and up
        g, d, _, f = w_gate.shape
        gate_up = jax.lax.ragged_dot(x, w_gate.reshape(g, d, 2 * f), group_sizes)
        gate_up = gate_up.reshape(x.shape[0], 2, f)
        gate, up = gate_up[:, 0], gate_up[:, 1]
    else:
        gate = jax.lax.ragged_dot(x, w_gate, group_sizes)
        up = jax.lax.ragged_dot(x, w_up, group_sizes)
    return jax.lax.ragged_dot(_scaled(_swiglu(gate, up), row_scale), w_down, group_sizes)


@dataclasses.dataclass(frozen=True)
class _MegabloxTiling:
    """Megablox tile sizes (m, k, n) clamped to each matmul's dims (a hashable tiling LUT: the
    custom VJP reuses it for the transposed gmm and the weight-gradient tgmm). A dim no larger
    than its tile is taken whole; a larger one gets the tile (a multiple of 128 on TPU; the
    kernel masks a ragged last k or n tile)."""

    tm: int = 128
    tk: int = 512
    tn: int = 512

    whole: int = 2048  # up to this many rows are one tile (of 16)

    def rows_tile(self, m: int) -> int:
        """Rows are padded to a multiple of this: all m (rounded up to 16) when m <= whole,
        so that a small matmul (a decode step's tokens) reads each expert's weights once,
        else tm."""
        rounded = max(16, -(-m // 16) * 16)
        return rounded if rounded <= self.whole else self.tm

    def __call__(self, m: int, k: int, n: int) -> tuple[int, int, int]:
        return self.rows_tile(m), min(k, self.tk), min(n, self.tn)


MEGABLOX_TILING = _MegabloxTiling()


@jax.custom_vjp
def _grouped_rows_gradient(x: jax.Array, in_group: jax.Array) -> jax.Array:
    """x unchanged; its gradient zero outside the grouped rows (in_group: bool[rows, 1])."""
    return x


def _grouped_rows_gradient_fwd(x, in_group):
    return x, in_group


def _grouped_rows_gradient_bwd(in_group, grad):
    return jnp.where(in_group, grad, 0), None


_grouped_rows_gradient.defvjp(_grouped_rows_gradient_fwd, _grouped_rows_gradient_bwd)


def _megablox_ffn(
    x, group_sizes, w_gate, w_up, w_down, tiling=MEGABLOX_TILING, row_scale=None, zeroed=True
):
    """Grouped SwiGLU with the Pallas TPU megablox kernel (differentiable: `tgmm` for the weight
    gradients); interpreted off TPU. Rows are zero-padded to a multiple of the row tile.

    The kernel leaves rows outside every group unwritten, in its outputs and in its
    input-gradient, and what those rows of its inputs hold reaches no row it writes (an output
    row depends on its own input row only; `tgmm` selects the grouped rows). So they need no
    zeroing on the way in: each gmm's input-gradient is masked to the grouped rows, and the
    result only where `zeroed` (else its rows past sum(group_sizes) are unspecified)."""
    from jax.experimental.pallas.ops.tpu.megablox import ops as megablox

    interpret = compute_platform() != "tpu"
    dt = jnp.result_type(x, w_gate, w_down, *(() if w_up is None else (w_up,)))
    m = x.shape[0]
    tm = tiling.rows_tile(m)
    rows = -(-m // tm) * tm
    sizes = group_sizes.astype(jnp.int32)
    in_group = (jnp.arange(rows, dtype=jnp.int32) < jnp.sum(sizes))[:, None]

    def gmm(lhs, rhs):
        lhs = _grouped_rows_gradient(lhs, in_group)
        return megablox.gmm(lhs, rhs.astype(dt), sizes, dt, tiling, None, None, False, interpret)

    xp = jnp.pad(x.astype(dt), ((0, rows - m), (0, 0)))
    if w_up is None:  # joined [G, D, 2, F]: one gmm for gate and up
        g, d, _, f = w_gate.shape
        gate_up = gmm(xp, w_gate.reshape(g, d, 2 * f)).reshape(rows, 2, f)
        gate, up = gate_up[:, 0], gate_up[:, 1]
    else:
        gate, up = gmm(xp, w_gate), gmm(xp, w_up)
    if row_scale is not None:  # its gradient, too, masked to the grouped rows
        row_scale = jnp.pad(row_scale, (0, rows - m))[:, None]
        row_scale = _grouped_rows_gradient(row_scale, in_group)[:, 0]
    y = gmm(_scaled(_swiglu(gate, up), row_scale), w_down)[:m]
    return jnp.where(in_group[:m], y, 0) if zeroed else y


def block_size(rows: int, groups: int) -> int:
    """Tile height of the blocked grouped matmul: about rows / (4 groups), at least 1.

    Padding costs at most groups * (tile - 1) rows (<= 25% extra FLOPs) and the tiles' gathered
    weights take about 5x the expert weights.
    """
    return max(1, rows // (4 * groups))


def _blocked_ffn(x, group_sizes, w_gate, w_up, w_down, tile: int | None = None, row_scale=None):
    """Blocked grouped SwiGLU: rows padded per group to a multiple of `tile`; every tile
    multiplies its group's weights (gathered per tile) in one batched matmul (w_up None: w_gate
    is the joined [G, D, 2, F] weight, one batched matmul for gate and up)."""
    m, _ = x.shape
    g = w_gate.shape[0]
    tile = tile or block_size(m, g)
    n_tiles = -(-m // tile) + g  # static bound on sum_g ceil(size_g / tile)
    rows = n_tiles * tile
    sizes = group_sizes.astype(jnp.int32)
    ends = jnp.cumsum(sizes)
    starts = ends - sizes
    padded = (sizes + tile - 1) // tile * tile
    pad_ends = jnp.cumsum(padded)
    pad_starts = pad_ends - padded
    # Padded row r -> (group, source row).
    r = jnp.arange(rows, dtype=jnp.int32)
    group_of_r = jnp.minimum(jnp.searchsorted(pad_ends, r, side="right"), g - 1)
    offset = r - pad_starts[group_of_r]
    r_valid = (offset < sizes[group_of_r]) & (r < pad_ends[-1])
    src = jnp.where(r_valid, starts[group_of_r] + offset, 0)
    xp = jnp.where(r_valid[:, None], jnp.take(x, src, axis=0), 0).reshape(n_tiles, tile, -1)
    tile_group = group_of_r[::tile]  # [n_tiles]
    wg = jnp.take(w_gate, tile_group, axis=0)  # [n_tiles, D, F] (joined: [n_tiles, D, 2, F])
    wd = jnp.take(w_down, tile_group, axis=0)  # [n_tiles, F, D]
    if w_up is None:
        gate_up = jnp.einsum("tmd,tdcf->tmcf", xp, wg)
        h = _swiglu(gate_up[:, :, 0], gate_up[:, :, 1])
    else:
        wu = jnp.take(w_up, tile_group, axis=0)
        h = _swiglu(jnp.einsum("tmd,tdf->tmf", xp, wg), jnp.einsum("tmd,tdf->tmf", xp, wu))
    if row_scale is not None:
        h = h * jnp.where(r_valid, jnp.take(row_scale, src), 0).astype(h.dtype).reshape(
            n_tiles, tile, 1
        )
    yp = jnp.einsum("tmf,tfd->tmd", h, wd).reshape(rows, -1)
    # Sorted row i -> padded row.
    i = jnp.arange(m, dtype=jnp.int32)
    group_of_i = jnp.minimum(jnp.searchsorted(ends, i, side="right"), g - 1)
    dst = pad_starts[group_of_i] + (i - starts[group_of_i])
    i_valid = i < ends[-1]
    return jnp.where(i_valid[:, None], jnp.take(yp, jnp.where(i_valid, dst, 0), axis=0), 0)


def dense_ffn(
    x: jax.Array,
    scale: jax.Array,
    w_gate: jax.Array,
    w_up: jax.Array | None,
    w_down: jax.Array,
) -> jax.Array:
    """sum_g scale[:, g] * SwiGLU_g(x): every row through every expert, no sorting.

    x: float[M, D]; scale: float[M, G] (0 where row and expert are not paired); w_* as in
    `grouped_ffn`. Returns float[M, D]. The scale multiplies the [F] hidden activations before
    the down projection, so the G experts' down projections are one [M, G F] x [G F, D] product.
    Costs M x G rows of expert work: for few rows and few experts (a decode step's tokens on a
    device holding G <= k experts, where the sorted buffer has M x G rows too) it avoids the
    sorted buffer's gather and scatter.
    """
    if w_up is None:  # joined [G, D, 2, F]
        gate_up = jnp.einsum("md,gdcf->mgcf", x, w_gate)
        gate, up = gate_up[:, :, 0], gate_up[:, :, 1]
    else:
        gate = jnp.einsum("md,gdf->mgf", x, w_gate)
        up = jnp.einsum("md,gdf->mgf", x, w_up)
    h = _swiglu(gate, up) * scale[:, :, None].astype(gate.dtype)
    return jnp.einsum("mgf,gfd->md", h, w_down)


def grouped_ffn(
    x: jax.Array,
    group_sizes: jax.Array,
    w_gate: jax.Array,
    w_up: jax.Array | None,
    w_down: jax.Array,
    impl: str = "auto",
    row_scale: jax.Array | None = None,
    zeroed: bool = True,
) -> jax.Array:
    """SwiGLU experts over rows sorted by expert.

    x: float[M, D] rows grouped by expert (group g = the next group_sizes[g] rows; rows past
    sum(group_sizes) belong to no expert and come back as zeros). group_sizes: int32[G].
    w_gate, w_up: float[G, D, F], or w_gate the joined float[G, D, 2, F] ([:, :, 0] gate,
    [:, :, 1] up; `ModelConfig.fused_projections`) and w_up None: then gate and up are one
    grouped matmul. w_down: float[G, F, D]. Returns float[M, D].
    impl: "ragged_dot" (`jax.lax.ragged_dot`: native on GPU, dense on CPU and TPU), "megablox"
    (the Pallas TPU grouped-matmul kernel; interpreted elsewhere, slowly: for tests), "blocked"
    (tiled batched matmul, any backend) or "auto" (megablox on TPU, ragged_dot on GPU, blocked
    on CPU). megablox takes bfloat16 or float32 only. row_scale: float[M] or None; row i's
    output is scaled by row_scale[i], applied to its [F] hidden activations before the down
    projection (linear in them) rather than to its [D] output. zeroed: False leaves the rows
    past sum(group_sizes) unspecified, for a caller that drops them (no pass over the [M, D]
    output to zero them).
    """
    impl = resolve_gmm_impl(impl)
    if impl == "megablox":
        return _megablox_ffn(
            x, group_sizes, w_gate, w_up, w_down, row_scale=row_scale, zeroed=zeroed
        )
    if impl == "ragged_dot":
        y = _ragged_ffn(x, group_sizes, w_gate, w_up, w_down, row_scale)
        if not zeroed:
            return y
        total = jnp.sum(group_sizes)
        in_group = jnp.arange(x.shape[0], dtype=jnp.int32) < total
        return jnp.where(in_group[:, None], y, 0)
    return _blocked_ffn(x, group_sizes, w_gate, w_up, w_down, row_scale=row_scale)
