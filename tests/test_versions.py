"""The jax / flax pairing guard in `r1/__init__.py`."""

import pytest

import r1


@pytest.mark.parametrize(
    ("jax_version", "flax_version", "ok"),
    [
        ((0, 11, 2), (0, 12, 8), False),
        ((0, 12, 0), (0, 11, 2), False),
        ((0, 11, 2), (0, 12, 10), True),
        ((0, 10, 2), (0, 12, 8), True),
        (None, (0, 12, 8), True),
    ],
)
def test_known_bad_jax_flax_pair_is_refused(monkeypatch, jax_version, flax_version, ok):
    versions = {"jax": jax_version, "flax": flax_version}
    monkeypatch.setattr(r1, "_version", versions.get)
    if ok:
        r1.check_versions()
    else:
        with pytest.raises(ImportError, match="flax>=0.12.10"):
            r1.check_versions()


def test_installed_versions_pass():
    r1.check_versions()
    assert r1._version("jax") is not None
