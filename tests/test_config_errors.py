"""Config errors end in one line naming the field as typed (experiments/cli.py): the formatting
and matching in-process, and two real entry points that fail at parse time (exit status 2, no
traceback)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import ml_collections
import pytest
from absl import flags

from experiments import cli

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE = "configs/r1_zero.py:tiny"


@pytest.fixture
def config() -> ml_collections.ConfigDict:
    """A locked config shaped like the real ones (sections of fields, a pipeline stage)."""
    config = ml_collections.ConfigDict(
        {
            "seed": 0,
            "rl": {"group_size": 8, "top_p": 1.0},
            "data": {"files": ("a.jsonl",), "buckets": (32, 48)},
            "sampling": {"num_samples": 4},
            "eval": {"batch_size": 2},
            "reasoning_rl": {"rl": {"group_size": 8}},
        }
    )
    config.lock()
    return config


def overrides(*argv: str) -> list[cli.Override]:
    return cli.find_overrides(["prog", f"--config={SOURCE}", *argv], flags.FlagValues())


def test_find_overrides_keeps_the_text_as_typed():
    found = overrides(
        "--config.rl.group_size=0", "--config.rl.top_p", "0.5", "--config.eval.flag", "--workdir=x"
    )
    assert found == [
        cli.Override("rl.group_size", "--config.rl.group_size=0"),
        cli.Override("rl.top_p", "--config.rl.top_p 0.5"),
        cli.Override("eval.flag", "--config.eval.flag"),
    ]
    assert cli.config_argument(["prog", "--config", SOURCE]) == SOURCE


@pytest.mark.parametrize(
    ("message", "argv", "line"),
    [
        (  # the field was overridden: the override as typed, the path dropped
            "config.rl.group_size: expected >= 1, got 0",
            ["--config.rl.group_size=0"],
            "--config.rl.group_size=0: expected >= 1, got 0",
        ),
        (  # the last of a repeated override is the one absl applied
            "config.rl.group_size: expected >= 1, got 0",
            ["--config.rl.group_size=2", "--config.rl.group_size", "0"],
            "--config.rl.group_size 0: expected >= 1, got 0",
        ),
        (  # the field came from the config file
            "config.rl.group_size: expected >= 1, got 0",
            ["--config.rl.top_p=0.5"],
            f"config.rl.group_size ({SOURCE}): expected >= 1, got 0",
        ),
        (  # an element of an overridden field: the override, and the message naming the element
            "config.data.files[0]: 'x.jsonl' matches no file",
            ["--config.data.files=x.jsonl"],
            "--config.data.files=x.jsonl: config.data.files[0]: 'x.jsonl' matches no file",
        ),
        (  # a whole section matches no single override
            "config.rl: eps_low must be < eps_high",
            ["--config.rl.group_size=0"],
            f"config.rl ({SOURCE}): eps_low must be < eps_high",
        ),
        (  # a section's message that names its field, as configlib.to_dataclass raises it
            "config.sampling: num_samples: expected >= 1, got 0",
            ["--config.sampling.num_samples=0"],
            "--config.sampling.num_samples=0: expected >= 1, got 0",
        ),
        (
            "config.eval: EvalConfig.batch_size must be >= 1, got 0",
            [],
            f"config.eval.batch_size ({SOURCE}): must be >= 1, got 0",
        ),
        (  # a pipeline stage's config, derived from the section the user overrode
            "config.rl.group_size: expected >= 1, got 0",
            ["--config.reasoning_rl.rl.group_size=0"],
            "--config.reasoning_rl.rl.group_size=0: expected >= 1, got 0",
        ),
        ("config: unknown section(s) ['x']", [], f"config ({SOURCE}): unknown section(s) ['x']"),
    ],
)
def test_config_error_names_the_override_or_the_file(config, message, argv, line):
    assert cli.describe_config_error(message, overrides(*argv), SOURCE, config) == line


@pytest.mark.parametrize(
    "message",
    [
        "config.json: hidden_act 'gelu' is not supported (silu)",  # a file, not a field
        "config file 'configs/x.py' cannot be imported",
        "/ckpt: not a directory (expected a Hugging Face model directory)",
        "step 3: loss is nan",
    ],
)
def test_other_errors_are_not_config_errors(config, message):
    assert cli.describe_config_error(message, overrides(), SOURCE, config) is None


def test_unknown_field_suggests_the_nearest_or_lists_the_section(config):
    line = cli.describe_unknown_field(overrides("--config.rl.group_sizee=2"), config)
    assert line == "--config.rl.group_sizee=2: unknown field; did you mean --config.rl.group_size?"
    line = cli.describe_unknown_field(overrides("--config.rll.group_size=2"), config)
    assert line == "--config.rll.group_size=2: unknown field; did you mean --config.rl.group_size?"
    line = cli.describe_unknown_field(overrides("--config.rl.zzz=1"), config)
    assert line == "--config.rl.zzz=1: unknown field; config.rl has group_size, top_p"
    assert cli.describe_unknown_field(overrides("--config.rl.top_p=0.5"), config) is None


def test_unparsable_override_value():
    flag_values = flags.FlagValues()
    flags.DEFINE_integer("config.rl.group_size", 8, "An override.", flag_values=flag_values)
    argv = ["prog", "--config.rl.group_size=abc"]
    with pytest.raises(flags.IllegalFlagValueError) as raised:
        flag_values(argv)
    line = cli.describe_flag_error(raised.value, cli.find_overrides(argv, flag_values))
    assert line == "--config.rl.group_size=abc: invalid literal for int() with base 10: 'abc'"
    assert cli.describe_flag_error(flags.UnrecognizedFlagError("bogus"), []) is None


def test_config_file_that_does_not_load():
    line = cli.describe_load_failure("configs/r1_zro.py:tiny", FileNotFoundError("r1_zro.py"))
    assert line == "--config=configs/r1_zro.py:tiny: no such file 'configs/r1_zro.py'"


def test_errors_that_are_not_config_errors_propagate():
    def main(argv):
        raise RuntimeError("a real bug")

    with pytest.raises(RuntimeError, match="a real bug"):
        cli.report_config_errors(main)(["prog"])


def _run(tmp_path: pathlib.Path, override: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "experiments.train", f"--config={SOURCE}"]
    return subprocess.run(
        [*argv, f"--workdir={tmp_path / 'run'}", override],
        cwd=ROOT,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("--config.rl.group_size=0", "--config.rl.group_size=0: expected >= 1, got 0"),
        (
            "--config.rl.group_sizee=2",
            "--config.rl.group_sizee=2: unknown field; did you mean --config.rl.group_size?",
        ),
    ],
)
def test_train_reports_a_config_error_in_one_line(tmp_path, override, line):
    result = _run(tmp_path, override)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == line
