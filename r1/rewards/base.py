"""The reward protocol and the registry of rule rewards (`RewardSpec` lives in `r1.rewards.spec`).

Two kinds of rule reward share one registry (the third kind of `RewardTerm`, "model", is built
by whoever owns the model: `r1.rl.model_rewards`):

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

import dataclasses
import importlib
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
      reasons: the failure reasons its detailed form can return (the compiled GRPO scorer
        counts exactly these per batch, plus "non_finite" and "other" for anything else).
    """

    name: str
    kind: Kind
    fn: Callable[..., Any]
    fields: tuple[str, ...] = ()
    doc: str = ""
    reasons: tuple[str, ...] = ()

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


# Builtin reward name -> the module that registers it.
BUILTIN_MODULES: dict[str, str] = {
    **dict.fromkeys(("format_strict", "format_lenient", "tag_count"), "r1.rewards.format"),
    "math": "r1.rewards.math",
    **dict.fromkeys(("arithmetic", "countdown"), "r1.rewards.countdown"),
    "language": "r1.rewards.language",
    "code": "r1.rewards.code",
    **dict.fromkeys(("cosine_length", "overlong", "repetition"), "r1.rewards.shaping"),
    **dict.fromkeys(
        (
            "format_strict_tokens",
            "format_lenient_tokens",
            "tag_count_tokens",
            "arithmetic_tokens",
            "cosine_length_tokens",
            "overlong_tokens",
        ),
        "r1.rewards.tokens",
    ),
}


def register(
    name: str,
    kind: Kind,
    fields: Sequence[str] = (),
    doc: str = "",
    reasons: Sequence[str] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``fn`` under ``name``; returns ``fn`` unchanged."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"reward {name!r} is already registered")
        doc_line = doc or (fn.__doc__ or "").strip()
        _REGISTRY[name] = Reward(name, kind, fn, tuple(fields), doc_line, tuple(reasons))
        return fn

    return wrap


def get(name: str) -> Reward:
    """The registered reward called ``name`` (see `names()`); imports only its own module."""
    if name not in _REGISTRY and name in BUILTIN_MODULES:
        # Lazy: only the module registering `name`, so base imports no reward module (no cycle).
        importlib.import_module(BUILTIN_MODULES[name])
    if name not in _REGISTRY:
        raise ValueError(f"unknown reward {name!r}; registered: {names()}")
    return _REGISTRY[name]


def names(kind: Kind | None = None) -> list[str]:
    """Sorted names of registered rewards (every builtin included), optionally of one kind."""
    for module in sorted(set(BUILTIN_MODULES.values())):
        importlib.import_module(module)
    return sorted(n for n, r in _REGISTRY.items() if kind is None or r.kind == kind)


def finite_scores(values: Sequence[float]) -> np.ndarray:
    """float32[B] with NaN/inf replaced by 0 (rewards must always be finite; `RewardSpec`
    counts the replaced rows as failure reason ``non_finite``)."""
    out = np.asarray(values, dtype=np.float64).reshape(-1)
    out = np.where(np.isfinite(out), out, 0.0)
    return out.astype(np.float32)


class MissingField(ValueError):
    """A reward was called without a per-row field it needs (a configuration error: it is
    raised, not scored 0 like a reward's own failure)."""


def row_field(fields: Mapping[str, Any], key: str, batch: int, reward: str) -> list[Any]:
    """``fields[key]`` as a list of length ``batch``; `MissingField` / ValueError naming reward
    and field when it is absent or has another length."""
    if key not in fields:
        raise MissingField(f"reward {reward!r} needs the batch field {key!r}; got {sorted(fields)}")
    value = list(fields[key])
    if len(value) != batch:
        raise ValueError(
            f"reward {reward!r}: field {key!r} has {len(value)} rows, expected {batch}"
        )
    return value
