"""Device meshes and the one table that maps logical axis names to mesh axes.

Every parameter carries logical axis names in its `axes` metadata (e.g. `("embed", "mlp")`);
key activations are constrained with `shard(x, ("batch", "length", "act_embed"))`. The rules
below turn those names into `PartitionSpec`s for the current mesh, so changing a parallelism
strategy is a change of mesh shape (config) or of rules (config), never of model code.

Mesh axes:
  data    pure data parallelism (replicated parameters), the axis that crosses slices (DCN).
  fsdp    data parallelism with parameters and optimizer state sharded (ZeRO-3 style).
  expert  expert parallelism for MoE layers; acts as a further fsdp axis everywhere else
          (rows are split over it, and so are the non-expert parameters' embed / latent dims).
  tensor  tensor (model) parallelism over heads, mlp and vocab.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "expert", "tensor")

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

# Logical name -> mesh axis (or axes, tried in order). Parameters use `embed`, `mlp`, ...;
# activations use `batch`, `length`, `act_*` so that a parameter dimension can be sharded
# (fsdp) while the matching activation dimension is not.
DEFAULT_RULES: Rules = (
    # activations
    ("batch", ("data", "fsdp", "expert")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("act_expert", "expert"),
    ("act_tokens", ("data", "fsdp", "expert")),
    # The slot decode's prompt cache is split by position, not by prompt: a refill then takes
    # any prompt's prefix locally and one all-to-all moves it to the slot's device.
    ("cache_prompt_length", ("data", "fsdp", "expert")),
    # A decode's KV cache and the attention over it: rows as `batch`, heads as `act_heads`. Named
    # apart so that a decode layout can split the cache by rows while the projections around it
    # keep every row on every device (`STATIONARY_DECODE_RULES`).
    ("cache_batch", ("data", "fsdp", "expert")),
    ("cache_heads", "tensor"),
    # parameters
    ("vocab", "tensor"),
    # ZeRO-3 over every data-like axis: a weight's embed (or MLA latent) dimension is split
    # over fsdp x expert; in an expert weight [expert, embed, ...] `expert` is taken first.
    ("embed", ("fsdp", "expert")),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("q_lora", ("fsdp", "expert")),
    ("kv_lora", ("fsdp", "expert")),
    ("expert", "expert"),
    ("expert_mlp", "tensor"),
    ("norm", None),
    ("layers", None),
)

# The weights-stationary decode layout (`r1.sampling.SamplingConfig.stationary_weights`). A
# decode step multiplies a few rows by every weight, so the bytes it moves are the weights' and
# the activations are small: here no weight is gathered or copied per step. Each weight is split
# over every device and the activations move to it instead (the 2D weight-stationary layout of
# Pope et al., 2022):
# - dense weights: the embed (and MLA latent) dimension over `expert`, the heads / mlp / vocab
#   dimension over fsdp x tensor. The projections' inputs and outputs keep every row on every
#   device (`batch` over `data` only), split along embed or heads, and the partial sums of a
#   split contraction are added across devices.
# - routed experts: experts over `expert`, their hidden (`expert_mlp`) columns over
#   fsdp x tensor; every device takes every token (`act_tokens` over `data` only) and its local
#   experts' columns, and the outputs are summed over the mesh (`r1.models.moe`).
# - the KV cache and the attention over it stay split by rows (`cache_batch`), each device
#   attending for its rows with all heads of its tensor shard; `relayout` moves the queries and
#   outputs between the two layouts by all-to-alls.
# The mapping assumes the 4-axis mesh of `MESH_AXES`; an axis of size 1 drops out as everywhere.
STATIONARY_DECODE_RULES: Rules = (
    ("batch", "data"),
    ("length", None),
    ("act_embed", "expert"),
    ("act_heads", ("fsdp", "tensor")),
    ("act_kv_heads", ("fsdp", "tensor")),
    ("act_mlp", ("fsdp", "tensor")),
    ("act_vocab", ("fsdp", "tensor", "expert")),
    ("act_expert", "expert"),
    ("act_tokens", "data"),
    ("cache_prompt_length", ("data", "fsdp", "expert")),
    ("cache_batch", ("data", "fsdp", "expert")),
    ("cache_heads", "tensor"),
    ("vocab", ("fsdp", "tensor")),
    ("embed", "expert"),
    ("mlp", ("fsdp", "tensor")),
    ("heads", ("fsdp", "tensor")),
    ("kv_heads", ("fsdp", "tensor")),
    ("head_dim", None),
    ("q_lora", "expert"),
    ("kv_lora", "expert"),
    ("expert", "expert"),
    ("expert_mlp", ("fsdp", "tensor")),
    ("norm", None),
    ("layers", None),
)

_RULES: contextvars.ContextVar[Rules] = contextvars.ContextVar(
    "r1_axis_rules", default=DEFAULT_RULES
)


@contextlib.contextmanager
def axis_rules(rules: Rules) -> Iterator[Rules]:
    """Uses `rules` instead of `DEFAULT_RULES` for `shard` and the helpers below."""
    token = _RULES.set(tuple((name, _as_tuple(axes)) for name, axes in rules))
    try:
        yield _RULES.get()
    finally:
        _RULES.reset(token)


def current_rules() -> Rules:
    return _RULES.get()


def _as_tuple(axes: Any) -> tuple[str, ...] | None:
    if axes is None:
        return None
    if isinstance(axes, str):
        return (axes,)
    return tuple(axes)


# --------------------------------------------------------------------------------- meshes
@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape over the four axes; one axis may be -1 ("all remaining devices")."""

    data: int = 1
    fsdp: int = -1
    expert: int = 1
    tensor: int = 1

    def shape(self, num_devices: int) -> tuple[int, ...]:
        sizes = [self.data, self.fsdp, self.expert, self.tensor]
        unknown = [i for i, s in enumerate(sizes) if s == -1]
        for name, size in zip(MESH_AXES, sizes):
            if size == 0 or size < -1:
                raise ValueError(f"mesh.{name}={size}: sizes must be positive or -1")
        if len(unknown) > 1:
            raise ValueError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
        known = math.prod(s for s in sizes if s != -1)
        if unknown:
            if num_devices % known:
                raise ValueError(
                    f"mesh: {num_devices} devices are not divisible by the fixed axes "
                    f"{dict(zip(MESH_AXES, sizes))}"
                )
            sizes[unknown[0]] = num_devices // known
        if math.prod(sizes) != num_devices:
            raise ValueError(
                f"mesh: {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                f"but {num_devices} are available"
            )
        return tuple(sizes)


def make_mesh(
    config: MeshConfig | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """Builds a 4-axis mesh (`MESH_AXES`) from `config` over `devices` (default: all)."""
    config = config or MeshConfig()
    devices = list(devices) if devices is not None else jax.devices()
    shape = config.shape(len(devices))
    from jax.experimental import mesh_utils

    slices = num_slices(devices)
    if slices > 1:
        # Multi-slice: only the data axis crosses slices (DCN); the rest stays on one slice's ICI.
        if shape[0] % slices:
            raise ValueError(
                f"mesh.data={shape[0]}: the devices span {slices} slices and only the data axis "
                f"crosses slices, so mesh.data must be a multiple of {slices}"
            )
        ici = (shape[0] // slices, *shape[1:])
        dcn = (slices,) + (1,) * (len(shape) - 1)
        # Mesh axes smaller than a physical axis (tensor=2 on a 8x8x16 slice) split it.
        device_array = mesh_utils.create_hybrid_device_mesh(
            ici, dcn, devices=devices, allow_split_physical_axes=True
        )
        return Mesh(device_array, MESH_AXES)
    try:
        device_array = mesh_utils.create_device_mesh(shape, devices=devices)
    except (ValueError, NotImplementedError, AssertionError):
        try:
            device_array = mesh_utils.create_device_mesh(
                shape, devices=devices, allow_split_physical_axes=True
            )
        except (ValueError, NotImplementedError, AssertionError):
            device_array = np.asarray(devices).reshape(shape)
    return Mesh(device_array, MESH_AXES)


def num_slices(devices: Sequence[jax.Device]) -> int:
    """How many TPU slices `devices` span (1 for CPU/GPU devices and single slices)."""
    return len({getattr(d, "slice_index", 0) or 0 for d in devices})


def host_cores() -> int:
    """CPU cores this process may run on (its affinity mask; `os.cpu_count()` where unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def use_cpu_devices(count: int | None = None) -> int:
    """Makes jax's CPU backend expose `count` devices (default: one per core, `host_cores()`)
    and returns the count.

    On a multi-core host without an accelerator this is how r1 uses every core for decoding:
    XLA runs each CPU device's share of a program on its own thread, so a mesh whose `data` axis
    spans these devices splits the batch over the cores, while a single CPU device runs the
    decode loop's small matmuls on one core. Call it before the first jax computation (it sets
    `jax_num_cpu_devices`, which jax reads when its backends start); called later with a count
    other than the one in effect, it raises. It overrides
    `XLA_FLAGS=--xla_force_host_platform_device_count`. No effect on GPU/TPU devices.
    """
    count = host_cores() if count is None else int(count)
    if count < 1:
        raise ValueError(f"use_cpu_devices: count must be >= 1, got {count}")
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError as error:
        current = len(jax.devices("cpu"))
        if current != count:
            raise RuntimeError(
                f"use_cpu_devices({count}): jax's CPU backend has already started with {current} "
                "device(s); call use_cpu_devices before the first jax computation"
            ) from error
    return count


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Joins a multi-host job (TPU pods find their peers without arguments)."""
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )


# --------------------------------------------------------------------------------- rules
def logical_to_spec(
    names: Sequence[str | None],
    shape: Sequence[int] | None = None,
    mesh: Mesh | jax.sharding.AbstractMesh | None = None,
    rules: Rules | None = None,
) -> PartitionSpec:
    """Maps logical axis names to a `PartitionSpec`.

    A mesh axis is used at most once per spec; with `shape` and `mesh` given, a mesh axis whose
    size does not divide the dimension (or is 1) is dropped, so tiny models stay valid on any mesh.
    """
    rules = rules if rules is not None else current_rules()
    table = {name: _as_tuple(axes) for name, axes in rules}
    used: set[str] = set()
    spec: list[Any] = []
    for dim, name in enumerate(names):
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise ValueError(f"logical axis {name!r} has no sharding rule; known: {sorted(table)}")
        chosen: list[str] = []
        remaining = shape[dim] if shape is not None else None
        for axis in table[name] or ():
            if axis in used:
                continue
            if mesh is not None:
                if axis not in mesh.shape:
                    continue
                size = mesh.shape[axis]
                if size == 1:
                    continue
                if remaining is not None:
                    if remaining % size:
                        continue
                    remaining //= size
            chosen.append(axis)
            used.add(axis)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return PartitionSpec(*spec)


def named_sharding(
    names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules | None = None
) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names, shape, mesh, rules))


def _active_mesh():
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return None
    return mesh


def current_mesh() -> Any:
    """The mesh of the ambient `use_mesh` context (abstract while tracing), or None."""
    return _active_mesh()


def rules_without(mesh_axes: Sequence[str], rules: Rules | None = None) -> Rules:
    """`rules` (default: the current ones) with `mesh_axes` taken out of every mapping: the
    logical axes they sharded are then split over the remaining axes only (or replicated)."""
    out = []
    for name, axes in rules if rules is not None else current_rules():
        kept = tuple(a for a in (_as_tuple(axes) or ()) if a not in mesh_axes)
        out.append((name, kept or None))
    return tuple(out)


def rule_axes(name: str, rules: Rules | None = None) -> tuple[str, ...]:
    """The mesh axes `rules` (default: the current ones) map logical axis `name` to, in order
    (before any is dropped for a mesh); () for a name mapped to None or not in the table."""
    table = {n: _as_tuple(axes) for n, axes in (rules or current_rules())}
    return table.get(name) or ()


def cache_rows_apart(rules: Rules | None = None) -> bool:
    """Whether `rules` (default: the current ones) split a decode's KV cache (`cache_batch`,
    `cache_heads`) unlike the activations around it (`batch`, `act_heads`), as
    `STATIONARY_DECODE_RULES` do: the attention then needs its query moved to the cache's split."""
    activations = (rule_axes("batch", rules), rule_axes("act_heads", rules))
    return activations != (rule_axes("cache_batch", rules), rule_axes("cache_heads", rules))


def batch_shardings(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, NamedSharding]:
    """Shardings for a batch dict: rows (axis 0) on the `batch` logical axis, every other axis
    unsharded. Values: arrays, numpy arrays or `jax.ShapeDtypeStruct`s."""
    return {
        k: named_sharding(("batch",) + (None,) * (len(v.shape) - 1), v.shape, mesh)
        for k, v in batch.items()
    }


def compute_platform() -> str:
    """The platform the program being traced will run on ("cpu", "gpu", "tpu"): that of the
    ambient mesh's devices (a TPU topology when compiling ahead of time here), else jax's
    default backend."""
    mesh = _active_mesh()
    platform = getattr(getattr(mesh, "abstract_device", None), "platform", None)
    return platform or jax.default_backend()


def shard(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrains an activation's sharding by logical names; a no-op outside a mesh context."""
    mesh = _active_mesh()
    if mesh is None:
        return x
    if len(names) != x.ndim:
        raise ValueError(f"shard: {len(names)} names {tuple(names)} for an array of rank {x.ndim}")
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, x.shape, mesh))


def relayout(x: jax.Array, source: Sequence[str | None], target: Sequence[str | None]) -> jax.Array:
    """x, laid out by the logical names `source`, constrained to `target`, one mesh axis moved
    between dimensions at a time: each move is one all-to-all of x's shards, where one
    constraint to `target` may let XLA replicate x first (broadcast + all-reduce). Axes only in
    `source` are gathered and axes only in `target` sliced at the end; an intermediate layout
    that would split a dimension unevenly is skipped. A no-op outside a mesh."""
    mesh = _active_mesh()
    if mesh is None:
        return x
    if not len(source) == len(target) == x.ndim:
        raise ValueError(f"relayout: names {tuple(source)} -> {tuple(target)} for rank {x.ndim}")

    def axes_of(spec: PartitionSpec) -> list[list[str]]:
        entries = tuple(spec) + (None,) * (x.ndim - len(spec))
        return [list(_as_tuple(e) or ()) for e in entries]

    def spec_of(layout: list[list[str]]) -> PartitionSpec:
        return PartitionSpec(
            *(None if not a else a[0] if len(a) == 1 else tuple(a) for a in layout)
        )

    current = axes_of(logical_to_spec(source, x.shape, mesh))
    wanted = axes_of(logical_to_spec(target, x.shape, mesh))
    x = jax.lax.with_sharding_constraint(x, spec_of(current))
    for dim, axes in enumerate(wanted):
        for axis in axes:
            held = next((d for d, a in enumerate(current) if axis in a), None)
            if held is None or held == dim:
                continue
            current[held].remove(axis)
            # Keep the target's order of mesh axes within the dimension.
            before = axes[: axes.index(axis)]
            current[dim].insert(sum(a in before for a in current[dim]), axis)
            if all(n % math.prod(mesh.shape[a] for a in c) == 0 for n, c in zip(x.shape, current)):
                x = jax.lax.with_sharding_constraint(x, spec_of(current))
    return jax.lax.with_sharding_constraint(x, spec_of(wanted))


# --------------------------------------------------------------------------------- params
def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def variable_axes(variable: nnx.Variable) -> tuple[str | None, ...]:
    """Logical axis names of a parameter or state variable (replicated when absent)."""
    meta = variable.get_metadata()
    axes = meta.get("axes")
    if axes is None:
        return (None,) * len(variable.get_value().shape)
    return tuple(axes)


def state_shardings(state: Any, mesh: Mesh, rules: Rules | None = None) -> Any:
    """A tree like `state` (an `nnx.State`, maybe abstract) with a `NamedSharding` per leaf."""

    def one(variable):
        if not _is_variable(variable):
            return NamedSharding(mesh, PartitionSpec())
        axes = variable_axes(variable)
        shape = variable.get_value().shape
        if len(axes) != len(shape):
            raise ValueError(f"variable with axes {axes} has shape {shape}")
        return variable.replace(named_sharding(axes, shape, mesh, rules))

    return jax.tree.map(one, state, is_leaf=_is_variable)


def state_partition_specs(state: Any, mesh: Mesh, rules: Rules | None = None) -> Any:
    shardings = state_shardings(state, mesh, rules)
    return jax.tree.map(lambda s: s.spec, shardings)


def create_sharded_model(
    factory: Callable[[], nnx.Module], mesh: Mesh, rules: Rules | None = None
) -> nnx.Module:
    """Initialises `factory()` with every variable created directly in its sharded layout.

    Nothing is materialised on one device first: the model is traced abstractly, its shardings
    are derived from the logical axis names, and the initialiser is jitted with those
    shardings as outputs.
    """
    abstract = nnx.eval_shape(factory)
    graphdef, abstract_state = nnx.split(abstract)
    shardings = state_shardings(abstract_state, mesh, rules)

    init = jax.jit(lambda: nnx.split(factory())[1], out_shardings=shardings)
    with use_mesh(mesh):
        state = init()
    return nnx.merge(graphdef, state)


def optimizer_shardings(optimizer: Any, opt_state: Any, param_shardings: Any, mesh: Mesh) -> Any:
    """Shardings of an optax state: moments mirror their parameters' shardings, counters and
    other non-parameter leaves are replicated. opt_state may be abstract."""
    import optax

    return optax.tree_map_params(
        optimizer,
        lambda _, s: s,
        opt_state,
        param_shardings,
        transform_non_params=lambda _: NamedSharding(mesh, PartitionSpec()),
        is_leaf=_is_variable,
    )


def place_state(state: Any, mesh: Mesh, rules: Rules | None = None) -> Any:
    """Moves an existing (host or device) state tree into its sharded layout."""
    shardings = state_shardings(state, mesh, rules)
    return jax.device_put(state, shardings)


@contextlib.contextmanager
def use_mesh(mesh: Mesh) -> Iterator[Mesh]:
    """Makes `mesh` the ambient mesh so `shard(...)` constraints apply while tracing."""
    with jax.set_mesh(mesh):
        yield mesh
