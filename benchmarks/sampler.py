"""Greedy decoding throughput: r1's compiled sampler vs transformers `generate` (torch, CPU).

    python benchmarks/sampler.py            # both sizes, batch 32 and 1, 256 new tokens

The same Qwen2-shaped weights (saved once with `save_pretrained`) are loaded into r1 with
`r1.models.hf.load` and into transformers. Each measurement runs in its own subprocess (clean
peak-memory numbers, no thread-pool interference); torch runs at 1 and 2 threads and its best is
kept; r1 runs on 1 CPU device and on one device per core (`r1.sharding.use_cpu_devices`, batch
rows split over a `data` mesh; a batch that does not divide stays on one device) and its best is
kept. Times are medians of several runs after a warm-up (r1's compile time is printed apart).
For the small model the script measures this CPU's float32 matmul peak and reports the fraction
of it that decoding achieves (2 x non-embedding parameters + lm_head FLOPs per token).

Last line: `speedup_vs_transformers: X` (r1 tokens/s over transformers tokens/s, tiny model,
batch 32 x 256 new tokens).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEW_TOKENS = 256
PROMPT_LEN = 16
SIZES = {
    "tiny": dict(
        vocab_size=512,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=512,
    ),
    "small": dict(
        vocab_size=32000,
        hidden_size=512,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        intermediate_size=1408,
    ),
}
R1_XLA_FLAGS = "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce"


def _prompts(batch: int, vocab: int):
    import numpy as np

    return np.random.default_rng(0).integers(3, vocab, size=(batch, PROMPT_LEN)).astype("int32")


def _peak_mib() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would include the parent's)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_transformers(path: str, size: str, batch: int, threads: int, repeats: int) -> dict:
    import torch
    import transformers

    torch.set_num_threads(threads)
    model = transformers.Qwen2ForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = torch.tensor(_prompts(batch, SIZES[size]["vocab_size"]), dtype=torch.long)
    kwargs = dict(
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        do_sample=False,
        attention_mask=torch.ones_like(prompts),
        pad_token_id=0,
        eos_token_id=None,
    )
    with torch.inference_mode():
        model.generate(prompts, **{**kwargs, "max_new_tokens": 8, "min_new_tokens": 8})
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = model.generate(prompts, **kwargs)
            times.append(time.perf_counter() - start)
    assert out.shape[1] == PROMPT_LEN + NEW_TOKENS
    seconds = statistics.median(times)
    return {
        "tokens_per_sec": batch * NEW_TOKENS / seconds,
        "peak_mib": _peak_mib(),
        "first_tokens": out[0, PROMPT_LEN : PROMPT_LEN + 8].tolist(),
    }


def worker_r1(path: str, size: str, batch: int, repeats: int, devices: int) -> dict:
    """r1 on `devices` CPU devices (`r1.sharding.use_cpu_devices`): with more than one, the
    batch rows are split over a `data` mesh, each device decoding its share on its own core."""
    from r1 import sharding

    sharding.use_cpu_devices(devices)
    import jax
    import numpy as np
    from flax import nnx

    from r1.models import hf
    from r1.sampling import SamplingConfig, make_sampler

    _, model = hf.load(path)
    graphdef, state = nnx.split(model)
    config = SamplingConfig(max_new_tokens=NEW_TOKENS, greedy=True)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=devices, fsdp=1))
    with sharding.use_mesh(mesh):
        state = sharding.place_state(state, mesh)
    fn = make_sampler(graphdef, config, mesh)
    prompts = _prompts(batch, SIZES[size]["vocab_size"])
    mask = np.ones(prompts.shape, bool)
    key = jax.random.key(0)
    start = time.perf_counter()
    compiled = fn.lower(state, prompts, mask, key).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(state, prompts, mask, key))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(state, prompts, mask, key))
        times.append(time.perf_counter() - start)
    assert int(out.lengths.min()) == NEW_TOKENS
    seconds = statistics.median(times)
    return {
        "tokens_per_sec": batch * NEW_TOKENS / seconds,
        "peak_mib": _peak_mib(),
        "compile_s": compile_s,
        "devices": devices,
        "first_tokens": out.tokens[0, :8].tolist(),
    }


def worker_matmul_peak() -> dict:
    import jax
    import jax.numpy as jnp

    n = 2048
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    jax.block_until_ready(f(a))
    times = []
    for _ in range(5):
        start = time.perf_counter()
        jax.block_until_ready(f(a))
        times.append(time.perf_counter() - start)
    return {"gflops": 2 * n**3 / statistics.median(times) / 1e9}


def worker_decode_gemm(size: str, batch: int) -> dict:
    """The matmul work of one decode step alone (every weight matrix of the model times a
    [batch, in] activation, lm head included, no attention, no cache) in one jitted loop: the
    rate this CPU reaches on decode-shaped GEMMs, a tighter ceiling than the large-GEMM peak."""
    import jax
    import jax.numpy as jnp

    d = SIZES[size]
    h, f, v = d["hidden_size"], d["intermediate_size"], d["vocab_size"]
    head = h // d["num_attention_heads"]
    q, kv = d["num_attention_heads"] * head, d["num_key_value_heads"] * head
    shapes = [(h, q), (h, kv), (h, kv), (q, h), (h, f), (h, f), (f, h)] * d["num_hidden_layers"]
    keys = jax.random.split(jax.random.key(0), len(shapes) + 1)
    weights = [jax.random.normal(k, s, jnp.float32) * 0.02 for k, s in zip(keys, shapes)]
    head_w = jax.random.normal(keys[-1], (h, v), jnp.float32) * 0.02
    steps = 32

    inputs = {
        n: jax.random.normal(jax.random.key(n), (batch, n), jnp.float32) for n in {h, q, f}
    }

    @jax.jit
    def run(scale, inputs, weights, head_w):
        def body(_, scale):
            # inputs depend on the loop carry, so XLA cannot hoist the matmuls out of the loop
            total = jnp.zeros((), jnp.float32)
            for w in [*weights, head_w]:
                total = total + jnp.sum((inputs[w.shape[0]] * scale) @ w)
            return scale + 1e-12 * total

        return jax.lax.fori_loop(0, steps, body, scale)

    scale = jnp.ones((), jnp.float32)
    jax.block_until_ready(run(scale, inputs, weights, head_w))
    times = []
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(run(scale, inputs, weights, head_w))
        times.append(time.perf_counter() - start)
    flops = 2.0 * batch * (sum(a * b for a, b in shapes) + h * v) * steps
    return {"gflops": flops / statistics.median(times) / 1e9}


def _spawn(args: list[str], env_extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update(env_extra or {})
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _save_weights(directory: str) -> dict[str, str]:
    import torch
    import transformers

    paths = {}
    for size, dims in SIZES.items():
        torch.manual_seed(0)
        cfg = transformers.Qwen2Config(
            **dims, max_position_embeddings=1024, tie_word_embeddings=False
        )
        model = transformers.Qwen2ForCausalLM(cfg)
        paths[size] = os.path.join(directory, size)
        model.save_pretrained(paths[size])
    return paths


def _non_embedding_flops_per_token(size: str) -> float:
    d = SIZES[size]
    h, layers, f, v = (
        d["hidden_size"],
        d["num_hidden_layers"],
        d["intermediate_size"],
        d["vocab_size"],
    )
    head = h // d["num_attention_heads"]
    attn = h * head * (d["num_attention_heads"] * 2 + d["num_key_value_heads"] * 2)
    return 2.0 * (layers * (attn + 3 * h * f) + h * v)


def main() -> None:
    repeats = {"tiny": 5, "small": 3}
    rows = []
    from r1.sharding import host_cores

    cores = host_cores()
    with tempfile.TemporaryDirectory() as tmp:
        paths = _save_weights(tmp)
        peak = _spawn(["matmul"], {"XLA_FLAGS": ""})["gflops"]
        print(f"float32 matmul peak (jax, 2048^3): {peak:.1f} GFLOP/s")
        gemm = _spawn(["decode_gemm", "small", "32"], {"XLA_FLAGS": ""})["gflops"]
        print(f"decode-shaped GEMMs alone (small model's weights x [32, in]): {gemm:.1f} GFLOP/s")
        for size in ("tiny", "small"):
            for batch in (32, 1):
                counts = [1] + ([cores] if cores > 1 and batch % cores == 0 else [])
                ours = {
                    n: _spawn(
                        ["r1", paths[size], size, str(batch), str(repeats[size]), str(n)],
                        {"XLA_FLAGS": R1_XLA_FLAGS if size == "tiny" else ""},
                    )
                    for n in counts
                }
                r1 = max(ours.values(), key=lambda r: r["tokens_per_sec"])
                peers = {
                    t: _spawn(["hf", paths[size], size, str(batch), str(t), str(repeats[size])])
                    for t in (1, 2)
                }
                best_threads = max(peers, key=lambda t: peers[t]["tokens_per_sec"])
                hf = peers[best_threads]
                same = r1["first_tokens"] == hf["first_tokens"]
                ratio = r1["tokens_per_sec"] / hf["tokens_per_sec"]
                roofline = ""
                if size == "small":
                    achieved = r1["tokens_per_sec"] * _non_embedding_flops_per_token(size) / 1e9
                    roofline = (
                        f"  r1 {achieved:.1f} GFLOP/s = {achieved / peak:.0%} of the large-GEMM "
                        f"peak, {achieved / gemm:.0%} of the decode-shaped GEMM rate"
                    )
                rows.append((size, batch, r1, hf, best_threads, ratio))
                per_count = ", ".join(
                    f"{n} device{'s' if n > 1 else ''} {ours[n]['tokens_per_sec']:.0f}"
                    for n in counts
                )
                print(
                    f"{size:5s} b{batch:<3d} r1 {r1['tokens_per_sec']:9.0f} tok/s "
                    f"({per_count}; compile {r1['compile_s']:.1f}s, "
                    f"peak {r1['peak_mib']:.0f} MiB)  "
                    f"transformers {hf['tokens_per_sec']:8.0f} tok/s ({best_threads} threads, "
                    f"peak {hf['peak_mib']:.0f} MiB)  ratio {ratio:.2f}x  "
                    f"same greedy tokens: {same}{roofline}",
                    flush=True,
                )
    headline = next(r for r in rows if r[0] == "tiny" and r[1] == 32)
    print(f"speedup_vs_transformers: {headline[5]:.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind, *rest = sys.argv[2:]
        if kind == "matmul":
            result = worker_matmul_peak()
        elif kind == "decode_gemm":
            result = worker_decode_gemm(rest[0], int(rest[1]))
        elif kind == "r1":
            result = worker_r1(rest[0], rest[1], int(rest[2]), int(rest[3]), int(rest[4]))
        else:
            result = worker_transformers(rest[0], rest[1], int(rest[2]), int(rest[3]), int(rest[4]))
        print(json.dumps(result))
    else:
        main()
