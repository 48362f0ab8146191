"""The allocation options on the command line (``--hill``, ``--mp-fit``, ``--randomize``,
``--group``, ``--export``) of ``spectrum`` and ``track``: values against numpy on the stored
weights, the export against the printed values, reproducible randomization, refusals, and new
golden files (``tests/golden/allocation/``, ``tests/golden/track/mlp-run-{allocation,group-*}``; the
default output is unchanged, as the existing goldens check)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from sncli.numerics.esd import alpha_hill
from tests.cli.cli_helpers import invoke
from tests.track_runs import make_run

REPO = Path(__file__).resolve().parent.parent.parent
GOLDEN = REPO / "tests" / "golden"
UPDATE = os.environ.get("SNCLI_UPDATE_GOLDEN") == "1"
TRANSFORMER = "sample_models/tiny_transformer/model.safetensors.index.json"
#: Floats of float64 results may differ in the last bits on another math library.
REL = 1e-9


@pytest.fixture(autouse=True)
def _plain_terminal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("COLUMNS", "LINES", "FORCE_COLOR", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(REPO)


def _weights() -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for path in sorted((REPO / TRANSFORMER).parent.glob("*.safetensors")):
        out.update({k: v.double().numpy() for k, v in load_file(str(path)).items()})
    return out


def _close(a: str, b: str) -> bool:
    try:
        x, y = float(a), float(b)
    except ValueError:
        return a == b
    return a == b or math.isclose(x, y, rel_tol=REL, abs_tol=1e-14)


def _leaves(node: object) -> list[str]:
    if isinstance(node, dict):
        return [f"{k}" for k in node] + [v for value in node.values() for v in _leaves(value)]
    if isinstance(node, list):
        return [v for value in node for v in _leaves(value)]
    return [json.dumps(node)]


def _compare(actual: str, name: str) -> None:
    """Byte for byte where this machine rounds as the writer's; floats within REL elsewhere."""
    path = GOLDEN / name
    if UPDATE:
        path.write_text(actual)
        return
    expected = path.read_text()
    if actual == expected:
        return
    if name.endswith(".csv"):
        got = [c for row in csv.reader(io.StringIO(actual)) for c in [*row, "|"]]
        want = [c for row in csv.reader(io.StringIO(expected)) for c in [*row, "|"]]
    elif name.endswith(".json"):
        got, want = _leaves(json.loads(actual)), _leaves(json.loads(expected))
    else:
        got, want = [actual], [expected]
    assert len(got) == len(want), f"{name}: shape differs"
    bad = [(a, b) for a, b in zip(got, want, strict=True) if not _close(a, b)]
    assert not bad, f"{name} differs (SNCLI_UPDATE_GOLDEN=1 rewrites it): {bad[:5]}"


@pytest.mark.parametrize(
    ("name", "args"),
    [
        (
            "allocation/spectrum-transformer-hill-mp.csv",
            ["--hill", "--snr", "--mp-fit", "--format", "csv"],
        ),
        (
            "allocation/spectrum-transformer-group-block.json",
            ["--hill", "--group", "block", "--format", "json"],
        ),
        ("allocation/spectrum-transformer-group-module.txt", ["--hill", "--group", "module"]),
        (
            "allocation/spectrum-transformer-randomize.json",
            ["--randomize", "--seed", "3", "--filter", "q_proj", "--format", "json"],
        ),
        (
            "allocation/spectrum-transformer-allocation.txt",
            ["--hill", "--mp-fit", "--randomize", "-f", "q_proj"],
        ),
    ],
)
def test_spectrum_golden(name: str, args: list[str]) -> None:
    code, out, err = invoke("spectrum", TRANSFORMER, "-q", *args)
    assert code == 0, err
    _compare(out, name)


def test_hill_and_mp_fit_against_numpy() -> None:
    code, out, _ = invoke("spectrum", TRANSFORMER, "--hill", "--mp-fit", "--format", "json", "-q")
    assert code == 0
    layers = json.loads(out)["layers"]
    weights = _weights()
    assert len(layers) == 16
    for layer in layers:
        w = weights[layer["name"]].astype(np.float64)
        lam = np.linalg.svd(w, compute_uv=False) ** 2
        assert layer["alpha_hill"] == pytest.approx(alpha_hill(lam), rel=1e-9)
        assert isinstance(layer["num_spikes"], int) and layer["num_spikes"] >= 0
        assert layer["mp_softrank"] > 0
        keys = list(layer)
        at = keys.index("mp_spikes")  # the extras follow the standard metrics, in this order
        assert keys[at + 1 : at + 5] == ["alpha_hill", "mp_softrank", "num_spikes", "bulk_max"]
    code, out, _ = invoke("spectrum", TRANSFORMER, "--format", "json", "-q")
    assert "alpha_hill" not in json.loads(out)["layers"][0]  # only when asked for


def test_export_matches_the_printed_values(tmp_path: Path) -> None:
    code, out, _ = invoke("spectrum", TRANSFORMER, "--hill", "--format", "json", "-q")
    by_layer = {layer["name"]: layer["alpha_hill"] for layer in json.loads(out)["layers"]}
    code, _, err = invoke("spectrum", TRANSFORMER, "--export", str(tmp_path / "a.npy"))
    assert code == 0 and "alpha_hill of 16 matrices written to" in err
    code, _, _ = invoke("spectrum", TRANSFORMER, "-q", "--export", str(tmp_path / "a.json"))
    data = json.loads((tmp_path / "a.json").read_text())
    assert data["layers"] == list(by_layer)  # model (natural key) order
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.array(data["values"]))
    assert data["values"] == list(by_layer.values())
    # grouped: each matrix carries its block's mean, as AlphaPruning's block-wise mapping
    code, out, _ = invoke(
        "spectrum",
        TRANSFORMER,
        "-q",
        "--group",
        "block",
        "--format",
        "json",
        "--hill",
        "--export",
        str(tmp_path / "b.json"),
        "--export-metric",
        "stable_rank",
    )
    groups = {g["group"]: g for g in json.loads(out)["groups"]}
    block = groups["model.layers.1"]
    assert block["count"] == 7 and block["layers"][0] == "model.layers.1.mlp.down_proj.weight"
    assert block["mean"]["alpha_hill"] == pytest.approx(
        np.mean([by_layer[name] for name in block["layers"]]), rel=1e-12
    )
    exported = json.loads((tmp_path / "b.json").read_text())
    assert exported["metric"] == "stable_rank" and exported["group_by"] == "block"
    at = dict(zip(exported["layers"], exported["values"], strict=True))
    assert at["model.layers.1.self_attn.q_proj.weight"] == block["mean"]["stable_rank"]


def test_randomize_is_reproducible() -> None:
    args = ("spectrum", TRANSFORMER, "--randomize", "--format", "json", "-q", "-f", "layers.0")
    first = invoke(*args, "--seed", "5")[1]
    assert first == invoke(*args, "--seed", "5")[1]
    other = json.loads(invoke(*args, "--seed", "6")[1])["layers"]
    mine = json.loads(first)["layers"]
    assert all(layer["rand_distance"] > 0 for layer in mine)
    assert [a["rand_distance"] for a in mine] != [b["rand_distance"] for b in other]
    # a layer's value does not depend on which other layers are analysed
    alone = json.loads(invoke(*args[:-1], "layers.0.mlp.up_proj", "--seed", "5")[1])["layers"]
    same = next(a for a in mine if a["name"] == alone[0]["name"])
    assert alone[0]["rand_distance"] == same["rand_distance"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--export", "out.txt"], "unknown export format '.txt'"),
        (["--hill", "--top-k", "4"], "need full spectra"),
        (["--export", "x.npy", "--export-metric", "nope"], "'nope' is not one of"),
    ],
)
def test_spectrum_refusals(tmp_path: Path, args: list[str], message: str) -> None:
    args = [a if not a.startswith(("out.", "x.")) else str(tmp_path / a) for a in args]
    code, out, err = invoke("spectrum", TRANSFORMER, *args)
    assert code == 2
    assert message in " ".join((out + err).replace("│", " ").split())
    assert list(tmp_path.iterdir()) == []


def test_track_allocation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_run(tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    code, out, err = invoke(
        "track", "run", "-m", "dense", "--hill", "--format", "csv", "--export", "a.npy"
    )
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0])[-1] == "alpha_hill"
    table = np.load("a.npy")
    assert table.shape == (4, 3)  # steps × matrices
    for row in rows:
        i = [0, 100, 200, 300].index(int(row["step"]))
        j = ["0.weight", "2.weight", "4.weight"].index(row["layer"])
        assert float(row["alpha_hill"]) == table[i, j]
    # 0.weight never moves, 2.weight is only scaled: α_hill is scale invariant (to the float32
    # rounding of the scaled weights, ~1e-8 here)
    assert np.all(table[:, 0] == table[0, 0])
    np.testing.assert_allclose(table[:, 1], table[0, 1], rtol=1e-7)
    assert np.ptp(table[:, 2]) > 1e-4  # the rank-one update moves 4.weight's
    one = json.loads(
        invoke("spectrum", "run/step_200.safetensors", "--hill", "-q", "--format", "json")[1]
    )
    assert [layer["alpha_hill"] for layer in one["layers"]] == pytest.approx(table[2], rel=1e-12)
    code, out, _ = invoke(
        "track", "run", "-m", "dense", "--hill", "--group", "module", "--format", "json", "-q"
    )
    data = json.loads(out)
    assert data["group_by"] == "module" and data["steps"] == [0, 100, 200, 300]
    assert len(data["groups"]) == 12  # 4 steps × 3 layers outside any block
    code, _, err = invoke("track", "run", "-m", "dense", "--export", "b.json")  # implies --hill
    assert code == 0, err
    assert json.loads(Path("b.json").read_text())["values"] == table.tolist()
    code, out, err = invoke("track", "run", "--metric", "alpha_hill")
    assert code == 2 and "needs --hill" in " ".join((out + err).replace("│", " ").split())


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("track/mlp-run-allocation.json", ["--hill", "--mp-fit", "--format", "json"]),
        ("track/mlp-run-group-module.csv", ["--hill", "--group", "module", "--format", "csv"]),
    ],
)
def test_track_golden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, args: list[str]
) -> None:
    make_run(tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    code, out, err = invoke("track", "run", "-m", "dense", "-q", *args)
    assert code == 0, err
    _compare(out, name)
