"""Read and write safetensors files with numpy memory maps (bfloat16 included, no framework)."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


def read_header(path: str) -> tuple[dict, int]:
    """The tensor table of a safetensors file and the byte offset where tensor data starts."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a safetensors file ({e})") from None
    header.pop("__metadata__", None)
    return header, 8 + n


def iter_tensors(path: str) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, read-only memory-mapped array) for every tensor of one file."""
    header, start = read_header(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    for name, info in header.items():
        dtype = DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        lo, hi = info["data_offsets"]
        shape = info["shape"]
        if hi - lo != np.dtype(dtype).itemsize * int(np.prod(shape)) or start + hi > mm.size:
            raise ValueError(f"{path}: tensor {name!r} has bad offsets (file truncated?)")
        yield name, mm[start + lo : start + hi].view(dtype).reshape(shape)


def write(path: str, tensors: dict[str, np.ndarray], metadata: dict | None = None) -> None:
    """Write tensors (any numpy dtype in DTYPES, bfloat16 included) to one safetensors file."""
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, arr in tensors.items():
        if np.dtype(arr.dtype) not in NAMES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {arr.dtype}")
        nbytes = arr.size * arr.dtype.itemsize
        header[name] = {
            "dtype": NAMES[np.dtype(arr.dtype)],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in tensors.values():
            f.write(np.ascontiguousarray(arr).tobytes())
    os.replace(tmp, path)
