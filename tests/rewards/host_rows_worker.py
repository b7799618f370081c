"""One process of tests/rewards/test_host_rows.py: score a sharded batch with a text reward
split per device (`CompiledSpec.shard_rows`) and print, as JSON, the row ids this process's
reward calls received and the totals it sees.

    python tests/rewards/host_rows_worker.py OUT.json [COORDINATOR NUM_PROCESSES PROCESS_ID]
"""

import json
import sys

import jax
import numpy as np

from r1 import sharding
from r1.rewards import Reward, RewardSpec, RewardTerm

ROWS = 16
SEEN: list[int] = []


def row_id_reward(prompts, completions, *, row_id, **fields):
    """Scores row r as r / 10 (its id comes as a per-row field) and records the ids seen."""
    ids = [int(r) for r in row_id]
    SEEN.extend(ids)
    return np.asarray(ids, np.float32) / 10.0, ["odd" if i % 2 else "" for i in ids]


class Chars:
    eos_id = None

    def decode(self, ids):
        return "".join(chr(97 + int(i) % 26) for i in ids)


def main(out_path: str, *distributed: str) -> None:
    if distributed:
        address, processes, index = distributed
        sharding.initialize_distributed(address, int(processes), int(index))
    reward = Reward("row_id", "text", row_id_reward, fields=("row_id",), reasons=("odd",))
    scorer = RewardSpec((RewardTerm("row_id", reward=reward),)).compile(Chars())
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=-1))
    axes = ("data", "fsdp")
    scorer = scorer.shard_rows(mesh, axes)
    rows_sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axes))
    tokens_sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axes, None))
    completion = np.arange(ROWS * 4, dtype=np.int32).reshape(ROWS, 4)

    def put(array, target):
        return jax.make_array_from_callback(array.shape, target, lambda index: array[index])

    args = (
        put(completion, tokens_sh),
        put(np.ones((ROWS, 4), bool), tokens_sh),
        put(np.zeros((ROWS,), bool), rows_sh),
        {"row_id": put(np.arange(ROWS, dtype=np.int32), rows_sh)},
    )
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    score = jax.jit(lambda *a: scorer(*a), out_shardings=replicated)
    with sharding.use_mesh(mesh):
        out = jax.device_get(score(*args))
    result = {
        "seen": sorted(SEEN),
        "total": np.asarray(out.total).tolist(),
        "odd": int(out.failures["row_id/odd"]),
        "process": jax.process_index(),
        "devices": jax.device_count(),
    }
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
