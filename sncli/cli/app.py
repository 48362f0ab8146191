"""The Typer application and its top-level ``--version`` option; commands register on ``app``."""

from __future__ import annotations

from typing import Annotated

import typer

from sncli._version import __version__


def _hide_flag_types() -> None:
    """typer shows ``<bool>`` beside every on/off flag in ``--help``; a flag takes no value, so
    show no type for flags (values of other options keep theirs)."""
    from typer import core

    option = getattr(core, "TyperOption", None)
    original = getattr(option, "display_type_rich", None)
    if option is None or original is None:  # another typer: leave its help as it is
        return

    def display_type_rich(self: typer.core.TyperOption, ctx: object) -> str | None:
        if getattr(self, "is_flag", False) and getattr(self, "metavar", None) is None:
            return None
        return original(self, ctx)

    option.display_type_rich = display_type_rich


_hide_flag_types()

app = typer.Typer(
    name="sncli",
    help=(
        "Spectral analysis of saved neural-network checkpoints: the largest singular value σ of "
        "every layer, the product Lipschitz bound, and spectral normalization of the weights.\n\n"
        "Reads safetensors (single, sharded with an index json, or a folder), PyTorch state "
        "dicts (.pt/.pth/.bin/.ckpt, always with weights_only=True), ONNX graphs, GGUF, NumPy "
        ".npy/.npz, TorchScript and Keras weights, and Hugging Face model ids from the local "
        "cache. Commands: inspect, spectrum, lipschitz, diff, normalize, report, recover."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


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
