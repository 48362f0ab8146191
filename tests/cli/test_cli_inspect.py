"""The command line: output formats, options, exit codes and error lines."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import scipy.linalg
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from sncli.cli import app
from sncli.errors import EXIT_NO_LAYERS

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def svd_sigma(tensor: torch.Tensor) -> float:
    return float(scipy.linalg.svdvals(tensor.double().reshape(tensor.shape[0], -1).numpy())[0])


def test_inspect_json_contract_matches_float64_svd(mlp_path: Path) -> None:
    code, out, _ = invoke("inspect", str(mlp_path), "--format", "json", "--method", "exact")
    assert code == 0
    data = json.loads(out)
    assert data["checkpoint"] == str(mlp_path)
    assert data["method"] == "exact"
    tensors = load_file(str(mlp_path))
    assert [layer["name"] for layer in data["layers"]] == ["0.weight", "2.weight", "4.weight"]
    for layer in data["layers"]:
        assert {"name", "kind", "shape", "dtype", "sigma"} <= set(layer)
        assert layer["kind"] == "linear"
        assert layer["shape"] == list(tensors[layer["name"]].shape)
        assert layer["sigma"] == pytest.approx(svd_sigma(tensors[layer["name"]]), rel=1e-12)
        assert "iterations" not in layer
    assert {s["name"] for s in data["skipped"]} == {"0.bias", "2.bias", "4.bias"}
    assert all(s["reason"] == "bias" for s in data["skipped"])
    assert "\x1b[" not in out


def test_inspect_default_is_auto_within_its_tolerance(transformer_index_path: Path) -> None:
    code, out, _ = invoke("inspect", str(transformer_index_path), "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["method"] == "auto"
    folder = transformer_index_path.parent
    tensors = {}
    for shard in folder.glob("*.safetensors"):
        tensors.update(load_file(str(shard)))
    for layer in data["layers"]:
        truth = svd_sigma(tensors[layer["name"]])
        assert layer["sigma"] == pytest.approx(truth, rel=1e-4)


def test_inspect_power_reports_iterations_and_lower_bound(mlp_path: Path) -> None:
    code, out, _ = invoke("inspect", str(mlp_path), "--format", "json", "--method", "power")
    assert code == 0
    tensors = load_file(str(mlp_path))
    for layer in json.loads(out)["layers"]:
        assert layer["bound"] == "lower"
        assert isinstance(layer["iterations"], int) and isinstance(layer["converged"], bool)
        truth = svd_sigma(tensors[layer["name"]])
        assert layer["sigma"] <= truth * (1 + 1e-12)
        assert layer["sigma"] == pytest.approx(truth, rel=1e-4)


def test_inspect_csv(disc_parametrized_path: Path) -> None:
    code, out, _ = invoke("inspect", str(disc_parametrized_path), "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 4
    assert rows[0]["kind"] == "conv2d" and rows[0]["matrix"] == "reshape(out, in*k)"
    assert all(row["sn_style"] == "parametrization" for row in rows)
    assert all(float(row["sigma_effective"]) >= 1 - 1e-6 for row in rows)


def test_inspect_table_mentions_method_and_conv_caveat(disc_legacy_path: Path) -> None:
    code, out, _ = invoke("inspect", str(disc_legacy_path))
    assert code == 0
    assert "σ_max" in out and "4 layers analysed" in out
    assert "not the convolution's operator norm" in out
    assert "W/σ̂" in out


def test_inspect_power_table_says_lower_bound(mlp_path: Path) -> None:
    code, out, _ = invoke("inspect", str(mlp_path), "--method", "power")
    assert code == 0
    assert "lower bound" in out


def test_filter_exclude_sort_top(transformer_index_path: Path) -> None:
    code, out, _ = invoke(
        "inspect",
        str(transformer_index_path),
        "--format",
        "json",
        "--filter",
        r"layers\.1\.",
        "--exclude",
        "k_proj",
        "--top",
        "3",
    )
    assert code == 0
    layers = json.loads(out)["layers"]
    assert len(layers) == 3
    assert all("layers.1." in layer["name"] and "k_proj" not in layer["name"] for layer in layers)
    sigmas = [layer["sigma"] for layer in layers]
    assert sigmas == sorted(sigmas, reverse=True)
    code, out, _ = invoke("inspect", str(transformer_index_path), "--format", "json")
    names = [layer["name"] for layer in json.loads(out)["layers"]]
    code, out, _ = invoke(
        "inspect", str(transformer_index_path), "--format", "json", "--sort", "name", "--reverse"
    )
    assert [layer["name"] for layer in json.loads(out)["layers"]] == names[::-1]


def test_no_layer_matched_has_its_own_exit_code(mlp_path: Path) -> None:
    code, out, err = invoke("inspect", str(mlp_path), "--filter", "nothing-matches-this")
    assert code == EXIT_NO_LAYERS
    assert out == ""
    assert err.count("\n") == 1 and str(mlp_path) in err


def test_missing_file_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    code, _, err = invoke("inspect", str(missing))
    assert code == 1
    assert err == f"sncli: error: {missing}: no such file or directory\n"


def test_not_a_checkpoint(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"hello world, definitely not a checkpoint")
    code, _, err = invoke("inspect", str(junk))
    assert code == 1
    assert err.startswith(f"sncli: error: {junk}: ") and err.count("\n") == 1
    assert "Traceback" not in err


def test_bad_regex_is_a_usage_error(mlp_path: Path) -> None:
    code, _, _ = invoke("inspect", str(mlp_path), "--filter", "([")
    assert code == 2


def test_bad_method_is_a_usage_error(mlp_path: Path) -> None:
    code, _, _ = invoke("inspect", str(mlp_path), "--method", "guess")
    assert code == 2


def test_version_and_help() -> None:
    code, out, _ = invoke("--version")
    assert code == 0 and out.startswith("sncli ")
    for command in ("inspect", "normalize"):
        code, out, _ = invoke(command, "--help")
        assert code == 0 and "Examples" in out


def test_wrapper_key_note_on_stderr(lightning_path: Path) -> None:
    code, _, err = invoke("inspect", str(lightning_path), "--format", "json")
    assert code == 0
    assert "state_dict" in err


def test_normalize_then_inspect_every_sample(
    samples: Path, tmp_path: Path, transformer_index_path: Path
) -> None:
    for name in (
        "mlp.safetensors",
        "sngan_disc_parametrized.pt",
        "sngan_disc_legacy.pt",
        "lightning_cnn.ckpt",
    ):
        out = tmp_path / name
        code, _, err = invoke("normalize", str(samples / name), "-o", str(out), "-q")
        assert code == 0, err
        code, report, _ = invoke("inspect", str(out), "--format", "json", "-q")
        assert code == 0
        for layer in json.loads(report)["layers"]:
            assert layer["sigma"] <= 1 + 1e-12
            assert layer["sigma"] >= 1 - 1e-5
    out_dir = tmp_path / "tt"
    code, _, err = invoke("normalize", str(transformer_index_path), "-o", str(out_dir), "-q")
    assert code == 0, err
    code, report, _ = invoke("inspect", str(out_dir), "--format", "json", "-q")
    for layer in json.loads(report)["layers"]:
        if layer["kind"] == "linear":
            assert 1 - 4e-2 <= layer["sigma"] <= 1 + 1e-12


def test_normalize_dry_run_json_writes_nothing(mlp_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.safetensors"
    code, text, _ = invoke(
        "normalize", str(mlp_path), "-o", str(out), "--dry-run", "--format", "json"
    )
    assert code == 0
    data = json.loads(text)
    assert data["dry_run"] is True and data["outputs"] == []
    assert [layer["action"] for layer in data["layers"]] == ["scale"] * 3
    assert not out.exists()


def test_normalize_needs_a_destination(mlp_path: Path) -> None:
    code, _, _ = invoke("normalize", str(mlp_path))
    assert code == 2


def test_normalize_refuses_output_equal_to_input(mlp_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "m.safetensors"
    shutil.copy(mlp_path, src)
    before = src.read_bytes()
    code, _, err = invoke("normalize", str(src), "-o", str(src))
    assert code == 1 and "--in-place" in err
    assert src.read_bytes() == before


def test_nan_layer_flagged_not_given_a_sigma(tmp_path: Path) -> None:
    path = tmp_path / "nan.safetensors"
    save_file({"a.weight": torch.eye(4), "b.weight": torch.full((4, 4), float("nan"))}, str(path))
    code, out, _ = invoke("inspect", str(path), "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert [layer["name"] for layer in data["layers"]] == ["a.weight"]
    reasons = {s["name"]: s["reason"] for s in data["skipped"]}
    assert reasons["b.weight"].startswith("non-finite values (16 NaN")


def test_help_does_not_import_torch() -> None:
    code = "import sys, sncli.cli; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_installed_entry_point_runs(mlp_path: Path) -> None:
    exe = shutil.which("sncli") or str(Path(sys.executable).parent / "sncli")
    result = subprocess.run(
        [exe, "inspect", str(mlp_path), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["layers"]) == 3
    result = subprocess.run(
        [sys.executable, "-m", "sncli", "inspect", "/nonexistent.safetensors"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr == "sncli: error: /nonexistent.safetensors: no such file or directory\n"


def test_in_place_keeps_file_permissions(mlp_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "m.safetensors"
    shutil.copy(mlp_path, src)
    src.chmod(0o640)
    code, _, err = invoke("normalize", str(src), "--in-place", "-q")
    assert code == 0, err
    assert src.stat().st_mode & 0o777 == 0o640


def test_normalize_usage_errors(mlp_path: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "x.safetensors")
    assert invoke("normalize", str(mlp_path), "-o", out, "--target", "0")[0] == 2
    assert invoke("normalize", str(mlp_path), "-o", out, "--format", "csv")[0] == 2
    assert not Path(out).exists()


def test_fail_above_refuses_a_non_bound(transformer_index_path: Path) -> None:
    code, _, err = invoke("lipschitz", str(transformer_index_path), "--fail-above", "1e30")
    assert code == 3 and "not a Lipschitz bound" in err


def test_certified_layers_carry_sigma_upper(mlp_path: Path) -> None:
    code, out, _ = invoke("inspect", str(mlp_path), "--format", "json", "--method", "dense")
    assert code == 0
    tensors = load_file(str(mlp_path))
    for layer in json.loads(out)["layers"]:
        assert layer["certified"] is True
        assert layer["sigma_upper"] >= svd_sigma(tensors[layer["name"]])
    code, out, _ = invoke("inspect", str(mlp_path), "--format", "csv", "--certified")
    rows = list(csv.DictReader(io.StringIO(out)))
    for row in rows:
        assert row["certified"] == "true"
        assert float(row["sigma_upper"]) >= svd_sigma(tensors[row["name"]])
