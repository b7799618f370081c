"""Evaluation: pass@k / cons@k metrics (pure) and the sampling + grading loop.

    from r1.evaluation import EvalConfig, evaluate, write_json, write_markdown
    result = evaluate(model, tokenizer, rows, EvalConfig(num_samples=8))

See docs/evaluation.md and `python -m experiments.evaluate`.
"""

from r1.evaluation.metrics import (
    cons_at_k,
    majority_vote,
    mean_pass_at_k,
    normalize_answer,
    pass_at_1,
    pass_at_k,
    summarize,
    summarize_groups,
    vote_key,
)
from r1.evaluation.runner import (
    EvalConfig,
    evaluate,
    generate_samples,
    grade,
    render_prompt,
    to_markdown,
    write_json,
    write_markdown,
)

__all__ = [
    "EvalConfig",
    "cons_at_k",
    "evaluate",
    "generate_samples",
    "grade",
    "majority_vote",
    "mean_pass_at_k",
    "normalize_answer",
    "pass_at_1",
    "pass_at_k",
    "render_prompt",
    "summarize",
    "summarize_groups",
    "to_markdown",
    "vote_key",
    "write_json",
    "write_markdown",
]
