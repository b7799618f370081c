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
import logging
import os
from typing import Any

import jax
from flax import nnx

from r1 import configlib, sharding
from r1.data.tokenizers import HFTokenizer, build_demo_tokenizer
from r1.models import hf
from r1.models.config import EXECUTION_FIELDS, ModelConfig
from r1.models.transformer import Transformer
from r1.train.config import make_optimizer
from r1.train.state import TrainState, init_train_state, train_state_shardings

log = logging.getLogger(__name__)


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


def check_vocab(tokenizer: Any, model_cfg: ModelConfig, where: str = "config.model") -> None:
    """Raises when the tokenizer has ids the model's embedding table does not (`where` names
    the model: the config section or the checkpoint)."""
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise ValueError(
            f"{where}: vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's "
            f"{tokenizer.vocab_size} ids"
        )


def architecture_differences(preset: ModelConfig, checkpoint: ModelConfig) -> list[str]:
    """The architecture fields (not `EXECUTION_FIELDS`) where `preset` and `checkpoint` differ."""
    a, b = preset.to_dict(), checkpoint.to_dict()
    return sorted(k for k in b if k not in EXECUTION_FIELDS and a.get(k) != b[k])


def policy_config(hf_path: str, model_cfg: ModelConfig) -> ModelConfig:
    """The `ModelConfig` `build_policy` gives the policy, from config.json alone: the
    checkpoint's architecture with `model_cfg`'s `EXECUTION_FIELDS`, or `model_cfg` itself
    when `hf_path` is empty."""
    if not hf_path:
        return model_cfg
    execution = {k: getattr(model_cfg, k) for k in EXECUTION_FIELDS}
    return hf.read_config(resolve_path(hf_path), **execution)


def build_policy(
    hf_path: str,
    model_cfg: ModelConfig,
    mesh: jax.sharding.Mesh,
    seed: int,
    tokenizer: Any = None,
) -> Transformer:
    """The policy: loaded from the local HF-layout checkpoint `hf_path` (its architecture from
    the checkpoint's config.json; `EXECUTION_FIELDS` (dtypes, remat, chunking, scan, MoE
    balancing) from `model_cfg`), or, when `hf_path` is empty, built fresh from `model_cfg`
    with `seed`, sharded on `mesh`. A preset whose architecture differs from the checkpoint's is
    not used: the differences are logged. With `tokenizer`, a tokenizer with more ids than the
    policy's embedding fails first, naming both numbers (before any weight is read)."""
    if tokenizer is not None:
        where = f"the checkpoint {hf_path}" if hf_path else "config.model"
        check_vocab(tokenizer, policy_config(hf_path, model_cfg), where)
    if hf_path:
        execution = {k: getattr(model_cfg, k) for k in EXECUTION_FIELDS}
        cfg, model = hf.load(resolve_path(hf_path), mesh=mesh, **execution)
        differ = architecture_differences(model_cfg, cfg)
        if differ:
            log.warning(
                "config.model differs from the checkpoint %s in %s; using the checkpoint's "
                "architecture",
                hf_path,
                differ,
            )
        return model
    return sharding.create_sharded_model(
        lambda: Transformer(model_cfg, rngs=nnx.Rngs(int(seed))), mesh
    )


@dataclasses.dataclass
class PolicyRun:
    """What a policy trainer starts from: the mesh, tokenizer, optimizer, the policy's graphdef
    and its train state, placed on the mesh with `state_shardings`, and the policy's
    `ModelConfig` (the checkpoint's architecture when one was loaded: use it, not the config's
    preset, for everything after the start, e.g. the export)."""

    mesh: jax.sharding.Mesh
    tokenizer: Any
    optimizer: Any
    graphdef: nnx.GraphDef
    state: TrainState
    state_shardings: TrainState
    model: ModelConfig


def start_policy(exp: Any, total_steps: int, with_reference: bool = False) -> PolicyRun:
    """The GRPO and SFT trainers' start from their parsed experiment (`mesh`, `tokenizer`,
    `model`, `init`, `optimizer` and `seed` sections): mesh, tokenizer (checked against the
    model's vocabulary), optimizer over `total_steps`, policy and train state (with a frozen
    reference copy when asked), sharded."""
    mesh = sharding.make_mesh(exp.mesh)
    tokenizer = build_tokenizer(exp.tokenizer.kind, exp.tokenizer.path)
    optimizer = make_optimizer(exp.optimizer, total_steps)
    with sharding.use_mesh(mesh):
        policy = build_policy(exp.init.hf_path, exp.model, mesh, exp.seed, tokenizer)
    model_cfg = policy.config
    graphdef, state = init_train_state(policy, optimizer, exp.seed, with_reference)
    del policy
    shardings = train_state_shardings(state, optimizer, mesh)
    return PolicyRun(
        mesh,
        tokenizer,
        optimizer,
        graphdef,
        jax.device_put(state, shardings),
        shardings,
        model_cfg,
    )
