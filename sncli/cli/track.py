"""``sncli track``: a training run's checkpoints as a series."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from sncli.analysis import MethodOptions
from sncli.cli import allocation as alloc
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
    "  sncli track runs/exp1/ --hill --group block --metric alpha_hill\n\n"
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
    seed: Annotated[
        int,
        typer.Option(
            "--seed",
            help="Seed of the random start vector and of --randomize's permutations (each "
            "layer's drawn from the seed and its name).",
        ),
    ] = 0,
    hill: alloc.HillOpt = False,
    snr: alloc.SNROpt = False,
    mp_fit: alloc.MPFitOpt = False,
    randomize: alloc.RandomizeOpt = False,
    group: alloc.GroupOpt = None,
    export: alloc.ExportOpt = None,
    export_metric: alloc.ExportMetricOpt = "alpha_hill",
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
    from sncli.spectrum import HILL_METRICS, MP_FIT_METRICS, RANDOMIZE_METRICS, SNR_METRICS
    from sncli.tracking import SPECTRUM_COLUMNS, TrackCache, TrackOptions
    from sncli.tracking import track as run_track
    from sncli.tracking.rows import EXTRA_COLUMNS
    from sncli.tracking.series import parse_steps

    if export is not None:  # the cheap extras come with their export (the default alpha_hill)
        hill = hill or export_metric in HILL_METRICS
        snr = snr or export_metric in SNR_METRICS
    spectrum = spectrum or hill or snr or mp_fit or randomize  # the extras are spectrum metrics
    flags = {name: ("--hill", hill) for name in HILL_METRICS}
    flags |= {name: ("--snr", snr) for name in SNR_METRICS}
    flags |= {name: ("--mp-fit", mp_fit) for name in MP_FIT_METRICS}
    flags |= {name: ("--randomize", randomize) for name in RANDOMIZE_METRICS}
    known = BASE_METRICS + SPECTRUM_COLUMNS + EXTRA_COLUMNS
    checked = [(metric, "--metric")] + ([(export_metric, "--export-metric")] if export else [])
    for name, hint in checked:
        if name not in known:
            raise typer.BadParameter(f"{name!r} is not one of {', '.join(known)}", param_hint=hint)
        if name in flags and not flags[name][1]:
            raise typer.BadParameter(f"{name} needs {flags[name][0]}", param_hint=hint)
    if export is not None and export_metric in SPECTRUM_COLUMNS and not spectrum:
        raise typer.BadParameter(f"{export_metric} needs --spectrum", param_hint="--export-metric")
    if metric in SPECTRUM_COLUMNS and not spectrum:
        raise typer.BadParameter(f"{metric} needs --spectrum", param_hint="--metric")
    alloc.check_export(export)
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
        hill=hill,
        snr=snr,
        mp_fit=mp_fit,
        randomize=randomize,
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
    if export is not None:
        _export(report, export, export_metric, group, sink)
    if group is not None:
        _emit_groups(report, group.value, output_format)
    else:
        emit(
            output_format,
            lambda: track_to_dict(report),
            lambda: track_to_csv(report),
            lambda console: print_track_table(report, metric, console),
        )
    if plot is not None:
        from sncli.render.plots import save_figure

        sink.note(f"figure written to {save_figure(track_figure(report, metric), plot)}")


def _by_step(report: Any) -> list[tuple[int, list[tuple[str, dict[str, Any]]]]]:
    """Per checkpoint (step order), its layers in model order with every metric."""
    from sncli.checkpoint import natural_key
    from sncli.tracking.rows import point_row

    out: dict[int, list[tuple[str, dict[str, Any]]]] = {step: [] for step in report.steps}
    for point in report.points:
        out[point.step].append((point.name, point_row(point, report.extras)))
    return [(step, sorted(rows, key=lambda r: natural_key(r[0]))) for step, rows in out.items()]


def _export(report: Any, path: str, metric: str, group: Any, sink: Sink) -> None:
    """Steps × matrices (every layer seen, model order; NaN/null where a layer is absent)."""
    from sncli.allocation import export_values, write_export

    names = report.layers()
    by = None if group is None else group.value
    table, groups = [], None
    for _, rows in _by_step(report):
        found, values, keys = export_values(rows, metric, by)
        at = dict(zip(found, values, strict=True))
        table.append([at.get(name) for name in names])
        if keys is not None:
            groups = groups or {}
            groups.update(zip(found, keys, strict=True))
    written = write_export(
        path,
        metric,
        names,
        table,
        groups=None if groups is None else [groups[name] for name in names],
        by=by,
        steps=report.steps,
    )
    sink.note(
        f"{metric} of {len(names)} matrices × {len(report.steps)} checkpoints written to {written}"
    )


def _emit_groups(report: Any, by: str, output_format: OutputFormat) -> None:
    from sncli.allocation import group_means
    from sncli.render.allocation import groups_to_csv, groups_to_dict, print_groups_table
    from sncli.tracking.rows import COLUMNS

    skip = {"step", "checkpoint", "layer", "short_name", "kind", "rows", "cols", "bound"}
    metrics = [c for c in (*COLUMNS, *report.extras) if c not in skip]
    steps, groups = [], []
    for step, rows in _by_step(report):
        for group in group_means(rows, by, metrics):
            steps.append(step)
            groups.append(group)

    def as_dict() -> dict[str, Any]:
        data = groups_to_dict("run", by, groups, metrics)
        for item, step in zip(data["groups"], steps, strict=True):
            item["step"] = step
        data["steps"] = report.steps
        return data

    emit(
        output_format,
        as_dict,
        lambda: groups_to_csv(groups, metrics, steps),
        lambda console: print_groups_table(f"Run per {by}", groups, metrics, console, steps),
    )
