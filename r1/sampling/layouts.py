"""Where the decode loop's weights live: the parameter layouts `sample` can put a model in
before decoding (`SamplingConfig.gather_weights`, `SamplingConfig.stationary_weights`), each a
constraint on the parameters, placed once per rollout outside the loop."""

from __future__ import annotations

import jax
from flax import nnx

from r1.sharding import (
    STATIONARY_DECODE_RULES,
    Rules,
    current_mesh,
    current_rules,
    rules_without,
    state_shardings,
)


def gathered_over_fsdp(model: nnx.Module) -> nnx.Module:
    """`model` with its parameters constrained to the sharding rules without the fsdp axis
    (one all-gather of each, where it is placed), inside a mesh with fsdp > 1; else `model`."""
    mesh = current_mesh()
    if mesh is None or dict(mesh.shape).get("fsdp", 1) == 1:
        return model
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    shardings = state_shardings(params, mesh, rules_without(("fsdp",)))
    params = jax.tree.map(jax.lax.with_sharding_constraint, params, shardings)
    return nnx.merge(graphdef, params, rest)


def in_stationary_layout(model: nnx.Module) -> nnx.Module:
    """`model` with its parameters constrained to `STATIONARY_DECODE_RULES` (one all-to-all of
    each, where it is placed), inside a mesh; else `model`."""
    mesh = current_mesh()
    if mesh is None:
        return model
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    shardings = state_shardings(params, mesh, STATIONARY_DECODE_RULES)
    params = jax.tree.map(jax.lax.with_sharding_constraint, params, shardings)
    return nnx.merge(graphdef, params, rest)


def decode_layout(model: nnx.Module, stationary: bool) -> tuple[nnx.Module, Rules]:
    """(the model a decode loop runs, the sharding rules to trace the loop under): with
    `stationary` inside a mesh, `in_stationary_layout(model)` and `STATIONARY_DECODE_RULES`;
    else `model` and the current rules."""
    if stationary and current_mesh() is not None:
        return in_stationary_layout(model), STATIONARY_DECODE_RULES
    return model, current_rules()
