"""The long-form rows of a track run: one per checkpoint × layer with one column per metric.
The column list is a stable contract (README, "sncli track"): columns are only ever added."""

from __future__ import annotations

from typing import Any

from sncli.spectrum import EXTRA_METRICS, METRICS

#: The spectrum metrics ``--spectrum`` adds per point: ``sncli.spectrum.METRICS`` but σ_max,
#: which is inspect's measurement here (a metric spectrum gains is a column added here too).
SPECTRUM_COLUMNS = tuple(metric for metric in METRICS if metric != "sigma_max")
#: Spectrum metrics beyond these (``--hill``, ``--mp-fit``, ``--randomize``): columns appended
#: after ``COLUMNS`` only when asked for (``TrackReport.extras``), so the default output is stable.
EXTRA_COLUMNS = EXTRA_METRICS


#: Every column, in order. The spectrum columns are empty without ``--spectrum``, ``delta``
#: and ``delta_relative`` without ``--delta`` and on the first checkpoint.
COLUMNS = (
    "step",
    "checkpoint",
    "layer",
    "short_name",
    "kind",
    "rows",
    "cols",
    "sigma_max",
    "bound",
    "drift_first",
    "drift_prev",
    "delta",
    "delta_relative",
    *SPECTRUM_COLUMNS,
)


def point_row(point: Any, extras: tuple[str, ...] = ()) -> dict[str, Any]:
    """A :class:`~sncli.tracking.engine.TrackPoint` as a dict of ``COLUMNS`` and the asked-for
    ``extras`` (None where not computed or undefined)."""
    row: dict[str, Any] = {
        "step": point.step,
        "checkpoint": point.checkpoint,
        "layer": point.name,
        "short_name": point.short_name,
        "kind": point.kind,
        "rows": point.rows,
        "cols": point.cols,
        "sigma_max": point.sigma_max,
        "bound": point.bound,
        "drift_first": point.drift_first,
        "drift_prev": point.drift_prev,
        "delta": point.delta,
        "delta_relative": point.delta_relative,
    }
    row.update({column: point.metrics.get(column) for column in SPECTRUM_COLUMNS})
    row.update({column: point.metrics.get(column) for column in extras})
    return row
