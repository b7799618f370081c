"""Orbax checkpoints of a whole train state plus the data iterator position.

The state pytree is saved as a flat dict of its leaves (any pytree of arrays works, sharded or
not, single- or multi-host); restoring needs an abstract state of the same structure (shapes,
dtypes, shardings), which the trainer builds the same way it built the live one. Orbax writes
into a temporary directory and renames it when complete, so a run killed mid-save leaves the
previous checkpoints intact; a latest checkpoint that still fails to restore (corrupt files) is
skipped with a warning and the one before it is used.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


def _flatten(state: Any) -> dict[str, Any]:
    return {f"{i:06d}": leaf for i, leaf in enumerate(jax.tree.leaves(state))}


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

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
        """(step, state, data_state) of the newest checkpoint that restores, or None."""
        leaves, treedef = jax.tree.flatten(abstract_state)
        target = {f"{i:06d}": leaf for i, leaf in enumerate(leaves)}
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
                continue
            flat = restored["state"]
            state = jax.tree.unflatten(treedef, [flat[k] for k in sorted(flat)])
            return step, state, dict(restored["data"] or {})
        return None

    def close(self) -> None:
        self.manager.close()
