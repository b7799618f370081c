"""`RewardModel`: an r1 `Transformer` backbone with a scalar value head.

The head reads the backbone's final (normed) hidden state at the last position of an explicit
mask: `score = h[b, last(mask[b])] . w + bias`, float32. Padding never enters: masked tokens are
not attended to and positions count only unmasked tokens, so a row scores the same however it
is padded (left, right or in between).

On disk the model is a Hugging Face directory: the backbone as `r1.models.hf.save` writes it
(config.json + safetensors, loadable by `r1.models.hf.load` and transformers), plus
`reward_head.safetensors` (`score.weight` float32[1, D], `score.bias` float32[1], the layout of
transformers' `*ForSequenceClassification.score` with a bias) and `reward_head.json` (format,
hidden size and free-form metadata such as the region the model judges).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from r1 import sharding
from r1.models import hf
from r1.models.config import ModelConfig
from r1.models.layers import key_stream, param
from r1.models.safetensors_io import SafetensorsFile, write_file
from r1.models.transformer import ModelOutput, Transformer

HEAD_FILE = "reward_head.safetensors"
HEAD_CONFIG = "reward_head.json"
HEAD_FORMAT = "r1-reward-head"


def last_index(mask: jax.Array) -> jax.Array:
    """int32[B]: the last position where `mask` bool[B, T] is True (0 for an all-False row)."""
    index = jnp.arange(mask.shape[1], dtype=jnp.int32)[None, :]
    return jnp.max(jnp.where(mask.astype(bool), index, 0), axis=1)


def mask_positions(mask: jax.Array) -> jax.Array:
    """int32[B, T]: position ids that count only unmasked tokens (0, 1, ... over the real ones)."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)


class RewardModel(nnx.Module):
    """`rm(tokens, mask)` -> scores float32[B].

    cfg: the backbone's `ModelConfig`. backbone: an existing `Transformer` to wrap (e.g. loaded
    from a policy checkpoint); built from `cfg` and `rngs` when None. The head is float32
    whatever the backbone's dtype.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, backbone: Transformer | None = None):
        keys = key_stream(rngs)
        self.config = cfg
        self.backbone = backbone if backbone is not None else Transformer(cfg, rngs=keys)
        d = cfg.hidden_size
        self.score_weight = param(keys, (d,), ("embed",), "float32", fan_in=d)
        self.score_bias = param(None, (), (), "float32", init="zeros")

    def forward(self, tokens: jax.Array, mask: jax.Array) -> tuple[jax.Array, ModelOutput]:
        """tokens: int32[B, T]; mask: bool[B, T], the tokens the model reads.

        Returns (scores float32[B], the backbone's `ModelOutput` for MoE statistics). Rows with
        no unmasked token score 0.
        """
        if tokens.shape != mask.shape:
            raise ValueError(f"RewardModel: tokens {tokens.shape} and mask {mask.shape} differ")
        mask = mask.astype(bool)
        # The score reads the last hidden state only: no [B, T, V] logits.
        output = self.backbone.forward(
            tokens, positions=mask_positions(mask), attention_mask=mask, compute_logits=False
        )
        last = last_index(mask)
        hidden = jnp.take_along_axis(output.hidden, last[:, None, None], axis=1)[:, 0]
        scores = (
            jnp.einsum("bd,d->b", hidden.astype(jnp.float32), self.score_weight[...])
            + self.score_bias[...]
        )
        return jnp.where(jnp.any(mask, axis=1), scores, 0.0), output

    def __call__(self, tokens: jax.Array, mask: jax.Array) -> jax.Array:
        """tokens: int32[B, T], mask: bool[B, T] -> scores float32[B]."""
        return self.forward(tokens, mask)[0]


# ----------------------------------------------------------------------------- save / load
def save(
    model: RewardModel,
    path: str,
    *,
    dtype: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Writes `model` to the directory `path`: the backbone in Hugging Face layout (`dtype` as
    in `r1.models.hf.save`), `reward_head.safetensors` (float32) and `reward_head.json` holding
    `metadata` (JSON-serialisable)."""
    if not path:
        raise ValueError("save: path is required")
    hf.save(model.backbone, model.config, path, dtype=dtype)
    weight = np.asarray(jax.device_get(model.score_weight[...]), np.float32)
    bias = np.asarray(jax.device_get(model.score_bias[...]), np.float32)
    write_file(
        os.path.join(path, HEAD_FILE),
        [("score.weight", weight[None, :]), ("score.bias", bias.reshape(1))],
    )
    head = {
        "format": HEAD_FORMAT,
        "version": 1,
        "hidden_size": int(model.config.hidden_size),
        "metadata": dict(metadata or {}),
    }
    with open(os.path.join(path, HEAD_CONFIG), "w") as f:
        json.dump(head, f, indent=2)


def read_head_config(path: str) -> dict[str, Any]:
    """The parsed `reward_head.json` of a saved reward model directory."""
    file = os.path.join(path, HEAD_CONFIG)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{path}: no {HEAD_CONFIG}; not a reward model directory")
    with open(file) as f:
        head = json.load(f)
    if not isinstance(head, dict) or head.get("format") != HEAD_FORMAT:
        raise ValueError(f"{file}: expected a JSON object with format={HEAD_FORMAT!r}")
    return head


def load(
    path: str,
    *,
    mesh: Mesh | None = None,
    rules: sharding.Rules | None = None,
    abstract: bool = False,
    **config_overrides: Any,
) -> tuple[ModelConfig, RewardModel]:
    """Loads a directory written by `save` into a sharded `RewardModel`.

    config_overrides: `ModelConfig` fields for the backbone, as in `r1.models.hf.load`.
    abstract: read only the configs and return the model built with `nnx.eval_shape` (no
    weights; ahead-of-time compilation).
    """
    head = read_head_config(path)
    if abstract:
        cfg, backbone = hf.load_abstract(path, **config_overrides)
    else:
        cfg, backbone = hf.load(path, mesh=mesh, rules=rules, **config_overrides)
    if int(head.get("hidden_size", -1)) != cfg.hidden_size:
        raise ValueError(
            f"{path}: {HEAD_CONFIG} has hidden_size {head.get('hidden_size')}, the backbone "
            f"{cfg.hidden_size}"
        )
    if abstract:
        return cfg, nnx.eval_shape(lambda: RewardModel(cfg, rngs=nnx.Rngs(0)))
    tensors = SafetensorsFile(os.path.join(path, HEAD_FILE))
    expected = {"score.weight": (1, cfg.hidden_size), "score.bias": (1,)}
    for name, shape in expected.items():
        if name not in tensors.names():
            raise ValueError(f"{path}/{HEAD_FILE}: tensor {name!r} is missing")
        if tuple(tensors.shape(name)) != shape:
            raise ValueError(
                f"{path}/{HEAD_FILE}: tensor {name!r} has shape {tensors.shape(name)}, "
                f"expected {shape}"
            )
    model = RewardModel(cfg, rngs=nnx.Rngs(0), backbone=backbone)
    mesh = mesh if mesh is not None else sharding.make_mesh()
    weight = np.asarray(tensors.get("score.weight"), np.float32)[0]
    bias = np.asarray(tensors.get("score.bias"), np.float32)[0]
    model.score_weight.set_value(
        jax.device_put(weight, sharding.named_sharding(("embed",), weight.shape, mesh, rules))
    )
    model.score_bias.set_value(jax.device_put(bias, sharding.named_sharding((), (), mesh, rules)))
    return cfg, model
