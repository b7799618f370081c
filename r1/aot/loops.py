"""The compiler's cost model with every loop counted as many times as it runs.

XLA's cost analysis (`Compiled.cost_analysis()`) adds each `while` body once, whatever its trip
count, and a `conditional` as its most expensive branch. A step that runs its layers under
`lax.scan`, its mini-batches and micro-batches under `lax.scan` and its decode under
`lax.while_loop` is therefore undercounted by the product of those trip counts.

`count_loops` reads the optimized HLO text of the compiled program (`Compiled.as_text()`):

* Each computation reachable through control flow (the entry, while bodies and conditions,
  conditional branches, called computations) is re-parsed alone, as the entry of a module that
  holds it and what it calls, and XLA's own cost analysis gives its *inclusive* cost (its inner
  loops counted once, as XLA counts them).
* Its *own* cost is the inclusive cost minus what XLA attributed to the control flow inside it:
  each while's body + condition once, each conditional's most expensive branch, each call.
* The counted cost is then own + sum over whiles of trips x (body + condition) + the most
  expensive branch of each conditional (or each branch by the share of runs its scope
  states, `r1.loop_scopes.branch_scope`) + each call, recursively. The trip counts are those the
  compiler proved (`known_trip_count` in the while's backend config, which the CPU compiler
  keeps for every `lax.scan` and `fori_loop`), or, where the backend config does not carry it
  (the TPU compiler's), read from the loop itself: the condition compares a counter in the
  loop state with a bound (`i < N`), the counter's initial value comes in the while's operand
  tuple and its increment in the body's result tuple; each resolved to a constant (through
  copies, and through the loop state where XLA sank a constant into it). So the count is
  exact to XLA's cost model.
* A while with a data-dependent trip count has no known count: the sampler's decode loop
  (which stops when every row has ended) and the causal tiles of blockwise attention (key
  tiles 0..i). Such loops run under a named scope that states their runs (`r1.loop_scopes`):
  the decode its most steps (every row at full length: the worst case), the causal tiles their
  mean. Any other loop without a known count is counted once and listed in
  `LoopCount.uncounted`.

Bytes are HBM bytes: accesses to buffers the TPU compiler keeps on chip are taken out and
the async slices that prefetch them counted in (`r1.aot.memory_spaces`).

Costs are per device (the compiled program is one device's SPMD partition). The cost model is
XLA's CPU `HloCostAnalysis` run on the re-parsed text (dots and convolutions 2 flops per
multiply-add, elementwise ops 1 flop per element; bytes = operands + outputs of every
non-fused instruction, fusions counted at their boundary). It gives custom calls no cost at
all: a Pallas kernel that states its own `cost_estimate` (megablox grouped matmuls, r1's decode
attention) has its flops and bytes added where the call sits, and the splash-attention
kernels, which state none in this jax, are counted from their shapes (`splash_flops`; bytes:
their HBM operands and results once, a lower bound).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any

from r1.aot.hlo_text import (
    INSTRUCTION,
    MANY_REFS,
    ONE_REF,
    Computation,
    Cost,
    definitions,
    module_text,
    op_and_operands,
    parse_computations,
    xla_cost,
)
from r1.aot.memory_spaces import (
    arrays,
    async_transfer_bytes,
    on_chip_excess,
    result_shape,
    shape_bytes,
)
from r1.loop_scopes import (
    DECODE,
    names_a_conditional,
    stated_branch_runs,
    stated_row_share,
    stated_runs,
)

_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_OP_NAME = re.compile(r'op_name="([^"]*)"')


@dataclasses.dataclass(frozen=True)
class Loop:
    """One `while` of the compiled program.

    trips: the compiler's known trip count, or None (data-dependent). runs: how many times the
    body runs per program run (its own count times those of the loops around it; a decode loop
    its worst case). once: one pass of body + condition, inner loops counted.
    """

    name: str
    computation: str
    body: str
    condition: str
    trips: int | None
    op_name: str
    runs: float
    once: Cost

    @property
    def is_decode(self) -> bool:
        stated = stated_runs(self.op_name)
        return self.trips is None and stated is not None and stated[0] == DECODE

    @property
    def total(self) -> Cost:
        return self.once.times(self.runs)


@dataclasses.dataclass(frozen=True)
class LoopCount:
    """A program's cost with loops counted. total: per device, per program run. as_compiled:
    XLA's own count (every loop body once). loops: every while, outermost first. uncounted: op
    names of data-dependent loops other than the decode loops (counted once)."""

    total: Cost
    as_compiled: Cost
    loops: tuple[Loop, ...]
    uncounted: tuple[str, ...]

    @property
    def decode_total(self) -> Cost:
        """All decode steps (every decode loop, each at its worst case)."""
        return sum((loop.total for loop in self.loops if loop.is_decode), Cost())

    @property
    def decode_steps(self) -> int:
        return int(sum(loop.runs for loop in self.loops if loop.is_decode))

    @property
    def decode_step(self) -> Cost:
        """One decode step, averaged over the decode loops' steps (zero without decode)."""
        steps = self.decode_steps
        return self.decode_total.times(1.0 / steps) if steps else Cost()


_KERNEL_FLOPS = re.compile(r'"cost_estimate":\{[^}]*?"flops":"(\d+)"')
_KERNEL_BYTES = re.compile(r'"cost_estimate":\{[^}]*?"bytes_accessed":"(\d+)"')
_INDEX = re.compile(r"index=(\d+)")
_CONSTANT = re.compile(r"\bconstant\((-?\d+)\)")
_DIRECTION = re.compile(r"direction=([A-Z]+)")
_PASS_THROUGH = ("copy", "bitcast", "convert", "copy-done", "copy-start")


def _unwrapped(line: str, comps: dict[str, Computation]) -> tuple[str, list[str], str]:
    """(opcode, operands, line) of an instruction, looking through a fusion that wraps one
    operation of its parameters (the CPU compiler wraps a loop's compare and add so)."""
    op, operands = op_and_operands(line)
    called = re.search(r"\bcalls=%?([^\s,{}()]+)", line)
    if op != "fusion" or not called or called.group(1) not in comps:
        return op, operands, line
    inner = comps[called.group(1)]
    defs = definitions(inner)
    root = next((ln for ln in inner.lines if ln.lstrip().startswith("ROOT ")), "")
    root_op, root_operands = op_and_operands(root)
    mapped = []
    for name in root_operands:
        number = re.search(r"\bparameter\((\d+)\)", defs.get(name, ""))
        if not number or int(number.group(1)) >= len(operands):
            return op, operands, line
        mapped.append(operands[int(number.group(1))])
    return root_op, mapped, root


def _resolve(name: str, defs: dict[str, str], init: list[int | None] | None) -> int | None:
    """The integer constant `name` holds: through copies, and through a loop parameter's tuple
    element (`init`: the values the loop state starts with) when the constant was sunk into it."""
    for _ in range(16):
        line = defs.get(name)
        if line is None:
            return None
        op, operands = op_and_operands(line)
        if op == "constant":
            value = _CONSTANT.search(line)
            return int(value.group(1)) if value else None
        if op in _PASS_THROUGH and operands:
            name = operands[0]
            continue
        if op == "get-tuple-element" and init is not None and operands:
            index = _INDEX.search(line)
            source = defs.get(operands[0], "")
            if index and " parameter(" in source and int(index.group(1)) < len(init):
                return init[int(index.group(1))]
        return None
    return None


def _counter_index(name: str, defs: dict[str, str]) -> int | None:
    """The loop-state element `name` reads (through copies), if it reads the parameter."""
    for _ in range(16):
        line = defs.get(name)
        if line is None:
            return None
        op, operands = op_and_operands(line)
        if op in _PASS_THROUGH and operands:
            name = operands[0]
            continue
        if op == "get-tuple-element" and operands and " parameter(" in defs.get(operands[0], ""):
            index = _INDEX.search(line)
            return int(index.group(1)) if index else None
        return None
    return None


def trips_from_loop(
    comps: dict[str, Computation], parent: str, while_line: str, body: str, condition: str
) -> int | None:
    """A while's trip count read from its condition (`counter < bound`), the counter's initial
    value (the operand tuple) and its increment (the body's result tuple); None when any of
    them is not a constant."""
    parent_defs = definitions(comps[parent])
    _, (init_name, *_) = op_and_operands(while_line) or ("", [""])
    init_op, init_items = op_and_operands(parent_defs.get(init_name, ""))
    if init_op != "tuple":
        return None
    init = [_resolve(item, parent_defs, None) for item in init_items]
    cond_defs = definitions(comps[condition])
    root = next((ln for ln in comps[condition].lines if ln.lstrip().startswith("ROOT ")), "")
    op, operands, root = _unwrapped(root, comps)
    direction = _DIRECTION.search(root)
    if op != "compare" or len(operands) != 2 or not direction:
        return None
    lhs, rhs = (_counter_index(o, cond_defs) for o in operands)
    flip = {"LT": "GT", "LE": "GE", "GT": "LT", "GE": "LE"}
    how = direction.group(1)
    if lhs is not None:
        counter, bound = lhs, _resolve(operands[1], cond_defs, init)
    elif rhs is not None:
        counter, bound, how = rhs, _resolve(operands[0], cond_defs, init), flip.get(how, how)
    else:
        return None
    start = init[counter] if counter < len(init) else None
    body_defs = definitions(comps[body])
    body_root = next((ln for ln in comps[body].lines if ln.lstrip().startswith("ROOT ")), "")
    root_op, outputs = op_and_operands(body_root)
    step = None
    if root_op == "tuple" and counter < len(outputs):
        add_op, terms, _ = _unwrapped(body_defs.get(outputs[counter], ""), comps)
        if add_op == "add" and len(terms) == 2:
            for own, other in (terms, terms[::-1]):
                if _counter_index(own, body_defs) == counter:
                    step = _resolve(other, body_defs, init)
    if bound is None or start is None or not step or how not in ("LT", "LE"):
        return None
    span = bound - start + (1 if how == "LE" else 0)
    return max(0, -(-span // step))


# Products (2 flops per multiply-add) per causal (query tile, key tile) pair of the splash
# attention kernels, which state no cost estimate in this jax: forward QK^T and PV; the fused
# backward recomputes QK^T and forms dP = dO V^T, dV, dK and dQ; a separate dq kernel QK^T, dP, dQ.
SPLASH_PRODUCTS = (("splash_mha_fwd", 2), ("splash_mha_dkv", 5), ("splash_mha_dq", 3))
_ARRAY = re.compile(r"\b(?:bf16|f16|f32)\[(\d+(?:,\d+)+)\]")
_BLOCK_Q = re.compile(r'block_q\\?"?: (\d+)')


def splash_flops(line: str) -> float:
    """Flops of a splash-attention kernel call (causal self-attention, r1's only use of it),
    from its result shapes ([..., H, T, D]: heads, sequence, head dim, the largest such array)
    and query tile (block_q): products x 2 x H x T^2 x D over the causal tiles, (n + 1) / 2n
    of them for n = T / block_q."""
    name = INSTRUCTION.match(line)
    products = next(
        (n for prefix, n in SPLASH_PRODUCTS if name and name.group(1).startswith(prefix)), 0
    )
    head = line.split(" custom-call(", 1)[0]
    shapes = [tuple(int(d) for d in dims.split(",")) for dims in _ARRAY.findall(head)]
    shapes = [shape for shape in shapes if len(shape) >= 3]
    if not products or not shapes:
        return 0.0
    heads, length, dim = max(shapes, key=math.prod)[-3:]
    block = _BLOCK_Q.search(line)
    tiles = max(1, length // int(block.group(1))) if block else 1
    causal = (tiles + 1) / (2 * tiles)
    return 2.0 * products * heads * length * length * dim * causal


def kernel_cost(comp: Computation) -> Cost:
    """The cost of the Pallas kernels (TPU custom calls) of a computation, which XLA's cost
    model leaves out: a kernel's own `cost_estimate` (flops, bytes accessed), or for the
    splash-attention kernels, which state none, `splash_flops` and their HBM operands and
    results read and written once (a lower bound: a flash kernel rereads key / value tiles);
    operands and results the compiler placed on chip are no HBM traffic.
    A kernel under a `grouped_rows_scope` (the expert-parallel grouped matmuls) counts the
    stated share of its flops and of its 2-D row arrays' bytes, its 3-D expert weights whole."""
    flops = bytes_accessed = 0.0
    defs = definitions(comp)
    for line in comp.lines[1:]:
        if " custom-call(" not in line or "tpu_custom_call" not in line:
            continue
        found = _KERNEL_FLOPS.search(line)
        stated = _KERNEL_BYTES.search(line)
        op = _OP_NAME.search(line)
        share = stated_row_share(op.group(1)) if op else None
        _, operands = op_and_operands(line)
        shapes = [result_shape(line)] + [result_shape(defs.get(o, "")) for o in operands]
        flops += (float(found.group(1)) if found else splash_flops(line)) * (share or 1.0)
        if share is not None:  # grouped rows: row arrays by the share, weights whole
            for shape in shapes:
                for array, rank in arrays(shape):  # 2-D: [rows, features]
                    size = shape_bytes(array)[0]
                    bytes_accessed += size * share if rank == 2 else size
        elif stated:  # less what the kernel finds on chip (operands or result in VMEM)
            on_chip = sum(shape_bytes(shape)[1] for shape in shapes)
            bytes_accessed += max(0.0, float(stated.group(1)) - on_chip)
        else:
            bytes_accessed += sum(shape_bytes(shape)[0] for shape in shapes)
    return Cost(flops, bytes_accessed)


def _control_flow(
    comps: dict[str, Computation], name: str
) -> list[tuple[str, list[str], int | None, str, str]]:
    """(kind, callees, trips, instruction name, op name) of each while / conditional / call in
    computation `name`."""
    found = []
    for line in comps[name].lines[1:]:
        kind = next((k for k in ("while", "conditional", "call") if f" {k}(" in line), None)
        if kind is None:
            continue
        instruction = INSTRUCTION.match(line)
        op = _OP_NAME.search(line)
        trips = _TRIPS.search(line)
        refs = dict((k, v) for k, v in ONE_REF.findall(line))
        trip_count = int(trips.group(1)) if trips else None
        if kind == "while":
            callees = [refs["body"], refs["condition"]]
            if trip_count is None and not stated_runs(op.group(1) if op else ""):
                trip_count = trips_from_loop(comps, name, line, *callees)
        elif kind == "call":
            callees = [refs["to_apply"]]
        else:
            many = dict(MANY_REFS.findall(line))
            if "branch_computations" in many:
                callees = [r.strip().lstrip("%") for r in many["branch_computations"].split(",")]
            else:
                # In branch-index order: a predicate's false branch is branch 0.
                callees = [refs["false_computation"], refs["true_computation"]]
        found.append(
            (
                kind,
                callees,
                trip_count,
                instruction.group(1) if instruction else "?",
                op.group(1) if op else "",
            )
        )
    return found


def _branch_runs(
    comps: dict[str, Computation], op_name: str, branches: list[str]
) -> tuple[int, ...] | None:
    """The runs of each branch of a conditional as its scope states them
    (`r1.loop_scopes.branch_scope`): on the conditional's op name, or where the compiler
    renamed the conditional (the TPU compiler does), on the op names of the instructions in its
    branches; None if not stated, or not one per branch."""
    if names_a_conditional(op_name):
        runs = stated_branch_runs(op_name)
        return runs if runs is not None and len(runs) == len(branches) else None
    inside = (
        stated_branch_runs(found.group(1), inside=True)
        for branch in branches
        for line in comps[branch].lines[1:]
        if (found := _OP_NAME.search(line))
    )
    return next((r for r in inside if r is not None and len(r) == len(branches)), None)


def _runs(trips: int | None, op_name: str) -> float | None:
    """Times a while body runs per entry: its trip count, the runs its scope states
    (`r1.loop_scopes`), or None (unknown)."""
    if trips is not None:
        return float(trips)
    stated = stated_runs(op_name)
    return stated[1] if stated else None


def count_loops(hlo_text: str) -> LoopCount:
    """The per-device cost of the compiled program `hlo_text` (`Compiled.as_text()`) with every
    loop counted by its trip count and each decode loop by its worst case (module docstring)."""
    header, comps = parse_computations(hlo_text)
    entry = next((c.name for c in comps.values() if c.is_entry), None)
    if entry is None:
        raise ValueError("HLO text has no ENTRY computation")
    loops: list[Loop] = []
    uncounted: list[str] = []

    @functools.cache
    def inclusive(name: str) -> Cost:
        return xla_cost(module_text(header, comps, name))

    @functools.cache
    def counted(name: str) -> Cost:
        flow = _control_flow(comps, name)
        memory = async_transfer_bytes(comps[name]) - on_chip_excess(header, comps, name)
        own = inclusive(name) + kernel_cost(comps[name]) + Cost(0.0, memory)
        total = Cost()
        for kind, callees, trips, _, op in flow:
            if kind == "while":
                own = own - inclusive(callees[0]) - inclusive(callees[1])
                runs = _runs(trips, op) or 1.0
                total = total + (counted(callees[0]) + counted(callees[1])).times(runs)
            elif kind == "call":
                own = own - inclusive(callees[0])
                total = total + counted(callees[0])
            else:
                xla = functools.reduce(Cost.most, [inclusive(branch) for branch in callees])
                branches = [counted(branch) for branch in callees]
                runs = _branch_runs(comps, op, callees)
                if runs is None:  # the costliest branch, as XLA counts it
                    ours = functools.reduce(Cost.most, branches)
                else:  # each branch by its stated share (`r1.loop_scopes.branch_scope`)
                    shares = [branch.times(r / sum(runs)) for branch, r in zip(branches, runs)]
                    ours = functools.reduce(Cost.__add__, shares)
                own, total = own - xla, total + ours
        return own.most(Cost()) + total

    def visit(name: str, runs: float) -> None:
        for kind, callees, trips, instruction, op in _control_flow(comps, name):
            if kind != "while":
                for callee in callees:
                    visit(callee, runs)
                continue
            inner = _runs(trips, op)
            if inner is None:
                inner = 1.0
                uncounted.append(op or instruction)
            once = counted(callees[0]) + counted(callees[1])
            loops.append(
                Loop(instruction, name, callees[0], callees[1], trips, op, runs * inner, once)
            )
            visit(callees[0], runs * inner)

    visit(entry, 1.0)
    return LoopCount(
        total=counted(entry),
        as_compiled=inclusive(entry),
        loops=tuple(loops),
        uncounted=tuple(uncounted),
    )


def compiled_text(compiled: Any) -> str:
    """The optimized HLO text of a `jax.stages.Compiled` (one device's program)."""
    return compiled.as_text()
