"""Rollouts at realistic lengths: r1 static batch vs r1 slots vs transformers `generate` (CPU).

    python benchmarks/rollout_lengths.py              # tiny and small models
    python benchmarks/rollout_lengths.py --tiny-only  # tiny model only (~8 min, loaded 2 cores)

Workload: 128 rows (16 prompts of 16 tokens x G = 8 completions each), at most 512 new tokens.
Each row's length (tokens, EOS included) is drawn once, seeded, from a lognormal with median
15% of 512 and 99th percentile 512 (sigma = ln(1 / 0.15) / 2.326), rounded and clipped to
[1, 512]. Both sides are forced to those lengths: r1 through `sample(..., forced_lengths=...)`
(EOS masked out before the row's last token and the only choice at it), transformers through a
`LogitsProcessor` doing the same per row of `generate`'s batch (prompt p repeated 8 times: row
p * 8 + g, r1's row order). Both decode greedily (any token is as costly as another; the lengths
are what matter). The script asserts that each side produced exactly the drawn lengths, and that
r1's `decode_steps` is the longest row for the static batch and
`r1.sampling.slots.expected_decode_steps` with slots.

Configurations: r1 static (`SamplingConfig.slots=0`: all 128 rows decode until the longest has
ended), r1 with S in {8, 16, 32, 64} slots (continuous batching), transformers `generate` (a static
batch that stops when every row has ended; finished rows decode padding). The same Qwen2-shaped
weights as benchmarks/sampler.py (random, seed 0, saved once with `save_pretrained`) load into
r1 (`r1.models.hf.load`) and into transformers. Each measurement runs in its own subprocess;
r1 runs on 1 CPU device and on one device per core (`r1.sharding.use_cpu_devices`, rows and
slots split over a `data` mesh) and the best is kept per configuration; torch runs at 1 and 2
threads, best kept. Warm-up: r1 runs its compiled program once with every length forced to 1
(same shapes, compile time printed apart), transformers generates 8 tokens. Times are medians
of the repeats (tiny: 3, small: 1).

Per configuration: useful tokens/s (sum of the drawn lengths / seconds), decode steps,
occupancy (useful tokens / (decode steps x rows decoded at once)), compile seconds.

Last lines: `slots_speedup_vs_transformers: Y` (best r1 slots over transformers, useful tokens/s,
tiny model), then `slots_speedup_vs_static: X` (best r1 slots over r1 static, tiny model).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

# The model shapes and XLA flags of benchmarks/sampler.py (benchmarks/ is sys.path[0]).
from sampler import R1_XLA_FLAGS, SIZES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_PROMPTS = 16
GROUP = 8
ROWS = NUM_PROMPTS * GROUP
PROMPT_LEN = 16
MAX_NEW = 512
MEDIAN_SHARE = 0.15  # median length / MAX_NEW
Z99 = 2.326  # the standard normal's 99th percentile
PAD_ID, EOS_ID = 0, 1
SLOTS = (8, 16, 32, 64)
REPEATS = {"tiny": 3, "small": 1}


def draw_lengths(rows: int = ROWS, max_new: int = MAX_NEW, seed: int = 0):
    """int32[rows] completion lengths (tokens, EOS included): lognormal with median
    MEDIAN_SHARE * max_new and 99th percentile max_new, rounded, clipped to [1, max_new]."""
    import numpy as np

    sigma = math.log(1.0 / MEDIAN_SHARE) / Z99
    draws = np.random.default_rng(seed).lognormal(math.log(MEDIAN_SHARE * max_new), sigma, rows)
    return np.clip(np.round(draws), 1, max_new).astype(np.int32)


def _prompts(vocab: int):
    """int32[NUM_PROMPTS, PROMPT_LEN] prompt ids (seeded, no special ids)."""
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.integers(3, vocab, size=(NUM_PROMPTS, PROMPT_LEN)).astype("int32")


def _peak_mib() -> float:
    """This process's peak resident memory in MiB (VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker_r1(path: str, size: str, slots: int, devices: int, repeats: int) -> dict:
    """r1's sampler on `devices` CPU devices (rows, or slots, split over a `data` mesh), with
    `slots` decode slots (0: static batch), at the drawn lengths."""
    from r1 import sharding

    sharding.use_cpu_devices(devices)
    import jax
    import numpy as np
    from flax import nnx

    from r1.models import hf
    from r1.sampling import SamplingConfig, make_sampler
    from r1.sampling.slots import expected_decode_steps

    _, model = hf.load(path)
    graphdef, state = nnx.split(model)
    config = SamplingConfig(
        max_new_tokens=MAX_NEW,
        num_samples=GROUP,
        greedy=True,
        eos_ids=(EOS_ID,),
        pad_id=PAD_ID,
        slots=slots,
    )
    mesh = sharding.make_mesh(sharding.MeshConfig(data=devices, fsdp=1))
    with sharding.use_mesh(mesh):
        state = sharding.place_state(state, mesh)
    fn = make_sampler(graphdef, config, mesh)
    prompts = _prompts(SIZES[size]["vocab_size"])
    mask = np.ones(prompts.shape, bool)
    key = jax.random.key(0)
    lengths = draw_lengths()
    row_ids = np.arange(ROWS, dtype=np.int32)
    args = (state, prompts, mask, key, row_ids)
    start = time.perf_counter()
    compiled = fn.lower(*args, lengths).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(*args, np.ones_like(lengths)))  # warm-up: one token per row
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(*args, lengths))
        times.append(time.perf_counter() - start)
    produced = np.asarray(out.lengths)
    assert (produced == lengths).all(), f"r1 lengths differ from the drawn ones: {produced}"
    steps = int(out.decode_steps)
    expected = expected_decode_steps(lengths.tolist(), slots) if slots else int(lengths.max())
    assert steps == expected, f"r1 decode steps {steps}, expected {expected}"
    seconds = statistics.median(times)
    width = min(slots, ROWS) if slots else ROWS
    return {
        "tokens_per_sec": int(lengths.sum()) / seconds,
        "seconds": seconds,
        "decode_steps": steps,
        "occupancy": int(lengths.sum()) / (steps * width),
        "compile_s": compile_s,
        "peak_mib": _peak_mib(),
        "devices": devices,
        "first_tokens": np.asarray(out.tokens)[0, : min(8, int(lengths[0]))].tolist(),
    }


def force_lengths_processor(lengths, prompt_len: int, eos: int):
    """A transformers `LogitsProcessor` for `generate` over B rows: row b emits `eos` as its
    lengths[b]-th new token (index lengths[b] - 1) and never before. lengths: int64[B] torch
    tensor (tokens, EOS included); prompt_len: the (padded) prompt columns of `input_ids`."""
    import torch
    import transformers

    class ForceLengths(transformers.LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if scores.shape[0] != lengths.shape[0]:
                raise ValueError(f"{scores.shape[0]} rows generated, {lengths.shape[0]} lengths")
            index = input_ids.shape[1] - prompt_len
            last = lengths.to(scores.device) - 1
            scores = scores.clone()
            scores[index < last, eos] = -math.inf
            at = index == last
            scores[at] = -math.inf
            scores[at, eos] = 0.0
            return scores

    return ForceLengths()


def force_generate_lengths(model, lengths, eos: int) -> None:
    """Makes `model.generate` (what TRL's trainer calls, unwrapped, on one CPU process) force
    row i of each generation batch to end at lengths[i] tokens: a `force_lengths_processor`
    over the prompt columns of that call (benchmarks/grpo_step.py --lengths=longtail)."""
    import torch
    import transformers

    untouched = model.generate
    per_row = torch.tensor(lengths, dtype=torch.long)

    def generate(*args, **kwargs):
        prompt_len = kwargs["input_ids"].shape[1]
        processor = force_lengths_processor(per_row, prompt_len, eos)
        kwargs["logits_processor"] = transformers.LogitsProcessorList([processor])
        return untouched(*args, **kwargs)

    model.generate = generate


def worker_transformers(path: str, size: str, threads: int, repeats: int) -> dict:
    """transformers `generate` (greedy, static batch, its own early stop) at the drawn lengths,
    forced by a `LogitsProcessor`, on `threads` torch threads."""
    import torch
    import transformers

    torch.set_num_threads(threads)
    model = transformers.Qwen2ForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = torch.tensor(_prompts(SIZES[size]["vocab_size"]), dtype=torch.long)
    prompts = prompts.repeat_interleave(GROUP, dim=0)  # row p * GROUP + g continues prompt p
    lengths = torch.tensor(draw_lengths(), dtype=torch.long)
    kwargs = dict(
        max_new_tokens=MAX_NEW,
        do_sample=False,
        attention_mask=torch.ones_like(prompts),
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        logits_processor=transformers.LogitsProcessorList(
            [force_lengths_processor(lengths, PROMPT_LEN, EOS_ID)]
        ),
    )
    with torch.inference_mode():
        model.generate(prompts, **{**kwargs, "max_new_tokens": 8})
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = model.generate(prompts, **kwargs)
            times.append(time.perf_counter() - start)
    completion = out[:, PROMPT_LEN:]
    is_eos = completion == EOS_ID
    produced = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, completion.shape[1])
    assert torch.equal(produced, lengths), f"transformers lengths differ: {produced.tolist()}"
    seconds = statistics.median(times)
    return {
        "tokens_per_sec": int(lengths.sum()) / seconds,
        "seconds": seconds,
        "decode_steps": completion.shape[1],
        "occupancy": int(lengths.sum()) / (completion.shape[1] * ROWS),
        "peak_mib": _peak_mib(),
        "threads": threads,
        "first_tokens": completion[0, : min(8, int(lengths[0]))].tolist(),
    }


def _spawn(args: list[str], env_extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update(env_extra or {})
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _save_weights(directory: str, sizes: list[str]) -> dict[str, str]:
    """Random Qwen2 weights (seed 0) per size, saved with `save_pretrained`; their paths."""
    import torch
    import transformers

    paths = {}
    for size in sizes:
        torch.manual_seed(0)
        cfg = transformers.Qwen2Config(
            **SIZES[size],
            max_position_embeddings=1024,
            tie_word_embeddings=False,
            eos_token_id=EOS_ID,
            pad_token_id=PAD_ID,
            bos_token_id=None,
        )
        paths[size] = os.path.join(directory, size)
        transformers.Qwen2ForCausalLM(cfg).save_pretrained(paths[size])
    return paths


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load avg {one:.2f} (1 min) / {five:.2f} (5 min) on {os.cpu_count()} cores"


def _run_size(path: str, size: str, cores: int) -> dict:
    """Every configuration of one model size: {name: best result}, printed as it goes."""
    env = {"XLA_FLAGS": R1_XLA_FLAGS if size == "tiny" else ""}
    repeats = REPEATS[size]
    counts = [1] + ([cores] if cores > 1 else [])
    best = {}
    for slots in (0, *SLOTS):
        runs = {}
        for devices in counts:
            if slots and slots % devices:
                continue
            args = ["r1", path, size, str(slots), str(devices), str(repeats)]
            runs[devices] = _spawn(args, env)
        top = max(runs.values(), key=lambda r: r["tokens_per_sec"])
        name = f"r1 slots={slots}" if slots else "r1 static"
        best[name] = top
        per_count = ", ".join(f"{n} dev {r['tokens_per_sec']:.0f}" for n, r in runs.items())
        print(
            f"  [{size}] {name:13s} {top['tokens_per_sec']:8.0f} tok/s ({per_count}) "
            f"{top['seconds']:.2f} s, {top['decode_steps']} decode steps, occupancy "
            f"{top['occupancy']:.0%}, compile {top['compile_s']:.1f} s ({_load()})",
            flush=True,
        )
    peers = {t: _spawn(["hf", path, size, str(t), str(repeats)]) for t in (1, 2)}
    top = max(peers.values(), key=lambda r: r["tokens_per_sec"])
    best["transformers"] = top
    per_threads = ", ".join(f"{t} thr {r['tokens_per_sec']:.0f}" for t, r in peers.items())
    print(
        f"  [{size}] transformers  {top['tokens_per_sec']:8.0f} tok/s ({per_threads}) "
        f"{top['seconds']:.2f} s, {top['decode_steps']} decode steps, occupancy "
        f"{top['occupancy']:.0%} ({_load()})",
        flush=True,
    )
    return best


def _report(size: str, best: dict) -> tuple[float, float]:
    """Prints one size's table; returns (best slots / static, best slots / transformers)."""
    print(f"\n{size}: {ROWS} rows x <= {MAX_NEW} new tokens, greedy, forced lengths")
    print("| configuration | useful tok/s | seconds | decode steps | occupancy | compile s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in best.items():
        where = f"{r['devices']} dev" if "devices" in r else f"{r['threads']} threads"
        compile_s = f"{r['compile_s']:.1f}" if "compile_s" in r else "-"
        print(
            f"| {name} ({where}) | {r['tokens_per_sec']:.0f} | {r['seconds']:.2f} "
            f"| {r['decode_steps']} | {r['occupancy']:.0%} | {compile_s} |"
        )
    slot_names = [n for n in best if n.startswith("r1 slots")]
    top = max(slot_names, key=lambda n: best[n]["tokens_per_sec"])
    static = best["r1 static"]["tokens_per_sec"]
    peer = best["transformers"]["tokens_per_sec"]
    same = best[top]["first_tokens"] == best["transformers"]["first_tokens"]
    print(
        f"{size}: best {top}: {best[top]['tokens_per_sec'] / static:.2f}x r1 static, "
        f"{best[top]['tokens_per_sec'] / peer:.2f}x transformers; r1 static "
        f"{static / peer:.2f}x transformers; same greedy first tokens (row 0): {same}"
    )
    return best[top]["tokens_per_sec"] / static, best[top]["tokens_per_sec"] / peer


def main() -> None:
    import numpy as np

    from r1.sharding import host_cores

    start = time.perf_counter()
    print(f"machine at start: {_load()}", flush=True)
    lengths = draw_lengths()
    print(
        f"lengths ({ROWS} rows, max_new_tokens {MAX_NEW}): mean {lengths.mean():.1f}, median "
        f"{np.median(lengths):.0f}, p99 {np.percentile(lengths, 99):.0f}, max {lengths.max()}, "
        f"total {lengths.sum()} tokens ({lengths.sum() / (ROWS * MAX_NEW):.0%} of "
        f"{ROWS} x {MAX_NEW}); list-scheduled decode steps: "
        + ", ".join(f"S={s} {_expected_steps(lengths, s)}" for s in SLOTS),
        flush=True,
    )
    sizes = ["tiny"] if "--tiny-only" in sys.argv else ["tiny", "small"]
    cores = host_cores()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = _spawn(["save", tmp, ",".join(sizes)])
        for size in sizes:
            results[size] = _run_size(paths[size], size, cores)
    print(f"machine at end: {_load()}; total wall time {time.perf_counter() - start:.0f} s")
    ratios = {size: _report(size, best) for size, best in results.items()}
    print(f"slots_speedup_vs_transformers: {ratios['tiny'][1]:.2f}")
    print(f"slots_speedup_vs_static: {ratios['tiny'][0]:.2f}")


def _expected_steps(lengths, slots: int) -> int:
    from r1.sampling.slots import expected_decode_steps

    return expected_decode_steps(lengths.tolist(), slots)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        kind, *rest = sys.argv[2:]
        if kind == "save":  # torch stays out of the main process
            out = _save_weights(rest[0], rest[1].split(","))
        elif kind == "r1":
            out = worker_r1(rest[0], rest[1], int(rest[2]), int(rest[3]), int(rest[4]))
        else:
            out = worker_transformers(rest[0], rest[1], int(rest[2]), int(rest[3]))
        print(json.dumps(out))
    else:
        main()
