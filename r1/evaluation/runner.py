r"""The evaluation loop: k samples per prompt, accuracy by rule, pass@1 / pass@k / cons@k tables.

    from r1.evaluation import EvalConfig, evaluate, write_json, write_markdown
    result = evaluate(model, tokenizer, rows, EvalConfig(num_samples=8, max_new_tokens=512))
    result["tasks"]["math"]["pass@1"], result["tasks"]["math"]["cons@8"]

`rows` are r1 row dicts (`prompt`, `answer`, optional `task`, `difficulty`, `id` and task
fields), from `r1.data.procedural.fixed_set` or local GSM8K / MATH / AIME files through
`r1.data.sources.load_files`. Each prompt is rendered with `EvalConfig.template`, tokenised and
sampled `num_samples` times with the compiled sampler (`r1.sampling.sampler.make_sampler`) in
batches of `batch_size` prompts left-padded to a multiple of `bucket_multiple` (the last batch is
filled with repeats, so every batch has one of a few static shapes). Row `r` of prompt `p`
draws its randomness from `fold_in(key(seed), p * num_samples + r)`, so a sample does not depend
on how the prompts were batched. Completions are decoded and scored with the registered
accuracy reward of the row (`reward="auto"`: `arithmetic` for the procedural `add` / `mul`
tasks, `countdown` for countdown, `code` (the sandbox; a sample passes when every test does)
for code rows, `math` (math-verify) for everything else), their final
answers extracted for majority voting (`r1.evaluation.metrics.vote_key`), and everything is
summarised per task (and per difficulty within a task when rows carry one).

The returned dict (JSON-serialisable; `write_json` / `write_markdown` write it):
    num_problems, num_samples, settings (the EvalConfig)
    tasks:   task -> {count, samples, pass@1, pass@k..., cons@n, response_length, truncated,
                      no_answer, reflection_per_1k, reflection_share, by_difficulty: {d: ...}}
    overall: the same over every problem
    problems: per problem {id, task, difficulty, gold, num_correct, majority, votes,
              cons_correct, answers[, completions]}
    reward_failures: "<reward>/<reason>" -> count (rows the reward could not score normally)
    timing: seconds, generated_tokens, tokens_per_sec
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r1 import configlib, sharding
from r1 import rewards as rewards_lib
from r1.data import templates
from r1.evaluation import metrics
from r1.metrics import behaviour
from r1.sampling.sampler import SamplingConfig, bucket_length, left_pad, make_sampler

TEMPLATES = ("r1_zero", "plain", "boxed", *templates.CHAT_FORMATS)
# The accuracy reward `reward="auto"` picks from a row's task; anything else is graded as math.
AUTO_REWARDS = {"add": "arithmetic", "mul": "arithmetic", "countdown": "countdown"}
DEFAULT_TASK = "default"
# How a reward grades a sample as correct: a code sample passes when every test does.
GRADE_KWARGS = {"code": {"all_or_nothing": True}}


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """How to evaluate (the `eval` section of configs/evaluate.py).

    num_samples: k completions per prompt (pass@1 is averaged over them; cons@k votes over them).
    temperature, top_p, top_k: sampling (DeepSeek-R1's protocol: 0.6 and 0.95). greedy: argmax
      decoding instead (needs num_samples == 1).
    max_new_tokens: completion budget in tokens; a completion that hits it counts as truncated.
    batch_size: prompts per compiled sampler call (rows per call = batch_size * num_samples).
    slots: rows decoded at once within a call (continuous batching, `SamplingConfig.slots`;
      0: all rows of a call until the longest ends).
    bucket_multiple: prompts are left-padded to a multiple of this many tokens.
    template: "r1_zero" (the R1-Zero template around the question), "plain" (the question as
      is), "boxed" (question + "Please reason step by step, and put your final answer within
      \\boxed{}."), or a chat format of `r1.data.templates.CHAT_FORMATS` ("qwen", "llama3",
      "deepseek_r1": the boxed question as the user turn, generation prompt opening <think>).
    add_bos: prepend the tokenizer's BOS (when it has one).
    reward: the accuracy reward name (`r1.rewards.names()`), or "auto" (module docstring).
    pass_ks: the k of each extra pass@k reported (each <= num_samples); pass@1 and
      pass@num_samples are always reported.
    stop_strings: strings that end a completion when generated (e.g. "</answer>").
    seed: sampling seed.
    keep_completions: also return every decoded completion per problem.
    language: language of the reflective-word list for the behaviour columns ("en", "zh").
    """

    num_samples: int = 4
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    greedy: bool = False
    max_new_tokens: int = 256
    batch_size: int = 16
    slots: int = 0
    bucket_multiple: int = 32
    template: str = "r1_zero"
    add_bos: bool = True
    reward: str = "auto"
    pass_ks: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    seed: int = 0
    keep_completions: bool = False
    language: str = "en"

    def __post_init__(self):
        object.__setattr__(self, "pass_ks", tuple(int(k) for k in self.pass_ks))
        object.__setattr__(self, "stop_strings", tuple(str(s) for s in self.stop_strings))
        for name in ("num_samples", "max_new_tokens", "batch_size", "bucket_multiple"):
            if getattr(self, name) < 1:
                raise ValueError(f"EvalConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.slots < 0:
            raise ValueError(f"EvalConfig.slots must be >= 0 (0: static batch), got {self.slots}")
        if self.greedy and self.num_samples != 1:
            raise ValueError(
                f"EvalConfig.num_samples must be 1 with greedy=True (greedy samples are all "
                f"equal), got {self.num_samples}"
            )
        if not self.greedy and self.temperature <= 0:
            raise ValueError(f"EvalConfig.temperature must be > 0, got {self.temperature}")
        if self.template not in TEMPLATES:
            raise ValueError(
                f"EvalConfig.template: expected one of {TEMPLATES}, got {self.template!r}"
            )
        bad = [k for k in self.pass_ks if not 1 <= k <= self.num_samples]
        if bad:
            raise ValueError(
                f"EvalConfig.pass_ks: each k must be in [1, num_samples={self.num_samples}], "
                f"got {bad}"
            )
        if self.reward != "auto" and self.reward not in rewards_lib.names("text"):
            raise ValueError(
                f"EvalConfig.reward: expected 'auto' or a text reward of "
                f"{rewards_lib.names('text')}, got {self.reward!r}"
            )

    @classmethod
    def from_config(cls, section: Any, where: str = "config.eval") -> EvalConfig:
        """From a ConfigDict / mapping, with errors naming the field (`config.eval.x`)."""
        return configlib.to_dataclass(cls, section, where)

    def sampling(self, tokenizer: Any) -> SamplingConfig:
        """The sampler settings for `tokenizer` (EOS and pad ids, stop strings tokenised)."""
        eos_id = getattr(tokenizer, "eos_id", None)
        return SamplingConfig(
            max_new_tokens=self.max_new_tokens,
            num_samples=self.num_samples,
            temperature=1.0 if self.greedy else self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            greedy=self.greedy,
            eos_ids=() if eos_id is None else (int(eos_id),),
            stop_sequences=tuple(tuple(tokenizer.encode(s)) for s in self.stop_strings),
            pad_id=int(tokenizer.pad_id),
            slots=self.slots,
        )


# ----------------------------------------------------------------------------- pure helpers
def render_prompt(row: Mapping[str, Any], template: str) -> str:
    """The prompt text of `row` under `template` (see `EvalConfig.template`)."""
    if "prompt" not in row:
        raise ValueError(f"row {row.get('id', '?')!r}: missing field 'prompt'")
    question = str(row["prompt"])
    if template == "r1_zero":
        return templates.render_r1_zero(question)
    if template == "plain":
        return question
    boxed = f"{question}\n{templates.BOXED_INSTRUCTION}"
    if template == "boxed":
        return boxed
    if template in templates.CHAT_FORMATS:
        # BOS comes from the tokenizer (EvalConfig.add_bos), never spelled twice.
        return templates.render_chat(boxed, format=template, add_bos=False)
    raise ValueError(f"template: expected one of {TEMPLATES}, got {template!r}")


def reward_name(row: Mapping[str, Any], reward: str) -> str:
    """The accuracy reward that grades `row`: `reward`, or when it is "auto": ``code`` for a
    code row (domain "code", or `tests` and no `answer`), else by task (`AUTO_REWARDS`)."""
    if reward != "auto":
        return reward
    if row.get("domain") == "code" or ("tests" in row and "answer" not in row):
        return "code"
    return AUTO_REWARDS.get(str(row.get("task", "")), "math")


def reward_fields(rows: Sequence[Mapping[str, Any]], reward: str) -> dict[str, list[Any]]:
    """The batch fields `reward` reads, one entry per row; a missing `target` falls back to the
    row's `answer` (procedural arithmetic rows keep their target there)."""
    fields: dict[str, list[Any]] = {}
    for name in rewards_lib.get(reward).fields:
        values = []
        for row in rows:
            if name in row:
                values.append(row[name])
            elif name == "target" and "answer" in row:
                values.append(row["answer"])
            else:
                raise ValueError(
                    f"row {row.get('id', '?')!r}: reward {reward!r} needs field {name!r}; the row "
                    f"has {sorted(row)}"
                )
        fields[name] = values
    return fields


def replicated_array(array: np.ndarray, mesh: jax.sharding.Mesh) -> jax.Array:
    """`array` (the same on every process) as a global array replicated over `mesh`."""
    target = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.make_array_from_callback(array.shape, target, lambda index: array[index])


# ----------------------------------------------------------------------------- the loop
@functools.lru_cache(maxsize=8)
def _sampler(graphdef: nnx.GraphDef, sampling: SamplingConfig, mesh: jax.sharding.Mesh | None):
    """The jitted sampler, cached so that evaluating the same architecture again (another
    checkpoint, another stage of a pipeline) reuses its compiled programs."""
    if mesh is None:
        return make_sampler(graphdef, sampling)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return make_sampler(graphdef, sampling, out_shardings=replicated)


def generate_samples(
    model: nnx.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    config: EvalConfig,
    *,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Samples `config.num_samples` completions of every prompt.

    Returns numpy arrays with P = len(prompts), k = num_samples, N = max_new_tokens:
    tokens int32[P, k, N], mask bool[P, k, N], lengths int32[P, k], truncated bool[P, k].
    With `mesh`, runs under it with replicated inputs and outputs (every process computes the
    same result, so this works on one host or many).
    """
    if not prompts:
        raise ValueError("evaluate: no prompts")
    k, new = config.num_samples, config.max_new_tokens
    encoded = [list(tokenizer.encode(p, add_bos=config.add_bos)) for p in prompts]
    empty = [i for i, e in enumerate(encoded) if not e]
    if empty:
        raise ValueError(f"evaluate: prompts {empty[:5]} tokenise to no tokens")
    graphdef, state = nnx.split(model)
    sampler = _sampler(graphdef, config.sampling(tokenizer), mesh)
    key = jax.random.key(config.seed)
    num = len(prompts)
    out = {
        "tokens": np.zeros((num, k, new), np.int32),
        "mask": np.zeros((num, k, new), bool),
        "lengths": np.zeros((num, k), np.int32),
        "truncated": np.zeros((num, k), bool),
    }
    # Batch prompts of similar length together: fewer buckets, less padding. Results do not
    # depend on the batching (row keys follow the prompt's index).
    order = sorted(range(num), key=lambda i: len(encoded[i]))
    batches = [order[s : s + config.batch_size] for s in range(0, num, config.batch_size)]
    bar = _progress(len(batches), progress)
    for batch in batches:
        index = batch + [batch[-1]] * (config.batch_size - len(batch))
        length = bucket_length(max(len(encoded[i]) for i in index), config.bucket_multiple)
        tokens, mask = left_pad([encoded[i] for i in index], length, int(tokenizer.pad_id))
        row_ids = np.asarray(index, np.int32)[:, None] * k + np.arange(k, dtype=np.int32)
        row_ids = row_ids.reshape(-1)
        if mesh is None:
            args = (jnp.asarray(tokens), jnp.asarray(mask), key, jnp.asarray(row_ids))
            result = sampler(state, *args)
        else:
            with sharding.use_mesh(mesh):
                args = tuple(replicated_array(a, mesh) for a in (tokens, mask, row_ids))
                result = sampler(state, args[0], args[1], key, args[2])
        result = jax.device_get(result)
        real = len(batch)
        shape = (config.batch_size, k)
        out["tokens"][batch] = np.asarray(result.tokens).reshape(*shape, new)[:real]
        out["mask"][batch] = np.asarray(result.mask).reshape(*shape, new)[:real]
        out["lengths"][batch] = np.asarray(result.lengths).reshape(shape)[:real]
        out["truncated"][batch] = np.asarray(result.truncated).reshape(shape)[:real]
        bar.update(1)
    bar.close()
    return out


def evaluate(
    model: nnx.Module,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    config: EvalConfig | None = None,
    *,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluates `model` on `rows`: `generate_samples`, decode, then `grade` (module docstring
    for the result's layout).

    model: an r1 `Transformer` (any object `r1.sampling.sampler.sample` accepts). tokenizer: the
    `r1.data.tokenizers.Tokenizer` protocol. rows: r1 row dicts. mesh: run the sampler under
    this mesh (for a sharded model). progress: show a progress bar over batches.
    """
    config = config or EvalConfig()
    rows = [dict(r) for r in rows]
    if not rows:
        raise ValueError("evaluate: rows is empty")
    start = time.perf_counter()
    prompts = [render_prompt(row, config.template) for row in rows]
    sampled = generate_samples(model, tokenizer, prompts, config, mesh=mesh, progress=progress)
    seconds = time.perf_counter() - start
    completions = [
        [
            tokenizer.decode(sampled["tokens"][p, r][sampled["mask"][p, r]].tolist())
            for r in range(config.num_samples)
        ]
        for p in range(len(rows))
    ]
    result = grade(rows, completions, sampled["lengths"], config, sampled["truncated"], prompts)
    generated = int(sampled["lengths"].sum())
    result["timing"] = {
        "seconds": seconds,
        "generated_tokens": generated,
        "tokens_per_sec": generated / seconds if seconds > 0 else 0.0,
    }
    return result


def grade(
    rows: Sequence[Mapping[str, Any]],
    completions: Sequence[Sequence[str]],
    lengths: Any,
    config: EvalConfig,
    truncated: Any = None,
    prompts: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Scores decoded completions and builds the tables (no model involved).

    rows: P row dicts; completions: [P][k] decoded texts with k = config.num_samples;
    lengths: int[P, k] completion lengths in tokens; truncated: bool[P, k] (default all False);
    prompts: the P rendered prompts (default: rendered with config.template).
    Returns the result layout of the module docstring, without `timing`.
    """
    rows = [dict(r) for r in rows]
    num, k = len(rows), config.num_samples
    lengths = np.asarray(lengths)
    truncated = np.zeros((num, k), bool) if truncated is None else np.asarray(truncated, bool)
    if len(completions) != num or any(len(c) != k for c in completions):
        raise ValueError(f"grade: expected completions of shape [{num}][{k}]")
    if lengths.shape != (num, k) or truncated.shape != (num, k):
        raise ValueError(
            f"grade: lengths {lengths.shape} and truncated {truncated.shape} must be ({num}, {k})"
        )
    if prompts is None:
        prompts = [render_prompt(row, config.template) for row in rows]
    correct = np.zeros((num, k), np.float64)
    failures: collections.Counter[str] = collections.Counter()
    names = [reward_name(row, config.reward) for row in rows]
    for name in sorted(set(names)):
        chosen = [p for p in range(num) if names[p] == name]
        flat_rows = [rows[p] for p in chosen for _ in range(k)]
        scored = (
            rewards_lib.RewardSpec((rewards_lib.RewardTerm(name, 1.0, GRADE_KWARGS.get(name, {})),))
            .compile()
            .score_texts(
                [prompts[p] for p in chosen for _ in range(k)],
                [c for p in chosen for c in completions[p]],
                **reward_fields(flat_rows, name),
            )
        )
        correct[chosen] = np.asarray(scored.breakdown[name], np.float64).reshape(len(chosen), k)
        failures.update(scored.failures)
    answers = [[metrics.vote_key(c, names[p]) for c in completions[p]] for p in range(num)]
    majority = metrics.cons_at_k(answers, correct)
    has_answer = np.asarray([[a is not None for a in row] for row in answers])
    reflections = np.asarray(
        [behaviour.reflection_counts(c, config.language) for c in completions], np.int64
    ).reshape(num, k)

    tasks = [str(row.get("task", DEFAULT_TASK)) for row in rows]
    ks = (1, *config.pass_ks, k)

    def table(sel: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = metrics.summarize(
            correct[sel],
            lengths[sel],
            majority[sel],
            ks,
            truncated=truncated[sel],
            has_answer=has_answer[sel],
        )
        out["reflection_per_1k"] = behaviour.reflection_per_1k(
            reflections[sel].reshape(-1), lengths[sel].reshape(-1)
        )
        out["reflection_share"] = behaviour.reflection_share(reflections[sel].reshape(-1))
        return out

    task_tables: dict[str, Any] = {}
    for task in sorted(set(tasks)):
        in_task = np.asarray([t == task for t in tasks])
        task_tables[task] = table(in_task)
        members = np.flatnonzero(in_task)
        if all("difficulty" in rows[p] for p in members):
            difficulty = np.asarray([int(r.get("difficulty", 0)) for r in rows])
            task_tables[task]["by_difficulty"] = {
                str(d): table(in_task & (difficulty == d))
                for d in sorted(set(difficulty[members].tolist()))
            }

    problems = []
    for p, row in enumerate(rows):
        winner, votes, _ = metrics.majority_vote(answers[p])
        record = {
            "id": str(row.get("id", p)),
            "task": tasks[p],
            "difficulty": int(row["difficulty"]) if "difficulty" in row else None,
            "gold": str(row.get("answer", "")),
            "num_correct": int((correct[p] > 0.5).sum()),
            "majority": winner,
            "votes": votes,
            "cons_correct": bool(majority[p] > 0.5),
            "answers": answers[p],
        }
        if config.keep_completions:
            record["completions"] = completions[p]
        problems.append(record)

    return {
        "num_problems": num,
        "num_samples": k,
        "settings": dataclasses.asdict(config),
        "tasks": task_tables,
        "overall": table(np.ones(num, bool)),
        "problems": problems,
        "reward_failures": dict(sorted(failures.items())),
    }


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, desc="eval", unit="batch")


# ----------------------------------------------------------------------------- writers
def write_json(result: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Writes `result` as indented JSON (creating the directory)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, ensure_ascii=False)
        f.write("\n")


def _metric_columns(result: Mapping[str, Any]) -> list[str]:
    overall = result["overall"]
    passes = sorted((c for c in overall if c.startswith("pass@")), key=lambda c: int(c[5:]))
    cons = [c for c in overall if c.startswith("cons@")]
    return [*passes, *cons]


def to_markdown(result: Mapping[str, Any]) -> str:
    """One Markdown table: a row per task, per (task, difficulty) and overall.

    Rates are percentages; length is the mean completion length in tokens.
    """
    rates = _metric_columns(result)
    extra = ["truncated", "no_answer", "reflection_share"]
    header = ["task", "difficulty", "problems", *rates, "length", *extra]
    lines = [
        "| "
        + " | ".join(
            h if h in ("task", "difficulty", "problems", "length") else f"{h} (%)" for h in header
        )
        + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]

    def line(task: str, difficulty: str, t: Mapping[str, Any]) -> str:
        cells = [task, difficulty, str(int(t["count"]))]
        cells += [f"{100 * t[c]:.1f}" for c in rates]
        cells.append(f"{t['response_length']:.1f}")
        cells += [f"{100 * t[c]:.1f}" if c in t else "" for c in extra]
        return "| " + " | ".join(cells) + " |"

    for task, t in result["tasks"].items():
        lines.append(line(task, "all", t))
        for d, td in t.get("by_difficulty", {}).items():
            lines.append(line(task, d, td))
    if len(result["tasks"]) > 1:
        lines.append(line("**all**", "all", result["overall"]))
    settings = result.get("settings", {})
    note = (
        f"\n{result['num_problems']} problems x {result['num_samples']} samples"
        + (
            " (greedy)"
            if settings.get("greedy")
            else f" (temperature {settings.get('temperature')}, top-p {settings.get('top_p')})"
        )
        + f", at most {settings.get('max_new_tokens')} new tokens.\n"
    )
    return "\n".join(lines) + "\n" + note


def write_markdown(result: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Writes `to_markdown(result)` to `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(to_markdown(result))
