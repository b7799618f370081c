"""Teacher traces -> SFT rows for distillation (`r1.recipes.distill`): `TraceSection`
(`config.traces`), the parsing of a trace record (reasoning + answer, or one response split at
``</think>``), and `prepare_traces`, which reads local trace files into the student's SFT JSONL with
counted, reasoned skips."""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from r1.data import sources
from r1.data.sources import RowError, text_field
from r1.rejection import runner as rejection_runner
from r1.sft import data as sft_data
from r1.train.build import resolve_path

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TraceSection:
    """`config.traces`: local trace files and how their fields map to a trace.

    files: a path, a glob, comma-separated paths, or a sequence of them ("" = sample the
      teacher). prompt_field: the question. reasoning_field + answer_field: the chain of thought
      and the final answer; response_field (used when a row has no reasoning/answer): the whole
      completion, `<think>R</think>` then the answer (the R1-Zero `<answer>A</answer>` tags or
      plain text), which is split and re-rendered. correct_field: when set, rows whose field is
      false are skipped (dumps that keep wrong samples with a verdict). require_reasoning: skip
      responses without `</think>` (else they are used verbatim). limit: keep the first this many
      usable rows (0: all).
    """

    files: Any = ""
    prompt_field: str = "prompt"
    reasoning_field: str = "reasoning"
    answer_field: str = "answer"
    response_field: str = "response"
    correct_field: str = ""
    require_reasoning: bool = True
    limit: int = 0

    def __post_init__(self):
        for name in ("prompt_field", "reasoning_field", "answer_field", "response_field"):
            if not getattr(self, name):
                raise ValueError(f"{name}: expected a field name, got an empty string")
        if self.limit < 0:
            raise ValueError(f"limit: expected >= 0 (0: all rows), got {self.limit}")

    def paths(self) -> list[str]:
        """The trace files, globs expanded in sorted order (relative paths also tried against
        the repository root). Raises `FileNotFoundError` naming a path that matches nothing."""
        specs = self.files
        if isinstance(specs, str):
            specs = [s.strip() for s in specs.split(",") if s.strip()]
        out = []
        for spec in map(str, specs):
            spec = resolve_path(spec)
            matches = sorted(glob.glob(spec)) if glob.has_magic(spec) else [spec]
            if not matches or not all(os.path.isfile(m) for m in matches):
                raise FileNotFoundError(f"config.traces.files: {spec!r} matches no file")
            out += matches
        return out


def _truthy(raw: Mapping[str, Any], key: str) -> bool:
    value = raw.get(key)
    if value is None:
        raise RowError(f"missing field '{key}'")
    if isinstance(value, bool | int | float | np.bool_ | np.integer | np.floating):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.strip().lower() in ("true", "yes", "1")
    raise RowError(f"field '{key}' is not a boolean", repr(value)[:40])


def split_response(response: str) -> tuple[str, str] | None:
    """`(reasoning, answer)` of a completion that closes `</think>`, else None.

    reasoning: the text before the first `</think>` without a leading `<think>`, stripped.
    answer: the last `<answer>...</answer>` content after it when there is one (R1-Zero format),
    else everything after `</think>`, stripped.
    """
    reasoning, answer = rejection_runner.split_response(response)
    if reasoning is None:
        return None
    return reasoning, answer or ""


def trace_to_sft(raw: Any, fields: TraceSection, response_format: str) -> dict[str, str] | None:
    """One trace record -> `{"prompt", "response"}` in the student's `response_format`
    (`r1.sft.data.RESPONSE_FORMATS`). Raises `RowError` (with the reason) for an unusable row.

    A row with `reasoning_field` is rendered from it and `answer_field` (both must be text);
    otherwise `response_field` is split at `</think>` (see `split_response`) and re-rendered.
    """
    if not isinstance(raw, Mapping):
        raise RowError("not an object", type(raw).__name__)
    prompt = text_field(raw, fields.prompt_field)
    if fields.correct_field and not _truthy(raw, fields.correct_field):
        raise RowError("marked incorrect")
    if raw.get(fields.reasoning_field) is not None:
        reasoning = text_field(raw, fields.reasoning_field)
        answer = text_field(raw, fields.answer_field)
    elif raw.get(fields.response_field) is not None:
        response = text_field(raw, fields.response_field)
        parts = split_response(response)
        if parts is None:
            if fields.require_reasoning:
                raise RowError("no </think> in response")
            return {"prompt": prompt, "response": response}
        reasoning, answer = parts
        if not reasoning:
            raise RowError("empty reasoning")
        if not answer:
            raise RowError("no answer after </think>")
    else:
        raise RowError(
            f"missing field '{fields.response_field}'",
            f"(or '{fields.reasoning_field}' and '{fields.answer_field}')",
        )
    row = {"prompt": prompt, "reasoning": reasoning.strip(), "answer": answer.strip()}
    _, response = sft_data.render_example(row, template="none", response_format=response_format)
    return {"prompt": prompt, "response": response}


def read_records(path: str) -> Iterable[tuple[str, Any]]:
    """`(location, record)` pairs of a trace file (`r1.data.sources.read_records`)."""
    return sources.read_records(path)


def prepare_traces(
    paths: Sequence[str],
    fields: TraceSection,
    response_format: str,
    out_path: str,
    *,
    max_logged: int = 5,
) -> dict[str, Any]:
    """Converts trace files into the SFT rows of `out_path` (JSONL, written atomically).

    Returns the report: per file and in total `read`, `kept`, `skipped` (reason -> count), and
    the first `max_logged` skip messages. Raises `ValueError` when no row at all is usable.
    """
    if not paths:
        raise ValueError("prepare_traces: no trace file")
    tmp = f"{out_path}.tmp"
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    files, total, examples = [], Counter(), []
    kept = read = 0
    with open(tmp, "w", encoding="utf-8") as out:
        for path in paths:
            skipped: Counter[str] = Counter()
            file_read = file_kept = 0
            for where, raw in read_records(path):
                if fields.limit and kept >= fields.limit:
                    break
                file_read += 1
                try:
                    if isinstance(raw, Exception):
                        raise raw
                    row = trace_to_sft(raw, fields, response_format)
                except RowError as err:
                    skipped[err.reason] += 1
                    if len(examples) < max_logged:
                        examples.append(f"{path}:{where}: skipped ({err})")
                        log.warning("%s", examples[-1])
                    continue
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                file_kept += 1
                kept += 1
            read += file_read
            total += skipped
            files.append(
                {"path": path, "read": file_read, "kept": file_kept, "skipped": dict(skipped)}
            )
        out.flush()
        os.fsync(out.fileno())
    report = {
        "files": files,
        "read": read,
        "kept": kept,
        "skipped": dict(sorted(total.items())),
        "examples": examples,
        "response_format": response_format,
    }
    if not kept:
        os.remove(tmp)
        raise ValueError(
            f"no usable trace in {list(paths)} (fields: prompt {fields.prompt_field!r}, "
            f"reasoning {fields.reasoning_field!r} + answer {fields.answer_field!r} or response "
            f"{fields.response_field!r}); skipped {dict(total)}; e.g. {examples[:2]}"
        )
    os.replace(tmp, out_path)
    return report
