"""Tables, JSON and CSV for ``sncli diff``."""

from __future__ import annotations

import csv
import io
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sncli.diff import DiffReport, LayerDiff, relative_change
from sncli.experts import stack_summaries, summaries_to_json
from sncli.messages import clean_text
from sncli.numerics.spectral import BoundKind
from sncli.render.common import fmt_shape, fmt_sigma, plural, print_stacks

CSV_FIELDS = (
    "name",
    "kind",
    "shape",
    "unchanged",
    "sigma_a",
    "sigma_b",
    "delta_sigma",
    "delta_bound",
    "relative",
    "delta_frobenius",
    "relative_frobenius",
    "min_subspace_cosine",
    "outside_top_subspace",
    "intruder_dimensions",
    "subspace_error",
    "intruder_unresolved",
)


def layer_to_dict(layer: LayerDiff) -> dict[str, Any]:
    """The JSON object for one matched layer (a stable contract; see README)."""
    item: dict[str, Any] = {
        "name": layer.name,
        "key_a": layer.key_a,
        "key_b": layer.key_b,
        "kind": layer.kind,
        "shape": list(layer.shape),
        "dtype_a": layer.dtype_a,
        "dtype_b": layer.dtype_b,
        "matrix": layer.matrix,
        "unchanged": layer.unchanged,
        "sigma_a": layer.sigma_a,
        "sigma_b": layer.sigma_b,
        "delta_sigma": layer.delta_sigma,
        "delta_bound": layer.delta_bound.value,
        "relative": layer.relative,
        "delta_frobenius": layer.delta_frobenius,
        "relative_frobenius": layer.relative_frobenius,
        "certified": layer.certified,
    }
    if layer.delta_upper is not None:
        item["delta_upper"] = layer.delta_upper
    if layer.algorithm:
        item["algorithm"] = layer.algorithm
    if layer.subspace_cosines is not None:
        item["subspace_cosines"] = list(layer.subspace_cosines)
        item["subspace_error"] = layer.subspace_error
        item["outside_top_subspace"] = layer.outside_top_subspace
    if layer.rows:
        item["rows"] = layer.rows
    if layer.intruder_indices is not None:
        item["intruder_dimensions"] = len(layer.intruder_indices)
        item["intruder_indices"] = list(layer.intruder_indices)
        item["intruder_unresolved"] = list(layer.intruder_unresolved or ())
    if layer.expert is not None:
        item["expert"], item["stack"] = layer.expert, layer.stack
    return item


def diff_to_dict(
    report: DiffReport, layers: list[LayerDiff], fail_above: float | None = None
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "a": report.a,
        "b": report.b,
        "format_a": report.format_a,
        "format_b": report.format_b,
        "method": report.method.value,
        "top_k": report.top_k,
        "subspace_threshold": report.subspace_threshold,
        "intruder_top_k": report.intruder_top_k,
        "intruder_threshold": report.intruder_threshold,
        "layers": [layer_to_dict(layer) for layer in layers],
        "only_in_a": report.only_in_a,
        "only_in_b": report.only_in_b,
        "mismatched": [
            {
                "name": m.name,
                "shape_a": list(m.shape_a),
                "shape_b": list(m.shape_b),
                "dtype_a": m.dtype_a,
                "dtype_b": m.dtype_b,
                "compared": m.compared,
            }
            for m in report.mismatched
        ],
        "skipped": [{"name": s.name, "reason": s.reason} for s in report.skipped],
        "unmeasured": [{"name": s.name, "reason": s.reason} for s in report.unmeasured],
    }
    changed = report.changed
    largest = max(changed, key=relative_change, default=None)
    data["summary"] = {
        "compared": len(report.layers),
        "unchanged": len(report.layers) - len(changed),
        "changed": len(changed),
        "largest_relative": None
        if largest is None
        else {"name": largest.name, "relative": largest.relative},
    }
    if report.quantization is not None:
        data["quantization"] = _quantization_dict(report)
    stacks = stack_summaries(report.layers, "relative")
    if stacks:
        data["summary"]["expert_stacks"] = summaries_to_json(stacks, "relative")
    if fail_above is not None:
        data["summary"]["fail_above"] = fail_above
        data["summary"]["exceeding"] = [layer.name for layer in report.exceeding(fail_above)]
    return data


def _quantization_dict(report: DiffReport) -> dict[str, Any]:
    from sncli.quant_diff import sigma_drift

    quant = report.quantization
    assert quant is not None
    return {
        "architecture": quant.architecture,
        "gguf_side": quant.gguf_side,
        "by_type": [
            {
                "type": s.type,
                "layers": s.layers,
                "parameters": s.parameters,
                "relative_max": s.relative_max,
                "relative_median": s.relative_median,
                "relative_frobenius_max": s.relative_frobenius_max,
                "relative_frobenius_median": s.relative_frobenius_median,
                "sigma_drift_max": s.sigma_drift_max,
            }
            for s in quant.by_type
        ],
        "sigma_drift": {layer.name: sigma_drift(layer) for layer in report.layers},
        "unmatched": [
            {"name": u.name, "side": u.side, "reason": u.reason} for u in quant.unmatched
        ],
    }


def print_quantization(report: DiffReport, console: Console) -> None:
    """The per-type summary and the unmatched names of a GGUF-vs-source diff."""
    quant = report.quantization
    if quant is None:
        return
    table = Table(
        title=f"By GGUF type ({quant.architecture}; relative to A)",
        title_justify="left",
        header_style="bold",
    )
    for column in (
        "type",
        "layers",
        "parameters",
        "max ‖Q−W‖₂/‖W‖₂",
        "median",
        "max Frobenius",
        "median",
        "σ_max drift",
    ):
        table.add_column(column, justify="left" if column == "type" else "right")
    for s in quant.by_type:
        table.add_row(
            escape(s.type),
            str(s.layers),
            f"{s.parameters:,}",
            f"{s.relative_max:.3g}",
            f"{s.relative_median:.3g}",
            f"{s.relative_frobenius_max:.3g}",
            f"{s.relative_frobenius_median:.3g}",
            f"{s.sigma_drift_max:+.3g}",
        )
    console.print(table)
    if quant.unmatched:
        names = Table(title="Unmatched names", title_justify="left", header_style="bold")
        names.add_column("name", overflow="fold")
        names.add_column("side")
        names.add_column("reason", overflow="fold")
        for u in quant.unmatched:
            names.add_row(escape(clean_text(u.name, 80)), u.side, escape(u.reason))
        console.print(names)


def diff_to_csv(layers: list[LayerDiff]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for layer in layers:
        cosines = layer.subspace_cosines
        writer.writerow(
            [
                layer.name,
                layer.kind,
                "x".join(str(d) for d in layer.shape),
                layer.unchanged,
                repr(layer.sigma_a),
                repr(layer.sigma_b),
                repr(layer.delta_sigma),
                layer.delta_bound.value,
                "" if layer.relative is None else repr(layer.relative),
                repr(layer.delta_frobenius),
                "" if layer.relative_frobenius is None else repr(layer.relative_frobenius),
                "" if not cosines else repr(min(cosines)),
                "" if layer.outside_top_subspace is None else layer.outside_top_subspace,
                "" if layer.intruder_dimensions is None else layer.intruder_dimensions,
                "" if layer.subspace_error is None else repr(layer.subspace_error),
                "" if layer.intruder_unresolved is None else len(layer.intruder_unresolved),
            ]
        )
    return buffer.getvalue()


def _relative(value: float | None) -> str:
    return "--" if value is None else f"{value:.3g}"


def _direction_cells(report: DiffReport, layer: LayerDiff) -> list[str]:
    cells = []
    if report.top_k:
        cosines, outside = layer.subspace_cosines, layer.outside_top_subspace
        error = layer.subspace_error or 0.0
        cosine = "--" if not cosines else f"{min(cosines):.3f}"
        if cosines and error >= _SHOWN_ERROR:
            cosine += f" ± {error:.0e}" if error < 1 else " (unresolved)"
        cells += [cosine, "--" if outside is None else str(outside)]
    if report.intruder_top_k:
        count, unresolved = layer.intruder_dimensions, layer.intruder_unresolved
        cell = "--" if count is None else str(count)
        if unresolved:
            cell += f" (+{len(unresolved)}?)"
        cells.append(cell)
    return cells


#: A cosine error from which the table shows it (the cosines are printed to 3 decimals).
_SHOWN_ERROR = 5e-4


def fmt_bounded(value: float, bound: BoundKind) -> str:
    """σ as ``inspect`` prints it: ``≥`` before a lower bound (an iterative estimate)."""
    return ("≥ " if bound is BoundKind.LOWER else "") + fmt_sigma(value)


def _caption(report: DiffReport, layers: list[LayerDiff]) -> str:
    lower = any(
        (not layer.unchanged and layer.delta_bound is BoundKind.LOWER)
        or BoundKind.LOWER in (layer.bound_a, layer.bound_b)
        for layer in layers
    )
    caption = f"‖B−A‖₂ by --method {report.method.value}"
    if lower:
        caption += "; '≥' marks lower bounds (iterative estimates)"
    if report.top_k:
        caption += (
            f"; min cos: smallest cosine of the principal angles between the top-{report.top_k} "
            f"left singular subspaces (1 = same directions); outside: B's top-{report.top_k} "
            f"directions with less than {report.subspace_threshold:g} of their length inside "
            "A's top subspace"
        )
        if any((layer.subspace_error or 0.0) >= _SHOWN_ERROR for layer in layers):
            caption += (
                "; ±: how far the cosines can be from the exact ones (Wedin's sin θ from the "
                "Ritz residuals and gaps; an estimate where the vectors were iterated), "
                "'unresolved': the top-K subspace is not separated from the next direction"
            )
    if report.intruder_top_k:
        caption += (
            f"; intruders: B's top-{report.intruder_top_k} singular vectors whose |cos| with "
            f"every singular vector of A is below {report.intruder_threshold:g} "
            "(Shuttleworth et al. 2024)"
        )
        if any(layer.intruder_unresolved for layer in layers):
            caption += (
                "; (+N?): N further directions whose vectors are not resolved well enough "
                "to decide (a singular value too close to its neighbours)"
            )
    return caption


def print_diff_table(
    report: DiffReport,
    layers: list[LayerDiff],
    console: Console,
    fail_above: float | None = None,
) -> None:
    title = f"{escape(clean_text(report.a))}  →  {escape(clean_text(report.b))}"
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("layer", overflow="fold")
    table.add_column("shape")
    table.add_column("σ(A)", justify="right")
    table.add_column("σ(B)", justify="right")
    table.add_column("‖B−A‖₂", justify="right")
    table.add_column("relative", justify="right")
    table.add_column("rel. Frobenius", justify="right")
    if report.top_k:
        table.add_column(f"top-{report.top_k} min cos", justify="right")
        table.add_column(f"outside top-{report.top_k}", justify="right")
    if report.intruder_top_k:
        table.add_column("intruders", justify="right")
    exceeding = {layer.name for layer in report.exceeding(fail_above)} if fail_above else set()
    for layer in layers:
        style = "bold red" if layer.name in exceeding else ("dim" if layer.unchanged else None)
        delta = "unchanged" if layer.unchanged else fmt_sigma(layer.delta_sigma)
        if not layer.unchanged and layer.delta_bound is BoundKind.LOWER:
            delta = "≥ " + delta
        row = [
            escape(clean_text(layer.name)),
            fmt_shape(layer.shape),
            fmt_bounded(layer.sigma_a, layer.bound_a),
            fmt_bounded(layer.sigma_b, layer.bound_b),
            delta,
            "∞ (σ(A) = 0)"
            if layer.relative is None and layer.delta_sigma > 0
            else _relative(layer.relative),
            _relative(layer.relative_frobenius),
        ]
        row += _direction_cells(report, layer)
        table.add_row(*row, style=style)
    console.print(table)
    changed = report.changed
    parts = [
        plural(len(report.layers), "layer") + " compared",
        f"{len(report.layers) - len(changed)} unchanged (byte-equal)",
    ]
    if report.only_in_a:
        parts.append(f"{len(report.only_in_a)} only in A")
    if report.only_in_b:
        parts.append(f"{len(report.only_in_b)} only in B")
    if report.mismatched:
        parts.append(f"{len(report.mismatched)} mismatched")
    if report.unmeasured:
        parts.append(f"{len(report.unmeasured)} NOT compared (non-finite)")
    console.print(", ".join(parts), style="dim")
    print_stacks(stack_summaries(report.layers, "relative"), console, "relative ‖B−A‖₂")
    for label, names in (("only in A", report.only_in_a), ("only in B", report.only_in_b)):
        if names:
            shown = ", ".join(clean_text(n, 60) for n in names[:8])
            more = f" and {len(names) - 8} more" if len(names) > 8 else ""
            console.print(f"{label}: {escape(shown)}{more}", style="dim")
    for item in report.unmeasured:
        console.print(
            f"not compared: {escape(clean_text(item.name, 80))}: {escape(item.reason)}",
            style="bold red",
        )
    for m in report.mismatched:
        what = (
            f"dtype {m.dtype_a} → {m.dtype_b} (compared)"
            if m.compared
            else f"shape {fmt_shape(m.shape_a)} → {fmt_shape(m.shape_b)} (not compared)"
        )
        console.print(f"mismatched: {escape(clean_text(m.name, 80))}: {what}", style="dim")
    console.print(_caption(report, layers), style="dim")
    print_quantization(report, console)
