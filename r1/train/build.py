"""What every trainer builds from its config: paths, the tokenizer, the policy.

`resolve_path` is the one rule for relative paths in configs (a path that does not exist as
given, but does under the repository root, is taken from there, so a config runs from any
working directory). `build_tokenizer` and `build_policy` make the tokenizer and the model the
GRPO, SFT and reward-model trainers, rejection sampling, distillation, evaluation and the
pipeline start from: a local Hugging Face checkpoint (`init.hf_path`) or a fresh model from the
config's seed. The optimizer is built by `r1.train.config.make_optimizer`.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Any

import jax
from flax import nnx

from r1 import configlib, sharding
from r1.data.tokenizers import HFTokenizer, build_demo_tokenizer
from r1.models import hf
from r1.models.config import ModelConfig
from r1.models.transformer import Transformer
from r1.train.config import make_optimizer
from r1.train.state import TrainState, init_train_state, train_state_shardings


def resolve_path(path: str) -> str:
    """`path` (user-expanded), or the same relative path under the repository root when only
    that exists. Glob patterns count as existing when they match a file."""
    path = os.path.expanduser(str(path))
    if not path or os.path.isabs(path):
        return path

    def exists(p: str) -> bool:
        return bool(glob.glob(p)) if glob.has_magic(p) else os.path.exists(p)

    candidate = os.path.join(str(configlib.REPO_ROOT), path)
    return candidate if not exists(path) and exists(candidate) else path


def build_tokenizer(kind: str, path: str = "") -> Any:
    """The tokenizer of `config.tokenizer`: kind "demo" (r1's arithmetic tokenizer) or "hf" (a
    local `tokenizer.json`, or a directory holding one, at `path`)."""
    if kind == "demo":
        return build_demo_tokenizer()
    if kind == "hf":
        return HFTokenizer.from_file(resolve_path(path))
    raise ValueError(f"config.tokenizer.kind: expected 'demo' or 'hf', got {kind!r}")


def check_vocab(tokenizer: Any, model_cfg: ModelConfig) -> None:
    """Raises when the tokenizer has ids the model's embedding table does not."""
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise ValueError(
            f"config.model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's "
            f"{tokenizer.vocab_size}"
        )


def build_policy(
    hf_path: str, model_cfg: ModelConfig, mesh: jax.sharding.Mesh, seed: int
) -> Transformer:
    """The policy: loaded from the local HF-layout checkpoint `hf_path` (its architecture from
    the checkpoint; dtypes, remat and MoE balancing settings from `model_cfg`), or, when
    `hf_path` is empty, built fresh from `model_cfg` with `seed`, sharded on `mesh`."""
    if hf_path:
        _, model = hf.load(
            resolve_path(hf_path),
            mesh=mesh,
            dtype=model_cfg.dtype,
            param_dtype=model_cfg.param_dtype,
            remat_policy=model_cfg.remat_policy,
            bias_update_rate=model_cfg.bias_update_rate,
            aux_loss_alpha=model_cfg.aux_loss_alpha,
        )
        return model
    return sharding.create_sharded_model(
        lambda: Transformer(model_cfg, rngs=nnx.Rngs(int(seed))), mesh
    )


@dataclasses.dataclass
class PolicyRun:
    """What a policy trainer starts from: the mesh, tokenizer, optimizer, the policy's graphdef
    and its train state, placed on the mesh with `state_shardings`."""

    mesh: jax.sharding.Mesh
    tokenizer: Any
    optimizer: Any
    graphdef: nnx.GraphDef
    state: TrainState
    state_shardings: TrainState


def start_policy(exp: Any, total_steps: int, with_reference: bool = False) -> PolicyRun:
    """The GRPO and SFT trainers' start from their parsed experiment (`mesh`, `tokenizer`,
    `model`, `init`, `optimizer` and `seed` sections): mesh, tokenizer (checked against the
    model's vocabulary), optimizer over `total_steps`, policy and train state (with a frozen
    reference copy when asked), sharded."""
    mesh = sharding.make_mesh(exp.mesh)
    tokenizer = build_tokenizer(exp.tokenizer.kind, exp.tokenizer.path)
    check_vocab(tokenizer, exp.model)
    optimizer = make_optimizer(exp.optimizer, total_steps)
    with sharding.use_mesh(mesh):
        policy = build_policy(exp.init.hf_path, exp.model, mesh, exp.seed)
    graphdef, state = init_train_state(policy, optimizer, exp.seed, with_reference)
    del policy
    shardings = train_state_shardings(state, optimizer, mesh)
    return PolicyRun(
        mesh, tokenizer, optimizer, graphdef, jax.device_put(state, shardings), shardings
    )
