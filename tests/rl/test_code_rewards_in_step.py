"""Code rows of every layout scored the way the GRPO step scores them: the rows' `tests` go
through `CompiledSpec.encode_fields` into the batch, the completion tokens through the step's
host callback, and the sandboxed `code` reward gives 1 to a correct program and 0 to a wrong
one (a stdin/stdout program printing a wrong answer included)."""

import jax
import jax.numpy as jnp
import numpy as np

from r1.data import sources
from r1.rewards import RewardSpec

HUMANEVAL = {
    "prompt": 'def add(a, b):\n    """Sum."""\n',
    "test": (
        "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(0, 0) == 0\n"
    ),
    "entry_point": "add",
}
MBPP = {"text": "Write double(x).", "test_list": ["assert double(2) == 4", "assert double(0) == 0"]}
STDIO = {
    "question": "Read two integers and print their sum.",
    "input_output": {"inputs": ["1 2\n", "5 6\n"], "outputs": ["3\n", "11\n"]},
}
RIGHT = {
    "humaneval": "def add(a, b):\n    return a + b\n",
    "mbpp": "def double(x):\n    return 2 * x\n",
    "stdio": "a, b = map(int, input().split())\nprint(a + b)\n",
}
WRONG = {
    "humaneval": "def add(a, b):\n    return a - b - 1\n",
    "mbpp": "def double(x):\n    return x + 1\n",
    "stdio": "a, b = map(int, input().split())\nprint(a * b)\n",
}


class Bytes:
    """A byte-level tokenizer: ids are UTF-8 bytes (enough to carry program text)."""

    eos_id = None

    def encode(self, text):
        return list(text.encode())

    def decode(self, ids):
        return bytes(int(i) for i in ids if 0 < int(i) < 256).decode("utf-8", "replace")


def _answer(program):
    return f"<think> I will write it. </think> <answer>\n```python\n{program}```\n</answer>"


def test_correct_programs_score_one_and_wrong_ones_zero_in_the_step_callback():
    layouts = {"humaneval": HUMANEVAL, "mbpp": MBPP, "stdio": STDIO}
    rows = [sources.convert_row(raw, layout, layout) for layout, raw in layouts.items()]
    assert {row["domain"] for row in rows} == {"code"}
    scorer = RewardSpec.from_domains({"code": [("code", 1.0, {})]}).compile(Bytes())
    texts = [_answer(RIGHT[name]) for name in layouts] + [_answer(WRONG[name]) for name in layouts]
    batch = rows + rows
    encoded = [Bytes().encode(t) for t in texts]
    width = max(len(e) for e in encoded)
    tokens = np.zeros((len(texts), width), np.int32)
    mask = np.zeros((len(texts), width), bool)
    for i, ids in enumerate(encoded):
        tokens[i, : len(ids)], mask[i, : len(ids)] = ids, True
    columns = {"tests": [r["tests"] for r in batch], "domain": [r["domain"] for r in batch]}
    fields = scorer.encode_fields(columns)
    out = jax.jit(scorer)(
        jnp.asarray(tokens),
        jnp.asarray(mask),
        jnp.zeros((len(texts),), bool),
        {k: jnp.asarray(v) for k, v in fields.items()},
    )
    np.testing.assert_array_equal(np.asarray(out.parts["code"]), [1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(np.asarray(out.total), [1, 1, 1, 0, 0, 0])
    # The same rows scored on the host (rejection sampling, evaluation) agree.
    host = scorer.score_texts([""] * len(texts), texts, **columns)
    np.testing.assert_array_equal(host.total, [1, 1, 1, 0, 0, 0])
