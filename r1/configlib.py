"""The boundary between `ml_collections.ConfigDict` configs and r1's typed dataclasses.

Config files (`configs/*.py`) define `get_config(variant)` returning a ConfigDict; entry points
load them with `config_flags.DEFINE_config_file(..., lock_config=True)` and convert the sections
they use with the functions here, so modules only ever see frozen dataclasses. Unknown fields and
wrong types fail at start with the field's full name (`config.model.num_layers: expected int`).

In a notebook or test::

    from r1 import configlib
    config = configlib.load_config("configs/models.py:qwen2_tiny")
    model_cfg = configlib.model_config(config)      # r1.models.config.ModelConfig
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import types
import typing
from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

from r1.models.config import ModelConfig, dataclass_from_dict
from r1.sharding import MeshConfig

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------- ConfigDict -> typed
def _as_mapping(value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
        return value.to_dict()
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{where}: expected a mapping of fields, got {type(value).__name__}")


def _section(config: Any, name: str, where: str) -> dict[str, Any]:
    mapping = _as_mapping(config, where)
    if name not in mapping:
        raise ValueError(f"{where}.{name}: missing section (config has {sorted(mapping)})")
    return _as_mapping(mapping[name], f"{where}.{name}")


def to_dataclass(cls: type, values: Any, where: str):
    """`cls(**values)` that names unknown fields, wrong types and invalid values by `where`."""
    mapping = _as_mapping(values, where)
    try:
        return dataclass_from_dict(cls, mapping, where)
    except (TypeError, ValueError) as err:
        if str(err).startswith(where):
            raise
        # Errors from __post_init__ name the field as `ModelConfig.x`; add the config path.
        raise type(err)(f"{where}: {err}") from err


def model_config(config: Any, where: str = "config") -> ModelConfig:
    """`config.model` (a ConfigDict or mapping) as a validated `ModelConfig`."""
    return to_dataclass(ModelConfig, _section(config, "model", where), f"{where}.model")


def mesh_config(config: Any, where: str = "config") -> MeshConfig:
    """`config.mesh` (data / fsdp / expert / tensor sizes) as a `MeshConfig`."""
    return to_dataclass(MeshConfig, _section(config, "mesh", where), f"{where}.mesh")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """The typed sections every experiment config shares."""

    model: ModelConfig
    mesh: MeshConfig
    seed: int


COMMON_SECTIONS = ("model", "mesh", "seed")
# The model execution settings of a variant that targets a TPU pod (`train.topology`): the
# Pallas splash attention kernel and q/k/v, gate/up projections fused into one GEMM each. On
# another backend override them (`--config.model.attention_impl=cudnn` on a GPU, `xla` on CPU).
TPU_KERNELS = {"attention_impl": "pallas", "fused_projections": True}


def parse_experiment(
    config: Any,
    extra_sections: tuple[str, ...] = (),
    num_devices: int | None = None,
) -> Experiment:
    """Validates a whole experiment config at start.

    Checks `model`, `mesh` and `seed`, rejects top-level sections other than those and
    `extra_sections` (which the caller validates itself), and with `num_devices` checks that the
    mesh fits that many devices.
    """
    mapping = _as_mapping(config, "config")
    allowed = set(COMMON_SECTIONS) | set(extra_sections)
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise ValueError(f"config: unknown section(s) {unknown}; expected {sorted(allowed)}")
    seed = mapping.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"config.seed: expected int, got {type(seed).__name__} {seed!r}")
    mesh = mesh_config(mapping)
    if num_devices is not None:
        mesh.shape(num_devices)
    return Experiment(model=model_config(mapping), mesh=mesh, seed=seed)


# ------------------------------------------------------------------------- typed -> ConfigDict
def _placeholder_type(annotation: Any) -> type | None:
    """`int | None` -> int: a None default that should stay settable from the command line."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(options) == 1 and options[0] in (int, float, str, bool):
            return options[0]
    return None


def _dataclass_type(annotation: Any) -> type | None:
    """`RopeScaling | None` -> RopeScaling."""
    options = [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
    if len(options) == 1 and dataclasses.is_dataclass(options[0]):
        return options[0]
    return None


def dataclass_dict(cls: type, values: Mapping[str, Any], where: str) -> ml_collections.ConfigDict:
    """A ConfigDict with every field of `cls`: its defaults, overridden by `values`.

    Nested dataclass fields given as mappings are filled the same way; fields whose value is
    None but whose type is `int | None` (etc.) become typed placeholders, so that
    `--config.<where>.<field>=...` can still set them.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown {cls.__name__} field(s) {unknown}")
    hints = typing.get_type_hints(cls)
    out = ml_collections.ConfigDict()
    for name, field in fields.items():
        if name in values:
            value = values[name]
        elif field.default is not dataclasses.MISSING:
            value = field.default
        else:
            raise ValueError(f"{where}.{name}: required field missing")
        nested = _dataclass_type(hints[name])
        if nested is not None and isinstance(value, Mapping):
            value = dataclass_dict(nested, value, f"{where}.{name}")
        elif value is None and _placeholder_type(hints[name]) is not None:
            value = config_dict.placeholder(_placeholder_type(hints[name]))
        out[name] = value
    return out


def model_dict(values: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """The `model` section for a config file: all ModelConfig fields, preset `values` applied."""
    return dataclass_dict(ModelConfig, values, "model")


# ------------------------------------------------------------------------- loading config files
def _resolve(path: str) -> pathlib.Path:
    candidate = pathlib.Path(path).expanduser()
    if candidate.is_file():
        return candidate.resolve()
    if not candidate.is_absolute() and (REPO_ROOT / candidate).is_file():
        return REPO_ROOT / candidate
    raise FileNotFoundError(
        f"config file {path!r} not found (looked relative to {pathlib.Path.cwd()} and {REPO_ROOT})"
    )


def load_module(path: str) -> types.ModuleType:
    """Imports a config file by path (relative to the working directory or the repo root)."""
    file = _resolve(path)
    spec = importlib.util.spec_from_file_location(f"r1_config_{file.stem}", file)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"config file {path!r} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path!r} defines no get_config(variant)")
    return module


def load_config(path_with_variant: str) -> ml_collections.ConfigDict:
    """Loads `configs/x.py:variant` as `--config=` would: get_config(variant), locked."""
    path, sep, variant = path_with_variant.partition(":")
    module = load_module(path)
    config = module.get_config(variant) if sep else module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise TypeError(f"{path}: get_config returned {type(config).__name__}, not a ConfigDict")
    config.lock()
    return config


def variants(path: str) -> tuple[str, ...]:
    """The variant names a config file declares in its module-level `VARIANTS`."""
    module = load_module(path)
    names = getattr(module, "VARIANTS", None)
    if not names:
        raise ValueError(f"config file {path!r} declares no VARIANTS tuple")
    return tuple(names)
