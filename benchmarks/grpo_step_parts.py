"""Parts of benchmarks/grpo_step.py: r1's sampling timed alone (for the split of a step) and the
report (per model size, the table of both sides, the sampler's configurations in the long-tail
mode, the token checks and the split of a step)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def r1_sampling_seconds(graphdef, state, batch, config, mesh, repeats: int = 3) -> float:
    """Median seconds of the step's sampling alone: `r1.sampling.sampler.sample` jitted on its
    own with the step's shardings (for the split of the step's time, not part of it)."""
    import jax
    from flax import nnx

    from r1 import sharding
    from r1.sampling.sampler import sample

    def rollout(params, extra, batch, key):
        policy = nnx.merge(graphdef, params, extra)
        out = sample(
            policy,
            batch["prompt_tokens"],
            batch["prompt_mask"],
            key,
            config.sampling,
            forced_lengths=batch.get("forced_lengths"),
        )
        return out.tokens, out.logprobs

    fn = jax.jit(
        rollout,
        in_shardings=(
            sharding.state_shardings(state.params, mesh),
            sharding.state_shardings(state.extra, mesh),
            sharding.batch_shardings(batch, mesh),
            None,
        ),
    )
    key = jax.random.key(1)
    jax.block_until_ready(fn(state.params, state.extra, batch, key))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(state.params, state.extra, batch, key))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def slots_name(slots: int) -> str:
    """A sampler configuration's label."""
    return f"S={slots}" if slots else "static"


def report(
    size: str,
    result: dict,
    *,
    num_prompts: int,
    group: int,
    new_tokens: int,
    beta: float,
    lengths: Any,
    steps_timed: Callable[[dict], int],
    round_times: Callable[[dict], str],
) -> float:
    """Prints the tables of one model size and returns TRL's seconds per step over r1's.
    lengths: the long-tail mode's forced lengths int32[rows], None in the fixed mode."""
    ours, peers = result["r1"], result["trl"]
    ours_best = min(ours, key=lambda n: ours[n]["seconds_per_step"])
    r1 = ours[ours_best]
    best = min(peers, key=lambda t: peers[t]["seconds_per_step"])
    trl = peers[best]
    expected = num_prompts * group * new_tokens if lengths is None else int(lengths.sum())
    ratio = trl["seconds_per_step"] / r1["seconds_per_step"]
    print(f"\n{size}: {num_prompts} prompts x G={group} x {new_tokens} new tokens, beta={beta}")
    if lengths is not None:
        print(
            f"long-tailed lengths: mean {lengths.mean():.1f}, median "
            f"{statistics.median(lengths.tolist()):.0f}, longest {lengths.max()}, {expected} "
            f"tokens per step ({expected / (num_prompts * group * new_tokens):.0%} of "
            f"{num_prompts * group} x {new_tokens})"
        )
        for devices, run in sorted(ours.items()):
            alone = ", ".join(
                f"{slots_name(int(n))} {t:.2f} s" for n, t in run["slot_sampling_s"].items()
            )
            print(
                f"r1 ({devices} device(s)) sampler alone: {alone}; the step used "
                f"{slots_name(run['slots'])}: {run['decode_steps']:.0f} decode steps, "
                f"occupancy {run['slot_occupancy']:.0%}; training in {run['microbatches']} "
                f"length-ordered slices at {run['length_buckets']} widths"
            )
    print(
        "| side | s/step (median) | CPU s/step | first step s | steps timed | compile / init s "
        "| tokens/step | peak MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for devices, run in sorted(ours.items()):
        mark = ", best" if devices == ours_best else ""
        print(
            f"| r1 (one jitted program, {devices} CPU device{'s' if devices > 1 else ''}{mark}) "
            f"| {run['seconds_per_step']:.2f} "
            f"| {run['cpu_seconds_per_step']:.2f} | {run['first_step_s']:.2f} "
            f"| {steps_timed(run)} | compile {run['compile_s']:.1f} "
            f"| {run['generated_tokens_per_step'][-1]} | {run['peak_mib']:.0f} |"
        )
    for threads, peer in sorted(peers.items()):
        mark = ", best" if threads == best else ""
        print(
            f"| TRL GRPOTrainer (torch {threads} thread{'s' if threads > 1 else ''}{mark}) "
            f"| {peer['seconds_per_step']:.2f} | {peer['cpu_seconds_per_step']:.2f} "
            f"| {peer['first_step_s']:.2f} | {steps_timed(peer)} "
            f"| init {peer['init_s']:.1f} | {peer['generated_tokens_per_step'][-1]} "
            f"| {peer['peak_mib']:.0f} |"
        )
    for devices, run in sorted(ours.items()):
        print(f"r1 ({devices} device(s)) step times: {round_times(run)} s")
    for threads, peer in sorted(peers.items()):
        print(
            f"TRL {threads} thread(s) step times: {round_times(peer)} s "
            f"(step end to step end: {peer['end_to_end_s']:.2f} s)"
        )
    ok_r1 = all(n == expected for run in ours.values() for n in run["generated_tokens_per_step"])
    if lengths is not None:  # and every row at its own drawn length, on both sides
        ok_r1 = ok_r1 and all(run["row_lengths_ok"] for run in ours.values())
        ok_trl_rows = all(peer["row_lengths_ok"] for peer in peers.values())
    ok_trl = all(
        n == expected and rows == num_prompts * group
        for peer in peers.values()
        for n, rows in zip(peer["generated_tokens_per_step"], peer["rows_per_step"], strict=True)
    )
    print(
        f"generated tokens per step: expected {expected}; r1 {r1['generated_tokens_per_step']} "
        f"(completions {r1['completion_shape']}); TRL {trl['generated_tokens_per_step']} over "
        f"{trl['rows_per_step'][-1]} rows; all as expected: {ok_r1 and ok_trl}"
        + ("" if lengths is None else f"; every row at its drawn length: {ok_r1 and ok_trl_rows}")
    )
    trl_rest = trl["seconds_per_step"] - trl["sampling_s"]
    print(
        f"split of a step: r1 sampling {r1['sampling_s']:.2f} s (jitted alone) + the rest "
        f"{r1['seconds_per_step'] - r1['sampling_s']:.2f} s; TRL generation "
        f"{trl['sampling_s']:.2f} s + the rest (rewards, reference and policy passes, optimizer) "
        f"{trl_rest:.2f} s. A step at 3x TRL ({trl['seconds_per_step'] / 3:.2f} s) is "
        f"{trl['seconds_per_step'] / 3 / trl_rest:.2f}x the time TRL's training half takes"
    )
    print(
        f"{size} seconds per step: r1 {r1['seconds_per_step']:.2f} ({ours_best} device(s)), TRL "
        f"{trl['seconds_per_step']:.2f} (torch {best} threads): TRL / r1 = {ratio:.2f}; "
        f"r1 {expected / r1['seconds_per_step']:.0f} generated tok/s per step vs TRL "
        f"{expected / trl['seconds_per_step']:.0f}"
    )
    return ratio
