"""Test rig: 8 fake CPU devices (set before jax is imported), strict rank promotion, and one
persistent compilation cache per test run."""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

_RUN_CACHE = "R1_TESTS_COMPILATION_CACHE"


def _use_a_run_compilation_cache() -> None:
    """Points jax's persistent compilation cache at a fresh private directory for this test run.

    The process that starts the run (pytest, or xdist's controller) makes the directory and
    removes it at exit; the xdist workers and the entry points that tests start as subprocesses
    inherit it through the environment. A program compiled once in the run then loads from it,
    e.g. a resumed trainer's step (jax stores no program with host callbacks). Without a
    writable temporary directory the run goes on without the cache."""
    if _RUN_CACHE in os.environ:  # a worker of a run that has its directory
        return
    try:
        path = tempfile.mkdtemp(prefix="r1-tests-jax-cache-")
    except OSError:
        return
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    os.environ[_RUN_CACHE] = path
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path


_use_a_run_compilation_cache()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session")
def devices():
    found = jax.devices()
    assert len(found) == 8, f"expected 8 fake CPU devices, got {len(found)}"
    return found
