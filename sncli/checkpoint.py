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
import struct
import zipfile
from collections.abc import Iterator, Mapping
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
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """Parse and validate a safetensors header without touching tensor data.

    Checks everything the format promises: the length prefix fits the file, the header is a JSON
    object without duplicate keys, every dtype is known, shapes are non-negative integers, and
    data offsets tile the data buffer exactly with byte lengths matching the shapes.
    """
    try:
        size = path.stat().st_size
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
    try:
        parsed = json.loads(text, object_pairs_hook=_reject_duplicates)
    except ValueError as exc:
        raise CheckpointError(f"corrupt safetensors header: {exc}", path) from exc
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
                f"corrupt safetensors header: tensor {name!r} {problem} (offset {begin})", path
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
        return CheckpointError(f"corrupt safetensors header: tensor {name!r} {problem}", path)

    if not isinstance(entry, dict):
        raise bad("is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPES:
        raise bad(f"has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d < _MAX_DIM for d in shape
    ):
        raise bad(f"has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise bad(f"has invalid data_offsets {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        raise bad(f"has data_offsets {offsets} outside the {data_len}-byte data section")
    bits = SAFETENSORS_DTYPES[dtype][0]
    expected_bits = math.prod(shape) * bits
    if expected_bits != 8 * (end - begin):
        raise bad(f"has shape {shape} ({dtype}) that does not match its {end - begin} bytes")
    return dtype, tuple(shape), (begin, end)


def sniff_format(path: Path) -> str:
    """Tell a file's format from its first bytes: 'safetensors', 'torch-zip' or 'torch-legacy'."""
    try:
        with path.open("rb") as handle:
            head = handle.read(9)
    except OSError as exc:
        raise CheckpointError(f"cannot read file: {exc.strerror or exc}", path) from exc
    if not head:
        raise CheckpointError("empty file, not a checkpoint", path)
    if head.startswith(ZIP_MAGIC):
        return "torch-zip"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return "torch-legacy"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if path.suffix == ".safetensors":
        return "safetensors"
    raise CheckpointError(
        "not a checkpoint: neither safetensors nor a PyTorch file (unrecognised first bytes)", path
    )


@dataclass
class Checkpoint:
    """An opened checkpoint: tensor names, shapes and dtypes, with data read on demand.

    ``tensors`` maps each tensor's key (as stored in its file, inside any wrapper dict) to its
    ``TensorInfo``, in natural order. ``notes`` are messages worth telling the user (which wrapper
    key was used, prefixes stripped, legacy format read into memory).
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
    _state_dicts: dict[Path, Mapping[str, Any]] = field(default_factory=dict, repr=False)
    _handles: dict[Path, Any] = field(default_factory=dict, repr=False)
    _containers: dict[Path, Any] = field(default_factory=dict, repr=False)
    _skip_objects: bool = field(default=False, repr=False)

    def short_name(self, name: str) -> str:
        """The name with a stripped common prefix (``module.``) removed."""
        return name[len(self.prefix) :] if self.prefix and name.startswith(self.prefix) else name

    def load(self, name: str) -> torch.Tensor:
        """Read one tensor (CPU, stored dtype). Memory stays near that tensor's size."""
        info = self.tensors[name]
        try:
            if self.format == "safetensors":
                return self._safetensors_handle(info.file).get_tensor(info.key)
            return self._state_dict(info.file)[info.key]
        except CheckpointError:
            raise
        except Exception as exc:  # safetensors/torch raise many types on damaged data
            raise CheckpointError(f"cannot read tensor {name!r}: {exc}", info.file) from exc

    def iter_tensors(self, names: list[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        for name in names if names is not None else list(self.tensors):
            yield name, self.load(name)

    def container(self, file: Path) -> Any:
        """The full object ``torch.load`` returned for a PyTorch file (wrapper dict included)."""
        self._state_dict(file)
        return self._containers[file]

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
            self._state_dicts[file] = _navigate(obj, self.wrapper_key, file)
        return self._state_dicts[file]

    def close(self) -> None:
        self._handles.clear()
        self._state_dicts.clear()
        self._containers.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _inert_placeholder(qualified_name: str) -> type:
    """A stand-in for a global the weights-only unpickler refuses; building it runs nothing."""

    class Placeholder:
        def __new__(cls, *args: Any, **kwargs: Any) -> Any:
            from collections import OrderedDict

            return OrderedDict()

    Placeholder.__qualname__ = Placeholder.__name__ = f"Placeholder[{qualified_name}]"
    return Placeholder


def load_torch_file(path: Path, *, skip_objects: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True`` (mmap for zip files), errors made readable.

    With ``skip_objects``, globals outside PyTorch's allowlist are replaced by inert placeholders
    before loading, so a Lightning checkpoint whose hyper-parameters hold Python objects still
    loads. Nothing named in the file is imported or called either way.
    """
    import pickle

    import torch

    kind = sniff_format(path)
    if kind == "safetensors":
        raise CheckpointError("is a safetensors file, not a PyTorch file", path)
    if kind == "torch-zip":
        _reject_torchscript(path)
    globals_needed: list[str] = []
    if skip_objects:
        globals_needed = _unsafe_globals(path)
    placeholders = [(_inert_placeholder(name), name) for name in globals_needed]
    try:
        with torch.serialization.safe_globals(placeholders):
            return torch.load(
                str(path), map_location="cpu", weights_only=True, mmap=kind == "torch-zip"
            )
    except pickle.UnpicklingError as exc:
        blocked = _unsafe_globals(path)
        if blocked:
            shown = ", ".join(blocked[:6]) + (" …" if len(blocked) > 6 else "")
            raise UnsafePickleError(
                f"refused to unpickle: the file references Python objects outside PyTorch's "
                f"weights-only allowlist ({shown}). Common in Lightning checkpoints whose "
                "hyper_parameters hold objects. Nothing from the file was run. To read only its "
                "tensors, pass --skip-objects (objects become inert placeholders); or re-save "
                "the state_dict as safetensors",
                path,
            ) from exc
        detail = str(exc).splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise UnsafePickleError(f"refused to unpickle: {_first_line(detail)}", path) from exc
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"damaged or unreadable PyTorch file: {_describe(exc)}", path
        ) from exc


def _unsafe_globals(path: Path) -> list[str]:
    import torch

    try:
        return sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path))))
    except Exception:
        return []


def _reject_torchscript(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"damaged zip archive: {_describe(exc)}", path) from exc
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        raise CheckpointError(
            "is a TorchScript archive, not a state dict; save model.state_dict() instead", path
        )


def _describe(exc: BaseException) -> str:
    text = _first_line(str(exc)) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


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


def choose_state_dict(obj: Any, key: str | None, path: Path) -> tuple[str | None, list[str]]:
    """Pick the state dict inside a loaded object; return (wrapper key or None, notes)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"not a state dict: the file holds a {type(obj).__name__}, not a dict of tensors", path
        )
    if key is not None:
        _navigate(obj, key, path)
        return key, [f"using the state dict under key '{key}'"]
    candidates = [k for k in WRAPPER_KEYS if _tensor_count(obj.get(k)) > 0]
    if not candidates and _tensor_count(obj) == 0:
        candidates = [k for k, v in obj.items() if isinstance(k, str) and _tensor_count(v) > 0]
        if len(candidates) > 1:
            raise CheckpointError(
                "holds several dicts of tensors (" + ", ".join(candidates[:8]) + "); "
                "choose one with --key",
                path,
            )
    if not candidates:
        if _tensor_count(obj) == 0:
            raise CheckpointError("holds no tensors", path)
        return None, []
    chosen = candidates[0]
    note = f"using the state dict under key '{chosen}'"
    others = [c for c in candidates[1:]]
    if others:
        note += f" (also present: {', '.join(others)}; pick with --key)"
    return chosen, [note]


def _navigate(obj: Any, key: str | None, path: Path) -> Mapping[str, Any]:
    if key is None:
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"not a state dict: holds a {type(obj).__name__}", path)
        return obj
    node = obj
    for part in key.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            available = ", ".join(str(k) for k in obj) if isinstance(obj, Mapping) else ""
            raise CheckpointError(f"has no key '{key}' (top-level keys: {available})", path)
        node = node[part]
    if _tensor_count(node) == 0:
        raise CheckpointError(f"key '{key}' does not hold a dict of tensors", path)
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


def _torch_infos(
    state: Mapping[str, Any], file: Path
) -> tuple[dict[str, TensorInfo], dict[str, str], list[str]]:
    infos: dict[str, TensorInfo] = {}
    aliases: dict[str, str] = {}
    non_tensors: list[str] = []
    seen: dict[tuple[int, int, tuple[int, ...], tuple[int, ...], str], str] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            continue
        if not _is_tensor(value):
            non_tensors.append(key)
            continue
        dtype = str(value.dtype).removeprefix("torch.")
        infos[key] = TensorInfo(key, tuple(value.shape), dtype, file, key)
        if value.numel() > 0 and value.layout.__repr__() == "torch.strided":
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
    return infos, aliases, non_tensors


def open_checkpoint(
    path: str | os.PathLike[str], *, key: str | None = None, skip_objects: bool = False
) -> Checkpoint:
    """Open a checkpoint file, sharded index or folder; read headers, not weights.

    ``key`` selects the state dict inside a wrapped PyTorch file (``state_dict``, ``ema``…);
    without it the first of ``WRAPPER_KEYS`` that holds tensors is used.
    """
    path = Path(path)
    if not path.exists():
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


def _open_index(index: Path, *, key: str | None, skip_objects: bool) -> Checkpoint:
    try:
        data = json.loads(index.read_text(encoding="utf-8"), object_pairs_hook=_reject_duplicates)
    except OSError as exc:
        raise CheckpointError(f"cannot read index: {exc.strerror or exc}", index) from exc
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"malformed index json: {_describe(exc)}", index) from exc
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError("index json has no 'weight_map' object", index)
    folder = index.parent.resolve()
    shards: dict[str, Path] = {}
    for tensor_name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard:
            raise CheckpointError(f"index maps {tensor_name!r} to a non-path {shard!r}", index)
        if shard not in shards:
            candidate = (folder / shard).resolve()
            if os.path.isabs(shard) or not candidate.is_relative_to(folder):
                raise CheckpointError(f"index points outside its folder: {shard!r}", index)
            if not candidate.is_file():
                raise CheckpointError(f"index points to a missing shard {shard!r}", index)
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
                f"index lists {tensor_name!r} in {shard!r}, but that shard does not hold it",
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
                raise CheckpointError(f"tensor {name!r} appears in two shards", path)
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
    )


def _open_torch(
    files: list[Path], path: Path, *, index: Path | None, key: str | None, skip_objects: bool
) -> Checkpoint:
    tensors: dict[str, TensorInfo] = {}
    aliases: dict[str, str] = {}
    non_tensors: list[str] = []
    notes: list[str] = []
    wrapper: str | None = key
    containers: dict[Path, Any] = {}
    states: dict[Path, Mapping[str, Any]] = {}
    for number, file in enumerate(files):
        obj = load_torch_file(file, skip_objects=skip_objects)
        if number == 0:
            wrapper, wrapper_notes = choose_state_dict(obj, key, file)
            notes += wrapper_notes
            if sniff_format(file) == "torch-legacy":
                notes.append(
                    "legacy (non-zip) PyTorch file: loaded fully into memory; "
                    "re-save it as safetensors for lazy reading"
                )
            if skip_objects and _unsafe_globals(file):
                notes.append(
                    "objects outside PyTorch's allowlist were loaded as inert placeholders "
                    "(--skip-objects); no code from the file ran"
                )
        state = _navigate(obj, wrapper, file)
        infos, file_aliases, file_non_tensors = _torch_infos(state, file)
        for name in infos:
            if name in tensors:
                raise CheckpointError(f"tensor {name!r} appears in two shards", path)
        tensors.update(infos)
        aliases.update(file_aliases)
        non_tensors += file_non_tensors
        if len(files) == 1:
            containers[file] = obj
            states[file] = state
        else:
            del obj, state
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
        _state_dicts=states,
        _containers=containers,
        _skip_objects=skip_objects,
    )
