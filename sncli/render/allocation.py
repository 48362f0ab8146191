"""JSON, CSV and tables of grouped metrics (``--group block|module`` of spectrum and track)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sncli.allocation import Group
from sncli.messages import clean_text
from sncli.render.common import fmt_sigma

#: Table headers of the metrics a grouped table shows when present.
HEADERS = {
    "sigma_max": "σ_max",
    "alpha": "α",
    "alpha_hill": "α_hill",
    "snr": "SNR",
    "stable_rank": "stable rank",
    "effective_rank": "eff. rank",
    "entropy": "entropy",
    "mp_softrank": "MP softrank",
    "num_spikes": "MP spikes (fit)",
    "rand_distance": "rand. distance",
    "num_traps": "traps",
    "drift_first": "drift (first)",
    "drift_prev": "drift (prev)",
    "delta": "‖ΔW‖₂",
    "delta_relative": "‖ΔW‖₂/σ",
}


def group_to_dict(group: Group, metrics: Sequence[str]) -> dict[str, Any]:
    return {
        "group": group.key,
        "count": group.count,
        "layers": list(group.layers),
        "mean": {metric: group.means.get(metric) for metric in metrics},
    }


def groups_to_dict(
    source: str, by: str, groups: Sequence[Group], metrics: Sequence[str]
) -> dict[str, Any]:
    """``{source, group_by, aggregate: "mean", groups: [{group, count, layers, mean}]}``."""
    return {
        "source": source,
        "group_by": by,
        "aggregate": "mean",
        "groups": [group_to_dict(group, metrics) for group in groups],
    }


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def groups_to_csv(
    groups: Sequence[Group], metrics: Sequence[str], steps: Sequence[int] | None = None
) -> str:
    """One row per group (per step × group with ``steps``, one step per group list entry):
    step, group, count, then the mean of each metric."""
    buffer = io.StringIO()
    columns = (["step"] if steps is not None else []) + ["group", "count", *metrics]
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for index, group in enumerate(groups):
        row = [steps[index]] if steps is not None else []
        row += [group.key, group.count, *(group.means.get(m) for m in metrics)]
        writer.writerow([_cell(v) for v in row])
    return buffer.getvalue()


def print_groups_table(
    title: str,
    groups: Sequence[Group],
    metrics: Sequence[str],
    console: Console,
    steps: Sequence[int] | None = None,
) -> None:
    defined = [m for m in metrics if any(g.means.get(m) is not None for g in groups)]
    shown = [m for m in defined if m in HEADERS] or defined
    table = Table(title=escape(clean_text(title)), title_justify="left")
    if steps is not None:
        table.add_column("step", justify="right")
    table.add_column("group", overflow="fold")
    table.add_column("layers", justify="right")
    for metric in shown:
        table.add_column("mean " + HEADERS.get(metric, metric), justify="right")
    for index, group in enumerate(groups):
        row = [str(steps[index])] if steps is not None else []
        row += [escape(clean_text(group.key)), str(group.count)]
        for metric in shown:
            value = group.means.get(metric)
            row.append("--" if value is None else fmt_sigma(value, 4))
        table.add_row(*row)
    console.print(table)
    console.print(
        "Each value is the mean over the group's layers where the metric is defined "
        "(AlphaPruning's block-wise mean).",
        style="dim",
    )
