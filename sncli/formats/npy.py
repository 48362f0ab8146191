"""NumPy ``.npy`` files and ``.npz`` archives, read without pickle (``allow_pickle=False``).

Every header's claims (shape × itemsize) are checked against the bytes the file or zip member
really holds before anything is allocated; arrays are read one at a time (``.npy`` and stored
``.npz`` members from a memory map, compressed members by decompressing that member alone, at
most the size its header claims). Object arrays would need pickle: they are refused.
"""

from __future__ import annotations

import math
import struct
import tokenize
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sncli.arrays import to_torch
from sncli.errors import CheckpointError
from sncli.formats.common import FormatContents, describe, quote, regular_file_size

#: numpy's own default limit on a header's length (``max_header_size``).
MAX_HEADER = 10_000
#: Deflate expands at most ~1032×: a member claiming more than this was not written by zlib.
_DEFLATE_RATIO = 1100
_MAX_RANK = 64


@dataclass(frozen=True)
class ArrayHeader:
    """A ``.npy`` header: what the array claims to be, and where its data starts."""

    shape: tuple[int, ...]
    fortran: bool
    dtype: Any  # numpy.dtype
    data_offset: int  # from the start of the .npy bytes

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _parse_header(handle: BinaryIO, what: str, path: Path) -> ArrayHeader:
    """Read and check a .npy header from ``handle`` (positioned at the magic string)."""
    from numpy.lib import format as npformat

    try:
        major, _minor = npformat.read_magic(handle)
        if major == 1:
            read = npformat.read_array_header_1_0
        elif major in (2, 3):
            read = npformat.read_array_header_2_0
        else:
            raise ValueError(f"unsupported .npy format version {major}")
        shape, fortran, dtype = read(handle, max_header_size=MAX_HEADER)
        offset = handle.tell()
    except (ValueError, OSError, EOFError, SyntaxError, TypeError, struct.error) as exc:
        raise CheckpointError(f"corrupt .npy header{what}: {describe(exc)}", path) from exc
    except (tokenize.TokenError, RecursionError, MemoryError) as exc:
        # numpy tokenizes the header dict: an unclosed bracket or string ends the text early.
        raise CheckpointError(
            f"corrupt .npy header{what}: the header dict is not valid Python literal syntax "
            "(an unclosed bracket or string)",
            path,
        ) from exc
    if dtype.hasobject:
        raise CheckpointError(
            f"{what.strip(' ()') or 'the array'} is an object array, which only pickle can "
            "read; refused (sncli never unpickles NumPy files — save numeric arrays instead)",
            path,
        )
    if len(shape) > _MAX_RANK or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise CheckpointError(f"invalid shape in .npy header{what}", path)
    return ArrayHeader(tuple(shape), bool(fortran), dtype, offset)


def _torch_dtype_name(dtype: Any) -> str | None:
    """The torch dtype name for a numpy dtype torch can hold, or None."""
    if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "biufc":
        return None
    name = str(dtype.newbyteorder("="))
    allowed = {
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
        "complex64",
        "complex128",
    }
    return name if name in allowed else None


def _describe_dtype(dtype: Any) -> str:
    return f"NumPy dtype {dtype.str} has no PyTorch equivalent"


def _as_array(array: Any) -> Any:
    """A native-endian, C-ordered, writable copy of ``array`` (a memory map is read-only;
    torch wants native byte order)."""
    import numpy as np

    return np.array(array, dtype=array.dtype.newbyteorder("="), order="C")


def _entry(header: ArrayHeader) -> tuple[tuple[int, ...], str]:
    name = _torch_dtype_name(header.dtype)
    return header.shape, name if name is not None else header.dtype.str


def read_npy(path: Path) -> FormatContents:
    """One array in a ``.npy`` file, named after the file (``fc1.npy`` → ``fc1``)."""
    size = regular_file_size(path)
    with path.open("rb") as handle:
        header = _parse_header(handle, "", path)
    expected = header.data_offset + header.nbytes
    if expected != size:
        state = "truncated" if expected > size else "padded"
        raise CheckpointError(
            f"{state} .npy file: its header claims {header.nbytes} bytes of data "
            f"({header.dtype.str} × {header.shape}), the file holds {size - header.data_offset}",
            path,
        )
    name = path.stem
    unsupported = {}
    if _torch_dtype_name(header.dtype) is None:
        unsupported[name] = _describe_dtype(header.dtype)

    def load_array(_key: str) -> Any:
        return _as_array(_memmap(path, header, header.data_offset))

    return FormatContents(
        format="npy",
        files=[path],
        tensors={name: _entry(header)},
        load=lambda key: to_torch(load_array(key)),
        load_array=load_array,
        notes=[f"NumPy .npy file: one array, named '{name}' after the file"],
        unsupported=unsupported,
    )


def _memmap(path: Path, header: ArrayHeader, offset: int) -> Any:
    import numpy as np

    if header.nbytes == 0:
        return np.zeros(header.shape, dtype=header.dtype)
    return np.memmap(
        path,
        dtype=header.dtype,
        mode="r",
        offset=offset,
        shape=header.shape,
        order="F" if header.fortran else "C",
    )


@dataclass(frozen=True)
class _Member:
    info: zipfile.ZipInfo
    header: ArrayHeader
    data_start: int | None  # absolute file offset of the array data, for stored members


def _member_name(filename: str, path: Path) -> str:
    """The array name of an npz member (``fc.weight.npy`` → ``fc.weight``); no path escapes."""
    parts = filename.replace("\\", "/").split("/")
    if filename.startswith(("/", "\\")) or ".." in parts or "\0" in filename:
        raise CheckpointError(
            f"npz member name {quote(filename)} points outside the archive; refused", path
        )
    return filename[: -len(".npy")] if filename.endswith(".npy") else filename


def _stored_data_start(handle: BinaryIO, info: zipfile.ZipInfo) -> int:
    handle.seek(info.header_offset)
    local = handle.read(30)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"bad local header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _scan_npz(path: Path, size: int) -> dict[str, _Member]:
    members: dict[str, _Member] = {}
    with zipfile.ZipFile(path) as archive, path.open("rb") as raw:
        for info in archive.infolist():
            if info.is_dir():
                continue
            name = _member_name(info.filename, path)
            what = f" (member {quote(info.filename)})"
            stored = info.compress_type == zipfile.ZIP_STORED
            limit = info.compress_size if stored else info.compress_size * _DEFLATE_RATIO + 4096
            if info.file_size > limit or info.header_offset + info.compress_size > size:
                raise CheckpointError(
                    f"damaged npz archive: member {quote(info.filename)} claims "
                    f"{info.file_size} bytes, more than the file can hold",
                    path,
                )
            if name in members:
                raise CheckpointError(f"npz archive holds {quote(name)} twice", path)
            with archive.open(info) as stream:
                header = _parse_header(stream, what, path)  # type: ignore[arg-type]
            if header.data_offset + header.nbytes != info.file_size:
                raise CheckpointError(
                    f"npz member {quote(info.filename)}: its header claims {header.nbytes} "
                    f"bytes of data, the member holds {info.file_size - header.data_offset}",
                    path,
                )
            start = _stored_data_start(raw, info) + header.data_offset if stored else None
            if start is not None and start + header.nbytes > size:
                raise CheckpointError(f"truncated npz archive{what}", path)
            members[name] = _Member(info, header, start)
    return members


def read_npz(path: Path) -> FormatContents:
    """Every array of a ``.npz`` archive (``numpy.savez``/``savez_compressed``), by its name."""
    size = regular_file_size(path)
    try:
        members = _scan_npz(path, size)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"damaged npz archive: {describe(exc)}", path) from exc
    except (EOFError, NotImplementedError, RuntimeError, zlib.error, struct.error) as exc:
        raise CheckpointError(f"damaged npz archive: {describe(exc)}", path) from exc
    if not members:
        raise CheckpointError("npz archive holds no arrays", path)
    unsupported = {
        name: _describe_dtype(m.header.dtype)
        for name, m in members.items()
        if _torch_dtype_name(m.header.dtype) is None
    }
    load_array = _npz_loader(path, members)
    return FormatContents(
        format="npz",
        files=[path],
        tensors={name: _entry(m.header) for name, m in members.items()},
        load=lambda key: to_torch(load_array(key)),
        load_array=load_array,
        unsupported=unsupported,
    )


def _npz_loader(path: Path, members: dict[str, _Member]) -> Callable[[str], Any]:
    def load(name: str) -> Any:
        member = members[name]
        header = member.header
        if member.data_start is not None:
            _check_crc(path, member)
            return _as_array(_memmap(path, header, member.data_start))
        return _as_array(_decompress(path, member))

    return load


def _check_crc(path: Path, member: _Member) -> None:
    """A stored member's CRC-32 (the memory map bypasses zipfile's check)."""
    import mmap

    info = member.info
    assert member.data_start is not None
    begin = member.data_start - member.header.data_offset
    crc = 0
    with path.open("rb") as handle:
        if info.file_size == 0:
            return
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            view = memoryview(data)
            try:
                for start in range(begin, begin + info.file_size, 1 << 24):
                    end = min(start + (1 << 24), begin + info.file_size)
                    crc = zlib.crc32(view[start:end], crc)
            finally:
                view.release()
    if crc != info.CRC:
        raise CheckpointError(
            f"damaged npz archive: member {quote(info.filename)} fails its CRC-32 check", path
        )


def _decompress(path: Path, member: _Member) -> Any:
    """A compressed member's array: exactly the bytes its header claims, CRC checked by zipfile."""
    import numpy as np

    header = member.header
    with zipfile.ZipFile(path) as archive, archive.open(member.info) as stream:
        stream.read(header.data_offset)
        data = bytearray(header.nbytes)
        view = memoryview(data)
        got = 0
        while got < header.nbytes:
            chunk = stream.read(min(1 << 24, header.nbytes - got))
            if not chunk:
                raise CheckpointError(
                    f"damaged npz archive: member {quote(member.info.filename)} ends early", path
                )
            view[got : got + len(chunk)] = chunk
            got += len(chunk)
        if stream.read(1):
            raise CheckpointError(
                f"damaged npz archive: member {quote(member.info.filename)} holds extra bytes",
                path,
            )
    array = np.frombuffer(data, dtype=header.dtype)
    return array.reshape(header.shape, order="F" if header.fortran else "C")
