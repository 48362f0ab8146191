"""``sncli report``: one self-contained HTML file with the figures and tables of a checkpoint."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from sncli.cli import options as opt
from sncli.cli.app import app
from sncli.cli.opening import open_and_report
from sncli.cli.sink import Sink, handle_errors
from sncli.errors import WriteError
from sncli.messages import ProgressCallback
from sncli.numerics.spectral import Method
from sncli.render.common import stage_bars
from sncli.report import SECTIONS, ModelReport, ReportOptions, build_report


def sections(values: list[str] | None) -> list[str] | None:
    """``--sections``: names of ``SECTIONS``, comma-separated or repeated."""
    if values is None:
        return None
    names = [name.strip().lower() for value in values for name in value.split(",")]
    unknown = [name for name in names if name not in SECTIONS]
    if unknown or not names:
        raise typer.BadParameter(
            f"{', '.join(unknown) or '(none)'}: choose from {', '.join(SECTIONS)}"
        )
    return names


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
    method: Annotated[
        Method,
        typer.Option(
            "--method",
            "-m",
            help="How σ of every layer is computed, as in inspect. auto, dense and exact take σ "
            "from the full spectra when the spectrum section runs (computed once, float64).",
            case_sensitive=False,
        ),
    ] = Method.AUTO,
    tol: opt.TolOpt = None,
    top_k: Annotated[
        int | None,
        typer.Option(
            "--top-k",
            "-k",
            min=1,
            help="Spectra of only the K largest singular values per layer (block Lanczos at "
            "--tol), as spectrum --top-k; σ is then computed by --method.",
        ),
    ] = None,
    include: opt.FilterOpt = None,
    exclude: opt.ExcludeOpt = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="Layers computed at once, each single-threaded (default: one per core).",
        ),
    ] = None,
    scheduler: opt.SchedulerOpt = None,
    section: Annotated[
        list[str] | None,
        typer.Option(
            "--sections",
            metavar="NAMES",
            help=f"Only these parts besides σ, comma-separated: {', '.join(SECTIONS)} (default: "
            "all; diff needs B).",
            callback=sections,
        ),
    ] = None,
    input_shape: opt.InputShapeOpt = None,
    key: opt.KeyOpt = None,
    skip_objects: opt.SkipObjectsOpt = False,
    quiet: opt.QuietOpt = False,
) -> None:
    """Write an offline HTML report: summary, σ per layer, Lipschitz factors, figures, tables."""
    from sncli.render.html import report_html
    from sncli.writer import staged_write

    target = Path(output)
    if target.exists() and not force:
        raise WriteError("exists; pass --force to overwrite it", target)
    chosen = opt.selection(include, exclude, None)
    options = ReportOptions(
        method=method,
        tol=tol,
        top_k=top_k,
        include=chosen["include"],
        exclude=chosen["exclude"],
        workers=workers,
        scheduler=scheduler,
        sections=frozenset(section or SECTIONS),
        input_shapes=tuple(opt.parse_input_shapes(input_shape).items()),
    )
    sink = Sink(quiet)
    opt.note_ignored_workers(sink, scheduler, workers)
    command = shlex.join(["sncli", *sys.argv[1:]]) if sys.argv[1:] else "sncli report"
    with (
        open_and_report(checkpoint, key=key, skip_objects=skip_objects, sink=sink) as ckpt,
        stage_bars(not quiet) as stages,
    ):
        if other is not None:
            with open_and_report(other, key=key, skip_objects=skip_objects, sink=sink) as second:
                result = build_report(ckpt, second, options=options, command=command, stages=stages)
        else:
            result = build_report(ckpt, options=options, command=command, stages=stages)
        figures = _figures(result, stages("figures") if stages else None)
    page = report_html(result, figures).encode("utf-8")
    with staged_write(target) as (handle, staged):
        handle.write(page)
    staged.commit()
    for problem in (result.lipschitz_error, result.spectrum_error, result.diff_error):
        if problem:
            sink.warning(f"left out of the report: {problem}")
    sink.note(f"report written to {target} ({len(page) / 1024:,.0f} KB)")


def _figures(result: ModelReport, progress: ProgressCallback | None) -> dict[str, str]:
    """The report's figures as inline SVG, by section (see ``render.html.report_html``)."""
    from sncli.render.plots import (
        diff_figure,
        figure_svg,
        heatmap_figure,
        inspect_figure,
        lipschitz_figure,
        spectrum_figure,
    )

    drawers: dict[str, Callable[[], Any]] = {
        "inspect": lambda: inspect_figure(result.inspect),
        "heatmap": lambda: heatmap_figure(result.inspect),
    }
    if result.lipschitz is not None and result.lipschitz.factors:
        drawers["lipschitz"] = lambda: lipschitz_figure(result.lipschitz)
    if result.spectrum is not None and result.spectrum.layers:
        drawers["alpha"] = lambda: spectrum_figure(result.spectrum, "alpha")
        drawers["stable_rank"] = lambda: heatmap_figure(result.spectrum, "stable_rank")
    if result.diff is not None:
        drawers["diff"] = lambda: diff_figure(result.diff)
    figures = {}
    for done, (name, draw) in enumerate(drawers.items()):
        if progress is not None:
            progress(done, len(drawers), name)
        figure = draw()
        if figure is not None:
            figures[name] = figure_svg(figure)
    if progress is not None:
        progress(len(drawers), len(drawers), "")
    return figures
