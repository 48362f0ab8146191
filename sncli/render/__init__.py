"""Turn reports into tables (Rich), JSON and CSV. The only module that imports rich."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sncli.analysis import InspectReport, LayerSigma
from sncli.checkpoint import clean_text
from sncli.layers import LayerKind
from sncli.lipschitz import LipschitzReport
from sncli.normalize import MEASUREMENT_TOLERANCE, NormalizePlan, NormalizeResult
from sncli.spectral import BoundKind, Method


class OutputFormat(str, Enum):
    TABLE = "table"
    JSON = "json"
    CSV = "csv"


def stdout_console() -> Console:
    """Rich console for tables; when piped, wide enough not to fold names (not 80 columns)."""
    import os

    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
    return Console(file=sys.stdout, highlight=False, soft_wrap=False, width=width)


def stderr_console() -> Console:
    return Console(file=sys.stderr, highlight=False, stderr=True)


def fmt_sigma(value: float | None, digits: int = 6) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "--"
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e5:
        return f"{value:.{digits}g}"
    return f"{value:.{digits - 2}e}"


def fmt_shape(shape: tuple[int, ...]) -> str:
    return "×".join(str(d) for d in shape)


def _finite_or_none(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return value


#: Rounding allowance on a dense float64 σ when it is reported as an upper bound.
DENSE_ROUNDING = 1e-12


def certified_upper(layer: LayerSigma) -> float | None:
    """A proven upper bound on σ when one is known (dense results: σ plus rounding)."""
    if layer.upper is not None:
        return layer.upper
    if layer.certified:
        return layer.sigma * (1 + DENSE_ROUNDING)
    return None


def plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


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
    upper = certified_upper(layer)
    if upper is not None:
        item["sigma_upper"] = upper
    if layer.algorithm:
        item["algorithm"] = layer.algorithm
    if layer.spectral_norm is not None:
        sn = layer.spectral_norm
        item["spectral_norm"] = {
            "style": sn.style.value,
            "sigma_stored_estimate": _finite_or_none(sn.sigma_stored_estimate),
            "sigma_effective": _finite_or_none(sn.sigma_effective),
            "note": sn.note or None,
        }
    return item


def inspect_to_dict(report: InspectReport, layers: list[LayerSigma]) -> dict[str, Any]:
    largest = max(layers, key=lambda layer: layer.sigma, default=None)
    return {
        "checkpoint": report.checkpoint,
        "format": report.format,
        "method": report.method.value,
        "layers": [layer_to_dict(layer) for layer in layers],
        "skipped": [{"name": s.name, "reason": s.reason} for s in report.skipped],
        "summary": {
            "analysed": len(layers),
            "skipped": len(report.skipped),
            "largest": None if largest is None else {"name": largest.name, "sigma": largest.sigma},
        },
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
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for layer in layers:
        sn = layer.spectral_norm
        writer.writerow(
            [
                layer.name,
                layer.kind.value,
                "x".join(str(d) for d in layer.shape),
                layer.dtype,
                layer.matrix,
                repr(layer.sigma),
                layer.bound.value,
                layer.method.value,
                "" if layer.iterations is None else layer.iterations,
                "" if layer.converged is None else str(layer.converged).lower(),
                "" if layer.error_estimate is None else repr(layer.error_estimate),
                str(layer.certified).lower(),
                "" if certified_upper(layer) is None else repr(certified_upper(layer)),
                "" if sn is None else sn.style.value,
                ""
                if sn is None or sn.sigma_stored_estimate is None
                else repr(sn.sigma_stored_estimate),
                "" if sn is None or sn.sigma_effective is None else repr(sn.sigma_effective),
            ]
        )
    return buffer.getvalue()


def write_json(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data, indent=2, allow_nan=False) + "\n")


def method_caption(method: Method, layers: list[LayerSigma]) -> str:
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
    counts = Counter(_reason_group(s.reason) for s in report.skipped)
    parts = ", ".join(f"{n} {reason}" for reason, n in counts.most_common())
    return f"{len(report.skipped)} skipped ({parts})"


def _reason_group(reason: str) -> str:
    if reason.startswith("spectral-norm"):
        return "spectral-norm buffers"
    if reason.startswith("shares storage"):
        return "tied"
    if reason.startswith("non-finite"):
        return "NON-FINITE"
    return reason.split(" (")[0]


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
            upper = certified_upper(layer)
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
    largest = max(layers, key=lambda layer: layer.sigma, default=None)
    footer = f"{plural(len(layers), 'layer')} analysed · {skipped_summary(report)}"
    if largest is not None:
        footer += f" · largest σ = {fmt_sigma(largest.sigma)} ({clean_text(largest.short_name)})"
    console.print(escape(footer))
    console.print(method_caption(report.method, layers), style="dim")
    if any(layer.kind.is_conv for layer in layers):
        console.print(
            "Conv σ is that of the reshaped kernel matrix, which is what torch's spectral_norm "
            "normalizes; it is not the convolution's operator norm (see `sncli lipschitz`)."
            + (
                " (T) = transposed conv, reshaped along dim 1."
                if any(layer.transposed for layer in layers)
                else ""
            ),
            style="dim",
        )
    if any(layer.kind is LayerKind.EMBEDDING for layer in layers):
        console.print(
            "* embedding: recognised by its name; its input is discrete (token ids), so its σ "
            "is informational.",
            style="dim",
        )
    if has_sn:
        console.print(
            "Spectral-norm layers: σ_max is the raw weight's; the model uses W/σ̂ with σ̂ from the "
            "stored u, v; σ̂ ≤ σ, so the used weight's σ is ≥ 1 (up to the rounding of the stored "
            "u, v, which are not exactly unit vectors).",
            style="dim",
        )
    if any(s.reason.startswith("non-finite") for s in report.skipped):
        bad = [s.name for s in report.skipped if s.reason.startswith("non-finite")]
        console.print(f"[bold red]Non-finite weights[/] in: {', '.join(bad)}")


ProgressFn = Callable[[int, int, str], None]


@contextmanager
def progress_bar(enabled: bool, description: str = "σ") -> Iterator[ProgressFn | None]:
    """A transient progress bar on stderr; yields None when disabled or not a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[layer]}"),
        console=stderr_console(),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=None, layer="")

        def update(done: int, total: int, name: str) -> None:
            bar.update(task, completed=done, total=total, layer=name)

        yield update


def normalize_to_dict(plan: NormalizePlan, result: NormalizeResult | None) -> dict[str, Any]:
    """JSON for ``normalize``: the plan, and the measured outcome when something was written."""
    outcomes = {o.name: o for o in result.layers} if result else {}
    layers = []
    for layer in plan.layers:
        item: dict[str, Any] = {
            "name": layer.name,
            "output_name": layer.output_name,
            "kind": layer.kind,
            "shape": list(layer.shape),
            "dtype": layer.dtype,
            "action": layer.action.value,
            "sigma_before": _finite_or_none(layer.sigma_before),
            "scale": layer.scale,
            "sigma_after_expected": _finite_or_none(layer.expected_after),
        }
        if layer.reason:
            item["reason"] = layer.reason
        outcome = outcomes.get(layer.name)
        if outcome is not None:
            item["sigma_after"] = outcome.sigma_after
            item["shaves"] = outcome.shaves
        layers.append(item)
    return {
        "checkpoint": plan.checkpoint,
        "target": plan.options.target,
        "mode": plan.options.mode.value,
        "method": plan.options.method.value,
        "bake": plan.options.bake,
        "dry_run": result is None,
        "outputs": [str(p) for p in result.outputs] if result else [],
        "verified": bool(result and result.verified),
        "layers": layers,
        "skipped": [{"name": s.name, "reason": s.reason} for s in plan.skipped],
    }


def print_normalize_table(
    plan: NormalizePlan, result: NormalizeResult | None, console: Console
) -> None:
    outcomes = {o.name: o for o in result.layers} if result else {}
    title = "Normalization plan (dry run)" if result is None else "Normalized"
    table = Table(title=f"{title}: {escape(plan.checkpoint)}", title_justify="left")
    table.add_column("layer", overflow="fold")
    table.add_column("dtype")
    table.add_column("σ before", justify="right")
    table.add_column("action")
    table.add_column("scale", justify="right")
    table.add_column("σ after" + (" (expected)" if result is None else ""), justify="right")
    for layer in plan.layers:
        name = layer.short_name
        if layer.output_name != layer.name:
            name += f" → {plan_short(layer.output_name, layer.name, layer.short_name)}"
        outcome = outcomes.get(layer.name)
        after = outcome.sigma_after if outcome else layer.expected_after
        action = layer.action.value + (f" ({layer.reason})" if layer.reason else "")
        if outcome and outcome.shaves:
            action += f", shaved ×{outcome.shaves}"
        table.add_row(
            escape(clean_text(name)),
            layer.dtype,
            fmt_sigma(layer.sigma_before),
            escape(action),
            f"{layer.scale:.6g}",
            fmt_sigma(after, 9),
        )
    console.print(table)
    changed = sum(1 for p in plan.layers if p.action.value == "scale")
    kept = sum(1 for p in plan.layers if p.action.value == "keep")
    skipped = sum(1 for p in plan.layers if p.action.value == "skip")
    target = plan.options.target
    summary = f"{plural(changed, 'layer')} scaled to σ "
    summary += f"{'=' if plan.options.mode.value == 'scale' else '≤'} {fmt_sigma(target)} · "
    summary += f"{kept} kept · {skipped} skipped · "
    summary += f"{plural(len(plan.skipped), 'other tensor')} copied unchanged"
    console.print(escape(summary))
    if result is not None:
        worst = result.worst_sigma
        console.print(
            f"Wrote {', '.join(escape(str(p)) for p in result.outputs)}; re-opened and verified: "
            f"largest σ after = {fmt_sigma(worst, 12)} (float64 LAPACK on the stored values; "
            f"σ ≤ target within {MEASUREMENT_TOLERANCE:g} relative)."
        )
    else:
        console.print("Dry run: nothing was written.", style="dim")


def plan_short(output_name: str, name: str, short_name: str) -> str:
    prefix = name[: len(name) - len(short_name)]
    return output_name[len(prefix) :] if output_name.startswith(prefix) else output_name


def lipschitz_to_dict(report: LipschitzReport) -> dict[str, Any]:
    """JSON for ``lipschitz`` (a stable contract; see README)."""
    shares = report.shares()
    running = report.running_log10()
    log = report.log10_bound
    return {
        "checkpoint": report.checkpoint,
        "method": "certified" if report.options.certified else report.options.method.value,
        "conv": report.options.conv.value,
        "log10_bound": _finite_or_none(log),
        "bound": _finite_or_none(report.bound),
        "certified": report.certified,
        "valid_architecture": report.valid_architecture,
        "statement": report.statement(),
        "assumptions": report.assumptions,
        "caveats": report.caveats,
        "layers": [
            {
                "name": f.name,
                "kind": f.kind,
                "sigma": f.sigma,
                "sigma_lower": _finite_or_none(f.sigma_lower),
                "sigma_upper": _finite_or_none(f.sigma_upper),
                "certified": f.certified,
                "source": f.source,
                "reshape_sigma": _finite_or_none(f.reshape_sigma),
                "log10_sigma": _finite_or_none(f.log10),
                "share": _finite_or_none(share),
                "running_log10": _finite_or_none(run),
                **({"note": f.note} if f.note else {}),
            }
            for f, share, run in zip(report.factors, shares, running, strict=True)
        ],
        "excluded": [{"name": s.name, "reason": s.reason} for s in report.excluded],
    }


LIPSCHITZ_CSV_COLUMNS = (
    "name",
    "kind",
    "sigma",
    "sigma_lower",
    "sigma_upper",
    "certified",
    "reshape_sigma",
    "share",
    "running_log10",
    "source",
)


def lipschitz_to_csv(report: LipschitzReport) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(LIPSCHITZ_CSV_COLUMNS)
    for f, share, run in zip(report.factors, report.shares(), report.running_log10(), strict=True):
        writer.writerow(
            [
                f.name,
                f.kind,
                repr(f.sigma),
                "" if f.sigma_lower is None else repr(f.sigma_lower),
                "" if f.sigma_upper is None else repr(f.sigma_upper),
                str(f.certified).lower(),
                "" if f.reshape_sigma is None else repr(f.reshape_sigma),
                "" if share is None else repr(share),
                repr(run),
                f.source,
            ]
        )
    return buffer.getvalue()


def fmt_bound(log10: float) -> str:
    if log10 == -math.inf:
        return "0"
    if abs(log10) < 5:
        return fmt_sigma(10.0**log10)
    mantissa = 10.0 ** (log10 - math.floor(log10))
    return f"{mantissa:.4f}e{math.floor(log10):+d}"


def print_lipschitz_table(report: LipschitzReport, console: Console) -> None:
    has_reshape = any(f.reshape_sigma is not None for f in report.factors)
    table = Table(title=f"Lipschitz bound: {escape(report.checkpoint)}", title_justify="left")
    table.add_column("layer", overflow="fold")
    table.add_column("kind")
    if has_reshape:
        table.add_column("σ reshape", justify="right")
    table.add_column("σ factor", justify="right", style="bold")
    table.add_column("interval [lower, upper]", justify="right")
    table.add_column("cert.", justify="center")
    table.add_column("share of log L", justify="right")
    table.add_column("running product", justify="right")
    for f, share, run in zip(report.factors, report.shares(), report.running_log10(), strict=True):
        interval = f"[{fmt_sigma(f.sigma_lower)}, {fmt_sigma(f.sigma_upper)}]"
        row = [escape(clean_text(f.short_name)), f.kind]
        if has_reshape:
            row.append(fmt_sigma(f.reshape_sigma) if f.reshape_sigma is not None else "")
        row += [
            fmt_sigma(f.sigma),
            interval,
            "✓" if f.certified else "✗",
            "--" if share is None else f"{100 * share:.1f}%",
            fmt_bound(run),
        ]
        table.add_row(*row)
    console.print(table)
    log = report.log10_bound
    log_text = "-inf" if log == -math.inf else f"{log:.4f}"
    if not report.valid_architecture:
        console.print(
            f"[bold]product of layer σ = {fmt_bound(log)}[/]  (log10 = {log_text}) — "
            "diagnostic only, NOT a Lipschitz bound for this architecture"
        )
    else:
        kind = "certified upper bound" if report.certified else "estimate of the product bound"
        console.print(f"[bold]L ≤ {fmt_bound(log)}[/]  (log10 = {log_text}) — {escape(kind)}")
    console.print(escape(report.statement()))
    console.print("Assumptions: " + escape("; ".join(report.assumptions)) + ".", style="dim")
    counts = Counter(_reason_group(s.reason.split(":")[0]) for s in report.excluded)
    if counts:
        parts = ", ".join(f"{n} {reason}" for reason, n in counts.most_common())
        console.print(f"Excluded from the product: {escape(parts)}.", style="dim")
