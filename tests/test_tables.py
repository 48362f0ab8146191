"""sncli.tables and the reports' ``to_pandas()``: one row per layer, values equal to the
report's own fields (which the other tests check against float64 SVD), pandas optional."""

from __future__ import annotations

import builtins
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from sncli import MethodOptions, open_checkpoint, spectral_norms
from sncli.lipschitz import LipschitzOptions, lipschitz_report
from sncli.normalize import NormalizeOptions, normalize_checkpoint, plan_normalization
from sncli.numerics.spectral import Method


@pytest.fixture
def checkpoint_path(tmp_path: Path) -> Path:
    generator = torch.Generator().manual_seed(0)
    state = {
        "0.weight": torch.randn(8, 4, generator=generator),
        "0.bias": torch.zeros(8),
        "2.weight": torch.randn(3, 8, generator=generator) * 3,
    }
    path = tmp_path / "mlp.safetensors"
    save_file(state, str(path))
    return path


def test_inspect_report_to_pandas(checkpoint_path: Path) -> None:
    with open_checkpoint(checkpoint_path) as ckpt:
        report = spectral_norms(ckpt, options=MethodOptions(method=Method.DENSE))
    frame = report.to_pandas()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame["name"]) == [layer.name for layer in report.layers]
    assert list(frame["sigma"]) == [layer.sigma for layer in report.layers]
    assert list(frame["sigma_upper"]) == [layer.sigma_upper for layer in report.layers]
    assert set(frame["kind"]) == {"linear"} and set(frame["method"]) == {"dense"}
    assert frame.loc[frame["sigma"].idxmax(), "name"] == report.largest.name
    assert frame.attrs["format"] == "safetensors" and frame.attrs["method"] == "dense"
    assert frame.attrs["skipped"] == {"0.bias": "bias"}


def test_lipschitz_report_to_pandas(checkpoint_path: Path) -> None:
    with open_checkpoint(checkpoint_path) as ckpt:
        report = lipschitz_report(ckpt, LipschitzOptions())
    frame = report.to_pandas()
    assert list(frame["name"]) == [f.name for f in report.factors]
    assert frame["log10"].sum() == pytest.approx(report.log10_bound)
    assert math.isclose(frame.attrs["log10_bound"], report.log10_bound)
    assert list(frame["is_upper_bound"]) == [f.is_upper_bound for f in report.factors]


def test_normalize_plan_and_result_to_pandas(checkpoint_path: Path, tmp_path: Path) -> None:
    with open_checkpoint(checkpoint_path) as ckpt:
        plan = plan_normalization(ckpt, NormalizeOptions())
        result = normalize_checkpoint(ckpt, plan, tmp_path / "out.safetensors")
    planned = plan.to_pandas()
    assert list(planned["name"]) == [p.name for p in plan.layers]
    assert list(planned["action"]) == [p.action.value for p in plan.layers]
    assert list(planned["expected_after"]) == [p.expected_after for p in plan.layers]
    written = result.to_pandas()
    assert list(written["sigma_after"]) == [o.sigma_after for o in result.layers]
    assert (written["sigma_after"] <= 1.0 + 1e-12).all()
    assert written.attrs["outputs"] == [str(tmp_path / "out.safetensors")]


def test_pandas_is_optional(checkpoint_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_checkpoint(checkpoint_path) as ckpt:
        report = spectral_norms(ckpt)
    real_import = builtins.__import__

    def no_pandas(name: str, *args: object, **kwargs: object) -> object:
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("No module named 'pandas'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pandas)
    with pytest.raises(ImportError, match="to_pandas\\(\\) needs pandas: pip install pandas"):
        report.to_pandas()
