"""TorchScript archives (``torch.jit.save``): their parameter tensors, read without running them.

``torch.load`` hands such a file to ``torch.jit.load``, which compiles and runs the archive's
``code/``. sncli never does: it reads the archive's ``data.pkl`` (the module tree: attribute
names and tensors) and ``constants.pkl`` (tensors a frozen graph inlined) with PyTorch's
weights-only unpickler, the one the ``.pt`` reader uses. The script classes the pickle names
(``__torch__.…``) become inert placeholders that only collect their attributes; any other
global outside PyTorch's allowlist is refused, as for ``.pt`` files. Storages come from the
zip's data records through a memory map, after their sizes are checked against the file. The
graph itself (``code/``) is not analysed: layer kinds come from the parameter names, as for a
state dict.
"""

from __future__ import annotations

import io
import mmap
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sncli.errors import CheckpointError, UnsafePickleError
from sncli.formats.common import FormatContents, describe, quote, regular_file_size, shown_names
from sncli.formats.pickle_scan import (
    PLACEHOLDER_ATTR,
    blocked_names,
    dangerous_names,
    inert_placeholder,
    scan_pickles,
)
from sncli.formats.torch_zip import storage_crc32
from sncli.messages import clean_text

#: Deflate expands at most ~1032×: a member claiming more was not written by zlib.
_DEFLATE_RATIO = 1100
_MAX_DEPTH = 200
SCRIPT_PREFIX = "__torch__."


def _identity(value: Any, *_type: Any) -> Any:
    """``torch.jit._pickle``'s list builders and type tags return their argument: so does this."""
    return value


#: Helpers TorchScript pickles call to tag typed lists; each only returns its first argument.
#: They are replaced by ``_identity`` (nothing of torch.jit is called).
JIT_HELPERS = tuple(
    f"torch.jit._pickle.{name}"
    for name in (
        "build_intlist",
        "build_doublelist",
        "build_boollist",
        "build_tensorlist",
        "restore_type_tag",
    )
)


@dataclass
class _Archive:
    path: Path
    root: str
    records: dict[str, zipfile.ZipInfo]
    data_starts: dict[str, int] = field(default_factory=dict)


def _check(path: Path) -> _Archive:
    """Structure and sizes: every member within the file, data records stored (not deflated)."""
    size = regular_file_size(path)
    with zipfile.ZipFile(path) as archive, path.open("rb") as raw:
        infos = archive.infolist()
        roots = {i.filename.split("/", 1)[0] for i in infos if i.filename.endswith("/data.pkl")}
        if len(roots) != 1:
            raise CheckpointError("TorchScript archive without a single data.pkl", path)
        root = roots.pop()
        records = {}
        starts = {}
        for info in infos:
            stored = info.compress_type == zipfile.ZIP_STORED
            limit = info.compress_size if stored else info.compress_size * _DEFLATE_RATIO + 4096
            if info.file_size > limit or info.header_offset + info.compress_size > size:
                raise CheckpointError(
                    f"damaged zip archive: member {quote(info.filename)} claims "
                    f"{info.file_size} bytes, more than the file can hold",
                    path,
                )
            records[info.filename] = info
            if stored and info.filename.startswith((f"{root}/data/", f"{root}/constants/")):
                raw.seek(info.header_offset)
                local = raw.read(30)
                if len(local) < 30 or local[:4] != b"PK\x03\x04":
                    raise zipfile.BadZipFile(f"bad local header for {info.filename}")
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                start = info.header_offset + 30 + name_len + extra_len
                if start + info.file_size > size:
                    raise CheckpointError(f"truncated record {quote(info.filename)}", path)
                starts[info.filename] = start
    return _Archive(path, root, records, starts)


def _refuse_unsafe(path: Path, pickle: bytes, what: str) -> list[str]:
    """The ``__torch__`` classes a pickle names; refuse any other global outside the allowlist."""
    scan = scan_pickles(io.BytesIO(pickle), 1)
    unsafe = scan.unsafe()
    script = [n for n in unsafe if n.startswith(SCRIPT_PREFIX) or n in JIT_HELPERS]
    other = [n for n in unsafe if n not in script]
    if other or not scan.complete:
        dangerous = dangerous_names(other) or blocked_names(other)
        warning = (
            f" {shown_names(dangerous)} can run code: the file is probably malicious."
            if dangerous
            else ""
        )
        named = shown_names(other) if other else "globals its opcodes hide"
        raise UnsafePickleError(
            f"refused to read the TorchScript archive: its {what} references {named}, outside "
            f"PyTorch's weights-only allowlist.{warning} Nothing from the file was run; "
            "if you trust its source, save the model's state_dict as safetensors",
            path,
        )
    return script


class _Storages:
    """``persistent_load`` for one pickle: storages as views of a private memory map."""

    def __init__(self, archive: _Archive, folder: str, buffer: Any) -> None:
        self.archive, self.folder, self.buffer = archive, folder, buffer
        self.crcs: dict[int, tuple[str, int]] = {}

    def __call__(self, saved_id: Any) -> Any:
        import torch

        if not isinstance(saved_id, tuple) or len(saved_id) != 5 or saved_id[0] != "storage":
            raise ValueError(f"unexpected persistent id {clean_text(repr(saved_id), 60)}")
        _, storage_type, key, _location, numel = saved_id
        dtype = torch.uint8 if storage_type is torch.UntypedStorage else storage_type.dtype
        name = f"{self.archive.root}/{self.folder}/{key}"
        info = self.archive.records.get(name)
        if info is None:
            raise ValueError(f"storage record {name} is missing")
        nbytes = int(numel) * torch._utils._element_size(dtype)
        if info.file_size != nbytes:
            raise ValueError(f"storage record {name} holds {info.file_size} bytes, not {nbytes}")
        start = self.archive.data_starts.get(name)
        if start is None:
            raise ValueError(f"storage record {name} is compressed; torch.jit.save stores them")
        if nbytes == 0:
            untyped = torch.UntypedStorage(0)
        else:
            view = torch.frombuffer(self.buffer, dtype=torch.uint8, count=nbytes, offset=start)
            untyped = view.untyped_storage()
            self.crcs[untyped.data_ptr()] = (name, info.CRC)
        return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)


def _unpickle(archive: _Archive, pickle_name: str, folder: str, buffer: Any) -> tuple[Any, Any]:
    import torch
    from torch import _weights_only_unpickler as wou

    info = archive.records.get(f"{archive.root}/{pickle_name}")
    if info is None:
        return None, None
    with zipfile.ZipFile(archive.path) as zipped:
        pickle = zipped.read(info)  # CRC-checked
    script = _refuse_unsafe(archive.path, pickle, pickle_name)
    placeholders = [
        (_identity if name in JIT_HELPERS else inert_placeholder(name), name) for name in script
    ]
    storages = _Storages(archive, folder, buffer)
    unpickler = wou.Unpickler(io.BytesIO(pickle), encoding="utf-8")
    unpickler.persistent_load = storages  # type: ignore[method-assign]
    with torch.serialization.safe_globals(placeholders):
        return unpickler.load(), storages


def _walk(value: Any, prefix: str, depth: int = 0) -> Iterator[tuple[str, Any]]:
    """(dotted name, tensor) for every tensor under a module tree of placeholders."""
    import torch

    if depth > _MAX_DEPTH:
        raise ValueError("module tree nested too deeply")
    if isinstance(value, torch.Tensor):
        yield prefix, value
        return
    if isinstance(value, dict) and PLACEHOLDER_ATTR in getattr(value, "__dict__", {}):
        items = [(k, v) for k, v in value.__dict__.items() if k != PLACEHOLDER_ATTR]
    elif isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, (list, tuple)):
        items = list(enumerate(value))
    else:
        return
    for key, item in items:
        name = f"{prefix}.{key}" if prefix else str(key)
        yield from _walk(item, name, depth + 1)


def read_torchscript(path: Path) -> FormatContents:
    """A TorchScript archive's tensors by attribute path (``fc.weight``), its code never run."""
    from sncli.formats.torch_file import unsupported_reason

    try:
        archive = _check(path)
        with path.open("rb") as handle:
            buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
        data, data_storages = _unpickle(archive, "data.pkl", "data", buffer)
        constants, constant_storages = _unpickle(archive, "constants.pkl", "constants", buffer)
        tensors = dict(_walk(data, ""))
        for index, tensor in _walk_constants(constants):
            tensors[f"constants.{index}"] = tensor
    except CheckpointError:
        raise
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # any failure on a hostile pickle is one line, never a traceback
        raise CheckpointError(
            f"cannot read the TorchScript archive: {describe(exc)}", path
        ) from exc
    if not tensors:
        raise CheckpointError("TorchScript archive holds no tensors", path)
    crcs = {**data_storages.crcs, **(constant_storages.crcs if constant_storages else {})}
    verified: set[int] = set()

    def load(name: str) -> Any:
        tensor = tensors[name]
        pointer = tensor.untyped_storage().data_ptr()
        record = crcs.get(pointer)
        if record is not None and record[1] and pointer not in verified:
            if storage_crc32(tensor.untyped_storage()) != record[1]:
                raise CheckpointError(
                    f"damaged TorchScript archive: record {quote(record[0])} of tensor "
                    f"{quote(name)} fails its CRC-32 check",
                    path,
                )
            verified.add(pointer)
        return tensor.detach()

    unsupported = {n: r for n, t in tensors.items() if (r := unsupported_reason(t)) is not None}
    notes = [
        "TorchScript archive: its parameters were read from data.pkl without running the "
        "archive's code; the graph (code/) was not analysed, so layers are told by name and "
        "shape as in a state dict"
    ]
    if any(n.startswith("constants.") for n in tensors):
        notes.append(
            "tensors of constants.pkl (inlined by torch.jit.freeze) are listed as constants.N: "
            "their names are lost, so they are not classified as layers"
        )
    return FormatContents(
        format="torchscript",
        files=[path],
        tensors={
            n: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in tensors.items()
        },
        load=load,
        notes=notes,
        unsupported=unsupported,
    )


def _dtype_name(tensor: Any) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _walk_constants(constants: Any) -> Iterator[tuple[int, Any]]:
    import torch

    if isinstance(constants, (list, tuple)):
        for index, value in enumerate(constants):
            if isinstance(value, torch.Tensor):
                yield index, value
