"""Run untrusted Python programs against test statements (one fresh process per program) and
stdin/stdout cases (one fresh process per case, `run_case`).

Layers (see docs/rewards.md for what each does and does not guarantee):

* process: ``python -I -S -B`` (no site-packages, no user env), own session / process group,
  killed as a group on the wall-clock deadline; stripped environment; stdin ``/dev/null`` and
  stdout discarded, except for a stdin/stdout case: the case input piped to stdin, stdout
  read back (at most `MAX_OUTPUT_BYTES`) and compared here (`output_matches`); stderr discarded.
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
  frames mark the run as tampered; all score 0. Frames travel on their own descriptor, never
  on stdout, so a stdin/stdout program printing the frame format only prints a wrong answer.
"""

from __future__ import annotations

import ast
import builtins
import concurrent.futures
import dataclasses
import json
import logging
import math
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
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

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
    """Limits for one program. ``workers=None`` uses every core this process may run on.

    Times in seconds (``timeout_s`` wall clock per process, ``cpu_s`` CPU), sizes in MiB.
    stdin/stdout cases (`IOCase`): ``float_tolerance`` (None: outputs compare as text) lets
    numeric tokens differ by ``tol * max(1, |expected|)`` (`output_matches`); only the first
    ``max_cases`` cases of a row run, the others are ignored (not counted; statements are never
    capped: they share one process); ``stop_at_first_failure`` skips the cases after the first
    failed test (they count as failed: for all-or-nothing scoring)."""

    timeout_s: float = 2.0
    cpu_s: int = 2
    memory_mb: int = 1024
    file_size_mb: int = 16
    max_processes: int = 0
    isolate: bool = True
    workers: int | None = None
    float_tolerance: float | None = None
    max_cases: int = 64
    stop_at_first_failure: bool = False


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """Outcome of one program: ``passed[i]`` per test (statements first, then stdin/stdout
    cases, in the row's order within each kind); ``reason`` "" or why a test failed, the
    first of (timeout, crash, memory, syntax_error, exited, sandbox_violation, tampered,
    no_result, wrong_answer, output_limit, bad_test); ``detail`` e.g. the violated rule;
    ``isolation`` the layers the child reported; ``rescored``: a child was killed from outside
    (SIGKILL before it reported) and its run was repeated once, this being the repeat's outcome."""

    passed: tuple[bool, ...]
    reason: str = ""
    detail: str = ""
    isolation: str = ""
    rescored: bool = False

    @property
    def score(self) -> float:
        """Fraction of tests passed (0 with no test)."""
        if not self.passed:
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


@dataclasses.dataclass(frozen=True)
class IOCase:
    """A stdin/stdout test: the program runs with `input` on stdin; it passes when its stdout
    equals `output` after `normalize_output` (or token by token within a float tolerance)."""

    input: str
    output: str


def parse_case(item: Mapping | IOCase) -> IOCase | None:
    """A ``{"input": str, "output": str}`` test item (other keys ignored) or an `IOCase` as an
    `IOCase`; None when its input or output is missing or not a ``str`` (a bad test)."""
    if isinstance(item, IOCase):
        inputs, outputs = item.input, item.output
    else:
        inputs, outputs = item.get("input"), item.get("output")
    if not isinstance(inputs, str) or not isinstance(outputs, str):
        return None
    return IOCase(inputs, outputs)


def normalize_output(text: str) -> list[str]:
    """Output lines as compared: line endings unified (``\r\n`` and ``\r`` -> ``\n``),
    trailing whitespace of every line removed, trailing empty lines dropped. Leading
    whitespace and inner spacing are kept."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


# A decimal number as checkers read one: ASCII digits only, no ``1_000``, ``inf``, ``nan``, hex.
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


def _close_enough(got: str, want: str, tolerance: float) -> bool:
    if got == want:
        return True
    if not (_NUMBER.fullmatch(got) and _NUMBER.fullmatch(want)):
        return False
    a, b = float(got), float(want)
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= tolerance * max(1.0, abs(b))


def output_matches(got: str, want: str, float_tolerance: float | None = None) -> bool:
    """Whether a program's stdout `got` answers a case whose expected output is `want`:
    `normalize_output` equal, or with `float_tolerance` (relative, unitless), as many
    whitespace-separated tokens (line structure ignored), each equal as text or, when both are
    finite decimal numbers (``[+-]digits[.digits][e[+-]digits]``), within
    ``tol * max(1, |want|)`` of each other."""
    if float_tolerance is None:
        return normalize_output(got) == normalize_output(want)
    got_tokens, want_tokens = got.split(), want.split()
    return len(got_tokens) == len(want_tokens) and all(
        _close_enough(g, w, float_tolerance) for g, w in zip(got_tokens, want_tokens)
    )


@dataclasses.dataclass
class _ChildRun:
    """What one harness process left: its frames, whether they were tampered with or too
    long, its exit code, whether it timed out, and its stdout (io mode; None on overflow)."""

    frames: list[tuple]
    tampered: bool
    overflow: bool
    returncode: int | None
    timed_out: bool
    stdout: bytes | None
    rescored: bool = False

    @property
    def isolation(self) -> str:
        return next((str(f[1]) for f in self.frames if f[0] == "isolation"), "")


def _feed(fd: int, data: bytes) -> None:
    """Writes `data` to the pipe `fd` (the program's stdin) and closes it; stops quietly when
    the program exits or closes its end."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view[:65536]) :]
    except OSError:
        pass
    finally:
        os.close(fd)


def _killed_from_outside(run: _ChildRun) -> bool:
    """The harness died of SIGKILL without reporting an end and before its deadline: killed by
    something outside it (an operator, the OOM killer), not by its own program's outcome."""
    kinds = {f[0] for f in run.frames}
    ended = kinds & {"done", "program_error", "exit", "fatal", "violation"}
    return run.returncode == -signal.SIGKILL and not run.timed_out and not ended


def _run_child(job: dict, config: SandboxConfig, stdin_data: bytes | None) -> _ChildRun:
    """`_run_child_once`, repeated once (``rescored``) when the first child was killed from
    outside (`_killed_from_outside`)."""
    run = _run_child_once(job, config, stdin_data)
    if not _killed_from_outside(run):
        return run
    log.warning("a sandbox child was killed from outside (SIGKILL); running it again")
    again = _run_child_once({**job, "nonce": secrets.token_hex(16)}, config, stdin_data)
    again.rescored = True
    return again


def _run_child_once(job: dict, config: SandboxConfig, stdin_data: bytes | None) -> _ChildRun:
    """One harness process on `job` (a fresh work dir, the limits of `config`). The job goes
    through its own pipe; with `stdin_data` (io mode) the program's stdin carries it and its
    stdout is read back, else stdin is closed and stdout discarded."""
    workdir = tempfile.mkdtemp(prefix="r1-sandbox-")
    if os.geteuid() == 0:
        os.chown(workdir, 65534, 65534)
    job = {**job, "workdir": workdir}
    read_fd, write_fd = os.pipe()
    job_read, job_write = os.pipe()
    io_mode = stdin_data is not None
    timed_out, output, stdout = False, bytearray(), bytearray()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", _HARNESS, str(write_fd), str(job_read)],
            stdin=subprocess.PIPE if io_mode else subprocess.DEVNULL,
            stdout=subprocess.PIPE if io_mode else subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(write_fd, job_read),
            cwd=workdir,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            start_new_session=True,
        )
        for fd in (write_fd, job_read):
            os.close(fd)
        write_fd = job_read = -1
        threading.Thread(
            target=_feed, args=(job_write, json.dumps(job).encode("utf-8", "surrogatepass"))
        ).start()
        job_write = -1
        streams = {read_fd: output}
        if io_mode:
            feeder = threading.Thread(target=_feed, args=(os.dup(proc.stdin.fileno()), stdin_data))
            proc.stdin.close()
            feeder.start()
            streams[proc.stdout.fileno()] = stdout
        timed_out = _drain(streams, time.monotonic() + config.timeout_s + 0.5)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        if io_mode:
            proc.stdout.close()
            feeder.join(timeout=5)
    finally:
        for fd in (read_fd, write_fd, job_read, job_write):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)
    frames, tampered = _read_frames(output.decode("utf-8", "replace"), job["nonce"])
    overflow = len(output) > MAX_OUTPUT_BYTES
    kept = None if len(stdout) > MAX_OUTPUT_BYTES else bytes(stdout)
    return _ChildRun(frames, tampered, overflow, proc.returncode, timed_out, kept)


def _drain(streams: dict[int, bytearray], deadline: float) -> bool:
    """Reads the fds of `streams` into their buffers until all close, one passes
    `MAX_OUTPUT_BYTES`, or `deadline` (monotonic seconds) passes; True when it timed out."""
    open_fds = list(streams)
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        ready, _, _ = select.select(open_fds, [], [], left)
        for fd in ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                open_fds.remove(fd)
                continue
            streams[fd] += chunk
            if len(streams[fd]) > MAX_OUTPUT_BYTES:
                return False
    return False


def _failure(run: _ChildRun, io_mode: bool = False) -> tuple[str, str]:
    """(reason, detail) of a child run that failed before its tests could count, else ("", "").
    In `io_mode` (a stdin/stdout case) the exit code decides the end of a run that stopped
    early: 0 (``os._exit(0)`` after printing) is a normal end, another one ``exited``."""
    violations = [str(f[1]) for f in run.frames if f[0] == "violation"]
    if violations:
        return "sandbox_violation", violations[0]
    if run.tampered or run.overflow:
        return "tampered", ""
    kinds = [f[0] for f in run.frames]
    if "program_error" in kinds:
        error = str(run.frames[kinds.index("program_error")][1])
        reason = "syntax_error" if error in ("SyntaxError", "IndentationError") else "crash"
        return ("memory" if error == "MemoryError" else reason), error
    if "exit" in kinds:
        return "exited", ""
    if run.timed_out:
        return "timeout", ""
    if "fatal" in kinds:  # the harness could not set the run up
        return "no_result", str(run.frames[kinds.index("fatal")][1])
    if "done" not in kinds:
        code = run.returncode
        if code == -signal.SIGXCPU:  # the CPU-time rlimit
            return "timeout", "cpu"
        if io_mode and code is not None and code >= 0:
            return ("", "") if code == 0 else ("exited", f"exit {code}")
        if code == 0:  # os._exit(0) or similar before the tests finished
            return "exited", ""
        return "crash", f"signal {-code}" if code is not None and code < 0 else f"exit {code}"
    return "", ""


def _job(program: str, config: SandboxConfig, **extra: Any) -> dict:
    return {
        "program": program,
        "nonce": secrets.token_hex(16),
        "cpu_s": config.cpu_s,
        "memory_mb": config.memory_mb,
        "file_size_mb": config.file_size_mb,
        "max_processes": config.max_processes,
        "isolate": config.isolate,
        **extra,
    }


def _run_statements(
    program: str, statements: Sequence[str], config: SandboxConfig
) -> SandboxResult:
    """The program then each test statement, in one child (verdicts judged here)."""
    units = [split_test(str(t)) for t in statements]
    run = _run_child(_job(program, config, units=[u.wire() for u in units]), config, None)
    fail = tuple(False for _ in units)
    reason, detail = _failure(run)
    if reason:
        return SandboxResult(fail, reason, detail, run.isolation, run.rescored)
    by_test: dict[int, tuple] = {}
    for frame in run.frames:
        if frame[0] in ("values", "ran", "error"):
            index = frame[1]
            if not isinstance(index, int) or index in by_test or not 0 <= index < len(units):
                return SandboxResult(fail, "tampered", "duplicate frame", run.isolation)
            by_test[index] = frame
    passed = tuple(judge(unit, by_test.get(i)) for i, unit in enumerate(units))
    return SandboxResult(passed, "", "", run.isolation, run.rescored)


def run_case(program: str, case: IOCase, config: SandboxConfig = SandboxConfig()) -> SandboxResult:
    """The program once, in a fresh sandboxed child, with `case.input` on stdin (UTF-8, an
    unencodable character as ``?``); passes when its stdout matches `case.output`
    (`output_matches`). A nonzero exit code is ``exited``; stderr is ignored."""
    stdin_data = case.input.encode("utf-8", "replace")
    run = _run_child(_job(program, config, units=[], io=True), config, stdin_data)
    if run.stdout is None:  # more than MAX_OUTPUT_BYTES: stopped there
        return SandboxResult((False,), "output_limit", "", run.isolation, run.rescored)
    reason, detail = _failure(run, io_mode=True)
    if reason:
        return SandboxResult((False,), reason, detail, run.isolation, run.rescored)
    got = run.stdout.decode("utf-8", "replace")
    if not output_matches(got, case.output, config.float_tolerance):
        return SandboxResult((False,), "wrong_answer", "", run.isolation, run.rescored)
    return SandboxResult((True,), "", "", run.isolation, run.rescored)


def run_program(
    program: str, tests: Sequence[Any], config: SandboxConfig = SandboxConfig()
) -> SandboxResult:
    """Run ``program`` against ``tests``: Python statements (one child runs the program then
    each of them) and stdin/stdout cases (``{"input", "output"}`` mappings, or `IOCase`s: one
    child per case, the first ``config.max_cases`` only, one after another). A case whose
    input or output is missing or not a ``str`` fails alone with reason ``bad_test`` (the
    row's other tests still count). Never raises for anything in ``program`` or ``tests``."""
    statements = [t for t in tests if not isinstance(t, Mapping | IOCase)]
    cases = [t for t in tests if isinstance(t, Mapping | IOCase)][: max(0, config.max_cases)]
    if not statements and not cases:
        return SandboxResult((), "no_tests")
    results = [_run_statements(program, statements, config)] if statements else []
    for item in cases:
        if results and config.stop_at_first_failure and not all(results[-1].passed):
            results.append(SandboxResult((False,), results[-1].reason))
            continue
        case = parse_case(item)
        results.append(
            run_case(program, case, config) if case else SandboxResult((False,), "bad_test")
        )
    passed = tuple(p for r in results for p in r.passed)
    failed = next((r for r in results if r.reason), None)
    isolation = next((r.isolation for r in results if r.isolation), "")
    rescored = any(r.rescored for r in results)
    if failed is None:
        return SandboxResult(passed, "", "", isolation, rescored)
    return SandboxResult(passed, failed.reason, failed.detail, isolation, rescored)


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def run_batch(
    programs: Sequence[str | None],
    tests: Sequence[Sequence[Any]],
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
