"""``sncli inspect``: σ of every layer."""

from __future__ import annotations

from typing import Annotated

import typer

from sncli.analysis import MethodOptions, SortKey, sort_layers, spectral_norms
from sncli.cli import options as opt
from sncli.cli.app import app
from sncli.cli.opening import open_with_base
from sncli.cli.sink import Sink, handle_errors
from sncli.numerics.spectral import Method
from sncli.render.common import OutputFormat, emit, progress_bar
from sncli.render.inspect import inspect_to_csv, inspect_to_dict, print_inspect_table


@app.command(
    epilog="Examples:\n\n"
    "  sncli inspect sample_models/mlp.safetensors\n\n"
    "  sncli inspect model.safetensors.index.json --method power --top 10\n\n"
    "  sncli inspect ckpt.pt --format json --filter 'layers\\.1[0-9]\\.' > sigmas.json\n\n"
    "Exit codes: 0 ok, 1 error, 2 usage, 4 no layer matched."
)
@handle_errors
def inspect(
    checkpoint: opt.CheckpointArg,
    method: Annotated[
        Method,
        typer.Option(
            "--method",
            "-m",
            help="auto: the cheapest method reaching --tol relative error per layer (block "
            "Lanczos or dense). exact: σ to float64 accuracy (float64 block Lanczos, dense "
            "fallback). dense: float64 LAPACK on the Gram matrix, the reference. lanczos: block "
            "Lanczos at --tol. power: power iteration (Miyato et al. 2018). Iterative values are "
            "lower bounds on σ.",
            case_sensitive=False,
        ),
    ] = Method.AUTO,
    iters: opt.IterationsOpt = 1000,
    tol: opt.TolOpt = None,
    seed: opt.SeedOpt = 0,
    output_format: opt.FormatOpt = OutputFormat.TABLE,
    include: opt.FilterOpt = None,
    exclude: opt.ExcludeOpt = None,
    sort: Annotated[
        SortKey | None,
        typer.Option(
            "--sort",
            help="name: natural key order (the default); sigma: largest first; "
            "size: largest matrix first.",
            case_sensitive=False,
        ),
    ] = None,
    reverse: Annotated[bool, typer.Option("--reverse", help="Reverse the sort order.")] = False,
    top: Annotated[
        int | None,
        typer.Option("--top", min=1, help="Show only the first N layers (by σ unless --sort)."),
    ] = None,
    transposed: opt.TransposedOpt = None,
    certified: Annotated[
        bool,
        typer.Option(
            "--certified",
            help="Add a proven upper bound per layer (float64 Gram + Cholesky certificate).",
        ),
    ] = False,
    device: Annotated[
        str,
        typer.Option(
            "--device",
            help="cpu, cuda or cuda:N (falls back to the CPU with a note when no GPU is "
            "available).",
            callback=opt.device_name,
        ),
    ] = "cpu",
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="Layers measured at once, each single-threaded (default: one per core).",
        ),
    ] = None,
    no_warm_start: Annotated[
        bool,
        typer.Option(
            "--no-warm-start",
            help="Do not start iterations from the u/v vectors stored in spectral-norm "
            "checkpoints (a random start instead).",
        ),
    ] = False,
    key: opt.KeyOpt = None,
    base: opt.BaseOpt = None,
    skip_objects: opt.SkipObjectsOpt = False,
    plot: opt.PlotOpt = None,
    scheduler: opt.SchedulerOpt = None,
    quiet: opt.QuietOpt = False,
) -> None:
    """Report the largest singular value σ of every layer's weight matrix."""
    chosen = opt.selection(include, exclude, transposed)
    sink = Sink(quiet)
    opt.note_ignored_workers(sink, scheduler, workers)
    with (
        open_with_base(checkpoint, base, key=key, skip_objects=skip_objects, sink=sink) as ckpt,
        progress_bar(not quiet) as progress,
    ):
        if ckpt.adapter is not None:
            from sncli.adapters import adapter_sigmas

            report = adapter_sigmas(
                ckpt, include=chosen["include"], exclude=chosen["exclude"], progress=progress
            )
        else:
            report = spectral_norms(
                ckpt,
                options=MethodOptions(
                    method=method,
                    iters=iters,
                    tol=tol,
                    seed=seed,
                    device=device,
                    workers=workers,
                    scheduler=scheduler,
                    certify=certified,
                    warm_start=not no_warm_start,
                ),
                **chosen,
                progress=progress,
            )
    sink.notes(report.notes, besides=ckpt.notes)
    layers = report.layers
    if sort is not None or top is not None:
        layers = sort_layers(layers, sort or SortKey.SIGMA, reverse=reverse)
    elif reverse:
        layers = layers[::-1]
    if top is not None:
        layers = layers[:top]
    emit(
        output_format,
        lambda: inspect_to_dict(report, layers),
        lambda: inspect_to_csv(layers),
        lambda console: print_inspect_table(report, layers, console),
    )
    if plot is not None:
        from sncli.render.plots import inspect_figure, save_figure

        sink.note(f"figure written to {save_figure(inspect_figure(report), plot)}")
