r"""Evaluation metrics as pure functions: pass@k, pass@1 over k samples, cons@k, aggregation.

* `pass_at_k(n, c, k)`: the unbiased estimator of "at least one of k samples is correct" from
  n >= k samples of which c are correct (Chen et al. 2021): ``1 - C(n-c, k) / C(n, k)``,
  computed as ``1 - prod_{i=n-c+1}^{n} (1 - k / i)`` so no binomial coefficient is ever formed
  (exact to float64 rounding for any n).
* pass@1 averaged over k samples (DeepSeek-R1's reported pass@1) is ``pass_at_k(n, c, 1) = c/n``.
* `majority_vote` / `cons_at_k`: the most frequent extracted answer among a problem's samples
  (DeepSeek-R1's cons@64). Samples without an answer do not vote. **Ties** are broken by the
  earliest sample: among the answers with the highest count, the one whose first occurrence has
  the smallest sample index wins (deterministic given the samples' order). The vote is correct
  when the winning answer's first sample was scored correct; samples with the same normalised
  answer receive the same score from every r1 accuracy reward, so any of them would do.
* `normalize_answer` / `vote_key`: answers are compared as normalised strings, not by
  mathematical equivalence: ``\frac12`` and ``0.5`` are different votes (documented in
  docs/evaluation.md); numbers are canonicalised (``2.50`` -> ``2.5``, ``1,000`` -> ``1000``).
* `summarize` / `summarize_groups`: the table of one group of problems (count, pass@1, pass@k,
  cons@k, mean response length, ...) and the same per group key (task, difficulty).
"""

from __future__ import annotations

import collections
import decimal
import re
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np

from r1.rewards.countdown import parse_integer_answer
from r1.rewards.extract import WHITESPACE, answer_content, final_answer, last_code_block


# ----------------------------------------------------------------------------- pass@k
def pass_at_k(num_samples: Any, num_correct: Any, k: int) -> np.ndarray:
    """Unbiased pass@k per problem: float64[P] from int[P] sample and correct counts.

    Raises ValueError when k < 1, a count is negative, c > n, or n < k (the estimator needs at
    least k samples).
    """
    n = np.atleast_1d(np.asarray(num_samples, dtype=np.int64))
    c = np.atleast_1d(np.asarray(num_correct, dtype=np.int64))
    if n.shape != c.shape or n.ndim != 1:
        raise ValueError(
            f"pass_at_k: num_samples {n.shape} and num_correct {c.shape} must be equal 1-D shapes"
        )
    if int(k) < 1:
        raise ValueError(f"pass_at_k: k must be >= 1, got {k}")
    if np.any(c < 0) or np.any(c > n):
        raise ValueError("pass_at_k: expected 0 <= num_correct <= num_samples for every problem")
    if np.any(n < k):
        raise ValueError(f"pass_at_k: k={k} is larger than the samples of a problem ({n.min()})")
    out = np.ones(n.shape, np.float64)
    for p, (n_p, c_p) in enumerate(zip(n.tolist(), c.tolist())):
        if n_p - c_p >= k:
            out[p] = 1.0 - float(np.prod(1.0 - k / np.arange(n_p - c_p + 1, n_p + 1)))
    return out


def mean_pass_at_k(num_samples: Any, num_correct: Any, k: int) -> float:
    """pass@k averaged over problems (0.0 for no problems)."""
    values = pass_at_k(num_samples, num_correct, k) if np.size(num_samples) else np.zeros(0)
    return float(values.mean()) if values.size else 0.0


def pass_at_1(correct: Any) -> float:
    """Mean correctness over problems and samples, bool/float[P, n] (pass@1 averaged over n)."""
    correct = np.asarray(correct, np.float64)
    if correct.ndim != 2:
        raise ValueError(f"pass_at_1: expected correct of shape [P, n], got {correct.shape}")
    return float(correct.mean()) if correct.size else 0.0


# ----------------------------------------------------------------------------- answers
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(,\d{3})+(\.\d+)?$")
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)$")
_LATEX_NOISE = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\ ", "$")


def _strip_boxed(text: str) -> str:
    for command in ("\\boxed", "\\fbox"):
        if text.startswith(command):
            rest = text[len(command) :].lstrip()
            if rest.startswith("{") and rest.endswith("}"):
                return rest[1:-1]
    return text


def normalize_answer(text: str | None) -> str | None:
    r"""A canonical string for voting: None for no (or an empty) answer.

    Removes a ``\boxed{}`` / ``\fbox{}`` wrapper, ``$``, ``\left``/``\right``, LaTeX spacing
    commands and all whitespace, a trailing full stop; ``\dfrac``/``\tfrac`` become ``\frac``;
    plain numbers are canonicalised (``+2.50`` -> ``2.5``, ``1,000`` -> ``1000``, ``-0`` -> ``0``).
    """
    if text is None:
        return None
    s = _strip_boxed(text.strip())
    for noise in _LATEX_NOISE:
        s = s.replace(noise, "")
    s = "".join(s.split()).rstrip(".")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    if _NUMBER.match(s):
        value = decimal.Decimal(s)
        if value == 0:
            return "0"
        s = format(value.normalize(), "f")
    return s or None


def vote_key(completion: str, reward: str) -> str | None:
    """The answer of `completion` that votes in cons@k, extracted as reward `reward` reads it.

    arithmetic: the integer in the last ``<answer>`` (as ``str(int)``); countdown: the
    expression in the last ``<answer>`` with whitespace and any ``= ...`` suffix removed; code:
    the last fenced code block, stripped; any
    other reward (math): `normalize_answer` of `r1.rewards.extract.final_answer`.
    """
    if reward == "arithmetic":
        value = parse_integer_answer(completion)
        return None if value is None else str(value)
    if reward == "code":  # identical programs vote together
        program = last_code_block(completion)
        return (program or "").strip() or None
    if reward == "countdown":
        content = answer_content(completion)
        if content is None:
            return None
        expression = "".join(content.split("=", 1)[0].split())
        return expression.strip(WHITESPACE) or None
    return normalize_answer(final_answer(completion))


# ----------------------------------------------------------------------------- cons@k
def majority_vote(answers: Sequence[str | None]) -> tuple[str | None, int, int]:
    """`(answer, votes, first_index)` of the most frequent non-None answer.

    Ties go to the answer that appears first. `(None, 0, -1)` when no sample has an answer.
    """
    counts = collections.Counter(a for a in answers if a is not None)
    if not counts:
        return None, 0, -1
    first = {}
    for i, a in enumerate(answers):
        if a is not None and a not in first:
            first[a] = i
    best = max(counts.items(), key=lambda item: (item[1], -first[item[0]]))
    return best[0], best[1], first[best[0]]


def cons_at_k(answers: Sequence[Sequence[str | None]], correct: Any) -> np.ndarray:
    """Majority-vote correctness per problem: float64[P] in {0, 1}.

    answers: [P][n] extracted answers (None: no answer); correct: bool/float[P][n] per-sample
    scores (> 0.5 counts as correct). A problem where no sample has an answer scores 0.
    """
    out = np.zeros(len(answers), np.float64)
    for p, (row, scores) in enumerate(zip(answers, correct, strict=True)):
        if len(row) != len(scores):
            raise ValueError(
                f"cons_at_k: problem {p} has {len(row)} answers but {len(scores)} scores"
            )
        _, _, index = majority_vote(row)
        out[p] = 0.0 if index < 0 else float(float(scores[index]) > 0.5)
    return out


# ----------------------------------------------------------------------------- tables
def summarize(
    correct: Any,
    lengths: Any,
    majority_correct: Any,
    ks: Iterable[int] = (),
    truncated: Any = None,
    has_answer: Any = None,
) -> dict[str, float]:
    """The metrics of one group of P problems with n samples each.

    correct: bool/float[P, n]; lengths: int[P, n] response lengths in tokens;
    majority_correct: float[P] (`cons_at_k`); ks: the k of each pass@k (each <= n; pass@1 is
    always included); truncated / has_answer: optional bool[P, n].

    Returns ``{"count": P, "samples": n, "pass@1", "pass@{k}"..., "cons@{n}",
    "response_length", ["truncated"], ["no_answer"]}`` (rates in [0, 1], length in tokens).
    """
    correct = np.asarray(correct, np.float64)
    lengths = np.asarray(lengths, np.float64)
    if correct.ndim != 2 or lengths.shape != correct.shape:
        raise ValueError(
            f"summarize: correct {correct.shape} and lengths {lengths.shape} must both be [P, n]"
        )
    num_problems, n = correct.shape
    majority_correct = np.asarray(majority_correct, np.float64).reshape(-1)
    if majority_correct.shape != (num_problems,):
        raise ValueError(f"summarize: majority_correct has shape {majority_correct.shape}")
    num_correct = (correct > 0.5).sum(axis=1)
    table: dict[str, float] = {"count": float(num_problems), "samples": float(n)}
    table["pass@1"] = pass_at_1(correct > 0.5)
    for k in sorted({int(k) for k in ks} - {1}):
        table[f"pass@{k}"] = mean_pass_at_k(np.full(num_problems, n), num_correct, k)
    table[f"cons@{n}"] = float(majority_correct.mean()) if num_problems else 0.0
    table["response_length"] = float(lengths.mean()) if lengths.size else 0.0
    if truncated is not None:
        table["truncated"] = float(np.mean(truncated)) if lengths.size else 0.0
    if has_answer is not None:
        table["no_answer"] = 1.0 - float(np.mean(has_answer)) if lengths.size else 0.0
    return table


def summarize_groups(
    groups: Sequence[Hashable],
    correct: Any,
    lengths: Any,
    majority_correct: Any,
    ks: Iterable[int] = (),
    truncated: Any = None,
    has_answer: Any = None,
) -> dict[Hashable, dict[str, float]]:
    """`summarize` per value of `groups` (one key per problem, e.g. its task or difficulty),
    in sorted key order."""
    keys = list(groups)
    correct = np.asarray(correct)
    if len(keys) != correct.shape[0]:
        raise ValueError(
            f"summarize_groups: {len(keys)} group keys for {correct.shape[0]} problems"
        )
    ks = tuple(ks)
    out = {}
    for key in sorted(set(keys), key=lambda g: (str(type(g)), g)):
        sel = np.asarray([g == key for g in keys])
        out[key] = summarize(
            correct[sel],
            np.asarray(lengths)[sel],
            np.asarray(majority_correct)[sel],
            ks,
            None if truncated is None else np.asarray(truncated)[sel],
            None if has_answer is None else np.asarray(has_answer)[sel],
        )
    return out
