"""One module per checkpoint file format; ``sniff_format`` tells which one a file is.

Readers here know their format and nothing else: they import no engine, renderer or CLI, and
give plain data that ``sncli.checkpoint`` assembles into a ``Checkpoint``.
"""

from __future__ import annotations

from pathlib import Path

from sncli.errors import CheckpointError
from sncli.formats.common import READABLE, regular_file_size

ZIP_MAGIC = b"PK\x03\x04"
#: An ONNX ModelProto starts with field 1 (ir_version, a small varint), then another field:
#: producer_name (2), producer_version (3), domain (4), model_version (5), doc_string (6),
#: graph (7) or opset_import (8).
_ONNX_SECOND_FIELD = frozenset({0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42})


#: Why a torch.export archive is refused (README "Graph inputs").
PT2_REFUSED = (
    "torch.export .pt2 archives are refused: torch.export.load unpickles parts of them "
    "(torch.load weights_only=False, pickle.loads); export the model to ONNX instead: "
    "torch.onnx.export(model, (x,), 'model.onnx', dynamo=True)"
)


def _first_zip_entry(path: Path) -> str:
    """The name in a zip's first local file header ('' when it cannot be read)."""
    try:
        with path.open("rb") as handle:
            header = handle.read(30)
            if len(header) < 30:
                return ""
            length = int.from_bytes(header[26:28], "little")
            return handle.read(min(length, 512)).decode("utf-8", "replace")
    except OSError:
        return ""


def _zip_names(path: Path) -> list[str]:
    """A zip's member names ([] when its directory cannot be read: the reader will say why)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    # NotImplementedError: a member that claims a zip version above 6.3 (a fuzzed torch file)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        OSError,
        ValueError,
        EOFError,
        NotImplementedError,
    ):
        return []


def _looks_like_onnx(head: bytes) -> bool:
    return (
        len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] <= 15 and head[2] in _ONNX_SECOND_FIELD
    )


def sniff_format(path: Path) -> str:
    """Tell a file's format from its first bytes: 'safetensors', 'torch-zip', 'torch-legacy',
    or a format of ``sncli.checkpoint.FORMAT_READERS`` ('npy', 'npz', 'onnx', …).

    torch.export ``.pt2`` archives are recognised and refused (a ``CheckpointError`` saying why),
    rather than "unrecognised" or "damaged zip".
    """
    try:
        regular_file_size(path)
        with path.open("rb") as handle:
            head = handle.read(9)
    except OSError as exc:
        raise CheckpointError(f"cannot read file: {exc.strerror or exc}", path) from exc
    if not head:
        raise CheckpointError(f"empty file, not a checkpoint ({READABLE})", path)
    # First: a FlatBuffer's root offset may start with 0x80 (read as a pickle below).
    if head[4:8] == b"TFL3":
        return "tflite"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"GGUF"):
        return "gguf"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if head.startswith(ZIP_MAGIC):
        if path.suffix.lower() == ".npz" or _first_zip_entry(path).endswith(".npy"):
            return "npz"
        names = _zip_names(path)
        if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
            return "torchscript"
        if path.suffix.lower() == ".pt2":
            raise CheckpointError(PT2_REFUSED, path)
        if path.suffix.lower() == ".keras" or any(
            n.rsplit("/", 1)[-1] == "model.weights.h5" for n in names
        ):
            return "keras"  # its reader says what is wrong with a damaged one
        return "torch-zip"
    # Before the pickle test: a safetensors length prefix may start with 0x80 (a 128-byte header).
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return "torch-legacy"
    if path.suffix == ".safetensors":
        return "safetensors"
    if path.suffix.lower() == ".onnx" or _looks_like_onnx(head):
        return "onnx"
    if path.suffix.lower() == ".tflite":
        raise CheckpointError(
            "not a TFLite model: no 'TFL3' identifier at byte 4 (truncated or another format)",
            path,
        )
    raise CheckpointError(f"not a checkpoint (unrecognised first bytes): {READABLE}", path)
