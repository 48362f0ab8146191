"""``sncli track``: a training run's checkpoints as a series."""

from __future__ import annotations

from typing import Annotated

import typer

from sncli.analysis import MethodOptions
from sncli.cli import options as opt
from sncli.cli.app import app
from sncli.cli.sink import Sink, handle_errors
from sncli.numerics.spectral import Method
from sncli.render.common import OutputFormat, emit, progress_bar

#: What --metric may name: inspect's σ, the drifts, the delta and the spectrum metrics.
BASE_METRICS = ("sigma_max", "drift_first", "drift_prev", "delta", "delta_relative")


@app.command(
    epilog="Examples:\n\n"
    "  sncli track runs/exp1/                      # every checkpoint-N/ or step_N.* inside\n\n"
    "  sncli track 'runs/exp1/step_*.safetensors' --format csv > run.csv\n\n"
    "  sncli track a.pt b.pt c.pt --steps 0,500,1000 --spectrum --delta --plot run.png\n\n"
    "Exit codes: 0 ok, 1 error, 2 usage, 4 no layer matched."
)
@handle_errors
def track(
    checkpoints: Annotated[
        list[str],
        typer.Argument(
            metavar="CKPT... | FOLDER | 'GLOB'",
            help="The run's checkpoints: several, a folder holding them (entries with a step "
            "in their name), or a quoted pattern. Step: the last integer in each name. Each "
            f"checkpoint: {opt.INPUTS}.",
            show_default=False,
        ),
    ],
    steps: Annotated[
        str | None,
        typer.Option(
            "--steps",
            metavar="0,200,…",
            help="The checkpoints' steps, in the order given (instead of from their names).",
        ),
    ] = None,
    output_format: opt.FormatOpt = OutputFormat.TABLE,
    metric: Annotated[
        str,
        typer.Option(
            "--metric",
            help="What the table and --plot show: sigma_max, drift_first, drift_prev, delta "
            "(with --delta), delta_relative, or a spectrum metric (with --spectrum: alpha, "
            "stable_rank, effective_rank…).",
        ),
    ] = "sigma_max",
    spectrum: Annotated[
        bool,
        typer.Option(
            "--spectrum",
            help="Add the spectrum metrics per checkpoint × layer (full float64 spectra, as "
            "sncli spectrum).",
        ),
    ] = False,
    delta: Annotated[
        bool,
        typer.Option(
            "--delta",
            help="Add ‖W_t − W_{t−1}‖₂ per layer and its ratio to σ_max(W_{t−1}) (as sncli "
            "diff, without subspaces).",
        ),
    ] = False,
    cache: Annotated[
        str | None,
        typer.Option(
            "--cache",
            metavar="DIR",
            help="Where results are cached (default: $XDG_CACHE_HOME/sncli/track or "
            "~/.cache/sncli/track). A rerun computes only new or changed checkpoints.",
            show_default=False,
        ),
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Neither read nor write the cache.")
    ] = False,
    method: Annotated[
        Method,
        typer.Option(
            "--method",
            "-m",
            help="How σ_max is computed, as for sncli inspect (auto, exact, dense, lanczos, "
            "power).",
            case_sensitive=False,
        ),
    ] = Method.AUTO,
    iters: opt.IterationsOpt = 1000,
    tol: opt.TolOpt = None,
    seed: opt.SeedOpt = 0,
    include: opt.FilterOpt = None,
    exclude: opt.ExcludeOpt = None,
    transposed: opt.TransposedOpt = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=1, help="Layers measured at once (default: one per core)."),
    ] = None,
    key: opt.KeyOpt = None,
    skip_objects: opt.SkipObjectsOpt = False,
    plot: opt.PlotOpt = None,
    scheduler: opt.SchedulerOpt = None,
    quiet: opt.QuietOpt = False,
) -> None:
    """Follow every layer's σ_max (and spectrum metrics) over a training run's checkpoints."""
    from sncli.render.track import print_track_table, track_figure, track_to_csv, track_to_dict
    from sncli.tracking import SPECTRUM_COLUMNS, TrackCache, TrackOptions
    from sncli.tracking import track as run_track
    from sncli.tracking.series import parse_steps

    if metric not in BASE_METRICS + SPECTRUM_COLUMNS:
        raise typer.BadParameter(
            f"{metric!r} is not one of {', '.join(BASE_METRICS + SPECTRUM_COLUMNS)}",
            param_hint="--metric",
        )
    if metric in SPECTRUM_COLUMNS and not spectrum:
        raise typer.BadParameter(f"{metric} needs --spectrum", param_hint="--metric")
    if metric.startswith("delta") and not delta:
        raise typer.BadParameter(f"{metric} needs --delta", param_hint="--metric")
    if no_cache and cache is not None:
        raise typer.BadParameter("--cache and --no-cache contradict each other")
    try:
        step_list = parse_steps(steps) if steps is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--steps") from None
    chosen = opt.selection(include, exclude, transposed)
    sink = Sink(quiet)
    opt.note_ignored_workers(sink, scheduler, workers)
    options = TrackOptions(
        method=MethodOptions(
            method=method, iters=iters, tol=tol, seed=seed, workers=workers, scheduler=scheduler
        ),
        spectrum=spectrum,
        delta=delta,
        key=key,
        skip_objects=skip_objects,
        **chosen,
    )
    with progress_bar(not quiet, "track") as progress:
        report = run_track(
            checkpoints,
            steps=step_list,
            options=options,
            cache=None if no_cache else TrackCache(cache),
            progress=progress,
        )
    sink.notes(report.notes)
    if not no_cache:
        cached = len(report.checkpoints) - report.computed
        sink.note(f"{report.computed} checkpoint(s) computed, {cached} from the cache")
    emit(
        output_format,
        lambda: track_to_dict(report),
        lambda: track_to_csv(report),
        lambda console: print_track_table(report, metric, console),
    )
    if plot is not None:
        from sncli.render.plots import save_figure

        sink.note(f"figure written to {save_figure(track_figure(report, metric), plot)}")
