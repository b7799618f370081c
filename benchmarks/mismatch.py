"""Sampler-trainer mismatch of the GRPO step: the sampler's log-probs and expert choices against
the training forward's, at the same parameters.

    python benchmarks/mismatch.py

One GRPO step per row (16 prompts x G = 8, temperature 1, at most 64 new tokens, one CPU
device), each reporting the `mismatch/*` metrics the step computes before its update
(r1/rl/mismatch.py): mean and max |log pi_sampler - log pi_train| per token (nats), the share
of tokens whose ratio leaves [1/2, 2], the effective sample size of the sequence ratios (over
the rows), and for MoE policies the share of token-layer expert choices that differ
(`routing_diff_frac`; with routing replay the training forward uses the recorded experts)
and the share where the trainer's own router disagrees (`router_disagree_frac`).

Policies: the demo's base model (assets/demo_base: DeepSeek-V3-style MLA + MoE, 1.1M
parameters; prompts are the demo's sums in its R1-Zero template), a tiny dense Qwen2-shaped
model (GQA) and a tiny MLA + MoE model (r1.testing, random weights, random prompts), each with
float32 and bfloat16 compute (parameters float32; the sampler's KV cache in the compute
dtype), MoE policies with and without routing replay.

Last line: `moe_routing_mismatch_with_replay: X`, the largest `routing_diff_frac` over the MoE
rows with replay (target 0).
"""

from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS, GROUP, NEW_TOKENS, PROMPT_LEN = 16, 8, 64, 48
KEYS = (
    "mismatch/logp_abs_mean",
    "mismatch/logp_abs_max",
    "mismatch/ratio_outside_frac",
    "mismatch/seq_ess_frac",
    "mismatch/routing_diff_frac",
    "mismatch/router_disagree_frac",
)


def _demo_prompts():
    """The demo's first 16 training sums in its R1-Zero template, as token ids."""
    from r1.data import procedural, templates
    from r1.data.tokenizers import DemoTokenizer

    tokenizer = DemoTokenizer()
    task = procedural.make_task("add", min_terms=2, max_terms=12, min_digits=1, max_digits=1)
    rows = [procedural.generate(task, seed=0, index=i) for i in range(PROMPTS)]
    return [tokenizer.encode(templates.render_r1_zero(row["prompt"])) for row in rows], tokenizer


def _random_prompts(vocab: int):
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.integers(3, vocab, size=(PROMPTS, 16)).tolist()


def _with_dtype(model, dtype: str):
    """`model`'s weights in a model computing in `dtype` (parameters stay float32)."""
    from flax import nnx

    from r1.models.transformer import Transformer

    cfg = model.config.replace(dtype=dtype)
    target = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    graphdef, _ = nnx.split(target)
    return nnx.merge(graphdef, nnx.state(model))


def measure(model, prompts, pad_id: int, eos_ids: tuple[int, ...], replay: bool) -> dict:
    """One GRPO step's mismatch metrics for `model` on `prompts`."""
    import jax
    import jax.numpy as jnp
    import optax

    from r1.rl.grpo import GRPOLossConfig
    from r1.rl.step import GRPOConfig, grpo_step_fn
    from r1.sampling.sampler import SamplingConfig, left_pad
    from r1.testing import token_share_scorer
    from r1.train.state import init_train_state

    optimizer = optax.sgd(1e-3)
    graphdef, state = init_train_state(model, optimizer, seed=0, with_reference=False)
    dtype = model.config.dtype
    config = GRPOConfig(
        group_size=GROUP,
        sampling=SamplingConfig(
            max_new_tokens=NEW_TOKENS,
            num_samples=GROUP,
            temperature=1.0,
            eos_ids=eos_ids,
            pad_id=pad_id,
            cache_dtype=dtype,
        ),
        loss=GRPOLossConfig(beta=0.0),
        routing_replay=replay,
    )
    width = max(PROMPT_LEN, max(len(p) for p in prompts))
    tokens, mask = left_pad(prompts, width, pad_id)
    batch = {"prompt_tokens": jnp.asarray(tokens), "prompt_mask": jnp.asarray(mask)}
    step = jax.jit(grpo_step_fn(graphdef, optimizer, config, token_share_scorer(7)))
    _, metrics, samples = step(state, batch)
    out = {k: float(metrics[k]) for k in KEYS if k in metrics}
    out["tokens"] = int(jnp.sum(samples["mask"]))
    return out


def main() -> None:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, REPO)
    from flax import nnx

    from r1 import testing
    from r1.models import hf
    from r1.models.transformer import Transformer

    _, demo = hf.load(os.path.join(REPO, "assets", "demo_base"))
    demo_prompts, tokenizer = _demo_prompts()
    dense = Transformer(testing.tiny_dense_config(), rngs=nnx.Rngs(0))
    moe = Transformer(testing.tiny_moe_config(), rngs=nnx.Rngs(0))
    policies = (
        ("demo (MLA + MoE)", demo, demo_prompts, tokenizer.pad_id, (tokenizer.eos_id,)),
        ("tiny dense (GQA)", dense, _random_prompts(dense.config.vocab_size), 0, ()),
        ("tiny MoE (MLA)", moe, _random_prompts(moe.config.vocab_size), 0, ()),
    )
    header = "| policy | compute | replay | tokens | " + " | ".join(k[9:] for k in KEYS) + " |"
    print(header)
    print("|---|---|---|---:|" + "---:|" * len(KEYS))
    with_replay = []
    for name, model, prompts, pad_id, eos_ids in policies:
        for dtype in ("float32", "bfloat16"):
            policy = _with_dtype(model, dtype)
            for replay in (False, True) if model.config.num_moe_layers else (False,):
                row = measure(policy, prompts, pad_id, eos_ids, replay)
                cells = " | ".join(f"{row[k]:.3g}" if k in row else "-" for k in KEYS)
                print(
                    f"| {name} | {dtype} | {'on' if replay else 'off'} | {row['tokens']} "
                    f"| {cells} |",
                    flush=True,
                )
                if replay:
                    with_replay.append(row["mismatch/routing_diff_frac"])
    print(f"moe_routing_mismatch_with_replay: {max(with_replay):.3g}")


if __name__ == "__main__":
    main()
