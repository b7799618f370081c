"""seqio Task / Mixture registration over r1's sources, for t5x-style users.

seqio and TensorFlow are imported when a function here is called, never at import time (they
come with the `data` extra: `pip install 'r1[data]'`).

    from r1.data import seqio_tasks, procedural
    seqio_tasks.register_task(
        "gsm8k_r1_zero",
        splits={"train": "data/gsm8k/train.jsonl", "test": "data/gsm8k/test.jsonl"},
        layout="gsm8k",
    )
    seqio_tasks.register_task(
        "add_r1_zero",
        splits={"test": lambda: procedural.fixed_set(procedural.Addition(), 0, 100)},
    )
    seqio_tasks.register_mixture("r1_zero_math", ["gsm8k_r1_zero", ("add_r1_zero", 0.5)])
    ds = seqio.get_mixture_or_task("gsm8k_r1_zero").get_dataset(
        {"inputs": 256, "targets": 16}, split="train")

Each example has `inputs` (the tokenised rendered prompt, no EOS), `targets` (the tokenised
gold answer, with EOS), their `*_pretokenized` strings, and the row fields `answer` (string),
`difficulty` (int32), `task` and `id` (strings). (seqio mixtures keep only `inputs` and
`targets`: read answers from the tasks, or decode `targets`.)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from r1.data import sources
from r1.data.pipeline import render_r1_zero_row
from r1.data.tokenizers import Tokenizer, as_seqio_vocabulary, build_demo_tokenizer

RowsSpec = str | os.PathLike | Sequence[str | os.PathLike] | Callable[[], Sequence[dict]]


def _load_rows(spec: RowsSpec, layout: str) -> Sequence[dict]:
    if callable(spec):
        return spec()
    rows, _ = sources.load_files(spec, layout)
    return rows


def register_task(
    name: str,
    splits: Mapping[str, RowsSpec],
    *,
    layout: str = "auto",
    vocabulary: Any = None,
    tokenizer: Tokenizer | None = None,
    render: Callable[[Mapping[str, Any]], str] = render_r1_zero_row,
    overwrite: bool = True,
) -> Any:
    """Register (and return) a `seqio.Task` named `name`.

    Args:
      name: the task name.
      splits: split name -> a file path, glob or list of paths (read with
        `r1.data.sources.load_files`), or a callable returning rows (procedural sets, TFDS
        via `lambda: sources.load_tfds(...)[0]`). Loaded when the dataset is built.
      layout: file layout for path splits ("gsm8k", "math", "r1", "auto").
      vocabulary: a `seqio.Vocabulary`; default: `tokenizer` wrapped by `as_seqio_vocabulary`.
      tokenizer: an r1 tokenizer (default: the shipped demo tokenizer) when no vocabulary.
      render: row -> prompt text (default: the R1-Zero template).
      overwrite: replace a task already registered under `name`.
    """
    import seqio  # noqa: PLC0415 - optional `data` extra
    import tensorflow as tf  # noqa: PLC0415

    if not splits:
        raise ValueError(f"{name}: splits must name at least one split")
    if vocabulary is None:
        vocabulary = as_seqio_vocabulary(tokenizer or build_demo_tokenizer())
    signature = {
        "inputs": tf.TensorSpec([], tf.string),
        "targets": tf.TensorSpec([], tf.string),
        "answer": tf.TensorSpec([], tf.string),
        "difficulty": tf.TensorSpec([], tf.int32),
        "task": tf.TensorSpec([], tf.string),
        "id": tf.TensorSpec([], tf.string),
    }

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> Any:
        del shuffle_files, seed  # in-memory rows; seqio shuffles examples itself
        if split not in splits:
            raise ValueError(f"{name}: unknown split {split!r} (have {sorted(splits)})")
        rows = _load_rows(splits[split], layout)

        def gen():
            for r in rows:
                yield {
                    "inputs": render(r),
                    "targets": str(r["answer"]),
                    "answer": str(r["answer"]),
                    "difficulty": int(r.get("difficulty") or 0),
                    "task": str(r.get("task") or name),
                    "id": str(r.get("id", "")),
                }

        return tf.data.Dataset.from_generator(gen, output_signature=signature)

    if overwrite and name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=list(splits)),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features={
            "inputs": seqio.Feature(vocabulary, add_eos=False),
            "targets": seqio.Feature(vocabulary, add_eos=True),
        },
    )


def register_mixture(
    name: str,
    tasks: Sequence[str | tuple[str, float]],
    *,
    default_rate: float = 1.0,
    overwrite: bool = True,
) -> Any:
    """Register (and return) a `seqio.Mixture` of registered tasks, `(task, rate)` pairs or
    names (rate `default_rate`)."""
    import seqio  # noqa: PLC0415 - optional `data` extra

    if overwrite and name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    return seqio.MixtureRegistry.add(name, list(tasks), default_rate=default_rate)
