"""Exit codes and one-line errors a CI gate relies on (issue 10, defect 7 and the small bits of 8).

Checkpoints are built with real architectures' key names and shapes (torchvision ResNet's
``conv1``/``fc``, an SN-GAN discriminator, a Lightning ``LightningModule`` checkpoint).
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import invoke, svd_sigma
from safetensors.torch import save_file

from sncli.errors import EXIT_BOUND_EXCEEDED, EXIT_ERROR, EXIT_NO_LAYERS, EXIT_USAGE


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
def test_truncated_onnx_is_one_line(tmp_path: Path, name: str) -> None:
    """ONNX is read now (tests/formats/test_onnx.py); a truncated one is a one-line error."""
    path = tmp_path / name
    path.write_bytes(_onnx_bytes()[:8])  # producer_name claims 7 bytes, 4 are there
    code, _, err = invoke("inspect", str(path))
    assert code == EXIT_ERROR
    assert err.startswith(f"sncli: error: {path}: not a valid ONNX model") and err.count("\n") == 1


@pytest.mark.parametrize("name", ["weights.npz", "weights.bin"])
@pytest.mark.parametrize("compressed", [False, True])
def test_npz_is_read(tmp_path: Path, name: str, compressed: bool) -> None:
    """A NumPy archive (recognised by its first member even when named .bin) is inspected."""
    path = tmp_path / name
    state = _resnet_head()
    arrays = {k: v.numpy() for k, v in state.items()}
    with path.open("wb") as handle:
        (np.savez_compressed if compressed else np.savez)(handle, **arrays)
    code, out, err = invoke("inspect", str(path), "--format", "json", "--method", "dense")
    assert code == 0, err
    report = json.loads(out)
    assert report["format"] == "npz"
    sigmas = {layer["name"]: layer["sigma"] for layer in report["layers"]}
    assert sigmas == pytest.approx({k: svd_sigma(state[k]) for k in ("conv1.weight", "fc.weight")})


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


# --- all-NaN checkpoints, normalize with nothing to do ----------------------------------------


def _nan_resnet_head() -> dict[str, torch.Tensor]:
    state = _resnet_head()
    state["conv1.weight"] = torch.full_like(state["conv1.weight"], float("nan"))
    state["fc.weight"] = torch.full_like(state["fc.weight"], float("nan"))
    return state


def test_inspect_of_an_all_nan_checkpoint_fails(tmp_path: Path) -> None:
    path = tmp_path / "diverged.safetensors"
    save_file(_nan_resnet_head(), str(path))
    for fmt in ("table", "json", "csv"):
        code, out, err = invoke("inspect", str(path), "--format", fmt)
        assert code == EXIT_ERROR and out == ""
        assert err.startswith(f"sncli: error: {path}: no layer could be measured: all 2 selected")
        assert "conv1.weight (non-finite values (9408 NaN, 0 Inf))" in err
        assert err.count("\n") == 1


def test_inspect_with_some_nan_layers_still_reports_the_others(tmp_path: Path) -> None:
    state = _resnet_head()
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "half.safetensors"
    save_file(state, str(path))
    code, out, _ = invoke("inspect", str(path), "--format", "json", "-q")
    assert code == 0
    data = json.loads(out)
    assert [layer["name"] for layer in data["layers"]] == ["fc.weight"]
    assert data["summary"]["analysed"] == 1
    assert {"name": "conv1.weight", "reason": "non-finite values (1 NaN, 0 Inf)"} in data["skipped"]


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_normalize_with_every_layer_skipped_writes_nothing(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "diverged.safetensors"
    save_file(_nan_resnet_head(), str(path))
    before = path.read_bytes()
    out_path = tmp_path / "out.safetensors"
    code, out, err = invoke("normalize", str(path), "-o", str(out_path), "--format", fmt)
    assert code == EXIT_NO_LAYERS and out == ""
    assert err.splitlines()[-1] == (
        f"sncli: error: {path}: nothing to normalize: all 2 selected layers were skipped "
        "(non-finite values); nothing written"
    )
    assert "sncli: warning: fc.weight: not normalized: non-finite values" in err
    assert not out_path.exists() and _files(tmp_path) == ["diverged.safetensors"]
    code, _, _ = invoke("normalize", str(path), "--in-place")
    assert code == EXIT_NO_LAYERS and path.read_bytes() == before
    # A dry run shows the plan, and exits like the real run would.
    code, out, err = invoke("normalize", str(path), "--dry-run", "--format", fmt)
    assert code == EXIT_NO_LAYERS and "conv1.weight" in out and "nothing to normalize" in err


def test_normalize_of_zero_weights_writes_nothing(tmp_path: Path) -> None:
    state = _resnet_head()
    state["conv1.weight"].zero_()
    state["fc.weight"].zero_()
    path = tmp_path / "zeros.pt"
    torch.save(state, path)
    code, _, err = invoke("normalize", str(path), "-o", str(tmp_path / "out.pt"))
    assert code == EXIT_NO_LAYERS and "zero weight (σ = 0)" in err
    assert not (tmp_path / "out.pt").exists()


def test_normalize_clip_with_every_layer_below_target_still_succeeds(tmp_path: Path) -> None:
    """Not "nothing to normalize": the layers were measured and already meet the target."""
    path = tmp_path / "resnet_head.safetensors"
    save_file(_resnet_head(), str(path))
    out_path = tmp_path / "out.safetensors"
    code, _, _ = invoke(
        "normalize", str(path), "-o", str(out_path), "--mode", "clip", "--target", "100", "-q"
    )
    assert code == 0 and out_path.exists()


def test_normalize_help_offers_only_table_and_json() -> None:
    code, out, _ = invoke("normalize", "--help")
    assert code == 0
    option = next(line for line in out.splitlines() if "--format" in line)
    assert "table|json" in option and "csv" not in option
    code, _, err = invoke("normalize", "x.safetensors", "--dry-run", "--format", "csv")
    assert code == EXIT_USAGE and "csv" in err


# --- inspect --top only cuts the list --------------------------------------------------------


def test_top_keeps_the_summary_of_every_analysed_layer(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(1)
    # VGG-11's classifier names and (scaled-down) shapes.
    state = {
        "features.0.weight": torch.randn(64, 3, 3, 3, generator=gen),
        "classifier.0.weight": torch.randn(64, 128, generator=gen),
        "classifier.3.weight": torch.randn(64, 64, generator=gen) * 3,
        "classifier.6.weight": torch.randn(10, 64, generator=gen) * 0.1,
    }
    path = tmp_path / "vgg11.safetensors"
    save_file(state, str(path))
    code, out, _ = invoke("inspect", str(path), "--format", "json", "--top", "1", "-q")
    assert code == 0
    data = json.loads(out)
    assert [layer["name"] for layer in data["layers"]] == ["classifier.3.weight"]
    assert data["summary"]["analysed"] == 4
    largest = max(state, key=lambda n: svd_sigma(state[n]))
    assert data["summary"]["largest"]["name"] == largest
    assert data["summary"]["largest"]["sigma"] == pytest.approx(svd_sigma(state[largest]), 1e-4)
    # The smallest σ shown last with --reverse: the summary still names the largest of all.
    code, out, _ = invoke("inspect", str(path), "--format", "json", "--top", "1", "--reverse")
    data = json.loads(out)
    assert data["layers"][0]["name"] == "classifier.6.weight"
    assert data["summary"] == {**data["summary"], "analysed": 4}
    assert data["summary"]["largest"]["name"] == largest
    code, out, _ = invoke("inspect", str(path), "--top", "2", "-q")
    assert "4 layers analysed (2 shown)" in out


# --- lipschitz: what the printed number is -----------------------------------------------------


def test_partial_product_is_not_certified(tmp_path: Path) -> None:
    path = tmp_path / "resnet_head.safetensors"
    save_file(_resnet_head(), str(path))
    assume = ("--assume", "sequential")
    code, out, _ = invoke("lipschitz", str(path), "--format", "json", "-q", *assume)
    assert code == 0 and json.loads(out)["certified"] is True
    for selection in (["--exclude", "^fc"], ["--filter", "conv1"], ["--exclude", "bn1"]):
        selection = [*selection, *assume]
        code, out, _ = invoke("lipschitz", str(path), "--format", "json", "-q", *selection)
        assert code == 0
        data = json.loads(out)
        assert data["certified"] is False, selection
        assert data["valid_architecture"] is True
        assert "NOT a bound on the model" in data["statement"]
        assert any("is not a bound on the model" in c for c in data["caveats"])
        code, out, _ = invoke("lipschitz", str(path), "-q", *selection)
        assert "certified upper bound" not in out and "L ≤" not in out
        assert "product over the selected layers" in out and "NOT a bound on the model" in out
        code, _, err = invoke(
            "lipschitz", str(path), "-q", "--certified", "--fail-above", "1e30", *selection
        )
        assert code == EXIT_BOUND_EXCEEDED and "not certified" in err


def test_product_of_lower_bounds_is_printed_as_an_estimate(tmp_path: Path) -> None:
    state = {k: v for k, v in _resnet_head().items() if not k.startswith("conv1")}
    path = tmp_path / "head.safetensors"
    save_file(state, str(path))
    code, out, _ = invoke("lipschitz", str(path), "-q", "--method", "power")
    assert code == 0
    headline = next(line for line in out.splitlines() if line.startswith("L "))
    assert headline.startswith("L ≈ ") and "estimate" in headline
    code, out, _ = invoke("lipschitz", str(path), "-q", "--assume", "sequential")
    headline = next(line for line in out.splitlines() if line.startswith("L "))
    assert headline.startswith("L ≤ ") and "certified upper bound" in headline
    code, out, _ = invoke("lipschitz", str(path), "-q")
    headline = next(line for line in out.splitlines() if line.startswith("L "))
    assert headline.startswith("L ≤ ") and "conditional" in headline
    assert "certified upper bound" not in out


# --- normalize: SN without --bake, --bake counts, --skip-objects -------------------------------


def test_normalize_table_says_target_does_not_reach_spectral_norm_models(
    disc_parametrized_path: Path,
) -> None:
    code, out, _ = invoke(
        "normalize", str(disc_parametrized_path), "--dry-run", "--target", "2", "-q"
    )
    assert code == 0
    assert "σ = 1 whatever --target" in " ".join(out.split())
    code, out, _ = invoke(
        "normalize", str(disc_parametrized_path), "--dry-run", "--target", "2", "--bake", "-q"
    )
    assert code == 0 and "whatever --target" not in " ".join(out.split())


def test_bake_counts_what_is_copied_and_what_is_dropped(
    disc_parametrized_path: Path, tmp_path: Path
) -> None:
    """SN-GAN discriminator: 4 SN layers, each with bias, u and v."""
    original = torch.load(disc_parametrized_path, weights_only=True)
    biases = [k for k in original if k.endswith("bias")]
    vectors = [k for k in original if k.endswith(("._u", "._v"))]
    assert len(biases) == 4 and len(vectors) == 8
    out_path = tmp_path / "plain.pt"
    code, out, _ = invoke("normalize", str(disc_parametrized_path), "-o", str(out_path), "--bake")
    assert code == 0
    assert "4 other tensors copied unchanged · 8 spectral-norm buffers dropped (--bake)" in out
    written = torch.load(out_path, weights_only=True)
    copied = [k for k in written if k in original and torch.equal(written[k], original[k])]
    assert sorted(copied) == sorted(biases)
    code, out, _ = invoke("normalize", str(disc_parametrized_path), "-o", str(tmp_path / "sn.pt"))
    assert "4 other tensors copied unchanged · 8 spectral-norm vectors (u, v) recomputed" in out


def _lightning_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """What Lightning's ModelCheckpoint writes when save_hyperparameters() got an argparse
    Namespace: hyper_parameters holds the Namespace, outside torch's weights-only allowlist."""
    gen = torch.Generator().manual_seed(3)
    state = {
        "model.features.0.weight": torch.randn(16, 1, 3, 3, generator=gen),
        "model.features.1.weight": torch.rand(16, generator=gen) + 0.5,
        "model.features.1.bias": torch.zeros(16),
        "model.features.1.running_mean": torch.zeros(16),
        "model.features.1.running_var": torch.ones(16),
        "model.features.1.num_batches_tracked": torch.tensor(10),
        "model.head.weight": torch.randn(10, 16, generator=gen),
        "model.head.bias": torch.zeros(10),
    }
    torch.save(
        {
            "epoch": 3,
            "global_step": 120,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": state,
            "loops": {},
            "callbacks": {},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-3, "params": [0]}]}],
            "lr_schedulers": [],
            "hparams_name": "args",
            "hyper_parameters": {"args": argparse.Namespace(lr=1e-3, arch="resnet18")},
        },
        path,
    )
    return state


def test_normalize_refuses_to_lose_skip_objects_placeholders(tmp_path: Path) -> None:
    path = tmp_path / "epoch=3-step=120.ckpt"
    state = _lightning_checkpoint(path)
    before = path.read_bytes()
    # Reading works with --skip-objects (and the numbers are those of the real tensors).
    code, out, _ = invoke("inspect", str(path), "--skip-objects", "--format", "json", "-q")
    assert code == 0
    sigmas = {layer["name"]: layer["sigma"] for layer in json.loads(out)["layers"]}
    assert sigmas["model.head.weight"] == pytest.approx(svd_sigma(state["model.head.weight"]))
    # ... but a written copy would hold an empty dict where the Namespace was: refused.
    out_path = tmp_path / "sn.ckpt"
    for target in (["-o", str(out_path)], ["--in-place"]):
        code, out, err = invoke("normalize", str(path), "--skip-objects", *target)
        assert code == EXIT_ERROR and out == ""
        last = err.splitlines()[-1]
        assert last.startswith(f"sncli: error: {path}: cannot write a normalized copy")
        assert "argparse.Namespace" in last and "nothing written" in last
        assert not out_path.exists() and path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    # The plan alone writes nothing and is allowed.
    code, out, _ = invoke("normalize", str(path), "--skip-objects", "--dry-run", "-q")
    assert code == 0 and "model.head.weight" in out
    # The original really held the Namespace (a trusted full load, only in this test).
    full = torch.load(path, weights_only=False)
    assert full["hyper_parameters"]["args"] == argparse.Namespace(lr=1e-3, arch="resnet18")
