"""Which sampled completions become SFT rows: a pure function of the scored candidates.

`select(candidates, config)` looks at each prompt's candidates in sample-index order and drops a
candidate at the first check it fails, in this order (the drop reason counted):

1. ``truncated``: it hit the token limit without ending (when `drop_truncated`); SFT on it
   would teach the model not to stop.
2. ``incorrect``: its `correct_reward` score is below `min_correct` (1.0: fully correct; for the
   fraction-of-tests `code` reward it means every test passed).
3. ``low_<name>``: another reward of `min_rewards` is below its minimum (e.g. strict format).
4. ``filter:<rule>``: the first readability rule of `r1.rejection.filters` it breaks
   (``filter:mixed_language`` ...). Every rule it breaks is also counted in `filter_hits`.
5. ``duplicate``: its completion equals, after whitespace normalisation (runs of whitespace ->
   one space, ends stripped; otherwise exact), one already kept for the same prompt. The lowest
   sample index wins. The same completion for different prompts is not a duplicate.
6. ``over_cap``: the prompt already has `max_per_prompt` rows. Which ones stay is deterministic:
   ``cap_order="index"`` keeps the lowest sample indices, ``"shortest"`` the shortest
   completions (characters; ties broken by sample index), which favours concise reasoning.

Kept rows keep the prompts' first-appearance order and, within a prompt, sample-index order.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping, Sequence

from r1.rejection.filters import FilterConfig, apply_filters

CAP_ORDERS = ("index", "shortest")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One scored completion.

    prompt_id: the prompt's unique id. sample_index: 0..k-1 among that prompt's samples.
    completion: the text the model wrote after the prompt (EOS removed). rewards: reward term
    label -> unweighted score. truncated: it hit max_new_tokens without ending. num_tokens:
    generated tokens (0 when unknown).
    """

    prompt_id: str
    sample_index: int
    completion: str
    rewards: Mapping[str, float]
    truncated: bool = False
    num_tokens: int = 0


@dataclasses.dataclass(frozen=True)
class SelectConfig:
    """The selection rules (module docstring).

    correct_reward: reward label whose score decides correctness. min_correct: lowest correct
    score. min_rewards: (label, minimum) pairs every kept row must also reach. drop_truncated:
    drop completions that hit the token limit. max_per_prompt: rows kept per prompt (0: all).
    cap_order: "index" or "shortest". filters: the readability filters.
    """

    correct_reward: str
    min_correct: float = 1.0
    min_rewards: tuple[tuple[str, float], ...] = ()
    drop_truncated: bool = True
    max_per_prompt: int = 4
    cap_order: str = "index"
    filters: FilterConfig = dataclasses.field(default_factory=FilterConfig)

    def __post_init__(self):
        if not self.correct_reward:
            raise ValueError("SelectConfig.correct_reward must name a reward term")
        if self.max_per_prompt < 0:
            raise ValueError(
                f"SelectConfig.max_per_prompt must be >= 0 (0: no cap), got {self.max_per_prompt}"
            )
        if self.cap_order not in CAP_ORDERS:
            raise ValueError(
                f"SelectConfig.cap_order must be one of {CAP_ORDERS}, got {self.cap_order!r}"
            )
        for entry in self.min_rewards:
            if len(entry) != 2 or not isinstance(entry[0], str):
                raise ValueError(
                    f"SelectConfig.min_rewards: expected (label, minimum) pairs, got {entry!r}"
                )

    @property
    def reward_labels(self) -> tuple[str, ...]:
        """Reward labels the selection reads (each must be scored)."""
        return (self.correct_reward, *(name for name, _ in self.min_rewards))


@dataclasses.dataclass(frozen=True)
class Selection:
    """Result of `select`.

    kept: the kept candidates. dropped: reason -> count (each dropped candidate counted once,
    under its first failed check). filter_hits: filter rule -> count of candidates (among those
    that passed the reward checks) breaking it.
    """

    kept: list[Candidate]
    dropped: dict[str, int]
    filter_hits: dict[str, int]

    @property
    def num_candidates(self) -> int:
        return len(self.kept) + sum(self.dropped.values())


def normalize_whitespace(text: str) -> str:
    """Runs of whitespace -> one space, ends stripped (the deduplication key)."""
    return " ".join(text.split())


def _score(candidate: Candidate, label: str) -> float:
    if label not in candidate.rewards:
        raise ValueError(
            f"candidate {candidate.prompt_id!r}#{candidate.sample_index} has no reward "
            f"{label!r}; scored rewards: {sorted(candidate.rewards)}"
        )
    return float(candidate.rewards[label])


def check(candidate: Candidate, config: SelectConfig) -> tuple[str, list[str]]:
    """The first failed per-candidate check (steps 1-4 of the module docstring; "" when it
    passes) and the list of filter rules it breaks (empty unless the reward checks passed)."""
    if config.drop_truncated and candidate.truncated:
        return "truncated", []
    if _score(candidate, config.correct_reward) < config.min_correct:
        return "incorrect", []
    for label, minimum in config.min_rewards:
        if _score(candidate, label) < float(minimum):
            return f"low_{label}", []
    broken = apply_filters(candidate.completion, config.filters)
    return (f"filter:{broken[0]}" if broken else ""), broken


def select(candidates: Sequence[Candidate], config: SelectConfig) -> Selection:
    """Keep the correct, readable, distinct candidates, at most `max_per_prompt` per prompt."""
    by_prompt: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_prompt.setdefault(c.prompt_id, []).append(c)
    dropped: collections.Counter[str] = collections.Counter()
    hits: collections.Counter[str] = collections.Counter()
    kept: list[Candidate] = []
    for prompt_id, group in by_prompt.items():
        indices = [c.sample_index for c in group]
        if len(set(indices)) != len(indices):
            raise ValueError(f"prompt {prompt_id!r}: repeated sample indices {sorted(indices)}")
        passing, seen = [], set()
        for c in sorted(group, key=lambda c: c.sample_index):
            reason, broken = check(c, config)
            hits.update(broken)
            if not reason:
                key = normalize_whitespace(c.completion)
                if key in seen:
                    reason = "duplicate"
                seen.add(key)
            if reason:
                dropped[reason] += 1
            else:
                passing.append(c)
        if config.cap_order == "shortest":
            passing.sort(key=lambda c: (len(c.completion), c.sample_index))
        cap = config.max_per_prompt or len(passing)
        dropped["over_cap"] += max(0, len(passing) - cap)
        kept += sorted(passing[:cap], key=lambda c: c.sample_index)
    return Selection(
        kept=kept,
        dropped={k: v for k, v in sorted(dropped.items()) if v},
        filter_hits=dict(sorted(hits.items())),
    )
