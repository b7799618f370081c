"""Procedural reasoning tasks: unlimited, deterministic by seed, with disjoint held-out splits.

Tasks (frozen dataclasses; `TASKS` maps names to them):
* `Addition`: the sum of N multi-digit terms (N = difficulty, 2..8 by default), carries counted.
* `Multiplication`: a * b; difficulty = digits of b (= number of partial products).
* `Countdown`: TinyZero-style: reach a target from 3-4 numbers with + - * / and parentheses,
  each number used once; guaranteed solvable (the target is built from a random expression
  over all the numbers, which is kept as the reference answer); difficulty = count of numbers.

Every example is a row dict:
    {"prompt": "12+34+56", "answer": "102", "difficulty": 3, "task": "add",
     "id": "add-train-0-17", "split": "train", ...task-specific fields...}
Row `i` of (task, seed, split) is a pure function of those four values (`generate`), so any
process can produce any row, in any order, without coordination. The split of a question is
decided by a hash of its prompt text (`split_of`): a question is in exactly one split, so train
and held-out sets are disjoint by construction, for every seed.

`thinking(row)` writes a worked solution (partial sums, partial products, countdown steps), and
`pretraining_example` / `pretraining_corpus` render the base-model pretraining mixture of the
CPU R1-Zero demo: a minority of examples show the worked solution inside `<think>`, most answer
directly (REFERENCE.md, "R1-Zero in miniature").
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Iterator
from fractions import Fraction
from typing import Any, ClassVar, Protocol

import numpy as np

from r1.data import templates

SPLITS = ("train", "test")


def split_of(task_name: str, prompt: str, held_out_fraction: float) -> str:
    """ "test" for a stable `held_out_fraction` of questions (by a hash of the text), else
    "train"."""
    digest = hashlib.blake2b(f"{task_name}\x00{prompt}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "little") / 2.0**64
    return "test" if u < held_out_fraction else "train"


def _random_number(rng: np.random.Generator, digits: int) -> int:
    lo = 10 ** (digits - 1) if digits > 1 else 0
    return int(rng.integers(lo, 10**digits))


def _column_carries(terms: list[int]) -> int:
    """Number of columns of the written sum that carry into the next column."""
    carries, carry, width = 0, 0, max(len(str(t)) for t in terms)
    for col in range(width):
        s = carry + sum((t // 10**col) % 10 for t in terms)
        carry = s // 10
        carries += carry > 0
    return carries


class Task(Protocol):
    """A procedural task: `sample(rng, difficulty)` a question row, `thinking(row)` its solution."""

    name: ClassVar[str]
    held_out_fraction: float

    def difficulties(self) -> range: ...

    def sample(self, rng: np.random.Generator, difficulty: int | None = None) -> dict[str, Any]: ...

    def thinking(self, row: dict[str, Any]) -> str: ...


@dataclasses.dataclass(frozen=True)
class Addition:
    """`a+b+c+...` of `difficulty` terms with `min_digits..max_digits` digits each."""

    name: ClassVar[str] = "add"
    min_terms: int = 2
    max_terms: int = 8
    min_digits: int = 2
    max_digits: int = 2
    held_out_fraction: float = 0.1

    def __post_init__(self):
        if not 2 <= self.min_terms <= self.max_terms:
            raise ValueError(f"min_terms/max_terms: expected 2 <= min <= max, got {self}")
        if not 1 <= self.min_digits <= self.max_digits:
            raise ValueError(f"min_digits/max_digits: expected 1 <= min <= max, got {self}")

    def difficulties(self) -> range:
        return range(self.min_terms, self.max_terms + 1)

    def sample(self, rng: np.random.Generator, difficulty: int | None = None) -> dict[str, Any]:
        n = (
            int(rng.integers(self.min_terms, self.max_terms + 1))
            if difficulty is None
            else difficulty
        )
        terms = [
            _random_number(rng, int(rng.integers(self.min_digits, self.max_digits + 1)))
            for _ in range(n)
        ]
        return {
            "prompt": "+".join(map(str, terms)),
            "answer": str(sum(terms)),
            "difficulty": n,
            "terms": terms,
            "carries": _column_carries(terms),
        }

    def thinking(self, row: dict[str, Any]) -> str:
        """Partial sums: "12+34=46, 46+56=102"."""
        terms = row["terms"]
        steps, acc = [], terms[0]
        for t in terms[1:]:
            steps.append(f"{acc}+{t}={acc + t}")
            acc += t
        return ", ".join(steps)


@dataclasses.dataclass(frozen=True)
class Multiplication:
    """`a*b` with a of `a_digits` digits and b of `difficulty` digits (`min_b..max_b_digits`)."""

    name: ClassVar[str] = "mul"
    a_digits: int = 3
    min_b_digits: int = 1
    max_b_digits: int = 3
    held_out_fraction: float = 0.1

    def __post_init__(self):
        if self.a_digits < 1 or not 1 <= self.min_b_digits <= self.max_b_digits:
            raise ValueError(f"digits: expected a_digits >= 1 and 1 <= min_b <= max_b, got {self}")

    def difficulties(self) -> range:
        return range(self.min_b_digits, self.max_b_digits + 1)

    def sample(self, rng: np.random.Generator, difficulty: int | None = None) -> dict[str, Any]:
        nb = (
            int(rng.integers(self.min_b_digits, self.max_b_digits + 1))
            if difficulty is None
            else difficulty
        )
        a, b = _random_number(rng, self.a_digits), _random_number(rng, nb)
        return {"prompt": f"{a}*{b}", "answer": str(a * b), "difficulty": nb, "terms": [a, b]}

    def thinking(self, row: dict[str, Any]) -> str:
        """Partial products by digit of b, then their running sum: "123*5=615, 123*40=4920,
        615+4920=5535"."""
        a, b = row["terms"]
        parts = []
        for k, d in enumerate(reversed(str(b))):
            if d != "0" or len(str(b)) == 1:
                parts.append(int(d) * 10**k)
        steps = [f"{a}*{p}={a * p}" for p in parts]
        acc = a * parts[0]
        for p in parts[1:]:
            steps.append(f"{acc}+{a * p}={acc + a * p}")
            acc += a * p
        return ", ".join(steps)


def countdown_prompt(numbers: list[int], target: int) -> str:
    """TinyZero's countdown question (the R1-Zero template adds the tag instructions)."""
    return (
        f"Using the numbers [{', '.join(map(str, numbers))}], create an equation that equals "
        f"{target}. You can use basic arithmetic operations (+, -, *, /) and each number can "
        "only be used once"
    )


@dataclasses.dataclass(frozen=True)
class Countdown:
    """Reach `target` from `difficulty` numbers in 1..max_number; solvable by construction.

    Row fields: `numbers` (list[int], shuffled), `target` (int), `answer` (a reference
    expression using every number once, e.g. "(36+55)-19-7"), `steps` (its evaluation steps).
    """

    name: ClassVar[str] = "countdown"
    min_numbers: int = 3
    max_numbers: int = 4
    max_number: int = 99
    max_target: int = 999
    held_out_fraction: float = 0.1

    def __post_init__(self):
        if not 2 <= self.min_numbers <= self.max_numbers:
            raise ValueError(f"min_numbers/max_numbers: expected 2 <= min <= max, got {self}")

    def difficulties(self) -> range:
        return range(self.min_numbers, self.max_numbers + 1)

    def sample(self, rng: np.random.Generator, difficulty: int | None = None) -> dict[str, Any]:
        n = (
            int(rng.integers(self.min_numbers, self.max_numbers + 1))
            if difficulty is None
            else difficulty
        )
        while True:
            numbers = [int(x) for x in rng.integers(1, self.max_number + 1, size=n)]
            # Combine random pairs until one expression is left (a random binary tree).
            items: list[tuple[Fraction, str, bool]] = [(Fraction(x), str(x), True) for x in numbers]
            steps: list[str] = []
            ok = True
            while len(items) > 1:
                i, j = (int(k) for k in rng.choice(len(items), size=2, replace=False))
                (va, ea, atom_a), (vb, eb, atom_b) = items[i], items[j]
                ops = "+-*/" if vb > 1 and (va / vb).denominator == 1 else "+-*"
                op = ops[int(rng.integers(len(ops)))]
                if op == "-" and va < vb:
                    (va, ea, atom_a), (vb, eb, atom_b) = (vb, eb, atom_b), (va, ea, atom_a)
                value = {"+": va + vb, "-": va - vb, "*": va * vb, "/": va / vb if vb else va}[op]
                left = ea if atom_a else f"({ea})"
                right = eb if atom_b else f"({eb})"
                steps.append(f"{va}{op}{vb}={value}")
                items = [x for k, x in enumerate(items) if k not in (i, j)]
                items.append((value, f"{left}{op}{right}", False))
                if value.denominator != 1 or value < 0:
                    ok = False
            value, expr, _ = items[0]
            if ok and 1 <= value <= self.max_target:
                break
        target = int(value)
        shown = [numbers[k] for k in rng.permutation(n)]
        return {
            "prompt": countdown_prompt(shown, target),
            "answer": expr,
            "difficulty": n,
            "numbers": shown,
            "target": target,
            "steps": steps,
        }

    def thinking(self, row: dict[str, Any]) -> str:
        """The reference expression's evaluation steps: "36+55=91, 91-19=72, 72-7=65"."""
        return ", ".join(row["steps"])


TASKS: dict[str, type] = {"add": Addition, "mul": Multiplication, "countdown": Countdown}


def make_task(name: str, **kwargs: Any) -> Task:
    """`TASKS[name](**kwargs)`, with an error naming the known tasks."""
    if name not in TASKS:
        raise ValueError(f"task: expected one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name](**kwargs)


# ------------------------------------------------------------------------------ generation
def generate(
    task: Task, seed: int, index: int, split: str = "train", difficulty: int | None = None
) -> dict[str, Any]:
    """Row `index` of `task`'s `split` for `seed` (a pure function of the arguments).

    Questions are drawn from `np.random.default_rng([seed, index, attempt])` until one falls in
    `split`; `difficulty` fixes the difficulty instead of drawing it uniformly.
    """
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed/index: expected non-negative integers, got {seed}, {index}")
    frac = task.held_out_fraction
    if (split == "test" and frac <= 0) or (split == "train" and frac >= 1):
        raise ValueError(f"held_out_fraction={frac} leaves split {split!r} empty")
    if difficulty is not None and difficulty not in task.difficulties():
        raise ValueError(
            f"difficulty: expected one of {list(task.difficulties())}, got {difficulty}"
        )
    for attempt in itertools.count():
        rng = np.random.default_rng([seed, index, attempt])
        row = task.sample(rng, difficulty)
        if split_of(task.name, row["prompt"], frac) == split:
            break
        if attempt > 10_000:
            raise ValueError(f"{task}: no {split!r} question found; is the question space tiny?")
    row.update(task=task.name, id=f"{task.name}-{split}-{seed}-{index}", split=split)
    return row


def iterate(
    task: Task, seed: int, split: str = "train", start: int = 0, difficulty: int | None = None
) -> Iterator[dict[str, Any]]:
    """Unlimited stream of rows `start, start + 1, ...`."""
    for i in itertools.count(start):
        yield generate(task, seed, i, split, difficulty)


def fixed_set(
    task: Task, seed: int, n_per_difficulty: int, split: str = "test"
) -> list[dict[str, Any]]:
    """An evaluation set: `n_per_difficulty` rows of each difficulty (ordered by difficulty)."""
    return [
        generate(task, seed, i, split, difficulty=d)
        for d in task.difficulties()
        for i in range(n_per_difficulty)
    ]


class ProceduralSource:
    """A grain random-access source: row `i` is `generate(task, seed, i, split)`.

    `len()` is `length` (default 2**31 - 1, i.e. unlimited for training purposes).
    """

    def __init__(
        self,
        task: Task,
        seed: int,
        split: str = "train",
        length: int = 2**31 - 1,
        difficulty: int | None = None,
    ):
        self.task, self.seed, self.split, self.length = task, seed, split, length
        self.difficulty = difficulty

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range [0, {self.length})")
        return generate(self.task, self.seed, int(index), self.split, self.difficulty)

    def __repr__(self) -> str:
        return f"ProceduralSource({self.task}, seed={self.seed}, split={self.split!r})"


# ------------------------------------------------------------------------------ pretraining text
def thinking(row: dict[str, Any]) -> str:
    """The worked solution of a procedural row (dispatch on `row["task"]`)."""
    return make_task(row["task"]).thinking(row)


def pretraining_example(row: dict[str, Any], think: bool) -> dict[str, Any]:
    """Render one row as R1-Zero text: prompt, then `<think>` with the worked solution (or
    empty when `think` is False), then `<answer>`.

    Returns `{"text", "prompt_text", "completion", "think", ...row}` where
    `text == prompt_text + completion` (train on `completion` only, or on all of `text`).
    """
    prompt_text = templates.render_r1_zero(row["prompt"])
    completion = templates.render_r1_zero_completion(thinking(row) if think else "", row["answer"])
    return {
        **row,
        "text": prompt_text + completion,
        "prompt_text": prompt_text,
        "completion": completion,
        "think": think,
    }


def pretraining_corpus(
    task: Task, seed: int, think_fraction: float = 0.2, split: str = "train", start: int = 0
) -> Iterator[dict[str, Any]]:
    """Unlimited base-model pretraining mixture: row `i` shows its worked solution with
    probability `think_fraction` (decided from `(seed, i)`), else answers directly."""
    if not 0.0 <= think_fraction <= 1.0:
        raise ValueError(f"think_fraction: expected a value in [0, 1], got {think_fraction}")
    for i in itertools.count(start):
        row = generate(task, seed, i, split)
        u = np.random.default_rng([seed, i, 2**31]).random()
        yield pretraining_example(row, think=bool(u < think_fraction))
