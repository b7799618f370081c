"""Orbax checkpoints of a whole train state plus the data iterator position.

The state pytree is saved as a flat dict of its leaves (any pytree of arrays works, sharded or
not, single- or multi-host); restoring needs an abstract state of the same structure (shapes,
dtypes, shardings), which the trainer builds the same way it built the live one. Orbax writes
into a temporary directory and renames it when complete, so a run killed mid-save leaves the
previous checkpoints intact. A checkpoint that still fails to restore (corrupt files) is moved
aside to ``checkpoints/<step>.corrupt-<UTC time>`` (logged) when an older one restores, which is
then used: the run recomputes and saves that step again. When none restores, nothing is moved
and `NoCheckpointRestores` is raised, unless the caller asked to start fresh (`restart`), in
which case the unreadable checkpoints are moved aside first. Nothing is ever deleted.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


def _flatten(state: Any) -> dict[str, Any]:
    return {f"{i:06d}": leaf for i, leaf in enumerate(jax.tree.leaves(state))}


class NoCheckpointRestores(RuntimeError):
    """Checkpoints exist but none restores (see the module docstring)."""


class CheckpointMismatch(ValueError):
    """A checkpoint's arrays have other shapes than the state it is restored into: it was
    made by another configuration (it is not corrupt, so it is neither skipped nor moved)."""


class CheckpointSaveFailed(RuntimeError):
    """Writing a checkpoint failed (e.g. the disk is full); the earlier ones are intact."""


class Checkpointer:
    """Saves/restores `(state, data_state)` under `directory/checkpoints/<step>`.

    keep: how many recent checkpoints to keep. data_state: a JSON-serialisable dict (e.g. the
    grain iterator state).
    """

    def __init__(self, directory: str, keep: int = 3):
        self.directory = os.path.abspath(os.path.join(directory, "checkpoints"))
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict | None = None) -> None:
        """Writes checkpoint `step` and waits for it; `CheckpointSaveFailed` when the write
        fails (orbax's partial temporary directory is never taken for a checkpoint)."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(_flatten(state)),
            data=ocp.args.JsonSave(data_state or {}),
        )
        try:
            self.manager.save(step, args=args, force=True)
            self.manager.wait_until_finished()
        except Exception as err:  # noqa: BLE001 - any write failure gets the same clear stop
            kept = [s for s in self.all_steps() if s != step]
            raise CheckpointSaveFailed(
                f"saving checkpoint {step} to {self.directory} failed ({type(err).__name__}: "
                f"{err}); is the disk full? The earlier checkpoints {kept} are intact: free "
                "space and run the same command again to resume from the last of them"
            ) from err

    def check_shapes(self, step: int, abstract_state: Any) -> None:
        """Raises `CheckpointMismatch` naming the first differing array (its path in the state
        and both shapes) when checkpoint `step`'s saved shapes differ from `abstract_state`'s;
        returns quietly when they agree or the metadata does not read (then restoring decides
        whether the checkpoint is corrupt)."""
        try:
            saved = self.manager.item_metadata(step)["state"]
            saved_shapes = [tuple(saved[k].shape) for k in sorted(saved)]
        except Exception:  # noqa: BLE001 - unreadable metadata: a corrupt checkpoint, not ours
            return
        paths_leaves = jax.tree_util.tree_flatten_with_path(abstract_state)[0]
        wanted = [(jax.tree_util.keystr(p), tuple(leaf.shape)) for p, leaf in paths_leaves]
        differ = [
            (name, shape, got) for (name, shape), got in zip(wanted, saved_shapes) if shape != got
        ]
        if not differ and len(wanted) == len(saved_shapes):
            return
        detail = (
            f"{differ[0][0]} has shape {differ[0][1]} in this run's state but {differ[0][2]} "
            f"in the checkpoint ({len(differ)} of {len(wanted)} arrays differ)"
            if differ
            else f"the checkpoint holds {len(saved_shapes)} arrays, this run's state {len(wanted)}"
        )
        raise CheckpointMismatch(
            f"checkpoint {step} in {self.directory} was made by another configuration: "
            f"{detail}. Nothing was moved; use another --workdir, or the config that made it "
            "(its config.json)"
        )

    def restore_latest(
        self, abstract_state: Any, restart: bool = False
    ) -> tuple[int, Any, dict] | None:
        """(step, state, data_state) of the newest checkpoint that restores, or None when there
        is none at all (or none restores and `restart`). Newer checkpoints that fail are moved
        aside (`move_aside`); when every one fails, raises `NoCheckpointRestores` unless
        `restart` (module docstring). A checkpoint of other shapes raises `CheckpointMismatch`
        (`check_shapes`)."""
        leaves, treedef = jax.tree.flatten(abstract_state)
        target = {f"{i:06d}": leaf for i, leaf in enumerate(leaves)}
        failed: list[int] = []
        for step in reversed(self.all_steps()):
            self.check_shapes(step, abstract_state)
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()
                    ),
                )
            except Exception as err:  # noqa: BLE001 - any failure means "try the previous one"
                log.warning(
                    "checkpoint %d in %s does not restore (%s); trying an older one",
                    step,
                    self.directory,
                    err,
                )
                failed.append(step)
                continue
            self.move_aside(failed)
            flat = restored["state"]
            state = jax.tree.unflatten(treedef, [flat[k] for k in sorted(flat)])
            return step, state, dict(restored["data"] or {})
        if failed and not restart:
            raise NoCheckpointRestores(
                f"no checkpoint in {self.directory} restores (steps {sorted(failed)}); nothing was "
                "moved or deleted. Fix or remove them, or rerun with --restart to move them aside "
                "and start from the beginning"
            )
        self.move_aside(failed)
        return None

    def move_aside(self, steps: list[int]) -> list[str]:
        """Renames each of `steps`' checkpoint directories to `<step>.corrupt-<UTC time>` (the
        main process; every process then sees the new step list) and returns the new paths."""
        if not steps:
            return []
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        moved = []
        for step in steps:
            source = os.path.join(self.directory, str(step))
            target = f"{source}.corrupt-{stamp}"
            if jax.process_index() == 0 and os.path.exists(source):
                os.rename(source, target)
            log.warning("checkpoint %d does not restore: moved aside to %s", step, target)
            moved.append(target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("r1 checkpoints moved aside")
        self.manager.reload()
        return moved

    def close(self) -> None:
        self.manager.close()
