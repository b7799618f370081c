"""The SFT loss (pure) and the compiled SFT step with gradient accumulation.

Loss: the mean next-token NLL over *target* tokens: positions t whose next token t + 1 is a
response token (`loss_mask`) of the same packed example (`segment_ids`). Prompt tokens, padding
and the first token of the next packed example are never targets, so a packed batch and the same
examples unpacked give the same loss. With MTP modules, depth k predicts token t + 1 + k under
the same rule and `mtp_weight` times the mean over depths is added (DeepSeek-V3); MoE layers add
their (alpha-weighted) balance loss.

Vocabulary logits: with `ModelConfig.logits_chunk_size` > 0 the losses come from hidden states
a chunk of positions at a time (`r1.losses.chunked_cross_entropy`), never as [B, T, V] logits.

Gradient accumulation (`r1.train.state.accumulate_grads`): the batch's B rows are split into
`num_microbatches` interleaved micro-batches (row j goes to micro-batch j mod M, so each stays
spread over the data axes) whose gradients are summed in float32. Every micro-batch divides
its NLL sum by the token count of the *whole* batch, so the accumulated gradient equals the
full-batch gradient exactly (up to float summation order), however the target tokens are
spread over the micro-batches.

`make_sft_step(...)` returns a jitted `step(state, batch) -> (state, metrics)` with explicit
in/out shardings (state like the GRPO step's `TrainState`, batch rows on the `batch` axis) and
the train state donated.
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

from r1.losses import balance_loss, chunked_cross_entropy, token_cross_entropy
from r1.models.moe import load_diagnostics
from r1.models.transformer import ModelOutput
from r1.sharding import batch_shardings
from r1.train.state import TrainState, accumulate_grads, apply_update, train_state_shardings

Batch = dict[str, jax.Array]
BATCH_KEYS = ("tokens", "segment_ids", "positions", "loss_mask")


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """Static settings of the SFT step.

    num_microbatches: M, gradient-accumulation micro-batches per optimizer update (the batch's
    rows must be divisible by M). mtp_weight: lambda of the MTP loss (used only when the model
    has MTP modules; 0 skips them).
    """

    num_microbatches: int = 1
    mtp_weight: float = 0.0

    def __post_init__(self):
        if self.num_microbatches < 1:
            raise ValueError(
                f"SFTConfig.num_microbatches: expected >= 1, got {self.num_microbatches}"
            )
        if self.mtp_weight < 0:
            raise ValueError(f"SFTConfig.mtp_weight: expected >= 0, got {self.mtp_weight}")


# ----------------------------------------------------------------------------- pure loss
def target_mask(loss_mask: jax.Array, segment_ids: jax.Array, shift: int = 1) -> jax.Array:
    """bool[B, T - shift]: True at t when token t + shift is a target of t's own example.

    loss_mask: bool[B, T] (response tokens); segment_ids: int32[B, T] (0 = padding).
    """
    same = segment_ids[:, shift:] == segment_ids[:, :-shift]
    return loss_mask[:, shift:].astype(bool) & same & (segment_ids[:, shift:] > 0)


def num_mtp_depths(model: nnx.Module, config: SFTConfig) -> int:
    """How many MTP depths the loss uses: the model's MTP modules when mtp_weight > 0."""
    return len(model.mtp) if config.mtp_weight > 0 else 0


def target_counts(batch: Batch, mtp_depths: int = 0) -> jax.Array:
    """float32[1 + K]: target tokens of the next-token loss and of each MTP depth."""
    counts = [
        jnp.sum(target_mask(batch["loss_mask"], batch["segment_ids"], 1 + k))
        for k in range(mtp_depths + 1)
    ]
    return jnp.stack(counts).astype(jnp.float32)


def _nll_sum(logits, tokens, mask, shift):
    nll = token_cross_entropy(logits[:, :-shift], tokens[:, shift:])
    correct = jnp.argmax(logits[:, :-shift], axis=-1) == tokens[:, shift:]
    m = mask.astype(jnp.float32)
    return jnp.sum(nll * m), jnp.sum(correct.astype(jnp.float32) * m)


def _nll_sum_chunked(hidden, unembed_fn, tokens, mask, shift, chunk):
    nll, correct = chunked_cross_entropy(hidden[:, :-shift], unembed_fn, tokens[:, shift:], chunk)
    m = mask.astype(jnp.float32)
    return jnp.sum(nll * m), jnp.sum(correct.astype(jnp.float32) * m)


def sft_loss(
    output: ModelOutput,
    batch: Batch,
    *,
    mtp_weight: float = 0.0,
    denominators: jax.Array | None = None,
    balance_scale: float = 1.0,
    unembed_fn: Callable[[jax.Array], jax.Array] | None = None,
    logits_chunk_size: int = 0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The SFT loss of one forward pass and its parts.

    output: the model's output on `batch["tokens"]` (its `mtp_logits`, if any, are used with
    `mtp_weight`). batch: tokens, segment_ids, loss_mask [B, T]. denominators: float32[1 + K]
    target-token counts to divide by (default: this batch's own, i.e. a masked mean; the step
    passes the whole batch's counts to each micro-batch). balance_scale multiplies the MoE
    balance loss (1 / M per micro-batch). unembed_fn: for an output without logits (forward
    with `compute_logits=False`), the model's `logits_from_hidden`: the losses are then taken
    from `output.hidden` / `output.mtp_hidden`, `logits_chunk_size` positions of vocabulary
    logits at a time (`r1.losses.chunked_cross_entropy`), never [B, T, V] at once.

    Returns (loss, metrics): loss/next_token, loss/mtp, loss/balance and token_accuracy, each
    already divided by the denominators so that they add up over micro-batches.
    """
    tokens, loss_mask, segments = batch["tokens"], batch["loss_mask"], batch["segment_ids"]
    from_hidden = output.logits is None
    if from_hidden and unembed_fn is None:
        raise ValueError("sft_loss: the output has no logits; pass unembed_fn")

    def nll_sum(depth: int, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        if from_hidden:
            hidden = output.hidden if depth == 0 else output.mtp_hidden[depth - 1]
            return _nll_sum_chunked(hidden, unembed_fn, tokens, mask, 1 + depth, logits_chunk_size)
        logits = output.logits if depth == 0 else output.mtp_logits[depth - 1]
        return _nll_sum(logits, tokens, mask, 1 + depth)

    available = len(output.mtp_hidden if from_hidden else output.mtp_logits)
    depths = available if mtp_weight > 0 else 0
    if denominators is None:
        denominators = target_counts(batch, depths)
    den = jnp.maximum(denominators, 1.0)
    nll, correct = nll_sum(0, target_mask(loss_mask, segments, 1))
    main = nll / den[0]
    mtp = jnp.zeros((), jnp.float32)
    for k in range(1, depths + 1):
        mask = target_mask(loss_mask, segments, 1 + k)
        mtp = mtp + nll_sum(k, mask)[0] / den[k] / depths
    balance = balance_loss(output) * balance_scale
    loss = main + mtp_weight * mtp + balance
    metrics = {
        "loss/next_token": main,
        "loss/mtp": mtp,
        "loss/balance": balance,
        "token_accuracy": correct / den[0],
    }
    return loss, metrics


def forward(
    model: nnx.Module, batch: Batch, with_mtp: bool = False, compute_logits: bool = True
) -> ModelOutput:
    """The model on a (packed) batch: per-example positions, segment-restricted attention,
    padding (segment 0) masked out. compute_logits=False leaves the logits to the loss
    (`sft_loss(..., unembed_fn=model.logits_from_hidden)`)."""
    return model.forward(
        batch["tokens"],
        positions=batch["positions"],
        segment_ids=batch["segment_ids"],
        attention_mask=batch["segment_ids"] > 0,
        with_mtp=with_mtp,
        compute_logits=compute_logits,
    )


def sft_grads(
    graphdef: nnx.GraphDef,
    params: Any,
    extra: Any,
    batch: Batch,
    config: SFTConfig,
    grad_shardings: Any = None,
) -> tuple[Any, dict[str, jax.Array], list[jax.Array]]:
    """The full-batch gradient, accumulated over `config.num_microbatches` interleaved
    micro-batches (`r1.train.state.accumulate_grads`).

    Returns (grads like params, metrics, per-MoE-layer expert loads summed over micro-batches).
    metrics: loss and its parts (full-batch values), token_accuracy, target_tokens, MoE means.
    """
    m = config.num_microbatches
    rows = batch["tokens"].shape[0]
    if rows % m:
        raise ValueError(f"SFT step: {rows} rows cannot be split into {m} micro-batches")
    model = nnx.merge(graphdef, params, extra)
    depths = num_mtp_depths(model, config)
    denominators = target_counts(batch, depths)
    chunk = model.config.logits_chunk_size

    def loss_fn(p, mb):
        policy = nnx.merge(graphdef, p, extra)
        output = forward(policy, mb, with_mtp=depths > 0, compute_logits=chunk == 0)
        loss, metrics = sft_loss(
            output,
            mb,
            mtp_weight=config.mtp_weight,
            denominators=denominators,
            balance_scale=1.0 / m,
            unembed_fn=policy.logits_from_hidden,
            logits_chunk_size=chunk,
        )
        metrics["loss"] = loss
        moe = load_diagnostics(output.moe)
        return loss, (metrics, moe, [s.expert_load for s in output.moe])

    rows_only = {k: batch[k] for k in BATCH_KEYS}
    grads, (metrics, moe, loads) = accumulate_grads(
        loss_fn, params, rows_only, m, grad_shardings=grad_shardings
    )
    out = {k: jnp.sum(v) for k, v in metrics.items()}
    out.update({k: jnp.mean(v) for k, v in moe.items()})
    out["target_tokens"] = denominators[0]
    return grads, out, [jnp.sum(load, axis=0) for load in loads]


def sft_step_fn(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    config: SFTConfig,
    bias_update_rate: float = 0.0,
    grad_shardings: Any = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """The un-jitted step (for `jax.jit(...).lower(...)`, tests and AOT compilation).

    batch: tokens, segment_ids, positions int32[B, T] and loss_mask bool[B, T]
    (`r1.sft.data`). One optimizer update per call (`r1.train.state.apply_update`); MoE routing
    biases move by the expert loads of the whole batch.
    """

    def step(state: TrainState, batch: Batch):
        grads, metrics, loads = sft_grads(
            graphdef, state.params, state.extra, batch, config, grad_shardings
        )
        new_state, metrics["grad_norm"] = apply_update(
            state, graphdef, optimizer, grads, loads, bias_update_rate
        )
        return new_state, metrics

    return step


def make_sft_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    config: SFTConfig,
    mesh: Mesh,
    state: TrainState,
    batch: Batch,
    bias_update_rate: float = 0.0,
):
    """The jitted step with explicit shardings (state donated). `state` and `batch` give the
    structure (abstract values are fine). Call it under `r1.sharding.use_mesh(mesh)`."""
    state_sh = train_state_shardings(state, optimizer, mesh)
    fn = sft_step_fn(graphdef, optimizer, config, bias_update_rate, grad_shardings=state_sh.params)
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        fn,
        in_shardings=(state_sh, batch_shardings(batch, mesh)),
        out_shardings=(state_sh, replicated),
        donate_argnums=(0,),
    )
