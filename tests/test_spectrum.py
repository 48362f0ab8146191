"""The spectrum engine (sncli.spectrum) on real checkpoints: the same layers and matrices as
``inspect``, every singular value against float64 scipy svdvals of the weight the model stores,
top-K mode, bad weights, sorting, the .npz output and the pandas view.

Tolerances: σ_max 1e-13 relative; every σ ≥ 1e-3·σ_max 1e-9 relative and all within 1e-12·σ_max
absolute (see tests/numerics/test_svd.py); top-K values within 1e-7.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from safetensors.torch import save_file

import sncli
from sncli.analysis import spectral_norms
from sncli.errors import NoLayersMatchedError, NumericalError, WriteError
from sncli.layers import LayerKind
from sncli.numerics.spectral import as_matrix
from sncli.spectrum import (
    METRICS,
    PARTIAL_METRICS,
    SpectrumOptions,
    SpectrumSortKey,
    check_spectra_target,
    save_spectra,
    sort_spectra,
    spectra,
)
from sncli.writer import TEMP_MARKER

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SAMPLES = ["mlp_path", "disc_parametrized_path", "disc_legacy_path", "lightning_path"]
SAMPLES.append("transformer_index_path")


def run(path: Path, **options: object) -> sncli.spectrum.SpectrumReport:
    with sncli.open_checkpoint(path) as ckpt:
        return spectra(ckpt, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("fixture", SAMPLES)
def test_samples_match_float64_svd_and_inspect(fixture: str, request: pytest.FixtureRequest):
    path = request.getfixturevalue(fixture)
    with sncli.open_checkpoint(path) as ckpt:
        report = spectra(ckpt)
        inspected = spectral_norms(ckpt)
        weights = {layer.name: ckpt.load(layer.name) for layer in report.layers}
    # Same layers, kinds and matrices as inspect.
    assert [(x.name, x.kind, x.matrix_shape) for x in report.layers] == [
        (x.name, x.kind, x.matrix_shape) for x in inspected.layers
    ]
    assert [s.name for s in report.skipped] == [s.name for s in inspected.skipped]
    for layer, sigma in zip(report.layers, inspected.layers, strict=True):
        matrix = as_matrix(weights[layer.name], 1 if layer.transposed else 0).double().numpy()
        ref = scipy.linalg.svdvals(matrix)
        assert layer.complete and layer.count == min(matrix.shape) and layer.bound == "exact"
        assert layer.sigma_max == pytest.approx(ref[0], rel=1e-13)
        big = ref >= 1e-3 * ref[0]
        np.testing.assert_allclose(layer.values[big], ref[big], rtol=1e-9)
        np.testing.assert_allclose(layer.values, ref, rtol=0, atol=1e-12 * ref[0])
        assert layer.sigma_max == pytest.approx(sigma.sigma, rel=1e-4)  # inspect's auto
        assert layer.frobenius == pytest.approx(np.linalg.norm(matrix), rel=1e-12)
        assert layer.nuclear == pytest.approx(ref.sum(), rel=1e-12)
        assert layer.sigma_min == pytest.approx(ref[-1], rel=1e-9, abs=1e-12 * ref[0])
        assert layer.stable_rank == pytest.approx((ref**2).sum() / ref[0] ** 2, rel=1e-12)
        assert layer.spectral_norm == (sigma.spectral_norm is not None)


def test_kinds_are_marked(transformer_index_path: Path, lightning_path: Path) -> None:
    kinds = {layer.short_name: layer.kind for layer in run(transformer_index_path).layers}
    assert kinds["model.embed_tokens.weight"] is LayerKind.EMBEDDING
    assert kinds["lm_head.weight"] is LayerKind.LINEAR
    conv = run(lightning_path).layers[0]
    assert conv.kind is LayerKind.CONV2D and conv.matrix.startswith("reshape") and conv.reshape_note
    assert [x.kind for x in run(lightning_path, kinds=[LayerKind.LINEAR]).layers] == [
        LayerKind.LINEAR
    ]


def test_transposed_conv_uses_dim_one(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 10, 3, 3, generator=g)  # ConvTranspose: (in 6, out 10, 3, 3)
    path = tmp_path / "t.safetensors"
    save_file({"up.weight": weight}, str(path))
    layer = run(path, transposed=["up"]).layers[0]
    assert layer.transposed and layer.matrix_shape == (10, 54)
    ref = scipy.linalg.svdvals(weight.permute(1, 0, 2, 3).reshape(10, -1).double().numpy())
    np.testing.assert_allclose(layer.values, ref, rtol=1e-12)


def test_top_k_keeps_only_what_k_values_determine(mlp_path: Path) -> None:
    full = run(mlp_path)
    top = run(mlp_path, options=SpectrumOptions(top_k=4))
    assert top.top_k == 4
    for a, b in zip(full.layers, top.layers, strict=True):
        assert b.count == 4 and not b.complete
        np.testing.assert_allclose(b.values, a.values[:4], rtol=1e-7)
        for name in METRICS:
            value = getattr(b, name)
            if name in PARTIAL_METRICS and name != "mp_spikes":
                assert value == pytest.approx(getattr(a, name), rel=1e-7), name
            elif name not in PARTIAL_METRICS:
                assert value is None, name
        if b.bound == "lower":
            assert b.algorithm == "block-lanczos-float64" and b.converged
            assert b.max_error_estimate is not None and b.max_error_estimate <= 1e-8
            assert np.all(b.values <= a.values[:4] * (1 + 1e-12))
        assert b.mp_spikes in (None, a.mp_spikes)
    # K at or above a layer's side: that layer gets its whole spectrum.
    whole = run(mlp_path, options=SpectrumOptions(top_k=256))
    assert all(layer.complete for layer in whole.layers)
    with pytest.raises(ValueError, match="top_k"):
        run(mlp_path, options=SpectrumOptions(top_k=0))


def test_workers_do_not_change_results(transformer_index_path: Path) -> None:
    one = run(transformer_index_path, options=SpectrumOptions(workers=1))
    three = run(transformer_index_path, options=SpectrumOptions(workers=3))
    assert one.layers == three.layers  # every metric equal (values are compared below)
    for a, b in zip(one.layers, three.layers, strict=True):
        assert np.array_equal(a.values, b.values)


def test_non_finite_layers_are_skipped(tmp_path: Path) -> None:
    bad = torch.ones(8, 8)
    bad[1, 1] = float("nan")
    path = tmp_path / "m.safetensors"
    save_file({"a.weight": torch.eye(8), "b.weight": bad}, str(path))
    report = run(path)
    assert [x.name for x in report.layers] == ["a.weight"]
    assert any(s.name == "b.weight" and s.reason.startswith("non-finite") for s in report.skipped)
    save_file({"b.weight": bad}, str(path))
    with pytest.raises(NumericalError, match="no layer could be measured"):
        run(path)
    with pytest.raises(NoLayersMatchedError, match="none of its 1 layers matched"):
        run(path, include=["nothing"])


def test_sorting(transformer_index_path: Path) -> None:
    layers = run(transformer_index_path).layers
    by_alpha = sort_spectra(layers, SpectrumSortKey.ALPHA)
    alphas = [x.alpha for x in by_alpha if x.alpha is not None]
    assert alphas == sorted(alphas, reverse=True)
    by_sigma = sort_spectra(layers, "sigma", reverse=True)
    assert [x.sigma_max for x in by_sigma] == sorted(x.sigma_max for x in layers)
    sizes = [math.prod(x.matrix_shape) for x in sort_spectra(layers, "size")]
    assert sizes == sorted(sizes, reverse=True)
    assert sort_spectra(layers[::-1], "name") == layers


def test_no_alpha_sorts_last(disc_parametrized_path: Path) -> None:
    layers = run(disc_parametrized_path).layers
    assert layers[-1].alpha is None  # the 1×2048 output layer: one singular value
    assert sort_spectra(layers, "alpha")[-1].name == layers[-1].name


def test_save_spectra_round_trip_and_refusals(mlp_path: Path, tmp_path: Path) -> None:
    report = run(mlp_path)
    out = tmp_path / "spectra.npz"
    out.write_bytes(b"old")
    save_spectra(report, out)
    with np.load(out, allow_pickle=False) as data:
        assert sorted(data.files) == sorted(x.name for x in report.layers)
        for layer in report.layers:
            assert data[layer.name].dtype == np.float64
            assert np.array_equal(data[layer.name], layer.values)
    assert not [p for p in tmp_path.iterdir() if TEMP_MARKER in p.name]
    with sncli.open_checkpoint(mlp_path) as ckpt:
        with pytest.raises(WriteError, match="checkpoint itself"):
            check_spectra_target(mlp_path, ckpt)
        with pytest.raises(WriteError, match="folder does not exist"):
            check_spectra_target(tmp_path / "missing" / "x.npz", ckpt)
        with pytest.raises(WriteError, match="is a folder"):
            check_spectra_target(tmp_path, ckpt)
        assert check_spectra_target(out, ckpt) == out


def test_save_spectra_leaves_the_old_file_when_writing_fails(
    mlp_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = run(mlp_path)
    out = tmp_path / "spectra.npz"
    out.write_bytes(b"old")
    calls = []

    def full_disk(*_args: object, **_kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 2:  # the second layer: part of the archive is already written
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(np.lib.format, "write_array", full_disk)
    with pytest.raises(WriteError, match="No space left on device; nothing was changed"):
        save_spectra(report, out)
    assert out.read_bytes() == b"old"
    assert not [p for p in tmp_path.iterdir() if TEMP_MARKER in p.name]


def test_to_pandas_and_summary(transformer_index_path: Path) -> None:
    report = run(transformer_index_path)
    frame = report.to_pandas()
    assert list(frame["name"]) == [x.name for x in report.layers]
    assert set(METRICS) <= set(frame.columns)
    assert frame["alpha"].tolist() == pytest.approx([x.alpha for x in report.layers])
    summary = report.summary()
    assert summary["alpha"] == pytest.approx(float(np.mean([x.alpha for x in report.layers])))
    assert summary["stable_rank"] == pytest.approx(frame["stable_rank"].mean())


def test_frozen_results(mlp_path: Path) -> None:
    layer = run(mlp_path).layers[0]
    with pytest.raises(AttributeError):
        layer.alpha = 2.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        layer.values[0] = 0.0
