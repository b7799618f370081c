"""The GRPO step at long-tailed lengths with and without length-bucketed training.

    python benchmarks/length_buckets.py                 # 1 device, the default grid
    python benchmarks/length_buckets.py 2 0,1 8,8 8,16  # 2 CPU devices, (buckets, slices) pairs

benchmarks/grpo_step.py's long-tail workload on r1 alone (tiny Qwen2 shape, 16 prompts x G 8,
128-token budget, lengths forced as there, beta 0.04, Adam, 64 slots) with each
`(GRPOConfig.length_buckets, num_microbatches)` pair: compile time, median seconds per step
over 4 steps after the first, the positions one forward runs (`r1.rl.lengths.bucket_widths`
applied to the sorted lengths) and the loss (the same for every pair: the update does not
depend on the slicing). Last line: `length_buckets_speedup: X`, the full-width step's seconds
over the fastest pair's.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce")
DEVICES = int(sys.argv[1]) if len(sys.argv) > 1 else 1
PAIRS = [tuple(map(int, pair.split(","))) for pair in sys.argv[2:]] or [
    (0, 1),
    (4, 4),
    (8, 8),
    (8, 16),
]


def positions(lengths, prompt_len: int, new_tokens: int, buckets: int, slices: int) -> int:
    """Token positions one forward over the rows runs with `buckets` widths over `slices`."""
    import numpy as np

    from r1.rl.lengths import bucket_widths

    ordered = np.sort(np.asarray(lengths))
    widths = np.asarray(bucket_widths(new_tokens, buckets))
    per = len(ordered) // slices
    total = 0
    for s in range(slices):
        longest = ordered[s * per : (s + 1) * per].max()
        total += (prompt_len + widths[np.searchsorted(widths, longest)]) * per
    return int(total)


def main() -> None:
    from r1 import sharding

    sharding.use_cpu_devices(DEVICES)
    import grpo_step as workload  # benchmarks/ is this script's sys.path[0]
    import jax
    import jax.numpy as jnp
    import optax
    from rollout_lengths import draw_lengths

    from r1.models import hf
    from r1.rl.grpo import GRPOLossConfig
    from r1.rl.step import GRPOConfig, make_grpo_step
    from r1.sampling.sampler import SamplingConfig, left_pad
    from r1.testing import token_share_scorer
    from r1.train.state import init_train_state

    rows, new = workload.NUM_PROMPTS * workload.GROUP, workload.NEW_TOKENS
    _, model = hf.load(workload._save(tempfile.mkdtemp(), "tiny"))
    optimizer = optax.adam(workload.LR)
    graphdef, initial = init_train_state(model, optimizer, seed=0, with_reference=True)
    lengths = draw_lengths(rows, new)
    tokens, mask = left_pad(workload._prompt_ids(workload.SIZES["tiny"]["vocab_size"]), 16, 0)
    batch = {
        "prompt_tokens": jnp.asarray(tokens),
        "prompt_mask": jnp.asarray(mask),
        "forced_lengths": jnp.asarray(lengths),
    }
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=DEVICES))
    reward = token_share_scorer(workload.TARGET)
    print(
        f"{DEVICES} CPU device(s), {rows} rows, lengths mean {lengths.mean():.1f}, longest "
        f"{lengths.max()}, real positions {rows * 16 + int(lengths.sum())}"
    )
    print("| buckets / slices | positions | compile s | s/step | loss |\n|---|---:|---:|---:|---:|")
    seconds = {}
    for buckets, slices in PAIRS:
        config = GRPOConfig(
            group_size=workload.GROUP,
            sampling=SamplingConfig(
                max_new_tokens=new,
                num_samples=workload.GROUP,
                temperature=1.0,
                eos_ids=(workload.EOS_ID,),
                pad_id=workload.PAD_ID,
                slots=64,
            ),
            loss=GRPOLossConfig(beta=workload.BETA, aggregation="sequence_mean"),
            num_microbatches=slices,
            length_buckets=buckets,
        )
        state = jax.tree.map(jnp.copy, initial)
        step = make_grpo_step(graphdef, optimizer, config, reward, mesh, state, batch)
        with sharding.use_mesh(mesh):
            start = time.perf_counter()
            compiled = step.lower(state, batch).compile()
            compile_s = time.perf_counter() - start
            times = []
            for _ in range(5):
                start = time.perf_counter()
                state, metrics, _ = compiled(state, batch)
                jax.block_until_ready(state)
                times.append(time.perf_counter() - start)
        seconds[(buckets, slices)] = median = statistics.median(times[1:])
        print(
            f"| {buckets} / {slices} | {positions(lengths, 16, new, buckets, slices)} "
            f"| {compile_s:.1f} | {median:.2f} | {float(metrics['loss']):.5f} |",
            flush=True,
        )
    full = [s for (buckets, _), s in seconds.items() if buckets <= 1]
    if full:
        print(f"length_buckets_speedup: {min(full) / min(seconds.values()):.2f}")


if __name__ == "__main__":
    main()
