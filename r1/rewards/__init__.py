"""Rule-based rewards for R1 training: text rewards on the host, token rewards in jax.numpy.

    from r1 import rewards
    rewards.get("math")(prompts, completions, answer=gold)      # float32[B]
    spec = rewards.RewardSpec.from_config([("format_strict", 1.0, {}), ("math", 1.0, {})])
    result = spec(prompts, completions, answer=gold)            # .total .breakdown .failures

See docs/rewards.md for every reward, its fields and its failure reasons.
"""

from r1.rewards.base import (
    Reward,
    RewardResult,
    RewardSpec,
    RewardTerm,
    get,
    names,
    register,
)

__all__ = ["Reward", "RewardResult", "RewardSpec", "RewardTerm", "get", "names", "register"]
