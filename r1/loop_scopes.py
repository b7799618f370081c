"""Named scopes that state how many times a data-dependent loop runs.

XLA proves the trip count of every `lax.scan` and of a `fori_loop` with static bounds, but not
of a `while_loop` that stops on data (the sampler's decode, which ends when every row has) or
of a `fori_loop` whose bound is traced (causal blockwise attention: key tiles 0..i). Code that
runs such a loop directly inside `jax.named_scope(loop_scope(name, runs))` states how often its
body runs each time the loop is entered: the sampler its worst case (every row at full length),
causal tiles their mean. The AOT cost report (`r1.aot.loops`) reads it back from the while's op
name (`stated_runs`); nothing else depends on it.

Kernels whose work depends on data state it the same way. The expert-parallel MoE dispatch
gives each device's grouped matmuls (Pallas megablox) a row buffer for every assignment of the
gathered tokens, of which the device's experts take E_local / E under balanced routing;
the kernel visits only the grouped rows, but its own cost estimate is that of the whole
buffer. The dispatch runs under `grouped_rows_scope(share)` and the cost report scales the
kernels' row-proportional cost by it (`stated_row_share`).

A conditional whose branches run at most known shares of the times it runs (an upper bound
on the costly ones, as a loop states its most runs) runs directly inside
`jax.named_scope(branch_scope(runs))`: branch i (a `lax.cond`'s false branch is 0, its true
branch 1; a `lax.switch`'s in its order) runs runs[i] of every sum(runs) times. The slot
decode states its refill: of the loop's stated steps, at most one per row that waits for a
slot, plus the first. Without a statement the cost report charges the most expensive branch
every time, as XLA does.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

DECODE = "decode_loop"
GROUPED_ROWS = "grouped_rows"
BRANCH_RUNS = "branch_runs"
_STATED = re.compile(r"([A-Za-z_]+)_x(\d+(?:\.\d+)?)/while$")
_CONDITIONAL = re.compile(r"/(?:cond|switch)$")
# A conditional's own op name; an instruction's whose innermost conditional states its runs.
_BRANCH_RUNS_OWN = re.compile(BRANCH_RUNS + r"((?:_\d+)+)/(?:cond|switch)$")
_BRANCH_RUNS_INSIDE = re.compile(
    BRANCH_RUNS + r"((?:_\d+)+)/(?:cond|switch)/branch_\d+_fun/"
    r"(?!(?:.*/)?(?:cond|switch)/branch_\d+_fun/)"
)
_ROW_SHARE = re.compile(GROUPED_ROWS + r"_x(\d+(?:\.\d+)?)(?:/|$)")


def loop_scope(name: str, runs: float) -> str:
    """The scope name stating that a loop named `name` (letters and underscores) runs its body
    `runs` times (>= 0; a mean may be fractional) each time it is entered."""
    if not re.fullmatch(r"[A-Za-z_]+", name) or runs < 0:
        raise ValueError(f"loop_scope: name {name!r} (letters, _) and runs {runs} (>= 0)")
    return f"{name}_x{_number(runs)}"


def stated_runs(op_name: str) -> tuple[str, float] | None:
    """(name, runs) a while loop's op name states through `loop_scope`, or None."""
    found = _STATED.search(op_name)
    return (found.group(1), float(found.group(2))) if found else None


def branch_scope(runs: Sequence[int]) -> str:
    """The scope name stating that branch i of the conditional inside it runs runs[i] of every
    sum(runs) times the conditional runs (integers >= 0, one per branch, sum >= 1)."""
    if not runs or any(int(r) != r or r < 0 for r in runs) or sum(runs) < 1:
        raise ValueError(f"branch_scope: runs {tuple(runs)} must be integers >= 0, sum >= 1")
    return BRANCH_RUNS + "".join(f"_{int(r)}" for r in runs)


def stated_branch_runs(op_name: str, inside: bool = False) -> tuple[int, ...] | None:
    """The runs of each branch stated through `branch_scope`: read from a conditional's op name
    (ending in cond or switch), or with `inside` from that of an instruction in one of its
    branches (the compiler may rename a conditional), the statement of the instruction's
    innermost conditional; None if that conditional states none."""
    found = (_BRANCH_RUNS_INSIDE if inside else _BRANCH_RUNS_OWN).search(op_name)
    return tuple(int(r) for r in found.group(1).split("_")[1:]) if found else None


def names_a_conditional(op_name: str) -> bool:
    """Whether `op_name` is a conditional's own, as JAX names it (ending in cond or switch)."""
    return bool(_CONDITIONAL.search(op_name))


def grouped_rows_scope(share: float) -> str:
    """The scope name stating that the grouped matmuls inside it use `share` (0 < share <= 1)
    of their row buffer, on average."""
    if not 0 < share <= 1:
        raise ValueError(f"grouped_rows_scope: share {share} must be in (0, 1]")
    return f"{GROUPED_ROWS}_x{_number(share)}"


def stated_row_share(op_name: str) -> float | None:
    """The row share a kernel's op name states through `grouped_rows_scope` (the innermost),
    or None."""
    found = _ROW_SHARE.findall(op_name)
    return float(found[-1]) if found else None


def _number(value: float) -> str:
    """`value` as a scope name writes it: six decimals at most, no trailing zeros."""
    return f"{float(value):.6f}".rstrip("0").rstrip(".")
