"""Format rewards: strict and lenient ``<think>...</think><answer>...</answer>``, tag counts.

Definitions (the token rewards in `r1.rewards.tokens` implement exactly the same rules):

* strict: after stripping ``" \\t\\n\\r"`` the completion starts with ``<think>`` and ends with
  ``</answer>``; each of the four tags occurs exactly once, in the order think-open, think-close,
  answer-open, answer-close; only whitespace between ``</think>`` and ``<answer>``.
* lenient: each tag occurs at least once and the first occurrences are in that order (anything
  may precede or follow).
* tag count: 0.25 for each of the four tags that occurs exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from r1.rewards.base import register
from r1.rewards.extract import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    TAGS,
    THINK_CLOSE,
    THINK_OPEN,
    WHITESPACE,
)


def is_strict(text: str) -> bool:
    """The strict format rule (module docstring)."""
    s = text.strip(WHITESPACE)
    if not (s.startswith(THINK_OPEN) and s.endswith(ANSWER_CLOSE)):
        return False
    if any(s.count(tag) != 1 for tag in TAGS):
        return False
    positions = [s.find(tag) for tag in TAGS]
    if positions != sorted(positions):
        return False
    between = s[positions[1] + len(THINK_CLOSE) : positions[2]]
    return between.strip(WHITESPACE) == ""


def is_lenient(text: str) -> bool:
    """The lenient format rule (module docstring)."""
    positions = [text.find(tag) for tag in TAGS]
    return min(positions) >= 0 and positions == sorted(positions)


def tag_count(text: str) -> float:
    """0.25 per tag occurring exactly once."""
    return 0.25 * sum(text.count(tag) == 1 for tag in TAGS)


FORMAT_REASONS = ("empty", "missing_think", "missing_answer", "bad_format")


def _missing_reason(text: str) -> str:
    if not text.strip():
        return "empty"
    if THINK_OPEN not in text or THINK_CLOSE not in text:
        return "missing_think"
    if ANSWER_OPEN not in text or ANSWER_CLOSE not in text:
        return "missing_answer"
    return "bad_format"


@register(
    "format_strict",
    "text",
    doc="1 if strictly <think>..</think><answer>..</answer>",
    reasons=FORMAT_REASONS,
)
def format_strict(
    prompts: Sequence[str], completions: Sequence[str], **_: object
) -> tuple[np.ndarray, list[str]]:
    """float32[B]: 1.0 where the completion has the strict format, else 0.0 (reason given)."""
    ok = [is_strict(c) for c in completions]
    reasons = ["" if good else _missing_reason(c) for good, c in zip(ok, completions)]
    return np.asarray(ok, np.float32), reasons


@register(
    "format_lenient",
    "text",
    doc="1 if the four tags occur in order, text around allowed",
    reasons=FORMAT_REASONS,
)
def format_lenient(
    prompts: Sequence[str], completions: Sequence[str], **_: object
) -> tuple[np.ndarray, list[str]]:
    """float32[B]: 1.0 where the completion has the lenient format, else 0.0."""
    ok = [is_lenient(c) for c in completions]
    reasons = ["" if good else _missing_reason(c) for good, c in zip(ok, completions)]
    return np.asarray(ok, np.float32), reasons


@register("tag_count", "text", doc="0.25 per think/answer tag occurring exactly once")
def tag_count_reward(
    prompts: Sequence[str], completions: Sequence[str], **_: object
) -> tuple[np.ndarray, list[str]]:
    """float32[B] in {0, 0.25, 0.5, 0.75, 1}."""
    return np.asarray([tag_count(c) for c in completions], np.float32), [""] * len(completions)
