r"""Evaluation entry point: writes `workdir/eval.json` and `workdir/eval.md`.

    python -m experiments.evaluate --config=configs/evaluate.py:tiny --workdir=runs/eval_tiny
    python -m experiments.evaluate --config=configs/evaluate.py:math500 \
        --config.init.hf_path=/ckpt/model --config.data.files=/data/math500.jsonl \
        --workdir=runs/eval_math500

The checkpoint is `config.init.workdir` (a GRPO run directory: its orbax checkpoint, step
`config.init.step` or the latest) or else `config.init.hf_path` (a local Hugging Face directory,
loaded as the GRPO trainer loads its base model); with neither the model is randomly initialised
(a smoke test, logged as a warning). See configs/evaluate.py and docs/evaluation.md.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from experiments import cli, cpu_devices
from r1 import configlib, sharding
from r1.data import procedural, sources
from r1.evaluation import runner
from r1.models.transformer import Transformer
from r1.train import build

log = logging.getLogger(__name__)

SECTIONS = ("init", "tokenizer", "data", "eval")


# ----------------------------------------------------------------------------- builders
def load_rows(config: Any) -> list[dict[str, Any]]:
    """The evaluation rows: local files (`config.data.files`) or the procedural held-out set."""
    data = config.data
    if data.files:
        spec = str(data.files)
        paths: Any = [p.strip() for p in spec.split(",") if p.strip()] if "," in spec else spec
        rows, reports = sources.load_files(paths, str(data.layout))
        for report in reports:
            log.warning("%s", report.summary())
    else:
        task = procedural.make_task(config.data.task, **dict(config.data.task_kwargs))
        rows = procedural.fixed_set(
            task, int(data.seed), int(data.per_difficulty), split=str(data.split)
        )
    limit = int(data.limit)
    if limit < 0:
        raise ValueError(f"config.data.limit: expected >= 0 (0: all rows), got {limit}")
    return rows[:limit] if limit else rows


def build_tokenizer(config: Any) -> Any:
    """`r1.train.build.build_tokenizer`, except that an "hf" tokenizer with no path uses
    init.hf_path."""
    if config.tokenizer.kind == "hf" and not config.tokenizer.path:
        if not config.init.hf_path:
            raise ValueError("config.tokenizer.path: empty, and config.init.hf_path is empty too")
        return build.build_tokenizer("hf", str(config.init.hf_path))
    return build.build_tokenizer(str(config.tokenizer.kind), str(config.tokenizer.path))


def run_model_config(workdir: str, fallback: Any) -> Any:
    """The `ModelConfig` a GRPO run used (its `config.json`), else `fallback`'s model section."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return configlib.model_config(fallback)
    with open(path) as f:
        saved = json.load(f)
    if "model" not in saved:
        raise ValueError(f"{path}: no 'model' section")
    return configlib.model_config({"model": saved["model"]}, where=path)


def restore_policy(workdir: str, step: int, model_cfg: Any, mesh: jax.sharding.Mesh) -> Transformer:
    """The policy of a GRPO run's orbax checkpoint (`step`, or the latest when 0).

    Only the parameters and the other model variables are read (a partial restore: no optimizer
    state, no reference model). The trainer saves its `TrainState` as its flattened leaves in
    field order, `step` first, then `params`, then `extra` (r1/checkpoint.py,
    r1/rl/step.TrainState); shapes are checked against `model_cfg`.
    """
    directory = os.path.abspath(os.path.join(build.resolve_path(workdir), "checkpoints"))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"config.init.workdir: no checkpoints directory in {workdir!r}")
    steps = sorted(int(s) for s in os.listdir(directory) if s.isdigit())
    if not steps:
        raise FileNotFoundError(f"config.init.workdir: no checkpoint in {directory}")
    step = step or steps[-1]
    if step not in steps:
        raise FileNotFoundError(f"config.init.step: no checkpoint {step} in {directory} ({steps})")
    abstract = nnx.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0)))
    graphdef, params, extra = nnx.split(abstract, nnx.Param, ...)
    leaves, treedef = jax.tree.flatten((params, extra))
    shardings = jax.tree.leaves(
        (sharding.state_shardings(params, mesh), sharding.state_shardings(extra, mesh))
    )
    target = {
        f"{1 + i:06d}": jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sh)
        for i, (leaf, sh) in enumerate(zip(leaves, shardings, strict=True))
    }
    path = os.path.join(directory, str(step), "state")
    checkpointer = ocp.PyTreeCheckpointer()
    stored = checkpointer.metadata(path).item_metadata.tree
    for key, want in target.items():
        have = stored.get(key)
        if have is None or tuple(have.shape) != tuple(want.shape):
            raise ValueError(
                f"{path}: leaf {key} is {None if have is None else tuple(have.shape)}, the model "
                f"of config.model expects {tuple(want.shape)}; was the run made with this model?"
            )
    restored = checkpointer.restore(
        path,
        args=ocp.args.PyTreeRestore(
            target,
            restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True,
        ),
    )
    params, extra = jax.tree.unflatten(treedef, [restored[k] for k in sorted(target)])
    log.warning("restored step %d of %s", step, directory)
    return nnx.merge(graphdef, params, extra)


def load_model(config: Any, model_cfg: Any, mesh: jax.sharding.Mesh) -> Transformer:
    """The model to evaluate (module docstring for the order of precedence)."""
    if config.init.workdir:
        cfg = run_model_config(build.resolve_path(config.init.workdir), config)
        return restore_policy(config.init.workdir, int(config.init.step), cfg, mesh)
    if not config.init.hf_path:
        log.warning("config.init.hf_path and config.init.workdir are empty: random init")
    return build.build_policy(str(config.init.hf_path), model_cfg, mesh, int(config.seed))


# ----------------------------------------------------------------------------- run
def evaluate_config(config: Any, workdir: str) -> dict[str, Any]:
    """Builds everything from `config`, evaluates, writes eval.json / eval.md; returns the
    result dict of `r1.evaluation.evaluate` (plus `checkpoint` and `data`)."""
    experiment = configlib.parse_experiment(
        config, extra_sections=SECTIONS, num_devices=jax.device_count()
    )
    eval_cfg = runner.EvalConfig.from_config(config.eval)
    os.makedirs(workdir, exist_ok=True)
    mesh = sharding.make_mesh(experiment.mesh)
    tokenizer = build_tokenizer(config)
    rows = load_rows(config)
    with sharding.use_mesh(mesh):
        model = load_model(config, experiment.model, mesh)
    where = (
        f"the run {config.init.workdir}"
        if config.init.workdir
        else f"the checkpoint {config.init.hf_path}"
        if config.init.hf_path
        else "config.model"
    )
    build.check_vocab(tokenizer, model.config, where)
    result = runner.evaluate(model, tokenizer, rows, eval_cfg, mesh=mesh, progress=True)
    result["checkpoint"] = (
        {"workdir": str(config.init.workdir), "step": int(config.init.step)}
        if config.init.workdir
        else {"hf_path": str(config.init.hf_path)}
    )
    result["data"] = str(config.data.files) or f"procedural:{config.data.task}"
    if jax.process_index() == 0:
        runner.write_json(result, os.path.join(workdir, "eval.json"))
        runner.write_markdown(result, os.path.join(workdir, "eval.md"))
        with open(os.path.join(workdir, "eval_config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    return result


_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<file>.py:<variant>")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (eval.json, eval.md).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize().")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None or not _WORKDIR.value:
        raise app.UsageError("--config=configs/evaluate.py:<variant> and --workdir are required")
    logging.getLogger("absl").setLevel(logging.WARNING)
    cpu_devices.apply()
    if _DISTRIBUTED.value:
        sharding.initialize_distributed()
    cpu_devices.describe()
    result = evaluate_config(_CONFIG.value, _WORKDIR.value)
    print(runner.to_markdown(result))
    seconds = result["timing"]["seconds"]
    print(f"{np.round(seconds, 1)} s; wrote {os.path.join(_WORKDIR.value, 'eval.json')}")


if __name__ == "__main__":
    cli.run(main)
