"""The judging config, the judge prompt and verdict parsing on text (`r1.judge`)."""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_TEMPLATE = "Reference: {reference}\nPrediction: {prediction}\nVerdict: "
FIELDS = ("question", "reference", "prediction", "reasoning")
REQUIRED_FIELDS = ("reference", "prediction")
VERDICT_FORMATS = ("tags", "score")
# Failure reasons of a row: the verdict could not be parsed (all count as unparseable) ...
UNPARSEABLE = ("not_text", "empty", "too_long", "no_verdict", "several_verdicts")
# ... or there was nothing to judge (the completion has no final answer).
NO_ANSWER = "no_answer"
TOKENIZER_FILE = "judge_tokenizer.json"
CONFIG_FILE = "judge_config.json"

Segment = tuple[str, str]  # ("text", literal) or ("field", name)


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
    """How the judge is asked and how its verdict is read (module docstring).

    template: prompt with ``{reference}``, ``{prediction}`` and optionally ``{question}``,
    ``{reasoning}`` (literal braces as ``{{``, ``}}``). verdict_format: "tags" or "score".
    correct_tag / incorrect_tag: the two verdicts of "tags". score_pattern: the verdict of
    "score", with ``{score}`` an integer 0..max_score. max_new_tokens: verdict tokens generated
    (greedy). max_verdict_chars: longer verdict texts are unparseable. max_field_tokens: each
    field is cut to this many tokens. batch_size: rows per sampler call. add_bos: prepend BOS.
    """

    template: str = DEFAULT_TEMPLATE
    verdict_format: str = "tags"
    correct_tag: str = "[[CORRECT]]"
    incorrect_tag: str = "[[INCORRECT]]"
    score_pattern: str = "[[{score}]]"
    max_score: int = 10
    max_new_tokens: int = 8
    max_verdict_chars: int = 512
    max_field_tokens: int = 32
    batch_size: int = 8
    add_bos: bool = False

    def __post_init__(self):
        if self.verdict_format not in VERDICT_FORMATS:
            raise ValueError(
                f"JudgeConfig.verdict_format: expected one of {VERDICT_FORMATS}, "
                f"got {self.verdict_format!r}"
            )
        for name in ("max_new_tokens", "max_verdict_chars", "max_field_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"JudgeConfig.{name}: expected >= 1, got {getattr(self, name)}")
        if self.max_score < 1:
            raise ValueError(f"JudgeConfig.max_score: expected >= 1, got {self.max_score}")
        names = [v for k, v in self.segments() if k == "field"]
        missing = [f for f in REQUIRED_FIELDS if f not in names]
        if missing:
            raise ValueError(f"JudgeConfig.template: missing the field(s) {missing}")
        if self.verdict_format == "score" and "{score}" not in self.score_pattern:
            raise ValueError("JudgeConfig.score_pattern: expected a '{score}' placeholder")
        verdicts = verdict_strings(self)
        if any(not v for v in verdicts):
            raise ValueError("JudgeConfig: verdict strings must not be empty")
        for a in verdicts:
            for b in verdicts:
                if a != b and a in b:
                    raise ValueError(
                        f"JudgeConfig: verdict {a!r} occurs inside verdict {b!r}; choose "
                        "verdict strings that do not contain one another (e.g. '[[7]]')"
                    )

    def segments(self) -> tuple[Segment, ...]:
        """The template as ("text", literal) and ("field", name) parts, in order."""
        out: list[Segment] = []
        try:
            parsed = list(string.Formatter().parse(self.template))
        except ValueError as err:
            raise ValueError(f"JudgeConfig.template: {err}") from err
        for literal, field, spec, conversion in parsed:
            if literal:
                out.append(("text", literal))
            if field is None:
                continue
            if field not in FIELDS or spec or conversion:
                raise ValueError(
                    f"JudgeConfig.template: unknown placeholder {{{field}}}; expected plain "
                    f"{', '.join('{' + f + '}' for f in FIELDS)}"
                )
            if any(k == "field" and v == field for k, v in out):
                raise ValueError(f"JudgeConfig.template: {{{field}}} occurs twice")
            out.append(("field", field))
        return tuple(out)

    def fields(self) -> tuple[str, ...]:
        """The template's field names, in order."""
        return tuple(v for k, v in self.segments() if k == "field")


def verdict_strings(config: JudgeConfig) -> tuple[str, ...]:
    """The verdict strings the parser looks for (see `verdict_values` for their scores)."""
    if config.verdict_format == "tags":
        return (config.correct_tag, config.incorrect_tag)
    return tuple(config.score_pattern.format(score=s) for s in range(config.max_score + 1))


def verdict_values(config: JudgeConfig) -> tuple[float, ...]:
    """Score in [0, 1] of each of `verdict_strings`."""
    if config.verdict_format == "tags":
        return (1.0, 0.0)
    return tuple(s / config.max_score for s in range(config.max_score + 1))


# ----------------------------------------------------------------------------- prompts
def _field_text(row: Mapping[str, Any], name: str) -> str:
    value = row.get(name)
    return "" if value is None else str(value).strip()


def render_judge_prompts(rows: Sequence[Mapping[str, Any]], config: JudgeConfig) -> list[str]:
    """The judging prompt text of each row (fields stripped; a missing optional field is "")."""
    out = []
    for row in rows:
        parts = [v if k == "text" else _field_text(row, v) for k, v in config.segments()]
        out.append("".join(parts))
    return out


def encode_judge_prompt(
    tokenizer: Any, row: Mapping[str, Any], config: JudgeConfig
) -> tuple[list[int], bool]:
    """(ids, truncated): the template's parts tokenised one by one (BOS first with `add_bos`),
    each field cut to its first `max_field_tokens` ids (truncated: some field was cut)."""
    ids: list[int] = [tokenizer.bos_id] if config.add_bos and tokenizer.bos_id is not None else []
    truncated = False
    for kind, value in config.segments():
        if kind == "text":
            ids += tokenizer.encode(value)
        else:
            field = tokenizer.encode(_field_text(row, value))
            truncated |= len(field) > config.max_field_tokens
            ids += field[: config.max_field_tokens]
    return ids, truncated


def max_prompt_tokens(tokenizer: Any, config: JudgeConfig) -> int:
    """The longest prompt `encode_judge_prompt` can produce (the fixed prompt length)."""
    fixed = sum(len(tokenizer.encode(v)) for k, v in config.segments() if k == "text")
    bos = 1 if config.add_bos and tokenizer.bos_id is not None else 0
    return bos + fixed + len(config.fields()) * config.max_field_tokens


# ----------------------------------------------------------------------------- parsing (text)
def parse_verdict(text: Any, config: JudgeConfig) -> tuple[float, str]:
    """(score in [0, 1], reason): reason is "" when the verdict parsed, else one of
    `UNPARSEABLE` and the score is 0. Never raises."""
    if not isinstance(text, str):
        return 0.0, "not_text"
    if not text.strip():
        return 0.0, "empty"
    if len(text) > config.max_verdict_chars:
        return 0.0, "too_long"
    counts = [text.count(v) for v in verdict_strings(config)]
    total = sum(counts)
    if total == 0:
        return 0.0, "no_verdict"
    if total > 1:
        return 0.0, "several_verdicts"
    return float(verdict_values(config)[counts.index(1)]), ""


def parse_verdicts(
    texts: Sequence[Any], config: JudgeConfig
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`parse_verdict` over a batch: (scores float32[B], unparseable bool[B], reasons)."""
    parsed = [parse_verdict(t, config) for t in texts]
    scores = np.asarray([s for s, _ in parsed], np.float32).reshape(-1)
    reasons = [r for _, r in parsed]
    return scores, np.asarray([bool(r) for r in reasons], bool).reshape(-1), reasons
