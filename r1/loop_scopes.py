"""Named scopes that state how many times a data-dependent loop runs.

XLA proves the trip count of every `lax.scan` and of a `fori_loop` with static bounds, but not
of a `while_loop` that stops on data (the sampler's decode, which ends when every row has) or
of a `fori_loop` whose bound is traced (causal blockwise attention: key tiles 0..i). Code that
runs such a loop directly inside `jax.named_scope(loop_scope(name, runs))` states how often its
body runs each time the loop is entered: the sampler its worst case (every row at full length),
causal tiles their mean. The AOT cost report (`r1.aot.loops`) reads it back from the while's op
name (`stated_runs`); nothing else depends on it.
"""

from __future__ import annotations

import re

DECODE = "decode_loop"
_STATED = re.compile(r"([A-Za-z_]+)_x(\d+(?:\.\d+)?)/while$")


def loop_scope(name: str, runs: float) -> str:
    """The scope name stating that a loop named `name` (letters and underscores) runs its body
    `runs` times (>= 0; a mean may be fractional) each time it is entered."""
    if not re.fullmatch(r"[A-Za-z_]+", name) or runs < 0:
        raise ValueError(f"loop_scope: name {name!r} (letters, _) and runs {runs} (>= 0)")
    text = f"{float(runs):.6f}".rstrip("0").rstrip(".")
    return f"{name}_x{text}"


def stated_runs(op_name: str) -> tuple[str, float] | None:
    """(name, runs) a while loop's op name states through `loop_scope`, or None."""
    found = _STATED.search(op_name)
    return (found.group(1), float(found.group(2))) if found else None
