"""Procedural accuracy: arithmetic exact match and countdown (TinyZero-style).

Countdown expressions are parsed with `ast` (never ``eval``) and evaluated with exact
`fractions.Fraction` arithmetic over a whitelist: integer literals, ``+ - * /``, unary minus and
parentheses. Each literal must be one of the given numbers, each used at most once. Length,
nesting depth and node count are bounded before and after parsing, so ``10**10**10`` (rejected:
``**`` is not allowed) or ten thousand parentheses cost microseconds.
"""

from __future__ import annotations

import ast
import collections
import re
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from r1.rewards.base import register, row_field
from r1.rewards.extract import WHITESPACE, answer_content

MAX_EXPRESSION_CHARS = 256
MAX_DEPTH = 32
MAX_NODES = 128
_INTEGER = re.compile(r"-?[0-9]+")


def parse_integer_answer(text: str) -> int | None:
    """The integer in the last ``<answer>`` (optional ``-``, digits, surrounding whitespace)."""
    content = answer_content(text)
    if content is None:
        return None
    content = content.strip(WHITESPACE)
    if len(content) > 4000 or not _INTEGER.fullmatch(content):
        return None
    return int(content)


@register(
    "arithmetic",
    "text",
    fields=("target",),
    doc="1 if <answer> holds the target integer",
    reasons=("no_answer", "not_an_integer"),
)
def arithmetic(
    prompts: Sequence[str], completions: Sequence[str], **fields: Any
) -> tuple[np.ndarray, list[str]]:
    """float32[B]: 1.0 where the last ``<answer>`` holds exactly the integer ``target[i]``.

    Fields: target: int[B] (or strings of integers).
    """
    targets = row_field(fields, "target", len(completions), "arithmetic")
    scores, reasons = [], []
    for text, target in zip(completions, targets):
        value = parse_integer_answer(text)
        if value is None:
            scores.append(0.0)
            reasons.append("no_answer" if answer_content(text) is None else "not_an_integer")
            continue
        try:
            good = value == int(target)
        except (TypeError, ValueError):
            good = False
        scores.append(float(good))
        reasons.append("")
    return np.asarray(scores, np.float32), reasons


class CountdownError(ValueError):
    """An expression outside the countdown grammar; ``reason`` names why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _depth(text: str) -> int:
    depth = best = 0
    for ch in text:
        if ch == "(":
            depth += 1
            best = max(best, depth)
        elif ch == ")":
            depth -= 1
    return best


def evaluate_countdown(expression: str, numbers: Sequence[int]) -> Fraction:
    """Exact value of ``expression`` using each of ``numbers`` at most once.

    Raises:
      CountdownError: with ``reason`` in {"too_long", "too_deep", "syntax", "bad_operator",
        "bad_number", "number_reuse", "div_zero"}.
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CountdownError("too_long")
    if _depth(expression) > MAX_DEPTH:
        raise CountdownError("too_deep")
    try:
        tree = ast.parse(expression.strip(WHITESPACE), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise CountdownError("syntax") from exc
    nodes = list(ast.walk(tree))
    if len(nodes) > MAX_NODES:
        raise CountdownError("too_long")
    used: collections.Counter[int] = collections.Counter()
    for node in nodes:
        if isinstance(node, ast.Constant):
            if type(node.value) is not int:
                raise CountdownError("bad_number")
            used[node.value] += 1
        elif not isinstance(
            node,
            ast.Expression
            | ast.BinOp
            | ast.UnaryOp
            | ast.Add
            | ast.Sub
            | ast.Mult
            | ast.Div
            | ast.USub,
        ):
            raise CountdownError("bad_operator")
    available = collections.Counter(int(n) for n in numbers)
    if any(count > available[value] for value, count in used.items()):
        raise CountdownError("number_reuse" if set(used) <= set(available) else "bad_number")

    def value(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant):
            return Fraction(node.value)
        if isinstance(node, ast.UnaryOp):
            return -value(node.operand)
        assert isinstance(node, ast.BinOp)
        left, right = value(node.left), value(node.right)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if right == 0:
            raise CountdownError("div_zero")
        return left / right

    return value(tree)


@register(
    "countdown",
    "text",
    fields=("numbers", "target"),
    doc="1 if <answer> is an expression over the numbers (each once) equal to target",
    reasons=(
        "no_answer",
        "syntax",
        "bad_operator",
        "bad_number",
        "number_reuse",
        "div_zero",
        "too_long",
        "too_deep",
    ),
)
def countdown(
    prompts: Sequence[str], completions: Sequence[str], **fields: Any
) -> tuple[np.ndarray, list[str]]:
    """float32[B]: 1.0 where the last ``<answer>`` holds a valid expression equal to the target.

    An ``= ...`` suffix in the answer is ignored. Not every number has to be used.
    Fields: numbers: per row a list of ints; target: int[B].
    """
    batch = len(completions)
    numbers = row_field(fields, "numbers", batch, "countdown")
    targets = row_field(fields, "target", batch, "countdown")
    scores, reasons = [], []
    for text, nums, target in zip(completions, numbers, targets):
        content = answer_content(text)
        if content is None:
            scores.append(0.0)
            reasons.append("no_answer")
            continue
        expression = content.split("=", 1)[0]
        try:
            good = evaluate_countdown(expression, list(nums)) == Fraction(int(target))
        except CountdownError as exc:
            scores.append(0.0)
            reasons.append(exc.reason)
            continue
        scores.append(float(good))
        reasons.append("")
    return np.asarray(scores, np.float32), reasons
