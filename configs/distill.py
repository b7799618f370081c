r"""Distillation: SFT of a (smaller, dense) student on a teacher's reasoning traces, then the
student's held-out accuracy before and after (DeepSeek-R1's distilled Qwen / Llama models).

tiny (CPU, 2 cores, about 2 minutes of CPU time): the demo checkpoint (assets/demo_base, MLA +
MoE) is the teacher; rejection sampling keeps its correct worked sums; a randomly initialised
2-layer dense Qwen2-style student (same demo tokenizer) is fine-tuned on them:
    python -m experiments.distill --config=configs/distill.py:tiny --workdir=runs/distill_tiny

tiny with a GRPO run's exported policy as the teacher (a run of configs/r1_zero.py:tiny with
--config.train.export=True):
    python -m experiments.distill --config=configs/distill.py:tiny \
        --config.teacher.hf_path=runs/r1_zero_tiny/export --workdir=runs/distill_tiny_grpo

qwen2_5_math_1_5b (the paper's Qwen-1.5B student: lr 1e-4, cosine to 1e-5, 2 epochs, batch 64,
context 32,768; one TPU v4-8 / v5e-8 host or a v5p-8; local student checkpoint and local trace
files with `prompt` / `reasoning` / `answer` or `prompt` / `response` fields; MATH-500 JSONL for
the before/after evaluation):
    python -m experiments.distill --config=configs/distill.py:qwen2_5_math_1_5b \
        --config.student.hf_path=/ckpt/Qwen2.5-Math-1.5B \
        --config.traces.files=/data/r1_traces/*.jsonl \
        --config.eval_data.files=/data/math500/test.jsonl --workdir=/runs/distill_qwen_1_5b

llama3_1_8b (the paper's Llama-8B student: lr 5e-5; TPU v5p-32 or v4-32: run the same command
on every host with --distributed, the workdir on a shared POSIX path):
    python -m experiments.distill --config=configs/distill.py:llama3_1_8b \
        --config.student.hf_path=/ckpt/Llama-3.1-8B \
        --config.traces.files=/data/r1_traces/*.parquet \
        --config.eval_data.files=/data/math500/test.jsonl --workdir=/runs/distill_llama_8b \
        --distributed

The paper's other students (REFERENCE.md, Distillation; same SFT settings, their own learning
rates): qwen2_5_math_7b (lr 8e-5, v5p-16), qwen2_5_14b (7e-5, v5p-32), qwen2_5_32b (6e-5,
v5p-64), llama3_3_70b (Llama-3.3-70B-Instruct, 2e-5, v5p-128); run as llama3_1_8b with their
checkpoints. The paper gives learning rates, epochs (2-3), batch 64 and context 32,768 and is
silent on warm-up, weight decay and the optimizer's betas: r1's defaults (100 warm-up steps,
AdamW as configs/sft.py) fill them.

Trace dumps with other field names are mapped, e.g. `--config.traces.prompt_field=input
--config.traces.reasoning_field=reasoning_content --config.traces.answer_field=content`; a single
response field holding `<think>...</think>` then the answer is split and re-rendered in the
student's format (docs/distillation.md). Set `train.steps` to about epochs x trace tokens /
(batch 64 x seq_len) for your dump (the cosine schedule decays over `train.steps`; the run also
stops when `data.num_epochs` passes end).

Re-running a command on its workdir resumes: finished stages (traces, evaluations, SFT) are
skipped, an unfinished rejection-sampling or SFT stage continues from its last save.

Sections: model (the student's architecture), mesh, seed; student (`hf_path` a local HF
checkpoint or "" for random init, tokenizer); teacher (`hf_path`, model, tokenizer, evaluate: also
score the teacher); prompts, sampling, rewards, select, filters (rejection sampling of the teacher,
as configs/rejection_sample.py); traces (local trace files and field mapping; when set, no
teacher is sampled); data, sft, optimizer, train (the student's SFT, as configs/sft.py); eval_data
(held-out rows: local files or a procedural task) and eval (r1.evaluation.EvalConfig).
"""

from __future__ import annotations

import ml_collections

from r1 import configlib
from r1.evaluation.runner import EvalConfig

VARIANTS = (
    "tiny",
    "qwen2_5_math_1_5b",
    "qwen2_5_math_7b",
    "qwen2_5_14b",
    "qwen2_5_32b",
    "llama3_1_8b",
    "llama3_3_70b",
)

# The tiny student: dense Qwen2-style, 2 layers of width 128 (542k parameters against the
# demo teacher's 1.08M), the demo tokenizer's vocabulary.
TINY_STUDENT = dict(
    family="qwen2",
    vocab_size=384,
    hidden_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=32,
    intermediate_size=512,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    max_position_embeddings=512,
    attention_bias=True,
    tie_word_embeddings=True,
)


# The demo's procedural sums as the demo base was pretrained on them: 2..10 one-digit terms
# (pinned here, so that the tiny distillation does not follow later changes to the RL demo).
TINY_TASK = dict(min_terms=2, max_terms=10, min_digits=1, max_digits=1)


def _base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, expert=1, tensor=1))
    c.seed = 0
    c.student = ml_collections.ConfigDict(
        dict(hf_path="", tokenizer=ml_collections.ConfigDict(dict(kind="hf", path="")))
    )
    zero = configlib.load_config("configs/r1_zero.py:tiny")
    c.teacher = ml_collections.ConfigDict(
        dict(
            hf_path="",
            model=ml_collections.ConfigDict(zero.model.to_dict()),
            tokenizer=ml_collections.ConfigDict(dict(kind="hf", path="")),
            evaluate=False,
        )
    )
    rejection = configlib.load_config("configs/rejection_sample.py:tiny")
    c.prompts = ml_collections.ConfigDict(rejection.data.to_dict())
    c.sampling = ml_collections.ConfigDict(rejection.sampling.to_dict())
    c.rewards = rejection.rewards
    c.select = ml_collections.ConfigDict(rejection.select.to_dict())
    c.filters = ml_collections.ConfigDict(rejection.filters.to_dict())
    c.traces = ml_collections.ConfigDict(
        dict(
            files="",
            prompt_field="prompt",
            reasoning_field="reasoning",
            answer_field="answer",
            response_field="response",
            correct_field="",
            require_reasoning=True,
            limit=0,
        )
    )
    c.data = ml_collections.ConfigDict(
        dict(
            template="r1_zero",
            response_format="r1_zero",
            add_bos=True,
            seq_len=32768,
            pack=True,
            shuffle=True,
            num_epochs=2,
            max_consecutive_skips=1000,
        )
    )
    c.sft = ml_collections.ConfigDict(dict(batch_size=64, num_microbatches=1))
    c.optimizer = ml_collections.ConfigDict(
        dict(
            learning_rate=1e-4,
            warmup_steps=50,
            b1=0.9,
            b2=0.95,
            weight_decay=0.0,
            grad_clip=1.0,
            schedule="cosine",
            end_learning_rate=1e-5,
        )
    )
    c.train = ml_collections.ConfigDict(
        dict(steps=1000, checkpoint_every=100, keep_checkpoints=2, export_dtype="")
    )
    c.eval_data = ml_collections.ConfigDict(
        dict(
            files="",
            layout="auto",
            task="add",
            task_kwargs=ml_collections.ConfigDict(),
            per_difficulty=8,
            split="test",
            seed=1,
            limit=0,
        )
    )
    c.eval = configlib.dataclass_dict(EvalConfig, {}, "eval")
    return c


def tiny() -> ml_collections.ConfigDict:
    """The demo teacher on 512 training sums (8 samples each, at most 2 distinct correct worked
    solutions kept per sum), a random 2-layer dense student, 300 SFT steps of 16 x 128 tokens,
    evaluation on 8 held-out sums per length (2..10 terms) x 4 samples at temperature 0.6."""
    c = _base()
    demo = configlib.load_config("configs/r1_zero.py:tiny")
    c.model = configlib.model_dict(TINY_STUDENT)
    c.student.tokenizer.kind = "demo"
    c.teacher.update(hf_path=demo.init.hf_path, evaluate=True)
    c.teacher.tokenizer.kind = "demo"
    c.prompts.update(task="add", task_kwargs=ml_collections.ConfigDict(TINY_TASK), num_prompts=512)
    c.sampling.update(prompts_per_batch=64)
    c.data.update(seq_len=128, num_epochs=0)
    c.sft.update(batch_size=16, num_microbatches=1)
    c.optimizer.update(learning_rate=1e-3, warmup_steps=20, end_learning_rate=1e-4)
    c.train.update(steps=300, checkpoint_every=100)
    c.eval_data.update(
        task="add", task_kwargs=ml_collections.ConfigDict(TINY_TASK), per_difficulty=8
    )
    c.eval.update(
        num_samples=4,
        temperature=0.6,
        top_p=0.95,
        max_new_tokens=int(demo.rl.max_new_tokens),
        batch_size=72,
        bucket_multiple=16,
        template="r1_zero",
    )
    return c


def _hf_student(preset: str, learning_rate: float) -> ml_collections.ConfigDict:
    """A local HF student on local trace files, the paper's SFT setup (REFERENCE.md,
    Distillation): cosine to lr / 10, 2 epochs (the paper: 2-3), batch 64, context 32,768; the
    DeepSeek-R1 chat format with an opened `<think>`; MATH-style evaluation at temperature 0.6,
    top-p 0.95, 4 samples, 32,768 new tokens."""
    c = _base()
    c.model = configlib.load_config(f"configs/models.py:{preset}").model
    c.model.remat_policy = "full"
    c.data.update(template="deepseek_r1", response_format="think", seq_len=32768, num_epochs=2)
    c.sft.update(batch_size=64, num_microbatches=8)
    c.optimizer.update(
        learning_rate=learning_rate, warmup_steps=100, end_learning_rate=learning_rate / 10
    )
    c.train.update(steps=4000, checkpoint_every=250, export_dtype="bfloat16")
    c.traces.files = "/data/r1_traces/*.jsonl"
    c.eval_data.update(files="/data/math500/test.jsonl", layout="auto")
    c.eval.update(
        num_samples=4,
        temperature=0.6,
        top_p=0.95,
        max_new_tokens=32768,
        batch_size=16,
        bucket_multiple=128,
        template="deepseek_r1",
        reward="math",
    )
    return c


def qwen2_5_math_1_5b() -> ml_collections.ConfigDict:
    """Qwen2.5-Math-1.5B -> DeepSeek-R1-Distill-Qwen-1.5B's shape (lr 1e-4)."""
    c = _hf_student("r1_distill_qwen_1_5b", 1e-4)
    c.mesh.update(data=1, fsdp=-1)
    c.train.topology, c.train.slices = "v5p:2x2x2", 1  # experiments.aot / docs/pod_plan.md
    c.model.update(configlib.TPU_KERNELS)
    return c


def _on_pod(
    c: ml_collections.ConfigDict, tensor: int, microbatches: int, topology: str
) -> ml_collections.ConfigDict:
    """A student's pod: fsdp over the rest of `topology`'s chips x `tensor`-way tensor
    parallel, `microbatches` gradient-accumulation slices, the TPU kernels
    (`configlib.TPU_KERNELS`); `topology` is what experiments.aot / docs/pod_plan.md compile."""
    c.mesh.update(data=1, fsdp=-1, tensor=tensor)
    c.sft.update(num_microbatches=microbatches)
    c.train.topology, c.train.slices = topology, 1
    c.model.update(configlib.TPU_KERNELS)
    return c


def llama3_1_8b() -> ml_collections.ConfigDict:
    """Llama-3.1-8B -> DeepSeek-R1-Distill-Llama-8B (lr 5e-5), fsdp x 4-way tensor parallel."""
    return _on_pod(_hf_student("llama3_1_8b", 5e-5), 4, 16, "v5p:4x4x1")


def qwen2_5_math_7b() -> ml_collections.ConfigDict:
    """Qwen2.5-Math-7B -> DeepSeek-R1-Distill-Qwen-7B (lr 8e-5), fsdp x 4-way tensor parallel."""
    return _on_pod(_hf_student("r1_distill_qwen_7b", 8e-5), 4, 16, "v5p:4x4x1")


def qwen2_5_14b() -> ml_collections.ConfigDict:
    """Qwen2.5-14B -> DeepSeek-R1-Distill-Qwen-14B (lr 7e-5), fsdp x 8-way tensor parallel
    (40 query / 8 KV heads)."""
    return _on_pod(_hf_student("qwen2_5_14b", 7e-5), 8, 16, "v5p:4x4x2")


def qwen2_5_32b() -> ml_collections.ConfigDict:
    """Qwen2.5-32B -> DeepSeek-R1-Distill-Qwen-32B (lr 6e-5), fsdp x 8-way tensor parallel."""
    return _on_pod(_hf_student("qwen2_5_32b", 6e-5), 8, 8, "v5p:4x4x4")


def llama3_3_70b() -> ml_collections.ConfigDict:
    """Llama-3.3-70B-Instruct -> DeepSeek-R1-Distill-Llama-70B (lr 2e-5), fsdp x 8-way tensor
    parallel (64 query / 8 KV heads). The paper starts from the Instruct model, whose chat
    template differs from R1's; the traces are rendered in R1's format as for the others (the
    paper does not say which it used)."""
    return _on_pod(_hf_student("llama3_3_70b", 2e-5), 8, 4, "v5p:4x4x8")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(
            f"configs/distill.py: unknown variant {variant!r}; choose one of {list(VARIANTS)}"
        )
    return globals()[variant]()
