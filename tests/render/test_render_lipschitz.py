"""Rendering a ``LipschitzReport``: JSON, CSV and the table, from hand-built factors."""

from __future__ import annotations

import csv
import io
import math

import pytest
from render_helpers import printed

from sncli.layers import Skipped
from sncli.lipschitz import Assumption, ConvPolicy, Factor, LipschitzOptions, LipschitzReport
from sncli.render.lipschitz import (
    LIPSCHITZ_CSV_COLUMNS,
    fmt_bound,
    lipschitz_to_csv,
    lipschitz_to_dict,
    print_lipschitz_table,
)

LINEAR = Factor(
    name="net.0.weight",
    short_name="0.weight",
    kind="linear",
    sigma=2.0,
    sigma_lower=2.0,
    sigma_upper=2.0,
    certified=True,
    source="dense σ",
)
CONV = Factor(
    name="net.1.weight",
    short_name="1.weight",
    kind="conv2d",
    sigma=0.5,
    sigma_lower=0.25,
    sigma_upper=None,
    certified=False,
    source="reshaped kernel σ (not a bound)",
    reshape_sigma=0.5,
    note="reshape policy",
)
REPORT = LipschitzReport(
    checkpoint="gan.pt",
    options=LipschitzOptions(conv=ConvPolicy.RESHAPE),
    factors=[LINEAR, CONV],
    excluded=[Skipped("net.0.bias", "bias"), Skipped("net.2.bias", "bias: not a weight")],
    valid_architecture=True,
    caveats=[],
    assumptions=["layers in key order", "1-Lipschitz activations"],
)
#: The same report with the chain asserted (--assume sequential).
ASSUMED = LipschitzReport(
    **{
        **REPORT.__dict__,
        "options": LipschitzOptions(conv=ConvPolicy.RESHAPE, assume=Assumption.SEQUENTIAL),
    }
)


def test_fmt_bound() -> None:
    assert fmt_bound(-math.inf) == "0"
    assert fmt_bound(0.0) == "1"
    assert fmt_bound(math.log10(2.5)) == "2.5"
    assert fmt_bound(400 * math.log10(30)) == "7.0551e+590"
    assert fmt_bound(-7.5) == "3.1623e-8"  # exponent as an integer, unlike fmt_sigma


def test_lipschitz_to_dict() -> None:
    data = lipschitz_to_dict(REPORT)
    assert data["checkpoint"] == "gan.pt"
    assert data["method"] == "dense" and data["conv"] == "reshape"
    assert data["log10_bound"] == pytest.approx(0.0, abs=1e-15)
    assert data["bound"] == pytest.approx(1.0)
    assert data["certified"] is False and data["valid_architecture"] is True
    assert data["statement"] == REPORT.statement()
    assert data["assumptions"] == ["layers in key order", "1-Lipschitz activations"]
    first, second = data["layers"]
    assert first == {
        "name": "net.0.weight",
        "kind": "linear",
        "sigma": 2.0,
        "sigma_lower": 2.0,
        "sigma_upper": 2.0,
        "certified": True,
        "source": "dense σ",
        "reshape_sigma": None,
        "log10_sigma": math.log10(2.0),
        "share": pytest.approx(0.5),
        "running_log10": math.log10(2.0),
    }
    assert second["sigma_upper"] is None and second["reshape_sigma"] == 0.5
    assert second["share"] == pytest.approx(-0.5) and second["note"] == "reshape policy"
    assert data["excluded"] == [
        {"name": "net.0.bias", "reason": "bias"},
        {"name": "net.2.bias", "reason": "bias: not a weight"},
    ]


def test_certified_method_and_non_finite_values_in_json() -> None:
    zero = Factor("z.weight", "z.weight", "linear", 0.0, 0.0, 0.0, True, "dense σ")
    report = LipschitzReport(
        checkpoint="z.safetensors",
        options=LipschitzOptions(certified=True),
        factors=[LINEAR, zero],
        excluded=[],
        valid_architecture=True,
        caveats=[],
        assumptions=[],
    )
    data = lipschitz_to_dict(report)
    assert data["method"] == "certified"
    assert data["log10_bound"] is None and data["bound"] == 0.0
    assert [layer["share"] for layer in data["layers"]] == [None, None]
    assert data["layers"][1]["log10_sigma"] is None
    assert data["layers"][1]["running_log10"] is None


def test_lipschitz_to_csv() -> None:
    text = lipschitz_to_csv(REPORT)
    assert text.splitlines()[0] == ",".join(LIPSCHITZ_CSV_COLUMNS)
    first, second = csv.DictReader(io.StringIO(text))
    assert first["name"] == "net.0.weight" and first["sigma"] == "2.0"
    assert first["certified"] == "true" and first["reshape_sigma"] == ""
    assert float(first["share"]) == pytest.approx(0.5)
    assert float(first["running_log10"]) == pytest.approx(math.log10(2.0))
    assert second["sigma_lower"] == "0.25" and second["sigma_upper"] == ""
    assert second["certified"] == "false" and second["reshape_sigma"] == "0.5"
    assert second["source"] == "reshaped kernel σ (not a bound)"


def test_print_lipschitz_table_estimate() -> None:
    text = printed(lambda console: print_lipschitz_table(REPORT, console))
    assert text.splitlines()[0].rstrip() == "Lipschitz bound: gan.pt"
    assert "σ reshape" in text and "share of log L" in text
    rows = [line for line in text.splitlines() if ".weight" in line]
    assert "[2, 2]" in rows[0] and "✓" in rows[0] and "50.0%" in rows[0]
    assert "[0.25, --]" in rows[1] and "✗" in rows[1] and "-50.0%" in rows[1]
    # A reshape factor is not an upper bound: the product is an estimate, not "L ≤" (issue 10).
    assert "L ≈ 1  (log10 = 0.0000) — an estimate, not a bound" in text
    assert "L ≤" not in text
    assert REPORT.statement() in " ".join(text.split())
    assert "Assumptions: layers in key order; 1-Lipschitz activations." in text
    assert "Excluded from the product: 2 bias." in text


def test_print_lipschitz_table_when_the_product_is_no_bound() -> None:
    report = LipschitzReport(
        checkpoint="tt",
        options=LipschitzOptions(),
        factors=[LINEAR],
        excluded=[],
        valid_architecture=False,
        caveats=["attention layers are not globally Lipschitz"],
        assumptions=[],
    )
    text = printed(lambda console: print_lipschitz_table(report, console))
    assert "product of layer σ = 2  (log10 = 0.3010) — diagnostic only, NOT a Lipschitz" in text
    assert "L ≤" not in text and "σ reshape" not in text and "Excluded" not in text
    assert lipschitz_to_dict(report)["bound"] is None
    assert lipschitz_to_dict(report)["log10_bound"] is None
    valid = LipschitzReport(**{**report.__dict__, "valid_architecture": True})
    text = printed(lambda console: print_lipschitz_table(valid, console))
    assert "L ≤ 2  (log10 = 0.3010) — conditional on a plain sequential chain" in text
    assert "certified" not in " ".join(text.split()).replace("not certified", "")
    certified = LipschitzReport(
        **{**valid.__dict__, "options": LipschitzOptions(assume=Assumption.SEQUENTIAL)}
    )
    text = printed(lambda console: print_lipschitz_table(certified, console))
    assert "L ≤ 2  (log10 = 0.3010) — certified upper bound" in text
    refused = LipschitzReport(**{**certified.__dict__, "valid_architecture": False})
    text = printed(lambda console: print_lipschitz_table(refused, console))
    assert "NOT a Lipschitz bound for this architecture; --assume sequential refused" in text


def test_headline_follows_what_the_report_says_the_product_is() -> None:
    """The renderer picks "L ≤" / "L ≈" / partial from the report's properties (issue 10)."""
    circular = Factor(
        "net.1.weight",
        "1.weight",
        "conv2d",
        0.5,
        None,
        0.5,
        False,
        "circular conv",
        None,
        "",
        True,
    )
    upper = LipschitzReport(**{**ASSUMED.__dict__, "factors": [LINEAR, circular]})
    assert upper.upper_bound and not upper.certified
    text = printed(lambda console: print_lipschitz_table(upper, console))
    assert "L ≤ 1  (log10 = 0.0000) — an upper bound under the assumptions below" in text
    assert "every factor is an upper bound under the assumptions" in upper.statement()
    certified = LipschitzReport(**{**ASSUMED.__dict__, "factors": [LINEAR]})
    text = printed(lambda console: print_lipschitz_table(certified, console))
    assert "L ≤ 2  (log10 = 0.3010) — certified upper bound" in text
    conditional = LipschitzReport(**{**REPORT.__dict__, "factors": [LINEAR]})
    assert conditional.upper_bound and not conditional.certified
    text = printed(lambda console: print_lipschitz_table(conditional, console))
    assert "L ≤ 2  (log10 = 0.3010) — conditional on a plain sequential chain" in text
    assert "--assume sequential" in conditional.statement() and "ONNX" in conditional.statement()
    partial = LipschitzReport(**{**certified.__dict__, "unselected": ["net.5.weight"]})
    assert partial.partial and not partial.certified and not partial.upper_bound
    assert lipschitz_to_dict(partial)["certified"] is False
    text = printed(lambda console: print_lipschitz_table(partial, console))
    assert "L ≤" not in text and "L ≈" not in text
    assert "product over the selected layers = 2" in text
    assert "NOT a bound on the model: 1 of its layers left out" in text
    assert "NOT a bound on the model" in partial.statement()
