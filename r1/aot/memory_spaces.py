"""HBM bytes from the TPU compiler's memory spaces.

XLA's model counts every operand and output of an instruction, whatever memory it lives in; the
TPU compiler's memory-space assignment moves buffers into on-chip memory (`S(1)` in a layout:
VMEM / CMEM; `S(2)`: SMEM), prefetching them with `copy-start` / `copy-done` (v5p) or with
generic async slices (`slice-start`, v5e). Counted as XLA does, a weight prefetched into VMEM
for a matmul is read four times (copy-start's operand and both halves of its result, copy-done's
result) and once more by the matmul, while an async slice costs nothing (the counter stubs
generic async ops out). `on_chip_excess` takes the on-chip accesses out of a computation's own
instructions: a copy-start costs what it reads from and writes to HBM, a copy-done nothing, any
other instruction XLA's count of it less its on-chip operands and results.
`async_transfer_bytes` adds what the async transfers move: an async slice its destination's
size read from HBM, an async move within HBM (an offloaded gather) that size read and written.
"""

from __future__ import annotations

import math
import re

from r1.aot.hlo_text import (
    COMMENT,
    INSTRUCTION,
    MANY_REFS,
    ONE_REF,
    Computation,
    definitions,
    module_text,
    op_and_operands,
    xla_analysis,
)

_SHAPE = re.compile(r"\b([a-z][a-z0-9]*)\[([\d,]*)\](\{[^}]*\})?")
_MEMORY_SPACE = re.compile(r"S\((\d+)\)")
_CONTROL = re.compile(r",\s*control-predecessors=\{[^}]*\}")
_OPERAND_REF = re.compile(r"%([^\s,(){}=]+)(?=[,)\s])")
_ON_CHIP = {1, 2}  # TPU memory spaces: 1 alternate (VMEM / CMEM), 2 SMEM; 0 is HBM


def shape_bytes(shape_text: str) -> tuple[float, float]:
    """(HBM bytes, on-chip bytes) of the arrays an HLO shape text names (a tuple: each
    element), by each array's memory space (`S(n)` in its layout; none: HBM)."""
    hbm = chip = 0.0
    for dtype, dims, layout in _SHAPE.findall(shape_text):
        bits = re.match(r"[a-z]+(\d+)", dtype)  # bf16, f8e4m3fn, s4, ...; pred: one byte
        item = 1 if dtype == "pred" else max(1, int(bits.group(1)) // 8) if bits else 0
        size = item * math.prod(int(d) for d in dims.split(",") if d)
        space = _MEMORY_SPACE.search(layout or "")
        if space and int(space.group(1)) in _ON_CHIP:
            chip += size
        else:
            hbm += size
    return hbm, chip


def arrays(shape_text: str) -> list[tuple[str, int]]:
    """(text, rank) of each array an HLO shape text names (a tuple: each element)."""
    return [
        (m.group(0), len([d for d in m.group(2).split(",") if d]))
        for m in _SHAPE.finditer(shape_text)
    ]


def result_shape(line: str) -> str:
    """The result shape text of an instruction line (`%x = <shape> op(...)`)."""
    body = COMMENT.sub("", line).split(" = ", 1)[-1]
    match = re.match(r"(\(.*?\)|\S+) [a-z][\w-]*\(", body)
    return match.group(1) if match else ""


def _instruction_analysis(
    header: str, comps: dict[str, Computation], defs: dict[str, str], line: str
) -> dict[str, float] | None:
    """XLA's cost analysis of one instruction alone (`defs`: its computation's `definitions`):
    its operands become the parameters of a module whose root it is. None when an operand's
    shape is not known here."""
    _, operands = op_and_operands(line)
    renamed = {operand: f"r1_arg{i}" for i, operand in enumerate(dict.fromkeys(operands))}
    params = []
    for i, (operand, name) in enumerate(renamed.items()):
        shape = result_shape(defs.get(operand, ""))
        if not shape:
            return None
        params.append(f"  %{name} = {shape} parameter({i})")
    body = _CONTROL.sub(
        "", _OPERAND_REF.sub(lambda m: f"%{renamed.get(m.group(1), m.group(1))}", line)
    )
    root = re.sub(r"^\s*(ROOT )?", "  ROOT ", body)
    refs = [ref for _, ref in ONE_REF.findall(line)]
    refs += [r.strip().lstrip("%") for _, g in MANY_REFS.findall(line) for r in g.split(",")]
    probe = Computation("r1_probe", ["ENTRY %r1_probe {", *params, root, "}"], True, refs)
    return xla_analysis(module_text(header, comps, probe.name, entry=probe))


def _on_chip_accessed(analysis: dict[str, float], operands: list[str], defs, line: str) -> float:
    """The bytes XLA's analysis of one instruction gives its on-chip operands and results."""
    total = 0.0
    for i, operand in enumerate(operands):
        if shape_bytes(result_shape(defs[operand]))[1]:
            total += analysis.get(f"bytes accessed{i}{{}}", 0.0)
    result = result_shape(line)
    elements = _tuple_elements(result)
    if not elements:
        return total + (analysis.get("bytes accessedout{}", 0.0) if shape_bytes(result)[1] else 0)
    for j, element in enumerate(elements):
        if shape_bytes(element)[1]:
            total += analysis.get(f"bytes accessedout{{{j}}}", 0.0)
    return total


def _tuple_elements(shape_text: str) -> list[str]:
    """The top-level elements of a tuple shape text `(a, b, ...)` ([] for a non-tuple)."""
    text = shape_text.strip()
    if not text.startswith("("):
        return []
    elements, depth, start = [], 0, 1
    for i, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        if (char == "," and depth == 1) or (depth == 0 and char == ")"):
            elements.append(text[start:i].strip())
            start = i + 1
    return [e for e in elements if e]


def async_transfer_bytes(comp: Computation) -> float:
    """HBM bytes of a computation's generic async transfers, which XLA's model cannot cost (the
    counter stubs them out): the TPU compiler's prefetching slices (`slice-start`) read their
    destination's size from HBM into on-chip memory; offloaded gathers and other moves within
    HBM read and write their destination's size. The result of an `async-start` is
    ((operands), destination, context)."""
    total = 0.0
    for line in comp.lines[1:]:
        if " async-start(" not in line or not INSTRUCTION.match(line):
            continue
        elements = _tuple_elements(result_shape(line))
        if len(elements) < 2:
            continue
        hbm, chip = shape_bytes(elements[1])
        total += chip + 2 * hbm
    return total


def on_chip_excess(header: str, comps: dict[str, Computation], name: str) -> float:
    """Bytes XLA's model counts in computation `name`'s own instructions (not its loops') that
    are not HBM traffic: accesses to buffers in on-chip memory spaces (module docstring)."""
    comp = comps[name]
    defs = definitions(comp)
    on_chip = {d for d, line in defs.items() if "S(" in result_shape(line)}
    excess = 0.0
    for line in comp.lines[1:]:
        op, operands = op_and_operands(line)
        if not INSTRUCTION.match(line) or ("S(" not in line and on_chip.isdisjoint(operands)):
            continue
        if op in ("parameter", "get-tuple-element", "tuple", "bitcast", "while", "conditional"):
            continue
        result_hbm, result_chip = shape_bytes(result_shape(line))
        operand_shapes = [shape_bytes(result_shape(defs.get(o, ""))) for o in operands]
        if not result_chip and not any(chip for _, chip in operand_shapes):
            continue
        analysis = _instruction_analysis(header, comps, defs, line)
        if analysis is None:  # an operand not defined here: left as XLA counts it
            continue
        counted = analysis.get("bytes accessed", 0.0)
        if op == "copy-start":  # (destination, source, context): the transfer's HBM side
            destination = shape_bytes(_SHAPE.search(result_shape(line)).group(0))[0]
            hbm = sum(h for h, _ in operand_shapes) + destination
        elif op == "copy-done":  # the transfer was counted at its start
            hbm = 0.0
        else:  # what XLA counts for the on-chip operands and results, at what it reads of them
            hbm = max(0.0, counted - _on_chip_accessed(analysis, operands, defs, line))
        excess += max(0.0, counted - hbm)
    return excess
