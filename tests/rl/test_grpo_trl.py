"""GRPO losses and advantages against TRL's own code (`GRPOTrainer._compute_loss` driven through
a stub trainer, no model; `nanstd`), on the fixed inputs of tests/rl/grpo_reference.py."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest
from grpo_reference import ADV_RANDOM, ATOL, INPUTS, RTOL, B, T, jax_loss_and_grad

from r1.rl import grpo
from r1.rl.grpo import GRPOLossConfig

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
