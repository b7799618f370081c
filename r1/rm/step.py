"""The reward-model step: Bradley-Terry on preference pairs, chosen and rejected rows in one
forward pass, gradients accumulated by the shared `r1.train.state.accumulate_grads`.

`rm_step_fn(...)` returns the un-jitted `step(state, batch) -> (state, metrics)`; the trainer
(`r1.rm.trainer`) and the AOT report (`r1.aot.programs.rm_program`) jit it with explicit
shardings.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from r1.losses import balance_loss
from r1.rm import model as rm_model
from r1.rm.loss import bradley_terry_loss, pair_accuracy
from r1.rm.reward import region_mask
from r1.train.state import TrainState, accumulate_grads, apply_update

SIDES = ("chosen", "rejected")
ROW_FIELDS = tuple(f"{s}_{n}" for s in SIDES for n in ("tokens", "mask", "response"))


def pair_scores(model: rm_model.RewardModel, rows: dict[str, jax.Array], settings: dict):
    """Chosen and rejected rows in one forward pass.

    rows: the `ROW_FIELDS` arrays [P, T]; settings: region, think_close, missing (static).
    Returns (r_chosen float32[P], r_rejected float32[P], the backbone's ModelOutput). The
    model reads `mask & region_mask(...)`, exactly what `r1.rm.reward.score_sequences` reads.
    """
    tokens = jnp.concatenate([rows["chosen_tokens"], rows["rejected_tokens"]], axis=0)
    mask = jnp.concatenate([rows["chosen_mask"], rows["rejected_mask"]], axis=0)
    response = jnp.concatenate([rows["chosen_response"], rows["rejected_response"]], axis=0)
    regions = region_mask(tokens, mask, response, **settings)
    scores, output = model.forward(tokens, mask & regions)
    pairs = rows["chosen_tokens"].shape[0]
    return scores[:pairs], scores[pairs:], output


def rm_step_fn(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    settings: dict,
    use_margin: bool,
    bias_update_rate: float,
    num_microbatches: int = 1,
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """The un-jitted step `(state, batch) -> (state, metrics)`; batch: `ROW_FIELDS` + margin,
    [P, ...]. With `num_microbatches` M > 1 the P pairs are processed in M interleaved slices
    (`accumulate_grads`; each slice's mean loss is divided by M, so the summed gradient is the
    full-batch mean's), bounding activation memory; one optimizer update per step."""
    m = int(num_microbatches)

    def step(state: TrainState, batch: dict[str, jax.Array]):
        pairs = batch["margin"].shape[0]
        if pairs % m:
            raise ValueError(f"reward-model step: {pairs} pairs do not split into {m} slices")

        def loss_fn(params, rows):
            margin = rows["margin"] if use_margin else 0.0
            model = nnx.merge(graphdef, params, state.extra)
            r_c, r_r, output = pair_scores(model, rows, settings)
            bt = bradley_terry_loss(r_c, r_r, margin)
            moe = balance_loss(output)
            metrics = {
                "loss": bt,
                "loss/balance": moe,
                "accuracy": pair_accuracy(r_c, r_r),
                "reward/chosen": jnp.mean(r_c),
                "reward/rejected": jnp.mean(r_r),
                "reward/gap": jnp.mean(r_c - r_r),
            }
            loads = [s.expert_load for s in output.moe]
            return (bt + moe) / m, (metrics, loads)

        grads, (metrics, loads) = accumulate_grads(loss_fn, state.params, batch, m)
        metrics = {k: jnp.mean(v, axis=0) for k, v in metrics.items()}
        loads = [jnp.sum(load, axis=0) for load in loads]
        new_state, grad_norm = apply_update(
            state,
            graphdef,
            optimizer,
            grads,
            loads,
            bias_update_rate,
            routed=lambda model: model.backbone,
        )
        metrics["grad_norm"] = grad_norm
        return new_state, metrics

    return step
