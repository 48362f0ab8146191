"""sncli/report.py: what ``sncli report`` computes, each number once, with the options of the
commands it runs, and one progress line per stage."""

from __future__ import annotations

from pathlib import Path

import pytest
import scipy.linalg
import torch

import sncli.report as report_module
from sncli.analysis import MethodOptions, spectral_norms
from sncli.checkpoint import open_checkpoint
from sncli.numerics.spectral import BoundKind, Method
from sncli.report import STAGES, ReportOptions, build_report, sigmas_from_spectra


def reference_sigma(checkpoint, name: str) -> float:  # type: ignore[no-untyped-def]
    """float64 LAPACK SVD of the stored weight, as a matrix (out, in·k…)."""
    weight = checkpoint.load(name)
    matrix = torch.as_tensor(weight).double().reshape(weight.shape[0], -1).numpy()
    return float(scipy.linalg.svdvals(matrix)[0])


@pytest.mark.parametrize("sample", ["mlp.safetensors", "sngan_disc_parametrized.pt"])
def test_sigma_comes_from_the_spectra_once(
    samples: Path, sample: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """By default σ is the spectra's largest value: no second σ pass, the same numbers as
    inspect's dense pass (float64 rounding) and auto (its 1e-4 target), and as LAPACK."""
    with open_checkpoint(samples / sample) as ckpt:
        dense = spectral_norms(ckpt, options=MethodOptions(method=Method.DENSE))
        auto = spectral_norms(ckpt)

        def no_second_pass(*_: object, **__: object) -> None:
            raise AssertionError("σ computed a second time")

        monkeypatch.setattr(report_module, "spectral_norms", no_second_pass)
        result = build_report(ckpt)
        assert result.spectrum is not None
        got = {layer.name: layer for layer in result.inspect.layers}
        assert list(got) == [layer.name for layer in dense.layers]
        assert [s.name for s in result.inspect.skipped] == [s.name for s in dense.skipped]
        for expected, close in zip(dense.layers, auto.layers, strict=True):
            layer = got[expected.name]
            assert layer.sigma == pytest.approx(expected.sigma, rel=1e-12, abs=1e-300)
            assert layer.sigma == pytest.approx(close.sigma, rel=1e-4)
            assert layer.bound is BoundKind.EXACT and layer.method is Method.DENSE
            assert (layer.kind, layer.shape, layer.matrix_shape) == (
                expected.kind,
                expected.shape,
                expected.matrix_shape,
            )
        if sample == "mlp.safetensors":  # plain 2-D weights: LAPACK on the stored matrix
            for layer in result.inspect.layers:
                assert layer.sigma == pytest.approx(reference_sigma(ckpt, layer.name), rel=1e-12)


def test_sigma_pass_runs_when_the_spectra_cannot_give_it(
    mlp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """power (a requested method), top-k spectra and a report without spectra measure σ."""
    calls: list[MethodOptions] = []
    real = report_module.spectral_norms

    def counted(checkpoint, *, options, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(options)
        return real(checkpoint, options=options, **kwargs)

    monkeypatch.setattr(report_module, "spectral_norms", counted)
    with open_checkpoint(mlp_path) as ckpt:
        power = build_report(ckpt, options=ReportOptions(method=Method.POWER, tol=1e-9))
        top = build_report(ckpt, options=ReportOptions(top_k=3, tol=1e-6))
        bare = build_report(ckpt, options=ReportOptions(sections=frozenset({"lipschitz"})))
        assert [c.method for c in calls] == [Method.POWER, Method.AUTO, Method.AUTO]
        assert calls[0].tol == 1e-9 and calls[1].tol == 1e-6
        assert power.inspect.layers[0].method is Method.POWER
        assert top.spectrum is not None and top.spectrum.top_k == 3
        assert all(layer.count == 3 for layer in top.spectrum.layers)
        assert bare.spectrum is None and bare.spectrum_error is None
        assert bare.lipschitz is not None
        for layer in power.inspect.layers:  # power's tol stops it; its value is a lower bound
            expected = reference_sigma(ckpt, layer.name)
            assert layer.sigma == pytest.approx(expected, rel=1e-5)
            assert layer.sigma <= expected * (1 + 1e-12)


@pytest.mark.parametrize("sample", ["mlp.safetensors", "sngan_disc_parametrized.pt"])
def test_lipschitz_factors_reuse_the_spectra(
    samples: Path, sample: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report's Lipschitz factors of plain linear layers take σ from the full spectra (no
    second dense pass): the same factors as ``lipschitz`` alone (float64 rounding, 1e-12) and
    above LAPACK's σ; parametrized (spectral-norm) layers are still computed."""
    import sncli.lipschitz.product as product
    from sncli.lipschitz import lipschitz_report

    with open_checkpoint(samples / sample) as ckpt:
        alone = lipschitz_report(ckpt)
        computed: list[str] = []
        real = product._layer_factor

        def counted(task, options):  # type: ignore[no-untyped-def]
            computed.append(task.name)
            return real(task, options)

        monkeypatch.setattr(product, "_layer_factor", counted)
        result = build_report(ckpt)
        assert result.lipschitz is not None
        plain = {
            layer.name
            for layer in result.spectrum.layers  # type: ignore[union-attr]
            if not layer.spectral_norm and not layer.kind.startswith("conv")
        }
        assert not plain & set(computed)
        assert plain or sample != "mlp.safetensors"
        got = {f.name: f for f in result.lipschitz.factors}
        assert list(got) == [f.name for f in alone.factors]
        for expected in alone.factors:
            factor = got[expected.name]
            assert factor.sigma == pytest.approx(expected.sigma, rel=1e-12)
            assert factor.certified == expected.certified and factor.source == expected.source
            if factor.name in plain and sample == "mlp.safetensors":
                assert factor.sigma_upper >= reference_sigma(ckpt, factor.name)
        assert result.lipschitz.bound == pytest.approx(alone.bound, rel=1e-11)


def test_filters_and_sections_reach_every_part(mlp_path: Path) -> None:
    with open_checkpoint(mlp_path) as ckpt:
        result = build_report(
            ckpt, options=ReportOptions(include=(r"^[02]\.",), exclude=(r"^0\.",), workers=1)
        )
        assert [layer.name for layer in result.inspect.layers] == ["2.weight"]
        assert result.spectrum is not None
        assert [layer.name for layer in result.spectrum.layers] == ["2.weight"]
        assert result.lipschitz is not None
        assert [factor.name for factor in result.lipschitz.factors] == ["2.weight"]
        none = build_report(ckpt, ckpt, options=ReportOptions(sections=frozenset()))
        assert (none.lipschitz, none.spectrum, none.diff) == (None, None, None)
        assert len(none.inspect.layers) == 3
    with pytest.raises(ValueError, match="unknown report sections"):
        ReportOptions(sections=frozenset({"figures"}))


def test_one_progress_line_per_stage_that_moves(mlp_path: Path) -> None:
    seen: dict[str, list[tuple[int, int]]] = {}

    def stages(name: str):  # type: ignore[no-untyped-def]
        seen[name] = []
        return lambda done, total, _: seen[name].append((done, total))

    with open_checkpoint(mlp_path) as ckpt:
        build_report(ckpt, ckpt, stages=stages)
        assert list(seen) == ["spectra", "Lipschitz factors", "diff"]
        build_report(ckpt, options=ReportOptions(method=Method.LANCZOS), stages=stages)
    assert list(seen) == ["spectra", "Lipschitz factors", "diff", "σ"]
    assert set(seen) <= set(STAGES)
    for name, updates in seen.items():
        assert updates, f"{name} never moved"
        assert updates[-1][0] == updates[-1][1] == 3, (name, updates)


def test_sigmas_from_top_k_spectra_are_refused(mlp_path: Path) -> None:
    from sncli.spectrum import SpectrumOptions, spectra

    with open_checkpoint(mlp_path) as ckpt:
        top = spectra(ckpt, options=SpectrumOptions(top_k=2))
    with pytest.raises(ValueError, match="full spectra"):
        sigmas_from_spectra(top)
