"""r1 data: prompt templates, tokenizers, procedural tasks, file/TFDS sources, grain pipelines.

Submodules (import them directly; seqio/TensorFlow are only imported by `seqio_tasks` functions
and `tokenizers.as_seqio_vocabulary`, TFDS only by `sources.load_tfds`, pyarrow only for
Parquet files):
  templates     R1-Zero template (verbatim), chat templates, R1 readable format
  tokenizers    Tokenizer protocol, HFTokenizer, SeqioTokenizer, DemoTokenizer, load_tokenizer
  procedural    Addition, Multiplication, Countdown; generate, ProceduralSource, pretraining_corpus
  sources       load_file(s) (JSONL/JSON/Parquet; gsm8k/math/r1 layouts), load_tfds, RowSource
  pipeline      prompt_dataset (grain), tokenize_rows, save_iterator / restore_iterator
  seqio_tasks   register_task, register_mixture
"""

from r1.data import pipeline, procedural, sources, templates, tokenizers
from r1.data.pipeline import prompt_dataset, restore_iterator, save_iterator, tokenize_rows
from r1.data.procedural import Addition, Countdown, Multiplication, ProceduralSource
from r1.data.sources import LoadReport, RowSource, load_file, load_files, load_tfds
from r1.data.templates import R1_ZERO_TEMPLATE, render_chat, render_r1_zero, render_readable
from r1.data.tokenizers import (
    DemoTokenizer,
    HFTokenizer,
    SeqioTokenizer,
    Tokenizer,
    build_demo_tokenizer,
    load_tokenizer,
)

__all__ = [
    "Addition",
    "Countdown",
    "DemoTokenizer",
    "HFTokenizer",
    "LoadReport",
    "Multiplication",
    "ProceduralSource",
    "R1_ZERO_TEMPLATE",
    "RowSource",
    "SeqioTokenizer",
    "Tokenizer",
    "build_demo_tokenizer",
    "load_file",
    "load_files",
    "load_tfds",
    "load_tokenizer",
    "pipeline",
    "procedural",
    "prompt_dataset",
    "render_chat",
    "render_r1_zero",
    "render_readable",
    "restore_iterator",
    "save_iterator",
    "sources",
    "templates",
    "tokenize_rows",
    "tokenizers",
]
