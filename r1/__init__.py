"""r1: the DeepSeek-R1 training system in JAX/Flax (GRPO, rule rewards, MoE/MLA models)."""

from __future__ import annotations

import importlib.metadata
import re


def _version(package: str) -> tuple[int, ...] | None:
    try:
        text = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def check_versions() -> None:
    """Raises ImportError for a jax / flax pair known not to work together.

    flax 0.12.8 and older declare `jax>=0.10` but fail on jax 0.11 at `import flax.nnx`
    (`jax.experimental.hijax` has no `HiPrimitive`); flax 0.12.10 runs on jax 0.11.2 (seen on
    an H200 image). Checked from package metadata, before flax is imported.
    """
    jax_version, flax_version = _version("jax"), _version("flax")
    if jax_version and flax_version and jax_version >= (0, 11) and flax_version < (0, 12, 10):
        raise ImportError(
            f"r1: flax {'.'.join(map(str, flax_version))} does not run on jax "
            f"{'.'.join(map(str, jax_version))}; install flax>=0.12.10 (or jax<0.11)"
        )


check_versions()
