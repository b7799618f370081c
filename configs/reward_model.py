r"""Reward models for R1's last RL stage: Bradley-Terry on preference pairs.

tiny (CPU, under a minute: a 2-layer backbone learns the synthetic "polite summary" rule):
    python -m experiments.train_rm --config=configs/reward_model.py:tiny --workdir=runs/rm_tiny

qwen2_5_1_5b_helpfulness (one TPU v4-8 / v5e-8 host; local checkpoint and JSONL pairs; the
paper's helpfulness settings: batch 256, lr 6e-6, 1 epoch, 8,192 tokens, summary only):
    python -m experiments.train_rm --config=configs/reward_model.py:qwen2_5_1_5b_helpfulness \
        --config.init.hf_path=/ckpt/Qwen2.5-1.5B --config.tokenizer.path=/ckpt/Qwen2.5-1.5B \
        --config.data.train_files='("/data/helpful_train.jsonl",)' \
        --config.data.eval_files='("/data/helpful_eval.jsonl",)' --workdir=gs://bucket/rm_help

qwen2_5_1_5b_harmlessness (the same on safety pairs, the whole response judged):
    python -m experiments.train_rm --config=configs/reward_model.py:qwen2_5_1_5b_harmlessness \
        --config.init.hf_path=/ckpt/Qwen2.5-1.5B --config.tokenizer.path=/ckpt/Qwen2.5-1.5B \
        --config.data.train_files='("/data/safety_train.jsonl",)' --workdir=gs://bucket/rm_safe

Sections: model, mesh, seed (see configs/models.py); init (hf_path: backbone checkpoint in HF
layout, e.g. the policy; rm_path: a saved reward model to continue from), tokenizer (the
policy's: the GRPO step feeds the RM the policy's token ids), data (train_files / eval_files
JSONL, see r1/rm/data.py; with no train_files, synthetic pairs), rm (region "summary" or
"whole", missing_summary, use_margin), optimizer, train (steps, or epochs when steps is 0;
num_microbatches splits each batch for memory),
eval (held-out accuracy every `every` steps).
"""

from __future__ import annotations

import ml_collections

from r1 import configlib
from r1.rm import config as rm_config
from r1.train.config import OptimizerSection

VARIANTS = ("tiny", "qwen2_5_1_5b_helpfulness", "qwen2_5_1_5b_harmlessness")

# A 2-layer dense backbone over the demo tokenizer's ids (268 used, 384 embedded as the demo
# policy does), small enough to train in seconds on 2 CPU cores.
TINY_MODEL = dict(
    family="qwen2",
    vocab_size=384,
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    intermediate_size=128,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    attention_bias=True,
    max_position_embeddings=256,
)


def _base() -> ml_collections.ConfigDict:
    """Every section generated from its dataclass (r1/rm/config.py, r1/train/config.py), so
    each field is written once and settable from the command line; values here are the
    paper's helpfulness settings where they differ from the dataclass defaults."""
    c = ml_collections.ConfigDict()
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, expert=1, tensor=1))
    c.seed = 0
    c.init = ml_collections.ConfigDict(dict(hf_path="", rm_path=""))
    c.tokenizer = ml_collections.ConfigDict(dict(kind="hf", path=""))
    c.data = configlib.dataclass_dict(rm_config.DataSection, {"synthetic": {}}, "config.data")
    c.rm = configlib.dataclass_dict(rm_config.RMSection, {}, "config.rm")
    c.optimizer = configlib.dataclass_dict(
        OptimizerSection,
        dict(learning_rate=6e-6, warmup_steps=0, b1=0.9, b2=0.95, weight_decay=0.0, grad_clip=1.0),
        "config.optimizer",
    )
    c.train = configlib.dataclass_dict(rm_config.RMTrainSection, {}, "config.train")
    c.eval = configlib.dataclass_dict(rm_config.RMEvalSection, {}, "config.eval")
    return c


def tiny() -> ml_collections.ConfigDict:
    c = _base()
    c.model = configlib.model_dict(TINY_MODEL)
    c.tokenizer.kind = "demo"
    c.data.update(template="raw", max_length=128)
    c.optimizer.update(learning_rate=1e-3, warmup_steps=10)
    c.train.update(steps=60, batch_size=32, checkpoint_every=30, log_every=10)
    c.eval.update(every=20, batch_size=128)
    return c


def _qwen(region: str) -> ml_collections.ConfigDict:
    c = _base()
    c.model = configlib.load_config("configs/models.py:qwen2_5_1_5b").model
    c.model.remat_policy = "full"
    c.mesh.update(data=1, fsdp=-1)
    c.rm.region = region
    # 256 pairs = 512 rows of up to 8,192 tokens: 16 micro-batches of 16 pairs per update.
    c.train.num_microbatches = 16
    c.train.topology, c.train.slices = "v5e:2x4", 1  # experiments.aot / docs/pod_plan.md
    c.model.update(configlib.TPU_KERNELS)
    return c


def qwen2_5_1_5b_helpfulness() -> ml_collections.ConfigDict:
    """R1's helpfulness RM settings: batch 256, lr 6e-6, 1 epoch, max length 8,192; the final
    summary only (the text after `</think>`)."""
    return _qwen("summary")


def qwen2_5_1_5b_harmlessness() -> ml_collections.ConfigDict:
    """Harmlessness judged on the whole response (reasoning and summary), same settings."""
    return _qwen("whole")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(
            f"configs/reward_model.py: unknown variant {variant!r}; choose one of {list(VARIANTS)}"
        )
    return globals()[variant]()
