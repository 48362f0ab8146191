"""The track cache per checkpoint × layer: a rerun with another ``--filter`` computes only the
layers no earlier run computed (counted at the engines themselves), gives the numbers an
uncached run gives, keeps a failed layer's note, and survives damaged or interleaved entries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import sncli.analysis
import sncli.diff
import sncli.spectrum
from sncli.analysis import MethodOptions
from sncli.errors import NoLayersMatchedError
from sncli.numerics.spectral import Method
from sncli.tracking import TrackCache, TrackOptions, track
from sncli.tracking.cache import cached_layers
from tests.track_runs import make_run

LAYERS = ["0.weight", "2.weight", "4.weight"]


def options(**kwargs: Any) -> TrackOptions:
    return TrackOptions(method=MethodOptions(method=Method.DENSE), **kwargs)


@pytest.fixture
def computed(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[tuple[str, list[str]]]]:
    """Per engine, (checkpoint file, layers it measured) for every call."""
    seen: dict[str, list[tuple[str, list[str]]]] = {"sigma": [], "spectrum": [], "delta": []}

    def counting(kind: str, real: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            report = real(*args, **kwargs)
            names = [getattr(layer, "key_b", None) or layer.name for layer in report.layers]
            seen[kind].append((Path(args[-1].path).name, names))
            return report

        return wrapper

    monkeypatch.setattr(
        sncli.analysis, "spectral_norms", counting("sigma", sncli.analysis.spectral_norms)
    )
    monkeypatch.setattr(sncli.spectrum, "spectra", counting("spectrum", sncli.spectrum.spectra))
    monkeypatch.setattr(
        sncli.diff, "diff_checkpoints", counting("delta", sncli.diff.diff_checkpoints)
    )
    return seen


def layers(calls: list[tuple[str, list[str]]]) -> list[str]:
    return sorted({name for _, names in calls for name in names})


def same_numbers(a: Any, b: Any) -> None:
    assert [(p.step, p.name) for p in a.points] == [(p.step, p.name) for p in b.points]
    for x, y in zip(a.points, b.points, strict=True):
        assert (x.sigma_max, x.drift_first, x.drift_prev, x.delta, x.delta_relative) == (
            y.sigma_max,
            y.drift_first,
            y.drift_prev,
            y.delta,
            y.delta_relative,
        )
        assert dict(x.metrics) == dict(y.metrics)


def test_another_filter_computes_only_the_new_layers(tmp_path: Path, computed: dict) -> None:
    run = tmp_path / "run"
    make_run(run, count=3)
    cache = tmp_path / "cache"
    chosen = options(spectrum=True, delta=True, include=(r"^2\.",))
    first = track(run, options=chosen, cache=cache)
    assert [p.name for p in first.points] == ["2.weight"] * 3
    assert layers(computed["sigma"]) == layers(computed["spectrum"]) == ["2.weight"]
    assert len(computed["sigma"]) == len(computed["spectrum"]) == 3
    assert layers(computed["delta"]) == ["2.weight"] and len(computed["delta"]) == 2
    # a wider filter: only 4.weight is computed, once per checkpoint (and per pair for delta)
    for calls in computed.values():
        calls.clear()
    wider = options(spectrum=True, delta=True, include=(r"^[24]\.",))
    second = track(run, options=wider, cache=cache)
    assert layers(computed["sigma"]) == layers(computed["spectrum"]) == ["4.weight"]
    assert layers(computed["delta"]) == ["4.weight"]
    assert len(computed["sigma"]) == 3 and len(computed["delta"]) == 2
    assert second.computed == 3
    same_numbers(second, track(run, options=wider))  # what an uncached run gives
    # no filter: only 0.weight; then a filter on cached layers only: nothing computed
    for calls in computed.values():
        calls.clear()
    every = track(run, options=options(spectrum=True, delta=True), cache=cache)
    assert layers(computed["sigma"]) == layers(computed["spectrum"]) == ["0.weight"]
    assert [p.name for p in every.points[:3]] == LAYERS  # model order, as computed at once
    same_numbers(every, track(run, options=options(spectrum=True, delta=True)))
    for calls in computed.values():
        calls.clear()
    narrow = options(spectrum=True, delta=True, exclude=(r"^2\.",))
    again = track(run, options=narrow, cache=cache)
    assert computed == {"sigma": [], "spectrum": [], "delta": []} and again.computed == 0
    same_numbers(again, track(run, options=narrow))
    # still one entry per checkpoint and kind: 3 σ, 3 spectrum, 2 delta
    assert len(list(cache.rglob("*.json"))) == 8


def test_a_filter_matching_nothing_fails_as_without_cache(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_run(run, count=1)
    track(run, options=options(), cache=tmp_path / "cache")
    for cache in (tmp_path / "cache", None):
        with pytest.raises(NoLayersMatchedError, match="none of its 3 layers matched"):
            track(run, options=options(include=("nothing",)), cache=cache)


def test_a_failed_layer_keeps_its_note_and_is_not_retried(tmp_path: Path, computed: dict) -> None:
    run = tmp_path / "run"
    make_run(run, count=2)
    weights = load_file(str(run / "step_100.safetensors"))
    weights["4.weight"][0, 0] = np.nan
    save_file(weights, str(run / "step_100.safetensors"))
    cache = tmp_path / "cache"
    first = track(run, options=options(), cache=cache)
    note = "4.weight not measured: non-finite values"
    assert any(n.startswith(note) for n in first.notes)
    assert not any(p.name == "4.weight" and p.step == 100 for p in first.points)
    calls = len(computed["sigma"])
    again = track(run, options=options(), cache=cache)
    assert len(computed["sigma"]) == calls and again.points == first.points
    assert any(n.startswith(note) for n in again.notes)
    # a filter leaving that layer out leaves its note out too
    other = track(run, options=options(include=(r"^2\.",)), cache=cache)
    assert len(computed["sigma"]) == calls and not any(n.startswith(note) for n in other.notes)


@pytest.mark.parametrize(
    "damage",
    [
        lambda payload: {**payload, "layers": [["2.weight"]]},
        lambda payload: {**payload, "layers": "2.weight"},
        lambda payload: {**payload, "missing": {"4.weight": "x"}},
        lambda payload: {**payload, "missing": ["4.weight"]},
    ],
)
def test_a_damaged_layer_list_is_ignored_with_a_note(
    tmp_path: Path, computed: dict, damage: Any
) -> None:
    run = tmp_path / "run"
    make_run(run, count=1)
    cache = tmp_path / "cache"
    first = track(run, options=options(include=(r"^2\.",)), cache=cache)
    (entry,) = cache.rglob("*.json")
    data = json.loads(entry.read_text())
    entry.write_text(json.dumps({**data, "payload": damage(data["payload"])}))
    report = track(run, options=options(include=(r"^2\.",)), cache=cache)
    assert len(computed["sigma"]) == 2 and report.points == first.points
    assert any("not a valid entry" in note for note in report.notes)


def test_interleaved_writers_lose_layers_never_numbers(tmp_path: Path) -> None:
    """Two processes extend one entry at once: each reads it, computes its own layers and
    replaces it whole. The later write drops the other's layers (recomputed next time); what is
    kept is right and the entry stays valid."""
    cache = TrackCache(tmp_path)
    stamps = [["", 1, 2, "abc"]]
    everything = {"a": 1.0, "b": 2.0, "c": 3.0}
    asked: list[list[str]] = []

    def compute(names: Any) -> dict[str, Any]:
        asked.append(list(names))
        return {"format": "f", "records": [{"name": n, "v": everything[n]} for n in names]}

    def lookup(names: list[str]) -> dict[str, Any]:
        return cached_layers(cache, "k", stamps, {}, lambda _: names, compute)[0]

    lookup(["a"])
    key_path = next(tmp_path.rglob("*.json"))
    before = key_path.read_text()
    lookup(["b"])  # process 1 writes a + b
    after_first = key_path.read_text()
    key_path.write_text(before)  # process 2 had read the entry before that write...
    lookup(["c"])  # ...and writes a + c over it
    assert key_path.read_text() != after_first
    got = lookup(["a", "b", "c"])
    assert asked == [["a"], ["b"], ["c"], ["b"]]  # b recomputed, nothing else
    assert {r["name"]: r["v"] for r in got["records"]} == everything
    assert [r["name"] for r in got["records"]] == ["a", "b", "c"]
    assert not cache.notes
