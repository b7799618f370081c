"""Rule-based rewards for R1 training and the one reward spec that combines them with models.

    from r1 import rewards
    rewards.get("math")(prompts, completions, answer=gold)      # float32[B]
    spec = rewards.RewardSpec.from_config([("format_strict", 1.0, {}), ("math", 1.0, {})])
    result = spec(prompts, completions, answer=gold)            # .total .breakdown .failures
    scorer = spec.compile(tokenizer)                            # the GRPO step's scorer

See docs/rewards.md for every reward, its fields and its failure reasons, and the spec.
"""

from r1.rewards.base import Reward, get, names, register
from r1.rewards.spec import (
    CompiledSpec,
    RewardResult,
    RewardSpec,
    RewardTerm,
    ScorerOutput,
    decode_text_field,
    encode_text_fields,
    row_selector,
)

__all__ = [
    "CompiledSpec",
    "Reward",
    "RewardResult",
    "RewardSpec",
    "RewardTerm",
    "ScorerOutput",
    "decode_text_field",
    "encode_text_fields",
    "get",
    "names",
    "register",
    "row_selector",
]
