r"""SFT: supervised fine-tuning on prompt/response traces (cold start, rejection-sampled data,
distillation), loss on response tokens only, packed sequences.

tiny (CPU, under a minute): the demo base (assets/demo_base) learns to always show its work,
fine-tuned on procedural addition traces (`<think>` with partial sums):
    python -m experiments.sft --config=configs/sft.py:tiny --workdir=runs/sft_tiny

qwen2_5_1_5b_traces (one TPU v4-8 / v5e-8 host or one GPU; local checkpoint and trace file with
one JSON object per line holding `prompt` and `response`, see docs/sft.md):
    python -m experiments.sft --config=configs/sft.py:qwen2_5_1_5b_traces \
        --config.init.hf_path=/ckpt/Qwen2.5-1.5B --config.tokenizer.path=/ckpt/Qwen2.5-1.5B \
        --config.data.files=/data/traces.jsonl --workdir=gs://bucket/sft_1_5b

Sections: model, mesh, seed (see configs/models.py); init (start checkpoint, HF layout),
tokenizer, data (source, template, seq_len, packing), sft (batch, gradient accumulation; the MTP
loss weight is model.mtp_loss_weight),
optimizer, train (steps, checkpoints, export of the final model to workdir/export), eval (greedy
held-out accuracy, procedural data only). See r1/sft/trainer.py for every field.
"""

from __future__ import annotations

import ml_collections

from r1 import configlib

VARIANTS = ("tiny", "qwen2_5_1_5b_traces")


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
            files=(),
            template="r1_zero",
            response_format="r1_zero",
            add_bos=True,
            seq_len=4096,
            pack=True,
            shuffle=True,
            num_epochs=2,
            max_consecutive_skips=1000,
            allow_changed=False,
        )
    )
    c.sft = ml_collections.ConfigDict(dict(batch_size=32, num_microbatches=1))
    # R1 (v2 report): cosine 5e-5 -> 5e-6, 2-3 epochs, batch 128, context 32,768.
    c.optimizer = ml_collections.ConfigDict(
        dict(
            learning_rate=5e-5,
            warmup_steps=50,
            b1=0.9,
            b2=0.95,
            weight_decay=0.0,
            grad_clip=1.0,
            schedule="cosine",
            end_learning_rate=5e-6,
        )
    )
    c.train = ml_collections.ConfigDict(
        dict(steps=1000, checkpoint_every=100, keep_checkpoints=3, export=True, export_dtype="")
    )
    c.eval = ml_collections.ConfigDict(dict(every=0, per_difficulty=8, max_new_tokens=128))
    return c


def tiny() -> ml_collections.ConfigDict:
    c = _base()
    zero = configlib.load_config("configs/r1_zero.py:tiny")
    c.model = zero.model
    c.init.hf_path = "assets/demo_base"
    c.tokenizer.kind = "demo"
    c.data.update(
        source="procedural",
        task="add",
        task_kwargs=ml_collections.ConfigDict(dict(zero.data.task_kwargs)),
        seq_len=128,
        num_epochs=0,
    )
    c.sft.update(batch_size=8, num_microbatches=2)
    c.optimizer.update(
        learning_rate=3e-4, warmup_steps=5, schedule="cosine", end_learning_rate=3e-5
    )
    c.train.update(steps=40, checkpoint_every=20)
    c.eval.update(every=40, per_difficulty=4, max_new_tokens=96)
    return c


def qwen2_5_1_5b_traces() -> ml_collections.ConfigDict:
    c = _base()
    c.model = configlib.load_config("configs/models.py:qwen2_5_1_5b").model
    c.model.remat_policy = "full"
    c.mesh.update(data=1, fsdp=-1)
    c.data.update(source="files", template="qwen", response_format="think", seq_len=4096)
    c.sft.update(batch_size=32, num_microbatches=4)
    c.train.update(steps=2000, checkpoint_every=200)
    c.train.topology, c.train.slices = "v5e:2x4", 1  # experiments.aot / docs/pod_plan.md
    c.model.update(configlib.TPU_KERNELS)
    return c


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(
            f"configs/sft.py: unknown variant {variant!r}; choose one of {list(VARIANTS)}"
        )
    return globals()[variant]()
