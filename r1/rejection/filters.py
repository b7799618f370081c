r"""Readability filters for rejection sampling (DeepSeek-R1 stage 3), as pure predicates.

R1 keeps only correct samples and then drops chains of thought with mixed languages, long
paragraphs or code blocks. Each rule here is a pure function of the text with its threshold in
`FilterConfig`; `apply_filters` returns the names of the rules a completion breaks.

The chain of thought (`extract_cot`) is, in this order of preference:
1. the text after the first ``<think>`` up to the first ``</think>`` after it;
2. with ``</think>`` but no ``<think>`` before it (chat templates that open ``<think>\n`` in the
   prompt): the text before ``</think>``;
3. without ``</think>``: the text after ``<think>`` (or from the start) up to the first
   ``<answer>`` (or the end). A truncated CoT is still checked.

Rules (a threshold of 0 disables the rule; a completion is dropped when a value is *above* its
threshold, so a value exactly at the threshold is kept):

* ``mixed_language``: share of CoT words not in ``language`` > ``max_foreign_fraction``. Words and
  the per-language test are those of the language-consistency reward
  (`r1.rewards.language.language_share`: letters runs, one word per Han / kana / Hangul
  character, digits and symbols are not words). A CoT without words is not mixed. Disabled when
  ``max_foreign_fraction >= 1``. For script languages (``en``, ``zh``, ``ru``, ...) only the
  script is seen: English mixed with Chinese is caught, English mixed with French is not (both
  Latin); word-list languages (``fr``, ``de``, ``es``) compare function words.
* ``long_paragraph``: a CoT paragraph (text between blank lines) longer than
  ``max_paragraph_chars`` characters or ``max_paragraph_words`` whitespace-separated words.
* ``code_block``: the CoT holds a Markdown fenced block (a line starting, after at most three
  spaces, with three backticks or three tildes; an unclosed fence counts), or, when
  ``indented_code_min_lines > 0``, an indented block: at least that many consecutive non-blank
  lines each indented by four spaces or a tab, preceded by a blank line or the start of the CoT
  (the Markdown rule). The indented heuristic also fires on deeply indented prose or nested
  lists; raise the line count or set 0 where CoTs are indented by style.
* ``short_cot``: the stripped CoT has fewer than ``min_cot_chars`` characters (0 keeps direct
  answers with an empty ``<think></think>``; 1 keeps only samples that reason).
"""

from __future__ import annotations

import dataclasses
import re

from r1.rewards.extract import ANSWER_OPEN, THINK_CLOSE, THINK_OPEN
from r1.rewards.language import language_share

REASONS = ("short_cot", "mixed_language", "long_paragraph", "code_block")

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r]*\n")
_FENCE = re.compile(r"^ {0,3}(?:```|~~~)", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class FilterConfig:
    """Thresholds of the readability filters (module docstring); 0 disables a rule.

    language: target language code of `r1.rewards.language` ("en", "zh", "fr", ...).
    max_foreign_fraction: largest share of CoT words outside `language` that is kept, in [0, 1].
    max_paragraph_chars / max_paragraph_words: longest paragraph kept (characters / words).
    code_fences: drop CoTs with a fenced code block.
    indented_code_min_lines: drop CoTs with an indented block of at least this many lines.
    min_cot_chars: shortest stripped CoT kept (characters).
    """

    language: str = "en"
    max_foreign_fraction: float = 0.1
    max_paragraph_chars: int = 2000
    max_paragraph_words: int = 0
    code_fences: bool = True
    indented_code_min_lines: int = 4
    min_cot_chars: int = 0

    def __post_init__(self):
        if not 0.0 <= self.max_foreign_fraction <= 1.0:
            raise ValueError(
                "FilterConfig.max_foreign_fraction must be in [0, 1], got "
                f"{self.max_foreign_fraction}"
            )
        for name in (
            "max_paragraph_chars",
            "max_paragraph_words",
            "indented_code_min_lines",
            "min_cot_chars",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"FilterConfig.{name} must be >= 0, got {getattr(self, name)}")
        # Fails early (ValueError naming the language) rather than on the first completion.
        language_share("a", self.language)


def extract_cot(text: str) -> str:
    """The chain of thought of a completion (module docstring); "" when there is none."""
    open_at = text.find(THINK_OPEN)
    close_at = text.find(THINK_CLOSE, open_at + len(THINK_OPEN) if open_at >= 0 else 0)
    if open_at >= 0 and (close_at < 0 or open_at < close_at):
        start = open_at + len(THINK_OPEN)
    else:
        start = 0
    if close_at >= 0:
        return text[start:close_at]
    end = text.find(ANSWER_OPEN, start)
    return text[start:] if end < 0 else text[start:end]


def foreign_word_fraction(cot: str, language: str) -> float | None:
    """Share in [0, 1] of the words of `cot` not in `language`; None when it has no words."""
    share = language_share(cot, language)
    return None if share is None else 1.0 - share


def is_mixed_language(cot: str, language: str, max_foreign_fraction: float) -> bool:
    """True when more than `max_foreign_fraction` of the words are not in `language`."""
    if max_foreign_fraction >= 1.0:
        return False
    foreign = foreign_word_fraction(cot, language)
    # The tolerance keeps a share exactly at the threshold despite rounding (1 - 0.7 > 0.3).
    return foreign is not None and foreign > max_foreign_fraction + 1e-9


def paragraphs(cot: str) -> list[str]:
    """The non-blank paragraphs of `cot` (split on blank lines), stripped."""
    return [p.strip() for p in _PARAGRAPH_BREAK.split(cot) if p.strip()]


def has_long_paragraph(cot: str, max_chars: int = 0, max_words: int = 0) -> bool:
    """True when a paragraph has more than `max_chars` characters or `max_words` words
    (0 disables that bound)."""
    for p in paragraphs(cot):
        if max_chars and len(p) > max_chars:
            return True
        if max_words and len(p.split()) > max_words:
            return True
    return False


def _is_indented(line: str) -> bool:
    return line.startswith(("    ", "\t")) and bool(line.strip())


def has_indented_code(cot: str, min_lines: int) -> bool:
    """True when `cot` holds `min_lines` or more consecutive indented non-blank lines (4 spaces
    or a tab) preceded by a blank line or the start of the text. `min_lines` 0: False."""
    if min_lines <= 0:
        return False
    run, run_allowed, previous_blank = 0, False, True
    for line in cot.split("\n"):
        if _is_indented(line):
            if run == 0:
                run_allowed = previous_blank
            run += 1
            if run_allowed and run >= min_lines:
                return True
        else:
            run = 0
        previous_blank = not line.strip()
    return False


def has_code_fence(cot: str) -> bool:
    """True when a line of `cot` starts (after at most 3 spaces) with ``` or ~~~."""
    return _FENCE.search(cot) is not None


def has_code_block(cot: str, fences: bool = True, indented_min_lines: int = 0) -> bool:
    """The `code_block` rule: a fence (when `fences`) or an indented block."""
    return (fences and has_code_fence(cot)) or has_indented_code(cot, indented_min_lines)


def apply_filters(text: str, config: FilterConfig) -> list[str]:
    """Names (from `REASONS`, in that order) of the filters `text`'s CoT breaks; [] to keep it."""
    cot = extract_cot(text)
    reasons = []
    if config.min_cot_chars and len(cot.strip()) < config.min_cot_chars:
        reasons.append("short_cot")
    if is_mixed_language(cot, config.language, config.max_foreign_fraction):
        reasons.append("mixed_language")
    if has_long_paragraph(cot, config.max_paragraph_chars, config.max_paragraph_words):
        reasons.append("long_paragraph")
    if has_code_block(cot, config.code_fences, config.indented_code_min_lines):
        reasons.append("code_block")
    return reasons
