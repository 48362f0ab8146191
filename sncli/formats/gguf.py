"""GGUF files (llama.cpp): tensor infos read from the header by sncli, data dequantized by the
``gguf`` package one tensor at a time.

The header is parsed here, with every count, length and offset checked against the file size
before anything is allocated (the ``gguf`` reader would loop over a lying count, and fails the
whole file on a type id it does not know). GGUF stores dimensions fastest-first (``ne[0]`` is
the row length); shapes are reported reversed, as PyTorch would (a llama.cpp ``attn_q.weight``
of ``ne = [4096, 1024]`` is ``(1024, 4096)``, out × in). Quantized tensors are dequantized to
float32 with ``gguf.quants.dequantize``, labelled ``Q4_K (dequantized)``: their σ is that of
the dequantized weight, which is what the model computes with.
"""

from __future__ import annotations

import itertools
import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sncli.arrays import bfloat16_from_bits, dtype_name, is_array, to_torch
from sncli.dtypes import DEQUANTIZED
from sncli.errors import CheckpointError
from sncli.formats.common import (
    FormatContents,
    copy_range,
    describe,
    quote,
    regular_file_size,
)

MAGIC = b"GGUF"
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_NAME = 65_536
_MAX_ARRAY_DEPTH = 8
#: GGUF metadata value types → struct format (fixed-size ones).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?"}
_SCALARS.update({10: "Q", 11: "q", 12: "d"})
_STRING, _ARRAY = 8, 9
#: Plain GGML types → torch dtype names (read as they are, not dequantized).
_PLAIN = {
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F64": "float64",
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
}


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor's header entry: name, GGUF dims (fastest first), type, absolute data offset."""

    name: str
    ne: tuple[int, ...]
    type_id: int
    type_name: str
    offset: int
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape as PyTorch reports it: GGUF's dims reversed."""
        return tuple(reversed(self.ne))


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensor]
    data_start: int


class _Cursor:
    """Bounds-checked little-endian reads from a memory-mapped file."""

    def __init__(self, data: Any, size: int, path: Path) -> None:
        self.data, self.size, self.path, self.pos = data, size, path, 0

    def take(self, count: int, what: str) -> bytes:
        if count < 0 or self.pos + count > self.size:
            raise CheckpointError(
                f"truncated GGUF file: {what} at byte {self.pos} needs {count} bytes, "
                f"the file has {self.size}",
                self.path,
            )
        start, self.pos = self.pos, self.pos + count
        return bytes(self.data[start : self.pos])

    def unpack(self, fmt: str, what: str) -> Any:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str, limit: int | None = None) -> str:
        length = self.unpack("Q", what)
        if limit is not None and length > limit:
            raise CheckpointError(f"corrupt GGUF header: {what} claims {length} bytes", self.path)
        return self.take(length, what).decode("utf-8", "replace")

    def skip(self, count: int, what: str) -> None:
        if count < 0 or self.pos + count > self.size:
            raise CheckpointError(
                f"truncated GGUF file: {what} claims {count} bytes at byte {self.pos}, "
                f"the file has {self.size}",
                self.path,
            )
        self.pos += count


def _value(cursor: _Cursor, kind: int, key: str, depth: int = 0) -> Any:
    """A metadata value; arrays are skipped (only their length is kept), strings read."""
    what = f"metadata value {quote(key)}"
    if kind in _SCALARS:
        return cursor.unpack(_SCALARS[kind], what)
    if kind == _STRING:
        return cursor.string(what)
    if kind == _ARRAY and depth < _MAX_ARRAY_DEPTH:
        item = cursor.unpack("I", what)
        count = cursor.unpack("Q", what)
        if item in _SCALARS:
            cursor.skip(count * struct.calcsize(_SCALARS[item]), what)
        elif item in (_STRING, _ARRAY):
            minimum = 8 if item == _STRING else 12
            if count * minimum > cursor.size - cursor.pos:
                raise CheckpointError(
                    f"truncated GGUF file: {what} claims {count} items, more than the file holds",
                    cursor.path,
                )
            for _ in range(count):
                _value(cursor, item, key, depth + 1)
        else:
            raise CheckpointError(
                f"corrupt GGUF header: {what} has unknown type {item}", cursor.path
            )
        return f"[array of {count}]"
    if kind == _ARRAY:
        raise CheckpointError(
            f"corrupt GGUF header: {what} nests arrays more than {_MAX_ARRAY_DEPTH} deep (refused)",
            cursor.path,
        )
    raise CheckpointError(f"corrupt GGUF header: {what} has unknown type {kind}", cursor.path)


def _type_of(type_id: int, name: str, path: Path) -> tuple[str, int, int]:
    """(GGML type name, block size, bytes per block) of a tensor's type id."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        qtype = GGMLQuantizationType(type_id)
        block, size = GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise CheckpointError(
            f"tensor {quote(name)} has GGML type id {type_id}, which gguf does not know "
            "(a type from a llama.cpp fork or a newer version?)",
            path,
        ) from None
    return qtype.name, block, size


def read_gguf_header(path: Path) -> GGUFHeader:
    """Parse and check a GGUF header: metadata, tensor infos, every tensor inside the file."""
    size = regular_file_size(path)
    with path.open("rb") as handle:
        if size < 24:
            raise CheckpointError("truncated GGUF file: shorter than its 24-byte header", path)
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _parse(_Cursor(data, size, path))


def _parse(cursor: _Cursor) -> GGUFHeader:
    path, size = cursor.path, cursor.size
    cursor.take(4, "magic")
    version = cursor.unpack("I", "version")
    if version not in (2, 3):
        swapped = struct.unpack(">I", struct.pack("<I", version))[0]
        detail = "big-endian GGUF is not supported" if swapped in (2, 3) else f"version {version}"
        raise CheckpointError(f"unsupported GGUF file: {detail} (sncli reads v2 and v3)", path)
    n_tensors = cursor.unpack("Q", "tensor count")
    n_kv = cursor.unpack("Q", "metadata count")
    # Each metadata entry takes at least 12 bytes, each tensor info at least 24.
    if n_kv * 12 + n_tensors * 24 > size:
        raise CheckpointError(
            f"corrupt GGUF header: claims {n_tensors} tensors and {n_kv} metadata entries, "
            f"more than {size} bytes can hold",
            path,
        )
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cursor.string("metadata key", _MAX_NAME)
        metadata[key] = _value(cursor, cursor.unpack("I", f"type of {quote(key)}"), key)
    infos = []
    for _ in range(n_tensors):
        name = cursor.string("tensor name", _MAX_NAME)
        n_dims = cursor.unpack("I", f"dims of {quote(name)}")
        if n_dims > _MAX_DIMS:
            raise CheckpointError(f"tensor {quote(name)} claims {n_dims} dimensions", path)
        ne = tuple(cursor.unpack("Q", f"dims of {quote(name)}") for _ in range(n_dims))
        type_id = cursor.unpack("I", f"type of {quote(name)}")
        offset = cursor.unpack("Q", f"offset of {quote(name)}")
        infos.append((name, ne, type_id, offset))
    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise CheckpointError(f"corrupt GGUF header: alignment {alignment!r}", path)
    data_start = -(-cursor.pos // alignment) * alignment
    tensors: dict[str, GGUFTensor] = {}
    for name, ne, type_id, offset in infos:
        if name in tensors:
            raise CheckpointError(f"GGUF file holds tensor {quote(name)} twice", path)
        type_name, block, type_size = _type_of(type_id, name, path)
        numel = math.prod(ne)
        if ne and ne[0] % block:
            raise CheckpointError(
                f"tensor {quote(name)}: row length {ne[0]} is not a multiple of "
                f"{type_name}'s block of {block}",
                path,
            )
        nbytes = numel // block * type_size
        start = data_start + offset
        if start + nbytes > size:
            raise CheckpointError(
                f"tensor {quote(name)} ({type_name}, shape {tuple(reversed(ne))}) claims "
                f"{nbytes} bytes at offset {offset}, beyond the end of the {size}-byte file",
                path,
            )
        tensors[name] = GGUFTensor(name, ne, type_id, type_name, start, nbytes)
    _refuse_partial_overlaps(tensors, path)
    return GGUFHeader(version, metadata, tensors, data_start)


def _refuse_partial_overlaps(tensors: dict[str, GGUFTensor], path: Path) -> None:
    """Two tensors whose data ranges overlap without being the same range: no writer makes
    that (a damaged or crafted file), and writing one would change the other."""
    spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in tensors.values() if t.nbytes)
    for (start_a, end_a, a), (start_b, end_b, b) in itertools.pairwise(spans):
        if start_b < end_a and (start_a, end_a) != (start_b, end_b):
            raise CheckpointError(
                f"corrupt GGUF: the data of tensors {quote(a)} (bytes {start_a}–{end_a}) and "
                f"{quote(b)} (bytes {start_b}–{end_b}) overlap",
                path,
            )


def _dtype_label(tensor: GGUFTensor) -> str:
    return _PLAIN.get(tensor.type_name) or tensor.type_name + DEQUANTIZED


def _unsupported_reason(tensor: GGUFTensor) -> str | None:
    """Why a tensor of a known type cannot be read: gguf has no dequantizer for its type."""
    import numpy as np
    from gguf import quants
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    if tensor.type_name in _PLAIN:
        return None
    qtype = GGMLQuantizationType(tensor.type_id)
    try:  # one zero block: cheap, and asks gguf itself
        quants.dequantize(np.zeros((1, GGML_QUANT_SIZES[qtype][1]), dtype=np.uint8), qtype)
    except NotImplementedError:
        return f"GGML type {tensor.type_name}: the gguf package has no dequantizer for it"
    return None


def _load(path: Path, tensor: GGUFTensor, index: int | None = None) -> Any:
    """One tensor as torch (:func:`_load_array`'s values)."""
    return to_torch(_load_array(path, tensor, index))


def _load_array(path: Path, tensor: GGUFTensor, index: int | None = None) -> Any:
    """One tensor as NumPy: plain types as stored (bfloat16 as its bits, a
    :class:`sncli.arrays.BFloat16Array`), quantized ones dequantized to float32.

    With ``index``, only ``tensor[index]`` (one expert of a stack) is read: the slices of the
    outermost dimension are whole rows of blocks, ``nbytes / shape[0]`` bytes each."""
    import numpy as np
    from gguf import quants
    from gguf.constants import GGMLQuantizationType

    shape, offset, nbytes = tensor.shape, tensor.offset, tensor.nbytes
    if index is not None:
        nbytes //= shape[0]
        shape, offset = shape[1:], offset + index * nbytes
    if nbytes == 0:
        plain = _PLAIN.get(tensor.type_name, "float32")
        if plain == "bfloat16":
            return bfloat16_from_bits(np.zeros(shape, dtype=np.uint16))
        return np.zeros(shape, dtype=np.dtype(plain))
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        raw = np.frombuffer(data, dtype=np.uint8, count=nbytes, offset=offset).copy()
    plain = _PLAIN.get(tensor.type_name)
    if plain == "bfloat16":
        return bfloat16_from_bits(raw.view(np.uint16)).reshape(shape)
    if plain is not None:
        return (
            raw.view(np.dtype(plain).newbyteorder("<"))
            .astype(np.dtype(plain), copy=False)
            .reshape(shape)
        )
    rows = raw.reshape(-1, raw.size // max(1, math.prod(shape[:-1])))
    values = quants.dequantize(rows, GGMLQuantizationType(tensor.type_id))
    return np.ascontiguousarray(values, dtype=np.float32).reshape(shape)


def read_gguf(path: Path) -> FormatContents:
    """A GGUF file's tensors (shapes as PyTorch would give them), read one at a time."""
    try:
        header = read_gguf_header(path)
    except CheckpointError:
        raise
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read GGUF file: {describe(exc)}", path) from exc
    tensors = {name: (t.shape, _dtype_label(t)) for name, t in header.tensors.items()}
    unsupported = {
        name: reason
        for name, t in header.tensors.items()
        if (reason := _unsupported_reason(t)) is not None
    }
    notes = []
    quantized = sorted({t.type_name for t in header.tensors.values() if t.type_name not in _PLAIN})
    if quantized:
        notes.append(
            f"quantized tensors ({', '.join(quantized)}) are dequantized to float32 with the gguf "
            "package: their σ is that of the dequantized weight"
        )
    return FormatContents(
        format="gguf",
        files=[path],
        tensors=tensors,
        load=lambda name: _load(path, header.tensors[name]),
        notes=notes,
        unsupported=unsupported,
        metadata=dict(header.metadata),
        load_slice=lambda name, index: _load(path, header.tensors[name], index),
        load_array=lambda name: _load_array(path, header.tensors[name]),
        load_slice_array=lambda name, index: _load_array(path, header.tensors[name], index),
    )


#: GGML types ``normalize`` can write back: the scaled weight is stored exactly as cast.
WRITABLE_TYPES = frozenset({"F32", "F16", "BF16"})


def gguf_write_refusal(path: Path, names: list[str]) -> str | None:
    """Why the tensors ``names`` cannot be rewritten in this GGUF file, or None when they can.

    Quantized tensors are refused: writing a scaled weight back would re-quantize it, and the
    rounding of a block format can push σ back above the target (sncli does not re-quantize).
    """
    header = read_gguf_header(path)
    quantized = [n for n in names if header.tensors[n].type_name not in WRITABLE_TYPES]
    if not quantized:
        return None
    types = sorted({header.tensors[n].type_name for n in quantized})
    return (
        f"{len(quantized)} selected GGUF tensor(s) are quantized ({', '.join(types)}; e.g. "
        f"{quote(quantized[0])}): writing the scaled weight would re-quantize it, and quantization "
        "can push σ back above the target, so sncli writes only F32/F16/BF16 tensors. Leave them "
        "out with --exclude, or normalize the unquantized model and quantize it afterwards"
    )


def write_edited_gguf(source: Path, handle: BinaryIO, new: dict[str, Any]) -> None:
    """Copy ``source`` to ``handle`` with the data of the F32/F16/BF16 tensors in ``new``
    replaced. Shapes and types are unchanged, so header, metadata and every offset are kept
    byte for byte. ``new`` holds torch tensors or NumPy arrays (bfloat16 as
    :class:`sncli.arrays.BFloat16Array`: no torch)."""
    header = read_gguf_header(source)
    patches = []
    for name, tensor in new.items():
        info = header.tensors[name]
        expected = _PLAIN.get(info.type_name)
        array = is_array(tensor)
        dtype = dtype_name(tensor) if array else str(tensor.dtype).removeprefix("torch.")
        if info.type_name not in WRITABLE_TYPES or dtype != expected or tensor.shape != info.shape:
            raise CheckpointError(
                f"cannot write tensor {quote(name)} as {info.type_name} {info.shape} "
                f"(got {dtype} {tuple(tensor.shape)})",
                source,
            )
        data = _raw_bytes(tensor, array)
        if len(data) != info.nbytes:
            raise CheckpointError(f"tensor {quote(name)}: size changed on writing", source)
        patches.append((info.offset, data))
    with source.open("rb") as original:
        copy_range(original, 0, regular_file_size(source), handle)
    for offset, data in patches:
        handle.seek(offset)
        handle.write(data)
    handle.seek(0, 2)


def _raw_bytes(tensor: Any, array: bool) -> bytes:
    """A tensor's or array's data in C order, as stored (little-endian machines: GGUF's order)."""
    if array:
        import numpy as np

        return np.ascontiguousarray(tensor.view(np.ndarray)).tobytes()
    import torch

    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
