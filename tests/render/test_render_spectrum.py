"""Rendering a ``SpectrumReport``: JSON objects, CSV rows and the table, from hand-built layers."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace

import numpy as np
from render_helpers import printed

from sncli.layers import LayerKind, Skipped
from sncli.render.spectrum import (
    CSV_COLUMNS,
    print_spectrum_table,
    spectrum_layer_to_dict,
    spectrum_to_csv,
    spectrum_to_dict,
)
from sncli.spectrum import METRICS, LayerSpectrum, SpectrumReport

FULL = LayerSpectrum(
    name="model.fc.weight",
    short_name="fc.weight",
    kind=LayerKind.LINEAR,
    shape=(4, 3),
    dtype="bfloat16",
    matrix_shape=(4, 3),
    matrix="weight",
    algorithm="gram-eigvalsh-float64",
    bound="exact",
    complete=True,
    eps=2.0**-7,
    values=np.array([3.0, 2.0, 1.0]),
    sigma_max=3.0,
    sigma_min=1.0,
    condition_number=3.0,
    numerical_rank=0,
    rank_tolerance=4 * 3.0 * 2.0**-7 * 100,
    alpha=2.5,
    small_n_fit=True,
    mp_spikes=1,
)
TOP = replace(
    FULL,
    name="emb.weight",
    short_name="emb.weight",
    kind=LayerKind.EMBEDDING,
    algorithm="block-lanczos-float64",
    bound="lower",
    complete=False,
    values=np.array([3.0, 2.0]),
    error_estimates=np.array([1e-12, 3e-9]),
    steps=7,
    converged=True,
    sigma_min=None,
    condition_number=None,
    numerical_rank=None,
    rank_tolerance=None,
    alpha=None,
    small_n_fit=False,
    mp_spikes=None,
)


def report(layers: list[LayerSpectrum], top_k: int | None = None) -> SpectrumReport:
    return SpectrumReport("ckpt.safetensors", "safetensors", layers, [Skipped("b", "bias")], top_k)


def test_layer_dict_has_every_metric_and_optional_keys() -> None:
    item = spectrum_layer_to_dict(FULL)
    assert [k for k in item if k in METRICS] == list(METRICS)
    assert item["small_n_fit"] is True and "steps" not in item
    lanczos = spectrum_layer_to_dict(TOP)
    assert (lanczos["steps"], lanczos["converged"], lanczos["error_estimate"]) == (7, True, 3e-9)
    assert lanczos["alpha"] is None and "small_n_fit" not in lanczos


def test_report_dict_summary_is_json() -> None:
    data = spectrum_to_dict(report([FULL]), [FULL])
    assert data["mode"] == "full" and data["summary"]["mean"]["alpha"] == 2.5
    assert data["summary"]["largest"] == {"name": "model.fc.weight", "sigma_max": 3.0}
    json.dumps(data, allow_nan=False)
    assert spectrum_to_dict(report([TOP], 2), [TOP])["mode"] == "top_k"


def test_csv_empty_cells_for_missing_metrics() -> None:
    rows = list(csv.DictReader(io.StringIO(spectrum_to_csv([FULL, TOP]))))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert rows[0]["alpha"] == "2.5" and rows[1]["alpha"] == "" and rows[1]["bound"] == "lower"
    assert rows[0]["complete"] == "true" and rows[1]["error_estimate"] == "3e-09"


def test_full_table_captions() -> None:
    text = printed(lambda c: print_spectrum_table(report([FULL]), [FULL], c))
    assert "fc.weight" in text and "2.5†" in text and "small-n rule" in text
    assert "num. rank 0 for 1 layer (bfloat16)" in text


def test_top_k_table_marks_lower_bounds() -> None:
    text = printed(lambda c: print_spectrum_table(report([TOP], 2), [TOP], c))
    assert "(top 2)" in text and "≥ 3" in text and "≥ 2" in text and "3e-09" in text
    assert "embedding*" in text and "omitted" in text


def test_sparkline_scales_to_sigma_max() -> None:
    from sncli.render.spectrum import sparkline

    assert sparkline([4.0, 4.0, 2.0, 0.5, 0.0]) == "██▄▁▁"
    assert sparkline([1.0] * 20) == "█" * 8  # the 8 largest only
    assert sparkline([]) == "" and sparkline([0.0, 0.0]) == ""
