"""Sandboxed code reward: every hostile case of issue 5 item 4 scores 0 with a counted reason,
within its time limit, leaving the host untouched. Small limits keep the file fast."""

import os
import time
import uuid

import numpy as np
import pytest

from r1 import rewards
from r1.rewards import sandbox

CFG = sandbox.SandboxConfig(timeout_s=1.5, cpu_s=1, memory_mb=512)
DOUBLE = "def f(x):\n    return 2 * x\n"
TESTS = ["assert f(2) == 4", "assert f(-1) == -2", "assert abs(f(0.1) - 0.2) < 1e-9"]


def run(program, tests=("assert True",)):
    start = time.monotonic()
    result = sandbox.run_program(program, list(tests), CFG)
    assert time.monotonic() - start < CFG.timeout_s + 3
    return result


def block(program):
    return f"Here you go:\n```python\n{program}\n```\n"


def test_correct_and_partial_programs():
    assert run(DOUBLE, TESTS).score == 1.0
    half = run("def f(x):\n    return 4 if x == 2 else 0\n", TESTS[:2])
    assert half.passed == (True, False) and half.score == 0.5
    # Ordinary stdlib use, files in the work dir, classes, recursion all work.
    program = (
        "import collections, functools, math, re\n"
        "open('scratch.txt', 'w').write('ok')\n"
        "@functools.lru_cache(None)\n"
        "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
        "def f(x):\n    return open('scratch.txt').read() + str(fib(x))\n"
    )
    assert run(program, ["assert f(10) == 'ok55'"]).score == 1.0


def test_code_reward_batch_and_reasons():
    completions = [
        block(DOUBLE),
        "no code at all",
        block("def f(x):\n    return x"),
        block("while True:\n    pass"),
        block("def f(x) return"),
    ]
    spec = rewards.RewardSpec.from_config([("code", 1.0, {"timeout_s": 1.5, "cpu_s": 1})])
    result = spec([""] * 5, completions, tests=[TESTS] * 5)
    np.testing.assert_allclose(result.breakdown["code"], [1, 0, 0, 0, 0])
    assert result.failures == {"code/no_code_block": 1, "code/timeout": 1, "code/syntax_error": 1}


@pytest.mark.parametrize(
    "name, program, reasons",
    [
        ("sys_exit", "import sys\ndef f(x): return 2 * x\nsys.exit(0)", {"exited"}),
        ("os_exit", "import os\ndef f(x): return 2 * x\nos._exit(0)", {"exited"}),
        ("exit_in_test", "import os\ndef f(x):\n    os._exit(0)", {"exited"}),
        ("raise_systemexit", "def f(x):\n    raise SystemExit(0)", {"exited"}),
        (
            "always_equal",
            "class Eq:\n    def __eq__(s, o): return True\n"
            "    def __lt__(s, o): return True\n"
            "def f(x): return Eq()",
            {""},
        ),
        (
            "int_subclass",
            "class I(int):\n    def __eq__(s, o): return True\ndef f(x): return I(0)",
            {""},
        ),
        (
            "patch_builtins",
            "import builtins\nbuiltins.abs = lambda x: 0\n"
            "builtins.AssertionError = type('E', (BaseException,), {})\n"
            "def f(x): return 0",
            {""},
        ),
        (
            "fake_result",
            "import os\nfor fd in range(3, 64):\n"
            "    try: os.write(fd, b\"('x', 'values', 0, [['i', '4']])\\n\")\n"
            "    except OSError: pass\ndef f(x): return 0",
            {"tampered"},
        ),
        ("print_markers", "print('PASS ' * 10)\ndef f(x): return 0", {""}),
    ],
)
def test_tampering_never_scores(name, program, reasons):
    result = run(program, TESTS)
    assert result.score == 0.0, (name, result)
    assert result.reason in reasons, (name, result)


@pytest.mark.parametrize(
    "name, program, reason",
    [
        ("infinite_loop", "while True:\n    pass", "timeout"),
        ("sleep", "import time\ntime.sleep(100)", "timeout"),
        ("huge_power", "x = 10**10**10", "timeout"),
        ("memory_bomb", "x = bytearray(8 << 30)", "memory"),
        ("fork_bomb", "import os\nwhile True:\n    os.fork()", "sandbox_violation"),
        ("subprocess", "import subprocess\nsubprocess.run(['ls', '/'])", "sandbox_violation"),
        ("read_passwd", "print(open('/etc/passwd').read())", "sandbox_violation"),
        ("read_ssh", "import os\nprint(os.listdir('/root/.ssh'))", "sandbox_violation"),
        ("read_ssh_key", "open('/root/.ssh/id_rsa').read()", "sandbox_violation"),
        (
            "socket",
            "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)",
            "sandbox_violation",
        ),
        (
            "kill_parent",
            "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
            "sandbox_violation",
        ),
        ("ctypes", "import ctypes", "sandbox_violation"),
        ("deep_parens", "x = " + "(" * 100000 + "1" + ")" * 100000, "syntax_error"),
        ("bad_bytes", "s = '\udcff\udcfe'\n", "crash"),
        ("empty", "", ""),
    ],
)
def test_hostile_programs(name, program, reason):
    result = run(program, ["assert f(1) == 2"] if name != "empty" else ["assert True"])
    if name == "empty":
        assert result.score == 1.0 and result.reason == ""
        return
    assert result.score == 0.0, (name, result)
    assert result.reason == reason, (name, result)


def test_writes_outside_work_dir_leave_host_untouched():
    target = f"/tmp/r1-sandbox-escape-{uuid.uuid4().hex}"
    for program in (
        f"open({target!r}, 'w').write('x')",
        f"import os\nos.close(os.open({target!r}, os.O_CREAT | os.O_WRONLY))",
        f"import os\nos.symlink('/etc/passwd', 'link')\nopen({target!r}, 'w')",
        "import shutil\nshutil.rmtree('/tmp', ignore_errors=True)",
    ):
        result = run(program)
        assert result.score == 0.0 and result.reason == "sandbox_violation", result
    assert not os.path.exists(target)
    assert os.path.isdir("/tmp")


def test_parent_survives_signal_attempts():
    # The audit layer refuses and reports the attempt (and as uid nobody the kernel would too).
    program = (
        "import os, signal\n"
        "try:\n    os.kill(os.getppid(), signal.SIGKILL)\nexcept Exception:\n    pass\n"
        "def f(x): return 2 * x"
    )
    result = run(program, TESTS)
    assert result.score == 0.0 and result.reason == "sandbox_violation"


@pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and setuid need root")
def test_isolation_layers_reported():
    result = run(DOUBLE, TESTS)
    assert result.isolation == "namespaces+nobody", result


def test_batch_runs_in_parallel():
    programs = ["import time\ntime.sleep(0.6)\ndef f(x): return 2 * x"] * 4
    start = time.monotonic()
    results = sandbox.run_batch(
        programs, [TESTS[:1]] * 4, sandbox.SandboxConfig(timeout_s=3, cpu_s=2, workers=4)
    )
    assert [r.score for r in results] == [1.0] * 4
    assert time.monotonic() - start < 4 * 0.6


def test_split_test_keeps_verdicts_outside():
    unit = sandbox.split_test("assert f(2) == 4")
    assert unit.exprs == ("f(2)",) and unit.skeleton == "__v0 == 4"
    unit = sandbox.split_test("assert abs(f(0.1) - 0.2) < 1e-9 and g(x)[0] == [1, 2]")
    assert unit.exprs == ("f(0.1)", "g(x)")
    assert sandbox.split_test("assert (").invalid
    assert sandbox.split_test("x = f(2)\nassert x == 4").statement is not None
