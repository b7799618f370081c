"""Ahead-of-time compilation of r1's real steps for TPU pods, on a CPU-only host.

With the `libtpu` package installed (`pip install -e .[tpu]`), JAX can describe any TPU topology
(`v5p:8x8x16`, `v5e:2x2`, ...; several slices with `num_slices`) without the hardware, and XLA
compiles a jitted function for it. The compiled executable states the exact bytes one device
needs (`memory_analysis`) and the compiler's cost model (`cost_analysis`: flops, bytes, seconds).

The pieces here build the program exactly as the trainer does: the mesh through
`r1.sharding.make_mesh` (multi-slice: the data axis crosses slices), the train state through
`r1.rl.step.abstract_train_state` (the trainer's `init_train_state`, abstractly) and
`train_state_shardings`, the optimizer and GRPO settings through the trainer's own config
readers, and the step through `make_grpo_step`. Only weights are missing.

    devices = topology_devices("v5p:8x8x16")
    mesh = build_mesh(config, devices)
    program = grpo_program(config, mesh)
    report = compile_report(program, ...)

Costs: XLA's cost model counts each loop body once; `r1.aot.loops` counts every loop by its
trip count (the layer scan, the mini-batch and micro-batch scans, the decode loops at their
worst case) and `r1.aot.cost` splits the step into the rollout (compiled alone) and the update,
each with a roofline over the chip's peak flop/s and HBM bandwidth (see `AOTReport`).

The programs themselves are built in `r1.aot.programs` and the compiler's buffer dump is read by
`r1.aot.hlo_buffers`; both are re-exported here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import jax
from jax.sharding import Mesh

from r1 import configlib, sharding
from r1.aot.cost import (
    CHIPS,
    GIB,
    ChipSpec,
    StepCost,
    chip_for,
    compile_dumped,
    devices_per_chip,
    roofline_seconds,
    step_cost,
)
from r1.aot.hlo_buffers import Buffer, parse_buffer_assignment, read_dump
from r1.aot.programs import (
    Program,
    global_bytes,
    grpo_program,
    kv_cache_bytes,
    rm_program,
    routes_bytes,
    sft_program,
    shard_bytes,
    with_shardings,
)

__all__ = ["CHIPS", "ChipSpec", "StepCost", "chip_for", "roofline_seconds"]
# libtpu guards the TPU against two processes with a lock file; describing a topology touches no
# TPU, so concurrent compilations (tests, other users of the host) must not collide on it.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silences libtpu's C++ start-up warnings (TPU_ACCELERATOR_TYPE, worker hostnames), which
    concern running on a TPU VM, not describing a topology."""
    fd = 2
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def topology_devices(topology: str, num_slices: int = 1) -> list[Any]:
    """The devices of a TPU topology, e.g. `v5p:8x8x16` (1024 chips), `v5e:2x2`, `v4:2x2x2`.

    No TPU is needed: `libtpu` describes the topology. num_slices > 1: that many identical
    slices joined by the data-center network (devices carry `slice_index`).
    """
    name = topology.split(":", 1)[0]
    if ":" not in topology or name not in CHIPS:
        raise ValueError(
            f"--topology={topology!r}: expected <chip>:<shape> with chip one of {sorted(CHIPS)}, "
            "e.g. v5p:8x8x16 or v5e:2x2"
        )
    if num_slices < 1:
        raise ValueError(f"--slices={num_slices}: must be >= 1")
    try:
        from jax.experimental import topologies
    except ImportError as err:  # pragma: no cover - jax always ships it
        raise ImportError("jax.experimental.topologies is missing from this jax") from err
    try:
        with _quiet_stderr():
            desc = topologies.get_topology_desc(
                platform="tpu", topology_name=topology, num_slices=num_slices
            )
    except Exception as err:
        raise RuntimeError(
            f"cannot describe TPU topology {topology!r} ({err}). Is libtpu installed "
            "(pip install -e .[tpu])?"
        ) from err
    return list(desc.devices)


# --------------------------------------------------------------------------------- mesh
def pod_mesh_config(mesh: sharding.MeshConfig, num_slices: int) -> sharding.MeshConfig:
    """The config's mesh on `num_slices` slices: data parallelism crosses slices, so a config
    with data=1 gets data=num_slices; an explicit data size must be a multiple of it."""
    if num_slices > 1 and mesh.data == 1:
        return dataclasses.replace(mesh, data=num_slices)
    if num_slices > 1 and mesh.data != -1 and mesh.data % num_slices:
        raise ValueError(
            f"mesh.data={mesh.data} is not a multiple of --slices={num_slices}; the data axis is "
            "the one that crosses slices"
        )
    return mesh


def build_mesh(config: Any, devices: Sequence[Any]) -> Mesh:
    """The trainer's mesh (`r1.sharding.make_mesh` over the config's `mesh` section) on
    `devices`, which may span several slices."""
    mesh_cfg = pod_mesh_config(configlib.mesh_config(config), sharding.num_slices(devices))
    return sharding.make_mesh(mesh_cfg, devices)


# --------------------------------------------------------------------------------- report
@dataclasses.dataclass
class AOTReport:
    """What one device of the pod needs for one step, and the compiler's cost estimate.

    Bytes are per device (a v4 chip is 2 devices; v5e/v5p/v6e chips are 1). `params`,
    `opt_state`, `ref_params`, `frozen_params` (the models scored inside the step: reward
    models, a judge; {name: bytes} in `frozen_by_name`), `other_state` (MoE balancing biases,
    step, rng) and `batch` are the shards of the step's arguments; `outputs` and `temporaries`
    (activations, the KV cache, gathered weights, gradients) come from the compiled executable;
    `kv_cache` is the part of the temporaries the sampler's cache takes (computed from its
    layout), `routes` the experts it records for an MoE policy (routing replay).
    `per_chip_bytes` is the executable's peak: arguments + outputs - donated aliases +
    temporaries + code.

    Flops / seconds: the compiler's cost model with every loop counted by its trip count
    (`r1.aot.loops`; decode loops at their worst case, every row at full length:
    `decode_steps` steps of `decode_rows` rows), summed over devices; `compiled_flops` is XLA's
    own count (each loop body once). GRPO steps are split into the rollout (prefill + decode,
    compiled alone) and the update (the rest: reference forward, rewards, policy forward +
    backward, optimizer); SFT and reward-model steps are all update. Seconds are rooflines per
    device, max(flops / peak, bytes / HBM bandwidth), of the rollout and the update, summed in
    `estimated_seconds`; `update_estimated_mfu` = the update's model flops (no recomputation:
    `r1.aot.cost.update_model_flops`) / (update seconds x peak). The
    decode's `rollout_bytes_per_token` (compiled) and `rollout_ideal_bytes_per_token` (every
    decode weight once + the KV cache at the mean context, `r1.aot.cost`) are pod-wide bytes per
    decode step over the tokens it generates. Estimates from the compiler's cost model, not
    measurements; communication between chips is not in the roofline.
    """

    config: str
    step: str
    topology: str
    slices: int
    chips: int
    devices: int
    chip: str
    mesh: dict[str, int]
    hbm_bytes: int
    params: int
    opt_state: int
    ref_params: int
    frozen_params: int
    other_state: int
    batch: int
    kv_cache: int
    temporaries: int
    outputs: int
    aliased: int
    code: int
    per_chip_bytes: int
    fits: bool
    total_param_bytes: int
    flops: float
    compiled_flops: float
    estimated_seconds: float
    rows: int
    new_tokens: int
    passes: int
    decode_rows: int
    decode_steps: int
    decode_step_seconds: float
    generated_tokens: int
    tokens_per_second: float
    mfu: float
    compile_seconds: float
    largest: list[Buffer] = dataclasses.field(default_factory=list)
    frozen_by_name: dict[str, int] = dataclasses.field(default_factory=dict)
    error: str = ""
    advice: list[str] = dataclasses.field(default_factory=list)
    routes: int = 0
    rollout_flops: float = 0.0
    rollout_seconds: float = 0.0
    update_flops: float = 0.0
    update_seconds: float = 0.0
    update_model_flops: float = 0.0
    update_estimated_mfu: float = 0.0
    rollout_bytes_per_token: float = 0.0
    rollout_ideal_bytes_per_token: float = 0.0
    loops: list[str] = dataclasses.field(default_factory=list)
    uncounted_loops: list[str] = dataclasses.field(default_factory=list)

    @property
    def decode_roofline_fraction(self) -> float:
        """Ideal decode bytes over compiled decode bytes (1: nothing read beyond the ideal)."""
        if not self.rollout_bytes_per_token:
            return 0.0
        return self.rollout_ideal_bytes_per_token / self.rollout_bytes_per_token

    def summary(self) -> dict[str, Any]:
        """The JSON line: every scalar field plus the largest buffers."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "largest"}
        out["largest"] = [dataclasses.asdict(b) for b in self.largest[:5]]
        return out

    def text(self) -> str:
        g = lambda b: f"{b / GIB:8.2f} GiB"  # noqa: E731
        lines = [
            f"{self.config}  step={self.step}  topology={self.topology} x {self.slices} slice(s)",
            f"  {self.chips} chips ({self.devices} devices, {self.chip}), mesh {self.mesh}",
            f"  per device (HBM {self.hbm_bytes / GIB:.2f} GiB):",
            f"    parameters           {g(self.params)}",
            f"    optimizer state      {g(self.opt_state)}",
            f"    reference parameters {g(self.ref_params)}",
            *(
                f"    frozen model {name:<9} {g(b)}  (scored inside the step)"
                for name, b in self.frozen_by_name.items()
            ),
            f"    other state + batch  {g(self.other_state + self.batch)}",
            f"    temporaries          {g(self.temporaries)}  (activations, gradients, "
            "gathered weights, KV cache)",
            f"      of which KV cache  {g(self.kv_cache)}  ({self.decode_rows} rows decoded at "
            f"once{' (slots)' if self.decode_rows < self.rows else ''})",
            *(
                [f"      of which MoE routes{g(self.routes)}  (recorded experts, int16)"]
                if self.routes
                else []
            ),
            f"    outputs              {g(self.outputs)}  (donated: {g(self.aliased).strip()})",
            f"    peak                 {g(self.per_chip_bytes)}  -> "
            + ("FITS" if self.fits else "DOES NOT FIT"),
        ]
        if self.error:
            lines.append(f"  compiler: {self.error}")
        if self.flops:
            lines += [
                "  compiler cost-model estimate, every loop counted (not a measurement):",
                f"    {self.flops / 1e12:,.1f} TFLOP per step "
                f"({self.compiled_flops / 1e12:,.1f} as compiled, loop bodies once); "
                f"{self.estimated_seconds:,.2f} s per step (roofline), MFU {100 * self.mfu:.1f}%",
                *(f"      loop {loop}" for loop in self.loops),
                *(f"      counted once (trip count unknown): {op}" for op in self.uncounted_loops),
            ]
            if self.new_tokens:
                lines += [
                    f"    rollout: {self.rollout_flops / 1e12:,.1f} TFLOP, "
                    f"{self.rollout_seconds:,.2f} s; {self.decode_steps:,} decode steps of "
                    f"{self.decode_rows} rows when every row is full length, "
                    f"{self.decode_step_seconds * 1e3:,.2f} ms each, "
                    f"{self.tokens_per_second:,.0f} generated tokens/s",
                    f"    decode bytes per generated token: "
                    f"{self.rollout_bytes_per_token / 1e6:,.2f} MB compiled vs "
                    f"{self.rollout_ideal_bytes_per_token / 1e6:,.2f} MB ideal "
                    f"({100 * self.decode_roofline_fraction:.0f}% of the HBM roofline)",
                ]
            lines.append(
                f"    update: {self.update_flops / 1e12:,.1f} TFLOP compiled "
                f"({self.update_model_flops / 1e12:,.1f} model), {self.update_seconds:,.2f} s, "
                f"estimated MFU {100 * self.update_estimated_mfu:.1f}% "
                f"({self.passes} accumulation pass(es), counted)"
            )
        if self.largest:
            lines.append("  largest buffers on one device:")
            for b in self.largest:
                lines.append(f"    {b.bytes / GIB:8.2f} GiB  {b.kind:<12} {b.shape}  {b.op}")
        for a in self.advice:
            lines.append(f"  advice: {a}")
        return "\n".join(lines)


def advice_for(program: Program, report: AOTReport) -> list[str]:
    """Which mesh axis or memory setting would help, from where the bytes are."""
    tips = []
    mesh = dict(program.mesh.shape)
    state = report.params + report.opt_state + report.ref_params + report.frozen_params
    if state > 0.4 * report.hbm_bytes:
        tips.append(
            f"parameters + optimizer state + reference + frozen models take {state / GIB:.1f} "
            "GiB per device: "
            f"shard them over more devices (raise mesh.fsdp / mesh.expert, now {mesh}), use "
            "more chips, or keep param_dtype=bfloat16"
        )
    if report.kv_cache > 0.25 * report.hbm_bytes:
        tips.append(
            f"the KV cache takes {report.kv_cache / GIB:.1f} GiB per device: spread the "
            f"{program.rows} rows over more devices (the batch rule uses data/fsdp/expert) or "
            "use a bfloat16 cache (SamplingConfig.cache_dtype)"
        )
    attention = [b for b in report.largest if "bhts" in b.op or "bkgts" in b.op]
    if attention and attention[0].bytes > 0.25 * report.hbm_bytes:
        tips.append(
            f"attention scores {attention[0].shape} take {attention[0].bytes / GIB:.1f} GiB: the "
            "training forward materialises [heads, T, S] per row; long sequences need a blockwise "
            "(flash) attention with a recomputing backward, or more mesh.tensor to split heads"
        )
    vocab = program.model.vocab_size
    logits = [
        b
        for b in report.largest
        if b.shape.endswith(f",{vocab}]")
        or any(b.shape.endswith(f",{vocab // t}]") for t in (2, 4, 8) if vocab % t == 0)
    ]
    if logits:
        tips.append(
            f"full-vocabulary logits {logits[0].shape} ({logits[0].bytes / GIB:.1f} GiB each): "
            "compute completion log-probs in sequence chunks, or raise mesh.tensor (vocab split)"
        )
    if report.temporaries > 0.4 * report.hbm_bytes:
        remat = program.model.remat_policy
        tips.append(
            f"temporaries take {report.temporaries / GIB:.1f} GiB per device: "
            + (
                "set model.remat_policy='full'"
                if remat != "full"
                else "remat is already 'full'; raise rl.num_minibatches or split rows over more "
                "devices (mesh.fsdp / mesh.expert)"
            )
            + (", or mesh.tensor to split heads/mlp/vocab" if mesh.get("tensor", 1) == 1 else "")
        )
    return tips


def worst_case_decode_steps(program: Program) -> int:
    """Decode steps when every row generates `new_tokens`: new_tokens without slots,
    ceil(rows / slots) x new_tokens with them."""
    return -(-program.rows // program.decode_rows) * program.new_tokens


def compile_report(
    program: Program,
    *,
    config_name: str,
    topology: str,
    slices: int,
    devices: Sequence[Any],
    buffers: int = 8,
    loop_costs: bool = True,
) -> AOTReport:
    """Lowers and compiles `program` for `devices`, and reads memory and cost from the
    executable. A program that does not fit comes back with fits=False, the compiler's message
    and the largest buffers from its buffer assignment (no exception)."""
    import time

    chip = chip_for(devices)
    per_chip = devices_per_chip(devices)
    hbm = chip.hbm_bytes // per_chip
    state = program.state
    params = shard_bytes(state.params)
    opt = shard_bytes(state.opt_state)
    ref = shard_bytes(state.ref_params) if state.ref_params is not None else 0
    other = shard_bytes((state.step, state.extra, state.rng))
    batch = shard_bytes(program.batch)
    frozen = {name: shard_bytes(v) for name, v in (program.frozen or {}).items()}
    start = time.perf_counter()
    error = ""
    compiled = None
    with tempfile.TemporaryDirectory(prefix="r1_aot_") as dump:
        with sharding.use_mesh(program.mesh):
            lowered = program.step.lower(*program.args())
        try:
            compiled = compile_dumped(lowered, dump)
        except Exception as err:  # the TPU compiler's out-of-memory error
            message = str(err)
            if "RESOURCE_EXHAUSTED" not in message and "Ran out of memory" not in message:
                raise
            error = message.splitlines()[0]
        assignment = read_dump(dump, "buffer-assignment.txt")
        hlo = read_dump(dump, "after_optimizations.txt")
        largest = parse_buffer_assignment(assignment, hlo, buffers)
    seconds = time.perf_counter() - start
    if compiled is not None:
        # What the executable really takes: its own input shardings, not the requested ones.
        state_sh = compiled.input_shardings[0][0]
        compiled_state = with_shardings(jax.tree.map(lambda x: x, state), state_sh)
        params = shard_bytes(compiled_state.params)
        opt = shard_bytes(compiled_state.opt_state)
        if state.ref_params is not None:
            ref = shard_bytes(compiled_state.ref_params)
        if program.frozen:
            frozen_sh = compiled.input_shardings[0][2]
            frozen = {
                name: shard_bytes(with_shardings(program.frozen[name], frozen_sh[name]))
                for name in program.frozen
            }
        mem = compiled.memory_analysis()
        temps, outputs = int(mem.temp_size_in_bytes), int(mem.output_size_in_bytes)
        aliased, code = int(mem.alias_size_in_bytes), int(mem.generated_code_size_in_bytes)
        arguments = int(mem.argument_size_in_bytes)
        peak = arguments + outputs - aliased + temps + code
    else:
        needed = re.search(r"\(([\d.]+)([TGMK])\) exceeds available HBM", error)
        scale = {"T": 1024 * GIB, "G": GIB, "M": 1024**2, "K": 1024}
        temps = int(float(needed.group(1)) * scale[needed.group(2)]) if needed else 0
        outputs = aliased = code = 0
        peak = params + opt + ref + sum(frozen.values()) + other + batch + temps
    n_dev = len(devices)
    cost = (
        step_cost(program, hlo, chip, per_chip, n_dev, split_rollout=loop_costs)
        if compiled is not None
        else None
    )
    generated = program.rows * program.new_tokens
    est = cost.seconds if cost else 0.0
    peak_flops = chip.peak_bf16_flops / per_chip * n_dev
    report = AOTReport(
        config=config_name,
        step=program.kind,
        topology=topology,
        slices=slices,
        chips=n_dev // per_chip,
        devices=n_dev,
        chip=chip.name,
        mesh={k: int(v) for k, v in program.mesh.shape.items()},
        hbm_bytes=hbm,
        params=params,
        opt_state=opt,
        ref_params=ref,
        frozen_params=sum(frozen.values()),
        frozen_by_name=frozen,
        other_state=other,
        batch=batch,
        kv_cache=kv_cache_bytes(program),
        routes=routes_bytes(program),
        temporaries=temps,
        outputs=outputs,
        aliased=aliased,
        code=code,
        per_chip_bytes=peak,
        fits=compiled is not None and peak <= hbm,
        total_param_bytes=global_bytes(state.params),
        flops=cost.flops if cost else 0.0,
        compiled_flops=cost.compiled_flops if cost else 0.0,
        estimated_seconds=est,
        rows=program.rows,
        new_tokens=program.new_tokens,
        passes=program.passes,
        decode_rows=program.decode_rows,
        decode_steps=(cost.decode_steps if cost else 0) or worst_case_decode_steps(program),
        decode_step_seconds=cost.decode_step_seconds if cost else 0.0,
        generated_tokens=generated,
        tokens_per_second=generated / cost.rollout_seconds
        if cost and cost.rollout_seconds
        else 0.0,
        mfu=cost.flops / (est * peak_flops) if cost and est > 0 else 0.0,
        compile_seconds=seconds,
        largest=largest,
        error=error,
        **(cost.report_fields() if cost else {}),
    )
    if not report.fits:
        report.advice = advice_for(program, report)
    return report


STEPS = ("grpo", "sft", "rm")
PROGRAMS = {"grpo": grpo_program, "sft": sft_program, "rm": rm_program}


def step_of(config: Any) -> str:
    """The step a config trains: "grpo" (an `rl` section: configs/r1_zero.py), "rm" (an `rm`
    section: configs/reward_model.py) or "sft" (an `sft` section: configs/sft.py, distill.py)."""
    for section, step in (("rl", "grpo"), ("rm", "rm"), ("sft", "sft")):
        if section in config:
            return step
    raise ValueError(
        f"cannot tell which step this config trains (no rl / rm / sft section; sections "
        f"{sorted(config.keys())}): pass --step"
    )


def target_of(config: Any) -> tuple[str, int]:
    """(topology, slices) a config names in `train.topology` / `train.slices` ("" if none)."""
    train = config.get("train") if hasattr(config, "get") else None
    if train is None or "topology" not in train:
        return "", 1
    return str(train.topology), int(train.get("slices", 1))


def run(
    config: Any,
    config_name: str,
    topology: str,
    slices: int = 1,
    step: str = "",
    loop_costs: bool = True,
) -> AOTReport:
    """Builds and compiles the config's `step` ("" = `step_of(config)`) for `topology` x
    `slices`; returns the report."""
    step = step or step_of(config)
    if step not in STEPS:
        raise ValueError(f"--step={step!r}: expected one of {STEPS}")
    devices = topology_devices(topology, slices)
    mesh = build_mesh(config, devices)
    program = PROGRAMS[step](config, mesh)
    return compile_report(
        program,
        config_name=config_name,
        topology=topology,
        slices=slices,
        devices=devices,
        loop_costs=loop_costs,
    )
