"""``sncli track`` on the command line: golden CSV/JSON/table of a small run, the cache notes,
errors as one line with an exit code, and --plot."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

import pytest

from tests.cli.cli_helpers import invoke
from tests.track_runs import make_run

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "track"
UPDATE = os.environ.get("SNCLI_UPDATE_GOLDEN") == "1"
#: Floats of dense float64 results may differ in the last bits on another math library.
REL = 1e-9


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The run in ``tmp/run``, the current folder ``tmp`` (so outputs hold relative paths) and
    the user's cache folder inside it."""
    make_run(tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for name in ("COLUMNS", "LINES", "FORCE_COLOR", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    return Path("run")


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
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
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
        ("mlp-run.csv", ["--method", "dense", "--format", "csv"]),
        (
            "mlp-run-spectrum-delta.json",
            ["-m", "dense", "--spectrum", "--delta", "--format", "json"],
        ),
        ("mlp-run.txt", ["--method", "dense"]),
        ("mlp-run-drift.txt", ["--method", "dense", "--metric", "drift_first"]),
    ],
)
def test_golden(run: Path, name: str, args: list[str]) -> None:
    code, out, err = invoke("track", str(run), "--no-cache", *args)
    assert code == 0, err
    assert str(Path.cwd()) not in out  # no absolute path in the output
    _compare(out, name)


def test_cache_notes_and_default_folder(run: Path) -> None:
    code, out, err = invoke("track", str(run), "--format", "csv")
    assert code == 0 and "4 checkpoint(s) computed, 0 from the cache" in err
    assert list((Path("xdg") / "sncli" / "track").rglob("*.json"))
    code, again, err = invoke("track", "run/step_*.safetensors", "--format", "csv")
    assert code == 0 and again == out
    assert "0 checkpoint(s) computed, 4 from the cache" in err


def test_plot(run: Path) -> None:
    code, _, err = invoke("track", str(run), "--no-cache", "--plot", "run.png", "--delta")
    assert code == 0, err
    assert Path("run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["run/step_0.safetensors", "nostep.safetensors"], 1, "nostep.safetensors: no such file"),
        (["run", "--steps", "1,x"], 2, "comma-separated"),
        (["run", "--steps", "1,2"], 1, "--steps gives 2 step(s) for 4 checkpoint(s)"),
        (["run", "--metric", "alpha"], 2, "alpha needs --spectrum"),
        (["run", "--metric", "delta"], 2, "delta needs --delta"),
        (["run", "--metric", "bogus"], 2, "is not one of"),
        (["run", "--cache", "c", "--no-cache"], 2, "contradict"),
        (["run/nothing_*.pt"], 1, "matches no file"),
    ],
)
@pytest.mark.usefixtures("run")
def test_errors_are_one_line(args: list[str], code: int, message: str) -> None:
    exit_code, _, err = invoke("track", *args)
    assert exit_code == code
    assert message in " ".join(err.split())
    assert "Traceback" not in err


@pytest.mark.usefixtures("run")
def test_no_step_in_name() -> None:
    Path("final.safetensors").write_bytes(Path("run/step_0.safetensors").read_bytes())
    code, _, err = invoke("track", "run/step_0.safetensors", "final.safetensors")
    assert code == 1
    assert err.strip() == (
        "sncli: error: final.safetensors: no step in the checkpoint's name (no integer in it); "
        "give --steps"
    )
