"""torch.save zip archives: structure, size and CRC checks before torch reads them."""

from __future__ import annotations

import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sncli.errors import CheckpointError
from sncli.formats.common import describe, quote, regular_file_size

if TYPE_CHECKING:
    import torch


def _zip_records(archive: zipfile.ZipFile) -> tuple[str, list[zipfile.ZipInfo]]:
    """The root folder of a torch zip archive and its members."""
    infos = archive.infolist()
    pickles = [i for i in infos if i.filename.count("/") == 1 and i.filename.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise ValueError("no data.pkl record: not a torch.save archive")
    return pickles[0].filename.split("/", 1)[0], infos


def _read_record(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A zip member's bytes, CRC-checked unless the writer stored none (compute_crc32=False)."""
    if info.CRC != 0 or info.compress_type != zipfile.ZIP_STORED:
        return archive.read(info)
    with path.open("rb") as handle:
        handle.seek(info.header_offset)
        local = handle.read(30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile(f"bad local header for {info.filename}")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        handle.seek(info.header_offset + 30 + name_len + extra_len)
        data = handle.read(info.file_size)
    if len(data) != info.file_size:
        raise zipfile.BadZipFile(f"record {info.filename} is truncated")
    return data


@dataclass(frozen=True)
class ZipCheck:
    pickle: bytes
    record_crcs: dict[int, set[int]]
    #: False when a data record is compressed: torch's mmap path would read the compressed
    #: bytes as weights (silently), so such archives are read without mmap.
    mmap_ok: bool
    #: Each ``data/KEY`` record's (uncompressed size, compressed?), by KEY.
    records: dict[str, tuple[int, bool]] = field(default_factory=dict)


#: Bytes per element of the storage classes a torch.save pickle names.
_STORAGE_ITEMSIZE = {
    "Double": 8, "Float": 4, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Short": 2,
    "Char": 1, "Byte": 1, "Bool": 1, "ComplexDouble": 16, "ComplexFloat": 8, "QInt8": 1,
    "QUInt8": 1, "QInt32": 4, "QUInt4x2": 1, "QUInt2x4": 1,
}  # fmt: skip
#: A pickle needs a few hundred bytes per tensor; this much more leaves room for non-tensor
#: contents (hyper-parameters, optimizer scalars). A compressed data.pkl beyond it is refused.
PICKLE_ROOM = 64 * 1024 * 1024
PICKLE_BYTES_PER_RECORD = 1024


def check_record_sizes(
    path: Path, check: ZipCheck, storages: tuple[tuple[object, ...], ...]
) -> None:
    """Every data record must be the size its storage needs (numel × element size), as the
    pickle's persistent ids declare: a record claiming more would be read (and, compressed,
    inflated) for nothing."""
    for pid in storages:
        if len(pid) != 5 or pid[0] != "storage" or not isinstance(pid[2], str):
            continue
        kind, key, numel = pid[1], pid[2], pid[4]
        name = str(kind).rsplit(".", 1)[-1].removesuffix("Storage")
        itemsize = _STORAGE_ITEMSIZE.get(name)
        record = check.records.get(key)
        if itemsize is None or record is None or not isinstance(numel, int):
            continue
        if record[0] > numel * itemsize:
            raise CheckpointError(
                f"damaged zip archive: record data/{quote(key)} holds {record[0]} bytes, its "
                f"storage needs {numel * itemsize}",
                path,
            )


def check_zip(path: Path) -> ZipCheck:
    """Validate a torch zip archive before torch reads it: structure, sizes, data.pkl's CRC.

    Rejects TorchScript archives, members that claim to expand beyond what deflate can produce
    (zip bombs or lying headers: torch would allocate the claimed size) and a damaged data.pkl.
    """
    size = regular_file_size(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
                raise CheckpointError(
                    "is a TorchScript archive, not a state dict; save model.state_dict() instead",
                    path,
                )
            root, infos = _zip_records(archive)
            crcs: dict[int, set[int]] = {}
            records: dict[str, tuple[int, bool]] = {}
            mmap_ok = True
            for info in infos:
                stored = info.compress_type == zipfile.ZIP_STORED
                limit = info.compress_size if stored else info.compress_size * 1100 + 4096
                if info.file_size > limit or info.header_offset + info.compress_size > size:
                    raise CheckpointError(
                        f"damaged zip archive: member {quote(info.filename)} claims "
                        f"{info.file_size} bytes, more than the file can hold",
                        path,
                    )
                if info.filename.startswith(f"{root}/data/"):
                    mmap_ok = mmap_ok and stored
                    records[info.filename.removeprefix(f"{root}/data/")] = (
                        info.file_size,
                        not stored,
                    )
                    if info.CRC != 0:
                        crcs.setdefault(info.file_size, set()).add(info.CRC)
            byteorder = f"{root}/byteorder"
            native = "little" if struct.pack("=H", 1) == b"\x01\x00" else "big"
            if byteorder in names:
                order = _read_record(path, archive, archive.getinfo(byteorder))
                if order.decode(errors="replace") != native:
                    crcs = {}  # torch byte-swaps such storages in memory: CRCs no longer apply
            pickle_info = archive.getinfo(f"{root}/data.pkl")
            room = PICKLE_ROOM + PICKLE_BYTES_PER_RECORD * len(infos)
            if pickle_info.compress_type != zipfile.ZIP_STORED and pickle_info.file_size > room:
                raise CheckpointError(
                    f"damaged zip archive: data.pkl claims {pickle_info.file_size} bytes "
                    f"uncompressed, more than {len(records)} tensor records can need "
                    "(a decompression bomb?)",
                    path,
                )
            pickle = _read_record(path, archive, pickle_info)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"damaged zip archive: {describe(exc)}", path) from exc
    except (EOFError, NotImplementedError, RuntimeError, struct.error, zlib.error) as exc:
        raise CheckpointError(f"damaged zip archive: {describe(exc)}", path) from exc
    return ZipCheck(pickle, crcs, mmap_ok, records)


def storage_crc32(storage: torch.UntypedStorage) -> int:
    """CRC-32 of a storage's bytes, as a zip record of it carries."""
    import torch

    data = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (storage.nbytes(),), (1,))
    return zlib.crc32(memoryview(data.numpy()))
