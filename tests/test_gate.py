"""The ``--fail-above`` gates on the reports (``gate()``) and ``BoundExceededError``'s exit code;
the messages and exit codes through the CLI are checked in tests/cli and tests/test_lipschitz.py."""

from __future__ import annotations

import math

import pytest

from sncli.diff import DiffReport
from sncli.errors import EXIT_BOUND_EXCEEDED, BoundExceededError, SncliError
from sncli.layers import Skipped
from sncli.lipschitz import GraphLipschitzReport, OutputBound
from sncli.numerics.spectral import Method


def graph_report(*outputs: OutputBound) -> GraphLipschitzReport:
    return GraphLipschitzReport("m.onnx", [], list(outputs), [], [], None, [], [])


def test_bound_exceeded_is_an_sncli_error_with_exit_3() -> None:
    error = BoundExceededError("bound 2 exceeds --fail-above 1", "m.onnx")
    assert isinstance(error, SncliError)
    assert error.exit_code == EXIT_BOUND_EXCEEDED == 3
    assert str(error) == "m.onnx: bound 2 exceeds --fail-above 1"


def test_graph_gate_passes_at_and_below_the_threshold() -> None:
    report = graph_report(OutputBound("y", 3.0, True), OutputBound("z", 4.0, True))
    assert report.bound == pytest.approx(5.0)  # √(3² + 4²)
    report.gate(5.0, certified=True)
    report.gate(7.5)


def test_graph_gate_refuses_above_uncertified_and_no_bound() -> None:
    report = graph_report(OutputBound("y", 3.0, False))
    with pytest.raises(BoundExceededError, match=r"^given\.onnx: Lipschitz bound 3 exceeds"):
        report.gate(2.0, name="given.onnx")
    with pytest.raises(BoundExceededError, match="the bound is not certified"):
        report.gate(10.0, certified=True)
    report.gate(10.0)
    with pytest.raises(BoundExceededError, match="has no Lipschitz bound"):
        graph_report(OutputBound("y", None, False)).gate(1e300)
    with pytest.raises(BoundExceededError, match="exceeds"):
        graph_report(OutputBound("y", math.inf, True)).gate(math.inf)


def test_diff_gate_refuses_unmeasured_layers() -> None:
    report = DiffReport(
        "a", "b", "safetensors", "safetensors", Method.DENSE, 0, 0.5, [], [], [], [], [],
        unmeasured=[Skipped("fc.weight", "non-finite")],
    )  # fmt: skip
    with pytest.raises(BoundExceededError, match=r"1 layer\(s\) could not be compared"):
        report.gate(1.0)
    DiffReport("a", "b", "s", "s", Method.DENSE, 0, 0.5, [], [], [], [], []).gate(0.0)
