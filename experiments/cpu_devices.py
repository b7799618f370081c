"""The `--cpu_devices` flag every training / sampling entry point takes.

On a multi-core CPU host, `--cpu_devices=-1` gives jax one CPU device per core (`N` gives N) so
the config's mesh (fsdp=-1 by default) splits the rows over the cores: a single CPU device runs
the decode loop's small matmuls on one core (`r1.sharding.use_cpu_devices`). 0, the default,
leaves jax's device count alone. No effect on GPU/TPU devices.
"""

from __future__ import annotations

import sys

from absl import flags

from r1 import sharding

CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices",
    0,
    "CPU hosts: run on this many jax CPU devices (-1: one per core; 0: jax's default), so the "
    "config's mesh splits the rows over the cores (r1.sharding.use_cpu_devices).",
)


def apply() -> None:
    """Applies `--cpu_devices`: call first in `main`, before any jax computation (and before
    `jax.distributed.initialize`; it starts no backend)."""
    if CPU_DEVICES.value:
        sharding.use_cpu_devices(None if CPU_DEVICES.value < 0 else CPU_DEVICES.value)


def describe() -> None:
    """Prints the devices the run uses (`devices: N x platform`) to stderr (stdout stays the
    entry point's own output), after any distributed init."""
    import jax  # noqa: PLC0415

    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}", file=sys.stderr)
