"""One GRPO step: r1's single compiled program vs TRL's `GRPOTrainer` (torch, CPU).

    python benchmarks/grpo_step.py          # tiny model (the small one only if it fits 10 min)
    python benchmarks/grpo_step.py --small  # also the small model (about 20 GiB, 15+ minutes)
    python benchmarks/grpo_step.py --lengths=longtail  # completions of long-tailed lengths

Settings on both sides: 16 prompts of 16 tokens x G=8 completions = 128 rows, 128 new tokens
per completion (end-of-sequence never ends a completion, so every step generates
16 x 8 x 128 = 16,384 tokens), temperature 1.0, mu = 1 (`num_iterations=1`), beta = 0.04 (the
reference forward counts), clip eps 0.2, the GRPO paper's per-sequence loss aggregation
(TRL `loss_type="grpo"`, r1 `aggregation="sequence_mean"`), group std advantages, Adam at lr 1e-6
(TRL's default; its AdamW has weight decay 0), one optimizer update per step, float32, no
activation recomputation (TRL's `GRPOConfig` turns gradient checkpointing on by default; it is
off here, as r1's remat is off for this model; bf16, TRL's other default, is off on both sides: it
made both slower on this CPU, see benchmarks/RESULTS.md). The reward is
the share of completion tokens equal to one id (`jax.numpy` in r1, fused into the step; a Python
function over `completion_ids` in TRL).

The same Qwen2-shaped weights (saved once with `save_pretrained`) are loaded into r1 with
`r1.models.hf.load` and by TRL from the saved directory (policy and reference). TRL needs a
tokenizer: a WordLevel one over the model's vocabulary (`t3` .. `tN` plus 3 specials) built
with `tokenizers`, so the prompts' text encodes back to exactly the token ids r1 receives. TRL
generates with `min_new_tokens=128` so that no completion ends early. Each measurement runs in
its own subprocess; TRL runs at 1 and 2 torch threads and its best is kept. r1's compile time is
printed apart; times are medians over the steps after the first (TRL: `on_step_begin` to
`on_step_end`, which spans generation, rewards, reference and policy passes and the optimizer
step). Other processes on the machine skew both sides: the load average is printed.

Besides the table, it prints the split of a step on each side (r1's sampler jitted alone; TRL's
generation timed inside its trainer) and, when time allows, measures the best of each side a
second time in the opposite order (see `_run_size`).

`--lengths=longtail` (default `fixed`, everything above): each of the 128 rows ends at its own
length, drawn once (seeded) as in benchmarks/rollout_lengths.py: lognormal with median 15% and 99th
percentile 100% of the 128 new tokens, clipped to [1, 128] (mean 26.9, longest 98, 3,441 tokens per
step instead of 16,384). Both sides are forced to those lengths (EOS masked out before a row's last
token and the only choice at it): r1 through the batch key `forced_lengths` (row p * G + g) with
continuous batching (`SamplingConfig.slots`: the worker times the sampler alone with the static
batch and with 32 and 64 slots, and the step uses the fastest) and length-bucketed training
(`GRPOConfig.length_buckets` = 8 widths, rows ordered by length into 8 gradient-accumulation
slices, each run at the narrowest width holding its longest row), TRL through a transformers
`LogitsProcessor` handed to its `generate` (no `min_new_tokens`); TRL's generation batch is its
prompts each repeated G times, so its row i gets length i as r1's row i does. Both sides check,
every step, that each row's completion has exactly its drawn length (TRL: in the reward function,
over `completion_ids`). Last line `speedup_vs_trl_longtail: X`.

Last line: `speedup_vs_trl: X` (TRL seconds per step over r1 seconds per step, tiny model).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_PROMPTS = 16
GROUP = 8
NEW_TOKENS = 128
PROMPT_LEN = 16
BETA = 0.04
LR = 1e-6
TARGET = 7  # the reward: share of completion tokens equal to this id
PAD_ID, EOS_ID = 0, 1
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
STEPS = {"tiny": 6, "small": 1}  # TRL optimizer steps / r1 timed steps (the first one excluded)
SMALL_WORK_RATIO = 45  # small / tiny seconds per step (r1 measured ~43x; 56M vs 1.1M parameters)
BUDGET_S = 570.0  # the whole script stays under 10 minutes
R1_XLA_FLAGS = "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce"
START = time.perf_counter()
LENGTHS = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--lengths=")), "fixed")
LONGTAIL_SLOTS = (0, 32, 64)  # the sampler configurations timed alone in longtail mode
LONGTAIL_BUCKETS = 8  # longtail mode: training widths (GRPOConfig.length_buckets) ...
LONGTAIL_MICROBATCHES = 8  # ... over this many length-ordered slices of the 128 rows


def _prompt_ids(vocab: int) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.integers(3, vocab, size=(NUM_PROMPTS, PROMPT_LEN)).tolist()


def _longtail_lengths():
    """int32[NUM_PROMPTS * GROUP] forced completion lengths (tokens, EOS included) for
    `--lengths=longtail`, row p * GROUP + g: benchmarks/rollout_lengths.py's draw for
    NEW_TOKENS; None in the fixed mode."""
    if LENGTHS != "longtail":
        return None
    from rollout_lengths import draw_lengths  # benchmarks/ is this script's sys.path[0]

    return draw_lengths(NUM_PROMPTS * GROUP, NEW_TOKENS)


def _peak_mib() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would include the parent's)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker_r1(path: str, size: str, steps: int, cap_s: float, devices: int) -> dict:
    """r1 on `devices` CPU devices (`r1.sharding.use_cpu_devices`): with more than one, the
    step's rows are split over an `fsdp` mesh (parameters and Adam state sharded, ZeRO-3), each
    device running its share of the sampling and of the training on its own core. With
    `--lengths=longtail` the rows end at `_longtail_lengths()` and the sampler runs with the
    slot count (static included) that samples fastest alone."""
    from r1 import sharding

    sharding.use_cpu_devices(devices)
    import jax
    import jax.numpy as jnp
    import optax
    from grpo_step_parts import r1_sampling_seconds  # benchmarks/ is sys.path[0]

    from r1.models import hf
    from r1.rl.grpo import GRPOLossConfig
    from r1.rl.step import GRPOConfig, make_grpo_step
    from r1.sampling.sampler import SamplingConfig, left_pad
    from r1.testing import token_share_scorer
    from r1.train.state import init_train_state

    reward = token_share_scorer(TARGET)

    start = time.perf_counter()
    _, model = hf.load(path)
    optimizer = optax.adam(LR)
    graphdef, state = init_train_state(model, optimizer, seed=0, with_reference=True)
    load_s = time.perf_counter() - start
    lengths = _longtail_lengths()

    def grpo_config(slots: int) -> GRPOConfig:
        return GRPOConfig(
            group_size=GROUP,
            sampling=SamplingConfig(
                max_new_tokens=NEW_TOKENS,
                num_samples=GROUP,
                temperature=1.0,
                eos_ids=() if lengths is None else (EOS_ID,),
                pad_id=PAD_ID,
                slots=slots,
            ),
            loss=GRPOLossConfig(beta=BETA, eps_low=0.2, eps_high=0.2, aggregation="sequence_mean"),
            num_iterations=1,
            num_microbatches=1 if lengths is None else LONGTAIL_MICROBATCHES,
            length_buckets=0 if lengths is None else LONGTAIL_BUCKETS,
        )

    tokens, mask = left_pad(_prompt_ids(SIZES[size]["vocab_size"]), PROMPT_LEN, PAD_ID)
    batch = {"prompt_tokens": jnp.asarray(tokens), "prompt_mask": jnp.asarray(mask)}
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=devices))
    slot_sampling_s = {}
    if lengths is not None:
        batch["forced_lengths"] = jnp.asarray(lengths)
        with sharding.use_mesh(mesh):
            for slots in LONGTAIL_SLOTS:
                slot_sampling_s[slots] = r1_sampling_seconds(
                    graphdef, state, batch, grpo_config(slots), mesh
                )
    slots = min(slot_sampling_s, key=slot_sampling_s.get) if slot_sampling_s else 0
    config = grpo_config(slots)
    step = make_grpo_step(graphdef, optimizer, config, reward, mesh, state, batch)
    with sharding.use_mesh(mesh):
        start = time.perf_counter()
        compiled = step.lower(state, batch).compile()
        compile_s = time.perf_counter() - start
        times, cpu, generated, rows_ok = [], [], [], []
        begin = time.perf_counter()
        for i in range(steps + 1):
            if i >= 3 and time.perf_counter() - begin > cap_s:
                break  # a loaded machine: keep the 10-minute promise with fewer steps
            start, start_cpu = time.perf_counter(), time.process_time()
            state, metrics, samples = compiled(state, batch)
            jax.block_until_ready((state, metrics))
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
            generated.append(int(jnp.sum(samples["mask"])))
            if lengths is not None:
                row_lengths = jnp.sum(samples["mask"], axis=1)
                rows_ok.append(bool(jnp.all(row_lengths == jnp.asarray(lengths))))
        sampling_s = r1_sampling_seconds(graphdef, state, batch, config, mesh)
    return {
        "slots": slots,
        "length_buckets": config.length_buckets,
        "microbatches": config.num_microbatches,
        "slot_sampling_s": slot_sampling_s,
        "row_lengths_ok": all(rows_ok),
        "decode_steps": float(metrics.get("rollout/decode_steps", float("nan"))),
        "slot_occupancy": float(metrics.get("rollout/slot_occupancy", float("nan"))),
        "sampling_s": sampling_s,
        "seconds_per_step": statistics.median(times[1:]),
        "cpu_seconds_per_step": statistics.median(cpu[1:]),
        "cpu_times": cpu,
        "first_step_s": times[0],
        "step_times": times,
        "compile_s": compile_s,
        "load_s": load_s,
        "generated_tokens_per_step": generated,
        "completion_shape": list(samples["tokens"].shape),
        "kl": float(metrics["kl"]) if "kl" in metrics else None,
        "peak_mib": _peak_mib(),
        "devices": devices,
    }


def worker_trl(path: str, size: str, threads: int, steps: int, cap_s: float) -> dict:
    import torch

    torch.set_num_threads(threads)
    import datasets
    import transformers
    import trl

    transformers.logging.set_verbosity_error()
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(path)
    texts = [tokenizer.decode(ids) for ids in _prompt_ids(SIZES[size]["vocab_size"])]
    assert [tokenizer(t)["input_ids"] for t in texts] == _prompt_ids(SIZES[size]["vocab_size"])
    dataset = datasets.Dataset.from_dict({"prompt": texts})
    lengths = _longtail_lengths()
    generated: list[int] = []
    rows: list[int] = []
    rows_ok: list[bool] = []

    def target_share(completions, completion_ids, **kwargs):
        generated.append(sum(len(ids) for ids in completion_ids))
        rows.append(len(completion_ids))
        if lengths is not None:
            rows_ok.append([len(ids) for ids in completion_ids] == lengths.tolist())
        return [sum(t == TARGET for t in ids) / max(len(ids), 1) for ids in completion_ids]

    class Timer(transformers.TrainerCallback):
        def __init__(self):
            self.begin: list[float] = []
            self.end: list[float] = []
            self.cpu: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.begin.append(time.perf_counter())
            self.cpu.append(time.process_time())

        def on_step_end(self, args, state, control, **kwargs):
            self.end.append(time.perf_counter())
            self.cpu[-1] = time.process_time() - self.cpu[-1]
            if len(self.end) >= 3 and self.end[-1] - self.begin[0] > cap_s:
                control.should_training_stop = True  # a loaded machine: fewer steps

    timer = Timer()
    with tempfile.TemporaryDirectory() as out:
        args = trl.GRPOConfig(
            output_dir=out,
            per_device_train_batch_size=NUM_PROMPTS * GROUP,
            gradient_accumulation_steps=1,
            num_generations=GROUP,
            max_completion_length=NEW_TOKENS,
            generation_kwargs={"min_new_tokens": NEW_TOKENS} if lengths is None else None,
            temperature=1.0,
            beta=BETA,
            num_iterations=1,
            epsilon=0.2,
            loss_type="grpo",
            scale_rewards="group",
            learning_rate=LR,
            max_steps=steps + 1,
            use_vllm=False,
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
            fp16=False,
            report_to=[],
            logging_strategy="no",
            save_strategy="no",
            disable_tqdm=True,
            model_init_kwargs={"dtype": "float32"},
            seed=0,
            dataloader_num_workers=0,
        )
        start = time.perf_counter()
        trainer = trl.GRPOTrainer(
            model=path,
            reward_funcs=target_share,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[timer],
        )
        init_s = time.perf_counter() - start
        generate_calls: list[tuple[float, float]] = []
        # TRL's generation (a private method of TRL 1.x), timed for the split of a step
        untimed = getattr(trainer, "_generate_single_turn", None)

        def timed_generate(*args, **kwargs):
            begin = time.perf_counter()
            try:
                return untimed(*args, **kwargs)
            finally:
                generate_calls.append((begin, time.perf_counter()))

        if untimed is not None:
            trainer._generate_single_turn = timed_generate
        if lengths is not None:
            from rollout_lengths import force_generate_lengths

            force_generate_lengths(trainer.model, lengths, EOS_ID)
        trainer.train()
    times = [e - b for b, e in zip(timer.begin, timer.end, strict=True)]
    between = [b - a for a, b in zip(timer.end, timer.end[1:])]
    generation = [
        sum(e - b for b, e in generate_calls if begin <= b and e <= end)
        if generate_calls
        else float("nan")  # this TRL version generates elsewhere: no split
        for begin, end in zip(timer.begin, timer.end, strict=True)
    ]
    return {
        "seconds_per_step": statistics.median(times[1:]),
        "sampling_s": statistics.median(generation[1:]),
        "cpu_seconds_per_step": statistics.median(timer.cpu[1:]),
        "cpu_times": timer.cpu,
        "end_to_end_s": statistics.median(between),
        "first_step_s": times[0],
        "step_times": times,
        "init_s": init_s,
        "generated_tokens_per_step": generated,
        "rows_per_step": rows,
        "row_lengths_ok": all(rows_ok),
        "peak_mib": _peak_mib(),
    }


def _spawn(args: list[str], env_extra: dict | None = None, timeout: float = 600) -> dict:
    env = dict(os.environ)
    env.update(env_extra or {})
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", *args, f"--lengths={LENGTHS}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=max(timeout, 1),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - start
    if "step_times" in result:
        result["rounds"] = [result["step_times"]]
    return result


def _merge_rounds(first: dict, second: dict) -> dict:
    """One side's two rounds as one run: medians over the timed steps of both (each round's
    first step excluded), its sampling time the mean of the two rounds'."""
    merged = dict(first)
    timed = first["step_times"][1:] + second["step_times"][1:]
    cpu = first["cpu_times"][1:] + second["cpu_times"][1:]
    merged.update(
        seconds_per_step=statistics.median(timed),
        cpu_seconds_per_step=statistics.median(cpu),
        sampling_s=(first["sampling_s"] + second["sampling_s"]) / 2,
        generated_tokens_per_step=first["generated_tokens_per_step"]
        + second["generated_tokens_per_step"],
        rounds=first["rounds"] + second["rounds"],
    )
    if "rows_per_step" in first:
        merged["rows_per_step"] = first["rows_per_step"] + second["rows_per_step"]
    merged["peak_mib"] = max(first["peak_mib"], second["peak_mib"])
    merged["row_lengths_ok"] = first.get("row_lengths_ok", True) and second.get(
        "row_lengths_ok", True
    )
    return merged


def _save(directory: str, size: str) -> str:
    """Random Qwen2 weights (seed 0) and a WordLevel tokenizer over the same vocabulary."""
    import tokenizers
    import torch
    import transformers
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    path = os.path.join(directory, size)
    vocab_size = SIZES[size]["vocab_size"]
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(
        **SIZES[size],
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        bos_token_id=None,
    )
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(path)
    specials = {"<pad>": PAD_ID, "<eos>": EOS_ID, "<unk>": 2}
    vocab = {**specials, **{f"t{i}": i for i in range(3, vocab_size)}}
    raw = tokenizers.Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = WhitespaceSplit()
    raw.decoder = tokenizers.decoders.WordPiece(prefix="##", cleanup=False)
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    tok.padding_side = "left"
    tok.save_pretrained(path)
    return path


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load avg {one:.2f} (1 min) / {five:.2f} (5 min) on {os.cpu_count()} cores"


def _remaining(budget: bool) -> float:
    return BUDGET_S - (time.perf_counter() - START) if budget else 3600.0


def _spawn_r1(path: str, size: str, devices: int, share: float, budget: bool, timeout: float):
    return _spawn(
        ["r1", path, size, str(STEPS[size]), f"{share * _remaining(budget):.0f}", str(devices)],
        {"XLA_FLAGS": R1_XLA_FLAGS if size == "tiny" else ""},
        timeout=timeout,
    )


def _spawn_trl(path: str, size: str, threads: int, share: float, budget: bool, timeout: float):
    # the worker's own cap leaves room for its start-up and its last step
    cap = share * _remaining(budget) - 60
    return _spawn(
        ["trl", path, size, str(threads), str(STEPS[size]), f"{cap:.0f}"], timeout=timeout
    )


def _run_size(path: str, size: str, budget: bool = True) -> dict:
    """r1 on one CPU device and on one per core, then TRL at 2 and 1 torch threads; then, if
    the time left allows, the best of each side again in the opposite order (TRL first), so
    that a machine growing slower or faster during the run weighs on both sides alike, each
    side's time then being the median over both rounds. Each worker gets a share of the time
    left (it stops after fewer steps when the machine is loaded); a worker that still runs out
    of time is dropped (the other device or thread count, or the first round, stands)."""
    cores = len(os.sched_getaffinity(0))  # as r1.sharding.host_cores, without importing jax
    counts = [1] + ([cores] if cores > 1 and (NUM_PROMPTS * GROUP) % cores == 0 else [])
    ours = {}
    for devices in counts:
        share = 0.15 if len(counts) > 1 else 0.3  # of the time left
        try:
            ours[devices] = _spawn_r1(
                path,
                size,
                devices,
                share,
                budget,
                timeout=_remaining(budget) * (0.35 if len(counts) > 1 else 1.0),
            )
            print(f"  [{size}] r1 on {devices} device(s) done ({_load()})", flush=True)
        except subprocess.TimeoutExpired:
            print(f"  [{size}] r1 on {devices} device(s) ran out of time ({_load()})", flush=True)
    if not ours:
        raise RuntimeError(f"{size}: no r1 run finished within the time budget")
    peers = {}
    for threads in (2, 1):
        share = 0.5  # of the time left when the worker starts
        try:
            peers[threads] = _spawn_trl(
                path, size, threads, share, budget, timeout=share * _remaining(budget) + 60
            )
            print(f"  [{size}] TRL {threads} thread(s) done ({_load()})", flush=True)
        except subprocess.TimeoutExpired:
            print(f"  [{size}] TRL {threads} thread(s) ran out of time ({_load()})", flush=True)
    if not peers:
        raise RuntimeError(f"{size}: no TRL run finished within the time budget")
    best_r1 = min(ours, key=lambda n: ours[n]["seconds_per_step"])
    best_trl = min(peers, key=lambda t: peers[t]["seconds_per_step"])
    needed = 1.3 * (ours[best_r1]["wall_s"] + peers[best_trl]["wall_s"])
    if _remaining(budget) > needed:
        try:
            share = 0.45
            again_trl = _spawn_trl(
                path, size, best_trl, share, budget, timeout=share * _remaining(budget) + 60
            )
            again_r1 = _spawn_r1(path, size, best_r1, 0.8, budget, timeout=_remaining(budget) - 10)
            peers[best_trl] = _merge_rounds(peers[best_trl], again_trl)
            ours[best_r1] = _merge_rounds(ours[best_r1], again_r1)
            print(f"  [{size}] second round done ({_load()})", flush=True)
        except subprocess.TimeoutExpired:
            print(f"  [{size}] second round ran out of time: first round only", flush=True)
    else:
        print(
            f"  [{size}] no second round: {_remaining(budget):.0f} s left, ~{needed:.0f} s needed",
            flush=True,
        )
    return {"r1": ours, "trl": peers}


def _steps_timed(run: dict) -> int:
    return sum(len(times) - 1 for times in run["rounds"])


def _round_times(run: dict) -> str:
    """Each round's step times (the first step of a round is not timed in the medians)."""
    return " | ".join(", ".join(f"{t:.2f}" for t in times) for times in run["rounds"])


def main() -> None:
    if LENGTHS not in ("fixed", "longtail"):
        raise ValueError(f"--lengths must be fixed or longtail, got {LENGTHS!r}")
    print(f"machine at start: {_load()}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = _spawn(["save", tmp, "tiny"])["path"]
        results["tiny"] = _run_size(path, "tiny")
        elapsed = time.perf_counter() - START
        # The small model costs about 45x the tiny one per step (r1 measured ~160 s per
        # step here with ~20 GiB peak memory, and TRL is of the same order), so 2 steps on each
        # of 3 workers do not fit the 10-minute budget: it runs only when asked (`--small`,
        # no time limit) or if the estimate below fits.
        trl_tiny = min(p["seconds_per_step"] for p in results["tiny"]["trl"].values())
        estimate = SMALL_WORK_RATIO * trl_tiny * (STEPS["small"] + 1) * 3 + 60
        if "--small" in sys.argv or elapsed + estimate < BUDGET_S:
            try:
                small_path = _spawn(["save", tmp, "small"])["path"]
                results["small"] = _run_size(small_path, "small", budget="--small" not in sys.argv)
            except (RuntimeError, subprocess.TimeoutExpired) as err:
                print(f"small model failed: {str(err)[-500:]}", flush=True)
        else:
            print(
                f"small model skipped: about {estimate:.0f} s needed after {elapsed:.0f} s spent "
                f"would pass the {BUDGET_S:.0f} s budget (run with --small to force it)",
                flush=True,
            )
    print(f"machine at end: {_load()}")
    from grpo_step_parts import report  # benchmarks/ is this script's sys.path[0]

    settings = dict(
        num_prompts=NUM_PROMPTS,
        group=GROUP,
        new_tokens=NEW_TOKENS,
        beta=BETA,
        lengths=_longtail_lengths(),
        steps_timed=_steps_timed,
        round_times=_round_times,
    )
    ratio = report("tiny", results["tiny"], **settings)
    if "small" in results:
        report("small", results["small"], **settings)
    print(f"total wall time {time.perf_counter() - START:.0f} s")
    print(f"speedup_vs_trl{'_longtail' if LENGTHS == 'longtail' else ''}: {ratio:.2f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        kind, *rest = sys.argv[2:]
        if kind == "save":  # torch and transformers stay out of the main process (slow exit)
            out = {"path": _save(rest[0], rest[1])}
        elif kind == "r1":
            out = worker_r1(rest[0], rest[1], int(rest[2]), float(rest[3]), int(rest[4]))
        else:
            out = worker_trl(rest[0], rest[1], int(rest[2]), int(rest[3]), float(rest[4]))
        print(json.dumps(out))
    else:
        main()
