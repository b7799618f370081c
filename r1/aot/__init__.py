"""Ahead-of-time compilation of r1's steps for TPU pods on a CPU-only host.

`report` compiles a config's program for a topology and reads its memory and cost (`loops`
counts every loop of the compiled program, `cost` splits it into rollout and update); `programs`
builds the GRPO, SFT and reward-model programs exactly as the trainers do; `hlo_buffers` reads
the compiler's buffer assignment. The names below are the public API.
"""

from r1.aot.cost import (
    StepCost,
    ideal_decode_step_bytes,
    rollout_hlo,
    rollout_loops,
    step_cost,
)
from r1.aot.hlo_buffers import Buffer, parse_buffer_assignment
from r1.aot.loops import Cost, Loop, LoopCount, count_loops
from r1.aot.programs import (
    Program,
    global_bytes,
    grpo_program,
    kv_bytes_per_token,
    kv_cache_bytes,
    rm_program,
    sft_program,
    shard_bytes,
)
from r1.aot.report import (
    CHIPS,
    STEPS,
    AOTReport,
    ChipSpec,
    build_mesh,
    chip_for,
    compile_report,
    pod_mesh_config,
    roofline_seconds,
    run,
    step_of,
    target_of,
    topology_devices,
    worst_case_decode_steps,
)

__all__ = [
    "CHIPS",
    "STEPS",
    "AOTReport",
    "Buffer",
    "Cost",
    "Loop",
    "LoopCount",
    "StepCost",
    "ChipSpec",
    "Program",
    "build_mesh",
    "chip_for",
    "compile_report",
    "count_loops",
    "global_bytes",
    "ideal_decode_step_bytes",
    "rollout_hlo",
    "grpo_program",
    "kv_bytes_per_token",
    "kv_cache_bytes",
    "parse_buffer_assignment",
    "pod_mesh_config",
    "rm_program",
    "roofline_seconds",
    "rollout_loops",
    "run",
    "sft_program",
    "shard_bytes",
    "step_cost",
    "step_of",
    "target_of",
    "topology_devices",
    "worst_case_decode_steps",
]
