"""Faults in rewards: a reward that raises, hangs past its timeout or returns NaN / inf, and a
math-verify or sandbox worker process killed mid-batch. The step's scorer goes on: the rows
score 0 (or are rescored once), and each event is counted in the failures the GRPO step writes
to metrics.jsonl as ``reward_failures/<label>/<reason>``."""

from __future__ import annotations

import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1.rewards import Reward, RewardSpec, RewardTerm, sandbox
from r1.rewards import math as math_lib
from r1.testing import DummyTokenizer

TOK = DummyTokenizer()
TEXTS = ["<answer>4</answer>", "<answer>5</answer>", "x", "<answer>4</answer>"]
HERE = os.path.dirname(os.path.abspath(__file__))


def _rollout(texts, width=48):
    tokens = np.zeros((len(texts), width), np.int32)
    mask = np.zeros((len(texts), width), bool)
    for i, text in enumerate(texts):
        ids = [*TOK.encode(text), TOK.eos_id]
        tokens[i, : len(ids)] = ids
        mask[i, : len(ids)] = True
    return jnp.asarray(tokens), jnp.asarray(mask), jnp.zeros(len(texts), bool)


def _raises(prompts, completions, **_):
    raise RuntimeError("the grader's server went away")


def _hangs(prompts, completions, **_):
    time.sleep(30)
    return np.ones(len(completions), np.float32), [""] * len(completions)


def _non_finite(prompts, completions, **_):
    values = [
        float("nan") if "x" == c else (float("inf") if "5" in c else 1.0) for c in completions
    ]
    return np.asarray(values), [""] * len(completions)


def _spec() -> RewardSpec:
    return RewardSpec(
        (
            RewardTerm("arithmetic", 1.0),
            RewardTerm("raises", 1.0, reward=Reward("raises", "text", _raises)),
            RewardTerm("hangs", 1.0, reward=Reward("hangs", "text", _hangs), timeout_s=0.5),
            RewardTerm("non_finite", 1.0, reward=Reward("non_finite", "text", _non_finite)),
        )
    )


def test_raising_hanging_and_non_finite_rewards_score_zero_and_are_counted():
    scorer = _spec().compile(TOK)
    completion, mask, truncated = _rollout(TEXTS)
    fields = scorer.encode_fields({"answer": ["4"] * 4})
    began = time.monotonic()
    out = jax.jit(scorer)(completion, mask, truncated, fields, None, None, {})
    assert time.monotonic() - began < 20  # the hanging term was abandoned at its timeout
    np.testing.assert_array_equal(out.parts["arithmetic"], [1, 0, 0, 1])
    for label in ("raises", "hangs"):
        np.testing.assert_array_equal(out.parts[label], [0, 0, 0, 0])
    np.testing.assert_array_equal(out.parts["non_finite"], [1, 0, 0, 1])
    np.testing.assert_array_equal(out.total, [2, 0, 0, 2])
    assert {k: int(v) for k, v in out.failures.items() if int(v)} == {
        "arithmetic/no_answer": 1,
        "raises/raised": 4,
        "hangs/timed_out": 4,
        "non_finite/non_finite": 2,
    }
    host = _spec().compile(TOK).score_texts([""] * 4, TEXTS, target=[4] * 4)  # rejection, eval
    assert host.failures["raises/raised"] == 4 and host.failures["hangs/timed_out"] == 4


def test_a_missing_field_is_a_configuration_error_not_a_fault():
    with pytest.raises(ValueError, match="needs the batch field 'target'"):
        RewardSpec.from_config(["arithmetic"]).compile(TOK).score_texts(
            [""], ["<answer>4</answer>"]
        )


def test_timeout_is_configurable_and_validated():
    term = RewardSpec.from_config([{"name": "arithmetic", "timeout_s": 3}]).terms[0]
    assert term.timeout_s == 3
    with pytest.raises(ValueError, match="timeout_s must be a number >= 0"):
        RewardTerm("arithmetic", timeout_s=-1)


@pytest.mark.parametrize("always", [False, True])
def test_math_worker_killed_mid_batch_is_rescored(tmp_path, monkeypatch, always):
    """The worker dies under the batch's first item: that item is verified again on a fresh
    worker (reason ``rescored``); a worker that dies again makes it ``crash``."""
    monkeypatch.setattr(math_lib, "_WORKER", os.path.join(HERE, "dying_math_worker.py"))
    monkeypatch.setenv("DYING_WORKER_MARKER", str(tmp_path / "killed"))
    monkeypatch.setenv("DYING_WORKER_ALWAYS", "1" if always else "0")
    pool = math_lib.MathVerifyPool(1)
    try:
        items = [("4", "4"), ("4", "5"), ("1/2", "0.5")]
        results = pool.run(items, timeout_s=5)
    finally:
        pool.close()
    assert (tmp_path / "killed").exists()
    if always:
        assert [r for _, r in results] == ["crash"] * 3
    else:
        assert results == [(True, "rescored"), (False, "wrong"), (True, "")]


def _kill_sandbox_child_once(stop: threading.Event) -> None:
    """SIGKILLs the first child process of this one that appears (the sandbox harness)."""
    me = str(os.getpid())
    while not stop.is_set():
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    parent = f.read().rsplit(")", 1)[1].split()[1]
            except OSError:
                continue
            if parent == me:
                time.sleep(0.2)  # let it start its program
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    continue
                return
        time.sleep(0.005)


def test_sandbox_child_killed_mid_batch_is_rescored():
    program = "import time\ntime.sleep(1.0)\ndef f(x):\n    return 2 * x\n"
    stop = threading.Event()
    killer = threading.Thread(target=_kill_sandbox_child_once, args=(stop,), daemon=True)
    killer.start()
    try:
        result = sandbox.run_program(program, ["assert f(2) == 4"], sandbox.SandboxConfig())
    finally:
        stop.set()
        killer.join()
    assert result.passed == (True,) and result.reason == "" and result.rescored
