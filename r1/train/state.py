"""The train state every trainer carries, one gradient accumulation and one update.

`TrainState` is the pytree a run checkpoints whole (policy params, other variables such as MoE
routing biases, optimizer state, RNG, the frozen reference copy for GRPO). `init_train_state`,
`abstract_train_state` and `train_state_shardings` build it, concretely, abstractly (for AOT
compilation and checkpoint restore targets) and its shardings by the logical-axis rules.

Gradient accumulation (`accumulate_grads`), the same for GRPO, SFT and the reward model:

* **Interleaved slices.** With n micro-batches, slice s holds rows r with r mod n == s. The
  batch is sharded on its row axis, so an interleaved slice keeps every device's share of rows
  on that device; a contiguous slice would sit on a few shards and leave the others idle (or
  force a reshuffle).
* **Summed, in float32.** Each trainer writes its loss as a sum over rows divided by a
  batch-wide normaliser (GRPO: the mini-batch's token or sequence count; SFT: the whole batch's
  target tokens; reward model: the number of pairs), so the sum of the slices' gradients is the
  full-batch gradient, up to float summation order. The accumulator is float32 whatever the
  parameter dtype, so a bf16 model does not lose small slice gradients, and is cast back once.
* Per-slice auxiliary outputs (metrics, expert loads) come back stacked on a leading [n] axis;
  the caller reduces them (metrics averaged or summed, loads summed).

`apply_update` is one whole update: the optimizer step (`optimizer_step`) plus the aux-loss-free
MoE routing-bias update (`update_routing_biases`; DeepSeek-V3: each layer's bias moves by the
sign of its load error, outside the gradient). GRPO takes several optimizer steps per iteration
(mini-batches) and one bias update with the loads of all of them, so it calls the two parts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from r1 import sharding
from r1.models.moe import update_model_routing_biases


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """Everything a run carries from step to step (a pytree; checkpointed whole).

    params: the model's `nnx.Param`s. extra: its other variables (MoE routing biases).
    ref_params: the frozen reference policy's params (GRPO with beta > 0; else None).
    """

    step: jax.Array
    params: Any
    extra: Any
    opt_state: Any
    rng: jax.Array
    ref_params: Any = None


def init_train_state(
    model: nnx.Module, optimizer: optax.GradientTransformation, seed: int, with_reference: bool
) -> tuple[nnx.GraphDef, TrainState]:
    """Splits `model` into (graphdef, TrainState) with a fresh optimizer state."""
    graphdef, params, extra = nnx.split(model, nnx.Param, ...)
    ref = jax.tree.map(jnp.copy, params) if with_reference else None
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        extra=extra,
        opt_state=optimizer.init(params),
        rng=jax.random.key_data(jax.random.key(seed)),
        ref_params=ref,
    )
    return graphdef, state


def abstract_train_state(
    model_factory: Callable[[], nnx.Module],
    optimizer: optax.GradientTransformation,
    seed: int,
    with_reference: bool,
) -> tuple[nnx.GraphDef, TrainState]:
    """`init_train_state` without memory: (graphdef, TrainState of `jax.ShapeDtypeStruct`s).

    The model is built with `nnx.eval_shape`, so even a 671B-parameter state costs nothing; its
    leaves keep their logical-axis metadata, so `train_state_shardings` gives exactly the
    shardings the real state gets (ahead-of-time compilation, checkpoint restore targets).
    """
    graphdef, params, extra = nnx.split(nnx.eval_shape(model_factory), nnx.Param, ...)
    rng = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(seed)))
    state = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        params=params,
        extra=extra,
        opt_state=jax.eval_shape(optimizer.init, params),
        rng=rng,
        ref_params=params if with_reference else None,
    )
    return graphdef, state


def train_state_shardings(
    state: TrainState, optimizer: optax.GradientTransformation, mesh: Mesh
) -> TrainState:
    """NamedShardings for every leaf of `state`: params (and the reference) by the logical-axis
    rules, optimizer moments like their parameters, scalars replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    param_sh = sharding.state_shardings(state.params, mesh)
    opt_sh = sharding.optimizer_shardings(optimizer, state.opt_state, param_sh, mesh)
    return TrainState(
        step=replicated,
        params=param_sh,
        extra=sharding.state_shardings(state.extra, mesh),
        opt_state=opt_sh,
        rng=replicated,
        ref_params=None if state.ref_params is None else param_sh,
    )


def abstract_with_shardings(state: TrainState, shardings: TrainState) -> TrainState:
    """`state` as `jax.ShapeDtypeStruct`s carrying `shardings` (a checkpoint restore target)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
    )


# ----------------------------------------------------------------------------- accumulation
def interleaved_rows(x: jax.Array, slot: jax.Array | int, num_slices: int) -> jax.Array:
    """Rows r of `x` [R, ...] with r mod num_slices == slot: [R / num_slices, ...]."""
    if num_slices == 1:
        return x
    x = x.reshape(x.shape[0] // num_slices, num_slices, *x.shape[1:])
    return jax.lax.dynamic_index_in_dim(x, slot, axis=1, keepdims=False)


LossFn = Callable[[Any, Any], tuple[jax.Array, Any]]


def accumulate_grads(
    loss_fn: LossFn,
    params: Any,
    batch: Any,
    num_microbatches: int,
    grad_shardings: Any = None,
) -> tuple[Any, Any]:
    """The full-batch gradient of `loss_fn`, summed over interleaved micro-batches.

    loss_fn: `(params, microbatch) -> (loss, aux)`, where microbatch is `batch` with every leaf
    restricted to the rows of one slice (`interleaved_rows`); the loss must already carry its
    batch-wide normaliser (see the module docstring). batch: a pytree of arrays with a leading
    row axis R divisible by `num_microbatches`. grad_shardings: optional shardings of the
    float32 accumulator (like `params`), kept through the scan.

    Returns (grads like params, in their dtypes; aux with a leading [num_microbatches] axis on
    every leaf).
    """
    n = int(num_microbatches)
    if n < 1:
        raise ValueError(f"accumulate_grads: num_microbatches must be >= 1, got {n}")
    rows = {int(x.shape[0]) for x in jax.tree.leaves(batch)}
    if len(rows) > 1:
        raise ValueError(f"accumulate_grads: batch leaves have different row counts {rows}")
    if rows and rows.pop() % n:
        raise ValueError(
            f"accumulate_grads: {jax.tree.leaves(batch)[0].shape[0]} rows do not split into "
            f"{n} equal micro-batches"
        )
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if n == 1:
        (_, aux), grads = grad_fn(params, batch)
        return grads, jax.tree.map(lambda a: a[None], aux)

    def body(total, slot):
        micro = jax.tree.map(lambda x: interleaved_rows(x, slot, n), batch)
        (_, aux), grads = grad_fn(params, micro)
        total = jax.tree.map(lambda t, g: t + g.astype(jnp.float32), total, grads)
        if grad_shardings is not None:
            total = jax.lax.with_sharding_constraint(total, grad_shardings)
        return total, aux

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    summed, aux = jax.lax.scan(body, zeros, jnp.arange(n))
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), summed, params)
    return grads, aux


# ----------------------------------------------------------------------------- the update
def update_routing_biases(
    graphdef: nnx.GraphDef,
    params: Any,
    extra: Any,
    loads: Sequence[jax.Array],
    rate: float,
    routed: Callable[[nnx.Module], nnx.Module] = lambda model: model,
) -> Any:
    """`extra` after the aux-loss-free bias update by per-MoE-layer expert loads (forward
    order); unchanged when `rate` is 0 or there are no loads. routed: the part of the merged
    model that holds the MoE layers (a reward model's backbone)."""
    if not rate or not loads:
        return extra
    model = nnx.merge(graphdef, params, extra)
    update_model_routing_biases(routed(model), list(loads), rate)
    _, _, extra = nnx.split(model, nnx.Param, ...)
    return extra


def optimizer_step(
    optimizer: optax.GradientTransformation,
    params: Any,
    opt_state: Any,
    grads: Any,
) -> tuple[Any, Any, jax.Array]:
    """One optimizer step: (new params, new optimizer state, the gradients' global L2 norm)."""
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, optax.tree.norm(grads)


def apply_update(
    state: TrainState,
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    grads: Any,
    loads: Sequence[jax.Array] = (),
    bias_update_rate: float = 0.0,
    routed: Callable[[nnx.Module], nnx.Module] = lambda model: model,
) -> tuple[TrainState, jax.Array]:
    """`state` after one optimizer step and the routing-bias update, its step counter + 1;
    returns it and the gradient norm (SFT and reward-model steps: one update per step)."""
    params, opt_state, grad_norm = optimizer_step(optimizer, state.params, state.opt_state, grads)
    extra = update_routing_biases(graphdef, params, state.extra, loads, bias_update_rate, routed)
    new = dataclasses.replace(
        state, step=state.step + 1, params=params, extra=extra, opt_state=opt_state
    )
    return new, grad_norm
