"""Sampler-trainer consistency math (issue 23): the rollout corrections of `grpo_loss`
(`rl.rollout_correction`: tis / mis / sequence) and the mismatch metrics, against loop-based
NumPy float64 references, with ratios far above the cap and fully masked rows."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from grpo_reference import ADV_RANDOM, ATOL, INPUTS, RTOL, B, T, np_grpo  # tests/rl/

from r1.rl import grpo
from r1.rl.grpo import GRPOLossConfig
from r1.rl.mismatch import combine_mismatch, mismatch_metrics, mismatch_partials

CAP = 2.0


def _sampler_logprobs(seed=3):
    """The sampler's log-probs: the trainer's (`INPUTS.old`) plus noise, with some tokens far
    off on both sides (ratios e^3 and e^-3) and row 7 off by +1.5 on every token."""
    rng = np.random.default_rng(seed)
    sampler = INPUTS.old - 0.4 * rng.standard_normal((B, T)).astype(np.float32)
    sampler[0, 2] = INPUTS.old[0, 2] - 3.0  # w = e^3 >> C
    sampler[3, 1] = INPUTS.old[3, 1] + 3.0  # w = e^-3
    sampler[7, :] = INPUTS.old[7, :] - 1.5  # a whole row over the cap
    return sampler.astype(np.float32)


SAMPLER = _sampler_logprobs()


def np_weights(train, sampler, mask, mode, cap):
    """Weights [B, T] and the capped share, one token at a time (float64)."""
    weights = np.ones(train.shape)
    capped, count = 0, 0
    for i in range(train.shape[0]):
        toks = [t for t in range(train.shape[1]) if mask[i, t]]
        if not toks:
            continue
        logs = [float(train[i, t]) - float(sampler[i, t]) for t in toks]
        if mode == "sequence":
            s = math.exp(sum(logs) / len(toks))
            for t in toks:
                weights[i, t] = min(s, cap)
            capped, count = capped + (s > cap), count + 1
            continue
        for t, lw in zip(toks, logs):
            w = math.exp(lw)
            if mode == "tis":
                weights[i, t] = min(w, cap)
            elif mode == "mis":
                weights[i, t] = 0.0 if w > cap else 1.0
            capped, count = capped + (w > cap), count + 1
    share = 0.0 if mode == "none" else capped / max(count, 1)
    return weights, share


@pytest.mark.parametrize("mode", ["none", "tis", "mis", "sequence"])
def test_weights_match_numpy(mode):
    weights, share = grpo.rollout_correction_weights(
        jnp.asarray(INPUTS.old), jnp.asarray(SAMPLER), jnp.asarray(INPUTS.mask), mode=mode, cap=CAP
    )
    ref, ref_share = np_weights(INPUTS.old, SAMPLER, INPUTS.mask, mode, CAP)
    np.testing.assert_allclose(np.where(INPUTS.mask, weights, 1.0), ref, rtol=1e-5, atol=1e-6)
    assert abs(float(share) - ref_share) < 1e-6
    if mode != "none":
        assert 0 < ref_share < 1  # the cap acts on some, not all
    assert float(jnp.max(weights)) <= CAP + 1e-6


@pytest.mark.parametrize("mode", ["tis", "mis", "sequence"])
@pytest.mark.parametrize(
    "level, agg", [("token", "sequence_mean"), ("token", "token_mean"), ("sequence", "constant")]
)
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_corrected_loss_value_and_gradient_match_numpy(mode, level, agg, beta):
    eps = (0.2, 0.28) if level == "token" else (0.03, 0.04)
    cfg = GRPOLossConfig(
        eps_low=eps[0],
        eps_high=eps[1],
        beta=beta,
        ratio_level=level,
        aggregation=agg,
        max_length=10,
        rollout_correction=mode,
        rollout_correction_cap=CAP,
    )

    def f(new):
        return grpo.grpo_loss(
            new,
            jnp.asarray(INPUTS.old),
            jnp.asarray(INPUTS.ref),
            jnp.asarray(ADV_RANDOM),
            jnp.asarray(INPUTS.mask),
            config=cfg,
            logp_sampler=jnp.asarray(SAMPLER),
        )

    (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(INPUTS.new))
    weights, share = np_weights(INPUTS.old, SAMPLER, INPUTS.mask, mode, CAP)
    ref_loss, ref_grad, _ = np_grpo(
        INPUTS.new, INPUTS.old, INPUTS.ref, ADV_RANDOM, INPUTS.mask, cfg, token_weights=weights
    )
    np.testing.assert_allclose(float(loss), ref_loss, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(np.asarray(grad), ref_grad, atol=ATOL, rtol=RTOL)
    assert abs(float(metrics["rollout_correction/capped_frac"]) - share) < 1e-6
    # The correction changes the loss: without it the reference differs.
    plain, _, _ = np_grpo(INPUTS.new, INPUTS.old, INPUTS.ref, ADV_RANDOM, INPUTS.mask, cfg)
    assert abs(plain - ref_loss) > 1e-4
    assert np.all(np.asarray(grad)[~INPUTS.mask] == 0.0)  # masked rows and padding: no gradient


def test_fully_masked_batch_and_config_errors():
    cfg = GRPOLossConfig(rollout_correction="tis")
    mask = jnp.zeros((B, T), bool)
    loss, metrics = grpo.grpo_loss(
        jnp.asarray(INPUTS.new),
        jnp.asarray(INPUTS.old),
        None,
        jnp.asarray(ADV_RANDOM),
        mask,
        config=cfg,
        logp_sampler=jnp.full((B, T), jnp.nan),
    )
    assert float(loss) == 0.0 and float(metrics["rollout_correction/capped_frac"]) == 0.0
    with pytest.raises(ValueError, match="logp_sampler: rollout_correction='tis' needs"):
        grpo.grpo_loss(
            jnp.asarray(INPUTS.new),
            jnp.asarray(INPUTS.old),
            None,
            jnp.asarray(ADV_RANDOM),
            jnp.asarray(INPUTS.mask),
            config=cfg,
        )
    with pytest.raises(ValueError, match="rollout_correction: expected one of"):
        GRPOLossConfig(rollout_correction="is")
    with pytest.raises(ValueError, match="rollout_correction_cap: expected > 1"):
        GRPOLossConfig(rollout_correction_cap=1.0)
    assert dataclasses.replace(cfg, rollout_correction="none").rollout_correction == "none"


def np_mismatch(train, sampler, mask):
    d = [
        [float(train[i, t]) - float(sampler[i, t]) for t in range(T) if mask[i, t]]
        for i in range(train.shape[0])
    ]
    flat = [x for row in d for x in row]
    seq = [math.exp(sum(row)) for row in d if row]
    return {
        "mismatch/logp_abs_mean": sum(abs(x) for x in flat) / len(flat),
        "mismatch/logp_abs_max": max(abs(x) for x in flat),
        "mismatch/ratio_outside_frac": sum(abs(x) > math.log(2) for x in flat) / len(flat),
        "mismatch/seq_ess_frac": sum(seq) ** 2 / (len(seq) * sum(w * w for w in seq)),
    }


def test_mismatch_metrics_match_numpy_whole_and_in_slices():
    args = (jnp.asarray(INPUTS.old), jnp.asarray(SAMPLER), jnp.asarray(INPUTS.mask))
    whole = mismatch_metrics(mismatch_partials(*args))
    ref = np_mismatch(INPUTS.old, SAMPLER, INPUTS.mask)
    for key, value in ref.items():
        np.testing.assert_allclose(float(whole[key]), value, rtol=1e-5, err_msg=key)
    slices = [mismatch_partials(*(a[s::3] for a in args)) for s in range(3)]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *slices)
    combined = mismatch_metrics(combine_mismatch(stacked))
    for key, value in ref.items():
        np.testing.assert_allclose(float(combined[key]), value, rtol=1e-5, err_msg=key)
    same = mismatch_metrics(mismatch_partials(args[0], args[0], args[2]))
    assert float(same["mismatch/logp_abs_max"]) == 0.0
    assert float(same["mismatch/seq_ess_frac"]) == pytest.approx(1.0)
    empty = mismatch_metrics(mismatch_partials(args[0], args[1], jnp.zeros((B, T), bool)))
    assert float(empty["mismatch/seq_ess_frac"]) == 1.0
    assert float(empty["mismatch/logp_abs_mean"]) == 0.0
