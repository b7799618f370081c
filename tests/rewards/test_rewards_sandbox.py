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


# ----------------------------------------------------------------------------- stdin/stdout
SUM = "a, b = map(int, input().split())\nprint(a + b)\n"
SUM_CASES = [
    {"input": "1 2\n", "output": "3\n"},
    {"input": "5 6\n", "output": "11\n"},
    {"input": "0 0\n", "output": "0\n"},
]


def test_stdio_cases_compare_normalised_stdout():
    assert run(SUM, SUM_CASES).score == 1.0
    wrong = run("print(42)\n", SUM_CASES[:2])
    assert wrong.score == 0.0 and wrong.reason == "wrong_answer"
    # Several lines in and out; CRLF, trailing spaces and a final blank line are accepted,
    # a program that ends with sys.exit(0) is fine, open(0) / sys.stdin.buffer read the input.
    lines = "import sys\nn, *xs = sys.stdin.buffer.read().split()\nfor x in xs:\n"
    program = lines + "    sys.stdout.write(str(2 * int(x)) + '  \\r\\n')\nprint()\nsys.exit(0)\n"
    assert run(program, [{"input": "3\n1\n2\n3\n", "output": "2\n4\n6"}]).score == 1.0
    assert run("print(open(0).read().split()[1])\n", [{"input": "a b", "output": "b"}]).score
    # Leading whitespace and inner spacing still count.
    assert run("print(' 3')\n", [{"input": "", "output": "3"}]).reason == "wrong_answer"
    assert run("import sys\nprint(3)\nsys.exit(2)\n", [{"input": "", "output": "3"}]).reason == (
        "exited"
    )


def test_stdio_programs_end_as_at_interpreter_exit():
    # A buffering stdout wrapper flushed at exit, an atexit writer, os._exit after a flush.
    wrapper = (
        "import os, sys\nclass Out:\n    parts = []\n"
        "    def write(self, s):\n        self.parts.append(s)\n"
        "    def flush(self):\n        os.write(1, ''.join(self.parts).encode())\n"
        "        self.parts.clear()\nsys.stdout = Out()\nprint(int(input()) + 1)\n"
    )
    at_exit = (
        "import atexit, io, sys\nbuf = io.StringIO()\n"
        "atexit.register(lambda: sys.__stdout__.write(buf.getvalue()))\n"
        "buf.write(str(int(input()) + 1))\n"
    )
    hard_exit = "import os, sys\nprint(int(input()) + 1)\nsys.stdout.flush()\nos._exit({})\n"
    case = [{"input": "2\n", "output": "3\n"}]
    for program in (wrapper, at_exit, hard_exit.format(0)):
        assert run(program, case).score == 1.0, program
    assert run(hard_exit.format(3), case).reason == "exited"


def test_float_tolerance_all_or_nothing_and_case_limits():
    near = sandbox.SandboxConfig(timeout_s=1.5, cpu_s=1, float_tolerance=1e-6)
    case = [{"input": "", "output": "0.333333333 x"}]
    assert sandbox.run_program("print(1 / 3, 'x')\n", case, near).score == 1.0
    assert sandbox.run_program("print(0.3334, 'x')\n", case, near).reason == "wrong_answer"
    assert not sandbox.output_matches("1/3 x", "0.333333333 x", 1e-6)
    # Only decimal numbers get the tolerance; the token count and other tokens must agree.
    assert sandbox.output_matches("1e0\n2.0000001", "1 2", 1e-6)
    for got, want in (("1_0", "10"), ("nan", "10"), ("inf", "1e999"), ("10 0", "10"), ("x", "y")):
        assert not sandbox.output_matches(got, want, 1e-6), got
    two_of_three = block("a, b = map(int, input().split())\nprint(a + b if a else -1)\n")
    thirds = block("print(1 / 3)\n")
    code = rewards.get("code")
    limits = {"timeout_s": 1.5, "cpu_s": 1, "float_tolerance": 1e-6}
    third = [{"input": "", "output": "0.3333333"}]
    scores, _ = code.fn([""] * 2, [two_of_three, thirds], tests=[SUM_CASES, third], **limits)
    np.testing.assert_allclose(scores, [2 / 3, 1.0], rtol=1e-6)
    strict, reasons = code.fn(
        [""], [two_of_three], tests=[SUM_CASES], all_or_nothing=True, **limits
    )
    assert strict[0] == 0.0 and reasons == ["wrong_answer"]
    # All-or-nothing stops at the first failed case: the hanging second case never runs.
    hangs_on_zero = "import time\na, b = map(int, input().split())\nprint(a * b or time.sleep(9))"
    first_fails = sandbox.SandboxConfig(timeout_s=1.5, cpu_s=1, stop_at_first_failure=True)
    start = time.monotonic()
    stopped = sandbox.run_program(hangs_on_zero, [SUM_CASES[0], SUM_CASES[2]], first_fails)
    assert stopped.passed == (False, False) and stopped.reason == "wrong_answer"
    assert time.monotonic() - start < first_fails.timeout_s
    capped = sandbox.SandboxConfig(timeout_s=1.5, cpu_s=1, max_cases=1)
    assert sandbox.run_program(SUM, SUM_CASES + [{"input": "x", "output": "y"}], capped).passed == (
        True,
    )


def test_hostile_stdio_programs_fail_with_their_reason():
    forever = run("import sys\nsys.stdin.read()\nwhile True:\n    pass\n", [SUM_CASES[0]])
    assert forever.reason == "timeout"
    assert run("print(open('/etc/passwd').read())\n", [SUM_CASES[0]]).reason == (
        "sandbox_violation"
    )
    # Printing the result-frame format on stdout is only wrong output.
    frames = "print(repr(('0' * 32, 'done')))\nprint(3)\n"
    assert run(frames, [SUM_CASES[0]]).reason == "wrong_answer"
    flood = run("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", [SUM_CASES[0]])
    assert flood.score == 0.0 and flood.reason in ("output_limit", "timeout")


def test_mixed_tests_and_bad_cases():
    program = (
        "import sys\ndef f(x):\n    return 2 * x\ndata = sys.stdin.read().split()\n"
        "if data:\n    print(int(data[0]) + int(data[1]))\n"
    )
    bad_items = [{"input": 3, "output": "x"}, {"output": "3"}, sandbox.IOCase(3, "x")]
    mixed = run(program, ["assert f(2) == 4", SUM_CASES[0], *bad_items])
    assert mixed.passed == (True, True, False, False, False) and mixed.reason == "bad_test"
    # An input that is not valid UTF-8 text reaches the program with ``?`` in its place.
    odd = run("print(input())\n", [{"input": "a\udcffb", "output": "a?b"}])
    assert odd.score == 1.0, odd
    assert run(SUM, []).reason == "no_tests"
