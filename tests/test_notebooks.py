"""Executes notebooks/reward_ablation.ipynb with nbclient (on the shipped examples and on a
run-style samples.jsonl) and checks its outputs: no errors, one scores row per completion with
every spec column, the PNG figures.

nbclient, nbformat and ipykernel are in the `test` extra: a missing one fails here (import error
at collection), it does not skip.
"""

import csv
import json
import os
import pathlib
import time

import ipykernel  # noqa: F401  (the python3 kernel the notebook runs in)
import nbclient
import nbformat
import pytest

from r1.data.procedural import countdown_prompt
from r1.data.templates import render_r1_zero

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "reward_ablation.ipynb"
EXAMPLES = ROOT / "notebooks" / "examples" / "completions.jsonl"
SPECS = ["accuracy_only", "r1_zero", "dapo", "r1"]
TIMEOUT_S = 120  # the whole notebook takes a few seconds on 2 CPU cores


def _execute(tmp_path, monkeypatch, completions):
    """Runs the notebook (cwd: notebooks/) with its parameters set through the environment;
    returns (executed notebook, the SUMMARY dict it printed, its output dir)."""
    out = tmp_path / "out"
    monkeypatch.setenv("R1_ABLATION_COMPLETIONS", str(completions))
    monkeypatch.setenv("R1_ABLATION_OUT", str(out))
    # The kernel must import this checkout's r1 (the notebook also prefers it from notebooks/).
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    start = time.monotonic()
    client.execute()  # raises CellExecutionError (with the traceback) on any failing cell
    assert time.monotonic() - start < TIMEOUT_S
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors
    stdout = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    lines = [ln for ln in stdout.splitlines() if ln.startswith("SUMMARY ")]
    assert len(lines) == 1, stdout[-2000:]
    return nb, json.loads(lines[0][len("SUMMARY ") :]), out


def _scores(out):
    with open(out / "scores.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_notebook_is_shipped_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)


def test_reward_ablation_on_shipped_examples(tmp_path, monkeypatch):
    expected = [json.loads(line) for line in EXAMPLES.read_text().splitlines() if line.strip()]
    assert 60 <= len(expected) <= 150
    assert {r["task"] for r in expected} == {"arithmetic", "countdown", "math"}
    nb, summary, out = _execute(tmp_path, monkeypatch, EXAMPLES)

    assert summary["rows"] == len(expected)
    assert summary["specs"] == SPECS
    table = _scores(out)
    assert [r["id"] for r in table] == [r["id"] for r in expected]  # one row per completion
    for spec in SPECS:
        assert spec in table[0], table[0].keys()
        assert all(r[spec] not in ("", "nan") for r in table)
    # The specs disagree (otherwise the ablation shows nothing) and count their failures.
    assert len({json.dumps([r[s] for r in table]) for s in SPECS}) == len(SPECS)
    assert summary["spearman_vs_reference"]["accuracy_only"] == pytest.approx(1.0)
    assert any(k.startswith("format_strict/") for k in summary["failures"]["r1_zero"])
    assert summary["failures"]["dapo"].get("overlong/overlong", 0) > 0
    assert "format_strict/missing_think" not in summary["failures"]["accuracy_only"]

    for name in ("reward_distributions.png", "rank_changes.png"):
        png = out / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert png.stat().st_size > 10_000
    images = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]
    assert len(images) == 2  # both figures shown inline


def test_reward_ablation_on_run_samples(tmp_path, monkeypatch):
    """A demo run's samples.jsonl has no task or gold fields: they come from the prompt."""
    questions = ["12+34", "123*45", countdown_prompt([3, 5, 7], 22), "What is love?"]
    completions = [
        " <think>12+34=46</think> <answer>46</answer>",
        " <answer>5535</answer>",
        " <think>3*5=15, 15+7=22</think> <answer>3*5+7</answer>",
        " <think>hm</think> <answer>baby</answer>",
    ]
    path = tmp_path / "samples.jsonl"
    with open(path, "w") as f:
        for i, (q, c) in enumerate(zip(questions, completions)):
            row = {"step": 10, "prompt": render_r1_zero(q)[-200:], "completion": c, "reward": i}
            f.write(json.dumps(row) + "\n")
        f.write('{"step": 10, "prompt": "torn')  # a run killed mid-write

    _, summary, out = _execute(tmp_path, monkeypatch, path)
    assert summary["rows"] == 3  # the unrecognised question is dropped, the torn line ignored
    table = _scores(out)
    assert [r["task"] for r in table] == ["arithmetic", "arithmetic", "countdown"]
    assert [float(r["accuracy_only"]) for r in table] == [1.0, 1.0, 1.0]
    assert [float(r["r1_zero"]) for r in table] == [2.0, 1.0, 2.0]
    assert [float(r["logged"]) for r in table] == [0.0, 1.0, 2.0]
