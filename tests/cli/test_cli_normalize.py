"""``sncli normalize``: written checkpoints re-inspected, dry runs, destinations, usage errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from cli_helpers import invoke
from safetensors.torch import save_file


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


def test_quiet_hides_notes_but_not_warnings(lightning_path: Path, tmp_path: Path) -> None:
    code, _, err = invoke("normalize", str(lightning_path), "--dry-run")
    assert code == 0 and err == "sncli: using the state dict under key 'state_dict'\n"
    code, _, err = invoke("normalize", str(lightning_path), "--dry-run", "-q")
    assert code == 0 and err == ""
    path = tmp_path / "zero.safetensors"
    save_file({"a.weight": torch.eye(3), "z.weight": torch.zeros(3, 3)}, str(path))
    for quiet in ((), ("-q",)):
        code, _, err = invoke("normalize", str(path), "--dry-run", *quiet)
        assert code == 0
        assert err == "sncli: warning: z.weight: not normalized: zero weight (σ = 0)\n"
