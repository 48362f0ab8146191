"""Tables, JSON and CSV for ``sncli inspect``."""

from __future__ import annotations

import csv
import io
from collections import Counter
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sncli.analysis import InspectReport, LayerSigma
from sncli.experts import stack_summaries, summaries_to_json
from sncli.layers import LayerKind
from sncli.messages import clean_text
from sncli.numerics.spectral import BoundKind, Method
from sncli.render.common import (
    finite_or_none,
    fmt_shape,
    fmt_sigma,
    plural,
    print_name_decisions,
    print_non_finite,
    print_stacks,
    reason_group,
)


def layer_to_dict(layer: LayerSigma) -> dict[str, Any]:
    """The JSON object for one layer (a stable contract; see README)."""
    item: dict[str, Any] = {
        "name": layer.name,
        "short_name": layer.short_name,
        "kind": layer.kind.value,
        "shape": list(layer.shape),
        "dtype": layer.dtype,
        "matrix": layer.matrix,
        "matrix_shape": list(layer.matrix_shape),
        "sigma": layer.sigma,
        "bound": layer.bound.value,
        "method": layer.method.value,
    }
    if layer.iterations is not None:
        item["iterations"] = layer.iterations
        item["converged"] = layer.converged
    if layer.error_estimate is not None:
        item["error_estimate"] = layer.error_estimate
    item["certified"] = layer.certified
    upper = layer.sigma_upper
    if upper is not None:
        item["sigma_upper"] = upper
    if layer.algorithm:
        item["algorithm"] = layer.algorithm
    if layer.rank is not None:
        item["rank"] = layer.rank
        item["scale"] = layer.scale
    if layer.note:
        item["classification"] = layer.note
    if layer.reshape_note:
        item["reshape_note"] = layer.reshape_note
    if layer.expert is not None:
        item["expert"], item["stack"] = layer.expert, layer.stack
    if layer.spectral_norm is not None:
        sn = layer.spectral_norm
        item["spectral_norm"] = {
            "style": sn.style.value,
            "sigma_stored_estimate": finite_or_none(sn.sigma_stored_estimate),
            "sigma_effective": finite_or_none(sn.sigma_effective),
            "note": sn.note or None,
        }
    return item


def inspect_to_dict(report: InspectReport, layers: list[LayerSigma]) -> dict[str, Any]:
    """``layers`` are those shown (``--top``/``--sort`` cut and order them); ``summary`` counts
    every analysed layer and names the largest linear/conv layer among all of them (embedding
    tables apart: ``largest_embedding`` when there are any)."""
    largest = report.largest
    summary: dict[str, Any] = {
        "analysed": len(report.layers),
        "skipped": len(report.skipped),
        "largest": None if largest is None else {"name": largest.name, "sigma": largest.sigma},
    }
    embedding = report.largest_embedding
    if embedding is not None:
        summary["largest_embedding"] = {"name": embedding.name, "sigma": embedding.sigma}
    stacks = stack_summaries(report.layers, "sigma")
    if stacks:
        summary["expert_stacks"] = summaries_to_json(stacks, "sigma")
    return {
        "checkpoint": report.checkpoint,
        "format": report.format,
        "method": report.method.value,
        "layers": [layer_to_dict(layer) for layer in layers],
        "skipped": [{"name": s.name, "reason": s.reason} for s in report.skipped],
        "summary": summary,
    }


CSV_COLUMNS = (
    "name",
    "kind",
    "shape",
    "dtype",
    "matrix",
    "sigma",
    "bound",
    "method",
    "iterations",
    "converged",
    "error_estimate",
    "certified",
    "sigma_upper",
    "sn_style",
    "sigma_stored_estimate",
    "sigma_effective",
)


def inspect_to_csv(layers: list[LayerSigma]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for layer in layers:
        sn = layer.spectral_norm
        upper = layer.sigma_upper
        writer.writerow(
            {
                "name": layer.name,
                "kind": layer.kind.value,
                "shape": "x".join(str(d) for d in layer.shape),
                "dtype": layer.dtype,
                "matrix": layer.matrix,
                "sigma": repr(layer.sigma),
                "bound": layer.bound.value,
                "method": layer.method.value,
                "iterations": "" if layer.iterations is None else layer.iterations,
                "converged": "" if layer.converged is None else str(layer.converged).lower(),
                "error_estimate": ""
                if layer.error_estimate is None
                else repr(layer.error_estimate),
                "certified": str(layer.certified).lower(),
                "sigma_upper": "" if upper is None else repr(upper),
                "sn_style": "" if sn is None else sn.style.value,
                "sigma_stored_estimate": ""
                if sn is None or sn.sigma_stored_estimate is None
                else repr(sn.sigma_stored_estimate),
                "sigma_effective": ""
                if sn is None or sn.sigma_effective is None
                else repr(sn.sigma_effective),
            }
        )
    return buffer.getvalue()


def method_caption(method: Method, layers: list[LayerSigma]) -> str:
    if layers and all(layer.kind is LayerKind.LORA for layer in layers):
        return (
            "σ of each LoRA update s·B·A from its factors (QR of B and Aᵀ, SVD of the r×r core, "
            "float64); the m×n product is never formed."
        )
    text = {
        Method.DENSE: "σ: float64 LAPACK on the Gram matrix (two-sided to rounding, certified).",
        Method.EXACT: "σ: float64 accuracy (block Lanczos to ~1e-12, dense fallback); the upper "
        "side is not proven unless --certified.",
        Method.AUTO: "σ: auto, each within the --tol relative error target (default 1e-4) by "
        "its error estimate; iterative values are lower bounds on the true σ, small layers are "
        "computed exactly (dense).",
        Method.LANCZOS: "σ: block Lanczos at --tol; values are lower bounds on the true σ.",
        Method.POWER: "σ: power-iteration estimates, each a lower bound on the true σ; the "
        "stopping rule is not an error bound.",
    }[method]
    unconverged = sum(1 for layer in layers if layer.converged is False)
    if unconverged:
        text += f" {unconverged} did not converge; raise --iters or use --method exact."
    if method is not Method.DENSE and any(layer.bound is BoundKind.LOWER for layer in layers):
        text += " ≥ marks a lower bound."
    certified = sum(1 for layer in layers if layer.certified)
    if certified and method is not Method.DENSE:
        text += f" {plural(certified, 'layer')} with a proven upper bound (sigma_upper in JSON)."
    return text


def skipped_summary(report: InspectReport) -> str:
    if not report.skipped:
        return "0 skipped"
    counts = Counter(reason_group(s.reason) for s in report.skipped)
    parts = ", ".join(f"{n} {reason}" for reason, n in counts.most_common())
    return f"{len(report.skipped)} skipped ({parts})"


def print_reshape_notes(layers: list[LayerSigma], console: Console) -> None:
    """How uncertain conv reshapes were decided: each distinct note once, with its layers."""
    by_note: dict[str, list[str]] = {}
    for layer in layers:
        if layer.reshape_note:
            by_note.setdefault(layer.reshape_note, []).append(clean_text(layer.short_name))
    for note, names in by_note.items():
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        console.print(escape(f"Reshape ({shown}): {note}."), style="dim")


def print_inspect_table(report: InspectReport, layers: list[LayerSigma], console: Console) -> None:
    has_sn = any(layer.spectral_norm is not None for layer in layers)
    has_iters = any(layer.iterations is not None for layer in layers)
    has_upper = any(layer.upper is not None for layer in layers)
    sigma_header = "σ_max"
    title = f"Spectral norms: {escape(clean_text(report.checkpoint))}"
    table = Table(title=title, title_justify="left")
    table.add_column("layer", overflow="fold", no_wrap=False)
    table.add_column("kind")
    table.add_column("shape", justify="right")
    table.add_column("dtype")
    table.add_column("matrix", justify="right")
    table.add_column(sigma_header, justify="right", style="bold")
    if has_upper:
        table.add_column("σ ≤ (proven)", justify="right")
    if has_iters:
        table.add_column("iters", justify="right")
    if has_sn:
        table.add_column("σ̂ stored (uᵀWv)", justify="right")
        table.add_column("σ used (W/σ̂)", justify="right")
    for layer in layers:
        matrix = fmt_shape(layer.matrix_shape)
        if layer.kind.is_conv:
            matrix += " (reshape, T)" if layer.transposed else " (reshape)"
        row = [
            escape(clean_text(layer.short_name)),
            layer.kind.value + ("*" if layer.kind is LayerKind.EMBEDDING else ""),
            fmt_shape(layer.shape),
            layer.dtype,
            matrix,
            ("≥ " if layer.bound is BoundKind.LOWER else "") + fmt_sigma(layer.sigma),
        ]
        if has_upper:
            upper = layer.sigma_upper
            row.append("" if upper is None else fmt_sigma(upper))
        if has_iters:
            mark = "" if layer.converged in (True, None) else " (not converged)"
            row.append(("" if layer.iterations is None else str(layer.iterations)) + mark)
        if has_sn:
            sn = layer.spectral_norm
            row += [
                "" if sn is None else fmt_sigma(sn.sigma_stored_estimate),
                "" if sn is None else fmt_sigma(sn.sigma_effective),
            ]
        table.add_row(*row)
    console.print(table)
    largest = report.largest
    footer = f"{plural(len(report.layers), 'layer')} analysed"
    if len(layers) != len(report.layers):
        footer += f" ({len(layers)} shown)"
    footer += f" · {skipped_summary(report)}"
    if largest is not None:
        footer += f" · largest σ = {fmt_sigma(largest.sigma)} ({clean_text(largest.short_name)})"
    embedding = report.largest_embedding
    if embedding is not None:
        footer += (
            f" · largest embedding σ = {fmt_sigma(embedding.sigma)} "
            f"({clean_text(embedding.short_name)})"
        )
    console.print(escape(footer))
    console.print(method_caption(report.method, layers), style="dim")
    if any(layer.kind.is_conv for layer in layers):
        console.print(
            "Conv σ is that of the reshaped kernel matrix, which is what torch's spectral_norm "
            "normalizes; it is not the convolution's operator norm (see `sncli lipschitz`)."
            + (
                " (T) = transposed conv: dim 1 (out) first, matrix (out, in·k)."
                if any(layer.transposed for layer in layers)
                else ""
            ),
            style="dim",
        )
        print_reshape_notes(layers, console)
    if any(layer.kind is LayerKind.EMBEDDING for layer in layers):
        console.print(
            "* embedding: recognised by its name and role (no bias, not a projection); its "
            "input is discrete (token ids), so its σ is informational.",
            style="dim",
        )
    print_name_decisions([layer.note for layer in layers], console)
    print_stacks(stack_summaries(report.layers, "sigma"), console)
    if has_sn:
        console.print(
            "Spectral-norm layers: σ_max is the raw weight's; the model uses W/σ̂ with σ̂ from the "
            "stored u, v; σ̂ ≤ σ, so the used weight's σ is ≥ 1 (up to the rounding of the stored "
            "u, v, which are not exactly unit vectors).",
            style="dim",
        )
    print_non_finite(report.skipped, console)
