"""Resuming rejection sampling (r1/rejection/progress.py): a killed run continues without
duplicates, a foreign workdir is refused, and damaged progress files stop the run or, with
restart, are moved aside. The fake policy and rows come from test_rejection.py."""

from __future__ import annotations

import json
import os

import pytest
from test_rejection import PROVENANCE, SELECT, SPEC, FakePolicy, read_rows, run_fake, sum_rows

from r1.rejection import runner
from r1.rejection.progress import ProgressUnusable


def test_kill_and_resume_has_no_duplicates(tmp_path):
    unbroken = tmp_path / "unbroken"
    run_fake(unbroken, FakePolicy())
    work = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run_fake(work, FakePolicy(fail_after=2))  # killed during the third batch
    assert len(read_rows(work)) == 9  # two batches, prompts 0-5: 2 rows if even, else 1
    resumed = FakePolicy()
    report = run_fake(work, resumed)
    assert resumed.seen == list(range(6, 10))  # only the unfinished prompts were sampled again
    assert (work / runner.TRACES).read_bytes() == (unbroken / runner.TRACES).read_bytes()
    keys = [(r["prompt_id"], r["sample_index"]) for r in read_rows(work)]
    assert len(keys) == len(set(keys)) == 15
    assert report["candidates"] == 40 and report["prompts_done"] == 10
    # A finished run re-run does nothing.
    again = FakePolicy()
    run_fake(work, again)
    assert again.calls == 0 and len(read_rows(work)) == 15


def test_kill_between_rows_and_progress_is_undone(tmp_path, monkeypatch):
    """Killed after a batch's rows were appended but before its progress was recorded: the
    resume truncates those rows and redoes the batch."""
    unbroken = tmp_path / "unbroken"
    run_fake(unbroken, FakePolicy())
    work = tmp_path / "killed"
    real, calls = runner._write_progress, []

    def dying(path, progress):
        calls.append(progress["batches_done"])
        if progress["batches_done"] == 2:
            raise KeyboardInterrupt("killed")
        real(path, progress)

    monkeypatch.setattr(runner, "_write_progress", dying)
    with pytest.raises(KeyboardInterrupt):
        run_fake(work, FakePolicy())
    monkeypatch.setattr(runner, "_write_progress", real)
    assert len(read_rows(work)) == 9  # batch 2's 4 rows are in the file, unrecorded
    with open(work / runner.PROGRESS) as f:
        assert json.load(f)["prompts_done"] == 3
    resumed = FakePolicy()
    run_fake(work, resumed)
    assert resumed.seen == list(range(3, 10))
    assert (work / runner.TRACES).read_bytes() == (unbroken / runner.TRACES).read_bytes()


def test_resume_refuses_other_runs(tmp_path):
    run_fake(tmp_path / "a", FakePolicy(), n=4)
    with pytest.raises(ValueError, match="another configuration"):
        runner.run(
            sum_rows(4),
            FakePolicy(),
            SPEC,
            SELECT,
            str(tmp_path / "a"),
            batch_size=3,
            provenance={**PROVENANCE, "seed": 8},
        )
    with pytest.raises(ValueError, match="another configuration"):
        run_fake(tmp_path / "a", FakePolicy(), n=5)
    os.makedirs(tmp_path / "b")
    (tmp_path / "b" / runner.TRACES).write_text('{"prompt_id": "x"}\n')
    with pytest.raises(ValueError, match="without progress.json"):
        run_fake(tmp_path / "b", FakePolicy(), n=4)


def test_damaged_traces_stop_or_restart(tmp_path):
    """A traces file cut below its recorded size stops the run (nothing moved); --restart moves
    both files aside and samples again from the first prompt, equal to an unbroken run."""
    unbroken = tmp_path / "unbroken"
    run_fake(unbroken, FakePolicy())
    work = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        run_fake(work, FakePolicy(fail_after=2))
    traces = work / runner.TRACES
    damaged = traces.read_bytes()[:-20]
    traces.write_bytes(damaged)
    with pytest.raises(ProgressUnusable, match="was cut.*--restart"):
        run_fake(work, FakePolicy())
    assert traces.read_bytes() == damaged and sorted(os.listdir(work)) == [
        runner.PROGRESS,
        runner.TRACES,
    ]
    resumed = FakePolicy()
    run_fake(work, resumed, restart=True)
    assert resumed.seen == list(range(10))
    assert traces.read_bytes() == unbroken.joinpath(runner.TRACES).read_bytes()
    aside = sorted(name for name in os.listdir(work) if ".corrupt-" in name)
    assert [name.split(".corrupt-")[0] for name in aside] == [runner.PROGRESS, runner.TRACES]
    assert (work / aside[1]).read_bytes() == damaged
