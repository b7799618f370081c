r"""Code-problem layouts: raw records of HumanEval, MBPP and stdin/stdout sets -> r1 rows.

Every code row is ``{"prompt", "tests", "domain": "code", ...}``: `prompt` is the problem with
an instruction to answer in a fenced ``python`` block, `tests` the list the ``code`` reward
runs in the sandbox (`r1.rewards.sandbox`): Python statements (``assert f(2) == 4``; a
multi-statement item passes when it runs without raising) and stdin/stdout cases
``{"input": str, "output": str}``.

* "humaneval": `prompt` (signature + docstring), `test` (defines ``check(candidate)``),
  `entry_point`. When `test` is only ``check`` (plus constant assignments such as
  ``METADATA``) whose body is only ``assert`` statements, each assert becomes its own test with
  ``candidate`` replaced by the entry point (the reward scores the fraction passed); otherwise
  the whole of `test` followed by ``check(<entry_point>)`` is one test.
* "mbpp": `text` (the task), `test_list` (assert statements), optional `test_setup_code`
  (prepended to every assert when non-empty). The prompt shows the tests, as MBPP's does.
* "stdio" (APPS, TACO, CodeContests, LiveCodeBench and the like): a statement (`question`,
  `problem`, `description`, `question_content`, `statement` or `prompt`) and cases from
  `input_output` ({"inputs": [...], "outputs": [...]}, a dict or a JSON string; rows with a
  `fn_name` there are call-based, not stdin/stdout, and are skipped), CodeContests'
  `public_tests` / `private_tests` / `generated_tests` ({"input": [...], "output": [...]}),
  or a list (or JSON string) of ``{"input", "output"}`` items in `test_cases`, `tests`,
  `public_test_cases` or `private_test_cases` (LiveCodeBench items with ``testtype`` other
  than "stdin" are left out). An input or output given as a list of lines is joined with
  newlines.

A row without a usable test is skipped (`RowError`, counted as ``bad_answer``: the tests are
a code row's gold answer).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from typing import Any

from r1.data.rows import RowError, text_field

CODE_LAYOUTS = ("humaneval", "mbpp", "stdio")
CODE_DOMAIN = "code"

FUNCTION_INSTRUCTION = (
    "Complete the following Python function. Give the whole function, with any imports it "
    "needs, in one ```python code block."
)
MBPP_INSTRUCTION = "Write a Python function for this task. Your code should pass these tests:"
PROGRAM_INSTRUCTION = (
    "Write a Python 3 program that reads the input from standard input and writes the answer "
    "to standard output. Give the whole program in one ```python code block."
)
STATEMENT_FIELDS = (
    "question",
    "problem",
    "description",
    "question_content",
    "statement",
    "prompt",
)
CASE_LIST_FIELDS = ("test_cases", "tests", "public_test_cases", "private_test_cases")
CASE_COLUMN_FIELDS = ("public_tests", "private_tests", "generated_tests")
TEST_FIELDS = ("input_output", *CASE_LIST_FIELDS, *CASE_COLUMN_FIELDS)


# ------------------------------------------------------------------------------ detection
def looks_like(raw: Mapping[str, Any], layout: str) -> bool:
    """Whether `raw` has the fields of code `layout`."""
    if layout == "humaneval":
        return all(k in raw for k in ("prompt", "test", "entry_point"))
    if layout == "mbpp":
        return "text" in raw and "test_list" in raw
    if layout == "stdio":
        return any(k in raw for k in STATEMENT_FIELDS) and any(k in raw for k in TEST_FIELDS)
    raise ValueError(f"code layout: expected one of {CODE_LAYOUTS}, got {layout!r}")


def convert_code_row(raw: Mapping[str, Any], layout: str) -> dict[str, Any]:
    """One raw record of a code layout -> ``{"prompt", "tests", "domain", ...}``."""
    if layout == "humaneval":
        return _humaneval(raw)
    if layout == "mbpp":
        return _mbpp(raw)
    if layout == "stdio":
        return _stdio(raw)
    raise ValueError(f"code layout: expected one of {CODE_LAYOUTS}, got {layout!r}")


# ------------------------------------------------------------------------------ humaneval
def _humaneval(raw: Mapping[str, Any]) -> dict[str, Any]:
    stub, test = text_field(raw, "prompt"), text_field(raw, "test")
    entry = text_field(raw, "entry_point").strip()
    if not entry.isidentifier():
        raise RowError("entry_point is not a Python name", repr(entry[:40]))
    tests = split_check_asserts(test, entry) or [f"{test}\n\ncheck({entry})\n"]
    prompt = f"{FUNCTION_INSTRUCTION}\n\n```python\n{stub.rstrip()}\n```"
    row: dict[str, Any] = {"prompt": prompt, "tests": tests, "entry_point": entry}
    if isinstance(raw.get("canonical_solution"), str):
        row["solution"] = stub + raw["canonical_solution"]
    return _code_row(row)


class _CandidateToEntry(ast.NodeTransformer):
    def __init__(self, parameter: str, entry: str):
        self.parameter, self.entry = parameter, entry

    def visit_Name(self, node: ast.Name) -> ast.Name:  # noqa: N802 - ast's visitor protocol
        if node.id == self.parameter:
            return ast.copy_location(ast.Name(id=self.entry, ctx=node.ctx), node)
        return node


def split_check_asserts(test: str, entry: str) -> list[str]:
    """HumanEval's ``check(candidate)`` as one assert statement per test, ``candidate``
    renamed to `entry`; [] when `test` is anything but constant assignments and a ``check``
    whose body (after its docstring) is only asserts, or when the check has no assert."""
    try:
        module = ast.parse(test)
    except (SyntaxError, ValueError):
        raise RowError("test is not valid Python") from None
    checks = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    others = [n for n in module.body if n not in checks]
    if len(checks) != 1 or not all(_is_constant_assignment(n) for n in others):
        return []
    check = checks[0]
    if len(check.args.args) != 1:
        return []
    body = check.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    if not body or not all(isinstance(n, ast.Assert) for n in body):
        return []
    rename = _CandidateToEntry(check.args.args[0].arg, entry)
    return [ast.unparse(ast.fix_missing_locations(rename.visit(node))) for node in body]


def _is_constant_assignment(node: ast.stmt) -> bool:
    if not isinstance(node, ast.Assign):
        return False
    try:
        ast.literal_eval(node.value)
    except (ValueError, SyntaxError, TypeError, RecursionError):
        return False
    return True


# ------------------------------------------------------------------------------ mbpp
def _mbpp(raw: Mapping[str, Any]) -> dict[str, Any]:
    task = text_field(raw, "text")
    asserts = raw.get("test_list")
    if isinstance(asserts, str):
        asserts = _json_value(asserts, "test_list")
    if not isinstance(asserts, list) or not asserts:
        raise RowError("missing test_list", "expected a non-empty list of assert statements")
    if not all(isinstance(a, str) and a.strip() for a in asserts):
        raise RowError("test_list has a non-text item")
    setup = raw.get("test_setup_code")
    setup = setup.strip() if isinstance(setup, str) else ""
    tests = [f"{setup}\n{a}" if setup else a for a in asserts]
    shown = "\n".join(asserts)
    prompt = (
        f"{task.strip()}\n\n{MBPP_INSTRUCTION}\n\n```python\n{shown}\n```\n\n"
        "Give the function in one ```python code block."
    )
    row: dict[str, Any] = {"prompt": prompt, "tests": tests}
    if isinstance(raw.get("code"), str):
        row["solution"] = raw["code"]
    if "task_id" in raw and "id" not in raw:
        row["id"] = str(raw["task_id"])
    return _code_row(row)


# ------------------------------------------------------------------------------ stdio
def _stdio(raw: Mapping[str, Any]) -> dict[str, Any]:
    statement_key = next((k for k in STATEMENT_FIELDS if raw.get(k) is not None), None)
    if statement_key is None:
        raise RowError("missing field 'question'", f"expected one of {STATEMENT_FIELDS}")
    statement = text_field(raw, statement_key)
    cases = stdio_cases(raw)
    prompt = f"{statement.strip()}\n\n{PROGRAM_INSTRUCTION}"
    row: dict[str, Any] = {"prompt": prompt, "tests": cases}
    difficulty = raw.get("difficulty")
    if isinstance(difficulty, int) and not isinstance(difficulty, bool):
        row["difficulty"] = difficulty
    elif isinstance(difficulty, str) and difficulty.strip():
        row["difficulty_label"] = difficulty.strip()  # e.g. APPS "interview"
    if "problem_id" in raw and "id" not in raw:
        row["id"] = str(raw["problem_id"])
    return _code_row(row)


def stdio_cases(raw: Mapping[str, Any]) -> list[dict[str, str]]:
    """The ``{"input", "output"}`` cases of a stdin/stdout record (module docstring), in
    field order: `input_output`, the case lists, then CodeContests' columns."""
    cases: list[dict[str, str]] = []
    if raw.get("input_output") is not None:
        cases += _input_output_cases(raw["input_output"])
    for key in CASE_LIST_FIELDS:
        if raw.get(key) is not None and not isinstance(raw.get(key), str | list):
            raise RowError(f"{key} is not a list", type(raw[key]).__name__)
        if raw.get(key) is not None:
            cases += _case_list(raw[key], key)
    for key in CASE_COLUMN_FIELDS:
        if raw.get(key) is not None:
            cases += _case_columns(raw[key], key)
    if not cases:
        raise RowError("no stdin/stdout test case", f"fields {sorted(raw)[:8]}")
    return cases


def _json_value(value: Any, key: str) -> Any:
    if not isinstance(value, str):
        return value
    if not value.strip():
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise RowError(f"{key} is not valid JSON", str(e)[:60]) from None


def _text(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value) + ("\n" if value else "")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value}\n"
    raise RowError(f"{key}: a test input/output is not text", type(value).__name__)


def _input_output_cases(value: Any) -> list[dict[str, str]]:
    spec = _json_value(value, "input_output")
    if spec is None:
        return []
    if not isinstance(spec, Mapping):
        raise RowError("input_output is not an object", type(spec).__name__)
    if spec.get("fn_name"):
        raise RowError("call-based tests", "input_output has fn_name: not stdin/stdout")
    inputs, outputs = spec.get("inputs"), spec.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list):
        raise RowError("input_output needs lists 'inputs' and 'outputs'")
    if len(inputs) != len(outputs):
        raise RowError("input_output: inputs and outputs differ in length")
    return [
        {"input": _text(i, "input_output"), "output": _text(o, "input_output")}
        for i, o in zip(inputs, outputs)
    ]


def _case_list(value: Any, key: str) -> list[dict[str, str]]:
    items = _json_value(value, key)
    if items is None:
        return []
    if not isinstance(items, list):
        raise RowError(f"{key} is not a list", type(items).__name__)
    cases = []
    for item in items:
        if not isinstance(item, Mapping) or "input" not in item or "output" not in item:
            raise RowError(f"{key}: a case is not an {{input, output}} object")
        if item.get("testtype", "stdin") != "stdin":
            continue
        cases.append({"input": _text(item["input"], key), "output": _text(item["output"], key)})
    return cases


def _case_columns(value: Any, key: str) -> list[dict[str, str]]:
    columns = _json_value(value, key)
    if columns is None:
        return []
    if not isinstance(columns, Mapping):
        raise RowError(f"{key} is not an object", type(columns).__name__)
    inputs, outputs = columns.get("input") or [], columns.get("output") or []
    if not (isinstance(inputs, list) and isinstance(outputs, list)) or len(inputs) != len(outputs):
        raise RowError(f"{key} needs equal-length lists 'input' and 'output'")
    return [{"input": _text(i, key), "output": _text(o, key)} for i, o in zip(inputs, outputs)]


def _code_row(row: dict[str, Any]) -> dict[str, Any]:
    """Common fields: no gold `answer` (the tests are the answer), difficulty 0."""
    row.setdefault("difficulty", 0)
    row.setdefault("domain", CODE_DOMAIN)
    return row
