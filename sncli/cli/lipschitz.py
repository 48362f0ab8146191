"""``sncli lipschitz``: the product Lipschitz bound, and the ``--fail-above`` gate."""

from __future__ import annotations

from typing import Annotated

import typer

from sncli.cli import options as opt
from sncli.cli.app import app
from sncli.cli.graph import run_graph_lipschitz
from sncli.cli.opening import open_and_report
from sncli.cli.sink import Sink, handle_errors
from sncli.lipschitz import (
    Assumption,
    ConvPolicy,
    LipschitzOptions,
    Padding,
    is_graph_model,
    lipschitz_report,
)
from sncli.numerics.spectral import Method
from sncli.render.common import OutputFormat, emit, progress_bar
from sncli.render.lipschitz import (
    fmt_bound,
    lipschitz_to_csv,
    lipschitz_to_dict,
    print_lipschitz_table,
)


@app.command(
    epilog="Examples:\n\n"
    "  sncli lipschitz sample_models/sngan_disc_parametrized.pt\n\n"
    "  sncli lipschitz ckpt.pt --assume sequential --certified --fail-above 1e3   # CI gate\n\n"
    "  sncli lipschitz gan.pt --padding circular --input-size 32x32\n\n"
    "  sncli lipschitz model.onnx   # an ONNX model: the certified bound over its graph\n\n"
    "Exit codes: 0 ok, 1 error, 2 usage, 3 bound above --fail-above, 4 no layer matched."
)
@handle_errors
def lipschitz(
    checkpoint: opt.CheckpointArg,
    method: Annotated[
        Method,
        typer.Option(
            "--method",
            "-m",
            help="σ of linear layers. dense (default): float64 LAPACK, certified up to "
            "rounding. exact/auto/lanczos/power: faster iterative values, lower bounds or "
            "unproven on the upper side, so the product becomes an estimate.",
            case_sensitive=False,
        ),
    ] = Method.DENSE,
    certified: Annotated[
        bool,
        typer.Option(
            "--certified",
            help="Use proven upper bounds only (Cholesky certificate / Gram iteration), so the "
            "printed bound is a proof, not an estimate.",
        ),
    ] = False,
    conv: Annotated[
        ConvPolicy,
        typer.Option(
            "--conv",
            help="operator: the norm of each convolution as a map on images (a valid bound). "
            "reshape: σ of the reshaped kernel (what torch's spectral_norm constrains), "
            "not a bound.",
            case_sensitive=False,
        ),
    ] = ConvPolicy.OPERATOR,
    padding: Annotated[
        Padding,
        typer.Option(
            "--padding",
            help="Convolution padding. zeros: a certified bound valid at any input size. "
            "circular: exact at --input-size.",
            case_sensitive=False,
        ),
    ] = Padding.ZEROS,
    input_size: Annotated[
        str | None,
        typer.Option(
            "--input-size",
            metavar="HxW",
            help="Spatial input size, e.g. 32x32 (state dicts; ONNX models: --input-shape).",
        ),
    ] = None,
    input_shape: opt.InputShapeOpt = None,
    no_lower: Annotated[
        bool,
        typer.Option(
            "--no-lower",
            help="ONNX models: skip the lower-bound search (onnxruntime runs of the model).",
        ),
    ] = False,
    lower_effort: Annotated[
        int | None,
        typer.Option(
            "--lower-effort",
            min=0,
            help="ONNX models: the lower-bound search's multi-start ascent (starts and steps "
            "grow with it; 0: one power iteration at one point). Default 1.",
        ),
    ] = None,
    chain_seconds: Annotated[
        float | None,
        typer.Option(
            "--chain-seconds",
            min=0.0,
            help="ONNX models: seconds per dense chain for LipSDP-Neuron's descent from "
            "ECLipsE-Fast, and per conv segment for its multipliers (0: ECLipsE-Fast alone, "
            "no conv segments). Default 2.",
        ),
    ] = None,
    grid: Annotated[
        int | None,
        typer.Option(
            "--grid",
            min=4,
            help="FFT grid for the zero-padding bound (finer: tighter, slower). Default, per "
            "layer: the finest that keeps the cost near 3 s of one core; for 3×3 kernels 46 "
            "below 208 channels, 23 below 328, 12 beyond (bounds within 0.5%, 2%, 7%).",
        ),
    ] = None,
    assume: Annotated[
        Assumption | None,
        typer.Option(
            "--assume",
            help="sequential: assert that the model is a plain chain of its layers in key order "
            "(1-Lipschitz activations; no branches, heads, skips, pools or recurrence), which a "
            "state dict does not record; without it the bound is conditional and never "
            "certified. Refused when names or shapes contradict it.",
            case_sensitive=False,
        ),
    ] = None,
    mlp: Annotated[
        bool,
        typer.Option(
            "--mlp",
            help="When every layer is linear: ECLipsE-Fast's bound over the whole chain "
            "(Xu & Sivaranjani 2024, proven in float64), usually far below the product; "
            "assumes activations slope-restricted to [0, 1] (ReLU, LeakyReLU, tanh, sigmoid).",
        ),
    ] = False,
    fail_above: Annotated[
        float | None,
        typer.Option(
            "--fail-above",
            metavar="X",
            help="Exit with code 3 when the bound exceeds X (a CI gate; X finite, ≥ 0).",
            callback=opt.threshold,
        ),
    ] = None,
    iters: opt.IterationsOpt = 1000,
    tol: opt.TolOpt = None,
    seed: opt.SeedOpt = 0,
    output_format: opt.FormatOpt = OutputFormat.TABLE,
    include: opt.FilterOpt = None,
    exclude: opt.ExcludeOpt = None,
    transposed: opt.TransposedOpt = None,
    key: opt.KeyOpt = None,
    skip_objects: opt.SkipObjectsOpt = False,
    plot: opt.PlotOpt = None,
    scheduler: opt.SchedulerOpt = None,
    quiet: opt.QuietOpt = False,
) -> None:
    """The product Lipschitz upper bound ∏σ over the layers, and when it holds.

    An ONNX model gets the certified bound over its real graph (every op, branch and skip)."""
    chosen = opt.selection(include, exclude, transposed)
    sink = Sink(quiet)
    if is_graph_model(checkpoint):  # an ONNX model: the bound over its graph
        if input_size is not None:
            raise typer.BadParameter(
                "ONNX models take --input-shape NAME=SHAPE (e.g. x=1x3x32x32)",
                param_hint="--input-size",
            )
        given = (
            ("--filter", include),
            ("--exclude", exclude),
            ("--scheduler", scheduler),
        )
        for flag in [flag for flag, value in given if value]:
            sink.note(f"{flag} is ignored for ONNX models: the bound covers the whole graph")
        run_graph_lipschitz(
            checkpoint,
            grid=grid,
            seed=seed,
            input_shapes=opt.parse_input_shapes(input_shape),
            lower=not no_lower,
            lower_effort=lower_effort,
            chain_seconds=chain_seconds,
            certified=certified,
            fail_above=fail_above,
            output_format=output_format,
            sink=sink,
        )
        return
    if input_shape or no_lower:
        raise typer.BadParameter(
            "--input-shape and --no-lower are for ONNX models (a state dict has no graph)",
            param_hint="--input-shape" if input_shape else "--no-lower",
        )
    if lower_effort is not None or chain_seconds is not None:
        raise typer.BadParameter(
            "--lower-effort and --chain-seconds are for ONNX models (a state dict has no graph)",
            param_hint="--lower-effort" if lower_effort is not None else "--chain-seconds",
        )
    size = opt.parse_size(input_size)
    if padding is Padding.CIRCULAR and size is None:
        raise typer.BadParameter("circular padding needs --input-size", param_hint="--padding")
    if size is not None and padding is not Padding.CIRCULAR:
        sink.note("--input-size is ignored with zero padding: the bound holds at every input size")
    options = LipschitzOptions(
        method=method,
        iters=iters,
        tol=tol,
        seed=seed,
        certified=certified,
        conv=conv,
        padding=padding,
        input_size=size,
        grid=grid,
        assume=assume,
        mlp=mlp,
        scheduler=scheduler,
        **chosen,
    )
    with (
        open_and_report(checkpoint, key=key, skip_objects=skip_objects, sink=sink) as ckpt,
        progress_bar(not quiet) as progress,
    ):
        report = lipschitz_report(ckpt, options, progress)
    emit(
        output_format,
        lambda: lipschitz_to_dict(report),
        lambda: lipschitz_to_csv(report),
        lambda console: print_lipschitz_table(report, console),
    )
    if plot is not None and report.factors:
        from sncli.render.plots import lipschitz_figure, save_figure

        sink.note(f"figure written to {save_figure(lipschitz_figure(report), plot)}")
    if fail_above is not None:
        report.gate(
            fail_above, certified=certified, name=checkpoint, shown=fmt_bound(report.best_log10)
        )
