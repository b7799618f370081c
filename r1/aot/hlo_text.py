"""Optimized HLO text, read: a module's computations (`parse_computations`), one computation
and what it calls as a module of its own (`module_text`), XLA's cost analysis of such a module
(`xla_cost`), and an instruction line's name, opcode and operands. Used by `r1.aot.loops` and
`r1.aot.memory_spaces`."""

from __future__ import annotations

import dataclasses
import re

import jax

_HEADER = re.compile(r"^(ENTRY )?%?([^\s(]+) .*\{\s*$")
_STACK_FRAME = re.compile(r"\s?stack_frame_id=\d+")
INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([^\s=]+) = ")
ONE_REF = re.compile(
    r"\b(calls|to_apply|body|condition|true_computation|false_computation)=%?([^\s,{}()]+)"
)
MANY_REFS = re.compile(r"\b(branch_computations|called_computations|calls)=\{([^}]*)\}")
COMMENT = re.compile(r"/\*.*?\*/")
_OPERANDS = re.compile(r"= [^=]*?\b([a-z][\w-]*)\((.*?)\)(?:, |$)")
# The TPU compiler's generic async ops (offloaded gathers, wrapped collectives) do not survive
# the text parser's checks (an async-update with extra operands); each becomes an operand-less
# custom call of the same shape, which costs nothing here: `r1.aot.memory_spaces` counts the
# bytes they move.
_ASYNC_OP = re.compile(r"^(\s*(?:ROOT )?%?[^\s=]+ = .+?) async-(?:start|update|done)\(.*$", re.M)


@dataclasses.dataclass(frozen=True)
class Cost:
    """Flops and bytes accessed (per device) of some part of a program."""

    flops: float = 0.0
    bytes: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.bytes + other.bytes)

    def __sub__(self, other: Cost) -> Cost:
        return Cost(self.flops - other.flops, self.bytes - other.bytes)

    def times(self, n: float) -> Cost:
        return Cost(self.flops * n, self.bytes * n)

    def most(self, other: Cost) -> Cost:
        """The larger of each count (how XLA costs a conditional: its costliest branch)."""
        return Cost(max(self.flops, other.flops), max(self.bytes, other.bytes))


@dataclasses.dataclass
class Computation:
    name: str
    lines: list[str]
    is_entry: bool
    refs: list[str]


def parse_computations(hlo_text: str) -> tuple[str, dict[str, Computation]]:
    """(module header line, {name: computation}) of an HLO module's text, in text order."""
    lines = hlo_text.splitlines()
    header = next((line for line in lines if line.startswith("HloModule ")), "HloModule m")
    comps: dict[str, Computation] = {}
    current: Computation | None = None
    for line in lines:
        if current is None:
            match = _HEADER.match(line)
            if match and not line.startswith("HloModule"):
                current = Computation(match.group(2), [line], bool(match.group(1)), [])
            continue
        if line.strip() == "}" or line.startswith("}, execution_thread="):
            current.lines.append(line)
            comps[current.name] = current
            current = None
            continue
        if not line[:1].isspace() and len(current.lines) > 1:
            # A string attribute (a Pallas kernel's backend config) spanning lines.
            current.lines[-1] += "\n" + line
            continue
        current.lines.append(line)
        for _, ref in ONE_REF.findall(line):
            current.refs.append(ref)
        for _, group in MANY_REFS.findall(line):
            current.refs.extend(r.strip().lstrip("%") for r in group.split(",") if r.strip())
    return header, comps


def module_text(
    header: str, comps: dict[str, Computation], root: str, entry: Computation | None = None
) -> str:
    """A module whose entry is `root`, holding it and every computation it reaches, in the
    order of `comps`; or, given `entry` (a computation not in `comps`, named `root`), that
    entry and what it reaches."""
    needed: set[str] = set()
    stack = list(entry.refs) if entry is not None else [root]
    while stack:
        name = stack.pop()
        if name in needed or name not in comps:
            continue
        needed.add(name)
        stack.extend(comps[name].refs)
    keep = [
        f"{key}={value}"
        for key, value in re.findall(r"\b(num_partitions|replica_count)=(\d+)", header)
    ]
    out = [", ".join(["HloModule sub", *keep]), ""]
    order = _positions(comps)
    chosen = [comps[name] for name in sorted(needed, key=order.__getitem__)]
    for comp in [*chosen, *([entry] if entry is not None else [])]:
        first = comp.lines[0]
        if comp.is_entry:
            first = first[len("ENTRY ") :]
        if comp.name == root:
            first = "ENTRY " + first
        out.extend([first, *comp.lines[1:], ""])
    # Stack-frame ids point into the full module's frame table, which the sub-module lacks.
    return _STACK_FRAME.sub("", "\n".join(out))


_POSITIONS: list = [None, {}]  # [the computations last indexed, their {name: index}]


def _positions(comps: dict[str, Computation]) -> dict[str, int]:
    """{name: index} of the computations in text order (kept for the module last asked)."""
    if _POSITIONS[0] is not comps or len(_POSITIONS[1]) != len(comps):
        _POSITIONS[:] = [comps, {name: i for i, name in enumerate(comps)}]
    return _POSITIONS[1]


def xla_analysis(hlo_text: str) -> dict[str, float]:
    """XLA's cost analysis (CPU cost model) of an HLO module given as text, as XLA returns it:
    "flops", "bytes accessed" and, per operand i of the entry's root, "bytes accessed{i}{}" and
    per result index "bytes accessedout{...}"."""
    from jax._src.lib import _jax
    from jaxlib import _hlo

    text = _ASYNC_OP.sub(r'\1 custom-call(), custom_call_target="r1.async_stub"', hlo_text)
    module = _hlo.hlo_module_from_text(text)
    client = jax.devices("cpu")[0].client
    return {k: float(v) for k, v in _jax.hlo_module_cost_analysis(client, module).items()}


def xla_cost(hlo_text: str) -> Cost:
    """XLA's cost analysis (CPU cost model) of an HLO module given as text."""
    cost = xla_analysis(hlo_text)
    return Cost(cost.get("flops", 0.0), cost.get("bytes accessed", 0.0))


def definitions(comp: Computation) -> dict[str, str]:
    """{instruction name: its line} of a computation."""
    defs = {}
    for line in comp.lines[1:]:
        name = INSTRUCTION.match(line)
        if name:
            defs[name.group(1)] = line
    return defs


def op_and_operands(line: str) -> tuple[str, list[str]]:
    """(opcode, operand names) of an HLO instruction line."""
    match = _OPERANDS.search(COMMENT.sub("", line))
    if not match:
        return "", []
    return match.group(1), [o.strip().lstrip("%") for o in match.group(2).split(",") if o.strip()]
