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


class Checkpointer:
    """Saves/restores `(state, data_state)` under `directory/checkpoints/<step>`.

    keep: how many recent checkpoints to keep. data_state: a JSON-serialisable dict (e.g. the
    grain iterator state).
    """

    def __init__(self, directory: str, keep: int = 3):
        self.directory = os.path.abspath(os.path.join(directory, "checkpoints"))
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict | None = None) -> None:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(_flatten(state)),
            data=ocp.args.JsonSave(data_state or {}),
        )
        self.manager.save(step, args=args, force=True)
        self.manager.wait_until_finished()

    def restore_latest(
        self, abstract_state: Any, restart: bool = False
    ) -> tuple[int, Any, dict] | None:
        """(step, state, data_state) of the newest checkpoint that restores, or None when there
        is none at all (or none restores and `restart`). Newer checkpoints that fail are moved
        aside (`move_aside`); when every one fails, raises `NoCheckpointRestores` unless
        `restart` (module docstring)."""
        leaves, treedef = jax.tree.flatten(abstract_state)
        target = {f"{i:06d}": leaf for i, leaf in enumerate(leaves)}
        failed: list[int] = []
        for step in reversed(self.all_steps()):
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
