"""Code accuracy: run the last fenced code block against the row's tests in the sandbox
(`r1.rewards.sandbox`): Python test statements and Codeforces-style stdin/stdout cases;
score = fraction of tests passed (or all-or-nothing)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from r1.rewards.base import register, row_field
from r1.rewards.extract import last_code_block
from r1.rewards.sandbox import SandboxConfig, run_batch


@register(
    "code",
    "text",
    fields=("tests",),
    doc="fraction of tests passed in the sandbox",
    reasons=(
        "no_code_block",
        "no_tests",
        "timeout",
        "crash",
        "memory",
        "syntax_error",
        "exited",
        "sandbox_violation",
        "tampered",
        "no_result",
        "wrong_answer",
        "output_limit",
        "bad_test",
        "rescored",
    ),
)
def code_accuracy(
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    timeout_s: float = 2.0,
    cpu_s: int = 2,
    memory_mb: int = 1024,
    workers: int | None = None,
    all_or_nothing: bool = False,
    float_tolerance: float | None = None,
    max_cases: int = 64,
    **fields: Any,
) -> tuple[np.ndarray, list[str]]:
    """float32[B] in [0, 1]: the fraction of the row's tests passed, or with
    `all_or_nothing` 1 when every test passes and 0 otherwise (the cases after a failed one
    are then skipped).

    Fields: tests: per row a list of Python statements (e.g. ``assert f(2) == 4``) run after
    the program, and / or stdin/stdout cases ``{"input": str, "output": str}`` (other keys
    ignored): the program runs once per case, in its own sandboxed process, with the input on
    stdin; its stdout is compared with the output after line endings are unified and trailing
    whitespace of each line and trailing blank lines are dropped, or with `float_tolerance`
    (relative) token by token, decimal numbers within ``tol * max(1, |expected|)``. Only the
    first `max_cases` cases of a row run (the rest are not counted; statements are not capped).
    A case whose input or output is not a ``str`` fails alone (``bad_test``). Limits per run:
    `timeout_s` wall seconds, `cpu_s` CPU seconds, `memory_mb` MiB. Reasons (the row's first
    failed test with a reason; a failed assert has none): no_code_block, no_tests, timeout,
    crash, memory, syntax_error, exited, sandbox_violation, tampered, no_result, wrong_answer,
    output_limit, bad_test; rescored when no test failed with a reason but a sandbox child was
    killed from outside and run again (counted, scored as the repeat).
    """
    tests = [list(t) for t in row_field(fields, "tests", len(completions), "code")]
    programs = [last_code_block(c) for c in completions]
    config = SandboxConfig(
        timeout_s=timeout_s,
        cpu_s=cpu_s,
        memory_mb=memory_mb,
        workers=workers,
        float_tolerance=float_tolerance,
        max_cases=max_cases,
        stop_at_first_failure=all_or_nothing,
    )
    results = run_batch(programs, tests, config)
    if all_or_nothing:
        scores = [float(bool(r.passed) and all(r.passed)) for r in results]
    else:
        scores = [r.score for r in results]
    reasons = [r.reason or ("rescored" if r.rescored else "") for r in results]
    return np.asarray(scores, np.float32), reasons
