"""Temporary shim: the old `RewardBridge` API on top of `r1.rewards.RewardSpec.compile`.

r1/rl/trainer.py and r1/aot/programs.py still import `RewardBridge`, `encode_text_fields` and
`BYTES_SUFFIX` from here; this module goes away when they call the compiled spec
(`spec.compile(tokenizer)(completion, mask, truncated, fields, prompt_tokens, prompt_mask,
frozen)`). New code: `r1.rewards.spec`.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from r1.rewards import RewardSpec, RewardTerm
from r1.rewards.term import BYTES_SUFFIX, encode_text_fields

__all__ = ["BYTES_SUFFIX", "RewardBridge", "encode_text_fields"]


class RewardBridge:
    """The step's old `reward_fn(tokens, mask, truncated, fields) -> (total, parts)`: the rule
    terms of a compiled `RewardSpec`. terms: (reward name, weight, kwargs) triples. `failures`
    sums the scorer's per-batch failure counts over the run (host side, for logging)."""

    def __init__(self, terms: Sequence[tuple[str, float, Mapping[str, Any]]], tokenizer: Any):
        self.terms = [(name, float(weight), dict(kwargs or {})) for name, weight, kwargs in terms]
        self.spec = RewardSpec(tuple(RewardTerm(n, w, k) for n, w, k in self.terms))
        self.scorer = self.spec.compile(tokenizer)
        self.failures: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _accumulate(self, counts: Mapping[str, Any]) -> None:
        with self._lock:
            self.failures.update({k: int(np.asarray(v)) for k, v in counts.items() if v})

    def __call__(self, tokens, mask, truncated, fields):
        """(total float32[B], parts {label: float32[B]}, failures {"<label>/<reason>": int32
        count in this batch}); the failures are step outputs, so the trainer sums them in
        step order."""
        out = self.scorer(tokens, mask, truncated, fields)
        return out.total, out.parts, dict(out.failures)
