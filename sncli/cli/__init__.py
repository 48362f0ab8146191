"""The ``sncli`` command line: parse options, call the library, render. No numerics here."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from sncli import __version__
from sncli.analysis import SortKey
from sncli.errors import EXIT_ERROR, SncliError
from sncli.lipschitz import ConvPolicy, Padding
from sncli.normalize import NormalizeMode
from sncli.render.common import OutputFormat
from sncli.spectral import Method

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="sncli",
    help=(
        "Spectral analysis of saved neural-network checkpoints: the largest singular value σ of "
        "every layer, the product Lipschitz bound, and spectral normalization of the weights.\n\n"
        "Reads safetensors (single, sharded with an index json, or a folder) and PyTorch "
        "state dicts (.pt/.pth/.bin/.ckpt, always with weights_only=True)."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

DEBUG_ENV = "SNCLI_DEBUG"


def _error(message: str) -> None:
    sys.stderr.write(f"sncli: error: {message}\n")


def handle_errors(command: F) -> F:
    """Turn expected errors into one line on stderr and an exit code; no traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except SncliError as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            _error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _error("interrupted")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, typer.BadParameter):
            raise
        except Exception as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            text = str(exc).strip().splitlines()
            detail = text[0] if text else ""
            _error(
                f"unexpected {type(exc).__name__}: {detail} "
                f"(set {DEBUG_ENV}=1 for a traceback; please report it)"
            )
            raise typer.Exit(EXIT_ERROR) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sncli {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Spectral analysis of checkpoints."""


def _note(message: str, quiet: bool) -> None:
    """A note on stderr; security warnings are shown even with --quiet."""
    if not quiet or "Warning:" in message:
        sys.stderr.write(f"sncli: {message}\n")


CheckpointArg = Annotated[
    str,
    typer.Argument(
        metavar="CKPT",
        help="Checkpoint file (.safetensors, .pt, .pth, .bin, .ckpt), an *.index.json of a "
        "sharded checkpoint, or a folder holding one.",
        show_default=False,
    ),
]
FilterOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--filter",
        "-f",
        metavar="REGEX",
        help="Only tensors whose key matches REGEX (searched, repeatable: any match counts).",
    ),
]
ExcludeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude", "-x", metavar="REGEX", help="Drop tensors matching REGEX (repeatable)."
    ),
]
TransposedOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--transposed",
        metavar="REGEX",
        help="Mark conv weights matching REGEX as ConvTranspose: their matrix is formed along "
        "dim 1 (in, out·k…), as torch's spectral_norm does. Shapes cannot tell them apart; in "
        "spectral-norm checkpoints the stored u vector decides.",
    ),
]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--key",
        help="Key of the state dict inside a wrapped PyTorch file (e.g. state_dict, ema, "
        "model_ema). Default: the first of state_dict, model, module, model_ema, "
        "state_dict_ema, ema, net that holds tensors.",
    ),
]
SkipObjectsOpt = Annotated[
    bool,
    typer.Option(
        "--skip-objects",
        help="Read PyTorch files whose pickle references Python objects outside torch's "
        "weights-only allowlist (e.g. Lightning hyper_parameters) by loading those objects as "
        "inert placeholders. Still weights_only=True: nothing from the file is imported or run.",
    ),
]
IterationsOpt = Annotated[
    int,
    typer.Option("--iters", min=1, help="Maximum iterations for iterative methods."),
]
TolOpt = Annotated[
    float | None,
    typer.Option(
        "--tol",
        min=0.0,
        help="auto/lanczos: the relative error to reach (default 1e-4). power: stop when σ "
        "changes by less than this (default 1e-6; a stopping rule, not an error bound).",
        show_default=False,
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the random start vector.")]
FormatOpt = Annotated[
    OutputFormat,
    typer.Option("--format", help="json and csv are plain, on stdout.", case_sensitive=False),
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No notes or progress bar on stderr.")
]


@app.command(
    epilog="Examples:\n\n"
    "  sncli inspect sample_models/mlp.safetensors\n\n"
    "  sncli inspect model.safetensors.index.json --method power --top 10\n\n"
    "  sncli inspect ckpt.pt --format json --filter 'layers\\.1[0-9]\\.' > sigmas.json\n\n"
    "Exit codes: 0 ok, 1 error, 2 usage, 4 no layer matched."
)
@handle_errors
def inspect(
    checkpoint: CheckpointArg,
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
    iters: IterationsOpt = 1000,
    tol: TolOpt = None,
    seed: SeedOpt = 0,
    output_format: FormatOpt = OutputFormat.TABLE,
    include: FilterOpt = None,
    exclude: ExcludeOpt = None,
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
    transposed: TransposedOpt = None,
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
            help="cpu or cuda (falls back to the CPU with a note when no GPU is available).",
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
    key: KeyOpt = None,
    skip_objects: SkipObjectsOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Report the largest singular value σ of every layer's weight matrix."""
    from sncli.analysis import MethodOptions, sort_layers, spectral_norms
    from sncli.checkpoint import open_checkpoint
    from sncli.render.common import progress_bar, stdout_console, write_json
    from sncli.render.inspect import inspect_to_csv, inspect_to_dict, print_inspect_table

    _check_regexes([*(include or []), *(exclude or []), *(transposed or [])])

    with open_checkpoint(checkpoint, key=key, skip_objects=skip_objects) as ckpt:
        for note in ckpt.notes:
            _note(note, quiet)
        with progress_bar(not quiet) as progress:
            report = spectral_norms(
                ckpt,
                options=MethodOptions(
                    method=method,
                    iters=iters,
                    tol=tol,
                    seed=seed,
                    device=device,
                    workers=workers,
                    certify=certified,
                    warm_start=not no_warm_start,
                ),
                include=include or (),
                exclude=exclude or (),
                transposed=transposed or (),
                progress=progress,
            )
    for note in report.notes:
        if note not in ckpt.notes:
            _note(note, quiet)
    layers = report.layers
    if sort is not None or top is not None:
        layers = sort_layers(layers, sort or SortKey.SIGMA, reverse=reverse)
    elif reverse:
        layers = layers[::-1]
    if top is not None:
        layers = layers[:top]
    if output_format is OutputFormat.JSON:
        write_json(inspect_to_dict(report, layers))
    elif output_format is OutputFormat.CSV:
        sys.stdout.write(inspect_to_csv(layers))
    else:
        print_inspect_table(report, layers, stdout_console())


def _parse_size(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        size = tuple(int(part) for part in text.lower().replace("x", ",").split(",") if part)
    except ValueError:
        size = ()
    if not size or any(d <= 0 for d in size):
        raise typer.BadParameter(
            f"{text!r} is not a size like 32 or 32x32", param_hint="--input-size"
        )
    return size


@app.command(
    epilog="Examples:\n\n"
    "  sncli lipschitz sample_models/sngan_disc_parametrized.pt\n\n"
    "  sncli lipschitz ckpt.pt --certified --fail-above 1e3   # CI gate\n\n"
    "  sncli lipschitz gan.pt --padding circular --input-size 32x32\n\n"
    "Exit codes: 0 ok, 1 error, 2 usage, 3 bound above --fail-above, 4 no layer matched."
)
@handle_errors
def lipschitz(
    checkpoint: CheckpointArg,
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
        typer.Option("--input-size", metavar="HxW", help="Spatial input size, e.g. 32x32."),
    ] = None,
    grid: Annotated[
        int | None,
        typer.Option(
            "--grid",
            min=4,
            help="FFT grid for the zero-padding bound (finer: tighter, slower). Default: the "
            "finest of 64/32/16 that keeps the cost moderate for the layer's size.",
        ),
    ] = None,
    fail_above: Annotated[
        float | None,
        typer.Option(
            "--fail-above",
            metavar="X",
            help="Exit with code 3 when the bound exceeds X (a CI gate).",
        ),
    ] = None,
    iters: IterationsOpt = 1000,
    tol: TolOpt = None,
    seed: SeedOpt = 0,
    output_format: FormatOpt = OutputFormat.TABLE,
    include: FilterOpt = None,
    exclude: ExcludeOpt = None,
    transposed: TransposedOpt = None,
    key: KeyOpt = None,
    skip_objects: SkipObjectsOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """The product Lipschitz upper bound ∏σ over the layers, and when it holds."""
    import math

    from sncli.checkpoint import open_checkpoint
    from sncli.errors import EXIT_BOUND_EXCEEDED
    from sncli.lipschitz import LipschitzOptions, lipschitz_report
    from sncli.render.common import progress_bar, stdout_console, write_json
    from sncli.render.lipschitz import lipschitz_to_csv, lipschitz_to_dict, print_lipschitz_table

    _check_regexes([*(include or []), *(exclude or []), *(transposed or [])])
    size = _parse_size(input_size)
    if padding is Padding.CIRCULAR and size is None:
        raise typer.BadParameter("circular padding needs --input-size", param_hint="--padding")
    if size is not None and padding is not Padding.CIRCULAR:
        _note(
            "--input-size is ignored with zero padding: the bound holds at every input size",
            quiet,
        )
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
        include=tuple(include or ()),
        exclude=tuple(exclude or ()),
        transposed=tuple(transposed or ()),
    )
    with open_checkpoint(checkpoint, key=key, skip_objects=skip_objects) as ckpt:
        for note in ckpt.notes:
            _note(note, quiet)
        with progress_bar(not quiet) as progress:
            report = lipschitz_report(ckpt, options, progress)
    if output_format is OutputFormat.JSON:
        write_json(lipschitz_to_dict(report))
    elif output_format is OutputFormat.CSV:
        sys.stdout.write(lipschitz_to_csv(report))
    else:
        print_lipschitz_table(report, stdout_console())
    if fail_above is not None:
        from sncli.render.lipschitz import fmt_bound

        shown = fmt_bound(report.log10_bound)
        if not report.valid_architecture:
            _error(
                f"{checkpoint}: --fail-above cannot pass: the product ({shown}) is not a "
                "Lipschitz bound for this architecture"
            )
            raise typer.Exit(EXIT_BOUND_EXCEEDED)
        if certified and not report.certified:
            _error(f"{checkpoint}: --fail-above with --certified: the product is not certified")
            raise typer.Exit(EXIT_BOUND_EXCEEDED)
        if report.log10_bound > math.log10(max(fail_above, 1e-300)):
            _error(f"{checkpoint}: Lipschitz bound {shown} exceeds --fail-above {fail_above:g}")
            raise typer.Exit(EXIT_BOUND_EXCEEDED)


@app.command(
    epilog="Examples:\n\n"
    "  sncli normalize sample_models/mlp.safetensors -o mlp.sn.safetensors\n\n"
    "  sncli normalize ckpt.pt --in-place --mode clip --target 2\n\n"
    "  sncli normalize sngan.pt -o plain.pt --bake --dry-run\n\n"
    "Exit codes: 0 ok, 1 error (nothing changed), 2 usage, 4 no layer matched."
)
@handle_errors
def normalize(
    checkpoint: CheckpointArg,
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
    iters: IterationsOpt = 1000,
    tol: TolOpt = None,
    seed: SeedOpt = 0,
    include: FilterOpt = None,
    exclude: ExcludeOpt = None,
    transposed: TransposedOpt = None,
    embeddings: Annotated[
        bool, typer.Option("--embeddings", help="Also normalize embedding matrices.")
    ] = False,
    norms: Annotated[
        bool,
        typer.Option(
            "--norms", help="Also normalize 1-D norm scales (as diagonal maps: σ = max|γ|)."
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
        OutputFormat,
        typer.Option("--format", help="table or json.", case_sensitive=False),
    ] = OutputFormat.TABLE,
    key: KeyOpt = None,
    skip_objects: SkipObjectsOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Rewrite a checkpoint with spectrally normalized weights: W ← target·W/σ(W)."""
    import math
    from pathlib import Path

    from sncli.checkpoint import open_checkpoint
    from sncli.normalize import NormalizeOptions, normalize_checkpoint, plan_normalization
    from sncli.render.common import progress_bar, stdout_console, write_json
    from sncli.render.normalize import normalize_to_dict, print_normalize_table

    _check_regexes([*(include or []), *(exclude or []), *(transposed or [])])
    if not (math.isfinite(target) and target > 0):
        raise typer.BadParameter(f"{target} is not a positive number", param_hint="--target")
    if output_format is OutputFormat.CSV:
        raise typer.BadParameter("normalize writes table or json", param_hint="--format")
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
        include=tuple(include or ()),
        exclude=tuple(exclude or ()),
        transposed=tuple(transposed or ()),
        embeddings=embeddings,
        norms=norms,
        bake=bake,
    )
    with open_checkpoint(checkpoint, key=key, skip_objects=skip_objects) as ckpt:
        with progress_bar(not quiet, "σ") as progress:
            plan = plan_normalization(ckpt, options, progress)
        for note in plan.notes:
            _note(note, quiet)
        result = None
        if not dry_run:
            with progress_bar(not quiet, "writing") as progress:
                result = normalize_checkpoint(
                    ckpt,
                    plan,
                    None if output is None else Path(output),
                    in_place=in_place,
                    force=force,
                    progress=progress,
                )
            for warning in result.warnings:
                sys.stderr.write(f"sncli: warning: {warning}\n")
    for layer in plan.layers:
        if layer.action.value == "skip":
            sys.stderr.write(f"sncli: warning: {layer.name}: not normalized: {layer.reason}\n")
    if output_format is OutputFormat.TABLE:
        print_normalize_table(plan, result, stdout_console())
    else:
        write_json(normalize_to_dict(plan, result))


def _check_regexes(patterns: list[str]) -> None:
    import re

    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise typer.BadParameter(f"invalid regex {pattern!r}: {exc}") from None


def main() -> None:
    """Console-script entry point."""
    app(prog_name="sncli")
