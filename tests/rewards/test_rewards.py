"""Text rewards (format, procedural, language, shaping), RewardSpec, token twins, fuzzing."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1 import rewards
from r1.rewards import countdown, extract, language, shaping, tokens
from r1.testing import DummyTokenizer

GOOD = "<think>\nadd 2 and 2\n</think>\n<answer>4</answer>"
P = [""]


def score(name, completions, **fields):
    return rewards.get(name)([""] * len(completions), completions, **fields)


def test_registry_and_protocol():
    assert {"math", "code", "format_strict", "countdown", "language"} <= set(rewards.names())
    assert "format_strict_tokens" in rewards.names("token")
    with pytest.raises(ValueError, match="unknown reward"):
        rewards.get("nope")
    out = score("format_strict", [GOOD, ""])
    assert out.dtype == np.float32 and out.shape == (2,)


@pytest.mark.parametrize(
    "text, strict, lenient, count",
    [
        (GOOD, 1, 1, 1.0),
        ("  " + GOOD + "\n", 1, 1, 1.0),
        ("<think></think><answer></answer>", 1, 1, 1.0),
        ("", 0, 0, 0.0),
        ("just an answer 4", 0, 0, 0.0),
        ("<think>a</think>", 0, 0, 0.5),
        ("<answer>4</answer><think>a</think>", 0, 0, 1.0),  # wrong order
        ("<think>a<think>b</think></think><answer>4</answer>", 0, 1, 0.5),  # nested
        ("<think>a</think> text <answer>4</answer>", 0, 1, 1.0),
        ("hi <think>a</think><answer>4</answer>", 0, 1, 1.0),
        ("<think>a</think><answer>4</answer> trailing", 0, 1, 1.0),
        ("<think>a</think><answer>4</answer><answer>5</answer>", 0, 1, 0.5),
        ("<think>a</think><answer>4", 0, 0, 0.75),
    ],
)
def test_format(text, strict, lenient, count):
    assert score("format_strict", [text])[0] == strict
    assert score("format_lenient", [text])[0] == lenient
    assert score("tag_count", [text])[0] == count


def test_format_reasons():
    spec = rewards.RewardSpec.from_config([("format_strict", 1.0, {})])
    result = spec(["", "", ""], ["", "no tags", "<think>x</think>"])
    assert result.failures == {
        "format_strict/empty": 1,
        "format_strict/missing_think": 1,
        "format_strict/missing_answer": 1,
    }


def test_extractors():
    assert extract.final_answer("so \\boxed{\\frac{1}{2}} done") == "\\boxed{\\frac{1}{2}}"
    assert extract.final_answer("<answer>x \\boxed{3}</answer>") == "\\boxed{3}"
    assert extract.final_answer("<answer> 7 </answer>") == " 7 "
    assert extract.final_answer("\\boxed{unclosed") is None
    assert extract.last_code_block("a\n```python\nx=1\n```\nb\n```\ny=2\n```") == "y=2\n"
    assert extract.last_code_block("no code") is None


def test_arithmetic():
    texts = [
        "<answer>42</answer>",
        "<answer> -7 \n</answer>",
        "<answer>4 2</answer>",
        "<answer>0042</answer>",
        "42",
        "<answer>42.0</answer>",
        "<answer>-0</answer>",
    ]
    out = score("arithmetic", texts, target=[42, -7, 42, 42, 42, 42, 0])
    np.testing.assert_array_equal(out, [1, 1, 0, 1, 0, 0, 1])


@pytest.mark.parametrize(
    "expression, value, reason",
    [
        ("(25 - 5) * 3 + 4", 64, None),
        ("100 / (7 - 2)", 20, None),
        ("-(3) + 10", 7, None),
        ("3 * 3", None, "number_reuse"),
        ("99 + 1", None, "bad_number"),
        ("2 ** 5", None, "bad_operator"),
        ("10**10**10", None, "bad_operator"),
        ("(" * 5000 + "1" + ")" * 5000, None, "too_long"),
        ("(" * 40 + "3" + ")" * 40, None, "too_deep"),
        ("3 / (10 - 10)", None, "div_zero"),
        ("1.5 + 3", None, "bad_number"),
        ("__import__('os')", None, "bad_operator"),
        ("3 +", None, "syntax"),
        ("", None, "syntax"),
    ],
)
def test_countdown_evaluator(expression, value, reason):
    numbers = [3, 4, 5, 25, 100, 7, 2, 10, 10, 10]
    if reason is None:
        assert countdown.evaluate_countdown(expression, numbers) == value
    else:
        with pytest.raises(countdown.CountdownError) as info:
            countdown.evaluate_countdown(expression, numbers)
        assert info.value.reason == reason


def test_countdown_reward():
    texts = [
        "<think>hm</think><answer>(25 - 5) * 3 + 4</answer>",
        "<answer>25 * 3 = 75</answer>",
        "<answer>25 ** 3</answer>",
        "nothing",
    ]
    fields = dict(numbers=[[25, 5, 3, 4]] * 4, target=[64, 64, 64, 64])
    out, reasons = rewards.get("countdown").detailed(P * 4, texts, **fields)
    np.testing.assert_array_equal(out, [1, 0, 0, 0])
    assert reasons == ["", "", "bad_operator", "no_answer"]


def test_language():
    assert language.language_share("the cat sat", "en") == 1.0
    assert language.language_share("我们 think", "zh") == pytest.approx(2 / 3)
    assert language.language_share("", "en") is None
    assert language.language_share("nous avons le chat et the dog", "fr") == pytest.approx(4 / 5)
    out, reasons = rewards.get("language").detailed(
        P * 3,
        ["<think>计算一下</think><answer>4</answer>", "<think>compute it</think>", ""],
        language=["zh", "zh", "en"],
    )
    np.testing.assert_allclose(out, [1.0, 0.0, 0.0])
    assert reasons == ["", "", "no_words"]
    with pytest.raises(ValueError, match="unknown language"):
        language.language_share("hello", "xx")


def test_cosine_length_matches_formula():
    # The paper's shape: short correct > long correct > long wrong > short wrong; exceed.
    lengths = np.array([0, 50, 100, 0, 50, 100, 150])
    correct = np.array([1, 1, 1, 0, 0, 0, 1], bool)
    out = shaping.cosine_length_values(lengths, correct, 100)
    np.testing.assert_allclose(out, [2.0, 1.5, -10.0, -10.0, -5.0, -10.0, -10.0], atol=1e-5)
    out = shaping.cosine_length_values(np.array([25]), np.array([True]), 100)
    assert out[0] == pytest.approx(1 + 0.5 * (1 + math.cos(math.pi / 4)))


def test_overlong_and_repetition():
    np.testing.assert_allclose(
        shaping.overlong_values(np.array([10, 80, 90, 100, 120]), 100, 20), [0, 0, -0.5, -1, -1]
    )
    assert shaping.repetition_value("a b c a b c a b c", 3) == pytest.approx(-(1 - 3 / 7))
    assert shaping.repetition_value("one two", 3) == 0.0
    out, reasons = rewards.get("overlong").detailed(
        P * 2, ["x" * 5, "x" * 30], max_length=20, cache_length=10
    )
    np.testing.assert_allclose(out, [0, -1])
    assert reasons == ["", "overlong"]


def test_reward_spec_composes_and_counts():
    spec = rewards.RewardSpec.from_config(
        [
            ("format_strict", 0.5, {}),
            {"name": "arithmetic", "weight": 1.0},
            ("cosine_length", 0.1, {"max_length": 1000, "correct_from": "arithmetic"}),
        ]
    )
    texts = [GOOD, "<answer>5</answer>", ""]
    result = spec(["q"] * 3, texts, target=[4, 4, 4])
    assert set(result.breakdown) == {"format_strict", "arithmetic", "cosine_length"}
    np.testing.assert_array_equal(result.breakdown["arithmetic"], [1, 0, 0])
    expected = (
        0.5 * result.breakdown["format_strict"]
        + result.breakdown["arithmetic"]
        + 0.1 * result.breakdown["cosine_length"]
    )
    np.testing.assert_allclose(result.total, expected, rtol=1e-6)
    assert result.total.dtype == np.float32
    assert result.failures == {
        "format_strict/missing_think": 1,
        "format_strict/empty": 1,
        "arithmetic/no_answer": 1,
    }
    with pytest.raises(ValueError, match="unknown reward"):
        rewards.RewardSpec.from_config([("nope", 1.0, {})])
    with pytest.raises(ValueError, match="needs the batch field 'target'"):
        spec(["q"], ["x"])


# ------------------------------------------------------------------ token rewards vs text
TOK = DummyTokenizer()
IDS = tokens.TagIds.from_tokenizer(TOK)

_piece = st.sampled_from(
    [
        "<think>",
        "</think>",
        "<answer>",
        "</answer>",
        " ",
        "\n",
        "-",
        "7",
        "42",
        "0",
        "x",
        "<",
        "think",
        "</",
        "答",
        "\t",
    ]
)
_texts = st.lists(_piece, max_size=14).map("".join)


@functools.cache
def _jitted(name, static=()):
    return jax.jit(functools.partial(rewards.get(name).fn, ids=IDS, **dict(static)))


def _token_scores(name, texts, length=96, static=(), **fields):
    """Token reward on ``texts``, padded to 8 rows so each reward compiles once."""
    rows = len(texts)
    padded = list(texts) + [""] * (-rows % 8)
    toks, mask = tokens.encode_batch(TOK, padded, length)
    fields = {
        k: np.concatenate([np.asarray(v), np.zeros(len(padded) - rows, np.asarray(v).dtype)])
        for k, v in fields.items()
    }
    return np.asarray(_jitted(name, static)(jnp.asarray(toks), jnp.asarray(mask), **fields))[:rows]


def test_tag_ids_are_multi_token():
    assert all(len(t) > 1 for t in IDS.tags)


@settings(max_examples=60, deadline=None)
@given(st.lists(_texts, min_size=1, max_size=8))
def test_token_format_rewards_equal_text(texts):
    for text_name in ("format_strict", "format_lenient", "tag_count"):
        np.testing.assert_array_equal(
            _token_scores(text_name + "_tokens", texts), score(text_name, texts), text_name
        )


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_texts, st.integers(-(10**6), 10**6)), min_size=1, max_size=8))
def test_token_arithmetic_equals_text(rows):
    texts = [t for t, _ in rows] + [f"<answer> {v} </answer>" for _, v in rows]
    targets = [v for _, v in rows] * 2
    token = _token_scores("arithmetic_tokens", texts, target=np.asarray(targets, np.int32))
    np.testing.assert_array_equal(token, score("arithmetic", texts, target=targets))
    assert token[len(rows) :].all()


def test_token_arithmetic_cases():
    texts = [
        "<answer>42</answer>",
        "<answer>-42</answer>",
        "<answer>0042</answer>",
        "<answer>142</answer>",
        "<answer>4 2</answer>",
        "<answer>12345678901</answer>",
        "<answer>-0</answer>",
        "<answer></answer>",
    ]
    targets = [42, 42, 42, 42, 42, 1234567890, 0, 0]
    token = _token_scores("arithmetic_tokens", texts, target=np.asarray(targets, np.int32))
    np.testing.assert_array_equal(token, score("arithmetic", texts, target=targets))
    np.testing.assert_array_equal(token, [1, 0, 1, 0, 0, 0, 1, 0])


def test_token_length_rewards_equal_text():
    texts = ["a" * n for n in (0, 10, 50, 90, 99, 100, 140)]
    correct = np.array([1, 0, 1, 0, 1, 0, 1], bool)
    static = (("max_length", 100),)
    token = _token_scores("cosine_length_tokens", texts, length=160, static=static, correct=correct)
    text = rewards.get("cosine_length")(P * 7, texts, correct=correct, max_length=100)
    np.testing.assert_allclose(token, text, rtol=1e-5, atol=1e-5)
    token = _token_scores(
        "overlong_tokens", texts, length=160, static=(("max_length", 100), ("cache_length", 20))
    )
    text = rewards.get("overlong")(P * 7, texts, max_length=100, cache_length=20)
    np.testing.assert_allclose(token, text, rtol=1e-6)


def test_token_total_jits():
    texts = [GOOD, "<think>x</think>"]
    toks, mask = tokens.encode_batch(TOK, texts, 64)
    terms = (("format_strict_tokens", 1.0, {"ids": IDS}), ("tag_count_tokens", 0.5, {"ids": IDS}))
    total, parts = jax.jit(functools.partial(tokens.token_total, terms))(toks, mask)
    np.testing.assert_allclose(total, [1.5, 0.25])
    assert set(parts) == set(n for n, _, _ in terms)


# ------------------------------------------------------------------ fuzzing: never raise, finite
_any_text = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=200).map(lambda b: b.decode("utf-8", "surrogateescape")),
    _texts,
)


@settings(max_examples=150, deadline=None)
@given(_any_text)
def test_parsers_never_raise(text):
    extract.final_answer(text)
    extract.last_code_block(text)
    extract.think_content(text)
    countdown.parse_integer_answer(text)
    try:
        countdown.evaluate_countdown(text, [1, 2, 3])
    except countdown.CountdownError:
        pass
    for name, fields in [
        ("format_strict", {}),
        ("format_lenient", {}),
        ("tag_count", {}),
        ("arithmetic", {"target": [3]}),
        ("countdown", {"numbers": [[1, 2]], "target": [3]}),
        ("language", {"language": "zh"}),
        ("repetition", {}),
        ("cosine_length", {"correct": [True], "max_length": 50}),
        ("overlong", {"max_length": 50, "cache_length": 10}),
    ]:
        out = rewards.get(name)([text], [text], **fields)
        assert out.shape == (1,) and np.isfinite(out).all(), name


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="0123456789+-*/() ", max_size=60))
def test_countdown_fuzz_matches_exact_arithmetic(expression):
    try:
        value = countdown.evaluate_countdown(expression, list(range(10)) * 3)
    except countdown.CountdownError:
        return
    assert math.isfinite(float(value))
