"""GRPO math as pure, jittable functions: group advantages, the clipped policy loss and its
published variants (clip-higher, dual-clip, k3 KL, GSPO sequence ratio, DAPO / Dr. GRPO
aggregation), masks, and the log-prob / entropy helpers.

Shape letters: P prompts, G completions per prompt (group size), T completion length (padded to
a static bucket), V vocabulary. Rows are flattened prompt-major: B = P * G and row
``b = p * G + g`` holds completion g of prompt p, i.e. ``x_PxG.reshape(P * G)`` and
``x_B.reshape(P, G)``. Per-token arrays are ``[B, T]``; position t is completion token t (the
prompt is not part of these arrays). Masks are explicit arrays (nonzero / True = valid token).

The loss is written for *minimisation* (it is minus the GRPO objective). See ``docs/grpo.md`` for
every option with its formula, paper and config name.

Typical use::

    adv_PxG = group_advantages(rewards_PxG, method="std")
    loss, metrics = grpo_loss(
        logp_new_BxT, logp_old_BxT, logp_ref_BxT, adv_PxG.reshape(-1), mask_BxT,
        config=GRPOLossConfig(eps_low=0.2, eps_high=0.28, beta=0.001),
        rewards=rewards_PxG, truncated=truncated_B,
    )
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp

from r1.rl.logprobs import check_rank as _check_rank
from r1.rl.logprobs import (  # re-exported: the log-prob helpers' historical home
    chunked_token_logprobs as chunked_token_logprobs,
)
from r1.rl.logprobs import entropy_from_logits as entropy_from_logits
from r1.rl.logprobs import token_logprobs as token_logprobs

AdvantageMethod = Literal["std", "none", "batch_std", "leave_one_out"]
RatioLevel = Literal["token", "sequence"]
Aggregation = Literal["sequence_mean", "token_mean", "constant"]

ADVANTAGE_METHODS: tuple[str, ...] = ("std", "none", "batch_std", "leave_one_out")
RATIO_LEVELS: tuple[str, ...] = ("token", "sequence")
AGGREGATIONS: tuple[str, ...] = ("sequence_mean", "token_mean", "constant")
ROLLOUT_CORRECTIONS: tuple[str, ...] = ("none", "tis", "mis", "sequence")


# --------------------------------------------------------------------------------------------
# Advantages and reward-side helpers
# --------------------------------------------------------------------------------------------


def _std(centered: jax.Array, count: jax.Array, ddof: int, axis: int | None) -> jax.Array:
    """sqrt(sum(centered^2) / (count - ddof)); 0 where count - ddof <= 0 (no NaN)."""
    dof = count - ddof
    ss = jnp.sum(jnp.square(centered), axis=axis, keepdims=axis is not None)
    return jnp.sqrt(jnp.where(dof > 0, ss / jnp.maximum(dof, 1.0), 0.0))


def group_advantages(
    rewards: jax.Array,
    *,
    method: AdvantageMethod = "std",
    eps: float = 1e-4,
    std_ddof: int = 1,
    valid_mask: jax.Array | None = None,
) -> jax.Array:
    """Outcome advantages from group rewards.

    Args:
      rewards: float32[P, G], reward of completion g of prompt p.
      method: with mean_p, std_p the mean / standard deviation of group p's valid rewards:
        - ``"std"`` (GRPO, DeepSeekMath): ``(r - mean_p) / (std_p + eps)``.
        - ``"none"`` (Dr. GRPO): ``r - mean_p``.
        - ``"batch_std"`` (LitePPO / TRL ``scale_rewards="batch"``): ``(r - mean_p) /
          (std_batch + eps)``, std_batch over all valid rewards of the batch.
        - ``"leave_one_out"`` (RLOO): ``r_i - mean_{j != i} r_j = n/(n-1) (r_i - mean_p)``
          with n the group's valid count; no std scaling.
      eps: added to the std (TRL uses 1e-4).
      std_ddof: delta degrees of freedom of the std: 1 = unbiased sample std (torch ``.std``,
        TRL's default, the default here), 0 = population std. A group with ``count <= ddof``
        has std 0.
      valid_mask: optional bool[P, G]; invalid entries (e.g. unscorable completions or padding
        prompts) are left out of every mean/std and get advantage 0.

    Returns:
      float32[P, G]. A group whose valid rewards are all equal gets exactly 0 (never NaN).
    """
    _check_rank("rewards", rewards, 2, "P, G")
    if method not in ADVANTAGE_METHODS:
        raise ValueError(f"method: expected one of {ADVANTAGE_METHODS}, got {method!r}")
    if std_ddof < 0:
        raise ValueError(f"std_ddof: expected >= 0, got {std_ddof}")
    r = rewards.astype(jnp.float32)
    if valid_mask is None:
        valid = jnp.ones(r.shape, jnp.bool_)
    else:
        if valid_mask.shape != r.shape:
            raise ValueError(f"valid_mask: expected shape {r.shape}, got {valid_mask.shape}")
        valid = valid_mask.astype(jnp.bool_)
    count = jnp.sum(valid.astype(jnp.float32), axis=1, keepdims=True)  # [P, 1]
    mean = jnp.sum(jnp.where(valid, r, 0.0), axis=1, keepdims=True) / jnp.maximum(count, 1.0)
    centered = jnp.where(valid, r - mean, 0.0)
    if method == "std":
        adv = centered / (_std(centered, count, std_ddof, axis=1) + eps)
    elif method == "none":
        adv = centered
    elif method == "batch_std":
        total = jnp.sum(count)
        batch_mean = jnp.sum(jnp.where(valid, r, 0.0)) / jnp.maximum(total, 1.0)
        batch_centered = jnp.where(valid, r - batch_mean, 0.0)
        adv = centered / (_std(batch_centered, total, std_ddof, axis=None) + eps)
    else:  # leave_one_out
        adv = centered * (count / jnp.maximum(count - 1.0, 1.0))
    return jnp.where(valid, adv, 0.0)


def zero_variance_groups(rewards: jax.Array, valid_mask: jax.Array | None = None) -> jax.Array:
    """bool[P]: True where all valid rewards of the group are exactly equal (including groups
    with fewer than two valid entries). These groups carry no GRPO signal; DAPO's dynamic sampling
    drops them.

    rewards: float32[P, G]; valid_mask: optional bool[P, G].
    """
    _check_rank("rewards", rewards, 2, "P, G")
    r = rewards.astype(jnp.float32)
    valid = jnp.ones(r.shape, jnp.bool_) if valid_mask is None else valid_mask.astype(jnp.bool_)
    hi = jnp.max(jnp.where(valid, r, -jnp.inf), axis=1)
    lo = jnp.min(jnp.where(valid, r, jnp.inf), axis=1)
    return jnp.logical_or(hi <= lo, jnp.sum(valid.astype(jnp.int32), axis=1) < 2)


def overlong_penalty(lengths: jax.Array, *, max_length: int, cache_length: int) -> jax.Array:
    """DAPO soft overlong punishment, a reward term added to the task reward.

    ``0`` for ``len <= max_length - cache_length``; ``((max_length - cache_length) - len) /
    cache_length`` (linear from 0 down to -1) for ``max_length - cache_length < len <=
    max_length``; ``-1`` beyond ``max_length``.

    lengths: int[...] completion lengths in tokens -> float32[...].
    """
    if cache_length <= 0 or cache_length > max_length:
        raise ValueError(
            f"cache_length: expected 0 < cache_length <= max_length={max_length}, "
            f"got {cache_length}"
        )
    length = lengths.astype(jnp.float32)
    start = float(max_length - cache_length)
    linear = (start - length) / float(cache_length)
    return jnp.where(
        length <= start, 0.0, jnp.where(length <= float(max_length), linear, -1.0)
    ).astype(jnp.float32)


# --------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GRPOLossConfig:
    """Static options of :func:`grpo_loss` (hashable, so it can be a jit static argument).

    Attributes:
      eps_low: lower clip, ratio clipped at ``1 - eps_low`` (GRPO/PPO: 0.2).
      eps_high: upper clip, ratio clipped at ``1 + eps_high`` (DAPO clip-higher: 0.28; the
        first R1 RL stage used 10; GSPO uses 3e-4 / 4e-4 with ``ratio_level="sequence"``).
      dual_clip: ``None`` or c > 1: for A < 0 the per-token loss is capped at ``-c * A``
        (dual-clip PPO, Ye et al. 2020; equals TRL's ``delta`` when c > 1 + eps_high).
      beta: coefficient of the k3 KL to the reference policy; 0 drops the term and
        ``logp_ref`` may be ``None`` (DeepSeekMath 0.04, R1 0.001, TRL/DAPO 0).
      ratio_level: ``"token"`` (GRPO: one ratio per token) or ``"sequence"`` (GSPO: geometric
        mean of the token ratios of a completion, clipped per sequence).
      aggregation: ``"sequence_mean"`` (GRPO paper), ``"token_mean"`` (DAPO) or ``"constant"``
        (Dr. GRPO, needs ``max_length``); see :func:`loss_denominator`.
      max_length: the constant L of ``aggregation="constant"`` (the maximum completion
        length); ignored otherwise.
      mask_truncated: DAPO overlong filtering: rows flagged in ``truncated`` are left out of the
        loss (and of the denominators).
      drop_zero_variance_groups: DAPO dynamic sampling with static shapes: groups whose rewards
        are all equal are left out of the loss (and of the denominators); needs ``rewards``.
      rollout_correction: how the policy term corrects for the sampler's log-probs differing
        from the trainer's at the same parameters (:func:`rollout_correction_weights`):
        ``"none"``, ``"tis"`` (token weights min(w, C)), ``"mis"`` (tokens with w > C masked out
        of the policy term) or ``"sequence"`` (the geometric-mean sequence weight, truncated at
        C); needs ``logp_sampler``, and ``logp_old`` is then the trainer's log-probs.
      rollout_correction_cap: C (> 1).
    """

    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: float | None = None
    beta: float = 0.0
    ratio_level: RatioLevel = "token"
    aggregation: Aggregation = "sequence_mean"
    max_length: int | None = None
    mask_truncated: bool = False
    drop_zero_variance_groups: bool = False
    rollout_correction: str = "none"
    rollout_correction_cap: float = 2.0

    def __post_init__(self) -> None:
        if self.rollout_correction not in ROLLOUT_CORRECTIONS:
            raise ValueError(
                f"rollout_correction: expected one of {ROLLOUT_CORRECTIONS}, got "
                f"{self.rollout_correction!r}"
            )
        if not self.rollout_correction_cap > 1.0:
            raise ValueError(
                f"rollout_correction_cap: expected > 1, got {self.rollout_correction_cap}"
            )
        if not 0.0 <= self.eps_low < 1.0:
            raise ValueError(f"eps_low: expected 0 <= eps_low < 1, got {self.eps_low}")
        if self.eps_high < 0.0:
            raise ValueError(f"eps_high: expected >= 0, got {self.eps_high}")
        if self.dual_clip is not None and not self.dual_clip > 1.0:
            raise ValueError(f"dual_clip: expected None or a value > 1, got {self.dual_clip}")
        if self.beta < 0.0:
            raise ValueError(f"beta: expected >= 0, got {self.beta}")
        if self.ratio_level not in RATIO_LEVELS:
            raise ValueError(
                f"ratio_level: expected one of {RATIO_LEVELS}, got {self.ratio_level!r}"
            )
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(
                f"aggregation: expected one of {AGGREGATIONS}, got {self.aggregation!r}"
            )
        if self.aggregation == "constant" and (self.max_length is None or self.max_length <= 0):
            raise ValueError(
                f"max_length: aggregation='constant' needs a positive max_length, "
                f"got {self.max_length}"
            )


def effective_mask(
    completion_mask: jax.Array,
    *,
    config: GRPOLossConfig,
    truncated: jax.Array | None = None,
    rewards: jax.Array | None = None,
) -> jax.Array:
    """The token mask the loss uses, bool[B, T]: ``completion_mask`` minus truncated rows
    (``config.mask_truncated``) minus rows of zero-variance groups
    (``config.drop_zero_variance_groups``). Shapes stay static: rows are masked, never removed.

    completion_mask: bool[B, T]; truncated: bool[B] (no EOS within the length budget);
    rewards: float32[P, G] with P * G == B (prompt-major rows).
    """
    _check_rank("completion_mask", completion_mask, 2, "B, T")
    mask = completion_mask.astype(jnp.bool_)
    B = mask.shape[0]
    if config.mask_truncated:
        if truncated is None:
            raise ValueError("truncated: config.mask_truncated=True needs truncated bool[B]")
        if truncated.shape != (B,):
            raise ValueError(f"truncated: expected shape ({B},), got {truncated.shape}")
        mask = jnp.logical_and(mask, jnp.logical_not(truncated.astype(jnp.bool_))[:, None])
    if config.drop_zero_variance_groups:
        if rewards is None:
            raise ValueError("rewards: config.drop_zero_variance_groups=True needs rewards [P, G]")
        keep_P = jnp.logical_not(zero_variance_groups(rewards))
        keep_B = _rows_from_groups(keep_P, rewards, B)
        mask = jnp.logical_and(mask, keep_B[:, None])
    return mask


def _check_groups(rewards: jax.Array, B: int) -> int:
    """Validates rewards float32[P, G] against B rows; returns G."""
    _check_rank("rewards", rewards, 2, "P, G")
    P, G = rewards.shape
    if P * G != B:
        raise ValueError(f"rewards: expected shape [P, G] with P * G == B={B}, got {rewards.shape}")
    return G


def _rows_from_groups(x_P: jax.Array, rewards: jax.Array, B: int) -> jax.Array:
    """x[P] -> x[B], each group value repeated over its G prompt-major rows."""
    return jnp.repeat(x_P, _check_groups(rewards, B), total_repeat_length=B)


def loss_denominator(mask: jax.Array, *, config: GRPOLossConfig) -> jax.Array:
    """The float32 scalar the summed loss is divided by, for ``mask`` bool[B, T] (the
    :func:`effective_mask`). With n_i = sum_t mask[i, t] and N_seq = #{i : n_i > 0}:

    - ``sequence_mean``: N_seq  (numerator: sum_i (1/n_i) sum_t l_it)
    - ``token_mean``:    sum_i n_i  (numerator: sum_i sum_t l_it)
    - ``constant``:      N_seq * max_length  (numerator: sum_i sum_t l_it)

    each at least 1. Rows with no valid token (length 0, filtered) are not counted. When a batch
    is split into mini-batches, compute this once on the whole batch and pass it to every
    :func:`grpo_loss` call as ``denominator`` so the mini-batch gradients add up to the
    full-batch gradient.
    """
    _check_rank("mask", mask, 2, "B, T")
    mf = mask.astype(jnp.float32)
    n_seq = jnp.sum((jnp.sum(mf, axis=1) > 0).astype(jnp.float32))
    if config.aggregation == "token_mean":
        return jnp.maximum(jnp.sum(mf), 1.0)
    if config.aggregation == "sequence_mean":
        return jnp.maximum(n_seq, 1.0)
    return jnp.maximum(n_seq, 1.0) * float(config.max_length)


def _aggregate(per_token: jax.Array, mf: jax.Array, config: GRPOLossConfig) -> jax.Array:
    """The numerator of the aggregation (see loss_denominator)."""
    summed = jnp.sum(per_token * mf, axis=1)  # [B]
    if config.aggregation == "sequence_mean":
        return jnp.sum(summed / jnp.maximum(jnp.sum(mf, axis=1), 1.0))
    return jnp.sum(summed)


def _masked_mean(x: jax.Array, mf: jax.Array) -> jax.Array:
    return jnp.sum(x * mf) / jnp.maximum(jnp.sum(mf), 1.0)


def grpo_loss(
    logp_new: jax.Array,
    logp_old: jax.Array,
    logp_ref: jax.Array | None,
    advantages: jax.Array,
    completion_mask: jax.Array,
    *,
    config: GRPOLossConfig,
    truncated: jax.Array | None = None,
    rewards: jax.Array | None = None,
    denominator: jax.Array | float | None = None,
    logp_sampler: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The GRPO loss (minus the objective) and its metrics.

    Per valid token (i, t), with A_i the advantage of row i and r_it the ratio:

    - token ratio: ``r_it = exp(logp_new_it - logp_old_it)``;
      sequence ratio (GSPO): ``s_i = exp(mean_t (logp_new_it - logp_old_it))`` in the GSPO-token
      stop-gradient form ``r_it = sg[s_i] * exp(logp_new_it - sg[logp_new_it])`` (value s_i,
      gradient s_i * grad logp_new_it; identical to differentiating s_i directly whenever A is
      per sequence, for every aggregation here);
    - policy term ``pg_it = -min(r_it A_i, clip(r_it, 1 - eps_low, 1 + eps_high) A_i)``; with
      ``dual_clip=c`` and A_i < 0: ``pg_it = min(pg_it, -c A_i)``;
    - KL term (beta > 0): ``k3_it = exp(d) - d - 1`` with ``d = logp_ref_it - logp_new_it``;
    - ``loss = aggregate(pg + beta * k3)`` (see :func:`loss_denominator`).

    ``logp_old`` is treated as a constant (stop-gradient). With one inner update (mu = 1) pass
    ``logp_old = jax.lax.stop_gradient(logp_new)``: the ratio is 1 and the gradient is the
    policy gradient ``-sum_it w_it A_i grad logp_new_it`` (w_it the aggregation weight).

    Args:
      logp_new: float32[B, T] log-probs of the completion tokens under the policy being trained.
      logp_old: float32[B, T] log-probs under the sampling policy pi_old.
      logp_ref: float32[B, T] log-probs under the reference policy, or None when beta == 0 (it
        is then never read). When given with beta == 0 the KL is still reported as a metric.
      advantages: float32[B], one per completion (``group_advantages(...).reshape(-1)``).
      completion_mask: bool[B, T], True on completion tokens (including EOS), False on padding.
        Values at masked positions (even inf/NaN) never reach the loss or its gradient.
      config: a :class:`GRPOLossConfig`.
      truncated: optional bool[B], completions cut at the length budget (needed when
        ``config.mask_truncated``; also gives the ``truncated_frac`` metric).
      rewards: optional float32[P, G], P * G == B (needed when
        ``config.drop_zero_variance_groups``; also gives ``zero_variance_group_frac``).
      denominator: optional override of :func:`loss_denominator` (for mini-batching).
      logp_sampler: float32[B, T] the sampler's log-probs of the same tokens, with
        ``config.rollout_correction`` != "none" (``logp_old`` is then the trainer's, at the
        sampling parameters): each token's policy term is multiplied by its
        :func:`rollout_correction_weights` (a constant), and ``rollout_correction/capped_frac``
        reports the share of valid tokens (``"sequence"``: of rows) the cap acted on.

    Returns:
      ``(loss, metrics)``: loss is a float32 scalar; metrics (float32 scalars):
      ``loss`` (= ``loss/policy`` + ``loss/kl``), ``loss/policy``, ``loss/kl`` (beta times the
      aggregated k3); ``kl`` (mean k3 over valid tokens, when logp_ref is given); ``ratio/mean``
      (mean r_it over valid tokens); ``clip_frac/low`` (fraction of valid tokens with
      r < 1 - eps_low and A < 0), ``clip_frac/high`` (r > 1 + eps_high and A > 0),
      ``clip_frac/dual`` (dual_clip only: r > c and A < 0), ``clip_frac`` (their sum: the
      fraction of valid tokens whose policy gradient is cut off by a clip);
      ``advantage/mean|std|min|max`` over rows with at least one valid token (population std);
      ``valid_token_frac``; ``zero_variance_group_frac`` (with rewards); ``truncated_frac``
      (with truncated).
    """
    _check_loss_inputs(logp_new, logp_old, logp_ref, advantages, completion_mask, config)
    mask = effective_mask(completion_mask, config=config, truncated=truncated, rewards=rewards)
    mf = mask.astype(jnp.float32)
    # Sanitise masked positions first, so padding garbage cannot make NaN values or gradients.
    new = jnp.where(mask, logp_new.astype(jnp.float32), 0.0)
    old = jax.lax.stop_gradient(jnp.where(mask, logp_old.astype(jnp.float32), 0.0))
    ratio = importance_ratio(new, old, mf, config.ratio_level)

    adv = advantages.astype(jnp.float32)[:, None]  # [B, 1]
    lo, hi = 1.0 - config.eps_low, 1.0 + config.eps_high
    pg = -jnp.minimum(ratio * adv, jnp.clip(ratio, lo, hi) * adv)
    if config.dual_clip is not None:
        pg = jnp.where(adv < 0.0, jnp.minimum(pg, -config.dual_clip * adv), pg)
    correction_metrics = {}
    if config.rollout_correction != "none":
        if logp_sampler is None:
            raise ValueError(
                f"logp_sampler: rollout_correction={config.rollout_correction!r} needs the "
                "sampler's log-probs, got None"
            )
        weights, capped = rollout_correction_weights(
            old,
            logp_sampler,
            mask,
            mode=config.rollout_correction,
            cap=config.rollout_correction_cap,
        )
        pg = pg * weights
        correction_metrics["rollout_correction/capped_frac"] = capped

    denom = loss_denominator(mask, config=config) if denominator is None else denominator
    policy_loss = _aggregate(pg, mf, config) / denom

    metrics: dict[str, jax.Array] = {}
    kl_loss = jnp.zeros((), jnp.float32)
    if logp_ref is not None:
        k3 = _k3(new, logp_ref, mask, with_gradient=config.beta != 0.0)
        metrics["kl"] = jax.lax.stop_gradient(_masked_mean(k3, mf))
        if config.beta != 0.0:
            kl_loss = config.beta * _aggregate(k3, mf, config) / denom
    loss = policy_loss + kl_loss

    sg = jax.lax.stop_gradient
    metrics.update(
        {
            "loss": sg(loss),
            "loss/policy": sg(policy_loss),
            "loss/kl": sg(kl_loss),
            "ratio/mean": _masked_mean(sg(ratio), mf),
        }
    )
    metrics.update(_clip_metrics(sg(ratio), adv, mf, lo, hi, config.dual_clip))
    metrics.update(correction_metrics)
    metrics.update(_advantage_metrics(sg(advantages.astype(jnp.float32)), mf))
    if rewards is not None:
        _check_groups(rewards, logp_new.shape[0])
        metrics["zero_variance_group_frac"] = jnp.mean(
            zero_variance_groups(rewards).astype(jnp.float32)
        )
    if truncated is not None:
        metrics["truncated_frac"] = jnp.mean(truncated.astype(jnp.float32))
    return loss, metrics


def _check_loss_inputs(logp_new, logp_old, logp_ref, advantages, completion_mask, config):
    """Shape checks of `grpo_loss`'s arguments (errors name the argument)."""
    _check_rank("logp_new", logp_new, 2, "B, T")
    shape = logp_new.shape
    for name, x in (("logp_old", logp_old), ("completion_mask", completion_mask)):
        if x.shape != shape:
            raise ValueError(f"{name}: expected shape {shape} like logp_new, got {x.shape}")
    if advantages.shape != (shape[0],):
        raise ValueError(
            f"advantages: expected shape ({shape[0]},) (one per completion row), got "
            f"{advantages.shape}"
        )
    if config.beta != 0.0 and logp_ref is None:
        raise ValueError(f"logp_ref: beta={config.beta} needs reference log-probs, got None")
    if logp_ref is not None and logp_ref.shape != shape:
        raise ValueError(f"logp_ref: expected shape {shape}, got {logp_ref.shape}")


def rollout_correction_weights(
    logp_train: jax.Array,
    logp_sampler: jax.Array,
    mask: jax.Array,
    *,
    mode: str,
    cap: float,
) -> tuple[jax.Array, jax.Array]:
    """Importance weights float32[B, T] that correct a policy term for the sampler's numerics,
    and the share the cap acted on (float32[]).

    With ``log w_it = logp_train_it - logp_sampler_it`` (the trainer's and the sampler's
    log-probs of token t of row i at the same parameters, both constants here; 0 where `mask`
    is False) and C = `cap`:

    - ``"none"``: 1 everywhere; share 0.
    - ``"tis"`` (truncated IS, token level): ``min(w_it, C)``; share: valid tokens with w > C.
    - ``"mis"`` (masked IS): 1 where ``w_it <= C``, 0 where it exceeds C (the token leaves the
      policy term; denominators stay); share: valid tokens masked.
    - ``"sequence"``: ``min(exp(mean_t log w_it), C)`` on every token of row i (the geometric
      mean of its token weights, truncated); share: rows with a valid token that were capped.

    Padding and fully masked rows get weight 1 (they never reach a loss). mask: bool[B, T].
    """
    if mode not in ROLLOUT_CORRECTIONS:
        raise ValueError(f"rollout correction: expected one of {ROLLOUT_CORRECTIONS}, got {mode!r}")
    _check_rank("logp_train", logp_train, 2, "B, T")
    if logp_sampler.shape != logp_train.shape or mask.shape != logp_train.shape:
        raise ValueError(
            f"logp_sampler / mask: expected shape {logp_train.shape}, got "
            f"{logp_sampler.shape} / {mask.shape}"
        )
    mask = mask.astype(bool)
    mf = mask.astype(jnp.float32)
    sg = jax.lax.stop_gradient
    log_w = sg(jnp.where(mask, logp_train.astype(jnp.float32) - logp_sampler, 0.0))
    log_cap = math.log(cap)
    if mode == "none":
        return jnp.ones_like(log_w), jnp.zeros((), jnp.float32)
    if mode == "sequence":
        tokens = jnp.sum(mf, axis=1, keepdims=True)
        seq_log_w = jnp.sum(log_w, axis=1, keepdims=True) / jnp.maximum(tokens, 1.0)
        weights = jnp.broadcast_to(jnp.exp(jnp.minimum(seq_log_w, log_cap)), log_w.shape)
        has_tokens = (tokens[:, 0] > 0).astype(jnp.float32)
        capped = (seq_log_w[:, 0] > log_cap).astype(jnp.float32) * has_tokens
        return weights, jnp.sum(capped) / jnp.maximum(jnp.sum(has_tokens), 1.0)
    over = log_w > log_cap
    if mode == "tis":
        weights = jnp.exp(jnp.minimum(log_w, log_cap))
    else:
        weights = jnp.where(over, 0.0, 1.0)
    return weights, _masked_mean(over.astype(jnp.float32), mf)


def importance_ratio(new: jax.Array, old: jax.Array, mf: jax.Array, level: str) -> jax.Array:
    """float32[B, T] ratios pi / pi_old from sanitised log-probs `new`, `old` (0 where masked)
    and the float mask `mf`. level "token": ``exp(new - old)``; "sequence" (GSPO): the
    sequence ratio ``s_i = exp(mean_t (new - old))`` on every token, in the stop-gradient form
    ``sg[s_i] * exp(new - sg[new])`` (value s_i, gradient s_i * grad new)."""
    log_ratio = new - old  # [B, T]
    if level == "token":
        return jnp.exp(log_ratio)
    n_tok = jnp.maximum(jnp.sum(mf, axis=1, keepdims=True), 1.0)  # [B, 1]
    seq_log_ratio = jnp.sum(log_ratio * mf, axis=1, keepdims=True) / n_tok  # [B, 1]
    return jax.lax.stop_gradient(jnp.exp(seq_log_ratio)) * jnp.exp(new - jax.lax.stop_gradient(new))


def _k3(new: jax.Array, logp_ref: jax.Array, mask: jax.Array, with_gradient: bool) -> jax.Array:
    """float32[B, T] k3 = exp(d) - d - 1, d = ref - new (masked positions 0); without
    `with_gradient` (beta == 0, a monitor only) no gradient flows through it."""
    ref = jax.lax.stop_gradient(jnp.where(mask, logp_ref.astype(jnp.float32), 0.0))
    new_kl = new if with_gradient else jax.lax.stop_gradient(new)
    d = ref - new_kl
    return jnp.exp(d) - d - 1.0


def _clip_metrics(ratio, adv, mf, lo: float, hi: float, dual_clip: float | None) -> dict:
    """Fractions of valid tokens whose policy gradient a clip cuts off (`grpo_loss`)."""
    low = jnp.logical_and(ratio < lo, adv < 0.0).astype(jnp.float32)
    high = jnp.logical_and(ratio > hi, adv > 0.0).astype(jnp.float32)
    metrics = {
        "clip_frac/low": _masked_mean(low, mf),
        "clip_frac/high": _masked_mean(high, mf),
        "valid_token_frac": jnp.mean(mf),
    }
    clip = low + high
    if dual_clip is not None:
        dual = jnp.logical_and(ratio > dual_clip, adv < 0.0).astype(jnp.float32)
        metrics["clip_frac/dual"] = _masked_mean(dual, mf)
        clip = clip + dual
    metrics["clip_frac"] = _masked_mean(clip, mf)
    return metrics


def _advantage_metrics(a: jax.Array, mf: jax.Array) -> dict:
    """Mean / std (population) / min / max of advantages float32[B] over rows with a valid
    token (0 when there is none)."""
    row_f = (jnp.sum(mf, axis=1) > 0).astype(jnp.float32)  # [B]
    a_mean = _masked_mean(a, row_f)
    has_rows = jnp.sum(row_f) > 0
    return {
        "advantage/mean": a_mean,
        "advantage/std": jnp.sqrt(_masked_mean(jnp.square(a - a_mean), row_f)),
        "advantage/min": jnp.where(has_rows, jnp.min(jnp.where(row_f > 0, a, jnp.inf)), 0.0),
        "advantage/max": jnp.where(has_rows, jnp.max(jnp.where(row_f > 0, a, -jnp.inf)), 0.0),
    }
