"""The GRPO trainer: the stateful shell around the compiled step.

    python -m experiments.train --config=configs/r1_zero.py:tiny --workdir=runs/demo

It builds the mesh, tokenizer, policy (from a local HF-layout base checkpoint or random), the
prompt pipeline (grain) and the reward bridge from the config; restores the latest checkpoint
of `workdir` (train state + data iterator position) if there is one; then loops: one compiled
GRPO step per batch, metrics to `workdir/metrics.jsonl` + TensorBoard, sample completions to
`workdir/samples.jsonl`, held-out greedy evaluation (accuracy and length per difficulty), an
orbax checkpoint every `train.checkpoint_every` steps and on SIGTERM, and `workdir/curves.png`
at the end. A NaN/inf loss or gradient stops the run before anything of that step is saved.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import signal
import time
from collections import defaultdict
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from r1 import checkpoint as ckpt_lib
from r1 import configlib, sharding
from r1 import logging as r1_logging
from r1.data import pipeline, procedural
from r1.data.mixture import GeneralMixture, load_general_prompts
from r1.data.tokenizers import build_demo_tokenizer
from r1.metrics.behaviour import behaviour_metrics
from r1.models import hf
from r1.models.transformer import Transformer
from r1.rewards.tokens import TagIds, arithmetic_tokens, format_strict_tokens
from r1.rl.grpo import GRPOLossConfig
from r1.rl.model_rewards import build_model_rewards
from r1.rl.reward_bridge import RewardBridge, encode_text_fields
from r1.rl.step import GRPOConfig, make_grpo_step
from r1.sampling.sampler import SamplingConfig, bucket_length, left_pad, sample
from r1.train.state import init_train_state, train_state_shardings

log = logging.getLogger(__name__)

CURVE_PANELS = (
    ("reward", ("reward/total",)),
    ("accuracy", ("accuracy", "eval/accuracy")),
    ("response length", ("response_length/mean", "eval/response_length/mean")),
    ("KL", ("kl",)),
    ("held-out accuracy by difficulty", ("eval/accuracy/difficulty_*",)),
    ("held-out length by difficulty", ("eval/response_length/difficulty_*",)),
    ("reflection words per 1k tokens", ("behaviour/reflection_per_1k",)),
)


class NonFiniteError(RuntimeError):
    """The loss or gradient became NaN/inf."""


# ----------------------------------------------------------------------------- builders
def build_tokenizer(config) -> Any:
    kind = config.tokenizer.kind
    if kind == "demo":
        return build_demo_tokenizer()
    if kind == "hf":
        from r1.data.tokenizers import HFTokenizer

        return HFTokenizer.from_file(config.tokenizer.path)
    raise ValueError(f"config.tokenizer.kind: expected 'demo' or 'hf', got {kind!r}")


def build_policy(config, model_cfg, mesh) -> Transformer:
    path = config.init.hf_path
    if path:
        path = os.path.expanduser(path)
        if not os.path.isabs(path) and not os.path.exists(path):
            path = os.path.join(configlib.REPO_ROOT, path)
        loaded_cfg, model = hf.load(
            path,
            mesh=mesh,
            dtype=model_cfg.dtype,
            param_dtype=model_cfg.param_dtype,
            remat_policy=model_cfg.remat_policy,
            bias_update_rate=model_cfg.bias_update_rate,
            aux_loss_alpha=model_cfg.aux_loss_alpha,
        )
        return model
    seed = int(config.seed)
    return sharding.create_sharded_model(lambda: Transformer(model_cfg, rngs=nnx.Rngs(seed)), mesh)


def build_task(config):
    kwargs = dict(config.data.task_kwargs)
    return procedural.make_task(config.data.task, **kwargs)


def _batch_to_arrays(batch: dict[str, Any]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Pipeline batch (numpy, object fields) -> step batch (arrays only) and the prompt texts."""
    arrays = {"prompt_tokens": batch["tokens"].astype(np.int32), "prompt_mask": batch["mask"]}
    answers = [str(a) for a in batch["answer"]]
    general = np.asarray(batch["general"], bool) if "general" in batch else None
    try:
        # general prompts (R1 stage 4) have no answer: target -1 matches nothing
        arrays["target"] = np.asarray(
            [-1 if general is not None and general[i] else int(a) for i, a in enumerate(answers)],
            np.int32,
        )
    except ValueError:
        pass
    if general is not None:
        arrays["general"] = general
    if "difficulty" in batch:
        arrays["difficulty"] = np.asarray(batch["difficulty"], np.int32)
    if "id" in batch:
        # Procedural ids end in the row's index: sampling keys follow the row, not its position
        # in the batch, so a batch split across hosts samples what one host would.
        try:
            arrays["row_index"] = np.asarray(
                [int(str(i).rsplit("-", 1)[1]) for i in batch["id"]], np.int32
            )
        except (IndexError, ValueError):
            pass
    arrays.update(encode_text_fields({"answer": answers}))
    return arrays, list(batch["prompt_text"])


def _replicated(array: np.ndarray, mesh) -> jax.Array:
    """The same host array on every process -> a replicated global array."""
    target = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.make_array_from_callback(array.shape, target, lambda index: array[index])


def _global(array: np.ndarray, sharding_: jax.sharding.Sharding) -> jax.Array:
    """A process-local batch slice -> the global batch array (every process calls this).

    The slices are all-gathered on the hosts first (prompt batches are small), so the global
    array is right whatever the batch sharding is, even when the batch is too small to be split
    over the mesh and ends up replicated.
    """
    if jax.process_count() == 1:
        return jax.device_put(array, sharding_)
    from jax.experimental import multihost_utils

    full = np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return jax.make_array_from_callback(full.shape, sharding_, lambda index: full[index])


# ----------------------------------------------------------------------------- evaluation
def make_evaluator(config, tokenizer, graphdef, mesh, model_cfg):
    """Greedy decoding on a fixed held-out set: accuracy and length overall and per difficulty."""
    task = build_task(config)
    rows = procedural.fixed_set(task, int(config.seed) + 1, int(config.eval.per_difficulty))
    texts = [pipeline.render_r1_zero_row(r) for r in rows]
    encoded = [tokenizer.encode(t, add_bos=True) for t in texts]
    length = max(len(e) for e in encoded)
    tokens, mask = left_pad(encoded, bucket_length(length), tokenizer.pad_id)
    targets = np.asarray([int(r["answer"]) for r in rows], np.int32)
    difficulty = np.asarray([r["difficulty"] for r in rows], np.int32)
    sampling = SamplingConfig(
        max_new_tokens=int(config.rl.max_new_tokens),
        greedy=True,
        eos_ids=(tokenizer.eos_id,),
        pad_id=tokenizer.pad_id,
        unstack_layers=bool(config.rl.get("unstack_layers", True)),
    )
    ids = TagIds.from_tokenizer(tokenizer)

    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    @functools.partial(jax.jit, out_shardings=replicated)
    def run(params, extra, tokens, mask, targets):
        model = nnx.merge(graphdef, params, extra)
        out = sample(model, tokens, mask, jax.random.key(0), sampling)
        text_mask = out.mask & (out.tokens != tokenizer.eos_id)
        correct = arithmetic_tokens(out.tokens, text_mask, ids=ids, target=targets)
        formatted = format_strict_tokens(out.tokens, text_mask, ids=ids)
        return correct, formatted, out.lengths, out.truncated

    tokens_j, mask_j, targets_j = (_replicated(a, mesh) for a in (tokens, mask, targets))

    def evaluator(state) -> dict[str, float]:
        with sharding.use_mesh(mesh):
            correct, formatted, lengths, truncated = jax.device_get(
                run(state.params, state.extra, tokens_j, mask_j, targets_j)
            )
        metrics = {
            "eval/accuracy": float(np.mean(correct)),
            "eval/format": float(np.mean(formatted)),
            "eval/response_length/mean": float(np.mean(lengths)),
            "eval/truncated_frac": float(np.mean(truncated)),
        }
        for d in sorted(set(difficulty.tolist())):
            sel = difficulty == d
            metrics[f"eval/accuracy/difficulty_{d}"] = float(np.mean(correct[sel]))
            metrics[f"eval/response_length/difficulty_{d}"] = float(np.mean(lengths[sel]))
        return metrics

    return evaluator


# ----------------------------------------------------------------------------- the loop
@dataclasses.dataclass
class _Stop:
    requested: bool = False


def make_optimizer(config) -> optax.GradientTransformation:
    """The experiment's optimizer from `config.optimizer`: optional global-norm clipping, then
    AdamW with a linear warmup to a constant rate; shared by the GRPO and reward-model
    trainers, the SFT trainer's constant schedule and the AOT tool."""
    opt = config.optimizer
    lr, warmup = float(opt.learning_rate), int(opt.warmup_steps)
    # optax's warmup with 0 steps would stay at its initial value (0) forever.
    schedule = optax.warmup_constant_schedule(0.0, lr, warmup) if warmup > 0 else lr
    parts = []
    if float(opt.grad_clip) > 0:
        parts.append(optax.clip_by_global_norm(float(opt.grad_clip)))
    parts.append(
        optax.adamw(
            schedule, b1=float(opt.b1), b2=float(opt.b2), weight_decay=float(opt.weight_decay)
        )
    )
    return optax.chain(*parts)


def grpo_config_from(config, tokenizer) -> GRPOConfig:
    rl = config.rl
    group = int(rl.group_size)
    sampling = SamplingConfig(
        max_new_tokens=int(rl.max_new_tokens),
        num_samples=group,
        temperature=float(rl.temperature),
        top_p=float(rl.top_p),
        top_k=int(rl.top_k),
        eos_ids=(tokenizer.eos_id,),
        pad_id=tokenizer.pad_id,
        unstack_layers=bool(rl.get("unstack_layers", True)),
    )
    loss = GRPOLossConfig(
        eps_low=float(rl.eps_low),
        eps_high=float(rl.eps_high),
        beta=float(rl.beta),
        ratio_level=rl.ratio_level,
        aggregation=rl.aggregation,
        max_length=int(rl.max_new_tokens),
        mask_truncated=bool(rl.mask_truncated),
        drop_zero_variance_groups=bool(rl.drop_zero_variance_groups),
    )
    return GRPOConfig(
        group_size=group,
        sampling=sampling,
        loss=loss,
        advantage_method=rl.advantage,
        num_iterations=int(rl.num_iterations),
        num_minibatches=int(rl.num_minibatches),
        num_microbatches=int(rl.get("num_microbatches", 1)),
        ref_update_every=int(rl.ref_update_every),
        accuracy_reward=rl.accuracy_reward or None,
    )


def train(config, workdir: str) -> dict[str, float]:
    """Runs (or resumes) a GRPO experiment in `workdir`; returns the last metrics."""
    os.makedirs(workdir, exist_ok=True)
    experiment = configlib.parse_experiment(
        config, num_devices=jax.device_count(), extra_sections=EXTRA_SECTIONS
    )
    model_cfg = experiment.model
    mesh = sharding.make_mesh(experiment.mesh)
    tokenizer = build_tokenizer(config)
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise ValueError(
            f"config.model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's "
            f"{tokenizer.vocab_size}"
        )
    is_main = jax.process_index() == 0
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))

    optimizer = make_optimizer(config)
    grpo_cfg = grpo_config_from(config, tokenizer)
    with sharding.use_mesh(mesh):
        policy = build_policy(config, model_cfg, mesh)
    graphdef, state = init_train_state(
        policy, optimizer, experiment.seed, with_reference=grpo_cfg.loss.beta > 0
    )
    state_sh = train_state_shardings(state, optimizer, mesh)
    state = jax.device_put(state, state_sh)

    prompts_per_process = int(config.rl.prompts_per_step) // jax.process_count()
    task = build_task(config)
    source = procedural.ProceduralSource(task, experiment.seed, split="train")
    fields = pipeline.DEFAULT_FIELDS
    general_fraction = float(config.data.get("general_fraction", 0.0) or 0.0)
    if general_fraction > 0:
        source = GeneralMixture(
            source,
            load_general_prompts(str(config.data.get("general_files", ""))),
            general_fraction,
            experiment.seed,
        )
        fields = (*fields, "general")
    dataset = pipeline.prompt_dataset(
        source,
        tokenizer,
        fields=fields,
        batch_size=prompts_per_process,
        # Every process must pad to the same length to form one global batch.
        buckets=tuple(config.data.buckets)
        if jax.process_count() == 1
        else (max(config.data.buckets),),
        seed=experiment.seed,
        shuffle=False,
        num_threads=1,
    )
    data_iter = iter(dataset)

    checkpointer = ckpt_lib.Checkpointer(workdir, keep=int(config.train.keep_checkpoints))
    writer = r1_logging.MetricWriter(workdir, enabled=is_main)
    start_step = 0
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_sh
    )
    restored = checkpointer.restore_latest(abstract)
    if restored is not None:
        start_step, state, data_state = restored
        if data_state:
            data_iter.set_state(data_state)
        writer.truncate_after(start_step)
        samples_path = os.path.join(workdir, "samples.jsonl")
        if is_main and os.path.exists(samples_path):
            rows = [r for r in r1_logging.read_jsonl(samples_path) if r["step"] <= start_step]
            with open(samples_path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        log.warning("resumed from step %d in %s", start_step, workdir)

    bridge = RewardBridge([tuple(t) for t in config.rewards], tokenizer)
    model_rewards, frozen, field_encoders = build_model_rewards(config, tokenizer, mesh)
    evaluator = make_evaluator(config, tokenizer, graphdef, mesh, model_cfg)
    steps = int(config.train.steps)
    stop = _Stop()
    finished = False
    previous = signal.signal(signal.SIGTERM, lambda *_: setattr(stop, "requested", True))
    compiled: dict[tuple, Any] = {}
    last: dict[str, float] = {}
    progress = _progress(steps, start_step, is_main)
    try:
        if start_step == 0 and int(config.eval.every) > 0:
            last = evaluator(state)
            writer.write(0, last)
        for step in range(start_step + 1, steps + 1):
            raw_batch = next(data_iter)
            batch_np, prompt_texts = _batch_to_arrays(raw_batch)
            for encode in field_encoders:
                batch_np.update(encode([str(a) for a in raw_batch["answer"]]))
            key = tuple((k, v.shape) for k, v in sorted(batch_np.items()))
            if key not in compiled:
                abstract_batch = {
                    k: jax.ShapeDtypeStruct(
                        (v.shape[0] * jax.process_count(), *v.shape[1:]), v.dtype
                    )
                    for k, v in batch_np.items()
                }
                compiled[key] = make_grpo_step(
                    graphdef,
                    optimizer,
                    grpo_cfg,
                    bridge,
                    mesh,
                    state,
                    abstract_batch,
                    bias_update_rate=model_cfg.bias_update_rate,
                    model_rewards=model_rewards,
                    frozen=frozen or None,
                )
            step_fn = compiled[key]
            batch_sh = {
                k: sharding.named_sharding(
                    ("batch",) + (None,) * (v.ndim - 1),
                    (v.shape[0] * jax.process_count(), *v.shape[1:]),
                    mesh,
                )
                for k, v in batch_np.items()
            }
            batch = {k: _global(v, batch_sh[k]) for k, v in batch_np.items()}
            start = time.perf_counter()
            with sharding.use_mesh(mesh):
                if model_rewards:
                    new_state, metrics, samples = step_fn(state, batch, frozen)
                else:
                    new_state, metrics, samples = step_fn(state, batch)
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            seconds = time.perf_counter() - start
            if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
                raise NonFiniteError(
                    f"step {step}: non-finite loss ({metrics['loss']}) or gradient norm "
                    f"({metrics['grad_norm']}); stopping without saving this step. The last "
                    f"checkpoint is intact in {checkpointer.directory}"
                )
            state = new_state
            metrics["step_seconds"] = seconds
            metrics["tokens_per_sec"] = metrics["generated_tokens"] / seconds
            for name, count in sorted(bridge.failures.items()):
                metrics[f"reward_failures/{name}"] = float(count)
            samples = _gather(samples)  # a collective: every process takes part
            metrics.update(
                _behaviour(
                    samples,
                    tokenizer,
                    _gather_host(batch_np.get("difficulty")),
                    int(config.rl.group_size),
                    str(config.get("language", "en")),
                )
            )
            every = int(config.eval.every)
            if every > 0 and (step % every == 0 or step == steps):
                metrics.update(evaluator(state))
            writer.write(step, metrics)
            last = metrics
            if (
                is_main
                and int(config.train.samples_every) > 0
                and (step % int(config.train.samples_every) == 0 or step == 1)
            ):
                _write_samples(
                    workdir,
                    step,
                    tokenizer,
                    prompt_texts,
                    samples,
                    int(config.rl.group_size),
                    int(config.train.samples_per_log),
                )
            progress.update(1)
            progress.set_postfix(
                reward=f"{metrics['reward/total']:.3f}",
                acc=f"{metrics.get('accuracy', float('nan')):.2f}",
                len=f"{metrics['response_length/mean']:.1f}",
                tok_s=f"{metrics['tokens_per_sec']:.0f}",
            )
            if step % int(config.train.checkpoint_every) == 0 or step == steps or stop.requested:
                checkpointer.save(step, state, data_iter.get_state())
            if stop.requested:
                log.warning("SIGTERM: saved step %d, exiting", step)
                break
        finished = not stop.requested
    finally:
        progress.close()
        signal.signal(signal.SIGTERM, previous)
        checkpointer.close()
        writer.close()
    if finished and config.train.get("export", False):
        from r1.sft.trainer import export_model

        export_model(
            graphdef,
            state,
            model_cfg,
            tokenizer,
            str(config.tokenizer.get("path", "") or ""),
            os.path.join(workdir, "export"),
            str(config.train.get("export_dtype", "") or ""),
        )
    if is_main and os.path.exists(writer.path):
        r1_logging.plot_curves(writer.path, os.path.join(workdir, "curves.png"), CURVE_PANELS)
    return last


def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="grpo", unit="step")


def _gather(tree):
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def _gather_host(values):
    """A per-process host array [n, ...] -> the global one (process order, as the batch rows);
    None stays None. A collective on multi-host runs: every process takes part."""
    if values is None or jax.process_count() == 1:
        return values
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray(values), tiled=True))


def _behaviour(samples, tokenizer, difficulty, group: int, language: str) -> dict[str, float]:
    """Reasoning-behaviour metrics of this step's completions (reflection words, length and
    accuracy per difficulty; r1/metrics/behaviour.py). `difficulty`: int[P] of the whole batch
    (gathered from every process), or None."""
    tokens = np.asarray(samples["tokens"])
    mask = np.asarray(samples["mask"])
    texts = [tokenizer.decode(tokens[r][mask[r]].tolist()) for r in range(len(tokens))]
    rows_difficulty = None
    if difficulty is not None and len(difficulty) * group == len(tokens):
        rows_difficulty = np.repeat(np.asarray(difficulty), group).tolist()
    return behaviour_metrics(
        texts,
        mask.sum(axis=1).tolist(),
        np.asarray(samples["correct"]).astype(bool).tolist(),
        rows_difficulty,
        language=language,
    )


def _write_samples(workdir, step, tokenizer, prompt_texts, samples, group, limit):
    tokens = np.asarray(jax.device_get(samples["tokens"]))
    mask = np.asarray(jax.device_get(samples["mask"]))
    rewards = np.asarray(jax.device_get(samples["rewards"]))
    rows = []
    for r in range(min(limit, len(tokens))):
        prompt = prompt_texts[r // group] if r // group < len(prompt_texts) else ""
        rows.append(
            {
                "prompt": prompt[-200:],
                "completion": tokenizer.decode(tokens[r][mask[r]].tolist()),
                "reward": float(rewards[r]),
            }
        )
    r1_logging.append_samples(os.path.join(workdir, "samples.jsonl"), step, rows)


EXTRA_SECTIONS = (
    "init",
    "tokenizer",
    "data",
    "rl",
    "rewards",
    "model_rewards",
    "optimizer",
    "train",
    "eval",
)


def per_difficulty(rows: list[dict[str, Any]], key: str) -> dict[int, float]:
    """Mean of `key` per difficulty over metric rows (helper for notebooks and plots)."""
    out = defaultdict(list)
    for row in rows:
        for name, value in row.items():
            if name.startswith(f"{key}/difficulty_"):
                out[int(name.rsplit("_", 1)[1])].append(value)
    return {d: float(np.mean(v)) for d, v in sorted(out.items())}
