"""GRPO math (r1/rl/grpo.py) against an independent, loop-based NumPy float64 reference.

The reference below is written from the formulas (DeepSeekMath, DAPO, Dr. GRPO, GSPO, dual-clip
PPO) one row and one token at a time, with analytic derivatives that are themselves checked by
central finite differences; the JAX code is vectorised and differentiated by autodiff. The GSPO
reference differentiates the sequence ratio s_i = exp(mean_t log r_it) directly, the JAX code
uses the GSPO-token stop-gradient form, so the test also checks that the two agree.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections import defaultdict
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1.rl import grpo
from r1.rl.grpo import GRPOLossConfig

P, G, T = 3, 4, 7
B = P * G
ATOL = 1e-5
RTOL = 1e-5


# --------------------------------------------------------------------------------------------
# NumPy reference (float64, loops)
# --------------------------------------------------------------------------------------------


def np_advantages(rewards, method, eps=1e-4, ddof=1, valid=None):
    rewards = np.asarray(rewards, np.float64)
    P_, G_ = rewards.shape
    valid = np.ones((P_, G_), bool) if valid is None else np.asarray(valid, bool)
    all_vals = [rewards[p, g] for p in range(P_) for g in range(G_) if valid[p, g]]
    if len(all_vals) > ddof:
        m = sum(all_vals) / len(all_vals)
        batch_std = math.sqrt(sum((v - m) ** 2 for v in all_vals) / (len(all_vals) - ddof))
    else:
        batch_std = 0.0
    out = np.zeros((P_, G_))
    for p in range(P_):
        vals = [rewards[p, g] for g in range(G_) if valid[p, g]]
        n = len(vals)
        mean = sum(vals) / n if n else 0.0
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - ddof)) if n > ddof else 0.0
        for g in range(G_):
            if not valid[p, g]:
                continue
            r = rewards[p, g]
            if method == "std":
                out[p, g] = (r - mean) / (std + eps)
            elif method == "none":
                out[p, g] = r - mean
            elif method == "batch_std":
                out[p, g] = (r - mean) / (batch_std + eps)
            elif method == "leave_one_out":
                others = [rewards[p, h] for h in range(G_) if valid[p, h] and h != g]
                out[p, g] = r - sum(others) / len(others) if others else 0.0
    return out


def np_effective_mask(mask, cfg, truncated, rewards):
    mask = np.asarray(mask, bool).copy()
    if cfg.mask_truncated:
        for i in range(mask.shape[0]):
            if truncated[i]:
                mask[i, :] = False
    if cfg.drop_zero_variance_groups:
        P_, G_ = rewards.shape
        for p in range(P_):
            if len(set(float(x) for x in rewards[p])) == 1:
                mask[p * G_ : (p + 1) * G_, :] = False
    return mask


def np_surrogate(r, a, cfg):
    """Per-token (or per-sequence) policy loss and its derivative w.r.t. the ratio r."""
    lo, hi = 1.0 - cfg.eps_low, 1.0 + cfg.eps_high
    clipped = min(max(r, lo), hi)
    unclipped_term, clipped_term = r * a, clipped * a
    loss = -min(unclipped_term, clipped_term)
    # the min picks the unclipped term (derivative a) when r is inside the clip range or when
    # the unclipped term is the smaller one; otherwise the clipped (constant) term.
    dloss = -a if (lo <= r <= hi or unclipped_term < clipped_term) else 0.0
    if cfg.dual_clip is not None and a < 0 and -cfg.dual_clip * a < loss:
        loss, dloss = -cfg.dual_clip * a, 0.0
    return loss, dloss


def np_grpo(new, old, ref, adv, mask, cfg, truncated=None, rewards=None):
    """Returns (loss, dloss/dnew [B, T], metrics) in float64."""
    new, old = np.asarray(new, np.float64), np.asarray(old, np.float64)
    ref = None if ref is None else np.asarray(ref, np.float64)
    adv = np.asarray(adv, np.float64)
    m = np_effective_mask(mask, cfg, truncated, rewards)
    B_, T_ = new.shape
    n = [int(m[i].sum()) for i in range(B_)]
    n_seq = sum(1 for k in n if k > 0)
    n_tok = sum(n)
    if cfg.aggregation == "sequence_mean":
        denom = max(n_seq, 1)
    elif cfg.aggregation == "token_mean":
        denom = max(n_tok, 1)
    else:
        denom = max(n_seq, 1) * cfg.max_length

    def token_weight(i):  # d loss / d (per-token loss of a valid token of row i)
        return 1.0 / (n[i] * denom) if cfg.aggregation == "sequence_mean" else 1.0 / denom

    pol, kl_part = 0.0, 0.0
    grad = np.zeros((B_, T_))
    ratios, lows, highs, duals, k3s = [], [], [], [], []
    for i in range(B_):
        if n[i] == 0:
            continue
        w = token_weight(i)
        toks = [t for t in range(T_) if m[i, t]]
        a = adv[i]
        if cfg.ratio_level == "token":
            for t in toks:
                r = math.exp(new[i, t] - old[i, t])
                loss_t, dl_dr = np_surrogate(r, a, cfg)
                pol += w * loss_t
                grad[i, t] += w * dl_dr * r
                ratios.append(r)
        else:  # GSPO, the direct form: s_i = exp(mean log ratio), ds/dnew_t = s / n_i
            s = math.exp(sum(new[i, t] - old[i, t] for t in toks) / n[i])
            loss_s, dl_ds = np_surrogate(s, a, cfg)
            for _t in toks:  # every token carries the sequence loss
                pol += w * loss_s
                for u in toks:
                    grad[i, u] += w * dl_ds * s / n[i]
                ratios.append(s)
        for t in toks:
            r = ratios[-len(toks) + toks.index(t)]
            lows.append(float(r < 1 - cfg.eps_low and a < 0))
            highs.append(float(r > 1 + cfg.eps_high and a > 0))
            duals.append(float(cfg.dual_clip is not None and r > cfg.dual_clip and a < 0))
            if ref is not None:
                d = ref[i, t] - new[i, t]
                k3s.append(math.exp(d) - d - 1)
                if cfg.beta:
                    kl_part += cfg.beta * w * (math.exp(d) - d - 1)
                    grad[i, t] += cfg.beta * w * (1 - math.exp(d))
    count = max(len(lows), 1)
    metrics = {
        "loss/policy": pol,
        "loss/kl": kl_part,
        "loss": pol + kl_part,
        "ratio/mean": sum(ratios) / count,
        "clip_frac/low": sum(lows) / count,
        "clip_frac/high": sum(highs) / count,
        "clip_frac": (sum(lows) + sum(highs) + sum(duals)) / count,
    }
    if cfg.dual_clip is not None:
        metrics["clip_frac/dual"] = sum(duals) / count
    if ref is not None:
        metrics["kl"] = sum(k3s) / count
    rows = [adv[i] for i in range(B_) if n[i] > 0]
    if rows:
        metrics["advantage/mean"] = float(np.mean(rows))
        metrics["advantage/std"] = float(np.std(rows))
        metrics["advantage/min"] = float(np.min(rows))
        metrics["advantage/max"] = float(np.max(rows))
    return pol + kl_part, grad, metrics


# --------------------------------------------------------------------------------------------
# Fixed inputs
# --------------------------------------------------------------------------------------------


def make_inputs(seed=0, noise=0.3):
    rng = np.random.default_rng(seed)
    old = rng.uniform(-3.0, -0.05, (B, T)).astype(np.float32)
    new = (old + noise * rng.standard_normal((B, T))).astype(np.float32)
    ref = (old + 0.4 * rng.standard_normal((B, T))).astype(np.float32)
    # lengths: full, 0, 1, and assorted; row 5 is fully masked.
    lengths = np.array([T, 0, 1, 4, 6, 0, 3, T, 2, 5, 1, T])
    mask = np.arange(T)[None, :] < lengths[:, None]
    rewards = rng.integers(0, 3, (P, G)).astype(np.float32) * 0.5
    rewards[1, :] = 1.0  # an all-equal group
    truncated = lengths == T
    return SimpleNamespace(
        old=old, new=new, ref=ref, mask=mask, rewards=rewards, truncated=truncated
    )


INPUTS = make_inputs()
ADV = np.asarray(grpo.group_advantages(jnp.asarray(INPUTS.rewards))).reshape(-1)
# an advantage per row that does not come from a group, so that every sign and size shows up
# (alternating signs, so that every clip region, dual-clip included, is visited)
ADV_RANDOM = (
    np.abs(np.random.default_rng(1).standard_normal(B)) * np.where(np.arange(B) % 2 == 0, 1, -1)
).astype(np.float32)


def _value_and_grad(cfg):
    def f(new, old, ref, adv, mask, truncated, rewards):
        return grpo.grpo_loss(
            new, old, ref, adv, mask, config=cfg, truncated=truncated, rewards=rewards
        )

    return jax.value_and_grad(f, has_aux=True)


@functools.cache
def _compiled(cfg):
    """One compiled value-and-grad per config (None arguments are empty pytrees to jit)."""
    return jax.jit(_value_and_grad(cfg))


def jax_loss_and_grad(cfg, inputs, adv, with_ref=True, truncated=None, rewards=None, jit=False):
    """Loss, d loss / d logp_new and metrics. Eager by default: on these tiny arrays op-by-op
    dispatch (whose per-op compiles are shared by every config) is ~20x cheaper than compiling
    each config; `test_jit_matches_eager` checks that the compiled program agrees."""
    fn = _compiled(cfg) if jit else _value_and_grad(cfg)
    (loss, metrics), grad = fn(
        jnp.asarray(inputs.new),
        jnp.asarray(inputs.old),
        jnp.asarray(inputs.ref) if with_ref else None,
        jnp.asarray(adv),
        jnp.asarray(inputs.mask),
        None if truncated is None else jnp.asarray(truncated),
        None if rewards is None else jnp.asarray(rewards),
    )
    return loss, grad, metrics


def _configs():
    out = []
    for level, agg, dual, beta in itertools.product(
        ("token", "sequence"),
        ("sequence_mean", "token_mean", "constant"),
        (False, True),
        (0.0, 0.04),
    ):
        # GSPO clips far tighter than token-level GRPO (its paper: 3e-4 / 4e-4)
        eps = (0.2, 0.28) if level == "token" else (0.03, 0.04)
        out.append(
            GRPOLossConfig(
                eps_low=eps[0],
                eps_high=eps[1],
                dual_clip=(1.5 if level == "token" else 1.2) if dual else None,
                beta=beta,
                ratio_level=level,
                aggregation=agg,
                max_length=10,
            )
        )
    return out


CONFIGS = _configs()


def _id(cfg):
    return f"{cfg.ratio_level}-{cfg.aggregation}-dual{cfg.dual_clip}-beta{cfg.beta}"


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


# --------------------------------------------------------------------------------------------
# Agreement with TRL's GRPOTrainer._compute_loss (its own code, driven through a stub trainer)
# --------------------------------------------------------------------------------------------


def _trl_loss(inputs, adv, *, loss_type, level, beta, eps_low, eps_high, delta, max_len):
    """Runs TRL's `_compute_loss` on given per-token log-probs; returns loss, grad, metrics."""
    import torch as torch
    import trl.trainer.grpo_trainer as grpo_trainer
    trainer = grpo_trainer.GRPOTrainer.__new__(grpo_trainer.GRPOTrainer)
    new = torch.tensor(inputs.new, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor(inputs.mask.astype(np.int64))

    def fake_logps(*args, **kwargs):  # stands in for the model forward
        return new, torch.zeros_like(new), None

    trainer._get_per_token_logps_and_entropies = fake_logps
    identity = lambda x, **kw: x  # noqa: E731 one process: gather/reduce are the identity
    trainer.accelerator = SimpleNamespace(
        gather=identity, gather_for_metrics=identity, reduce=identity, num_processes=1
    )
    trainer.model = SimpleNamespace(training=True)
    trainer.args = SimpleNamespace(
        use_bias_correction_kl=False, delta=delta, steps_per_generation=1
    )
    trainer.current_gradient_accumulation_steps = 1
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    for name, value in dict(
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level=level,
        beta=beta,
        loss_type=loss_type,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        _entropy_bonus_enabled=False,
        aux_loss_enabled=False,
        max_completion_length=max_len,
    ).items():
        setattr(trainer, name, value)
    batch = {
        "prompt_ids": torch.zeros((B, 2), dtype=torch.long),
        "prompt_mask": torch.ones((B, 2), dtype=torch.long),
        "completion_ids": torch.zeros((B, T), dtype=torch.long),
        "completion_mask": mask,
        "advantages": torch.tensor(adv, dtype=torch.float64),
        "old_per_token_logps": torch.tensor(inputs.old, dtype=torch.float64),
        "ref_per_token_logps": torch.tensor(inputs.ref, dtype=torch.float64),
        "num_items_in_batch": mask.sum(),
    }
    loss = trainer._compute_loss(None, batch)
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return float(loss.detach()), new.grad.numpy(), metrics


TRL_CASES = [
    # (TRL loss_type, importance_sampling_level, r1 aggregation, r1 ratio_level, beta, eps, delta)
    ("grpo", "token", "sequence_mean", "token", 0.0, (0.2, 0.2), None),
    ("grpo", "token", "sequence_mean", "token", 0.04, (0.2, 0.28), None),
    ("dapo", "token", "token_mean", "token", 0.0, (0.2, 0.28), None),
    ("bnpo", "token", "token_mean", "token", 0.04, (0.2, 0.2), 1.5),
    ("dr_grpo", "token", "constant", "token", 0.04, (0.2, 0.28), None),
    ("grpo", "sequence", "sequence_mean", "sequence", 0.04, (0.05, 0.08), 1.3),
]


@pytest.mark.parametrize("case", TRL_CASES, ids=lambda c: f"{c[0]}-{c[1]}-beta{c[4]}-d{c[6]}")
def test_agrees_with_trl_compute_loss(case):
    loss_type, level, agg, r1_level, beta, (eps_low, eps_high), delta = case
    # TRL counts rows without valid tokens in its means; r1 leaves them out (docs/grpo.md),
    # so the comparison uses rows that all have at least one token.
    x = SimpleNamespace(**vars(INPUTS))
    x.mask = INPUTS.mask.copy()
    x.mask[:, 0] = True
    trl_loss, trl_grad, trl_metrics = _trl_loss(
        x,
        ADV_RANDOM,
        loss_type=loss_type,
        level=level,
        beta=beta,
        eps_low=eps_low,
        eps_high=eps_high,
        delta=delta,
        max_len=T,
    )
    cfg = GRPOLossConfig(
        eps_low=eps_low,
        eps_high=eps_high,
        dual_clip=delta,
        beta=beta,
        ratio_level=r1_level,
        aggregation=agg,
        max_length=T,
    )
    loss, grad, metrics = jax_loss_and_grad(cfg, x, ADV_RANDOM, with_ref=beta != 0)
    np.testing.assert_allclose(float(loss), trl_loss, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(np.asarray(grad), trl_grad, atol=ATOL, rtol=RTOL)
    if level == "token":  # TRL's sequence-level clip ratio is a fraction of sequences, ours of
        # tokens (each token of a clipped sequence counts), see docs/grpo.md
        np.testing.assert_allclose(
            float(metrics["clip_frac/low"]), trl_metrics["clip_ratio/low_mean"], atol=1e-6
        )
        np.testing.assert_allclose(
            float(metrics["clip_frac/high"]), trl_metrics["clip_ratio/high_mean"], atol=1e-6
        )
    if beta:
        np.testing.assert_allclose(float(metrics["kl"]), trl_metrics["kl"], atol=ATOL, rtol=RTOL)


def test_group_advantages_std_matches_trl_nanstd():
    import torch as torch
    import trl.trainer.utils as trl_utils
    rng = np.random.default_rng(11)
    rewards = rng.standard_normal((4, 8)).astype(np.float32)
    r = torch.tensor(rewards, dtype=torch.float64)
    # TRL scale_rewards="group": (r - group mean) / (nanstd(group) + 1e-4), nanstd unbiased
    trl_group = (r - r.mean(1, keepdim=True)) / (trl_utils.nanstd(r, dim=1).unsqueeze(1) + 1e-4)
    # TRL scale_rewards="batch": group mean, batch std
    trl_batch = (r - r.mean(1, keepdim=True)) / (trl_utils.nanstd(r) + 1e-4)
    ours_group = grpo.group_advantages(jnp.asarray(rewards), method="std")
    ours_batch = grpo.group_advantages(jnp.asarray(rewards), method="batch_std")
    np.testing.assert_allclose(np.asarray(ours_group), trl_group.numpy(), atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(np.asarray(ours_batch), trl_batch.numpy(), atol=ATOL, rtol=RTOL)


def test_config_is_hashable_and_frozen():
    cfg = GRPOLossConfig()
    assert hash(cfg) == hash(GRPOLossConfig())
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.beta = 1.0  # type: ignore[misc]
