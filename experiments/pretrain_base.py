r"""Pretrains the base model of the embedded R1-Zero demo on procedural arithmetic text.

    python -m experiments.pretrain_base --out=assets/demo_base     # 25-40 min on 2 cores
    python -m experiments.pretrain_base --out=assets/demo_base --report_only   # skills only

The corpus mixes R1-Zero-formatted examples: most answer directly (`<think></think>` empty),
a minority (`--think_fraction`) show their partial sums inside `<think>`. The result is a base
model that has seen the reasoning format but mostly skips it, so its greedy accuracy on many-term
sums is low and RL has something to find (see ../shared/REFERENCE.md, "R1-Zero in miniature").
The policy architecture comes from `configs/r1_zero.py:tiny` (model section); the checkpoint is
written in Hugging Face layout with `r1.models.hf.save`, plus the tokenizer and a JSON report
that measures the base's two skills per number of terms on held-out sums (greedy): answering
directly, and thinking when made to (its `<think>` opened with the first term and a `+`).
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags
from flax import nnx

from experiments import cli
from r1 import configlib
from r1.data import procedural
from r1.data.tokenizers import build_demo_tokenizer
from r1.losses import masked_mean, token_cross_entropy
from r1.models import hf
from r1.models.transformer import Transformer

_OUT = flags.DEFINE_string("out", "assets/demo_base", "Output directory (HF layout).")
_STEPS = flags.DEFINE_integer("steps", 1000, "Optimizer steps.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Sequences per step.")
_LENGTH = flags.DEFINE_integer("seq_len", 144, "Tokens per sequence (prompt + completion).")
_LR = flags.DEFINE_float("learning_rate", 2e-3, "Peak AdamW learning rate (cosine decay).")
_THINK = flags.DEFINE_float("think_fraction", 0.3, "Share of examples that show their work.")
_REPORT_ONLY = flags.DEFINE_bool(
    "report_only", False, "Only measure the skills of the checkpoint in --out (no training)."
)
_PER_LENGTH = flags.DEFINE_integer("report_per_length", 16, "Held-out sums per number of terms.")
_SEED = flags.DEFINE_integer("seed", 1234, "Seed of the corpus and the initialisation.")
_CONFIG = flags.DEFINE_string("config", "configs/r1_zero.py:tiny", "Config giving the model.")


def encode_example(tokenizer, example, length):
    """(tokens int32[L], loss mask bool[L]) for prompt + completion + EOS, right-padded; the
    loss covers the completion and EOS only."""
    prompt = tokenizer.encode(example["prompt_text"], add_bos=True)
    completion = tokenizer.encode(example["completion"]) + [tokenizer.eos_id]
    ids = (prompt + completion)[:length]
    tokens = np.full(length, tokenizer.pad_id, np.int32)
    mask = np.zeros(length, bool)
    tokens[: len(ids)] = ids
    mask[len(prompt) : len(ids)] = True
    return tokens, mask


def skill_report(model, tokenizer, task, per_length: int, max_new_tokens: int) -> dict:
    """Greedy accuracy per difficulty on held-out rows, answering directly vs made to think.

    Returns {"direct": {...}, "think": {...}}, each {"accuracy": mean, "by_terms": {n: acc},
    "length_by_terms": {n: mean tokens}}.
    """
    import re

    from r1.data import templates
    from r1.sampling.sampler import generate

    def answer(text):
        match = re.search(r"<answer>\s*(-?\d+)\s*</answer>", text)
        return match.group(1) if match else None

    report = {}
    for mode in ("direct", "think"):
        by_terms, lengths = {}, {}
        for terms in task.difficulties():
            rows = [
                procedural.generate(task, 7, i, "test", difficulty=terms) for i in range(per_length)
            ]
            prompts = [templates.render_r1_zero(r["prompt"]) for r in rows]
            if mode == "think":
                prompts = [p + f" <think>{r['terms'][0]}+" for p, r in zip(prompts, rows)]
            outs = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, greedy=True)
            by_terms[terms] = float(
                np.mean([answer(o[0]) == r["answer"] for o, r in zip(outs, rows)])
            )
            lengths[terms] = float(np.mean([len(tokenizer.encode(o[0])) for o in outs]))
        report[mode] = {
            "accuracy": float(np.mean(list(by_terms.values()))),
            "by_terms": by_terms,
            "length_by_terms": lengths,
        }
    return report


def main(argv):
    del argv
    config = configlib.load_config(_CONFIG.value)
    if _REPORT_ONLY.value:
        _, model = hf.load(_OUT.value)
        task = procedural.make_task(config.data.task, **dict(config.data.task_kwargs))
        path = os.path.join(_OUT.value, "pretrain_report.json")
        report = json.load(open(path)) if os.path.exists(path) else {}
        report["skills"] = skill_report(
            model, build_demo_tokenizer(), task, _PER_LENGTH.value, int(config.rl.max_new_tokens)
        )
        with open(path, "w") as f:
            json.dump(report, f, indent=2)
        print(json.dumps(report["skills"]))
        return
    model_cfg = configlib.model_config(config)
    tokenizer = build_demo_tokenizer()
    task = procedural.make_task(config.data.task, **dict(config.data.task_kwargs))
    corpus = procedural.pretraining_corpus(task, _SEED.value, think_fraction=_THINK.value)
    model = Transformer(model_cfg, rngs=nnx.Rngs(_SEED.value))
    graphdef, params, extra = nnx.split(model, nnx.Param, ...)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0,
        _LR.value,
        warmup_steps=min(50, _STEPS.value // 4),
        decay_steps=_STEPS.value,
        end_value=_LR.value / 20,
    )
    optimizer = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01)
    )
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, tokens, mask):
        def loss_fn(p):
            logits = nnx.merge(graphdef, p, extra)(tokens[:, :-1])
            return masked_mean(token_cross_entropy(logits, tokens[:, 1:]), mask[:, 1:])

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    start = time.perf_counter()
    losses = []
    for i in range(1, _STEPS.value + 1):
        pairs = [
            encode_example(tokenizer, next(corpus), _LENGTH.value) for _ in range(_BATCH.value)
        ]
        tokens = jnp.asarray(np.stack([p[0] for p in pairs]))
        mask = jnp.asarray(np.stack([p[1] for p in pairs]))
        params, opt_state, loss = step(params, opt_state, tokens, mask)
        losses.append(float(loss))
        if i % 100 == 0 or i == 1:
            print(
                f"step {i}/{_STEPS.value}  loss {np.mean(losses[-100:]):.4f}  "
                f"{time.perf_counter() - start:.0f}s",
                flush=True,
            )
    model = nnx.merge(graphdef, params, extra)
    out = _OUT.value
    hf.save(model, model_cfg, out)
    tokenizer.save(os.path.join(out, "demo_tokenizer.json"))
    report = {
        "steps": _STEPS.value,
        "batch_size": _BATCH.value,
        "seq_len": _LENGTH.value,
        "learning_rate": _LR.value,
        "think_fraction": _THINK.value,
        "seed": _SEED.value,
        "final_loss": float(np.mean(losses[-100:])),
        "seconds": time.perf_counter() - start,
        "config": _CONFIG.value,
        "skills": skill_report(
            model, tokenizer, task, _PER_LENGTH.value, int(config.rl.max_new_tokens)
        ),
    }
    with open(os.path.join(out, "pretrain_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report))


if __name__ == "__main__":
    cli.run(main)
