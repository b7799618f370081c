"""Sampler-trainer consistency inside the GRPO step (issue 23): the mismatch metrics every step
reports, the rollout corrections wired through both ways of getting the trainer's old
log-probs, and training log-probs that do not depend on the micro-batch count."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from r1 import testing
from r1.models.moe import moe_layers
from r1.models.transformer import Transformer
from r1.rl.grpo import GRPOLossConfig
from r1.rl.step import (
    GRPOConfig,
    _full_sequences,
    completion_logprobs,
    grpo_step_fn,
    recomputes_old_logprobs,
)
from r1.sampling.sampler import SamplingConfig, left_pad
from r1.train.state import init_train_state, interleaved_rows
from tests.rl.test_grpo_step import token_reward

PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]]


def _batch():
    tokens, mask = left_pad(PROMPTS, 4, 0)
    return {
        "prompt_tokens": jnp.asarray(tokens),
        "prompt_mask": jnp.asarray(mask),
        "first": jnp.asarray([7, 3, 7, 4], jnp.int32),
    }


def _config(greedy=False, cache_dtype="float32", **overrides):
    sampling = SamplingConfig(
        max_new_tokens=8,
        num_samples=4,
        temperature=1.0,
        greedy=greedy,
        eos_ids=(1,),
        pad_id=0,
        cache_dtype=cache_dtype,
    )
    loss = overrides.pop("loss", GRPOLossConfig(beta=0.0))
    return GRPOConfig(group_size=4, sampling=sampling, loss=loss, **overrides)


def _state(cfg, optimizer):
    return init_train_state(
        Transformer(cfg, rngs=nnx.Rngs(0)), optimizer, seed=0, with_reference=False
    )


@pytest.mark.parametrize("make_config", [testing.tiny_dense_config, testing.tiny_moe_config])
@pytest.mark.parametrize("greedy", [False, True])
def test_sampler_and_trainer_logprobs_agree_in_float32(make_config, greedy):
    """Same parameters, float32: the cached decode's log-probs equal the training forward's
    within 1e-5 (GQA; MLA + MoE), and the step's metrics say so."""
    cfg = make_config()
    optimizer = optax.sgd(0.1)
    graphdef, state = _state(cfg, optimizer)
    step = jax.jit(grpo_step_fn(graphdef, optimizer, _config(greedy), token_reward))
    _, metrics, samples = step(state, _batch())
    assert int(jnp.sum(samples["mask"])) > 16  # completions of several tokens
    assert float(metrics["mismatch/logp_abs_max"]) < 1e-5
    assert float(metrics["mismatch/logp_abs_mean"]) < 1e-6
    assert float(metrics["mismatch/ratio_outside_frac"]) == 0.0
    assert abs(float(metrics["mismatch/seq_ess_frac"]) - 1.0) < 1e-4


def test_rollout_correction_in_the_step():
    """A bf16 sampler cache makes the sampler's log-probs differ from the trainer's (float32):
    the metrics show it; `tis` then changes the update (`none` does not use the trainer's
    old log-probs), the same whether the trainer's log-probs come from the update's own
    forward (mu = 1, M = 1) or from a forward of their own (M = 2); with a float32 cache the
    corrected and the plain update agree."""
    cfg = testing.tiny_dense_config()
    optimizer = optax.sgd(0.5)
    graphdef, state = _state(cfg, optimizer)
    batch = _batch()
    loss = GRPOLossConfig(beta=0.0, aggregation="token_mean")
    tis = dataclasses.replace(loss, rollout_correction="tis", rollout_correction_cap=1.001)
    params = {}
    for name, cache, loss_cfg, minibatches in (
        ("plain", "bfloat16", loss, 1),
        ("tis", "bfloat16", tis, 1),
        ("tis_recomputed", "bfloat16", tis, 2),
        ("plain_f32", "float32", loss, 1),
        ("tis_f32", "float32", tis, 1),
    ):
        config = _config(cache_dtype=cache, loss=loss_cfg, num_minibatches=minibatches)
        assert recomputes_old_logprobs(config) == (name == "tis_recomputed")
        step = jax.jit(grpo_step_fn(graphdef, optimizer, config, token_reward))
        new_state, metrics, _ = step(state, batch)
        params[name] = (new_state.params, metrics)
    bf16 = params["plain"][1]
    assert float(bf16["mismatch/logp_abs_mean"]) > 1e-4  # a bf16 cache is not float32
    capped = float(params["tis"][1]["rollout_correction/capped_frac"])
    assert 0.0 < capped < 1.0

    def gap(a, b):
        return max(
            float(np.abs(np.asarray(x) - np.asarray(y)).max())
            for x, y in zip(jax.tree.leaves(params[a][0]), jax.tree.leaves(params[b][0]))
        )

    assert gap("plain", "tis") > 1e-5  # the correction acts
    assert gap("plain_f32", "tis_f32") < 1e-6  # nothing to correct in float32
    # M = 2: the trainer's old log-probs from their own forward, every row measured.
    recomputed = params["tis_recomputed"][1]
    assert (
        abs(float(recomputed["mismatch/logp_abs_mean"]) - float(bf16["mismatch/logp_abs_mean"]))
        < 1e-5
    )


def test_training_logprobs_do_not_depend_on_the_micro_batch():
    """The training forward's per-token log-probs for 16 rows, whole or as 4 interleaved slices
    (the step's gradient accumulation), within 1e-6."""
    cfg = testing.tiny_moe_config()
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    tokens, mask = left_pad(PROMPTS, 4, 0)
    completion = jnp.asarray(rng.integers(3, cfg.vocab_size, (16, 8)), jnp.int32)
    completion_mask = jnp.arange(8)[None, :] < jnp.asarray(rng.integers(1, 9, 16))[:, None]
    full, full_mask, positions = _full_sequences(
        jnp.asarray(tokens), jnp.asarray(mask), completion, completion_mask, 4
    )
    forward = jax.jit(lambda t, m, p, c: completion_logprobs(model, t, m, p, 4, c)[0])
    whole = np.asarray(forward(full, full_mask, positions, completion))
    for slot in range(4):
        part = [interleaved_rows(x, slot, 4) for x in (full, full_mask, positions, completion)]
        got = np.asarray(forward(*part))
        np.testing.assert_allclose(
            np.where(completion_mask[slot::4], got, 0.0),
            np.where(completion_mask[slot::4], whole[slot::4], 0.0),
            atol=1e-7,
            rtol=1e-6,  # a few float32 ulps of log-probs near -5
        )


def test_routing_replay_removes_the_routing_mismatch_on_near_ties():
    """Near-tied routers (expert 1's gate = expert 0's + 1e-7 noise; biases make 0 and 1
    compete for the second slot beside expert 2): float32 noise between the cached decode and
    the full forward flips some choices, and the flipped tokens' log-probs move by far more
    than float32 rounding. With routing replay the training forward uses the sampler's experts:
    no decision differs and the gap is float32 noise."""
    cfg = testing.tiny_moe_config()
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    for layer in moe_layers(model):
        gate = np.array(layer.gate[...])
        gate[:, 1] = gate[:, 0] + 1e-7 * rng.standard_normal(gate.shape[0])
        layer.gate[...] = jnp.asarray(gate)
        bias = np.zeros(cfg.n_routed_experts, np.float32)
        bias[2], bias[0], bias[1] = 10.0, 5.0, 5.0
        layer.e_score_correction_bias[...] = jnp.asarray(bias)
    optimizer = optax.sgd(0.1)
    graphdef, state = init_train_state(model, optimizer, seed=0, with_reference=False)
    metrics = {}
    for replay in (False, True):
        config = _config(routing_replay=replay)
        config = dataclasses.replace(
            config, sampling=dataclasses.replace(config.sampling, max_new_tokens=16, eos_ids=())
        )
        _, metrics[replay], _ = jax.jit(grpo_step_fn(graphdef, optimizer, config, token_reward))(
            state, _batch()
        )
    off, on = metrics[False], metrics[True]
    assert float(off["mismatch/routing_diff_frac"]) > 0.01
    assert float(off["mismatch/logp_abs_max"]) > 0.1
    assert float(on["mismatch/routing_diff_frac"]) == 0.0
    assert float(on["mismatch/router_disagree_frac"]) > 0.01  # what replay overrode
    assert float(on["mismatch/logp_abs_max"]) < 1e-5
    assert abs(float(on["mismatch/seq_ess_frac"]) - 1.0) < 1e-4

    dense_model = Transformer(testing.tiny_dense_config(), rngs=nnx.Rngs(0))
    graphdef, state = init_train_state(dense_model, optimizer, seed=0, with_reference=False)
    step = grpo_step_fn(graphdef, optimizer, _config(routing_replay=True), token_reward)
    with pytest.raises(ValueError, match="routing_replay needs an MoE policy"):
        jax.jit(step).lower(state, _batch())
