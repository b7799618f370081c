"""r1 on one accelerator: decode bandwidth vs the HBM roofline, training MFU, one GRPO step.

    python benchmarks/accelerator.py            # on a GPU (or TPU) host: Qwen2.5-1.5B shapes
    python benchmarks/accelerator.py --model qwen2_5_0_5b   # Qwen2.5-0.5B shapes
    python benchmarks/accelerator.py --smoke    # tiny shapes on CPU: checks the script runs

Decode variants (`--only` decode_scanned, decode_unrolled, decode_cmdbuf) compare the default
(the sampler splits the preset's scanned layers) with keeping the layer scan, a model built
unscanned, and CUDA-graph command buffers for the decode loop.

Everything runs on one chip, bfloat16 compute, random weights of the model's published shapes
(no download; throughput does not depend on the values, and no completion ends early: no EOS).
Each section runs in its own subprocess (its memory is returned before the next) and prints one
JSON line; `--out FILE` also appends those lines to FILE as they come.

1. `chip`: the measured bf16 matmul rate (8192^3) and device-to-device copy bandwidth (bytes
   read + written per second), beside the chip's published peaks where its kind is known.
2. `decode`: greedy decoding with r1's compiled sampler, prompts of 128 tokens, 256 new tokens,
   at several batch sizes, bf16 weights (and once with float32 master weights, as the GRPO
   step samples from; the sampler casts those to bf16 once per call). Per decode step the
   ideal traffic is every weight byte once plus the KV cache up to the current position for
   every row; the summary divides that traffic over the measured time by the measured copy
   bandwidth. The peer: transformers `generate`
   (torch, same shapes, bf16, default dynamic cache, SDPA attention) in its own subprocess.
3. `train`: r1's SFT step (forward + backward + AdamW, float32 master weights, bf16 compute,
   full remat, the trainer's own `make_sft_step`) on packed rows; MFU counts model FLOPs only
   (6 N per token for the weights, 12 x layers x heads x head_dim x context per token for
   attention scores, i.e. PaLM's formula without remat recomputation) over the chip's peak.
4. `grpo`: one whole GRPO step (16 prompts x G=8, 64-token prompts, 512 new tokens, beta 0.04,
   mu = 1, float32 master weights), seconds per step, generated tokens per second, and the model
   FLOPs of its three passes (sampling 2N per generated token, reference forward 2N and policy
   forward + backward 6N per token of the 128 x 576 sequences).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# Published dense bf16 peaks (TFLOP/s) and HBM bandwidths (TB/s), by jax `device_kind` prefix.
PEAKS = {
    "NVIDIA H200": (989.4, 4.8),
    "NVIDIA H100": (989.4, 3.35),  # SXM
    "NVIDIA A100": (312.0, 2.04),
    "TPU v5p": (459.0, 2.76),
    "TPU v5 lite": (197.0, 0.82),
    "TPU v4": (275.0, 1.2),
}


MODELS = ("qwen2_5_0_5b", "qwen2_5_1_5b")  # presets in configs/models.py
# Puts the decode loop's while loop (and its conditionals) into CUDA graphs on top of XLA's
# default command-buffer commands, so one decode step is not launched kernel by kernel.
COMMAND_BUFFER_FLAGS = "--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL"
_MODEL = ["qwen2_5_1_5b"]  # the worker's model, set from its --model= argument


def _model_dims(smoke: bool) -> dict:
    from configs import models

    dims = models.qwen2_tiny() if smoke else getattr(models, _MODEL[0])()
    if smoke:
        dims.update(dtype="bfloat16", remat_policy="full", scan_layers=True)
    return dims


def _settings(smoke: bool) -> dict:
    if smoke:
        return dict(
            prompt=16,
            new=32,
            batches=(1, 4),
            hf_batches=(1, 4),
            f32_batch=4,
            train_batch=2,
            train_len=128,
            train_steps=2,
            grpo_prompts=2,
            grpo_group=4,
            grpo_prompt=16,
            grpo_new=32,
            grpo_steps=2,
            matmul=512,
            copy_mib=64,
        )
    return dict(
        prompt=128,
        new=256,
        batches=(1, 32, 256),
        hf_batches=(1, 32),
        f32_batch=32,
        train_batch=8,
        train_len=2048,
        train_steps=5,
        grpo_prompts=16,
        grpo_group=8,
        grpo_prompt=64,
        grpo_new=512,
        grpo_steps=3,
        matmul=8192,
        copy_mib=2048,
    )


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ------------------------------------------------------------------------------------ chip
def section_chip(smoke: bool) -> dict:
    import jax
    import jax.numpy as jnp

    s = _settings(smoke)
    device = jax.devices()[0]
    n = s["matmul"]
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
    matmul = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(matmul(a, b))
    seconds = _median_time(lambda: jax.block_until_ready(matmul(a, b)), 10)
    elements = s["copy_mib"] * 2**20 // 4
    x = jnp.ones((elements,), jnp.float32)
    copy = jax.jit(lambda v: v * 1.0001)
    jax.block_until_ready(copy(x))
    copy_s = _median_time(lambda: jax.block_until_ready(copy(x)), 10)
    kind = device.device_kind
    peak = next((v for k, v in PEAKS.items() if kind.startswith(k)), (None, None))
    return {
        "section": "chip",
        "device_kind": kind,
        "platform": device.platform,
        "jax": jax.__version__,
        "matmul_tflops": 2 * n**3 / seconds / 1e12,
        "copy_tb_s": 2 * elements * 4 / copy_s / 1e12,
        "published_tflops": peak[0],
        "published_tb_s": peak[1],
    }


# ---------------------------------------------------------------------------------- decode
def _prompts(batch: int, length: int, vocab: int):
    import numpy as np

    return np.random.default_rng(0).integers(3, vocab, size=(batch, length)).astype("int32")


def _build(dims: dict, **overrides):
    """(config, one-device mesh, model) with random weights drawn on the host: normal(0, 0.02)
    matrices and embeddings, unit norm scales, zero biases. Drawing them with numpy and
    placing them avoids compiling the model's random initialiser, which took 24-122 s per
    section on an H200 (threefry over every tensor, a program per layer when unscanned)."""
    import jax
    import numpy as np
    from flax import nnx

    from r1 import sharding
    from r1.models.config import ModelConfig
    from r1.models.transformer import Transformer, flat_variables

    cfg = ModelConfig.from_dict({**dims, **overrides})
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    start = time.perf_counter()
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    placements = flat_variables(sharding.state_shardings(state, mesh))
    rng = np.random.default_rng(0)
    for path, variable in flat_variables(state).items():
        spec = variable.get_value()
        if path[-1] == "weight":  # RMSNorm scales
            host = np.ones(spec.shape, np.float32)
        elif str(path[-1]).endswith("bias"):
            host = np.zeros(spec.shape, np.float32)
        else:
            host = rng.standard_normal(spec.shape, np.float32) * np.float32(0.02)
        value = jax.device_put(host.astype(spec.dtype), placements[path].get_value())
        variable.set_value(value)
    model = nnx.merge(graphdef, state)
    jax.block_until_ready(nnx.state(model))
    print(f"random weights: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return cfg, mesh, model


def _cache_bytes_per_token(cfg) -> int:
    if cfg.attention_type == "mla":
        return (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * cfg.num_layers * 2
    return 2 * cfg.num_kv_heads * cfg.head_dim * cfg.num_layers * 2  # bf16


def section_decode(
    smoke: bool, param_dtype: str, batches: list[int], variant: str = "default"
) -> list[dict]:
    """`variant`: "default" (the preset's scanned layers, which the sampler splits apart:
    `SamplingConfig.unstack_layers`), "scanned" (the sampler keeps the layer scan inside each
    decode step), "unrolled" (a model built with scan_layers off), or "cmdbuf" (the default;
    the caller sets XLA flags that put while loops in GPU command buffers)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from r1 import sharding
    from r1.models.layers import in_compute_dtype
    from r1.sampling import SamplingConfig, make_sampler

    s = _settings(smoke)
    overrides = dict(param_dtype=param_dtype, remat_policy="none")
    if variant == "unrolled":
        overrides["scan_layers"] = False
    cfg, mesh, model = _build(_model_dims(smoke), **overrides)
    graphdef, state = nnx.split(model)
    # what a decode step reads: the sampler decodes from the compute-dtype copy
    decoded = nnx.state(in_compute_dtype(model))
    param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(decoded))
    config = SamplingConfig(
        max_new_tokens=s["new"],
        greedy=True,
        cache_dtype="bfloat16",
        unstack_layers=variant != "scanned",
    )
    fn = make_sampler(graphdef, config)
    key = jax.random.key(0)
    results = []
    for batch in batches:
        prompts = jnp.asarray(_prompts(batch, s["prompt"], cfg.vocab_size))
        mask = jnp.ones(prompts.shape, bool)
        with sharding.use_mesh(mesh):
            start = time.perf_counter()
            compiled = fn.lower(state, prompts, mask, key).compile()
            compile_s = time.perf_counter() - start
            out = jax.block_until_ready(compiled(state, prompts, mask, key))
            args = (state, prompts, mask, key)
            seconds = _median_time(
                lambda fn=compiled, args=args: jax.block_until_ready(fn(*args)), 3
            )
        assert int(out.lengths.min()) == s["new"], "a row ended early"
        # Ideal bytes per decode step: the weights once, plus each row's cache up to the mean
        # context length.
        mean_context = s["prompt"] + (s["new"] + 1) / 2
        step_bytes = param_bytes + batch * mean_context * _cache_bytes_per_token(cfg)
        results.append(
            {
                "section": "decode",
                "system": "r1",
                "model": "qwen2_tiny" if smoke else _MODEL[0],
                "variant": variant,
                "param_dtype": param_dtype,
                "batch": batch,
                "tokens_per_sec": batch * s["new"] / seconds,
                "seconds": seconds,
                "ms_per_step": seconds / s["new"] * 1e3,
                "compile_s": compile_s,
                "param_bytes": param_bytes,
                "bytes_per_step": step_bytes,
                "achieved_tb_s": step_bytes * s["new"] / seconds / 1e12,
            }
        )
    return results


def section_decode_hf(smoke: bool, batches: list[int]) -> list[dict]:
    import torch
    import transformers

    s = _settings(smoke)
    d = _model_dims(smoke)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = transformers.Qwen2Config(
        vocab_size=d["vocab_size"],
        hidden_size=d["hidden_size"],
        num_hidden_layers=d["num_layers"],
        num_attention_heads=d["num_heads"],
        num_key_value_heads=d["num_kv_heads"],
        intermediate_size=d["intermediate_size"],
        tie_word_embeddings=d["tie_word_embeddings"],
        max_position_embeddings=4096,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.Qwen2ForCausalLM(cfg).to(torch.bfloat16).eval()
    results = []
    for batch in batches:
        prompts = torch.tensor(_prompts(batch, s["prompt"], d["vocab_size"]), device=device)
        kwargs = dict(
            max_new_tokens=s["new"],
            min_new_tokens=s["new"],
            do_sample=False,
            attention_mask=torch.ones_like(prompts),
            pad_token_id=0,
            eos_token_id=None,
        )

        def run(prompts=prompts, kwargs=kwargs):
            with torch.inference_mode():
                out = model.generate(prompts, **kwargs)
            if device == "cuda":
                torch.cuda.synchronize()
            return out

        out = run()
        assert out.shape[1] == s["prompt"] + s["new"]
        seconds = _median_time(run, 3)
        results.append(
            {
                "section": "decode",
                "system": "transformers",
                "param_dtype": "bfloat16",
                "batch": batch,
                "tokens_per_sec": batch * s["new"] / seconds,
                "ms_per_step": seconds / s["new"] * 1e3,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            }
        )
    return results


# ----------------------------------------------------------------------------------- train
def _flops_per_token(cfg, context: int) -> tuple[float, float]:
    """(2 x matmul parameters, attention-score FLOPs) of one token's forward pass."""
    head = cfg.num_heads * cfg.head_dim
    kv = cfg.num_kv_heads * cfg.head_dim
    per_layer = cfg.hidden_size * (2 * head + 2 * kv) + 3 * cfg.hidden_size * cfg.intermediate_size
    weights = 2.0 * (cfg.num_layers * per_layer + cfg.hidden_size * cfg.vocab_size)
    attention = 4.0 * cfg.num_layers * head * context
    return weights, attention


def section_train(smoke: bool) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from r1 import sharding
    from r1.sft.step import SFTConfig, make_sft_step
    from r1.train.state import init_train_state

    s = _settings(smoke)
    cfg, mesh, model = _build(_model_dims(smoke))
    optimizer = optax.adamw(1e-5)
    graphdef, state = init_train_state(model, optimizer, seed=0, with_reference=False)
    del model
    rows, length = s["train_batch"], s["train_len"]
    rng = np.random.default_rng(0)
    batch = {
        "tokens": jnp.asarray(rng.integers(3, cfg.vocab_size, (rows, length)), jnp.int32),
        "segment_ids": jnp.ones((rows, length), jnp.int32),
        "positions": jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (rows, length)),
        "loss_mask": jnp.ones((rows, length), bool),
    }
    step = make_sft_step(graphdef, optimizer, SFTConfig(), mesh, state, batch)
    with sharding.use_mesh(mesh):
        start = time.perf_counter()
        compiled = step.lower(state, batch).compile()
        compile_s = time.perf_counter() - start
        times = []
        for _ in range(s["train_steps"] + 1):
            start = time.perf_counter()
            state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
    loss = float(metrics["loss"])
    if not np.isfinite(loss):
        raise FloatingPointError(f"train: loss {loss}")
    seconds = statistics.median(times[1:])
    weights, attention = _flops_per_token(cfg, length)
    flops = 3 * (weights + attention) * rows * length
    memory = compiled.memory_analysis()
    return {
        "section": "train",
        "model": "qwen2_tiny" if smoke else _MODEL[0],
        "rows": rows,
        "seq_len": length,
        "seconds_per_step": seconds,
        "tokens_per_sec": rows * length / seconds,
        "model_tflops_per_step": flops / 1e12,
        "achieved_tflops": flops / seconds / 1e12,
        "compile_s": compile_s,
        "loss": loss,
        "temp_gib": getattr(memory, "temp_size_in_bytes", 0) / 2**30,
    }


# ------------------------------------------------------------------------------------ grpo
def section_grpo(smoke: bool) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from r1 import sharding
    from r1.rl.grpo import GRPOLossConfig
    from r1.rl.step import GRPOConfig, make_grpo_step
    from r1.sampling.sampler import SamplingConfig
    from r1.testing import token_share_scorer
    from r1.train.state import init_train_state

    s = _settings(smoke)
    if os.environ.get("R1_GRPO_NEW"):  # a shorter rollout (a tight device budget)
        s.update(grpo_new=int(os.environ["R1_GRPO_NEW"]), grpo_steps=2)
    cfg, mesh, model = _build(_model_dims(smoke))
    print("grpo: model built", file=sys.stderr, flush=True)
    target = 7

    reward = token_share_scorer(target)

    optimizer = optax.adamw(1e-6)
    graphdef, state = init_train_state(model, optimizer, seed=0, with_reference=True)
    del model
    group, new = s["grpo_group"], s["grpo_new"]
    config = GRPOConfig(
        group_size=group,
        sampling=SamplingConfig(
            max_new_tokens=new, num_samples=group, temperature=1.0, cache_dtype="bfloat16"
        ),
        loss=GRPOLossConfig(beta=0.04, eps_low=0.2, eps_high=0.2, aggregation="sequence_mean"),
        num_iterations=1,
        num_microbatches=2,
    )
    prompts, plen = s["grpo_prompts"], s["grpo_prompt"]
    tokens = np.random.default_rng(0).integers(3, cfg.vocab_size, (prompts, plen))
    batch = {
        "prompt_tokens": jnp.asarray(tokens, jnp.int32),
        "prompt_mask": jnp.ones((prompts, plen), bool),
    }
    step = make_grpo_step(graphdef, optimizer, config, reward, mesh, state, batch)
    with sharding.use_mesh(mesh):
        start = time.perf_counter()
        compiled = step.lower(state, batch).compile()
        compile_s = time.perf_counter() - start
        print(f"grpo: compiled in {compile_s:.1f} s", file=sys.stderr, flush=True)
        times, generated = [], []
        for _ in range(s["grpo_steps"] + 1):
            start = time.perf_counter()
            state, metrics, samples = compiled(state, batch)
            jax.block_until_ready((state, metrics))
            times.append(time.perf_counter() - start)
            generated.append(int(jnp.sum(samples["mask"])))
            print(f"grpo: step {len(times)} {times[-1]:.2f} s", file=sys.stderr, flush=True)
    seconds = statistics.median(times[1:])
    rows, length = prompts * group, plen + new
    weights, attention = _flops_per_token(cfg, length)
    sample_flops = (weights + attention / 2) * rows * new
    train_flops = (1 + 3) * (weights + attention) * rows * length
    return {
        "section": "grpo",
        "model": "qwen2_tiny" if smoke else _MODEL[0],
        "rows": rows,
        "new_tokens": new,
        "seconds_per_step": seconds,
        "generated_tokens_per_step": statistics.median(generated),
        "generated_tokens_per_sec": statistics.median(generated) / seconds,
        "model_tflops_per_step": (sample_flops + train_flops) / 1e12,
        "achieved_tflops": (sample_flops + train_flops) / seconds / 1e12,
        "compile_s": compile_s,
        "kl": float(metrics.get("kl", float("nan"))),
    }


# ------------------------------------------------------------------------------------ main
def _spawn(args: list[str], out: str | None, timeout: float, xla_flags: str = "") -> list[dict]:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if xla_flags:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + xla_flags).strip()
    try:
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--worker", *args],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        print(f"{args}: timed out after {timeout:.0f}s", flush=True)
        return []
    if proc.returncode != 0:
        print(f"{args}: failed (its stderr is above)", flush=True)
        return []
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    for line in lines:
        print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.writelines(line + "\n" for line in lines)
    return [json.loads(line) for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (runs on CPU)")
    parser.add_argument("--out", default=None, help="also append each JSON line to this file")
    parser.add_argument(
        "--only",
        default="chip,decode,hf,train,grpo",
        help="sections to run, of chip, decode, decode_scanned, decode_unrolled, "
        "decode_cmdbuf, hf, train, grpo",
    )
    parser.add_argument("--model", default="qwen2_5_1_5b", choices=MODELS, help="model preset")
    args = parser.parse_args()
    smoke = ["--smoke"] if args.smoke else []
    smoke.append(f"--model={args.model}")
    sections = args.only.split(",")
    s = _settings(args.smoke)
    results: list[dict] = []

    def spawn(*worker_args, timeout=300, xla_flags=""):
        lines = _spawn([*worker_args, *smoke], args.out, timeout, xla_flags)
        results.extend(lines)
        return lines[0] if lines else None

    chip = spawn("chip") if "chip" in sections else None
    if "decode" in sections:
        spawn("decode", "bfloat16", ",".join(map(str, s["batches"])))
        spawn("decode", "float32", str(s["f32_batch"]))
    if "decode_scanned" in sections:
        spawn("decode", "bfloat16", ",".join(map(str, s["batches"][:2])), "scanned")
    if "decode_unrolled" in sections:
        spawn("decode", "bfloat16", ",".join(map(str, s["batches"][:2])), "unrolled")
    if "decode_cmdbuf" in sections:
        spawn(
            "decode",
            "bfloat16",
            ",".join(map(str, s["batches"][:2])),
            "cmdbuf",
            xla_flags=COMMAND_BUFFER_FLAGS,
        )
    if "hf" in sections:
        spawn("decode_hf", ",".join(map(str, s["hf_batches"])))
    if "train" in sections:
        spawn("train", timeout=400)
    if "grpo" in sections:
        spawn("grpo", timeout=500)
    if not chip:
        return
    bandwidth = chip["copy_tb_s"]
    peak = chip["published_tflops"] or chip["matmul_tflops"]
    print(
        f"\n{chip['device_kind']}: bf16 matmul {chip['matmul_tflops']:.0f} TFLOP/s measured "
        f"(published {chip['published_tflops']}), copy {bandwidth:.2f} TB/s measured "
        f"(published {chip['published_tb_s']})"
    )
    hf = {r["batch"]: r for r in results if r.get("system") == "transformers"}
    for r in results:
        if r["section"] == "decode" and r["system"] == "r1":
            peer = hf.get(r["batch"]) if r["param_dtype"] == "bfloat16" else None
            ratio = (
                f"  vs transformers {r['tokens_per_sec'] / peer['tokens_per_sec']:.1f}x"
                if peer
                else ""
            )
            print(
                f"decode {r['variant']:8s} {r['param_dtype']:8s} b{r['batch']:<4d} "
                f"{r['tokens_per_sec']:10,.0f} tok/s "
                f"{r['ms_per_step']:6.2f} ms/step  {r['achieved_tb_s']:.2f} TB/s = "
                f"{r['achieved_tb_s'] / bandwidth:.0%} of measured HBM bandwidth{ratio}"
            )
        elif r["section"] in ("train", "grpo"):
            print(
                f"{r['section']}: {r['seconds_per_step']:.3f} s/step, "
                f"{r['achieved_tflops']:.0f} TFLOP/s model FLOPs = MFU "
                f"{r['achieved_tflops'] / peak:.1%} (compile {r['compile_s']:.0f} s)"
            )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind, *rest = [a for a in sys.argv[2:] if not a.startswith("--")]
        smoke_run = "--smoke" in sys.argv
        _MODEL[0] = next(
            (a.split("=", 1)[1] for a in sys.argv if a.startswith("--model=")), _MODEL[0]
        )
        if kind == "chip":
            result = section_chip(smoke_run)
        elif kind == "decode":
            result = section_decode(
                smoke_run, rest[0], [int(b) for b in rest[1].split(",")], *rest[2:]
            )
        elif kind == "decode_hf":
            result = section_decode_hf(smoke_run, [int(b) for b in rest[0].split(",")])
        elif kind == "train":
            result = section_train(smoke_run)
        else:
            result = section_grpo(smoke_run)
        for item in result if isinstance(result, list) else [result]:
            print(json.dumps(item))
    else:
        main()
