"""Prompt mixtures: several files by weight (`WeightedMixture`), and general prompts mixed
into a task's prompt stream for R1's stage 4 (`GeneralMixture`).

R1's last RL stage trains on reasoning prompts scored by rules and general prompts scored by
reward models (helpfulness, harmlessness). `GeneralMixture` is a grain random-access source:
row `i` is a general prompt with probability `fraction` (decided from `(seed, i)`, so every
process and every resume agrees), else the task's row `i`. Rows carry `general` (1 / 0); the
GRPO step gives rule rewards to reasoning rows only and a model reward configured with
`rows="general"` to general rows only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def load_general_prompts(paths: str | Sequence[str]) -> list[dict[str, Any]]:
    """Rows with a non-empty string `prompt` from JSONL files (comma-separated or a list);
    other rows are skipped. Raises naming the files when none is usable."""
    if isinstance(paths, str):
        paths = [p.strip() for p in paths.split(",") if p.strip()]
    rows, skipped = [], 0
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"general prompts: {path} does not exist")
        with open(path) as f:
            for line in f:
                try:
                    raw = json.loads(line) if line.strip() else None
                except json.JSONDecodeError:
                    raw = None
                prompt = raw.get("prompt") if isinstance(raw, Mapping) else None
                if isinstance(prompt, str) and prompt.strip():
                    rows.append({"prompt": prompt})
                elif line.strip():
                    skipped += 1
    if not rows:
        raise ValueError(f"general prompts: no row with a `prompt` in {list(paths)}")
    return rows


class GeneralMixture:
    """`primary` rows with a `fraction` of general prompts mixed in (see the module doc)."""

    def __init__(
        self,
        primary: Sequence[Mapping[str, Any]],
        general: Sequence[Mapping[str, Any]],
        fraction: float,
        seed: int,
    ):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"general_fraction: expected a value in [0, 1], got {fraction}")
        if fraction > 0 and not general:
            raise ValueError("general_fraction > 0 needs general prompts")
        self.primary, self.general, self.fraction, self.seed = primary, general, fraction, seed

    def __len__(self) -> int:
        return len(self.primary)

    def is_general(self, index: int) -> bool:
        return bool(np.random.default_rng([self.seed, index, 7]).random() < self.fraction)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.is_general(index):
            row = self.general[index % len(self.general)]
            return {
                "prompt": row["prompt"],
                "answer": "",
                "difficulty": 0,
                "task": "general",
                "id": f"general-{index}",
                "domain": "general",
                "general": 1,
            }
        return {**self.primary[index], "general": 0}


class WeightedMixture:
    """Rows drawn from several parts (e.g. a math file and a code file) with given weights.

    Row `i` comes from part `d` with probability ``weights[d] / sum(weights)`` and is that
    part's row ``k``, both drawn from ``(seed, i)``: deterministic for any reader, process or
    resume (grain indexes it), with rows drawn with replacement inside each part. One epoch is
    ``len(self)`` = the parts' total rows, so epochs and positions keep their meaning.
    """

    def __init__(
        self,
        parts: Sequence[Sequence[Mapping[str, Any]]],
        weights: Sequence[float],
        seed: int,
    ):
        if len(parts) != len(weights):
            raise ValueError(f"mixture: {len(weights)} weights for {len(parts)} sources")
        weights = np.asarray([float(w) for w in weights], np.float64)
        if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError(
                f"mixture: weights must be >= 0, finite, and not all 0; got {weights.tolist()}"
            )
        if any(len(p) == 0 for p, w in zip(parts, weights) if w > 0):
            raise ValueError("mixture: a source with a positive weight has no rows")
        self.parts, self.seed = [list(p) for p in parts], int(seed)
        self.probabilities = weights / weights.sum()

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def part_of(self, index: int) -> tuple[int, int]:
        """(part, row within the part) of mixture row `index`."""
        rng = np.random.default_rng([self.seed, index, 11])
        part = int(rng.choice(len(self.parts), p=self.probabilities))
        return part, int(rng.integers(len(self.parts[part])))

    def __getitem__(self, index: int) -> dict[str, Any]:
        part, row = self.part_of(index)
        return dict(self.parts[part][row])
