"""Run untrusted Python programs against test statements, one fresh process per program.

Layers (see docs/rewards.md for what each does and does not guarantee):

* process: ``python -I -S -B`` (no site-packages, no user env), own session / process group,
  killed as a group on the wall-clock deadline; stripped environment; stdin closed.
* rlimits: CPU seconds, address space, file size, open files, process count, no core files.
* when run as root (as in our containers): network and mount namespaces (no network at all;
  private tmpfs over /tmp, /var/tmp, /run/lock, /dev/shm, /etc, /home, /root, the Python
  installation bound back read-only; the work dir lives and dies in that tmpfs), then uid/gid
  65534 (nobody), so the kernel refuses signals to our processes and reads of root-only files.
* an audit hook inside the child refusing (and reporting) file access outside the work dir and
  the Python library, sockets, new processes, signals, ctypes, frame / gc introspection.
* verdicts outside the child: each ``assert`` test is split by `split_test` into the
  expressions that touch the program (evaluated in the child, sent back as plain data: exact
  builtin types only) and a skeleton evaluated here on those values. An early exit sends nothing,
  an object with a rigged ``__eq__`` is not plain data, and frames without the nonce or repeated
  frames mark the run as tampered; all score 0.
"""

from __future__ import annotations

import ast
import builtins
import concurrent.futures
import dataclasses
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

_HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_harness.py")
MAX_OUTPUT_BYTES = 4 << 20

# Builtins the parent evaluates itself inside assert skeletons, on plain data only.
_SAFE_FUNCS = (
    "abs all any bool dict divmod float frozenset int len list max min reversed round set "
    "sorted str sum tuple isinstance"
).split()
_SAFE_NAMES = {"int", "float", "str", "bool", "list", "tuple", "dict", "set", "frozenset"}
_TRUSTED_BINOPS = (
    ast.Add,
    ast.Sub,
    ast.Div,
    ast.FloorDiv,
    ast.Mod,
    ast.BitAnd,
    ast.BitOr,
    ast.BitXor,
    ast.RShift,
)


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
    """Limits for one program. ``workers=None`` uses every core this process may run on."""

    timeout_s: float = 2.0
    cpu_s: int = 2
    memory_mb: int = 1024
    file_size_mb: int = 16
    max_processes: int = 0
    isolate: bool = True
    workers: int | None = None


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """Outcome of one program: ``passed[i]`` per test; ``reason`` "" or why it scored 0
    (timeout, crash, syntax_error, exited, sandbox_violation, tampered, no_result);
    ``detail`` e.g. the violated rule; ``isolation`` the layers the child reported."""

    passed: tuple[bool, ...]
    reason: str = ""
    detail: str = ""
    isolation: str = ""

    @property
    def score(self) -> float:
        if self.reason or not self.passed:
            return 0.0
        return sum(self.passed) / len(self.passed)


# ----------------------------------------------------------------------------- test splitting
@dataclasses.dataclass(frozen=True)
class TestUnit:
    """One test statement: ``exprs`` evaluated in the child, ``skeleton`` (an expression over
    ``__v0..__vN``) evaluated here; or, for statements that are not a single ``assert``,
    ``statement`` run in the child (passes when it runs without raising)."""

    exprs: tuple[str, ...] = ()
    skeleton: str | None = None
    statement: str | None = None
    invalid: bool = False

    def wire(self) -> list[Any]:
        if self.skeleton is not None:
            return ["exprs", list(self.exprs)]
        return ["stmt", self.statement or "pass"]


class _Splitter:
    def __init__(self) -> None:
        self.exprs: list[str] = []

    def hole(self, node: ast.expr) -> ast.expr:
        if isinstance(node, ast.GeneratorExp):
            node = ast.ListComp(elt=node.elt, generators=node.generators)
        self.exprs.append(ast.unparse(node))
        return ast.Name(id=f"__v{len(self.exprs) - 1}", ctx=ast.Load())

    def visit(self, node: ast.expr) -> ast.expr:
        if isinstance(node, ast.Constant):
            return node
        if isinstance(node, ast.Name) and node.id in _SAFE_NAMES:
            return node
        if isinstance(node, ast.BinOp) and isinstance(node.op, _TRUSTED_BINOPS):
            return ast.BinOp(self.visit(node.left), node.op, self.visit(node.right))
        if isinstance(node, ast.UnaryOp):
            return ast.UnaryOp(node.op, self.visit(node.operand))
        if isinstance(node, ast.BoolOp):
            return ast.BoolOp(node.op, [self.visit(v) for v in node.values])
        if isinstance(node, ast.Compare):
            return ast.Compare(
                self.visit(node.left), node.ops, [self.visit(c) for c in node.comparators]
            )
        if isinstance(node, ast.List | ast.Tuple | ast.Set):
            if any(isinstance(e, ast.Starred) for e in node.elts):
                return self.hole(node)
            return type(node)(elts=[self.visit(e) for e in node.elts], ctx=ast.Load())
        if isinstance(node, ast.Dict):
            if any(k is None for k in node.keys):
                return self.hole(node)
            return ast.Dict(
                [self.visit(k) for k in node.keys], [self.visit(v) for v in node.values]
            )
        if isinstance(node, ast.Subscript) and not isinstance(node.slice, ast.Slice):
            return ast.Subscript(self.visit(node.value), self.visit(node.slice), ast.Load())
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _SAFE_FUNCS
            and not any(isinstance(a, ast.Starred) for a in node.args)
            and not node.keywords
        ):
            return ast.Call(node.func, [self.visit(a) for a in node.args], [])
        return self.hole(node)


def split_test(statement: str) -> TestUnit:
    """Split one test statement (see `TestUnit`). Never raises."""
    try:
        tree = ast.parse(statement, mode="exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return TestUnit(invalid=True)
    if len(tree.body) == 1 and isinstance(tree.body[0], ast.Assert):
        splitter = _Splitter()
        try:
            skeleton = ast.unparse(ast.fix_missing_locations(splitter.visit(tree.body[0].test)))
        except (RecursionError, ValueError):
            return TestUnit(invalid=True)
        return TestUnit(exprs=tuple(splitter.exprs), skeleton=skeleton)
    return TestUnit(statement=statement)


def _decode(item: Any, depth: int = 0) -> Any:
    if depth > 100 or not isinstance(item, list) or not item:
        raise ValueError("bad value")
    tag = item[0]
    if tag == "k":
        return {"True": True, "False": False, "None": None}[item[1]]
    if tag == "i":
        return int(item[1])
    if tag == "f":
        return float(item[1])
    if tag == "c":
        return complex(float(item[1]), float(item[2]))
    if tag == "s":
        return str(item[1])
    if tag == "y":
        return bytes.fromhex(item[1])
    if tag in ("l", "t", "e", "z"):
        values = [_decode(v, depth + 1) for v in item[1]]
        return {"l": list, "t": tuple, "e": set, "z": frozenset}[tag](values)
    if tag == "d":
        return {_decode(k, depth + 1): _decode(v, depth + 1) for k, v in item[1]}
    raise ValueError("bad tag")


_SAFE_BUILTINS = {name: getattr(builtins, name) for name in _SAFE_FUNCS + sorted(_SAFE_NAMES)}


def judge(unit: TestUnit, frame: tuple | None) -> bool:
    """The verdict for one test from the child's frame (None when it sent none)."""
    if unit.invalid or frame is None:
        return False
    kind = frame[0]
    if unit.skeleton is None:
        return kind == "ran"
    if kind != "values" or not isinstance(frame[2], list) or len(frame[2]) != len(unit.exprs):
        return False
    try:
        env: dict[str, Any] = {"__builtins__": _SAFE_BUILTINS}
        for i, item in enumerate(frame[2]):
            env[f"__v{i}"] = _decode(item)
        return bool(eval(compile(unit.skeleton, "<skeleton>", "eval"), env))  # noqa: S307
    except Exception:  # noqa: BLE001 - a failing comparison is a failing test
        return False


# ----------------------------------------------------------------------------- running
def _read_frames(text: str, nonce: str) -> tuple[list[tuple], bool]:
    frames, tampered = [], False
    for line in text.splitlines():
        try:
            frame = ast.literal_eval(line) if len(line) < MAX_OUTPUT_BYTES else None
        except (ValueError, SyntaxError, RecursionError, MemoryError, TypeError):
            frame = None
        if not isinstance(frame, tuple) or len(frame) < 2 or frame[0] != nonce:
            tampered = True
            continue
        frames.append(frame[1:])
    return frames, tampered


def run_program(
    program: str, tests: Sequence[str], config: SandboxConfig = SandboxConfig()
) -> SandboxResult:
    """Run ``program`` then each of ``tests`` in a fresh sandboxed process. Never raises for
    anything in ``program`` or ``tests``."""
    units = [split_test(str(t)) for t in tests]
    if not units:
        return SandboxResult((), "no_tests")
    nonce = secrets.token_hex(16)
    workdir = tempfile.mkdtemp(prefix="r1-sandbox-")
    root = os.geteuid() == 0
    if root:
        os.chown(workdir, 65534, 65534)
    job = {
        "program": program,
        "units": [u.wire() for u in units],
        "nonce": nonce,
        "cpu_s": config.cpu_s,
        "memory_mb": config.memory_mb,
        "file_size_mb": config.file_size_mb,
        "max_processes": config.max_processes,
        "isolate": config.isolate,
        "workdir": workdir,
    }
    read_fd, write_fd = os.pipe()
    timed_out = False
    output = bytearray()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", _HARNESS, str(write_fd)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(write_fd,),
            cwd=workdir,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            start_new_session=True,
        )
        os.close(write_fd)
        write_fd = -1
        try:
            proc.stdin.write(json.dumps(job).encode("utf-8", "surrogatepass"))
            proc.stdin.close()
        except OSError:
            pass
        deadline = time.monotonic() + config.timeout_s + 0.5  # + interpreter start-up
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([read_fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(read_fd, 1 << 16)
            if not chunk:
                break
            output += chunk
            if len(output) > MAX_OUTPUT_BYTES:
                break
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
        shutil.rmtree(workdir, ignore_errors=True)

    frames, tampered = _read_frames(output.decode("utf-8", "replace"), nonce)
    isolation = next((str(f[1]) for f in frames if f[0] == "isolation"), "")
    fail = tuple(False for _ in units)
    violations = [str(f[1]) for f in frames if f[0] == "violation"]
    if violations:
        return SandboxResult(fail, "sandbox_violation", violations[0], isolation)
    if tampered or len(output) > MAX_OUTPUT_BYTES:
        return SandboxResult(fail, "tampered", "", isolation)
    kinds = [f[0] for f in frames]
    if "program_error" in kinds:
        error = str(frames[kinds.index("program_error")][1])
        reason = "syntax_error" if error in ("SyntaxError", "IndentationError") else "crash"
        if error == "MemoryError":
            reason = "memory"
        return SandboxResult(fail, reason, error, isolation)
    if "exit" in kinds:
        return SandboxResult(fail, "exited", "", isolation)
    if timed_out:
        return SandboxResult(fail, "timeout", "", isolation)
    if "done" not in kinds:
        code = proc.returncode
        if code == -signal.SIGXCPU:  # the CPU-time rlimit
            return SandboxResult(fail, "timeout", "cpu", isolation)
        if code == 0:  # os._exit(0) or similar before the tests finished
            return SandboxResult(fail, "exited", "", isolation)
        detail = f"signal {-code}" if code is not None and code < 0 else f"exit {code}"
        return SandboxResult(fail, "crash", detail, isolation)
    by_test: dict[int, tuple] = {}
    for frame in frames:
        if frame[0] in ("values", "ran", "error"):
            index = frame[1]
            if not isinstance(index, int) or index in by_test or not 0 <= index < len(units):
                return SandboxResult(fail, "tampered", "duplicate frame", isolation)
            by_test[index] = frame
    passed = tuple(judge(unit, by_test.get(i)) for i, unit in enumerate(units))
    return SandboxResult(passed, "", "", isolation)


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def run_batch(
    programs: Sequence[str | None],
    tests: Sequence[Sequence[str]],
    config: SandboxConfig = SandboxConfig(),
) -> list[SandboxResult]:
    """`run_program` for each row, ``config.workers`` at a time; ``None`` programs are skipped
    (reason ``no_code_block``)."""
    if len(programs) != len(tests):
        raise ValueError(f"sandbox: {len(programs)} programs but {len(tests)} test lists")
    results: list[SandboxResult | None] = [None] * len(programs)
    todo = [i for i, p in enumerate(programs) if p is not None]
    for i, p in enumerate(programs):
        if p is None:
            results[i] = SandboxResult(tuple(False for _ in tests[i]), "no_code_block")
    workers = config.workers or default_workers()
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(run_program, programs[i], list(tests[i]), config): i for i in todo}
        for future in concurrent.futures.as_completed(futures):
            results[futures[future]] = future.result()
    return [r for r in results if r is not None]
