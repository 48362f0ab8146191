"""``sncli report``: one self-contained HTML file with the figures and tables of a checkpoint, or
of a training run's checkpoints (``sncli track``'s series and cache)."""

from __future__ import annotations

import dataclasses
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
from sncli.report import (
    RUN_SECTIONS,
    SECTIONS,
    ModelReport,
    ReportOptions,
    RunReport,
    build_report,
)


def sections(values: list[str] | None) -> list[str] | None:
    """``--sections``: names of ``SECTIONS``, comma-separated or repeated; ``none``: σ only
    (for a run: the run's figures and tables only)."""
    if values is None:
        return None
    names = [name.strip().lower() for value in values for name in value.split(",")]
    if names == ["none"]:
        return names  # (an empty list would reach the command as None)
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
    "  sncli report runs/exp1/ --spectrum -o run.html     # every checkpoint-N/ or step_N.*\n\n"
    "  sncli report 'runs/exp1/step_*.safetensors' --sections lipschitz\n\n"
    "The file has no scripts and fetches nothing: it opens offline.\n\n"
    "Exit codes: 0 ok, 1 error, 2 usage, 4 no layer matched."
)
@handle_errors
def report(
    checkpoints: Annotated[
        list[str],
        typer.Argument(
            metavar="CKPT [B] | RUN",
            help=f"The checkpoint ({opt.INPUTS}); a second checkpoint B of the same model adds "
            "`sncli diff`. A run instead (three or more checkpoints, a folder of checkpoint-N/ or "
            "step_N.* entries, a quoted pattern, or two with --run): `sncli track`'s figures and "
            "tables (with --sections, the last checkpoint's parts too).",
            show_default=False,
        ),
    ],
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
            help=f"Only these parts besides σ, comma-separated: {', '.join(SECTIONS)}, or none "
            "(default: all; diff needs B). For a run, the last checkpoint's parts besides the "
            "run's figures and tables (default: none; diff: the last against the first).",
            callback=sections,
        ),
    ] = None,
    run: Annotated[
        bool,
        typer.Option("--run", help="Two checkpoints are a run of two, not A and B of a diff."),
    ] = False,
    steps: Annotated[
        str | None,
        typer.Option(
            "--steps",
            metavar="0,200,…",
            help="A run's steps, in the order given (instead of from the names), as sncli track.",
        ),
    ] = None,
    spectrum: Annotated[
        bool,
        typer.Option(
            "--spectrum",
            help="A run: add α, stable and effective rank per checkpoint × layer (as sncli track "
            "--spectrum).",
        ),
    ] = False,
    delta: Annotated[
        bool,
        typer.Option(
            "--delta",
            help="A run: add ‖W_t − W_{t−1}‖₂ / σ_max(W_{t−1}) per layer (as sncli track --delta).",
        ),
    ] = False,
    cache: Annotated[
        str | None,
        typer.Option(
            "--cache",
            metavar="DIR",
            help="A run: sncli track's cache (default: its default folder), so a report after "
            "a track run recomputes nothing there.",
            show_default=False,
        ),
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="A run: neither read nor write the cache.")
    ] = False,
    input_shape: opt.InputShapeOpt = None,
    key: opt.KeyOpt = None,
    skip_objects: opt.SkipObjectsOpt = False,
    quiet: opt.QuietOpt = False,
) -> None:
    """Write an offline HTML report: summary, σ per layer, Lipschitz factors, figures, tables.

    A training run: per layer σ_max against the step, first, last, min, max and change.

    Its numbers come from sncli track's engine and cache (after sncli track: nothing to compute).

    --spectrum adds α, stable and effective rank; --delta the change per step.

    --sections adds the last checkpoint's parts (lipschitz, spectrum, diff: last vs first)."""
    from sncli.render.html import report_html
    from sncli.report import run_items
    from sncli.writer import staged_write

    target = Path(output)
    if target.exists() and not force:
        raise WriteError("exists; pass --force to overwrite it", target)
    if no_cache and cache is not None:
        raise typer.BadParameter("--cache and --no-cache contradict each other")
    step_list = _steps(steps)
    items = run_items(checkpoints, step_list, run=run)
    sink = Sink(quiet)
    if items is None:
        from sncli.report import folder_run_note

        note = folder_run_note(checkpoints)
        if note:
            sink.note(note)
    # not a run: one checkpoint, or A and B (run_items makes three or more a run)
    checkpoint, other = (*checkpoints, None)[:2] if items is None else (items[0], None)
    chosen = opt.selection(include, exclude, None)
    options = ReportOptions(
        method=method,
        tol=tol,
        top_k=top_k,
        include=chosen["include"],
        exclude=chosen["exclude"],
        workers=workers,
        scheduler=scheduler,
        sections=frozenset(SECTIONS if section is None else _named(section)),
        input_shapes=tuple(opt.parse_input_shapes(input_shape).items()),
    )
    opt.note_ignored_workers(sink, scheduler, workers)
    command = shlex.join(["sncli", *sys.argv[1:]]) if sys.argv[1:] else "sncli report"
    if items is not None and len(items) > 1:
        run_options = dataclasses.replace(
            options, sections=frozenset(RUN_SECTIONS if section is None else _named(section))
        )
        _run_report(
            checkpoints,
            step_list,
            run_options,
            target,
            sink,
            command=command,
            spectrum=spectrum,
            delta=delta,
            cache=None if no_cache else _cache(cache),
            key=key,
            skip_objects=skip_objects,
            quiet=quiet,
        )
        return
    assert checkpoint is not None
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


def _named(section: list[str]) -> list[str]:
    return [] if section == ["none"] else section


def _steps(text: str | None) -> list[int] | None:
    from sncli.tracking.series import parse_steps

    if text is None:
        return None
    try:
        return parse_steps(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--steps") from None


def _cache(folder: str | None) -> Any:
    from sncli.tracking import TrackCache

    return TrackCache(folder)


def _run_report(
    checkpoints: list[str],
    steps: list[int] | None,
    options: ReportOptions,
    target: Path,
    sink: Sink,
    *,
    command: str,
    spectrum: bool,
    delta: bool,
    cache: Any,
    key: str | None,
    skip_objects: bool,
    quiet: bool,
) -> None:
    """The report of a run: track (through the cache), the last checkpoint's parts, figures."""
    from sncli.render.html import run_report_html
    from sncli.report import build_run_report
    from sncli.writer import staged_write

    with stage_bars(not quiet) as stages:
        result = build_run_report(
            checkpoints,
            steps=steps,
            options=options,
            spectrum=spectrum,
            delta=delta,
            key=key,
            skip_objects=skip_objects,
            cache=cache,
            command=command,
            stages=stages,
        )
        progress = stages("figures") if stages else None
        figures = _run_figures(result, progress)
        last_figures = _figures(result.last, None) if result.last is not None else None
    page = run_report_html(result, figures, last_figures).encode("utf-8")
    with staged_write(target) as (handle, staged):
        handle.write(page)
    staged.commit()
    sink.notes(result.track.notes)
    if cache is not None:
        cached = len(result.track.checkpoints) - result.track.computed
        sink.note(f"{result.track.computed} checkpoint(s) computed, {cached} from the cache")
    last = result.last
    if last is not None:
        for problem in (last.lipschitz_error, last.spectrum_error, last.diff_error):
            if problem:
                sink.warning(f"left out of the report: {problem}")
    sink.note(f"report written to {target} ({len(page) / 1024:,.0f} KB)")


def _run_figures(result: RunReport, progress: ProgressCallback | None) -> dict[str, str]:
    """Per metric of the run, its figure against the step as inline SVG."""
    from sncli.render.plots import figure_svg
    from sncli.render.track import track_figure

    figures = {}
    metrics = list(result.trends)
    for done, metric in enumerate(metrics):
        if progress is not None:
            progress(done, len(metrics), metric)
        figures[metric] = figure_svg(track_figure(result.track, metric))
    if progress is not None:
        progress(len(metrics), len(metrics), "")
    return figures


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
