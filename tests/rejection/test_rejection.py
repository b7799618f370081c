"""Rejection sampling: the readability predicates, the selection, the resumable loop with a fake
policy of known outputs (exact kept set, kill-and-resume without duplicates), the compiled
sampler policy and the tiny entry point."""

from __future__ import annotations

import collections
import dataclasses
import json
import os

import numpy as np
import pytest
from flax import nnx

from r1 import configlib
from r1.data import templates
from r1.data.tokenizers import build_demo_tokenizer
from r1.models.transformer import Transformer
from r1.rejection import filters as F
from r1.rejection import runner
from r1.rejection.filters import FilterConfig, apply_filters, extract_cot
from r1.rejection.select import Candidate, SelectConfig, normalize_whitespace, select
from r1.rewards import RewardSpec
from r1.sampling.sampler import SamplingConfig
from r1.testing import tiny_dense_config

OFF = FilterConfig(
    max_foreign_fraction=1.0, max_paragraph_chars=0, code_fences=False, indented_code_min_lines=0
)


def think(cot: str, answer: str = "1") -> str:
    return f" <think>{cot}</think> <answer>{answer}</answer>"


# ----------------------------------------------------------------------------- the CoT
@pytest.mark.parametrize(
    "text, cot",
    [
        (" <think>a b</think> <answer>c</answer>", "a b"),
        ("a b</think> <answer>c</answer>", "a b"),  # chat template opened <think> in the prompt
        ("<think>cut off", "cut off"),  # truncated inside the CoT
        ("<think>x <answer>5</answer>", "x "),
        ("<answer>5</answer>", ""),
        ("plain text", "plain text"),
        ("", ""),
    ],
)
def test_extract_cot(text, cot):
    assert extract_cot(text) == cot


# ----------------------------------------------------------------------------- mixed language
def test_mixed_language_threshold_boundary():
    cot = "one two three four five six seven eight nine 中"  # 1 foreign word of 10
    assert F.foreign_word_fraction(cot, "en") == pytest.approx(0.1)
    assert not F.is_mixed_language(cot, "en", 0.1)  # at the threshold: kept
    assert F.is_mixed_language(cot, "en", 0.09)
    # 1 - 0.7 is 0.30000000000000004 in floats: the boundary is still kept.
    three = "one two three four five six seven 中 文 字"
    assert not F.is_mixed_language(three, "en", 0.3)
    assert F.is_mixed_language(three, "en", 0.29)
    assert "mixed_language" in apply_filters(think(cot), FilterConfig(max_foreign_fraction=0.09))
    assert "mixed_language" not in apply_filters(think(cot), FilterConfig(max_foreign_fraction=0.1))


def test_mixed_language_chinese_and_edge_cases():
    chinese = "我们先计算三加四等于七"
    assert not F.is_mixed_language(chinese, "zh", 0.0)
    assert F.is_mixed_language(chinese, "en", 0.5)
    assert F.foreign_word_fraction("first 我们", "zh") == pytest.approx(1 / 3)
    # No words at all (empty CoT, digits and symbols only): never mixed.
    assert F.foreign_word_fraction("", "en") is None
    assert not F.is_mixed_language("", "en", 0.0)
    assert not F.is_mixed_language("3+4=7, 7+5=12", "en", 0.0)
    assert not F.is_mixed_language(chinese, "en", 1.0)  # 1.0 disables the rule
    # Word-list languages: French function words against English ones (4 French, 2 English).
    assert F.foreign_word_fraction("le chat est sur la table and the dog", "fr") == pytest.approx(
        1 / 3
    )
    assert F.is_mixed_language("le chat est sur la table and the dog", "fr", 0.3)
    # Script languages only see scripts: French words are Latin, hence "English".
    assert not F.is_mixed_language("le chat est sur la table", "en", 0.0)


def test_mixed_language_reads_only_the_cot():
    text = " <think>we add the numbers</think> <answer>答案是七</answer>"
    assert apply_filters(text, FilterConfig(max_foreign_fraction=0.0)) == []


# ----------------------------------------------------------------------------- paragraphs
def test_long_paragraph_boundaries():
    para = "x" * 100
    assert F.paragraphs(f"{para}\n\n  \n{para}\n") == [para, para]
    assert not F.has_long_paragraph(f"{para}\n\n{para}", max_chars=100)  # each exactly 100
    assert F.has_long_paragraph(para + "x", max_chars=100)
    assert not F.has_long_paragraph(para + "x", max_chars=0)  # 0 disables
    # One newline does not end a paragraph.
    assert F.has_long_paragraph(f"{para}\n{para}", max_chars=150)
    words = " ".join(["w"] * 30)
    assert not F.has_long_paragraph(words, max_words=30)
    assert F.has_long_paragraph(words + " w", max_words=30)
    assert not F.has_long_paragraph("", max_chars=1, max_words=1)
    cfg = FilterConfig(max_paragraph_chars=100)
    assert apply_filters(think(para), cfg) == []
    assert apply_filters(think(para + "x"), cfg) == ["long_paragraph"]


# ----------------------------------------------------------------------------- code blocks
def test_code_fences():
    assert F.has_code_fence("first\n```python\nprint(1)\n```\nthen")
    assert F.has_code_fence("```\nunclosed")
    assert F.has_code_fence("text\n   ~~~\ncode")
    assert not F.has_code_fence("text\n    ```\n")  # 4 spaces: indented, not a fence
    assert not F.has_code_fence("use `x` and ``y`` inline, even ``` mid-line")
    assert not F.has_code_fence("")


def test_indented_code_heuristic():
    block = "    a = 1\n    b = 2\n\tc = 3\n    print(a)"
    assert F.has_indented_code("Let me write:\n\n" + block, 4)
    assert F.has_indented_code(block, 4)  # start of the CoT counts as a blank line before
    assert not F.has_indented_code("Let me write:\n\n" + block, 5)
    assert not F.has_indented_code("Let me write:\n" + block, 4)  # continues a paragraph
    assert not F.has_indented_code(block.replace("\tc = 3", ""), 4)  # the blank line splits it
    assert not F.has_indented_code(block, 0)  # 0 disables
    assert not F.has_indented_code("", 1)


def test_code_block_only_in_cot():
    fenced = "```python\nprint(1)\n```"
    assert apply_filters(think("ok", fenced), FilterConfig()) == []
    assert apply_filters(think("see\n" + fenced), FilterConfig()) == ["code_block"]
    assert apply_filters(think("see\n" + fenced), FilterConfig(code_fences=False)) == []


# ----------------------------------------------------------------------------- all filters
def test_apply_filters_reasons_and_short_cot():
    bad = "中文 " * 50 + "\n```\n" + "x" * 50
    assert apply_filters(think(bad), FilterConfig(max_paragraph_chars=40)) == [
        "mixed_language",
        "long_paragraph",
        "code_block",
    ]
    assert apply_filters(think(bad), OFF) == []
    assert apply_filters(think(""), FilterConfig()) == []  # empty CoT passes by default
    assert apply_filters(think("  \n "), FilterConfig(min_cot_chars=1)) == ["short_cot"]
    assert apply_filters(think("ab"), FilterConfig(min_cot_chars=2)) == []
    assert apply_filters(think("ab"), FilterConfig(min_cot_chars=3)) == ["short_cot"]


def test_filter_config_errors_name_the_field():
    with pytest.raises(ValueError, match="max_foreign_fraction"):
        FilterConfig(max_foreign_fraction=1.5)
    with pytest.raises(ValueError, match="max_paragraph_chars"):
        FilterConfig(max_paragraph_chars=-1)
    with pytest.raises(ValueError, match="klingon"):
        FilterConfig(language="klingon")


# ----------------------------------------------------------------------------- selection
def cand(pid, i, text, correct=1.0, fmt=1.0, truncated=False):
    return Candidate(pid, i, text, {"acc": correct, "fmt": fmt}, truncated)


def test_select_exact_kept_set_and_counts():
    good = think("2+3=5", "5")
    candidates = [
        cand("p", 0, good),
        cand("p", 1, think("2+3=6", "6"), correct=0.0),
        cand("p", 2, "  " + good.replace(" ", "   ") + "\n"),  # duplicate of 0 after normalising
        cand("p", 3, think("中文 中文 2+3", "5")),  # mixed language
        cand("p", 4, think("then 2 + 3 = 5", "5"), fmt=0.0),
        cand("p", 5, think("two plus three", "5"), truncated=True),
        cand("p", 6, think("so 2+3 is 5", "5")),
        cand("p", 7, think("add: 2+3=5", "5")),  # over the cap of 2
        cand("q", 1, good),  # the same text for another prompt is kept
        cand("q", 0, think("oops", "4"), correct=0.0),
    ]
    cfg = SelectConfig(correct_reward="acc", min_rewards=(("fmt", 1.0),), max_per_prompt=2)
    out = select(candidates, cfg)
    assert [(c.prompt_id, c.sample_index) for c in out.kept] == [("p", 0), ("p", 6), ("q", 1)]
    assert out.dropped == {
        "duplicate": 1,
        "filter:mixed_language": 1,
        "incorrect": 2,
        "low_fmt": 1,
        "over_cap": 1,
        "truncated": 1,
    }
    assert out.filter_hits == {"mixed_language": 1}
    assert out.num_candidates == len(candidates)


def test_select_cap_orders_and_no_cap():
    texts = [think(ch * n, "1") for ch, n in (("a", 30), ("b", 10), ("c", 20), ("d", 10))]
    candidates = [cand("p", i, t) for i, t in enumerate(texts)]
    by_index = select(candidates, SelectConfig(correct_reward="acc", max_per_prompt=2))
    assert [c.sample_index for c in by_index.kept] == [0, 1]
    shortest = SelectConfig(correct_reward="acc", max_per_prompt=2, cap_order="shortest")
    # Shortest first (ties by index: 1 before 3), returned in sample-index order.
    assert [c.sample_index for c in select(candidates, shortest).kept] == [1, 3]
    one = dataclasses.replace(shortest, max_per_prompt=1)
    assert [c.sample_index for c in select(candidates, one).kept] == [1]
    uncapped = select(candidates, SelectConfig(correct_reward="acc", max_per_prompt=0))
    assert len(uncapped.kept) == 4 and uncapped.dropped == {}


def test_select_keeps_truncated_when_asked_and_thresholds():
    c = [cand("p", 0, think("a", "1"), correct=0.5, truncated=True)]
    assert select(c, SelectConfig(correct_reward="acc")).dropped == {"truncated": 1}
    loose = SelectConfig(correct_reward="acc", min_correct=0.5, drop_truncated=False)
    assert len(select(c, loose).kept) == 1


def test_select_errors():
    with pytest.raises(ValueError, match="no reward 'math'"):
        select([cand("p", 0, "x")], SelectConfig(correct_reward="math"))
    with pytest.raises(ValueError, match="repeated sample indices"):
        select([cand("p", 0, "x"), cand("p", 0, "y")], SelectConfig(correct_reward="acc"))
    with pytest.raises(ValueError, match="cap_order"):
        SelectConfig(correct_reward="acc", cap_order="random")
    with pytest.raises(ValueError, match="max_per_prompt"):
        SelectConfig(correct_reward="acc", max_per_prompt=-1)


def test_normalize_whitespace():
    assert normalize_whitespace("  a \n\t b  ") == "a b"
    assert normalize_whitespace("ab") != normalize_whitespace("a b")


def test_split_response():
    assert runner.split_response(think(" 1+1=2 ", " 2 ")) == ("1+1=2", "2")
    assert runner.split_response("reason</think>\n\nThe answer is 2.") == (
        "reason",
        "The answer is 2.",
    )
    assert runner.split_response("<answer>3</answer>") == (None, "3")
    assert runner.split_response("no structure") == (None, None)


# ----------------------------------------------------------------------------- fake policy
def sum_rows(n: int) -> list[dict]:
    return [
        {"prompt": f"{i}+{i + 1}", "answer": str(2 * i + 1), "task": "add", "id": f"add-{i}"}
        for i in range(n)
    ]


def known_completions(i: int) -> list[str]:
    """Prompt i's 4 samples: two correct with reasoning (one a whitespace duplicate of the
    other for odd i), one wrong, one correct with an empty CoT."""
    gold = 2 * i + 1
    second = f" <think>{i}+{i + 1}={gold}</think>  <answer>{gold}</answer>"
    if i % 2 == 0:
        second = f" <think>{i} plus {i + 1} is {gold}</think> <answer>{gold}</answer>"
    return [
        think(f"{i}+{i + 1}={gold}", str(gold)),
        think("guess", str(gold + 1)),
        second,
        think("", str(gold)),
    ]


class FakePolicy:
    """Returns `known_completions(index)`; raises after `fail_after` calls (a simulated kill)."""

    def __init__(self, fail_after: int | None = None):
        self.fail_after, self.calls, self.seen = fail_after, 0, []

    def __call__(self, prompts, prompt_indices):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        for p in prompts:
            assert p.startswith(templates.R1_ZERO_PREFIX)  # rendered with the template
        self.seen += list(prompt_indices)
        return [
            [runner.Completion(t, num_tokens=len(t)) for t in known_completions(i)]
            for i in prompt_indices
        ]


SPEC = RewardSpec.from_config([("arithmetic", 1.0, {}), ("format_strict", 1.0, {})])
SELECT = SelectConfig(
    correct_reward="arithmetic",
    min_rewards=(("format_strict", 1.0),),
    max_per_prompt=2,
    filters=FilterConfig(min_cot_chars=1),
)
PROVENANCE = {"checkpoint": "ckpt/x", "seed": 7, "config": "test"}


def run_fake(workdir, policy, n=10, batch_size=3, restart=False):
    return runner.run(
        sum_rows(n),
        policy,
        SPEC,
        SELECT,
        str(workdir),
        batch_size=batch_size,
        provenance=PROVENANCE,
        restart=restart,
    )


def read_rows(workdir) -> list[dict]:
    with open(os.path.join(workdir, runner.TRACES), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_fake_policy_kept_set_is_exact(tmp_path):
    report = run_fake(tmp_path, FakePolicy())
    rows = read_rows(tmp_path)
    # Kept: sample 0 of every prompt; sample 2 of even prompts (odd: a whitespace duplicate).
    expected = [(f"add-{i}", j) for i in range(10) for j in ((0, 2) if i % 2 == 0 else (0,))]
    assert [(r["prompt_id"], r["sample_index"]) for r in rows] == expected
    first = rows[0]
    assert first == {
        "prompt": "0+1",
        "response": " <think>0+1=1</think> <answer>1</answer>",
        "reasoning": "0+1=1",
        "answer": "1",
        "task": "add",
        "prompt_id": "add-0",
        "sample_index": 0,
        "num_tokens": len(" <think>0+1=1</think> <answer>1</answer>"),
        "provenance": {**PROVENANCE, "rewards": {"arithmetic": 1.0, "format_strict": 1.0}},
    }
    assert report["candidates"] == 40 and report["kept"] == 15
    assert report["dropped"] == {"duplicate": 5, "filter:short_cot": 10, "incorrect": 10}
    assert report["reward_means"]["arithmetic"] == pytest.approx(0.75)
    with open(tmp_path / runner.REPORT) as f:
        assert json.load(f) == report


def test_run_input_errors(tmp_path):
    rows = sum_rows(2)
    rows[1]["id"] = rows[0]["id"]
    with pytest.raises(ValueError, match="unique"):
        runner.run(rows, FakePolicy(), SPEC, SELECT, str(tmp_path), batch_size=2, provenance={})
    with pytest.raises(ValueError, match="not scored"):
        runner.run(
            sum_rows(2),
            FakePolicy(),
            SPEC,
            SelectConfig(correct_reward="math"),
            str(tmp_path),
            batch_size=2,
            provenance={},
        )


def test_reward_fields_maps_target_and_lengths():
    spec = RewardSpec.from_config(
        [("arithmetic", 1.0, {}), ("overlong", 1.0, {"max_length": 10, "cache_length": 2})]
    )
    comps = [runner.Completion("a", num_tokens=3)]
    fields = runner.reward_fields(spec, [{"answer": "5"}], comps)
    assert fields == {"target": ["5"], "lengths": [3]}


# ----------------------------------------------------------------------------- judged rows
class WordsJudge:
    """A judge double with known verdicts: CORRECT when the words reference names the
    prediction's number (the tiny trained judge's job, decided here by rule)."""

    identity = {"model": "words-rule", "config": "test", "verdict_format": "tags"}

    def __init__(self):
        self.asked = []

    def score(self, rows):
        from r1.judge.data import words_to_number

        self.asked += list(rows)
        scores, verdicts, reasons = [], [], []
        for r in rows:
            if r["prediction"] is None:
                scores.append(0.0), verdicts.append(None), reasons.append("no_answer")
                continue
            ok = str(words_to_number(r["reference"])) == r["prediction"]
            scores.append(float(ok))
            verdicts.append("[[CORRECT]]" if ok else "[[INCORRECT]]")
            reasons.append("")
        info = {"verdicts": verdicts, "reasons": reasons}
        return np.asarray(scores, np.float32), info


def test_judge_grades_rows_without_a_rule_checker(tmp_path):
    from r1.judge.data import number_to_words

    rows = sum_rows(10)
    for row in rows[::2]:  # even prompts: the answer in words, a task no rule checks
        row.update(answer=number_to_words(int(row["answer"])), task="add_words")
    judge = WordsJudge()
    report = runner.run(
        rows,
        FakePolicy(),
        SPEC,
        SELECT,
        str(tmp_path / "judged"),
        batch_size=3,
        provenance=PROVENANCE,
        judge=judge,
        judge_tasks=("add_words",),
    )
    plain = run_fake(tmp_path / "plain", FakePolicy())
    judged_rows, plain_rows = read_rows(tmp_path / "judged"), read_rows(tmp_path / "plain")
    # The judge decides exactly what exact match decides on the digits: same kept set.
    key = [(r["prompt_id"], r["sample_index"]) for r in judged_rows]
    assert key == [(r["prompt_id"], r["sample_index"]) for r in plain_rows]
    assert report["kept"] == plain["kept"] and report["dropped"] == plain["dropped"]
    assert report["judge"] == {"judged": 20, "correct": 15, "unparseable": 0, "no_answer": 0}
    assert not any(k.startswith("arithmetic/") for k in report["reward_failures"])
    assert len(judge.asked) == 20 and judge.asked[0]["reference"] == "one"
    assert judge.asked[0]["prediction"] == "1" and judge.asked[0]["reasoning"] == "0+1=1"
    for row in judged_rows:
        if row["task"] == "add_words":
            assert row["provenance"] == {
                **PROVENANCE,
                "correctness": "judge",
                "judge": {**WordsJudge.identity, "verdict": "[[CORRECT]]"},
                "rewards": {"arithmetic": 1.0, "format_strict": 1.0},
            }
        else:
            assert row["provenance"] == {
                **PROVENANCE,
                "rewards": {"arithmetic": 1.0, "format_strict": 1.0},
            }
    with pytest.raises(ValueError, match="judge_tasks"):
        runner.run(
            rows,
            FakePolicy(),
            SPEC,
            SELECT,
            str(tmp_path / "x"),
            batch_size=3,
            provenance={},
            judge=judge,
        )


# ----------------------------------------------------------------------------- compiled sampler
def test_sampler_policy_does_not_depend_on_batching():
    tok = build_demo_tokenizer()
    model = Transformer(tiny_dense_config(vocab_size=tok.vocab_size), rngs=nnx.Rngs(0))
    sampling = SamplingConfig(
        max_new_tokens=6, num_samples=3, eos_ids=(tok.eos_id,), pad_id=tok.pad_id
    )
    policy = runner.SamplerPolicy(model, tok, sampling, seed=1, batch_size=4)
    prompts = [templates.render_r1_zero(f"{i}+{i}") for i in range(3)]
    together = policy(prompts, [0, 1, 2])
    apart = policy(prompts[:2], [0, 1]) + policy(prompts[2:], [2])
    assert [[c.text for c in g] for g in together] == [[c.text for c in g] for g in apart]
    assert len(together) == 3 and all(len(g) == 3 for g in together)
    assert len({c.text for g in together for c in g}) > 1  # samples differ
    for c in together[0]:
        assert 1 <= c.num_tokens <= 6
        assert not c.truncated or c.num_tokens == 6
    with pytest.raises(ValueError, match="1..4 prompts"):
        policy(prompts * 2, list(range(6)))


# ----------------------------------------------------------------------------- the tiny command
@pytest.mark.slow
def test_tiny_command_line_runs_and_resumes(tmp_path):
    """The documented command in a subprocess (one CPU device, the demo base checkpoint); run
    again on its workdir it samples nothing and leaves the traces untouched."""
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    cmd = [
        sys.executable,
        "-m",
        "experiments.rejection_sample",
        "--config=configs/rejection_sample.py:tiny",
        "--config.data.num_prompts=16",
        f"--workdir={tmp_path}",
    ]

    def launch() -> dict:
        done = subprocess.run(
            cmd, cwd=configlib.REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    summary = launch()
    with open(tmp_path / runner.REPORT) as f:
        report = json.load(f)
    rows = read_rows(tmp_path)
    assert summary["prompts"] == 16 and report["candidates"] == 16 * 8
    assert report["kept"] == summary["kept"] == len(rows) > 0
    assert report["kept"] + sum(report["dropped"].values()) == report["candidates"]
    provenance = report["provenance"]
    assert provenance["config"] == "configs/rejection_sample.py:tiny --config.data.num_prompts=16"
    keys = [(r["prompt_id"], r["sample_index"]) for r in rows]
    assert len(set(keys)) == len(keys)
    per_prompt = collections.Counter(r["prompt_id"] for r in rows)
    assert max(per_prompt.values()) <= 2
    for r in rows:
        assert int(r["answer"]) == sum(int(t) for t in r["prompt"].split("+"))
        assert r["response"].startswith(" <think>") and r["reasoning"]
        assert r["provenance"] == {
            **provenance,
            "rewards": {"arithmetic": 1.0, "format_strict": 1.0},
        }
    before = (tmp_path / runner.TRACES).read_bytes()
    assert launch() == summary
    assert (tmp_path / runner.TRACES).read_bytes() == before
