"""Evaluation: pass@k against the closed form, cons@k on crafted votes, grading and tables on
crafted completions, the runner end to end on a tiny random model, checkpoint restore, and the
`experiments.evaluate` entry point on the tiny config."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
from fractions import Fraction

import jax
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from r1 import checkpoint as ckpt_lib
from r1 import configlib, sharding
from r1.evaluation import metrics, runner
from r1.models.transformer import Transformer
from r1.testing import DummyTokenizer, tiny_dense_config
from r1.train.state import init_train_state

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ----------------------------------------------------------------------------- pass@k
def _closed_form(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def test_pass_at_k_matches_closed_form_exhaustively():
    for n in range(1, 11):
        for c in range(n + 1):
            for k in range(1, n + 1):
                got = metrics.pass_at_k([n], [c], k)[0]
                assert got == pytest.approx(float(_closed_form(n, c, k)), abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_large_n():
    # C(1000, 500) overflows float64; the product form does not.
    n, cs, k = 1000, [0, 1, 3, 50, 999, 1000], 500
    got = metrics.pass_at_k([n] * len(cs), cs, k)
    want = [float(_closed_form(n, c, k)) for c in cs]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    assert got[1] == pytest.approx(0.5)  # one correct sample in 1000, half of them drawn


def test_pass_at_k_mean_and_pass_at_1():
    assert metrics.mean_pass_at_k([4, 4], [1, 2], 1) == pytest.approx((1 / 4 + 2 / 4) / 2)
    assert metrics.mean_pass_at_k([4, 4], [1, 2], 2) == pytest.approx((1 / 2 + 5 / 6) / 2)
    correct = np.array([[1, 0, 0, 0], [1, 1, 0, 0]], bool)
    assert metrics.pass_at_1(correct) == pytest.approx(3 / 8)


@pytest.mark.parametrize(
    "n,c,k,match",
    [([3], [1], 4, "larger than"), ([3], [4], 1, "num_correct"), ([3], [1], 0, "k must")],
)
def test_pass_at_k_rejects_bad_input(n, c, k, match):
    with pytest.raises(ValueError, match=match):
        metrics.pass_at_k(n, c, k)


# ----------------------------------------------------------------------------- answers, votes
@pytest.mark.parametrize(
    "raw,want",
    [
        ("\\boxed{ 2.50 }", "2.5"),
        ("1,000", "1000"),
        ("$\\dfrac{1}{2}$.", "\\frac{1}{2}"),
        ("\\left( 1, 2 \\right)", "(1,2)"),
        ("-0", "0"),
        ("+007", "7"),
        ("  ", None),
        (None, None),
    ],
)
def test_normalize_answer(raw, want):
    assert metrics.normalize_answer(raw) == want


def test_vote_key_follows_the_reward():
    text = "<think>1+2</think> <answer> 0042 </answer>"
    assert metrics.vote_key(text, "arithmetic") == "42"
    assert metrics.vote_key("<answer>4 2</answer>", "arithmetic") is None
    assert metrics.vote_key("<answer>(3 + 4) * 2 = 14</answer>", "countdown") == "(3+4)*2"
    assert metrics.vote_key("so \\boxed{\\frac12} and \\boxed{ 3.0 }", "math") == "3"
    assert metrics.vote_key("no answer here", "math") is None


def test_majority_vote_counts_and_breaks_ties_by_first_occurrence():
    assert metrics.majority_vote(["3", "4", "4", None, "3", "4"]) == ("4", 3, 1)
    # "5" and "3" both have two votes: "5" appeared first (index 1 < 2).
    assert metrics.majority_vote([None, "5", "3", "3", "5"]) == ("5", 2, 1)
    assert metrics.majority_vote([None, None]) == (None, 0, -1)


def test_cons_at_k_on_crafted_problems():
    answers = [
        ["1", "2", "2", "2"],  # majority "2", wrong
        ["7", "7", "8", "9"],  # majority "7", right
        [None, None, None, "5"],  # one vote, right
        [None, None, None, None],  # no answer
        ["a", "b", "b", "a"],  # tie: "a" first, scored right
    ]
    correct = [
        [1, 0, 0, 0],
        [1, 1, 0, 0],
        [0, 0, 0, 1],
        [0, 0, 0, 0],
        [1, 0, 0, 1],
    ]
    np.testing.assert_array_equal(metrics.cons_at_k(answers, correct), [0, 1, 1, 0, 1])
    with pytest.raises(ValueError, match="problem 0"):
        metrics.cons_at_k([["1"]], [[1, 0]])


def test_summarize_groups_on_known_counts():
    correct = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
    lengths = np.array([[10, 20, 30, 40], [5, 5, 5, 5], [1, 2, 3, 4]])
    majority = np.array([1.0, 0.0, 1.0])
    tables = metrics.summarize_groups(["a", "b", "a"], correct, lengths, majority, ks=(2, 4))
    a = tables["a"]
    assert a["count"] == 2 and a["samples"] == 4
    assert a["pass@1"] == pytest.approx(6 / 8)
    assert a["pass@2"] == pytest.approx((float(_closed_form(4, 2, 2)) + 1.0) / 2)
    assert a["pass@4"] == 1.0 and tables["b"]["pass@4"] == 0.0
    assert a["cons@4"] == 1.0 and tables["b"]["cons@4"] == 0.0
    assert a["response_length"] == pytest.approx(np.mean([10, 20, 30, 40, 1, 2, 3, 4]))


# ----------------------------------------------------------------------------- grading
def _rows():
    return [
        {"prompt": "1+2", "answer": "3", "task": "add", "difficulty": 2, "id": "a0"},
        {"prompt": "1+2+3", "answer": "6", "task": "add", "difficulty": 3, "id": "a1"},
        {
            "prompt": "numbers",
            "answer": "3+4",
            "task": "countdown",
            "difficulty": 2,
            "numbers": [3, 4],
            "target": 7,
            "id": "c0",
        },
    ]


def test_grade_crafted_completions():
    config = runner.EvalConfig(num_samples=3, pass_ks=(2,))
    completions = [
        ["<answer>3</answer>", "<answer>4</answer>", "Wait, <answer> 3 </answer>"],
        ["<answer>5</answer>", "<answer>5</answer>", "<answer>6</answer>"],
        ["<answer>4+3</answer>", "<answer>3*4</answer>", "nothing"],
    ]
    lengths = np.array([[4, 6, 8], [2, 2, 2], [10, 10, 10]])
    truncated = np.array([[0, 0, 0], [0, 0, 1], [0, 0, 0]], bool)
    result = runner.grade(_rows(), completions, lengths, config, truncated)
    add, countdown = result["tasks"]["add"], result["tasks"]["countdown"]
    assert add["count"] == 2 and countdown["count"] == 1
    assert add["pass@1"] == pytest.approx(3 / 6)
    assert add["pass@2"] == pytest.approx((float(_closed_form(3, 2, 2)) + 2 / 3) / 2)
    assert add["pass@3"] == 1.0
    # Problem a0 votes "3" (2 votes, right); a1 votes "5" (wrong).
    assert add["cons@3"] == 0.5
    assert add["response_length"] == pytest.approx(24 / 6)
    assert add["truncated"] == pytest.approx(1 / 6)
    assert add["reflection_share"] == pytest.approx(1 / 6)
    assert add["reflection_per_1k"] == pytest.approx(1000 / 24)
    assert set(add["by_difficulty"]) == {"2", "3"}
    assert add["by_difficulty"]["3"]["pass@1"] == pytest.approx(1 / 3)
    assert countdown["pass@1"] == pytest.approx(1 / 3) and countdown["cons@3"] == 1.0
    assert countdown["no_answer"] == pytest.approx(1 / 3)
    assert result["overall"]["count"] == 3
    assert result["overall"]["pass@1"] == pytest.approx(4 / 9)
    first = result["problems"][0]
    assert first["majority"] == "3" and first["votes"] == 2 and first["num_correct"] == 2
    assert result["reward_failures"] == {"countdown/no_answer": 1}
    json.dumps(result)
    md = runner.to_markdown(result)
    assert "| add | 3 | 1 |" in md and "cons@3 (%)" in md


def test_grade_math_rows_with_math_verify():
    config = runner.EvalConfig(num_samples=2, template="boxed")
    rows = [{"prompt": "half?", "answer": "\\frac{1}{2}", "task": "math"}]
    completions = [["so \\boxed{0.5}", "\\boxed{\\frac{1}{3}}"]]
    result = runner.grade(rows, completions, np.array([[3, 4]]), config)
    assert result["tasks"]["math"]["pass@1"] == pytest.approx(0.5)
    assert "by_difficulty" not in result["tasks"]["math"]


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="greedy"):
        runner.EvalConfig(num_samples=4, greedy=True)
    with pytest.raises(ValueError, match="EvalConfig.pass_ks"):
        runner.EvalConfig(num_samples=4, pass_ks=(8,))
    with pytest.raises(ValueError, match="EvalConfig.template"):
        runner.EvalConfig(template="nope")
    with pytest.raises(ValueError, match="EvalConfig.reward"):
        runner.EvalConfig(reward="nope")
    with pytest.raises(TypeError, match=r"config\.eval\.num_samples"):
        runner.EvalConfig.from_config({"num_samples": "four"})
    with pytest.raises(ValueError, match="needs field 'numbers'"):
        runner.reward_fields([{"prompt": "x", "answer": "1"}], "countdown")


# ----------------------------------------------------------------------------- the loop
def _tiny_model(vocab=259):
    cfg = tiny_dense_config(vocab_size=vocab)
    return Transformer(cfg, rngs=nnx.Rngs(0))


def test_evaluate_end_to_end_on_a_tiny_random_model():
    model, tok = _tiny_model(), DummyTokenizer()
    rows = [
        {"prompt": f"{a}+{b}", "answer": str(a + b), "task": "add", "difficulty": 2, "id": str(i)}
        for i, (a, b) in enumerate([(1, 2), (3, 4), (5, 1), (2, 2), (7, 1)])
    ]
    config = runner.EvalConfig(
        num_samples=3, max_new_tokens=6, batch_size=2, template="plain", keep_completions=True
    )
    result = runner.evaluate(model, tok, rows, config)
    assert result["num_problems"] == 5 and result["num_samples"] == 3
    add = result["tasks"]["add"]
    for key in ("pass@1", "pass@3", "cons@3", "response_length", "truncated"):
        assert key in add
    assert 1 <= add["response_length"] <= 6
    assert add["truncated"] < 1 or add["response_length"] == 6
    assert add["pass@1"] == pytest.approx(
        np.mean([p["num_correct"] for p in result["problems"]]) / 3
    )
    assert result["timing"]["generated_tokens"] > 0
    # Samples follow the prompt's index, not the batch: another batch size, same completions.
    again = runner.evaluate(model, tok, rows, dataclasses_replace(config, batch_size=5))
    assert [p["completions"] for p in again["problems"]] == [
        p["completions"] for p in result["problems"]
    ]
    # Continuous batching (4 slots for a call's 6 rows): the same completions.
    slotted = runner.evaluate(model, tok, rows, dataclasses_replace(config, slots=4))
    assert [p["completions"] for p in slotted["problems"]] == [
        p["completions"] for p in result["problems"]
    ]
    other_seed = runner.evaluate(model, tok, rows, dataclasses_replace(config, seed=1))
    assert [p["completions"] for p in other_seed["problems"]] != [
        p["completions"] for p in result["problems"]
    ]


def dataclasses_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


def test_evaluate_under_a_mesh_matches_no_mesh(devices):
    model, tok = _tiny_model(), DummyTokenizer()
    rows = [{"prompt": f"{i}+{i}", "answer": str(2 * i), "task": "add"} for i in range(4)]
    config = runner.EvalConfig(
        num_samples=2, max_new_tokens=5, batch_size=4, template="plain", keep_completions=True
    )
    plain = runner.evaluate(model, tok, rows, config)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=-1, expert=1, tensor=1))
    state = sharding.place_state(nnx.state(model), mesh)
    sharded = nnx.merge(nnx.graphdef(model), state)
    meshed = runner.evaluate(sharded, tok, rows, config, mesh=mesh)
    assert [p["completions"] for p in meshed["problems"]] == [
        p["completions"] for p in plain["problems"]
    ]


# ----------------------------------------------------------------------------- entry point
def _small_tiny_config(**eval_changes):
    config = configlib.load_config("configs/evaluate.py:tiny")
    config = ml_collections.ConfigDict(config.to_dict())
    config.data.per_difficulty = 1
    config.eval.update(num_samples=2, max_new_tokens=24, batch_size=9, **eval_changes)
    return config


def test_evaluate_config_tiny_writes_eval_json(tmp_path):
    from experiments import evaluate as entry

    result = entry.evaluate_config(_small_tiny_config(), str(tmp_path))
    with open(tmp_path / "eval.json") as f:
        saved = json.load(f)
    add = saved["tasks"]["add"]
    assert add["count"] == 9 and set(add["by_difficulty"]) == {str(d) for d in range(2, 11)}
    assert "pass@1" in add and "cons@2" in add
    # The demo base model has learned to sum short lists.
    assert add["by_difficulty"]["2"]["pass@1"] > 0.4
    assert saved["overall"]["pass@1"] == pytest.approx(result["overall"]["pass@1"])
    assert (tmp_path / "eval.md").read_text().startswith("| task |")


def test_restore_policy_from_a_grpo_checkpoint(tmp_path):
    from experiments import evaluate as entry

    model_cfg = tiny_dense_config(vocab_size=259)
    model = Transformer(model_cfg, rngs=nnx.Rngs(3))
    graphdef, state = init_train_state(model, optax.adam(1e-3), seed=0, with_reference=True)
    checkpointer = ckpt_lib.Checkpointer(str(tmp_path))
    checkpointer.save(7, state, {"position": 1})
    checkpointer.close()
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"model": model_cfg.to_dict()}, f)
    mesh = sharding.make_mesh(sharding.MeshConfig())
    cfg = entry.run_model_config(str(tmp_path), {"model": {}})
    restored = entry.restore_policy(str(tmp_path), 0, cfg, mesh)
    for a, b in zip(jax.tree.leaves(nnx.state(restored)), jax.tree.leaves(nnx.state(model))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(FileNotFoundError, match="no checkpoint 3"):
        entry.restore_policy(str(tmp_path), 3, cfg, mesh)
    wrong = tiny_dense_config(vocab_size=259, hidden_size=32, head_dim=8)
    with pytest.raises(ValueError, match="was the run made with this model"):
        entry.restore_policy(str(tmp_path), 0, wrong, mesh)


@pytest.mark.slow
def test_greedy_runner_matches_the_trainer_evaluator():
    """k=1 greedy on the trainer's held-out set reproduces the training-time evaluator's
    accuracy/length (`r1.train.heldout.make_heldout_evaluator`)."""
    from r1.data import procedural
    from r1.rl import config as rl_config
    from r1.train import build, heldout

    config = configlib.load_config("configs/r1_zero.py:tiny")
    exp = rl_config.parse(config)
    mesh = sharding.make_mesh(exp.mesh)
    tok = build.build_tokenizer(exp.tokenizer.kind, exp.tokenizer.path)
    with sharding.use_mesh(mesh):
        model = build.build_policy(exp.init.hf_path, exp.model, mesh, exp.seed)
    graphdef, params, extra = nnx.split(model, nnx.Param, ...)
    task = procedural.make_task(exp.data.task, **dict(exp.data.task_kwargs or {}))
    evaluator = heldout.make_heldout_evaluator(
        task,
        exp.seed,
        exp.eval.per_difficulty,
        tok,
        graphdef,
        mesh,
        exp.rl.max_new_tokens,
        exp.rl.unstack_layers,
    )
    want = evaluator(types.SimpleNamespace(params=params, extra=extra))
    rows = procedural.fixed_set(task, exp.seed + 1, exp.eval.per_difficulty)
    eval_cfg = runner.EvalConfig(
        num_samples=1, greedy=True, max_new_tokens=96, batch_size=48, bucket_multiple=16
    )
    got = runner.evaluate(model, tok, rows, eval_cfg, mesh=mesh)
    assert got["overall"]["pass@1"] == pytest.approx(want["eval/accuracy"], abs=1e-6)
    assert got["overall"]["response_length"] == pytest.approx(want["eval/response_length/mean"])
    for d, table in got["tasks"]["add"]["by_difficulty"].items():
        assert table["pass@1"] == pytest.approx(want[f"eval/accuracy/difficulty_{d}"], abs=1e-6)


@pytest.mark.slow
def test_command_line_tiny(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.evaluate",
            "--config=configs/evaluate.py:tiny",
            f"--workdir={tmp_path}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["tasks"]["add"]["count"] == 36 and "cons@4" in saved["tasks"]["add"]
    assert saved["overall"]["pass@1"] > 0.3


def test_code_rows_are_graded_by_the_sandbox_all_tests_passing():
    rows = [{"prompt": "Write f.", "tests": ["assert f(1) == 2", "assert f(2) == 4"]}]
    good = "```python\ndef f(x):\n    return 2 * x\n```"
    half = "```python\ndef f(x):\n    return 2 if x == 1 else 0\n```"
    result = runner.grade(
        rows, [[good, half]], np.array([[5, 5]]), runner.EvalConfig(num_samples=2)
    )
    assert result["overall"]["pass@1"] == 0.5 and result["problems"][0]["num_correct"] == 1
