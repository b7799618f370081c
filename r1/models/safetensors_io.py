"""Minimal safetensors reader/writer on numpy memory maps.

Reading maps each file once and returns zero-copy views, so loading a model never holds two full
host copies of it; bfloat16 and float8 come through `ml_dtypes`. Headers are validated against
the file size so a truncated download fails with the file's name instead of a crash later.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Mapping

import ml_dtypes
import numpy as np

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER_BYTES = 100 * 1024 * 1024


class SafetensorsFile:
    """One `.safetensors` file: `names()`, `shape(name)`, `get(name) -> np.ndarray` (a view)."""

    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
        if size < 8:
            raise ValueError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise ValueError(
                    f"{path}: truncated or corrupt safetensors file (header of {header_len} bytes "
                    f"declared, file has {size} bytes)"
                )
            try:
                header = json.loads(f.read(header_len))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ValueError(f"{path}: corrupt safetensors header: {err}") from err
        self.metadata = header.pop("__metadata__", None) or {}
        self.entries: dict[str, dict] = header
        self.data_start = 8 + header_len
        data_len = size - self.data_start
        for name, entry in self.entries.items():
            begin, end = entry["data_offsets"]
            if end > data_len:
                raise ValueError(
                    f"{path}: truncated safetensors file: tensor {name!r} needs bytes "
                    f"[{begin}, {end}) of the data section but only {data_len} are present"
                )
            if entry["dtype"] not in DTYPES:
                raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {entry['dtype']}")
            expected = (
                int(np.prod(entry["shape"], dtype=np.int64)) * DTYPES[entry["dtype"]].itemsize
            )
            if end - begin != expected:
                raise ValueError(
                    f"{path}: tensor {name!r} of shape {entry['shape']} {entry['dtype']} needs "
                    f"{expected} bytes, header gives {end - begin}"
                )
        self._map: np.memmap | None = None

    def names(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def dtype(self, name: str) -> np.dtype:
        return DTYPES[self.entries[name]["dtype"]]

    def get(self, name: str) -> np.ndarray:
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        entry = self.entries[name]
        begin, end = entry["data_offsets"]
        raw = self._map[self.data_start + begin : self.data_start + end]
        return raw.view(DTYPES[entry["dtype"]]).reshape(entry["shape"])


class SafetensorsDirectory:
    """All tensors of a Hugging Face model directory (single file or sharded with an index)."""

    def __init__(self, directory: str):
        index_path = os.path.join(directory, "model.safetensors.index.json")
        if os.path.exists(index_path):
            with open(index_path) as f:
                weight_map: Mapping[str, str] = json.load(f)["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(n for n in os.listdir(directory) if n.endswith(".safetensors"))
            weight_map = {}
        if not files:
            raise FileNotFoundError(
                f"{directory}: no *.safetensors weights found (expected model.safetensors or "
                "model.safetensors.index.json with shards)"
            )
        self.files: dict[str, SafetensorsFile] = {}
        for name in files:
            full = os.path.join(directory, name)
            if not os.path.exists(full):
                raise FileNotFoundError(f"{full}: listed in the index but missing")
            self.files[name] = SafetensorsFile(full)
        self.location: dict[str, SafetensorsFile] = {}
        for file in self.files.values():
            for tensor in file.names():
                self.location[tensor] = file
        for tensor, name in weight_map.items():
            if tensor not in self.location:
                raise ValueError(f"{directory}: index lists {tensor!r} in {name}, which lacks it")

    def __contains__(self, name: str) -> bool:
        return name in self.location

    def names(self) -> list[str]:
        return list(self.location)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._file(name).shape(name)

    def get(self, name: str) -> np.ndarray:
        return self._file(name).get(name)

    def _file(self, name: str) -> SafetensorsFile:
        if name not in self.location:
            raise KeyError(f"tensor {name!r} is missing from the checkpoint")
        return self.location[name]


def write_file(path: str, tensors: Iterable[tuple[str, np.ndarray]], metadata=None) -> None:
    """Writes (name, array) pairs as one safetensors file."""
    tensors = [(name, np.ascontiguousarray(array)) for name, array in tensors]
    header: dict[str, dict] = {}
    offset = 0
    for name, array in tensors:
        if array.dtype not in DTYPE_NAMES:
            raise ValueError(f"tensor {name!r}: dtype {array.dtype} cannot be saved")
        header[name] = {
            "dtype": DTYPE_NAMES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    header["__metadata__"] = dict(metadata or {"format": "pt"})
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for _, array in tensors:
            f.write(array.tobytes())
    os.replace(tmp, path)
