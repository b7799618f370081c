"""Math accuracy: agreement with math_verify on tricky equivalences, hostile answers, timeouts."""

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

math_verify = pytest.importorskip("math_verify")

from r1 import rewards  # noqa: E402

# (gold, final answer as the model writes it)
TABLE = [
    ("\\frac{1}{2}", "0.5"),
    ("\\frac{1}{2}", "\\frac12"),
    ("0.5", "\\dfrac{1}{2}"),
    ("\\frac{1}{2}", "0.51"),
    ("[1, 2)", "[1,2)"),
    ("(1, 2]", "[1, 2]"),
    ("10", "10\\text{ cm}"),
    ("x = 3", "3"),
    ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}"),
    ("1, 2", "2, 1"),
    ("50\\%", "0.5"),
    ("\\pi", "3.14159"),
    ("2", "3"),
    ("-1", "- 1"),
    ("\\infty", "\\infty"),
]


def _verify(gold, pred):
    gold_parsed = math_verify.parse("$" + gold + "$")
    return bool(math_verify.verify(gold_parsed, math_verify.parse("\\boxed{" + pred + "}")))


def test_math_agrees_with_math_verify():
    golds = [g for g, _ in TABLE] * 2
    completions = [f"<think>work</think><answer>\\boxed{{{p}}}</answer>" for _, p in TABLE]
    completions += [f"so the result is \\boxed{{{p}}}." for _, p in TABLE]
    out = rewards.get("math")([""] * len(golds), completions, answer=golds)
    expected = [_verify(g, p) for g, p in TABLE] * 2
    np.testing.assert_array_equal(out, np.asarray(expected, np.float32))
    assert out[0] == 1 and out[3] == 0  # the library says 1/2 == 0.5 and != 0.51


def test_math_plain_answer_tag_and_reasons():
    completions = [
        "<answer>0.5</answer>",
        "<answer>\\frac{1}{2}</answer>",
        "",
        "no answer here",
        "<answer>7</answer>",
        "<answer>\\boxed{}</answer>",
    ]
    out, reasons = rewards.get("math").detailed(
        [""] * 6, completions, answer=["1/2", "\\frac{1}{2}", "1", "1", "8", "1"]
    )
    np.testing.assert_array_equal(out, [1, 1, 0, 0, 0, 0])
    assert reasons[2:5] == ["no_answer", "no_answer", ""]


def test_math_hostile_answers_score_zero_fast():
    hostile = [
        "10**10**10",
        "10^{10^{10}}",
        "(" * 3000 + "1" + ")" * 3000,
        "\\frac{" * 500 + "1",
        "\udcff\udcfe",
        "9" * 20000,
        "\\boxed{" * 200,
    ]
    completions = [f"<answer>{h}</answer>" for h in hostile]
    start = time.monotonic()
    out, reasons = rewards.get("math").detailed(
        [""] * len(hostile), completions, answer=["2"] * len(hostile), timeout=1
    )
    assert time.monotonic() - start < 30
    np.testing.assert_array_equal(out, np.zeros(len(hostile)))
    assert np.isfinite(out).all()


def test_math_timeout_kills_and_recovers(tmp_path, monkeypatch):
    from r1.rewards import math as math_reward

    # A worker stuck in C code ignores math-verify's alarm: simulate it with a worker that
    # hangs on "hang" and answers otherwise; the parent must kill it at the deadline and go on.
    worker = tmp_path / "worker.py"
    worker.write_text(
        "import json, sys, time\n"
        "print(json.dumps({'ready': True}), flush=True)\n"
        "for line in sys.stdin:\n"
        "    if 'hang' in line:\n"
        "        time.sleep(3600)\n"
        "    print(json.dumps({'ok': True, 'reason': ''}), flush=True)\n"
    )
    monkeypatch.setattr(math_reward, "_WORKER", str(worker))
    pool = math_reward.MathVerifyPool(1)
    try:
        start = time.monotonic()
        results = pool.run([("1", "hang"), ("2", "2"), ("3", "hang"), ("4", "4")], timeout_s=1)
        elapsed = time.monotonic() - start
        assert results == [(False, "timeout"), (True, ""), (False, "timeout"), (True, "")]
        assert elapsed < 2 * (3 * 1 + 1) + 5
    finally:
        pool.close()


@settings(max_examples=25, deadline=None)
@given(st.text(max_size=80))
def test_math_fuzz_never_raises(text):
    out = rewards.get("math")([""], [f"<answer>{text}</answer>"], answer=["1"], timeout=1)
    assert out.shape == (1,) and np.isfinite(out).all()
