"""Estimated time of a compiled step on a TPU pod, from the compiler's cost model with every loop
counted (`r1.aot.loops`), split into the rollout and the update.

* The whole step is counted from its own compiled program.
* The rollout (prefill + decode, `r1.rl.step.rollout`) is compiled alone on the same mesh, with
  the same shardings, and counted the same way; the update is the step minus the rollout: the
  reference forward, rewards, advantages, the policy forward + backward and the optimizer.
* Seconds are a roofline per device: max(flops / peak bf16 flop/s, bytes / HBM bandwidth), for
  the rollout and the update separately (their sum is the step's). A lower bound on time: it
  assumes peak rates and leaves out communication between chips.
* The decode's ideal bytes per step: every weight a decode step needs read once (all parameters
  but the input embedding table when the output head is separate, and but the MTP modules)
  plus the KV cache read once at the mean context (prompt + half the generation), for the
  rows one step decodes, over the whole pod. The compiled decode's bytes against that ideal
  say how close the rollout is to the HBM roofline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.experimental.compilation_cache import compilation_cache

from r1 import sharding
from r1.aot.hlo_buffers import read_dump
from r1.aot.loops import Cost, LoopCount, count_loops
from r1.aot.programs import Program, kv_bytes_per_token
from r1.models.layers import dtype_of
from r1.rl import step as step_lib

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class ChipSpec:
    """One TPU chip: HBM bytes, peak dense bf16 flop/s and HBM bandwidth in bytes/s (public
    spec sheets)."""

    name: str
    device_kind: str
    hbm_bytes: int
    peak_bf16_flops: float
    hbm_bandwidth: float


CHIPS = {
    "v4": ChipSpec("v4", "TPU v4", 32 * GIB, 275e12, 1228e9),
    "v5e": ChipSpec("v5e", "TPU v5 lite", 16 * GIB, 197e12, 819e9),
    "v5p": ChipSpec("v5p", "TPU v5", 95 * GIB, 459e12, 2765e9),
    "v6e": ChipSpec("v6e", "TPU v6 lite", 32 * GIB, 918e12, 1640e9),
}


def chip_for(devices: Sequence[Any]) -> ChipSpec:
    kind = devices[0].device_kind
    for spec in CHIPS.values():
        if spec.device_kind == kind:
            return spec
    known = [c.device_kind for c in CHIPS.values()]
    raise ValueError(f"unknown TPU device kind {kind!r}; known: {known}")


def devices_per_chip(devices: Sequence[Any]) -> int:
    """JAX devices per chip: 2 on v4 topologies (one per TensorCore), else 1 (megacore / one
    core)."""
    cores = {getattr(d, "core_on_chip", 0) for d in devices}
    return max(1, len(cores))


def roofline_seconds(flops: float, bytes_accessed: float, chip: ChipSpec, per_chip: int) -> float:
    """max(compute time, memory time) of one device at the chip's peak rates. (The compiler's
    own `optimal_seconds` is not used: it is negative for programs with data-dependent loops.)"""
    return max(
        flops / (chip.peak_bf16_flops / per_chip), bytes_accessed / (chip.hbm_bandwidth / per_chip)
    )


def rollout_loops(program: Program) -> LoopCount:
    """The rollout alone (`r1.rl.step.rollout`: prefill + decode), compiled on the program's
    mesh with the step's shardings and counted with its loops."""
    return count_loops(rollout_hlo(program))


def rollout_hlo(program: Program) -> str:
    """The optimized HLO of the rollout alone (`r1.rl.step.rollout`), compiled on the
    program's mesh with the step's shardings."""
    graphdef, config = program.graphdef, program.grpo
    if config is None:
        raise ValueError("rollout_hlo: the program has no GRPO config (not a GRPO step)")

    def rollout(params, extra, batch, key_data):
        policy = nnx.merge(graphdef, params, extra)
        return step_lib.rollout(policy, batch, jax.random.wrap_key_data(key_data), config)

    state = program.state
    with sharding.use_mesh(program.mesh):
        lowered = jax.jit(rollout).lower(state.params, state.extra, program.batch, state.rng)
    return optimized_hlo(lowered)


def optimized_hlo(lowered: Any) -> str:
    """The optimized HLO text of a lowered program, compiled with the HLO dumped to a temporary
    directory (`Compiled.as_text()` cannot serialise some TPU programs' async ops)."""
    with tempfile.TemporaryDirectory(prefix="r1_aot_") as dump:
        compile_dumped(lowered, dump)
        return read_dump(dump, "after_optimizations.txt")


def compile_dumped(lowered: Any, directory: str) -> Any:
    """`lowered.compile()` with the optimized HLO and the buffer assignment dumped as text to
    `directory` (`read_dump` reads them). The persistent compilation cache (set by
    `JAX_COMPILATION_CACHE_DIR` or `jax_compilation_cache_dir`) is off for this compile: on a
    cache hit the executable is loaded, not compiled, and the compiler dumps no buffer
    assignment (the report's largest buffers); and a pod program's serialized executable would
    take room in the cache for nothing."""
    with _persistent_cache_off():
        return lowered.compile({"xla_dump_to": directory, "xla_dump_hlo_as_text": True})


@contextlib.contextmanager
def _persistent_cache_off() -> Iterator[None]:
    enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()  # jax decides once whether to use the cache, then keeps it
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", enabled)
        compilation_cache.reset_cache()


def decode_weight_bytes(program: Program) -> int:
    """Global bytes of the weights a decode step reads: all parameters but the input embedding
    table (a gather of a row per token; read whole only when tied to the output head) and the
    MTP modules (training only), in the compute dtype the sampler keeps them in
    (`r1.models.layers.in_compute_dtype`: float weights no wider than it)."""
    tied = program.model.tie_word_embeddings
    compute = jnp.dtype(dtype_of(program.model.dtype)).itemsize
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(program.state.params):
        keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        if keys and (keys[0] == "mtp" or (keys[0] == "embed" and not tied)):
            continue
        itemsize = jnp.dtype(leaf.dtype).itemsize
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            itemsize = min(itemsize, compute)
        total += math.prod(leaf.shape) * itemsize
    return total


def ideal_decode_step_bytes(program: Program) -> float:
    """Pod-wide bytes one decode step must read: the decode weights once plus the KV cache of
    the rows it decodes at the mean context (prompt + new_tokens / 2)."""
    context = program.prompt_len + program.new_tokens / 2
    kv = kv_bytes_per_token(program.model, program.cache_dtype) * program.decode_rows * context
    return decode_weight_bytes(program) + kv


ROUTED_EXPERT_WEIGHTS = ("w_gate", "w_up", "w_down", "w_gate_up")


def matmul_params_per_token(program: Program) -> float:
    """Parameters one token multiplies through in a forward pass: all but the input embedding
    table (a gather; counted when tied to the output head of a language model, not for a reward
    model's backbone, which has no vocabulary projection) and the MTP modules, with each routed
    expert weighted by the share of experts a token uses (k / E)."""
    cfg = program.model
    routed_share = cfg.num_experts_per_tok / cfg.n_routed_experts if cfg.n_routed_experts else 1
    embed_used = cfg.tie_word_embeddings and program.kind != "rm"
    total = 0.0
    for path, leaf in jax.tree_util.tree_leaves_with_path(program.state.params):
        keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        keys = keys[1:] if keys[:1] == ["backbone"] else keys
        if keys and (keys[0] == "mtp" or (keys[0] == "embed" and not embed_used)):
            continue
        if keys and keys[0] == "lm_head" and program.kind == "rm":  # no logits in the RM
            continue
        size = float(math.prod(leaf.shape))
        if len(leaf.shape) < 2:  # norms, biases: elementwise, not products
            continue
        total += size * (routed_share if any(k in ROUTED_EXPERT_WEIGHTS for k in keys) else 1)
    return total


def forward_model_flops(program: Program, rows: int, length: int) -> float:
    """Model flops of one forward pass over `rows` causal sequences of `length` tokens: 2 per
    multiply-add of every weight a token uses (`matmul_params_per_token`) plus attention's
    scores and weighted sum over the mean causal context (length / 2)."""
    cfg = program.model
    if cfg.attention_type == "mla":
        qk, v = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim, cfg.v_head_dim
    else:
        qk = v = cfg.head_dim
    attention = 2 * cfg.num_layers * cfg.num_heads * (qk + v) * length / 2
    return rows * length * (2 * matmul_params_per_token(program) + attention)


def update_model_flops(program: Program) -> float:
    """The update's model flops (no recomputation counted, the MFU convention): a forward +
    backward (3 forwards) per token per pass over the data, every row at full length, plus
    for GRPO the reference forward (beta > 0) and the old-policy forward when a rollout
    correction recomputes it. SFT / reward-model steps: one forward + backward of the batch."""
    length = program.prompt_len + program.new_tokens
    forward = forward_model_flops(program, program.rows, length)
    config = program.grpo
    if config is None:
        return 3 * forward
    passes = 3 * config.num_iterations
    passes += 1 if config.loss.beta > 0 else 0
    passes += 1 if step_lib.recomputes_old_logprobs(config) else 0
    return passes * forward


@dataclasses.dataclass(frozen=True)
class StepCost:
    """A step's loop-counted cost (flops: pod-wide; seconds: roofline per device; bytes per
    token: pod-wide bytes over the tokens one decode step generates).

    update_*: everything but the rollout (the whole step for SFT / reward-model steps);
    update_flops are the compiler's (recomputation included), update_model_flops the model's
    (`update_model_flops`), and update_estimated_mfu = model flops / (update seconds x peak).
    rollout_bytes_per_token / rollout_ideal_bytes_per_token: one decode step's compiled bytes
    and its ideal (`ideal_decode_step_bytes`), per generated token; their ratio is
    `decode_roofline_fraction` (1: the decode reads nothing more than it must).
    """

    flops: float
    compiled_flops: float
    seconds: float
    rollout_flops: float
    rollout_seconds: float
    update_flops: float
    update_seconds: float
    update_model_flops: float
    update_estimated_mfu: float
    decode_steps: int
    decode_step_seconds: float
    rollout_bytes_per_token: float
    rollout_ideal_bytes_per_token: float
    loops: tuple[str, ...]
    uncounted: tuple[str, ...]

    def report_fields(self) -> dict[str, Any]:
        """The `AOTReport` fields this cost fills beyond flops, seconds and decode steps."""
        return {
            "rollout_flops": self.rollout_flops,
            "rollout_seconds": self.rollout_seconds,
            "update_flops": self.update_flops,
            "update_seconds": self.update_seconds,
            "update_model_flops": self.update_model_flops,
            "update_estimated_mfu": self.update_estimated_mfu,
            "rollout_bytes_per_token": self.rollout_bytes_per_token,
            "rollout_ideal_bytes_per_token": self.rollout_ideal_bytes_per_token,
            "loops": list(self.loops),
            "uncounted_loops": list(self.uncounted),
        }


def describe_loops(count: LoopCount, limit: int = 6) -> tuple[str, ...]:
    """The loops that carry the most flops, as "x<runs> <short op name> (<share>%)"."""
    total = count.total.flops or 1.0
    rows = []
    for loop in sorted(count.loops, key=lambda lp: -lp.total.flops)[:limit]:
        share = loop.total.flops / total
        if share < 0.01:
            break
        name = "/".join(p for p in loop.op_name.split("/")[-3:] if p)
        rows.append(f"x{loop.runs:g} {name} ({100 * share:.0f}%)")
    return tuple(rows)


def step_cost(
    program: Program,
    hlo_text: str,
    chip: ChipSpec,
    per_chip: int,
    devices: int,
    split_rollout: bool = True,
) -> StepCost:
    """The loop-counted cost of `hlo_text` (the program's compiled step, optimized HLO) and,
    for a GRPO step, of its rollout alone (compiled here), split as `StepCost` describes.
    split_rollout=False (a GRPO step): skip the rollout's compilation; the step is counted
    whole and the rollout / update fields stay 0."""
    step = count_loops(hlo_text)
    grpo = program.kind == "grpo"
    rollout = rollout_loops(program) if grpo and split_rollout else None
    roll = rollout.total if rollout else Cost()
    update = (step.total - roll).most(Cost()) if rollout or not grpo else Cost()
    rollout_seconds = roofline_seconds(roll.flops, roll.bytes, chip, per_chip)
    update_seconds = roofline_seconds(update.flops, update.bytes, chip, per_chip)
    peak = chip.peak_bf16_flops / per_chip
    model_flops = update_model_flops(program)
    decode = rollout.decode_step if rollout else Cost()
    decode_tokens = program.decode_rows
    return StepCost(
        flops=step.total.flops * devices,
        compiled_flops=step.as_compiled.flops * devices,
        seconds=rollout_seconds + update_seconds
        if rollout or not grpo
        else roofline_seconds(step.total.flops, step.total.bytes, chip, per_chip),
        rollout_flops=roll.flops * devices,
        rollout_seconds=rollout_seconds,
        update_flops=update.flops * devices,
        update_seconds=update_seconds,
        update_model_flops=model_flops,
        update_estimated_mfu=model_flops / (update_seconds * peak * devices)
        if update_seconds and (rollout or not grpo)
        else 0.0,
        decode_steps=rollout.decode_steps if rollout else 0,
        decode_step_seconds=roofline_seconds(decode.flops, decode.bytes, chip, per_chip),
        rollout_bytes_per_token=decode.bytes * devices / decode_tokens if rollout else 0.0,
        rollout_ideal_bytes_per_token=ideal_decode_step_bytes(program) / decode_tokens
        if rollout
        else 0.0,
        loops=describe_loops(step),
        uncounted=step.uncounted + (rollout.uncounted if rollout else ()),
    )
