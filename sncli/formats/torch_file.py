"""PyTorch files (zip or legacy): loaded only with ``torch.load(..., weights_only=True)``, with
refusals that say why and how to proceed safely."""

from __future__ import annotations

import warnings
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from sncli.errors import CheckpointError, UnsafePickleError, WriteError
from sncli.formats import sniff_format
from sncli.formats.common import describe, shown_names
from sncli.formats.pickle_scan import (
    MAX_PICKLE_DEPTH,
    PickleScan,
    blocked_names,
    dangerous_names,
    inert_placeholder,
    scan_pickles,
)
from sncli.formats.torch_zip import ZipCheck, check_record_sizes, check_zip
from sncli.messages import clean_text

if TYPE_CHECKING:
    import torch

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def scan_pickle_globals(path: Path) -> list[str]:
    """Every global a PyTorch file's pickle names, read statically: nothing is imported or run.

    Works for zip and legacy files (``torch.serialization.get_unsafe_globals_in_checkpoint``
    handles zip files only).
    """
    return _scan_file(path).globals


def _scan_file(path: Path, check: ZipCheck | None = None) -> PickleScan:
    import io

    kind = sniff_format(path)
    if kind == "torch-zip":
        return scan_pickles(io.BytesIO((check or check_zip(path)).pickle), 1)
    # Read, not mapped: a file truncated while mapped would kill the process (SIGBUS).
    with path.open("rb") as handle:
        # legacy: magic number, protocol version, sys info, the object, the storage keys
        return scan_pickles(handle, 5)


def _refuse_before_loading(path: Path, scan: PickleScan, check: ZipCheck | None) -> None:
    """What torch must never see: nesting that crashes its unpickler (SIGSEGV), calls that
    allocate memory no bytes of the file back, records larger than their storages need."""
    if scan.too_deep:
        raise CheckpointError(
            f"refused to unpickle: the pickle nests objects more than {MAX_PICKLE_DEPTH} levels "
            "deep (or in a cycle), which crashes PyTorch's loader; nothing from the file was run",
            path,
        )
    if scan.allocations:
        raise CheckpointError(
            f"refused to unpickle: the pickle calls {clean_text(scan.allocations[0])}, which "
            "allocates memory that no bytes of the file back (a memory bomb, or uninitialized "
            "values passed off as weights); nothing from the file was run",
            path,
        )
    if check is not None:
        if scan.end > 0 and len(check.pickle) - scan.end > 4096:
            raise CheckpointError(
                f"damaged zip archive: data.pkl holds {len(check.pickle) - scan.end} bytes "
                "after its pickle ends (padding, as in a decompression bomb)",
                path,
            )
        check_record_sizes(path, check, scan.storages)


def load_torch_file(path: Path, *, skip_objects: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True`` (mmap for zip files), errors made readable.

    With ``skip_objects``, globals outside PyTorch's allowlist are replaced by inert placeholders
    before loading, so a Lightning checkpoint whose hyper-parameters hold Python objects still
    loads. Nothing named in the file is imported or called either way.
    """
    return load_torch_object(path, skip_objects=skip_objects)[0]


def load_torch_object(
    path: Path, *, skip_objects: bool
) -> tuple[Any, list[str], dict[int, set[int]]]:
    """Load a PyTorch file; also return the globals replaced by placeholders and record CRCs."""
    import pickle

    import torch

    kind = sniff_format(path)
    if kind == "safetensors":
        raise CheckpointError("is a safetensors file, not a PyTorch file", path)
    crcs: dict[int, set[int]] = {}
    use_mmap = False
    check = None
    if kind in ("torch-zip", "torchscript"):  # check_zip refuses TorchScript with a reason
        check = check_zip(path)
        crcs, use_mmap = check.record_crcs, check.mmap_ok
    scan = _scan_file(path, check)
    _refuse_before_loading(path, scan, check)
    replaced: list[str] = []
    if skip_objects:
        unsafe = scan.unsafe()
        blocked = set(blocked_names(unsafe))
        replaced = [name for name in unsafe if name not in blocked]
    placeholders = [(inert_placeholder(name), name) for name in replaced]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one line on stderr per error, nothing else
            with torch.serialization.safe_globals(placeholders):
                obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as exc:
        raise _refusal(path, exc, scan, skip_objects) from exc
    except CheckpointError:
        raise
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:
        detail = _unformatted(describe(exc))
        if "wrong byte size" in detail:  # torch's text leaves its numbers unfilled ("? got ?…")
            detail = "a storage's byte count in the file disagrees with its declared size"
        raise CheckpointError(f"damaged or unreadable PyTorch file: {detail}", path) from exc
    return obj, replaced, crcs


def _unformatted(text: str) -> str:
    """Some torch errors carry printf placeholders never filled in ("size %ld"): show "?"."""
    import re

    return re.sub(r"%(?:l{0,2}|z|h)[diuxs]", "?", text)


def _refusal(
    path: Path, exc: BaseException, scan: PickleScan, skip_objects: bool
) -> CheckpointError:
    """The error for a pickle the weights-only unpickler refused, saying how to proceed safely."""
    unsafe = scan.unsafe()
    blocked = blocked_names(unsafe)
    dangerous = dangerous_names(unsafe)
    if blocked or (dangerous and skip_objects):
        return UnsafePickleError(
            f"refused to unpickle: the file references {shown_names(blocked or dangerous)}, "
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
            f" {shown_names(dangerous)} can run code, so the file may be malicious."
            if dangerous
            else " Common in Lightning checkpoints whose hyper_parameters hold objects."
        )
        return UnsafePickleError(
            "refused to unpickle: the file references Python objects outside PyTorch's "
            f"weights-only allowlist ({shown_names(unsafe)}).{warning} Nothing from the file "
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


def unsupported_reason(value: torch.Tensor) -> str | None:
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


def write_edited_torch(
    source: Path,
    handle: BinaryIO,
    container: Any,
    new: Mapping[str, Any],
    *,
    key: str | None,
    aliases: Mapping[str, str],
    renames: Mapping[str, str],
    dropped: Collection[str],
) -> None:
    """``container`` (what ``source`` holds) saved to ``handle`` with its state dict (at ``key``,
    a ``/`` path into wrappers) rebuilt: ``new`` tensors in place of the old ones (an alias gets
    its origin's), keys renamed and dropped, everything else kept; the legacy format when
    ``source`` is one."""
    import torch

    state = _state_within(container, key)
    rebuilt = type(state)() if isinstance(state, dict) else {}
    aliases = {alias: origin for alias, origin in aliases.items()}
    for name, value in state.items():
        if name in dropped:
            continue
        origin = aliases.get(name, name)
        replacement = new.get(origin)
        rebuilt[renames.get(name, name)] = value if replacement is None else replacement
    if hasattr(state, "_metadata"):
        rebuilt._metadata = state._metadata  # type: ignore[attr-defined]
    output = _replace_within(container, key, rebuilt)
    legacy = sniff_format(source) == "torch-legacy"
    try:
        torch.save(output, handle, _use_new_zipfile_serialization=not legacy)
    except RecursionError as exc:
        raise WriteError(
            "cannot write: the checkpoint's non-tensor contents (e.g. hyper_parameters) "
            "are nested too deeply to save; nothing was changed",
            source,
        ) from exc


def _state_within(container: Any, key: str | None) -> Any:
    node = container
    for part in key.split("/") if key else []:
        node = node[part]
    return node


def _replace_within(container: Any, key: str | None, state: Any) -> Any:
    if key is None:
        return state
    parts = key.split("/")

    def rebuild(node: Any, depth: int) -> Any:
        copy = type(node)(node) if isinstance(node, dict) else dict(node)
        copy[parts[depth]] = (
            state if depth == len(parts) - 1 else rebuild(node[parts[depth]], depth + 1)
        )
        return copy

    return rebuild(container, 0)
