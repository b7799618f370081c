"""Test rig: 8 fake CPU devices (set before jax is imported), strict rank promotion, and one
persistent compilation cache per test run."""

import os
import shutil
import tempfile
import time
import uuid

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _run_compilation_cache() -> str:
    """A directory for this run's persistent compilation cache, shared by the xdist workers
    (their run id) and the entry points tests start as subprocesses (they inherit the
    environment): a program compiled once in the run loads from it after, e.g. a resumed
    trainer's step. Other runs' directories untouched for a day are removed."""
    root = os.path.join(tempfile.gettempdir(), "r1-tests-jax-cache")
    os.makedirs(root, exist_ok=True)
    for name in os.listdir(root):
        old = os.path.join(root, name)
        try:
            stale = time.time() - os.path.getmtime(old) > 86400
        except OSError:  # removed meanwhile by the other worker
            continue
        if stale:
            shutil.rmtree(old, ignore_errors=True)
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or uuid.uuid4().hex
    return os.path.join(root, run)


os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _run_compilation_cache())

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session")
def devices():
    found = jax.devices()
    assert len(found) == 8, f"expected 8 fake CPU devices, got {len(found)}"
    return found
