"""Open a checkpoint and tell the user what the loader noticed, as every command does first."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from sncli.checkpoint import Checkpoint, open_checkpoint
from sncli.cli.sink import Sink


@contextmanager
def open_and_report(
    path: str, *, key: str | None, skip_objects: bool, sink: Sink
) -> Iterator[Checkpoint]:
    """``open_checkpoint``, with the checkpoint's notes on stderr as soon as it is open."""
    with open_checkpoint(path, key=key, skip_objects=skip_objects) as ckpt:
        sink.notes(ckpt.notes)
        yield ckpt


@contextmanager
def open_with_base(
    path: str, base: str | None, *, key: str | None, skip_objects: bool, sink: Sink
) -> Iterator[Checkpoint]:
    """``open_and_report``; with ``--base``, the adapter at ``path`` merged into that base
    (:func:`sncli.adapters.merged_checkpoint`)."""
    with open_and_report(path, key=key, skip_objects=skip_objects, sink=sink) as ckpt:
        if base is None:
            yield ckpt
            return
        if ckpt.adapter is None:
            raise typer.BadParameter(
                f"{path} is not a LoRA adapter; --base names the model an adapter adapts",
                param_hint="--base",
            )
        from sncli.adapters import merged_checkpoint

        with open_and_report(base, key=None, skip_objects=skip_objects, sink=sink) as base_ckpt:
            merged = merged_checkpoint(ckpt, base_ckpt)
            sink.notes(merged.notes, besides=[*ckpt.notes, *base_ckpt.notes])
            yield merged
