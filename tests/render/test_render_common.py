"""The helpers every renderer shares: number formatting, JSON, reasons, the progress bar."""

from __future__ import annotations

import json
import math

import pytest
from rich.console import Console

from sncli.render.common import (
    OutputFormat,
    emit,
    finite_or_none,
    fmt_shape,
    fmt_sigma,
    plural,
    progress_bar,
    reason_group,
    write_json,
)


@pytest.mark.parametrize(
    ("value", "digits", "shown"),
    [
        (None, 6, "--"),
        (math.nan, 6, "--"),
        (0.0, 6, "0"),
        (1.5, 6, "1.5"),
        (1.0 / 3.0, 6, "0.333333"),
        (1.0 / 3.0, 9, "0.333333333"),
        (12345.678, 6, "12345.7"),
        (1e5, 6, "1.0000e+05"),
        (1e-4, 6, "1.0000e-04"),
        (-2.5e7, 6, "-2.5000e+07"),
        (math.inf, 6, "inf"),
    ],
)
def test_fmt_sigma(value: float | None, digits: int, shown: str) -> None:
    assert fmt_sigma(value, digits) == shown


def test_fmt_shape_and_plural() -> None:
    assert fmt_shape((64, 3, 3, 3)) == "64×3×3×3"
    assert fmt_shape((7,)) == "7"
    assert plural(1, "layer") == "1 layer"
    assert plural(0, "layer") == "0 layers"
    assert plural(3, "other tensor") == "3 other tensors"


def test_finite_or_none() -> None:
    assert finite_or_none(None) is None
    assert finite_or_none(math.inf) is None
    assert finite_or_none(-math.inf) is None
    assert finite_or_none(math.nan) is None
    assert finite_or_none(0.0) == 0.0
    assert finite_or_none(2.5) == 2.5


def test_write_json_is_indented_and_refuses_nan(capsys: pytest.CaptureFixture[str]) -> None:
    write_json({"sigma": 1.5, "name": "a.weight"})
    out = capsys.readouterr().out
    assert out == '{\n  "sigma": 1.5,\n  "name": "a.weight"\n}\n'
    assert json.loads(out) == {"sigma": 1.5, "name": "a.weight"}
    with pytest.raises(ValueError):
        write_json({"sigma": math.nan})


@pytest.mark.parametrize(
    ("reason", "group"),
    [
        ("spectral-norm u vector", "spectral-norm buffers"),
        ("shares storage with a.weight", "tied"),
        ("non-finite values (16 NaN)", "NON-FINITE"),
        ("bias", "bias"),
        ("1-D (norm scale)", "1-D"),
    ],
)
def test_reason_group(reason: str, group: str) -> None:
    assert reason_group(reason) == group


def test_progress_bar_is_none_when_disabled_or_not_a_terminal() -> None:
    with progress_bar(False) as progress:
        assert progress is None
    with progress_bar(True) as progress:  # pytest's stderr is not a terminal
        assert progress is None


def test_output_formats_are_the_option_values() -> None:
    assert [f.value for f in OutputFormat] == ["table", "json", "csv"]
    assert OutputFormat("json") is OutputFormat.JSON


@pytest.mark.parametrize(
    ("output_format", "shown"),
    [
        (OutputFormat.JSON, '{\n  "a": 1\n}\n'),
        (OutputFormat.CSV, "a\n1\n"),
        (OutputFormat.TABLE, "T\n"),
    ],
)
def test_emit_builds_only_the_chosen_format(
    output_format: OutputFormat, shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    built: list[str] = []

    def as_dict() -> dict[str, int]:
        built.append("json")
        return {"a": 1}

    def as_csv() -> str:
        built.append("csv")
        return "a\n1\n"

    def table(console: Console) -> None:
        built.append("table")
        console.print("T")

    emit(output_format, as_dict, as_csv, table)
    assert capsys.readouterr().out == shown
    assert built == [output_format.value]
