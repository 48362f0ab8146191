"""safetensors: read and validate the header ourselves (before the safetensors library sees the
file, so a hostile header is a clear error, not an allocation or a crash), stream tensor data,
and serialise headers for the writer."""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import Mapping, Set
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from sncli.arrays import bfloat16_from_bits, is_array
from sncli.dtypes import FLOAT8_FORMATS, SAFETENSORS_DTYPES, TORCH_TO_SAFETENSORS, decode_float8
from sncli.errors import CheckpointError, WriteError
from sncli.formats.common import (
    copy_range,
    describe,
    quote,
    regular_file_size,
    show_value,
    strict_json_loads,
)

if TYPE_CHECKING:
    import torch

SAFETENSORS_MAX_HEADER = 100_000_000
#: The dtypes :meth:`SafetensorsStreamReader.read_array` returns as NumPy as stored; float8
#: (``FLOAT8_FORMATS``) it returns decoded to float32 (exact) by table lookup; float4/float6
#: not (None: torch's path, and sncli analyses neither).
NUMPY_DTYPES = frozenset(
    {"bool", "uint8", "int8", "int16", "uint16", "float16", "bfloat16", "int32", "uint32"}
    | {"float32", "int64", "uint64", "float64", "complex64"}
)


_MAX_DIM = 2**48


#: Most dimensions a safetensors tensor may have. PyTorch allows 64; more is a crafted header.
MAX_RANK = 64


#: Headers above this size are checked for a plausible count of JSON containers and strings
#: before ``json.loads``, so a crafted header cannot cost gigabytes to parse.
_STRUCTURE_CHECK_BYTES = 1_000_000


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated safetensors header."""

    tensors: dict[str, tuple[str, tuple[int, ...], tuple[int, int]]]
    metadata: dict[str, str] | None
    data_start: int


def _implausible_structure(raw: bytes) -> str | None:
    """Why a large header cannot be a real one, judged by counting bytes (no parsing).

    Parsing JSON costs tens of bytes of memory per container or string, so a crafted 100 MB
    header of ``[],[],…`` would take gigabytes. A real entry (``"name": {"dtype": "F32",
    "shape": [..], "data_offsets": [a, b]}``) spends at least ~12 bytes per bracket and ~4 per
    quote, even with brackets in its name; these limits leave a wide margin.
    """
    containers = raw.count(b"[") + raw.count(b"{")
    if containers > len(raw) // 10:
        return f"{containers} JSON arrays/objects in {len(raw)} bytes, far more than entries need"
    quotes = raw.count(b'"')
    if quotes > len(raw) // 3:
        return f"{quotes // 2} JSON strings in {len(raw)} bytes, far more than entries need"
    return None


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """Parse and validate a safetensors header without touching tensor data.

    Checks everything the format promises: the length prefix fits the file, the header is a JSON
    object without duplicate keys, every dtype is known, shapes are non-negative integers, and
    data offsets tile the data buffer exactly with byte lengths matching the shapes.
    """
    try:
        size = regular_file_size(path)
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError(
                    f"not a safetensors file: {size} bytes, too short for a header", path
                )
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > SAFETENSORS_MAX_HEADER:
                raise CheckpointError(
                    f"corrupt safetensors header: claims {header_len} bytes "
                    f"(limit {SAFETENSORS_MAX_HEADER})",
                    path,
                )
            if header_len > size - 8:
                raise CheckpointError(
                    f"truncated safetensors file: header claims {header_len} bytes "
                    f"but only {size - 8} follow",
                    path,
                )
            raw = handle.read(header_len)
    except OSError as exc:
        raise CheckpointError(f"cannot read file: {exc.strerror or exc}", path) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError("corrupt safetensors header: not UTF-8", path) from exc
    if not text.startswith("{"):
        raise CheckpointError("corrupt safetensors header: does not start with '{'", path)
    problem = _implausible_structure(raw) if header_len > _STRUCTURE_CHECK_BYTES else None
    if problem is not None:
        raise CheckpointError(f"corrupt safetensors header: {problem}", path)
    try:
        parsed = strict_json_loads(text)
    except ValueError as exc:
        raise CheckpointError(f"corrupt safetensors header: {describe(exc)}", path) from exc
    except RecursionError as exc:
        raise CheckpointError("corrupt safetensors header: nested too deeply", path) from exc
    if not isinstance(parsed, dict):
        raise CheckpointError("corrupt safetensors header: not a JSON object", path)

    data_start = 8 + header_len
    data_len = size - data_start
    metadata = parsed.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        raise CheckpointError(
            "corrupt safetensors header: __metadata__ must map strings to strings", path
        )

    tensors: dict[str, tuple[str, tuple[int, ...], tuple[int, int]]] = {}
    for name, entry in parsed.items():
        tensors[name] = _validate_entry(path, name, entry, data_len)

    position = 0
    for name, (_, _, (begin, end)) in sorted(tensors.items(), key=lambda item: item[1][2]):
        if begin != position:
            problem = "overlaps another tensor" if begin < position else "leaves a gap before it"
            raise CheckpointError(
                f"corrupt safetensors header: tensor {quote(name)} {problem} (offset {begin})",
                path,
            )
        position = end
    if position != data_len:
        raise CheckpointError(
            f"truncated or padded safetensors file: tensors cover {position} bytes "
            f"but the data section has {data_len}",
            path,
        )
    return SafetensorsHeader(tensors=tensors, metadata=metadata, data_start=data_start)


def _validate_entry(
    path: Path, name: str, entry: Any, data_len: int
) -> tuple[str, tuple[int, ...], tuple[int, int]]:
    def bad(problem: str) -> CheckpointError:
        return CheckpointError(f"corrupt safetensors header: tensor {quote(name)} {problem}", path)

    if not isinstance(entry, dict):
        raise bad("is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise bad(f"has unknown dtype {show_value(dtype, 40)}")
    if not isinstance(shape, list) or len(shape) > MAX_RANK:
        raise bad(f"has an invalid shape {show_value(shape)}")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < _MAX_DIM for d in shape):
        raise bad(f"has an invalid shape {show_value(shape)}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise bad(f"has invalid data_offsets {show_value(offsets)}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        raise bad(
            f"has data_offsets {show_value(offsets)} outside the {data_len}-byte data section"
        )
    bits = SAFETENSORS_DTYPES[dtype][0]
    expected_bits = math.prod(shape) * bits  # at most 64 factors below 2**48: cheap
    if expected_bits != 8 * (end - begin):
        raise bad(
            f"has shape {show_value(shape)} ({dtype}) that does not match its {end - begin} bytes"
        )
    return dtype, tuple(shape), (begin, end)


class SafetensorsStreamReader:
    """Reads tensor data with ``readinto`` into fresh buffers, one tensor at a time.

    Not through ``safe_open``'s memory map: reading and converting every tensor of a 1.0 GB bf16
    file through ``safe_open`` peaked at 1.25 GB RSS (the file's pages stay resident), through
    ``readinto`` at 0.32 GB (bench/README.md).
    """

    def __init__(self) -> None:
        self._headers: dict[Path, Any] = {}
        self._files: dict[Path, Any] = {}

    def read(self, file: Path, key: str) -> torch.Tensor:
        return self._read(file, key, None)

    def read_slice(self, file: Path, key: str, index: int) -> torch.Tensor:
        """``read(file, key)[index]``, reading only that slice's bytes (an expert of a stack)."""
        return self._read(file, key, index)

    def read_array(self, file: Path, key: str) -> Any:
        """``read(file, key)`` as NumPy, without torch (bfloat16 as a
        :class:`sncli.arrays.BFloat16Array`, float8 decoded to float32); None for a dtype
        NumPy cannot hold (float4, float6)."""
        return self._read_array(file, key, None)

    def read_slice_array(self, file: Path, key: str, index: int) -> Any:
        """``read_slice`` as NumPy (None as for :meth:`read_array`)."""
        return self._read_array(file, key, index)

    def _read(self, file: Path, key: str, index: int | None) -> torch.Tensor:
        import torch

        code, shape, buffer = self._read_bytes(file, key, index)
        dtype = getattr(torch, SAFETENSORS_DTYPES[code][1])
        if buffer.size == 0:  # from_numpy gives an empty array stride 0, which view() refuses
            return torch.empty(shape, dtype=dtype)
        return torch.from_numpy(buffer).view(dtype).reshape(shape)

    def _read_array(self, file: Path, key: str, index: int | None) -> Any:
        import numpy as np

        code, _, _ = self._header(file).tensors[key]
        name = SAFETENSORS_DTYPES[code][1]
        if name not in NUMPY_DTYPES and name not in FLOAT8_FORMATS:
            return None
        code, shape, buffer = self._read_bytes(file, key, index)
        if name in FLOAT8_FORMATS:
            return decode_float8(buffer, name).reshape(shape)
        if name == "bfloat16":
            return bfloat16_from_bits(buffer.view(np.uint16)).reshape(shape)
        return buffer.view(np.dtype(name)).reshape(shape)

    def _header(self, file: Path) -> SafetensorsHeader:
        header = self._headers.get(file)
        if header is None:
            header = self._headers[file] = read_safetensors_header(file)
            self._files[file] = file.open("rb", buffering=0)
        return header

    def _read_bytes(self, file: Path, key: str, index: int | None) -> tuple[str, tuple, Any]:
        """(dtype code, shape, the bytes as a fresh NumPy uint8 array) of a tensor or slice."""
        import numpy as np

        header = self._header(file)
        code, shape, (begin, end) = header.tensors[key]
        if index is not None:
            step = (end - begin) // shape[0]
            begin, end, shape = begin + index * step, begin + (index + 1) * step, shape[1:]
        buffer = np.empty(end - begin, dtype=np.uint8)
        handle = self._files[file]
        handle.seek(header.data_start + begin)
        view = memoryview(buffer)
        done = 0
        while done < len(view):
            count = handle.readinto(view[done:])
            if not count:
                raise CheckpointError(f"file ended while reading tensor {key!r}", file)
            done += count
        return code, shape, buffer

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()


def safetensors_header_bytes(
    entries: list[tuple[str, str, tuple[int, ...], int]], metadata: dict[str, str] | None
) -> bytes:
    """Serialise a header: 8-byte length, compact JSON, space padding to an 8-byte boundary.

    ``entries`` are (name, dtype code, shape, byte length) in the order data will be written.
    """
    header: dict[str, object] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    for name, code, shape, length in entries:
        header[name] = {
            "dtype": code,
            "shape": list(shape),
            "data_offsets": [offset, offset + length],
        }
        offset += length
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)
    return len(text).to_bytes(8, "little") + text


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw little-endian bytes of a torch tensor or a NumPy array in C order (a bfloat16
    :class:`sncli.arrays.BFloat16Array` as its bits): no torch for an array."""
    if sys.byteorder != "little":
        raise WriteError("writing safetensors needs a little-endian machine")
    if is_array(tensor):
        import numpy as np

        return np.ascontiguousarray(tensor.view(np.ndarray)).tobytes()
    import torch

    flat = tensor.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def write_edited_safetensors(
    source: Path,
    handle: BinaryIO,
    new: Mapping[str, torch.Tensor],
    *,
    renames: Mapping[str, str],
    dropped: Set[str],
    metadata: Mapping[str, str],
    same_layout: bool = False,
) -> None:
    """Write ``source`` to ``handle`` with tensors replaced (``new``), renamed or dropped.

    Every other tensor is copied byte for byte in its original order; ``__metadata__`` is kept and
    updated with ``metadata`` (an absent one stays absent when there is nothing to add).
    With ``same_layout`` every replacement keeps its source's dtype and shape, so ``new`` is
    read once per key, in file order, while writing: a lazy mapping can then compute one
    tensor at a time (memory of one tensor, not of the file).
    """
    header = read_safetensors_header(source)
    merged = {**(header.metadata or {}), **metadata}
    ordered = sorted(header.tensors.items(), key=lambda item: item[1][2][0])
    entries: list[tuple[str, str, tuple[int, ...], int]] = []
    for name, (code, shape, (begin, end)) in ordered:
        if name in dropped:
            continue
        if name in new and not same_layout:
            tensor = new[name]
            code = TORCH_TO_SAFETENSORS[str(tensor.dtype).removeprefix("torch.")]
            shape = tuple(tensor.shape)
            length = tensor.numel() * tensor.element_size()
        else:
            length = end - begin
        entries.append((renames.get(name, name), code, shape, length))
    keep_metadata = merged if (header.metadata is not None or merged) else None
    handle.write(safetensors_header_bytes(entries, keep_metadata))
    with source.open("rb") as original:
        for name, (_, _, (begin, end)) in ordered:
            if name in dropped:
                continue
            if name in new:
                data = tensor_bytes(new[name])
                if same_layout and len(data) != end - begin:
                    raise WriteError(f"replacement for {name!r} changed its size", source)
                handle.write(data)
            else:
                copy_range(original, header.data_start + begin, end - begin, handle)
