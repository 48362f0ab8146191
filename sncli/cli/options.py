"""Options and arguments that several commands share, and the validators of their values."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Annotated

import typer

from sncli.numerics.spectral import check_device
from sncli.render.common import OutputFormat

if TYPE_CHECKING:
    from sncli.cli.sink import Sink

#: Every input a command reads, for the help of each checkpoint argument.
INPUTS = (
    "safetensors (a file, a sharded *.index.json, or a folder holding one), PyTorch "
    "(.pt, .pth, .bin, .ckpt), TorchScript, GGUF, NumPy .npy/.npz, Keras (.keras, .h5), ONNX, "
    "TFLite, a LoRA adapter (PEFT folder or kohya file), or a Hugging Face id ORG/NAME from "
    "the local cache"
)
CheckpointArg = Annotated[
    str,
    typer.Argument(
        metavar="CKPT",
        help=f"The checkpoint: {INPUTS}.",
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
        help="Mark conv weights matching REGEX as ConvTranspose: dim 1 goes first, the matrix "
        "is (out, in·k…), as torch's spectral_norm does. Shapes cannot tell them apart; in "
        "spectral-norm checkpoints the stored u, v decide when they can.",
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
BaseOpt = Annotated[
    str | None,
    typer.Option(
        "--base",
        metavar="BASE",
        help="For a LoRA adapter: the base checkpoint (or Hugging Face id) it adapts; the merged "
        "weights W + s·B·A are analysed instead of the updates s·B·A.",
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
SchedulerOpt = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        metavar="ADDRESS",
        envvar="DASK_SCHEDULER_ADDRESS",
        show_envvar=True,
        help="Run the per-layer work as tasks on the Dask cluster at ADDRESS (e.g. "
        "tcp://10.0.0.5:8786; needs pip install 'sncli\\[dask]'). The workers read the "
        "checkpoint from the same path, so it must be on a shared filesystem; results are the "
        "same as a local run. Worth it for checkpoints of many GB, not for small models: each "
        "task costs a round trip (see README).",
        show_default=False,
    ),
]
InputShapeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--input-shape",
        metavar="NAME=SHAPE",
        help="ONNX models: the static shape of an input with dynamic dimensions, e.g. "
        "images=1x3x320x320 (repeat for each input; a bare 1x3x320x320 when the model has "
        "one). Without it a batch dimension is taken as 1 and an image size from the "
        "model's metadata, said in a note; other dynamic dimensions are refused.",
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the random start vector.")]
FormatOpt = Annotated[
    OutputFormat,
    typer.Option("--format", help="json and csv are plain, on stdout.", case_sensitive=False),
]
NoWaitOpt = Annotated[
    bool,
    typer.Option(
        "--no-wait",
        help="If another sncli process is writing this checkpoint, fail at once (exit 1) "
        "instead of waiting for it to finish.",
    ),
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No notes or progress bar on stderr.")
]


def plot_file(value: str | None) -> str | None:
    """``--plot``: a .png, .svg or .pdf name (checked before any work is done)."""
    if value is not None:
        from pathlib import Path

        if Path(value).suffix.lower() not in (".png", ".svg", ".pdf"):
            raise typer.BadParameter(f"{value!r}: use a .png, .svg or .pdf file name")
    return value


PlotOpt = Annotated[
    str | None,
    typer.Option(
        "--plot",
        metavar="FILE",
        help="Also draw the result as a figure (.png, .svg or .pdf, from the extension).",
        callback=plot_file,
    ),
]


def selection(
    include: list[str] | None, exclude: list[str] | None, transposed: list[str] | None
) -> dict[str, tuple[str, ...]]:
    """--filter/--exclude/--transposed as the engines' keyword arguments; an invalid pattern is a
    usage error."""
    for pattern in [*(include or ()), *(exclude or ()), *(transposed or ())]:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise typer.BadParameter(f"invalid regex {pattern!r}: {exc}") from None
    return {
        "include": tuple(include or ()),
        "exclude": tuple(exclude or ()),
        "transposed": tuple(transposed or ()),
    }


def parse_size(text: str | None) -> tuple[int, ...] | None:
    """``--input-size``: "32" or "32x32" (or "32,32") as a tuple; None when not given."""
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


def parse_input_shapes(values: list[str] | None) -> dict[str, tuple[int, ...]]:
    """``--input-shape``: NAME=1x3x224x224 (repeatable), or a bare 1x3x224x224 for a model with
    one input (key "")."""
    shapes: dict[str, tuple[int, ...]] = {}
    for text in values or []:
        name, _, dims = text.rpartition("=")
        try:
            shape = tuple(int(part) for part in dims.lower().replace("x", ",").split(","))
        except ValueError:
            shape = ()
        if not shape or any(d <= 0 for d in shape) or name in shapes:
            raise typer.BadParameter(
                f"{text!r} is not NAME=SHAPE like x=1x3x224x224 (each input once)"
                if shape
                else f"{text!r} is not a shape like x=1x3x224x224 or 1x3x224x224",
                param_hint="--input-shape",
            )
        shapes[name] = shape
    return shapes


def device_name(value: str) -> str:
    """``--device``: cpu, cuda or cuda:N; anything else is a usage error (not a CPU fallback)."""
    try:
        return check_device(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def threshold(value: float | None) -> float | None:
    """``--fail-above``: a finite number ≥ 0; NaN (never exceeded), ±inf or a negative value
    would make the gate meaningless."""
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise typer.BadParameter(f"{value} is not a finite number ≥ 0")
    return value


def positive(value: float) -> float:
    """A finite number > 0 (a tolerance)."""
    if not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"{value} is not a finite number > 0")
    return value


def note_ignored_workers(sink: Sink, scheduler: str | None, workers: int | None) -> None:
    """``--workers`` counts local threads; with ``--scheduler`` the cluster's threads decide."""
    if scheduler and workers is not None:
        sink.note("--workers is ignored with --scheduler: the cluster's worker threads decide")
