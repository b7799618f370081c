"""Turns a list of named rewards into the `RewardFn` the compiled GRPO step calls.

Token rewards (jax.numpy, `kind == "token"`) are called inline and fuse into the step. Text
rewards (`kind == "text"`) run on the host inside ONE `jax.pure_callback` per step, which decodes
the completions once and scores every text term, so the step stays one program.

Per-row string fields (gold answers, countdown numbers, code tests) cannot be jax arrays, so the
trainer passes them as UTF-8 bytes `<name>__bytes` uint8[B, A] (`encode_text_fields`), which the
callback decodes back (JSON lists are parsed back into lists).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from r1.rewards import get
from r1.rewards.tokens import TagIds

BYTES_SUFFIX = "__bytes"
Term = tuple[str, float, Mapping[str, Any]]


def encode_text_fields(
    fields: Mapping[str, Sequence[Any]], width_multiple: int = 32
) -> dict[str, np.ndarray]:
    """{name: values[B]} -> {name__bytes: uint8[B, A]} (A a multiple of `width_multiple`, so
    few shapes get compiled); lists/dicts are stored as JSON."""
    out = {}
    for name, values in fields.items():
        encoded = [
            (v if isinstance(v, str) else json.dumps(v)).encode("utf-8", "surrogateescape")
            for v in values
        ]
        width = max(
            width_multiple, -(-max(len(e) for e in encoded) // width_multiple) * width_multiple
        )
        array = np.zeros((len(encoded), width), np.uint8)
        for i, e in enumerate(encoded):
            array[i, : len(e)] = np.frombuffer(e, np.uint8)
        out[name + BYTES_SUFFIX] = array
    return out


def _decode_field(array: np.ndarray) -> list[Any]:
    values = []
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


class RewardBridge:
    """Callable as the step's `reward_fn(tokens, mask, truncated, fields)`.

    terms: (reward name, weight, kwargs) triples. tokenizer: decodes completions for text
    rewards and gives the tag ids of token rewards. `failures` counts text-reward failure
    reasons over the run (host side, for logging).
    """

    def __init__(self, terms: Sequence[Term], tokenizer: Any):
        self.terms = [(name, float(weight), dict(kwargs or {})) for name, weight, kwargs in terms]
        self.tokenizer = tokenizer
        self.rewards = {name: get(name) for name, _, _ in self.terms}
        self.token_terms = [t for t in self.terms if self.rewards[t[0]].kind == "token"]
        self.text_terms = [t for t in self.terms if self.rewards[t[0]].kind != "token"]
        self.tag_ids = TagIds.from_tokenizer(tokenizer) if self.token_terms else None
        self.failures: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _host_scores(self, tokens, mask, truncated, *field_arrays, field_names=()):
        tokens, mask = np.asarray(tokens), np.asarray(mask).astype(bool)
        completions = [self.tokenizer.decode(row[m].tolist()) for row, m in zip(tokens, mask)]
        fields = {}
        for name, array in zip(field_names, field_arrays):
            if name.endswith(BYTES_SUFFIX):
                fields[name[: -len(BYTES_SUFFIX)]] = _decode_field(array)
            else:
                fields[name] = np.asarray(array)
        prompts = [""] * len(completions)
        scores = []
        for name, _, kwargs in self.text_terms:
            reward = self.rewards[name]
            if hasattr(reward, "detailed"):
                values, reasons = reward.detailed(prompts, completions, **fields, **kwargs)
                with self._lock:
                    self.failures.update(f"{name}/{r}" for r in reasons if r)
            else:
                values = reward(prompts, completions, **fields, **kwargs)
            scores.append(np.nan_to_num(np.asarray(values, np.float32), nan=0.0))
        return np.stack(scores).astype(np.float32)

    def __call__(self, tokens, mask, truncated, fields):
        batch = tokens.shape[0]
        # The sampler's mask includes the EOS token; rewards judge the text before it.
        eos_id = getattr(self.tokenizer, "eos_id", None)
        if eos_id is not None:
            mask = mask & (tokens != eos_id)
        total = jnp.zeros((batch,), jnp.float32)
        parts: dict[str, jax.Array] = {}
        numeric = {k: v for k, v in fields.items() if not k.endswith(BYTES_SUFFIX)}
        for name, weight, kwargs in self.token_terms:
            scores = self.rewards[name](tokens, mask, ids=self.tag_ids, **numeric, **kwargs)
            parts[name] = scores.astype(jnp.float32)
            total = total + weight * parts[name]
        if self.text_terms:
            names = tuple(sorted(fields))
            out = jax.pure_callback(
                lambda *args: self._host_scores(*args, field_names=names),
                jax.ShapeDtypeStruct((len(self.text_terms), batch), jnp.float32),
                tokens,
                mask,
                truncated,
                *[fields[n] for n in names],
            )
            for i, (name, weight, _) in enumerate(self.text_terms):
                parts[name] = out[i]
                total = total + weight * out[i]
        return total, parts
