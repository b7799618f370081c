"""A fingerprint of a run's data files, saved in its checkpoints so a resume can tell that the
data changed underneath it (`r1.train.loop`: `DataChanged`, unless the config allows it).

The fingerprint hashes every file's bytes (SHA-256, streamed) with its name in the order the run
reads them; globs are expanded and sorted as the loaders expand them. TFDS datasets
(``tfds:name``) are fingerprinted by their name and version string only.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterable

_CHUNK = 1 << 20


def _entries(specs: Iterable[str | Iterable[str]]) -> list[str]:
    out: list[str] = []
    for spec in specs:
        parts = spec.split(",") if isinstance(spec, str) else [str(p) for p in spec]
        for part in (p.strip() for p in parts):
            if not part:
                continue
            if part.startswith("tfds:") or not glob.has_magic(part):
                out.append(part)
            else:
                out.extend(sorted(glob.glob(part)) or [part])
    return out


def files_fingerprint(*specs: str | Iterable[str]) -> str:
    """The hex SHA-256 of the files named by `specs` (comma-separated strings or sequences of
    paths / globs / ``tfds:`` names), or "" when they name none (procedural data). A path that
    does not exist hashes as missing (the loader reports it)."""
    entries = _entries(specs)
    if not entries:
        return ""
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(f"{os.path.basename(entry)}\0".encode())
        if entry.startswith("tfds:") or not os.path.isfile(entry):
            digest.update(b"\0not-a-file\0")
            continue
        with open(entry, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()
