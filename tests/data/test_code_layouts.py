"""Code layouts (humaneval, mbpp, stdio), per-file domains and weighted mixtures of files."""

import json

import numpy as np
import pytest

from r1.data import code_layouts, sources
from r1.data.mixture import WeightedMixture

HUMANEVAL = {
    "task_id": "HumanEval/0",
    "prompt": 'def add(a, b):\n    """Sum of a and b."""\n',
    "canonical_solution": "    return a + b\n",
    "test": (
        "METADATA = {'author': 'x'}\n\n"
        "def check(candidate):\n"
        '    """Checks add."""\n'
        "    assert candidate(1, 2) == 3\n"
        "    assert candidate(-1, 1) == 0\n"
    ),
    "entry_point": "add",
}
MBPP = {
    "task_id": 7,
    "text": "Write a function to square a number.",
    "code": "def square(x):\n    return x * x\n",
    "test_list": ["assert square(2) == 4", "assert square(3) == 9"],
    "test_setup_code": "",
}
APPS = {
    "problem_id": 12,
    "question": "Read two integers and print their sum.",
    "input_output": json.dumps({"inputs": ["1 2\n", "5 6\n"], "outputs": ["3\n", "11\n"]}),
    "difficulty": "introductory",
}
CODECONTESTS = {
    "description": "Print the input reversed.",
    "public_tests": {"input": ["abc\n"], "output": ["cba\n"]},
    "private_tests": {"input": ["xy\n"], "output": ["yx\n"]},
    "generated_tests": {"input": [], "output": []},
    "difficulty": 7,
}
LIVECODEBENCH = {
    "question_content": "Print N doubled.",
    "public_test_cases": json.dumps(
        [
            {"input": "2\n", "output": "4\n", "testtype": "stdin"},
            {"input": "f(2)", "output": "4", "testtype": "functional"},
        ]
    ),
}


def _write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_humaneval_check_becomes_one_assert_per_test_on_the_entry_point():
    row = sources.convert_row(HUMANEVAL, "humaneval", "humaneval")
    assert row["tests"] == ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]
    assert row["domain"] == "code" and "answer" not in row
    assert "```python\ndef add(a, b):" in row["prompt"] and "code block" in row["prompt"]
    assert row["solution"].endswith("return a + b\n")


def test_humaneval_with_helpers_runs_its_whole_test_then_check():
    raw = dict(HUMANEVAL, test="def helper(x):\n    return x\n\n" + HUMANEVAL["test"])
    row = sources.convert_row(raw, "humaneval", "humaneval")
    assert row["tests"] == [raw["test"] + "\n\ncheck(add)\n"]
    loop = dict(HUMANEVAL, test="def check(candidate):\n    for i in range(3):\n        pass\n")
    assert len(sources.convert_row(loop, "humaneval", "h")["tests"]) == 1


def test_mbpp_shows_its_tests_and_prepends_setup_code():
    row = sources.convert_row(MBPP, "mbpp", "mbpp")
    assert row["tests"] == MBPP["test_list"] and row["id"] == "7"
    assert "assert square(2) == 4" in row["prompt"] and row["domain"] == "code"
    setup = sources.convert_row(dict(MBPP, test_setup_code="import math"), "mbpp", "mbpp")
    assert setup["tests"][0] == "import math\nassert square(2) == 4"


def test_stdio_layouts_of_apps_codecontests_and_livecodebench():
    apps = sources.convert_row(APPS, "stdio", "apps")
    assert apps["tests"] == [
        {"input": "1 2\n", "output": "3\n"},
        {"input": "5 6\n", "output": "11\n"},
    ]
    assert apps["difficulty_label"] == "introductory" and apps["difficulty"] == 0
    assert "standard input" in apps["prompt"] and apps["domain"] == "code"
    contests = sources.convert_row(CODECONTESTS, "stdio", "cc")
    assert [c["output"] for c in contests["tests"]] == ["cba\n", "yx\n"]
    assert contests["difficulty"] == 7
    live = sources.convert_row(LIVECODEBENCH, "stdio", "lcb")
    assert live["tests"] == [{"input": "2\n", "output": "4\n"}]
    lines = dict(APPS, input_output={"inputs": [["1 2"]], "outputs": [["3"]]})
    assert sources.convert_row(lines, "stdio", "apps")["tests"] == [
        {"input": "1 2\n", "output": "3\n"}
    ]


@pytest.mark.parametrize(
    "raw, reason, category",
    [
        (
            dict(APPS, input_output=json.dumps({"fn_name": "f", "inputs": [], "outputs": []})),
            "call-based tests",
            "unsupported",
        ),
        (dict(APPS, input_output="{broken"), "input_output is not valid JSON", "bad_answer"),
        ({"question": "No tests at all", "tests": []}, "no stdin/stdout test case", "bad_answer"),
        (
            dict(APPS, input_output={"inputs": ["1"], "outputs": []}),
            "input_output: inputs and outputs differ in length",
            "bad_answer",
        ),
    ],
)
def test_bad_stdio_rows_are_skipped_with_a_counted_reason(raw, reason, category):
    with pytest.raises(sources.RowError) as err:
        sources.convert_row(raw, "stdio", "apps")
    assert err.value.reason == reason and sources.skip_category(reason) == category


def test_auto_detects_each_code_layout_and_r1_code_rows(tmp_path):
    r1_code = {"prompt": "Write f.", "tests": ["assert f() == 1", {"input": "", "output": "1"}]}
    for raw, layout in [
        (HUMANEVAL, "humaneval"),
        (MBPP, "mbpp"),
        (APPS, "stdio"),
        (LIVECODEBENCH, "stdio"),
        (r1_code, "r1"),
    ]:
        assert sources.detect_layout(raw) == layout
    rows, report = sources.load_file(_write(tmp_path / "code.jsonl", [r1_code]))
    assert rows[0]["domain"] == "code" and rows[0]["tests"] == r1_code["tests"]
    assert "answer" not in rows[0] and report.layout == "r1"


def test_a_code_file_without_a_usable_row_names_the_file_and_the_layout(tmp_path):
    path = _write(tmp_path / "he.jsonl", [{"prompt": "x"}])
    with pytest.raises(
        ValueError,
        match=r"he\.jsonl: no valid row \(expected layout 'humaneval': "
        r"humaneval \('prompt', 'test', 'entry_point'\)",
    ):
        sources.load_file(path, "humaneval")


def test_entries_keep_their_rows_and_take_the_domain_a_file_declares(tmp_path):
    math = _write(tmp_path / "m.jsonl", [{"problem": "1+1?", "solution": "$\\boxed{2}$"}])
    code = _write(tmp_path / "c.jsonl", [MBPP, MBPP])
    entries = sources.load_entries(f"{math},{code}", "math,mbpp", domains=",python")
    assert [len(e.rows) for e in entries] == [1, 2]
    assert entries[0].rows[0]["domain"] == "math" and entries[1].rows[0]["domain"] == "python"
    with pytest.raises(ValueError, match="data domains: 3 domains"):
        sources.load_entries(f"{math},{code}", "math,mbpp", domains="a,b,c")


def test_mixture_draws_parts_by_weight_deterministically():
    math = [{"prompt": f"m{i}", "domain": "math"} for i in range(5)]
    code = [{"prompt": f"c{i}", "domain": "code"} for i in range(50)]
    mixture = WeightedMixture([math, code], [0.7, 0.3], seed=3)
    assert len(mixture) == 55
    drawn = [mixture[i]["domain"] for i in range(200)]
    share = drawn.count("math") / 200
    # Binomial(200, 0.7): standard deviation 0.032; 4 of them is far outside chance.
    assert abs(share - 0.7) < 4 * np.sqrt(0.7 * 0.3 / 200)
    again = WeightedMixture([math, code], [0.7, 0.3], seed=3)
    assert [again[i] for i in range(50)] == [mixture[i] for i in range(50)]
    other = WeightedMixture([math, code], [0.7, 0.3], seed=4)
    assert [other[i] for i in range(50)] != [mixture[i] for i in range(50)]
    only_code = WeightedMixture([math, code], [0.0, 1.0], seed=3)
    assert {only_code[i]["domain"] for i in range(50)} == {"code"}


@pytest.mark.parametrize(
    "weights, message",
    [([1.0], "1 weights for 2 sources"), ([0.0, 0.0], "not all 0"), ([-1.0, 2.0], ">= 0")],
)
def test_mixture_rejects_bad_weights(weights, message):
    with pytest.raises(ValueError, match=message):
        WeightedMixture([[{"prompt": "a"}], [{"prompt": "b"}]], weights, seed=0)


def test_code_layout_names_are_public():
    assert set(code_layouts.CODE_LAYOUTS) <= set(sources.LAYOUTS)
    assert all(sources.LAYOUT_DOMAINS[layout] == "code" for layout in code_layouts.CODE_LAYOUTS)
