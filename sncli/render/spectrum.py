"""Tables, JSON and CSV for ``sncli spectrum``."""

from __future__ import annotations

import csv
import io
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sncli.experts import stack_summaries, summaries_to_json
from sncli.layers import LayerKind
from sncli.messages import clean_text
from sncli.render.common import (
    fmt_shape,
    fmt_sigma,
    plural,
    print_name_decisions,
    print_non_finite,
    print_stacks,
)
from sncli.render.inspect import print_reshape_notes
from sncli.spectrum import METRICS, LayerSpectrum, SpectrumReport

#: Shown next to spectral-norm layers: the spectrum is the raw weight's, as in ``inspect``.
SPECTRAL_NORM_NOTE = "raw weight; the model uses W/σ̂ (σ̂ = uᵀWv from the stored u, v)"


def spectrum_layer_to_dict(layer: LayerSpectrum, extras: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON object for one layer (a stable contract; see README "Spectrum"); ``extras``:
    the asked-for ``EXTRA_METRICS``, after ``METRICS``."""
    item: dict[str, Any] = {
        "name": layer.name,
        "short_name": layer.short_name,
        "kind": layer.kind.value,
        "shape": list(layer.shape),
        "dtype": layer.dtype,
        "matrix": layer.matrix,
        "matrix_shape": list(layer.matrix_shape),
        "count": layer.count,
        "complete": layer.complete,
        "algorithm": layer.algorithm,
        "bound": layer.bound,
    }
    if layer.steps is not None:
        item["steps"] = layer.steps
        item["converged"] = layer.converged
        item["error_estimate"] = layer.max_error_estimate
    item.update(layer.metrics())
    item.update({name: getattr(layer, name) for name in extras})
    if layer.rank is not None:  # a LoRA update: its r singular values are the whole story
        item["rank"] = layer.rank
        item["scale"] = layer.scale
        item["singular_values"] = [float(v) for v in layer.values]
    if layer.small_n_fit:
        item["small_n_fit"] = True
    if layer.note:
        item["classification"] = layer.note
    if layer.reshape_note:
        item["reshape_note"] = layer.reshape_note
    if layer.expert is not None:
        item["expert"], item["stack"] = layer.expert, layer.stack
    if layer.spectral_norm:
        item["spectral_norm"] = SPECTRAL_NORM_NOTE
    return item


def spectrum_to_dict(report: SpectrumReport, layers: list[LayerSpectrum]) -> dict[str, Any]:
    """``layers`` are those shown (``--top``/``--sort`` cut and order them); ``summary`` covers
    every analysed layer. ``device`` is present only when a GPU computed the values (a CPU
    run's output is unchanged)."""
    largest = report.largest
    data: dict[str, Any] = {
        "checkpoint": report.checkpoint,
        "format": report.format,
        "mode": "full" if report.top_k is None else "top_k",
        "top_k": report.top_k,
    }
    if report.device != "cpu":
        data["device"] = report.device
    data |= {
        "layers": [spectrum_layer_to_dict(layer, report.extras) for layer in layers],
        "skipped": [{"name": s.name, "reason": s.reason} for s in report.skipped],
        "summary": {
            "analysed": len(report.layers),
            "skipped": len(report.skipped),
            "largest": None
            if largest is None
            else {"name": largest.name, "sigma_max": largest.sigma_max},
            "mean": report.summary(),
        },
    }
    stacks = stack_summaries(report.layers, "sigma_max")
    if stacks:
        data["summary"]["expert_stacks"] = summaries_to_json(stacks, "sigma_max")
    return data


CSV_COLUMNS = (
    "name",
    "kind",
    "shape",
    "dtype",
    "matrix_shape",
    "count",
    "complete",
    "algorithm",
    "bound",
    "error_estimate",
    *METRICS,
)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def spectrum_to_csv(layers: list[LayerSpectrum], extras: tuple[str, ...] = ()) -> str:
    """One row per layer: ``CSV_COLUMNS`` then the asked-for ``EXTRA_METRICS``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, (*CSV_COLUMNS, *extras), lineterminator="\n")
    writer.writeheader()
    for layer in layers:
        row = {
            "name": layer.name,
            "kind": layer.kind.value,
            "shape": "x".join(str(d) for d in layer.shape),
            "dtype": layer.dtype,
            "matrix_shape": "x".join(str(d) for d in layer.matrix_shape),
            "count": layer.count,
            "complete": layer.complete,
            "algorithm": layer.algorithm,
            "bound": layer.bound,
            "error_estimate": layer.max_error_estimate,
            **layer.metrics(),
            **{name: getattr(layer, name) for name in extras},
        }
        writer.writerow({key: _cell(value) for key, value in row.items()})
    return buffer.getvalue()


def _num(value: float | int | None, digits: int = 4) -> str:
    if value is None:
        return "--"
    if isinstance(value, int):
        return str(value)
    return fmt_sigma(value, digits)


#: Table headers of the ``EXTRA_METRICS`` (``max_rand_eval`` and ``bulk_max``: JSON/CSV only).
EXTRA_HEADERS = {
    "alpha_hill": "α_hill",
    "snr": "SNR",
    "mp_softrank": "MP softrank",
    "num_spikes": "spikes (MP fit)",
    "rand_distance": "rand. dist.",
    "num_traps": "traps",
}

_SPARKS = "▁▂▃▄▅▆▇█"
#: How many of the largest singular values the table's sparkline shows.
SPARKLINE_VALUES = 8


def sparkline(values: Any, count: int = SPARKLINE_VALUES) -> str:
    """The ``count`` largest singular values as bars relative to σ_max (█ = σ_max, ▁ ≤ 1/8):
    a flat line is a spread spectrum, a single tall bar a dominant direction."""
    top = sorted((float(v) for v in values), reverse=True)[:count]
    if not top or top[0] <= 0:
        return ""
    return "".join(
        _SPARKS[max(0, min(len(_SPARKS) - 1, round(v / top[0] * len(_SPARKS)) - 1))] for v in top
    )


def print_spectrum_table(
    report: SpectrumReport, layers: list[LayerSpectrum], console: Console
) -> None:
    full = report.top_k is None
    title = f"Singular-value spectra: {escape(clean_text(report.checkpoint))}"
    if not full:
        title += f" (top {report.top_k})"
    table = Table(title=title, title_justify="left")
    table.add_column("layer", overflow="fold", no_wrap=False)
    table.add_column("kind")
    table.add_column("matrix", justify="right")
    table.add_column("σ_max", justify="right", style="bold")
    if full:
        for header in ("σ_min", "κ", "stable rank", "eff. rank", "num. rank", "α", "KS D"):
            table.add_column(header, justify="right")
    else:
        table.add_column(f"σ_{report.top_k}", justify="right")
        table.add_column("stable rank", justify="right")
        table.add_column("est. error", justify="right")
    table.add_column("MP spikes", justify="right")
    extras = [name for name in report.extras if name in EXTRA_HEADERS]
    for name in extras:
        table.add_column(EXTRA_HEADERS[name], justify="right")
    table.add_column(f"top {SPARKLINE_VALUES} σ", no_wrap=True)
    for layer in layers:
        matrix = fmt_shape(layer.matrix_shape)
        if layer.kind.is_conv:
            matrix += " (reshape, T)" if layer.transposed else " (reshape)"
        lower = "≥ " if layer.bound == "lower" else ""
        row = [
            escape(clean_text(layer.short_name)),
            layer.kind.value + ("*" if layer.kind is LayerKind.EMBEDDING else ""),
            matrix,
            lower + fmt_sigma(layer.sigma_max),
        ]
        if full:
            alpha = _num(layer.alpha, 3) + ("†" if layer.small_n_fit else "")
            row += [
                fmt_sigma(layer.sigma_min, 4),
                _num(layer.condition_number),
                _num(layer.stable_rank),
                _num(layer.effective_rank),
                _num(layer.numerical_rank),
                alpha,
                _num(layer.ks_distance, 3),
            ]
        else:
            row += [
                lower + fmt_sigma(float(layer.values[-1]), 4),
                _num(layer.stable_rank),
                "" if layer.max_error_estimate is None else f"{layer.max_error_estimate:.0e}",
            ]
        spikes = "--" if layer.mp_spikes is None else str(layer.mp_spikes)
        if layer.mp_spikes is None and not full:
            spikes = f"≥ {layer.count}"
        row.append(spikes)
        row += [_num(getattr(layer, name), 3) for name in extras]
        row.append(sparkline(layer.values))
        table.add_row(*row)
    console.print(table)
    footer = f"{plural(len(report.layers), 'layer')} analysed"
    if len(layers) != len(report.layers):
        footer += f" ({len(layers)} shown)"
    footer += f" · {plural(len(report.skipped), 'tensor')} skipped"
    mean = report.summary()
    if mean["alpha"] is not None:
        footer += f" · mean α = {mean['alpha']:.3g}"
    if mean["log_spectral_norm"] is not None:
        footer += f" · mean log10 λ_max = {mean['log_spectral_norm']:.3g}"
    console.print(escape(footer))
    _print_captions(report, layers, console)


def _print_extra_caption(extras: tuple[str, ...], console: Console) -> None:
    parts = []
    if "alpha_hill" in extras:
        parts.append(
            "α_hill: AlphaPruning's PL_Alpha_Hill, the Hill estimate with xmin at the median "
            "eigenvalue"
        )
    if "snr" in extras:
        parts.append(
            "SNR: Spectrum's Σσ above / Σσ below σ_IQR·(1 + √β), divided by σ_max (−− when no σ "
            "is below)"
        )
    if "mp_softrank" in extras:
        parts.append(
            "MP softrank, spikes (MP fit): WeightWatcher's fitted Marchenko–Pastur bulk "
            "(λ₊/λ_max, λ above λ₊ plus its Tracy–Widom allowance)"
        )
    if "rand_distance" in extras:
        parts.append(
            "rand. dist.: WeightWatcher's Jensen–Shannon distance between the ESD and that of "
            "W with its elements permuted (seeded by --seed); traps: spikes of the permuted W"
        )
    console.print("; ".join(parts) + ".", style="dim")


def _print_captions(report: SpectrumReport, layers: list[LayerSpectrum], console: Console) -> None:
    where = "" if report.device == "cpu" else f", on {report.device}"
    if report.top_k is None:
        console.print(
            f"Full spectra in float64{where} (Gram matrix + LAPACK eigvalsh; gesdd for "
            "near-singular layers). κ = σ_max/σ_min; num. rank counts σ > σ_max·max(m,n)·ε "
            "of the stored dtype; α, KS D: WeightWatcher's power-law fit of the eigenvalues λ = σ² "
            "(alpha_weighted, log_alpha_norm, entropy in JSON/CSV); MP spikes: λ above the "
            "Marchenko–Pastur edge of a random matrix with the same shape and ‖W‖_F.",
            style="dim",
        )
        if report.extras:
            _print_extra_caption(report.extras, console)
        if any(layer.small_n_fit for layer in layers):
            console.print("† fewer than 20 eigenvalues: WeightWatcher's small-n rule.", style="dim")
        silly = [
            layer
            for layer in layers
            if layer.rank_tolerance is not None
            and layer.sigma_max
            and layer.rank_tolerance >= layer.sigma_max
        ]
        if silly:
            dtypes = ", ".join(sorted({layer.dtype for layer in silly}))
            console.print(
                f"num. rank 0 for {plural(len(silly), 'layer')} ({dtypes}): the stored dtype's ε "
                "times max(m, n) exceeds 1, so the rule's tolerance is above σ_max.",
                style="dim",
            )
    else:
        console.print(
            f"Top {report.top_k} singular values by float64 block Lanczos{where} (≥: each a lower "
            "bound, "
            "est. error = largest estimated relative error); the metrics that need the whole "
            "spectrum (σ_min, ranks, α, entropy…) are omitted. MP spikes ≥ K: all K values are "
            "above the Marchenko–Pastur edge.",
            style="dim",
        )
    if any(layer.kind.is_conv for layer in layers):
        console.print(
            "Conv spectra are those of the reshaped kernel (out, in·k…), as in `sncli inspect`; "
            "WeightWatcher pools per-position k×k slices instead.",
            style="dim",
        )
        print_reshape_notes(layers, console)  # type: ignore[arg-type]
    if any(layer.kind is LayerKind.EMBEDDING for layer in layers):
        console.print("* embedding (recognised by its name and role).", style="dim")
    print_name_decisions([layer.note for layer in layers], console)
    print_stacks(stack_summaries(report.layers, "sigma_max"), console)
    if any(layer.spectral_norm for layer in layers):
        console.print(f"Spectral-norm layers: {SPECTRAL_NORM_NOTE}.", style="dim")
    print_non_finite(report.skipped, console)
