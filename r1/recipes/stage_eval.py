"""What the R1 pipeline measures after each stage, beyond the evaluation runner's tables.

* `pass_interval`: a 95% interval for pass@1 over problems (the per-problem pass rates' mean
  +- 1.96 standard errors, clipped to [0, 1]): the unit that varies between evaluation sets is
  the problem, not the sample.
* `readable_share`: the share of completions in R1's readable pattern,
  `|special_token|<reasoning>|special_token|<summary>` as the pipeline instantiates it: the
  strict `<think>R</think> <answer>S</answer>` layout with a non-blank reasoning R and a
  non-blank summary S (an empty `<think></think>` is not reasoning).
* `language_consistency`: the mean share of chain-of-thought words in the target language
  (`r1.rewards.language.language_share`) over the completions whose CoT has words, and the
  share of completions that have words at all.
* `general_scores`: the policy's completions on held-out general prompts, scored by a reward
  model (its `region`) and by the rule the synthetic preference pairs follow (the summary ends
  with a polite closing, `r1.rm.data.POLITE`), so a score the policy reached by gaming the
  reward model shows up as a gap between the two.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from r1 import sharding
from r1.evaluation import runner
from r1.metrics import behaviour
from r1.rewards.extract import answer_content, think_content
from r1.rewards.format import is_strict
from r1.rewards.tokens import TagIds
from r1.rm import model as rm_model
from r1.rm.data import POLITE
from r1.rm.reward import score_completions, think_close_ids
from r1.sampling.sampler import left_pad

Z_95 = 1.959964
SUMMARY_KEYS = (
    "pass@1",
    "ci95_pass@1",
    "response_length",
    "truncated",
    "no_answer",
    "readable_format",
    "language_consistency",
    "cot_with_words",
)
GENERAL_KEYS = ("general_rm_score", "general_polite", "general_format")


def pass_interval(correct: Any) -> tuple[float, float]:
    """(low, high) 95% interval of pass@1 over problems; correct: bool/float[P, k]."""
    rates = (np.asarray(correct, np.float64) > 0.5).mean(axis=1)
    if rates.size == 0:
        raise ValueError("pass_interval: no problems")
    mean = float(rates.mean())
    if rates.size == 1:
        return mean, mean
    half = Z_95 * float(rates.std(ddof=1)) / np.sqrt(rates.size)
    return max(0.0, mean - half), min(1.0, mean + half)


def is_readable(text: str) -> bool:
    """Whether `text` keeps the readable pattern (module docstring)."""
    if not is_strict(text):
        return False
    reasoning, summary = think_content(text), answer_content(text)
    return bool(reasoning and reasoning.strip()) and bool(summary and summary.strip())


def readable_share(completions: Sequence[str]) -> float:
    """Share in [0, 1] of `completions` that keep the readable pattern."""
    if not completions:
        raise ValueError("readable_share: no completions")
    return float(np.mean([is_readable(c) for c in completions]))


def language_consistency(completions: Sequence[str], language: str) -> dict[str, float | None]:
    """{"language_consistency": mean share of CoT words in `language` over the completions
    whose CoT has words (None when none has), "cot_with_words": share of completions that have
    them}. The CoT is the first `<think>` block, or the whole completion without one."""
    if not completions:
        raise ValueError("language_consistency: no completions")
    shares = [s for s in behaviour.cot_language_shares(completions, language) if s is not None]
    return {
        "language_consistency": float(np.mean(shares)) if shares else None,
        "cot_with_words": len(shares) / len(completions),
    }


def completion_metrics(result: Mapping[str, Any], language: str) -> dict[str, float | list[float]]:
    """The extra overall metrics of an evaluation `result` made with `keep_completions`:
    `ci95_pass@1`, `readable_format`, `language_consistency`, `cot_with_words`."""
    problems = result["problems"]
    if not problems or "completions" not in problems[0]:
        raise ValueError("completion_metrics: the evaluation kept no completions")
    k = int(result["num_samples"])
    correct = np.zeros((len(problems), k))
    for p, problem in enumerate(problems):
        correct[p, : problem["num_correct"]] = 1.0
    texts = [c for problem in problems for c in problem["completions"]]
    low, high = pass_interval(correct)
    return {
        "ci95_pass@1": [low, high],
        "readable_format": readable_share(texts),
        **language_consistency(texts, language),
    }


def polite(text: str) -> bool:
    """Whether the summary (the `<answer>` block, else the text after `</think>`, else the
    whole text) ends with one of the polite closings of the synthetic preference pairs."""
    summary = answer_content(text)
    if summary is None:
        summary = text.rsplit("</think>", 1)[-1]
    return summary.strip().endswith(POLITE)


def general_scores(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    eval_config: runner.EvalConfig,
    reward_model_path: str,
    *,
    region: str,
    missing: str = "empty",
    mesh: jax.sharding.Mesh | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Samples `eval_config.num_samples` completions of each general request in `prompts`
    (rendered with `eval_config.template`) and scores them.

    With `mesh`, the reward model is loaded sharded over it and scores under it with replicated
    inputs and outputs (every process computes the same result, as in `runner.evaluate`);
    without, on the first device.
    Returns {"general_rm_score": mean reward-model score, "general_polite": share ending with a
    polite closing, "general_format": strict-format share, "general_prompts": P,
    "general_completions": every {prompt, completion, score, polite} record}.
    """
    rendered = [runner.render_prompt({"prompt": p}, eval_config.template) for p in prompts]
    sampled = runner.generate_samples(model, tokenizer, rendered, eval_config, mesh=mesh)
    num, k = sampled["lengths"].shape
    texts = [
        tokenizer.decode(sampled["tokens"][p, r][sampled["mask"][p, r]].tolist())
        for p in range(num)
        for r in range(k)
    ]
    encoded = [list(tokenizer.encode(t, add_bos=eval_config.add_bos)) for t in rendered]
    prompt_tokens, prompt_mask = left_pad(
        [e for e in encoded for _ in range(k)], max(len(e) for e in encoded), tokenizer.pad_id
    )
    completion_tokens = sampled["tokens"].reshape(num * k, -1)
    completion_mask = sampled["mask"].reshape(num * k, -1)
    # Without a mesh, everything stays on the first device (as the sampler's inputs do).
    one_device = sharding.make_mesh(sharding.MeshConfig(fsdp=1), jax.devices()[:1])
    _, reward_model = rm_model.load(reward_model_path, mesh=mesh or one_device)
    graphdef, rm_state = nnx.split(reward_model)
    close = think_close_ids(TagIds.from_tokenizer(tokenizer)) if region == "summary" else ()
    replicated = None if mesh is None else NamedSharding(mesh, PartitionSpec())

    @functools.partial(jax.jit, out_shardings=replicated)
    def score(state, pt, pm, ct, cm):
        return score_completions(
            nnx.merge(graphdef, state),
            pt,
            pm,
            ct,
            cm,
            region=region,
            think_close=close,
            missing=missing,
            eos_id=tokenizer.eos_id,
        )

    def put(array: np.ndarray) -> jax.Array:
        return jnp.asarray(array) if mesh is None else runner.replicated_array(array, mesh)

    scores = []
    with contextlib.ExitStack() as stack:
        if mesh is not None:
            stack.enter_context(sharding.use_mesh(mesh))
        for s in range(0, num * k, batch_size):
            rows = slice(s, s + batch_size)
            batch = (prompt_tokens, prompt_mask, completion_tokens, completion_mask)
            out = score(rm_state, *(put(np.asarray(a[rows])) for a in batch))
            scores.append(np.asarray(jax.device_get(out)))
    values = np.concatenate(scores)
    return {
        "general_rm_score": float(values.mean()),
        "general_polite": float(np.mean([polite(t) for t in texts])),
        "general_format": float(np.mean([is_strict(t) for t in texts])),
        "general_prompts": num,
        "general_completions": [
            {
                "prompt": prompts[i // k],
                "completion": texts[i],
                "score": float(values[i]),
                "polite": polite(texts[i]),
            }
            for i in range(num * k)
        ],
    }


def stage_row(result: Mapping[str, Any]) -> dict[str, Any]:
    """One stage's summary from its evaluation result: the overall metrics of SUMMARY_KEYS,
    GENERAL_KEYS, pass@k / cons@k, `num_problems` and `pass@1_by_difficulty`."""
    overall = result.get("overall", {})
    keep = (*SUMMARY_KEYS, *GENERAL_KEYS)
    row = {k: overall[k] for k in overall if k in keep or "@" in k}
    row["num_problems"] = result.get("num_problems")
    by_difficulty: dict[str, float] = {}
    for table in result.get("tasks", {}).values():
        for d, cell in table.get("by_difficulty", {}).items():
            by_difficulty[d] = cell["pass@1"]
    if by_difficulty:
        row["pass@1_by_difficulty"] = by_difficulty
    return row


TABLE_COLUMNS = (
    ("pass@1", "pass@1"),
    ("95% interval", "ci95_pass@1"),
    ("cons@k", "cons@"),
    ("length (tokens)", "response_length"),
    ("readable format", "readable_format"),
    ("language consistency", "language_consistency"),
    ("general RM score", "general_rm_score"),
    ("general polite", "general_polite"),
)


def summary_table(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """A markdown table of `summary` ({stage: stage_row}), one line per stage."""

    def cell(row: Mapping[str, Any], key: str) -> str:
        if key == "cons@":
            key = next((k for k in row if k.startswith("cons@")), key)
        value = row.get(key)
        if value is None:
            return "-"
        if isinstance(value, (list, tuple)):
            return "[" + ", ".join(f"{v:.3f}" for v in value) + "]"
        return f"{value:.1f}" if key == "response_length" else f"{value:.3f}"

    header = "| stage | problems | " + " | ".join(t for t, _ in TABLE_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(TABLE_COLUMNS) + 2)]
    for stage, row in summary.items():
        cells = " | ".join(cell(row, key) for _, key in TABLE_COLUMNS)
        lines.append(f"| {stage} | {row.get('num_problems', '-')} | {cells} |")
    return "\n".join(lines) + "\n"
