"""Export of a trained policy in Hugging Face layout (what a next stage or transformers loads).

`export_model` writes `model.safetensors` + `config.json` (`r1.models.hf.save`) and the
tokenizer's files, so `config.init.hf_path=<out>` (and `tokenizer.path=<out>`) continues from it.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import jax
from flax import nnx

from r1.models import hf
from r1.models.config import ModelConfig
from r1.train.state import TrainState

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "generation_config.json",
)


def export_model(
    graphdef: nnx.GraphDef,
    state: TrainState,
    model_cfg: ModelConfig,
    tokenizer: Any,
    tokenizer_path: str,
    out: str,
    dtype: str = "",
) -> None:
    """Writes the policy of `state` in HF layout to `out`, plus the tokenizer files: the demo
    tokenizer's own JSON, or the files next to `tokenizer_path` (every process takes part in
    the gather; process 0 writes). dtype: "" keeps the parameter dtype, else e.g. "bfloat16"."""
    params, extra = state.params, state.extra
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415 - multi-host runs only

        params, extra = multihost_utils.process_allgather((params, extra), tiled=True)
    if jax.process_index() != 0:
        return
    model = nnx.merge(graphdef, params, extra)
    hf.save(model, model_cfg, out, dtype=dtype or None)
    if hasattr(tokenizer, "save"):  # the demo tokenizer
        tokenizer.save(os.path.join(out, "demo_tokenizer.json"))
    elif tokenizer_path:
        source = (
            tokenizer_path if os.path.isdir(tokenizer_path) else os.path.dirname(tokenizer_path)
        )
        for name in TOKENIZER_FILES:
            if os.path.exists(os.path.join(source, name)):
                shutil.copy(os.path.join(source, name), os.path.join(out, name))
