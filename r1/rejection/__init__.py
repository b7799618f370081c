"""Rejection sampling (DeepSeek-R1 stage 3): sample k completions per prompt from a checkpoint,
keep the correct, readable, distinct ones, and write them as an SFT dataset with provenance.

    from r1 import rejection
    reasons = rejection.apply_filters(text, rejection.FilterConfig(language="en"))
    selection = rejection.select(candidates, rejection.SelectConfig(correct_reward="math"))

* `filters`: pure readability predicates (mixed-language CoT, long paragraphs, code blocks).
* `select`: pure selection (correct, filtered, deduplicated, capped per prompt).
* `runner`: the resumable loop around the compiled sampler (`run`).
* `experiment`: the same from an experiment config (`run_from_config`).

See docs/rejection_sampling.md.
"""

from r1.rejection.filters import FilterConfig, apply_filters, extract_cot
from r1.rejection.select import Candidate, SelectConfig, Selection, select

__all__ = [
    "Candidate",
    "FilterConfig",
    "SelectConfig",
    "Selection",
    "apply_filters",
    "extract_cot",
    "select",
]
