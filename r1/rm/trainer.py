"""Reward-model training: Bradley-Terry on preference pairs, the shell around one jitted step.

    python -m experiments.train_rm --config=configs/reward_model.py:tiny --workdir=runs/rm_tiny

It builds the mesh, tokenizer and backbone as the GRPO trainer does (`r1.rl.trainer` builders:
a local HF checkpoint or random init), adds the scalar head, reads the pairs (local JSONL files,
or synthetic pairs written to `workdir/pairs_{train,eval}.jsonl` and read back), restores the
latest checkpoint of `workdir` if any, then loops: one compiled step per batch of pairs
(chosen and rejected rows in one forward pass), metrics to `workdir/metrics.jsonl` +
TensorBoard, held-out pair accuracy every `eval.every` steps, an orbax checkpoint every
`train.checkpoint_every` steps and on SIGTERM. At the end: `workdir/rm_eval.json` (held-out
accuracy and loss) and the model in HF layout under `workdir/export` (see `r1.rm.model.save`).

Batches follow the step number (epoch e uses permutation `seed, e` of the pairs), so a resumed
run sees exactly the batches an unbroken run would.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from r1 import checkpoint as ckpt_lib
from r1 import configlib, sharding
from r1 import logging as r1_logging
from r1.data import templates
from r1.rl.trainer import (
    NonFiniteError,
    _Stop,
    build_policy,
    build_tokenizer,
    make_optimizer,
)
from r1.rm import data as rm_data
from r1.rm import model as rm_model
from r1.rm.loss import bradley_terry_losses, pair_accuracy
from r1.rm.reward import MISSING_SUMMARY, REGIONS, think_close_ids
from r1.rm.step import pair_scores, rm_step_fn
from r1.train.state import init_train_state, train_state_shardings

log = logging.getLogger(__name__)

EXTRA_SECTIONS = ("init", "tokenizer", "data", "rm", "optimizer", "train", "eval")
CURVE_PANELS = (
    ("loss", ("loss", "eval/loss")),
    ("pair accuracy", ("accuracy", "eval/accuracy")),
    ("score gap", ("reward/gap", "eval/reward/gap")),
)


# ----------------------------------------------------------------------------- builders
def build_reward_model(config, model_cfg, mesh) -> rm_model.RewardModel:
    """From `init.rm_path` (a saved reward model), else a backbone from `init.hf_path` (e.g. the
    policy's checkpoint) or random, with a fresh head."""
    rm_path = str(config.init.rm_path)
    if rm_path:
        rm_path = _resolve(rm_path)
        _, model = rm_model.load(
            rm_path,
            mesh=mesh,
            dtype=model_cfg.dtype,
            param_dtype=model_cfg.param_dtype,
            remat_policy=model_cfg.remat_policy,
        )
        return model
    seed = int(config.seed)
    if str(config.init.hf_path):
        backbone = build_policy(config, model_cfg, mesh)
        return rm_model.RewardModel(backbone.config, rngs=nnx.Rngs(seed + 1), backbone=backbone)
    return sharding.create_sharded_model(
        lambda: rm_model.RewardModel(model_cfg, rngs=nnx.Rngs(seed)), mesh
    )


def _resolve(path: str) -> str:
    path = os.path.expanduser(path)
    if not os.path.isabs(path) and not os.path.exists(path):
        path = os.path.join(configlib.REPO_ROOT, path)
    return path


def load_pair_splits(config, workdir: str) -> tuple[list, list, Counter]:
    """(train pairs, held-out pairs, skipped-row counts) as `config.data` asks."""
    d = config.data
    train_files = [_resolve(p) for p in d.train_files]
    eval_files = [_resolve(p) for p in d.eval_files]
    if not train_files:
        syn = d.synthetic
        train_path = os.path.join(workdir, "pairs_train.jsonl")
        eval_path = os.path.join(workdir, "pairs_eval.jsonl")
        if jax.process_index() == 0:
            seed = int(config.seed)
            rule = str(syn.rule)
            rm_data.write_pairs(train_path, rm_data.synthetic_pairs(int(syn.num_train), seed, rule))
            rm_data.write_pairs(
                eval_path, rm_data.synthetic_pairs(int(syn.num_eval), seed + 10_000, rule)
            )
        _sync("synthetic_pairs")
        train_files, eval_files = [train_path], [eval_path]
    train, skipped = rm_data.read_pairs(train_files)
    if eval_files:
        held_out, eval_skipped = rm_data.read_pairs(eval_files)
        skipped.update({f"eval/{k}": v for k, v in eval_skipped.items()})
    else:
        fraction = float(d.eval_fraction)
        if not 0.0 < fraction < 1.0:
            raise ValueError(
                f"config.data.eval_fraction={fraction}: expected a fraction in (0, 1) when "
                "data.eval_files is empty"
            )
        order = np.random.default_rng(int(config.seed)).permutation(len(train))
        cut = int(round(len(train) * fraction))
        held_out = [train[i] for i in sorted(order[:cut])]
        train = [train[i] for i in sorted(order[cut:])]
    return train, held_out, skipped


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _validate(config) -> None:
    rm = config.rm
    if rm.region not in REGIONS:
        raise ValueError(f"config.rm.region: expected one of {REGIONS}, got {rm.region!r}")
    if rm.missing_summary not in MISSING_SUMMARY:
        raise ValueError(
            f"config.rm.missing_summary: expected one of {MISSING_SUMMARY}, "
            f"got {rm.missing_summary!r}"
        )
    if config.data.template not in rm_data.TEMPLATES:
        raise ValueError(
            f"config.data.template: expected one of {rm_data.TEMPLATES}, "
            f"got {config.data.template!r}"
        )
    for name in ("batch_size", "num_microbatches"):
        if int(config.train[name]) < 1:
            raise ValueError(f"config.train.{name}: expected >= 1, got {config.train[name]}")
    if int(config.train.batch_size) % int(config.train.num_microbatches):
        raise ValueError(
            f"config.train.batch_size={config.train.batch_size} is not divisible by "
            f"config.train.num_microbatches={config.train.num_microbatches}"
        )
    if int(config.eval.batch_size) < 1:
        raise ValueError(f"config.eval.batch_size: expected >= 1, got {config.eval.batch_size}")
    if int(config.train.steps) < 1 and float(config.train.epochs) <= 0:
        raise ValueError("config.train: set steps >= 1 or epochs > 0")


def _to_global(batch: dict[str, np.ndarray], shardings: dict[str, NamedSharding]):
    """Every process holds the whole batch: each device takes its slice of it."""
    return {
        k: jax.make_array_from_callback(v.shape, shardings[k], lambda index, v=v: v[index])
        for k, v in batch.items()
    }


# ----------------------------------------------------------------------------- evaluation
def make_evaluator(graphdef, arrays: dict[str, np.ndarray], settings: dict, batch_size: int, mesh):
    """Held-out pair accuracy and loss. The pairs are padded to a multiple of `batch_size` with
    masked pairs, so one program serves every batch."""
    n = len(arrays["margin"])
    if n == 0:
        raise ValueError("held-out set: no usable preference pairs")
    padded = -(-n // batch_size) * batch_size
    full = {
        k: np.concatenate([v, np.zeros((padded - n, *v.shape[1:]), v.dtype)])
        for k, v in arrays.items()
    }
    shapes = {k: (batch_size, *v.shape[1:]) for k, v in full.items()}
    batch_sh = sharding.batch_shardings({k: np.empty(s, bool) for k, s in shapes.items()}, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())

    def run(params, extra, batch):
        model = nnx.merge(graphdef, params, extra)
        r_c, r_r, _ = pair_scores(model, batch, settings)
        return r_c, r_r

    run = jax.jit(run, out_shardings=(replicated, replicated))

    def evaluator(state) -> dict[str, float]:
        chosen, rejected = [], []
        with sharding.use_mesh(mesh):
            for start in range(0, padded, batch_size):
                part = {k: v[start : start + batch_size] for k, v in full.items()}
                r_c, r_r = jax.device_get(
                    run(state.params, state.extra, _to_global(part, batch_sh))
                )
                chosen.append(np.asarray(r_c))
                rejected.append(np.asarray(r_r))
        r_c = jnp.asarray(np.concatenate(chosen)[:n])
        r_r = jnp.asarray(np.concatenate(rejected)[:n])
        return {
            "eval/accuracy": float(pair_accuracy(r_c, r_r)),
            "eval/loss": float(jnp.mean(bradley_terry_losses(r_c, r_r))),
            "eval/reward/gap": float(jnp.mean(r_c - r_r)),
            "eval/reward/chosen": float(jnp.mean(r_c)),
            "eval/reward/rejected": float(jnp.mean(r_r)),
            "eval/pairs": float(n),
        }

    return evaluator


# ----------------------------------------------------------------------------- the loop
def _batch_indices(step: int, batch_size: int, num_pairs: int, seed: int) -> np.ndarray:
    """Pair indices of (1-based) `step`: consecutive slices of per-epoch permutations."""
    positions = np.arange((step - 1) * batch_size, step * batch_size)
    epochs = positions // num_pairs
    out = np.empty(batch_size, np.int64)
    for epoch in np.unique(epochs):
        order = np.random.default_rng([seed, int(epoch)]).permutation(num_pairs)
        sel = epochs == epoch
        out[sel] = order[positions[sel] % num_pairs]
    return out


def train_rm(config, workdir: str) -> dict[str, float]:
    """Trains (or resumes) a reward model in `workdir`; returns the last metrics, which include
    the held-out `eval/accuracy`."""
    os.makedirs(workdir, exist_ok=True)
    experiment = configlib.parse_experiment(
        config, num_devices=jax.device_count(), extra_sections=EXTRA_SECTIONS
    )
    _validate(config)
    model_cfg = experiment.model
    mesh = sharding.make_mesh(experiment.mesh)
    tokenizer = build_tokenizer(config)
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise ValueError(
            f"config.model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's "
            f"{tokenizer.vocab_size}"
        )
    is_main = jax.process_index() == 0
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))

    region = str(config.rm.region)
    settings = dict(
        region=region,
        think_close=think_close_ids(tokenizer.encode(templates.THINK_CLOSE))
        if region == "summary"
        else (),
        missing=str(config.rm.missing_summary),
    )
    train_pairs, eval_pairs, skipped = load_pair_splits(config, workdir)
    encode = dict(
        tokenizer=tokenizer,
        max_length=int(config.data.max_length),
        template=str(config.data.template),
        add_bos=bool(config.data.add_bos),
    )
    train_arrays, train_counts = rm_data.encode_pairs(train_pairs, **encode)
    eval_arrays, eval_counts = rm_data.encode_pairs(eval_pairs, **encode)
    skipped.update(train_counts)
    skipped.update({f"eval/{k}": v for k, v in eval_counts.items()})
    num_pairs = len(train_arrays["margin"])
    batch_size = int(config.train.batch_size)
    if num_pairs < batch_size:
        raise ValueError(
            f"config.train.batch_size={batch_size}: only {num_pairs} usable training pairs"
        )
    steps = int(config.train.steps)
    if steps < 1:
        steps = math.ceil(float(config.train.epochs) * num_pairs / batch_size)
    log.info(
        "reward model: %d train pairs, %d held out, skipped %s",
        num_pairs,
        len(eval_arrays["margin"]),
        dict(skipped),
    )

    optimizer = make_optimizer(config)
    with sharding.use_mesh(mesh):
        model = build_reward_model(config, model_cfg, mesh)
    graphdef, state = init_train_state(model, optimizer, experiment.seed, with_reference=False)
    del model
    state_sh = train_state_shardings(state, optimizer, mesh)
    state = jax.device_put(state, state_sh)
    example = {k: v[:batch_size] for k, v in train_arrays.items()}
    batch_sh = sharding.batch_shardings(example, mesh)
    step_fn = jax.jit(
        rm_step_fn(
            graphdef,
            optimizer,
            settings,
            bool(config.rm.use_margin),
            float(model_cfg.bias_update_rate),
            int(config.train.num_microbatches),
        ),
        in_shardings=(state_sh, batch_sh),
        out_shardings=(state_sh, NamedSharding(mesh, PartitionSpec())),
        donate_argnums=(0,),
    )
    evaluator = make_evaluator(graphdef, eval_arrays, settings, int(config.eval.batch_size), mesh)

    checkpointer = ckpt_lib.Checkpointer(workdir, keep=int(config.train.keep_checkpoints))
    writer = r1_logging.MetricWriter(workdir, enabled=is_main)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_sh
    )
    start_step = 0
    restored = checkpointer.restore_latest(abstract)
    if restored is not None:
        start_step, state, _ = restored
        writer.truncate_after(start_step)
        log.warning("resumed from step %d in %s", start_step, workdir)

    stop = _Stop()
    previous = signal.signal(signal.SIGTERM, lambda *_: setattr(stop, "requested", True))
    every = int(config.eval.every)
    log_every = max(int(config.train.log_every), 1)
    last: dict[str, float] = {}
    eval_accuracy = float("nan")
    progress = tqdm(total=steps, initial=start_step, disable=not is_main, desc="rm", unit="step")
    try:
        if start_step == 0:
            last = evaluator(state)
            eval_accuracy = last["eval/accuracy"]
            writer.write(0, last)
        for step in range(start_step + 1, steps + 1):
            index = _batch_indices(step, batch_size, num_pairs, experiment.seed)
            batch = _to_global({k: v[index] for k, v in train_arrays.items()}, batch_sh)
            start = time.perf_counter()
            with sharding.use_mesh(mesh):
                new_state, metrics = step_fn(state, batch)
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
                raise NonFiniteError(
                    f"step {step}: non-finite loss ({metrics['loss']}) or gradient norm "
                    f"({metrics['grad_norm']}); stopping without saving this step. The last "
                    f"checkpoint is intact in {checkpointer.directory}"
                )
            state = new_state
            metrics["step_seconds"] = time.perf_counter() - start
            metrics["epoch"] = step * batch_size / num_pairs
            if every > 0 and (step % every == 0 or step == steps):
                metrics.update(evaluator(state))
                eval_accuracy = metrics["eval/accuracy"]
            if step % log_every == 0 or step == steps or "eval/accuracy" in metrics:
                writer.write(step, metrics)
            last = metrics
            progress.update(1)
            progress.set_postfix(
                loss=f"{metrics['loss']:.3f}",
                acc=f"{metrics['accuracy']:.2f}",
                eval_acc=f"{eval_accuracy:.3f}",
            )
            save_now = step % int(config.train.checkpoint_every) == 0 or step == steps
            if save_now or stop.requested:
                checkpointer.save(step, state, {"pairs_seen": step * batch_size})
            if stop.requested:
                log.warning("SIGTERM: saved step %d, exiting", step)
                return last
    finally:
        progress.close()
        signal.signal(signal.SIGTERM, previous)
        checkpointer.close()
        writer.close()

    if "eval/accuracy" not in last:
        last.update(evaluator(state))
    final_step = int(jax.device_get(state.step))
    if is_main:
        report = {
            "step": final_step,
            "region": region,
            "train_pairs": num_pairs,
            "skipped": dict(sorted(skipped.items())),
            **{k[len("eval/") :]: v for k, v in last.items() if k.startswith("eval/")},
        }
        with open(os.path.join(workdir, "rm_eval.json"), "w") as f:
            json.dump(report, f, indent=2)
        export = nnx.merge(graphdef, state.params, state.extra)
        rm_model.save(
            export,
            os.path.join(workdir, "export"),
            metadata={
                "region": region,
                "missing_summary": settings["missing"],
                "template": str(config.data.template),
                "add_bos": bool(config.data.add_bos),
                "eval_accuracy": last["eval/accuracy"],
            },
        )
        r1_logging.plot_curves(writer.path, os.path.join(workdir, "curves.png"), CURVE_PANELS)
    return last
