"""General (non-reasoning) prompts mixed into a task's prompt stream, for R1's stage 4.

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
