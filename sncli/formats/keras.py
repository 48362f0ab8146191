"""Keras weights: ``.keras`` archives (a zip holding ``model.weights.h5``) and HDF5 ``.h5`` files
(Keras 3 ``save_weights``, legacy ``model.save('x.h5')`` and tf.keras 2 files), read with h5py.

Keras itself is never imported (``keras.models.load_model`` deserializes layers and can run
Lambda-layer code). The HDF5 tree is walked without following links: external links (a path to
another file), virtual datasets and datasets with external storage are refused; soft links are
not followed. Each dataset's claimed size (shape × itemsize) is checked against the bytes the
file stores for it before it is read.

Names and orientation become PyTorch's, so layers classify and measure as for a state dict:
Keras 3 stores a layer's variables by index (``layers/dense/vars/0``); the group name gives
the class (``dense``, ``conv2d``, ``batch_normalization``…) and so the role of each index.
``kernel`` becomes ``weight``: a Dense kernel, stored (in, out), is transposed to (out, in); a
Conv kernel, stored (k…, in, out), is permuted to (out, in, k…) — for ConvTranspose, stored
(k…, out, in), the same permutation gives PyTorch's (in, out, k…). σ is unchanged by either.
``embeddings`` → ``weight``; BatchNorm's ``gamma, beta, moving_mean, moving_variance`` →
``weight, bias, running_mean, running_var``.
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sncli.arrays import to_torch
from sncli.errors import CheckpointError
from sncli.formats.common import FormatContents, describe, quote, regular_file_size
from sncli.messages import clean_text

WEIGHTS_MEMBER = "model.weights.h5"
_DEFLATE_RATIO = 1100
_MAX_OBJECTS = 200_000
_MAX_DEPTH = 64
#: Keras 3 layer classes (their snake-case group names) → the role of each stored variable.
_ROLES: dict[str, tuple[str, ...]] = {
    "dense": ("kernel", "bias"),
    "embedding": ("embeddings",),
    "batch_normalization": ("gamma", "beta", "moving_mean", "moving_variance"),
    "layer_normalization": ("gamma", "beta"),
    "group_normalization": ("gamma", "beta"),
    "rms_normalization": ("scale",),
    "prelu": ("alpha",),
}
for _conv in ("conv1d", "conv2d", "conv3d", "conv1d_transpose", "conv2d_transpose"):
    _ROLES[_conv] = ("kernel", "bias")
_ROLES["conv3d_transpose"] = ("kernel", "bias")
#: Keras names → PyTorch's, for the parameters classification reads.
_PYTORCH_NAMES = {
    "kernel": "weight",
    "embeddings": "weight",
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}


@dataclass(frozen=True)
class _Variable:
    path: str  # the dataset's path in the HDF5 file
    transform: str  # "", "transpose" (Dense kernel) or "conv" ((k…, in, out) → (out, in, k…))
    shape: tuple[int, ...]  # as reported (after the transform)
    dtype: str


def _torch_dtype(dtype: Any) -> str | None:
    if dtype.kind not in "biufc" or dtype.fields is not None or dtype.subdtype is not None:
        return None
    name = str(dtype.newbyteorder("="))
    return None if name in ("float128", "complex256", "longdouble") else name


def _check_dataset(dataset: Any, name: str, path: Path) -> None:
    """Refuse what h5py would read from outside the file or allocate beyond what it stores."""
    if dataset.is_virtual:
        raise CheckpointError(
            f"HDF5 dataset {quote(name)} is virtual (maps other files); refused", path
        )
    if dataset.external:
        raise CheckpointError(
            f"HDF5 dataset {quote(name)} keeps its data in external files; refused", path
        )
    claimed = dataset.size * dataset.dtype.itemsize
    if claimed == 0:
        return
    stored = dataset.id.get_storage_size()
    if dataset.id.get_create_plist().get_nfilters() > 0:  # compressed: bounded by deflate's ratio
        fits = stored > 0 and claimed <= stored * _DEFLATE_RATIO + 4096
    else:
        fits = stored >= claimed
    if not fits:
        raise CheckpointError(
            f"HDF5 dataset {quote(name)} claims {claimed} bytes ({dataset.dtype.str} × "
            f"{dataset.shape}), but the file stores {stored} for it",
            path,
        )


def _walk(
    group: Any, path: Path, prefix: str = "", depth: int = 0, seen: list[int] | None = None
) -> Iterator[tuple[str, Any]]:
    """(HDF5 path, dataset) for every dataset under ``group``, following no link."""
    import h5py

    seen = seen if seen is not None else [0]
    if depth > _MAX_DEPTH:
        raise CheckpointError("HDF5 groups nested too deeply", path)
    for key in group:
        seen[0] += 1
        if seen[0] > _MAX_OBJECTS:
            raise CheckpointError(f"HDF5 file holds more than {_MAX_OBJECTS} objects", path)
        name = f"{prefix}{key}"
        link = group.get(key, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            raise CheckpointError(
                f"HDF5 external link {quote(name)} → {quote(link.filename)}:{quote(link.path)} "
                "points to another file; refused",
                path,
            )
        if isinstance(link, h5py.SoftLink):
            continue  # an alias inside the file: never followed (its target is listed anyway)
        item = group.get(key)
        if isinstance(item, h5py.Dataset):
            _check_dataset(item, name, path)
            yield name, item
        elif isinstance(item, h5py.Group):
            yield from _walk(item, path, f"{name}/", depth + 1, seen)


def _keras3_names(datasets: dict[str, Any]) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """Keras 3 ``layers/<class>/vars/<i>`` → (PyTorch-style name, role) and notes."""
    notes: list[str] = []
    by_layer: dict[str, list[str]] = {}
    for name in datasets:
        layer, _, index = name.rpartition("/vars/")
        if index.isdigit():
            by_layer.setdefault(layer, []).append(name)
    names: dict[str, tuple[str, str]] = {}
    guessed = []
    for layer, members in by_layer.items():
        members.sort(key=lambda n: int(n.rpartition("/")[2]))
        parts = [p for p in layer.split("/") if p != "layers"]
        kind = re.sub(r"_\d+$", "", parts[-1]) if parts else ""
        roles = _ROLES.get(kind)
        if roles is None or len(members) > len(roles):
            roles = _guess_roles([datasets[m] for m in members])
            if kind and not layer.startswith("optimizer"):
                guessed.append(parts[-1])
        prefix = ".".join(parts)
        for member, role in zip(members, roles, strict=False):
            names[member] = (f"{prefix}.{_PYTORCH_NAMES.get(role, role)}", role)
    if guessed:
        shown = ", ".join(clean_text(g, 40) for g in guessed[:4])
        notes.append(
            f"Keras layers of unknown class ({shown}): a variable's role is guessed from its "
            "position and shape (first ≥2-D variable = kernel, a 1-D variable after it = bias)"
        )
    return names, notes


def _guess_roles(datasets: list[Any]) -> tuple[str, ...]:
    roles = []
    for index, dataset in enumerate(datasets):
        if index == 0 and len(dataset.shape) >= 2:
            roles.append("kernel")
        elif index == 1 and roles == ["kernel"] and len(dataset.shape) == 1:
            roles.append("bias")
        else:
            roles.append(f"vars.{index}")
    return tuple(roles)


def _legacy_names(datasets: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Legacy ``.h5`` (``layer/layer/kernel:0``) → (PyTorch-style name, role)."""
    names = {}
    for name in datasets:
        parts = name.removeprefix("model_weights/").split("/")
        parts = [p for i, p in enumerate(parts) if i == 0 or p != parts[i - 1]]
        leaf = re.sub(r":\d+$", "", parts[-1])
        names[name] = (".".join([*parts[:-1], _PYTORCH_NAMES.get(leaf, leaf)]), leaf)
    return names


def _transform(role: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
    if role != "kernel" or len(shape) < 2:
        return "", shape
    if len(shape) == 2:
        return "transpose", (shape[1], shape[0])
    return "conv", (shape[-1], shape[-2], *shape[:-2])


def _read_tree(h5: Any, path: Path) -> tuple[dict[str, _Variable], dict[str, str], list[str]]:
    datasets = dict(_walk(h5, path))
    skipped_optimizer = [n for n in datasets if n.startswith(("optimizer", "optimizer_weights"))]
    for name in skipped_optimizer:
        del datasets[name]
    notes = []
    if skipped_optimizer:
        notes.append(f"{len(skipped_optimizer)} optimizer variables skipped (not model weights)")
    if any("/vars/" in n for n in datasets):
        names, extra = _keras3_names(datasets)
        notes += extra
    else:
        names = _legacy_names(datasets)
    variables: dict[str, _Variable] = {}
    unsupported: dict[str, str] = {}
    for h5_name, (name, role) in names.items():
        dataset = datasets[h5_name]
        if name in variables:
            raise CheckpointError(f"two Keras variables map to the name {quote(name)}", path)
        dtype = _torch_dtype(dataset.dtype)
        transform, shape = _transform(role, tuple(int(d) for d in dataset.shape))
        variables[name] = _Variable(h5_name, transform, shape, dtype or dataset.dtype.str)
        if dtype is None:
            unsupported[name] = f"HDF5 dtype {dataset.dtype.str} has no PyTorch equivalent"
    if any(v.transform for v in variables.values()):
        notes.append(
            "Keras kernels are reported in PyTorch's orientation: Dense (in, out) transposed to "
            "(out, in), Conv (k…, in, out) permuted to (out, in, k…); kernel → weight, "
            "BatchNorm gamma/beta/moving_* → weight/bias/running_*"
        )
    return variables, unsupported, notes


def _load(h5: Any, variable: _Variable) -> Any:
    """One variable as torch (:func:`_load_array`'s values)."""
    return to_torch(_load_array(h5, variable))


def _load_array(h5: Any, variable: _Variable) -> Any:
    """One variable as a C-ordered NumPy array in PyTorch's layout (transposed/permuted)."""
    import numpy as np

    array = h5[variable.path][()]
    array = np.asarray(array, dtype=array.dtype.newbyteorder("="))
    array = np.array(array, order="C")
    if variable.transform == "transpose":
        array = array.T
    elif variable.transform == "conv":
        array = array.transpose(array.ndim - 1, array.ndim - 2, *range(array.ndim - 2))
    return array if array.flags.c_contiguous else array.copy(order="C")


class _Window(io.RawIOBase):
    """A read-only window of a file: a stored zip member, seen by h5py as a file of its own."""

    def __init__(self, path: Path, start: int, length: int) -> None:
        self._handle = path.open("rb")
        self._start, self._length, self._pos = start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        count = max(0, min(len(buffer), self._length - self._pos))
        self._handle.seek(self._start + self._pos)
        data = self._handle.read(count)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        self._handle.close()
        super().close()


def _open_member(path: Path) -> tuple[Any, Callable[[], None]]:
    """``model.weights.h5`` of a ``.keras`` zip as a file object (a window when stored)."""
    size = regular_file_size(path)
    archive = zipfile.ZipFile(path)
    try:
        info = archive.getinfo(WEIGHTS_MEMBER)
    except KeyError:
        elsewhere = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == WEIGHTS_MEMBER]
        archive.close()
        if elsewhere:
            raise CheckpointError(
                f"damaged .keras archive: its weights member is named {quote(elsewhere[0])}, "
                f"not {WEIGHTS_MEMBER} at the top of the archive (refused)",
                path,
            ) from None
        raise CheckpointError(f".keras archive without {WEIGHTS_MEMBER}", path) from None
    stored = info.compress_type == zipfile.ZIP_STORED
    limit = info.compress_size if stored else info.compress_size * _DEFLATE_RATIO + 4096
    if info.file_size > limit or info.header_offset + info.compress_size > size:
        archive.close()
        raise CheckpointError(
            f"damaged .keras archive: {WEIGHTS_MEMBER} claims {info.file_size} bytes, more than "
            "the file can hold",
            path,
        )
    if not stored:
        stream = archive.open(info)
        return stream, lambda: (stream.close(), archive.close())
    archive.close()
    with path.open("rb") as handle:
        handle.seek(info.header_offset)
        local = handle.read(30)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise CheckpointError(f"damaged .keras archive: bad header for {WEIGHTS_MEMBER}", path)
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if start + info.file_size > size:
        raise CheckpointError(f"truncated .keras archive: {WEIGHTS_MEMBER} is cut", path)
    window = _Window(path, start, info.file_size)
    return window, window.close


def _read(path: Path, fmt: str) -> FormatContents:
    import h5py

    source: Any = str(path)
    closers: list[Callable[[], Any]] = []
    try:
        if fmt == "keras":
            source, close_member = _open_member(path)
            closers.append(close_member)
        h5 = h5py.File(source, "r")
        closers.insert(0, h5.close)
        variables, unsupported, notes = _read_tree(h5, path)
    except CheckpointError:
        for close in closers:
            close()
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, zipfile.BadZipFile) as exc:
        for close in closers:
            close()
        raise CheckpointError(f"cannot read Keras/HDF5 weights: {describe(exc)}", path) from exc
    if not variables:
        for close in closers:
            close()
        raise CheckpointError("HDF5 file holds no weights", path)

    def close_all() -> None:
        for close in closers:
            close()

    return FormatContents(
        format=fmt,
        files=[path],
        tensors={name: (v.shape, v.dtype) for name, v in variables.items()},
        load=lambda name: _load(h5, variables[name]),
        load_array=lambda name: _load_array(h5, variables[name]),
        notes=notes,
        unsupported=unsupported,
        close=close_all,
    )


def read_keras(path: Path) -> FormatContents:
    """A ``.keras`` archive's ``model.weights.h5``, read in place (never extracted)."""
    return _read(path, "keras")


def read_hdf5(path: Path) -> FormatContents:
    """A Keras ``.h5`` weights file (Keras 3 ``save_weights``, legacy and tf.keras 2 layouts)."""
    return _read(path, "hdf5")
