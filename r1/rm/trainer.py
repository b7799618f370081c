"""Reward-model training: Bradley-Terry on preference pairs, plugged into the shared run loop.

    python -m experiments.train_rm --config=configs/reward_model.py:tiny --workdir=runs/rm_tiny

`train_rm(config, workdir)` parses the config once (`r1.rm.config.parse`), builds the mesh,
tokenizer and backbone (`r1.train.build`: a local HF checkpoint or random init) with a scalar
head, reads the pairs (local JSONL files, or synthetic pairs written to
`workdir/pairs_{train,eval}.jsonl` and read back), and hands `r1.train.loop.run_loop` the
compiled step (`r1.rm.step.rm_step_fn`: chosen and rejected rows in one forward pass) and the
held-out pair accuracy. At the end: `workdir/rm_eval.json` (held-out accuracy and loss) and the
model in HF layout under `workdir/export` (see `r1.rm.model.save`).

Batches follow the step number (epoch e uses permutation `seed, e` of the pairs), so a resumed
run sees exactly the batches an unbroken run would.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from r1 import sharding
from r1.data.fingerprint import files_fingerprint
from r1.rm import config as rm_config
from r1.rm import data as rm_data
from r1.rm import model as rm_model
from r1.rm.loss import bradley_terry_losses, pair_accuracy
from r1.rm.reward import region_settings
from r1.rm.step import pair_scores, rm_step_fn
from r1.train import build
from r1.train.config import make_optimizer
from r1.train.distributed import global_from_full, sync
from r1.train.loop import LoopHooks, LoopSettings, run_loop, write_config
from r1.train.state import init_train_state, train_state_shardings

log = logging.getLogger(__name__)

CURVE_PANELS = (
    ("loss", ("loss", "eval/loss")),
    ("pair accuracy", ("accuracy", "eval/accuracy")),
    ("score gap", ("reward/gap", "eval/reward/gap")),
)


# ----------------------------------------------------------------------------- builders
def build_reward_model(exp: rm_config.RMExperiment, mesh) -> rm_model.RewardModel:
    """From `init.rm_path` (a saved reward model), else a backbone from `init.hf_path` (e.g. the
    policy's checkpoint) or random, with a fresh head."""
    model_cfg = exp.model
    if exp.init.rm_path:
        _, model = rm_model.load(
            build.resolve_path(exp.init.rm_path),
            mesh=mesh,
            dtype=model_cfg.dtype,
            param_dtype=model_cfg.param_dtype,
            remat_policy=model_cfg.remat_policy,
        )
        return model
    if exp.init.hf_path:
        backbone = build.build_policy(exp.init.hf_path, model_cfg, mesh, exp.seed)
        return rm_model.RewardModel(backbone.config, rngs=nnx.Rngs(exp.seed + 1), backbone=backbone)
    return sharding.create_sharded_model(
        lambda: rm_model.RewardModel(model_cfg, rngs=nnx.Rngs(exp.seed)), mesh
    )


def load_pair_splits(exp: rm_config.RMExperiment, workdir: str) -> tuple[list, list, Counter]:
    """(train pairs, held-out pairs, skipped-row counts) as `config.data` asks."""
    d = exp.data
    train_files = [build.resolve_path(p) for p in d.train_files]
    eval_files = [build.resolve_path(p) for p in d.eval_files]
    if not train_files:
        syn = d.synthetic
        train_path = os.path.join(workdir, "pairs_train.jsonl")
        eval_path = os.path.join(workdir, "pairs_eval.jsonl")
        if jax.process_index() == 0:
            rule = str(syn.rule)
            rm_data.write_pairs(
                train_path, rm_data.synthetic_pairs(int(syn.num_train), exp.seed, rule)
            )
            rm_data.write_pairs(
                eval_path, rm_data.synthetic_pairs(int(syn.num_eval), exp.seed + 10_000, rule)
            )
        sync("synthetic_pairs")
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
        order = np.random.default_rng(exp.seed).permutation(len(train))
        cut = int(round(len(train) * fraction))
        held_out = [train[i] for i in sorted(order[:cut])]
        train = [train[i] for i in sorted(order[cut:])]
    return train, held_out, skipped


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
                    run(state.params, state.extra, global_from_full(part, batch_sh))
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


def _pairs(exp, tokenizer, workdir) -> tuple[dict, dict, Counter]:
    """The encoded train and held-out pair arrays and every skip count."""
    train_pairs, eval_pairs, skipped = load_pair_splits(exp, workdir)
    encode = dict(
        tokenizer=tokenizer,
        max_length=exp.data.max_length,
        template=exp.data.template,
        add_bos=exp.data.add_bos,
    )
    train_arrays, train_counts = rm_data.encode_pairs(train_pairs, **encode)
    eval_arrays, eval_counts = rm_data.encode_pairs(eval_pairs, **encode)
    skipped.update(train_counts)
    skipped.update({f"eval/{k}": v for k, v in eval_counts.items()})
    return train_arrays, eval_arrays, skipped


class RMJob:
    """The reward-model hooks of the run loop: batches by step number, the compiled step, the
    held-out evaluator (its last accuracy shown in the progress bar)."""

    def __init__(self, exp, mesh, graphdef, optimizer, state_sh, arrays, settings):
        self.exp, self.mesh, self.arrays = exp, mesh, arrays
        self.num_pairs = len(arrays["margin"])
        self.batch_size = exp.train.batch_size
        self.batch_sh = sharding.batch_shardings(
            {k: v[: self.batch_size] for k, v in arrays.items()}, mesh
        )
        self.step_fn = jax.jit(
            rm_step_fn(
                graphdef,
                optimizer,
                settings,
                exp.rm.use_margin,
                float(exp.model.bias_update_rate),
                exp.train.num_microbatches,
            ),
            in_shardings=(state_sh, self.batch_sh),
            out_shardings=(state_sh, NamedSharding(mesh, PartitionSpec())),
            donate_argnums=(0,),
        )
        self.eval_accuracy = float("nan")

    def next_batch(self, step: int):
        index = _batch_indices(step, self.batch_size, self.num_pairs, self.exp.seed)
        return global_from_full({k: v[index] for k, v in self.arrays.items()}, self.batch_sh)

    def run_step(self, state, batch):
        with sharding.use_mesh(self.mesh):
            new_state, metrics = self.step_fn(state, batch)
        return new_state, metrics, None

    def host_metrics(self, step, batch, metrics, outputs, seconds) -> dict[str, float]:
        return {"epoch": step * self.batch_size / self.num_pairs}

    def evaluating(self, evaluator):
        def evaluate(state):
            metrics = evaluator(state)
            self.eval_accuracy = metrics["eval/accuracy"]
            return metrics

        return evaluate

    def postfix(self, metrics: dict[str, float]) -> dict[str, str]:
        return {
            "loss": f"{metrics['loss']:.3f}",
            "acc": f"{metrics['accuracy']:.2f}",
            "eval_acc": f"{self.eval_accuracy:.3f}",
        }


def train_rm(config: Any, workdir: str, restart: bool = False) -> dict[str, float]:
    """Trains (or resumes) a reward model in `workdir`; returns the last metrics, which include
    the held-out `eval/accuracy`."""
    exp = rm_config.parse(config, num_devices=jax.device_count())
    write_config(workdir, config)
    mesh = sharding.make_mesh(exp.mesh)
    tokenizer = build.build_tokenizer(exp.tokenizer.kind, exp.tokenizer.path)
    build.check_vocab(tokenizer, exp.model)
    settings = region_settings(exp.rm.region, exp.rm.missing_summary, tokenizer)
    train_arrays, eval_arrays, skipped = _pairs(exp, tokenizer, workdir)
    num_pairs = len(train_arrays["margin"])
    if num_pairs < exp.train.batch_size:
        raise ValueError(
            f"config.train.batch_size={exp.train.batch_size}: only {num_pairs} usable training "
            "pairs"
        )
    steps = exp.train.steps
    if steps < 1:
        steps = math.ceil(exp.train.epochs * num_pairs / exp.train.batch_size)
    log.info(
        "reward model: %d train pairs, %d held out, skipped %s",
        num_pairs,
        len(eval_arrays["margin"]),
        dict(skipped),
    )
    optimizer = make_optimizer(exp.optimizer, steps)
    with sharding.use_mesh(mesh):
        model = build_reward_model(exp, mesh)
    graphdef, state = init_train_state(model, optimizer, exp.seed, with_reference=False)
    del model
    state_sh = train_state_shardings(state, optimizer, mesh)
    state = jax.device_put(state, state_sh)
    job = RMJob(exp, mesh, graphdef, optimizer, state_sh, train_arrays, settings)
    evaluator = make_evaluator(graphdef, eval_arrays, settings, exp.eval.batch_size, mesh)
    loop = LoopSettings(
        restart=restart,
        data_fingerprint=files_fingerprint(exp.data.train_files),
        allow_data_change=exp.data.allow_changed,
        name="rm",
        steps=steps,
        checkpoint_every=exp.train.checkpoint_every,
        keep_checkpoints=exp.train.keep_checkpoints,
        eval_every=exp.eval.every,
        eval_at_start=True,
        log_every=exp.train.log_every,
        curve_panels=CURVE_PANELS,
    )
    hooks = LoopHooks(
        next_batch=job.next_batch,
        run_step=job.run_step,
        host_metrics=job.host_metrics,
        evaluate=job.evaluating(evaluator),
        postfix=job.postfix,
    )
    result = run_loop(workdir, state, state_sh, loop, hooks)
    last = dict(result.last)
    if not result.finished:
        return last
    if "eval/accuracy" not in last:
        last.update(evaluator(result.state))
    _write_results(exp, workdir, graphdef, result.state, last, num_pairs, skipped, settings)
    return last


def _write_results(exp, workdir, graphdef, state, last, num_pairs, skipped, settings) -> None:
    """`workdir/rm_eval.json` and the HF-layout export (the main process writes both)."""
    final_step = int(jax.device_get(state.step))
    if jax.process_index() != 0:
        return
    report = {
        "step": final_step,
        "region": exp.rm.region,
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
            "region": exp.rm.region,
            "missing_summary": settings["missing"],
            "template": exp.data.template,
            "add_bos": exp.data.add_bos,
            "eval_accuracy": last["eval/accuracy"],
        },
    )
