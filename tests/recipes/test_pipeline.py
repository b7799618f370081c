"""The R1 pipeline (r1/recipes/pipeline.py): stage skipping and resume with fake stages, the
synthetic cold-start and general data, the sub-configs each trainer receives, and (slow) the tiny
pipeline end to end through the command line, killed during stage 2 and resumed."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest

from r1 import configlib, rewards
from r1.data import procedural, templates
from r1.recipes import comparisons, pipeline, pipeline_configs, stages
from r1.rejection import experiment as rejection_experiment
from r1.rl import config as rl_sections
from r1.rm import config as rm_config
from r1.rm.data import POLITE
from r1.sft import config as sft_config

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _events(workdir) -> list[tuple[str, str]]:
    with open(os.path.join(workdir, stages.LOG)) as f:
        return [(e["stage"], e["event"]) for e in map(json.loads, f)]


# ----------------------------------------------------------------------------- stage runner
def _fake_stages(calls: list[str], fail_at: str | None = None):
    def make(name):
        def run(directory, previous):
            calls.append(name)
            with open(os.path.join(directory, "partial.txt"), "a") as f:
                f.write("x")
            if name == fail_at:
                raise RuntimeError(f"{name} killed")
            return {"export": f"{name}/export", "saw": sorted(previous)}

        return pipeline.Stage(name, run)

    return [make(n) for n in ("a", "b", "c")]


def test_stages_run_in_order_and_pass_outputs(tmp_path):
    calls: list[str] = []
    out = pipeline.run_stages(_fake_stages(calls), str(tmp_path))
    assert calls == ["a", "b", "c"]
    assert out["c"]["saw"] == ["a", "b"] and out["a"]["saw"] == []
    for name in "abc":
        done = stages.read_done(str(tmp_path / name))
        assert done["stage"] == name and done["outputs"] == out[name]
    assert _events(tmp_path) == [(n, e) for n in "abc" for e in ("start", "done")]


def test_completed_stages_are_skipped(tmp_path):
    calls: list[str] = []
    first = pipeline.run_stages(_fake_stages(calls), str(tmp_path))
    marker = tmp_path / "b" / stages.DONE
    mtime = marker.stat().st_mtime_ns
    second = pipeline.run_stages(_fake_stages(calls), str(tmp_path))
    assert calls == ["a", "b", "c"]  # nothing ran again
    assert second == first  # outputs come from the markers
    assert marker.stat().st_mtime_ns == mtime
    assert _events(tmp_path)[-3:] == [("a", "skip"), ("b", "skip"), ("c", "skip")]


def test_failed_stage_leaves_no_marker_and_resumes(tmp_path):
    calls: list[str] = []
    with pytest.raises(RuntimeError, match="b killed"):
        pipeline.run_stages(_fake_stages(calls, fail_at="b"), str(tmp_path))
    assert stages.read_done(str(tmp_path / "a")) is not None
    assert stages.read_done(str(tmp_path / "b")) is None
    assert not (tmp_path / "c").exists()
    out = pipeline.run_stages(_fake_stages(calls), str(tmp_path))
    assert calls == ["a", "b", "b", "c"]
    # Stage b ran again in the directory its interrupted run left (its trainer resumes there).
    assert (tmp_path / "b" / "partial.txt").read_text() == "xx"
    assert _events(tmp_path)[-5:] == [
        ("a", "skip"),
        ("b", "resume"),
        ("b", "done"),
        ("c", "start"),
        ("c", "done"),
    ]
    assert out["c"]["saw"] == ["a", "b"]


def test_duplicate_stage_names_rejected(tmp_path):
    stage = pipeline.Stage("a", lambda d, p: {})
    with pytest.raises(ValueError, match="unique"):
        pipeline.run_stages([stage, stage], str(tmp_path))


# ----------------------------------------------------------------------------- synthetic data
def test_cold_start_rows_are_readable_and_pass_the_stage_2_rules():
    task = procedural.make_task("add", min_terms=2, max_terms=4, min_digits=1, max_digits=1)
    rows = pipeline.cold_start_rows(task, 16, seed=0)
    assert rows == pipeline.cold_start_rows(task, 16, seed=0)  # deterministic
    completions = [r["response"] for r in rows]
    prompts = [templates.render_r1_zero(r["prompt"]) for r in rows]
    answers = [r["answer"] for r in rows]
    assert list(rewards.get("format_strict")(prompts, completions)) == [1.0] * 16
    assert list(rewards.get("arithmetic")(prompts, completions, target=answers)) == [1.0] * 16
    assert list(rewards.get("language")(prompts, completions, language="en")) == [1.0] * 16
    for row in rows:
        reasoning, summary = templates.split_readable(row["response"], (" <think>", "</think> "))
        assert reasoning == row["reasoning"] and summary == f"<answer>{row['answer']}</answer>"
        assert task.thinking(procedural.generate(task, 0, int(row["id"].rsplit("-", 1)[1])))
        assert row["answer"] in reasoning
    with pytest.raises(ValueError, match="num_examples"):
        pipeline.cold_start_rows(task, 0, seed=0)


def test_general_rows_are_formatted_and_polite():
    rows = pipeline.general_rows(12, seed=3)
    assert len({r["id"] for r in rows}) == 12 and all(r["task"] == "general" for r in rows)
    completions = [r["response"] for r in rows]
    assert list(rewards.get("format_strict")([""] * 12, completions)) == [1.0] * 12
    for text in completions:
        answer = text.split(templates.ANSWER_OPEN)[1].split(templates.ANSWER_CLOSE)[0]
        assert answer.endswith(POLITE)
    with pytest.raises(ValueError, match="general_examples"):
        pipeline.general_rows(0, seed=0)


# ----------------------------------------------------------------------------- sub-configs
@pytest.mark.parametrize("variant", ["tiny", "mini", "qwen2_5_7b"])
def test_sub_configs_are_what_the_trainers_accept(variant):
    config = configlib.load_config(str(ROOT / f"configs/r1.py:{variant}"))
    pipeline_configs.check_stage_configs(config)  # what run_pipeline checks before stage 1
    task = (config.task.name, dict(config.task.kwargs))

    sft = pipeline_configs.sft_config(config, config.cold_start, "/ckpt/base", ["/d/a.jsonl"])
    sections = sft_config.parse(sft)
    assert sections.data.source == "files" and sections.data.files == ("/d/a.jsonl",)
    assert sections.train.export and sft.init.hf_path == "/ckpt/base"

    rl = pipeline_configs.rl_config(config, config.reasoning_rl, "/s1/export")
    rl_sections.parse(rl)
    assert (rl.data.task, dict(rl.data.task_kwargs)) == task
    if variant in ("tiny", "mini"):
        names = [r[0] for r in rl.rewards]
        assert names == ["arithmetic_tokens", "format_strict_tokens", "language"]
    else:  # reasoning files, each domain with accuracy + format + language consistency
        assert {d: [r[0] for r in terms] for d, terms in rl.rewards.items()} == {
            "math": ["math", "format_strict", "language"],
            "code": ["code", "format_strict", "language"],
        }
        assert rl.data.files
    assert rl.init.hf_path == "/s1/export" and rl.model_rewards == ()

    model_rewards = (("reward_model", 0.5, {"path": "/rm", "region": "summary"}),)
    rl4 = pipeline_configs.rl_config(
        config, config.all_scenarios_rl, "/s3", steps=7, model_rewards=model_rewards
    )
    assert rl4.train.steps == 7 and rl4.rl.temperature == 0.7
    assert rl4.model_rewards[0][2]["path"] == "/rm"
    assert rl_sections.parse(rl4).rl.temperature == 0.7

    judged = tuple(config.rejection.judge.tasks)
    if judged:
        with pytest.raises(ValueError, match="judge.tasks is set but no judge path"):
            pipeline_configs.rejection_config(config, "/s2/export")
    rej = pipeline_configs.rejection_config(config, "/s2/export", "/s3/judge" if judged else "")
    configlib.parse_experiment(rej, extra_sections=rejection_experiment.EXTRA_SECTIONS)
    data, sampling, select = rejection_experiment.parse_sections(rej)
    assert data.source == "procedural" and data.task == task[0]
    assert select.correct_reward == "arithmetic"
    judge_section = configlib.to_dataclass(
        rejection_experiment.JudgeSection, rej.judge, "config.judge"
    )
    assert judge_section.tasks == judged
    assert judge_section.path == ("/s3/judge" if judged else "")
    if variant in ("tiny", "mini"):  # the judged slice of stage 3 (issue 10)
        assert judged == (f"{task[0]}_words",) and data.answer_words_fraction > 0

    rm = pipeline_configs.reward_model_config(config)
    rm_config.parse(rm)
    assert dict(rm.tokenizer) == dict(rl.tokenizer)  # the RM reads the policy's token ids
    assert dict(rm.model) == dict(config.reward_model.model)
    if variant == "qwen2_5_7b":
        assert rm.init.hf_path == config.init.hf_path  # from_base
        assert config.all_scenarios_rl.rm_steps == 400
        assert config.all_scenarios_rl.train.steps == 1700


def test_stage_judge_settings_are_checked_before_training(tmp_path):
    config = configlib.load_config(str(ROOT / "configs/r1.py:tiny"))
    assert config.rejection.judge.train_batch_size == 32
    config.rejection.judge.train_batch_size = 0
    with pytest.raises(ValueError, match=r"rejection\.judge\.train_batch_size: expected >= 1"):
        pipeline.stage_judge(config, str(tmp_path))
    config.rejection.judge.train_steps = 0
    with pytest.raises(ValueError, match="neither path nor train_steps"):
        pipeline.stage_judge(config, str(tmp_path))
    assert not os.listdir(tmp_path)


def _saved_judge(directory, train):
    """A stage-3 judge directory whose report records `train` (None: no record)."""
    target = directory / "judge"
    target.mkdir()
    report = {"loss": 0.1, "held_out_agreement": 0.9, "held_out_unparseable": 0}
    if train is not None:
        report["train"] = train
    (target / "judge_report.json").write_text(json.dumps(report))
    return target


def test_a_saved_judge_is_reused_only_with_the_settings_it_was_trained_with(tmp_path):
    config = configlib.load_config(str(ROOT / "configs/r1.py:tiny"))
    wanted = dataclasses.asdict(pipeline_configs.judge_training(config))
    assert wanted["batch_size"] == 32 and wanted["seed"] == config.seed

    same = tmp_path / "same"
    same.mkdir()
    target = _saved_judge(same, wanted)
    path, report = pipeline.stage_judge(config, str(same))
    assert path == str(target) and report["train"] == wanted

    other = tmp_path / "other"
    other.mkdir()
    _saved_judge(other, {**wanted, "batch_size": 64, "learning_rate": 1e-3})
    with pytest.raises(ValueError) as err:
        pipeline.stage_judge(config, str(other))
    message = str(err.value)
    assert "config.rejection.judge.train_batch_size: saved 64, asked 32" in message
    assert "TrainJudgeConfig.learning_rate: saved 0.001, asked 0.003" in message
    assert "train_steps" not in message and f"remove {other / 'judge'}" in message
    assert (other / "judge" / "judge_report.json").exists()  # nothing saved is touched

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    target = _saved_judge(legacy, None)
    assert pipeline.stage_judge(config, str(legacy))[0] == str(target)


def _tiny_with(section: str, sub: str | None, field: str, value) -> ml_collections.ConfigDict:
    """configs/r1.py:tiny with `config.section[.sub].field` set to `value` (deleted when None)."""
    values = configlib.load_config(str(ROOT / "configs/r1.py:tiny")).to_dict()
    target = values[section] if sub is None else values[section][sub]
    if value is None:
        del target[field]
    else:
        target[field] = value
    return ml_collections.ConfigDict(values)


@pytest.mark.parametrize(
    "section, sub, field, value, match",
    [
        (
            "cold_start",
            "sft",
            "batch_size",
            0,
            r"^1_cold_start \(config\.cold_start\): config\.sft",
        ),
        (
            "eval",
            "eval",
            "max_new_tokens",
            0,
            r"^1_cold_start \(config\.eval\): config\.eval\.eval",
        ),
        ("reasoning_rl", "rl", "advantage", "ppo", r"^2_reasoning_rl .*config\.rl\.advantage"),
        (
            "rejection",
            "sampling",
            "num_samples",
            "four",
            r"^3_rejection_sft \(config\.rejection\): config\.sampling",
        ),
        (
            "sft",
            "optimizer",
            "learning_rate",
            "x",
            r"^3_rejection_sft \(config\.sft\): config\.optimizer",
        ),
        (
            "reward_model",
            "rm",
            "bogus",
            1,
            r"^the reward model \(config\.reward_model\): config\.rm",
        ),
        (
            "all_scenarios_rl",
            "rl",
            "group_size",
            0,
            r"^4_all_scenarios_rl .*config\.rl\.group_size",
        ),
        (
            "all_scenarios_rl",
            None,
            "rm_steps",
            10**6,
            r"^4_all_scenarios_rl .*config\.all_scenarios_rl\.rm_steps",
        ),
        (
            "all_scenarios_rl",
            None,
            "general_fraction",
            1.5,
            r"^4_all_scenarios_rl .*general_fraction",
        ),
        ("all_scenarios_rl", None, "rm_region", None, r"^4_all_scenarios_rl .*rm_region"),
    ],
)
def test_a_bad_value_in_any_stage_is_named_before_stage_1(section, sub, field, value, match):
    pipeline_configs.check_stage_configs(configlib.load_config(str(ROOT / "configs/r1.py:tiny")), 8)
    with pytest.raises((AttributeError, TypeError, ValueError), match=match):
        pipeline_configs.check_stage_configs(_tiny_with(section, sub, field, value), num_devices=8)


def test_the_pipeline_checks_every_stage_before_it_runs(tmp_path):
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"^4_all_scenarios_rl .*config\.rl\.group_size"):
        pipeline.run_pipeline(_tiny_with("all_scenarios_rl", "rl", "group_size", 0), str(workdir))
    assert not workdir.exists()


def test_unknown_section_is_named(tmp_path):
    config = configlib.load_config(str(ROOT / "configs/r1.py:tiny"))
    values = config.to_dict()
    values["stage5"] = {}
    with pytest.raises(ValueError, match="stage5"):
        pipeline.run_pipeline(ml_collections.ConfigDict(values), str(tmp_path))


# ----------------------------------------------------------------------------- end to end
def _env() -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    # One CPU device: the pipeline runs as a user would run it (faster than 8 fake devices).
    env["XLA_FLAGS"] = " ".join(
        f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f
    )
    return env


def _command(workdir, *flags: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.r1_pipeline",
        "--config=configs/r1.py:tiny",
        f"--workdir={workdir}",
        *flags,
    ]


def _mtimes(directory) -> dict[str, int]:
    return {
        str(p.relative_to(directory)): p.stat().st_mtime_ns
        for p in pathlib.Path(directory).rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """Runs the tiny pipeline, SIGKILLs it once stage 2 has saved a GRPO checkpoint, then runs
    the same command again to the end, with both ablations (R1-Zero, no language reward)."""
    workdir = tmp_path_factory.mktemp("r1_pipeline")
    checkpoints = workdir / "2_reasoning_rl" / "rl" / "checkpoints"
    log_path = workdir / "first_run.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            _command(workdir), cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.time() + 600
        try:
            while time.time() < deadline and proc.poll() is None:
                if checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()):
                    break
                time.sleep(0.2)
            assert proc.poll() is None, f"pipeline ended early:\n{log_path.read_text()[-3000:]}"
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    killed_at = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    stage1 = _mtimes(workdir / "1_cold_start")
    started = time.time()
    result = subprocess.run(
        _command(workdir, "--compare_zero", "--ablate_language"),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    return {
        "workdir": workdir,
        "result": result,
        "killed_at": killed_at,
        "stage1": stage1,
        "seconds": time.time() - started,
    }


@pytest.mark.slow
def test_tiny_pipeline_runs_all_four_stages(killed_and_resumed):
    result = killed_and_resumed["result"]
    assert result.returncode == 0, result.stderr[-4000:]
    workdir = killed_and_resumed["workdir"]
    for stage in pipeline.STAGES:
        with open(workdir / stage / pipeline.EVAL) as f:
            table = json.load(f)
        assert table["stage"] == stage and table["num_problems"] == 9
        assert 0.0 <= table["overall"]["pass@1"] <= 1.0
        assert stages.read_done(str(workdir / stage)) is not None
        assert (workdir / stage / "eval.md").read_text().startswith("| task |")
    with open(workdir / pipeline.SUMMARY) as f:
        summary = json.load(f)
    assert list(summary) == list(pipeline.STAGES)
    printed = json.JSONDecoder().raw_decode(result.stdout)[0]
    assert printed == summary
    for row in summary.values():  # the stage measurements of r1.recipes.stage_eval
        low, high = row["ci95_pass@1"]
        assert 0.0 <= low <= row["pass@1"] <= high <= 1.0
        assert 0.0 <= row["readable_format"] <= 1.0 and 0.0 <= row["cot_with_words"] <= 1.0
        assert np.isfinite(row["general_rm_score"]) and 0.0 <= row["general_polite"] <= 1.0
    with open(workdir / "1_cold_start" / pipeline.EVAL) as f:
        general = json.load(f)["general"]
    assert general["general_prompts"] == 4 and len(general["general_completions"]) == 4 * 2
    # The run's one reward model, trained before stage 1's evaluation, serves stage 4 too.
    assert (workdir / pipeline.REWARD_MODEL_DIR / "export" / "config.json").exists()
    table = (workdir / pipeline.SUMMARY_TABLE).read_text().splitlines()
    assert [line.split(" | ")[0] for line in table[2:]] == [f"| {s}" for s in pipeline.STAGES]
    # The ablations ran after the pipeline, each evaluated like a stage.
    with open(workdir / comparisons.COMPARISONS) as f:
        compared = json.load(f)
    assert set(compared) == {pipeline.STAGES[1], comparisons.ZERO, comparisons.NO_LANGUAGE}
    zero_config = json.loads((workdir / comparisons.ZERO / "rl" / "config.json").read_text())
    assert zero_config["init"]["hf_path"] == "assets/demo_base"
    assert [t[0] for t in zero_config["rewards"]] == ["arithmetic_tokens", "format_strict_tokens"]
    assert (workdir / comparisons.PLOT).read_bytes()[:4] == b"\x89PNG"
    # Stage 3 kept rejection samples; stage 4's reward model learned its synthetic rule.
    done3 = stages.read_done(str(workdir / "3_rejection_sft"))["outputs"]
    assert done3["kept"] >= 1
    # Stage 3's judged slice: sums whose reference answer is in words, graded by the tiny judge
    # the stage trained; the kept judged traces are mostly really correct.
    assert done3["judge"] == "3_rejection_sft/judge"
    assert done3["judge_held_out_agreement"] > 0.6
    assert done3["judge_counts"]["judged"] > 0
    with open(workdir / done3["traces"]) as f:
        traces = [json.loads(line) for line in f]
    judged = [t for t in traces if t["provenance"].get("correctness") == "judge"]
    assert judged and all(t["task"] == "add_words" for t in judged)
    assert all(t["provenance"]["judge"]["model"].endswith("3_rejection_sft/judge") for t in judged)
    truly = [sum(map(int, t["prompt"].split("+"))) == int(t["answer"]) for t in judged]
    assert np.mean(truly) >= 0.7, truly
    done4 = stages.read_done(str(workdir / "4_all_scenarios_rl"))["outputs"]
    assert done4["reward_model_eval_accuracy"] > 0.5
    assert done4["reward_model"] == f"{pipeline.REWARD_MODEL_DIR}/export"
    # The reward model scored only the last rm_steps steps of stage 4.
    with open(workdir / "4_all_scenarios_rl" / "rl" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    with_rm = [r["step"] for r in rows if "reward/reward_model" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and with_rm == [3, 4]


@pytest.mark.slow
def test_killed_pipeline_resumes_at_stage_2(killed_and_resumed):
    result = killed_and_resumed["result"]
    assert result.returncode == 0, result.stderr[-4000:]
    workdir = killed_and_resumed["workdir"]
    assert killed_and_resumed["killed_at"], "the kill came before stage 2 saved a checkpoint"
    events = _events(workdir)
    second = events[events.index(("1_cold_start", "skip")) :]
    assert second[:3] == [
        ("1_cold_start", "skip"),
        ("2_reasoning_rl", "resume"),
        ("2_reasoning_rl", "done"),
    ]
    # Stage 1's files were not touched by the second run.
    assert _mtimes(workdir / "1_cold_start") == killed_and_resumed["stage1"]
    # Stage 2's GRPO run continued from its checkpoint: every step logged exactly once.
    resumed = re.findall(r"resumed from step (\d+) in \S*2_reasoning_rl/rl", result.stderr)
    assert resumed and int(resumed[0]) in killed_and_resumed["killed_at"]
    with open(workdir / "2_reasoning_rl" / "rl" / "metrics.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps == [1, 2, 3, 4]
