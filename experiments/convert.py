"""Convert between Hugging Face model directories and r1.

    # HF -> r1 -> HF (checks that a checkpoint loads, optionally changes storage dtype)
    python -m experiments.convert --input=/ckpt/Qwen2.5-1.5B --output=/tmp/q15 --dtype=bfloat16

    # print the parsed config and parameter count only
    python -m experiments.convert --input=/ckpt/DeepSeek-V3 --dry_run

The r1 side keeps the Hugging Face layout on disk, so every r1 checkpoint exported with
`r1.models.hf.save` loads in `transformers` and vice versa. Orbax train-state checkpoints are
exported by the trainers through the same `save` call.
"""

from __future__ import annotations

import json
import math
import os

import jax
from absl import app, flags
from flax import nnx

from r1.models import hf
from r1.models.transformer import Transformer

INPUT = flags.DEFINE_string("input", None, "Hugging Face model directory to read.", required=True)
OUTPUT = flags.DEFINE_string("output", None, "Directory to write (Hugging Face layout).")
DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Storage dtype of the output.")
DRY_RUN = flags.DEFINE_bool("dry_run", False, "Only parse the config and count parameters.")


def main(argv):
    del argv
    config_path = os.path.join(INPUT.value, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{INPUT.value}: no config.json")
    with open(config_path) as f:
        cfg = hf.config_from_hf(json.load(f))
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    print(f"config: {json.dumps(cfg.to_dict(), default=str)}")
    print(f"parameters: {count:,}")
    if DRY_RUN.value:
        return
    if not OUTPUT.value:
        raise app.UsageError("--output is required unless --dry_run")
    cfg, model = hf.load(INPUT.value)
    hf.save(model, cfg, OUTPUT.value, dtype=DTYPE.value)
    print(f"wrote {OUTPUT.value}")


if __name__ == "__main__":
    app.run(main)
