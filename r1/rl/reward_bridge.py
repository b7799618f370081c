"""Temporary shim: the old `RewardBridge` API on top of `r1.rewards.RewardSpec.compile`.

r1/rl/trainer.py and r1/aot/programs.py still import `RewardBridge`, `encode_text_fields` and
`BYTES_SUFFIX` from here; this module goes away when they call the compiled spec
(`spec.compile(tokenizer)(completion, mask, truncated, fields, prompt_tokens, prompt_mask,
frozen)`). New code: `r1.rewards.spec`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from r1.rewards import RewardSpec, RewardTerm
from r1.rewards.term import BYTES_SUFFIX, encode_text_fields

__all__ = ["BYTES_SUFFIX", "RewardBridge", "encode_text_fields"]


class RewardBridge:
    """The step's `reward_fn(tokens, mask, truncated, fields) -> (total, parts, failures)`: the
    rule terms of a compiled `RewardSpec`. terms: (reward name, weight, kwargs) triples."""

    def __init__(self, terms: Sequence[tuple[str, float, Mapping[str, Any]]], tokenizer: Any):
        self.terms = [(name, float(weight), dict(kwargs or {})) for name, weight, kwargs in terms]
        self.spec = RewardSpec(tuple(RewardTerm(n, w, k) for n, w, k in self.terms))
        self.scorer = self.spec.compile(tokenizer)

    def __call__(self, tokens, mask, truncated, fields):
        """(total float32[B], parts {label: float32[B]}, failures {"<label>/<reason>": int32
        count in this batch}); the failures are step outputs, logged per step as
        `reward_failures/<label>/<reason>`."""
        out = self.scorer(tokens, mask, truncated, fields)
        return out.total, out.parts, dict(out.failures)
