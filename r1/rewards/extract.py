"""String parsers shared by the text rewards. Every function here is total: it never raises on
any ``str`` (including lone surrogates from ``surrogateescape`` decoding) and runs in linear time.
"""

from __future__ import annotations

import re

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
# The whitespace the format rewards strip; the token rewards use the same four characters.
WHITESPACE = " \t\n\r"

_CODE_BLOCK = re.compile(r"```[ \t]*([A-Za-z0-9_+\-]*)[ \t]*\n(.*?)```", re.DOTALL)


def answer_content(text: str) -> str | None:
    """Text between the last ``<answer>`` and the first ``</answer>`` after it, or None."""
    start = text.rfind(ANSWER_OPEN)
    if start < 0:
        return None
    start += len(ANSWER_OPEN)
    end = text.find(ANSWER_CLOSE, start)
    return None if end < 0 else text[start:end]


def think_content(text: str) -> str | None:
    """Text between the first ``<think>`` and the first ``</think>`` after it, or None."""
    start = text.find(THINK_OPEN)
    if start < 0:
        return None
    start += len(THINK_OPEN)
    end = text.find(THINK_CLOSE, start)
    return None if end < 0 else text[start:end]


def last_boxed(text: str) -> str | None:
    """The last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces, including the command,
    or None when there is none or its braces never close."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        return None
    depth = 0
    for i in range(brace, len(text)):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    return None


def final_answer(text: str) -> str | None:
    """The final answer of a completion: the last ``<answer>`` content if any (reduced to its last
    ``\\boxed{}`` when it holds one), else the last ``\\boxed{}`` anywhere, else None."""
    content = answer_content(text)
    if content is not None:
        boxed = last_boxed(content)
        return boxed if boxed is not None else content
    return last_boxed(text)


def last_code_block(text: str) -> str | None:
    """Body of the last fenced code block (```python ...```, any or no language tag), or None."""
    found = None
    for match in _CODE_BLOCK.finditer(text):
        found = match.group(2)
    return found
