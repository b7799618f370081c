"""GRPO math (r1/rl/grpo.py) against an independent, loop-based NumPy float64 reference.

The reference (tests/rl/grpo_reference.py) is written from the formulas (DeepSeekMath, DAPO,
Dr. GRPO, GSPO, dual-clip PPO) one row and one token at a time, with analytic derivatives that
are themselves checked here by central finite differences; the JAX code is vectorised and
differentiated by autodiff. The GSPO reference differentiates the sequence ratio
s_i = exp(mean_t log r_it) directly, the JAX code uses the GSPO-token stop-gradient form, so the
test also checks that the two agree. TRL parity: tests/rl/test_grpo_trl.py.
"""

from __future__ import annotations

import dataclasses
import functools
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from grpo_reference import (  # tests/rl/grpo_reference.py
    ADV,
    ADV_RANDOM,
    ATOL,
    CONFIGS,
    INPUTS,
    RTOL,
    B,
    G,
    T,
    _id,
    jax_loss_and_grad,
    np_advantages,
    np_grpo,
)

from r1.rl import grpo
from r1.rl.grpo import GRPOLossConfig

# --------------------------------------------------------------------------------------------
# The reference checks itself: analytic derivative == central finite differences (float64)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", CONFIGS[::3] + CONFIGS[1::5], ids=_id)
def test_numpy_reference_gradient_matches_finite_differences(cfg):
    x = INPUTS
    _, grad, _ = np_grpo(x.new, x.old, x.ref, ADV_RANDOM, x.mask, cfg)
    h = 1e-6
    fd = np.zeros_like(grad)
    base = x.new.astype(np.float64)
    for i, t in zip(*np.nonzero(x.mask)):
        plus, minus = base.copy(), base.copy()
        plus[i, t] += h
        minus[i, t] -= h
        fd[i, t] = (
            np_grpo(plus, x.old, x.ref, ADV_RANDOM, x.mask, cfg)[0]
            - np_grpo(minus, x.old, x.ref, ADV_RANDOM, x.mask, cfg)[0]
        ) / (2 * h)
    np.testing.assert_allclose(grad, fd, atol=1e-7, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Loss value, gradient and metrics vs the reference
# --------------------------------------------------------------------------------------------


def _check_against_reference(cfg, inputs, adv, with_ref=True, **kwargs):
    loss, grad, metrics = jax_loss_and_grad(cfg, inputs, adv, with_ref=with_ref, **kwargs)
    ref_loss, ref_grad, ref_metrics = np_grpo(
        inputs.new,
        inputs.old,
        inputs.ref if with_ref else None,
        adv,
        inputs.mask,
        cfg,
        truncated=kwargs.get("truncated"),
        rewards=kwargs.get("rewards"),
    )
    assert np.isfinite(float(loss))
    np.testing.assert_allclose(float(loss), ref_loss, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(np.asarray(grad), ref_grad, atol=ATOL, rtol=RTOL)
    for key, value in ref_metrics.items():
        np.testing.assert_allclose(float(metrics[key]), value, atol=ATOL, rtol=RTOL, err_msg=key)
    return loss, grad, metrics


@pytest.mark.parametrize("cfg", CONFIGS, ids=_id)
@pytest.mark.parametrize("adv_name", ["group", "random"])
def test_loss_value_gradient_and_metrics_match_numpy(cfg, adv_name):
    adv = ADV if adv_name == "group" else ADV_RANDOM
    _, _, metrics = _check_against_reference(cfg, INPUTS, adv)
    if adv_name == "random":  # the inputs do exercise clipping
        assert float(metrics["clip_frac/low"]) > 0 and float(metrics["clip_frac/high"]) > 0
        if cfg.dual_clip is not None:
            assert float(metrics["clip_frac/dual"]) > 0


@pytest.mark.parametrize(
    "level, agg", [("token", "sequence_mean"), ("token", "token_mean"), ("sequence", "constant")]
)
def test_overlong_filtering_and_dynamic_sampling_masks(level, agg):
    cfg = GRPOLossConfig(
        aggregation=agg,
        ratio_level=level,
        max_length=T,
        beta=0.04,
        mask_truncated=True,
        drop_zero_variance_groups=True,
    )
    rewards, truncated = INPUTS.rewards, INPUTS.truncated
    _, grad, metrics = _check_against_reference(
        cfg, INPUTS, ADV_RANDOM, truncated=jnp.asarray(truncated), rewards=jnp.asarray(rewards)
    )
    assert float(metrics["zero_variance_group_frac"]) == pytest.approx(1 / 3)
    assert float(metrics["truncated_frac"]) == pytest.approx(truncated.mean())
    grad = np.asarray(grad)
    assert np.all(grad[truncated] == 0)
    assert np.all(grad[G : 2 * G] == 0)  # group 1 has all-equal rewards


def test_beta_zero_never_reads_the_reference():
    cfg = GRPOLossConfig(beta=0.0)
    loss_none, grad_none, metrics_none = _check_against_reference(
        cfg, INPUTS, ADV_RANDOM, with_ref=False
    )
    assert "kl" not in metrics_none
    loss_ref, grad_ref, metrics_ref = jax_loss_and_grad(cfg, INPUTS, ADV_RANDOM, with_ref=True)
    assert float(loss_ref) == float(loss_none)
    np.testing.assert_array_equal(np.asarray(grad_ref), np.asarray(grad_none))
    assert float(metrics_ref["kl"]) > 0  # reported as a monitor, not in the loss
    assert float(metrics_ref["loss/kl"]) == 0
    with pytest.raises(ValueError, match="logp_ref"):
        grpo.grpo_loss(
            jnp.asarray(INPUTS.new),
            jnp.asarray(INPUTS.old),
            None,
            jnp.asarray(ADV),
            jnp.asarray(INPUTS.mask),
            config=GRPOLossConfig(beta=0.1),
        )


def test_padding_garbage_never_reaches_loss_or_gradient():
    cfg = GRPOLossConfig(beta=0.04, ratio_level="sequence", aggregation="token_mean")
    dirty = SimpleNamespace(**vars(INPUTS))
    pad = ~INPUTS.mask
    dirty.new = np.where(pad, np.nan, INPUTS.new).astype(np.float32)
    dirty.old = np.where(pad, -np.inf, INPUTS.old).astype(np.float32)
    dirty.ref = np.where(pad, np.inf, INPUTS.ref).astype(np.float32)
    loss, grad, metrics = jax_loss_and_grad(cfg, dirty, ADV_RANDOM)
    loss_c, grad_c, _ = jax_loss_and_grad(cfg, INPUTS, ADV_RANDOM)
    assert float(loss) == float(loss_c)
    np.testing.assert_array_equal(np.asarray(grad), np.asarray(grad_c))
    assert all(np.isfinite(float(v)) for v in metrics.values())


@pytest.mark.parametrize("cfg", CONFIGS[::4], ids=_id)
def test_fully_masked_batch_is_zero_not_nan(cfg):
    empty = SimpleNamespace(**vars(INPUTS))
    empty.mask = np.zeros((B, T), bool)
    loss, grad, metrics = jax_loss_and_grad(cfg, empty, ADV_RANDOM)
    assert float(loss) == 0.0
    assert np.all(np.asarray(grad) == 0)
    for key, value in metrics.items():
        assert np.isfinite(float(value)), key


# --------------------------------------------------------------------------------------------
# mu = 1: the gradient is the policy gradient
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("agg", ["sequence_mean", "token_mean", "constant"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_on_policy_gradient_is_the_policy_gradient(agg, level):
    cfg = GRPOLossConfig(aggregation=agg, ratio_level=level, max_length=10, dual_clip=3.0)
    x = INPUTS
    mask = x.mask.astype(np.float64)
    n = mask.sum(1)
    n_seq = max((n > 0).sum(), 1)
    if agg == "sequence_mean":
        w = mask / np.maximum(n, 1)[:, None] / n_seq
    elif agg == "token_mean":
        w = mask / mask.sum()
    else:
        w = mask / (n_seq * 10)
    expected_grad = -w * ADV_RANDOM[:, None]

    def loss_fn(new):
        return grpo.grpo_loss(
            new,
            jax.lax.stop_gradient(new),
            None,
            jnp.asarray(ADV_RANDOM),
            jnp.asarray(x.mask),
            config=cfg,
        )

    (loss, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(jnp.asarray(x.new))
    np.testing.assert_allclose(np.asarray(grad), expected_grad, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(float(loss), float(np.sum(expected_grad)), atol=ATOL, rtol=RTOL)
    assert float(metrics["ratio/mean"]) == pytest.approx(1.0)
    assert float(metrics["clip_frac"]) == 0.0

    # through the logits too: the gradient of the loss equals that of -sum_it w_it A_i logp_it
    rng = np.random.default_rng(3)
    logits = jnp.asarray(rng.standard_normal((B, T, 11)).astype(np.float32))
    tokens = jnp.asarray(rng.integers(0, 11, (B, T)).astype(np.int32))

    def via_logits(z):
        logp = grpo.token_logprobs(z, tokens)
        return loss_fn(logp)[0]

    def reinforce(z):
        logp = grpo.token_logprobs(z, tokens)
        return -jnp.sum(jnp.asarray(w, jnp.float32) * jnp.asarray(ADV_RANDOM)[:, None] * logp)

    np.testing.assert_allclose(
        np.asarray(jax.grad(via_logits)(logits)),
        np.asarray(jax.grad(reinforce)(logits)),
        atol=1e-6,
    )


def test_mini_batches_with_the_global_denominator_add_up_to_the_full_batch():
    cfg = GRPOLossConfig(aggregation="token_mean", beta=0.04, eps_high=0.28)
    x = INPUTS
    mask = jnp.asarray(x.mask)
    denom = grpo.loss_denominator(mask, config=cfg)

    def part(new, sl):
        return grpo.grpo_loss(
            new[sl],
            jnp.asarray(x.old)[sl],
            jnp.asarray(x.ref)[sl],
            jnp.asarray(ADV_RANDOM)[sl],
            mask[sl],
            config=cfg,
            denominator=denom,
        )[0]

    def halves(new):
        return part(new, slice(0, B // 2)) + part(new, slice(B // 2, B))

    full, full_grad, _ = jax_loss_and_grad(cfg, x, ADV_RANDOM)
    split, split_grad = jax.jit(jax.value_and_grad(halves))(jnp.asarray(x.new))
    np.testing.assert_allclose(float(split), float(full), atol=1e-6)
    np.testing.assert_allclose(np.asarray(split_grad), np.asarray(full_grad), atol=1e-7)


@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[7], CONFIGS[-1]], ids=_id)
def test_jit_matches_eager(cfg):
    kwargs = dict(truncated=INPUTS.truncated, rewards=INPUTS.rewards)
    loss, grad, metrics = jax_loss_and_grad(cfg, INPUTS, ADV_RANDOM, **kwargs)
    loss_j, grad_j, metrics_j = jax_loss_and_grad(cfg, INPUTS, ADV_RANDOM, jit=True, **kwargs)
    np.testing.assert_allclose(float(loss_j), float(loss), atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad_j), np.asarray(grad), atol=1e-7, rtol=1e-6)
    assert metrics_j.keys() == metrics.keys()
    for key in metrics:
        np.testing.assert_allclose(float(metrics_j[key]), float(metrics[key]), atol=1e-6)


def test_jit_with_static_config_and_shape_errors():
    x = INPUTS
    cfg = GRPOLossConfig(beta=0.04, ratio_level="sequence", aggregation="constant", max_length=T)
    f = jax.jit(grpo.grpo_loss, static_argnames=("config",))
    loss, metrics = f(
        jnp.asarray(x.new),
        jnp.asarray(x.old),
        jnp.asarray(x.ref),
        jnp.asarray(ADV),
        jnp.asarray(x.mask),
        config=cfg,
    )
    assert loss.shape == () and loss.dtype == jnp.float32
    assert all(v.shape == () for v in metrics.values())
    with pytest.raises(ValueError, match="advantages"):
        grpo.grpo_loss(
            jnp.asarray(x.new),
            jnp.asarray(x.old),
            None,
            jnp.asarray(ADV)[:3],
            jnp.asarray(x.mask),
            config=GRPOLossConfig(),
        )
    with pytest.raises(ValueError, match="rewards"):
        grpo.grpo_loss(
            jnp.asarray(x.new),
            jnp.asarray(x.old),
            None,
            jnp.asarray(ADV),
            jnp.asarray(x.mask),
            config=GRPOLossConfig(),
            rewards=jnp.zeros((5, 5)),
        )


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"eps_low": 1.5}, "eps_low"),
        ({"eps_high": -0.1}, "eps_high"),
        ({"dual_clip": 0.9}, "dual_clip"),
        ({"beta": -1.0}, "beta"),
        ({"ratio_level": "seq"}, "ratio_level"),
        ({"aggregation": "mean"}, "aggregation"),
        ({"aggregation": "constant"}, "max_length"),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        GRPOLossConfig(**kwargs)


def test_mask_options_need_their_inputs():
    x = INPUTS
    args = (jnp.asarray(x.new), jnp.asarray(x.old), None, jnp.asarray(ADV), jnp.asarray(x.mask))
    with pytest.raises(ValueError, match="truncated"):
        grpo.grpo_loss(*args, config=GRPOLossConfig(mask_truncated=True))
    with pytest.raises(ValueError, match="rewards"):
        grpo.grpo_loss(*args, config=GRPOLossConfig(drop_zero_variance_groups=True))


# --------------------------------------------------------------------------------------------
# Advantages and reward helpers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["std", "none", "batch_std", "leave_one_out"])
@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("with_valid", [False, True])
def test_group_advantages_match_numpy(method, ddof, with_valid):
    rng = np.random.default_rng(7)
    rewards = rng.standard_normal((5, 6)).astype(np.float32)
    rewards[1] = 0.5  # all equal
    rewards[3, :] = [1, 0, 1, 0, 1, 1]
    valid = None
    if with_valid:
        valid = rng.random((5, 6)) > 0.3
        valid[2] = False  # a group with nothing valid
        valid[4] = [True, False, False, False, False, False]  # a group with one valid entry
    out = grpo.group_advantages(
        jnp.asarray(rewards),
        method=method,
        std_ddof=ddof,
        valid_mask=None if valid is None else jnp.asarray(valid),
    )
    expected = np_advantages(rewards, method, ddof=ddof, valid=valid)
    assert out.dtype == jnp.float32 and out.shape == rewards.shape
    np.testing.assert_allclose(np.asarray(out), expected, atol=ATOL, rtol=RTOL)
    assert np.all(np.asarray(out)[1] == 0)  # all-equal rewards: exactly 0, no NaN
    assert np.all(np.isfinite(np.asarray(out)))


def test_group_advantages_group_of_one_and_jit():
    out = jax.jit(functools.partial(grpo.group_advantages, method="std"))(jnp.ones((4, 1)))
    assert np.all(np.asarray(out) == 0)
    with pytest.raises(ValueError, match="method"):
        grpo.group_advantages(jnp.ones((2, 2)), method="z")
    with pytest.raises(ValueError, match="rewards"):
        grpo.group_advantages(jnp.ones((4,)))


def test_zero_variance_groups():
    rewards = jnp.asarray([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.2, 0.2, 0.2], [0.0, 0.0, 1.0]])
    np.testing.assert_array_equal(
        np.asarray(grpo.zero_variance_groups(rewards)), [True, False, True, False]
    )
    valid = jnp.asarray([[1, 1, 1], [1, 0, 1], [1, 1, 1], [0, 0, 1]], bool)
    np.testing.assert_array_equal(
        np.asarray(grpo.zero_variance_groups(rewards, valid)), [True, True, True, True]
    )


def test_overlong_penalty_matches_dapo_formula():
    L_max, L_cache = 20, 8
    lengths = np.arange(0, 26)

    def dapo(n):
        if n <= L_max - L_cache:
            return 0.0
        if n <= L_max:
            return ((L_max - L_cache) - n) / L_cache
        return -1.0

    out = grpo.overlong_penalty(jnp.asarray(lengths), max_length=L_max, cache_length=L_cache)
    np.testing.assert_allclose(np.asarray(out), [dapo(n) for n in lengths], atol=1e-7)
    with pytest.raises(ValueError, match="cache_length"):
        grpo.overlong_penalty(jnp.asarray(lengths), max_length=4, cache_length=8)


# --------------------------------------------------------------------------------------------
# Log-probs and entropy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_and_entropy_match_numpy(temperature):
    rng = np.random.default_rng(5)
    logits = (3 * rng.standard_normal((2, 5, 13))).astype(np.float32)
    tokens = rng.integers(0, 13, (2, 5)).astype(np.int32)
    mask = rng.random((2, 5)) > 0.3
    z = logits.astype(np.float64) / temperature
    z = z - z.max(-1, keepdims=True)
    logp_all = z - np.log(np.exp(z).sum(-1, keepdims=True))
    expected_logp = np.take_along_axis(logp_all, tokens[..., None], -1)[..., 0]
    expected_ent = np.where(mask, -(np.exp(logp_all) * logp_all).sum(-1), 0.0)
    for dtype in (jnp.float32, jnp.bfloat16):
        if dtype == jnp.bfloat16:  # compare to the rounded inputs
            logits_in = jnp.asarray(logits).astype(dtype)
            z = np.asarray(logits_in.astype(jnp.float32), np.float64) / temperature
            z = z - z.max(-1, keepdims=True)
            logp_all = z - np.log(np.exp(z).sum(-1, keepdims=True))
            expected_logp = np.take_along_axis(logp_all, tokens[..., None], -1)[..., 0]
            expected_ent = np.where(mask, -(np.exp(logp_all) * logp_all).sum(-1), 0.0)
        else:
            logits_in = jnp.asarray(logits)
        logp = grpo.token_logprobs(logits_in, jnp.asarray(tokens), temperature=temperature)
        ent = grpo.entropy_from_logits(logits_in, jnp.asarray(mask), temperature=temperature)
        assert logp.dtype == jnp.float32 and ent.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(logp), expected_logp, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(ent), expected_ent, atol=1e-5, rtol=1e-5)


def test_config_is_hashable_and_frozen():
    cfg = GRPOLossConfig()
    assert hash(cfg) == hash(GRPOLossConfig())
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.beta = 1.0  # type: ignore[misc]
