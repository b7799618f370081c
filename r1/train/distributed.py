"""Host arrays <-> global arrays for single- and multi-host runs (every process calls these).

Batches come from each process's own data shard (`global_batch`), or every process holds the
whole batch (`global_from_full`); small host results are gathered back in process order
(`gather_to_host`). On one process they are plain `device_put` / `device_get`.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def replicated(array: np.ndarray, mesh: jax.sharding.Mesh) -> jax.Array:
    """The same host array on every process -> a replicated global array."""
    target = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.make_array_from_callback(array.shape, target, lambda index: array[index])


def global_batch(array: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """A process-local batch slice [n, ...] -> the global batch array [n * processes, ...].

    The slices are all-gathered on the hosts first (prompt batches are small), so the global
    array is right whatever the batch sharding is, even when the batch is too small to be split
    over the mesh and ends up replicated.
    """
    if jax.process_count() == 1:
        return jax.device_put(array, sharding)
    from jax.experimental import multihost_utils  # noqa: PLC0415 - multi-host runs only

    full = np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return jax.make_array_from_callback(full.shape, sharding, lambda index: full[index])


def global_from_full(
    batch: dict[str, np.ndarray], shardings: dict[str, jax.sharding.Sharding]
) -> dict[str, jax.Array]:
    """Every process holds the whole batch: each device takes its slice of it."""
    return {
        k: jax.make_array_from_callback(v.shape, shardings[k], lambda index, v=v: v[index])
        for k, v in batch.items()
    }


def gather_to_host(tree: Any) -> Any:
    """A pytree of global (or per-process host) arrays -> numpy arrays of the whole batch, in
    process order; None leaves stay None."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils  # noqa: PLC0415 - multi-host runs only

    return multihost_utils.process_allgather(tree, tiled=True)


def sync(name: str) -> None:
    """A barrier across processes (no-op on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415 - multi-host runs only

        multihost_utils.sync_global_devices(name)
