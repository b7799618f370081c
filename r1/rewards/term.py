"""A `RewardTerm` (one weighted reward of a `RewardSpec`), row selection, text-field bytes.

See `r1.rewards.spec` for the kinds, rows and the non-finite rule.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from r1.rewards.base import MissingField, Reward, finite_scores, get

BYTES_SUFFIX = "__bytes"
KINDS = ("token", "text", "model")
ROWS = ("all", "general", "reasoning")
NON_FINITE = "non_finite"
OTHER = "other"  # a text reward returned a reason it did not declare (`Reward.reasons`)
RAISED = "raised"  # a text reward's call raised: its rows score 0
TIMED_OUT = "timed_out"  # a text reward's call ran past the term's `timeout_s`: its rows score 0
GUARD_REASONS = (NON_FINITE, RAISED, TIMED_OUT, OTHER)
DEFAULT_TIMEOUT_S = 900.0

log = logging.getLogger(__name__)

# (frozen model state, prompt tokens int32[B, L], prompt mask bool[B, L], completion int32[B, N],
#  completion mask bool[B, N], per-row fields) -> (score float32[B], {part: float32[B]})
ModelScoreFn = Callable[
    [Any, jax.Array, jax.Array, jax.Array, jax.Array, Mapping[str, jax.Array]],
    tuple[jax.Array, Mapping[str, jax.Array]],
]
# {field: host values[P]} -> {array name: array[P, ...]}
FieldEncoder = Callable[[Mapping[str, Sequence[Any]]], dict[str, np.ndarray]]


# ----------------------------------------------------------------------------- text fields
def encode_text_fields(
    fields: Mapping[str, Sequence[Any]], width_multiple: int = 32
) -> dict[str, np.ndarray]:
    """{name: values[P]} -> {name__bytes: uint8[P, A]}: UTF-8 bytes, zero-padded to A =
    `width_multiple` times a power of two (few shapes get compiled even when lengths vary
    widely, as a code row's tests do); lists and dicts are stored as JSON."""
    out = {}
    for name, values in fields.items():
        encoded = [
            (v if isinstance(v, str) else json.dumps(v)).encode("utf-8", "surrogateescape")
            for v in values
        ]
        longest = max((len(e) for e in encoded), default=0)
        blocks = max(1, -(-longest // width_multiple))
        width = width_multiple * (1 << (blocks - 1).bit_length())
        array = np.zeros((len(encoded), width), np.uint8)
        for i, e in enumerate(encoded):
            array[i, : len(e)] = np.frombuffer(e, np.uint8)
        out[name + BYTES_SUFFIX] = array
    return out


def decode_text_field(array: np.ndarray) -> list[Any]:
    """uint8[B, A] from `encode_text_fields` -> the values (JSON lists / dicts parsed back)."""
    values: list[Any] = []
    for row in np.asarray(array):
        text = bytes(row[row != 0].tolist()).decode("utf-8", "surrogateescape")
        if text.startswith(("[", "{")):
            try:
                values.append(json.loads(text))
                continue
            except json.JSONDecodeError:
                pass
        values.append(text)
    return values


def is_numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (bool, int, float, np.number, np.bool_)) for v in values)


def numeric_array(values: Sequence[Any]) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype == bool:
        return array
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.int32)
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32)
    return np.asarray(values, np.int32)


DOMAIN_PREFIX = "domain:"


def rows_domain(rows: str) -> str | None:
    """The domain a ``"domain:<name>"`` selector names, else None."""
    return rows[len(DOMAIN_PREFIX) :] if rows.startswith(DOMAIN_PREFIX) else None


def valid_rows(rows: Any) -> bool:
    return isinstance(rows, str) and (rows in ROWS or bool(rows_domain(rows)))


def row_selector(
    rows: str, fields: Mapping[str, Any], domains: Sequence[str] = ()
) -> jax.Array | None:
    """bool[B] of the rows a term with selector `rows` scores, or None for every row.

    "all"; "general" / "reasoning" (by the bool field ``general``; every row when the batch
    has none); ``"domain:<name>"``: rows whose int field ``domain`` is the index of <name> in
    `domains` (the compiled spec's domain table)."""
    domain = rows_domain(rows)
    if domain is not None:
        if domain not in domains:
            raise ValueError(f"row selector {rows!r}: domain not among {tuple(domains)}")
        if "domain" not in fields:
            raise ValueError(
                f"row selector {rows!r}: the batch has no int field 'domain' (the compiled "
                "spec's encode_fields makes it from the rows' domains)"
            )
        return jnp.asarray(fields["domain"]) == domains.index(domain)
    if rows == "all" or "general" not in fields:
        return None
    general = jnp.asarray(fields["general"]).astype(bool)
    if rows == "general":
        return general
    if rows == "reasoning":
        return ~general
    raise ValueError(f"row selector: expected one of {ROWS} or 'domain:<name>', got {rows!r}")


# ----------------------------------------------------------------------------- results
@dataclasses.dataclass(frozen=True)
class RewardResult:
    """Host scores of a batch (`CompiledSpec.score_texts`).

    Attributes:
      total: float32[B], the weighted sum.
      breakdown: term label -> float32[B] unweighted scores (for logging).
      failures: ``"<label>/<reason>" -> count`` over the batch, e.g. ``{"math/timeout": 2}``.
    """

    total: np.ndarray
    breakdown: dict[str, np.ndarray]
    failures: dict[str, int]


class ScorerOutput(NamedTuple):
    """What the compiled scorer returns inside the GRPO step (a pytree).

    total: float32[B]. parts: {label: float32[B]} plus ``"<label>/<part>"`` of model terms.
    failures: {"<label>/<reason>": int32[]} counts in this batch (every key, zeros included).
    """

    total: jax.Array
    parts: dict[str, jax.Array]
    failures: dict[str, jax.Array]


# ----------------------------------------------------------------------------- terms
@dataclasses.dataclass(frozen=True)
class RewardTerm:
    """One weighted term: ``weight * score`` (module docstring for the kinds and rows).

    name: the registry name of a rule reward (or the name of a model term). weight: its factor
    in the total. kwargs: static keyword arguments of a rule reward; ``correct_from="<label>"``
    passes ``correct = scores[label] > 0.5`` of an earlier rule term. key: the term's label in
    parts and failure counts (defaults to `name`; set it to use one reward twice). kind:
    "token" / "text" (default: the registered kind) or "model". rows: "all", "general",
    "reasoning" (model terms; rule terms never score general rows), or "domain:<name>" (the
    rows of that domain: per-domain rewards). score: a model term's
    `ModelScoreFn`. fields: the per-row fields the term reads (default: the reward's). encode:
    a model term's `FieldEncoder`. reward: a rule `Reward` not in the registry (e.g.
    `r1.judge.JUDGE_VERDICT`). timeout_s: a text term's wall-clock limit per call (a batch),
    0 for none; a call that raises or runs past it scores its rows 0 with reason ``raised`` /
    ``timed_out`` (counted in the failures) and the step goes on.
    """

    name: str
    weight: float = 1.0
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    key: str = ""
    kind: str = ""
    rows: str = "all"
    score: ModelScoreFn | None = None
    fields: tuple[str, ...] | None = None
    encode: FieldEncoder | None = None
    reward: Reward | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self):
        where = f"reward term {self.label!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"reward term: name must be a non-empty string, got {self.name!r}")
        try:
            weight = float(self.weight)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: weight must be a number, got {self.weight!r}") from None
        if not math.isfinite(weight):
            raise ValueError(f"{where}: weight must be finite, got {weight}")
        object.__setattr__(self, "weight", weight)
        if not isinstance(self.timeout_s, (int, float)) or not self.timeout_s >= 0:
            raise ValueError(f"{where}: timeout_s must be a number >= 0, got {self.timeout_s!r}")
        if not isinstance(self.kwargs, Mapping):
            raise ValueError(f"{where}: kwargs must be a mapping, got {self.kwargs!r}")
        if self.kind not in ("", *KINDS):
            raise ValueError(f"{where}: kind must be one of {KINDS}, got {self.kind!r}")
        if not valid_rows(self.rows):
            raise ValueError(
                f"{where}: rows must be one of {ROWS} or 'domain:<name>', got {self.rows!r}"
            )
        if self.kind == "model" or self.score is not None:
            if self.score is None or not callable(self.score):
                raise ValueError(f"{where}: a model term needs its `score` callable")
            if self.kind not in ("", "model") or self.reward is not None:
                raise ValueError(f"{where}: a term with `score` is a model term, not a rule")
            if "correct_from" in self.kwargs:
                raise ValueError(f"{where}: correct_from is for rule terms")
            object.__setattr__(self, "kind", "model")
            fields = () if self.fields is None else tuple(self.fields)
        else:
            try:
                reward = self.reward if self.reward is not None else get(self.name)
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
            if self.kind and self.kind != reward.kind:
                raise ValueError(
                    f"{where}: kind {self.kind!r} given, but {reward.name!r} is a "
                    f"{reward.kind} reward"
                )
            if self.rows == "general":
                raise ValueError(
                    f"{where}: rule rewards never score general rows (they have no gold "
                    "answer); rows='general' is for model terms"
                )
            if self.encode is not None:
                raise ValueError(f"{where}: `encode` is for model terms")
            object.__setattr__(self, "kind", reward.kind)
            fields = reward.fields if self.fields is None else tuple(self.fields)
        object.__setattr__(self, "fields", tuple(fields))

    @property
    def label(self) -> str:
        """The term's name in parts, breakdowns and failure counts."""
        return self.key or self.name

    @property
    def rule(self) -> Reward:
        """The rule reward of a token / text term."""
        if self.kind == "model":
            raise ValueError(f"reward term {self.label!r}: a model term has no rule reward")
        return self.reward if self.reward is not None else get(self.name)

    @property
    def needed_fields(self) -> tuple[str, ...]:
        """The per-row fields the term reads that neither its kwargs nor ``correct_from`` give."""
        given = set(self.kwargs)
        if "correct_from" in self.kwargs:
            given.add("correct")
        return tuple(f for f in self.fields if f not in given)

    def call_kwargs(self, scores: Mapping[str, Any]) -> dict[str, Any]:
        """`kwargs` with ``correct_from`` resolved against the earlier terms' `scores`."""
        kwargs = dict(self.kwargs)
        source = kwargs.pop("correct_from", None)
        if source is not None:
            if source not in scores:
                raise ValueError(
                    f"reward {self.label!r}: correct_from={source!r} must name an earlier term"
                )
            kwargs["correct"] = scores[source] > 0.5
        return kwargs

    def score_texts(
        self,
        prompts: list[str],
        completions: list[str],
        fields: Mapping[str, Any],
        scores: Mapping[str, Any],
        selected: np.ndarray | None = None,
    ) -> tuple[np.ndarray, list[str]]:
        """Host scores of a text term: (float32[B] scores, B reasons; non-finite scores are 0
        with reason ``non_finite``). fields: the per-row fields; scores: earlier terms' scores
        by label (for ``correct_from``); with `selected` (bool[B]) the rule runs on those rows
        only (others score 0 with no reason)."""
        if selected is not None:
            batch = len(completions)
            index = np.flatnonzero(np.asarray(selected, bool))
            out, reasons = np.zeros(batch, np.float32), [""] * batch
            if len(index):
                values, some = self.score_texts(
                    take_rows(prompts, index, batch),
                    take_rows(completions, index, batch),
                    {k: take_rows(v, index, batch) for k, v in fields.items()},
                    {k: take_rows(v, index, batch) for k, v in scores.items()},
                )
                out[index] = values
                for row, reason in zip(index, some):
                    reasons[row] = reason
            return out, reasons
        kwargs = {**fields, **self.call_kwargs(scores)}
        outcome = self._guarded(lambda: self.rule.detailed(prompts, completions, **kwargs))
        if isinstance(outcome, str):
            return np.zeros(len(completions), np.float32), [outcome] * len(completions)
        values, reasons = outcome
        raw = np.asarray(values, np.float64).reshape(-1)
        if raw.shape != (len(completions),) or len(reasons) != len(completions):
            log.warning(
                "reward %r returned %s scores and %d reasons for %d rows; they score 0",
                self.label,
                raw.shape,
                len(reasons),
                len(completions),
            )
            return np.zeros(len(completions), np.float32), [RAISED] * len(completions)
        reasons = [NON_FINITE if not ok else r for r, ok in zip(reasons, np.isfinite(raw))]
        return finite_scores(raw), reasons

    def _guarded(self, call: Callable[[], Any]) -> Any:
        """`call()`'s result, or RAISED when it raised, or TIMED_OUT when it ran past
        `timeout_s` (it runs on a daemon thread that is abandoned then; logged)."""
        result: dict[str, Any] = {}

        def target() -> None:
            try:
                result["value"] = call()
            except MissingField as err:  # a configuration error, not a fault: raised below
                result["missing"] = err
            except Exception as err:  # noqa: BLE001 - a failing reward scores 0, counted
                result["error"] = err

        if not self.timeout_s:
            target()
        else:
            thread = threading.Thread(target=target, daemon=True, name=f"reward-{self.label}")
            thread.start()
            thread.join(self.timeout_s)
            if thread.is_alive():
                log.warning(
                    "reward %r ran past its timeout_s=%s; its rows score 0 (%s)",
                    self.label,
                    self.timeout_s,
                    TIMED_OUT,
                )
                return TIMED_OUT
        if "missing" in result:
            raise result["missing"]
        if "error" in result:
            err = result["error"]
            log.warning(
                "reward %r raised %s: %s; its rows score 0 (%s)",
                self.label,
                type(err).__name__,
                err,
                RAISED,
                exc_info=err,
            )
            return RAISED
        return result["value"]


# ----------------------------------------------------------------------------- host rows
def take_rows(value: Any, index: np.ndarray, batch: int) -> Any:
    """The rows `index` of a per-row value (a sequence or array of length `batch`); other
    values (a scalar kwarg, a language code) unchanged."""
    if isinstance(value, np.ndarray) and value.ndim and len(value) == batch:
        return value[index]
    if isinstance(value, (list, tuple)) and len(value) == batch:
        return [value[i] for i in index]
    return value


def host_selection(term: RewardTerm, row_domains: Any, batch: int) -> np.ndarray | None:
    """bool[B] rows a domain term scores on the host (rows' ``domain`` strings), else None."""
    domain = rows_domain(term.rows)
    if domain is None:
        return None
    if row_domains is None:
        raise ValueError(
            f"reward term {term.label!r}: scores rows of domain {domain!r}; give the rows' "
            "`domain` field"
        )
    if len(row_domains) != batch:
        raise ValueError(f"rewards: field 'domain' has {len(row_domains)} values for {batch} rows")
    return np.asarray([d == domain for d in row_domains], bool)


def both_selected(a: Any, b: Any) -> Any:
    """The logical and of two optional bool[B] row selections (None: every row)."""
    if a is None:
        return b
    return a if b is None else a & b


def zero_non_finite(scores: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(scores with non-finite values set to 0, bool mask of those values)."""
    finite = jnp.isfinite(scores)
    return jnp.where(finite, scores, jnp.zeros_like(scores)), ~finite


def count_selected(bad: jax.Array, rows: jax.Array | None) -> jax.Array:
    """int32[]: rows where `bad`, among the selected `rows` (None: every row)."""
    if rows is not None:
        bad = bad & rows
    return jnp.sum(bad.astype(jnp.int32))
