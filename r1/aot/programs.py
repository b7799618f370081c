"""The programs `r1.aot` compiles: the trainers' real GRPO, SFT and reward-model steps, built
from an experiment config on a mesh with abstract, sharded arguments (no weights), and the
byte counts read off them (`shard_bytes`, `global_bytes`, `kv_cache_bytes`)."""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from r1 import configlib, sharding
from r1.data.tokenizers import build_demo_tokenizer
from r1.models.config import ModelConfig
from r1.models.layers import dtype_of
from r1.models.transformer import Transformer
from r1.rl import config as rl_config
from r1.rl import step as step_lib
from r1.rl.model_rewards import build_scorer
from r1.rm import config as rm_config
from r1.rm import model as rm_model
from r1.rm import step as rm_step
from r1.rm.reward import region_settings
from r1.sft import config as sft_config
from r1.sft import step as sft_step
from r1.train import build
from r1.train import state as train_state
from r1.train.config import OptimizerSection, TokenizerSection, make_optimizer, section


@dataclasses.dataclass
class Program:
    """A jitted step with abstract, sharded arguments, ready for `.lower(*args)`.

    kind: "grpo" or "sft". state: the TrainState of `jax.ShapeDtypeStruct`s with shardings.
    rows / new_tokens / prompt_len: the step's shape (new_tokens 0 for SFT). slots: the
    sampler's `SamplingConfig.slots` (0: all rows decode at once). grpo: the step's
    `GRPOConfig` (GRPO steps), from which `r1.aot.cost` compiles the rollout alone.
    """

    kind: str
    mesh: Mesh
    model: ModelConfig
    graphdef: Any
    step: Any
    state: Any
    batch: dict[str, jax.ShapeDtypeStruct]
    rows: int
    prompt_len: int
    new_tokens: int
    passes: int
    cache_dtype: str | None = None
    frozen: dict[str, Any] | None = None
    slots: int = 0
    grpo: Any = None

    @property
    def decode_rows(self) -> int:
        """Rows one decode step advances: min(slots, rows), or every row without slots."""
        return min(self.slots, self.rows) if self.slots else self.rows

    @property
    def prompts(self) -> int:
        """Prompts per step (the prefill's rows)."""
        return int(self.batch["prompt_tokens"].shape[0]) if "prompt_tokens" in self.batch else 0

    def args(self) -> tuple[Any, ...]:
        """The step's abstract arguments: (state, batch) or (state, batch, frozen models)."""
        if self.frozen:
            return (self.state, self.batch, self.frozen)
        return (self.state, self.batch)


def with_shardings(tree: Any, shardings: Any) -> Any:
    """`tree`'s leaves as `jax.ShapeDtypeStruct`s carrying `shardings` (same structure)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def stand_in_tokenizer(tokenizer: TokenizerSection) -> Any:
    """The run's tokenizer when it can be built here, else the demo tokenizer: the step only
    takes static tag/digit ids from it, which do not change the program's size."""
    kind, path = tokenizer.kind, tokenizer.path
    if kind == "demo" or (kind == "hf" and path and pathlib.Path(path).exists()):
        return build.build_tokenizer(kind, path)
    return build_demo_tokenizer()


def grpo_program(config: Any, mesh: Mesh) -> Program:
    """The trainer's GRPO step for `config` on `mesh`, with the config's real batch (prompts per
    step x group), prompt bucket (the largest) and generation length."""
    data = config.get("data") or {}
    if not data.get("task", "add") and not data.get("files", ""):
        # A file-driven config compiled without its files: the step's shapes do not depend on
        # them (prompts are padded to the largest bucket), so any name stands in.
        config = ml_collections.ConfigDict(config.to_dict())
        config.data.files = "<prompt files>"
    experiment = rl_config.parse(config)
    model_cfg = experiment.model
    tokenizer = stand_in_tokenizer(experiment.tokenizer)
    optimizer = make_optimizer(experiment.optimizer, experiment.train.steps)
    grpo_cfg = experiment.grpo_config(eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    graphdef, state = train_state.abstract_train_state(
        lambda: Transformer(model_cfg, rngs=nnx.Rngs(experiment.seed)),
        optimizer,
        experiment.seed,
        with_reference=grpo_cfg.loss.beta > 0,
    )
    prompts = experiment.rl.prompts_per_step
    prompt_len = int(max(experiment.data.buckets))
    batch = {
        "prompt_tokens": jax.ShapeDtypeStruct((prompts, prompt_len), jnp.int32),
        "prompt_mask": jax.ShapeDtypeStruct((prompts, prompt_len), jnp.bool_),
        "row_index": jax.ShapeDtypeStruct((prompts,), jnp.int32),
    }
    # Frozen models scored inside the step (reward models, a judge) are built from their
    # configs only; the reward fields are shaped by the spec (its model terms by their encoders).
    scorer, frozen = build_scorer(
        experiment.rewards, experiment.model_rewards, tokenizer, mesh, abstract=True
    )
    batch.update(scorer.abstract_fields(prompts, general=experiment.data.general_fraction > 0))
    step = step_lib.make_grpo_step(
        graphdef,
        optimizer,
        grpo_cfg,
        scorer,
        mesh,
        state,
        batch,
        bias_update_rate=model_cfg.bias_update_rate,
        frozen=frozen or None,
    )
    state_sh = train_state.train_state_shardings(state, optimizer, mesh)
    batch_sh = sharding.batch_shardings(batch, mesh)
    rows = prompts * grpo_cfg.group_size
    micro = grpo_cfg.num_microbatches or step_lib.auto_microbatches(
        rows // grpo_cfg.num_minibatches, mesh
    )
    return Program(
        kind="grpo",
        mesh=mesh,
        model=model_cfg,
        graphdef=graphdef,
        step=step,
        state=with_shardings(state, state_sh),
        batch=with_shardings(batch, batch_sh),
        rows=rows,
        prompt_len=prompt_len,
        new_tokens=grpo_cfg.sampling.max_new_tokens,
        passes=grpo_cfg.num_minibatches * grpo_cfg.num_iterations * micro,
        cache_dtype=grpo_cfg.sampling.cache_dtype,
        slots=grpo_cfg.sampling.slots,
        grpo=grpo_cfg,
        frozen=with_shardings(
            frozen, {k: sharding.state_shardings(v, mesh) for k, v in frozen.items()}
        )
        if frozen
        else None,
    )


def sft_program(config: Any, mesh: Mesh) -> Program:
    """The SFT trainer's step (`r1.sft.step.make_sft_step`, configs/sft.py and configs/distill.py
    layout) at the config's batch (`sft.batch_size` packed rows of `data.seq_len` tokens),
    gradient accumulation (`sft.num_microbatches`) and MTP weight, as `r1.sft.trainer` builds it.
    """
    if "sft" not in config:
        raise ValueError(
            "--step=sft: the config needs an `sft` section (configs/sft.py or configs/distill.py "
            f"layout); got sections {sorted(config.keys())}"
        )
    sft = section(sft_config.SFTSection, config, "sft")
    if config.get("data", {}).get("source") == "files" and not config.data.get("files"):
        # A file-driven config compiled without its files: rows are packed to seq_len whatever
        # the files hold, so any name stands in.
        config = ml_collections.ConfigDict(config.to_dict())
        config.data.files = ("<sft files>",)
    data = section(sft_config.DataSection, config, "data")
    model_cfg = configlib.model_config(config)
    seed = int(config.get("seed", 0))
    optimizer = make_optimizer(section(OptimizerSection, config, "optimizer"), 1)
    graphdef, state = train_state.abstract_train_state(
        lambda: Transformer(model_cfg, rngs=nnx.Rngs(seed)), optimizer, seed, with_reference=False
    )
    rows, length = sft.batch_size, data.seq_len
    batch = {
        "tokens": jax.ShapeDtypeStruct((rows, length), jnp.int32),
        "segment_ids": jax.ShapeDtypeStruct((rows, length), jnp.int32),
        "positions": jax.ShapeDtypeStruct((rows, length), jnp.int32),
        "loss_mask": jax.ShapeDtypeStruct((rows, length), jnp.bool_),
    }
    sft_cfg = sft_step.SFTConfig(
        num_microbatches=sft.num_microbatches,
        mtp_weight=model_cfg.mtp_loss_weight if model_cfg.num_mtp_layers else 0.0,
    )
    step = sft_step.make_sft_step(
        graphdef, optimizer, sft_cfg, mesh, state, batch, model_cfg.bias_update_rate
    )
    state_sh = train_state.train_state_shardings(state, optimizer, mesh)
    return Program(
        kind="sft",
        mesh=mesh,
        model=model_cfg,
        graphdef=graphdef,
        step=step,
        state=with_shardings(state, state_sh),
        batch=with_shardings(batch, sharding.batch_shardings(batch, mesh)),
        rows=rows,
        prompt_len=length,
        new_tokens=0,
        passes=sft.num_microbatches,
    )


def rm_program(config: Any, mesh: Mesh) -> Program:
    """The reward-model trainer's step (`r1.rm.step.rm_step_fn`, configs/reward_model.py
    layout, parsed by `r1.rm.config.parse`): `train.batch_size` preference pairs (chosen and
    rejected rows in one forward) of `data.max_length` tokens, `train.num_microbatches`, the
    configured scoring region."""
    if "rm" not in config:
        raise ValueError(
            "--step=rm: the config needs an `rm` section (configs/reward_model.py layout); got "
            f"sections {sorted(config.keys())}"
        )
    exp = rm_config.parse(config)
    model_cfg, seed = exp.model, exp.seed
    optimizer = make_optimizer(exp.optimizer, 1)
    graphdef, state = train_state.abstract_train_state(
        lambda: rm_model.RewardModel(model_cfg, rngs=nnx.Rngs(seed)),
        optimizer,
        seed,
        with_reference=False,
    )
    pairs, length = exp.train.batch_size, exp.data.max_length
    kinds = {"tokens": jnp.int32, "mask": jnp.bool_, "response": jnp.bool_}
    batch = {
        field: jax.ShapeDtypeStruct((pairs, length), kinds[field.split("_", 1)[1]])
        for field in rm_step.ROW_FIELDS
    }
    batch["margin"] = jax.ShapeDtypeStruct((pairs,), jnp.float32)
    settings = region_settings(
        exp.rm.region, exp.rm.missing_summary, stand_in_tokenizer(exp.tokenizer)
    )
    micro = exp.train.num_microbatches
    state_sh = train_state.train_state_shardings(state, optimizer, mesh)
    batch_sh = sharding.batch_shardings(batch, mesh)
    step = jax.jit(
        rm_step.rm_step_fn(
            graphdef,
            optimizer,
            settings,
            exp.rm.use_margin,
            float(model_cfg.bias_update_rate),
            micro,
        ),
        in_shardings=(state_sh, batch_sh),
        out_shardings=(state_sh, NamedSharding(mesh, PartitionSpec())),
        donate_argnums=(0,),
    )
    return Program(
        kind="rm",
        mesh=mesh,
        model=model_cfg,
        graphdef=graphdef,
        step=step,
        state=with_shardings(state, state_sh),
        batch=with_shardings(batch, batch_sh),
        rows=2 * pairs,
        prompt_len=length,
        new_tokens=0,
        passes=micro,
    )


# --------------------------------------------------------------------------------- bytes
def shard_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded `ShapeDtypeStruct`s (the largest shard)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
    return total


def global_bytes(tree: Any) -> int:
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _per_device_rows(program: Program, rows: int) -> int:
    """Rows of `rows` one device holds: split over the mesh axes of the `batch` rule."""
    spec = sharding.logical_to_spec(("batch",), (rows,), program.mesh)
    axes = spec[0] if spec[0] is not None else ()
    axes = (axes,) if isinstance(axes, str) else axes
    return -(-rows // math.prod(program.mesh.shape[a] for a in axes))


def routes_bytes(program: Program) -> int:
    """Per-device bytes of the experts the sampler records for an MoE policy (routing replay
    and the routing mismatch metric): int16 [rows, prompt + new tokens, MoE layers, k]."""
    cfg = program.model
    if program.kind != "grpo" or not cfg.num_moe_layers:
        return 0
    tokens = _per_device_rows(program, program.rows) * (program.prompt_len + program.new_tokens)
    return tokens * cfg.num_moe_layers * cfg.num_experts_per_tok * 2


def kv_cache_bytes(program: Program) -> int:
    """Per-device bytes of the sampler's KV cache: the decode rows (all rows, or the slots) x
    (prompt bucket + new tokens), plus with slots the prefill's cache of the prompts (one per
    prompt, copied into a slot when one of its rows starts).

    MLA caches the latent + rope key (C + R values per token and layer), GQA keys and values
    (2 KV D); rows are split over the mesh axes of the `batch` rule and GQA kv heads over those
    of `act_kv_heads`, as the sampler shards them.
    """
    if program.kind != "grpo":
        return 0
    cfg = program.model
    tokens = _per_device_rows(program, program.decode_rows) * (
        program.prompt_len + program.new_tokens
    )
    if program.slots:
        tokens += _per_device_rows(program, program.prompts) * program.prompt_len
    per_token = kv_bytes_per_token(cfg, program.cache_dtype)
    if cfg.attention_type == "gqa":  # keys and values split over the kv heads' mesh axes
        spec = sharding.logical_to_spec(("act_kv_heads",), (cfg.num_kv_heads,), program.mesh)
        axes = spec[0] if spec[0] is not None else ()
        axes = (axes,) if isinstance(axes, str) else axes
        per_token //= math.prod(program.mesh.shape[a] for a in axes)
    return tokens * per_token


def kv_bytes_per_token(cfg: ModelConfig, cache_dtype: str | None = None) -> int:
    """Bytes the sampler's KV cache keeps per token over all layers: MLA the latent + rope key
    (C + R values per layer), GQA keys and values (2 K D), in the cache dtype (default the
    model's compute dtype)."""
    if cfg.attention_type == "mla":
        per_layer = cfg.kv_lora_rank + cfg.qk_rope_head_dim
    else:
        per_layer = 2 * cfg.num_kv_heads * cfg.head_dim
    itemsize = jnp.dtype(dtype_of(cache_dtype or cfg.dtype)).itemsize
    return per_layer * itemsize * cfg.num_layers
