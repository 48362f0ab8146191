"""Rendering an ``InspectReport``: JSON objects, CSV rows and the table, from hand-built layers."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import replace

from render_helpers import printed

from sncli.analysis import InspectReport, LayerSigma, SpectralNormReading
from sncli.layers import LayerKind, Skipped
from sncli.numerics.floating import DENSE_ROUNDING
from sncli.numerics.spectral import BoundKind, Method
from sncli.parametrizations import SpectralNormStyle
from sncli.render.inspect import (
    CSV_COLUMNS,
    inspect_to_csv,
    inspect_to_dict,
    layer_to_dict,
    method_caption,
    print_inspect_table,
    print_reshape_notes,
    skipped_summary,
)

DENSE = LayerSigma(
    name="model.fc.weight",
    short_name="fc.weight",
    kind=LayerKind.LINEAR,
    shape=(4, 3),
    dtype="float32",
    matrix_shape=(4, 3),
    matrix="W",
    sigma=2.5,
    method=Method.DENSE,
    bound=BoundKind.EXACT,
    certified=True,
    algorithm="dense",
)
POWER_CONV = LayerSigma(
    name="model.conv.weight",
    short_name="conv.weight",
    kind=LayerKind.CONV2D,
    shape=(8, 3, 3, 3),
    dtype="bfloat16",
    matrix_shape=(8, 27),
    matrix="reshape(out, in*k)",
    sigma=0.75,
    method=Method.POWER,
    bound=BoundKind.LOWER,
    iterations=1000,
    converged=False,
    error_estimate=0.01,
    spectral_norm=SpectralNormReading(
        style=SpectralNormStyle.LEGACY,
        sigma_stored_estimate=0.5,
        sigma_effective=math.inf,
        note="stored u is not a unit vector",
    ),
    transposed=True,
    reshape_note="the stored u, v do not tell Conv from ConvTranspose",
)
UPPER_EMBED = LayerSigma(
    name="model.embed.weight",
    short_name="embed.weight",
    kind=LayerKind.EMBEDDING,
    shape=(10, 4),
    dtype="float16",
    matrix_shape=(10, 4),
    matrix="W",
    sigma=3.0,
    method=Method.LANCZOS,
    bound=BoundKind.LOWER,
    iterations=12,
    converged=True,
    certified=True,
    upper=3.25,
)
REPORT = InspectReport(
    checkpoint="ckpt/model.pt",
    format="torch",
    method=Method.POWER,
    layers=[DENSE, POWER_CONV, UPPER_EMBED],
    skipped=[
        Skipped("model.fc.bias", "bias"),
        Skipped("model.head.weight", "shares storage with model.embed.weight"),
        Skipped("model.bad.weight", "non-finite values (2 NaN)"),
    ],
)


def test_sigma_upper_prefers_the_proven_bound_then_dense_rounding() -> None:
    assert UPPER_EMBED.sigma_upper == 3.25
    assert DENSE.sigma_upper == 2.5 * (1 + DENSE_ROUNDING)
    assert DENSE.sigma_upper > DENSE.sigma
    assert POWER_CONV.sigma_upper is None


def test_layer_to_dict_holds_what_the_layer_holds() -> None:
    item = layer_to_dict(DENSE)
    assert item == {
        "name": "model.fc.weight",
        "short_name": "fc.weight",
        "kind": "linear",
        "shape": [4, 3],
        "dtype": "float32",
        "matrix": "W",
        "matrix_shape": [4, 3],
        "sigma": 2.5,
        "bound": "exact",
        "method": "dense",
        "certified": True,
        "sigma_upper": 2.5 * (1 + DENSE_ROUNDING),
        "algorithm": "dense",
    }
    conv = layer_to_dict(POWER_CONV)
    assert conv["iterations"] == 1000 and conv["converged"] is False
    assert conv["error_estimate"] == 0.01
    assert conv["certified"] is False and "sigma_upper" not in conv and "algorithm" not in conv
    assert conv["spectral_norm"] == {
        "style": "legacy",
        "sigma_stored_estimate": 0.5,
        "sigma_effective": None,  # inf is not valid JSON
        "note": "stored u is not a unit vector",
    }
    assert conv["reshape_note"] == "the stored u, v do not tell Conv from ConvTranspose"
    assert "reshape_note" not in item


def test_inspect_to_dict_shows_the_layers_given_and_summarises_all() -> None:
    """``--top`` cuts the list shown; ``summary`` still counts every analysed layer (issue 10)."""
    data = inspect_to_dict(REPORT, [POWER_CONV, DENSE])
    assert data["checkpoint"] == "ckpt/model.pt"
    assert data["format"] == "torch" and data["method"] == "power"
    assert [layer["name"] for layer in data["layers"]] == ["model.conv.weight", "model.fc.weight"]
    assert data["skipped"][0] == {"name": "model.fc.bias", "reason": "bias"}
    assert data["summary"] == {
        "analysed": 3,
        "skipped": 3,
        "largest": {"name": "model.fc.weight", "sigma": 2.5},  # a linear layer (issue 28)
        "largest_embedding": {"name": "model.embed.weight", "sigma": 3.0},
    }
    assert inspect_to_dict(REPORT, [])["summary"]["analysed"] == 3
    empty = InspectReport("e.pt", "torch", Method.POWER, [], [])
    assert inspect_to_dict(empty, [])["summary"]["largest"] is None


def test_inspect_to_csv_rows() -> None:
    text = inspect_to_csv(REPORT.layers)
    assert text.splitlines()[0] == ",".join(CSV_COLUMNS)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [row["name"] for row in rows] == [layer.name for layer in REPORT.layers]
    dense, conv, embed = rows
    assert dense["shape"] == "4x3" and dense["sigma"] == "2.5" and dense["bound"] == "exact"
    assert dense["iterations"] == "" and dense["converged"] == "" and dense["error_estimate"] == ""
    assert dense["certified"] == "true"
    assert float(dense["sigma_upper"]) == 2.5 * (1 + DENSE_ROUNDING)
    assert dense["sn_style"] == dense["sigma_stored_estimate"] == dense["sigma_effective"] == ""
    assert conv["shape"] == "8x3x3x3" and conv["matrix"] == "reshape(out, in*k)"
    assert conv["iterations"] == "1000" and conv["converged"] == "false"
    assert conv["certified"] == "false" and conv["sigma_upper"] == ""
    assert conv["sn_style"] == "legacy" and conv["sigma_stored_estimate"] == "0.5"
    assert conv["sigma_effective"] == "inf"
    assert embed["sigma_upper"] == "3.25" and embed["converged"] == "true"


def test_skipped_summary_groups_reasons() -> None:
    assert skipped_summary(REPORT) == "3 skipped (1 bias, 1 tied, 1 NON-FINITE)"
    empty = InspectReport("x", "safetensors", Method.DENSE, [DENSE], [])
    assert skipped_summary(empty) == "0 skipped"


def test_method_caption() -> None:
    caption = method_caption(Method.POWER, REPORT.layers)
    assert caption.startswith("σ: power-iteration estimates")
    assert "1 did not converge; raise --iters" in caption
    assert "≥ marks a lower bound." in caption
    assert "2 layers with a proven upper bound (sigma_upper in JSON)." in caption
    dense = method_caption(Method.DENSE, [DENSE])
    assert "did not converge" not in dense and "≥" not in dense and "proven" not in dense


def test_print_inspect_table() -> None:
    text = printed(lambda console: print_inspect_table(REPORT, REPORT.layers, console))
    assert text.splitlines()[0].rstrip() == "Spectral norms: ckpt/model.pt"
    for header in ("σ_max", "σ ≤ (proven)", "iters", "σ̂ stored (uᵀWv)", "σ used (W/σ̂)"):
        assert header in text
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if "weight " in line}
    assert set(rows) == {"fc.weight", "conv.weight", "embed.weight"}
    assert "≥ 0.75" in rows["conv.weight"] and "1000 (not converged)" in rows["conv.weight"]
    assert "8×27 (reshape, T)" in rows["conv.weight"] and "8×3×3×3" in rows["conv.weight"]
    assert "embedding*" in rows["embed.weight"] and "3.25" in rows["embed.weight"]
    assert "≥" not in rows["fc.weight"] and "2.5 " in rows["fc.weight"]
    footer = "3 layers analysed · 3 skipped (1 bias, 1 tied, 1 NON-FINITE) · largest σ = 2.5 "
    assert footer + "(fc.weight) · largest embedding σ = 3 (embed.weight)" in text
    assert "(T) = transposed conv: dim 1 (out) first, matrix (out, in·k)." in text
    assert "Reshape (conv.weight): the stored u, v do not tell Conv from ConvTranspose." in text
    assert "* embedding: recognised by its name" in text
    assert "Spectral-norm layers: σ_max is the raw weight's" in text
    assert "Non-finite weights in: model.bad.weight" in text


def test_print_inspect_table_leaves_out_empty_columns() -> None:
    report = InspectReport("m.safetensors", "safetensors", Method.DENSE, [DENSE], [])
    text = printed(lambda console: print_inspect_table(report, [DENSE], console))
    for absent in ("σ ≤ (proven)", "iters", "σ̂ stored", "Conv σ", "embedding", "Non-finite"):
        assert absent not in text
    assert "1 layer analysed · 0 skipped · largest σ = 2.5 (fc.weight)" in text


def test_print_inspect_table_escapes_names_from_the_file() -> None:
    hostile = LayerSigma(**{**DENSE.__dict__, "short_name": "[bold]x\x1b[31m"})
    report = InspectReport("[red]m", "safetensors", Method.DENSE, [hostile], [])
    text = printed(lambda console: print_inspect_table(report, [hostile], console))
    assert "Spectral norms: [red]m" in text
    assert "[bold]x\\x1b[31m" in text and "\x1b" not in text


def test_reshape_notes_once_per_note_with_their_layers() -> None:
    note = "Conv or ConvTranspose cannot be told from the shape"
    layers = [replace(POWER_CONV, short_name=f"c{i}", reshape_note=note) for i in range(5)]
    layers.append(replace(POWER_CONV, short_name="other", reshape_note="another note"))
    layers.append(replace(POWER_CONV, short_name="sure", reshape_note=None))
    text = printed(lambda console: print_reshape_notes(layers, console))
    assert text.splitlines() == [
        f"Reshape (c0, c1, c2 and 2 more): {note}.",
        "Reshape (other): another note.",
    ]
