"""Read and write safetensors files with numpy memory maps (bfloat16 included, no framework)."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from collections.abc import Callable, Iterator, Mapping

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


@dataclasses.dataclass(frozen=True)
class Pending:
    """A tensor known by shape and dtype, fetched only when its bytes are written."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fetch: Callable[[], np.ndarray]


def write(
    path: str, tensors: Mapping[str, np.ndarray | Pending], metadata: dict | None = None
) -> None:
    """Write tensors (any numpy dtype in DTYPES, bfloat16 included) to one safetensors file.

    Pending tensors are fetched one at a time while writing, so a file larger than the host's
    free memory can be written from device arrays.
    """
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, arr in tensors.items():
        if np.dtype(arr.dtype) not in NAMES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {arr.dtype}")
        nbytes = int(np.prod(arr.shape)) * np.dtype(arr.dtype).itemsize
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
        for name, arr in tensors.items():
            data = arr.fetch() if isinstance(arr, Pending) else arr
            if data.shape != tuple(arr.shape) or data.dtype != arr.dtype:
                raise ValueError(f"{path}: tensor {name!r} fetched as {data.dtype}{data.shape}")
            f.write(np.ascontiguousarray(data).reshape(-1).view(np.uint8).data)  # no copy
            del data
    os.replace(tmp, path)
