"""``sncli recover``: complete or undo a multi-file write that was interrupted."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sncli.cli import options as opt
from sncli.cli.app import app
from sncli.cli.sink import Sink, handle_errors
from sncli.render.recover import nothing_line, recovery_line
from sncli.transaction import recover as recover_writes


@app.command(
    epilog="Examples:\n\n"
    "  sncli recover model.safetensors.index.json\n\n"
    "  sncli recover ./checkpoint-folder\n\n"
    "Exit codes: 0 ok (also when there was nothing to recover), 1 error."
)
@handle_errors
def recover(
    checkpoint: Annotated[
        str,
        typer.Argument(
            metavar="CKPT",
            help="The checkpoint a `sncli normalize` write was interrupted on: its file "
            "(safetensors, PyTorch, GGUF, a LoRA adapter's), its sharded *.index.json, or the "
            "folder holding it.",
            show_default=False,
        ),
    ],
    no_wait: opt.NoWaitOpt = False,
    quiet: opt.QuietOpt = False,
) -> None:
    """Finish a write sncli was interrupted in (killed, power lost) using its journal.

    Rolls forward when every staged file is complete and matches its hash in the journal.

    Else rolls back to the originals the write kept: either way the checkpoint is consistent.
    """
    sink = Sink(quiet)
    results = recover_writes(Path(checkpoint), wait=not no_wait, on_wait=sink.note)
    if not results:
        typer.echo(nothing_line(checkpoint))
    for result in results:
        typer.echo(recovery_line(result))
