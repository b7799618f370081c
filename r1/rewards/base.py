"""The reward protocol, the registry and `RewardSpec` (weighted composition with failure counts).

Two kinds of reward share one registry:

* **text** rewards: ``fn(prompts: list[str], completions: list[str], **fields) -> float32[B]``,
  pure Python on the host (strings, sympy, sandboxed code). Each is registered with a
  ``detailed`` form returning ``(scores float32[B], reasons list[str])`` where ``reasons[i]`` is
  ``""`` when row ``i`` was scored normally and a short failure reason otherwise
  (``"no_code_block"``, ``"timeout"``, ...). Reasons are returned, never logged or raised, so the
  functions stay pure and a bad completion never crashes the step.
* **token** rewards: ``fn(completion_tokens int32[B, T], completion_mask bool[B, T], **fields)
  -> float32[B]``, pure ``jax.numpy``, jittable, fused into the compiled GRPO step. Static
  configuration (tag token ids, maximum lengths) is bound as keyword arguments.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

Kind = Literal["text", "token"]
TextDetailed = Callable[..., tuple[np.ndarray, list[str]]]


@dataclasses.dataclass(frozen=True)
class Reward:
    """A registered reward. Calling it returns the scores only (float32[B]).

    Attributes:
      name: registry name, also the key in `RewardSpec` breakdowns and failure counters.
      kind: "text" or "token".
      fn: for text rewards the detailed form ``(prompts, completions, **fields) ->
        (float32[B], list[str])``; for token rewards ``(tokens, mask, **fields) -> float32[B]``.
      fields: the batch fields the reward reads (documentation and spec validation).
      doc: one-line description.
    """

    name: str
    kind: Kind
    fn: Callable[..., Any]
    fields: tuple[str, ...] = ()
    doc: str = ""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.kind == "text":
            scores, _ = self.fn(*args, **kwargs)
            return scores
        return self.fn(*args, **kwargs)

    def detailed(self, *args: Any, **kwargs: Any) -> tuple[Any, list[str]]:
        """Scores plus per-row failure reasons ("" where none); token rewards give no reasons."""
        if self.kind == "text":
            return self.fn(*args, **kwargs)
        scores = self.fn(*args, **kwargs)
        return scores, [""] * int(scores.shape[0])


_REGISTRY: dict[str, Reward] = {}


def register(
    name: str, kind: Kind, fields: Sequence[str] = (), doc: str = ""
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``fn`` under ``name``; returns ``fn`` unchanged."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"reward {name!r} is already registered")
        _REGISTRY[name] = Reward(name, kind, fn, tuple(fields), doc or (fn.__doc__ or "").strip())
        return fn

    return wrap


def get(name: str) -> Reward:
    """The registered reward called ``name`` (see `names()`)."""
    _load_builtin_rewards()
    if name not in _REGISTRY:
        raise ValueError(f"unknown reward {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def names(kind: Kind | None = None) -> list[str]:
    """Sorted names of registered rewards, optionally only those of one kind."""
    _load_builtin_rewards()
    return sorted(n for n, r in _REGISTRY.items() if kind is None or r.kind == kind)


def _load_builtin_rewards() -> None:
    # Importing the modules registers their rewards (kept lazy to avoid import cycles).
    from r1.rewards import (  # noqa: F401
        code,
        countdown,
        format,
        judge,
        language,
        math,
        shaping,
        tokens,
    )


def finite_scores(values: Sequence[float]) -> np.ndarray:
    """float32[B] with NaN/inf replaced by 0 (rewards must always be finite)."""
    out = np.asarray(values, dtype=np.float64).reshape(-1)
    out = np.where(np.isfinite(out), out, 0.0)
    return out.astype(np.float32)


def row_field(fields: Mapping[str, Any], key: str, batch: int, reward: str) -> list[Any]:
    """``fields[key]`` as a list of length ``batch`` or a ValueError naming reward and field."""
    if key not in fields:
        raise ValueError(f"reward {reward!r} needs the batch field {key!r}; got {sorted(fields)}")
    value = list(fields[key])
    if len(value) != batch:
        raise ValueError(
            f"reward {reward!r}: field {key!r} has {len(value)} rows, expected {batch}"
        )
    return value


@dataclasses.dataclass(frozen=True)
class RewardTerm:
    """One weighted term of a `RewardSpec`: ``weight * get(name)(..., **kwargs)``.

    ``key`` names the term in the breakdown (defaults to ``name``; set it to use one reward twice
    with different kwargs). A kwarg ``correct_from="<key>"`` passes ``correct = scores[key] > 0.5``
    of an earlier term (e.g. cosine length shaping keyed on math accuracy).
    """

    name: str
    weight: float = 1.0
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    key: str = ""

    @property
    def label(self) -> str:
        return self.key or self.name


@dataclasses.dataclass(frozen=True)
class RewardResult:
    """Output of `RewardSpec.__call__`.

    Attributes:
      total: float32[B], the weighted sum.
      breakdown: term label -> float32[B] unweighted scores (for logging).
      failures: ``"<label>/<reason>" -> count`` over the batch, e.g. ``{"math/timeout": 2}``.
    """

    total: np.ndarray
    breakdown: dict[str, np.ndarray]
    failures: dict[str, int]


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """A weighted composition of named rewards, built from config.

    Example::

        spec = RewardSpec.from_config([("format_strict", 1.0, {}), ("math", 1.0, {})])
        result = spec(prompts, completions, answer=gold)
        result.total, result.breakdown["math"], result.failures
    """

    terms: tuple[RewardTerm, ...]

    @classmethod
    def from_config(cls, config: Sequence[Any]) -> RewardSpec:
        """From a list of ``(name, weight, kwargs)`` / ``(name, weight)`` / ``name`` entries or
        mappings with keys ``name``, ``weight``, ``kwargs``, ``key``."""
        terms = []
        for i, entry in enumerate(config):
            if isinstance(entry, str):
                term = RewardTerm(entry)
            elif isinstance(entry, RewardTerm):
                term = entry
            elif isinstance(entry, Mapping):
                unknown = set(entry) - {"name", "weight", "kwargs", "key"}
                if "name" not in entry or unknown:
                    raise ValueError(
                        f"rewards[{i}]: expected keys name, weight, kwargs, key; got {dict(entry)}"
                    )
                term = RewardTerm(
                    entry["name"],
                    float(entry.get("weight", 1.0)),
                    dict(entry.get("kwargs", {}) or {}),
                    entry.get("key", ""),
                )
            elif isinstance(entry, Sequence) and 1 <= len(entry) <= 3:
                name, weight, kwargs = (list(entry) + [1.0, {}][len(entry) - 1 :])[:3]
                term = RewardTerm(str(name), float(weight), dict(kwargs or {}))
            else:
                raise ValueError(f"rewards[{i}]: expected (name, weight, kwargs), got {entry!r}")
            reward = get(term.name)  # raises on unknown names
            if reward.kind != "text":
                raise ValueError(
                    f"rewards[{i}]: {term.name!r} is a token reward; compose token rewards with "
                    "`token_total` inside the compiled step"
                )
            terms.append(term)
        labels = [t.label for t in terms]
        if len(set(labels)) != len(labels):
            raise ValueError(f"rewards: duplicate term labels {labels}; set `key` to tell apart")
        return cls(tuple(terms))

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], **fields: Any
    ) -> RewardResult:
        batch = len(completions)
        if len(prompts) != batch:
            raise ValueError(f"rewards: {len(prompts)} prompts but {batch} completions")
        total = np.zeros(batch, np.float32)
        breakdown: dict[str, np.ndarray] = {}
        failures: collections.Counter[str] = collections.Counter()
        for term in self.terms:
            kwargs = dict(term.kwargs)
            source = kwargs.pop("correct_from", None)
            if source is not None:
                if source not in breakdown:
                    raise ValueError(
                        f"reward {term.label!r}: correct_from={source!r} must name an earlier term"
                    )
                kwargs["correct"] = breakdown[source] > 0.5
            scores, reasons = get(term.name).detailed(
                list(prompts), list(completions), **fields, **kwargs
            )
            scores = finite_scores(scores)
            breakdown[term.label] = scores
            total = total + np.float32(term.weight) * scores
            failures.update(f"{term.label}/{r}" for r in reasons if r)
        return RewardResult(total.astype(np.float32), breakdown, dict(failures))
