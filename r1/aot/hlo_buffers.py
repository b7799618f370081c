"""The largest allocations of a compiled XLA program, read from its buffer-assignment dump
(`--xla_dump_to`), each named by its biggest value and that value's source `op_name`."""

from __future__ import annotations

import dataclasses
import pathlib
import re


@dataclasses.dataclass(frozen=True)
class Buffer:
    """One allocation of the compiled program on one device."""

    bytes: int
    kind: str  # parameter / output / temp / ...
    shape: str
    op: str  # the instruction and, when known, its source op_name


_ALLOC = re.compile(r"^allocation (\d+): size (\d+)(.*)$")
_VALUE = re.compile(r"^ value: <\d+ ([^ ]+) @[^>]*> \(size=(\d+),offset=\d+\): (.*)$")
_OPNAME = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name="([^"]+)"')


def parse_buffer_assignment(text: str, hlo_text: str = "", limit: int = 10) -> list[Buffer]:
    """The largest allocations in an XLA `*buffer-assignment.txt` dump (largest first), each
    named by its biggest value and that value's source `op_name` from the optimized HLO."""
    op_names = {}
    for line in hlo_text.splitlines():
        m = _OPNAME.match(line)
        if m:
            op_names[m.group(1)] = m.group(2)
    buffers = []
    current = None
    for line in text.splitlines():
        m = _ALLOC.match(line)
        if m:
            if current:
                buffers.append(current)
            rest = m.group(3)
            kind = "temp"
            for word in ("parameter", "output", "constant", "thread-local", "preallocated-temp"):
                if word in rest:
                    kind = word
                    break
            current = {"bytes": int(m.group(2)), "kind": kind, "best": (0, "", "")}
            continue
        m = _VALUE.match(line)
        if m and current is not None:
            size = int(m.group(2))
            if size > current["best"][0]:
                shape = m.group(3).split("{")[0]
                current["best"] = (size, shape, m.group(1))
    if current:
        buffers.append(current)
    buffers.sort(key=lambda b: -b["bytes"])
    out = []
    for b in buffers[:limit]:
        _, shape, name = b["best"]
        op = name + (f" ({op_names[name]})" if name in op_names else "")
        out.append(Buffer(bytes=b["bytes"], kind=b["kind"], shape=shape, op=op))
    return out


def read_dump(directory: str, suffix: str) -> str:
    """The text of the largest file under `directory` whose name ends with `suffix` ("" if none)."""
    files = sorted(pathlib.Path(directory).rglob(f"*{suffix}"), key=lambda p: p.stat().st_size)
    return files[-1].read_text() if files else ""
