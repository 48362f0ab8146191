"""``sncli report``: one self-contained HTML file with the figures and tables of a checkpoint."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from sncli.cli import options as opt
from sncli.cli.app import app
from sncli.cli.opening import open_and_report
from sncli.cli.sink import Sink, handle_errors
from sncli.errors import WriteError
from sncli.render.common import progress_bar
from sncli.report import build_report


@app.command(
    epilog="Examples:\n\n"
    "  sncli report sample_models/mlp.safetensors -o mlp.html\n\n"
    "  sncli report base.safetensors tuned.safetensors -o change.html\n\n"
    "The file has no scripts and fetches nothing: it opens offline.\n\n"
    "Exit codes: 0 ok, 1 error, 2 usage, 4 no layer matched."
)
@handle_errors
def report(
    checkpoint: opt.CheckpointArg,
    other: Annotated[
        str | None,
        typer.Argument(
            metavar="[B]", help="A second checkpoint of the same model, to add `sncli diff`."
        ),
    ] = None,
    output: Annotated[
        str,
        typer.Option("--output", "-o", metavar="FILE.html", help="Where to write the report."),
    ] = "report.html",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    key: opt.KeyOpt = None,
    skip_objects: opt.SkipObjectsOpt = False,
    quiet: opt.QuietOpt = False,
) -> None:
    """Write an offline HTML report: summary, σ per layer, Lipschitz factors, figures, tables."""
    from sncli.render.html import report_html
    from sncli.render.plots import (
        diff_figure,
        figure_svg,
        heatmap_figure,
        inspect_figure,
        lipschitz_figure,
        spectrum_figure,
    )
    from sncli.writer import staged_write

    target = Path(output)
    if target.exists() and not force:
        raise WriteError("exists; pass --force to overwrite it", target)
    sink = Sink(quiet)
    command = shlex.join(["sncli", *sys.argv[1:]]) if sys.argv[1:] else "sncli report"
    with (
        open_and_report(checkpoint, key=key, skip_objects=skip_objects, sink=sink) as ckpt,
        progress_bar(not quiet) as progress,
    ):
        if other is not None:
            with open_and_report(other, key=key, skip_objects=skip_objects, sink=sink) as second:
                result = build_report(ckpt, second, command=command, progress=progress)
        else:
            result = build_report(ckpt, command=command, progress=progress)
    figures = {"inspect": figure_svg(inspect_figure(result.inspect))}
    heat = heatmap_figure(result.inspect)
    if heat is not None:
        figures["heatmap"] = figure_svg(heat)
    if result.lipschitz is not None and result.lipschitz.factors:
        figures["lipschitz"] = figure_svg(lipschitz_figure(result.lipschitz))
    if result.spectrum is not None and result.spectrum.layers:
        figures["alpha"] = figure_svg(spectrum_figure(result.spectrum, "alpha"))
        ranks = heatmap_figure(result.spectrum, "stable_rank")
        if ranks is not None:
            figures["stable_rank"] = figure_svg(ranks)
    if result.diff is not None:
        figures["diff"] = figure_svg(diff_figure(result.diff))
    page = report_html(result, figures).encode("utf-8")
    with staged_write(target) as (handle, staged):
        handle.write(page)
    staged.commit()
    for problem in (result.lipschitz_error, result.spectrum_error, result.diff_error):
        if problem:
            sink.warning(f"left out of the report: {problem}")
    sink.note(f"report written to {target} ({len(page) / 1024:,.0f} KB)")
