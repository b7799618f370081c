"""A tiny job on the shared run loop (`r1.train.loop.run_loop`) and checkpointer, for fault
injection: in-process (`run`) or as a process to kill (``python toy_job.py WORKDIR ...``).

The state is a float32 vector of `size` values; step t reads line t of the data file (a
number per line, cycled) and sets ``w = 0.9 * w + x``. Every metric is a function of the steps
taken, so a resumed run's rows must equal an unbroken run's. The data position and the data
file's fingerprint are saved in every checkpoint.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from r1.data.fingerprint import files_fingerprint
from r1.train.loop import LoopHooks, LoopSettings, run_loop
from r1.train.state import TrainState


def initial_state(size: int) -> tuple[TrainState, TrainState]:
    """The toy state; over several processes `w` is split across every device (so each step
    runs a cross-process reduction) and the rest is replicated."""
    w = np.asarray(jax.random.normal(jax.random.key(1), (size,), jnp.float32))
    if jax.process_count() == 1:
        single = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = TrainState(single, {"w": single}, {}, (), single)
    else:
        mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("x",))
        split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
        same = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        shardings = TrainState(same, {"w": split}, {}, (), same)
    host = TrainState(
        np.zeros((), np.int32), {"w": w}, {}, (), np.asarray(jax.random.key_data(jax.random.key(0)))
    )
    state = jax.tree.map(
        lambda value, sharding: jax.make_array_from_callback(
            value.shape, sharding, lambda index: value[index]
        ),
        host,
        shardings,
    )
    return state, shardings


@jax.jit
def _step(state: TrainState, x: jax.Array):
    w = state.params["w"] * 0.9 + x
    new = TrainState(state.step + 1, {"w": w}, state.extra, state.opt_state, state.rng)
    return new, {"loss": jnp.mean(w), "grad_norm": w[0]}, None


def write_data(path: str, values: list[float]) -> str:
    with open(path, "w") as f:
        f.writelines(f"{v}\n" for v in values)
    return path


class ToyJob:
    """The hooks of one toy run. step_sleep: seconds each step waits (room for a kill);
    on_eval / on_save: called with the step inside evaluation / before a save (fault hooks)."""

    def __init__(self, data: str, step_sleep: float = 0.0, file_size_limit: tuple = (0, 0)):
        with open(data) as f:
            self.values = [float(line) for line in f if line.strip()]
        self.data, self.step_sleep = data, step_sleep
        self.file_size_limit = file_size_limit  # (bytes, from step): a size-limited disk
        self.position = 0
        self.on_eval = lambda step: None

    def next_batch(self, step: int):
        limit, from_step = self.file_size_limit
        if limit and step == from_step:
            # Writes past `limit` bytes per file now fail (EFBIG), as on a full disk, instead of
            # the default SIGXFSZ kill.
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        x = self.values[self.position % len(self.values)]
        self.position += 1
        if self.step_sleep:
            time.sleep(self.step_sleep)
        return jnp.float32(x)

    def evaluate(self, state: TrainState) -> dict[str, float]:
        self.on_eval(int(state.step))
        return {"eval/w_sum": float(jnp.sum(state.params["w"]))}

    def hooks(self) -> LoopHooks:
        return LoopHooks(
            next_batch=self.next_batch,
            run_step=_step,
            host_metrics=lambda step, batch, metrics, outputs, seconds: {"x": float(batch)},
            evaluate=self.evaluate,
            data_state=lambda: {"position": self.position},
            restore_data=lambda d: setattr(self, "position", int(d["position"])),
        )


def settings(steps: int, data: str, **overrides) -> LoopSettings:
    base = dict(
        name="toy",
        steps=steps,
        checkpoint_every=3,
        keep_checkpoints=3,
        eval_every=4,
        eval_at_start=True,
        data_fingerprint=files_fingerprint(data),
    )
    base.update(overrides)
    return LoopSettings(**base)


def run(workdir: str, data: str, steps: int, size: int = 8, job: ToyJob | None = None, **kw):
    """One invocation of the toy job in `workdir` (resumes what is there)."""
    job = job or ToyJob(data)
    state, shardings = initial_state(size)
    return run_loop(workdir, state, shardings, settings(steps, data, **kw), job.hooks())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--size", type=int, default=8)
    parser.add_argument("--step_sleep", type=float, default=0.0)
    parser.add_argument("--file_size_limit", type=int, default=0, help="bytes per file written")
    parser.add_argument("--limit_from_step", type=int, default=0)
    parser.add_argument("--coordinator", default="", help="host:port: join a 2-process job")
    parser.add_argument("--process_id", type=int, default=0)
    parser.add_argument("--heartbeat_timeout", type=int, default=10)
    args = parser.parse_args()
    if args.coordinator:
        jax.distributed.initialize(
            args.coordinator,
            num_processes=2,
            process_id=args.process_id,
            heartbeat_timeout_seconds=args.heartbeat_timeout,
        )
    limit = (args.file_size_limit, args.limit_from_step)
    job = ToyJob(args.data, args.step_sleep, limit)
    result = run(args.workdir, args.data, args.steps, args.size, job)
    print(f"finished={result.finished} step={result.step}", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()
