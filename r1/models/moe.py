"""DeepSeekMoE: sigmoid (or softmax) router with group-limited top-k, shared experts, dropless
routed experts computed with grouped matmuls, auxiliary-loss-free balancing and expert
parallelism.

Functional core (pure functions of arrays):
  `route`                  logits -> chosen experts, gate weights, affinities.
  `capacity_keep_mask`     which assignments survive an optional per-expert capacity.
  `routing_stats`          expert load, sequence-wise balance loss and load diagnostics
                           (a `RoutingStats` pytree per layer; `total_balance_loss`,
                           `load_diagnostics` reduce a model's list of them).
  `grouped_ffn`            SwiGLU of rows sorted by expert ("ragged" grouped matmuls).
  `expert_ffn_dispatch`    sort token-expert pairs by expert, `grouped_ffn`, unsort, combine.
  `update_routing_bias`    b <- b + rate * sign(mean(load) - load).

Stateful shell: `MoE` (the layer, with `RoutingBias` state) and
`update_model_routing_biases` (applies the bias update to every MoE layer of a model).

Grouped matmuls: on GPU/TPU `jax.lax.ragged_dot` lowers to a native grouped matmul. On CPU,
JAX lowers `ragged_dot` densely (it masks the rows into an `[experts, rows, hidden]` array and
multiplies by every expert), so there `grouped_ffn` uses a blocked equivalent: rows are padded
per expert to a multiple of a tile size and each tile is multiplied by its expert's weights in
one batched matmul. Both give the same numbers; FLOPs grow with experts-per-token, not with the
number of experts.

Expert parallelism: under an active mesh the expert computation runs in `jax.shard_map`. Tokens
are all-gathered over the mesh axes that shard the expert weights (`expert`, and `tensor` for
`expert_mlp` if the token rule uses it), each device computes the contributions of its local
experts to all gathered tokens (assignments to other experts are masked out, so the scheme stays
dropless), and the partial outputs are `psum_scatter`-ed back to the tokens' owners (plus a
`psum` over weight-sharding axes that do not shard tokens, e.g. `tensor`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec

from r1.models.config import ModelConfig
from r1.models.layers import MLP, dtype_of, param
from r1.sharding import _active_mesh, logical_to_spec

GMM_IMPLS = ("auto", "ragged_dot", "blocked")
_RAGGED_DOT_PLATFORMS = ("gpu", "cuda", "rocm", "tpu")


class RoutingBias(nnx.Variable):
    """Auxiliary-loss-free balancing bias `e_score_correction_bias`: float32[E].

    State, not a parameter: `nnx.state(model, nnx.Param)` excludes it, so optimizers and
    gradients never touch it; it changes only through `update_routing_bias`.
    """


# ------------------------------------------------------------------------------- routing
def route(
    logits: jax.Array,
    bias: jax.Array,
    cfg: ModelConfig,
    *,
    group_fill: float = -math.inf,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """DeepSeek-V3 router (matches transformers `DeepseekV3TopkRouter`).

    Args:
      logits: float32[N, E] router logits u_t . e_i.
      bias: float32[E] balancing bias b_i (used for the choice only, never for the weights).
      cfg: uses n_routed_experts, num_experts_per_tok, n_group, topk_group, norm_topk_prob,
        routed_scaling_factor and scoring_func.
      group_fill: value given to the biased scores of experts in groups that were not kept.
        The installed transformers (5.x) and DeepSeek's reference `inference/model.py` use -inf
        (the default). Older transformers releases (4.4x-4.5x) filled with 0.0; the two differ
        when biased scores are negative (a negative-scored expert of a kept group can lose to a
        0.0-filled expert of a dropped group). Pass 0.0 to reproduce those releases.

    Returns:
      topk_idx: int32[N, k] chosen experts (sorted by biased score, best first).
      topk_weight: float32[N, k] gate weights: the unbiased affinities of the chosen experts,
        normalised over the chosen when norm_topk_prob, times routed_scaling_factor.
      scores: float32[N, E] affinities: sigmoid(logits) ("sigmoid", V3) or softmax(logits)
        ("softmax", V2).

    Selection: groups are ranked by the sum of their top-2 biased scores (sigmoid, V3) or by
    their max biased score (softmax, DeepSeek-V2 `group_limited_greedy`); the best `topk_group`
    groups are kept and the top-k experts are chosen among them on the biased scores.
    """
    n, e = logits.shape
    k, n_group = cfg.num_experts_per_tok, cfg.n_group
    logits = logits.astype(jnp.float32)
    if cfg.scoring_func == "sigmoid":
        scores = jax.nn.sigmoid(logits)
    elif cfg.scoring_func == "softmax":
        scores = jax.nn.softmax(logits, axis=-1)
    else:
        raise ValueError(f"ModelConfig.scoring_func: unknown {cfg.scoring_func!r}")
    choice = scores + jax.lax.stop_gradient(bias.astype(jnp.float32))[None, :]
    if n_group > 1:
        per_group = e // n_group
        grouped = choice.reshape(n, n_group, per_group)
        if cfg.scoring_func == "sigmoid":
            group_scores = jax.lax.top_k(grouped, min(2, per_group))[0].sum(-1)  # [N, G]
        else:
            group_scores = grouped.max(-1)
        _, group_idx = jax.lax.top_k(group_scores, cfg.topk_group)  # [N, topk_group]
        group_keep = jnp.zeros((n, n_group), bool).at[jnp.arange(n)[:, None], group_idx].set(True)
        expert_keep = jnp.repeat(group_keep, per_group, axis=1)  # [N, E]
        choice = jnp.where(expert_keep, choice, jnp.float32(group_fill))
    _, topk_idx = jax.lax.top_k(choice, k)
    topk_weight = jnp.take_along_axis(scores, topk_idx, axis=-1)
    if cfg.norm_topk_prob:
        topk_weight = topk_weight / (topk_weight.sum(-1, keepdims=True) + 1e-20)
    topk_weight = topk_weight * cfg.routed_scaling_factor
    return topk_idx.astype(jnp.int32), topk_weight, scores


def capacity_keep_mask(
    topk_idx: jax.Array, valid: jax.Array, n_experts: int, capacity: int
) -> jax.Array:
    """Which assignments fit in a per-expert capacity.

    topk_idx: int32[N, k]; valid: bool[N] (padding tokens never take capacity). Priority goes
    slot by slot (every token's first choice before any second choice), then token order.
    Returns bool[N, k], False for padding and for assignments beyond `capacity`.
    """
    n, k = topk_idx.shape
    onehot = jax.nn.one_hot(topk_idx, n_experts, dtype=jnp.int32)  # [N, k, E]
    onehot = onehot * valid[:, None, None].astype(jnp.int32)
    slot_major = jnp.swapaxes(onehot, 0, 1).reshape(k * n, n_experts)
    position = jnp.cumsum(slot_major, axis=0) - 1  # position within expert, per assignment
    position = jnp.sum(position * slot_major, axis=-1).reshape(k, n).T  # [N, k]
    return valid[:, None] & (position < capacity)


def expert_capacity(n_tokens: int, cfg: ModelConfig) -> int | None:
    """Static per-expert capacity ceil(capacity_factor * N * k / E), or None (dropless)."""
    if cfg.capacity_factor is None:
        return None
    cap = cfg.capacity_factor * n_tokens * cfg.num_experts_per_tok / cfg.n_routed_experts
    return max(1, math.ceil(cap))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RoutingStats:
    """One MoE layer's routing statistics of a forward pass (a pytree; `ModelOutput.moe` holds
    one per MoE layer in forward order). All float32:

    expert_load [E]: valid token assignments per expert (before any capacity drop).
    balance_loss []: the alpha-weighted sequence-wise balance loss (`routing_stats`).
    max_mean_load_ratio []: max(load) / mean(load).
    dead_expert_fraction []: share of experts with zero load.
    dropped_fraction [] or None: share of valid assignments dropped by the expert capacity
      (None for dropless routing).

    Stacked (a scanned block's layers, micro-batch slices) each field gains leading axes.
    """

    expert_load: jax.Array
    balance_loss: jax.Array
    max_mean_load_ratio: jax.Array
    dead_expert_fraction: jax.Array
    dropped_fraction: jax.Array | None = None


def total_balance_loss(stats: Sequence[RoutingStats]) -> jax.Array:
    """float32[]: the layers' (alpha-weighted) balance losses added in forward order; 0 when
    there are none (a dense model)."""
    return sum((s.balance_loss for s in stats), jnp.zeros((), jnp.float32))


def load_diagnostics(stats: Sequence[RoutingStats]) -> dict[str, jax.Array]:
    """{"moe/max_mean_load_ratio", "moe/dead_expert_fraction"}: float32[] means over the MoE
    layers ({} for a dense model)."""
    if not stats:
        return {}
    return {
        "moe/max_mean_load_ratio": jnp.mean(jnp.stack([s.max_mean_load_ratio for s in stats])),
        "moe/dead_expert_fraction": jnp.mean(jnp.stack([s.dead_expert_fraction for s in stats])),
    }


def routing_stats(
    topk_idx: jax.Array,
    scores: jax.Array,
    token_mask: jax.Array,
    cfg: ModelConfig,
    keep: jax.Array | None = None,
) -> RoutingStats:
    """Per-layer routing statistics and the sequence-wise balance loss.

    Args:
      topk_idx: int32[B, T, k] chosen experts. scores: float32[B, T, E] affinities.
      token_mask: bool[B, T], False for padding (ignored everywhere).
      keep: optional bool[B, T, k] capacity mask (adds `dropped_fraction`).

    Returns the `RoutingStats`:
      expert_load [E]: valid token assignments per expert (before any capacity drop).
      balance_loss []: aux_loss_alpha * mean over sequences (with >= 1 valid token) of
        sum_i f_i P_i, f_i = E / (k T_b) * #tokens choosing i, P_i = mean_t s_i / sum_j s_j
        (DeepSeek-V3 complementary sequence-wise loss; T_b = valid tokens in sequence b).
      max_mean_load_ratio []: max(load) / mean(load). dead_expert_fraction []: share of
      experts with zero load. dropped_fraction []: share of valid assignments dropped by the
      capacity (only when `keep` is given).
    """
    e, k = cfg.n_routed_experts, cfg.num_experts_per_tok
    valid = token_mask.astype(jnp.float32)  # [B, T]
    chosen = jax.nn.one_hot(topk_idx, e, dtype=jnp.float32).sum(-2)  # [B, T, E]
    chosen = chosen * valid[..., None]
    counts = chosen.sum(1)  # [B, E]
    load = counts.sum(0)  # [E]
    n_valid = valid.sum(1)  # [B]
    denom = jnp.maximum(n_valid, 1.0)[:, None]
    f = counts * (e / k) / denom  # [B, E]
    normed = scores / (scores.sum(-1, keepdims=True) + 1e-20)
    p = jnp.sum(normed * valid[..., None], axis=1) / denom  # [B, E]
    per_seq = jnp.sum(f * p, axis=-1)  # [B]
    has_tokens = (n_valid > 0).astype(jnp.float32)
    seq_loss = jnp.sum(per_seq * has_tokens) / jnp.maximum(has_tokens.sum(), 1.0)
    mean_load = jnp.mean(load)
    dropped_fraction = None
    if keep is not None:
        total = jnp.sum(valid) * k
        dropped = jnp.sum((~keep).astype(jnp.float32) * valid[..., None])
        dropped_fraction = dropped / jnp.maximum(total, 1.0)
    return RoutingStats(
        expert_load=load,
        balance_loss=(cfg.aux_loss_alpha * seq_loss).astype(jnp.float32),
        max_mean_load_ratio=jnp.max(load) / jnp.maximum(mean_load, 1e-9),
        dead_expert_fraction=jnp.mean((load == 0).astype(jnp.float32)),
        dropped_fraction=dropped_fraction,
    )


def update_routing_bias(bias: jax.Array, expert_load: jax.Array, rate: float) -> jax.Array:
    """Auxiliary-loss-free balancing: b_i += rate * sign(mean(load) - load_i).

    bias, expert_load: float32[E]. Overloaded experts go down, underloaded ones up; rate 0
    returns `bias` unchanged.
    """
    load = expert_load.astype(jnp.float32)
    step = jnp.sign(jnp.mean(load) - load)
    return (bias.astype(jnp.float32) + rate * step).astype(bias.dtype)


# ------------------------------------------------------------------------ grouped matmuls
def resolve_gmm_impl(impl: str) -> str:
    if impl not in GMM_IMPLS:
        raise ValueError(f"grouped matmul impl {impl!r}: expected one of {GMM_IMPLS}")
    if impl != "auto":
        return impl
    # The mesh's platform, not the default backend: compiling ahead of time for a TPU topology
    # on a CPU host must pick the TPU kernel.
    mesh = _active_mesh()
    device = getattr(mesh, "abstract_device", None) if mesh is not None else None
    platform = device.platform if device is not None else jax.default_backend()
    return "ragged_dot" if platform in _RAGGED_DOT_PLATFORMS else "blocked"


def _swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
    return jax.nn.silu(gate) * up


def _ragged_ffn(x, group_sizes, w_gate, w_up, w_down):
    gate = jax.lax.ragged_dot(x, w_gate, group_sizes)
    up = jax.lax.ragged_dot(x, w_up, group_sizes)
    return jax.lax.ragged_dot(_swiglu(gate, up), w_down, group_sizes)


def block_size(rows: int, groups: int) -> int:
    """Tile height of the blocked grouped matmul: about rows / (4 groups), at least 1.

    Padding costs at most groups * (tile - 1) rows (<= 25% extra FLOPs) and the tiles' gathered
    weights take about 5x the expert weights.
    """
    return max(1, rows // (4 * groups))


def _blocked_ffn(x, group_sizes, w_gate, w_up, w_down, tile: int | None = None):
    """Blocked grouped SwiGLU: rows padded per group to a multiple of `tile`; every tile
    multiplies its group's weights (gathered per tile) in one batched matmul."""
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
    wg = jnp.take(w_gate, tile_group, axis=0)  # [n_tiles, D, F]
    wu = jnp.take(w_up, tile_group, axis=0)
    wd = jnp.take(w_down, tile_group, axis=0)  # [n_tiles, F, D]
    h = _swiglu(jnp.einsum("tmd,tdf->tmf", xp, wg), jnp.einsum("tmd,tdf->tmf", xp, wu))
    yp = jnp.einsum("tmf,tfd->tmd", h, wd).reshape(rows, -1)
    # Sorted row i -> padded row.
    i = jnp.arange(m, dtype=jnp.int32)
    group_of_i = jnp.minimum(jnp.searchsorted(ends, i, side="right"), g - 1)
    dst = pad_starts[group_of_i] + (i - starts[group_of_i])
    i_valid = i < ends[-1]
    return jnp.where(i_valid[:, None], jnp.take(yp, jnp.where(i_valid, dst, 0), axis=0), 0)


def grouped_ffn(
    x: jax.Array,
    group_sizes: jax.Array,
    w_gate: jax.Array,
    w_up: jax.Array,
    w_down: jax.Array,
    impl: str = "auto",
) -> jax.Array:
    """SwiGLU experts over rows sorted by expert.

    x: float[M, D] rows grouped by expert (group g = the next group_sizes[g] rows; rows past
    sum(group_sizes) belong to no expert and come back as zeros). group_sizes: int32[G].
    w_gate, w_up: float[G, D, F]; w_down: float[G, F, D]. Returns float[M, D].
    impl: "ragged_dot" (`jax.lax.ragged_dot`, native on GPU/TPU, dense on CPU), "blocked"
    (tiled batched matmul, any backend) or "auto" (ragged_dot on GPU/TPU, blocked on CPU).
    """
    impl = resolve_gmm_impl(impl)
    if impl == "ragged_dot":
        y = _ragged_ffn(x, group_sizes, w_gate, w_up, w_down)
        total = jnp.sum(group_sizes)
        in_group = jnp.arange(x.shape[0], dtype=jnp.int32) < total
        return jnp.where(in_group[:, None], y, 0)
    return _blocked_ffn(x, group_sizes, w_gate, w_up, w_down)


def expert_ffn_dispatch(
    x: jax.Array,
    topk_idx: jax.Array,
    topk_weight: jax.Array,
    keep: jax.Array,
    w_gate: jax.Array,
    w_up: jax.Array,
    w_down: jax.Array,
    expert_offset: jax.Array | int = 0,
    impl: str = "auto",
) -> jax.Array:
    """Dropless routed-expert output sum_j w_tj * FFN_{e_tj}(x_t) for the local experts.

    x: float[N, D]; topk_idx: int32[N, k] global expert ids; topk_weight: float32[N, k];
    keep: bool[N, k] (False: padding or dropped by capacity, contributes nothing and costs no
    expert rows). w_*: the local experts [E_local, ...], global ids expert_offset + [0, E_local).
    Assignments to other experts are skipped. Returns float[N, D] (zeros for tokens with no
    local assignment).
    """
    n, k = topk_idx.shape
    n_local = w_gate.shape[0]
    local_id = topk_idx.reshape(-1) - expert_offset  # [N k]
    is_local = keep.reshape(-1) & (local_id >= 0) & (local_id < n_local)
    key = jnp.where(is_local, local_id, n_local).astype(jnp.int32)  # sentinel sorts last
    order = jnp.argsort(key, stable=True)  # [N k]
    group_sizes = jnp.zeros((n_local + 1,), jnp.int32).at[key].add(1)[:n_local]
    token = order // k
    x_sorted = jnp.take(x, token, axis=0)  # [N k, D]
    y_sorted = grouped_ffn(x_sorted, group_sizes, w_gate, w_up, w_down, impl)
    inverse = jnp.zeros_like(order).at[order].set(jnp.arange(n * k, dtype=order.dtype))
    y = jnp.take(y_sorted, inverse, axis=0).reshape(n, k, -1)  # [N, k, D]
    weight = jnp.where(is_local.reshape(n, k), topk_weight, 0.0).astype(y.dtype)
    return jnp.einsum("nkd,nk->nd", y, weight)


# ------------------------------------------------------------------- expert parallelism
def _spec_axes(entry) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def _in_token_chunks(fn, chunk: int, x, idx, weight, keep):
    """fn(x, idx, weight, keep) -> float[N, D], applied to `chunk` tokens at a time.

    A `lax.scan` over chunks with the body under `jax.checkpoint`: the dispatch buffers
    (gathered tokens, sorted rows, expert activations) exist for one chunk at a time in the
    forward and in the backward. Padding tokens (keep False) fill the last chunk.
    """
    n = x.shape[0]
    if chunk <= 0 or n <= chunk:
        return fn(x, idx, weight, keep)
    num = -(-n // chunk)
    pad = num * chunk - n
    if pad:
        x, idx, weight = (jnp.pad(a, ((0, pad), (0, 0))) for a in (x, idx, weight))
        keep = jnp.pad(keep, ((0, pad), (0, 0)))

    @jax.checkpoint
    def body(carry, xs):
        return carry, fn(*xs)

    chunks = tuple(a.reshape(num, chunk, *a.shape[1:]) for a in (x, idx, weight, keep))
    _, y = jax.lax.scan(body, None, chunks)
    return y.reshape(num * chunk, -1)[:n]


def _routed_experts(x, topk_idx, topk_weight, keep, w_gate, w_up, w_down, impl, chunk=0):
    """Plain path without a mesh, `shard_map` expert parallelism under one. x: float[N, D].

    chunk: dispatch this many (device-local) tokens at a time (0: all at once)."""
    mesh = _active_mesh()
    if mesh is None or math.prod(mesh.shape.values()) == 1:
        return _in_token_chunks(
            lambda *a: expert_ffn_dispatch(*a, w_gate, w_up, w_down, 0, impl),
            chunk,
            x,
            topk_idx,
            topk_weight,
            keep,
        )
    n, d = x.shape
    e, _, f = w_gate.shape
    tok_spec = logical_to_spec(("act_tokens", None), (n, d), mesh)
    w_spec = logical_to_spec(("expert", None, "expert_mlp"), (e, d, f), mesh)
    tok_axes = _spec_axes(tok_spec[0])
    e_axes, f_axes = _spec_axes(w_spec[0]), _spec_axes(w_spec[2])
    gather_axes = tuple(a for a in tok_axes if a in e_axes + f_axes)
    sum_axes = tuple(a for a in e_axes + f_axes if a not in tok_axes)
    tok2 = PartitionSpec(tok_spec[0], None)
    w_in = PartitionSpec(w_spec[0], None, w_spec[2])
    w_out = PartitionSpec(w_spec[0], w_spec[2], None)

    def local(x, idx, weight, keep, wg, wu, wd):
        offset = jax.lax.axis_index(e_axes) * wg.shape[0] if e_axes else 0

        def dispatch(x, idx, weight, keep):
            if gather_axes:
                gather = lambda a: jax.lax.all_gather(a, gather_axes, axis=0, tiled=True)
                x, idx, weight, keep = gather(x), gather(idx), gather(weight), gather(keep)
            y = expert_ffn_dispatch(x, idx, weight, keep, wg, wu, wd, offset, impl)
            if gather_axes:
                y = jax.lax.psum_scatter(y, gather_axes, scatter_dimension=0, tiled=True)
            return y

        y = _in_token_chunks(dispatch, chunk, x, idx, weight, keep)
        if sum_axes:
            y = jax.lax.psum(y, sum_axes)
        return y

    return jax.shard_map(
        local,
        in_specs=(tok2, tok2, tok2, tok2, w_in, w_in, w_out),
        out_specs=tok2,
    )(x, topk_idx, topk_weight, keep, w_gate, w_up, w_down)


# ---------------------------------------------------------------------------------- layer
class MoE(nnx.Module):
    """DeepSeekMoE layer: shared experts + top-k routed SwiGLU experts.

    Parameters: `gate` [embed, expert] (router; HF `gate.weight` transposed), `w_gate`,
    `w_up` [expert, embed, expert_mlp], `w_down` [expert, expert_mlp, embed], and
    `shared_experts` (an `MLP` of width moe_intermediate_size * n_shared_experts, absent when
    n_shared_experts == 0). State: `e_score_correction_bias` (`RoutingBias`, float32[E]).
    """

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, *, gmm_impl: str = "auto"):
        if not cfg.is_moe:
            raise ValueError("ModelConfig.n_routed_experts: must be > 0 for an MoE layer")
        resolve_gmm_impl(gmm_impl)
        d, e, f = cfg.hidden_size, cfg.n_routed_experts, cfg.moe_intermediate_size
        self.cfg = cfg
        self.gmm_impl = gmm_impl
        self.gate = param(
            rngs, (d, e), ("embed", "expert"), cfg.param_dtype, fan_in=d, keep_dtype=True
        )
        self.w_gate = param(
            rngs, (e, d, f), ("expert", "embed", "expert_mlp"), cfg.param_dtype, fan_in=d
        )
        self.w_up = param(
            rngs, (e, d, f), ("expert", "embed", "expert_mlp"), cfg.param_dtype, fan_in=d
        )
        self.w_down = param(
            rngs, (e, f, d), ("expert", "expert_mlp", "embed"), cfg.param_dtype, fan_in=f
        )
        self.e_score_correction_bias = RoutingBias(jnp.zeros((e,), jnp.float32), axes=("expert",))
        if cfg.n_shared_experts > 0:
            self.shared_experts = MLP(cfg, f * cfg.n_shared_experts, rngs)
        else:
            self.shared_experts = None

    def router_logits(self, x: jax.Array) -> jax.Array:
        """x: float[B, T, D] -> float32[B, T, E], computed in float32."""
        return jnp.einsum("btd,de->bte", x.astype(jnp.float32), self.gate[...].astype(jnp.float32))

    def __call__(self, x: jax.Array, token_mask: jax.Array) -> tuple[jax.Array, RoutingStats]:
        """x: float[B, T, D], token_mask: bool[B, T] -> (float[B, T, D], its RoutingStats).

        Padding tokens (token_mask False) count in no statistic, take no capacity and skip the
        routed experts (their output is the shared experts' only).
        """
        cfg = self.cfg
        b, t, d = x.shape
        k, e = cfg.num_experts_per_tok, cfg.n_routed_experts
        dt = dtype_of(cfg.dtype)
        x = x.astype(dt)
        logits = self.router_logits(x).reshape(b * t, e)
        bias = self.e_score_correction_bias[...]
        topk_idx, topk_weight, scores = route(logits, bias, cfg)
        valid = token_mask.reshape(b * t).astype(bool)
        capacity = expert_capacity(b * t, cfg)
        if capacity is None:
            keep = jnp.broadcast_to(valid[:, None], (b * t, k))
        else:
            keep = capacity_keep_mask(topk_idx, valid, e, capacity)
        stats = routing_stats(
            topk_idx.reshape(b, t, k),
            scores.reshape(b, t, e),
            token_mask.astype(bool),
            cfg,
            keep=None if capacity is None else keep.reshape(b, t, k),
        )
        y = _routed_experts(
            x.reshape(b * t, d),
            topk_idx,
            topk_weight,
            keep,
            self.w_gate[...].astype(dt),
            self.w_up[...].astype(dt),
            self.w_down[...].astype(dt),
            self.gmm_impl,
            cfg.moe_token_chunk_size,
        ).reshape(b, t, d)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        return y.astype(dt), stats


# ---------------------------------------------------------------------- bias update shell
def moe_layers(model: nnx.Module) -> list[MoE]:
    """The MoE layers of `model` in forward order.

    For an `r1` Transformer: those of `model.layers` in order, then those of `model.mtp` (the
    order of `ModelOutput.moe`). Other modules: graph traversal order.
    """
    if isinstance(model, MoE):
        return [model]
    if hasattr(model, "layers"):
        found: list[MoE] = []
        for part in (*model.layers, *getattr(model, "mtp", ())):
            found.extend(m for _, m in nnx.iter_modules(part) if isinstance(m, MoE))
        return found
    return [m for _, m in nnx.iter_modules(model) if isinstance(m, MoE)]


def update_model_routing_biases(
    model: nnx.Module, moe_stats: Sequence[RoutingStats | jax.Array], rate: float
) -> None:
    """Applies `update_routing_bias` in place to each MoE layer with its step's expert load.

    moe_stats: per MoE layer in forward order (`ModelOutput.moe`), its `RoutingStats` or just
    its expert load float32[E]. When it is shorter than the model's MoE layers (e.g. the MTP
    modules did not run), only the first len(moe_stats) layers change. A scanned block's MoE
    (`LayerStack`, bias float32[n, E]) takes the next n entries. Call outside the gradient (the
    bias is state).
    """
    layers = moe_layers(model)
    counts = [
        layer.e_score_correction_bias[...].shape[0]
        if layer.e_score_correction_bias[...].ndim == 2
        else 0
        for layer in layers
    ]
    capacity = sum(max(c, 1) for c in counts)
    if len(moe_stats) > capacity:
        raise ValueError(
            f"moe_stats has {len(moe_stats)} entries but the model has {capacity} MoE layers"
        )
    loads = [s.expert_load if isinstance(s, RoutingStats) else s for s in moe_stats]
    position = 0
    for layer, count in zip(layers, counts):
        if position >= len(loads):
            break
        bias = layer.e_score_correction_bias
        if count == 0:
            bias[...] = update_routing_bias(bias[...], loads[position], rate)
            position += 1
            continue
        taken = jnp.stack(loads[position : position + count])
        rows = jax.vmap(lambda b, load: update_routing_bias(b, load, rate))(
            bias[...][: len(taken)], taken
        )
        bias[...] = bias[...].at[: len(taken)].set(rows)
        position += len(taken)
