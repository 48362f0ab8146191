"""``sncli report`` on a training run: the page holds every layer's first, last, min, max and
change exactly as ``sncli track --format json`` gives them (in-process and as real processes),
reuses track's cache, stays self-contained, and refuses bad runs in one line writing nothing."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.cli.cli_helpers import invoke
from tests.cli.test_cli_report import _check_page
from tests.track_runs import STEPS, make_run

REPO = Path(__file__).resolve().parents[2]
LAYERS = ["0.weight", "2.weight", "4.weight"]


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    make_run(tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return Path("run")


class _Tables(HTMLParser):
    """Per table after an ``<h2>``: heading → {layer: [exact values of its cells]} (a cell's
    ``title`` attribute, as the page gives it on hover)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, dict[str, list[str]]] = {}
        self._heading: str | None = None
        self._in_h2 = False
        self._row: list[str] | None = None
        self._cell = ""
        self._in_td = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "h2":
            self._in_h2, self._heading = True, ""
        elif tag == "tr":
            self._row = []
        elif tag == "td":
            self._in_td, self._cell = True, ""
        elif tag == "span" and self._row is not None and dict(attrs).get("title"):
            self._row.append(str(dict(attrs)["title"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._in_h2 = False
        elif tag == "td" and self._row is not None and self._in_td:
            self._in_td = False
            if not self._row:
                self._row.append(f"name:{self._cell}")
        elif tag == "tr" and self._row and self._heading is not None:
            name = self._row[0].removeprefix("name:")
            self.tables.setdefault(self._heading, {})[name] = self._row[1:]
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._in_h2 and self._heading is not None:
            self._heading += data
        if self._in_td:
            self._cell += data


def tables(page: Path) -> dict[str, dict[str, list[str]]]:
    parser = _Tables()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.tables


def expected(points: list[dict], metric: str) -> dict[str, list[float | None]]:
    """first, last, min, max and change per layer, from track's JSON points."""
    steps = sorted({p["step"] for p in points})
    out = {}
    for layer in LAYERS:
        by_step = {p["step"]: p[metric] for p in points if p["layer"] == layer}
        values = [by_step.get(step) for step in steps]
        present = [v for v in values if v is not None]
        first, last = present[0], values[-1]
        change = None
        if first and last is not None:
            change = 0.0 if last == first else (last - first) / abs(first)
        out[layer] = [first, last, min(present), max(present), change]
    return out


def check(page: Path, points: list[dict], headings: dict[str, str]) -> None:
    found = tables(page)
    for metric, heading in headings.items():
        want = expected(points, metric)
        got = found[heading]
        assert list(got) == LAYERS, (heading, list(got))
        for layer in LAYERS:
            shown = [float(x) for x in got[layer]]
            exact = [x for x in want[layer] if x is not None]
            assert shown == exact, (metric, layer, shown, exact)


def test_the_page_holds_tracks_numbers(run: Path) -> None:
    code, out, err = invoke(
        "track", str(run), "-m", "dense", "--spectrum", "--delta", "--format", "json"
    )
    assert code == 0, err
    points = json.loads(out)["points"]
    code, _, err = invoke(
        "report", str(run), "-m", "dense", "--spectrum", "--delta", "-o", "run.html"
    )
    assert code == 0, err
    assert "0 checkpoint(s) computed, 4 from the cache" in err  # instant after the track run
    check(
        Path("run.html"),
        points,
        {
            "sigma_max": "σ_max over the run",
            "alpha": "α over the run",
            "stable_rank": "stable rank over the run",
            "effective_rank": "effective rank over the run",
            "delta_relative": "‖W_t − W_{t−1}‖₂ / σ_max(W_{t−1}) over the run",
        },
    )
    text = _check_page(Path("run.html"), LAYERS)
    assert text.count("<svg") == 5  # one figure per metric, no part of the last checkpoint
    assert "Last checkpoint" not in text
    tables_found = tables(Path("run.html"))
    assert tables_found["σ_max over the run"]["0.weight"][-1] == "0.0"  # never moved: exactly 0
    # the last checkpoint's parts on request (its σ pass and factors; the run from the cache)
    code, _, err = invoke(
        "report", str(run), "-m", "dense", "--sections", "lipschitz", "-o", "l.html"
    )
    assert code == 0 and "0 checkpoint(s) computed, 4 from the cache" in err
    text = _check_page(Path("l.html"), LAYERS)
    assert "Last checkpoint: step 300" in text and "Lipschitz bound" in text
    assert text.count("<svg") == 1 + 2  # σ_max over the run; the last checkpoint's σ, factors


@pytest.mark.usefixtures("run")
def test_a_real_process_on_a_pattern() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

    def sncli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sncli", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )

    pattern = "run/step_*.safetensors"
    done = sncli("report", pattern, "--no-cache", "-o", "run.html")
    assert done.returncode == 0, done.stderr
    tracked = sncli("track", pattern, "--no-cache", "--format", "json")
    assert tracked.returncode == 0, tracked.stderr
    check(
        Path("run.html"), json.loads(tracked.stdout)["points"], {"sigma_max": "σ_max over the run"}
    )
    text = _check_page(Path("run.html"), LAYERS)
    assert "Last checkpoint" not in text and text.count("<svg") == 1
    assert f"{len(STEPS)}, steps 0 … 300" in text


@pytest.mark.usefixtures("run")
def test_one_checkpoint_is_the_usual_report() -> None:
    code, _, err = invoke("report", "run/step_1*.safetensors", "-o", "one.html", "-q")
    assert code == 0, err
    code, _, err = invoke("report", "run/step_100.safetensors", "-o", "usual.html", "-q")
    assert code == 0, err
    one, usual = Path("one.html").read_text(), Path("usual.html").read_text()
    assert "Spectral report: <code>run/step_100.safetensors</code>" in one
    # the same page but for matplotlib's random SVG ids and the command line
    assert one.count("\n") == usual.count("\n") and len(one.split("<table>")) == len(
        usual.split("<table>")
    )


@pytest.mark.usefixtures("run")
def test_two_checkpoints_are_a_diff_unless_run() -> None:
    a, b = "run/step_0.safetensors", "run/step_300.safetensors"
    code, _, err = invoke("report", a, b, "-o", "ab.html", "-q")
    assert code == 0, err
    assert "Compared with" in Path("ab.html").read_text()
    code, _, err = invoke("report", a, b, "--run", "-o", "run.html", "-q")
    assert code == 0, err
    found = tables(Path("run.html"))["σ_max over the run"]
    assert list(found) == LAYERS and all(len(cells) == 5 for cells in found.values())
    assert math.isclose(float(found["2.weight"][-1]), 0.9 - 1, rel_tol=1e-6)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["run/*.safetensors"], 1, "final.safetensors: no step in the checkpoint's name"),
        (
            ["run/step_0.safetensors", "run/step_100.safetensors", "other/step_100.safetensors"],
            1,
            "step 100 again",
        ),
        (["run", "--steps", "1,2"], 1, "--steps gives 2 step(s) for 4 checkpoint(s)"),
        (["run", "--steps", "1,x"], 2, "comma-separated"),
        (["run/nothing_*.pt"], 1, "matches no file"),
        (["run", "--cache", "c", "--no-cache"], 2, "contradict"),
        (["run", "--sections", "spectra"], 2, "choose from"),
    ],
)
@pytest.mark.usefixtures("run")
def test_bad_runs_are_one_line_errors_and_write_nothing(
    args: list[str], code: int, message: str
) -> None:
    Path("run/final.safetensors").write_bytes(Path("run/step_0.safetensors").read_bytes())
    Path("other").mkdir()
    Path("other/step_100.safetensors").write_bytes(Path("run/step_0.safetensors").read_bytes())
    exit_code, _, err = invoke("report", *args, "-o", "out.html")
    assert exit_code == code, err
    assert message in " ".join(err.split()) and "Traceback" not in err
    if code == 1:
        assert len(err.strip().splitlines()) == 1
    assert not Path("out.html").exists()
    assert not [p for p in Path().iterdir() if p.name.startswith(".out.html")]  # no staged file


@pytest.mark.usefixtures("run")
def test_sections_none_leaves_sigma_only() -> None:
    code, _, err = invoke("report", "run/step_0.safetensors", "--sections", "none", "-o", "o.html")
    assert code == 0, err
    text = Path("o.html").read_text()
    assert "σ of every layer" in text and "Lipschitz bound" not in text
    assert "<h2>Spectra</h2>" not in text and text.count("<svg") == 1


@pytest.mark.usefixtures("run")
def test_a_trainer_folder_is_its_model_unless_run() -> None:
    """A Trainer's output folder: the final model.safetensors beside checkpoint-N/ folders."""
    for name, source in (("out", 3), ("out/checkpoint-100", 1), ("out/checkpoint-200", 2)):
        Path(name).mkdir(parents=True)
        step = STEPS[source]
        Path(name, "model.safetensors").write_bytes(
            Path(f"run/step_{step}.safetensors").read_bytes()
        )
    code, _, err = invoke("report", "out", "-o", "model.html")
    assert code == 0, err
    assert "out: reporting the checkpoint in it; it also holds a run of 2 checkpoints" in err
    assert "Spectral report: <code>out/model.safetensors</code>" in Path("model.html").read_text()
    code, _, err = invoke("report", "out", "--run", "-o", "run.html")
    assert code == 0, err
    found = tables(Path("run.html"))["σ_max over the run"]
    assert [len(cells) for cells in found.values()] == [5, 5, 5]
    assert "2, steps 100 … 200" in Path("run.html").read_text()
