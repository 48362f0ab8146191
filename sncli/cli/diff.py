"""``sncli diff``: how two checkpoints of one model differ, layer by layer, spectrally."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from sncli.adapters import diff_with_base
from sncli.analysis import MethodOptions
from sncli.checkpoint import Checkpoint
from sncli.cli import options as opt
from sncli.cli.app import app
from sncli.cli.opening import open_and_report
from sncli.cli.sink import Sink, handle_errors
from sncli.diff import (
    DEFAULT_INTRUDER_THRESHOLD,
    DEFAULT_INTRUDER_TOP_K,
    DEFAULT_TOP_K,
    LayerDiff,
    diff_checkpoints,
    relative_change,
)
from sncli.numerics.spectral import Method
from sncli.render.common import OutputFormat, emit, progress_bar
from sncli.render.diff import diff_to_csv, diff_to_dict, print_diff_table


def _adapters_compared(
    a: Checkpoint, b: Checkpoint, chosen: dict, output_format: OutputFormat, progress: Any
) -> bool:
    """Two LoRA adapters: their updates compared (principal angles), rendered; True if so."""
    if a.adapter is None:
        return False
    if b.adapter is None:
        raise typer.BadParameter(
            f"{a.path} is a LoRA adapter: put the base model first (sncli diff BASE ADAPTER), "
            "or give two adapters"
        )
    from sncli.adapters import diff_adapters
    from sncli.render.adapters import (
        adapter_diff_to_csv,
        adapter_diff_to_dict,
        print_adapter_diff_table,
    )

    report = diff_adapters(
        a, b, include=chosen["include"], exclude=chosen["exclude"], progress=progress
    )
    emit(
        output_format,
        lambda: adapter_diff_to_dict(report),
        lambda: adapter_diff_to_csv(report),
        lambda console: print_adapter_diff_table(report, console),
    )
    return True


def _ordered(layers: list[LayerDiff], by_change: bool, top: int | None) -> list[LayerDiff]:
    if by_change or top is not None:
        layers = sorted(layers, key=lambda layer: -relative_change(layer))
    return layers[:top] if top is not None else layers


@app.command(
    epilog="Examples:\n\n"
    "  sncli diff base.safetensors finetuned.safetensors\n\n"
    "  sncli diff run/step1000.pt run/step2000.pt --top 10 --format json\n\n"
    "  sncli diff base/ tuned/ --fail-above 0.05   # CI gate: no layer moves more than 5%\n\n"
    "Exit codes: 0 ok, 1 error, 2 usage, 3 a layer moved more than --fail-above, "
    "4 no layer matched."
)
@handle_errors
def diff(
    checkpoint_a: Annotated[
        str, typer.Argument(metavar="A", help=f"The reference checkpoint: {opt.INPUTS}.")
    ],
    checkpoint_b: Annotated[
        str, typer.Argument(metavar="B", help="The checkpoint compared with A (the same inputs).")
    ],
    method: Annotated[
        Method,
        typer.Option(
            "--method",
            "-m",
            help="How σ(A), σ(B) and ‖B−A‖₂ are computed, as for inspect: auto (to --tol), "
            "exact, dense, lanczos or power. Iterative values are lower bounds.",
            case_sensitive=False,
        ),
    ] = Method.AUTO,
    tol: opt.TolOpt = None,
    seed: opt.SeedOpt = 0,
    certified: Annotated[
        bool,
        typer.Option("--certified", help="Add a proven upper bound on every ‖B−A‖₂."),
    ] = False,
    top_k: Annotated[
        int,
        typer.Option(
            "--top-k",
            min=0,
            help="Compare the top-K left singular subspaces of A and B (principal angles; "
            "how many of B's top-K directions lie mostly outside A's); 0 turns it off.",
        ),
    ] = DEFAULT_TOP_K,
    intruder_top_k: Annotated[
        int,
        typer.Option(
            "--intruder-top-k",
            min=0,
            help="Intruder dimensions (Shuttleworth et al. 2024): test B's top-K singular "
            "vectors, each against every singular vector of A; 0 turns it off.",
        ),
    ] = DEFAULT_INTRUDER_TOP_K,
    intruder_threshold: Annotated[
        float,
        typer.Option(
            "--intruder-threshold",
            min=0.0,
            max=1.0,
            help="One of B's top singular vectors is an intruder when its largest |cos| with "
            "A's singular vectors is below this.",
        ),
    ] = DEFAULT_INTRUDER_THRESHOLD,
    output_format: opt.FormatOpt = OutputFormat.TABLE,
    include: opt.FilterOpt = None,
    exclude: opt.ExcludeOpt = None,
    transposed: opt.TransposedOpt = None,
    top: Annotated[
        int | None,
        typer.Option("--top", min=1, help="Show only the N layers that moved most (relative)."),
    ] = None,
    by_change: Annotated[
        bool, typer.Option("--sort-by-change", help="Order layers by relative change.")
    ] = False,
    fail_above: Annotated[
        float | None,
        typer.Option(
            "--fail-above",
            metavar="X",
            help="Exit 3 when any layer's relative change ‖B−A‖₂/‖A‖₂ exceeds X, naming them.",
            callback=opt.threshold,
        ),
    ] = None,
    device: Annotated[
        str,
        typer.Option(
            "--device",
            help="cpu, cuda or cuda:N: where σ(A), σ(B) and ‖B−A‖₂ are computed (the top "
            "subspaces stay on the CPU; falls back to the CPU with a note when no GPU is "
            "available).",
            callback=opt.device_name,
        ),
    ] = "cpu",
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="Layer pairs compared at once (default: cores; 1 on a GPU).",
        ),
    ] = None,
    key: opt.KeyOpt = None,
    skip_objects: opt.SkipObjectsOpt = False,
    plot: opt.PlotOpt = None,
    scheduler: opt.SchedulerOpt = None,
    quiet: opt.QuietOpt = False,
) -> None:
    """Compare two checkpoints of one model: σ of both sides and of their difference per layer."""
    chosen = opt.selection(include, exclude, transposed)
    sink = Sink(quiet)
    opt.note_ignored_workers(sink, scheduler, workers)
    with (
        open_and_report(checkpoint_a, key=key, skip_objects=skip_objects, sink=sink) as a,
        open_and_report(checkpoint_b, key=key, skip_objects=skip_objects, sink=sink) as b,
        progress_bar(not quiet, "diff") as progress,
    ):
        if _adapters_compared(a, b, chosen, output_format, progress):
            return
        report = (diff_with_base if b.adapter is not None else diff_checkpoints)(
            a,
            b,
            options=MethodOptions(
                method=method,
                tol=tol,
                seed=seed,
                device=device,
                workers=workers,
                certify=certified,
                scheduler=scheduler,
            ),
            **chosen,
            top_k=top_k,
            intruder_top_k=intruder_top_k,
            intruder_threshold=intruder_threshold,
            progress=progress,
        )
    if report.device_note:
        sink.note(report.device_note)
    layers = _ordered(report.layers, by_change, top)
    emit(
        output_format,
        lambda: diff_to_dict(report, layers, fail_above),
        lambda: diff_to_csv(layers),
        lambda console: print_diff_table(report, layers, console, fail_above),
    )
    if plot is not None:
        from sncli.render.plots import diff_figure, save_figure

        sink.note(f"figure written to {save_figure(diff_figure(report, fail_above), plot)}")
    for item in report.unmeasured:
        sink.warning(f"{item.name}: not compared: {item.reason}")
    if fail_above is not None:
        report.gate(fail_above)
