"""Length shaping and repetition penalties (text rewards; token twins in `r1.rewards.tokens`).

* cosine length (Yeo et al. 2025, "Demystifying Long Chain-of-Thought Reasoning in LLMs"):
  ``cos(L) = lo + (hi - lo) * (1 + cos(pi * L / L_max)) / 2``; correct answers get
  ``hi=r_correct_0, lo=r_correct_max`` (short correct is best), wrong ones
  ``hi=r_wrong_0, lo=r_wrong_max`` (long wrong beats short wrong), and ``L >= L_max`` gets
  ``r_exceed``. Paper defaults: 2, 1, -10, 0, -10.
* DAPO soft overlong punishment: 0 up to ``L_max - L_cache``, then linear down to -1 at
  ``L_max``, and -1 beyond.
* repetition: ``max_penalty * (1 - distinct n-grams / n-grams)`` over lowercased words.

Lengths are token counts given in the field ``lengths``; without it, UTF-8 bytes (which equal
tokens for a byte-level tokenizer such as `r1.testing.DummyTokenizer`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from r1.rewards.base import register, row_field


def _lengths(completions: Sequence[str], fields: dict[str, Any]) -> np.ndarray:
    if fields.get("lengths") is not None:
        return np.asarray(row_field(fields, "lengths", len(completions), "length"), np.float64)
    return np.asarray([len(c.encode("utf-8", "surrogatepass")) for c in completions], np.float64)


def cosine_length_values(
    lengths: np.ndarray,
    correct: np.ndarray,
    max_length: int,
    r_correct_0: float = 2.0,
    r_correct_max: float = 1.0,
    r_wrong_0: float = -10.0,
    r_wrong_max: float = 0.0,
    r_exceed: float = -10.0,
) -> np.ndarray:
    """float32[B] cosine-scaled length reward for ``lengths`` float[B], ``correct`` bool[B]."""
    lengths = np.asarray(lengths, np.float64)
    correct = np.asarray(correct, bool)
    progress = np.clip(lengths / float(max_length), 0.0, 1.0)
    cosine = 0.5 * (1.0 + np.cos(math.pi * progress))
    hi = np.where(correct, r_correct_0, r_wrong_0)
    lo = np.where(correct, r_correct_max, r_wrong_max)
    value = lo + (hi - lo) * cosine
    return np.where(lengths >= max_length, r_exceed, value).astype(np.float32)


def overlong_values(lengths: np.ndarray, max_length: int, cache_length: int) -> np.ndarray:
    """float32[B] DAPO soft overlong punishment in [-1, 0]."""
    lengths = np.asarray(lengths, np.float64)
    start = float(max_length - cache_length)
    value = np.clip((start - lengths) / float(max(cache_length, 1)), -1.0, 0.0)
    return value.astype(np.float32)


@register(
    "cosine_length",
    "text",
    fields=("correct", "lengths"),
    doc="cosine length shaping by correctness (Demystifying Long CoT)",
)
def cosine_length(
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    correct: Sequence[bool] | np.ndarray,
    max_length: int,
    r_correct_0: float = 2.0,
    r_correct_max: float = 1.0,
    r_wrong_0: float = -10.0,
    r_wrong_max: float = 0.0,
    r_exceed: float = -10.0,
    **fields: Any,
) -> tuple[np.ndarray, list[str]]:
    """float32[B]; ``correct`` bool[B] (in a `RewardSpec`: ``correct_from="math"``)."""
    values = cosine_length_values(
        _lengths(completions, fields),
        np.asarray(correct, bool).reshape(-1),
        max_length,
        r_correct_0,
        r_correct_max,
        r_wrong_0,
        r_wrong_max,
        r_exceed,
    )
    return values, [""] * len(completions)


@register(
    "overlong",
    "text",
    fields=("lengths",),
    doc="DAPO soft overlong punishment",
    reasons=("overlong",),
)
def overlong(
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    max_length: int,
    cache_length: int,
    **fields: Any,
) -> tuple[np.ndarray, list[str]]:
    """float32[B] in [-1, 0]; reason ``overlong`` where the length exceeds ``max_length``."""
    lengths = _lengths(completions, fields)
    reasons = ["overlong" if n > max_length else "" for n in lengths]
    return overlong_values(lengths, max_length, cache_length), reasons


def repetition_value(text: str, ngram: int = 3, max_penalty: float = -1.0) -> float:
    """``max_penalty * (1 - distinct/total)`` over word n-grams; 0 with fewer than n words."""
    tokens = text.lower().split()
    if len(tokens) < ngram:
        return 0.0
    grams = list(zip(*[tokens[i:] for i in range(ngram)]))
    return float(max_penalty) * (1.0 - len(set(grams)) / len(grams))


@register("repetition", "text", doc="n-gram repetition penalty in [max_penalty, 0]")
def repetition(
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    ngram: int = 3,
    max_penalty: float = -1.0,
    **_: Any,
) -> tuple[np.ndarray, list[str]]:
    """float32[B] in [max_penalty, 0]."""
    if ngram < 1:
        raise ValueError(f"reward 'repetition': ngram must be >= 1, got {ngram}")
    values = [repetition_value(c, ngram, max_penalty) for c in completions]
    return np.asarray(values, np.float32), [""] * len(completions)
