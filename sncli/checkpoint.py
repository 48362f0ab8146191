"""Open checkpoints of every supported format and read their tensors one at a time.

The façade over ``sncli.formats``: it picks the reader for a path (a file, a folder or a
sharded ``*.index.json``), assembles what the reader found into a ``Checkpoint`` (tensor names,
shapes, dtypes, notes) and loads tensor data on demand. Supported: safetensors and PyTorch
``torch.save`` files (zip or legacy), single or sharded.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sncli.arrays import from_torch
from sncli.dtypes import SAFETENSORS_DTYPES
from sncli.errors import CheckpointError
from sncli.experts import ExpertSlice, StackScan, scan_stacks
from sncli.formats import sniff_format
from sncli.formats.common import FormatContents, describe, quote, shown_names
from sncli.formats.pickle_scan import dangerous_names
from sncli.formats.safetensors import SafetensorsStreamReader, read_safetensors_header
from sncli.formats.sharded import check_shards_hold, read_index, resolve_directory
from sncli.formats.torch_file import load_torch_file, load_torch_object, unsupported_reason
from sncli.formats.torch_wrappers import (
    choose_state_dict,
    common_prefix,
    is_tensor,
    module_state,
    navigate,
    unwrap_modules,
)
from sncli.formats.torch_zip import storage_crc32
from sncli.messages import Level, Message, clean_text
from sncli.parametrizations import WeightNormPair, weight_norm_pairs
from sncli.transaction import refuse_unfinished

if TYPE_CHECKING:
    import torch

    from sncli.formats.peft import Adapter


#: Above this many parameters a checkpoint is measured with torch's kernels when torch is
#: installed and the CPU is Intel's, even where it is read without torch: there one-thread MKL's
#: thin float32 products ran ~4.8× OpenBLAS's and, on a 302M bf16 checkpoint, the NumPy path's
#: slower `auto` ate the ~1.2 s that not importing torch saves (bench/README.md, "Without
#: torch"). On AMD EPYC MKL is the slow one (4×1024-column products 6× OpenBLAS's, float64 Gram
#: 2×; 302M `inspect` 3.7 s with torch's kernels, 1.75 s with NumPy's), so there NumPy stays.
NUMPY_KERNELS_MAX_PARAMETERS = 300_000_000


def _intel_cpu() -> bool:
    """Whether /proc/cpuinfo names an Intel CPU (MKL's fast case); False where unreadable."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("vendor_id"):
                    return "GenuineIntel" in line
    except OSError:
        pass
    return False


#: The key of ``Checkpoint._handles`` holding the safetensors stream reader.
_STREAM = Path("\0stream")


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


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key that puts ``layers.2`` before ``layers.10``."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)
    )


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
    #: Globals that --skip-objects loaded as inert placeholders (their contents are not kept).
    placeholders: list[str] = field(default_factory=list)
    #: The op that uses a tensor as its weight, where the file's graph says so (ONNX): tensor
    #: key → ``Conv``, ``ConvTranspose``, ``Gemm`` or ``MatMul``.
    roles: dict[str, str] = field(default_factory=dict)
    _state_dicts: dict[Path, Mapping[str, Any]] = field(default_factory=dict, repr=False)
    _handles: dict[Path, Any] = field(default_factory=dict, repr=False)
    _containers: dict[Path, Any] = field(default_factory=dict, repr=False)
    _skip_objects: bool = field(default=False, repr=False)
    _record_crcs: dict[Path, dict[int, set[int]]] = field(default_factory=dict, repr=False)
    _verified: set[tuple[Path, int]] = field(default_factory=set, repr=False)
    #: (size, mtime_ns) of each file when it was opened: a Dask worker that sees other values
    #: refuses to read it (sncli.run.dask).
    stamps: dict[Path, tuple[int, int]] = field(default_factory=dict, repr=False)
    #: The reader of a format in ``FORMAT_READERS`` (ONNX, GGUF…): what it found, loads included.
    _contents: FormatContents | None = field(default=None, repr=False)
    #: A LoRA adapter's modules, factors and scales when the file is one (``sncli.adapters``).
    adapter: Adapter | None = None
    #: Mixture-of-experts stacks (``sncli.experts``): ``load("KEY[e]")`` reads expert e alone.
    experts: StackScan = field(default_factory=StackScan)
    _large: bool | None = field(default=None, repr=False)

    @property
    def conv_layout_known(self) -> bool:
        """Whether the reader knew each conv weight's op, so dim 0 first is its matrix's rows."""
        return self._contents is not None and self._contents.conv_layout_known

    def short_name(self, name: str) -> str:
        """The name with a stripped common prefix (``module.``) removed."""
        return name[len(self.prefix) :] if self.prefix and name.startswith(self.prefix) else name

    def load(self, name: str) -> torch.Tensor:
        """Read one tensor (CPU, stored dtype). Memory stays near that tensor's size.

        A name from ``derived`` gives the composed weight (float64). Tensors come detached: a
        file may store ``nn.Parameter``s (``requires_grad=True``), which no reader here needs.
        """
        pair = self.derived.get(name)
        if pair is not None:
            return pair.compose(self.load(pair.g_key), self.load(pair.v_key))
        part = self.experts.slices.get(name)
        if part is not None:
            name = part.stack
        info = self.tensors[name]
        if name in self.unsupported:
            raise CheckpointError(f"tensor {quote(name)}: {self.unsupported[name]}", info.file)
        try:
            if part is not None:
                return self._load_expert(info, part)
            if self._contents is not None:
                return self._contents.load(info.key).detach()
            if self.format == "safetensors":
                if sys.byteorder == "little":
                    # Read, not mapped: no SIGBUS if the file is truncated meanwhile, no pages
                    # left resident, and file names that are not UTF-8 work.
                    return self._safetensors_reader().read(info.file, info.key)
                return self._safetensors_handle(info.file).get_tensor(info.key)
            tensor = self._state_dict(info.file)[info.key]
            self._verify_crc(info, tensor)
            return tensor.detach()
        except CheckpointError:
            raise
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:  # safetensors raises Rust panics (BaseException) too
            raise CheckpointError(
                f"cannot read tensor {quote(name)}: {describe(exc)}", info.file
            ) from exc

    @property
    def numpy_native(self) -> bool:
        """Whether the engines measure this checkpoint on NumPy: :meth:`load_array` reads it
        without torch (safetensors, GGUF, NumPy, Keras, ONNX), or it is a state dict in memory
        (``sncli.Tracker``: its tensors are shared with NumPy, so a state dict gives the numbers
        its saved safetensors file gives). PyTorch files keep torch's kernels, and so do files
        over :data:`NUMPY_KERNELS_MAX_PARAMETERS` on Intel CPUs when torch is installed: there
        torch's MKL products save more than importing torch costs."""
        if self._contents is not None:
            native = self._contents.load_array is not None
        else:
            native = self.format == "memory" or (
                self.format == "safetensors" and sys.byteorder == "little"
            )
        return native and (self.format == "memory" or not self._large_with_torch())

    def _large_with_torch(self) -> bool:
        if self._large is None:
            from importlib.util import find_spec

            parameters = sum(info.numel for info in self.tensors.values())
            self._large = (
                parameters > NUMPY_KERNELS_MAX_PARAMETERS
                and _intel_cpu()
                and find_spec("torch") is not None
            )
        return self._large

    def load_array(self, name: str) -> Any:
        """``load(name)`` as a NumPy array (bfloat16 as :class:`sncli.arrays.BFloat16Array`).

        Safetensors, GGUF, NumPy, Keras and ONNX files are read without importing torch; other
        formats load through torch and are converted (sharing memory where the dtype allows).
        """
        pair = self.derived.get(name)
        if pair is not None:
            return pair.compose_array(self.load_array(pair.g_key), self.load_array(pair.v_key))
        part = self.experts.slices.get(name)
        key = part.stack if part is not None else name
        info = self.tensors[key]
        if key in self.unsupported:
            raise CheckpointError(f"tensor {quote(key)}: {self.unsupported[key]}", info.file)
        try:
            matrix = self._read_array(info, part)
        except CheckpointError:
            raise
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:
            raise CheckpointError(
                f"cannot read tensor {quote(key)}: {describe(exc)}", info.file
            ) from exc
        if matrix is None:  # no NumPy reader for this format or dtype: through torch
            return from_torch(self.load(name))
        return matrix.T if part is not None and part.transposed else matrix

    def _read_array(self, info: TensorInfo, part: ExpertSlice | None) -> Any:
        """The stored tensor (or ``part`` of a stack, as stored) as NumPy, or None when only
        torch can read it."""
        contents = self._contents
        if contents is not None:
            if contents.load_array is None:
                return None
            if part is None:
                return contents.load_array(info.key)
            if contents.load_slice_array is not None:
                return contents.load_slice_array(info.key, part.index)
            return contents.load_array(info.key)[part.index].copy()
        if self.format == "safetensors" and sys.byteorder == "little":
            reader = self._safetensors_reader()
            if part is None:
                return reader.read_array(info.file, info.key)
            return reader.read_slice_array(info.file, info.key, part.index)
        return None

    def _load_expert(self, info: TensorInfo, part: ExpertSlice) -> torch.Tensor:
        """One expert of a stack, oriented (out, in), reading only its slice where the format
        allows (safetensors, GGUF; a PyTorch file's slice is a view of its mapped storage)."""
        contents = self._contents
        if contents is not None and contents.load_slice is not None:
            matrix = contents.load_slice(info.key, part.index)
        elif contents is not None:
            matrix = contents.load(info.key)[part.index].clone()
        elif self.format == "safetensors" and sys.byteorder == "little":
            matrix = self._safetensors_reader().read_slice(info.file, info.key, part.index)
        elif self.format == "safetensors":
            matrix = self._safetensors_handle(info.file).get_slice(info.key)[part.index]
        else:
            stack = self._state_dict(info.file)[info.key]
            self._verify_crc(info, stack)
            matrix = stack[part.index]
        matrix = matrix.detach()
        return matrix.t() if part.transposed else matrix

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
        if storage_crc32(storage) not in expected:
            raise CheckpointError(
                f"damaged PyTorch file: the data of tensor {quote(info.name)} fails its "
                "CRC-32 check (the file is corrupt or was modified)",
                info.file,
            )
        self._verified.add(key)

    def _safetensors_reader(self) -> SafetensorsStreamReader:
        reader = self._handles.get(_STREAM)
        if reader is None:
            reader = self._handles[_STREAM] = SafetensorsStreamReader()
        return reader

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
            self._state_dicts[file] = navigate(unwrap_modules(obj), self.wrapper_key, file)
        return self._state_dicts[file]

    def close(self) -> None:
        if self._contents is not None and self._contents.close is not None:
            self._contents.close()
        reader = self._handles.get(_STREAM)
        if reader is not None:
            reader.close()
        self._handles.clear()
        self._state_dicts.clear()
        self._containers.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
        if not is_tensor(value):
            non_tensors.append(key)
            continue
        dtype = str(value.dtype).removeprefix("torch.")
        infos[key] = TensorInfo(key, tuple(value.shape), dtype, file, key)
        reason = unsupported_reason(value)
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
        from sncli.hub import looks_like_repo_id

        if looks_like_repo_id(os.fspath(path)):
            return _open_hub_model(os.fspath(path), key=key, skip_objects=skip_objects)
        raise CheckpointError("no such file or directory", path)
    if not os.access(path, os.R_OK):
        raise CheckpointError("permission denied", path)
    if path.is_dir():
        path = resolve_directory(path)
    refuse_unfinished(path)  # an interrupted multi-file write: old and new files mixed
    if path.name.endswith(".json"):
        return _open_index(path, key=key, skip_objects=skip_objects)
    kind = sniff_format(path)
    if kind in FORMAT_READERS:
        return _open_format(path, kind, key=key)
    if kind == "safetensors":
        _no_wrapper(key, path)
        return _with_adapter(_open_safetensors([path], path, index=None))
    return _with_adapter(_open_torch([path], path, index=None, key=key, skip_objects=skip_objects))


def _with_adapter(ckpt: Checkpoint) -> Checkpoint:
    """Recognise a LoRA adapter (PEFT or kohya) among the tensors: ``ckpt.adapter``."""
    from sncli.formats.peft import read_adapter

    tensors = {name: (info.shape, info.dtype) for name, info in ckpt.tensors.items()}
    try:
        ckpt.adapter = read_adapter(ckpt.files[0], tensors, lambda n: float(ckpt.load(n)))
    except BaseException:
        ckpt.close()
        raise
    if ckpt.adapter is not None:
        ckpt.notes.extend(ckpt.adapter.notes)
    return ckpt


def _open_hub_model(text: str, *, key: str | None, skip_objects: bool) -> Checkpoint:
    """A Hugging Face model id (no such path exists): its snapshot in the local hub cache."""
    from sncli.hub import resolve_repo_id

    model = resolve_repo_id(text)
    try:
        ckpt = open_checkpoint(model.snapshot, key=key, skip_objects=skip_objects)
    except CheckpointError as exc:
        if "folder holds no checkpoint" not in exc.message:
            raise
        raise CheckpointError(
            f"the cached snapshot of '{model.repo_id}' holds no weights file (only some files "
            f"were fetched?); fetch them with `hf download {model.repo_id}`",
            text,
        ) from exc
    ckpt.notes.insert(
        0, f"'{model.repo_id}' ({model.revision}) from the Hugging Face cache: {model.snapshot}"
    )
    return ckpt


#: Formats read by a module of ``sncli.formats`` that returns ``FormatContents``: the format
#: ``sniff_format`` names → "module:function" (imported only when such a file is opened).
FORMAT_READERS: dict[str, str] = {
    "npy": "sncli.formats.npy:read_npy",
    "npz": "sncli.formats.npy:read_npz",
    "gguf": "sncli.formats.gguf:read_gguf",
    "torchscript": "sncli.formats.torchscript:read_torchscript",
    "keras": "sncli.formats.keras:read_keras",
    "hdf5": "sncli.formats.keras:read_hdf5",
    "onnx": "sncli.formats.onnx:read_onnx",
    "tflite": "sncli.formats.tflite:read_tflite",
}


def _open_format(path: Path, kind: str, *, key: str | None) -> Checkpoint:
    """Open a file of a format in ``FORMAT_READERS`` through its reader."""
    import importlib

    _no_wrapper(key, path, what=f"{kind} files")
    module, function = FORMAT_READERS[kind].split(":")
    contents: FormatContents = getattr(importlib.import_module(module), function)(path)
    tensors = {
        name: TensorInfo(name, shape, dtype, contents.files[0], name)
        for name, (shape, dtype) in contents.tensors.items()
    }
    return _assemble(
        path,
        contents.format,
        contents.files,
        tensors,
        list(contents.notes),
        None,
        unsupported=dict(contents.unsupported),
        roles=dict(contents.roles),
        _contents=contents,
    )


def _no_wrapper(key: str | None, path: Path, what: str = "safetensors files") -> None:
    """``--key`` names a dict inside a wrapped PyTorch file; other formats hold a plain state
    dict, so a key there is an error, not silently ignored."""
    if key is not None:
        raise CheckpointError(
            f"has no key '{clean_text(key)}': {what} hold a plain state dict "
            "(--key picks a state dict inside a wrapped PyTorch file)",
            path,
        )


def _open_index(index: Path, *, key: str | None, skip_objects: bool) -> Checkpoint:
    shards = read_index(index)
    files = shards.files
    kinds = {sniff_format(f) for f in files}
    if kinds == {"safetensors"}:
        _no_wrapper(key, index)
        ckpt = _open_safetensors(files, index, index=index)
    elif "safetensors" not in kinds:
        ckpt = _open_torch(files, index, index=index, key=key, skip_objects=skip_objects)
    else:
        raise CheckpointError("index mixes safetensors and PyTorch shards", index)
    check_shards_hold(
        shards, {f: {i.key for i in ckpt.tensors.values() if i.file == f} for f in files}
    )
    return ckpt


def _assemble(
    path: Path,
    format: str,
    files: list[Path],
    tensors: dict[str, TensorInfo],
    notes: list[str],
    index: Path | None,
    **details: Any,
) -> Checkpoint:
    """What every reader found, as a ``Checkpoint``: tensors in natural key order, the prefix
    every key carries (noted, and omitted from display names), weight norm's pairs."""
    ordered = {n: tensors[n] for n in sorted(tensors, key=natural_key)}
    contents = details.get("_contents")
    experts = scan_stacks(
        path,
        format,
        {n: i.shape for n, i in ordered.items()},
        contents.metadata if contents is not None else None,
    )
    prefix = common_prefix(list(ordered))
    if prefix:
        notes = [*notes, f"prefix '{prefix}' is on every key; omitted from displayed names"]
    return Checkpoint(
        path=path,
        format=format,
        files=files,
        tensors=ordered,
        notes=notes,
        prefix=prefix,
        index_path=index,
        derived=weight_norm_pairs(ordered),
        stamps=_stamps(files),
        experts=experts,
        **details,
    )


def _stamps(files: list[Path]) -> dict[Path, tuple[int, int]]:
    stamps = {}
    for file in files:
        try:
            stat = os.stat(file)
        except OSError:  # the reader already read it; a stamp is only a cross-check
            continue
        stamps[file] = (stat.st_size, stat.st_mtime_ns)
    return stamps


def _open_safetensors(files: list[Path], path: Path, *, index: Path | None) -> Checkpoint:
    tensors: dict[str, TensorInfo] = {}
    metadata: dict[Path, dict[str, str] | None] = {}
    for file in files:
        header = read_safetensors_header(file)
        metadata[file] = header.metadata
        for name, (code, shape, _) in header.tensors.items():
            if name in tensors:
                raise CheckpointError(f"tensor {quote(name)} appears in two shards", path)
            tensors[name] = TensorInfo(name, shape, SAFETENSORS_DTYPES[code][1], file, name)
    return _assemble(path, "safetensors", files, tensors, [], index, metadata=metadata)


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
        obj, replaced, crcs = load_torch_object(file, skip_objects=skip_objects)
        record_crcs[file] = crcs
        replaced_all.update(dict.fromkeys(replaced))
        unwrapped = unwrap_modules(obj)
        if number == 0:
            wrapper, wrapper_notes = choose_state_dict(unwrapped, key, file)
            notes += wrapper_notes
            if unwrapped is not obj and module_state(obj) is not None:
                notes.append("the file holds a pickled nn.Module; reading its parameters")
            if sniff_format(file) == "torch-legacy":
                notes.append(
                    "legacy (non-zip) PyTorch file: loaded fully into memory; "
                    "re-save it as safetensors for lazy reading"
                )
        state = navigate(unwrapped, wrapper, file)
        infos, file_aliases, file_non_tensors, file_unsupported = _torch_infos(state, file)
        for name in infos:
            if name in tensors:
                raise CheckpointError(f"tensor {quote(name)} appears in two shards", path)
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
        dangerous = dangerous_names(names)
        note = (
            f"objects outside PyTorch's allowlist ({shown_names(names)}) were loaded as inert "
            "placeholders (--skip-objects); no code from the file ran"
        )
        if dangerous:
            note += f". Warning: {shown_names(dangerous)} can run code; the file may be malicious"
        notes.append(Message(note, Level.SECURITY) if dangerous else note)
    return _assemble(
        path,
        "torch",
        files,
        tensors,
        notes,
        index,
        wrapper_key=wrapper,
        aliases=aliases,
        non_tensor_keys=non_tensors,
        unsupported=unsupported,
        placeholders=list(replaced_all),
        _state_dicts=states,
        _containers=containers,
        _skip_objects=skip_objects,
        _record_crcs=record_crcs,
    )
