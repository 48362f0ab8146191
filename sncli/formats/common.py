"""Helpers every format reader shares: safe text from files, strict JSON, file checks."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from sncli.errors import CheckpointError
from sncli.messages import clean_text

#: What sncli reads, for messages about a file that is none of it.
READABLE = (
    "sncli reads safetensors (a file, folder or sharded index), PyTorch .pt/.bin, TorchScript, "
    "GGUF, NumPy .npy/.npz, Keras .keras/.h5, ONNX, TFLite and Hugging Face model ids"
)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {quote(key)}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON constant {name}")


def strict_json_loads(text: str) -> Any:
    """``json.loads`` refusing duplicate keys and NaN/Infinity (a header must be unambiguous)."""
    return json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)


def show_value(value: Any, limit: int = 60) -> str:
    """A short, safe rendering of a JSON value from a header (long lists cut before repr)."""
    if isinstance(value, list) and len(value) > 8:
        return clean_text(repr(value[:8])[:-1] + f", … ({len(value)} items)]", limit)
    if isinstance(value, dict):
        return f"an object with {len(value)} keys"
    return clean_text(repr(value), limit)


def quote(name: str) -> str:
    """A tensor name from a file, quoted and shortened for an error message."""
    return "'" + clean_text(name) + "'"


def shown_names(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(clean_text(n, 80) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def describe(exc: BaseException) -> str:
    return clean_text(_first_line(str(exc)) or type(exc).__name__, 200)


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def regular_file_size(path: Path) -> int:
    """The size of a regular file; anything else (FIFO, device, socket) would block or never end."""
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "a FIFO, device or socket"
        raise CheckpointError(f"not a regular file ({kind}); only checkpoint files are read", path)
    return info.st_size


COPY_CHUNK = 16 * 1024 * 1024


def copy_range(source: BinaryIO, start: int, length: int, dest: BinaryIO) -> None:
    source.seek(start)
    remaining = length
    while remaining > 0:
        chunk = source.read(min(COPY_CHUNK, remaining))
        if not chunk:
            raise OSError(5, "source file ended early")
        dest.write(chunk)
        remaining -= len(chunk)


@dataclass
class FormatContents:
    """What a reader of a format other than safetensors and PyTorch found (ONNX, GGUF, NumPy…).

    ``tensors`` maps each tensor's name to its (shape, dtype) — the shape as PyTorch would report
    it, the dtype a ``torch`` dtype name (``float32``) or a label such as ``Q4_K (dequantized)``.
    ``load(name)`` returns that tensor as a CPU ``torch.Tensor`` (float32 for dequantized ones),
    reading only what it needs; ``files`` are every file the contents come from (the first is
    the one opened); ``unsupported`` names tensors that are present but cannot be read, with
    the reason; ``notes`` go to the user (stderr). ``conv_layout_known`` says the reader knows
    which op each conv weight feeds and gave it so that reshaping dim 0 first is right (TFLite:
    a TRANSPOSE_CONV filter comes as (out, in, k…)), so no Conv/ConvTranspose guess is noted.
    ``roles`` names, where the file has a graph that says so (ONNX), the op that uses a tensor
    as its weight (``Conv``, ``ConvTranspose``, ``Gemm``, ``MatMul``): that, not the tensor's
    name, then decides whether it is a layer.
    """

    format: str
    files: list[Path]
    tensors: dict[str, tuple[tuple[int, ...], str]]
    load: Callable[[str], Any]
    notes: list[str] = field(default_factory=list)
    unsupported: dict[str, str] = field(default_factory=dict)
    close: Callable[[], None] | None = None
    conv_layout_known: bool = False
    roles: dict[str, str] = field(default_factory=dict)
    #: The file's own key-value metadata (GGUF), for what shapes alone cannot tell.
    metadata: dict[str, Any] = field(default_factory=dict)
    #: ``load_slice(name, e)``: ``load(name)[e]``, reading only that slice (GGUF expert stacks).
    load_slice: Callable[[str, int], Any] | None = None
    #: ``load_array(name)``/``load_slice_array(name, e)``: the same values as a NumPy array
    #: (bfloat16 as :class:`sncli.arrays.BFloat16Array`), without importing torch, where the
    #: reader is NumPy-native (GGUF, NumPy, Keras, ONNX).
    load_array: Callable[[str], Any] | None = None
    load_slice_array: Callable[[str, int], Any] | None = None
