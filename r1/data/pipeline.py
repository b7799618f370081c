"""Prompt pipelines on grain: shuffle, shard by process, tokenise, bucket, batch, checkpoint.

    rows (RowSource / ProceduralSource / any random-access sequence of row dicts)
      -> [process_index::process_count]   disjoint per-process shards that cover the data
      -> shuffle(seed), reshuffled every epoch
      -> repeat(num_epochs)                None: forever
      -> render (R1-Zero template by default) + tokenise, on `num_threads` threads
      -> batch of `batch_size` rows, left-padded to the smallest bucket that fits the batch

Each batch is a dict of NumPy arrays (B = batch_size per process, L = the chosen bucket):
    tokens:      int32[B, L]  prompt ids, left-padded with the tokenizer's pad id
    mask:        bool[B, L]   True on real prompt tokens (never infer it from pad ids)
    lengths:     int32[B]     number of real tokens per row
    valid:       bool[B]      False only on filler rows of a final partial batch
    prompt_text: object[B]    the rendered prompt strings
    <field>:     one entry per `fields` name: `difficulty` int32[B]; other integer fields
                 int32[B], float fields float32[B], anything else (strings such as `answer`,
                 lists such as countdown `numbers`) object[B].
Rows longer than the largest bucket are skipped and counted (`iterator.num_skipped`).

The iterator is a `grain.DatasetIterator`: `get_state()` / `set_state()` capture exactly the
position, and it checkpoints with orbax through grain's handler
(`grain.checkpoint.CheckpointSave(iterator)` inside an `ocp.args.Composite`, or the
`save_iterator` / `restore_iterator` helpers here); a restored iterator yields exactly the batches
an unbroken one would have yielded next.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from r1.data import templates
from r1.data.tokenizers import Tokenizer

DEFAULT_FIELDS = ("prompt", "answer", "difficulty", "task", "id")
_IDS = "_r1_ids"


def render_r1_zero_row(row: Mapping[str, Any]) -> str:
    """The default prompt renderer: the R1-Zero template around `row["prompt"]`."""
    return templates.render_r1_zero(row["prompt"])


PROMPT_TEMPLATES = ("r1_zero", "chat", "plain")


def prompt_renderer(
    template: str, tokenizer: Any = None, system_prompt: str = "", instruction: str = "auto"
) -> Callable[[Mapping[str, Any]], str]:
    """row -> prompt text under `template`:

    * "r1_zero": R1-Zero's template around the question (`system_prompt` and `instruction`
      unused: the template states the answer format);
    * "chat": the tokenizer's own chat template (`tokenizer.render_chat`, from its
      tokenizer_config.json) with the question (+ instruction) as the user turn, after an
      optional system turn `system_prompt`, ending in the generation prompt;
    * "plain": the question (+ instruction) as is.

    instruction: appended to the question on its own line; "auto" gives rows with a gold
    `answer` (math and other reasoning rows) `templates.BOXED_INSTRUCTION`, and code rows
    (whose prompts state their answer format) and general rows nothing; "" gives nothing.
    """
    if template not in PROMPT_TEMPLATES:
        raise ValueError(f"template: expected one of {PROMPT_TEMPLATES}, got {template!r}")
    if template == "r1_zero":
        return render_r1_zero_row
    if template == "chat" and not callable(getattr(tokenizer, "render_chat", None)):
        raise ValueError(
            f"template 'chat' needs a tokenizer with a chat template (a Hugging Face tokenizer "
            f"directory whose tokenizer_config.json has one); got {tokenizer!r}"
        )

    def question(row: Mapping[str, Any]) -> str:
        extra = instruction
        if instruction == "auto":
            reasoning = row.get("answer") and row.get("domain") not in ("code", "general")
            extra = templates.BOXED_INSTRUCTION if reasoning else ""
        return f"{row['prompt']}\n{extra}" if extra else str(row["prompt"])

    if template == "plain":
        return question

    def chat(row: Mapping[str, Any]) -> str:
        messages = [{"role": "user", "content": question(row)}]
        return tokenizer.render_chat(messages, system=system_prompt or None)

    return chat


def default_process() -> tuple[int, int]:
    """`(jax.process_index(), jax.process_count())`."""
    import jax  # noqa: PLC0415 - keep this module importable without initialising jax

    return jax.process_index(), jax.process_count()


# ------------------------------------------------------------------------------ collation
def _column(name: str, values: list[Any]) -> np.ndarray:
    if name == "difficulty":
        return np.asarray([int(v) if v is not None else 0 for v in values], dtype=np.int32)
    if values and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.int32)
    if values and all(
        isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in values
    ):
        return np.asarray(values, dtype=np.float32)
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def collate(
    rows: Sequence[Mapping[str, Any]],
    ids: Sequence[Sequence[int]],
    *,
    pad_id: int,
    buckets: Sequence[int],
    batch_size: int | None = None,
    fields: Sequence[str] = DEFAULT_FIELDS,
) -> dict[str, np.ndarray]:
    """Left-pad token lists into the smallest bucket that fits, and stack the row fields.

    Args:
      rows: the row dicts (B_real of them), with `prompt_text` if present.
      ids: their token ids; each at most `max(buckets)` long.
      pad_id: id written into padding positions.
      buckets: allowed padded lengths L.
      batch_size: pad the batch to this many rows with `valid=False` filler (default: B_real).
      fields: row keys to carry along (missing keys give None / 0).

    Returns:
      the batch dict described in the module docstring.
    """
    n = len(rows)
    b = n if batch_size is None else batch_size
    if n > b:
        raise ValueError(f"collate: {n} rows do not fit batch_size {b}")
    longest = max((len(x) for x in ids), default=0)
    fitting = [int(x) for x in sorted(buckets) if x >= longest]
    if not fitting:
        raise ValueError(
            f"collate: a row of {longest} tokens exceeds the largest bucket {max(buckets)}"
        )
    length = fitting[0]
    tokens = np.full((b, length), pad_id, dtype=np.int32)
    mask = np.zeros((b, length), dtype=bool)
    lengths = np.zeros((b,), dtype=np.int32)
    for i, x in enumerate(ids):
        if len(x):
            tokens[i, length - len(x) :] = x
            mask[i, length - len(x) :] = True
        lengths[i] = len(x)
    valid = np.zeros((b,), dtype=bool)
    valid[:n] = True
    batch: dict[str, np.ndarray] = {
        "tokens": tokens,
        "mask": mask,
        "lengths": lengths,
        "valid": valid,
    }
    for name in ("prompt_text", *fields):
        values = [r.get(name) for r in rows]
        batch[name] = _column(name, values + [_filler(values)] * (b - n))
    return batch


def _filler(values: list[Any]) -> Any:
    """Value for filler rows: 0 / 0.0 for numeric columns (keeps their dtype), else None."""
    if values and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values):
        return 0
    if values and all(
        isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in values
    ):
        return 0.0
    return None


def tokenize_rows(
    rows: Sequence[Mapping[str, Any]],
    tokenizer: Tokenizer,
    *,
    buckets: Sequence[int],
    render: Callable[[Mapping[str, Any]], str] = render_r1_zero_row,
    add_bos: bool = True,
    fields: Sequence[str] = DEFAULT_FIELDS,
) -> dict[str, np.ndarray]:
    """One batch from rows in hand (e.g. a fixed evaluation set), without grain.

    Raises `ValueError` if a row does not fit the largest bucket.
    """
    texts = [render(r) for r in rows]
    ids = [tokenizer.encode(t, add_bos=add_bos) for t in texts]
    rows = [{**r, "prompt_text": t} for r, t in zip(rows, texts)]
    return collate(rows, ids, pad_id=tokenizer.pad_id, buckets=buckets, fields=fields)


# ------------------------------------------------------------------------------ grain datasets
class _BucketBatchIterator(grain.DatasetIterator):
    """Pulls tokenised rows, skips (and counts) too-long ones, emits bucketed batches."""

    def __init__(
        self,
        parent: grain.DatasetIterator,
        *,
        batch_size: int,
        buckets: tuple[int, ...],
        pad_id: int,
        fields: tuple[str, ...],
        drop_remainder: bool,
    ):
        super().__init__(parent)
        self._batch_size = batch_size
        self._buckets = buckets
        self._max_len = max(buckets)
        self._pad_id = pad_id
        self._fields = fields
        self._drop_remainder = drop_remainder
        self.num_skipped = 0
        self.num_rows = 0
        self.num_batches = 0
        self._exhausted = False

    def __next__(self) -> dict[str, np.ndarray]:
        rows: list[dict[str, Any]] = []
        ids: list[np.ndarray] = []
        if self._exhausted:
            raise StopIteration
        while len(rows) < self._batch_size:
            try:
                row = next(self._parent)
            except StopIteration:
                self._exhausted = True
                break
            x = row[_IDS]
            if len(x) > self._max_len:
                self.num_skipped += 1
                continue
            rows.append(row)
            ids.append(x)
        if not rows or (len(rows) < self._batch_size and self._drop_remainder):
            raise StopIteration
        self.num_rows += len(rows)
        self.num_batches += 1
        return collate(
            rows,
            ids,
            pad_id=self._pad_id,
            buckets=self._buckets,
            batch_size=self._batch_size,
            fields=self._fields,
        )

    def get_state(self) -> dict[str, Any]:
        return {
            "parent": self._parent.get_state(),
            "num_skipped": self.num_skipped,
            "num_rows": self.num_rows,
            "num_batches": self.num_batches,
            "exhausted": self._exhausted,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self.num_skipped = int(state["num_skipped"])
        self.num_rows = int(state["num_rows"])
        self.num_batches = int(state["num_batches"])
        self._exhausted = bool(state["exhausted"])

    def stats(self) -> dict[str, int]:
        """Counters for logging: rows batched, rows skipped as too long, batches emitted."""
        return {
            "rows": self.num_rows,
            "skipped_too_long": self.num_skipped,
            "batches": self.num_batches,
        }


class BucketBatchIterDataset(grain.IterDataset):
    """Batches tokenised rows (dicts with the ids under a private key) into bucketed batches."""

    def __init__(
        self,
        parent: grain.IterDataset,
        *,
        batch_size: int,
        buckets: Sequence[int],
        pad_id: int,
        fields: Sequence[str] = DEFAULT_FIELDS,
        drop_remainder: bool = True,
    ):
        super().__init__(parent)
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        if not buckets or min(buckets) < 1:
            raise ValueError(f"buckets: expected positive lengths, got {buckets}")
        self._kw = dict(
            batch_size=batch_size,
            buckets=tuple(sorted(int(b) for b in buckets)),
            pad_id=int(pad_id),
            fields=tuple(fields),
            drop_remainder=drop_remainder,
        )

    def __iter__(self) -> _BucketBatchIterator:
        return _BucketBatchIterator(self._parent.__iter__(), **self._kw)

    def __str__(self) -> str:
        return f"BucketBatchIterDataset({self._kw})"


def shard_and_shuffle(
    source: Sequence[Mapping[str, Any]],
    *,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.MapDataset:
    """The row stream of one process: `source[process_index::process_count]`, shuffled by `seed`
    (differently each epoch), repeated `num_epochs` times (None: forever)."""
    if process_index is None or process_count is None:
        pi, pc = default_process()
        process_index = pi if process_index is None else process_index
        process_count = pc if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, process_count={process_count})")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs: expected None or >= 1, got {num_epochs}")
    ds = grain.MapDataset.source(source)
    if process_count > 1:
        ds = ds[process_index::process_count]
    if len(ds) == 0:
        raise ValueError(
            f"process {process_index} of {process_count} has no rows (source has {len(source)})"
        )
    if shuffle:
        ds = ds.shuffle(seed=seed % 2**32)
    return ds.repeat(num_epochs)


def prompt_dataset(
    source: Sequence[Mapping[str, Any]],
    tokenizer: Tokenizer,
    *,
    batch_size: int,
    buckets: Sequence[int] = (64, 128, 256),
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    render: Callable[[Mapping[str, Any]], str] = render_r1_zero_row,
    add_bos: bool = True,
    fields: Sequence[str] = DEFAULT_FIELDS,
    drop_remainder: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    num_threads: int = 2,
    prefetch_buffer_size: int = 64,
) -> grain.IterDataset:
    """The prompt pipeline for RL and evaluation (see the module docstring for batch contents).

    Args:
      source: random-access rows (`RowSource`, `ProceduralSource`, a list of dicts).
      tokenizer: any `r1.data.tokenizers.Tokenizer`.
      batch_size: rows per batch on this process (the global batch is this x process_count).
      buckets: allowed prompt lengths L (one compiled program per bucket downstream).
      seed: shuffle seed (the same on every process).
      shuffle: shuffle (procedural sources are already random: False is fine for them).
      num_epochs: passes over the data; None repeats forever.
      render: row -> prompt text (default: R1-Zero template around `row["prompt"]`).
      add_bos: prepend the tokenizer's BOS (when it has one).
      fields: row keys carried into the batch.
      drop_remainder: drop a final partial batch (static shapes); if False it is padded with
        `valid=False` rows.
      process_index, process_count: this process's shard (default: jax's; inject for tests).
      num_threads, prefetch_buffer_size: grain threads that render and tokenise ahead.

    Returns:
      a `grain.IterDataset`; `iter()` gives a checkpointable iterator of batches, with
      `.stats()` counting skipped too-long rows.
    """
    ds = shard_and_shuffle(
        source,
        seed=seed,
        shuffle=shuffle,
        num_epochs=num_epochs,
        process_index=process_index,
        process_count=process_count,
    )

    def tokenize(row: Mapping[str, Any]) -> dict[str, Any]:
        text = render(row)
        ids = np.asarray(tokenizer.encode(text, add_bos=add_bos), dtype=np.int32)
        return {**row, "prompt_text": text, _IDS: ids}

    it_ds = ds.map(tokenize).to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size)
    )
    return BucketBatchIterDataset(
        it_ds,
        batch_size=batch_size,
        buckets=buckets,
        pad_id=tokenizer.pad_id,
        fields=fields,
        drop_remainder=drop_remainder,
    )


# ------------------------------------------------------------------------------ checkpointing
def save_iterator(directory: str | os.PathLike, iterator: grain.DatasetIterator) -> None:
    """Write the iterator's state under `directory` with grain's orbax handler (one JSON file
    per process, `process_<i>-of-<n>.json`). Inside a training checkpoint prefer
    `ocp.args.Composite(..., data=grain.checkpoint.CheckpointSave(iterator))`."""
    from etils import epath  # noqa: PLC0415

    path = epath.Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    grain.checkpoint.CheckpointHandler().save(path, args=grain.checkpoint.CheckpointSave(iterator))


def restore_iterator(
    directory: str | os.PathLike, iterator: grain.DatasetIterator
) -> grain.DatasetIterator:
    """Set `iterator` (a fresh one from the same pipeline) to the state saved in `directory`."""
    from etils import epath  # noqa: PLC0415

    return grain.checkpoint.CheckpointHandler().restore(
        epath.Path(directory), args=grain.checkpoint.CheckpointRestore(iterator)
    )
