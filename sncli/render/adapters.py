"""Tables, JSON and CSV for two LoRA adapters compared (``sncli diff A B`` on adapters)."""

from __future__ import annotations

import csv
import io
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sncli.adapters import AdapterDiffReport, AdapterLayerDiff, AdapterNormalizeResult
from sncli.messages import clean_text
from sncli.render.common import finite_or_none, fmt_sigma, plural

CSV_FIELDS = (
    "name",
    "rank_a",
    "rank_b",
    "scale_a",
    "scale_b",
    "sigma_a",
    "sigma_b",
    "delta_sigma",
    "relative",
    "max_cosine_left",
    "min_cosine_left",
    "max_cosine_right",
    "min_cosine_right",
)


def _row(layer: AdapterLayerDiff) -> dict[str, Any]:
    left, right = layer.cosines_left, layer.cosines_right
    return {
        "name": layer.name,
        "rank_a": layer.rank_a,
        "rank_b": layer.rank_b,
        "scale_a": layer.scale_a,
        "scale_b": layer.scale_b,
        "sigma_a": layer.sigma_a,
        "sigma_b": layer.sigma_b,
        "delta_sigma": layer.delta_sigma,
        "relative": layer.relative,
        "max_cosine_left": max(left, default=None),
        "min_cosine_left": min(left, default=None),
        "max_cosine_right": max(right, default=None),
        "min_cosine_right": min(right, default=None),
    }


def adapter_diff_to_dict(report: AdapterDiffReport) -> dict[str, Any]:
    layers = []
    for layer in report.layers:
        item = _row(layer)
        item["matrix_shape"] = list(layer.matrix_shape)
        item["cosines_left"] = list(layer.cosines_left)
        item["cosines_right"] = list(layer.cosines_right)
        item["angles_degrees_left"] = list(layer.angles_degrees)
        layers.append(item)
    return {
        "a": report.a,
        "b": report.b,
        "kind": "lora-adapters",
        "layers": layers,
        "only_in_a": report.only_in_a,
        "only_in_b": report.only_in_b,
        "mismatched": report.mismatched,
        "skipped": [{"name": s.name, "reason": s.reason} for s in report.skipped],
    }


def adapter_diff_to_csv(report: AdapterDiffReport) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for layer in report.layers:
        writer.writerow({k: ("" if v is None else v) for k, v in _row(layer).items()})
    return buffer.getvalue()


def print_adapter_diff_table(report: AdapterDiffReport, console: Console) -> None:
    table = Table(title=escape(f"LoRA updates: {clean_text(report.a)} → {clean_text(report.b)}"))
    for column in ("module", "r A/B", "σ(ΔA)", "σ(ΔB)", "‖ΔB−ΔA‖₂", "rel", "cos out", "cos in"):
        table.add_column(column, justify="left" if column == "module" else "right")
    for layer in report.layers:
        left, right = layer.cosines_left, layer.cosines_right
        table.add_row(
            escape(clean_text(layer.name)),
            f"{layer.rank_a}/{layer.rank_b}",
            fmt_sigma(layer.sigma_a),
            fmt_sigma(layer.sigma_b),
            fmt_sigma(layer.delta_sigma),
            fmt_sigma(layer.relative, 3),
            f"{max(left, default=0):.3f}…{min(left, default=0):.3f}",
            f"{max(right, default=0):.3f}…{min(right, default=0):.3f}",
        )
    console.print(table)
    console.print(
        f"{plural(len(report.layers), 'module')} compared · "
        f"{len(report.only_in_a)} only in A · {len(report.only_in_b)} only in B · "
        f"{len(report.mismatched)} with other shapes. cos out/in: cosines of the principal "
        "angles between the updates' column (output) and row (input) spaces, largest…smallest"
    )


def normalize_adapter_to_dict(result: AdapterNormalizeResult) -> dict[str, Any]:
    return {
        "source": result.source,
        "output": result.output,
        "target": result.target,
        "mode": result.mode,
        "how": "A and B each multiplied by √c, c = target/σ(s·B·A); config unchanged",
        "layers": [
            {
                "name": layer.name,
                "action": layer.action,
                "rank": layer.rank,
                "scale": layer.scale,
                "sigma_before": finite_or_none(layer.sigma_before),
                "sigma_after": finite_or_none(layer.sigma_after),
                "factor": layer.factor,
                **({"reason": layer.reason} if layer.reason else {}),
            }
            for layer in result.layers
        ],
        "files": result.files,
    }


def print_normalize_adapter_table(result: AdapterNormalizeResult, console: Console) -> None:
    table = Table(title=escape(f"LoRA updates normalized: {clean_text(result.source)}"))
    for column in ("module", "action", "r", "σ before", "σ after", "c"):
        table.add_column(column, justify="left" if column in ("module", "action") else "right")
    for layer in result.layers:
        table.add_row(
            escape(clean_text(layer.name)),
            layer.action,
            str(layer.rank),
            fmt_sigma(layer.sigma_before),
            fmt_sigma(layer.sigma_after),
            fmt_sigma(layer.factor),
        )
    console.print(table)
    where = f"written to {clean_text(result.output)}" if result.files else "nothing written"
    console.print(
        f"{plural(len(result.layers), 'module')} · target {result.target:g} ({result.mode}) · "
        f"A and B each × √c, config unchanged · {where}"
    )
