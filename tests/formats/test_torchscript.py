"""sncli.formats.torchscript: TorchScript archives' tensors, read without running their code,
checked against PyTorch's own reader (``torch.jit.load(...).state_dict()``, run here only on
archives the test itself wrote) and σ against float64 SVD of what PyTorch returns."""

from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from pathlib import Path

import pytest
import scipy.linalg
import torch
from torch import nn

from sncli import MethodOptions, open_checkpoint, spectral_norms
from sncli.errors import CheckpointError, UnsafePickleError
from sncli.formats import sniff_format
from sncli.numerics.spectral import Method


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(2)])
        self.head = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.stem(x)).mean((2, 3))
        for block in self.blocks:
            x = block(x)
        return self.head(x) * self.scale


def _save(module: torch.jit.ScriptModule, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(module, str(path))
    return path


def _scripted(seed: int = 0) -> torch.jit.ScriptModule:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(Net().eval())


def _reference(path: Path) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return dict(torch.jit.load(str(path)).state_dict())


def _sigma64(tensor: torch.Tensor) -> float:
    matrix = tensor.detach().double().reshape(tensor.shape[0], -1).numpy()
    return float(scipy.linalg.svdvals(matrix)[0])


@pytest.mark.parametrize("how", ["script", "trace", "half"])
def test_tensors_match_torch_jit_load(tmp_path: Path, how: str) -> None:
    module = _scripted()
    if how == "trace":
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.trace(Net().eval(), torch.randn(1, 3, 8, 8))
    elif how == "half":
        module = module.half()
    path = _save(module, tmp_path / "model.pt")
    reference = _reference(path)
    assert sniff_format(path) == "torchscript"
    with open_checkpoint(path) as ckpt:
        assert ckpt.format == "torchscript"
        assert set(ckpt.tensors) == set(reference)
        for name, expected in reference.items():
            loaded = ckpt.load(name)
            assert ckpt.tensors[name].shape == tuple(expected.shape)
            assert loaded.dtype == expected.dtype and torch.equal(loaded, expected), name
        assert any("graph (code/) was not analysed" in note for note in ckpt.notes)
        report = spectral_norms(ckpt, options=MethodOptions(method=Method.EXACT))
    sigmas = {layer.name: layer.sigma for layer in report.layers}
    assert set(sigmas) == {
        "stem.weight",
        "blocks.0.weight",
        "blocks.1.weight",
        "head.0.weight",
        "head.2.weight",
    }
    for name, sigma in sigmas.items():
        assert sigma == pytest.approx(_sigma64(reference[name]), rel=1e-6), name


def test_frozen_graph_constants_are_listed_not_classified(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frozen = torch.jit.freeze(_scripted())
    path = _save(frozen, tmp_path / "frozen.pt")
    with open_checkpoint(path) as ckpt:
        constants = [n for n in ckpt.tensors if n.startswith("constants.")]
        assert constants, list(ckpt.tensors)
        assert any("torch.jit.freeze" in note for note in ckpt.notes)
        shapes = sorted(tuple(ckpt.load(n).shape) for n in constants)
    assert (8, 3, 3, 3) in shapes and (4, 16) in shapes


def test_code_is_never_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.jit.load and torch.load are never called (either would compile the archive)."""
    path = _save(_scripted(), tmp_path / "model.pt")

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the archive's code must not be loaded")

    monkeypatch.setattr(torch.jit, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch._C, "import_ir_module", refuse, raising=False)
    with open_checkpoint(path) as ckpt:
        for name in ckpt.tensors:
            ckpt.load(name)


class _Payload:
    def __init__(self, func: object, args: tuple[object, ...]) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.func, self.args  # type: ignore[return-value]


def _replace_member(path: Path, suffix: str, data: bytes, *, compress: bool = False) -> None:
    source = zipfile.ZipFile(io.BytesIO(path.read_bytes()))
    with zipfile.ZipFile(path, "w") as out:
        for info in source.infolist():
            payload = data if info.filename.endswith(suffix) else source.read(info)
            kind = zipfile.ZIP_DEFLATED if compress and info.filename.endswith(suffix) else None
            out.writestr(info.filename, payload, compress_type=kind or info.compress_type)


@pytest.mark.parametrize("func", ["exec", "system"])
def test_pickle_with_code_is_refused(tmp_path: Path, func: str) -> None:
    import builtins
    import os

    marker = tmp_path / "PWNED"
    callable_ = builtins.exec if func == "exec" else os.system
    argument = f"open({str(marker)!r}, 'w').close()" if func == "exec" else f"touch {marker}"
    path = _save(_scripted(), tmp_path / "model.pt")
    _replace_member(path, "/data.pkl", pickle.dumps({"x": _Payload(callable_, (argument,))}, 2))
    with pytest.raises(UnsafePickleError, match="can run code: the file is probably malicious"):
        open_checkpoint(path)
    assert not marker.exists()


def test_storage_size_lies_are_refused(tmp_path: Path) -> None:
    path = _save(_scripted(), tmp_path / "model.pt")
    infos = [i for i in zipfile.ZipFile(path).infolist() if "/data/" in i.filename]
    largest = max(infos, key=lambda i: i.file_size)
    _replace_member(path, largest.filename, b"\0" * 4)
    with pytest.raises(CheckpointError, match="holds 4 bytes, not"):
        open_checkpoint(path)


def test_compressed_storage_is_refused(tmp_path: Path) -> None:
    path = _save(_scripted(), tmp_path / "model.pt")
    infos = [i for i in zipfile.ZipFile(path).infolist() if "/data/" in i.filename]
    name = max(infos, key=lambda i: i.file_size).filename
    _replace_member(path, name, zipfile.ZipFile(path).read(name), compress=True)
    with pytest.raises(CheckpointError, match="compressed"):
        open_checkpoint(path)


def test_flipped_weight_bytes_fail_the_crc(tmp_path: Path) -> None:
    path = _save(_scripted(), tmp_path / "model.pt")
    blob = bytearray(path.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(blob))) as archive:
        infos = [i for i in archive.infolist() if "/data/" in i.filename]
        info = max(infos, key=lambda i: i.file_size)
    name_len = int.from_bytes(blob[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(blob[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    blob[start] ^= 0xFF
    path.write_bytes(bytes(blob))
    with open_checkpoint(path) as ckpt, pytest.raises(CheckpointError, match="CRC-32"):
        for name in ckpt.tensors:
            ckpt.load(name)


def test_truncated_archive(tmp_path: Path) -> None:
    path = _save(_scripted(), tmp_path / "model.pt")
    path.write_bytes(path.read_bytes()[:-300])
    with pytest.raises(CheckpointError):
        open_checkpoint(path)
