"""Tables, JSON, CSV and the figure of ``sncli track``."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sncli.render.common import fmt_sigma, plural
from sncli.tracking.engine import TrackReport
from sncli.tracking.rows import point_row

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: The JSON output's ``schema`` (changes only if a column changes meaning or goes away).
SCHEMA = "sncli.track/1"
_BARS = "▁▂▃▄▅▆▇█"


def track_to_dict(report: TrackReport) -> dict[str, Any]:
    """The run as JSON: settings, the checkpoints in step order, and the long-form points
    (one object per checkpoint × layer, with every one of ``COLUMNS``)."""
    return {
        "schema": SCHEMA,
        "method": report.method,
        "spectrum": report.spectrum,
        "delta": report.delta,
        "checkpoints": [
            {"step": c.step, "checkpoint": c.path, "format": c.format} for c in report.checkpoints
        ],
        "columns": list(report.columns),
        "points": [point_row(point, report.extras) for point in report.points],
    }


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def track_to_csv(report: TrackReport) -> str:
    """The long-form points, one row per checkpoint × layer, columns ``COLUMNS``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(report.columns)
    for point in report.points:
        row = point_row(point, report.extras)
        writer.writerow([_cell(row[column]) for column in report.columns])
    return buffer.getvalue()


def sparkline(values: Sequence[float | None]) -> str:
    """One character per value, ▁ (the series' minimum) to █ (its maximum); a space where a
    value is missing; all ▄ when the series is flat."""
    present = [v for v in values if v is not None and math.isfinite(v)]
    if not present:
        return " " * len(values)
    low, high = min(present), max(present)
    chars = []
    for value in values:
        if value is None or not math.isfinite(value):
            chars.append(" ")
        elif high == low:
            chars.append(_BARS[3])
        else:
            chars.append(_BARS[round((value - low) / (high - low) * (len(_BARS) - 1))])
    return "".join(chars)


def print_track_table(report: TrackReport, metric: str, console: Console) -> None:
    """Per layer: the metric at the first and last step, its minimum and maximum over the run,
    the relative change first → last, and a sparkline over the steps."""
    steps = report.steps
    table = Table(
        title=f"{metric} over {plural(len(steps), 'checkpoint')}, steps {steps[0]}…{steps[-1]}",
        title_justify="left",
    )
    for header in ("layer", "kind", "first", "last", "min", "max", "change"):
        table.add_column(header, justify="left" if header in ("layer", "kind") else "right")
    table.add_column("over steps", no_wrap=True)
    kinds = {p.name: p.kind for p in report.points}
    for name, series in report.series(metric).items():
        by_step = dict(series)
        values = [by_step.get(step) for step in steps]
        present = [float(v) for v in values if v is not None and math.isfinite(v)]
        first = next((v for v in values if v is not None), None)
        last = values[-1]
        change = None
        if first not in (None, 0) and last is not None:
            change = (last - first) / abs(first)
        table.add_row(
            escape(name),
            kinds[name],
            fmt_sigma(first),
            fmt_sigma(last),
            fmt_sigma(min(present)) if present else "--",
            fmt_sigma(max(present)) if present else "--",
            "--" if change is None else ("0" if change == 0 else f"{change:+.2%}"),
            sparkline(values),
        )
    console.print(table)


def track_figure(report: TrackReport, metric: str = "sigma_max", label_top: int = 3) -> Figure:
    """The metric against the step, one line per layer (per block × module type, as the
    median over blocks, when more than 30 layers), the ``label_top`` layers that moved most
    (largest |last − first| / |first|) labelled at their last point."""
    from sncli.render.plots import _figure, _label, _short, split_block

    series = report.series(metric)
    lines: dict[str, list[tuple[int, float]]] = {}
    if len(series) > 30:  # too many lines: per module type, the median over blocks
        import statistics

        grouped: dict[str, dict[int, list[float]]] = {}
        for name, points in series.items():
            module = split_block(name).module
            for step, value in points:
                if value is not None and math.isfinite(value):
                    grouped.setdefault(module, {}).setdefault(step, []).append(float(value))
        for module, by_step in grouped.items():
            lines[f"{module} (median)"] = [
                (step, statistics.median(vals)) for step, vals in sorted(by_step.items())
            ]
    else:
        for name, points in series.items():
            lines[name] = [
                (step, float(v)) for step, v in points if v is not None and math.isfinite(v)
            ]

    def moved(points: list[tuple[int, float]]) -> float:
        if len(points) < 2 or points[0][1] == 0:
            return 0.0
        return abs(points[-1][1] - points[0][1]) / abs(points[0][1])

    top = sorted(lines, key=lambda n: -moved(lines[n]))[:label_top]
    figure = _figure(7.2, 4.4)
    axes = figure.add_subplot()
    for name, points in lines.items():
        if not points:
            continue
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        highlighted = name in top and moved(points) > 0
        axes.plot(
            xs,
            ys,
            marker="o" if len(xs) <= 30 else None,
            markersize=3,
            linewidth=1.6 if highlighted else 0.8,
            alpha=1.0 if highlighted else 0.45,
        )
        if highlighted:
            axes.annotate(
                f"{_label(name)} (moved {moved(points):.1%})",
                (xs[-1], ys[-1]),
                fontsize=7,
                xytext=(3, 0),
                textcoords="offset points",
            )
    first = report.checkpoints[0].path if report.checkpoints else ""
    axes.set_title(f"{metric} over the run — {_short(first)} …", fontsize=11)
    axes.set_xlabel("step")
    axes.set_ylabel(metric)
    axes.grid(True, alpha=0.3)
    return figure
