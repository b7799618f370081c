r"""Rejection sampling (DeepSeek-R1 stage 3): k samples per prompt from a checkpoint, keep the
correct, readable, distinct ones, write an SFT dataset (traces.jsonl) with provenance.

tiny (CPU, 2 cores, well under a minute; the demo base checkpoint on the demo's procedural sums):
    python -m experiments.rejection_sample --config=configs/rejection_sample.py:tiny \
        --workdir=runs/rejection_tiny

tiny_judge (CPU; the tiny variant where a quarter of the sums have their answer written in words,
graded by a tiny generative judge trained first, in about a minute, on synthetic verdicts):
    python -m experiments.train_judge --out=runs/tiny_judge
    python -m experiments.rejection_sample --config=configs/rejection_sample.py:tiny_judge \
        --workdir=runs/rejection_tiny_judge

qwen2_5_7b_math (TPU v5p-32 or a v4/v5e host; a local HF checkpoint of the stage-2 policy and
local JSONL / Parquet prompts; run the same command on every host with --distributed):
    python -m experiments.rejection_sample --config=configs/rejection_sample.py:qwen2_5_7b_math \
        --config.init.hf_path=/ckpt/r1_stage2_hf --config.tokenizer.path=/ckpt/r1_stage2_hf \
        --config.data.files=/data/math_train.jsonl --workdir=/runs/rejection_7b

Re-running a command on its workdir resumes where it stopped, without duplicating rows.

Sections: model, mesh, seed (see configs/models.py); init (checkpoint, HF layout), tokenizer,
data (prompt source, template), sampling (k, batch, sampler settings), rewards ((name, weight,
kwargs) text rewards of r1/rewards), select (correctness, cap), filters (readability thresholds),
judge (a generative judge for the rows of `judge.tasks`, which no rule checks; path "" = none);
see docs/rejection_sampling.md and docs/judge.md.
"""

from __future__ import annotations

import ml_collections

from r1 import configlib

VARIANTS = ("tiny", "tiny_judge", "qwen2_5_7b_math")


def _base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, expert=1, tensor=1))
    c.seed = 0
    c.init = ml_collections.ConfigDict(dict(hf_path=""))
    c.tokenizer = ml_collections.ConfigDict(dict(kind="hf", path=""))
    c.data = ml_collections.ConfigDict(
        dict(
            source="files",
            task="add",
            task_kwargs=ml_collections.ConfigDict(),
            split="train",
            files="",
            layout="auto",
            num_prompts=0,
            template="r1_zero",
            add_bos=True,
            answer_words_fraction=0.0,
        )
    )
    c.sampling = ml_collections.ConfigDict(
        dict(
            num_samples=16,
            prompts_per_batch=16,
            max_new_tokens=4096,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            min_p=0.0,
            # Rows decoded at once per sampler call (continuous batching; 0: all of them
            # until the longest ends).
            slots=0,
            bucket_multiple=64,
        )
    )
    c.rewards = (("math", 1.0, {}), ("format_strict", 1.0, {}))
    c.select = ml_collections.ConfigDict(
        dict(
            correct_reward="math",
            min_correct=1.0,
            min_rewards=(("format_strict", 1.0),),
            drop_truncated=True,
            max_per_prompt=4,
            cap_order="index",
        )
    )
    c.filters = ml_collections.ConfigDict(
        dict(
            language="en",
            max_foreign_fraction=0.1,
            max_paragraph_chars=2000,
            max_paragraph_words=0,
            code_fences=True,
            indented_code_min_lines=4,
            min_cot_chars=1,
        )
    )
    c.judge = ml_collections.ConfigDict(
        dict(path="", tasks=(), batch_size=8, template="", verdict_format="", max_new_tokens=0)
    )
    return c


def tiny() -> ml_collections.ConfigDict:
    """The demo's base checkpoint on the procedural sums of configs/r1_zero.py:tiny (the same
    model section, tokenizer and task), 64 prompts x 8 samples of up to 96 tokens."""
    demo = configlib.load_config("configs/r1_zero.py:tiny")
    c = _base()
    c.model = ml_collections.ConfigDict(demo.model.to_dict())
    c.init.hf_path = demo.init.hf_path
    c.tokenizer.kind = demo.tokenizer.kind
    c.data.update(
        source="procedural",
        task=demo.data.task,
        task_kwargs=ml_collections.ConfigDict(demo.data.task_kwargs.to_dict()),
        num_prompts=64,
    )
    c.sampling.update(
        num_samples=8,
        prompts_per_batch=8,
        max_new_tokens=int(demo.rl.max_new_tokens),
        bucket_multiple=16,
    )
    # Sums are graded by exact integer match; the demo completion is R1-Zero's strict format.
    c.rewards = (("arithmetic", 1.0, {}), ("format_strict", 1.0, {}))
    c.select.update(correct_reward="arithmetic", max_per_prompt=2)
    # Only samples that show their work (a reasoning dataset); CoTs are digits and symbols, so
    # the language rule never fires here (no words), and paragraphs are short.
    c.filters.update(min_cot_chars=1, max_paragraph_chars=400)
    return c


def tiny_judge() -> ml_collections.ConfigDict:
    """`tiny` with a quarter of the sums (answers 0..99) answered in words ("forty-six", task
    "add_words"): exact match cannot grade them, the tiny judge of experiments/train_judge.py
    does (its verdict becomes the `arithmetic` score of those rows, recorded in provenance)."""
    c = tiny()
    c.data.answer_words_fraction = 0.25
    c.judge.update(path="runs/tiny_judge", tasks=("add_words",), batch_size=16)
    return c


def qwen2_5_7b_math() -> ml_collections.ConfigDict:
    """A stage-2 checkpoint in Qwen2.5-7B shape, MATH-style prompts (layout auto-detected),
    16 samples of up to 4,096 tokens per prompt, at most 4 kept per prompt."""
    c = _base()
    c.model = configlib.load_config("configs/models.py:qwen2_5_7b").model
    c.mesh.update(data=1, fsdp=-1, tensor=4)
    c.data.update(source="files", files="/data/math_train.jsonl", template="r1_zero")
    return c


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(
            f"configs/rejection_sample.py: unknown variant {variant!r}; choose one of "
            f"{list(VARIANTS)}"
        )
    return globals()[variant]()
