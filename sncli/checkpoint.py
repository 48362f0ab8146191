"""Open checkpoints of every supported format and read their tensors one at a time.

Supported: safetensors (single file, a folder, or sharded with ``*.index.json``) and PyTorch
``torch.save`` files (zip or legacy, single or sharded). Shapes and dtypes of safetensors files come
from a header we validate ourselves before the safetensors library sees the file, so a hostile
header yields a clear error instead of an allocation or a crash. PyTorch files are only ever read
with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import struct
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sncli.errors import CheckpointError, UnsafePickleError

if TYPE_CHECKING:
    import torch

SAFETENSORS_MAX_HEADER = 100_000_000
ZIP_MAGIC = b"PK\x03\x04"
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")

#: Wrapper keys tried in this order when a PyTorch file holds more than a bare state dict.
#: The raw weights come first (``state_dict``, ``model``, ``module``), then EMA copies
#: (timm's ``model_ema``/``state_dict_ema``, ``ema``), then ``net``. Unlike timm, which prefers
#: EMA weights, sncli reports the weights training produced unless ``--key`` says otherwise;
#: the note on stderr names the key used and the other candidates.
WRAPPER_KEYS = ("state_dict", "model", "module", "model_ema", "state_dict_ema", "ema", "net")
#: Prefixes removed from display names when every key carries them (DataParallel, torch.compile).
STRIPPABLE_PREFIXES = ("module.", "_orig_mod.")

#: safetensors dtype code -> (bits per element, torch dtype name).
SAFETENSORS_DTYPES: dict[str, tuple[int, str]] = {
    "BOOL": (8, "bool"),
    "U8": (8, "uint8"),
    "I8": (8, "int8"),
    "F8_E5M2": (8, "float8_e5m2"),
    "F8_E4M3": (8, "float8_e4m3fn"),
    "F8_E4M3FNUZ": (8, "float8_e4m3fnuz"),
    "F8_E5M2FNUZ": (8, "float8_e5m2fnuz"),
    "F8_E8M0": (8, "float8_e8m0fnu"),
    "I16": (16, "int16"),
    "U16": (16, "uint16"),
    "F16": (16, "float16"),
    "BF16": (16, "bfloat16"),
    "I32": (32, "int32"),
    "U32": (32, "uint32"),
    "F32": (32, "float32"),
    "I64": (64, "int64"),
    "U64": (64, "uint64"),
    "F64": (64, "float64"),
    "C64": (64, "complex64"),
    "F4": (4, "float4_e2m1fn_x2"),
    "F6_E2M3": (6, "float6_e2m3"),
    "F6_E3M2": (6, "float6_e3m2"),
}

#: Floating dtypes whose weights we analyse (after upcasting).
FLOAT_DTYPES = frozenset(
    {
        "float64",
        "float32",
        "float16",
        "bfloat16",
        "float8_e5m2",
        "float8_e4m3fn",
        "float8_e4m3fnuz",
        "float8_e5m2fnuz",
    }
)

_MAX_DIM = 2**48
#: Most dimensions a safetensors tensor may have. PyTorch allows 64; more is a crafted header.
MAX_RANK = 64
#: Headers above this size are checked for a plausible count of JSON containers and strings
#: before ``json.loads``, so a crafted header cannot cost gigabytes to parse.
_STRUCTURE_CHECK_BYTES = 1_000_000
#: Longest text taken from a file into an error message or note.
_MAX_SHOWN = 120


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives and what it is, known without reading its data."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    file: Path
    key: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated safetensors header."""

    tensors: dict[str, tuple[str, tuple[int, ...], tuple[int, int]]]
    metadata: dict[str, str] | None
    data_start: int


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key that puts ``layers.2`` before ``layers.10``."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)
    )


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {_quote(key)}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON constant {name}")


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


def clean_text(text: str, limit: int = _MAX_SHOWN) -> str:
    """Text from a file made safe for a one-line message: escapes, no control characters."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit + 1])
    return shown if len(text) <= limit and len(shown) <= limit else shown[:limit] + "…"


def _show(value: Any, limit: int = 60) -> str:
    """A short, safe rendering of a JSON value from a header (long lists cut before repr)."""
    if isinstance(value, list) and len(value) > 8:
        return clean_text(repr(value[:8])[:-1] + f", … ({len(value)} items)]", limit)
    if isinstance(value, dict):
        return f"an object with {len(value)} keys"
    return clean_text(repr(value), limit)


def _quote(name: str) -> str:
    """A tensor name from a file, quoted and shortened for an error message."""
    return "'" + clean_text(name) + "'"


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """Parse and validate a safetensors header without touching tensor data.

    Checks everything the format promises: the length prefix fits the file, the header is a JSON
    object without duplicate keys, every dtype is known, shapes are non-negative integers, and
    data offsets tile the data buffer exactly with byte lengths matching the shapes.
    """
    try:
        size = _regular_file_size(path)
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
        parsed = json.loads(
            text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant
        )
    except ValueError as exc:
        raise CheckpointError(f"corrupt safetensors header: {_describe(exc)}", path) from exc
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
                f"corrupt safetensors header: tensor {_quote(name)} {problem} (offset {begin})",
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
        return CheckpointError(f"corrupt safetensors header: tensor {_quote(name)} {problem}", path)

    if not isinstance(entry, dict):
        raise bad("is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise bad(f"has unknown dtype {_show(dtype, 40)}")
    if not isinstance(shape, list) or len(shape) > MAX_RANK:
        raise bad(f"has an invalid shape {_show(shape)}")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < _MAX_DIM for d in shape):
        raise bad(f"has an invalid shape {_show(shape)}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise bad(f"has invalid data_offsets {_show(offsets)}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        raise bad(f"has data_offsets {_show(offsets)} outside the {data_len}-byte data section")
    bits = SAFETENSORS_DTYPES[dtype][0]
    expected_bits = math.prod(shape) * bits  # at most 64 factors below 2**48: cheap
    if expected_bits != 8 * (end - begin):
        raise bad(f"has shape {_show(shape)} ({dtype}) that does not match its {end - begin} bytes")
    return dtype, tuple(shape), (begin, end)


def _regular_file_size(path: Path) -> int:
    """The size of a regular file; anything else (FIFO, device, socket) would block or never end."""
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "a FIFO, device or socket"
        raise CheckpointError(f"not a regular file ({kind}); only checkpoint files are read", path)
    return info.st_size


def sniff_format(path: Path) -> str:
    """Tell a file's format from its first bytes: 'safetensors', 'torch-zip' or 'torch-legacy'."""
    try:
        _regular_file_size(path)
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


@dataclass(frozen=True)
class WeightNormPair:
    """A weight stored as weight norm's magnitude g and direction v: W = g · v / ‖v‖.

    ``dim`` is the dimension kept by the norm (``None``: the norm of the whole tensor), as in
    ``torch.nn.utils.weight_norm`` (``weight_g``/``weight_v``) and
    ``torch.nn.utils.parametrizations.weight_norm`` (``original0``/``original1``).
    """

    g_key: str
    v_key: str
    dim: int | None

    def compose(self, g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """W = g · v / ‖v‖ in float64 (the norm over every dimension but ``dim``)."""
        import torch

        v = v.double()
        g = g.double()
        if self.dim is None:
            return v * (g / torch.linalg.vector_norm(v))
        dims = [d for d in range(v.dim()) if d != self.dim]
        return v * (g / torch.linalg.vector_norm(v, dim=dims, keepdim=True))


@dataclass
class Checkpoint:
    """An opened checkpoint: tensor names, shapes and dtypes, with data read on demand.

    ``tensors`` maps each tensor's key (as stored in its file, inside any wrapper dict) to its
    ``TensorInfo``, in natural order. ``notes`` are messages worth telling the user (which wrapper
    key was used, prefixes stripped, legacy format read into memory). ``unsupported`` names
    tensors that are present but hold no analysable dense data (sparse, meta, overlapping views),
    with the reason. ``derived`` maps names of weights the file stores in parts (weight norm's
    g and v) to how to compose them; ``load`` accepts those names too.
    """

    path: Path
    format: str
    files: list[Path]
    tensors: dict[str, TensorInfo]
    notes: list[str] = field(default_factory=list)
    wrapper_key: str | None = None
    prefix: str = ""
    metadata: dict[Path, dict[str, str] | None] = field(default_factory=dict)
    index_path: Path | None = None
    aliases: dict[str, str] = field(default_factory=dict)
    non_tensor_keys: list[str] = field(default_factory=list)
    unsupported: dict[str, str] = field(default_factory=dict)
    derived: dict[str, WeightNormPair] = field(default_factory=dict)
    _state_dicts: dict[Path, Mapping[str, Any]] = field(default_factory=dict, repr=False)
    _handles: dict[Path, Any] = field(default_factory=dict, repr=False)
    _containers: dict[Path, Any] = field(default_factory=dict, repr=False)
    _skip_objects: bool = field(default=False, repr=False)
    _record_crcs: dict[Path, dict[int, set[int]]] = field(default_factory=dict, repr=False)
    _verified: set[tuple[Path, int]] = field(default_factory=set, repr=False)

    def short_name(self, name: str) -> str:
        """The name with a stripped common prefix (``module.``) removed."""
        return name[len(self.prefix) :] if self.prefix and name.startswith(self.prefix) else name

    def load(self, name: str) -> torch.Tensor:
        """Read one tensor (CPU, stored dtype). Memory stays near that tensor's size.

        A name from ``derived`` gives the composed weight (float64).
        """
        pair = self.derived.get(name)
        if pair is not None:
            return pair.compose(self.load(pair.g_key), self.load(pair.v_key))
        info = self.tensors[name]
        if name in self.unsupported:
            raise CheckpointError(f"tensor {_quote(name)}: {self.unsupported[name]}", info.file)
        try:
            if self.format == "safetensors":
                return self._safetensors_handle(info.file).get_tensor(info.key)
            tensor = self._state_dict(info.file)[info.key]
            self._verify_crc(info, tensor)
            return tensor
        except CheckpointError:
            raise
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:  # safetensors raises Rust panics (BaseException) too
            raise CheckpointError(
                f"cannot read tensor {_quote(name)}: {_describe(exc)}", info.file
            ) from exc

    def container(self, file: Path) -> Any:
        """The full object ``torch.load`` returned for a PyTorch file (wrapper dict included)."""
        self._state_dict(file)
        return self._containers[file]

    def _verify_crc(self, info: TensorInfo, tensor: torch.Tensor) -> None:
        """Check the tensor's storage against the CRC-32 its zip record carries.

        ``torch.load(mmap=True)`` never checks CRCs, so flipped bytes would pass as weights.
        Storages are matched to records by size; a storage whose bytes match no record of that
        size is damaged.
        """
        import torch

        crcs = self._record_crcs.get(info.file)
        if not crcs or tensor.device.type != "cpu" or tensor.layout != torch.strided:
            return
        storage = tensor.untyped_storage()
        size = storage.nbytes()
        expected = crcs.get(size)
        key = (info.file, storage.data_ptr())
        if not expected or key in self._verified:
            return
        data = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (size,), (1,))
        if zlib.crc32(memoryview(data.numpy())) not in expected:
            raise CheckpointError(
                f"damaged PyTorch file: the data of tensor {_quote(info.name)} fails its "
                "CRC-32 check (the file is corrupt or was modified)",
                info.file,
            )
        self._verified.add(key)

    def _safetensors_handle(self, file: Path) -> Any:
        handle = self._handles.get(file)
        if handle is None:
            from safetensors import safe_open

            handle = safe_open(str(file), framework="pt", device="cpu")
            self._handles[file] = handle
        return handle

    def _state_dict(self, file: Path) -> Mapping[str, Any]:
        if file not in self._state_dicts:
            if len(self._state_dicts) >= 1 and self.index_path is not None:
                self._state_dicts.clear()
                self._containers.clear()
            obj = load_torch_file(file, skip_objects=self._skip_objects)
            self._containers[file] = obj
            self._state_dicts[file] = _navigate(_unwrap_modules(obj), self.wrapper_key, file)
        return self._state_dicts[file]

    def close(self) -> None:
        self._handles.clear()
        self._state_dicts.clear()
        self._containers.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Attribute set on placeholder objects: the global they stand for.
PLACEHOLDER_ATTR = "__sncli_placeholder__"
#: Globals that can run code or touch the system; a checkpoint naming one is likely malicious.
_DANGEROUS_MODULES = frozenset(
    {
        "os",
        "posix",
        "nt",
        "sys",
        "subprocess",
        "shutil",
        "socket",
        "runpy",
        "importlib",
        "pty",
        "ctypes",
        "code",
        "codeop",
        "pickle",
        "_pickle",
        "marshal",
        "webbrowser",
        "multiprocessing",
    }
)
_DANGEROUS_BUILTINS = frozenset(
    {
        "exec",
        "eval",
        "compile",
        "open",
        "__import__",
        "getattr",
        "setattr",
        "delattr",
        "globals",
        "locals",
        "vars",
        "input",
        "breakpoint",
        "apply",
        "execfile",
    }
)


def _inert_placeholder(qualified_name: str) -> type:
    """A stand-in for a global the weights-only unpickler refuses; building it runs nothing.

    Calling or instantiating it gives an empty ``OrderedDict`` (the one non-builtin type the
    unpickler lets a pickle fill with items and attributes), marked with the global's name.
    """

    class Placeholder:
        def __new__(cls, *args: Any, **kwargs: Any) -> Any:
            from collections import OrderedDict

            inert: OrderedDict[Any, Any] = OrderedDict()
            inert.__dict__[PLACEHOLDER_ATTR] = qualified_name
            return inert

    Placeholder.__qualname__ = Placeholder.__name__ = f"Placeholder[{qualified_name}]"
    return Placeholder


@dataclass(frozen=True)
class _PickleScan:
    """Globals a pickle references, found by reading its opcodes (nothing is imported or run)."""

    globals: list[str]
    complete: bool

    def unsafe(self) -> list[str]:
        """Globals outside PyTorch's weights-only allowlist."""
        from torch import _weights_only_unpickler as wou

        allowed = set(wou._get_allowed_globals()) | set(wou._get_user_allowed_globals())
        return [g for g in self.globals if g not in allowed]


def _blocked(names: list[str]) -> list[str]:
    """Names whose module PyTorch refuses outright, even when allowlisted (os, sys, …)."""
    from torch import _weights_only_unpickler as wou

    blocked = set(getattr(wou, "_blocklisted_modules", ("sys", "os", "posix", "nt")))
    return [n for n in names if n.rsplit(".", 1)[0] in blocked]


def _python3_name(name: str) -> str:
    """A global as Python 3 resolves it: protocol-2 pickles may carry Python 2 names
    (``subprocess.Popen`` is written as ``commands.Popen``, ``builtins`` as ``__builtin__``)."""
    import _compat_pickle

    module, _, attr = name.rpartition(".")
    if (module, attr) in _compat_pickle.NAME_MAPPING:
        module, attr = _compat_pickle.NAME_MAPPING[(module, attr)]
    else:
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{module}.{attr}"


def _dangerous(names: list[str]) -> list[str]:
    """Names that could run code or touch the system if a careless loader called them.

    Given as written in the file, with the Python 3 name added where it differs.
    """
    found = []
    for name in names:
        resolved = _python3_name(name)
        module, _, attr = resolved.rpartition(".")
        top = module.split(".", 1)[0]
        if top in _DANGEROUS_MODULES or (top == "builtins" and attr in _DANGEROUS_BUILTINS):
            found.append(name if resolved == name else f"{name} (= {resolved})")
    return found


def _shown_names(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(clean_text(n, 80) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _read_global(data: Any, position: int) -> str:
    """The ``module.name`` of the GLOBAL opcode at ``position``, decoded exactly as torch does."""
    from torch import _weights_only_unpickler as wou

    data.seek(position + 1)
    reader = getattr(wou, "_read_global_instruction", None)
    if reader is not None:
        module, name = reader(data.readline)
    else:  # pragma: no cover - older torch
        module = data.readline()[:-1].decode("utf-8")
        name = data.readline()[:-1].decode("utf-8")
    return f"{module}.{name}"


def _scan_pickles(data: Any, count: int) -> _PickleScan:
    """Walk up to ``count`` consecutive pickles in ``data`` and collect their GLOBALs."""
    import pickletools

    found: dict[str, None] = {}
    strings: list[str] = []
    try:
        for _ in range(count):
            globals_at: list[int] = []
            for opcode, arg, position in pickletools.genops(data):
                if opcode.name == "GLOBAL":
                    globals_at.append(position)
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found[f"{strings[-2]}.{strings[-1]}"] = None
                elif isinstance(arg, str):
                    strings = [*strings[-1:], arg]
            end = data.tell()
            for position in globals_at:
                found[_read_global(data, position)] = None
            data.seek(end)
    except Exception:
        return _PickleScan(list(found), False)
    return _PickleScan(list(found), True)


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
class _ZipCheck:
    pickle: bytes
    record_crcs: dict[int, set[int]]
    #: False when a data record is compressed: torch's mmap path would read the compressed
    #: bytes as weights (silently), so such archives are read without mmap.
    mmap_ok: bool


def _check_zip(path: Path) -> _ZipCheck:
    """Validate a torch zip archive before torch reads it: structure, sizes, data.pkl's CRC.

    Rejects TorchScript archives, members that claim to expand beyond what deflate can produce
    (zip bombs or lying headers: torch would allocate the claimed size) and a damaged data.pkl.
    """
    size = _regular_file_size(path)
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
            mmap_ok = True
            for info in infos:
                stored = info.compress_type == zipfile.ZIP_STORED
                limit = info.compress_size if stored else info.compress_size * 1100 + 4096
                if info.file_size > limit or info.header_offset + info.compress_size > size:
                    raise CheckpointError(
                        f"damaged zip archive: member {_quote(info.filename)} claims "
                        f"{info.file_size} bytes, more than the file can hold",
                        path,
                    )
                if info.filename.startswith(f"{root}/data/"):
                    mmap_ok = mmap_ok and stored
                    if info.CRC != 0:
                        crcs.setdefault(info.file_size, set()).add(info.CRC)
            byteorder = f"{root}/byteorder"
            native = "little" if struct.pack("=H", 1) == b"\x01\x00" else "big"
            if byteorder in names:
                order = _read_record(path, archive, archive.getinfo(byteorder))
                if order.decode(errors="replace") != native:
                    crcs = {}  # torch byte-swaps such storages in memory: CRCs no longer apply
            pickle = _read_record(path, archive, archive.getinfo(f"{root}/data.pkl"))
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"damaged zip archive: {_describe(exc)}", path) from exc
    except (EOFError, NotImplementedError, RuntimeError, struct.error, zlib.error) as exc:
        raise CheckpointError(f"damaged zip archive: {_describe(exc)}", path) from exc
    return _ZipCheck(pickle, crcs, mmap_ok)


def scan_pickle_globals(path: Path) -> list[str]:
    """Every global a PyTorch file's pickle names, read statically: nothing is imported or run.

    Works for zip and legacy files (``torch.serialization.get_unsafe_globals_in_checkpoint``
    handles zip files only).
    """
    return _scan_file(path).globals


def _scan_file(path: Path) -> _PickleScan:
    import io
    import mmap

    kind = sniff_format(path)
    if kind == "torch-zip":
        return _scan_pickles(io.BytesIO(_check_zip(path).pickle), 1)
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        # legacy: magic number, protocol version, sys info, the object, the storage keys
        return _scan_pickles(data, 5)


def load_torch_file(path: Path, *, skip_objects: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True`` (mmap for zip files), errors made readable.

    With ``skip_objects``, globals outside PyTorch's allowlist are replaced by inert placeholders
    before loading, so a Lightning checkpoint whose hyper-parameters hold Python objects still
    loads. Nothing named in the file is imported or called either way.
    """
    return _load_torch(path, skip_objects=skip_objects)[0]


def _load_torch(path: Path, *, skip_objects: bool) -> tuple[Any, list[str], dict[int, set[int]]]:
    """Load a PyTorch file; also return the globals replaced by placeholders and record CRCs."""
    import pickle

    import torch

    kind = sniff_format(path)
    if kind == "safetensors":
        raise CheckpointError("is a safetensors file, not a PyTorch file", path)
    crcs: dict[int, set[int]] = {}
    use_mmap = False
    if kind == "torch-zip":
        check = _check_zip(path)
        crcs, use_mmap = check.record_crcs, check.mmap_ok
    scan: _PickleScan | None = None
    replaced: list[str] = []
    if skip_objects:
        scan = _scan_file(path)
        unsafe = scan.unsafe()
        blocked = set(_blocked(unsafe))
        replaced = [name for name in unsafe if name not in blocked]
    placeholders = [(_inert_placeholder(name), name) for name in replaced]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one line on stderr per error, nothing else
            with torch.serialization.safe_globals(placeholders):
                obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as exc:
        scan = scan or _scan_file(path)
        raise _refusal(path, exc, scan, skip_objects) from exc
    except CheckpointError:
        raise
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:
        raise CheckpointError(
            f"damaged or unreadable PyTorch file: {_describe(exc)}", path
        ) from exc
    return obj, replaced, crcs


def _refusal(
    path: Path, exc: BaseException, scan: _PickleScan, skip_objects: bool
) -> CheckpointError:
    """The error for a pickle the weights-only unpickler refused, saying how to proceed safely."""
    unsafe = scan.unsafe()
    blocked = _blocked(unsafe)
    dangerous = _dangerous(unsafe)
    if blocked or (dangerous and skip_objects):
        return UnsafePickleError(
            f"refused to unpickle: the file references {_shown_names(blocked or dangerous)}, "
            "which can run commands: it is probably malicious. Nothing from the file was run. "
            "Do not load it with weights_only=False or pickle; "
            + (
                "--skip-objects cannot help (PyTorch refuses these modules outright); "
                if blocked
                else ""
            )
            + "if you trust its source, re-save only its state_dict as safetensors",
            path,
        )
    if unsafe and not skip_objects:
        warning = (
            f" {_shown_names(dangerous)} can run code, so the file may be malicious."
            if dangerous
            else " Common in Lightning checkpoints whose hyper_parameters hold objects."
        )
        return UnsafePickleError(
            "refused to unpickle: the file references Python objects outside PyTorch's "
            f"weights-only allowlist ({_shown_names(unsafe)}).{warning} Nothing from the file "
            "was run. To read only its tensors, pass --skip-objects (objects become inert "
            "placeholders, never called); or re-save the state_dict as safetensors",
            path,
        )
    detail = _unpickler_detail(exc)
    if skip_objects:
        return UnsafePickleError(
            f"refused to unpickle even with --skip-objects: {detail}. Nothing from the file was "
            "run; re-save the state_dict as safetensors",
            path,
        )
    return UnsafePickleError(
        f"refused to unpickle: {detail}. Nothing from the file was run; the pickle may be "
        "damaged or use constructs PyTorch's weights-only loader does not allow",
        path,
    )


def _unpickler_detail(exc: BaseException) -> str:
    """The informative line of torch's long weights-only error."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("WeightsUnpickler error:"):
            return clean_text(line.removeprefix("WeightsUnpickler error:").strip(), 200)
    return clean_text(lines[0], 200) if lines else type(exc).__name__


def _describe(exc: BaseException) -> str:
    return clean_text(_first_line(str(exc)) or type(exc).__name__, 200)


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def _tensor_count(value: Any) -> int:
    if not isinstance(value, Mapping):
        return 0
    return sum(1 for v in value.values() if _is_tensor(v))


def _module_state(value: Any, prefix: str = "", depth: int = 0) -> dict[str, Any] | None:
    """The state dict of a pickled ``nn.Module`` read with --skip-objects, or None.

    Such a module arrives as an inert placeholder whose attributes hold ``_parameters``,
    ``_buffers`` and ``_modules``; parameters and persistent buffers are collected recursively.
    """
    attrs = getattr(value, "__dict__", None)
    if not isinstance(attrs, dict) or not isinstance(attrs.get("_parameters"), Mapping):
        return None
    state: dict[str, Any] = {}
    skip = attrs.get("_non_persistent_buffers_set") or ()
    for group in ("_parameters", "_buffers"):
        items = attrs.get(group)
        if isinstance(items, Mapping):
            for name, tensor in items.items():
                if tensor is not None and not (group == "_buffers" and name in skip):
                    state[f"{prefix}{name}"] = tensor
    children = attrs.get("_modules")
    if isinstance(children, Mapping) and depth < 100:
        for name, child in children.items():
            sub = _module_state(child, f"{prefix}{name}.", depth + 1)
            if sub:
                state.update(sub)
    return state


def _unwrap_modules(obj: Any) -> Any:
    """Replace pickled modules (top level or one level down) by their state dicts."""
    state = _module_state(obj)
    if state is not None:
        return state
    if isinstance(obj, Mapping) and any(_module_state(v) is not None for v in obj.values()):
        return {
            k: (_module_state(v) if _module_state(v) is not None else v) for k, v in obj.items()
        }
    return obj


def _nested_candidates(obj: Any, path: str = "", depth: int = 0) -> list[str]:
    """Keys (joined with '/') of dicts of tensors nested up to three levels down."""
    found: list[str] = []
    if not isinstance(obj, Mapping) or depth > 3:
        return found
    for key, value in obj.items():
        if not isinstance(key, str) or "/" in key:
            continue
        here = f"{path}{key}"
        if _tensor_count(value) > 0:
            found.append(here)
        elif isinstance(value, Mapping):
            found += _nested_candidates(value, here + "/", depth + 1)
        if len(found) > 8:
            break
    return found


def choose_state_dict(obj: Any, key: str | None, path: Path) -> tuple[str | None, list[str]]:
    """Pick the state dict inside a loaded object; return (wrapper key or None, notes)."""
    obj = _unwrap_modules(obj)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"not a state dict: the file holds a {type(obj).__name__}, not a dict of tensors", path
        )
    if key is not None:
        _navigate(obj, key, path)
        return key, [f"using the state dict under key '{clean_text(key)}'"]
    candidates = [k for k in WRAPPER_KEYS if _tensor_count(obj.get(k)) > 0]
    if not candidates and _tensor_count(obj) == 0:
        candidates = _nested_candidates(obj)
        if len(candidates) > 1:
            raise CheckpointError(
                "holds several dicts of tensors (" + _shown_names(candidates, 8) + "); "
                "choose one with --key",
                path,
            )
    if not candidates:
        if _tensor_count(obj) == 0:
            raise CheckpointError("holds no tensors", path)
        return None, []
    chosen = candidates[0]
    note = f"using the state dict under key '{clean_text(chosen)}'"
    others = candidates[1:]
    if others:
        note += f" (also present: {_shown_names(others)}; pick with --key)"
    return chosen, [note]


def _navigate(obj: Any, key: str | None, path: Path) -> Mapping[str, Any]:
    if key is None:
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"not a state dict: holds a {type(obj).__name__}", path)
        return obj
    node = obj
    for part in key.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            available = _shown_names([str(k) for k in obj], 12) if isinstance(obj, Mapping) else ""
            raise CheckpointError(
                f"has no key '{clean_text(key)}' (top-level keys: {available})", path
            )
        node = node[part]
    if _tensor_count(node) == 0:
        raise CheckpointError(f"key '{clean_text(key)}' does not hold a dict of tensors", path)
    return node


def _common_prefix(names: list[str]) -> str:
    prefix = ""
    changed = True
    while changed and names:
        changed = False
        for candidate in STRIPPABLE_PREFIXES:
            if all(n.startswith(prefix + candidate) for n in names):
                prefix += candidate
                changed = True
    return prefix


def _unsupported_reason(value: torch.Tensor) -> str | None:
    """Why a loaded tensor cannot be analysed as dense data, or None when it can."""
    import torch

    if value.layout != torch.strided:
        return f"{str(value.layout).removeprefix('torch.')} tensor not supported"
    if value.device.type != "cpu":
        return f"{value.device.type} tensor holds no data"
    if value.is_quantized:
        return f"quantized tensor ({str(value.dtype).removeprefix('torch.')}) not supported"
    needed = value.numel() * value.element_size()
    available = value.untyped_storage().nbytes()
    if needed > available:
        return (
            f"overlapping view ({value.numel()} elements over a {available}-byte storage; "
            "never expanded, to bound memory)"
        )
    return None


def _torch_infos(
    state: Mapping[str, Any], file: Path
) -> tuple[dict[str, TensorInfo], dict[str, str], list[str], dict[str, str]]:
    infos: dict[str, TensorInfo] = {}
    aliases: dict[str, str] = {}
    non_tensors: list[str] = []
    unsupported: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...], tuple[int, ...], str], str] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            non_tensors.append(clean_text(repr(key)))
            continue
        if not _is_tensor(value):
            non_tensors.append(key)
            continue
        dtype = str(value.dtype).removeprefix("torch.")
        infos[key] = TensorInfo(key, tuple(value.shape), dtype, file, key)
        reason = _unsupported_reason(value)
        if reason is not None:
            unsupported[key] = reason
        elif value.numel() > 0:
            ident = (
                value.untyped_storage().data_ptr(),
                value.storage_offset(),
                tuple(value.shape),
                tuple(value.stride()),
                dtype,
            )
            if ident in seen:
                aliases[key] = seen[ident]
            else:
                seen[ident] = key
    return infos, aliases, non_tensors, unsupported


def _weight_norm_dim(g: tuple[int, ...], v: tuple[int, ...]) -> tuple[bool, int | None]:
    """(fits, dim): the ``dim`` weight norm kept, read from g's and v's shapes."""
    if not g:
        return True, None
    if len(g) != len(v):
        return False, None
    kept = [d for d, (a, b) in enumerate(zip(g, v, strict=True)) if a != 1]
    if len(kept) > 1 or any(g[d] != v[d] for d in kept):
        return False, None
    if kept:
        return True, kept[0]
    ones = [d for d, size in enumerate(v) if size == 1]
    return (True, ones[0]) if ones else (False, None)


def _weight_norms(tensors: Mapping[str, TensorInfo]) -> dict[str, WeightNormPair]:
    """Weights stored by weight norm as (g, v), keyed by the name of the composed weight.

    Legacy ``weight_norm`` saves ``<name>_g``/``<name>_v`` (composed name ``<name>``); the
    parametrization saves ``parametrizations.<name>.original0``/``original1`` (composed name
    ``...parametrizations.<name>``: the weight before any later parametrization such as
    spectral norm).
    """
    pairs: dict[str, WeightNormPair] = {}
    for name, info in tensors.items():
        if name.endswith("_g"):
            base = name[:-2]
            v_key = base + "_v"
            if base + "_u" in tensors or base + "_orig" in tensors or base in tensors:
                continue
        else:
            match = re.fullmatch(r"(.*parametrizations\.[^.]+)\.original0", name)
            if match is None:
                continue
            base = match.group(1)
            v_key = base + ".original1"
            if base + ".original" in tensors or base + ".original2" in tensors:
                continue
        v = tensors.get(v_key)
        if v is None or base in tensors:
            continue
        fits, dim = _weight_norm_dim(info.shape, v.shape)
        if fits:
            pairs[base] = WeightNormPair(name, v_key, dim)
    return pairs


def open_checkpoint(
    path: str | os.PathLike[str], *, key: str | None = None, skip_objects: bool = False
) -> Checkpoint:
    """Open a checkpoint file, sharded index or folder; read headers, not weights.

    ``key`` selects the state dict inside a wrapped PyTorch file (``state_dict``, ``ema``…);
    without it the first of ``WRAPPER_KEYS`` that holds tensors is used.
    """
    path = Path(path)
    try:
        exists = path.exists()
    except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CheckpointError(f"cannot access: {clean_text(detail)}", path) from exc
    if not exists:
        raise CheckpointError("no such file or directory", path)
    if not os.access(path, os.R_OK):
        raise CheckpointError("permission denied", path)
    if path.is_dir():
        path = _resolve_directory(path)
    if path.name.endswith(".json"):
        return _open_index(path, key=key, skip_objects=skip_objects)
    kind = sniff_format(path)
    if kind == "safetensors":
        return _open_safetensors([path], path, index=None)
    return _open_torch([path], path, index=None, key=key, skip_objects=skip_objects)


def _resolve_directory(folder: Path) -> Path:
    try:
        entries = sorted(p for p in folder.iterdir() if p.is_file())
    except OSError as exc:
        raise CheckpointError(f"cannot list folder: {exc.strerror or exc}", folder) from exc
    for pattern in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / pattern).is_file():
            return folder / pattern
    indexes = [p for p in entries if p.name.endswith(".index.json")]
    if len(indexes) == 1:
        return indexes[0]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    weights = [p for p in entries if p.suffix == ".safetensors"] or [
        p for p in entries if p.suffix in TORCH_SUFFIXES
    ]
    if len(weights) == 1:
        return weights[0]
    if not weights:
        raise CheckpointError(
            "folder holds no checkpoint (looked for *.index.json, *.safetensors, "
            "*.pt, *.pth, *.bin, *.ckpt)",
            folder,
        )
    raise CheckpointError(
        f"folder holds {len(weights)} weight files and no index json; name one file", folder
    )


def _shard_path(folder: Path, shard: Any, tensor_name: str, index: Path) -> Path:
    """Where an index's shard entry points, refusing absolute paths and '..' (lexically).

    Symlinked shards are fine (the Hugging Face cache links snapshots to blobs); only the
    name written in the index must stay inside the index's folder.
    """
    if not isinstance(shard, str) or not shard:
        raise CheckpointError(
            f"index maps {_quote(tensor_name)} to a non-path {_show(shard)}", index
        )
    normal = os.path.normpath(shard)
    if (
        os.path.isabs(shard)
        or shard.startswith(("/", "\\"))
        or re.match(r"^[A-Za-z]:", shard)
        or normal == ".."
        or normal.startswith(("../", "..\\"))
        or "\0" in shard
    ):
        raise CheckpointError(f"index points outside its folder: {_quote(shard)}", index)
    return folder / normal


def _open_index(index: Path, *, key: str | None, skip_objects: bool) -> Checkpoint:
    try:
        size = _regular_file_size(index)
        if size > SAFETENSORS_MAX_HEADER:
            raise CheckpointError(f"index json is implausibly large ({size} bytes)", index)
        data = json.loads(
            index.read_bytes().decode("utf-8"),
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
        )
    except OSError as exc:
        raise CheckpointError(f"cannot read index: {exc.strerror or exc}", index) from exc
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"malformed index json: {_describe(exc)}", index) from exc
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError("index json has no 'weight_map' object", index)
    folder = index.parent
    shards: dict[str, Path] = {}
    for tensor_name, shard in weight_map.items():
        if not isinstance(shard, str) or shard not in shards:
            candidate = _shard_path(folder, shard, tensor_name, index)
            if not candidate.is_file():
                raise CheckpointError(f"index points to a missing shard {_quote(shard)}", index)
            shards[shard] = candidate
    files = list(dict.fromkeys(shards.values()))
    kinds = {sniff_format(f) for f in files}
    if kinds == {"safetensors"}:
        ckpt = _open_safetensors(files, index, index=index)
    elif "safetensors" not in kinds:
        ckpt = _open_torch(files, index, index=index, key=key, skip_objects=skip_objects)
    else:
        raise CheckpointError("index mixes safetensors and PyTorch shards", index)
    by_file = {f: {i.key for i in ckpt.tensors.values() if i.file == f} for f in files}
    for tensor_name, shard in weight_map.items():
        if tensor_name not in by_file[shards[shard]]:
            raise CheckpointError(
                f"index lists {_quote(tensor_name)} in {_quote(shard)}, "
                "but that shard does not hold it",
                index,
            )
    return ckpt


def _open_safetensors(files: list[Path], path: Path, *, index: Path | None) -> Checkpoint:
    tensors: dict[str, TensorInfo] = {}
    metadata: dict[Path, dict[str, str] | None] = {}
    for file in files:
        header = read_safetensors_header(file)
        metadata[file] = header.metadata
        for name, (code, shape, _) in header.tensors.items():
            if name in tensors:
                raise CheckpointError(f"tensor {_quote(name)} appears in two shards", path)
            tensors[name] = TensorInfo(name, shape, SAFETENSORS_DTYPES[code][1], file, name)
    ordered = {n: tensors[n] for n in sorted(tensors, key=natural_key)}
    prefix = _common_prefix(list(ordered))
    notes = [f"prefix '{prefix}' is on every key; omitted from displayed names"] if prefix else []
    return Checkpoint(
        path=path,
        format="safetensors",
        files=files,
        tensors=ordered,
        notes=notes,
        prefix=prefix,
        metadata=metadata,
        index_path=index,
        derived=_weight_norms(ordered),
    )


def _open_torch(
    files: list[Path], path: Path, *, index: Path | None, key: str | None, skip_objects: bool
) -> Checkpoint:
    tensors: dict[str, TensorInfo] = {}
    aliases: dict[str, str] = {}
    non_tensors: list[str] = []
    unsupported: dict[str, str] = {}
    notes: list[str] = []
    wrapper: str | None = key
    containers: dict[Path, Any] = {}
    states: dict[Path, Mapping[str, Any]] = {}
    record_crcs: dict[Path, dict[int, set[int]]] = {}
    replaced_all: dict[str, None] = {}
    for number, file in enumerate(files):
        obj, replaced, crcs = _load_torch(file, skip_objects=skip_objects)
        record_crcs[file] = crcs
        replaced_all.update(dict.fromkeys(replaced))
        unwrapped = _unwrap_modules(obj)
        if number == 0:
            wrapper, wrapper_notes = choose_state_dict(unwrapped, key, file)
            notes += wrapper_notes
            if unwrapped is not obj and _module_state(obj) is not None:
                notes.append("the file holds a pickled nn.Module; reading its parameters")
            if sniff_format(file) == "torch-legacy":
                notes.append(
                    "legacy (non-zip) PyTorch file: loaded fully into memory; "
                    "re-save it as safetensors for lazy reading"
                )
        state = _navigate(unwrapped, wrapper, file)
        infos, file_aliases, file_non_tensors, file_unsupported = _torch_infos(state, file)
        for name in infos:
            if name in tensors:
                raise CheckpointError(f"tensor {_quote(name)} appears in two shards", path)
        tensors.update(infos)
        aliases.update(file_aliases)
        non_tensors += file_non_tensors
        unsupported.update(file_unsupported)
        if len(files) == 1:
            containers[file] = obj
            states[file] = state
        else:
            del obj, state, unwrapped
    if replaced_all:
        names = list(replaced_all)
        dangerous = _dangerous(names)
        note = (
            f"objects outside PyTorch's allowlist ({_shown_names(names)}) were loaded as inert "
            "placeholders (--skip-objects); no code from the file ran"
        )
        if dangerous:
            note += f". Warning: {_shown_names(dangerous)} can run code; the file may be malicious"
        notes.append(note)
    ordered = {n: tensors[n] for n in sorted(tensors, key=natural_key)}
    prefix = _common_prefix(list(ordered))
    if prefix:
        notes.append(f"prefix '{prefix}' is on every key; omitted from displayed names")
    return Checkpoint(
        path=path,
        format="torch",
        files=files,
        tensors=ordered,
        notes=notes,
        wrapper_key=wrapper,
        prefix=prefix,
        index_path=index,
        aliases=aliases,
        non_tensor_keys=non_tensors,
        unsupported=unsupported,
        derived=_weight_norms(ordered),
        _state_dicts=states,
        _containers=containers,
        _skip_objects=skip_objects,
        _record_crcs=record_crcs,
    )
