"""Training-time metrics over decoded completions (see `r1.metrics.behaviour`)."""

from r1.metrics.behaviour import (
    REFLECTION_WORDS,
    behaviour_metrics,
    cot_language_share,
    cot_language_shares,
    count_reflections,
    per_difficulty,
    reflection_counts,
    reflection_per_1k,
    reflection_share,
)

__all__ = [
    "REFLECTION_WORDS",
    "behaviour_metrics",
    "count_reflections",
    "cot_language_share",
    "cot_language_shares",
    "per_difficulty",
    "reflection_counts",
    "reflection_per_1k",
    "reflection_share",
]
