"""track's allocation metrics (``TrackOptions.hill/mp_fit/randomize``): equal to ``spectrum``'s
per checkpoint, the in-memory hook equal to the file path, and cache keys that change with the
metrics asked for and the seed (and only then)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from sncli.analysis import MethodOptions
from sncli.numerics.spectral import Method
from sncli.spectrum import SpectrumOptions, spectra
from sncli.tracking import Tracker, TrackOptions, engine, track
from tests.track_runs import STEPS, make_run

ALL = TrackOptions(
    method=MethodOptions(method=Method.DENSE, seed=4),
    spectrum=True,
    hill=True,
    snr=True,
    mp_fit=True,
    randomize=True,
)
EXTRAS = (
    "alpha_hill",
    "snr",
    "mp_softrank",
    "num_spikes",
    "bulk_max",
    "rand_distance",
    "num_traps",
    "max_rand_eval",
)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    make_run(tmp_path / "run")
    return tmp_path / "run"


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    original = engine._spectrum_payload

    def counting(ckpt, options):  # type: ignore[no-untyped-def]
        calls.append(Path(ckpt.path).name)
        return original(ckpt, options)

    monkeypatch.setattr(engine, "_spectrum_payload", counting)
    return calls


def test_equal_to_spectrum_per_checkpoint(run: Path) -> None:
    report = track(run, options=ALL)
    assert report.extras == EXTRAS
    assert report.columns[-len(EXTRAS) :] == EXTRAS
    options = SpectrumOptions(hill=True, snr=True, mp_fit=True, randomize=True, seed=4)
    for step in STEPS:
        one = {
            layer.name: layer
            for layer in spectra(run / f"step_{step}.safetensors", options=options).layers
        }
        for point in (p for p in report.points if p.step == step):
            for metric in EXTRAS:
                assert point.value(metric) == getattr(one[point.name], metric), metric
    frame = report.to_pandas()
    assert list(frame.columns[-len(EXTRAS) :]) == list(EXTRAS)


def test_tracker_equals_the_file_path(run: Path) -> None:
    import torch

    from_files = track(run, options=ALL)
    tracker = Tracker(options=ALL)
    for step in STEPS:
        weights = load_file(str(run / f"step_{step}.safetensors"))
        tracker.add({k: torch.from_numpy(v) for k, v in weights.items()}, step)
    in_memory = tracker.report()
    assert in_memory.extras == EXTRAS
    for a, b in zip(in_memory.points, from_files.points, strict=True):
        assert a.name == b.name and a.metrics == b.metrics


def test_cache_keys(tmp_path: Path, run: Path, counted: list[str]) -> None:
    cache = tmp_path / "cache"
    plain = TrackOptions(method=MethodOptions(method=Method.DENSE), spectrum=True)
    track(run, options=plain, cache=cache)
    assert len(counted) == 4
    hill = TrackOptions(method=MethodOptions(method=Method.DENSE), spectrum=True, hill=True)
    first = track(run, options=hill, cache=cache)  # alpha_hill is not in the plain entries
    assert len(counted) == 8
    again = track(run, options=hill, cache=cache)
    assert len(counted) == 8 and again.computed == 0
    assert [p.metrics for p in again.points] == [p.metrics for p in first.points]
    track(run, options=plain, cache=cache)  # the plain entries are still valid
    assert len(counted) == 8
    rand = TrackOptions(
        method=MethodOptions(method=Method.DENSE, seed=1), spectrum=True, randomize=True
    )
    a = track(run, options=rand, cache=cache)
    assert len(counted) == 12
    other = TrackOptions(
        method=MethodOptions(method=Method.DENSE, seed=2), spectrum=True, randomize=True
    )
    b = track(run, options=other, cache=cache)  # another seed: other permutations
    assert len(counted) == 16
    distances = [p.value("rand_distance") for p in a.points]
    assert distances != [p.value("rand_distance") for p in b.points]
    assert all(d is not None and d > 0 for d in distances)
    assert np.isfinite([p.value("max_rand_eval") for p in a.points]).all()
