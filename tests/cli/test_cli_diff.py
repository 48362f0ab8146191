"""``sncli diff``: formats, the --fail-above gate, listing of mismatches, usage and input errors,
and one real subprocess run of the installed command."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import invoke, svd_sigma
from safetensors.torch import save_file

from sncli.errors import EXIT_BOUND_EXCEEDED, EXIT_NO_LAYERS


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    a = {
        "fc1.weight": torch.randn(16, 8, generator=g),
        "fc1.bias": torch.zeros(16),
        "fc2.weight": torch.randn(4, 16, generator=g),
    }
    b = dict(a)
    b["fc2.weight"] = a["fc2.weight"] * 1.2  # relative change 0.2 exactly (up to float32)
    b["extra.weight"] = torch.ones(2, 2)
    save_file(a, str(tmp_path / "a.safetensors"))
    save_file(b, str(tmp_path / "b.safetensors"))
    return tmp_path / "a.safetensors", tmp_path / "b.safetensors", a, b


def test_json_contract(pair) -> None:
    a_path, b_path, a, b = pair
    code, out, _ = invoke("diff", str(a_path), str(b_path), "--format", "json", "-m", "exact")
    assert code == 0
    data = json.loads(out)
    assert data["a"] == str(a_path) and data["b"] == str(b_path)
    layers = {layer["name"]: layer for layer in data["layers"]}
    assert set(layers) == {"fc1.weight", "fc2.weight"}
    assert layers["fc1.weight"]["unchanged"] is True
    moved = layers["fc2.weight"]
    assert moved["unchanged"] is False
    assert moved["delta_sigma"] == pytest.approx(
        svd_sigma(b["fc2.weight"] - a["fc2.weight"]), rel=1e-9
    )
    assert moved["relative"] == pytest.approx(0.2, rel=1e-6)
    assert {
        "sigma_a",
        "sigma_b",
        "delta_frobenius",
        "relative_frobenius",
        "subspace_cosines",
        "outside_top_subspace",
        "intruder_dimensions",
        "delta_bound",
    } <= set(moved)
    assert data["only_in_b"] == ["extra.weight"] and data["only_in_a"] == []
    assert data["summary"] == {
        "compared": 2,
        "unchanged": 1,
        "changed": 1,
        "largest_relative": {"name": "fc2.weight", "relative": moved["relative"]},
    }


def test_fail_above_exits_3_naming_the_layers(pair) -> None:
    a_path, b_path, _, _ = pair
    code, _, err = invoke("diff", str(a_path), str(b_path), "--fail-above", "0.1", "-q")
    assert code == EXIT_BOUND_EXCEEDED
    assert "fc2.weight" in err and "0.1" in err and "fc1.weight" not in err
    code, _, _ = invoke("diff", str(a_path), str(b_path), "--fail-above", "0.3", "-q")
    assert code == 0
    code, _, err = invoke("diff", str(a_path), str(b_path), "--fail-above", "nan")
    assert code == 2


def test_csv_and_table(pair) -> None:
    a_path, b_path, _, _ = pair
    code, out, _ = invoke("diff", str(a_path), str(b_path), "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [row["name"] for row in rows] == ["fc1.weight", "fc2.weight"]
    assert rows[0]["unchanged"] == "True" and float(rows[1]["relative"]) == pytest.approx(
        0.2, rel=1e-4
    )
    code, out, _ = invoke("diff", str(a_path), str(b_path), "--top", "1")
    assert code == 0
    assert "fc2.weight" in out and "fc1.weight" not in out
    assert "only in B: extra.weight" in out


def test_bad_inputs_are_one_line_errors(pair, tmp_path: Path) -> None:
    a_path, _, _, _ = pair
    code, _, err = invoke("diff", str(a_path), str(tmp_path / "missing.safetensors"))
    assert code == 1 and "no such file" in err and "Traceback" not in err
    other = tmp_path / "other.safetensors"
    save_file({"zzz.weight": torch.randn(2, 3)}, str(other))
    code, _, err = invoke("diff", str(a_path), str(other))
    assert code == EXIT_NO_LAYERS and "nothing to compare" in err
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    code, _, err = invoke("diff", str(a_path), str(junk))
    assert code == 1 and str(junk) in err and len(err.strip().splitlines()) == 1


def test_subprocess_run_of_the_installed_command(pair) -> None:
    a_path, b_path, _, _ = pair
    result = subprocess.run(
        [sys.executable, "-m", "sncli", "diff", str(a_path), str(b_path), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["summary"]["changed"] == 1


def test_a_nan_layer_fails_the_gate(tmp_path: Path) -> None:
    """A fine-tune that diverged in one layer must not pass --fail-above (exit 3, named)."""
    g = torch.Generator().manual_seed(5)
    a = {"fc1.weight": torch.randn(4, 4, generator=g), "fc2.weight": torch.randn(4, 4, generator=g)}
    b = dict(a)
    b["fc2.weight"] = a["fc2.weight"].clone()
    b["fc2.weight"][3, 3] = float("nan")
    save_file(a, str(tmp_path / "c.safetensors"))
    save_file(b, str(tmp_path / "d.safetensors"))
    args = ("diff", str(tmp_path / "c.safetensors"), str(tmp_path / "d.safetensors"))
    code, out, err = invoke(*args, "--fail-above", "0.01")
    assert code == EXIT_BOUND_EXCEEDED and "fc2.weight" in err and "non-finite" in err
    assert "not compared: fc2.weight" in out
    code, _, err = invoke(*args)
    assert code == 0 and "fc2.weight" in err  # still said without a gate


def test_intruder_dimensions_json_and_flags(tmp_path: Path) -> None:
    """A float64 layer whose update is a large rank-1 x yᵀ with x orthogonal to every left
    singular vector of A (A is 24×16, its vectors span 16 of 24 dimensions): exactly B's top
    direction is an intruder; --intruder-top-k 0 turns the measure off."""
    g = torch.Generator().manual_seed(5)
    basis = torch.linalg.qr(torch.randn(24, 17, generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64)).Q
    a = (basis[:, :16] * torch.linspace(4.0, 1.0, 16, dtype=torch.float64)) @ v.T
    b = a + 10.0 * basis[:, 16:] @ v[:, :1].T
    save_file({"fc.weight": a}, str(tmp_path / "a.safetensors"))
    save_file({"fc.weight": b}, str(tmp_path / "b.safetensors"))
    args = ("diff", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"))
    code, out, _ = invoke(*args, "--format", "json", "--intruder-top-k", "5")
    assert code == 0
    data = json.loads(out)
    assert (data["intruder_top_k"], data["intruder_threshold"], data["top_k"]) == (5, 0.5, 8)
    layer = data["layers"][0]
    assert (layer["intruder_dimensions"], layer["intruder_indices"]) == (1, [0])
    # the old subspace measure, under its own name: x is outside A's top-8 subspace too
    assert layer["outside_top_subspace"] == 1
    code, out, _ = invoke(*args, "--format", "json", "--intruder-top-k", "0")
    assert code == 0 and "intruder_dimensions" not in json.loads(out)["layers"][0]
    code, out, _ = invoke(*args, "--format", "json", "--intruder-threshold", "0")
    assert code == 0 and json.loads(out)["layers"][0]["intruder_dimensions"] == 0  # none < 0
    code, out, _ = invoke(*args, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows[0]["intruder_dimensions"] == "1" and rows[0]["outside_top_subspace"] == "1"


def test_cosine_error_and_unresolved_intruders_are_shown(tmp_path: Path) -> None:
    """JSON and CSV carry subspace_error and the unresolved intruder directions; the table marks
    an unresolved top-K subspace and the (+N?) undecided intruders, and its caption says why."""
    g = torch.Generator().manual_seed(4)
    a = torch.randn(300, 300, generator=g)
    save_file({"w.weight": a}, str(tmp_path / "a.safetensors"))
    save_file({"w.weight": a + 0.01 * a.roll(1, 0)}, str(tmp_path / "b.safetensors"))
    paths = (str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"))
    code, out, _ = invoke("diff", *paths, "--format", "json")
    assert code == 0
    (layer,) = json.loads(out)["layers"]
    assert layer["subspace_error"] == 1.0 and layer["intruder_unresolved"]
    code, out, _ = invoke("diff", *paths, "--format", "csv")
    (row,) = csv.DictReader(io.StringIO(out))
    assert row["subspace_error"] == "1.0"
    assert int(row["intruder_unresolved"]) == len(layer["intruder_unresolved"])
    code, out, _ = invoke("diff", *paths)
    assert code == 0
    assert "(unresolved)" in out and f"(+{len(layer['intruder_unresolved'])}?)" in out
    assert "Wedin" in out
