"""Reinforcement learning for r1: the GRPO math, the compiled step and the GRPO config.

    from r1 import rl
    exp = rl.parse(config)                                   # typed sections
    step = rl.make_grpo_step(graphdef, optimizer, exp.grpo_config(eos, pad), scorer, mesh,
                             state, batch)                   # sample -> reward -> update
    loss, metrics = rl.grpo_loss(logp, old_logp, ref_logp, adv, mask, config=loss_config)

The trainer (`r1.rl.trainer.train`) and the frozen-model rewards (`r1.rl.model_rewards`) are
imported from their modules. See docs/grpo.md.
"""

from r1.rl.config import GRPOExperiment, ModelRewardEntry, parse, rl_defaults
from r1.rl.grpo import (
    GRPOLossConfig,
    chunked_token_logprobs,
    effective_mask,
    entropy_from_logits,
    group_advantages,
    grpo_loss,
    loss_denominator,
    overlong_penalty,
    token_logprobs,
    zero_variance_groups,
)
from r1.rl.step import (
    GRPOConfig,
    Rollout,
    advantages,
    grpo_step_fn,
    make_grpo_step,
    policy_update,
    refresh_reference,
    rollout,
    score,
    step_metrics,
)

__all__ = [
    "GRPOConfig",
    "GRPOExperiment",
    "GRPOLossConfig",
    "ModelRewardEntry",
    "Rollout",
    "advantages",
    "chunked_token_logprobs",
    "effective_mask",
    "entropy_from_logits",
    "group_advantages",
    "grpo_loss",
    "grpo_step_fn",
    "loss_denominator",
    "make_grpo_step",
    "overlong_penalty",
    "parse",
    "policy_update",
    "refresh_reference",
    "rl_defaults",
    "rollout",
    "score",
    "step_metrics",
    "token_logprobs",
    "zero_variance_groups",
]
