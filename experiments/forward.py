r"""Forward/backward smoke run and throughput benchmark of one model preset.

    python -m experiments.forward --config=configs/models.py:qwen2_tiny
    python -m experiments.forward --config=configs/models.py:qwen2_tiny \
        --config.model.num_layers=2 --config.mesh.fsdp=-1 --steps=3 --batch_size=16

Builds the mesh from `config.mesh` over all devices, creates the model directly in its sharded
layout, and runs a few jitted training steps (next-token cross-entropy on random tokens, its
gradient and an AdamW update; explicit in/out shardings, donated state). Prints one line per step
and, as its last line, `forward_tokens_per_sec: <value>`: the median over steps of
batch_size * seq_len / step time, where a step is forward + backward + update (compile excluded).
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from ml_collections import config_flags

from experiments import cli
from r1 import configlib
from r1.models.transformer import Transformer
from r1.sharding import (
    create_sharded_model,
    initialize_distributed,
    make_mesh,
    named_sharding,
    optimizer_shardings,
    state_shardings,
    use_mesh,
)

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and variant, e.g. configs/models.py:qwen2_tiny.", lock_config=True
)
_STEPS = flags.DEFINE_integer("steps", 5, "Number of training steps to time.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Sequences per step (global).")
_LENGTH = flags.DEFINE_integer("seq_len", 128, "Tokens per sequence.")
_LR = flags.DEFINE_float("learning_rate", 1e-3, "AdamW learning rate.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Join a multi-host job with jax.distributed.initialize() before building the mesh (TPU pods "
    "find their peers; elsewhere also pass --coordinator_address/--num_processes/--process_id).",
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def next_token_loss(model: Transformer, tokens: jax.Array) -> jax.Array:
    """Mean cross-entropy of predicting tokens[:, 1:] from tokens[:, :-1]. tokens: int32[B, T]."""
    logits_BxTxV = model(tokens)[:, :-1]
    targets_BxT = tokens[:, 1:]
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT).mean()


def run(config, steps: int, batch_size: int, seq_len: int, learning_rate: float) -> float:
    """Runs `steps` timed training steps; returns the median tokens per second."""
    devices = jax.devices()
    experiment = configlib.parse_experiment(config, num_devices=len(devices))
    cfg = experiment.model
    mesh = make_mesh(experiment.mesh, devices)
    print(
        f"devices: {len(devices)} x {devices[0].platform}; mesh {dict(mesh.shape)}; "
        f"model {cfg.family} {cfg.num_layers} layers, width {cfg.hidden_size}"
    )

    model = create_sharded_model(lambda: Transformer(cfg, rngs=nnx.Rngs(experiment.seed)), mesh)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    num_params = sum(x.size for x in jax.tree.leaves(params))
    print(f"parameters: {num_params:,}")
    param_sh = state_shardings(params, mesh)
    rest_sh = state_shardings(rest, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sh = named_sharding(("batch", "length"), (batch_size, seq_len), mesh)

    tx = optax.adamw(learning_rate)
    opt_sh = optimizer_shardings(tx, jax.eval_shape(tx.init, params), param_sh, mesh)
    with use_mesh(mesh):
        opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)

    def train_step(params, rest, opt_state, tokens):
        def loss_fn(p):
            return next_token_loss(nnx.merge(graphdef, p, rest), tokens)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step_fn = jax.jit(
        train_step,
        in_shardings=(param_sh, rest_sh, opt_sh, batch_sh),
        out_shardings=(param_sh, opt_sh, replicated),
        donate_argnums=(0, 2),
    )

    rng = np.random.default_rng(experiment.seed)

    def batch() -> jax.Array:
        # Every process draws the same global batch and hands over the slices its devices hold,
        # so the same code serves one host and a multi-host pod.
        tokens = rng.integers(0, cfg.vocab_size, size=(batch_size, seq_len), dtype=np.int32)
        return jax.make_array_from_callback(tokens.shape, batch_sh, lambda index: tokens[index])

    start = time.perf_counter()
    with use_mesh(mesh):
        compiled = step_fn.lower(params, rest, opt_state, batch()).compile()
    print(f"compiled in {time.perf_counter() - start:.2f}s")

    rates = []
    for step in range(1, steps + 1):
        tokens = batch()
        jax.block_until_ready(tokens)
        start = time.perf_counter()
        params, opt_state, loss = compiled(params, rest, opt_state, tokens)
        loss = float(jax.block_until_ready(loss))
        seconds = time.perf_counter() - start
        rates.append(batch_size * seq_len / seconds)
        print(
            f"step {step}/{steps}  loss {loss:.4f}  {seconds * 1e3:.1f} ms  {rates[-1]:,.0f} tok/s"
        )
        if not np.isfinite(loss):
            raise FloatingPointError(f"step {step}: loss is {loss}")
    return statistics.median(rates)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None:
        raise app.UsageError("--config=configs/models.py:<variant> is required")
    if _STEPS.value < 1:
        raise app.UsageError("--steps must be >= 1")
    logging.set_verbosity(logging.WARNING)
    if _DISTRIBUTED.value:
        initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    jnp.zeros(())  # initialise the backend before timing anything
    rate = run(_CONFIG.value, _STEPS.value, _BATCH.value, _LENGTH.value, _LR.value)
    print(f"forward_tokens_per_sec: {rate:.1f}")


if __name__ == "__main__":
    cli.run(main)
