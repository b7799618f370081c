r"""SFT data: prompt/response rows -> loss-masked token sequences -> fixed [B, T] batches.

    rows (JSONL/JSON/Parquet files, a procedural task, or any random-access sequence of dicts)
      -> [process_index::process_count], shuffle(seed), repeat(num_epochs)   (`shard_and_shuffle`)
      -> render (template) + tokenise: prompt ids (BOS) + response ids + EOS, loss on the
         response and EOS only
      -> skip (and count) bad rows and examples longer than T
      -> batch: greedy first-fit packing of whole examples into B rows of T tokens, or one
         example per row (unpacked, right-padded)

Row format (one JSON object per line; other fields such as provenance are ignored):
    {"prompt": "12+34", "response": " <think>...</think> <answer>46</answer>"}
or  {"prompt": "12+34", "reasoning": "12+34=46", "answer": "46"}
The second form is rendered with `response_format` ("r1_zero": ` <think>R</think>
<answer>A</answer>`, "think": `R\n</think>\n\nA` after a chat prompt that opened `<think>\n`,
"readable": R1's `|special_token|R|special_token|A`). The prompt is rendered with `template`:
"r1_zero" (the R1-Zero template), "none" (used verbatim: rows whose prompt is already
rendered), or a chat format of `r1.data.templates.render_chat` ("qwen", "llama3",
"deepseek_r1", with the generation prompt and an opened `<think>\n`).

Each batch is a dict of NumPy arrays (B rows per process, T = seq_len):
    tokens:      int32[B, T]  example ids, packed left to right, pad id after the last one
    segment_ids: int32[B, T]  1, 2, ... per example within a row; 0 on padding (attention never
                              crosses segments and never reaches padding)
    positions:   int32[B, T]  0, 1, ... restarting at every example; 0 on padding
    loss_mask:   bool[B, T]   True where the token is a training target (response + EOS)

The batch iterator is a `grain.DatasetIterator`: `get_state()` / `set_state()` capture exactly
the position (the example that did not fit in the last batch is re-read after a restore), so a
resumed run sees exactly the batches an unbroken one would have seen.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from r1.data import procedural, sources, templates
from r1.data.pipeline import shard_and_shuffle
from r1.data.sources import LoadReport, RowError, text_field
from r1.data.tokenizers import Tokenizer

TEMPLATES = ("r1_zero", "none", *templates.CHAT_FORMATS)
RESPONSE_FORMATS = ("r1_zero", "think", "readable")
BATCH_KEYS = ("tokens", "segment_ids", "positions", "loss_mask")
_SKIP = "_sft_skip"


# ------------------------------------------------------------------------------ rows
def sft_row(raw: Any) -> dict[str, str]:
    """A schema-checked SFT row: `{"prompt", "response"}` or `{"prompt", "reasoning",
    "answer"}` (other fields dropped). Raises `RowError` naming what is missing."""
    if not isinstance(raw, Mapping):
        raise RowError("not an object", type(raw).__name__)
    row = {"prompt": text_field(raw, "prompt")}
    if raw.get("response") is not None:
        row["response"] = text_field(raw, "response")
    elif raw.get("reasoning") is not None or raw.get("answer") is not None:
        row["reasoning"] = text_field(raw, "reasoning")
        row["answer"] = text_field(raw, "answer")
    else:
        raise RowError("missing field 'response'", "(or 'reasoning' and 'answer')")
    return row


def render_example(
    row: Mapping[str, Any],
    *,
    template: str = "r1_zero",
    response_format: str = "r1_zero",
    tokenizer_adds_bos: bool = True,
) -> tuple[str, str]:
    """`(prompt_text, response_text)` of a checked row (see the module docstring)."""
    if template not in TEMPLATES:
        raise ValueError(f"template: expected one of {TEMPLATES}, got {template!r}")
    if response_format not in RESPONSE_FORMATS:
        raise ValueError(
            f"response_format: expected one of {RESPONSE_FORMATS}, got {response_format!r}"
        )
    prompt = row["prompt"]
    if template == "r1_zero":
        prompt_text = templates.render_r1_zero(prompt)
    elif template == "none":
        prompt_text = prompt
    else:
        prompt_text = templates.render_chat(prompt, format=template, add_bos=not tokenizer_adds_bos)
    if "response" in row:
        return prompt_text, row["response"]
    reasoning, answer = row["reasoning"], row["answer"]
    if response_format == "r1_zero":
        response = templates.render_r1_zero_completion(reasoning, answer)
    elif response_format == "think":
        response = f"{reasoning}\n{templates.THINK_CLOSE}\n\n{answer}"
    else:
        response = templates.render_readable(reasoning, answer)
    return prompt_text, response


def encode_example(
    prompt_text: str, response_text: str, tokenizer: Tokenizer, *, add_bos: bool = True
) -> dict[str, np.ndarray]:
    """`{"tokens": int32[n], "loss_mask": bool[n]}`: prompt ids (BOS first when `add_bos`),
    then response ids and EOS; the loss mask is True on the response and EOS only."""
    prompt = tokenizer.encode(prompt_text, add_bos=add_bos)
    response = tokenizer.encode(response_text)
    if not response:
        raise RowError("empty response after tokenisation")
    ids = np.asarray([*prompt, *response, tokenizer.eos_id], np.int32)
    mask = np.zeros(len(ids), bool)
    mask[len(prompt) :] = True
    return {"tokens": ids, "loss_mask": mask}


def load_rows(
    paths: str | os.PathLike | Sequence[str | os.PathLike], *, max_logged: int = 5
) -> tuple[list[dict[str, str]], list[LoadReport]]:
    """SFT rows of local `.jsonl` / `.json` / `.parquet` files (a glob pattern is expanded).

    Rows without a usable prompt and response are skipped and counted per reason in the
    reports. Raises `FileNotFoundError` for a missing file and `ValueError` naming the file
    when none of its rows is usable.
    """
    import glob  # noqa: PLC0415

    if isinstance(paths, str | os.PathLike):
        spec = os.fspath(paths)
        paths = sorted(glob.glob(spec)) if glob.has_magic(spec) else [spec]
        if not paths:
            raise FileNotFoundError(f"{spec}: pattern matches no file")
    rows: list[dict[str, str]] = []
    reports = []
    for path in map(os.fspath, paths):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such SFT data file")
        records = sources.read_records(path)
        report = LoadReport(name=path, layout="sft")
        for where, raw in records:
            report.num_read += 1
            try:
                if isinstance(raw, Exception):
                    raise raw
                row = sft_row(raw)
            except RowError as err:
                detail = str(err)[len(err.reason) + 2 :]
                report.skip(where, err.reason, detail, max_logged)
                continue
            row["id"] = f"{os.path.basename(path)}:{where}"
            rows.append(row)
            report.num_kept += 1
        if not report.num_kept:
            raise ValueError(
                f"{path}: no usable SFT row (expected fields 'prompt' and 'response', or "
                f"'prompt', 'reasoning' and 'answer'); {report.summary()}"
            )
        reports.append(report)
    return rows, reports


class ProceduralTraces:
    """A random-access source of thinking traces: row `i` is procedural row `i` of
    (task, seed, split) with its worked solution as `reasoning`."""

    def __init__(
        self, task: procedural.Task, seed: int, split: str = "train", length: int = 2**31 - 1
    ):
        self.source = procedural.ProceduralSource(task, seed, split=split, length=length)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.source[index]
        return {
            "prompt": row["prompt"],
            "reasoning": procedural.thinking(row),
            "answer": str(row["answer"]),
            "id": row["id"],
        }

    def __repr__(self) -> str:
        return f"ProceduralTraces({self.source!r})"


# ------------------------------------------------------------------------------ batching
def first_fit(lengths: Sequence[int], batch_size: int, seq_len: int) -> list[list[int]]:
    """Greedy first-fit packing of examples, in order, into `batch_size` rows of `seq_len`.

    Returns the example indices of each row. Stops at the first example that fits in no row
    (the examples after it are left for the next batch). Every length must be <= seq_len.
    """
    rows: list[list[int]] = [[] for _ in range(batch_size)]
    free = [seq_len] * batch_size
    for i, n in enumerate(lengths):
        if n > seq_len:
            raise ValueError(f"example {i} has {n} tokens > seq_len {seq_len}")
        row = next((r for r in range(batch_size) if free[r] >= n), None)
        if row is None:
            break
        rows[row].append(i)
        free[row] -= n
    return rows


def collate(
    rows: Sequence[Sequence[Mapping[str, np.ndarray]]], seq_len: int, pad_id: int
) -> dict[str, np.ndarray]:
    """Lay out encoded examples, `rows[r]` packed left to right in row r (module docstring)."""
    b = len(rows)
    out = {
        "tokens": np.full((b, seq_len), pad_id, np.int32),
        "segment_ids": np.zeros((b, seq_len), np.int32),
        "positions": np.zeros((b, seq_len), np.int32),
        "loss_mask": np.zeros((b, seq_len), bool),
    }
    for r, examples in enumerate(rows):
        start = 0
        for s, ex in enumerate(examples, start=1):
            n = len(ex["tokens"])
            if start + n > seq_len:
                raise ValueError(f"row {r}: examples need more than seq_len={seq_len} tokens")
            out["tokens"][r, start : start + n] = ex["tokens"]
            out["segment_ids"][r, start : start + n] = s
            out["positions"][r, start : start + n] = np.arange(n)
            out["loss_mask"][r, start : start + n] = ex["loss_mask"]
            start += n
    return out


def pack(
    examples: Sequence[Mapping[str, np.ndarray]], batch_size: int, seq_len: int, pad_id: int
) -> tuple[dict[str, np.ndarray], int]:
    """First-fit packed batch of the leading examples; returns (batch, examples used)."""
    rows = first_fit([len(e["tokens"]) for e in examples], batch_size, seq_len)
    used = sum(len(r) for r in rows)
    return collate([[examples[i] for i in r] for r in rows], seq_len, pad_id), used


def pad(
    examples: Sequence[Mapping[str, np.ndarray]], batch_size: int, seq_len: int, pad_id: int
) -> dict[str, np.ndarray]:
    """Unpacked batch: example r alone in row r, right-padded (at most batch_size examples)."""
    if len(examples) > batch_size:
        raise ValueError(f"{len(examples)} examples do not fit {batch_size} unpacked rows")
    rows = [[e] for e in examples] + [[] for _ in range(batch_size - len(examples))]
    return collate(rows, seq_len, pad_id)


class _SFTBatchIterator(grain.DatasetIterator):
    """Pulls encoded examples, skips (and counts) bad ones, emits packed or padded batches."""

    def __init__(self, parent, *, batch_size, seq_len, pad_id, pack_examples, max_skips):
        super().__init__(parent)
        self._batch_size = batch_size
        self._seq_len = seq_len
        self._pad_id = pad_id
        self._pack = pack_examples
        self._max_skips = max_skips
        self._pending: dict[str, Any] | None = None
        self._pending_state: dict[str, Any] | None = None
        self._exhausted = False
        self.skipped: collections.Counter = collections.Counter()
        self.num_examples = 0
        self.num_batches = 0
        self.num_target_tokens = 0
        self._consecutive_skips = 0

    def _next_example(self) -> dict[str, Any] | None:
        """The next usable example (None when the source is exhausted)."""
        if self._pending is not None:
            example, self._pending = self._pending, None
            return example
        while True:
            before = self._parent.get_state()
            try:
                example = next(self._parent)
            except StopIteration:
                self._exhausted = True
                if not self.num_examples and self.skipped:
                    raise ValueError(self._all_bad_message()) from None
                return None
            if _SKIP in example:
                self.skipped[example[_SKIP]] += 1
                self._consecutive_skips += 1
                if self._consecutive_skips >= self._max_skips:
                    raise ValueError(self._all_bad_message())
                continue
            self._consecutive_skips = 0
            example["_state"] = before
            return example

    def _all_bad_message(self) -> str:
        reasons = ", ".join(f"{r}: {n}" for r, n in self.skipped.most_common())
        return (
            f"SFT data: {self._consecutive_skips} consecutive examples skipped and "
            f"{self.num_examples} used so far ({reasons}); check the rows' fields and "
            f"data.seq_len={self._seq_len}"
        )

    def __next__(self) -> dict[str, np.ndarray]:
        if self._exhausted and self._pending is None:
            raise StopIteration
        rows: list[list[dict[str, Any]]] = [[] for _ in range(self._batch_size)]
        free = [self._seq_len] * self._batch_size
        count = 0
        while True:
            example = self._next_example()
            if example is None:
                break
            n = len(example["tokens"])
            if self._pack:
                row = next((r for r in range(self._batch_size) if free[r] >= n), None)
            else:
                row = count if count < self._batch_size else None
            if row is None:
                self._pending = example
                self._pending_state = example["_state"]
                break
            rows[row].append(example)
            free[row] -= n
            count += 1
            if not self._pack and count == self._batch_size:
                break
        if not count:
            raise StopIteration
        self.num_examples += count
        self.num_batches += 1
        batch = collate(rows, self._seq_len, self._pad_id)
        self.num_target_tokens += int(batch["loss_mask"].sum())
        return batch

    def get_state(self) -> dict[str, Any]:
        parent = self._pending_state if self._pending is not None else self._parent.get_state()
        return {
            "parent": parent,
            "exhausted": self._exhausted and self._pending is None,
            "skipped": dict(self.skipped),
            "num_examples": self.num_examples,
            "num_batches": self.num_batches,
            "num_target_tokens": self.num_target_tokens,
            "consecutive_skips": self._consecutive_skips,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._pending = self._pending_state = None
        self._exhausted = bool(state["exhausted"])
        self.skipped = collections.Counter({k: int(v) for k, v in state["skipped"].items()})
        self.num_examples = int(state["num_examples"])
        self.num_batches = int(state["num_batches"])
        self.num_target_tokens = int(state["num_target_tokens"])
        self._consecutive_skips = int(state["consecutive_skips"])

    def stats(self) -> dict[str, int]:
        """Counters for logging: examples and batches emitted, target tokens, skips by reason."""
        out = {
            "examples": self.num_examples,
            "batches": self.num_batches,
            "target_tokens": self.num_target_tokens,
        }
        out.update({f"skipped/{reason}": n for reason, n in sorted(self.skipped.items())})
        return out


class SFTBatchIterDataset(grain.IterDataset):
    """Batches encoded examples (or skip markers) into fixed [B, T] SFT batches."""

    def __init__(
        self,
        parent: grain.IterDataset,
        *,
        batch_size: int,
        seq_len: int,
        pad_id: int,
        pack_examples: bool = True,
        max_consecutive_skips: int = 1000,
    ):
        super().__init__(parent)
        if batch_size < 1 or seq_len < 2:
            raise ValueError(
                f"batch_size >= 1 and seq_len >= 2 expected, got {batch_size}, {seq_len}"
            )
        self._kw = dict(
            batch_size=int(batch_size),
            seq_len=int(seq_len),
            pad_id=int(pad_id),
            pack_examples=bool(pack_examples),
            max_skips=int(max_consecutive_skips),
        )

    def __iter__(self) -> _SFTBatchIterator:
        return _SFTBatchIterator(self._parent.__iter__(), **self._kw)

    def __str__(self) -> str:
        return f"SFTBatchIterDataset({self._kw})"


def sft_dataset(
    source: Sequence[Mapping[str, Any]],
    tokenizer: Tokenizer,
    *,
    batch_size: int,
    seq_len: int,
    pack_examples: bool = True,
    template: str = "r1_zero",
    response_format: str = "r1_zero",
    add_bos: bool = True,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    num_threads: int = 2,
    prefetch_buffer_size: int = 64,
    max_consecutive_skips: int = 1000,
    render: Callable[[Mapping[str, Any]], tuple[str, str]] | None = None,
) -> grain.IterDataset:
    """The SFT pipeline (module docstring) over random-access rows.

    Args:
      source: rows (`load_rows(...)` output, `ProceduralTraces`, a list of dicts).
      tokenizer: any `r1.data.tokenizers.Tokenizer`.
      batch_size: rows per batch on this process (the global batch is this x process_count).
      seq_len: T, tokens per row; longer examples are skipped and counted ("too long").
      pack_examples: first-fit packing (True) or one example per row (False).
      template, response_format: how rows become text (see `render_example`); `render`
        replaces both with a function row -> (prompt_text, response_text).
      add_bos: prepend the tokenizer's BOS to the prompt.
      seed, shuffle, num_epochs, process_index, process_count: as `shard_and_shuffle`.
      num_threads, prefetch_buffer_size: grain threads that render and tokenise ahead.
      max_consecutive_skips: raise ValueError after this many bad examples in a row (a source
        whose rows are all bad); a finite source with no usable example raises too.

    Returns:
      a `grain.IterDataset`; `iter()` gives a checkpointable iterator of batches whose
      `.stats()` counts examples, target tokens and skipped rows by reason.
    """
    render_fn = render or (
        lambda row: render_example(
            row, template=template, response_format=response_format, tokenizer_adds_bos=add_bos
        )
    )
    if render is None:  # fail on a bad setting now, not on the first row in a worker thread
        render_example(
            {"prompt": "x", "response": "y"}, template=template, response_format=response_format
        )

    def encode(raw: Mapping[str, Any]) -> dict[str, Any]:
        try:
            example = encode_example(*render_fn(sft_row(raw)), tokenizer, add_bos=add_bos)
        except RowError as err:
            return {_SKIP: err.reason}
        if len(example["tokens"]) > seq_len:
            return {_SKIP: "too long"}
        return example

    ds = shard_and_shuffle(
        source,
        seed=seed,
        shuffle=shuffle,
        num_epochs=num_epochs,
        process_index=process_index,
        process_count=process_count,
    )
    it_ds = ds.map(encode).to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size)
    )
    return SFTBatchIterDataset(
        it_ds,
        batch_size=batch_size,
        seq_len=seq_len,
        pad_id=tokenizer.pad_id,
        pack_examples=pack_examples,
        max_consecutive_skips=max_consecutive_skips,
    )
