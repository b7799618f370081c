"""The one reward spec: construction errors, token + text + model totals, row selection, the
non-finite rule, per-batch failure counts, `encode_fields`, jit vs host, lazy imports."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1 import rewards
from r1.rewards import Reward, RewardSpec, RewardTerm
from r1.testing import DummyTokenizer

TOK = DummyTokenizer()
GOOD = "<think>a</think> <answer>4</answer>"
TEXTS = [GOOD, "<answer>5</answer>", "", "<think>b</think><answer>4</answer>"]


def rollout(texts, width=64):
    """completion int32[B, width] with EOS after each text, mask bool[B, width] incl. EOS."""
    tokens = np.zeros((len(texts), width), np.int32)
    mask = np.zeros((len(texts), width), bool)
    for i, text in enumerate(texts):
        ids = [*TOK.encode(text), TOK.eos_id]
        tokens[i, : len(ids)] = ids
        mask[i, : len(ids)] = True
    return jnp.asarray(tokens), jnp.asarray(mask), jnp.zeros(len(texts), bool)


def model_score(state, prompt_tokens, prompt_mask, completion, completion_mask, fields):
    length = completion_mask.sum(axis=1).astype(jnp.float32)
    return state["w"] * length, {"length": length}


def model_term(**kw):
    return RewardTerm("rm", kw.pop("weight", 0.5), kind="model", score=model_score, **kw)


def nan_text(prompts, completions, **_):
    values = [float("nan") if not c else (float("inf") if "5" in c else 1.0) for c in completions]
    return np.asarray(values, np.float32), ["" for _ in completions]


def nan_tokens(tokens, mask, **_):
    return jnp.where(mask.sum(axis=1) == 0, jnp.nan, 1.0).astype(jnp.float32)


NAN_TEXT = Reward("nan_text", "text", nan_text)
NAN_TOKENS = Reward("nan_tokens", "token", nan_tokens)


def test_construction_errors_name_the_term():
    with pytest.raises(ValueError, match="reward term 'nope': unknown reward"):
        RewardTerm("nope")
    with pytest.raises(ValueError, match="reward term 'm2'.*rows must be one of"):
        RewardTerm("math", key="m2", rows="some")
    with pytest.raises(ValueError, match="reward term 'rm'.*needs its `score`"):
        RewardTerm("rm", kind="model")
    with pytest.raises(ValueError, match="reward term 'math'.*kind 'token' given"):
        RewardTerm("math", kind="token")
    with pytest.raises(ValueError, match="reward term 'math'.*rows='general' is for model"):
        RewardTerm("math", rows="general")
    with pytest.raises(ValueError, match="reward term 'math'.*weight must be finite"):
        RewardTerm("math", float("nan"))
    with pytest.raises(ValueError, match="duplicate term labels"):
        RewardSpec.from_config(["math", "math"])
    with pytest.raises(ValueError, match="reward term 'cosine_length'.*correct_from='math'"):
        RewardSpec.from_config([("cosine_length", 1.0, {"max_length": 9, "correct_from": "math"})])
    with pytest.raises(ValueError, match="reward term 'format_strict_tokens'.*needs a tokenizer"):
        RewardSpec.from_config(["format_strict_tokens"]).compile()
    with pytest.raises(ValueError, match="reward term 'rm'.*only inside the compiled"):
        RewardSpec((model_term(),)).compile(TOK).score_texts(["p"], ["x"])
    with pytest.raises(ValueError, match=r"rewards\[0\]: expected keys"):
        RewardSpec.from_config([{"name": "math", "weigth": 1.0}])


def numpy_total(text_fs, text_arith, tok_fs, general, model, weights):
    """The old RewardBridge + step formula: token terms, then text terms, general rows zeroed,
    then the model term."""
    w_tok, w_fs, w_ar, w_m = weights
    total = np.zeros(len(general), np.float32)
    total = total + np.float32(w_tok) * tok_fs
    total = total + np.float32(w_fs) * text_fs
    total = total + np.float32(w_ar) * text_arith
    total = np.where(general, np.float32(0), total)
    return total + np.float32(w_m) * model


@pytest.mark.parametrize("rows", ["all", "general", "reasoning"])
def test_token_text_model_total_and_rows(rows):
    spec = RewardSpec.from_config(
        [
            ("format_strict", 0.5, {}),
            ("format_strict_tokens", 0.25, {}),
            ("arithmetic", 1.0, {}),
            model_term(rows=rows),
        ]
    )
    scorer = spec.compile(TOK)
    assert scorer.model_names == ("rm",)
    general = np.asarray([False, False, True, True])
    fields = scorer.encode_fields({"answer": ["4", "4", "", "4"], "general": general})
    assert fields["target"].tolist() == [4, 4, -1, -1] and fields["general"].tolist() == list(
        general
    )
    completion, mask, truncated = rollout(TEXTS)
    frozen = {"rm": {"w": jnp.float32(0.5)}}
    prompt = jnp.zeros((4, 3), jnp.int32), jnp.ones((4, 3), bool)
    out = jax.jit(scorer)(completion, mask, truncated, fields, *prompt, frozen)
    host = scorer.encode_fields({"answer": ["4"] * 4})
    text = RewardSpec.from_config(["format_strict", "arithmetic"])(["", ""] * 2, TEXTS, **host)
    lengths = np.asarray(mask).sum(axis=1).astype(np.float32)  # the model sees the EOS token
    wanted = {"all": np.ones(4, bool), "general": general, "reasoning": ~general}[rows]
    model = np.where(wanted, np.float32(0.5) * lengths, np.float32(0))
    fs = text.breakdown["format_strict"]
    expected = numpy_total(
        fs, text.breakdown["arithmetic"], fs, general, model, (0.25, 0.5, 1, 0.5)
    )
    np.testing.assert_array_equal(np.asarray(out.total), expected)
    assert out.total.dtype == jnp.float32
    np.testing.assert_array_equal(out.parts["format_strict"], np.where(general, 0, fs))
    np.testing.assert_array_equal(out.parts["format_strict_tokens"], np.where(general, 0, fs))
    np.testing.assert_array_equal(out.parts["rm"], model)
    np.testing.assert_array_equal(out.parts["rm/length"], lengths)
    assert set(out.parts) == {
        "format_strict",
        "format_strict_tokens",
        "arithmetic",
        "rm",
        "rm/length",
    }
    # failures: reasons on general rows are not counted (those rows are not scored by rules)
    assert int(out.failures["format_strict/missing_think"]) == 1
    assert int(out.failures["format_strict/empty"]) == 0
    assert int(out.failures["arithmetic/no_answer"]) == 0
    assert set(out.failures) == set(scorer.failure_keys)


def test_without_general_every_row_is_scored_and_model_state_is_required():
    spec = RewardSpec((RewardTerm("format_strict_tokens"), model_term(rows="general")))
    scorer = spec.compile(TOK)
    completion, mask, truncated = rollout(TEXTS)
    prompt = jnp.zeros((4, 3), jnp.int32), jnp.ones((4, 3), bool)
    out = scorer(completion, mask, truncated, {}, *prompt, {"rm": {"w": jnp.float32(1.0)}})
    lengths = np.asarray(mask).sum(axis=1).astype(np.float32)
    np.testing.assert_array_equal(out.parts["rm"], lengths)  # no `general`: all rows
    with pytest.raises(ValueError, match=r"no frozen model state .*\['rm'\]"):
        scorer(completion, mask, truncated, {}, *prompt, {})


def test_non_finite_scores_become_zero_and_are_counted():
    spec = RewardSpec(
        (
            RewardTerm("nan_text", 1.0, reward=NAN_TEXT),
            RewardTerm("nan_tokens", 2.0, reward=NAN_TOKENS),
            RewardTerm("bad_rm", 1.0, kind="model", score=lambda s, *a: (s / 0.0, {})),
        )
    )
    scorer = spec.compile(TOK)
    texts = ["ok", "5", "", "fine"]
    host = RewardSpec(spec.terms[:2]).compile(TOK).score_texts([""] * 4, texts)
    np.testing.assert_array_equal(host.breakdown["nan_text"], [1, 0, 0, 1])
    np.testing.assert_array_equal(host.breakdown["nan_tokens"], [1, 1, 0, 1])
    assert host.failures == {"nan_text/non_finite": 2, "nan_tokens/non_finite": 1}
    completion, mask, truncated = rollout(texts)
    frozen = {"bad_rm": jnp.ones(4, jnp.float32)}
    out = jax.jit(scorer)(completion, mask, truncated, {}, None, None, frozen)
    np.testing.assert_array_equal(out.parts["nan_text"], [1, 0, 0, 1])
    np.testing.assert_array_equal(out.parts["nan_tokens"], [1, 1, 0, 1])
    np.testing.assert_array_equal(out.parts["bad_rm"], [0, 0, 0, 0])
    np.testing.assert_array_equal(out.total, [3, 2, 0, 3])
    assert {k: int(v) for k, v in out.failures.items() if int(v)} == {
        "nan_text/non_finite": 2,
        "nan_tokens/non_finite": 1,
        "bad_rm/non_finite": 4,
    }


def test_failures_are_counted_per_batch():
    scorer = RewardSpec.from_config(["format_strict"]).compile(TOK)
    step = jax.jit(lambda c, m, t: scorer(c, m, t, {}).failures)
    first = step(*rollout(["", "", "x", GOOD]))
    second = step(*rollout([GOOD, GOOD, "", GOOD]))
    assert int(first["format_strict/empty"]) == 2 and int(first["format_strict/missing_think"]) == 1
    assert int(second["format_strict/empty"]) == 1
    assert int(second["format_strict/missing_think"]) == 0
    assert int(second["format_strict/other"]) == 0


def test_encode_fields_round_trip():
    spec = RewardSpec.from_config(["math", "countdown", "language", "arithmetic_tokens"])
    scorer = spec.compile(TOK)
    rows = {
        "answer": ["\\frac{1}{2}", "12", "héllo"],
        "numbers": [[1, 2], [3, 4, 5], []],
        "target": [3, 12, -4],
        "language": ["en", "zh", "fr"],
    }
    arrays = scorer.encode_fields(rows)
    assert set(arrays) == {"answer__bytes", "numbers__bytes", "target", "language__bytes"}
    assert arrays["target"].dtype == np.int32 and arrays["answer__bytes"].dtype == np.uint8
    assert arrays["answer__bytes"].shape == (3, 32)
    for name in ("answer", "numbers", "language"):
        assert rewards.decode_text_field(arrays[name + "__bytes"]) == rows[name]
    np.testing.assert_array_equal(arrays["target"], rows["target"])
    judge_like = RewardTerm(
        "judge",
        kind="model",
        score=model_score,
        fields=("answer",),
        encode=lambda r: {"ref_len": np.asarray([len(a) for a in r["answer"]], np.int32)},
    )
    with_model = RewardSpec((*spec.terms, judge_like)).compile(TOK).encode_fields(rows)
    assert with_model["ref_len"].tolist() == [11, 2, 5]
    with pytest.raises(ValueError, match="different lengths"):
        scorer.encode_fields({"answer": ["1"], "target": [1, 2]})
    # A column no row has (the pipeline fills it with None) is absent: `target` then comes
    # from the gold answers, as for procedural rows.
    derived = scorer.encode_fields({"answer": ["7", "8"], "target": [None, None]})
    assert derived["target"].tolist() == [7, 8]


def test_jitted_scorer_equals_host_path_for_text_terms():
    spec = RewardSpec.from_config(
        [
            ("format_strict", 0.5, {}),
            ("arithmetic", 1.0, {}),
            ("cosine_length", 0.1, {"max_length": 40, "correct_from": "arithmetic"}),
            ("repetition", 0.3, {}),
        ]
    )
    scorer = spec.compile(TOK)
    texts = [*TEXTS, "<think>a a a a a a</think> <answer>4</answer>"]
    answers = ["4"] * len(texts)
    host = scorer.score_texts([""] * len(texts), texts, target=[4] * len(texts))
    completion, mask, truncated = rollout(texts)
    out = jax.jit(scorer)(
        completion, mask, truncated, scorer.encode_fields({"answer": answers}), None, None, {}
    )
    for label, values in host.breakdown.items():
        np.testing.assert_array_equal(np.asarray(out.parts[label]), values)
    np.testing.assert_allclose(np.asarray(out.total), host.total, rtol=1e-6)
    counted = {k: int(v) for k, v in out.failures.items() if int(v)}
    assert counted == host.failures


def test_failures_are_batch_outputs_and_abstract_fields_match_encoded():
    terms = [
        ("format_strict_tokens", 0.5, {}),
        ("arithmetic_tokens", 1.0, {}),
        "arithmetic",
        "math",
    ]
    scorer = RewardSpec.from_config(terms).compile(TOK)
    completion, mask, truncated = rollout(TEXTS)
    fields = scorer.encode_fields({"answer": ["4"] * 4, "general": [False] * 4})
    out = jax.jit(scorer)(completion, mask, truncated, fields)
    # This batch's failure counts are step outputs (not a host counter).
    assert {k: int(v) for k, v in out.failures.items() if int(v)} == {
        "arithmetic/no_answer": 1,
        "math/no_answer": 1,
    }
    width = fields["answer__bytes"].shape[1]
    abstract = scorer.abstract_fields(4, text_bytes=width, general=True)
    assert {k: (v.shape, np.dtype(v.dtype)) for k, v in abstract.items()} == {
        k: (v.shape, v.dtype) for k, v in fields.items()
    }


def test_get_imports_only_the_reward_module():
    code = (
        "import sys, r1.rewards; r1.rewards.get('math'); "
        "bad = [m for m in sys.modules if m.startswith(('r1.models', 'r1.sampling', "
        "'r1.sharding', 'r1.judge', 'r1.rewards.code', 'r1.rewards.sandbox'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={"JAX_PLATFORMS": "cpu", **_env()})


def _env():
    import os

    return {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}


def test_per_domain_terms_score_and_run_only_on_their_rows():
    seen = []

    def code_like(prompts, completions, **_):
        seen.append(list(completions))
        return np.ones(len(completions), np.float32), ["no_code" for _ in completions]

    code = Reward("code_like", "text", code_like, reasons=("no_code",))
    spec = RewardSpec.from_domains(
        {
            "math": [("arithmetic", 1.0, {}), ("format_strict_tokens", 0.5, {})],
            "code": [RewardTerm("code_like", reward=code), ("format_strict_tokens", 0.5, {})],
        }
    )
    labels = [t.label for t in spec.terms]
    assert labels == [
        "arithmetic",
        "math.format_strict_tokens",
        "code_like",
        "code.format_strict_tokens",
    ]
    scorer = spec.compile(TOK)
    assert scorer.domains == ("math", "code")
    domains = ["math", "code", "other", "math"]
    fields = scorer.encode_fields({"answer": ["4"] * 4, "domain": domains})
    assert fields["domain"].tolist() == [0, 1, -1, 0]
    completion, mask, truncated = rollout(TEXTS)
    out = jax.jit(scorer)(completion, mask, truncated, fields)
    assert seen == [[TEXTS[1]]]  # the code reward ran on the code row only
    parts = {k: np.asarray(v) for k, v in out.parts.items()}
    host = RewardSpec.from_config(["arithmetic", "format_strict_tokens"]).compile(TOK)
    full = host.score_texts([""] * 4, TEXTS, target=[4] * 4)
    math_rows = np.asarray([True, False, False, True])
    np.testing.assert_array_equal(
        parts["arithmetic"], np.where(math_rows, full.breakdown["arithmetic"], 0)
    )
    np.testing.assert_array_equal(
        parts["math.format_strict_tokens"],
        np.where(math_rows, full.breakdown["format_strict_tokens"], 0),
    )
    np.testing.assert_array_equal(parts["code_like"], [0, 1, 0, 0])
    expected = (
        np.where(math_rows, full.breakdown["arithmetic"], 0)
        + np.float32(0.5) * np.where(math_rows, full.breakdown["format_strict_tokens"], 0)
        + np.asarray([0, 1, 0, 0], np.float32)
        + np.float32(0.5)
        * np.where(~math_rows, full.breakdown["format_strict_tokens"], 0)
        * np.asarray([0, 1, 0, 0])
    )
    np.testing.assert_allclose(np.asarray(out.total), expected, rtol=1e-6)
    counts = {k: int(v) for k, v in out.failures.items() if int(v)}
    assert counts == {"code_like/no_code": 1}  # row 2 (domain "other") is nobody's
    # The same routing on the host, from the rows' domain strings.
    result = scorer.score_texts([""] * 4, TEXTS, target=[4] * 4, domain=domains)
    for label, values in result.breakdown.items():
        np.testing.assert_array_equal(values, parts[label], err_msg=label)
    assert result.failures == {"code_like/no_code": 1}
    abstract = scorer.abstract_fields(4)
    assert abstract["domain"].shape == (4,) and abstract["domain"].dtype == jnp.int32
    with pytest.raises(ValueError, match="rewards.code: term 'code_like' sets rows"):
        RewardSpec.from_domains({"code": [RewardTerm("code_like", reward=code, rows="reasoning")]})
