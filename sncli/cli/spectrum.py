"""``sncli spectrum``: every layer's singular-value spectrum and its diagnostics."""

from __future__ import annotations

from typing import Annotated

import typer

from sncli.cli import allocation as alloc
from sncli.cli import options as opt
from sncli.cli.app import app
from sncli.cli.opening import open_with_base
from sncli.cli.sink import Sink, handle_errors
from sncli.render.common import OutputFormat, emit, progress_bar
from sncli.render.spectrum import print_spectrum_table, spectrum_to_csv, spectrum_to_dict
from sncli.spectrum import (
    TOP_K_TOL,
    SpectrumOptions,
    SpectrumReport,
    SpectrumSortKey,
    check_spectra_target,
    save_spectra,
    sort_spectra,
    spectra,
)


@app.command(
    epilog="Examples:\n\n"
    "  sncli spectrum sample_models/mlp.safetensors\n\n"
    "  sncli spectrum model.safetensors --format json --sort alpha --top 10\n\n"
    "  sncli spectrum model.safetensors --top-k 32 --save-spectra spectra.npz\n\n"
    "  sncli spectrum model.safetensors --hill --group block --export alpha.npy\n\n"
    "  sncli spectrum model.safetensors --mp-fit --randomize --seed 1 --format csv\n\n"
    "  sncli spectrum model.safetensors --device cuda --hill --format json\n\n"
    "Exit codes: 0 ok, 1 error, 2 usage, 4 no layer matched."
)
@handle_errors
def spectrum(
    checkpoint: opt.CheckpointArg,
    output_format: opt.FormatOpt = OutputFormat.TABLE,
    include: opt.FilterOpt = None,
    exclude: opt.ExcludeOpt = None,
    sort: Annotated[
        SpectrumSortKey | None,
        typer.Option(
            "--sort",
            help="name: natural key order (the default); sigma, alpha, stable_rank, condition: "
            "largest first (layers without the metric last); size: largest matrix first.",
            case_sensitive=False,
        ),
    ] = None,
    reverse: Annotated[bool, typer.Option("--reverse", help="Reverse the sort order.")] = False,
    top: Annotated[
        int | None,
        typer.Option("--top", min=1, help="Show only the first N layers (by σ_max unless --sort)."),
    ] = None,
    top_k: Annotated[
        int | None,
        typer.Option(
            "--top-k",
            min=1,
            metavar="K",
            help="Only the K largest singular values per layer, by float64 block Lanczos (each "
            "a lower bound, with an error estimate): for layers too big for a full spectrum. "
            "Metrics that need the whole spectrum are then omitted.",
        ),
    ] = None,
    tol: Annotated[
        float,
        typer.Option(
            "--tol",
            callback=opt.positive,
            help="--top-k: the relative error each value must reach (estimated).",
        ),
    ] = TOP_K_TOL,
    seed: Annotated[int, typer.Option("--seed", help=alloc.SEED_HELP)] = 0,
    hill: alloc.HillOpt = False,
    snr: alloc.SNROpt = False,
    mp_fit: alloc.MPFitOpt = False,
    randomize: alloc.RandomizeOpt = False,
    group: alloc.GroupOpt = None,
    export: alloc.ExportOpt = None,
    export_metric: alloc.ExportMetricOpt = "alpha_hill",
    save: Annotated[
        str | None,
        typer.Option(
            "--save-spectra",
            metavar="FILE.npz",
            help="Also write every layer's singular values (float64, largest first) to a NumPy "
            ".npz keyed by tensor name (atomic; an existing file is replaced).",
        ),
    ] = None,
    transposed: opt.TransposedOpt = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="Layers computed at once, each single-threaded (default: one per core).",
        ),
    ] = None,
    device: Annotated[
        str,
        typer.Option(
            "--device",
            help="cpu, cuda or cuda:N: where the singular values are computed (float64 Gram + "
            "eigvalsh there too; metrics on the CPU). Falls back to the CPU with a note when no "
            "GPU is available.",
            callback=opt.device_name,
        ),
    ] = "cpu",
    key: opt.KeyOpt = None,
    base: opt.BaseOpt = None,
    skip_objects: opt.SkipObjectsOpt = False,
    plot: opt.PlotOpt = None,
    metric: Annotated[
        str,
        typer.Option(
            "--metric",
            help="What --plot draws per layer: sigma_max, stable_rank, alpha, effective_rank, "
            "condition_number or alpha_weighted.",
        ),
    ] = "sigma_max",
    plot_layer: Annotated[
        str | None,
        typer.Option(
            "--layer",
            metavar="NAME",
            help="With --plot: that layer's log-log ESD with the fitted power law and the "
            "Marchenko–Pastur edge, instead of the per-layer metric.",
        ),
    ] = None,
    scheduler: opt.SchedulerOpt = None,
    quiet: opt.QuietOpt = False,
) -> None:
    """Report every layer's singular-value spectrum: ranks, norms, WeightWatcher's α and more."""
    from sncli.render.plots import SPECTRUM_METRICS

    if metric not in SPECTRUM_METRICS:
        raise typer.BadParameter(
            f"{metric!r} is not one of {', '.join(SPECTRUM_METRICS)}", param_hint="--metric"
        )
    if plot_layer is not None and plot is None:
        raise typer.BadParameter("--layer chooses what --plot draws; give --plot FILE too")
    from sncli.spectrum import EXTRA_METRICS, METRICS

    if export_metric not in METRICS + EXTRA_METRICS:
        raise typer.BadParameter(
            f"{export_metric!r} is not one of {', '.join(METRICS + EXTRA_METRICS)}",
            param_hint="--export-metric",
        )
    if top_k is not None and (hill or snr or mp_fit or randomize):
        raise typer.BadParameter(
            "--hill, --snr, --mp-fit and --randomize need full spectra: drop --top-k"
        )
    alloc.check_export(export)
    chosen = opt.selection(include, exclude, transposed)
    sink = Sink(quiet)
    opt.note_ignored_workers(sink, scheduler, workers)
    with (
        open_with_base(checkpoint, base, key=key, skip_objects=skip_objects, sink=sink) as ckpt,
    ):
        if save is not None:
            check_spectra_target(save, ckpt)
        with progress_bar(not quiet, "spectrum") as progress:
            if ckpt.adapter is not None:
                from sncli.adapters import adapter_spectra

                report = adapter_spectra(
                    ckpt, include=chosen["include"], exclude=chosen["exclude"], progress=progress
                )
            else:
                report = spectra(
                    ckpt,
                    options=SpectrumOptions(
                        top_k=top_k,
                        tol=tol,
                        seed=seed,
                        workers=workers,
                        scheduler=scheduler,
                        hill=hill,
                        snr=snr,
                        mp_fit=mp_fit,
                        randomize=randomize,
                        device=device,
                    ),
                    **chosen,
                    progress=progress,
                )
    sink.notes(report.notes, besides=ckpt.notes)
    if save is not None:
        written = save_spectra(report, save)
        sink.note(f"singular values of {len(report.layers)} layers written to {written}")
    layers = report.layers
    if sort is not None or top is not None:
        layers = sort_spectra(layers, sort or SpectrumSortKey.SIGMA, reverse=reverse)
    elif reverse:
        layers = layers[::-1]
    if top is not None:
        layers = layers[:top]
    if export is not None:
        _export(report, export, export_metric, group, sink)
    if group is not None:
        _emit_groups(report, group.value, output_format)
    else:
        emit(
            output_format,
            lambda: spectrum_to_dict(report, layers),
            lambda: spectrum_to_csv(layers, report.extras),
            lambda console: print_spectrum_table(report, layers, console),
        )
    if plot is not None:
        _plot(report, plot, metric, plot_layer, sink)


def _rows(report: SpectrumReport) -> list[tuple[str, dict]]:
    """Every analysed layer in model order with its metrics (and the asked-for extras)."""
    from sncli.spectrum import EXTRA_METRICS

    return [
        (layer.name, {**layer.metrics(), **{m: getattr(layer, m) for m in EXTRA_METRICS}})
        for layer in report.layers
    ]


def _export(report: SpectrumReport, path: str, metric: str, group: object, sink: Sink) -> None:
    from sncli.allocation import export_values, write_export

    names, values, groups = export_values(
        _rows(report),
        metric,
        None if group is None else group.value,  # type: ignore[attr-defined]
    )
    written = write_export(
        path,
        metric,
        names,
        values,
        groups=groups,
        by=None if group is None else group.value,  # type: ignore[attr-defined]
        source=report.checkpoint,
    )
    missing = sum(1 for v in values if v is None)
    note = f"{metric} of {len(names)} matrices written to {written}"
    if missing:
        note += f" ({missing} undefined: NaN/null)"
    sink.note(note)


def _emit_groups(report: SpectrumReport, by: str, output_format: OutputFormat) -> None:
    from sncli.allocation import group_means
    from sncli.render.allocation import groups_to_csv, groups_to_dict, print_groups_table
    from sncli.spectrum import METRICS

    metrics = [*METRICS, *report.extras]
    groups = group_means(_rows(report), by, metrics)
    emit(
        output_format,
        lambda: groups_to_dict(report.checkpoint, by, groups, metrics),
        lambda: groups_to_csv(groups, metrics),
        lambda console: print_groups_table(
            f"Spectrum per {by}: {report.checkpoint}", groups, metrics, console
        ),
    )


def _plot(report: SpectrumReport, path: str, metric: str, name: str | None, sink: Sink) -> None:
    from sncli.render.plots import esd_figure, save_figure, spectrum_figure

    if name is None:
        figure = spectrum_figure(report, metric)
    else:
        found = [layer for layer in report.layers if name in (layer.name, layer.short_name)]
        if not found:
            raise typer.BadParameter(f"no analysed layer is named {name!r}", param_hint="--layer")
        if not found[0].complete:
            raise typer.BadParameter(
                "the ESD needs the layer's full spectrum: drop --top-k", param_hint="--layer"
            )
        figure = esd_figure(found[0], report.checkpoint)
    sink.note(f"figure written to {save_figure(figure, path)}")
