"""``sncli normalize``: write spectrally normalized weights (or plan it with ``--dry-run``)."""

from __future__ import annotations

import math
from contextlib import nullcontext
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from sncli.checkpoint import Checkpoint, open_checkpoint
from sncli.cli import options as opt
from sncli.cli.app import app
from sncli.cli.sink import Sink, handle_errors
from sncli.errors import NoLayersMatchedError
from sncli.normalize import (
    Action,
    NormalizeMode,
    NormalizeOptions,
    NormalizePlan,
    NormalizeResult,
    ensure_writable,
    normalize_checkpoint,
    plan_normalization,
    write_anchor,
)
from sncli.numerics.spectral import Method
from sncli.render.common import progress_bar, stdout_console, write_json
from sncli.render.normalize import normalize_to_dict, print_normalize_table
from sncli.render.recover import recovery_line
from sncli.transaction import recover, writer_lock


class NormalizeFormat(str, Enum):
    """What ``normalize --format`` offers: a plan/result has no one-row-per-layer CSV form."""

    TABLE = "table"
    JSON = "json"


@app.command(
    epilog="Examples:\n\n"
    "  sncli normalize sample_models/mlp.safetensors -o mlp.sn.safetensors\n\n"
    "  sncli normalize ckpt.pt --in-place --mode clip --target 2\n\n"
    "  sncli normalize sngan.pt -o plain.pt --bake --dry-run\n\n"
    "Exit codes: 0 ok, 1 error (nothing changed), 2 usage, 4 no layer matched."
)
@handle_errors
def normalize(
    checkpoint: Annotated[
        str,
        typer.Argument(
            metavar="CKPT",
            help=f"The checkpoint: {opt.INPUTS}. Written: safetensors, PyTorch, GGUF and LoRA "
            "adapters; the other formats are planned with --dry-run, not written. Recurrent gate "
            "stacks (LSTM/GRU weight_ih, weight_hh) are left as they are, with a note.",
            show_default=False,
        ),
    ],
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            metavar="PATH",
            help="Where to write: a file (or a folder for sharded checkpoints). Same format as "
            "the input.",
        ),
    ] = None,
    in_place: Annotated[
        bool,
        typer.Option(
            "--in-place", help="Overwrite the input (atomically: old file or new, never a mix)."
        ),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output.")] = False,
    target: Annotated[
        float, typer.Option("--target", help="σ each selected layer is scaled to.")
    ] = 1.0,
    mode: Annotated[
        NormalizeMode,
        typer.Option(
            "--mode",
            help="scale: every selected layer to exactly the target. clip: only layers above "
            "the target are scaled down; the rest are left byte for byte.",
            case_sensitive=False,
        ),
    ] = NormalizeMode.SCALE,
    method: Annotated[
        Method,
        typer.Option(
            "--method",
            "-m",
            help="How σ is found before scaling. Whatever the method, the written weights are "
            "measured again exactly and shaved until σ ≤ target.",
            case_sensitive=False,
        ),
    ] = Method.EXACT,
    iters: opt.IterationsOpt = 1000,
    tol: opt.TolOpt = None,
    seed: opt.SeedOpt = 0,
    include: opt.FilterOpt = None,
    exclude: opt.ExcludeOpt = None,
    transposed: opt.TransposedOpt = None,
    embeddings: Annotated[
        bool, typer.Option("--embeddings", help="Also normalize embedding matrices.")
    ] = False,
    norms: Annotated[
        bool,
        typer.Option(
            "--norms",
            help="Also normalize 1-D norm scales as diagonal maps: BatchNorm to "
            "max|γ|/√(running_var+ε) = target, other norms to max|γ| = target (never PReLU).",
        ),
    ] = False,
    bake: Annotated[
        bool,
        typer.Option(
            "--bake",
            help="For spectral-norm checkpoints: write the weight the model uses (W/σ̂) as a "
            "plain `weight` and drop u, v, so it loads into a model without spectral_norm.",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; write nothing.")
    ] = False,
    output_format: Annotated[
        NormalizeFormat,
        typer.Option("--format", help="table or json (plain, on stdout).", case_sensitive=False),
    ] = NormalizeFormat.TABLE,
    key: opt.KeyOpt = None,
    skip_objects: opt.SkipObjectsOpt = False,
    no_wait: opt.NoWaitOpt = False,
    quiet: opt.QuietOpt = False,
) -> None:
    """Rewrite a checkpoint with spectrally normalized weights: W ← target·W/σ(W)."""
    chosen = opt.selection(include, exclude, transposed)
    sink = Sink(quiet)
    if not (math.isfinite(target) and target > 0):
        raise typer.BadParameter(f"{target} is not a positive number", param_hint="--target")
    if not dry_run and output is None and not in_place:
        raise typer.BadParameter("give -o/--output PATH, or --in-place, or --dry-run")
    if output is not None and in_place:
        raise typer.BadParameter("-o/--output and --in-place exclude each other")
    options = NormalizeOptions(
        target=target,
        mode=mode,
        method=method,
        iters=iters,
        tol=tol,
        seed=seed,
        **chosen,
        embeddings=embeddings,
        norms=norms,
        bake=bake,
    )
    # --in-place holds the writer lock from reading to renaming, so no concurrent write is lost;
    # an interrupted write of this checkpoint is completed (or undone) first.
    anchor = write_anchor(Path(checkpoint)) if in_place and not dry_run else None
    lock = (
        nullcontext()
        if anchor is None
        else writer_lock(anchor, wait=not no_wait, on_wait=sink.note)
    )
    with lock:
        if anchor is not None:
            for recovery in recover(anchor):
                sink.note(recovery_line(recovery))
        _run(
            checkpoint,
            output,
            in_place,
            force,
            dry_run,
            output_format,
            key,
            skip_objects,
            no_wait,
            options,
            sink,
        )


def _run(
    checkpoint: str,
    output: str | None,
    in_place: bool,
    force: bool,
    dry_run: bool,
    output_format: NormalizeFormat,
    key: str | None,
    skip_objects: bool,
    no_wait: bool,
    options: NormalizeOptions,
    sink: Sink,
) -> None:
    quiet = sink.quiet
    # Not open_and_report: the plan's notes (the checkpoint's among them) come after planning.
    with open_checkpoint(checkpoint, key=key, skip_objects=skip_objects) as ckpt:
        if ckpt.adapter is not None:
            _run_adapter(ckpt, output, in_place, force, dry_run, output_format, options, sink)
            return
        if not dry_run:
            ensure_writable(ckpt)  # before measuring anything
        with progress_bar(not quiet, "σ") as progress:
            plan = plan_normalization(ckpt, options, progress)
        sink.notes(plan.notes)
        result = None
        nothing = plan.nothing_to_normalize()
        if nothing is not None:
            _warn_skipped(plan, sink)
            if dry_run:
                _render(plan, None, output_format)
            raise NoLayersMatchedError(nothing, ckpt.path)
        if not dry_run:
            with progress_bar(not quiet, "writing") as progress:
                result = normalize_checkpoint(
                    ckpt,
                    plan,
                    None if output is None else Path(output),
                    in_place=in_place,
                    force=force,
                    progress=progress,
                    wait=not no_wait,
                    on_wait=sink.note,
                )
            for warning in result.warnings:
                sink.warning(warning)
    _warn_skipped(plan, sink)
    _render(plan, result, output_format)


def _run_adapter(
    ckpt: Checkpoint,
    output: str | None,
    in_place: bool,
    force: bool,
    dry_run: bool,
    output_format: NormalizeFormat,
    options: NormalizeOptions,
    sink: Sink,
) -> None:
    """A LoRA adapter: every selected update s·B·A to σ = target (both factors × √c)."""
    from sncli.adapters import normalize_adapter
    from sncli.render.adapters import normalize_adapter_to_dict, print_normalize_adapter_table

    if in_place:
        raise typer.BadParameter("a LoRA adapter is written to a new place: give -o OUT")
    sink.notes(ckpt.notes)
    result = normalize_adapter(
        ckpt,
        None if dry_run or output is None else Path(output),
        target=options.target,
        mode=options.mode.value,
        include=options.include,
        exclude=options.exclude,
        force=force,
    )
    for layer in result.layers:
        if layer.action == "skip":
            sink.warning(f"{layer.name}: not normalized: {layer.reason}")
    if output_format is NormalizeFormat.TABLE:
        print_normalize_adapter_table(result, stdout_console())
    else:
        write_json(normalize_adapter_to_dict(result))


def _warn_skipped(plan: NormalizePlan, sink: Sink) -> None:
    for layer in plan.layers:
        if layer.action is Action.SKIP:
            sink.warning(f"{layer.name}: not normalized: {layer.reason}")


def _render(
    plan: NormalizePlan, result: NormalizeResult | None, output_format: NormalizeFormat
) -> None:
    if output_format is NormalizeFormat.TABLE:
        print_normalize_table(plan, result, stdout_console())
    else:
        write_json(normalize_to_dict(plan, result))
