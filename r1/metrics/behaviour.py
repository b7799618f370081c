"""Behaviour metrics over decoded completions: reflection, length and accuracy by difficulty,
language of the chain of thought. Pure functions of strings and arrays (no JAX, no I/O).

Reflective words: R1-Zero's "aha moment" shows up as words of re-evaluation ("wait", "let me
check", ...) whose rate grows during RL. `count_reflections` counts occurrences of a phrase list
(`REFLECTION_WORDS[language]` by default), case-insensitively, non-overlapping, longer phrases
first (so "let me check" is one occurrence, not also a "check"). **Boundaries:** a phrase that
begins (ends) with a Latin letter or digit only matches where the character before (after) it is
not a letter, digit or underscore: "wait" matches in "Wait," and "wait..." but not in "waiting"
or "await"; inflections must be listed to be counted ("verified" is not "verify"). Phrases in
scripts written without spaces (Chinese) match anywhere, since there is no word boundary to
check: "等等" counts inside "我们等等再看".

`behaviour_metrics` returns the flat metric names the GRPO trainer logs per step:
    behaviour/reflection_per_1k          occurrences per 1,000 completion tokens (whole batch)
    behaviour/reflection_share           share of completions with at least one occurrence
    behaviour/language_share             mean share of CoT words in `language` (omitted when no
                                         completion has a word; see r1.rewards.language)
    behaviour/length/d{k}                mean completion length (tokens) at difficulty k
    behaviour/accuracy/d{k}              mean correctness at difficulty k
    behaviour/reflection_per_1k/d{k}     reflection rate at difficulty k
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from r1.rewards.extract import think_content
from r1.rewards.language import language_share

REFLECTION_WORDS: Mapping[str, tuple[str, ...]] = {
    "en": (
        "wait",
        "hmm",
        "verify",
        "re-evaluate",
        "reevaluate",
        "recheck",
        "re-check",
        "double-check",
        "let me check",
        "check again",
    ),
    "zh": ("等等", "等一下", "重新", "检查", "验证", "嗯"),
}

_WORD_CHAR = re.compile(r"[A-Za-z0-9_]")


@functools.lru_cache(maxsize=64)
def _pattern(words: tuple[str, ...]) -> re.Pattern[str]:
    if not words or any(not w or not w.strip() for w in words):
        raise ValueError(f"reflection words: expected non-empty phrases, got {list(words)}")
    parts = []
    for word in sorted(set(words), key=len, reverse=True):
        before = r"(?<![A-Za-z0-9_])" if _WORD_CHAR.match(word[0]) else ""
        after = r"(?![A-Za-z0-9_])" if _WORD_CHAR.match(word[-1]) else ""
        parts.append(before + re.escape(word) + after)
    return re.compile("|".join(parts), re.IGNORECASE)


def reflection_words(language: str = "en", words: Sequence[str] | None = None) -> tuple[str, ...]:
    """`words` if given, else the default list of `language` (ValueError for an unknown one)."""
    if words is not None:
        return tuple(words)
    if language not in REFLECTION_WORDS:
        raise ValueError(
            f"reflection words: no default list for language {language!r}; known: "
            f"{sorted(REFLECTION_WORDS)} (pass words=... for others)"
        )
    return REFLECTION_WORDS[language]


def count_reflections(text: str, words: Sequence[str]) -> int:
    """Occurrences of the phrases `words` in `text` (module docstring for the matching rules)."""
    return sum(1 for _ in _pattern(tuple(words)).finditer(text))


def reflection_counts(
    completions: Sequence[str], language: str = "en", words: Sequence[str] | None = None
) -> np.ndarray:
    """int64[B]: reflective phrase occurrences per completion."""
    chosen = reflection_words(language, words)
    return np.asarray([count_reflections(t, chosen) for t in completions], np.int64)


def reflection_per_1k(counts: Any, lengths: Any) -> float:
    """Occurrences per 1,000 tokens over a batch: 1000 * sum(counts) / sum(lengths); 0.0 when
    there are no tokens. counts, lengths: int[B] (lengths in tokens)."""
    counts, lengths = _vector(counts, "counts"), _vector(lengths, "lengths")
    _same_length(counts=counts, lengths=lengths)
    total = float(lengths.sum())
    return 1000.0 * float(counts.sum()) / total if total > 0 else 0.0


def reflection_share(counts: Any) -> float:
    """Share of completions with at least one reflective phrase (0.0 for an empty batch)."""
    counts = _vector(counts, "counts")
    return float(np.mean(counts > 0)) if counts.size else 0.0


def cot_language_shares(completions: Sequence[str], language: str) -> list[float | None]:
    """Per completion, the share of chain-of-thought words in `language` (the CoT is the first
    `<think>` block, else the whole completion); None for a completion without words."""
    out = []
    for text in completions:
        cot = think_content(text)
        out.append(language_share(text if cot is None else cot, language))
    return out


def cot_language_share(completions: Sequence[str], language: str) -> float | None:
    """Mean of `cot_language_shares` over the completions that have words; None when none
    has a word."""
    shares = [s for s in cot_language_shares(completions, language) if s is not None]
    return float(np.mean(shares)) if shares else None


def per_difficulty(values: Any, difficulties: Any) -> dict[int, float]:
    """Mean of `values` (float[B]) for each difficulty (int[B]), sorted by difficulty."""
    values, difficulties = _vector(values, "values"), _vector(difficulties, "difficulties")
    _same_length(values=values, difficulties=difficulties)
    return {
        int(d): float(values[difficulties == d].mean()) for d in np.unique(difficulties).tolist()
    }


def behaviour_metrics(
    completions: Sequence[str],
    lengths: Any,
    correct: Any,
    difficulties: Any = None,
    language: str = "en",
    words: Sequence[str] | None = None,
) -> dict[str, float]:
    """Flat `behaviour/...` metrics of one batch (names in the module docstring).

    completions: B decoded completions; lengths: int[B] completion lengths in tokens;
    correct: bool/float[B] accuracy per completion; difficulties: int[B] or None (no
    per-difficulty metrics); language: the target language of the reflection list and of the
    language share; words: a reflection phrase list replacing the default.
    """
    lengths = _vector(lengths, "lengths")
    correct = _vector(correct, "correct").astype(np.float64)
    _same_length(completions=np.zeros(len(completions)), lengths=lengths, correct=correct)
    counts = reflection_counts(completions, language, words)
    metrics = {
        "behaviour/reflection_per_1k": reflection_per_1k(counts, lengths),
        "behaviour/reflection_share": reflection_share(counts),
    }
    share = cot_language_share(completions, language)
    if share is not None:
        metrics["behaviour/language_share"] = share
    if difficulties is not None:
        difficulties = _vector(difficulties, "difficulties").astype(np.int64)
        _same_length(completions=lengths, difficulties=difficulties)
        for d, value in per_difficulty(lengths.astype(np.float64), difficulties).items():
            metrics[f"behaviour/length/d{d}"] = value
        for d, value in per_difficulty(correct, difficulties).items():
            metrics[f"behaviour/accuracy/d{d}"] = value
        for d in np.unique(difficulties).tolist():
            sel = difficulties == d
            metrics[f"behaviour/reflection_per_1k/d{d}"] = reflection_per_1k(
                counts[sel], lengths[sel]
            )
    return metrics


def _vector(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {array.shape}")
    return array


def _same_length(**arrays: np.ndarray) -> None:
    sizes = {name: len(a) for name, a in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"behaviour metrics: arguments differ in length: {sizes}")
