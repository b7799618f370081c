r"""Running an entry point so that a config error ends in one line the user can act on.

`run(main)` replaces `absl.app.run(main)` in every entry point that takes `--config`. A config
error prints one line to stderr, with no traceback, and exits with status 2:

    --config.rl.group_size=0: expected >= 1, got 0
    config.rl.group_size (configs/r1_zero.py:tiny): expected >= 1, got 0
    --config.rl.group_sizee=2: unknown field; did you mean --config.rl.group_size?
    --config.rl.group_size=abc: invalid literal for int() with base 10: 'abc'
    --config=configs/r1_zro.py:tiny: no such file 'configs/r1_zro.py'

A config error is a config file that does not load, an override of a field the config does not
have, an override value that does not parse, or a `ValueError` / `TypeError` /
`FileNotFoundError` whose message starts with the path of a config field
(`config.rl.group_size: ...`, `config.data.files[0]: ...`), as r1's validation raises them. The
line names the override exactly as typed when the field, or a field above it, was set on the
command line, else the config file. Any other error keeps its traceback, and absl's own flag and
usage errors behave as under `absl.app.run` (status 1).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from absl import app, flags
from ml_collections import config_flags
from ml_collections.config_flags import config_path

from r1 import configlib

CONFIG_FLAG = "config"
CONFIG_ERROR_STATUS = 2

# `config.rl.group_size: msg`, `config.data.files[0]: msg`, `config.rl.top_p must ...`,
# `config: msg`; not `config file ...` (a file, not a field).
_ERROR_PATH = re.compile(
    r"config(?:(?P<path>(?:\.\w+|\[-?\d+\])+)(?::\s*|\s+|$)|:\s*)(?P<rest>.*)", re.DOTALL
)
# `config.sampling: num_samples: expected >= 1` and `config.eval: EvalConfig.batch_size must be
# >= 1` (a section's message naming its field) are about `config.sampling.num_samples` and
# `config.eval.batch_size`.
_SECTION_FIELD = re.compile(
    r"(?:[A-Z]\w*\.(?P<qualified>\w+)(?::\s*|\s+)|(?P<bare>\w+):\s*)(?P<rest>.*)", re.DOTALL
)
_OVERRIDE = re.compile(rf"--?(?:no)?{CONFIG_FLAG}\.(?P<path>[^=\s]+)(?P<value>=.*)?", re.DOTALL)
_CONFIG_ARGUMENT = re.compile(rf"--?{CONFIG_FLAG}(?:=(?P<value>.*))?", re.DOTALL)
_BAD_VALUE = re.compile(rf"flag --{CONFIG_FLAG}\.(?P<path>[^=\s]+)=")
_UNSUPPORTED_TYPE = re.compile(
    rf"Type (?P<type>.+?) of field {CONFIG_FLAG}\.(?P<path>\S+) is not supported for overriding"
)
_SUGGESTION = re.compile(r'Did you mean "(?P<suggested>[^"]+)" instead of "(?P<typed>[^"]+)"')
_CONFIG_ERRORS = (ValueError, TypeError, FileNotFoundError)
_LOOKUP_ERRORS = (AttributeError, KeyError, IndexError, TypeError, ValueError)


@dataclasses.dataclass(frozen=True)
class Override:
    """One `--config.<path>=<value>` of the command line.

    Attributes:
        path: the field's dotted path below `config` (`rl.group_size`, `data.files[0]`).
        text: the override exactly as typed (`--config.rl.group_size=0`, or
            `--config.rl.group_size 0` in the space-separated form).
    """

    path: str
    text: str


def find_overrides(
    argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS
) -> list[Override]:
    """The `--config.<path>` overrides of `argv`, in order (a repeated one appears twice).

    `--config.x v` takes `v` as its value unless `v` looks like a flag or `flag_values` knows
    `config.x` as a boolean flag (`--config.use_x` / `--noconfig.use_x`).
    """
    overrides = []
    for index, token in enumerate(argv):
        match = _OVERRIDE.fullmatch(token)
        if match is None:
            continue
        text = token
        name = f"{CONFIG_FLAG}.{match['path']}"
        boolean = name in flag_values and flag_values[name].boolean
        following = argv[index + 1] if index + 1 < len(argv) else None
        if match["value"] is None and not boolean and following and not following.startswith("-"):
            text = f"{token} {following}"
        overrides.append(Override(match["path"], text))
    return overrides


def config_argument(argv: Sequence[str]) -> str | None:
    """The value of `--config=<file>:<variant>` (or `--config <file>`) in `argv`; the last wins."""
    value = None
    for index, token in enumerate(argv):
        match = _CONFIG_ARGUMENT.fullmatch(token)
        if match is None:
            continue
        if match["value"] is not None:
            value = match["value"]
        elif index + 1 < len(argv):
            value = argv[index + 1]
    return value


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", text).strip()


def _field_names(node: Any) -> set[str]:
    """Every key of a nested ConfigDict / mapping, at any depth."""
    if not hasattr(node, "keys"):
        return set()
    names = set(node.keys())
    for key in node.keys():
        names |= _field_names(node[key])
    return names


def _names_a_field(path: str, config: Any) -> bool:
    """Whether `path` (below `config`) starts with a field the config has, at any depth (the
    pipeline's stages validate `config.rl...` of `config.reasoning_rl.rl...`). `config.json:`
    names Hugging Face's config file, not a field."""
    first = re.match(r"\w*", path).group()
    return not first or first in _field_names(config)


def _has_field(path: str, config: Any) -> bool:
    try:
        config_path.get_value(path, config)
    except _LOOKUP_ERRORS:
        return False
    return True


def _matching_override(path: str, overrides: Sequence[Override]) -> tuple[Override, bool] | None:
    """The override that set the field at `path` or a field above it, and whether it set exactly
    that field. The longest match wins, the last of equals (as absl applies them); an override's
    own path beats its tails (`rl.group_size` of `reasoning_rl.rl.group_size`), which match the
    errors of configs derived from a section (the pipeline's stages)."""

    def covers(prefix: str) -> bool:
        return path == prefix or path.startswith((f"{prefix}.", f"{prefix}["))

    for tails in (False, True):
        best: tuple[int, Override, bool] | None = None
        for override in overrides:
            parts = override.path.split(".")
            starts = range(1, len(parts)) if tails else range(1)
            for start in starts:
                prefix = ".".join(parts[start:])
                if covers(prefix) and (best is None or len(prefix) >= best[0]):
                    best = (len(prefix), override, prefix == path)
        if best is not None:
            return best[1], best[2]
    return None


def describe_config_error(
    message: str, overrides: Sequence[Override], source: str, config: Any
) -> str | None:
    """The one line for a validation error `message`, or None when it names no config field.

    Args:
        message: the error's text, e.g. `config.rl.group_size: expected >= 1, got 0`.
        overrides: the command line's overrides (`find_overrides`).
        source: the config as given on the command line, `configs/r1_zero.py:tiny`.
        config: the loaded config, to tell a field's path from other `config.` names.

    Returns:
        `--config.rl.group_size=0: expected >= 1, got 0` when an override set the field (the
        whole message when the override set a field above it: `config.data.files[0]: ...`),
        `config.rl.group_size (configs/r1_zero.py:tiny): expected >= 1, got 0` otherwise.
    """
    match = _ERROR_PATH.fullmatch(message.strip())
    if match is None:
        return None
    path, rest = (match["path"] or "").lstrip("."), match["rest"]
    if not _names_a_field(path, config):
        return None
    inner = _SECTION_FIELD.match(rest)
    if path and inner:
        name = inner["qualified"] or inner["bare"]
        if _has_field(f"{path}.{name}", config):
            path, rest = f"{path}.{name}", inner["rest"]
    rest = _one_line(rest) or _one_line(message)
    found = _matching_override(path, overrides)
    if found is None:
        field = f"{CONFIG_FLAG}.{path}" if path else CONFIG_FLAG
        return f"{field} ({source}): {rest}"
    override, exact = found
    return f"{override.text}: {rest if exact else _one_line(message)}"


def describe_unknown_field(overrides: Sequence[Override], config: Any) -> str | None:
    """The one line for the first override naming a field `config` lacks, or None if all exist.

    `--config.rl.group_sizee=2: unknown field; did you mean --config.rl.group_size?` with
    ml_collections' suggestion, else the fields the section has.
    """
    for override in overrides:
        parts = override.path.split(".")
        for depth in range(1, len(parts) + 1):
            try:
                config_path.get_value(".".join(parts[:depth]), config)
            except _LOOKUP_ERRORS as error:
                return f"{override.text}: unknown field; {_hint(parts, depth, config, error)}"
    return None


def _hint(parts: list[str], depth: int, config: Any, error: Exception) -> str:
    suggestion = _SUGGESTION.search(str(error))
    if suggestion:
        fixed = [*parts[: depth - 1], suggestion["suggested"], *parts[depth:]]
        return f"did you mean --{CONFIG_FLAG}.{'.'.join(fixed)}?"
    section = ".".join([CONFIG_FLAG, *parts[: depth - 1]])
    holder = config_path.get_value(".".join(parts[: depth - 1]), config) if depth > 1 else config
    if hasattr(holder, "keys"):
        return f"{section} has {', '.join(sorted(holder.keys()))}"
    return f"{section} is {type(holder).__name__}, not a section"


def describe_flag_error(error: flags.Error, overrides: Sequence[Override]) -> str | None:
    """The one line for absl's error about an override's value, or None for other flag errors.

    `--config.rl.group_size=abc: invalid literal for int() with base 10: 'abc'`; a field whose
    type the command line cannot set (a `None` in the config file) says so.
    """
    message = str(error)
    bad_value = _BAD_VALUE.match(message)
    unsupported = _UNSUPPORTED_TYPE.search(message)
    if bad_value:
        path = bad_value["path"]
        cause = error.__cause__ or error.__context__
        reason = str(cause) if cause else message.split(": ", 1)[-1]
    elif unsupported:
        path = unsupported["path"].rstrip(".")
        kind = re.sub(r"<class '(?:\w+\.)*(\w+)'>", r"\1", unsupported["type"])
        reason = f"a {kind} field cannot be set from the command line; set it in the config file"
    else:
        return None
    typed = [override.text for override in overrides if override.path == path]
    text = typed[-1] if typed else f"--{CONFIG_FLAG}.{path}"
    return f"{text}: {_one_line(reason)}"


def describe_load_failure(source: str, error: BaseException) -> str:
    """The one line for a `--config=<file>:<variant>` whose file does not load."""
    path = source.split(":", 1)[0]
    if not os.path.exists(path):
        return f"--{CONFIG_FLAG}={source}: no such file {path!r}"
    return f"--{CONFIG_FLAG}={source}: {_one_line(str(error))}"


def _load_failure() -> str | None:
    """The one line for a parsed `--config` whose file did not load (ml_collections keeps the
    error in a stand-in config that raises on first use), else None."""
    if CONFIG_FLAG not in flags.FLAGS:
        return None
    flag = flags.FLAGS[CONFIG_FLAG]
    error = vars(flag.value).get("_error") if hasattr(flag.value, "__dict__") else None
    if not isinstance(error, OSError):
        return None
    return describe_load_failure(config_argument(_expanded(sys.argv)) or "", error)


def _exit_with(line: str) -> NoReturn:
    print(line, file=sys.stderr)
    sys.exit(CONFIG_ERROR_STATUS)


def _expanded(argv: Sequence[str]) -> list[str]:
    """`argv` with any --flagfile expanded, as ml_collections reads its overrides."""
    return flags.FLAGS.read_flags_from_files(list(argv), force_gnu=False)


def _running_config() -> tuple[str | None, Any]:
    """(`configs/<file>.py:<variant>`, the loaded config) of a parsed `--config` flag."""
    if CONFIG_FLAG not in flags.FLAGS:
        return None, None
    flag = flags.FLAGS[CONFIG_FLAG]
    if isinstance(flag.value, str):  # a plain string flag (experiments/pretrain_base.py)
        try:
            return flag.value, configlib.load_config(flag.value)
        except Exception:  # a config that does not load names no field: keep the traceback
            return flag.value, None
    try:
        return config_flags.get_config_filename(flag), flag.value
    except (TypeError, flags.Error):  # not a config flag, or not parsed
        return None, None


def config_error_line(error: BaseException) -> str | None:
    """The one line for an error raised while an entry point runs, or None when it is no config
    error. For entry points that report errors themselves (experiments/aot.py)."""
    if not isinstance(error, _CONFIG_ERRORS):
        return None
    source, config = _running_config()
    if config is None:
        return None
    return describe_config_error(str(error), find_overrides(_expanded(sys.argv)), source, config)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (`app.parse_flags_with_usage`), with an override of an unknown field
    or an unparsable override value reported as a config error."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        line = describe_flag_error(error, find_overrides(_expanded(argv)))
        if line is not None:
            _exit_with(line)
        message = str(error)
        if "\n" in message:
            sys.stderr.write(f"FATAL Flags parsing error:\n{textwrap.indent(message, '  ')}\n")
        else:
            sys.stderr.write(f"FATAL Flags parsing error: {message}\n")
        sys.stderr.write("Pass --helpshort or --helpfull to see help on flags.\n")
        sys.exit(1)
    except OSError as error:
        # An override's parent fields are looked up in a config file that did not load.
        source = config_argument(_expanded(argv))
        if source is None:
            raise
        _exit_with(describe_load_failure(source, error))
    except _LOOKUP_ERRORS:
        # ml_collections resolves each override's field while parsing --config, unwrapped.
        line = _unknown_field_line(argv)
        if line is None:
            raise
        _exit_with(line)


def _unknown_field_line(argv: list[str]) -> str | None:
    argv = _expanded(argv)
    source = config_argument(argv)
    if source is None:
        return None
    try:
        config = flags.FLAGS[CONFIG_FLAG].parser.parse(source)
    except Exception:  # the original error is the one to show
        return None
    return describe_unknown_field(find_overrides(argv), config)


def report_config_errors(main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
    """`main` with a config error it raises reported in one line and exit status 2; any other
    error propagates unchanged."""

    @functools.wraps(main)
    def reporting(argv: list[str]) -> Any:
        failure = _load_failure()
        if failure is not None:
            _exit_with(failure)
        try:
            return main(argv)
        except _CONFIG_ERRORS as error:
            line = config_error_line(error)
            if line is None:
                raise
            _exit_with(line)

    return reporting


def run(main: Callable[[list[str]], Any]) -> None:
    """`absl.app.run(main)`, with config errors (of the command line's overrides or raised by
    `main`) reported in one line and exit status 2."""
    app.run(report_config_errors(main), flags_parser=_parse_flags)
