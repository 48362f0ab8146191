"""Exit codes and one-line errors a CI gate relies on (issue 10, defect 7 and the small bits of 8).

Checkpoints are built with real architectures' key names and shapes (torchvision ResNet's
``conv1``/``fc``, an SN-GAN discriminator, a Lightning ``LightningModule`` checkpoint).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import invoke, svd_sigma
from safetensors.torch import save_file

from sncli.errors import EXIT_BOUND_EXCEEDED, EXIT_ERROR, EXIT_USAGE


def _resnet_head(seed: int = 0) -> dict[str, torch.Tensor]:
    """torchvision ResNet-18's stem and classifier (names and shapes), scaled down to 16 classes."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "conv1.weight": torch.randn(64, 3, 7, 7, generator=gen) * 0.05,
        "bn1.weight": torch.rand(64, generator=gen) + 0.5,
        "bn1.bias": torch.randn(64, generator=gen) * 0.1,
        "bn1.running_mean": torch.randn(64, generator=gen) * 0.1,
        "bn1.running_var": torch.rand(64, generator=gen) + 0.5,
        "bn1.num_batches_tracked": torch.tensor(100),
        "fc.weight": torch.randn(16, 512, generator=gen) * 0.05,
        "fc.bias": torch.zeros(16),
    }


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- --fail-above, --device: usage errors ---------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "-1e-9"])
def test_fail_above_rejects_a_threshold_no_bound_can_exceed(tmp_path: Path, value: str) -> None:
    path = tmp_path / "resnet_head.safetensors"
    save_file(_resnet_head(), str(path))
    code, out, err = invoke("lipschitz", str(path), "--fail-above", value)
    assert code == EXIT_USAGE and out == ""
    assert "--fail-above" in err and "finite number ≥ 0" in err


def test_fail_above_zero_is_a_gate_that_fails(tmp_path: Path) -> None:
    path = tmp_path / "resnet_head.safetensors"
    save_file(_resnet_head(), str(path))
    code, _, err = invoke("lipschitz", str(path), "--fail-above", "0", "-q")
    assert code == EXIT_BOUND_EXCEEDED and "exceeds --fail-above 0" in err


@pytest.mark.parametrize("device", ["tpu", "mps", "cuda:x", "gpu"])
def test_device_other_than_cpu_or_cuda_is_a_usage_error(tmp_path: Path, device: str) -> None:
    path = tmp_path / "resnet_head.safetensors"
    save_file(_resnet_head(), str(path))
    code, out, err = invoke("inspect", str(path), "--device", device)
    assert code == EXIT_USAGE and out == ""
    assert "--device" in err and "cpu, cuda or cuda:N" in err


# --- --key on a plain state dict --------------------------------------------------------------


def test_key_on_a_safetensors_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file(_resnet_head(), str(path))
    code, out, err = invoke("inspect", str(path), "--key", "foo")
    assert code == EXIT_ERROR and out == ""
    assert err.startswith(f"sncli: error: {path}: has no key 'foo'")
    assert err.count("\n") == 1


def test_key_on_a_plain_torch_state_dict_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(_resnet_head(), path)
    for command in ("inspect", "lipschitz"):
        code, out, err = invoke(command, str(path), "--key", "foo")
        assert code == EXIT_ERROR and out == ""
        assert err.startswith(f"sncli: error: {path}: has no key 'foo' (it is a plain state dict")
    out_path = tmp_path / "out.pth"
    code, _, err = invoke("normalize", str(path), "--key", "foo", "-o", str(out_path))
    assert code == EXIT_ERROR and "has no key 'foo'" in err and not out_path.exists()


# --- formats recognised but not read yet ------------------------------------------------------


def _onnx_bytes() -> bytes:
    """The first fields of an ONNX ModelProto as torch.onnx.export writes them: ir_version 8,
    producer_name "pytorch", producer_version "2.13.0", then a (truncated) graph."""
    return b"\x08\x08\x12\x07pytorch\x1a\x062.13.0:\x04\x0a\x02\x08\x01"


@pytest.mark.parametrize("name", ["model.onnx", "model.bin"])
def test_onnx_is_not_supported_yet(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(_onnx_bytes())
    code, _, err = invoke("inspect", str(path))
    assert code == EXIT_ERROR
    assert err == f"sncli: error: {path}: ONNX models are not supported yet\n"


@pytest.mark.parametrize("name", ["weights.npz", "weights.bin"])
@pytest.mark.parametrize("compressed", [False, True])
def test_npz_is_not_supported_yet(tmp_path: Path, name: str, compressed: bool) -> None:
    path = tmp_path / name
    arrays = {k: v.numpy() for k, v in _resnet_head().items()}
    with path.open("wb") as handle:
        (np.savez_compressed if compressed else np.savez)(handle, **arrays)
    code, _, err = invoke("inspect", str(path))
    assert code == EXIT_ERROR
    assert err == f"sncli: error: {path}: NumPy .npz archives are not supported yet\n"


# --- nn.Parameter tensors: no autograd warning, no crash ---------------------------------------


def test_parameters_saved_with_requires_grad_are_measured_quietly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
    fc = torch.nn.Linear(512, 16)
    path = tmp_path / "params.pt"
    # Saving the Parameters themselves (not .state_dict()) keeps requires_grad=True.
    torch.save({"conv1.weight": conv.weight, "fc.weight": fc.weight, "fc.bias": fc.bias}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method in ("auto", "exact", "dense", "lanczos", "power"):
            code, out, err = invoke("inspect", str(path), "-m", method, "--format", "json", "-q")
            assert code == 0 and err == "", (method, err)
            sigmas = {layer["name"]: layer["sigma"] for layer in json.loads(out)["layers"]}
            assert sigmas["fc.weight"] == pytest.approx(svd_sigma(fc.weight.detach()), rel=1e-3)
        code, out, err = invoke("lipschitz", str(path), "--format", "json", "-q")
        assert code == 0 and err == "", err
        code, _, err = invoke("lipschitz", str(path), "--certified", "-q")
        assert code == 0 and err == "", err
        code, _, err = invoke("normalize", str(path), "-o", str(tmp_path / "sn.pt"), "-q")
        assert code == 0 and err == "", err
    written = torch.load(tmp_path / "sn.pt", weights_only=True)
    assert svd_sigma(written["fc.weight"]) == pytest.approx(1.0, rel=1e-6)
    assert svd_sigma(written["conv1.weight"]) == pytest.approx(1.0, rel=1e-6)


# --- the legacy-pickle note -------------------------------------------------------------------


def test_legacy_pickle_note_once_per_run_and_hidden_by_quiet(tmp_path: Path) -> None:
    path = tmp_path / "resnet18_legacy.pth"
    torch.save(_resnet_head(), path, _use_new_zipfile_serialization=False)
    for command in ("inspect", "lipschitz"):
        code, _, err = invoke(command, str(path))
        assert code == 0 and err.count("legacy (non-zip) PyTorch file") == 1, err
        code, _, err = invoke(command, str(path), "-q")
        assert code == 0 and err == "", err
    code, _, err = invoke("normalize", str(path), "-o", str(tmp_path / "sn.pth"))
    assert code == 0 and err.count("legacy (non-zip) PyTorch file") == 1, err
    code, _, err = invoke("normalize", str(path), "-o", str(tmp_path / "sn2.pth"), "-q")
    assert code == 0 and err == "", err
