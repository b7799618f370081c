"""Code accuracy: run the last fenced code block against the row's test statements in the
sandbox (`r1.rewards.sandbox`); score = fraction of tests passed, 0 on any failure."""

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
    **fields: Any,
) -> tuple[np.ndarray, list[str]]:
    """float32[B] in [0, 1].

    Fields: tests: per row a list of Python statements (e.g. ``assert f(2) == 4``) run after
    the program. Reasons: no_code_block, no_tests, timeout, crash, memory, syntax_error, exited,
    sandbox_violation, tampered, no_result.
    """
    tests = [list(t) for t in row_field(fields, "tests", len(completions), "code")]
    programs = [last_code_block(c) for c in completions]
    config = SandboxConfig(timeout_s=timeout_s, cpu_s=cpu_s, memory_mb=memory_mb, workers=workers)
    results = run_batch(programs, tests, config)
    scores = np.asarray([r.score for r in results], np.float32)
    return scores, [r.reason for r in results]
