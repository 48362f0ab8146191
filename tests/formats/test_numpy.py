"""sncli.formats.npy: .npy files and .npz archives, checked against NumPy's own reader
(``numpy.load(allow_pickle=False)``) on the same file, and σ against float64 SVD of what NumPy
returns."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sncli import MethodOptions, open_checkpoint, spectral_norms
from sncli.errors import CheckpointError
from sncli.formats import sniff_format
from sncli.numerics.spectral import Method


def _sigma64(array: np.ndarray) -> float:
    matrix = np.asarray(array, dtype=np.float64).reshape(array.shape[0], -1)
    return float(scipy.linalg.svdvals(matrix)[0])


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv1.weight": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "conv1.bias": rng.standard_normal(8).astype(np.float32),
        "fc.weight": np.asfortranarray(rng.standard_normal((10, 72))),  # float64, Fortran order
        "head.weight": rng.standard_normal((5, 10)).astype(">f4"),  # big-endian
        "half.weight": rng.standard_normal((6, 4)).astype(np.float16),
        "step": np.array(7, dtype=np.int64),
    }


@pytest.mark.parametrize("compressed", [False, True], ids=["savez", "savez_compressed"])
def test_npz_matches_numpy_load(tmp_path: Path, compressed: bool) -> None:
    arrays = _arrays()
    path = tmp_path / "weights.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    reference = np.load(path, allow_pickle=False)
    assert sniff_format(path) == "npz"
    with open_checkpoint(path) as ckpt:
        assert ckpt.format == "npz"
        assert set(ckpt.tensors) == set(reference.files)
        for name in reference.files:
            expected = reference[name]
            loaded = ckpt.load(name)
            assert ckpt.tensors[name].shape == expected.shape
            assert ckpt.tensors[name].dtype == str(expected.dtype.newbyteorder("="))
            assert np.array_equal(loaded.numpy(), expected), name
        report = spectral_norms(ckpt, options=MethodOptions(method=Method.EXACT))
    sigmas = {layer.name: layer.sigma for layer in report.layers}
    assert set(sigmas) == {"conv1.weight", "fc.weight", "head.weight", "half.weight"}
    for name, sigma in sigmas.items():
        assert sigma == pytest.approx(_sigma64(reference[name]), rel=1e-6), name


@pytest.mark.parametrize("name", ["fc.weight", "head.weight", "conv1.weight"])
def test_npy_matches_numpy_load(tmp_path: Path, name: str) -> None:
    array = _arrays()[name]
    path = tmp_path / f"{name}.npy"
    np.save(path, array)
    reference = np.load(path, allow_pickle=False)
    assert sniff_format(path) == "npy"
    with open_checkpoint(path) as ckpt:
        assert list(ckpt.tensors) == [name]  # named after the file
        assert np.array_equal(ckpt.load(name).numpy(), reference)
        assert any("named 'fc.weight'" in n or name in n for n in ckpt.notes)
        report = spectral_norms(ckpt, options=MethodOptions(method=Method.EXACT))
    assert report.layers[0].sigma == pytest.approx(_sigma64(reference), rel=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=4),
    dtype=st.sampled_from(["<f4", ">f8", "<f2", "<i2", ">u4", "|b1", "<c8", "|u1"]),
    fortran=st.booleans(),
)
def test_any_numeric_npy_round_trips(shape: list[int], dtype: str, fortran: bool) -> None:
    import tempfile

    rng = np.random.default_rng(1)
    array = (rng.standard_normal(shape) * 10).astype(dtype)
    if fortran:
        array = np.asfortranarray(array)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.npy"
        np.save(path, array)
        with open_checkpoint(path) as ckpt:
            loaded = ckpt.load("x")
            assert tuple(loaded.shape) == array.shape
            assert np.array_equal(loaded.numpy(), np.load(path, allow_pickle=False))


def test_object_array_is_refused_without_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "objects.npz"
    np.savez(path, w=np.eye(2), meta=np.array([{"lr": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="object array, which only pickle can read"):
        open_checkpoint(path)
    single = tmp_path / "objects.npy"
    np.save(single, np.array([None, 1], dtype=object), allow_pickle=True)
    with pytest.raises(CheckpointError, match="object array"):
        open_checkpoint(single)


def test_structured_and_string_arrays_are_listed_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "mixed.npz"
    np.savez(path, w=np.eye(3, dtype=np.float32), names=np.array(["a", "b"]))
    with open_checkpoint(path) as ckpt:
        assert "names" in ckpt.unsupported and "no PyTorch equivalent" in ckpt.unsupported["names"]
        report = spectral_norms(ckpt)
    assert [layer.name for layer in report.layers] == ["w"]
    assert any(s.name == "names" for s in report.skipped)


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_truncated_and_padded_npy(tmp_path: Path) -> None:
    blob = _npy_bytes(np.ones((4, 4), dtype=np.float32))
    path = tmp_path / "w.npy"
    path.write_bytes(blob[:-8])
    with pytest.raises(CheckpointError, match=r"truncated \.npy file: its header claims 64 bytes"):
        open_checkpoint(path)
    path.write_bytes(blob + b"\0" * 4)
    with pytest.raises(CheckpointError, match=r"padded \.npy file"):
        open_checkpoint(path)


def test_huge_claimed_shape_allocates_nothing(tmp_path: Path) -> None:
    blob = _npy_bytes(np.ones((2, 2), dtype=np.float32))
    header = {"descr": "<f4", "fortran_order": False, "shape": (2**40, 2**40)}
    import io

    from numpy.lib import format as npformat

    buffer = io.BytesIO()
    npformat.write_array_header_1_0(buffer, header)
    path = tmp_path / "w.npy"
    path.write_bytes(buffer.getvalue() + blob[-16:])
    with pytest.raises(CheckpointError, match=r"truncated \.npy file"):
        open_checkpoint(path)


def test_npz_member_lying_about_its_size(tmp_path: Path) -> None:
    """A member header claiming more expanded bytes than deflate can produce is refused."""
    path = tmp_path / "w.npz"
    np.savez(path, w=np.ones((4, 4), dtype=np.float32))
    blob = bytearray(path.read_bytes())
    # patch the uncompressed size (local header and central directory)
    struct.pack_into("<I", blob, 22, 2**31)
    central = blob.find(b"PK\x01\x02")
    struct.pack_into("<I", blob, central + 24, 2**31)
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="more than the file can hold"):
        open_checkpoint(path)


def test_npz_member_header_lies_about_shape(tmp_path: Path) -> None:
    path = tmp_path / "w.npz"
    member = _npy_bytes(np.ones((4, 4), dtype=np.float32)).replace(b"(4, 4)", b"(9, 4)")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("w.npy", member)
    with pytest.raises(CheckpointError, match="claims 144 bytes of data, the member holds 64"):
        open_checkpoint(path)


@pytest.mark.parametrize("name", ["../../evil.npy", "/etc/evil.npy"])
def test_npz_member_names_cannot_escape(tmp_path: Path, name: str) -> None:
    path = tmp_path / "w.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(name, _npy_bytes(np.eye(2)))
    with pytest.raises(CheckpointError, match="points outside the archive"):
        open_checkpoint(path)


@pytest.mark.parametrize("compressed", [False, True])
def test_flipped_bytes_fail_the_crc(tmp_path: Path, compressed: bool) -> None:
    path = tmp_path / "w.npz"
    rng = np.random.default_rng(0)  # incompressible, larger than zipfile's 4 KiB read-ahead
    (np.savez_compressed if compressed else np.savez)(path, w=rng.standard_normal((64, 64)))
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # inside the member's data
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=r"CRC-32|damaged npz"), open_checkpoint(path) as ckpt:
        ckpt.load("w")


def test_non_finite_values_are_flagged(tmp_path: Path) -> None:
    path = tmp_path / "w.npz"
    bad = np.eye(4, dtype=np.float32)
    bad[1, 2] = np.nan
    np.savez(path, **{"good.weight": np.eye(3, dtype=np.float32) * 2, "bad.weight": bad})
    with open_checkpoint(path) as ckpt:
        report = spectral_norms(ckpt)
    assert [layer.name for layer in report.layers] == ["good.weight"]
    assert report.layers[0].sigma == pytest.approx(2.0)
    assert any(s.name == "bad.weight" and "NaN" in s.reason for s in report.skipped)


def test_loading_one_array_reads_only_that_array(tmp_path: Path) -> None:
    path = tmp_path / "w.npz"
    np.savez(path, a=np.ones((3, 3)), b=np.zeros((2, 2)))
    with open_checkpoint(path) as ckpt:
        a = ckpt.load("a")
        assert a.dtype == torch.float64 and a.is_contiguous()
        a += 1  # a private copy: the file is never written through
    assert np.array_equal(np.load(path)["a"], np.ones((3, 3)))
