"""Held-out evaluation during training: the procedural task's (greedy, in one program) or
files' (`make_file_evaluator`: k samples per problem, pass@1 / cons@k per domain and
difficulty through `r1.evaluation`).

The GRPO and SFT trainers (and the pipeline's stages through them) evaluate the policy every
`eval.every` steps on a fixed held-out set of their procedural task, drawn from a seed the
training stream never uses (`procedural.fixed_set(task, seed + 1, ...)`). The completions are
decoded greedily inside one compiled program and scored there by token rewards: `correct`
(the task's accuracy reward, `arithmetic_tokens` by default) and `format_strict_tokens`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from r1 import sharding
from r1.data import pipeline, procedural
from r1.evaluation.runner import EvalConfig, evaluate
from r1.rewards.tokens import TagIds, arithmetic_tokens, format_strict_tokens
from r1.sampling.sampler import SamplingConfig, bucket_length, left_pad, sample
from r1.train.distributed import replicated
from r1.train.state import TrainState

# (completion tokens int32[B, N], text mask bool[B, N] (EOS excluded), ids, target int32[B])
#   -> correct float32[B] in {0, 1}
AccuracyFn = Callable[..., jax.Array]


def make_heldout_evaluator(
    task: procedural.Task,
    seed: int,
    per_difficulty: int,
    tokenizer: Any,
    graphdef: nnx.GraphDef,
    mesh: jax.sharding.Mesh,
    max_new_tokens: int,
    unstack_layers: bool = True,
    accuracy: AccuracyFn = arithmetic_tokens,
) -> Callable[[TrainState], dict[str, float]]:
    """`evaluator(state) -> {"eval/accuracy", "eval/format", "eval/response_length/mean",
    "eval/truncated_frac", "eval/accuracy/difficulty_<d>", "eval/response_length/difficulty_<d>"}`
    on `per_difficulty` held-out problems per difficulty of `task` (rows from seed + 1)."""
    rows = procedural.fixed_set(task, int(seed) + 1, int(per_difficulty))
    encoded = [tokenizer.encode(pipeline.render_r1_zero_row(r), add_bos=True) for r in rows]
    tokens, mask = left_pad(encoded, bucket_length(max(len(e) for e in encoded)), tokenizer.pad_id)
    targets = np.asarray([int(r["answer"]) for r in rows], np.int32)
    difficulty = np.asarray([r["difficulty"] for r in rows], np.int32)
    sampling = SamplingConfig(
        max_new_tokens=int(max_new_tokens),
        greedy=True,
        eos_ids=(tokenizer.eos_id,),
        pad_id=tokenizer.pad_id,
        unstack_layers=bool(unstack_layers),
    )
    ids = TagIds.from_tokenizer(tokenizer)
    replicated_sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    @functools.partial(jax.jit, out_shardings=replicated_sh)
    def run(params, extra, tokens, mask, targets):
        model = nnx.merge(graphdef, params, extra)
        out = sample(model, tokens, mask, jax.random.key(0), sampling)
        text_mask = out.mask & (out.tokens != tokenizer.eos_id)
        correct = accuracy(out.tokens, text_mask, ids=ids, target=targets)
        formatted = format_strict_tokens(out.tokens, text_mask, ids=ids)
        return correct, formatted, out.lengths, out.truncated

    inputs = tuple(replicated(a, mesh) for a in (tokens, mask, targets))

    def evaluator(state: TrainState) -> dict[str, float]:
        with sharding.use_mesh(mesh):
            correct, formatted, lengths, truncated = jax.device_get(
                run(state.params, state.extra, *inputs)
            )
        return heldout_metrics(correct, formatted, lengths, truncated, difficulty)

    return evaluator


def heldout_metrics(
    correct: np.ndarray,
    formatted: np.ndarray,
    lengths: np.ndarray,
    truncated: np.ndarray,
    difficulty: np.ndarray,
) -> dict[str, float]:
    """The evaluator's metrics from per-problem arrays [n] (correct and formatted in {0, 1},
    lengths in tokens, truncated bool, difficulty int)."""
    metrics = {
        "eval/accuracy": float(np.mean(correct)),
        "eval/format": float(np.mean(formatted)),
        "eval/response_length/mean": float(np.mean(lengths)),
        "eval/truncated_frac": float(np.mean(truncated)),
    }
    for d in sorted(set(difficulty.tolist())):
        sel = difficulty == d
        metrics[f"eval/accuracy/difficulty_{d}"] = float(np.mean(correct[sel]))
        metrics[f"eval/response_length/difficulty_{d}"] = float(np.mean(lengths[sel]))
    return metrics


# ----------------------------------------------------------------------------- from files
def make_file_evaluator(
    rows: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    graphdef: nnx.GraphDef,
    mesh: jax.sharding.Mesh,
    config: EvalConfig,
) -> Callable[[TrainState], dict[str, float]]:
    """`evaluator(state) -> metrics` on held-out `rows` (e.g. from `config.eval.files`):
    `r1.evaluation.evaluate` with `config` (k samples per problem, each row graded by its
    accuracy reward), summarised by `file_eval_metrics`. Each row's task is its domain, so
    the per-task tables are per-domain."""
    rows = [{**row, "task": str(row.get("domain") or row.get("task") or "default")} for row in rows]
    if not rows:
        raise ValueError("held-out evaluation: no rows")

    def evaluator(state: TrainState) -> dict[str, float]:
        model = nnx.merge(graphdef, state.params, state.extra)
        result = evaluate(model, tokenizer, rows, config, mesh=mesh)
        return file_eval_metrics(result)

    return evaluator


def file_eval_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """An `r1.evaluation.evaluate` result -> flat metrics: ``eval/<name>`` over every problem,
    ``eval/<name>/domain/<task>`` per task (domain) when there are several, and
    ``eval/<name>/difficulty_<d>`` per difficulty (``eval/<name>/domain/<task>/difficulty_<d>``
    with several domains), for names pass@1, pass@k, cons@k, response_length/mean,
    truncated_frac."""
    k = int(result["num_samples"])
    names = {
        "pass@1": "pass@1",
        f"pass@{k}": f"pass@{k}",
        f"cons@{k}": f"cons@{k}",
        "response_length": "response_length/mean",
        "truncated": "truncated_frac",
    }

    def flat(table: Mapping[str, Any], suffix: str = "") -> dict[str, float]:
        return {
            f"eval/{metric}{suffix}": float(table[key])
            for key, metric in names.items()
            if key in table
        }

    out = flat(result["overall"])
    tasks = result["tasks"]
    for task, table in tasks.items():
        where = "" if len(tasks) == 1 else f"/domain/{task}"
        if where:
            out.update(flat(table, where))
        for difficulty, sub in (table.get("by_difficulty") or {}).items():
            out.update(flat(sub, f"{where}/difficulty_{difficulty}"))
    return out
