"""``sncli inspect``: output formats, methods, filters and sorting, notes and usage errors."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch
from cli_helpers import invoke, svd_sigma
from safetensors.torch import load_file, save_file

from sncli.errors import EXIT_NO_LAYERS


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


def test_bad_regex_is_a_usage_error(mlp_path: Path) -> None:
    code, _, _ = invoke("inspect", str(mlp_path), "--filter", "([")
    assert code == 2


def test_bad_method_is_a_usage_error(mlp_path: Path) -> None:
    code, _, _ = invoke("inspect", str(mlp_path), "--method", "guess")
    assert code == 2


def test_wrapper_key_note_on_stderr(lightning_path: Path) -> None:
    code, _, err = invoke("inspect", str(lightning_path), "--format", "json")
    assert code == 0
    assert "state_dict" in err


def test_nan_layer_flagged_not_given_a_sigma(tmp_path: Path) -> None:
    path = tmp_path / "nan.safetensors"
    save_file({"a.weight": torch.eye(4), "b.weight": torch.full((4, 4), float("nan"))}, str(path))
    code, out, _ = invoke("inspect", str(path), "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert [layer["name"] for layer in data["layers"]] == ["a.weight"]
    reasons = {s["name"]: s["reason"] for s in data["skipped"]}
    assert reasons["b.weight"].startswith("non-finite values (16 NaN")


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


def test_quiet_hides_the_wrapper_key_note(lightning_path: Path) -> None:
    code, out, err = invoke("inspect", str(lightning_path), "--format", "csv", "-q")
    assert code == 0 and err == "" and out.startswith("name,kind,")


def test_headline_is_a_linear_layer_and_embeddings_are_apart(tmp_path: Path) -> None:
    """An embedding table of larger σ than every linear layer: the headline "largest σ" names
    the linear layer, the embedding is listed apart (text and JSON), issue 28."""
    gen = torch.Generator().manual_seed(0)
    path = tmp_path / "emb.safetensors"
    tensors = {
        "embed_tokens.weight": 10 * torch.randn(50, 8, generator=gen),
        "fc.weight": torch.randn(4, 8, generator=gen),
    }
    save_file(tensors, path)
    code, out, _ = invoke("inspect", str(path), "--method", "exact")
    assert code == 0
    line = " ".join(out.split())
    fc, emb = svd_sigma(tensors["fc.weight"]), svd_sigma(tensors["embed_tokens.weight"])
    assert emb > fc
    assert f"largest σ = {fc:.6g} (fc.weight)" in line
    assert f"largest embedding σ = {emb:.6g} (embed_tokens.weight)" in line
    code, out, _ = invoke("inspect", str(path), "--method", "exact", "--format", "json")
    summary = json.loads(out)["summary"]
    assert summary["largest"]["name"] == "fc.weight"
    assert summary["largest"]["sigma"] == pytest.approx(fc, rel=1e-12)
    assert summary["largest_embedding"]["name"] == "embed_tokens.weight"
    assert summary["largest_embedding"]["sigma"] == pytest.approx(emb, rel=1e-12)
