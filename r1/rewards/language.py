"""Language consistency (DeepSeek-R1 stage 2): share of chain-of-thought words in the target
language.

Words are runs of letters; each Han / kana / Hangul character counts as one word. The CoT is the
first ``<think>`` block, or the whole completion when there is none.

* Script languages (``zh``, ``en``, ``ja``, ``ko``, ``ru``, ``ar``): a word is in the target
  language when its first letter is in the language's Unicode script (``en``: Latin; ``zh``: Han).
* Word-list languages (``fr``, ``de``, ``es``): among the words found in any of the bundled
  function-word lists (English included), the share found in the target's list; when none is
  found, the share of Latin-script words. A heuristic, documented as such.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from r1.rewards.base import register
from r1.rewards.extract import think_content

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_KANA = "\u3040-\u30ff"
_HANGUL = "\uac00-\ud7af\u1100-\u11ff"
_SINGLE = f"[{_HAN}{_KANA}{_HANGUL}]"
# Letters (no digits / underscore), excluding the ideographic ranges counted one per character.
_WORD = re.compile(f"{_SINGLE}|(?:(?!{_SINGLE})[^\\W\\d_])+")

_SCRIPTS: dict[str, re.Pattern[str]] = {
    "en": re.compile("[A-Za-z\u00c0-\u024f]"),
    "zh": re.compile(f"[{_HAN}]"),
    "ja": re.compile(f"[{_HAN}{_KANA}]"),
    "ko": re.compile(f"[{_HANGUL}]"),
    "ru": re.compile("[\u0400-\u04ff]"),
    "ar": re.compile("[\u0600-\u06ff]"),
}

_WORD_LISTS: dict[str, frozenset[str]] = {
    "en": frozenset(
        "the a an and or but of to in on at for with is are was were be been it this that "
        "these those we you he she they i not so if then there what which who how can will "
        "would should let us our my by from as have has had do does did".split()
    ),
    "fr": frozenset(
        "le la les un une des et ou mais de du au aux en dans sur pour avec est sont était "
        "être il elle ils nous vous je ne pas que qui quoi donc alors si ce cette ces on "
        "par plus très aussi comme nous avons faut".split()
    ),
    "de": frozenset(
        "der die das ein eine und oder aber von zu im in auf für mit ist sind war waren sein "
        "es wir ihr er sie ich nicht dass wenn dann also was wie kann wird den dem des auch "
        "noch nur sich uns".split()
    ),
    "es": frozenset(
        "el la los las un una unos y o pero de del al en sobre para con es son era ser está "
        "que qui nosotros vosotros yo no si entonces este esta estos por más muy también como "
        "lo se su hay".split()
    ),
}


def words(text: str) -> list[str]:
    """The words of ``text`` (module docstring)."""
    return _WORD.findall(text)


def language_share(text: str, language: str) -> float | None:
    """Share in [0, 1] of the words of ``text`` that are in ``language``; None without words.

    Raises:
      ValueError: for a language with neither a script nor a word list.
    """
    found = words(text)
    if not found:
        return None
    if language in _SCRIPTS and language not in ("fr", "de", "es"):
        script = _SCRIPTS[language]
        return sum(1 for w in found if script.match(w)) / len(found)
    if language not in _WORD_LISTS:
        known = sorted(set(_SCRIPTS) | set(_WORD_LISTS))
        raise ValueError(f"language consistency: unknown language {language!r}; known: {known}")
    target = _WORD_LISTS[language]
    others = frozenset().union(*(v for k, v in _WORD_LISTS.items() if k != language))
    lowered = [w.lower() for w in found]
    hits = sum(1 for w in lowered if w in target)
    misses = sum(1 for w in lowered if w in others and w not in target)
    if hits + misses:
        return hits / (hits + misses)
    return sum(1 for w in found if _SCRIPTS["en"].match(w)) / len(found)


@register(
    "language",
    "text",
    fields=("language",),
    doc="share of chain-of-thought words in the target language",
    reasons=("no_words",),
)
def language_consistency(
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    language: str | Sequence[str] = "en",
    **_: Any,
) -> tuple[np.ndarray, list[str]]:
    """float32[B] in [0, 1]: share of CoT words in the target language.

    Args:
      language: one code for the batch, or (as a batch field) one per row.
    Reasons: no_words (empty CoT scores 0).
    """
    batch = len(completions)
    langs = [language] * batch if isinstance(language, str) else list(language)
    if len(langs) != batch:
        raise ValueError(f"reward 'language': field 'language' has {len(langs)} rows, not {batch}")
    scores, reasons = [], []
    for text, lang in zip(completions, langs):
        cot = think_content(text)
        share = language_share(text if cot is None else cot, lang)
        scores.append(0.0 if share is None else share)
        reasons.append("no_words" if share is None else "")
    return np.asarray(scores, np.float32), reasons
