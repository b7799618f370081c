"""A generative reward: a judge model reads (reference, prediction) and writes a verdict.

DeepSeek-R1's stage 3 graded answers that no rule can check "by using a generative reward model,
feeding the ground truth and the model's prediction into DeepSeek-V3 for judgment". Here the
judge is any r1 `Transformer` (a Hugging Face directory r1 loads, a checkpoint the project
trained, or the reference policy itself) and the verdict is parsed by a fixed rule:

* **Prompt.** `JudgeConfig.template` with the fields ``{reference}``, ``{prediction}`` (both
  required), ``{question}`` and ``{reasoning}``. Literal parts and fields are tokenised
  separately and concatenated (`encode_judge_prompt`), each field cut to its first
  `max_field_tokens` tokens, so the host path and the in-graph path build the same ids.
* **Verdict.** ``verdict_format="tags"``: exactly one occurrence of `correct_tag` (score 1) or
  `incorrect_tag` (score 0). ``"score"``: exactly one occurrence of ``score_pattern`` with an
  integer ``0..max_score`` (``[[7]]`` -> 0.7). Anything else (empty, no verdict, several
  verdicts, longer than `max_verdict_chars`, not text) is *unparseable*: score 0, counted,
  never raised (`parse_verdict`, `parse_verdict_tokens`).
* **Host path.** `Judge.score(rows)`: greedy decoding of at most `max_new_tokens` tokens with the
  compiled sampler (`r1.sampling.sampler.make_sampler`), `batch_size` rows per call, prompts
  left-padded to one fixed length (one compilation), then `parse_verdict` on the decoded text.
  Registered as the text rewards ``judge`` (extracts the completion's final answer, calls a
  `Judge`) and ``judge_verdict`` (passes through scores a caller already got from a judge).
* **In-graph path.** `judge_in_graph` / `judge_completions_in_graph`: the same prompt built
  from token arrays with static shapes (`build_judge_prompt`), `sample` with greedy decoding,
  and `parse_verdict_tokens` on the verdict ids: pure and jittable, so a GRPO step can run the
  judge inside its one compiled program with the judge's parameters as a frozen input
  (`make_judge_reward`). It needs verdict strings (and the template's literal parts) that
  tokenise the same in any context, e.g. whole-string or special tokens, and a judge vocabulary
  in which the policy's completion ids mean the same text (the judge tokenizer extends the
  policy's). See docs/judge.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r1 import sharding
from r1.rewards.base import register, row_field
from r1.rewards.extract import final_answer
from r1.rewards.tokens import TagIds, find_sequence
from r1.sampling.sampler import SamplingConfig, left_pad, make_sampler, sample

DEFAULT_TEMPLATE = "Reference: {reference}\nPrediction: {prediction}\nVerdict: "
FIELDS = ("question", "reference", "prediction", "reasoning")
REQUIRED_FIELDS = ("reference", "prediction")
VERDICT_FORMATS = ("tags", "score")
# Failure reasons of a row: the verdict could not be parsed (all count as unparseable) ...
UNPARSEABLE = ("not_text", "empty", "too_long", "no_verdict", "several_verdicts")
# ... or there was nothing to judge (the completion has no final answer).
NO_ANSWER = "no_answer"
TOKENIZER_FILE = "judge_tokenizer.json"
CONFIG_FILE = "judge_config.json"

Segment = tuple[str, str]  # ("text", literal) or ("field", name)


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
    """How the judge is asked and how its verdict is read (module docstring).

    template: prompt with ``{reference}``, ``{prediction}`` and optionally ``{question}``,
    ``{reasoning}`` (literal braces as ``{{``, ``}}``). verdict_format: "tags" or "score".
    correct_tag / incorrect_tag: the two verdicts of "tags". score_pattern: the verdict of
    "score", with ``{score}`` an integer 0..max_score. max_new_tokens: verdict tokens generated
    (greedy). max_verdict_chars: longer verdict texts are unparseable. max_field_tokens: each
    field is cut to this many tokens. batch_size: rows per sampler call. add_bos: prepend BOS.
    """

    template: str = DEFAULT_TEMPLATE
    verdict_format: str = "tags"
    correct_tag: str = "[[CORRECT]]"
    incorrect_tag: str = "[[INCORRECT]]"
    score_pattern: str = "[[{score}]]"
    max_score: int = 10
    max_new_tokens: int = 8
    max_verdict_chars: int = 512
    max_field_tokens: int = 32
    batch_size: int = 8
    add_bos: bool = False

    def __post_init__(self):
        if self.verdict_format not in VERDICT_FORMATS:
            raise ValueError(
                f"JudgeConfig.verdict_format: expected one of {VERDICT_FORMATS}, "
                f"got {self.verdict_format!r}"
            )
        for name in ("max_new_tokens", "max_verdict_chars", "max_field_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"JudgeConfig.{name}: expected >= 1, got {getattr(self, name)}")
        if self.max_score < 1:
            raise ValueError(f"JudgeConfig.max_score: expected >= 1, got {self.max_score}")
        names = [v for k, v in self.segments() if k == "field"]
        missing = [f for f in REQUIRED_FIELDS if f not in names]
        if missing:
            raise ValueError(f"JudgeConfig.template: missing the field(s) {missing}")
        if self.verdict_format == "score" and "{score}" not in self.score_pattern:
            raise ValueError("JudgeConfig.score_pattern: expected a '{score}' placeholder")
        verdicts = verdict_strings(self)
        if any(not v for v in verdicts):
            raise ValueError("JudgeConfig: verdict strings must not be empty")
        for a in verdicts:
            for b in verdicts:
                if a != b and a in b:
                    raise ValueError(
                        f"JudgeConfig: verdict {a!r} occurs inside verdict {b!r}; choose "
                        "verdict strings that do not contain one another (e.g. '[[7]]')"
                    )

    def segments(self) -> tuple[Segment, ...]:
        """The template as ("text", literal) and ("field", name) parts, in order."""
        out: list[Segment] = []
        try:
            parsed = list(string.Formatter().parse(self.template))
        except ValueError as err:
            raise ValueError(f"JudgeConfig.template: {err}") from err
        for literal, field, spec, conversion in parsed:
            if literal:
                out.append(("text", literal))
            if field is None:
                continue
            if field not in FIELDS or spec or conversion:
                raise ValueError(
                    f"JudgeConfig.template: unknown placeholder {{{field}}}; expected plain "
                    f"{', '.join('{' + f + '}' for f in FIELDS)}"
                )
            if any(k == "field" and v == field for k, v in out):
                raise ValueError(f"JudgeConfig.template: {{{field}}} occurs twice")
            out.append(("field", field))
        return tuple(out)

    def fields(self) -> tuple[str, ...]:
        """The template's field names, in order."""
        return tuple(v for k, v in self.segments() if k == "field")


def verdict_strings(config: JudgeConfig) -> tuple[str, ...]:
    """The verdict strings the parser looks for (see `verdict_values` for their scores)."""
    if config.verdict_format == "tags":
        return (config.correct_tag, config.incorrect_tag)
    return tuple(config.score_pattern.format(score=s) for s in range(config.max_score + 1))


def verdict_values(config: JudgeConfig) -> tuple[float, ...]:
    """Score in [0, 1] of each of `verdict_strings`."""
    if config.verdict_format == "tags":
        return (1.0, 0.0)
    return tuple(s / config.max_score for s in range(config.max_score + 1))


# ----------------------------------------------------------------------------- prompts
def _field_text(row: Mapping[str, Any], name: str) -> str:
    value = row.get(name)
    return "" if value is None else str(value).strip()


def render_judge_prompts(rows: Sequence[Mapping[str, Any]], config: JudgeConfig) -> list[str]:
    """The judging prompt text of each row (fields stripped; a missing optional field is "")."""
    out = []
    for row in rows:
        parts = [v if k == "text" else _field_text(row, v) for k, v in config.segments()]
        out.append("".join(parts))
    return out


def encode_judge_prompt(
    tokenizer: Any, row: Mapping[str, Any], config: JudgeConfig
) -> tuple[list[int], bool]:
    """(ids, truncated): the template's parts tokenised one by one (BOS first with `add_bos`),
    each field cut to its first `max_field_tokens` ids (truncated: some field was cut)."""
    ids: list[int] = [tokenizer.bos_id] if config.add_bos and tokenizer.bos_id is not None else []
    truncated = False
    for kind, value in config.segments():
        if kind == "text":
            ids += tokenizer.encode(value)
        else:
            field = tokenizer.encode(_field_text(row, value))
            truncated |= len(field) > config.max_field_tokens
            ids += field[: config.max_field_tokens]
    return ids, truncated


def max_prompt_tokens(tokenizer: Any, config: JudgeConfig) -> int:
    """The longest prompt `encode_judge_prompt` can produce (the fixed prompt length)."""
    fixed = sum(len(tokenizer.encode(v)) for k, v in config.segments() if k == "text")
    bos = 1 if config.add_bos and tokenizer.bos_id is not None else 0
    return bos + fixed + len(config.fields()) * config.max_field_tokens


# ----------------------------------------------------------------------------- parsing (text)
def parse_verdict(text: Any, config: JudgeConfig) -> tuple[float, str]:
    """(score in [0, 1], reason): reason is "" when the verdict parsed, else one of
    `UNPARSEABLE` and the score is 0. Never raises."""
    if not isinstance(text, str):
        return 0.0, "not_text"
    if not text.strip():
        return 0.0, "empty"
    if len(text) > config.max_verdict_chars:
        return 0.0, "too_long"
    counts = [text.count(v) for v in verdict_strings(config)]
    total = sum(counts)
    if total == 0:
        return 0.0, "no_verdict"
    if total > 1:
        return 0.0, "several_verdicts"
    return float(verdict_values(config)[counts.index(1)]), ""


def parse_verdicts(
    texts: Sequence[Any], config: JudgeConfig
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`parse_verdict` over a batch: (scores float32[B], unparseable bool[B], reasons)."""
    parsed = [parse_verdict(t, config) for t in texts]
    scores = np.asarray([s for s, _ in parsed], np.float32).reshape(-1)
    reasons = [r for _, r in parsed]
    return scores, np.asarray([bool(r) for r in reasons], bool).reshape(-1), reasons


# ----------------------------------------------------------------------------- token level
@dataclasses.dataclass(frozen=True)
class JudgeTokens:
    """Static token ids of a judge: the template as id tuples and field names, the verdict id
    sequences with their scores, EOS, pad and `max_field_tokens`. Hashable (a static argument).
    """

    segments: tuple[tuple[int, ...] | str, ...]
    verdicts: tuple[tuple[int, ...], ...]
    values: tuple[float, ...]
    eos_id: int
    pad_id: int
    max_field_tokens: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, config: JudgeConfig) -> JudgeTokens:
        """Ids from `tokenizer.encode`; the verdicts must tokenise the same in any context."""
        segments: list[tuple[int, ...] | str] = []
        if config.add_bos and tokenizer.bos_id is not None:
            segments.append((int(tokenizer.bos_id),))
        for kind, value in config.segments():
            if kind == "text":
                segments.append(tuple(int(i) for i in tokenizer.encode(value)))
            else:
                segments.append(value)
        verdicts = tuple(
            tuple(int(i) for i in tokenizer.encode(v)) for v in verdict_strings(config)
        )
        if any(not v for v in verdicts):
            raise ValueError("JudgeTokens: a verdict string encodes to no tokens")
        return cls(
            tuple(segments),
            verdicts,
            verdict_values(config),
            int(tokenizer.eos_id),
            int(tokenizer.pad_id),
            config.max_field_tokens,
        )

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(s for s in self.segments if isinstance(s, str))

    def prompt_length(self) -> int:
        """Static length of `build_judge_prompt`'s output."""
        return sum(self.max_field_tokens if isinstance(s, str) else len(s) for s in self.segments)


def parse_verdict_tokens(
    tokens: jax.Array, mask: jax.Array, judge_tokens: JudgeTokens
) -> tuple[jax.Array, jax.Array]:
    """The verdict rule on ids: (scores float32[B], unparseable bool[B]).

    tokens: int32[B, N] verdict ids; mask: bool[B, N] (True on generated tokens). Parsed when
    exactly one verdict id sequence occurs at unmasked positions (score = its value); empty,
    none or several: unparseable, score 0.
    """
    mask = mask.astype(bool)
    counts = jnp.stack(
        [jnp.sum(find_sequence(tokens, mask, v), axis=1) for v in judge_tokens.verdicts], axis=1
    ).astype(jnp.int32)
    total = jnp.sum(counts, axis=1)
    values = jnp.asarray(judge_tokens.values, jnp.float32)
    parsed = total == 1
    score = jnp.sum(jnp.where(counts == 1, values[None, :], 0.0), axis=1)
    return jnp.where(parsed, score, 0.0).astype(jnp.float32), ~parsed


def _first_true(found: jax.Array) -> jax.Array:
    """int32[B]: the first True index of bool[B, T], or T."""
    index = jnp.arange(found.shape[1], dtype=jnp.int32)[None, :]
    return jnp.min(jnp.where(found, index, found.shape[1]), axis=1)


def _last_true(found: jax.Array) -> jax.Array:
    """int32[B]: the last True index of bool[B, T], or -1."""
    index = jnp.arange(found.shape[1], dtype=jnp.int32)[None, :]
    return jnp.max(jnp.where(found, index, -1), axis=1)


def _keep_first(mask: jax.Array, limit: int) -> jax.Array:
    """bool[B, T]: the first `limit` True positions of each row of `mask`."""
    return mask & (jnp.cumsum(mask.astype(jnp.int32), axis=1) <= limit)


def build_judge_prompt(
    judge_tokens: JudgeTokens, fields: Mapping[str, tuple[jax.Array, jax.Array]]
) -> tuple[jax.Array, jax.Array]:
    """The judging prompt from token arrays, left-padded, with a static shape.

    fields: name -> (tokens int32[B, X], mask bool[B, X]) for each template field; a field's
    tokens are its True positions in order (they need not be contiguous), cut to the first
    `max_field_tokens`. Returns (tokens int32[B, S], mask bool[B, S]) with S =
    `judge_tokens.prompt_length()`: the template's ids and the fields' ids concatenated and
    right-aligned, the same ids `encode_judge_prompt` gives for the same texts.
    """
    missing = [f for f in judge_tokens.fields if f not in fields]
    if missing:
        raise ValueError(f"build_judge_prompt: the template needs the field(s) {missing}")
    batch = next(iter(fields.values()))[0].shape[0]
    parts, valid = [], []
    for segment in judge_tokens.segments:
        if isinstance(segment, str):
            tokens, mask = fields[segment]
            if tokens.shape[0] != batch or tokens.shape != mask.shape:
                raise ValueError(f"build_judge_prompt: field {segment!r} has shape {tokens.shape}")
            keep = _keep_first(mask.astype(bool), judge_tokens.max_field_tokens)
            # Static width: exactly max_field_tokens slots per field (padding is masked).
            width = tokens.shape[1]
            if width < judge_tokens.max_field_tokens:
                extra = judge_tokens.max_field_tokens - width
                tokens = jnp.pad(tokens, ((0, 0), (0, extra)))
                keep = jnp.pad(keep, ((0, 0), (0, extra)))
            compact_tokens, compact_mask = _left_align(tokens.astype(jnp.int32), keep, 0)
            parts.append(compact_tokens[:, : judge_tokens.max_field_tokens])
            valid.append(compact_mask[:, : judge_tokens.max_field_tokens])
        elif segment:
            ids = jnp.asarray(segment, jnp.int32)[None, :]
            parts.append(jnp.broadcast_to(ids, (batch, len(segment))))
            valid.append(jnp.ones((batch, len(segment)), bool))
    tokens = jnp.concatenate(parts, axis=1)
    mask = jnp.concatenate(valid, axis=1)
    return _right_align(tokens, mask, judge_tokens.pad_id)


def _left_align(tokens: jax.Array, mask: jax.Array, pad_id: int) -> tuple[jax.Array, jax.Array]:
    """Moves the True positions of each row to the front, in order (static shape)."""
    length = tokens.shape[1]
    dest = jnp.where(mask, jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, length)
    return _scatter(tokens, mask, dest, pad_id)


def _right_align(tokens: jax.Array, mask: jax.Array, pad_id: int) -> tuple[jax.Array, jax.Array]:
    """Moves the True positions of each row to the end, in order (left padding)."""
    length = tokens.shape[1]
    after = jnp.flip(jnp.cumsum(jnp.flip(mask.astype(jnp.int32), axis=1), axis=1), axis=1)
    dest = jnp.where(mask, length - after, length)
    return _scatter(tokens, mask, dest, pad_id)


def _scatter(tokens, mask, dest, pad_id):
    batch, length = tokens.shape
    rows = jnp.broadcast_to(jnp.arange(batch, dtype=jnp.int32)[:, None], (batch, length))
    out = jnp.full((batch, length), pad_id, jnp.int32).at[rows, dest].set(tokens, mode="drop")
    out_mask = jnp.zeros((batch, length), bool).at[rows, dest].set(mask, mode="drop")
    return out, out_mask


def judge_in_graph(
    judge_model: nnx.Module,
    prompt_tokens: jax.Array,
    prompt_mask: jax.Array,
    judge_tokens: JudgeTokens,
    max_new_tokens: int,
) -> tuple[jax.Array, jax.Array]:
    """Greedy verdicts of `judge_model` for left-padded judging prompts, parsed on ids.

    prompt_tokens: int32[B, S], prompt_mask: bool[B, S] (e.g. from `build_judge_prompt`).
    Returns (scores float32[B] in [0, 1], unparseable bool[B]), both without gradient. Pure and
    jittable: call it inside a compiled step with `nnx.merge(graphdef, judge_state)`.
    """
    config = SamplingConfig(
        max_new_tokens=max_new_tokens,
        greedy=True,
        eos_ids=(judge_tokens.eos_id,),
        pad_id=judge_tokens.pad_id,
    )
    out = sample(judge_model, prompt_tokens, prompt_mask, jax.random.key(0), config)
    scores, unparseable = parse_verdict_tokens(out.tokens, out.mask, judge_tokens)
    return jax.lax.stop_gradient(scores), unparseable


def tag_span(
    tokens: jax.Array,
    mask: jax.Array,
    open_ids: Sequence[int],
    close_ids: Sequence[int],
    whitespace: Sequence[int] = (),
    last: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """(span bool[B, T], found bool[B]): the ids between the last (`last`) or first opening tag
    and the first closing tag after it, without leading/trailing `whitespace` ids; the token
    twin of `r1.rewards.extract.answer_content(...).strip()`."""
    mask = mask.astype(bool)
    length = tokens.shape[1]
    index = jnp.arange(length, dtype=jnp.int32)[None, :]
    opens = find_sequence(tokens, mask, open_ids)
    start_tag = _last_true(opens) if last else _first_true(opens)
    has_open = (start_tag >= 0) & (start_tag < length)
    start = start_tag + len(open_ids)
    closes = find_sequence(tokens, mask, close_ids) & (index >= start[:, None])
    end = _first_true(closes)
    found = has_open & (end < length)
    inside = (index >= start[:, None]) & (index < end[:, None]) & mask & found[:, None]
    is_space = jnp.zeros(tokens.shape, bool)
    for i in whitespace:
        is_space = is_space | (tokens == i)
    body = inside & ~is_space
    lo, hi = _first_true(body), _last_true(body)
    span = inside & (index >= lo[:, None]) & (index <= hi[:, None])
    return span, found


def judge_completions_in_graph(
    judge_model: nnx.Module,
    completion_tokens: jax.Array,
    completion_mask: jax.Array,
    reference_tokens: jax.Array,
    reference_mask: jax.Array,
    *,
    judge_tokens: JudgeTokens,
    tag_ids: TagIds,
    max_new_tokens: int,
    question: tuple[jax.Array, jax.Array] | None = None,
) -> dict[str, jax.Array]:
    """Judges policy completions in-graph: final answer (last ``<answer>`` content, stripped) as
    the prediction, the reference ids as the reference, the think content as ``{reasoning}``.

    completion_*: [B, N] policy ids (the judge's vocabulary must give them the same meaning);
    reference_*: [B, R]; question: optional (tokens, mask) [B, Q] for ``{question}``. Returns
    {"scores": float32[B] (0 where there is no answer), "unparseable": bool[B],
    "no_answer": bool[B], "prompt_tokens", "prompt_mask"}.
    """
    tags = tag_ids.tags
    answer, has_answer = tag_span(
        completion_tokens, completion_mask, tags[2], tags[3], tag_ids.whitespace, last=True
    )
    fields = {
        "reference": (reference_tokens, reference_mask.astype(bool)),
        "prediction": (completion_tokens, answer),
    }
    if "reasoning" in judge_tokens.fields:
        think, _ = tag_span(
            completion_tokens, completion_mask, tags[0], tags[1], tag_ids.whitespace, last=False
        )
        fields["reasoning"] = (completion_tokens, think)
    if "question" in judge_tokens.fields:
        if question is None:
            raise ValueError("judge_completions_in_graph: the template needs {question}")
        fields["question"] = (question[0], question[1].astype(bool))
    prompt_tokens, prompt_mask = build_judge_prompt(judge_tokens, fields)
    scores, unparseable = judge_in_graph(
        judge_model, prompt_tokens, prompt_mask, judge_tokens, max_new_tokens
    )
    return {
        "scores": jnp.where(has_answer, scores, 0.0),
        "unparseable": unparseable & has_answer,
        "no_answer": ~has_answer,
        "prompt_tokens": prompt_tokens,
        "prompt_mask": prompt_mask,
    }


JudgeRewardFn = Callable[
    [jax.Array, jax.Array, jax.Array, Mapping[str, jax.Array], Any],
    tuple[jax.Array, dict[str, jax.Array]],
]


def make_judge_reward(
    judge_graphdef: nnx.GraphDef,
    judge_tokens: JudgeTokens,
    tag_ids: TagIds,
    max_new_tokens: int,
    name: str = "judge",
) -> JudgeRewardFn:
    """A GRPO reward `fn(completion, completion_mask, truncated, fields, judge_state) ->
    (scores float32[B], {name: scores, name/unparseable: float32[B], name/no_answer: ...})`.

    fields must hold "judge_reference_tokens" int32[B, R] and "judge_reference_mask" bool[B, R]
    (per-prompt batch fields repeated per row by the step). judge_state: the judge's
    `nnx.split` state, a frozen input of the step (like the reference policy's params).
    """

    def reward(completion, completion_mask, truncated, fields, judge_state):
        del truncated
        for key in ("judge_reference_tokens", "judge_reference_mask"):
            if key not in fields:
                raise ValueError(f"judge reward: the batch needs the field {key!r}")
        judge = nnx.merge(judge_graphdef, judge_state)
        out = judge_completions_in_graph(
            judge,
            completion,
            completion_mask,
            fields["judge_reference_tokens"],
            fields["judge_reference_mask"],
            judge_tokens=judge_tokens,
            tag_ids=tag_ids,
            max_new_tokens=max_new_tokens,
        )
        parts = {
            name: out["scores"],
            f"{name}/unparseable": out["unparseable"].astype(jnp.float32),
            f"{name}/no_answer": out["no_answer"].astype(jnp.float32),
        }
        return out["scores"], parts

    return reward


# ----------------------------------------------------------------------------- host judge
def load_judge_tokenizer(path: str) -> Any:
    """The tokenizer saved with a judge: `path/judge_tokenizer.json` (a demo tokenizer) if
    present, else the Hugging Face `tokenizer.json` of `path`."""
    from r1.data.tokenizers import DemoTokenizer, HFTokenizer  # noqa: PLC0415 - avoid a cycle

    demo = os.path.join(path, TOKENIZER_FILE)
    if os.path.exists(demo):
        return DemoTokenizer.load(demo)
    if os.path.exists(os.path.join(path, "tokenizer.json")):
        return HFTokenizer.from_file(path)
    raise FileNotFoundError(
        f"judge: {path} holds neither {TOKENIZER_FILE} nor tokenizer.json; pass a tokenizer"
    )


def load_judge_config(path: str) -> JudgeConfig:
    """The `JudgeConfig` saved with a judge (`path/judge_config.json`), else the default."""
    file = os.path.join(path, CONFIG_FILE)
    if not os.path.exists(file):
        return JudgeConfig()
    try:
        with open(file) as f:
            values = json.load(f)
        return JudgeConfig(**values)
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"judge: {file} is not a JudgeConfig: {err}") from err


class Judge:
    """A judge model on the host: `score(rows) -> (scores float32[B], info)`.

    Build it with `Judge.load(path, config)` (a Hugging Face directory r1 loads; a bad path,
    checkpoint or tokenizer raises here, at start) or `Judge.from_model(model, tokenizer,
    config, name)` (e.g. the reference policy). Rows are mappings with "reference",
    "prediction" (None: no answer, score 0, not sent to the judge) and optionally "question",
    "reasoning".
    """

    def __init__(
        self,
        model: nnx.Module,
        tokenizer: Any,
        config: JudgeConfig,
        *,
        name: str,
        mesh: jax.sharding.Mesh | None = None,
    ):
        self.config, self.tokenizer, self.name, self.mesh = config, tokenizer, name, mesh
        self.model = model
        model_cfg = model.config
        if tokenizer.vocab_size > model_cfg.vocab_size:
            raise ValueError(
                f"judge {name}: tokenizer has {tokenizer.vocab_size} ids but the model's "
                f"vocab_size is {model_cfg.vocab_size}"
            )
        self.tokens = JudgeTokens.from_tokenizer(tokenizer, config)
        self.prompt_length = max_prompt_tokens(tokenizer, config)
        needed = self.prompt_length + config.max_new_tokens
        if needed > model_cfg.max_position_embeddings:
            raise ValueError(
                f"judge {name}: prompts of up to {self.prompt_length} tokens plus "
                f"max_new_tokens={config.max_new_tokens} exceed the model's "
                f"max_position_embeddings={model_cfg.max_position_embeddings}; lower "
                "max_field_tokens or max_new_tokens"
            )
        graphdef, self._state = nnx.split(model)
        sampling = SamplingConfig(
            max_new_tokens=config.max_new_tokens,
            greedy=True,
            eos_ids=(int(tokenizer.eos_id),),
            pad_id=int(tokenizer.pad_id),
        )
        jit_kwargs = {}
        if mesh is not None:
            self._replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
            jit_kwargs["out_shardings"] = self._replicated
        self._sample = make_sampler(graphdef, sampling, **jit_kwargs)
        self._key = jax.random.key(0)

    @classmethod
    def from_model(
        cls,
        model: nnx.Module,
        tokenizer: Any,
        config: JudgeConfig,
        name: str,
        mesh: jax.sharding.Mesh | None = None,
    ) -> Judge:
        """A judge from a model in memory (e.g. the reference policy)."""
        return cls(model, tokenizer, config, name=name, mesh=mesh)

    @classmethod
    def load(
        cls,
        path: str,
        config: JudgeConfig | None = None,
        *,
        tokenizer: Any = None,
        mesh: jax.sharding.Mesh | None = None,
        abstract: bool = False,
        **model_overrides: Any,
    ) -> Judge:
        """Loads the judge at `path` (Hugging Face layout; `load_judge_tokenizer` unless a
        tokenizer is given) onto `mesh` (default: all devices). config: default the
        `judge_config.json` saved with the judge, else `JudgeConfig()`. abstract: the model
        without weights (`r1.models.hf.load_abstract`; ahead-of-time compilation). Errors name
        the path."""
        from r1.models import hf  # noqa: PLC0415 - heavy import kept local

        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"judge: {path} is not a directory (a judge checkpoint)")
        if config is None:
            config = load_judge_config(path)
        tokenizer = tokenizer if tokenizer is not None else load_judge_tokenizer(path)
        mesh = mesh if mesh is not None else sharding.make_mesh()
        try:
            if abstract:
                _, model = hf.load_abstract(path, **model_overrides)
            else:
                _, model = hf.load(path, mesh=mesh, **model_overrides)
        except (FileNotFoundError, ValueError, KeyError, OSError) as err:
            raise ValueError(f"judge: cannot load the judge model at {path}: {err}") from err
        return cls(model, tokenizer, config, name=path, mesh=mesh)

    @property
    def identity(self) -> dict[str, Any]:
        """Who judged: the model name/path and a hash of the judging configuration."""
        digest = hashlib.sha256(repr(self.config).encode()).hexdigest()[:12]
        return {"model": self.name, "config": digest, "verdict_format": self.config.verdict_format}

    def __repr__(self) -> str:
        return f"Judge({self.name!r}, {self.config!r})"

    def _put(self, array: np.ndarray) -> Any:
        if self.mesh is None:
            return array
        return jax.make_array_from_callback(array.shape, self._replicated, lambda i: array[i])

    def _generate(self, prompts: list[list[int]]) -> list[list[int]]:
        """Greedy verdict ids (EOS removed) for up to `batch_size` prompts."""
        n, size = len(prompts), self.config.batch_size
        padded = prompts + [prompts[-1]] * (size - n)
        tokens, mask = left_pad(padded, self.prompt_length, int(self.tokenizer.pad_id))
        args = (self._put(tokens), self._put(mask), self._key)
        if self.mesh is None:
            out = self._sample(self._state, *args)
        else:
            with sharding.use_mesh(self.mesh):
                out = self._sample(self._state, *args)
        out_tokens, out_mask = jax.device_get((out.tokens, out.mask))
        keep = out_mask & (out_tokens != int(self.tokenizer.eos_id))
        return [out_tokens[r][keep[r]].tolist() for r in range(n)]

    def score(self, rows: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, dict[str, Any]]:
        """Scores float32[B] in [0, 1] and info: "verdicts" (decoded text, None when not
        judged), "reasons" ("" / "no_answer" / an `UNPARSEABLE` reason), "unparseable"
        bool[B], "verdict_tokens" (ids), "metrics" (counts: judged, unparseable, no_answer,
        truncated_fields)."""
        n = len(rows)
        scores = np.zeros(n, np.float32)
        reasons = [""] * n
        verdicts: list[str | None] = [None] * n
        verdict_ids: list[list[int] | None] = [None] * n
        todo, prompts, truncated = [], [], 0
        for i, row in enumerate(rows):
            if row.get("prediction") is None:
                reasons[i] = NO_ANSWER
                continue
            ids, cut = encode_judge_prompt(self.tokenizer, row, self.config)
            truncated += cut
            todo.append(i)
            prompts.append(ids)
        size = self.config.batch_size
        for lo in range(0, len(todo), size):
            for i, ids in zip(todo[lo : lo + size], self._generate(prompts[lo : lo + size])):
                verdict_ids[i] = ids
                verdicts[i] = self.tokenizer.decode(ids)
                scores[i], reasons[i] = parse_verdict(verdicts[i], self.config)
        unparseable = np.asarray([r in UNPARSEABLE for r in reasons], bool).reshape(-1)
        info = {
            "verdicts": verdicts,
            "reasons": reasons,
            "unparseable": unparseable,
            "verdict_tokens": verdict_ids,
            "metrics": {
                "judge/judged": len(todo),
                "judge/unparseable": int(unparseable.sum()),
                "judge/no_answer": n - len(todo),
                "judge/truncated_fields": int(truncated),
            },
        }
        return scores, info


# ----------------------------------------------------------------------------- text rewards
@register("judge", "text", fields=("answer",), doc="a judge model's verdict on the final answer")
def judge_reward(
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    judge: Judge,
    answer: Sequence[Any],
    question: Sequence[Any] | None = None,
    **_: Any,
) -> tuple[np.ndarray, list[str]]:
    """float32[B]: `judge.score` of (reference = `answer`, prediction = the completion's final
    answer); reasons "no_answer" or the unparseable reason. kwargs: judge (a `Judge`)."""
    batch = len(completions)
    answers = row_field({"answer": answer}, "answer", batch, "judge")
    questions = [None] * batch if question is None else list(question)
    rows = []
    for completion, ref, q in zip(completions, answers, questions):
        pred = final_answer(completion) if isinstance(completion, str) else None
        rows.append(
            {"reference": ref, "prediction": None if pred is None else pred.strip(), "question": q}
        )
    scores, info = judge.score(rows)
    return scores, list(info["reasons"])


@register(
    "judge_verdict",
    "text",
    fields=("judge_score", "judge_reason"),
    doc="scores a caller already got from `Judge.score`, passed through with their reasons",
)
def judge_verdict(
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    judge_score: Sequence[float],
    judge_reason: Sequence[str] | None = None,
    **_: Any,
) -> tuple[np.ndarray, list[str]]:
    """float32[B]: `judge_score` per row, with `judge_reason` ("" when none) as the reasons."""
    batch = len(completions)
    scores = row_field({"judge_score": judge_score}, "judge_score", batch, "judge_verdict")
    reasons = [""] * batch if judge_reason is None else [str(r) for r in judge_reason]
    if len(reasons) != batch:
        raise ValueError(f"judge_verdict: {len(reasons)} reasons for {batch} rows")
    return np.asarray(scores, np.float32).reshape(-1), reasons
