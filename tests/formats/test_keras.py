"""sncli.formats.keras: ``.keras`` archives and ``.h5`` weight files, checked against h5py's own
reading of the same file and, on files Keras itself wrote (``data/``, made by
``make_keras_fixtures.py``), against Keras's own outputs: PyTorch ops on the weights as sncli
reports them compute what Keras computed, which proves the orientation."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.linalg
import torch

from sncli import MethodOptions, open_checkpoint, spectral_norms
from sncli.errors import CheckpointError
from sncli.formats import sniff_format
from sncli.layers import LayerKind, classify
from sncli.numerics.spectral import Method

DATA = Path(__file__).resolve().parent / "data"


def _sigma64(array: np.ndarray) -> float:
    """σ of a Keras kernel as stored: (k…, in, out) reshaped to (k·in, out) has the same
    singular values as PyTorch's (out, in·k) reshape of the permuted kernel."""
    matrix = np.asarray(array, np.float64).reshape(-1, array.shape[-1])
    return float(scipy.linalg.svdvals(matrix)[0])


@pytest.mark.parametrize("name", ["keras_small.keras", "keras_small_legacy.h5"])
def test_keras_made_files_compute_what_keras_computed(name: str) -> None:
    path = DATA / name
    io_data = np.load(DATA / "keras_small_io.npz")
    x = torch.from_numpy(io_data["x"]).permute(0, 3, 1, 2)  # NHWC → NCHW
    assert sniff_format(path) == ("keras" if name.endswith(".keras") else "hdf5")
    with open_checkpoint(path) as ckpt:
        names = set(ckpt.tensors)
        conv = "conv2d" if "conv2d.weight" in names else "conv"
        fc = "dense" if "dense.weight" in names else "fc"
        head = "dense_1" if "dense_1.weight" in names else "head"
        weight = ckpt.load(f"{conv}.weight")
        assert tuple(weight.shape) == (3, 2, 3, 3)  # (out, in, kh, kw)
        conv_out = torch.nn.functional.conv2d(x, weight, ckpt.load(f"{conv}.bias"))
        np.testing.assert_allclose(conv_out.permute(0, 2, 3, 1).numpy(), io_data["conv"], atol=1e-5)
        flat = conv_out.permute(0, 2, 3, 1).reshape(3, -1)  # Keras flattens channels-last
        assert tuple(ckpt.tensors[f"{fc}.weight"].shape) == (4, 48)  # (out, in)
        hidden = torch.nn.functional.linear(
            flat, ckpt.load(f"{fc}.weight"), ckpt.load(f"{fc}.bias")
        )
        y = torch.nn.functional.linear(hidden, ckpt.load(f"{head}.weight"))
        np.testing.assert_allclose(y.numpy(), io_data["y"], atol=1e-5)
        assert any("PyTorch's orientation" in note for note in ckpt.notes)
        kinds = {layer.name: layer.kind for layer in classify(ckpt).layers}
        report = spectral_norms(ckpt, options=MethodOptions(method=Method.EXACT))
    assert kinds == {
        f"{conv}.weight": LayerKind.CONV2D,
        f"{fc}.weight": LayerKind.LINEAR,
        f"{head}.weight": LayerKind.LINEAR,
    }
    raw = _raw_kernels(path)
    for layer in report.layers:
        assert layer.sigma == pytest.approx(_sigma64(raw[layer.name.split(".")[0]]), rel=1e-6)


def _raw_kernels(path: Path) -> dict[str, np.ndarray]:
    """Each layer's kernel as h5py reads it from the file, by the layer name sncli gives."""
    found: dict[str, np.ndarray] = {}

    def visit(name: str, item: object) -> None:
        if isinstance(item, h5py.Dataset):
            parts = name.split("/")
            if parts[-1] in ("kernel", "kernel:0"):
                found[parts[-2]] = item[()]
            elif parts[-2:] == ["vars", "0"] and item.ndim >= 2 and parts[0] == "layers":
                found[parts[-3]] = item[()]

    if path.suffix == ".keras":
        with (
            zipfile.ZipFile(path) as archive,
            h5py.File(io.BytesIO(archive.read("model.weights.h5"))) as h5,
        ):
            h5.visititems(visit)
    else:
        with h5py.File(path) as h5:
            h5.visititems(visit)
    return found


def _keras3_weights(path: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A ``save_weights`` file in Keras 3's layout, written with h5py; returns the raw arrays."""
    arrays = {
        "layers/embedding/vars/0": rng.standard_normal((20, 8)),
        "layers/dense/vars/0": rng.standard_normal((8, 6)),
        "layers/dense/vars/1": rng.standard_normal(6),
        "layers/batch_normalization/vars/0": rng.random(6) + 0.5,
        "layers/batch_normalization/vars/1": rng.standard_normal(6),
        "layers/batch_normalization/vars/2": rng.standard_normal(6),
        "layers/batch_normalization/vars/3": rng.random(6) + 0.5,
        "layers/layer_normalization/vars/0": rng.random(6),
        "layers/layer_normalization/vars/1": rng.random(6),
        "layers/conv1d/vars/0": rng.standard_normal((5, 6, 4)),
        "layers/conv1d/vars/1": rng.standard_normal(4),
        "layers/my_custom_block/vars/0": rng.standard_normal((4, 3)),
        "layers/my_custom_block/vars/1": rng.standard_normal(3),
        "optimizer/vars/0": np.array(3.0),
        "optimizer/vars/1": rng.standard_normal((8, 6)),
    }
    with h5py.File(path, "w") as h5:
        for name, array in arrays.items():
            h5.create_dataset(name, data=array.astype(np.float32))
        h5.create_group("vars")
    return arrays


def test_keras3_layout_names_roles_and_orientation(tmp_path: Path) -> None:
    path = tmp_path / "model.weights.h5"
    arrays = _keras3_weights(path, np.random.default_rng(0))
    with open_checkpoint(path) as ckpt:
        assert ckpt.format == "hdf5"
        expected = {
            "embedding.weight": arrays["layers/embedding/vars/0"],  # (vocab, dim), as PyTorch
            "dense.weight": arrays["layers/dense/vars/0"].T,
            "dense.bias": arrays["layers/dense/vars/1"],
            "batch_normalization.weight": arrays["layers/batch_normalization/vars/0"],
            "batch_normalization.bias": arrays["layers/batch_normalization/vars/1"],
            "batch_normalization.running_mean": arrays["layers/batch_normalization/vars/2"],
            "batch_normalization.running_var": arrays["layers/batch_normalization/vars/3"],
            "layer_normalization.weight": arrays["layers/layer_normalization/vars/0"],
            "layer_normalization.bias": arrays["layers/layer_normalization/vars/1"],
            "conv1d.weight": arrays["layers/conv1d/vars/0"].transpose(2, 1, 0),
            "conv1d.bias": arrays["layers/conv1d/vars/1"],
            "my_custom_block.weight": arrays["layers/my_custom_block/vars/0"].T,
            "my_custom_block.bias": arrays["layers/my_custom_block/vars/1"],
        }
        assert set(ckpt.tensors) == set(expected)
        for name, array in expected.items():
            np.testing.assert_array_equal(ckpt.load(name).numpy(), array.astype(np.float32))
            assert ckpt.tensors[name].shape == array.shape
        assert any("2 optimizer variables skipped" in n for n in ckpt.notes)
        assert any("unknown class (my_custom_block)" in n for n in ckpt.notes)
        classification = classify(ckpt)
    kinds = {layer.name: layer.kind for layer in classification.layers}
    assert kinds == {
        "embedding.weight": LayerKind.EMBEDDING,
        "dense.weight": LayerKind.LINEAR,
        "conv1d.weight": LayerKind.CONV1D,
        "my_custom_block.weight": LayerKind.LINEAR,
    }
    skipped = {s.name: s.reason for s in classification.skipped}
    assert skipped["batch_normalization.weight"] == "norm scale (1-D)"
    assert skipped["layer_normalization.weight"] == "norm scale (1-D)"


def test_tf_keras_2_layout(tmp_path: Path) -> None:
    """tf.keras 2 ``save_weights('x.h5')``: ``layer/layer/kernel:0`` with ``weight_names``."""
    rng = np.random.default_rng(1)
    kernel = rng.standard_normal((10, 7)).astype(np.float32)
    conv = rng.standard_normal((3, 3, 2, 5)).astype(np.float32)
    path = tmp_path / "weights.h5"
    with h5py.File(path, "w") as h5:
        h5.attrs["layer_names"] = [b"dense_2", b"conv2d"]
        for layer, names in (("dense_2", ["kernel:0", "bias:0"]), ("conv2d", ["kernel:0"])):
            group = h5.create_group(layer)
            group.attrs["weight_names"] = [f"{layer}/{n}".encode() for n in names]
        h5["dense_2/dense_2/kernel:0"] = kernel
        h5["dense_2/dense_2/bias:0"] = np.zeros(7, np.float32)
        h5["conv2d/conv2d/kernel:0"] = conv
    with open_checkpoint(path) as ckpt:
        assert set(ckpt.tensors) == {"dense_2.weight", "dense_2.bias", "conv2d.weight"}
        np.testing.assert_array_equal(ckpt.load("dense_2.weight").numpy(), kernel.T)
        np.testing.assert_array_equal(
            ckpt.load("conv2d.weight").numpy(), conv.transpose(3, 2, 0, 1)
        )
        report = spectral_norms(ckpt, options=MethodOptions(method=Method.EXACT))
    sigmas = {layer.name: layer.sigma for layer in report.layers}
    assert sigmas["dense_2.weight"] == pytest.approx(_sigma64(kernel), rel=1e-6)
    assert sigmas["conv2d.weight"] == pytest.approx(_sigma64(conv), rel=1e-6)


def test_deflated_keras_archive_is_read_in_place(tmp_path: Path) -> None:
    path = tmp_path / "model.keras"
    with (
        zipfile.ZipFile(DATA / "keras_small.keras") as source,
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out,
    ):
        for info in source.infolist():
            out.writestr(info.filename, source.read(info))
    with open_checkpoint(DATA / "keras_small.keras") as stored, open_checkpoint(path) as deflated:
        assert set(stored.tensors) == set(deflated.tensors)
        for name in stored.tensors:
            assert torch.equal(stored.load(name), deflated.load(name))


def test_external_links_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "elsewhere.h5"
    with h5py.File(secret, "w") as h5:
        h5["kernel"] = np.eye(3, dtype=np.float32)
    path = tmp_path / "weights.h5"
    with h5py.File(path, "w") as h5:
        h5["dense/dense/kernel:0"] = np.eye(3, dtype=np.float32)
        h5["dense/stolen"] = h5py.ExternalLink(str(secret), "/kernel")
    with pytest.raises(
        CheckpointError, match=r"external link 'dense/stolen'.*another file; refused"
    ):
        open_checkpoint(path)


def test_virtual_datasets_and_external_storage_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as h5:
        h5["data"] = np.ones((4, 4), np.float32)
    path = tmp_path / "virtual.h5"
    layout = h5py.VirtualLayout(shape=(4, 4), dtype=np.float32)
    layout[:] = h5py.VirtualSource(str(other), "data", shape=(4, 4))
    with h5py.File(path, "w") as h5:
        h5.create_virtual_dataset("dense/dense/kernel:0", layout)
    with pytest.raises(CheckpointError, match="is virtual"):
        open_checkpoint(path)
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.ones(16, np.float32).tobytes())
    path = tmp_path / "external.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("k", shape=(4, 4), dtype=np.float32, external=[(str(raw), 0, 64)])
    with pytest.raises(CheckpointError, match="external files; refused"):
        open_checkpoint(path)


def test_soft_links_are_not_followed(tmp_path: Path) -> None:
    path = tmp_path / "weights.h5"
    with h5py.File(path, "w") as h5:
        h5["dense/dense/kernel:0"] = np.eye(3, dtype=np.float32)
        h5["alias"] = h5py.SoftLink("/dense")
    with open_checkpoint(path) as ckpt:
        assert list(ckpt.tensors) == ["dense.weight"]


def test_claimed_sizes_beyond_what_the_file_stores(tmp_path: Path) -> None:
    """A chunked dataset never written: h5py would allocate (and fill) its full claimed size."""
    path = tmp_path / "weights.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset(
            "dense/dense/kernel:0", shape=(2**20, 2**20), dtype=np.float32, chunks=True
        )
    with pytest.raises(CheckpointError, match="claims 4398046511104 bytes"):
        open_checkpoint(path)


def test_truncated_and_garbage_files(tmp_path: Path) -> None:
    path = tmp_path / "weights.h5"
    _keras3_weights(path, np.random.default_rng(0))
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(CheckpointError, match="cannot read Keras/HDF5 weights"):
        open_checkpoint(path)


def test_non_finite_weights_are_flagged(tmp_path: Path) -> None:
    path = tmp_path / "weights.h5"
    bad = np.ones((4, 4), np.float32)
    bad[0, 0] = np.inf
    with h5py.File(path, "w") as h5:
        h5["layers/dense/vars/0"] = bad
        h5["layers/dense_1/vars/0"] = np.eye(4, dtype=np.float32) * 3
    with open_checkpoint(path) as ckpt:
        report = spectral_norms(ckpt)
    assert [(layer.name, layer.sigma) for layer in report.layers] == [("dense_1.weight", 3.0)]
    assert any(s.name == "dense.weight" and "Inf" in s.reason for s in report.skipped)
