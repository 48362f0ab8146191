"""``sncli spectrum``: output formats against float64 SVD, --top-k, --save-spectra, sorting and
filters, bad input (one line, exit code, nothing written), and one real subprocess run."""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from cli_helpers import invoke
from safetensors.torch import load_file, save_file

from sncli.errors import EXIT_ERROR, EXIT_NO_LAYERS, EXIT_USAGE
from sncli.spectrum import METRICS

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def svdvals(tensor: torch.Tensor) -> np.ndarray:
    return scipy.linalg.svdvals(tensor.double().reshape(tensor.shape[0], -1).numpy())


def test_json_contract_matches_float64_svd(mlp_path: Path) -> None:
    code, out, err = invoke("spectrum", str(mlp_path), "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    assert (data["mode"], data["top_k"], data["format"]) == ("full", None, "safetensors")
    tensors = load_file(str(mlp_path))
    assert [layer["name"] for layer in data["layers"]] == ["0.weight", "2.weight", "4.weight"]
    for layer in data["layers"]:
        ref = svdvals(tensors[layer["name"]])
        assert set(METRICS) <= set(layer)
        assert layer["count"] == ref.size and layer["complete"] is True
        assert layer["bound"] == "exact" and layer["algorithm"] == "gram-eigvalsh-float64"
        assert layer["sigma_max"] == pytest.approx(ref[0], rel=1e-13)
        assert layer["sigma_min"] == pytest.approx(ref[-1], rel=1e-9)
        assert layer["nuclear"] == pytest.approx(ref.sum(), rel=1e-12)
        assert layer["lambda_max"] == pytest.approx(ref[0] ** 2, rel=1e-12)
        assert layer["log_norm"] == pytest.approx(np.log10((ref**2).sum()), rel=1e-12)
        assert layer["alpha"] > 1 and 0 <= layer["ks_distance"] <= 1
    summary = data["summary"]
    assert summary["analysed"] == 3 and summary["largest"]["name"] == "0.weight"
    alphas = [layer["alpha"] for layer in data["layers"]]
    assert summary["mean"]["alpha"] == pytest.approx(sum(alphas) / 3)
    assert {s["name"] for s in data["skipped"]} == {"0.bias", "2.bias", "4.bias"}
    assert "\x1b[" not in out


def test_csv_has_every_metric(disc_parametrized_path: Path) -> None:
    code, out, _ = invoke("spectrum", str(disc_parametrized_path), "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 4 and set(METRICS) <= set(rows[0])
    assert rows[0]["kind"] == "conv2d" and rows[0]["matrix_shape"] == "32x48"
    assert rows[-1]["alpha"] == ""  # 1×2048: one singular value, no power-law fit


def test_table(disc_legacy_path: Path, transformer_index_path: Path) -> None:
    code, out, err = invoke("spectrum", str(disc_legacy_path))
    assert code == 0
    assert "σ_max" in out and "4 layers analysed" in out and "reshaped kernel" in out
    assert "W/σ̂" in out and "fewer than 8 singular values" in err
    code, out, _ = invoke("spectrum", str(transformer_index_path))
    assert code == 0 and "embedding*" in out and "num. rank 0 for" in out


def test_top_k(transformer_index_path: Path) -> None:
    code, out, _ = invoke(
        "spectrum", str(transformer_index_path), "--top-k", "3", "--format", "json"
    )
    assert code == 0
    data = json.loads(out)
    assert (data["mode"], data["top_k"]) == ("top_k", 3)
    folder = transformer_index_path.parent
    tensors = {}
    for shard in folder.glob("*.safetensors"):
        tensors.update(load_file(str(shard)))
    for layer in data["layers"]:
        ref = svdvals(tensors[layer["name"]])
        assert layer["count"] == 3 and layer["complete"] is False
        assert layer["sigma_max"] == pytest.approx(ref[0], rel=1e-7)
        assert layer["alpha"] is None and layer["sigma_min"] is None and layer["entropy"] is None
        assert layer["stable_rank"] == pytest.approx((ref**2).sum() / ref[0] ** 2, rel=1e-7)
        if layer["bound"] == "lower":
            assert layer["converged"] is True and layer["error_estimate"] <= 1e-8
    code, out, _ = invoke("spectrum", str(transformer_index_path), "--top-k", "3")
    assert code == 0 and "≥ " in out and "omitted" in out


def test_save_spectra(mlp_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "spectra.npz"
    code, _, err = invoke("spectrum", str(mlp_path), "--save-spectra", str(target), "-q")
    assert code == 0 and err == ""
    tensors = load_file(str(mlp_path))
    with np.load(target) as data:
        assert sorted(data.files) == ["0.weight", "2.weight", "4.weight"]
        for name in data.files:
            np.testing.assert_allclose(data[name], svdvals(tensors[name]), rtol=1e-9, atol=1e-13)
    code, _, err = invoke("spectrum", str(mlp_path), "--save-spectra", str(target))
    assert code == 0 and "written to" in err


def test_save_spectra_refusals_change_nothing(mlp_path: Path, tmp_path: Path) -> None:
    before = mlp_path.read_bytes()
    code, out, err = invoke("spectrum", str(mlp_path), "--save-spectra", str(mlp_path))
    assert code == EXIT_ERROR and out == "" and "checkpoint itself" in err
    assert err.count("\n") == 1 and mlp_path.read_bytes() == before
    code, out, err = invoke("spectrum", str(mlp_path), "--save-spectra", str(tmp_path / "no/x.npz"))
    assert code == EXIT_ERROR and out == "" and "output folder does not exist" in err
    assert os.listdir(tmp_path) == []


def test_filter_sort_top(transformer_index_path: Path) -> None:
    code, out, _ = invoke(
        "spectrum",
        str(transformer_index_path),
        "--format",
        "json",
        "--filter",
        r"layers\.1\.",
        "--exclude",
        "k_proj",
        "--sort",
        "alpha",
        "--top",
        "3",
    )
    assert code == 0
    data = json.loads(out)
    layers = data["layers"]
    assert len(layers) == 3 and data["summary"]["analysed"] == 6
    assert all("layers.1." in x["name"] and "k_proj" not in x["name"] for x in layers)
    alphas = [x["alpha"] for x in layers]
    assert alphas == sorted(alphas, reverse=True)
    code, out, _ = invoke("spectrum", str(transformer_index_path), "--format", "json", "--reverse")
    names = [x["name"] for x in json.loads(out)["layers"]]
    assert names == sorted(names, reverse=True)


@pytest.mark.parametrize(
    "args",
    [
        ("--filter", "(["),
        ("--top-k", "0"),
        ("--tol", "0"),
        ("--tol", "nan"),
        ("--sort", "beauty"),
        ("--top", "0"),
    ],
)
def test_usage_errors(mlp_path: Path, args: tuple[str, str]) -> None:
    code, out, _ = invoke("spectrum", str(mlp_path), *args)
    assert code == EXIT_USAGE and out == ""


def test_no_layer_matched(mlp_path: Path) -> None:
    code, out, err = invoke("spectrum", str(mlp_path), "--filter", "nothing-matches-this")
    assert code == EXIT_NO_LAYERS and out == ""
    assert err.count("\n") == 1 and str(mlp_path) in err


def _bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """Broken inputs and what their one-line error must say."""
    missing = folder / "missing.safetensors"
    truncated = folder / "truncated.safetensors"
    truncated.write_bytes(struct.pack("<Q", 1000) + b'{"a": ')
    text = folder / "notes.pt"
    text.write_bytes(b"just some text, not a checkpoint\n")
    evil = folder / "evil.pt"

    class Payload:
        def __reduce__(self):  # pragma: no cover - never called: the file is not unpickled
            return (os.system, ("echo pwned",))

    with evil.open("wb") as handle:
        pickle.dump({"w": Payload()}, handle)
    nan = folder / "nan.safetensors"
    save_file({"fc.weight": torch.full((4, 4), float("nan"))}, str(nan))
    return {
        "missing": (missing, "no such file"),
        "truncated": (truncated, str(truncated)),
        "text": (text, str(text)),
        "evil": (evil, str(evil)),
        "nan": (nan, "no layer could be measured"),
    }


def test_bad_input_is_one_line_exit_one(tmp_path: Path) -> None:
    for name, (path, expected) in _bad_files(tmp_path).items():
        code, out, err = invoke("spectrum", str(path))
        assert code == EXIT_ERROR, (name, err)
        assert out == "" and err.count("\n") == 1 and expected in err, (name, err)
        assert err.startswith("sncli: error: ") and "Traceback" not in err, name


def test_real_subprocess(mlp_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "s.npz"
    command = [sys.executable, "-m", "sncli", "spectrum", str(mlp_path), "--format", "csv"]
    result = subprocess.run(
        [*command, "--save-spectra", str(target)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [row["name"] for row in rows] == ["0.weight", "2.weight", "4.weight"]
    with np.load(target) as data:
        assert float(rows[0]["sigma_max"]) == data["0.weight"][0]
    code, out, _ = invoke("spectrum", "--help")
    assert code == 0 and "Examples" in out and "--top-k" in out
