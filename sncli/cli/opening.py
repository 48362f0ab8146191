"""Open a checkpoint and tell the user what the loader noticed, as every command does first."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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
