"""Procedural tasks (r1.data.procedural): determinism, disjoint splits, correct answers."""

import ast
import collections
import operator
import re
from fractions import Fraction

import pytest

from r1.data import procedural as P
from r1.data import templates
from r1.data.tokenizers import build_demo_tokenizer

TASKS = [P.Addition(), P.Multiplication(), P.Countdown()]
_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def exact_eval(expr: str) -> Fraction:
    """Evaluate + - * / and parentheses over integers exactly (test helper, no eval())."""

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError(ast.dump(node))

    return ev(ast.parse(expr, mode="eval"))


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_deterministic_by_seed_and_index(task):
    a = [P.generate(task, 3, i) for i in range(50)]
    b = [P.generate(task, 3, i) for i in reversed(range(50))][::-1]
    assert a == b
    c = [P.generate(task, 4, i) for i in range(50)]
    assert [r["prompt"] for r in a] != [r["prompt"] for r in c]
    assert list(zip(range(5), P.iterate(task, 3, start=10))) == [
        (k, P.generate(task, 3, 10 + k)) for k in range(5)
    ]
    assert P.ProceduralSource(task, 3)[7] == a[7]
    assert len({r["id"] for r in a}) == 50


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_splits_disjoint(task):
    train = [P.generate(task, 0, i, "train") for i in range(1000)]
    test = [P.generate(task, s, i, "test") for s in range(2) for i in range(200)]
    assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in test})
    assert all(P.split_of(task.name, r["prompt"], task.held_out_fraction) == "train" for r in train)
    assert all(r["split"] == "test" for r in test)
    with pytest.raises(ValueError, match="split"):
        P.generate(task, 0, 0, "validation")


def test_arithmetic_answers_and_difficulty():
    add = P.Addition()
    rows = [P.generate(add, 0, i) for i in range(700)]
    for r in rows:
        terms = [int(t) for t in r["prompt"].split("+")]
        assert int(r["answer"]) == sum(terms) and len(terms) == r["difficulty"]
        assert all(10 <= t <= 99 for t in terms)
        assert P.thinking(r).split("=")[-1] == r["answer"]
        assert r["task"] == "add"
    counts = collections.Counter(r["difficulty"] for r in rows)
    assert set(counts) == set(range(2, 9)) and min(counts.values()) > 50
    assert P._column_carries([55, 55]) == 2 and P._column_carries([11, 22]) == 0
    mul = P.Multiplication()
    for i in range(200):
        r = P.generate(mul, 1, i)
        a, b = (int(x) for x in r["prompt"].split("*"))
        assert int(r["answer"]) == a * b and len(str(b)) == r["difficulty"]
        assert mul.thinking(r).split("=")[-1] == r["answer"]


def test_countdown_solvable_with_each_number_once():
    cd = P.Countdown()
    for i in range(300):
        r = P.generate(cd, 0, i)
        assert exact_eval(r["answer"]) == r["target"]
        used = sorted(int(x) for x in re.findall(r"\d+", r["answer"]))
        assert used == sorted(r["numbers"]) and len(r["numbers"]) == r["difficulty"]
        assert 1 <= r["target"] <= cd.max_target
        assert r["prompt"] == P.countdown_prompt(r["numbers"], r["target"])
        assert cd.thinking(r).split("=")[-1] == str(r["target"])
    ops = collections.Counter(c for i in range(300) for c in P.generate(cd, 0, i)["answer"])
    assert min(ops[c] for c in "+-*/") >= 5  # division is rarer: it must be exact


def test_fixed_set_and_difficulty_override():
    rows = P.fixed_set(P.Addition(), 0, n_per_difficulty=3)
    assert [r["difficulty"] for r in rows] == [d for d in range(2, 9) for _ in range(3)]
    assert all(r["split"] == "test" for r in rows)
    with pytest.raises(ValueError, match="difficulty"):
        P.generate(P.Addition(), 0, 0, difficulty=9)
    with pytest.raises(ValueError, match="task"):
        P.make_task("sudoku")
    with pytest.raises(ValueError, match="min_terms"):
        P.Addition(min_terms=1)


def test_pretraining_mixture():
    rows = [r for _, r in zip(range(600), P.pretraining_corpus(P.Addition(), 0, 0.2))]
    share = sum(r["think"] for r in rows) / len(rows)
    assert 0.13 < share < 0.27
    tok = build_demo_tokenizer()
    for r in rows[:50]:
        assert r["text"] == r["prompt_text"] + r["completion"]
        assert r["prompt_text"] == templates.render_r1_zero(r["prompt"])
        assert r["completion"].endswith(f"<answer>{r['answer']}</answer>")
        body = r["completion"].split("<think>")[1].split("</think>")[0]
        assert (body == P.thinking(r)) if r["think"] else body == ""
        assert tok.decode(tok.encode(r["text"])) == r["text"]
    again = [r for _, r in zip(range(600), P.pretraining_corpus(P.Addition(), 0, 0.2))]
    assert again == rows
