"""Distillation: trace field mapping and bad-row counting (JSONL / Parquet), the stage pipeline's
resume and refusal rules, a small real run, and (slow) the tiny variant end to end."""

from __future__ import annotations

import json
import os

import ml_collections
import pytest

from r1 import configlib
from r1.data.sources import RowError
from r1.recipes import distill as distill_lib
from r1.recipes.distill import TraceSection, prepare_traces, trace_to_sft

GOOD = {"prompt": "1+2", "reasoning": "1+2=3", "answer": "3"}


def _write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(row if isinstance(row, str) else json.dumps(row))
            f.write("\n")
    return str(path)


def _read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# ----------------------------------------------------------------------------- trace rows
def test_reasoning_and_answer_render_in_each_student_format():
    fields = TraceSection()
    assert trace_to_sft(GOOD, fields, "r1_zero") == {
        "prompt": "1+2",
        "response": " <think>1+2=3</think> <answer>3</answer>",
    }
    assert trace_to_sft(GOOD, fields, "think")["response"] == "1+2=3\n</think>\n\n3"
    readable = trace_to_sft(GOOD, fields, "readable")["response"]
    assert "1+2=3" in readable and readable.endswith("3") and "<think>" not in readable


def test_custom_field_names_are_mapped():
    fields = TraceSection(
        prompt_field="input", reasoning_field="reasoning_content", answer_field="content"
    )
    raw = {"input": "Solve x+1=2.", "reasoning_content": "x = 1", "content": "\\boxed{1}", "id": 7}
    row = trace_to_sft(raw, fields, "think")
    assert row == {"prompt": "Solve x+1=2.", "response": "x = 1\n</think>\n\n\\boxed{1}"}


def test_response_is_split_at_think_and_rerendered():
    fields = TraceSection(reasoning_field="cot", answer_field="final")
    r1_zero = {"prompt": "2+2", "response": " <think> 2+2=4 </think> <answer>4</answer>"}
    assert trace_to_sft(r1_zero, fields, "think")["response"] == "2+2=4\n</think>\n\n4"
    chat = {"prompt": "q", "response": "<think>\nfirst, ...\n</think>\n\nThe answer is 5."}
    assert trace_to_sft(chat, fields, "r1_zero")["response"] == (
        " <think>first, ...</think> <answer>The answer is 5.</answer>"
    )
    # Without </think>: skipped, unless reasoning is not required (then used verbatim).
    plain = {"prompt": "q", "response": "just 5"}
    with pytest.raises(RowError, match="no </think>"):
        trace_to_sft(plain, fields, "think")
    verbatim = trace_to_sft(plain, TraceSection(require_reasoning=False), "think")
    assert verbatim == {"prompt": "q", "response": "just 5"}


@pytest.mark.parametrize(
    "raw, reason",
    [
        ({"reasoning": "r", "answer": "a"}, "missing field 'prompt'"),
        ({"prompt": "  ", "reasoning": "r", "answer": "a"}, "empty field 'prompt'"),
        ({"prompt": ["a"], "reasoning": "r", "answer": "a"}, "field 'prompt' is not text"),
        ({"prompt": "q", "reasoning": "r"}, "missing field 'answer'"),
        ({"prompt": "q", "answer": "a"}, "missing field 'response'"),
        ({"prompt": "q", "response": "<think></think> 3"}, "empty reasoning"),
        ({"prompt": "q", "response": "<think>r</think>  "}, "no answer after </think>"),
        ([1, 2], "not an object"),
    ],
)
def test_bad_rows_raise_their_reason(raw, reason):
    with pytest.raises(RowError) as err:
        trace_to_sft(raw, TraceSection(), "r1_zero")
    assert err.value.reason == reason


def test_correct_field_filters_rows():
    fields = TraceSection(correct_field="correct")
    assert trace_to_sft({**GOOD, "correct": True}, fields, "r1_zero")
    assert trace_to_sft({**GOOD, "correct": "yes"}, fields, "r1_zero")
    for verdict, reason in (
        (False, "marked incorrect"),
        ("no", "marked incorrect"),
        (None, "missing field 'correct'"),
        ("maybe", "field 'correct' is not a boolean"),
    ):
        with pytest.raises(RowError) as err:
            trace_to_sft({**GOOD, "correct": verdict}, fields, "r1_zero")
        assert err.value.reason == reason


def test_prepare_traces_counts_bad_rows_in_jsonl(tmp_path):
    src = _write_jsonl(
        tmp_path / "dump.jsonl",
        [
            GOOD,
            "{not json",
            {"prompt": "q"},
            {"prompt": "", "reasoning": "r", "answer": "a"},
            {"prompt": "4+4", "response": " <think>4+4=8</think> <answer>8</answer>", "x": 1},
            {"prompt": "q", "response": "no thinking here"},
            {"prompt": "5+5", "reasoning": "5+5=10", "answer": 10},
        ],
    )
    out = str(tmp_path / "out" / "sft.jsonl")
    report = prepare_traces([src], TraceSection(), "r1_zero", out)
    assert report["read"] == 7 and report["kept"] == 3
    assert report["skipped"] == {
        "invalid JSON": 1,
        "missing field 'response'": 1,
        "empty field 'prompt'": 1,
        "no </think> in response": 1,
    }
    assert report["files"][0]["kept"] == 3 and len(report["examples"]) == 4
    rows = _read_jsonl(out)
    assert [r["prompt"] for r in rows] == ["1+2", "4+4", "5+5"]
    assert rows[2]["response"] == " <think>5+5=10</think> <answer>10</answer>"
    assert all(set(r) == {"prompt", "response"} for r in rows)
    assert not os.path.exists(out + ".tmp")


def test_prepare_traces_reads_parquet_and_limits(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="pyarrow is needed to read Parquet files")
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "question": ["1+1", None, "2+2", "3+3"],
            "generation": [
                "<think>1+1=2</think>2",
                "<think>x</think>y",
                "no think",
                "<think>6</think>6",
            ],
        }
    )
    src = str(tmp_path / "dump.parquet")
    pq.write_table(table, src)
    fields = TraceSection(prompt_field="question", response_field="generation")
    out = str(tmp_path / "sft.jsonl")
    report = prepare_traces([src], fields, "think", out)
    assert (report["read"], report["kept"]) == (4, 2)
    assert report["skipped"] == {"missing field 'question'": 1, "no </think> in response": 1}
    assert _read_jsonl(out)[0] == {"prompt": "1+1", "response": "1+1=2\n</think>\n\n2"}
    limited = prepare_traces([src], TraceSection(**{**fields.__dict__, "limit": 1}), "think", out)
    assert limited["kept"] == 1 and len(_read_jsonl(out)) == 1


def test_prepare_traces_errors_name_the_problem(tmp_path):
    src = _write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "solution": "s"}])
    with pytest.raises(ValueError, match="no usable trace.*bad.jsonl"):
        prepare_traces([src], TraceSection(), "r1_zero", str(tmp_path / "o.jsonl"))
    assert not os.path.exists(tmp_path / "o.jsonl")
    with pytest.raises(FileNotFoundError, match="config.traces.files.*nothing"):
        TraceSection(files=str(tmp_path / "nothing*.jsonl")).paths()
    with pytest.raises(ValueError, match="limit"):
        TraceSection(limit=-1)
    with pytest.raises(ValueError, match="unknown file type"):
        list(distill_lib.read_records(str(tmp_path / "x.csv")))


def test_trace_paths_expand_globs_and_commas(tmp_path):
    a = _write_jsonl(tmp_path / "a.jsonl", [GOOD])
    b = _write_jsonl(tmp_path / "b.jsonl", [GOOD])
    assert TraceSection(files=str(tmp_path / "*.jsonl")).paths() == [a, b]
    assert TraceSection(files=f"{b}, {a}").paths() == [b, a]
    assert TraceSection(files=(a,)).paths() == [a]


# ----------------------------------------------------------------------------- pipeline
def _small_config(trace_file: str = "") -> ml_collections.ConfigDict:
    """The tiny variant shrunk to seconds: a 1-layer student, 2 SFT steps, 3 held-out sums."""
    config = configlib.load_config("configs/distill.py:tiny")
    config.unlock()
    config.model.update(hidden_size=32, num_layers=1, head_dim=8, intermediate_size=64)
    config.traces.files = trace_file
    config.teacher.evaluate = False
    config.data.seq_len = 64
    config.sft.batch_size = 8
    config.train.update(steps=2, checkpoint_every=1)
    config.eval_data.update(
        task_kwargs=ml_collections.ConfigDict(dict(min_terms=2, max_terms=4)), per_difficulty=1
    )
    config.eval.update(num_samples=1, max_new_tokens=8, batch_size=4)
    config.lock()
    return config


class _Fakes:
    """Stand-ins for the heavy parts: teacher sampling, model loading, evaluation, SFT."""

    def __init__(self, monkeypatch):
        self.calls = {"sample": 0, "evaluate": 0, "sft": 0}
        self.fail_sft = False
        monkeypatch.setattr(distill_lib, "run_from_config", self.sample)
        monkeypatch.setattr(distill_lib, "_load", lambda cfg, mesh: (cfg, None))
        monkeypatch.setattr(distill_lib, "_evaluate", self.evaluate)

    def sample(self, config, workdir, name=""):
        self.calls["sample"] += 1
        os.makedirs(workdir, exist_ok=True)
        rows = [{**GOOD, "response": " <think>1+2=3</think> <answer>3</answer>"}, {"prompt": "q"}]
        _write_jsonl(os.path.join(workdir, "traces.jsonl"), rows)
        return {
            "prompts": 2,
            "candidates": 4,
            "kept": 2,
            "dropped": {"incorrect": 2},
            "seconds": 0.0,
        }

    def evaluate(self, model, tokenizer, rows, eval_cfg, mesh, path, what):
        self.calls["evaluate"] += 1
        trained = "export" in str(model.init.hf_path)
        rate = 0.5 if trained else 0.0
        with open(path, "w") as f:
            json.dump({"what": what}, f)
        table = {"pass@1": rate, "cons@1": rate, "count": len(rows), "response_length": 3.0}
        return {"params": 10, "overall": table, "tasks": {"add": table}}

    def sft(self, config, workdir):
        self.calls["sft"] += 1
        if self.fail_sft:
            raise KeyboardInterrupt("killed during SFT")
        os.makedirs(os.path.join(workdir, "export"), exist_ok=True)
        with open(os.path.join(workdir, "export", "config.json"), "w") as f:
            json.dump({"traces": config.data.files[0]}, f)
        return {"loss": 0.1, "token_accuracy": 0.9, "grad_norm": 1.0}


def test_pipeline_resumes_after_a_kill_and_skips_finished_stages(tmp_path, monkeypatch):
    fakes = _Fakes(monkeypatch)
    config, workdir = _small_config(), str(tmp_path / "run")
    fakes.fail_sft = True
    with pytest.raises(KeyboardInterrupt):
        distill_lib.distill(config, workdir, sft_fn=fakes.sft)
    assert fakes.calls == {"sample": 1, "evaluate": 1, "sft": 1}
    stages = json.load(open(os.path.join(workdir, "stages.json")))
    assert set(stages) == {"traces", "eval_before", "sft"}
    assert stages["traces"]["complete"] and not stages["sft"]["complete"]
    # The half-done SFT may only be resumed with the same settings.
    changed = ml_collections.ConfigDict(config.to_dict())
    changed.train.steps = 5
    with pytest.raises(ValueError, match="stage 'sft' was made with another configuration"):
        distill_lib.distill(changed, workdir, sft_fn=fakes.sft)
    assert fakes.calls["sft"] == 1
    assert stages["traces"]["summary"]["kept"] == 1
    assert stages["traces"]["summary"]["skipped"] == {"missing field 'response'": 1}

    fakes.fail_sft = False
    report = distill_lib.distill(config, workdir, sft_fn=fakes.sft)
    assert fakes.calls == {"sample": 1, "evaluate": 2, "sft": 2}  # traces, eval_before skipped
    assert report["before"]["overall"]["pass@1"] == 0.0
    assert report["after"]["overall"]["pass@1"] == 0.5
    assert report["delta"] == {"pass@1": 0.5, "cons@1": 0.5}
    assert report["traces"]["teacher_sampling"]["candidates"] == 4
    assert report["sft"] == {"loss": 0.1, "token_accuracy": 0.9}
    on_disk = json.load(open(os.path.join(workdir, "distill_report.json")))
    assert on_disk == json.loads(json.dumps(report))
    assert "student after SFT" in open(os.path.join(workdir, "distill_report.md")).read()

    again = distill_lib.distill(config, workdir, sft_fn=fakes.sft)
    assert fakes.calls == {"sample": 1, "evaluate": 2, "sft": 2}  # everything was finished
    assert again == report

    # A lost output is redone; the stages before it are not.
    os.remove(os.path.join(workdir, "eval_after.json"))
    distill_lib.distill(config, workdir, sft_fn=fakes.sft)
    assert fakes.calls == {"sample": 1, "evaluate": 3, "sft": 2}


def test_pipeline_refuses_a_workdir_of_another_configuration(tmp_path, monkeypatch):
    fakes = _Fakes(monkeypatch)
    config, workdir = _small_config(), str(tmp_path / "run")
    distill_lib.distill(config, workdir, sft_fn=fakes.sft)
    changed = ml_collections.ConfigDict(config.to_dict())
    changed.optimizer.learning_rate = 0.5
    with pytest.raises(ValueError, match="stage 'sft' was made with another configuration"):
        distill_lib.distill(changed, workdir, sft_fn=fakes.sft)
    # Evaluation settings only touch the evaluation stages.
    changed = ml_collections.ConfigDict(config.to_dict())
    changed.eval.seed = 3
    with pytest.raises(ValueError, match="stage 'eval_before'"):
        distill_lib.distill(changed, workdir, sft_fn=fakes.sft)


def test_trace_files_replace_the_teacher(tmp_path, monkeypatch):
    fakes = _Fakes(monkeypatch)
    src = _write_jsonl(tmp_path / "dump.jsonl", [GOOD, {"prompt": "q"}])
    report = distill_lib.distill(_small_config(src), str(tmp_path / "run"), sft_fn=fakes.sft)
    assert fakes.calls["sample"] == 0 and report["teacher"] is None
    assert report["traces"]["files"][0]["path"] == src
    assert (report["traces"]["read"], report["traces"]["kept"]) == (2, 1)


def test_no_teacher_and_no_traces_is_an_error(tmp_path, monkeypatch):
    _Fakes(monkeypatch)
    config = ml_collections.ConfigDict(_small_config().to_dict())
    config.teacher.hf_path = ""
    with pytest.raises(ValueError, match="config.teacher.hf_path"):
        distill_lib.distill(config, str(tmp_path / "run"))


def test_sub_configs_follow_the_distill_config(tmp_path):
    config = _small_config("/data/x.jsonl")
    sft = distill_lib.sft_config(config, "/w/traces/sft.jsonl")
    assert sft.data.files == ("/w/traces/sft.jsonl",) and sft.data.source == "files"
    assert sft.train.export and sft.model.num_layers == 1 and sft.init.hf_path == ""
    assert sft.tokenizer.kind == "demo" and sft.optimizer.learning_rate == 1e-3
    teacher = distill_lib.teacher_config(config)
    assert teacher.model.family == "deepseek_v3" and teacher.init.hf_path.endswith("demo_base")
    assert teacher.data.num_prompts == 512 and teacher.sampling.num_samples == 8
    rows = distill_lib.eval_rows(config)
    assert len(rows) == 3 and {r["difficulty"] for r in rows} == {2, 3, 4}


def test_student_architecture_comes_from_its_checkpoint(tmp_path):
    from r1.models import hf

    config = _small_config()
    cfg = configlib.model_config(config).replace(num_layers=2, tie_word_embeddings=False)
    os.makedirs(tmp_path / "ckpt")
    with open(tmp_path / "ckpt" / "config.json", "w") as f:
        json.dump(hf.config_to_hf(cfg), f)
    changed = ml_collections.ConfigDict(config.to_dict())
    changed.student.hf_path = str(tmp_path / "ckpt")
    changed.model.remat_policy = "full"
    model = distill_lib.student_model(changed)
    assert model["num_layers"] == 2 and model["tie_word_embeddings"] is False
    assert model["remat_policy"] == "full"  # execution fields stay the config's
    changed.student.hf_path = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="config.student.hf_path"):
        distill_lib.student_model(changed)


@pytest.mark.slow
def test_small_real_run(tmp_path):
    """Real SFT and evaluation of a 1-layer student (about 20 s on a quiet 2-core machine): the
    stages connect and the report is complete."""
    src = _write_jsonl(
        tmp_path / "dump.jsonl",
        [
            {"prompt": f"{a}+{b}", "reasoning": f"{a}+{b}={a + b}", "answer": str(a + b)}
            for a in range(4)
            for b in range(4)
        ],
    )
    workdir = str(tmp_path / "run")
    report = distill_lib.distill(_small_config(src), workdir)
    assert report["traces"]["kept"] == 16
    for key in ("before", "after"):
        assert report[key]["overall"]["count"] == 3 and report[key]["params"] > 0
    assert os.path.exists(os.path.join(workdir, "sft", "export", "model.safetensors"))
    assert report["sft"]["loss"] > 0
    assert os.path.exists(os.path.join(workdir, "eval_after.json"))


# ----------------------------------------------------------------------------- tiny, end to end
@pytest.mark.slow
def test_tiny_student_improves(tmp_path):
    """configs/distill.py:tiny as shipped: the random student scores about 0 before SFT on the
    teacher's traces and clearly more after."""
    config = configlib.load_config("configs/distill.py:tiny")
    report = distill_lib.distill(config, str(tmp_path / "tiny"))
    before = report["before"]["overall"]["pass@1"]
    after = report["after"]["overall"]["pass@1"]
    assert report["traces"]["kept"] >= 200
    assert before <= 0.02
    assert after >= before + 0.15, (before, after)
    assert report["teacher_eval"]["overall"]["pass@1"] > after
