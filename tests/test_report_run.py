"""sncli/report.py for a training run: which arguments make a run, the per-layer trends against
float64 NumPy SVD of each checkpoint, the track cache reused, and the last checkpoint's parts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from sncli.errors import CheckpointError
from sncli.numerics.spectral import Method
from sncli.report import (
    RUN_STAGES,
    ReportOptions,
    build_run_report,
    layer_trends,
    run_items,
)
from sncli.tracking import engine
from tests.track_runs import STEPS, make_run, numpy_sigma

DENSE = ReportOptions(method=Method.DENSE, sections=frozenset())


@pytest.fixture
def run(tmp_path: Path) -> Path:
    make_run(tmp_path / "run")
    return tmp_path / "run"


def test_which_arguments_make_a_run(run: Path, samples: Path) -> None:
    files = [str(run / f"step_{s}.safetensors") for s in STEPS]
    assert run_items(files[:1]) is None  # one checkpoint
    assert run_items(files[:2]) is None  # A and B of a diff
    assert run_items(files[:2], run=True) == files[:2]
    assert run_items(files[::-1][:3]) == files[1:]  # three: a run, in step order
    assert run_items([str(run)]) == files  # a run folder
    assert run_items([str(run / "step_*.safetensors")]) == files  # a pattern
    assert run_items(files[:1], [7]) == files[:1]  # --steps: a run (of one)
    # a folder that is one checkpoint (a sharded index) stays one checkpoint
    assert run_items([str(samples / "tiny_transformer")]) is None
    assert run_items(["org/model-name"]) is None  # a Hugging Face id


def test_a_run_member_without_a_step_is_an_error(run: Path) -> None:
    (run / "final.safetensors").write_bytes((run / "step_0.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"final\.safetensors: no step"):
        run_items([str(run / "*.safetensors")])


def test_trends_against_numpy(run: Path) -> None:
    report = build_run_report([str(run)], options=DENSE)
    assert report.last is None and report.track.steps == list(STEPS)
    sigmas = {
        step: {
            k: numpy_sigma(v)
            for k, v in load_file(str(run / f"step_{step}.safetensors")).items()
            if v.ndim == 2
        }
        for step in STEPS
    }
    trends = {t.name: t for t in report.trends["sigma_max"]}
    assert list(trends) == ["0.weight", "2.weight", "4.weight"]
    for name, trend in trends.items():
        expected = [sigmas[step][name] for step in STEPS]
        np.testing.assert_allclose(trend.values, expected, rtol=1e-10)
        assert trend.first == trend.values[0] and trend.last == trend.values[-1]
        assert trend.minimum == min(trend.values) and trend.maximum == max(trend.values)
        assert trend.change == pytest.approx((expected[-1] - expected[0]) / expected[0], rel=1e-9)
    assert trends["0.weight"].change == 0.0  # never moves: exactly 0
    assert trends["2.weight"].change == pytest.approx(0.9 - 1, rel=1e-6)  # scaled by 0.9
    assert list(report.trends) == ["sigma_max"]
    both = build_run_report([str(run)], options=DENSE, spectrum=True, delta=True)
    assert list(both.trends) == [
        "sigma_max",
        "alpha",
        "stable_rank",
        "effective_rank",
        "delta_relative",
    ]
    delta = {t.name: t for t in both.trends["delta_relative"]}["0.weight"]
    assert delta.values[0] is None and delta.values[1:] == (0.0, 0.0, 0.0)


def test_trends_of_a_layer_that_appears_later() -> None:
    from sncli.tracking.engine import TrackCheckpoint, TrackPoint, TrackReport

    def point(step: int, name: str, value: float) -> TrackPoint:
        return TrackPoint(step, f"s{step}", name, name, "linear", 2, 2, value, "exact")

    report = TrackReport(
        checkpoints=[TrackCheckpoint(s, f"s{s}", "npy", False) for s in (0, 1, 2)],
        points=[point(0, "a", 2.0), point(1, "a", 3.0), point(1, "b", 4.0), point(2, "b", 1.0)],
        method="dense",
        spectrum=False,
        delta=False,
    )
    a, b = layer_trends(report)
    assert (a.values, a.first, a.last, a.change) == ((2.0, 3.0, None), 2.0, None, None)
    assert (b.values, b.first, b.last, b.minimum, b.maximum) == (
        (None, 4.0, 1.0),
        4.0,
        1.0,
        1.0,
        4.0,
    )
    assert b.change == -0.75


def test_a_report_after_a_track_run_computes_nothing(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sncli.analysis import MethodOptions
    from sncli.tracking import TrackOptions, track

    calls: list[str] = []
    real = engine._sigma_payload
    monkeypatch.setattr(
        engine,
        "_sigma_payload",
        lambda ckpt, options: calls.append(ckpt.path) or real(ckpt, options),
    )
    cache = tmp_path / "cache"
    # what `sncli track RUN --method dense` computes
    tracked = track(
        run, options=TrackOptions(method=MethodOptions(method=Method.DENSE)), cache=cache
    )
    assert len(calls) == len(STEPS)
    report = build_run_report([str(run)], options=DENSE, cache=cache)
    assert len(calls) == len(STEPS) and report.track.computed == 0
    assert report.track.points == tracked.points


def test_the_last_checkpoints_parts(run: Path) -> None:
    seen: list[str] = []

    def stages(name: str):  # type: ignore[no-untyped-def]
        seen.append(name)
        return None

    options = ReportOptions(method=Method.DENSE, sections=frozenset({"lipschitz", "diff"}))
    report = build_run_report([str(run)], options=options, stages=stages)
    last = report.last
    assert last is not None and last.checkpoint == str(run / "step_300.safetensors")
    assert last.lipschitz is not None and last.diff is not None
    assert last.diff.b == str(run / "step_0.safetensors")
    by_name = {layer.name: layer for layer in last.diff.layers}
    assert by_name["0.weight"].unchanged and not by_name["2.weight"].unchanged
    sigma = {layer.name: layer.sigma for layer in last.inspect.layers}
    for trend in report.trends["sigma_max"]:  # the last checkpoint's σ is the run's last
        assert sigma[trend.name] == pytest.approx(trend.last, rel=1e-12)
    assert seen[0] == "track" and set(seen) <= set(RUN_STAGES)
