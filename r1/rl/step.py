"""The GRPO iteration as ONE compiled program.

    sample G completions per prompt (KV-cache sampler, pi_old log-probs from the sampler)
    -> rewards (the run's compiled `r1.rewards.RewardSpec`: jax.numpy rule terms fused, text
       terms through one jax.pure_callback, frozen reward models / judge as model terms)
    -> group advantages -> reference log-probs (skipped when beta == 0)
    -> mu iterations x M mini-batches of optax updates (lax.scan)
    -> MoE balancing-bias update -> reference refresh every N steps -> metrics

`make_grpo_step(...)` returns a jitted `step(state, batch) -> (state, metrics, rollout)` with
explicit in/out shardings and the train state donated.

Memory plan (pod scale): the policy forward over [B, L + N] tokens is the largest activation;
`ModelConfig.remat_policy` rematerialises each decoder layer, mini-batches (`num_minibatches`)
bound the rows in one backward pass, the sampler holds only the KV cache (MLA: the latent), and
parameters, optimizer state and the reference copy are sharded by the same logical-axis rules
(fsdp / expert / tensor). `experiments/aot.py` (a later issue) compiles this exact step for TPU
topologies and reports per-chip bytes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from r1 import sharding
from r1.models.moe import load_diagnostics, total_balance_loss
from r1.rewards import CompiledSpec, ScorerOutput
from r1.rl.grpo import (
    GRPOLossConfig,
    chunked_token_logprobs,
    effective_mask,
    group_advantages,
    grpo_loss,
    loss_denominator,
)
from r1.rl.lengths import (
    SEQUENCE_KEYS,
    at_width,
    bucket_widths,
    bucketed_logprobs,
    sorted_layout,
    take_rows,
)
from r1.rl.mismatch import (
    combine_mismatch,
    mismatch_metrics,
    mismatch_partials,
    routing_partials,
)
from r1.rl.rollouts import Rollout, correct_rows, step_metrics
from r1.sampling.sampler import SamplingConfig, sample
from r1.train.state import (
    TrainState,
    accumulate_grads,
    optimizer_step,
    train_state_shardings,
    update_routing_biases,
)

Batch = dict[str, jax.Array]
# `grpo_loss` metrics that are sums over rows divided by the mini-batch's denominator.
ADDITIVE_METRICS = ("loss", "loss/policy", "loss/kl")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """Static settings of the GRPO step.

    group_size: G completions per prompt. sampling: how completions are drawn (its num_samples
    must equal group_size). num_iterations: mu, passes over each rollout. num_minibatches: M,
    optimizer updates per pass (B = P * G must be divisible by M * G so groups stay whole).
    num_microbatches: each mini-batch's gradient is accumulated over this many interleaved
    slices of its rows (row r in slice r mod n, so every device keeps its share), one optimizer
    update per mini-batch: the same update with 1/n of the saved activations (the loss is a
    sum over rows with a mini-batch-wide denominator). Loss metrics add up over the slices,
    other metrics are averaged over them.
    0 = auto (`make_grpo_step` resolves it from the mesh): one row per batch shard per slice.
    std_ddof: the advantage std's delta degrees of freedom (`group_advantages`).
    ref_update_every: replace the reference by the policy every this many steps (0: never; R1
    used 400). accuracy_reward: the reward whose rows > 0.5 are reported as `accuracy` (a 0/1
    reward); comma-separated labels (per-domain accuracy rewards): a row is correct when any is.
    routing_replay: for an MoE policy, the training forwards (policy and reference) use the
    experts the sampler chose for each token (recorded as int16 [B, L + N, M, k]) with gates
    from the current router, and the routing-bias update counts those loads; the sampler
    records them for every MoE policy anyway, for the `mismatch/routing_diff_frac` metric.
    length_buckets: W completion widths for the training half (`r1.rl.lengths`): rows of each
    mini-batch ordered by length into its micro-batches, each run at the narrowest of W widths
    (about j * max_new_tokens / W) holding its longest row, and the reference forward likewise
    in slices of a micro-batch's rows; the same gradient, cost following the lengths. 0 or 1:
    every row at the full width.
    """

    group_size: int = 8
    sampling: SamplingConfig = SamplingConfig(num_samples=8)
    loss: GRPOLossConfig = GRPOLossConfig()
    advantage_method: str = "std"
    std_ddof: int = 1
    num_iterations: int = 1
    num_minibatches: int = 1
    num_microbatches: int = 1
    ref_update_every: int = 0
    accuracy_reward: str | None = None
    length_buckets: int = 0
    routing_replay: bool = False

    def __post_init__(self):
        if self.sampling.num_samples != self.group_size:
            raise ValueError(
                f"GRPOConfig: sampling.num_samples={self.sampling.num_samples} must equal "
                f"group_size={self.group_size}"
            )
        if min(self.num_iterations, self.num_minibatches) < 1 or self.num_microbatches < 0:
            raise ValueError(
                "GRPOConfig: num_iterations and num_minibatches must be >= 1, num_microbatches "
                ">= 0 (0: one row per batch shard)"
            )
        if self.length_buckets < 0:
            raise ValueError(
                f"GRPOConfig: length_buckets: expected >= 0 (0: no buckets), got "
                f"{self.length_buckets}"
            )


def _full_sequences(prompt_tokens, prompt_mask, completion, completion_mask, group):
    """Prompt (left-padded, repeated per group row) + completion: tokens int32[B, L + N],
    mask bool[B, L + N] and positions int32[B, L + N]."""
    tokens = jnp.concatenate([jnp.repeat(prompt_tokens, group, axis=0), completion], axis=1)
    mask = jnp.concatenate(
        [jnp.repeat(prompt_mask.astype(bool), group, axis=0), completion_mask], axis=1
    )
    positions = jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)
    return tokens, mask, positions


def completion_logprobs(model, tokens, mask, positions, prompt_len: int, completion, routes=None):
    """Log-probs float32[B, N] of the completion tokens, their entropies float32[B, N] and the
    MoE layers' `RoutingStats` of this forward pass. Vocabulary logits exist
    `logits_chunk_size` positions at a time (`r1.rl.grpo.chunked_token_logprobs`; 0 = all at
    once), never as [B, L + N, V] unless asked. routes: optional recorded experts
    int[B, L + N, M, k] to replay (`Transformer.forward`)."""
    output = model.forward(
        tokens, positions=positions, attention_mask=mask, compute_logits=False, routes=routes
    )
    n = completion.shape[1]
    hidden = output.hidden[:, prompt_len - 1 : prompt_len - 1 + n]
    logp, entropy = chunked_token_logprobs(
        hidden, model.logits_from_hidden, completion, model.config.logits_chunk_size
    )
    return logp, entropy, output.moe


def rollout(policy: nnx.Module, batch: Batch, key: jax.Array, config: GRPOConfig) -> Rollout:
    """Phase 1: G completions per prompt from the policy (pi_old). Sampling keys follow the
    batch's `row_index` when present (the data row, not its position in the batch). A batch
    key `forced_lengths` (int32[P * G], per row) ends each row with EOS at that many tokens
    (`r1.sampling.sampler.sample`): a length workload for benchmarks, not a reward field."""
    group = config.group_size
    prompt_tokens, prompt_mask = batch["prompt_tokens"], batch["prompt_mask"]
    sampling = config.sampling
    if policy.config.num_moe_layers:
        sampling = dataclasses.replace(sampling, record_routes=True)
    row_ids = None
    if "row_index" in batch:
        row_ids = (batch["row_index"][:, None] * group + jnp.arange(group)[None, :]).reshape(-1)
    out = sample(
        policy,
        prompt_tokens,
        prompt_mask,
        key,
        sampling,
        row_ids=row_ids,
        forced_lengths=batch.get("forced_lengths"),
    )
    fields = {
        k: jnp.repeat(v, group, axis=0)
        for k, v in batch.items()
        if k not in ("prompt_tokens", "prompt_mask", "row_index", "forced_lengths")
    }
    return Rollout(
        prompt_tokens,
        prompt_mask,
        out.tokens,
        out.mask,
        out.logprobs,
        out.lengths,
        out.truncated,
        fields,
        out.decode_steps,
        out.routes,
    )


def score(rows: Rollout, scorer: CompiledSpec, frozen: dict[str, Any], group: int) -> ScorerOutput:
    """Phase 2: the compiled reward spec on the rollout (`r1.rewards.CompiledSpec.__call__`):
    rule terms, then frozen-model terms, added with their weights. With a `general` field (R1
    stage 4) rule terms score the reasoning rows only, and a model term the rows its `rows`
    selects. Model terms see the prompt repeated per row."""
    prompt_tokens = prompt_mask = None
    if scorer.model_terms:
        prompt_tokens = jnp.repeat(rows.prompt_tokens, group, axis=0)
        prompt_mask = jnp.repeat(rows.prompt_mask.astype(bool), group, axis=0)
    return scorer(
        rows.completion,
        rows.completion_mask,
        rows.truncated,
        rows.fields,
        prompt_tokens,
        prompt_mask,
        frozen,
    )


def advantages(scores: ScorerOutput, config: GRPOConfig) -> tuple[jax.Array, jax.Array]:
    """Phase 3: group-relative advantages float32[B] and the rewards as float32[P, G]."""
    rewards_pg = scores.total.reshape(-1, config.group_size)
    adv = group_advantages(rewards_pg, method=config.advantage_method, std_ddof=config.std_ddof)
    return adv.reshape(-1), rewards_pg


def _loss_inputs(
    graphdef: nnx.GraphDef, state: TrainState, rows: Rollout, config: GRPOConfig, rewards_pg
) -> dict[str, jax.Array]:
    """The per-row arrays the update reads: full sequences, pi_old / reference log-probs and the
    loss mask (reference forward skipped when beta == 0)."""
    tokens, mask, positions = _full_sequences(
        rows.prompt_tokens,
        rows.prompt_mask,
        rows.completion,
        rows.completion_mask,
        config.group_size,
    )
    inputs = {
        "tokens": tokens,
        "mask": mask,
        "positions": positions,
        "completion": rows.completion,
        "completion_mask": rows.completion_mask,
        "old_logp": jax.lax.stop_gradient(rows.logprobs),
        "loss_mask": effective_mask(
            rows.completion_mask, config=config.loss, truncated=rows.truncated, rewards=rewards_pg
        ),
    }
    if rows.routes is not None:
        inputs["routes"] = rows.routes
    prompt_len = rows.prompt_tokens.shape[1]
    if config.loss.beta > 0:
        reference = nnx.merge(graphdef, state.ref_params, state.extra)
        inputs["ref_logp"] = _forward_logprobs(reference, inputs, config, prompt_len)
    if recomputes_old_logprobs(config):
        policy = nnx.merge(graphdef, state.params, state.extra)
        inputs["train_logp"] = _forward_logprobs(policy, inputs, config, prompt_len)
    return inputs


def recomputes_old_logprobs(config: GRPOConfig) -> bool:
    """Whether a rollout correction needs the trainer's log-probs at the sampling parameters
    from a forward of their own: with one update per step (mu = 1, M = 1) the update's own
    forward runs at those parameters, and its log-probs (stop-gradient) serve."""
    if config.loss.rollout_correction == "none":
        return False
    return config.num_iterations * config.num_minibatches > 1


def _forward_logprobs(model, inputs: dict[str, jax.Array], config: GRPOConfig, prompt_len: int):
    """float32[B, N] completion log-probs of `model` (no gradient), at the rows' length
    buckets when `config.length_buckets` asks (`r1.rl.lengths.bucketed_logprobs`)."""

    def logprobs(b):
        logp, _, _ = completion_logprobs(
            model,
            b["tokens"],
            b["mask"],
            b["positions"],
            prompt_len,
            b["completion"],
            b["routes"] if config.routing_replay else None,
        )
        return logp

    widths = training_widths(config)
    if len(widths) > 1:
        keys = [k for k in (*SEQUENCE_KEYS, "completion", "completion_mask") if k in inputs]
        logp = bucketed_logprobs(
            logprobs,
            {k: inputs[k] for k in keys},
            prompt_len,
            widths,
            config.num_minibatches * config.num_microbatches,
        )
    else:
        logp = logprobs(inputs)
    return jax.lax.stop_gradient(logp)


def training_widths(config: GRPOConfig) -> tuple[int, ...]:
    """The completion widths the training half runs at (`r1.rl.lengths.bucket_widths`)."""
    return bucket_widths(config.sampling.max_new_tokens, config.length_buckets)


def check_slices(rows: int, config: GRPOConfig) -> None:
    """Raise unless `rows` split into whole-group mini-batches of equal micro-batches."""
    group, minibatches = config.group_size, config.num_minibatches
    if rows % (minibatches * group):
        raise ValueError(
            f"GRPO step: {rows // group} prompts x {group} rows cannot be split into "
            f"{minibatches} mini-batches of whole groups"
        )
    micro = config.num_microbatches
    if micro < 1:
        raise ValueError("GRPO step: num_microbatches=0 (auto) is resolved by make_grpo_step")
    if (rows // minibatches) % micro:
        raise ValueError(
            f"GRPO step: a mini-batch of {rows // minibatches} rows does not split into "
            f"num_microbatches={micro} equal slices"
        )


def policy_update(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    config: GRPOConfig,
    state: TrainState,
    inputs: dict[str, jax.Array],
    adv: jax.Array,
    prompt_len: int,
) -> tuple[Any, Any, dict[str, jax.Array], list[jax.Array]]:
    """Phase 4: mu iterations x M mini-batches of optimizer updates (`lax.scan`), each
    mini-batch's gradient accumulated over `num_microbatches` interleaved slices of its rows
    (`r1.train.state.accumulate_grads`). Returns (params, opt_state, metrics averaged over the
    updates, per-MoE-layer expert loads summed over all of them)."""
    rows = adv.shape[0]
    check_slices(rows, config)
    per_mb = rows // config.num_minibatches
    micro = config.num_microbatches
    widths = training_widths(config)
    denominator = loss_denominator(inputs["loss_mask"], config=config.loss)
    denominator = denominator / config.num_minibatches
    loss_cfg = dataclasses.replace(
        config.loss, mask_truncated=False, drop_zero_variance_groups=False
    )
    # [M, rows / M, ...], each device holding its share of every mini-batch's rows: one
    # all-to-all here, and a mini-batch is then an index on an unsharded axis (a dynamic slice
    # of the sharded row axis would gather every row on every device).
    data = {
        k: sharding.shard(
            v.reshape(config.num_minibatches, per_mb, *v.shape[1:]),
            (None, "batch", *([None] * (v.ndim - 1))),
        )
        for k, v in {**inputs, "advantages": adv}.items()
    }

    def loss_fn(params, mb):
        return at_width(lambda narrowed: loss_at_width(params, narrowed), mb, prompt_len, widths)

    def loss_at_width(params, mb):
        model = nnx.merge(graphdef, params, state.extra)
        replayed = mb["routes"] if config.routing_replay else None
        logp, entropy, moe = completion_logprobs(
            model, mb["tokens"], mb["mask"], mb["positions"], prompt_len, mb["completion"], replayed
        )
        sampler_logp, old_logp = mb["old_logp"], mb["old_logp"]
        if loss_cfg.rollout_correction != "none":
            old_logp = mb.get("train_logp", jax.lax.stop_gradient(logp))
        loss, metrics = grpo_loss(
            logp,
            old_logp,
            mb.get("ref_logp"),
            mb["advantages"],
            mb["loss_mask"],
            config=loss_cfg,
            denominator=denominator,
            logp_sampler=sampler_logp,
        )
        # A mean over sequences: each of the `micro` slices contributes 1/micro of it.
        moe_loss = total_balance_loss(moe) / micro
        cmask = mb["completion_mask"]
        ent = jnp.where(cmask, jax.lax.stop_gradient(entropy), 0.0)
        metrics["entropy"] = jnp.sum(ent) / jnp.maximum(jnp.sum(cmask), 1)
        metrics.update(load_diagnostics(moe))
        # Meaningful in the first update only, whose parameters are the sampler's.
        partials = mismatch_partials(jax.lax.stop_gradient(logp), sampler_logp, cmask)
        if "routes" in mb:
            own = jnp.stack([s.routes for s in moe], axis=2)  # [b, L + n, M, k]
            partials.update(routing_partials(own, mb["routes"], config.routing_replay))
        return loss + moe_loss, (metrics, [s.expert_load for s in moe], partials)

    def update(carry, index):
        params, opt_state = carry
        minibatch = {
            k: jax.lax.dynamic_index_in_dim(v, index, axis=0, keepdims=False)
            for k, v in data.items()
        }
        if len(widths) > 1 and micro > 1:
            lengths = jnp.sum(minibatch["completion_mask"].astype(jnp.int32), axis=1)
            minibatch = take_rows(minibatch, sorted_layout(lengths, micro))
        grads, (metrics, loads, partials) = accumulate_grads(loss_fn, params, minibatch, micro)
        # Loss terms add up over the slices (each carries the mini-batch's denominator); the
        # other metrics are per-slice means.
        metrics = {
            k: jnp.sum(v, axis=0) if k in ADDITIVE_METRICS else jnp.mean(v, axis=0)
            for k, v in metrics.items()
        }
        loads = [jnp.sum(load, axis=0) for load in loads]
        params, opt_state, metrics["grad_norm"] = optimizer_step(
            optimizer, params, opt_state, grads
        )
        return (params, opt_state), (metrics, loads, combine_mismatch(partials))

    indices = jnp.tile(jnp.arange(config.num_minibatches), config.num_iterations)
    (params, opt_state), (mb_metrics, mb_loads, mb_partials) = jax.lax.scan(
        update, (state.params, state.opt_state), indices
    )
    metrics = {k: jnp.mean(v) for k, v in mb_metrics.items()}
    # The first update's mini-batch, trained before any parameter moved ...
    partials = {k: v[0] for k, v in mb_partials.items()}
    if "train_logp" in inputs:  # ... or the trainer's log-probs of every row, at those params
        partials.update(
            mismatch_partials(inputs["train_logp"], inputs["old_logp"], inputs["completion_mask"])
        )
    metrics.update(mismatch_metrics(partials))
    # Over the whole batch at full width, whatever the slices and their widths.
    metrics["valid_token_frac"] = jnp.mean(inputs["loss_mask"].astype(jnp.float32))
    return params, opt_state, metrics, [jnp.sum(load, axis=0) for load in mb_loads]


def refresh_reference(params: Any, ref_params: Any, new_step: jax.Array, every: int) -> Any:
    """Phase 5: the reference becomes the policy every `every` steps (0: never)."""
    if ref_params is None or every <= 0:
        return ref_params
    refresh = (new_step % every) == 0
    return jax.tree.map(lambda p, r: jnp.where(refresh, p, r), params, ref_params)


def grpo_step_fn(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    config: GRPOConfig,
    scorer: CompiledSpec,
    bias_update_rate: float = 0.0,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array], dict[str, jax.Array]]]:
    """The un-jitted `step(state, batch, frozen=None) -> (state, metrics, samples)` (for
    `jax.jit(...).lower(...)`, tests and AOT compilation): the phases above in order.

    batch: {"prompt_tokens": int32[P, L] left-padded, "prompt_mask": bool[P, L], plus any
    per-prompt fields [P, ...] handed to the rewards (repeated to [B, ...]), e.g. from
    `scorer.encode_fields`}. frozen: {label: model state} for each of `scorer.model_names`.
    samples: the completions (tokens, mask), their
    rewards and 0/1 correctness, for host-side logging.
    """
    group = config.group_size

    def step(state: TrainState, batch: Batch, frozen: dict[str, Any] | None = None):
        frozen = frozen or {}
        missing = [name for name in scorer.model_names if name not in frozen]
        if missing:
            raise ValueError(f"GRPO step: no frozen model state given for rewards {missing}")
        num_prompts, prompt_len = batch["prompt_tokens"].shape
        check_slices(num_prompts * group, config)
        rng, sample_key = jax.random.split(jax.random.wrap_key_data(state.rng))
        policy = nnx.merge(graphdef, state.params, state.extra)
        if config.routing_replay and not policy.config.num_moe_layers:
            raise ValueError(
                "GRPO step: routing_replay needs an MoE policy (this model has no MoE layer)"
            )
        rows = rollout(policy, batch, sample_key, config)
        scores = score(rows, scorer, frozen, group)
        adv, rewards_pg = advantages(scores, config)
        inputs = _loss_inputs(graphdef, state, rows, config, rewards_pg)
        params, opt_state, metrics, loads = policy_update(
            graphdef, optimizer, config, state, inputs, adv, prompt_len
        )
        extra = update_routing_biases(graphdef, params, state.extra, loads, bias_update_rate)
        new_step = state.step + 1
        new_state = TrainState(
            step=new_step,
            params=params,
            extra=extra,
            opt_state=opt_state,
            rng=jax.random.key_data(rng),
            ref_params=refresh_reference(
                params, state.ref_params, new_step, config.ref_update_every
            ),
        )
        metrics.update(
            step_metrics(
                rows, scores, rewards_pg, config.accuracy_reward, config.sampling, scorer.domains
            )
        )
        correct = correct_rows(scores, config.accuracy_reward)
        if correct is None:
            correct = jnp.zeros_like(scores.total, bool)
        samples = {
            "tokens": rows.completion,
            "mask": rows.completion_mask,
            "rewards": scores.total,
            "correct": correct,
        }
        return new_state, metrics, samples

    return step


def row_axes(rows: int, mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes the `batch` rule shards `rows` rows over (those dividing it)."""
    spec = sharding.logical_to_spec(("batch",), (rows,), mesh)[0]
    return () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)


def auto_microbatches(minibatch_rows: int, mesh: Mesh) -> int:
    """Gradient-accumulation slices that leave one row per batch shard in each slice: the
    rows per shard of the mesh's `batch` rule (1 when the rows do not split evenly)."""
    axes = row_axes(minibatch_rows, mesh)
    shards = 1
    for axis in axes:
        shards *= mesh.shape[axis]
    per_shard = minibatch_rows // shards
    return per_shard if per_shard >= 1 and minibatch_rows % shards == 0 else 1


def make_grpo_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    config: GRPOConfig,
    scorer: CompiledSpec,
    mesh: Mesh,
    state: TrainState,
    batch: Batch,
    bias_update_rate: float = 0.0,
    frozen: dict[str, Any] | None = None,
):
    """The jitted step with explicit shardings (state donated). `state` and `batch` give the
    structure (abstract values are fine). Call it under `r1.sharding.use_mesh(mesh)`.

    scorer: the run's compiled reward spec (`r1.rl.model_rewards.build_scorer`). Without model
    terms the step is `step(state, batch)`; with them `step(state, batch, frozen)`, where
    `frozen` ({label: nnx.State}, given here for its structure) is sharded by the rules and not
    donated."""
    rows = batch["prompt_tokens"].shape[0] * config.group_size
    if config.num_microbatches == 0:
        config = dataclasses.replace(
            config, num_microbatches=auto_microbatches(rows // config.num_minibatches, mesh)
        )
    if scorer.text_terms and jax.process_count() > 1:
        # Each process scores only the rows its devices hold (no host gathers the batch).
        scorer = scorer.shard_rows(mesh, row_axes(rows, mesh))
    fn = grpo_step_fn(graphdef, optimizer, config, scorer, bias_update_rate)
    state_sh = train_state_shardings(state, optimizer, mesh)
    batch_sh = sharding.batch_shardings(batch, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    new = config.sampling.max_new_tokens
    tokens_sh = sharding.named_sharding(("batch", None), (rows, new), mesh)
    rewards_sh = sharding.named_sharding(("batch",), (rows,), mesh)
    samples_sh = {
        "tokens": tokens_sh,
        "mask": tokens_sh,
        "rewards": rewards_sh,
        "correct": rewards_sh,
    }
    out_shardings = (state_sh, replicated, samples_sh)
    if not scorer.model_names:
        return jax.jit(
            lambda state, batch: fn(state, batch),
            in_shardings=(state_sh, batch_sh),
            out_shardings=out_shardings,
            donate_argnums=(0,),
        )
    if frozen is None:
        raise ValueError(
            f"make_grpo_step: the model rewards {list(scorer.model_names)} need `frozen` (their "
            "model states)"
        )
    frozen_sh = {name: sharding.state_shardings(value, mesh) for name, value in frozen.items()}
    return jax.jit(
        fn,
        in_shardings=(state_sh, batch_sh, frozen_sh),
        out_shardings=out_shardings,
        donate_argnums=(0,),
    )
