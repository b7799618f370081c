"""Behaviour metrics: hand-computed values on crafted English and Chinese completions."""

from __future__ import annotations

import numpy as np
import pytest

from r1.metrics import behaviour

EN = behaviour.REFLECTION_WORDS["en"]
ZH = behaviour.REFLECTION_WORDS["zh"]


@pytest.mark.parametrize(
    "text,count",
    [
        ("Wait, 2+2=4.", 1),
        ("wait... WAIT! wait", 3),
        ("waiting for the bus", 0),  # "wait" inside a longer word does not count
        ("await the result", 0),
        ("wait_for(x) and wait2", 0),  # identifiers are words too
        ("Let me check: 3+4=7. Let me check again.", 2),  # "let me check" counted once each
        ("check again, then re-check and recheck", 3),
        ("Hmm. hmmm", 1),  # "hmmm" is another word
        ("I verified it", 0),  # inflections are not listed, so not counted
        ("double-check", 1),  # the longest phrase wins, no double count of "check"
        ("", 0),
    ],
)
def test_english_word_boundaries(text, count):
    assert behaviour.count_reflections(text, EN) == count


@pytest.mark.parametrize(
    "text,count",
    [
        ("我们等等再看", 1),  # no spaces in Chinese: substrings count
        ("等等等等", 2),  # non-overlapping
        ("让我重新检查一下", 2),  # 重新 + 检查
        ("嗯，验证一下：答案是7", 2),
        ("答案是7", 0),
        ("wait 等等", 1),  # the Chinese list does not count English words
    ],
)
def test_chinese_matches_without_spaces(text, count):
    assert behaviour.count_reflections(text, ZH) == count


def test_mixed_custom_list_and_bad_lists():
    words = EN + ZH
    assert behaviour.count_reflections("Wait，等等", words) == 2
    assert behaviour.count_reflections("x等wait等x", words) == 1  # CJK neighbours are boundaries
    with pytest.raises(ValueError, match="non-empty"):
        behaviour.count_reflections("wait", ["wait", " "])
    with pytest.raises(ValueError, match="no default list"):
        behaviour.reflection_counts(["x"], language="xx")


def test_rates_and_shares_by_hand():
    counts = np.array([2, 0, 1, 0])
    lengths = np.array([100, 50, 200, 150])
    assert behaviour.reflection_per_1k(counts, lengths) == pytest.approx(1000 * 3 / 500)
    assert behaviour.reflection_share(counts) == 0.5
    assert behaviour.reflection_per_1k([], []) == 0.0
    assert behaviour.per_difficulty([1.0, 0.0, 1.0, 1.0], [3, 3, 5, 5]) == {3: 0.5, 5: 1.0}
    with pytest.raises(ValueError, match="differ in length"):
        behaviour.reflection_per_1k([1, 2], [10])


def test_cot_language_share():
    completions = [
        "<think>we add the numbers</think> <answer>7</answer>",  # 4/4 English
        "<think>我们 add</think>",  # 我, 们 (2 Han words) + add: 1/3 English
        "<think>123</think>",  # no words: left out
    ]
    assert behaviour.cot_language_share(completions, "en") == pytest.approx((1 + 1 / 3) / 2)
    assert behaviour.cot_language_share(completions, "zh") == pytest.approx((0 + 2 / 3) / 2)
    assert behaviour.cot_language_share(["123"], "en") is None


def test_behaviour_metrics_english_batch():
    completions = [
        "<think>3+4=7. Wait, let me check: 7.</think> <answer>7</answer>",  # 2 reflections
        "<think>5+5=10</think> <answer>10</answer>",
        "<think>Hmm, 9+9=18. Waiting is not a reflection.</think> <answer>18</answer>",  # 1
        "<answer>4</answer>",
    ]
    lengths = [40, 20, 30, 10]
    correct = [True, False, True, True]
    difficulties = [2, 2, 4, 4]
    m = behaviour.behaviour_metrics(completions, lengths, correct, difficulties, language="en")
    assert m["behaviour/reflection_per_1k"] == pytest.approx(1000 * 3 / 100)
    assert m["behaviour/reflection_share"] == pytest.approx(2 / 4)
    assert m["behaviour/length/d2"] == 30.0 and m["behaviour/length/d4"] == 20.0
    assert m["behaviour/accuracy/d2"] == 0.5 and m["behaviour/accuracy/d4"] == 1.0
    assert m["behaviour/reflection_per_1k/d2"] == pytest.approx(1000 * 2 / 60)
    assert m["behaviour/reflection_per_1k/d4"] == pytest.approx(1000 * 1 / 40)
    # Every completion has English words only (the last has no <think>: its whole text is used).
    assert m["behaviour/language_share"] == 1.0
    assert all(isinstance(v, float) for v in m.values())


def test_behaviour_metrics_chinese_batch_without_difficulties():
    completions = ["<think>等等，我重新算一下</think>", "<think>答案 is 5</think>"]
    m = behaviour.behaviour_metrics(completions, [8, 4], [1.0, 0.0], language="zh")
    assert m["behaviour/reflection_per_1k"] == pytest.approx(1000 * 2 / 12)
    assert m["behaviour/reflection_share"] == 0.5
    # words: 等 等 我 重 新 算 一 下 (8 Han) | 答 案 (Han) + is (Latin): 2/3
    assert m["behaviour/language_share"] == pytest.approx((1 + 2 / 3) / 2)
    assert not any(k.startswith(("behaviour/length", "behaviour/accuracy")) for k in m)
    with pytest.raises(ValueError, match="differ in length"):
        behaviour.behaviour_metrics(completions, [8], [1.0, 0.0])
