"""redjax.models.safetensors_io against the reference `safetensors` library, both directions."""

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from redjax.models import safetensors_io

DTYPES = [
    np.float64,
    np.float32,
    np.float16,
    ml_dtypes.bfloat16,
    np.int64,
    np.int32,
    np.int16,
    np.int8,
    np.uint8,
    np.bool_,
]
SHAPES = [(3, 5), (7,), (), (2, 3, 4), (0, 3)]


def sample(dtype, shape, rng) -> np.ndarray:
    """Random values that exercise sign, fraction and range of each dtype."""
    if dtype == np.bool_:
        return np.asarray(rng.random(shape) < 0.5)
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        return np.asarray(rng.integers(info.min, info.max, shape, endpoint=True, dtype=dtype))
    return np.asarray(rng.standard_normal(shape) * 100).astype(dtype)


def tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        f"{np.dtype(d).name}.{i}": sample(d, s, rng) for d in DTYPES for i, s in enumerate(SHAPES)
    }


def torch_view(x: np.ndarray) -> torch.Tensor:
    """A torch tensor with the same bits as x (torch cannot take ml_dtypes.bfloat16 directly)."""
    if x.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(x.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(x.copy())


def as_numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name, w in want.items():
        g = got[name]
        assert g.dtype == w.dtype, name
        assert g.shape == w.shape, name
        assert np.asarray(g).tobytes() == np.asarray(w).tobytes(), name  # bit-exact, NaN-safe


def test_write_is_read_by_safetensors(tmp_path):
    want = tensors()
    path = str(tmp_path / "a.safetensors")
    safetensors_io.write(path, want, metadata={"format": "pt", "note": "redjax"})

    plain = {k: v for k, v in want.items() if v.dtype != ml_dtypes.bfloat16}
    got = safetensors.numpy.load_file(path)
    assert_same({k: got[k] for k in plain}, plain)
    got = {k: as_numpy(t) for k, t in safetensors.torch.load_file(path).items()}
    assert_same(got, want)
    with safetensors.safe_open(path, "np") as f:
        assert f.metadata() == {"format": "pt", "note": "redjax"}


def test_reads_what_safetensors_writes(tmp_path):
    want = tensors(seed=1)
    path = str(tmp_path / "b.safetensors")
    safetensors.torch.save_file({k: torch_view(v) for k, v in want.items()}, path)
    assert_same(dict(safetensors_io.iter_tensors(path)), want)

    plain = {k: v for k, v in want.items() if v.dtype != ml_dtypes.bfloat16}
    path = str(tmp_path / "c.safetensors")
    safetensors.numpy.save_file(plain, path)
    assert_same(dict(safetensors_io.iter_tensors(path)), plain)
    header, start = safetensors_io.read_header(path)
    assert sorted(header) == sorted(plain) and start % 8 == 0


def test_reads_are_memory_maps_and_noncontiguous_writes(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = str(tmp_path / "d.safetensors")
    safetensors_io.write(path, {"t": x.T, "s": x[:, 1]})  # non-contiguous views
    got = dict(safetensors_io.iter_tensors(path))
    np.testing.assert_array_equal(got["t"], x.T)
    np.testing.assert_array_equal(got["s"], x[:, 1])
    np.testing.assert_array_equal(safetensors.numpy.load_file(path)["t"], x.T)
    assert isinstance(got["t"].base, np.memmap) or isinstance(got["t"], np.memmap)
    assert not got["t"].flags.writeable


def test_errors_name_the_file_and_tensor(tmp_path):
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"abc")
    with pytest.raises(ValueError, match="short.safetensors.*not a safetensors file"):
        safetensors_io.read_header(str(short))

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes((16).to_bytes(8, "little") + b"\xff" * 16)
    with pytest.raises(ValueError, match="garbage.safetensors.*not a safetensors file"):
        safetensors_io.read_header(str(garbage))

    path = tmp_path / "cut.safetensors"
    safetensors_io.write(str(path), {"w": np.ones((64, 64), np.float32)})
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"cut.safetensors: tensor 'w'.*truncated"):
        list(safetensors_io.iter_tensors(str(path)))

    with pytest.raises(ValueError, match=r"x.safetensors: tensor 'z'.*complex64"):
        safetensors_io.write(str(tmp_path / "x.safetensors"), {"z": np.zeros(2, np.complex64)})
