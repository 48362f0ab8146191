"""The Typer application and its top-level ``--version`` option; commands register on ``app``."""

from __future__ import annotations

from typing import Annotated

import typer

from sncli import __version__

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
