"""Rejection sampling from an experiment config (r1/rejection/experiment.py): the typed
sections and their errors, prompt files and chat templates, the judge section."""

from __future__ import annotations

import json

import ml_collections
import pytest

from r1 import configlib
from r1.data import templates
from r1.rejection import experiment


def test_judge_config_section_errors(tmp_path):
    with pytest.raises(ValueError, match="tasks"):
        experiment.JudgeSection(path="runs/j")
    with pytest.raises(ValueError, match="path"):
        experiment.JudgeSection(tasks=("add_words",))
    assert experiment.build_judge(experiment.JudgeSection()) is None
    with pytest.raises(FileNotFoundError, match="train_judge"):
        experiment.build_judge(experiment.JudgeSection(path=str(tmp_path / "no"), tasks=("a",)))
    with pytest.raises(ValueError, match="answer_words_fraction"):
        experiment.DataSection(answer_words_fraction=1.5, num_prompts=1)


def test_config_errors_name_the_field():
    config = ml_collections.ConfigDict(
        configlib.load_config("configs/rejection_sample.py:tiny").to_dict()
    )
    config.select.cap_order = "random"
    with pytest.raises(ValueError, match="config.select.*cap_order"):
        experiment.parse_sections(config)
    config.select.cap_order = "index"
    config.data.template = "nope"
    with pytest.raises(ValueError, match="config.data.*template"):
        experiment.parse_sections(config)
    config.data.template = "r1_zero"
    values = config.to_dict()
    values["filters"]["max_paragraph_chars"] = "long"
    with pytest.raises(TypeError, match="config.filters.max_paragraph_chars"):
        experiment.parse_sections(values)
    values["filters"]["max_paragraph_chars"] = 10
    values["select"]["min_rewards"] = (("format_strict",),)
    with pytest.raises(ValueError, match="config.select.min_rewards"):
        experiment.parse_sections(values)


def test_file_prompts_and_chat_template(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        json.dumps({"question": "What is 2+2?", "answer": "step\n#### 4"})
        + "\n"
        + json.dumps({"question": "What is 3+3?", "answer": "#### 6"})
        + "\n"
    )
    data = experiment.DataSection(source="files", files=str(path), template="qwen", num_prompts=1)
    rows = experiment.load_prompts(data, seed=0)
    assert [(r["prompt"], r["answer"]) for r in rows] == [("What is 2+2?", "4")]
    assert (
        len(
            {
                r["id"]
                for r in experiment.load_prompts(
                    experiment.DataSection(source="files", files=str(path)), 0
                )
            }
        )
        == 2
    )
    text = experiment.make_render(data)(rows[0])
    assert text == templates.render_chat("What is 2+2?", format="qwen")
    assert text.endswith("<think>\n")
    with pytest.raises(ValueError, match="files"):
        experiment.DataSection(source="files")
