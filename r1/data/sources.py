r"""Question/answer sources from local files (JSONL, JSON, Parquet) and TFDS, schema-checked.

Layouts (`LAYOUTS`; the code layouts "humaneval", "mbpp" and "stdio" are documented in
`r1.data.code_layouts`):
* "gsm8k": `question`, `answer` whose last line is `#### 42`; the gold answer is the number
  after `####` (thousands separators removed); difficulty = number of solution lines (steps).
* "math": `problem`, `solution` with the final answer in the last `\boxed{...}` (nested braces
  handled; `\fbox{}` and `\boxed 5` too); difficulty = `level` ("Level 3" -> 3) when present.
* "r1": rows already in r1's form, `prompt` and `answer` (e.g. written by
  `r1.data.procedural`), or `prompt` and `tests` (a code row: statements and / or
  ``{"input", "output"}`` cases for the ``code`` reward), optional `difficulty`, `task`, `id`,
  `domain`.
* "auto" (default): the first layout whose fields the file's first usable row has.

Every row becomes `{"prompt", "answer" (code rows: "tests"), "difficulty", "task", "id",
"domain", ...}`; `domain` is the row's own, else its layout's (`LAYOUT_DOMAINS`). Rows with
missing fields or an unparsable answer are skipped and counted in a `LoadReport` (reason ->
count; the first few reasons are logged with their line numbers). A file with no valid row at
all (wrong layout, not JSON, empty) raises `ValueError` naming the file.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from r1.data import code_layouts
from r1.data.rows import RowError, text_field

log = logging.getLogger(__name__)

LAYOUTS = ("gsm8k", "math", "r1", *code_layouts.CODE_LAYOUTS)
# The domain of a layout's rows (a row may name its own in a `domain` field; an r1-layout row
# without one has none, or "code" when it has `tests` and no `answer`); per-domain rewards
# route rows by it.
LAYOUT_DOMAINS = {
    "gsm8k": "math",
    "math": "math",
    **{layout: code_layouts.CODE_DOMAIN for layout in code_layouts.CODE_LAYOUTS},
}
# What each layout needs, as said in errors ("auto" detection: `detect_layout`).
_REQUIRED = {
    "gsm8k": ("question", "answer"),
    "math": ("problem", "solution"),
    "r1": ("prompt", "answer or tests"),
    "humaneval": ("prompt", "test", "entry_point"),
    "mbpp": ("text", "test_list"),
    "stdio": ("a statement", "input_output or test cases"),
}


# ------------------------------------------------------------------------------ answer extraction
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")


def extract_gsm8k_answer(solution: str) -> str:
    """The gold answer of a GSM8K solution: the text after the last `####`, as a number string.

    Raises `RowError` when there is no `####` or what follows is not a number.
    """
    if "####" not in solution:
        raise RowError("no '####' in answer")
    text = solution.rsplit("####", 1)[1].strip()
    text = text.replace(",", "").replace("$", "").rstrip(".").strip()
    if not _NUMBER.match(text):
        raise RowError("answer after '####' is not a number", repr(text[:40]))
    return text


def last_boxed(text: str) -> str | None:
    r"""Content of the last `\boxed{...}` / `\fbox{...}` in `text` (braces balanced), or of
    `\boxed x` (up to the next space or `$`); None when there is none or it is unbalanced."""
    starts = [m for m in re.finditer(r"\\(?:boxed|fbox)\s*(\{)?", text)]
    for m in reversed(starts):
        if m.group(1) is None:
            rest = text[m.end() :]
            token = re.match(r"[^\s$]+", rest)
            if token and m.group(0).endswith((" ", "\t")):
                return token.group(0)
            continue
        depth, i = 1, m.end()
        while i < len(text):
            c = text[i]
            if c == "\\" and i + 1 < len(text):  # skip escaped characters such as \{ \}
                i += 2
                continue
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return text[m.end() : i]
            i += 1
        return None  # the last \boxed is unbalanced: do not fall back to an earlier one
    return None


def extract_math_answer(solution: str) -> str:
    r"""The gold answer of a MATH solution: the content of its last `\boxed{}` (stripped)."""
    boxed = last_boxed(solution)
    if boxed is None:
        raise RowError("no \\boxed{} answer in solution")
    boxed = boxed.strip()
    if not boxed:
        raise RowError("empty \\boxed{} answer")
    return boxed


# ------------------------------------------------------------------------------ row conversion
def _int_or(value: Any, default: int) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = re.search(r"-?\d+", value)
        if m:
            return int(m.group())
    return default


def convert_row(raw: Any, layout: str, task: str) -> dict[str, Any]:
    """One raw record -> an r1 row (raises `RowError` with the reason when it must be skipped)."""
    if not isinstance(raw, dict):
        raise RowError("row is not an object", type(raw).__name__)
    if layout == "gsm8k":
        question, solution = text_field(raw, "question"), text_field(raw, "answer")
        answer = extract_gsm8k_answer(solution)
        steps = [ln for ln in solution.rsplit("####", 1)[0].splitlines() if ln.strip()]
        row = {"prompt": question, "answer": answer, "solution": solution, "difficulty": len(steps)}
    elif layout == "math":
        problem, solution = text_field(raw, "problem"), text_field(raw, "solution")
        row = {
            "prompt": problem,
            "answer": extract_math_answer(solution),
            "solution": solution,
            "difficulty": _int_or(raw.get("level"), 0),
        }
        if isinstance(raw.get("type"), str):
            row["subject"] = raw["type"]
    elif layout == "r1":
        row = _r1_row(raw)
    elif layout in code_layouts.CODE_LAYOUTS:
        row = code_layouts.convert_code_row(raw, layout)
    else:
        raise ValueError(f"layout: expected one of {LAYOUTS} or 'auto', got {layout!r}")
    row.setdefault("task", raw.get("task") if isinstance(raw.get("task"), str) else task)
    domain = raw.get("domain")
    if isinstance(domain, str) and domain:
        row["domain"] = domain
    elif layout in LAYOUT_DOMAINS:
        row["domain"] = LAYOUT_DOMAINS[layout]
    if "id" in raw and raw["id"] is not None:
        row["id"] = str(raw["id"])
    return row


def detect_layout(raw: Any) -> str | None:
    """The layout of `raw` (a dict) by its fields, in `LAYOUTS` order, else None."""
    if not isinstance(raw, dict):
        return None
    if "question" in raw and "answer" in raw:
        return "gsm8k"
    if "problem" in raw and "solution" in raw:
        return "math"
    if "prompt" in raw and ("answer" in raw or isinstance(raw.get("tests"), list)):
        return "r1"
    for layout in code_layouts.CODE_LAYOUTS:
        if code_layouts.looks_like(raw, layout):
            return layout
    return None


def _r1_row(raw: Mapping[str, Any]) -> dict[str, Any]:
    """An r1-layout row: `prompt` and a gold `answer`, or a code row's `tests` (a list)."""
    row = dict(raw)
    row["prompt"] = text_field(raw, "prompt")
    if raw.get("answer") is None and isinstance(raw.get("tests"), list):
        if not raw["tests"]:
            raise RowError("empty tests", "a code row needs at least one test")
        row.setdefault("domain", code_layouts.CODE_DOMAIN)
        row.pop("answer", None)
    else:
        row["answer"] = text_field(raw, "answer").strip()
    row["difficulty"] = _int_or(raw.get("difficulty"), 0)
    return row


# ------------------------------------------------------------------------------ reports
@dataclasses.dataclass
class LoadReport:
    """What loading one source did: rows read/kept, and why the rest were skipped."""

    name: str
    layout: str = "auto"
    num_read: int = 0
    num_kept: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: list[str] = dataclasses.field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip(self, where: str, reason: str, detail: str, max_logged: int) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < max_logged:
            msg = f"{self.name}:{where}: skipped ({reason}{': ' + detail if detail else ''})"
            self.examples.append(msg)
            log.warning(msg)

    def summary(self) -> str:
        reasons = ", ".join(f"{r}: {n}" for r, n in self.skipped.most_common())
        return (
            f"{self.name}: kept {self.num_kept} of {self.num_read} rows (layout {self.layout})"
            + (f"; skipped {reasons}" if reasons else "")
        )


def convert_records(
    records: Iterable[tuple[str, Any]],
    *,
    name: str,
    layout: str = "auto",
    task: str | None = None,
    max_logged: int = 5,
    id_prefix: str | None = None,
) -> tuple[list[dict[str, Any]], LoadReport]:
    """Schema-check `(location, raw_record)` pairs; raw records that are exceptions (e.g. a
    JSON decode error) count as skipped. Raises `ValueError` naming `name` if none is valid."""
    report = LoadReport(name=name, layout=layout)
    task = task or (layout if layout != "auto" else None)
    rows: list[dict[str, Any]] = []
    id_prefix = id_prefix if id_prefix is not None else os.path.basename(name)
    for where, raw in records:
        report.num_read += 1
        if isinstance(raw, Exception):
            report.skip(where, getattr(raw, "reason", "invalid record"), str(raw)[:80], max_logged)
            continue
        if report.layout == "auto":
            detected = detect_layout(raw)
            if detected is None:
                keys = sorted(raw)[:8] if isinstance(raw, dict) else type(raw).__name__
                report.skip(where, "no known layout", f"fields {keys}", max_logged)
                continue
            report.layout = detected
        try:
            row = convert_row(raw, report.layout, task or report.layout)
        except RowError as e:
            report.skip(where, e.reason, str(e)[len(e.reason) + 2 :], max_logged)
            continue
        row.setdefault("id", f"{id_prefix}:{where}")
        rows.append(row)
        report.num_kept += 1
    if not rows:
        expected = LAYOUTS if layout == "auto" else (layout,)
        raise ValueError(
            f"{name}: no valid row (expected layout {layout!r}: "
            + " or ".join(f"{lay} {_REQUIRED[lay]}" for lay in expected)
            + f"); {report.summary()}"
        )
    if report.num_skipped:
        log.warning("%s", report.summary())
    return rows, report


# ------------------------------------------------------------------------------ files
def _jsonl_records(path: str) -> Iterable[tuple[str, Any]]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield f"line {lineno}", json.loads(line)
            except json.JSONDecodeError as e:
                yield f"line {lineno}", RowError("invalid JSON", str(e))


def _json_records(path: str) -> Iterable[tuple[str, Any]]:
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        # Many ".json" files are JSON lines in disguise.
        yield from _jsonl_records(path)
        return
    if isinstance(obj, dict):
        # {"data": [...]} / {"rows": [...]} / a single record
        lists = [v for v in obj.values() if isinstance(v, list)]
        obj = lists[0] if len(lists) == 1 else [obj]
    if not isinstance(obj, list):
        raise ValueError(f"{path}: expected a JSON list of rows, got {type(obj).__name__}")
    for i, raw in enumerate(obj):
        yield f"row {i}", raw


def _parquet_records(path: str) -> Iterable[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq  # noqa: PLC0415 - optional dependency
    except ImportError as e:
        raise ImportError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from e
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise ValueError(f"{path}: not a readable Parquet file ({e})") from e
    for i, raw in enumerate(table.to_pylist()):
        yield f"row {i}", raw


def read_records(path: str | os.PathLike) -> Iterable[tuple[str, Any]]:
    """`(location, record)` pairs of a `.jsonl` / `.ndjson` / `.json` / `.parquet` file, by its
    extension; a bad JSON line is yielded as a `RowError` record (for callers to count)."""
    path = os.fspath(path)
    lower = path.lower()
    if lower.endswith(".parquet"):
        return _parquet_records(path)
    if lower.endswith(".json"):
        return _json_records(path)
    if lower.endswith((".jsonl", ".ndjson")):
        return _jsonl_records(path)
    raise ValueError(f"{path}: unknown file type (expected .jsonl, .json or .parquet)")


def load_file(
    path: str | os.PathLike,
    layout: str = "auto",
    *,
    task: str | None = None,
    max_logged: int = 5,
) -> tuple[list[dict[str, Any]], LoadReport]:
    """Rows of one local file (`.jsonl`, `.json`, `.parquet`), schema-checked.

    Args:
      path: the file.
      layout: "gsm8k", "math", "r1" or "auto".
      task: the rows' `task` field (default: the layout name, or the row's own `task`).
      max_logged: how many skipped rows to log (and keep in `report.examples`).

    Returns:
      `(rows, report)`; `report.num_skipped` and `report.skipped` (reason -> count) say what
      was dropped. Raises `FileNotFoundError` for a missing file and `ValueError` naming the
      file when no row is valid.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such data file")
    if layout != "auto" and layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS} or 'auto', got {layout!r}")
    records = read_records(path)
    return convert_records(records, name=path, layout=layout, task=task, max_logged=max_logged)


def load_files(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    layout: str = "auto",
    *,
    task: str | None = None,
    max_logged: int = 5,
) -> tuple[list[dict[str, Any]], list[LoadReport]]:
    """`load_file` over several files (a glob pattern is expanded), rows concatenated."""
    import glob  # noqa: PLC0415

    if isinstance(paths, str | os.PathLike):
        spec = os.fspath(paths)
        expanded = sorted(glob.glob(spec)) if glob.has_magic(spec) else [spec]
        if not expanded:
            raise FileNotFoundError(f"{spec}: pattern matches no file")
        paths = expanded
    rows: list[dict[str, Any]] = []
    reports = []
    for p in paths:
        r, rep = load_file(p, layout, task=task, max_logged=max_logged)
        rows += r
        reports.append(rep)
    return rows, reports


# ------------------------------------------------------------------------------ TFDS
def load_tfds(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    layout: str = "auto",
    task: str | None = None,
    max_logged: int = 5,
    field_map: dict[str, str] | None = None,
) -> tuple[list[dict[str, Any]], LoadReport]:
    """Rows of a TFDS dataset already prepared in `data_dir` (never downloads).

    Uses `tfds.data_source` (random access, no TensorFlow graph) when the dataset was prepared
    as ArrayRecord, else `tfds.as_numpy`. `field_map` renames features first (e.g.
    `{"input": "question"}`). Bytes features are decoded as UTF-8.
    """
    try:
        import tensorflow_datasets as tfds  # noqa: PLC0415 - optional `data` extra
    except ImportError as e:
        raise ImportError("load_tfds needs tensorflow-datasets: pip install 'r1[data]'") from e
    source_name = f"tfds:{name}/{split}"
    try:
        builder = tfds.builder(name, data_dir=None if data_dir is None else os.fspath(data_dir))
    except Exception as e:
        raise ValueError(f"{source_name}: cannot open the dataset in {data_dir} ({e})") from e
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"{source_name}: not prepared in data_dir={builder.data_dir!r} (r1 never downloads "
            "data: prepare it with `tfds build` first)"
        )

    def decode(x: Any) -> Any:
        if isinstance(x, bytes):
            return x.decode("utf-8", errors="replace")
        if hasattr(x, "tolist") and getattr(x, "ndim", 1) == 0:
            return decode(x.tolist())
        return x

    def records() -> Iterable[tuple[str, Any]]:
        file_format = getattr(builder.info, "file_format", None)
        if "array_record" in str(getattr(file_format, "value", file_format)):
            it: Iterable[Any] = builder.as_data_source(split=split)
        else:
            it = tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
        for i, ex in enumerate(it):
            raw = {k: decode(v) for k, v in dict(ex).items()}
            for old, new in (field_map or {}).items():
                if old in raw:
                    raw[new] = raw.pop(old)
            yield f"example {i}", raw

    return convert_records(
        records(),
        name=source_name,
        layout=layout,
        task=task or name,
        max_logged=max_logged,
        id_prefix=f"{name}/{split}",
    )


# ------------------------------------------------------------------------------ file lists
TFDS_PREFIX = "tfds:"


def split_list(value: str | Sequence[str]) -> list[str]:
    """A comma-separated string (or a sequence) -> its non-empty, stripped items."""
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return [item.strip() for item in items if item.strip()]


@dataclasses.dataclass
class SourceEntry:
    """The rows of one entry of a data-file list (a path, a glob or a TFDS name)."""

    entry: str
    layout: str
    rows: list[dict[str, Any]]
    reports: list[LoadReport]


def _per_entry(
    value: str | Sequence[str], entries: list[str], what: str, default: str, keep_empty: bool
) -> list[str]:
    """One item of `value` per entry: one given for all, or one each (empty items kept as
    `default` when `keep_empty`, else dropped)."""
    if keep_empty:
        items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value)]
        items = [v or default for v in items] if any(items) else [default]
    else:
        items = split_list(value) or [default]
    if len(items) == 1:
        items = items * len(entries)
    if len(items) != len(entries):
        raise ValueError(
            f"data {what}: {len(items)} {what} {items} for {len(entries)} files {entries} (give "
            f"one, or one per file)"
        )
    return items


def load_entries(
    files: str | Sequence[str],
    layouts: str | Sequence[str] = "auto",
    *,
    domains: str | Sequence[str] = "",
    tfds_data_dir: str | None = None,
    max_logged: int = 5,
) -> list[SourceEntry]:
    """The rows of each entry of `files` (comma-separated): local JSONL / JSON / Parquet paths
    or glob patterns (a glob's files sorted), and TFDS datasets as ``tfds:name/config:split``
    (prepared in `tfds_data_dir`; never downloaded). `layouts`: one layout for all entries, or
    one per entry (comma-separated). `domains`: "" (each row's own domain, else its layout's),
    one name for all entries or one per entry ("" keeps the default for that entry): the
    `domain` of every row of the entry. Raises `ValueError` naming the entry when an entry has
    no valid row."""
    entries = split_list(files)
    if not entries:
        raise ValueError("data files: no file given")
    layout_list = _per_entry(layouts, entries, "layouts", "auto", keep_empty=False)
    domain_list = _per_entry(domains, entries, "domains", "", keep_empty=True)
    out = []
    for entry, layout, domain in zip(entries, layout_list, domain_list):
        if layout != "auto" and layout not in LAYOUTS:
            raise ValueError(f"{entry}: layout expected one of {LAYOUTS} or 'auto', got {layout!r}")
        if entry.startswith(TFDS_PREFIX):
            name, sep, split = entry[len(TFDS_PREFIX) :].rpartition(":")
            if not sep or not name or not split:
                raise ValueError(f"{entry}: expected tfds:name[/config]:split")
            rows, report = load_tfds(
                name, split, data_dir=tfds_data_dir, layout=layout, max_logged=max_logged
            )
            reports = [report]
        else:
            rows, reports = load_files(entry, layout, max_logged=max_logged)
        if domain:
            rows = [{**row, "domain": domain} for row in rows]
        out.append(SourceEntry(entry, layout, rows, reports))
    return out


def load_sources(
    files: str | Sequence[str],
    layouts: str | Sequence[str] = "auto",
    *,
    domains: str | Sequence[str] = "",
    tfds_data_dir: str | None = None,
    max_logged: int = 5,
) -> tuple[list[dict[str, Any]], list[LoadReport]]:
    """`load_entries`' rows concatenated in entry order, and all their load reports."""
    loaded = load_entries(
        files, layouts, domains=domains, tfds_data_dir=tfds_data_dir, max_logged=max_logged
    )
    rows = [row for entry in loaded for row in entry.rows]
    return rows, [report for entry in loaded for report in entry.reports]


UNDECODABLE = ("invalid JSON", "row is not an object", "invalid record")
# A code row's tests are its gold answer.
GOLD_MARKERS = ("answer", "solution", "####", "boxed", "test", "case", "input_output")
UNSUPPORTED = ("call-based tests",)


def skip_category(reason: str) -> str:
    """A skip reason (`RowError.reason`, e.g. "no '####' in answer") -> its metric name:
    "undecodable" (not JSON, not an object), "no_layout", "unsupported" (e.g. call-based code
    tests), "bad_answer" (the gold answer or a code row's tests missing or unparsable),
    "missing_field" (any other field)."""
    if reason in UNDECODABLE:
        return "undecodable"
    if reason == "no known layout":
        return "no_layout"
    if reason in UNSUPPORTED:
        return "unsupported"
    if any(marker in reason for marker in GOLD_MARKERS):
        return "bad_answer"
    return "missing_field"


def skipped_counts(reports: Sequence[LoadReport]) -> dict[str, int]:
    """{category: rows skipped} summed over load reports (`skip_category`)."""
    total: collections.Counter[str] = collections.Counter()
    for report in reports:
        for reason, count in report.skipped.items():
            total[skip_category(reason)] += count
    return dict(total)


# ------------------------------------------------------------------------------ in memory
class RowSource:
    """A grain random-access source over rows in memory (what the pipeline consumes).

    Build one from files with `RowSource.from_files(...)`; `reports` keeps the load reports.
    """

    def __init__(self, rows: Sequence[dict[str, Any]], reports: Sequence[LoadReport] = ()):
        self.rows = list(rows)
        self.reports = list(reports)

    @classmethod
    def from_files(cls, paths: Any, layout: str = "auto", **kwargs: Any) -> RowSource:
        rows, reports = load_files(paths, layout, **kwargs)
        return cls(rows, reports)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]

    def __repr__(self) -> str:
        return f"RowSource({len(self.rows)} rows)"
