"""sncli.track: the series, drift, --spectrum, --delta, the cache and the in-memory hook,
each number against float64 NumPy SVD of the checkpoint's own weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import sncli
from sncli.analysis import MethodOptions
from sncli.errors import CheckpointError, SncliError
from sncli.numerics.spectral import Method
from sncli.tracking import TrackCache, Tracker, TrackOptions, discover, engine, step_of, track
from tests.track_runs import SCALES, STEPS, make_run, numpy_sigma, write_step

DENSE = TrackOptions(method=MethodOptions(method=Method.DENSE))
#: Dense float64 LAPACK against NumPy's float64 SVD.
F64 = 1e-10


@pytest.fixture
def run(tmp_path: Path) -> Path:
    make_run(tmp_path / "run")
    return tmp_path / "run"


def _weights(folder: Path) -> dict[int, dict[str, np.ndarray]]:
    return {step: load_file(str(folder / f"step_{step}.safetensors")) for step in STEPS}


def test_series_against_numpy(run: Path) -> None:
    report = track(run, options=DENSE)
    weights = _weights(run)
    assert report.steps == list(STEPS)
    assert len(report.points) == 3 * len(STEPS)
    for point in report.points:
        reference = numpy_sigma(weights[point.step][point.name])
        first = numpy_sigma(weights[0][point.name])
        assert point.sigma_max == pytest.approx(reference, rel=F64)
        assert point.drift_first == pytest.approx((reference - first) / first, rel=1e-8, abs=1e-12)
    for point in report.points:
        if point.name == "0.weight":  # never moves: exactly 0, not rounding noise
            assert point.drift_first == 0.0
            assert point.drift_prev in (0.0, None)
        if point.name == "2.weight":  # σ(cW) = cσ(W)
            assert point.drift_first == pytest.approx(SCALES[STEPS.index(point.step)] - 1, abs=1e-6)
    prev = {p.step: p for p in report.points if p.name == "2.weight"}
    assert prev[200].drift_prev == pytest.approx(1.25 / 1.1 - 1, abs=1e-6)
    assert prev[0].drift_prev is None


def test_default_method_within_its_tolerance(run: Path) -> None:
    report = track(run)
    weights = _weights(run)
    for point in report.points:
        reference = numpy_sigma(weights[point.step][point.name])
        assert point.sigma_max == pytest.approx(reference, rel=1e-4)
        assert point.sigma_max <= reference * (1 + 1e-12)  # iterative values are lower bounds


def test_delta_against_numpy(run: Path) -> None:
    options = TrackOptions(method=MethodOptions(method=Method.DENSE), delta=True)
    report = track(run, options=options)
    weights = _weights(run)
    for point in report.points:
        if point.step == 0:
            assert point.delta is None
            continue
        before = weights[STEPS[STEPS.index(point.step) - 1]][point.name].astype(np.float64)
        after = weights[point.step][point.name].astype(np.float64)
        expected = numpy_sigma(after - before)
        assert point.delta == pytest.approx(expected, rel=F64, abs=1e-15)
        assert point.delta_relative == pytest.approx(expected / numpy_sigma(before), rel=F64)
        if point.name == "0.weight":
            assert point.delta == 0.0


def test_spectrum_metrics_against_numpy(run: Path) -> None:
    options = TrackOptions(method=MethodOptions(method=Method.DENSE), spectrum=True)
    report = track(run, options=options)
    weights = _weights(run)
    for point in report.points:
        values = np.linalg.svd(weights[point.step][point.name].astype(np.float64), compute_uv=False)
        assert point.metrics["frobenius"] == pytest.approx(np.sqrt((values**2).sum()), rel=F64)
        assert point.metrics["nuclear"] == pytest.approx(values.sum(), rel=F64)
        assert point.metrics["sigma_min"] == pytest.approx(values[-1], rel=1e-8)
        assert point.metrics["stable_rank"] == pytest.approx(
            (values**2).sum() / values[0] ** 2, rel=F64
        )
        p = values / values.sum()
        assert point.metrics["effective_rank"] == pytest.approx(
            np.exp(-(p * np.log(p)).sum()), rel=1e-9
        )


def test_to_pandas_is_the_long_form(run: Path) -> None:
    from sncli.tracking.rows import COLUMNS

    frame = track(run, options=DENSE).to_pandas()
    assert list(frame.columns) == list(COLUMNS)
    assert len(frame) == 12
    assert frame["step"].tolist()[:3] == [0, 0, 0]


def test_package_is_callable(run: Path) -> None:
    assert sncli.track(run, options=DENSE).steps == list(STEPS)


# ----------------------------------------------------------------------------- series


@pytest.mark.parametrize(
    ("name", "step"),
    [
        ("step_1200.safetensors", 1200),
        ("runs/checkpoint-1200", 1200),
        ("runs/checkpoint-1200/model.safetensors", 1200),
        ("epoch3-step450.ckpt", 450),
        ("model.00002-of-00004.safetensors.index.json", 4),
        ("final.pt", None),
        ("runs2/final.pt", None),
    ],
)
def test_step_of(name: str, step: int | None) -> None:
    assert step_of(name) == step


def test_discover_folder_glob_and_steps(run: Path) -> None:
    by_folder = discover([str(run)])
    assert [item.step for item in by_folder] == list(STEPS)  # numeric, not text, order
    by_glob = discover([str(run / "step_*.safetensors")])
    assert by_glob == by_folder
    given = discover([str(run / "step_300.safetensors"), str(run / "step_0.safetensors")], [5, 9])
    assert [(Path(i.path).name, i.step) for i in given] == [
        ("step_300.safetensors", 5),
        ("step_0.safetensors", 9),
    ]
    with pytest.raises(SncliError, match="--steps gives 1 step"):
        discover([str(run)], [1])


def test_discover_refuses_what_has_no_step(run: Path, tmp_path: Path) -> None:
    other = tmp_path / "final.safetensors"
    other.write_bytes((run / "step_0.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="no step in the checkpoint's name") as info:
        discover([str(run / "step_0.safetensors"), str(other)])
    assert "final.safetensors" in str(info.value)
    with pytest.raises(CheckpointError, match="step 0 again"):
        discover([str(run / "step_0.safetensors"), str(run / "step_0.safetensors")])
    with pytest.raises(CheckpointError, match="matches no file"):
        discover([str(tmp_path / "nothing_*.pt")])


def test_run_folder_ignores_other_folders(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_run(run, count=2)
    (run / "logs2").mkdir()  # a digit, but no checkpoint inside
    (run / "logs2" / "events.txt").write_text("")
    (run / "checkpoint-500").mkdir()
    write_step(run / "checkpoint-500", 2, step=1).rename(run / "checkpoint-500" / "model.bin")
    assert [Path(i.path).name for i in discover([str(run)])] == [
        "step_0.safetensors",
        "step_100.safetensors",
        "checkpoint-500",
    ]


def test_a_folder_checkpoint_is_one_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint-700"
    folder.mkdir()
    write_step(folder, 1, step=5).rename(folder / "model.safetensors")
    assert [(i.step, Path(i.path).name) for i in discover([str(folder)])] == [
        (700, "checkpoint-700")
    ]


def test_a_sharded_folder_is_one_checkpoint(tmp_path: Path) -> None:
    """Shards (``model-00001-of-00002.safetensors``) are one checkpoint, not steps 1 and 2."""
    folder = tmp_path / "model"
    folder.mkdir()
    for shard in (1, 2):
        write_step(folder, 1, step=shard).rename(folder / f"model-0000{shard}-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text("{}")
    assert [Path(i.path).name for i in discover([str(folder)], steps=[3])] == ["model"]
    runs = tmp_path / "run"
    (runs / "checkpoint-10").mkdir(parents=True)
    write_step(runs / "checkpoint-10", 1, step=0).rename(
        runs / "checkpoint-10" / "model-00001-of-00001.safetensors"
    )
    assert [(i.step, Path(i.path).name) for i in discover([str(runs)])] == [(10, "checkpoint-10")]


# ----------------------------------------------------------------------------- cache


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The checkpoints whose σ were computed (not read from the cache)."""
    calls: list[str] = []
    original = engine._sigma_payload

    def counting(ckpt, options):  # type: ignore[no-untyped-def]
        calls.append(Path(ckpt.path).name)
        return original(ckpt, options)

    monkeypatch.setattr(engine, "_sigma_payload", counting)
    return calls


def test_cache_hits_and_one_more_checkpoint(tmp_path: Path, counted: list[str]) -> None:
    run = tmp_path / "run"
    make_run(run, count=3)
    cache = tmp_path / "cache"
    first = track(run, options=DENSE, cache=cache)
    assert len(counted) == 3 and first.computed == 3
    again = track(run, options=DENSE, cache=cache)
    assert len(counted) == 3 and again.computed == 0  # nothing computed
    assert again.points == first.points
    write_step(run, 3)
    more = track(run, options=DENSE, cache=cache)
    assert counted[3:] == ["step_300.safetensors"] and more.computed == 1
    assert more.points[:9] == first.points
    # another method is another key: all recomputed
    track(run, options=TrackOptions(method=MethodOptions(method=Method.POWER)), cache=cache)
    assert len(counted) == 8


def test_cache_recomputes_a_changed_file(tmp_path: Path, counted: list[str]) -> None:
    run = tmp_path / "run"
    make_run(run, count=2)
    cache = tmp_path / "cache"
    track(run, options=DENSE, cache=cache)
    target = run / "step_100.safetensors"
    stat = target.stat()
    write_step(run, 3, step=100)  # other weights, same name
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime
    report = track(run, options=DENSE, cache=cache)
    assert counted == ["step_0.safetensors", "step_100.safetensors", "step_100.safetensors"]
    two = next(p for p in report.points if p.name == "2.weight" and p.step == 100)
    reference = numpy_sigma(load_file(str(target))["2.weight"])
    assert two.sigma_max == pytest.approx(reference, rel=F64)
    # touched only (same bytes, new mtime): recomputed too, never trusted over a changed stamp
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    track(run, options=DENSE, cache=cache)
    assert counted[-1] == "step_100.safetensors" and len(counted) == 4


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # truncated
        lambda _: "\x00\xff garbage",
        lambda text: text.replace('"sigma_max": ', '"sigma_max": "x', 1),  # not JSON
        lambda text: json.dumps({**json.loads(text), "key": "0" * 64}),  # another entry's key
        lambda text: text.replace('"sigma_max": ', '"sigma_max": [', 1) + "]",
        lambda text: json.dumps(
            {**json.loads(text), "payload": {"records": [{"name": 3}], "notes": []}}
        ),
        lambda text: json.dumps(
            {**json.loads(text), "payload": {"records": [], "notes": [[9, "x"]]}}
        ),
    ],
)
def test_corrupt_entry_is_ignored_with_a_note(tmp_path: Path, counted: list[str], damage) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    make_run(run, count=1)
    cache = tmp_path / "cache"
    first = track(run, options=DENSE, cache=cache)
    (entry,) = [p for p in cache.rglob("*.json")]
    entry.write_text(damage(entry.read_text()), errors="surrogateescape")
    report = track(run, options=DENSE, cache=cache)
    assert len(counted) == 2  # recomputed
    assert report.points == first.points
    assert any("cache entry" in note and "recomputed" in note for note in report.notes)
    third = track(run, options=DENSE, cache=cache)  # the entry was rewritten
    assert len(counted) == 2 and not third.notes


def test_cache_in_an_unwritable_place_is_a_note(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    make_run(tmp_path / "run", count=1)
    report = track(tmp_path / "run", options=DENSE, cache=blocker / "cache")
    assert report.points and any("cannot write the cache" in n for n in report.notes)


def test_cache_writes_are_atomic_json(tmp_path: Path) -> None:
    make_run(tmp_path / "run", count=1)
    track(tmp_path / "run", options=DENSE, cache=tmp_path / "cache")
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert files and all(p.suffix == ".json" and not p.name.startswith(".tmp") for p in files)
    json.loads(files[0].read_text())


# ----------------------------------------------------------------------------- in memory


def test_tracker_equals_the_file_path(run: Path) -> None:
    import torch

    options = TrackOptions(method=MethodOptions(method=Method.DENSE), delta=True, spectrum=True)
    from_files = track(run, options=options)
    tracker = Tracker(options=options)
    for step in STEPS:
        state = {k: torch.from_numpy(v) for k, v in _weights(run)[step].items()}
        tracker.add(state, step)
    in_memory = tracker.report()
    assert [p.name for p in in_memory.points] == [p.name for p in from_files.points]
    for a, b in zip(in_memory.points, from_files.points, strict=True):
        assert (a.step, a.sigma_max, a.drift_first, a.drift_prev) == (
            b.step,
            b.sigma_max,
            b.drift_first,
            b.drift_prev,
        )
        assert a.delta == b.delta and a.metrics == b.metrics
    with pytest.raises(ValueError, match="not after"):
        tracker.add({}, 0)


def test_tracker_cache(tmp_path: Path, run: Path, counted: list[str]) -> None:
    import torch

    state = {k: torch.from_numpy(v) for k, v in _weights(run)[0].items()}
    Tracker(tmp_path / "cache", DENSE).add(state, 1)
    again = Tracker(tmp_path / "cache", DENSE)
    again.add(state, 1)
    assert len(counted) == 1 and again.report().computed == 0
    state["0.weight"] = state["0.weight"] * 2
    again.add(state, 2)
    assert len(counted) == 2


def test_cache_entry_never_unpickled(tmp_path: Path) -> None:
    """The cache module reads JSON only."""
    source = Path(engine.__file__).with_name("cache.py").read_text()
    assert "pickle" not in source.replace("never pickles", "").replace("(never pickles)", "")
    assert TrackCache(tmp_path).get("ab" * 32) is None
