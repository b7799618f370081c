"""Preference pairs: JSONL reading, tokenisation with explicit masks, synthetic pairs.

JSONL rows (one JSON object per line)::

    {"prompt": "...", "chosen": "...", "rejected": "...", "margin": 1.5}

`prompt` is the user text (rendered with a template before tokenising, see `render_prompt`),
`chosen` / `rejected` the two responses as the policy would write them (e.g. `<think>...
</think> summary`), `margin` an optional non-negative number (how clearly `chosen` wins; used
by the margin loss, default 0). Other fields are ignored. Rows that are not JSON objects, lack
a field, have a non-string or empty field, identical responses or a bad margin are skipped and
counted by reason.

Tokenisation keeps prompt and response apart, as the GRPO step holds them: the prompt's ids,
then the response's ids, right-padded to a fixed length with explicit masks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from r1.data import templates

TEMPLATES = ("raw", "r1_zero")
RULES = ("polite", "arithmetic")


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    """One comparison: `chosen` is preferred to `rejected` as a reply to `prompt`."""

    prompt: str
    chosen: str
    rejected: str
    margin: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_pair(row: Any) -> PreferencePair | str:
    """A `PreferencePair`, or the reason (a short string) the row is unusable."""
    if not isinstance(row, dict):
        return "not_an_object"
    for name in ("prompt", "chosen", "rejected"):
        if name not in row:
            return f"missing_{name}"
        if not isinstance(row[name], str):
            return f"non_string_{name}"
    if not row["chosen"] or not row["rejected"]:
        return "empty_response"
    if row["chosen"] == row["rejected"]:
        return "identical_responses"
    margin = row.get("margin", 0.0)
    if margin is None:
        margin = 0.0
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        return "bad_margin"
    if not math.isfinite(margin) or margin < 0:
        return "bad_margin"
    return PreferencePair(row["prompt"], row["chosen"], row["rejected"], float(margin))


def read_pairs(paths: str | Sequence[str]) -> tuple[list[PreferencePair], Counter[str]]:
    """Pairs from one or more JSONL files and the count of skipped rows per reason."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    pairs: list[PreferencePair] = []
    skipped: Counter[str] = Counter()
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"preference pairs: no file {path!r}")
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    skipped["bad_json"] += 1
                    continue
                parsed = parse_pair(row)
                if isinstance(parsed, str):
                    skipped[parsed] += 1
                else:
                    pairs.append(parsed)
    return pairs, skipped


def write_pairs(path: str, pairs: Iterable[PreferencePair]) -> None:
    """Writes pairs as JSONL (the format `read_pairs` reads)."""
    with open(path, "w", encoding="utf-8") as f:
        for pair in pairs:
            f.write(json.dumps(pair.to_json(), ensure_ascii=False) + "\n")


def render_prompt(prompt: str, template: str) -> str:
    """The prompt text the model reads: "raw" (unchanged) or "r1_zero" (the R1-Zero template)."""
    if template == "raw":
        return prompt
    if template == "r1_zero":
        return templates.render_r1_zero(prompt)
    raise ValueError(f"template: expected one of {TEMPLATES}, got {template!r}")


def encode_pairs(
    pairs: Sequence[PreferencePair],
    tokenizer: Any,
    *,
    max_length: int,
    template: str = "raw",
    add_bos: bool = True,
) -> tuple[dict[str, np.ndarray], Counter[str]]:
    """Tokenises pairs into fixed-shape arrays.

    Returns ({"chosen_tokens", "rejected_tokens": int32[P, max_length], "chosen_mask",
    "rejected_mask": bool[P, max_length] real tokens, "chosen_response", "rejected_response":
    bool[P, max_length] the response's tokens, "margin": float32[P]}, counts). A prompt too
    long for a response is cut from the left (counted as "prompt_truncated", the pair is
    kept); a pair whose response alone does not fit in `max_length - 1` tokens is skipped
    ("too_long").
    """
    rows: list[tuple[list[int], list[int], list[int], float]] = []
    counts: Counter[str] = Counter()
    for pair in pairs:
        prompt = tokenizer.encode(render_prompt(pair.prompt, template), add_bos=add_bos)
        chosen, rejected = tokenizer.encode(pair.chosen), tokenizer.encode(pair.rejected)
        longest = max(len(chosen), len(rejected))
        if longest > max_length - 1:
            counts["too_long"] += 1
            continue
        room = max_length - longest
        if len(prompt) > room:
            counts["prompt_truncated"] += 1
            prompt = prompt[len(prompt) - room :]
        rows.append((prompt, chosen, rejected, pair.margin))
    n = len(rows)
    out = {
        f"{side}_{name}": np.zeros((n, max_length), dtype)
        for side in ("chosen", "rejected")
        for name, dtype in (("tokens", np.int32), ("mask", bool), ("response", bool))
    }
    for side in ("chosen", "rejected"):
        out[f"{side}_tokens"][:] = tokenizer.pad_id
    out["margin"] = np.zeros((n,), np.float32)
    for i, (prompt, chosen, rejected, margin) in enumerate(rows):
        for side, response in (("chosen", chosen), ("rejected", rejected)):
            ids = prompt + response
            out[f"{side}_tokens"][i, : len(ids)] = ids
            out[f"{side}_mask"][i, : len(ids)] = True
            out[f"{side}_response"][i, len(prompt) : len(ids)] = True
        out["margin"][i] = margin
    return out, counts


# ----------------------------------------------------------------------------- synthetic pairs
# Closings of the same length range, so length alone does not give the rule away.
POLITE = ("Hope this helps!", "Glad to help.", "Happy to help!", "Kind regards.", "You're welcome.")
CURT = ("Figure it out.", "Do not ask again.", "Not my problem.", "Whatever.", "Obviously, duh.")
_FILLER = ("first", "then", "so", "carry", "check", "add", "sum", "digits", "ok", "now")


def _polite_pair(rng: np.random.Generator) -> PreferencePair:
    a, b = (int(x) for x in rng.integers(0, 50, size=2))
    prompt = f"What is {a} + {b}?"
    words = " ".join(rng.choice(_FILLER, size=int(rng.integers(2, 6))))
    # The reasoning quotes a closing of either kind, so only the summary's closing decides.
    distractor = (POLITE + CURT)[int(rng.integers(0, len(POLITE) + len(CURT)))]
    thinking = f"<think>{words}. {distractor}</think>"
    answer = f" The answer is {a + b}. "
    chosen = thinking + answer + POLITE[int(rng.integers(0, len(POLITE)))]
    rejected = thinking + answer + CURT[int(rng.integers(0, len(CURT)))]
    return PreferencePair(prompt, chosen, rejected)


def _arithmetic_pair(rng: np.random.Generator) -> PreferencePair:
    a, b = (int(x) for x in rng.integers(0, 10, size=2))
    wrong = a + b + int(rng.choice([-3, -2, -1, 1, 2, 3]))
    prompt = f"What is {a} + {b}?"
    thinking = f"<think>add {a} and {b}</think>"
    return PreferencePair(
        prompt, f"{thinking} The answer is {a + b}.", f"{thinking} The answer is {wrong}."
    )


def synthetic_pairs(num: int, seed: int, rule: str = "polite") -> list[PreferencePair]:
    """`num` pairs following a learnable rule (deterministic in `seed`).

    "polite": the same reasoning and answer; the chosen summary ends with a polite closing,
    the rejected one with a curt closing; the reasoning quotes a random closing of either
    kind, so a model must judge the summary, not the whole response. "arithmetic": the
    chosen summary states the right sum of two digits, the rejected a wrong one (harder: the
    model must add).
    """
    if rule not in RULES:
        raise ValueError(f"rule: expected one of {RULES}, got {rule!r}")
    if num < 0:
        raise ValueError(f"num: expected >= 0, got {num}")
    make = _polite_pair if rule == "polite" else _arithmetic_pair
    rng = np.random.default_rng(seed)
    return [make(rng) for _ in range(num)]
