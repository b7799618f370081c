"""GRPO on prompt files (GSM8K Parquet + MATH JSONL, the `math` reward through the host
callback): bad rows skipped and counted, epochs in the metrics, exact resume from a checkpoint
(tests/rl/test_trainer.py kills a run with SIGKILL; here the disk state it leaves is made
directly)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from r1 import configlib
from r1.data import sources
from r1.rl import config as rl_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMING_KEYS = {"step_seconds", "tokens_per_sec", "time/rewards"}

GSM8K = [
    {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=7\n#### 7"},
    {"question": "What is 6 times 2?", "answer": "6*2=12\n#### 12"},
    {"question": "Sam had 10 pens and lost 3. Left?", "answer": "10-3=7\n#### 7"},
    {"question": "A bad row without a final answer.", "answer": "no marker here"},
]
MATH = [
    json.dumps(
        {"problem": "Compute $2+5$.", "solution": "It is $\\boxed{7}$.", "level": "Level 1"}
    ),
    json.dumps({"problem": "Find $9-4$.", "solution": "So $\\boxed{5}$.", "level": "Level 2"}),
    "{not json",
    json.dumps({"problem": "Find " + "a very long question " * 12, "solution": "$\\boxed{1}$"}),
]


def _write_files(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="pyarrow is needed to write Parquet files")
    import pyarrow.parquet as pq

    gsm = tmp_path / "gsm8k.parquet"
    pq.write_table(pa.Table.from_pylist(GSM8K), gsm)
    math = tmp_path / "math.jsonl"
    math.write_text("\n".join(MATH) + "\n")
    return f"{gsm},{math}"


def _command(workdir, files, steps):
    return [
        sys.executable,
        "-m",
        "experiments.train",
        "--config=configs/r1_zero.py:tiny",
        f"--workdir={workdir}",
        f"--config.train.steps={steps}",
        "--config.train.checkpoint_every=2",
        "--config.train.samples_every=0",
        "--config.init.hf_path=",
        "--config.model.hidden_size=64",
        "--config.model.intermediate_size=128",
        "--config.model.moe_intermediate_size=32",
        "--config.rl.prompts_per_step=2",
        "--config.rl.group_size=4",
        "--config.rl.max_new_tokens=8",
        "--config.rl.accuracy_reward=math",
        "--config.rewards=(('math', 1.0, {}), ('format_strict', 0.1, {}))",
        f"--config.data.files={files}",
        "--config.data.layout=gsm8k,math",
        "--config.data.num_epochs=2",
        "--config.data.buckets=(64,)",
    ]


def _env():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = REPO
    return env


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def _train(workdir, files, steps):
    proc = subprocess.run(
        _command(workdir, files, steps),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.slow
def test_grpo_on_files_counts_skips_and_resumes_exactly(tmp_path):
    files = _write_files(tmp_path)
    unbroken = tmp_path / "unbroken"
    _train(unbroken, files, 4)
    expected = _rows(unbroken)
    assert [r["step"] for r in expected] == [1, 2, 3, 4]
    last = expected[-1]
    assert "reward/math" in last and "reward/format_strict" in last and "accuracy" in last
    assert last["data/skipped/bad_answer"] == 1 and last["data/skipped/undecodable"] == 1
    # 5 usable rows + 1 too long per epoch: 4 steps x 2 prompts pass the first epoch, so the
    # long row was drawn (and skipped) at least once; the position counts it too.
    too_long = last["data/skipped/too_long"]
    assert too_long >= 1 and last["data/position"] == 8 + too_long
    assert last["data/epoch"] == pytest.approx(last["data/position"] / 6)
    assert not any(k.startswith("eval/") for r in expected for k in r)

    # What a SIGKILL right after the step-2 checkpoint leaves on disk (later metric rows are
    # dropped on restore): the resumed run must see the rows an unbroken run saw.
    broken = tmp_path / "broken"
    shutil.copytree(unbroken, broken)
    shutil.rmtree(broken / "checkpoints" / "4")
    _train(broken, files, 4)
    assert _rows(broken) == expected


def test_files_with_no_usable_row_fail_at_start_naming_the_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "no marker"}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl: no valid row \(expected layout 'gsm8k'"):
        sources.load_sources(str(bad), "gsm8k")
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(GSM8K[0]) + "\n")
    with pytest.raises(ValueError, match=r"2 layouts .* for 1 files"):
        sources.load_sources(str(good), "gsm8k,math")
    with pytest.raises(FileNotFoundError, match="matches no file"):
        sources.load_sources(str(tmp_path / "none-*.jsonl"))
    with pytest.raises(ValueError, match=r"bad\.jsonl: no valid row"):
        sources.load_sources(f"{good},{bad}", "gsm8k")
    rows, reports = sources.load_sources(f"{good},{good}", "gsm8k")
    assert [r["domain"] for r in rows] == ["math", "math"] and len(reports) == 2
    config = configlib.load_config("configs/r1_zero.py:tiny")
    config.data.layout = "gsm8k,csv"
    with pytest.raises(ValueError, match=r"config\.data\.layout: expected 'auto' or one of"):
        rl_config.parse(config)


def test_skip_categories():
    report = sources.LoadReport("f")
    for reason in ("invalid JSON", "no '####' in answer", "missing field 'question'"):
        report.skipped[reason] += 1
    report.skipped["no \\boxed{} answer in solution"] += 2
    assert sources.skipped_counts([report]) == {
        "undecodable": 1,
        "bad_answer": 3,
        "missing_field": 1,
    }
