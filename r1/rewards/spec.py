"""One reward spec: rule terms (token, text) and model terms, weighted, with row selection.

    spec = RewardSpec.from_config([("format_strict_tokens", 1.0, {}), ("math", 1.0, {})])
    scorer = spec.compile(tokenizer)
    result = scorer.score_texts(prompts, completions, answer=gold)  # host: RewardResult
    arrays = scorer.encode_fields({"answer": gold})                # prompt fields [P, ...]
    out = scorer(completion, completion_mask, truncated, fields, prompt_tokens, prompt_mask, frozen)
    out.total, out.parts, out.failures                              # inside the GRPO step

A `RewardTerm` has one of three kinds:

* ``"token"``: a registered jax.numpy reward, fused into the compiled step. It sees the
  completion with the EOS token masked out, ``ids=TagIds.from_tokenizer(tokenizer)`` and the
  numeric batch fields.
* ``"text"``: a registered (or given) host reward; every text term of a step runs in ONE
  `jax.pure_callback` that decodes the completions once.
* ``"model"``: a frozen reward model or judge inside the step. Its builder (e.g.
  `r1.rl.model_rewards`) supplies ``score(frozen_state, prompt_tokens int32[B, L], prompt_mask
  bool[B, L], completion int32[B, N], completion_mask bool[B, N], fields) -> (float32[B],
  {part: float32[B]})`` and, when it reads prompt fields, ``encode(rows) -> {name: [P, ...]}``,
  so this module imports no model code.

Rows. With a bool field ``general`` in the batch (R1 stage 4), rule terms never score general
rows (a rule needs a gold answer; their score there is 0), and model terms score the rows their
``rows`` selects: ``"all"`` (default), ``"general"``, ``"reasoning"`` (not general). Per-domain
terms (`RewardSpec.from_domains`) select ``"domain:<name>"``: the rows whose ``domain`` is
<name>; on the host a text rule runs on its rows only. `row_selector` (in the step) and
`host_selection` (on the host) are the only readers of a selector.

Non-finite scores, everywhere (host, token, text, model): the score becomes 0 and the row is
counted as failure reason ``non_finite`` (``"<label>/non_finite"``).
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from r1.rewards.base import finite_scores
from r1.rewards.term import (
    BYTES_SUFFIX,
    DEFAULT_TIMEOUT_S,
    GUARD_REASONS,
    KINDS,
    NON_FINITE,
    OTHER,
    ROWS,
    FieldEncoder,
    ModelScoreFn,
    RewardResult,
    RewardTerm,
    ScorerOutput,
    both_selected,
    count_selected,
    decode_text_field,
    encode_text_fields,
    host_selection,
    is_numeric,
    numeric_array,
    row_selector,
    rows_domain,
    zero_non_finite,
)
from r1.rewards.tokens import TagIds

__all__ = [
    "BYTES_SUFFIX",
    "KINDS",
    "NON_FINITE",
    "OTHER",
    "ROWS",
    "CompiledSpec",
    "FieldEncoder",
    "ModelScoreFn",
    "RewardResult",
    "RewardSpec",
    "RewardTerm",
    "ScorerOutput",
    "decode_text_field",
    "encode_text_fields",
    "row_selector",
]


def _term_from_entry(i: int, entry: Any) -> RewardTerm:
    if isinstance(entry, RewardTerm):
        return entry
    if isinstance(entry, str):
        return RewardTerm(entry)
    if isinstance(entry, Mapping):
        allowed = {"name", "weight", "kwargs", "key", "rows", "timeout_s"}
        if "name" not in entry or set(entry) - allowed:
            raise ValueError(
                f"rewards[{i}]: expected keys name, weight, kwargs, key, rows, timeout_s; got "
                f"{dict(entry)}"
            )
        return RewardTerm(
            entry["name"],
            entry.get("weight", 1.0),
            dict(entry.get("kwargs", {}) or {}),
            entry.get("key", ""),
            rows=entry.get("rows", "all"),
            timeout_s=entry.get("timeout_s", DEFAULT_TIMEOUT_S),
        )
    if isinstance(entry, Sequence) and 1 <= len(entry) <= 3:
        name, weight, kwargs = (list(entry) + [1.0, {}][len(entry) - 1 :])[:3]
        return RewardTerm(str(name), weight, dict(kwargs or {}))
    raise ValueError(f"rewards[{i}]: expected (name, weight, kwargs), got {entry!r}")


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """A weighted composition of reward terms, built from config; `compile` it to score.

    Example::

        spec = RewardSpec.from_config([("format_strict", 1.0, {}), ("math", 1.0, {})])
        result = spec(prompts, completions, answer=gold)  # = spec.compile().score_texts(...)
        result.total, result.breakdown["math"], result.failures
    """

    terms: tuple[RewardTerm, ...]

    def __post_init__(self):
        terms = tuple(self.terms)
        object.__setattr__(self, "terms", terms)
        labels = [t.label for t in terms]
        if len(set(labels)) != len(labels):
            raise ValueError(f"rewards: duplicate term labels {labels}; set `key` to tell apart")
        for i, term in enumerate(terms):
            source = term.kwargs.get("correct_from")
            if source is None:
                continue
            earlier = {t.label: t.kind for t in terms[:i] if t.kind != "model"}
            if source not in earlier or (term.kind == "token" and earlier[source] != "token"):
                raise ValueError(
                    f"reward term {term.label!r}: correct_from={source!r} must name an earlier "
                    f"{'token' if term.kind == 'token' else 'rule'} term; earlier: "
                    f"{sorted(earlier)}"
                )

    @classmethod
    def from_config(cls, config: Sequence[Any]) -> RewardSpec:
        """From a list of ``(name, weight, kwargs)`` / ``(name, weight)`` / ``name`` entries,
        mappings with keys ``name``, ``weight``, ``kwargs``, ``key``, ``rows``, or terms."""
        return cls(tuple(_term_from_entry(i, entry) for i, entry in enumerate(config)))

    @classmethod
    def from_domains(cls, config: Mapping[str, Sequence[Any]]) -> RewardSpec:
        """Per-domain rewards: {domain: entries as in `from_config`}. Each term scores only
        the rows of its domain (``rows="domain:<name>"``); a reward used by several domains is
        labelled ``<domain>.<label>`` in each (e.g. ``math.format_strict``: TensorBoard names
        allow no ``@``), others keep their label (``math``, ``code``)."""
        per_domain = {}
        for domain, entries in config.items():
            try:
                per_domain[str(domain)] = [_term_from_entry(i, e) for i, e in enumerate(entries)]
            except ValueError as err:
                text = str(err).removeprefix("rewards")
                text = text if text[:1] == "[" else f": {text}"
                raise ValueError(f"rewards.{domain}{text}") from None
        uses = collections.Counter(t.label for terms in per_domain.values() for t in terms)
        out = []
        for domain, terms in per_domain.items():
            if not domain:
                raise ValueError("rewards: a domain name must be non-empty")
            for term in terms:
                if term.rows != "all":
                    raise ValueError(
                        f"rewards.{domain}: term {term.label!r} sets rows={term.rows!r}; a "
                        "per-domain term scores its domain's rows"
                    )
                key = term.label if uses[term.label] == 1 else f"{domain}.{term.label}"
                out.append(dataclasses.replace(term, key=key, rows=f"domain:{domain}"))
        return cls(tuple(out))

    def fields(self) -> tuple[str, ...]:
        """Sorted per-row fields the terms read (`RewardTerm.needed_fields`)."""
        return tuple(sorted({f for t in self.terms for f in t.needed_fields}))

    def compile(self, tokenizer: Any = None, *, width_multiple: int = 32) -> CompiledSpec:
        """The scorer of this spec. tokenizer: decodes completions for text terms inside the
        step and gives token terms their tag ids (optional for host scoring of text terms).
        width_multiple: text fields are padded to a multiple of this many bytes."""
        return CompiledSpec(self, tokenizer, width_multiple)

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], **fields: Any
    ) -> RewardResult:
        """Host scores of decoded texts (text terms only; see `CompiledSpec.score_texts`)."""
        return self.compile().score_texts(prompts, completions, **fields)


# ----------------------------------------------------------------------------- compiled
class CompiledSpec:
    """A `RewardSpec` bound to a tokenizer: the GRPO scorer (`__call__`), host scoring
    (`score_texts`) and the prompt-field encoder (`encode_fields`).

    Attributes: spec, tokenizer, model_names (the frozen-state names the step must pass, one
    per model term, its label), failure_keys (the keys of `ScorerOutput.failures`).
    """

    def __init__(self, spec: RewardSpec, tokenizer: Any = None, width_multiple: int = 32):
        self.spec, self.tokenizer, self.width_multiple = spec, tokenizer, int(width_multiple)
        self.token_terms = tuple(t for t in spec.terms if t.kind == "token")
        self.text_terms = tuple(t for t in spec.terms if t.kind == "text")
        self.model_terms = tuple(t for t in spec.terms if t.kind == "model")
        self.model_names = tuple(t.label for t in self.model_terms)
        # Host callback seconds, shared with the copies `shard_rows` makes.
        self._host_time = [0.0]
        self.row_sharding: tuple[jax.sharding.Mesh, tuple[str, ...]] | None = None
        # The domains the terms select ("domain:<name>"), in first-use order: row field
        # `domain` holds an index into this table (-1: a domain no term names).
        self.domains: tuple[str, ...] = tuple(
            dict.fromkeys(d for t in spec.terms if (d := rows_domain(t.rows)) is not None)
        )
        if self.token_terms and tokenizer is None:
            raise ValueError(
                f"reward term {self.token_terms[0].label!r}: a token reward needs a tokenizer "
                "(spec.compile(tokenizer))"
            )
        self.eos_id = getattr(tokenizer, "eos_id", None)
        self.tag_ids = TagIds.from_tokenizer(tokenizer) if self.token_terms else None
        self.text_failure_keys: tuple[str, ...] = tuple(
            f"{t.label}/{r}"
            for t in self.text_terms
            for r in dict.fromkeys((*t.rule.reasons, *GUARD_REASONS))
        )
        self._text_fields = {f for t in self.text_terms for f in t.needed_fields}
        self._text_sources = tuple(
            sorted(
                {
                    t.kwargs["correct_from"]
                    for t in self.text_terms
                    if t.kwargs.get("correct_from") in {u.label for u in self.token_terms}
                }
            )
        )
        self.failure_keys: tuple[str, ...] = (
            *(f"{t.label}/{NON_FINITE}" for t in self.token_terms),
            *self.text_failure_keys,
            *(f"{t.label}/{NON_FINITE}" for t in self.model_terms),
        )

    # ------------------------------------------------------------------ host
    def _encode_texts(self, completions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = [list(self.tokenizer.encode(c)) for c in completions]
        longest = max((len(i) for i in ids), default=0)
        width = max(self.width_multiple, -(-longest // self.width_multiple) * self.width_multiple)
        tokens = np.zeros((len(ids), width), np.int32)
        mask = np.zeros((len(ids), width), bool)
        for row, row_ids in enumerate(ids):
            tokens[row, : len(row_ids)] = row_ids
            mask[row, : len(row_ids)] = True
        return tokens, mask

    def score_texts(
        self, prompts: Sequence[str], completions: Sequence[str], **fields: Any
    ) -> RewardResult:
        """Host scores of decoded completions, terms in config order (rejection sampling,
        evaluation). fields: per-row values (lists or arrays of length B) the rewards read; a
        term with a ``"domain:<name>"`` selector scores only the rows whose ``domain`` field
        (strings) is <name>. Token terms re-encode the texts with the tokenizer; model terms
        are refused."""
        batch = len(completions)
        if len(prompts) != batch:
            raise ValueError(f"rewards: {len(prompts)} prompts but {batch} completions")
        row_domains = fields.get("domain")
        total = np.zeros(batch, np.float32)
        breakdown: dict[str, np.ndarray] = {}
        failures: collections.Counter[str] = collections.Counter()
        encoded = None
        for term in self.spec.terms:
            if term.kind == "model":
                raise ValueError(
                    f"reward term {term.label!r}: a model term scores only inside the compiled "
                    "GRPO step"
                )
            if term.kind == "token":
                if encoded is None:
                    encoded = self._encode_texts(completions)
                numeric = {
                    k: np.asarray(v)
                    for k, v in fields.items()
                    if isinstance(v, (Sequence, np.ndarray))
                    and not isinstance(v, str)
                    and is_numeric(list(v))
                }
                values = term.rule.fn(
                    *encoded, ids=self.tag_ids, **{**numeric, **term.call_kwargs(breakdown)}
                )
                raw = np.asarray(values, np.float64).reshape(-1)
                reasons = ["" if ok else NON_FINITE for ok in np.isfinite(raw)]
                scores = finite_scores(raw)
                selected = host_selection(term, row_domains, batch)
                if selected is not None:
                    scores = np.where(selected, scores, np.float32(0))
                    reasons = [r if ok else "" for r, ok in zip(reasons, selected)]
            else:
                scores, reasons = term.score_texts(
                    list(prompts),
                    list(completions),
                    fields,
                    breakdown,
                    host_selection(term, row_domains, batch),
                )
            breakdown[term.label] = scores
            total = total + np.float32(term.weight) * scores
            failures.update(f"{term.label}/{r}" for r in reasons if r)
        return RewardResult(total.astype(np.float32), breakdown, dict(failures))

    def encode_fields(self, rows: Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
        """The prompt rows' host values (columns {field: values[P]}, e.g. gold ``answer``
        strings) -> the arrays [P, ...] the step needs: ``general`` bool[P] when present,
        numeric fields as int32 / float32 / bool [P], string and list fields as
        ``<name>__bytes`` uint8[P, A], ``target`` int32[P] from ``answer`` when no row gives
        it (-1 on general rows), ``domain`` int32[P] (`domain_ids`) when terms select domains,
        and each model term's own arrays (its `encode`). A field the rows lack is left out (the
        reward names it when it runs)."""
        sizes = {k: len(v) for k, v in rows.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"encode_fields: columns of different lengths {sizes}")
        out: dict[str, np.ndarray] = {}
        general = None
        if "general" in rows:
            general = np.asarray(rows["general"], bool).reshape(-1)
            out["general"] = general
        if self.domains:
            out["domain"] = self.domain_ids(rows.get("domain"), max(sizes.values(), default=0))
        for term in (*self.token_terms, *self.text_terms):
            for name in term.needed_fields:
                if name in out or name + BYTES_SUFFIX in out:
                    continue
                values = rows.get(name)
                if values is not None and all(v is None for v in values):
                    values = None  # a column no row has (e.g. the pipeline's filler)
                if values is None and name == "target" and "answer" in rows:
                    try:
                        values = [
                            -1 if general is not None and general[i] else int(a)
                            for i, a in enumerate(rows["answer"])
                        ]
                    except (TypeError, ValueError):
                        continue
                if values is None:
                    continue
                values = list(values)
                if is_numeric(values):
                    out[name] = numeric_array(values)
                elif term.kind == "token":
                    try:
                        out[name] = np.asarray(values, np.int32)
                    except (TypeError, ValueError):
                        raise ValueError(
                            f"reward term {term.label!r}: token field {name!r} must be numeric"
                        ) from None
                else:
                    out.update(encode_text_fields({name: values}, self.width_multiple))
        for term in self.model_terms:
            if term.encode is not None:
                out.update(term.encode(rows))
        return out

    def domain_ids(self, domains: Sequence[Any] | None, num_rows: int) -> np.ndarray:
        """int32[P]: each row's domain as its index in `self.domains` (-1 for a domain no term
        selects, or a row without one)."""
        if domains is None:
            return np.full((num_rows,), -1, np.int32)
        index = {d: i for i, d in enumerate(self.domains)}
        return np.asarray([index.get(d, -1) for d in domains], np.int32).reshape(-1)

    def abstract_fields(
        self, num_prompts: int, text_bytes: int = 64, general: bool = False
    ) -> dict[str, jax.ShapeDtypeStruct]:
        """The shapes of `encode_fields`' arrays for `num_prompts` rows, without data (for
        compiling the step ahead of time): token fields and ``target`` int32[P], other text
        fields ``<name>__bytes`` uint8[P, text_bytes], model terms' arrays from their `encode` on
        placeholder rows, ``general`` bool[P] when `general`."""
        out: dict[str, jax.ShapeDtypeStruct] = {}
        if general:
            out["general"] = jax.ShapeDtypeStruct((num_prompts,), jnp.bool_)
        if self.domains:
            out["domain"] = jax.ShapeDtypeStruct((num_prompts,), jnp.int32)
        for term in (*self.token_terms, *self.text_terms):
            for name in term.needed_fields:
                if name in out or name + BYTES_SUFFIX in out:
                    continue
                if term.kind == "token" or name == "target":
                    out[name] = jax.ShapeDtypeStruct((num_prompts,), jnp.int32)
                else:
                    shape = (num_prompts, text_bytes)
                    out[name + BYTES_SUFFIX] = jax.ShapeDtypeStruct(shape, jnp.uint8)
        for term in self.model_terms:
            if term.encode is not None:
                rows = {name: ["0"] * num_prompts for name in term.fields}
                for name, value in term.encode(rows).items():
                    out[name] = jax.ShapeDtypeStruct(value.shape, value.dtype)
        return out

    # ------------------------------------------------------------------ in the step
    def take_host_seconds(self) -> float:
        """Wall seconds the step's host callback spent scoring text terms since the last call
        (the GRPO trainer logs them as ``time/rewards``)."""
        seconds, self._host_time[0] = self._host_time[0], 0.0
        return seconds

    def _text_callback(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self._score_text_terms(*args, **kwargs)
        finally:
            self._host_time[0] += time.perf_counter() - start

    def _score_text_terms(self, tokens, mask, *arrays, names, has_general, has_domain):
        tokens, mask = np.asarray(tokens), np.asarray(mask).astype(bool)
        completions = [self.tokenizer.decode(row[m].tolist()) for row, m in zip(tokens, mask)]
        arrays = list(arrays)
        domain = np.asarray(arrays.pop()) if has_domain else None
        general = np.asarray(arrays.pop(), bool) if has_general else None
        fields: dict[str, Any] = {}
        for name, array in zip(names, arrays[: len(names)]):
            if name.endswith(BYTES_SUFFIX):
                fields[name[: -len(BYTES_SUFFIX)]] = decode_text_field(array)
            else:
                fields[name] = np.asarray(array)
        scores_by_label: dict[str, Any] = {
            s: np.asarray(a) for s, a in zip(self._text_sources, arrays[len(names) :])
        }
        index = {k: i for i, k in enumerate(self.text_failure_keys)}
        counts = np.zeros(len(self.text_failure_keys), np.int32)
        out = np.zeros((len(self.text_terms), len(completions)), np.float32)
        prompts = [""] * len(completions)
        for i, term in enumerate(self.text_terms):
            selected = None
            if rows_domain(term.rows) is not None:  # only this domain's rows run the rule
                selected = domain == self.domains.index(rows_domain(term.rows))
                if general is not None:
                    selected = selected & ~general
            values, reasons = term.score_texts(
                prompts, completions, fields, scores_by_label, selected
            )
            scores_by_label[term.label] = values
            out[i] = values
            for row, reason in enumerate(reasons):
                if reason and (general is None or not general[row]):
                    key = f"{term.label}/{reason}"
                    counts[index.get(key, index[f"{term.label}/{OTHER}"])] += 1
        return out, counts

    def __call__(
        self,
        completion: jax.Array,
        completion_mask: jax.Array,
        truncated: jax.Array,
        fields: Mapping[str, jax.Array],
        prompt_tokens: jax.Array | None = None,
        prompt_mask: jax.Array | None = None,
        frozen: Mapping[str, Any] | None = None,
    ) -> ScorerOutput:
        """Rewards of one rollout inside the compiled step.

        completion int32[B, N], completion_mask bool[B, N] (includes the EOS token),
        truncated bool[B], fields {name: array[B, ...]} repeated per row, prompt_tokens
        int32[B, L] / prompt_mask bool[B, L] repeated per row (model terms), frozen {label:
        model state} for `model_names`. Totals add rule terms (token terms, then text terms),
        zeroed on general rows, then model terms, each ``weight * score`` in float32.
        """
        del truncated  # part of the contract; no rule reads it yet
        batch = completion.shape[0]
        # The sampler's mask includes the EOS token; rewards judge the text before it.
        mask = completion_mask
        if self.eos_id is not None:
            mask = mask & (completion != self.eos_id)
        general = jnp.asarray(fields["general"]).astype(bool) if "general" in fields else None
        rule_rows = None if general is None else ~general
        total = jnp.zeros((batch,), jnp.float32)
        parts: dict[str, jax.Array] = {}
        failures: dict[str, jax.Array] = {}
        numeric = {k: v for k, v in fields.items() if not k.endswith(BYTES_SUFFIX)}
        for term in self.token_terms:
            kwargs = term.call_kwargs(parts)
            scores = term.rule.fn(completion, mask, ids=self.tag_ids, **{**numeric, **kwargs})
            scores, bad = zero_non_finite(scores.astype(jnp.float32))
            wanted = row_selector(term.rows, fields, self.domains)
            if wanted is not None:
                scores = jnp.where(wanted, scores, jnp.zeros_like(scores))
            parts[term.label] = scores
            total = total + term.weight * scores
            failures[f"{term.label}/{NON_FINITE}"] = count_selected(
                bad, both_selected(rule_rows, wanted)
            )
        if self.text_terms:
            names = tuple(
                sorted(n for n in fields if n.removesuffix(BYTES_SUFFIX) in self._text_fields)
            )
            extra = [parts[s] for s in self._text_sources]
            if general is not None:
                extra.append(general)
            has_domain = bool(self.domains)
            if has_domain:
                if "domain" not in fields:
                    raise ValueError(
                        "rewards: terms select domains but the batch has no 'domain' field "
                        "(scorer.encode_fields makes it)"
                    )
                extra.append(fields["domain"])
            operands = (completion, mask, *[fields[n] for n in names], *extra)
            flags = dict(names=names, has_general=general is not None, has_domain=has_domain)
            scores, counts = self._host_scores(operands, flags)
            for i, term in enumerate(self.text_terms):
                parts[term.label] = scores[i]
                total = total + term.weight * scores[i]
            for i, key in enumerate(self.text_failure_keys):
                failures[key] = counts[i]
        if general is not None:  # rule rewards score the reasoning rows only
            total = jnp.where(general, 0.0, total)
            parts = {k: jnp.where(general, jnp.zeros_like(v), v) for k, v in parts.items()}
        if self.model_terms:
            model_args = (prompt_tokens, prompt_mask, completion, completion_mask, fields)
            total = self._model_terms(total, parts, failures, frozen or {}, *model_args)
        return ScorerOutput(total, parts, failures)

    def _host_scores(self, operands: tuple, flags: dict) -> tuple[jax.Array, jax.Array]:
        """The text terms' (float32[T, B] scores, int32[K] failure counts) from one host
        callback over all rows, or, after `shard_rows`, one callback per device on the rows it
        holds (each process scores only its own rows; counts summed over the row axes)."""

        def callback(*local):
            rows = local[0].shape[0]
            return jax.pure_callback(
                lambda *args: self._text_callback(*args, **flags),
                (
                    jax.ShapeDtypeStruct((len(self.text_terms), rows), jnp.float32),
                    jax.ShapeDtypeStruct((len(self.text_failure_keys),), jnp.int32),
                ),
                *local,
            )

        if self.row_sharding is None:
            return callback(*operands)
        mesh, axes = self.row_sharding

        def per_device(*local):
            scores, counts = callback(*local)
            return scores, jax.lax.psum(counts, axes)

        in_specs = tuple(P(axes, *([None] * (x.ndim - 1))) for x in operands)
        return jax.shard_map(
            per_device,
            mesh=mesh,
            in_specs=in_specs,
            out_specs=(P(None, axes), P()),
            check_vma=False,
        )(*operands)

    def shard_rows(self, mesh: jax.sharding.Mesh, axes: Sequence[str]) -> CompiledSpec:
        """This scorer with its host callback split over the mesh axes `axes` that shard the
        rollout's rows (e.g. ``("data", "fsdp")``): each device's callback scores the rows it
        holds, so on a multi-host run a process never receives another's rows. Results are
        the same as unsplit; the rows must divide evenly over `axes`."""
        out = copy.copy(self)
        out.row_sharding = (mesh, tuple(axes)) if tuple(axes) else None
        return out

    def _model_terms(self, total, parts, failures, frozen, *model_args):
        """Adds the model terms' weighted scores to `total` (returned) and their parts and
        non-finite counts to `parts` / `failures` (in place)."""
        missing = [n for n in self.model_names if n not in frozen]
        if missing:
            raise ValueError(f"rewards: no frozen model state given for model terms {missing}")
        fields = model_args[-1]
        for term in self.model_terms:
            score, model_parts = term.score(jax.lax.stop_gradient(frozen[term.label]), *model_args)
            score, bad = zero_non_finite(jax.lax.stop_gradient(score.astype(jnp.float32)))
            wanted = row_selector(term.rows, fields, self.domains)
            if wanted is not None:
                score = jnp.where(wanted, score, 0.0)
            total = total + term.weight * score
            parts[term.label] = score
            for part, values in model_parts.items():
                parts[f"{term.label}/{part}"] = jax.lax.stop_gradient(values)
            failures[f"{term.label}/{NON_FINITE}"] = count_selected(bad, wanted)
        return total
