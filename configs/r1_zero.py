r"""R1-Zero: GRPO from a base model with rule rewards only (accuracy + format), minimal template.

tiny (the embedded CPU demo, 2 cores, about 4 minutes):
    python -m experiments.train --config=configs/r1_zero.py:tiny --workdir=runs/r1_zero_tiny

qwen2_5_1_5b_gsm8k (one TPU v4-8 / v5e-8 host; on one GPU add --config.mesh.tensor=1 and fewer
rows, e.g. --config.rl.prompts_per_step=32 --config.rl.num_minibatches=1; local checkpoint and
GSM8K files):
    python -m experiments.train --config=configs/r1_zero.py:qwen2_5_1_5b_gsm8k \
        --config.init.hf_path=/ckpt/Qwen2.5-1.5B --config.tokenizer.path=/ckpt/Qwen2.5-1.5B \
        --config.data.files=/data/gsm8k/train.jsonl --workdir=gs://bucket/r1_zero_1_5b

qwen2_5_7b_math (TPU v5p-32: run the same command on every host; MATH-layout files):
    python -m experiments.train --config=configs/r1_zero.py:qwen2_5_7b_math \
        --config.init.hf_path=/ckpt/Qwen2.5-Math-7B --config.tokenizer.path=/ckpt/Qwen2.5-Math-7B \
        --config.data.files='/data/math/train-*.parquet' --workdir=gs://bucket/r1_zero_7b

deepseek_v3 (the paper's hyperparameters; TPU v5p-2048, i.e. 1024 v5p chips, topology
v5p:8x8x16; the same mesh code fits any v5p slice of >= 512 chips, fsdp takes the rest; math
and code prompts mixed by weight, each row scored by its own domain's rewards):
    python -m experiments.train --config=configs/r1_zero.py:deepseek_v3 \
        --config.init.hf_path=/ckpt/DeepSeek-V3-Base \
        --config.tokenizer.path=/ckpt/DeepSeek-V3-Base \
        --config.data.files='/data/math/train-*.parquet,/data/code/apps.jsonl' \
        --config.data.layout=math,stdio --config.data.mixture=0.6,0.4 \
        --workdir=gs://bucket/r1_zero_v3

Code problems with any file-driven variant (rows of the humaneval / mbpp / stdio layouts are
domain "code", scored by the sandboxed `code` reward plus format; metrics carry `reward/code`):
    python -m experiments.train --config=configs/r1_zero.py:qwen2_5_1_5b_gsm8k \
        --config.init.hf_path=/ckpt/Qwen2.5-1.5B --config.tokenizer.path=/ckpt/Qwen2.5-1.5B \
        --config.data.files=/data/mbpp/train.jsonl --config.data.layout=mbpp --workdir=W

Non-tiny variants name their target pod in `train.topology` / `train.slices`; compile their
real step for it on any CPU host (see docs/pod_plan.md):
    python -m experiments.aot --config=configs/r1_zero.py:deepseek_v3

Sections: model, mesh, seed (see configs/models.py); init (base checkpoint, HF layout),
tokenizer, data (prompt source and buckets), rl (GRPO), rewards ((name, weight, kwargs) triples,
or {domain: triples}; see r1/rewards), optimizer, train (steps, checkpoints, samples), eval
(held-out evaluation), language (of the reflection-word metrics). Every section is typed in
r1/rl/config.py. Prompts: `data.files` (comma-separated local JSONL / JSON / Parquet paths or
globs, or `tfds:name/config:split`; `data.layout` gsm8k / math / r1 / humaneval / mbpp / stdio
/ auto, one or one per file; `data.domains`, `data.mixture`) replace the procedural
`data.task`; the non-tiny variants read files only (`data.task` is empty). See docs/data.md.
"""

from __future__ import annotations

import ml_collections

from r1 import configlib
from r1.rl.config import eval_defaults, rl_defaults

VARIANTS = ("tiny", "qwen2_5_1_5b_gsm8k", "qwen2_5_7b_math", "deepseek_v3")

# The demo's policy: DeepSeek-V3 in miniature (MLA, 1 dense + 2 MoE layers, 8 routed experts in
# 2 groups, top-2, one shared expert), small enough to pretrain and RL on 2 CPU cores.
DEMO_MODEL = dict(
    family="deepseek_v3",
    vocab_size=384,
    hidden_size=128,
    num_layers=3,
    num_heads=4,
    num_kv_heads=4,
    head_dim=0,
    intermediate_size=384,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    max_position_embeddings=512,
    attention_type="mla",
    q_lora_rank=None,
    kv_lora_rank=32,
    qk_nope_head_dim=32,
    qk_rope_head_dim=16,
    v_head_dim=32,
    n_routed_experts=8,
    n_shared_experts=1,
    moe_intermediate_size=96,
    num_experts_per_tok=2,
    n_group=2,
    topk_group=1,
    routed_scaling_factor=1.0,
    first_k_dense_replace=1,
    aux_loss_alpha=0.0001,
    bias_update_rate=0.001,
    num_mtp_layers=0,
)


def _base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, expert=1, tensor=1))
    c.seed = 0
    c.init = ml_collections.ConfigDict(dict(hf_path=""))
    c.tokenizer = ml_collections.ConfigDict(dict(kind="hf", path=""))
    c.data = ml_collections.ConfigDict(
        dict(
            task="add",
            task_kwargs=ml_collections.ConfigDict(),
            # Prompt files (comma-separated paths / globs / tfds:name/config:split) replace the
            # procedural task when set; layout "auto" or one of r1.data.sources.LAYOUTS, one or
            # one per file; domains: the files' row domain ("" = by layout); mixture: one
            # sampling weight per file ("" = rows concatenated).
            files="",
            layout="auto",
            domains="",
            mixture="",
            # The prompt: "r1_zero" (R1-Zero's template), "chat" (the checkpoint's own chat
            # template, for instruct / distilled models) or "plain"; system_prompt and the
            # answer-format instruction apply to chat / plain ("auto": boxed for math rows).
            template="r1_zero",
            system_prompt="",
            instruction="auto",
            num_epochs=0,
            tfds_data_dir="",
            buckets=(64, 128, 256),
            # R1 stage 4: this share of prompts comes from general_files (JSONL `prompt`
            # rows), scored by a model reward with rows="general" instead of the rule rewards.
            general_files="",
            general_fraction=0.0,
            # Resume even when the files changed since the checkpoint (default: stop).
            allow_changed=False,
        )
    )
    # Every GRPO setting (r1.rl.config.RLSection: the step dataclasses' defaults), R1-Zero's set.
    c.rl = rl_defaults(
        prompts_per_step=32,
        group_size=16,
        max_new_tokens=1024,
        beta=0.001,
        ref_update_every=400,
        accuracy_reward="arithmetic_tokens",
    )
    c.rewards = (("arithmetic_tokens", 1.0, {}), ("format_strict_tokens", 1.0, {}))
    # Rewards computed by frozen models inside the step: (kind, weight, kwargs) with kind
    # "reward_model" (kwargs: path, region "summary" | "whole") or "judge" (see r1/rl/trainer.py).
    c.model_rewards = ()
    c.optimizer = ml_collections.ConfigDict(
        dict(learning_rate=3e-6, warmup_steps=0, b1=0.9, b2=0.95, weight_decay=0.0, grad_clip=1.0)
    )
    c.train = ml_collections.ConfigDict(
        dict(
            steps=1000,
            checkpoint_every=50,
            keep_checkpoints=3,
            samples_every=10,
            samples_per_log=8,
            # Write the final policy in Hugging Face layout (+ tokenizer) to workdir/export.
            export=False,
            export_dtype="",
        )
    )
    # Held-out evaluation: the procedural task's, or eval.files (r1.rl.config.EvalSection).
    c.eval = eval_defaults(every=50, per_difficulty=16)
    # The language of the behaviour metrics' reflection words (r1.metrics.behaviour).
    c.language = "en"
    return c


def tiny() -> ml_collections.ConfigDict:
    c = _base()
    c.model = configlib.model_dict(DEMO_MODEL)
    c.init.hf_path = "assets/demo_base"
    c.tokenizer.kind = "demo"
    c.data.task_kwargs = ml_collections.ConfigDict(
        dict(min_terms=2, max_terms=12, min_digits=1, max_digits=1)
    )
    c.data.buckets = (32, 48)
    c.rl.update(
        prompts_per_step=16,
        group_size=8,
        max_new_tokens=112,
        beta=0.0,
        ref_update_every=0,
        eps_low=0.2,
        eps_high=0.28,
    )
    c.rewards = (("arithmetic_tokens", 1.0, {}), ("format_strict_tokens", 0.1, {}))
    c.optimizer.update(learning_rate=5e-5, warmup_steps=0)
    c.train.update(steps=60, checkpoint_every=10, samples_every=10)
    c.eval.update(every=10, per_difficulty=16)
    return c


def _hf(preset: str) -> ml_collections.ConfigDict:
    c = _base()
    c.model = configlib.load_config(f"configs/models.py:{preset}").model
    return c


# Per-domain rule rewards of the file-driven variants: math rows (gsm8k / math layouts) are
# scored by math-verify, code rows (humaneval / mbpp / stdio layouts) by the sandbox, each plus
# the strict format reward; a row runs only its own domain's rewards.
REASONING_REWARDS = {
    "math": (("math", 1.0, {}), ("format_strict", 1.0, {})),
    "code": (("code", 1.0, {}), ("format_strict", 1.0, {})),
}


def _reasoning_files(c: ml_collections.ConfigDict, layout: str) -> None:
    """Prompts from files (`--config.data.files=...`, required: no procedural fallback) in
    `layout` by default, scored per domain (`REASONING_REWARDS`)."""
    c.data.update(task="", layout=layout, buckets=(256, 512))
    # A mapping replaces the base's tuple (ConfigDict keeps a field's type): override one
    # domain's terms as --config.rewards.code="(('code', 1.0, {}), ...)".
    del c.rewards
    c.rewards = REASONING_REWARDS
    c.rl.accuracy_reward = "math,code"


def _per_update_schedule(c: ml_collections.ConfigDict, updates_per_step: int) -> None:
    """Rescale the step-counted settings of a variant whose step makes `updates_per_step`
    optimizer updates (rl.num_minibatches x rl.num_iterations), so that counted in updates
    they stay the base's: 1,000 updates, the reference refreshed every 400, a checkpoint and
    an evaluation every 50, samples logged every 10."""
    per = lambda updates: max(1, round(updates / updates_per_step))  # noqa: E731
    c.train.update(steps=per(1000), checkpoint_every=per(50), samples_every=per(10))
    c.rl.ref_update_every = per(400)
    c.eval.every = per(50)


def qwen2_5_1_5b_gsm8k() -> ml_collections.ConfigDict:
    """GSM8K (local JSONL / Parquet in the GSM8K layout) with the `math` reward.

    A rollout of 192 prompts x 8 = 1,536 rows feeds six updates of 32 prompts each (the paper
    splits a rollout into 16 mini-batches). Heads, mlp and vocabulary are split over two chips
    (tensor=2, the model's 2 KV heads one per chip), so a decode step reads half the bf16 model
    per chip, and the KV cache of 1,536 rows (7.9 GiB per v5e chip; 2,048 rows do not fit its
    16 GiB) spreads those reads over 6x the rows of one update. Sixteen decode segments: each
    step attends over a window at most 64 slots past its context."""
    c = _hf("qwen2_5_1_5b")
    _reasoning_files(c, "gsm8k")
    c.mesh.update(data=1, fsdp=-1, tensor=2)
    c.rl.update(
        prompts_per_step=192,
        group_size=8,
        num_minibatches=6,
        decode_segments=16,
        max_new_tokens=1024,
        beta=0.04,
        num_microbatches=0,
        length_buckets=4,
        gather_weights=True,  # bf16 weights / tensor: 1.5 GB per chip, no gather per decode step
    )
    c.optimizer.learning_rate = 1e-6
    _per_update_schedule(c, updates_per_step=6)
    c.train.topology, c.train.slices = "v5e:2x4", 1
    c.model.update(configlib.TPU_KERNELS)
    return c


def qwen2_5_7b_math() -> ml_collections.ConfigDict:
    """MATH-layout files (`problem`, `solution` with a boxed answer) with the `math` reward.

    As in the paper's run (8,192 outputs per rollout in 16 mini-batches of 512), a rollout
    decodes more rows than one update takes: 192 prompts x 16 = 3,072 rows per decode step,
    six updates of 32 prompts (512 rows) each. The weights a decode step reads are then shared
    by 6x the rows (the KV cache of 3,072 rows is 47 GiB per chip of the v5p's 95). Sixteen
    decode segments: each step attends over a window at most 256 slots past its context."""
    c = _hf("qwen2_5_7b")
    _reasoning_files(c, "math")
    c.mesh.update(data=1, fsdp=-1, tensor=4)
    c.rl.update(
        prompts_per_step=192,
        group_size=16,
        num_minibatches=6,
        max_new_tokens=4096,
        decode_segments=16,
        beta=0.001,
        num_microbatches=0,
        length_buckets=4,
        gather_weights=True,  # bf16 weights / tensor: 3.8 GB per chip, no gather per decode step
    )
    c.optimizer.learning_rate = 1e-6
    _per_update_schedule(c, updates_per_step=6)
    c.train.topology, c.train.slices = "v5p:4x4x1", 1
    c.model.update(configlib.TPU_KERNELS)
    return c


def deepseek_v3() -> ml_collections.ConfigDict:
    """The paper's R1-Zero run: lr 3e-6, KL 0.001, T 1.0, G 16, 32 questions per optimizer
    update, 32,768 tokens, reference refreshed every 400 updates, 10,400 updates, mu = 1.

    The paper splits each rollout of 8,192 outputs into 16 mini-batches, i.e. one optimizer
    update per 512 outputs = 32 questions x 16. A step here samples 64 questions x 16 = 1,024
    outputs through 512 decode slots (continuous batching: a finished row's slot takes the next
    of the 1,024 at once, so decode steps follow the long-tailed lengths, not 1,024 x the
    longest) and makes two updates of 512 (num_minibatches=2): 5,200 steps, the reference
    refreshed every 200 steps. Mesh: experts over 64 devices, heads/mlp/vocab over 2, fsdp over
    the rest (8 on 1024 chips, 4 on 512); rows and slots spread over fsdp x expert (one slot
    per chip on 1,024 chips, two on 512). See docs/pod_plan.md."""
    c = _hf("deepseek_v3")
    # Math and code prompts (R1-Zero's reasoning RL), each file's layout detected; mix them by
    # weight with --config.data.mixture (e.g. "0.6,0.4").
    _reasoning_files(c, "auto")
    c.data.buckets = (512, 1024, 2048)
    c.mesh.update(data=1, fsdp=-1, expert=64, tensor=2)
    c.rl.update(
        prompts_per_step=64,
        group_size=16,
        max_new_tokens=32768,
        beta=0.001,
        ref_update_every=200,
        num_minibatches=2,
        # Gradient accumulation: one row per device per slice (1 on 1,024 chips, 2 on 512).
        num_microbatches=0,
        num_iterations=1,
        eps_low=0.2,
        eps_high=0.2,
        # The sampler keeps the 61 layers scanned: one layer body per block keeps the program
        # (and its compile on a pod) small, and bf16 weights are not copied per layer.
        unstack_layers=False,
        # The decode's dense weights laid out once over all chips, the activations moving to
        # them (`STATIONARY_DECODE_RULES`): no per-step gather of MLA / MLP / lm-head weights.
        stationary_weights=True,
        # Continuous batching: 512 of the 1,024 rows decode at once (one per chip on 1,024
        # chips: a slot count the batch rule splits evenly over fsdp x expert on both pods).
        slots=512,
        # MoE RL: the training forwards use the experts the sampler chose (sampler-trainer
        # consistency; docs/grpo.md).
        routing_replay=True,
    )
    c.train.topology, c.train.slices = "v5p:8x8x16", 1
    # Not configlib.TPU_KERNELS: with the splash kernel on MLA and fused projections the step
    # needs 132 GiB per chip (issue 24's AOT; the XLA attention fits in 59.9). The MoE still runs
    # the megablox grouped matmuls (gmm_impl "auto" on TPU). The decode's attention over the
    # latent cache runs the Pallas latent kernel (each row's cache read once, up to its own
    # length, the scores on chip).
    c.model.decode_attention_impl = "pallas"
    c.optimizer.learning_rate = 3e-6
    c.train.steps = 5200
    c.train.checkpoint_every = 50
    return c


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(
            f"configs/r1_zero.py: unknown variant {variant!r}; choose one of {list(VARIANTS)}"
        )
    return globals()[variant]()
