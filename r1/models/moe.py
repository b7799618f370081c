"""DeepSeekMoE: sigmoid (or softmax) router with group-limited top-k, shared experts, dropless
routed experts computed with grouped matmuls, auxiliary-loss-free balancing and expert
parallelism.

Functional core (pure functions of arrays; the routing ones live in `r1.models.routing`):
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

Grouped matmuls: `r1.models.grouped_matmul` (megablox on TPU, ragged_dot on GPU, blocked on
CPU).

Expert parallelism: under an active mesh the expert computation runs in `jax.shard_map`. Tokens
are all-gathered over the mesh axes that shard the expert weights (`expert`, and `tensor` for
`expert_mlp` if the token rule uses it), each device computes the contributions of its local
experts to all gathered tokens (assignments to other experts are masked out, so the scheme stays
dropless), and the partial outputs are `psum_scatter`-ed back to the tokens' owners (plus a
`psum` over weight-sharding axes that do not shard tokens, e.g. `tensor`). With megablox the
`shard_map` runs with `check_vma=False` (its `pallas_call` output carries no varying-axes type);
the per-device arrays it sees are the local experts and the gathered tokens.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec

from r1.loop_scopes import grouped_rows_scope
from r1.models.config import ModelConfig
from r1.models.grouped_matmul import (
    GMM_IMPLS,
    block_size,
    dense_ffn,
    grouped_ffn,
    resolve_gmm_impl,
)
from r1.models.layers import MLP, dtype_of, param
from r1.models.routing import (
    RoutingStats,
    capacity_keep_mask,
    expert_capacity,
    load_diagnostics,
    replay_routes,
    route,
    routing_stats,
    total_balance_loss,
    update_routing_bias,
)
from r1.sharding import _active_mesh, logical_to_spec, relayout, rule_axes

__all__ = [  # with the routing core of r1.models.routing, re-exported
    "GMM_IMPLS",
    "MoE",
    "RoutingBias",
    "RoutingStats",
    "block_size",
    "capacity_keep_mask",
    "expert_capacity",
    "expert_ffn_dense",
    "expert_ffn_dispatch",
    "grouped_ffn",
    "load_diagnostics",
    "moe_layers",
    "replay_routes",
    "resolve_gmm_impl",
    "route",
    "routing_stats",
    "total_balance_loss",
    "update_model_routing_biases",
    "update_routing_bias",
]


class RoutingBias(nnx.Variable):
    """Auxiliary-loss-free balancing bias `e_score_correction_bias`: float32[E].

    State, not a parameter: `nnx.state(model, nnx.Param)` excludes it, so optimizers and
    gradients never touch it; it changes only through `update_routing_bias`.
    """


def expert_ffn_dispatch(
    x: jax.Array,
    topk_idx: jax.Array,
    topk_weight: jax.Array,
    keep: jax.Array,
    w_gate: jax.Array,
    w_up: jax.Array | None,
    w_down: jax.Array,
    expert_offset: jax.Array | int = 0,
    impl: str = "auto",
    bound_rows: bool = False,
) -> jax.Array:
    """Dropless routed-expert output sum_j w_tj * FFN_{e_tj}(x_t) for the local experts.

    x: float[N, D]; topk_idx: int32[N, k] global expert ids (distinct per token, as top-k
    picks them); topk_weight: float32[N, k]; keep: bool[N, k] (False: padding or dropped by
    capacity, contributes nothing and costs no expert rows). w_*: the local experts
    [E_local, ...] as in `grouped_ffn` (w_up None: w_gate joined), global ids
    expert_offset + [0, E_local). Assignments to other experts are skipped. Returns float[N, D]
    (zeros for tokens with no local assignment).
    bound_rows: the sorted row buffer holds N x min(k, E_local) rows instead of N x k (a token
    has at most min(k, E_local) local assignments, and they sort first), and the outputs are
    added back to their tokens by a scatter that drops the rows of no local expert: the same
    sums, a smaller buffer when E_local < k, and no pass zeroing the unused rows.
    """
    n, k = topk_idx.shape
    n_local = w_gate.shape[0]
    local_id = topk_idx.reshape(-1) - expert_offset  # [N k]
    is_local = keep.reshape(-1) & (local_id >= 0) & (local_id < n_local)
    key = jnp.where(is_local, local_id, n_local).astype(jnp.int32)  # sentinel sorts last
    order = jnp.argsort(key, stable=True)  # [N k]
    group_sizes = jnp.zeros((n_local + 1,), jnp.int32).at[key].add(1)[:n_local]
    if bound_rows:
        order = order[: n * min(k, n_local)]
    token = order // k
    x_sorted = jnp.take(x, token, axis=0)  # [rows, D]
    if bound_rows:
        # Each row's gate weight scales its hidden activations: no [rows, D] product.
        weight = jnp.where(is_local, topk_weight.reshape(-1), 0.0)[order]
        y_sorted = grouped_ffn(
            x_sorted, group_sizes, w_gate, w_up, w_down, impl, row_scale=weight, zeroed=False
        )
        grouped = jnp.arange(token.shape[0]) < jnp.sum(group_sizes)
        destination = jnp.where(grouped, token, n)  # n: out of bounds, dropped
        out = jnp.zeros((n, x.shape[1]), y_sorted.dtype)
        return out.at[destination].add(y_sorted, mode="drop")
    y_sorted = grouped_ffn(x_sorted, group_sizes, w_gate, w_up, w_down, impl)
    inverse = jnp.zeros_like(order).at[order].set(jnp.arange(n * k, dtype=order.dtype))
    y = jnp.take(y_sorted, inverse, axis=0).reshape(n, k, -1)  # [N, k, D]
    weight = jnp.where(is_local.reshape(n, k), topk_weight, 0.0).astype(y.dtype)
    return jnp.einsum("nkd,nk->nd", y, weight)


def expert_ffn_dense(
    x: jax.Array,
    topk_idx: jax.Array,
    topk_weight: jax.Array,
    keep: jax.Array,
    w_gate: jax.Array,
    w_up: jax.Array | None,
    w_down: jax.Array,
    expert_offset: jax.Array | int = 0,
) -> jax.Array:
    """`expert_ffn_dispatch`'s sums (same arguments, no impl) with every token through every
    local expert, each scaled by the token's gate weight for it (0 where not chosen or not
    kept): `dense_ffn`, N x E_local rows of plain products (no grouped-matmul impl). For
    E_local <= k that is the bounded buffer's row count, without its sort, gather and scatter;
    it does E_local x N x (gate, up, down) products where the grouped matmuls do only the
    routed ones, so per operation it trades bytes for flops."""
    n_local = w_gate.shape[0]
    local_id = (topk_idx - expert_offset)[:, :, None]
    chosen = local_id == jnp.arange(n_local)[None, None, :]  # [N, k, E_local]
    scale = jnp.sum(jnp.where(chosen & keep[:, :, None], topk_weight[:, :, None], 0.0), axis=1)
    return dense_ffn(x, scale, w_gate, w_up, w_down)


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
    e, f = w_gate.shape[0], w_gate.shape[-1]
    tok_spec = logical_to_spec(("act_tokens", None), (n, d), mesh)
    w_spec = logical_to_spec(("expert", None, "expert_mlp"), (e, d, f), mesh)
    tok_axes = _spec_axes(tok_spec[0])
    e_axes, f_axes = _spec_axes(w_spec[0]), _spec_axes(w_spec[2])
    gather_axes = tuple(a for a in tok_axes if a in e_axes + f_axes)
    sum_axes = tuple(a for a in e_axes + f_axes if a not in tok_axes)
    # Rules that keep every token on every device (`act_tokens` over `data` at most, as the
    # weights-stationary decode layout's): no token gathers, no token chunks (a decode step's
    # few tokens; a chunk would read the experts again), a row buffer bounded by the local
    # experts, and the partial outputs added in float32 over the weight-sharding axes.
    whole_tokens = not gather_axes and set(rule_axes("act_tokens")) <= {"data"}
    tok2 = PartitionSpec(tok_spec[0], None)
    w_in = PartitionSpec(w_spec[0], *(None,) * (w_gate.ndim - 2), w_spec[2])
    w_out = PartitionSpec(w_spec[0], w_spec[2], None)
    # Joined gate/up (w_up None): [E, D, 2, F], its pair axis unsplit.
    weights = (w_gate, w_down) if w_up is None else (w_gate, w_up, w_down)
    weight_specs = (w_in, w_out) if w_up is None else (w_in, w_in, w_out)

    def local(x, idx, weight, keep, *ws):
        wg, wu, wd = (ws[0], None, ws[1]) if len(ws) == 2 else ws
        offset = jax.lax.axis_index(e_axes) * wg.shape[0] if e_axes else 0

        def dispatch(x, idx, weight, keep):
            if gather_axes:
                gather = lambda a: jax.lax.all_gather(a, gather_axes, axis=0, tiled=True)
                x, idx, weight, keep = gather(x), gather(idx), gather(weight), gather(keep)
            # The local experts take E_local / E of the N x k assignments under balanced
            # routing: the grouped matmuls' share of their row buffer (N x k rows, or
            # N x min(k, E_local) when bounded), stated for the cost report.
            k, local = idx.shape[1], wg.shape[0]
            buffer = min(k, local) if whole_tokens else k
            # N x E_local rows either way: no sorted buffer (nor the layer's gmm_impl).
            if whole_tokens and local <= k:
                y = expert_ffn_dense(x, idx, weight, keep, wg, wu, wd, offset)
            else:
                with jax.named_scope(grouped_rows_scope(min(1.0, k * local / (e * buffer)))):
                    y = expert_ffn_dispatch(
                        x, idx, weight, keep, wg, wu, wd, offset, impl, bound_rows=whole_tokens
                    )
            if gather_axes:
                y = jax.lax.psum_scatter(y, gather_axes, scatter_dimension=0, tiled=True)
            return y

        y = _in_token_chunks(dispatch, 0 if whole_tokens else chunk, x, idx, weight, keep)
        if sum_axes and whole_tokens:
            return jax.lax.psum(y.astype(jnp.float32), sum_axes).astype(y.dtype)
        if sum_axes:
            y = jax.lax.psum(y, sum_axes)
        return y

    # megablox's pallas_call declares no varying-axes type for its output, which a shard_map
    # with check_vma rejects.
    return jax.shard_map(
        local,
        in_specs=(tok2, tok2, tok2, tok2, *weight_specs),
        out_specs=tok2,
        check_vma=resolve_gmm_impl(impl) != "megablox",
    )(x, topk_idx, topk_weight, keep, *weights)


# ---------------------------------------------------------------------------------- layer
class MoE(nnx.Module):
    """DeepSeekMoE layer: shared experts + top-k routed SwiGLU experts.

    Parameters: `gate` [embed, expert] (router; HF `gate.weight` transposed), `w_gate`,
    `w_up` [expert, embed, expert_mlp], `w_down` [expert, expert_mlp, embed], and
    `shared_experts` (an `MLP` of width moe_intermediate_size * n_shared_experts, absent when
    n_shared_experts == 0). With `cfg.fused_projections` w_gate and w_up are one `w_gate_up`
    [expert, embed, 2, expert_mlp] ([:, :, 0] gate, [:, :, 1] up), one grouped matmul.
    State: `e_score_correction_bias` (`RoutingBias`, float32[E]).
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
        if cfg.fused_projections:
            self.w_gate_up = param(
                rngs,
                (e, d, 2, f),
                ("expert", "embed", None, "expert_mlp"),
                cfg.param_dtype,
                fan_in=d,
            )
        else:
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

    def __call__(
        self, x: jax.Array, token_mask: jax.Array, replay: jax.Array | None = None
    ) -> tuple[jax.Array, RoutingStats]:
        """x: float[B, T, D], token_mask: bool[B, T] -> (float[B, T, D], its RoutingStats).

        Padding tokens (token_mask False) count in no statistic, take no capacity and skip the
        routed experts (their output is the shared experts' only). replay: optional
        int[B, T, k] recorded experts (`replay_routes`; -1 rows route themselves): the tokens
        use them, with gates from the current router, and the statistics (loads, balance loss)
        count the experts used; `RoutingStats.routes` is still the router's own choice.
        """
        cfg = self.cfg
        b, t, d = x.shape
        k, e = cfg.num_experts_per_tok, cfg.n_routed_experts
        dt = dtype_of(cfg.dtype)
        x = x.astype(dt)
        logits = self.router_logits(x).reshape(b * t, e)
        bias = self.e_score_correction_bias[...]
        topk_idx, topk_weight, scores = route(logits, bias, cfg)
        own_idx = topk_idx
        if replay is not None:
            topk_idx, topk_weight = replay_routes(own_idx, scores, replay.reshape(b * t, k), cfg)
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
        own_routes = jnp.where(token_mask.astype(bool)[..., None], own_idx.reshape(b, t, k), -1)
        stats = dataclasses.replace(stats, routes=own_routes)
        if cfg.fused_projections:
            w_gate, w_up = self.w_gate_up[...].astype(dt), None
        else:
            w_gate, w_up = self.w_gate[...].astype(dt), self.w_up[...].astype(dt)
        # Tokens as the dispatch takes them (`act_tokens`), moved by all-to-alls from a decode
        # layout that splits their embed dimension (`r1.sharding.STATIONARY_DECODE_RULES`).
        tokens = relayout(x.reshape(b * t, d), ("batch", "act_embed"), ("act_tokens", None))
        y = _routed_experts(
            tokens,
            topk_idx,
            topk_weight,
            keep,
            w_gate,
            w_up,
            self.w_down[...].astype(dt),
            self.gmm_impl,
            cfg.moe_token_chunk_size,
        )
        y = relayout(y, ("act_tokens", None), ("batch", "act_embed")).reshape(b, t, d)
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
