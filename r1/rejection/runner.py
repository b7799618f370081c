"""The rejection-sampling loop: prompts -> k samples each -> rewards -> selection -> JSONL.

    python -m experiments.rejection_sample --config=configs/rejection_sample.py:tiny \
        --workdir=runs/rejection_tiny

`run` is the shell around the pure parts: it takes batches of prompts in order, asks a
`Policy` for k completions per prompt, scores them with a `RewardSpec`, keeps rows with
`r1.rejection.select.select` and appends them to `workdir/traces.jsonl` (row format:
docs/rejection_sampling.md). `SamplerPolicy` is the real policy (the compiled sampler of
`r1.sampling.sampler`); tests plug in a fake one with known outputs. Building all of it from an
experiment config is `r1.rejection.experiment.run_from_config`.

Resuming. After every batch the rows are appended and fsync'd, then `workdir/progress.json` is
replaced atomically with the number of prompts done, the byte size of traces.jsonl and the
running counts. A restarted job truncates traces.jsonl to the recorded size (dropping the rows
of a batch whose progress was never recorded), checks that every remaining row belongs to a
finished prompt and continues with the next prompt. Sample `j` of prompt `i` draws its
randomness from `fold_in(key(seed), i * k + j)`, independent of batching, so the resumed file
equals the file of an unbroken run. A workdir made with another configuration (checkpoint,
seed, prompts, sampling, rewards or selection) is refused.

Judged rows. Rows whose `task` is in `judge_tasks` have no rule checker: a generative judge
(`r1.judge.Judge`) reads their reference answer and the completion's answer and its
verdict becomes the `correct_reward` score (through the ``judge_verdict`` reward; the other
reward terms score them as usual). Their provenance names the judge and holds its verdict.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import jax
import numpy as np
from flax import nnx

from r1 import sharding
from r1.data import templates
from r1.judge import JUDGE_VERDICT, Judge
from r1.recipes.stages import atomic_json
from r1.rejection.filters import extract_cot
from r1.rejection.progress import PROGRESS, TRACES, resume
from r1.rejection.select import Candidate, SelectConfig, Selection, select
from r1.rewards import RewardResult, RewardSpec, RewardTerm
from r1.rewards.extract import THINK_CLOSE, answer_content
from r1.sampling.sampler import SamplingConfig, bucket_length, left_pad, make_sampler

log = logging.getLogger(__name__)

REPORT = "report.json"


# ----------------------------------------------------------------------------- policies
@dataclasses.dataclass(frozen=True)
class Completion:
    """One sampled completion: its text (EOS removed), whether it hit the token limit without
    ending, and how many tokens were generated."""

    text: str
    truncated: bool = False
    num_tokens: int = 0


class Policy(Protocol):
    """Anything that samples: `policy(prompts, prompt_indices) -> [prompt][sample] Completion`.

    prompts: the rendered (templated) prompt texts. prompt_indices: each prompt's stable
    position in the whole prompt set, which seeds its samples (so that results do not depend on
    batching). Every prompt gets the same number of samples.
    """

    def __call__(
        self, prompts: Sequence[str], prompt_indices: Sequence[int]
    ) -> list[list[Completion]]: ...


class SamplerPolicy:
    """The compiled JAX sampler as a `Policy`.

    Prompts are tokenised (`add_bos`), left-padded to a multiple of `bucket_multiple` tokens and
    the batch is padded to `batch_size` prompts (repeating the last one; the extra outputs are
    discarded), so one program is compiled per prompt bucket. With a `mesh` the batch is
    replicated over it and the outputs are gathered replicated (every process gets all rows).
    """

    def __init__(
        self,
        model: nnx.Module,
        tokenizer: Any,
        sampling: SamplingConfig,
        *,
        seed: int,
        batch_size: int,
        mesh: jax.sharding.Mesh | None = None,
        add_bos: bool = True,
        bucket_multiple: int = 16,
    ):
        if batch_size < 1:
            raise ValueError(f"SamplerPolicy: batch_size must be >= 1, got {batch_size}")
        self.tokenizer, self.sampling, self.mesh = tokenizer, sampling, mesh
        self.batch_size, self.add_bos, self.bucket_multiple = batch_size, add_bos, bucket_multiple
        self.key = jax.random.key(seed)
        self._graphdef, self._state = nnx.split(model)
        jit_kwargs = {}
        if mesh is not None:
            self._replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
            jit_kwargs["out_shardings"] = self._replicated
        self._sample = make_sampler(self._graphdef, sampling, **jit_kwargs)
        self._end_ids = np.asarray(sampling.eos_ids, np.int32)

    def _put(self, array: np.ndarray) -> jax.Array | np.ndarray:
        if self.mesh is None:
            return array
        return jax.make_array_from_callback(array.shape, self._replicated, lambda i: array[i])

    def __call__(
        self, prompts: Sequence[str], prompt_indices: Sequence[int]
    ) -> list[list[Completion]]:
        n, k = len(prompts), self.sampling.num_samples
        if n != len(prompt_indices):
            raise ValueError(f"SamplerPolicy: {n} prompts but {len(prompt_indices)} indices")
        if not 0 < n <= self.batch_size:
            raise ValueError(f"SamplerPolicy: expected 1..{self.batch_size} prompts, got {n}")
        encoded = [list(self.tokenizer.encode(p, add_bos=self.add_bos)) for p in prompts]
        encoded += [encoded[-1]] * (self.batch_size - n)
        indices = list(prompt_indices) + [prompt_indices[-1]] * (self.batch_size - n)
        length = bucket_length(max(len(e) for e in encoded), self.bucket_multiple)
        tokens, mask = left_pad(encoded, length, self.tokenizer.pad_id)
        row_ids = (np.asarray(indices, np.int64)[:, None] * k + np.arange(k)[None, :]).reshape(-1)
        if row_ids.max() >= 2**31:
            raise ValueError("SamplerPolicy: prompt index * num_samples exceeds int32")
        args = (self._put(tokens), self._put(mask), self.key, self._put(row_ids.astype(np.int32)))
        if self.mesh is None:
            out = self._sample(self._state, *args)
        else:
            with sharding.use_mesh(self.mesh):
                out = self._sample(self._state, *args)
        out_tokens, out_mask, truncated, lengths = jax.device_get(
            (out.tokens, out.mask, out.truncated, out.lengths)
        )
        keep = out_mask & ~np.isin(out_tokens, self._end_ids)
        results = []
        for p in range(n):
            rows = range(p * k, (p + 1) * k)
            results.append(
                [
                    Completion(
                        text=self.tokenizer.decode(out_tokens[r][keep[r]].tolist()),
                        truncated=bool(truncated[r]),
                        num_tokens=int(lengths[r]),
                    )
                    for r in rows
                ]
            )
        return results


# ----------------------------------------------------------------------------- rows
def split_response(response: str) -> tuple[str | None, str | None]:
    """`(reasoning, answer)` of a response, stripped; None for a part that cannot be found.

    reasoning: the CoT (`r1.rejection.filters.extract_cot`) when the response closes its
    ``</think>``. answer: the last ``<answer>`` content if any, else the text after
    ``</think>`` (`templates.strip_thinking`) when there is one.
    """
    reasoning = extract_cot(response).strip() if THINK_CLOSE in response else None
    content = answer_content(response)
    if content is not None:
        return reasoning, content.strip()
    if THINK_CLOSE in response:
        return reasoning, templates.strip_thinking(response).strip()
    return reasoning, None


def trace_row(
    prompt_row: Mapping[str, Any], candidate: Candidate, provenance: Mapping[str, Any]
) -> dict[str, Any]:
    """The JSONL row of one kept candidate (format: docs/rejection_sampling.md)."""
    reasoning, answer = split_response(candidate.completion)
    return {
        "prompt": prompt_row["prompt"],
        "response": candidate.completion,
        "reasoning": reasoning,
        "answer": answer,
        "task": prompt_row.get("task"),
        "prompt_id": candidate.prompt_id,
        "sample_index": candidate.sample_index,
        "num_tokens": candidate.num_tokens,
        "provenance": {
            **provenance,
            "rewards": {k: float(v) for k, v in candidate.rewards.items()},
        },
    }


def reward_fields(
    spec: RewardSpec, rows: Sequence[Mapping[str, Any]], completions: Sequence[Completion]
) -> dict[str, list[Any]]:
    """The batch fields the spec's rewards read, one entry per completion.

    A field comes from the prompt row; `target` falls back to the row's `answer`, `lengths` is
    the generated token count. A field no row has is left out (the reward then says which
    field it needs, unless a term's kwargs provide it).
    """
    wanted = set(spec.fields())
    wanted.discard("correct")  # comes from `correct_from` inside RewardSpec
    fields: dict[str, list[Any]] = {}
    for name in sorted(wanted):
        if name == "lengths":
            fields[name] = [c.num_tokens for c in completions]
        elif all(name in r for r in rows):
            fields[name] = [r[name] for r in rows]
        elif name == "target" and all("answer" in r for r in rows):
            fields[name] = [r["answer"] for r in rows]
    return fields


def judge_spec(spec: RewardSpec, correct_label: str) -> RewardSpec:
    """`spec` with the term labelled `correct_label` replaced by ``judge_verdict`` (same label
    and weight): how the rows a judge grades are scored."""
    labels = [t.label for t in spec.terms]
    if correct_label not in labels:
        raise ValueError(f"judge: correct reward {correct_label!r} is not among the terms {labels}")
    terms = tuple(
        RewardTerm("judge_verdict", t.weight, {}, key=t.label, reward=JUDGE_VERDICT)
        if t.label == correct_label
        else t
        for t in spec.terms
    )
    return RewardSpec(terms)


def score_batch(
    spec: RewardSpec,
    rows: Sequence[Mapping[str, Any]],
    prompts: Sequence[str],
    completions: Sequence[Completion],
    *,
    correct_label: str,
    judge: Judge | None = None,
    judge_tasks: Sequence[str] = (),
) -> tuple[RewardResult, dict[int, dict[str, Any]]]:
    """Scores a flat batch: rows whose task is in `judge_tasks` with `judge_spec` and the judge's
    verdicts, the others with `spec`. Returns the merged `RewardResult` (rows in input order)
    and, per judged row index, {"verdict", "score", "reason"}."""
    judged = [i for i, r in enumerate(rows) if judge is not None and r.get("task") in judge_tasks]
    judged_set = set(judged)
    ruled = [i for i in range(len(rows)) if i not in judged_set]
    parts: list[tuple[list[int], RewardResult]] = []
    verdicts: dict[int, dict[str, Any]] = {}
    if ruled:
        sub_rows, sub_comps = [rows[i] for i in ruled], [completions[i] for i in ruled]
        result = spec.compile().score_texts(
            [prompts[i] for i in ruled],
            [c.text for c in sub_comps],
            **reward_fields(spec, sub_rows, sub_comps),
        )
        parts.append((ruled, result))
    if judged:
        assert judge is not None
        jspec = judge_spec(spec, correct_label)
        sub_rows, sub_comps = [rows[i] for i in judged], [completions[i] for i in judged]
        asked = []
        for row, comp in zip(sub_rows, sub_comps):
            reasoning, answer = split_response(comp.text)
            asked.append(
                {
                    "reference": row.get("answer"),
                    "prediction": answer,
                    "question": row.get("prompt"),
                    "reasoning": reasoning,
                }
            )
        scores, info = judge.score(asked)
        fields = reward_fields(jspec, sub_rows, sub_comps)
        fields.update(judge_score=list(scores), judge_reason=list(info["reasons"]))
        result = jspec.compile().score_texts(
            [prompts[i] for i in judged], [c.text for c in sub_comps], **fields
        )
        parts.append((judged, result))
        for k, i in enumerate(judged):
            verdicts[i] = {
                "verdict": info["verdicts"][k],
                "score": float(scores[k]),
                "reason": info["reasons"][k],
            }
    total = np.zeros(len(rows), np.float32)
    breakdown = {t.label: np.zeros(len(rows), np.float32) for t in spec.terms}
    failures: Counter[str] = Counter()
    for index, result in parts:
        total[index] = result.total
        for label, values in result.breakdown.items():
            breakdown[label][index] = values
        failures.update(result.failures)
    return RewardResult(total, breakdown, dict(failures)), verdicts


# ----------------------------------------------------------------------------- progress
def _write_progress(path: str, progress: Mapping[str, Any]) -> None:
    atomic_json(path, progress)


# ----------------------------------------------------------------------------- the loop
def default_render(row: Mapping[str, Any]) -> str:
    return templates.render_r1_zero(row["prompt"])


def run(
    prompts: Sequence[Mapping[str, Any]],
    policy: Policy,
    spec: RewardSpec,
    select_config: SelectConfig,
    workdir: str,
    *,
    batch_size: int,
    provenance: Mapping[str, Any],
    render: Callable[[Mapping[str, Any]], str] = default_render,
    identity: Mapping[str, Any] | None = None,
    write: bool = True,
    progress_bar: bool = False,
    judge: Judge | None = None,
    judge_tasks: Sequence[str] = (),
    restart: bool = False,
) -> dict[str, Any]:
    """Rejection-samples `prompts` into `workdir/traces.jsonl`, resuming a previous run.

    Args:
      prompts: rows with unique `id`, `prompt` (the question) and the fields the rewards read
        (`answer`, `target`, ...).
      policy: the sampler (`SamplerPolicy`, or a fake in tests).
      spec: the rewards; `select_config`'s reward labels must be among its terms.
      select_config: correctness, filters, deduplication and cap.
      batch_size: prompts per policy call.
      provenance: copied into every row's `provenance` (checkpoint, seed, config).
      render: prompt row -> the text the policy continues (default: R1-Zero template).
      identity: what must match for a resume (default: provenance, prompt ids, selection,
        reward terms, batch size).
      write: False on processes other than the first of a multi-host job (they sample, only the
        first writes).
      progress_bar: show a tqdm bar.
      judge: a generative judge for the rows of `judge_tasks` (see the module docstring).
      judge_tasks: row `task` values the judge grades instead of `select_config.correct_reward`.
      restart: when the workdir's progress files are damaged, move them aside and start over
        (default: stop with `ProgressUnusable`, nothing moved).

    Returns:
      the report (also written to `workdir/report.json`): counts of candidates, kept rows and
      drops by reason, filter hits, mean reward per term, reward failures, seconds.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ids = [str(r.get("id", "")) for r in prompts]
    if any(not i for i in ids):
        raise ValueError("every prompt row needs a non-empty 'id' (the resume key)")
    repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
    if repeated:
        raise ValueError(f"prompt ids must be unique; repeated: {repeated[:5]}")
    labels = [t.label for t in spec.terms]
    missing = [label for label in select_config.reward_labels if label not in labels]
    if missing:
        raise ValueError(
            f"selection reads reward(s) {missing} that are not scored; terms: {labels}"
        )
    if (judge is None) != (not judge_tasks):
        raise ValueError("judge and judge_tasks go together: give both or neither")
    if identity is None:
        identity = {
            "provenance": dict(provenance),
            "batch_size": batch_size,
            "select": repr(select_config),
            "rewards": repr(spec.terms),
        }
    identity = {**identity, "prompt_ids": hashlib.sha256("\n".join(ids).encode()).hexdigest()}
    if judge is not None:
        identity["judge"] = {**judge.identity, "tasks": sorted(judge_tasks)}
    os.makedirs(workdir, exist_ok=True)
    traces_path = os.path.join(workdir, TRACES)
    progress_path = os.path.join(workdir, PROGRESS)
    progress = resume(workdir, identity, ids, write, restart)
    if write and not os.path.exists(progress_path):
        _write_progress(progress_path, progress)
    start = progress["prompts_done"]
    bar = _progress(len(prompts), start, progress_bar)
    try:
        for lo in range(start, len(prompts), batch_size):
            began = time.perf_counter()
            batch = list(prompts[lo : lo + batch_size])
            texts = [render(r) for r in batch]
            outputs = policy(texts, list(range(lo, lo + len(batch))))
            if len(outputs) != len(batch):
                raise ValueError(f"policy returned {len(outputs)} groups for {len(batch)} prompts")
            flat = [(r, t, c, j) for r, t, g in zip(batch, texts, outputs) for j, c in enumerate(g)]
            scored, verdicts = score_batch(
                spec,
                [r for r, _, _, _ in flat],
                [t for _, t, _, _ in flat],
                [c for _, _, c, _ in flat],
                correct_label=select_config.correct_reward,
                judge=judge,
                judge_tasks=judge_tasks,
            )
            candidates = [
                Candidate(
                    prompt_id=str(r["id"]),
                    sample_index=j,
                    completion=c.text,
                    rewards={k: float(v[i]) for k, v in scored.breakdown.items()},
                    truncated=c.truncated,
                    num_tokens=c.num_tokens,
                )
                for i, (r, _, c, j) in enumerate(flat)
            ]
            chosen = select(candidates, select_config)
            by_id = {str(r["id"]): r for r in batch}
            flat_index = {(c.prompt_id, c.sample_index): i for i, c in enumerate(candidates)}
            lines = []
            for c in chosen.kept:
                verdict = verdicts.get(flat_index[(c.prompt_id, c.sample_index)])
                row_provenance = dict(provenance)
                if verdict is not None and judge is not None:
                    row_provenance.update(
                        correctness="judge",
                        judge={**judge.identity, "verdict": verdict["verdict"]},
                    )
                row = trace_row(by_id[c.prompt_id], c, row_provenance)
                lines.append(json.dumps(row, ensure_ascii=False))
            _accumulate(progress, chosen, scored, len(batch), time.perf_counter() - began)
            if verdicts:
                _count_verdicts(progress, verdicts.values())
            if write:
                data = "".join(line + "\n" for line in lines).encode("utf-8")
                with open(traces_path, "ab") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                progress["traces_bytes"] += len(data)
                _write_progress(progress_path, progress)
            bar.update(len(batch))
            bar.set_postfix(kept=progress["kept"], candidates=progress["candidates"])
    finally:
        bar.close()
    report = make_report(progress, len(prompts), provenance)
    if write:
        atomic_json(os.path.join(workdir, REPORT), report)
    return report


def _accumulate(
    progress: dict, chosen: Selection, scored: RewardResult, num_prompts: int, seconds: float
) -> None:
    progress["prompts_done"] += num_prompts
    progress["batches_done"] += 1
    progress["candidates"] += chosen.num_candidates
    progress["kept"] += len(chosen.kept)
    progress["prompts_with_rows"] += len({c.prompt_id for c in chosen.kept})
    for key, new in (("dropped", chosen.dropped), ("filter_hits", chosen.filter_hits)):
        progress[key] = dict(sorted((Counter(progress[key]) + Counter(new)).items()))
    sums = Counter(progress["reward_sums"])
    for label, values in scored.breakdown.items():
        sums[label] += float(np.sum(values))
    progress["reward_sums"] = dict(sorted(sums.items()))
    failures = Counter(progress["reward_failures"]) + Counter(scored.failures)
    progress["reward_failures"] = dict(sorted(failures.items()))
    progress["seconds"] += seconds


def _count_verdicts(progress: dict, verdicts: Any) -> None:
    counts = Counter(progress.get("judge", {}))
    for v in verdicts:
        counts["judged"] += 1
        counts["correct"] += v["score"] > 0.5
        counts["unparseable"] += v["reason"] not in ("", "no_answer")
        counts["no_answer"] += v["reason"] == "no_answer"
    progress["judge"] = {
        k: int(counts[k]) for k in ("judged", "correct", "unparseable", "no_answer")
    }


def make_report(
    progress: Mapping[str, Any], num_prompts: int, provenance: Mapping[str, Any]
) -> dict[str, Any]:
    """The summary written to report.json, from the accumulated progress."""
    candidates = progress["candidates"]
    report = {
        "provenance": dict(provenance),
        "prompts": num_prompts,
        "prompts_done": progress["prompts_done"],
        "prompts_with_rows": progress["prompts_with_rows"],
        "candidates": candidates,
        "kept": progress["kept"],
        "kept_fraction": progress["kept"] / candidates if candidates else 0.0,
        "dropped": dict(progress["dropped"]),
        "filter_hits": dict(progress["filter_hits"]),
        "reward_means": {
            k: v / candidates if candidates else 0.0 for k, v in progress["reward_sums"].items()
        },
        "reward_failures": dict(progress["reward_failures"]),
        "seconds": progress["seconds"],
    }
    if "judge" in progress:
        report["judge"] = dict(progress["judge"])
    return report


def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="rejection", unit="prompt")
