r"""Evaluation: k samples per question, pass@1 / pass@k / cons@k per task (and per difficulty).

tiny (the CPU demo's base checkpoint on the procedural held-out set, 2 cores, under a minute):
    python -m experiments.evaluate --config=configs/evaluate.py:tiny --workdir=runs/eval_tiny

tiny on a GRPO run's latest orbax checkpoint instead of the base checkpoint:
    python -m experiments.evaluate --config=configs/evaluate.py:tiny \
        --config.init.workdir=runs/r1_zero_tiny --workdir=runs/eval_r1_zero_tiny

math500 (a local Hugging Face checkpoint and local MATH-500 JSONL; one GPU or TPU host):
    python -m experiments.evaluate --config=configs/evaluate.py:math500 \
        --config.init.hf_path=/ckpt/DeepSeek-R1-Distill-Qwen-1.5B \
        --config.data.files=/data/math500/test.jsonl --workdir=runs/eval_math500

aime (AIME with the distillation table's cons@64; rows need `prompt` + `answer` or
`problem` + `solution` fields):
    python -m experiments.evaluate --config=configs/evaluate.py:aime \
        --config.init.hf_path=/ckpt/DeepSeek-R1-Distill-Qwen-1.5B \
        --config.data.files=/data/aime24.jsonl --workdir=runs/eval_aime24

Sections: model, mesh, seed (configs/models.py); init: the checkpoint (`hf_path`, a local HF
directory, or `workdir`, a GRPO run whose orbax checkpoint `step` (0: latest) is restored; its
model section is read from the run's config.json); tokenizer (`kind` "demo" or "hf"; an empty
`path` uses `init.hf_path`); data: `files` (comma-separated local JSONL / JSON / Parquet paths
or a glob, `layout` as in r1/data/sources.py) or, when empty, the procedural `task` with
`task_kwargs`, `per_difficulty` questions of each difficulty from `split` with `seed`; `limit`
keeps the first rows only (0: all); eval: `r1.evaluation.EvalConfig` (k = `num_samples`,
sampling, template, accuracy reward).
"""

from __future__ import annotations

import ml_collections

from r1 import configlib
from r1.evaluation.runner import EvalConfig

VARIANTS = ("tiny", "math500", "aime")


def _base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, expert=1, tensor=1))
    c.seed = 0
    c.init = ml_collections.ConfigDict(dict(hf_path="", workdir="", step=0))
    c.tokenizer = ml_collections.ConfigDict(dict(kind="hf", path=""))
    c.data = ml_collections.ConfigDict(
        dict(
            files="",
            layout="auto",
            task="add",
            task_kwargs=ml_collections.ConfigDict(),
            per_difficulty=4,
            split="test",
            seed=1,
            limit=0,
        )
    )
    c.eval = configlib.dataclass_dict(EvalConfig, {}, "eval")
    return c


def tiny() -> ml_collections.ConfigDict:
    """The R1-Zero demo's base model on 4 held-out sums per length (2..10 one-digit terms), 4
    samples each; data.seed=1 is the held-out set the trainer evaluates (config.seed + 1)."""
    c = _base()
    demo = configlib.load_module("configs/r1_zero.py")
    c.model = configlib.model_dict(demo.DEMO_MODEL)
    c.init.hf_path = "assets/demo_base"
    c.tokenizer.kind = "demo"
    c.data.task_kwargs = ml_collections.ConfigDict(
        dict(min_terms=2, max_terms=10, min_digits=1, max_digits=1)
    )
    c.data.per_difficulty = 4
    c.eval.update(
        num_samples=4,
        max_new_tokens=96,
        batch_size=36,
        bucket_multiple=16,
        template="r1_zero",
        reward="auto",
    )
    return c


def _hf_math(k: int) -> ml_collections.ConfigDict:
    c = _base()
    c.model = configlib.load_config("configs/models.py:r1_distill_qwen_1_5b").model
    c.data.layout = "auto"
    c.eval.update(
        num_samples=k,
        temperature=0.6,
        top_p=0.95,
        max_new_tokens=8192,
        batch_size=16,
        bucket_multiple=128,
        template="deepseek_r1",
        reward="math",
        pass_ks=(),
    )
    return c


def math500() -> ml_collections.ConfigDict:
    """MATH-500 (`problem`/`solution` rows, `level` as difficulty), 4 samples per problem."""
    return _hf_math(4)


def aime() -> ml_collections.ConfigDict:
    """AIME: 64 samples per problem (pass@1 averaged over 64 and cons@64, as R1 reports)."""
    c = _hf_math(64)
    c.eval.update(batch_size=2, pass_ks=(8,))
    return c


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(
            f"configs/evaluate.py: unknown variant {variant!r}; choose one of {list(VARIANTS)}"
        )
    return globals()[variant]()
