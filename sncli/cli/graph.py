"""``sncli lipschitz MODEL.onnx``: the bound over the model's graph (called by cli/lipschitz)."""

from __future__ import annotations

import math
import sys

import typer

from sncli.cli.sink import Sink
from sncli.errors import EXIT_BOUND_EXCEEDED
from sncli.graph_lipschitz import graph_lipschitz
from sncli.render.common import OutputFormat, stdout_console, write_json
from sncli.render.graph_lipschitz import graph_to_csv, graph_to_dict, print_graph_table


def run_graph_lipschitz(
    path: str,
    *,
    grid: int | None,
    seed: int,
    input_shapes: dict[str, tuple[int, ...]],
    lower: bool,
    certified: bool,
    fail_above: float | None,
    output_format: OutputFormat,
    sink: Sink,
) -> None:
    """Bound the graph, render it, and apply the ``--fail-above`` gate (exit 3)."""
    report = graph_lipschitz(path, grid=grid, seed=seed, input_shapes=input_shapes, lower=lower)
    sink.notes(report.notes)
    if output_format is OutputFormat.JSON:
        write_json(graph_to_dict(report))
    elif output_format is OutputFormat.CSV:
        sys.stdout.write(graph_to_csv(report))
    else:
        print_graph_table(report, stdout_console())
    if fail_above is None:
        return
    if report.bound is None:
        sink.error(f"{path}: --fail-above cannot pass: the graph has no Lipschitz bound")
        raise typer.Exit(EXIT_BOUND_EXCEEDED)
    if certified and not report.certified:
        sink.error(f"{path}: --fail-above with --certified: the bound is not certified")
        raise typer.Exit(EXIT_BOUND_EXCEEDED)
    if report.bound > fail_above or not math.isfinite(report.bound):
        shown = f"{report.bound:.6g}"
        sink.error(f"{path}: Lipschitz bound {shown} exceeds --fail-above {fail_above:g}")
        raise typer.Exit(EXIT_BOUND_EXCEEDED)
