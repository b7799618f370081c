"""Shared by the GRPO math tests (test_grpo_math.py, test_grpo_trl.py): an independent,
loop-based NumPy float64 reference of the GRPO losses (written from the formulas of DeepSeekMath,
DAPO, Dr. GRPO, GSPO and dual-clip PPO, one row and one token at a time, with analytic
derivatives), fixed inputs with the edge cases, the JAX side's loss-and-gradient helper and the
grid of loss configurations."""

from __future__ import annotations

import functools
import itertools
import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np

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


def np_grpo(new, old, ref, adv, mask, cfg, truncated=None, rewards=None, token_weights=None):
    """Returns (loss, dloss/dnew [B, T], metrics) in float64. token_weights: optional [B, T]
    constants multiplying each token's policy term (a rollout correction's weights)."""
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
        tw = np.ones(T_) if token_weights is None else np.asarray(token_weights, np.float64)[i]
        if cfg.ratio_level == "token":
            for t in toks:
                r = math.exp(new[i, t] - old[i, t])
                loss_t, dl_dr = np_surrogate(r, a, cfg)
                pol += w * tw[t] * loss_t
                grad[i, t] += w * tw[t] * dl_dr * r
                ratios.append(r)
        else:  # GSPO, the direct form: s_i = exp(mean log ratio), ds/dnew_t = s / n_i
            s = math.exp(sum(new[i, t] - old[i, t] for t in toks) / n[i])
            loss_s, dl_ds = np_surrogate(s, a, cfg)
            for t in toks:  # every token carries the sequence loss
                pol += w * tw[t] * loss_s
                if token_weights is None:
                    for u in toks:
                        grad[i, u] += w * dl_ds * s / n[i]
                else:  # GSPO-token form: token t's weight scales its own log-prob's gradient
                    grad[i, t] += w * tw[t] * dl_ds * s
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
