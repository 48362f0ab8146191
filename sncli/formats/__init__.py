"""One module per checkpoint file format; ``sniff_format`` tells which one a file is.

Readers here know their format and nothing else: they import no engine, renderer or CLI, and
give plain data that ``sncli.checkpoint`` assembles into a ``Checkpoint``.
"""

from __future__ import annotations

from pathlib import Path

from sncli.errors import CheckpointError
from sncli.formats.common import regular_file_size

ZIP_MAGIC = b"PK\x03\x04"


def sniff_format(path: Path) -> str:
    """Tell a file's format from its first bytes: 'safetensors', 'torch-zip' or 'torch-legacy'."""
    try:
        regular_file_size(path)
        with path.open("rb") as handle:
            head = handle.read(9)
    except OSError as exc:
        raise CheckpointError(f"cannot read file: {exc.strerror or exc}", path) from exc
    if not head:
        raise CheckpointError("empty file, not a checkpoint", path)
    if head.startswith(ZIP_MAGIC):
        return "torch-zip"
    # Before the pickle test: a safetensors length prefix may start with 0x80 (a 128-byte header).
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return "torch-legacy"
    if path.suffix == ".safetensors":
        return "safetensors"
    raise CheckpointError(
        "not a checkpoint: neither safetensors nor a PyTorch file (unrecognised first bytes)", path
    )
