"""Row-level errors of the data sources: why a raw record is skipped, and text-field access."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class RowError(ValueError):
    """Why one row was skipped; `reason` is a short category used for counting."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def text_field(raw: Mapping[str, Any], key: str) -> str:
    """`raw[key]` as text (bytes decoded as UTF-8, numbers written out); a `RowError` naming the
    field when it is missing, empty, or not text (a bool, a list, ...)."""
    value = raw.get(key)
    if value is None:
        raise RowError(f"missing field '{key}'")
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise RowError(f"field '{key}' is not text", type(value).__name__)
    value = str(value)
    if not value.strip():
        raise RowError(f"empty field '{key}'")
    return value
