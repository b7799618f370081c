"""Local file sources (r1.data.sources): layouts, answer extraction, schema checks."""

import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from r1.data import procedural, sources

GOOD_GSM8K = [
    {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=<<3+4=7>>7\n#### 7"},
    {"question": "A cost $1,200 and B $300. Total?", "answer": "1200+300=1500\n#### 1,500"},
    {"question": "Debt?", "answer": "Owes 2.\nPays 7.\n#### -5"},
]
BAD_GSM8K_LINES = [
    json.dumps({"answer": "#### 3"}),  # missing question
    json.dumps({"question": "Q?", "answer": "no marker 3"}),  # no ####
    json.dumps({"question": "Q?", "answer": "#### forty"}),  # not a number
    json.dumps({"question": "   ", "answer": "#### 1"}),  # empty question
    "{not json",  # invalid JSON
    json.dumps(["question", "answer"]),  # not an object
]


def write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_good_and_bad_rows(tmp_path, caplog):
    lines = [
        json.dumps(GOOD_GSM8K[0]),
        *BAD_GSM8K_LINES[:3],
        json.dumps(GOOD_GSM8K[1]),
        "",
        *BAD_GSM8K_LINES[3:],
        json.dumps(GOOD_GSM8K[2]),
    ]
    path = write_jsonl(tmp_path / "gsm8k.jsonl", lines)
    with caplog.at_level(logging.WARNING, logger="r1.data.sources"):
        rows, report = sources.load_file(path, max_logged=3)
    assert [r["prompt"] for r in rows] == [g["question"] for g in GOOD_GSM8K]
    assert [r["answer"] for r in rows] == ["7", "1500", "-5"]
    assert [r["difficulty"] for r in rows] == [1, 1, 2]
    assert all(r["task"] == "gsm8k" for r in rows)
    assert rows[0]["id"] == "gsm8k.jsonl:line 1" and rows[0]["solution"] == GOOD_GSM8K[0]["answer"]
    assert report.layout == "gsm8k"
    assert (report.num_read, report.num_kept, report.num_skipped) == (9, 3, 6)
    assert report.skipped == {
        "missing field 'question'": 1,
        "no '####' in answer": 1,
        "answer after '####' is not a number": 1,
        "empty field 'question'": 1,
        "invalid JSON": 1,
        "row is not an object": 1,
    }
    assert len(report.examples) == 3 and "line 2" in report.examples[0]
    logged = [r.getMessage() for r in caplog.records]
    assert sum("skipped (" in m for m in logged) == 3
    assert any("kept 3 of 9 rows" in m for m in logged)


def test_entirely_wrong_files_fail_with_their_name(tmp_path):
    not_json = tmp_path / "notes.jsonl"
    not_json.write_text("hello\nworld\n")
    with pytest.raises(ValueError, match="notes.jsonl: no valid row"):
        sources.load_file(not_json)
    wrong_layout = write_jsonl(tmp_path / "other.jsonl", [json.dumps({"text": "x"})] * 3)
    with pytest.raises(ValueError, match="other.jsonl: no valid row.*no known layout: 3"):
        sources.load_file(wrong_layout)
    only_bad = write_jsonl(tmp_path / "bad.jsonl", BAD_GSM8K_LINES)
    with pytest.raises(ValueError, match="bad.jsonl"):
        sources.load_file(only_bad, layout="gsm8k")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.jsonl"):
        sources.load_file(empty)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        sources.load_file(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="unknown file type"):
        sources.load_file(write_jsonl(tmp_path / "x.csv", ["a,b"]))
    garbage = tmp_path / "g.parquet"
    garbage.write_bytes(b"not parquet at all")
    pytest.importorskip("pyarrow", reason="pyarrow is needed to read Parquet files")
    with pytest.raises(ValueError, match="g.parquet"):
        sources.load_file(garbage)


def test_math_layout_boxed_extraction(tmp_path):
    raw = [
        {
            "problem": "Half?",
            "solution": r"So $\boxed{\frac{1}{2}}$.",
            "level": "Level 2",
            "type": "Algebra",
        },
        {
            "problem": "Poly?",
            "solution": r"First \boxed{1}, finally \boxed{x^{2}+\{1\}}",
            "level": "Level 5",
        },
        {"problem": "No box", "solution": "It is 3."},
        {"problem": "Unbalanced", "solution": r"\boxed{\frac{1}{2}"},
        {"problem": "Fbox", "solution": r"\fbox{7} done", "level": "?"},
        {"problem": "Spaced", "solution": r"answer $\boxed 5$"},
        {"problem": "Empty", "solution": r"\boxed{ }"},
    ]
    path = tmp_path / "math.json"
    path.write_text(json.dumps(raw))
    rows, report = sources.load_file(path)
    assert report.layout == "math"
    assert [r["answer"] for r in rows] == [r"\frac{1}{2}", r"x^{2}+\{1\}", "7", "5"]
    assert [r["difficulty"] for r in rows] == [2, 5, 0, 0]
    assert rows[0]["subject"] == "Algebra" and rows[0]["task"] == "math"
    assert report.skipped == {"no \\boxed{} answer in solution": 2, "empty \\boxed{} answer": 1}


@given(st.text())
def test_last_boxed_never_raises(text):
    out = sources.last_boxed(text)
    assert out is None or isinstance(out, str)
    assert sources.last_boxed(r"x \boxed{" + text.replace("\\", "") + "}") is not None or (
        "{" in text or "}" in text
    )


def test_r1_layout_round_trips_procedural_rows(tmp_path):
    rows = procedural.fixed_set(procedural.Countdown(), 0, 2)
    path = write_jsonl(tmp_path / "cd.jsonl", [json.dumps(r) for r in rows])
    loaded, report = sources.load_file(path)
    assert report.layout == "r1" and report.num_skipped == 0
    assert loaded == rows  # ids, numbers, target and all other fields preserved


def test_parquet_and_globs(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="pyarrow is needed to read Parquet files")
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([*GOOD_GSM8K, {"question": "Bad", "answer": "no answer"}])
    pq.write_table(table, tmp_path / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist(GOOD_GSM8K[:1]), tmp_path / "part-1.parquet")
    rows, reports = sources.load_files(str(tmp_path / "part-*.parquet"), "gsm8k")
    assert [r["answer"] for r in rows] == ["7", "1500", "-5", "7"]
    assert [rep.num_skipped for rep in reports] == [1, 0]
    src = sources.RowSource.from_files(str(tmp_path / "part-*.parquet"), "gsm8k")
    assert len(src) == 4 and src[3]["id"] == "part-1.parquet:row 0"
    with pytest.raises(FileNotFoundError, match="matches no file"):
        sources.load_files(str(tmp_path / "nothing-*.jsonl"))
