"""A corpus of broken and hostile checkpoint files, for testing that sncli fails cleanly.

Each case is a function that writes its files into a directory and returns a ``Case``: the
path to hand to ``sncli inspect``, extra CLI arguments, the exit code sncli must give and a
fragment its one-line error must contain. ``write_corpus(folder)`` writes every case into its
own subfolder. Malicious pickles would create a marker file (``PWNED``) in their folder if their
payload ever ran.

Run as a script to write the corpus somewhere:  python tests/hostile_corpus.py OUT_DIR
"""

from __future__ import annotations

import json
import os
import pickle
import random
import struct
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The file a malicious payload would create in its case folder.
MARKER = "PWNED"

EXIT_ERROR = 1
EXIT_NO_LAYERS = 4


@dataclass(frozen=True)
class Case:
    """One corpus entry: what to run and what sncli must answer."""

    name: str
    target: Path
    exit_code: int
    message: str
    args: tuple[str, ...] = ()
    #: Set for cases sncli must accept (no error line): stderr may hold notes then.
    succeeds: bool = False
    skip_reason: str | None = None
    payload: bool = False


@dataclass
class _Registry:
    writers: dict[str, Callable[[Path], Case]] = field(default_factory=dict)


REGISTRY = _Registry()


def case(
    exit_code: int = EXIT_ERROR,
    message: str = "",
    *,
    args: tuple[str, ...] = (),
    target: str | None = None,
    payload: bool = False,
) -> Callable[[Callable[[Path], Any]], Callable[[Path], Case]]:
    """Register a writer ``f(folder) -> Path | Case`` under its function name."""

    def register(writer: Callable[[Path], Any]) -> Callable[[Path], Case]:
        name = writer.__name__

        def build(folder: Path) -> Case:
            written = writer(folder)
            if isinstance(written, Case):
                return written
            path = folder / target if target else written
            return Case(name, path, exit_code, message, args, payload=payload)

        REGISTRY.writers[name] = build
        return build

    return register


def write_corpus(root: Path) -> list[Case]:
    """Write every case into ``root/<case name>/`` and return the cases."""
    cases = []
    for name, build in REGISTRY.writers.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        cases.append(build(folder))
    return cases


# --------------------------------------------------------------------------- safetensors helpers


def safetensors_bytes(header: Any, data: bytes = b"", *, raw: bytes | None = None) -> bytes:
    """A safetensors file: u64 length, the JSON header (padded to 8 bytes), the data."""
    text = raw if raw is not None else json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def valid_safetensors() -> bytes:
    """A small valid file: a 4×4 float32 weight and a 4-element bias."""
    weight = struct.pack("<16f", *[float(i % 5) for i in range(16)])
    bias = struct.pack("<4f", 0.0, 1.0, 2.0, 3.0)
    header = {
        "__metadata__": {"format": "pt"},
        "fc.weight": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]},
        "fc.bias": {"dtype": "F32", "shape": [4], "data_offsets": [64, 80]},
    }
    return safetensors_bytes(header, weight + bias)


def _entry(dtype: str, shape: list[Any], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- plain broken files


@case(message="empty file")
def empty_file(folder: Path) -> Path:
    return _write(folder / "model.safetensors", b"")


@case(message="not a checkpoint")
def random_bytes(folder: Path) -> Path:
    data = bytearray(random.Random(1).randbytes(4096))
    data[0] = 0x41  # neither zip, pickle nor a plausible length prefix
    return _write(folder / "weights.bin", bytes(data))


@case(message="safetensors")
def random_bytes_named_safetensors(folder: Path) -> Path:
    return _write(folder / "model.safetensors", random.Random(2).randbytes(4096))


@case(message="too short for a header")
def shorter_than_length_prefix(folder: Path) -> Path:
    return _write(folder / "model.safetensors", b"\x10\x00\x00")


@case(message="truncated safetensors file")
def header_length_beyond_file(folder: Path) -> Path:
    return _write(folder / "model.safetensors", struct.pack("<Q", 1000) + b'{"a": 1}')


@case(message="claims 9223372036854775808 bytes")
def header_length_2_pow_63(folder: Path) -> Path:
    return _write(folder / "model.safetensors", struct.pack("<Q", 2**63) + b"{" + b" " * 64)


@case(message="claims 18446744073709551615 bytes")
def header_length_max_u64(folder: Path) -> Path:
    return _write(folder / "model.safetensors", b"\xff" * 8 + b"{}")


@case(message="truncated safetensors file")
def header_cut(folder: Path) -> Path:
    return _write(folder / "model.safetensors", valid_safetensors()[:40])


@case(message="fc.weight")
def data_cut(folder: Path) -> Path:
    return _write(folder / "model.safetensors", valid_safetensors()[:-30])


@case(message="truncated or padded")
def data_padded(folder: Path) -> Path:
    return _write(folder / "model.safetensors", valid_safetensors() + b"\0" * 12)


@case(message="corrupt safetensors header")
def header_not_json(folder: Path) -> Path:
    return _write(folder / "model.safetensors", safetensors_bytes(None, raw=b"{this is not json"))


@case(message="not UTF-8")
def header_not_utf8(folder: Path) -> Path:
    return _write(folder / "model.safetensors", safetensors_bytes(None, raw=b'{"\xff\xfe": 1}'))


@case(message="does not start with '{'")
def header_is_array(folder: Path) -> Path:
    return _write(folder / "model.safetensors", safetensors_bytes([1, 2, 3]))


@case(message="corrupt safetensors header")
def header_trailing_garbage(folder: Path) -> Path:
    raw = json.dumps({"a": _entry("F32", [1], 0, 4)}).encode() + b"]]"
    return _write(folder / "model.safetensors", safetensors_bytes(None, b"\0" * 4, raw=raw))


@case(message="duplicate key")
def duplicate_keys(folder: Path) -> Path:
    one = json.dumps(_entry("F32", [1], 0, 4))
    raw = f'{{"w": {one}, "w": {one}}}'.encode()
    return _write(folder / "model.safetensors", safetensors_bytes(None, b"\0" * 4, raw=raw))


@case(message="unknown dtype")
def unknown_dtype(folder: Path) -> Path:
    header = {"w": _entry("F128", [2], 0, 32)}
    return _write(folder / "model.safetensors", safetensors_bytes(header, b"\0" * 32))


@case(message="outside the")
def negative_offsets(folder: Path) -> Path:
    header = {"w": _entry("F32", [1], -4, 0)}
    return _write(folder / "model.safetensors", safetensors_bytes(header, b"\0" * 4))


@case(message="overlaps another tensor")
def overlapping_offsets(folder: Path) -> Path:
    header = {"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [2], 4, 12)}
    return _write(folder / "model.safetensors", safetensors_bytes(header, b"\0" * 12))


@case(message="leaves a gap")
def gap_between_tensors(folder: Path) -> Path:
    header = {"a": _entry("F32", [1], 0, 4), "b": _entry("F32", [1], 8, 12)}
    return _write(folder / "model.safetensors", safetensors_bytes(header, b"\0" * 12))


@case(message="outside the 8-byte data section")
def offsets_beyond_data(folder: Path) -> Path:
    header = {"w": _entry("F32", [4], 0, 16)}
    return _write(folder / "model.safetensors", safetensors_bytes(header, b"\0" * 8))


@case(message="does not match")
def shape_does_not_match_bytes(folder: Path) -> Path:
    header = {"w": _entry("F32", [4, 4], 0, 16)}
    return _write(folder / "model.safetensors", safetensors_bytes(header, b"\0" * 16))


@case(message="does not match")
def enormous_claimed_tensor(folder: Path) -> Path:
    """A header claiming a 2^40×2^40 float32 tensor over 16 bytes: nothing may be allocated."""
    header = {"w": _entry("F32", [2**40, 2**40], 0, 16)}
    return _write(folder / "model.safetensors", safetensors_bytes(header, b"\0" * 16))


@case(message="invalid shape")
def negative_dimension(folder: Path) -> Path:
    header = {"w": _entry("F32", [-1, 4], 0, 16)}
    return _write(folder / "model.safetensors", safetensors_bytes(header, b"\0" * 16))


@case(message="invalid shape")
def float_dimension(folder: Path) -> Path:
    header = {"w": _entry("F32", [2.0, 2], 0, 16)}
    return _write(folder / "model.safetensors", safetensors_bytes(header, b"\0" * 16))


@case(message="invalid shape")
def rank_one_million(folder: Path) -> Path:
    """Without a rank limit, the product of a million huge dims takes quadratic time."""
    header = {"w": _entry("F32", [2**47] * 1_000_000, 0, 4)}
    return _write(folder / "model.safetensors", safetensors_bytes(header, b"\0" * 4))


@case(message="invalid JSON constant")
def nan_in_header(folder: Path) -> Path:
    raw = b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": NaN}}'
    return _write(folder / "model.safetensors", safetensors_bytes(None, b"\0" * 4, raw=raw))


@case(message="corrupt safetensors header")
def deeply_nested_json(folder: Path) -> Path:
    raw = b'{"w": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    return _write(folder / "model.safetensors", safetensors_bytes(None, raw=raw))


@case(message="far more than entries need")
def millions_of_empty_lists(folder: Path) -> Path:
    """A 6 MB header of empty lists, ~25x bigger once parsed: refused before json.loads."""
    raw = b'{"w": [' + b"[]," * 2_000_000 + b"[]]}"
    return _write(folder / "model.safetensors", safetensors_bytes(None, raw=raw))


@case(message="__metadata__")
def metadata_not_strings(folder: Path) -> Path:
    header = {"__metadata__": {"epoch": 3}, "w": _entry("F32", [1], 0, 4)}
    return _write(folder / "model.safetensors", safetensors_bytes(header, b"\0" * 4))


@case(message="is not an object")
def entry_not_object(folder: Path) -> Path:
    header = {"w": [1, 2, 3]}
    return _write(folder / "model.safetensors", safetensors_bytes(header))


@case(message="unknown dtype")
def control_characters_in_name(folder: Path) -> Path:
    """A tensor name with a terminal escape and a newline must not reach stderr raw."""
    header = {"\x1b[2J\x1b[31mevil\nsecond line": _entry("Q9", [1], 0, 4)}
    return _write(folder / "model.safetensors", safetensors_bytes(header, b"\0" * 4))


@case(message="far more than entries need")
def millions_of_short_strings(folder: Path) -> Path:
    raw = b'{"w": [' + b'"ab",' * 1_000_000 + b'"ab"]}'
    return _write(folder / "model.safetensors", safetensors_bytes(None, raw=raw))


@case(message="unknown dtype")
def megabyte_tensor_name(folder: Path) -> Path:
    header = {"w" * 1_000_000: _entry("Q9", [1], 0, 4)}
    return _write(folder / "model.safetensors", safetensors_bytes(header, b"\0" * 4))


@case(EXIT_NO_LAYERS, "nothing to analyse")
def only_empty_and_scalar_tensors(folder: Path) -> Path:
    """Valid: empty (0×5) and 0-rank tensors are allowed, skipped, and leave nothing to do."""
    header = {
        "empty.weight": _entry("F32", [0, 5], 0, 0),
        "scale": _entry("F32", [], 0, 4),
    }
    return _write(folder / "model.safetensors", safetensors_bytes(header, b"\0\0\x80\x3f"))


@case(EXIT_NO_LAYERS, "nothing to analyse")
def only_integer_tensors(folder: Path) -> Path:
    header = {"ids.weight": _entry("I64", [2, 2], 0, 32), "mask": _entry("BOOL", [4], 32, 36)}
    return _write(folder / "model.safetensors", safetensors_bytes(header, b"\1" * 36))


# --------------------------------------------------------------------------- sharded indexes


def _index(folder: Path, weight_map: Any, name: str = "model.safetensors.index.json") -> Path:
    path = folder / name
    path.write_text(json.dumps({"metadata": {"total_size": 80}, "weight_map": weight_map}))
    return path


@case(message="missing shard")
def index_missing_shard(folder: Path) -> Path:
    return _index(folder, {"fc.weight": "model-00001-of-00002.safetensors"})


@case(message="outside its folder")
def index_parent_path(folder: Path) -> Path:
    inner = folder / "inner"
    inner.mkdir()
    _write(folder / "x.safetensors", valid_safetensors())  # exists, so only the path check stops it
    return _index(inner, {"fc.weight": "../x.safetensors", "fc.bias": "../x.safetensors"})


@case(message="outside its folder")
def index_absolute_path(folder: Path) -> Path:
    shard = _write(folder / "x.safetensors", valid_safetensors())
    inner = folder / "inner"
    inner.mkdir()
    return _index(inner, {"fc.weight": str(shard.resolve()), "fc.bias": str(shard.resolve())})


@case(message="malformed index json")
def index_malformed_json(folder: Path) -> Path:
    path = folder / "model.safetensors.index.json"
    path.write_text('{"weight_map": {"fc.weight": "model.safetensors",')
    return path


@case(message="no 'weight_map'")
def index_without_weight_map(folder: Path) -> Path:
    path = folder / "model.safetensors.index.json"
    path.write_text(json.dumps({"metadata": {"total_size": 0}}))
    return path


@case(message="non-path")
def index_shard_not_a_string(folder: Path) -> Path:
    return _index(folder, {"fc.weight": ["model.safetensors"]})


@case(message="does not hold it")
def index_lists_absent_tensor(folder: Path) -> Path:
    _write(folder / "model-1.safetensors", valid_safetensors())
    return _index(folder, {"fc.weight": "model-1.safetensors", "fc.missing": "model-1.safetensors"})


@case(message="malformed index json")
def index_deeply_nested(folder: Path) -> Path:
    path = folder / "model.safetensors.index.json"
    path.write_text('{"weight_map": ' + "[" * 100_000 + "]" * 100_000 + "}")
    return path


# --------------------------------------------------------------------------- PyTorch files


def _torch_save(obj: Any, path: Path, *, legacy: bool = False) -> Path:
    import torch

    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def _small_state() -> dict[str, Any]:
    import torch

    generator = torch.Generator().manual_seed(0)
    return {"fc.weight": torch.randn(8, 8, generator=generator), "fc.bias": torch.zeros(8)}


def _member_data_offset(blob: bytes, member_suffix: str) -> tuple[zipfile.ZipInfo, int]:
    import io

    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(member_suffix))
    name_len, extra_len = struct.unpack(
        "<HH", blob[info.header_offset + 26 : info.header_offset + 30]
    )
    return info, info.header_offset + 30 + name_len + extra_len


@case(message="damaged zip archive")
def zip_truncated(folder: Path) -> Path:
    path = _torch_save(_small_state(), folder / "model.pt")
    path.write_bytes(path.read_bytes()[:-100])
    return path


@case(message="CRC-32")
def zip_weight_bytes_flipped(folder: Path) -> Path:
    """mmap loading never checks CRCs: without sncli's own check these would pass as weights."""
    path = _torch_save(_small_state(), folder / "model.pt")
    blob = bytearray(path.read_bytes())
    _, offset = _member_data_offset(bytes(blob), "data/0")
    for i in range(8):
        blob[offset + i] ^= 0xFF
    return _write(path, bytes(blob))


@case(message="CRC-32")
def zip_pickle_bytes_flipped(folder: Path) -> Path:
    path = _torch_save(_small_state(), folder / "model.pt")
    blob = bytearray(path.read_bytes())
    info, offset = _member_data_offset(bytes(blob), "data.pkl")
    for i in range(4, min(40, info.file_size)):
        blob[offset + i] ^= 0x5A
    return _write(path, bytes(blob))


@case(message="more than the file can hold")
def zip_member_claims_more_than_file(folder: Path) -> Path:
    path = _torch_save(_small_state(), folder / "model.pt")
    blob = bytearray(path.read_bytes())
    info, _ = _member_data_offset(bytes(blob), "data/0")
    struct.pack_into("<II", blob, info.header_offset + 18, 2**31, 2**31)
    position = blob.find(b"PK\x01\x02")
    while position != -1:
        name_len = struct.unpack_from("<H", blob, position + 28)[0]
        if bytes(blob[position + 46 : position + 46 + name_len]).endswith(b"data/0"):
            struct.pack_into("<II", blob, position + 20, 2**31, 2**31)
        position = blob.find(b"PK\x01\x02", position + 4)
    return _write(path, bytes(blob))


@case(message="no data.pkl")
def zip_that_is_not_torch(folder: Path) -> Path:
    path = folder / "model.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    return path


def _torchscript_archive(folder: Path) -> Case:
    """Read (its parameters only, nothing of its code is run), with a note saying so."""
    import torch

    path = folder / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), str(path))
    return Case("torchscript_archive", path, 0, "graph (code/) was not analysed", succeeds=True)


_torchscript_archive.__name__ = "torchscript_archive"
case()(_torchscript_archive)


@case(message="damaged or unreadable PyTorch file")
def plain_pickle_not_torch(folder: Path) -> Path:
    """A pickle that is not a torch.save file: torch's legacy reader wants a magic number."""
    return _write(folder / "model.pt", pickle.dumps({"fc.weight": [[1.0, 2.0]]}, protocol=2))


@case(message="PyTorch file")
def legacy_truncated(folder: Path) -> Path:
    path = _torch_save(_small_state(), folder / "model.pt", legacy=True)
    path.write_bytes(path.read_bytes()[:-200])
    return path


@case(message="not a state dict")
def top_level_tensor(folder: Path) -> Path:
    import torch

    return _torch_save(torch.ones(3, 3), folder / "tensor.pt")


@case(message="holds no tensors")
def dict_without_tensors(folder: Path) -> Path:
    return _torch_save({"epoch": 3, "lr": 0.1}, folder / "model.pt")


@case(EXIT_NO_LAYERS, "nothing to analyse")
def expanded_view_tensor(folder: Path) -> Path:
    """A 100000×100000 stride-0 view of one float: 40 GB if anything materialized it."""
    import torch

    return _torch_save({"w": torch.ones(1).expand(100_000, 100_000)}, folder / "model.pt")


@case(EXIT_NO_LAYERS, "nothing to analyse")
def meta_tensor(folder: Path) -> Path:
    import torch

    return _torch_save({"w": torch.empty(50_000, 50_000, device="meta")}, folder / "model.pt")


@case(EXIT_NO_LAYERS, "nothing to analyse")
def sparse_tensor(folder: Path) -> Path:
    import torch

    return _torch_save({"w": torch.eye(6).to_sparse()}, folder / "model.pt")


@case(message="argparse.Namespace")
def lightning_namespace_hparams(folder: Path) -> Path:
    import argparse

    state = {"state_dict": _small_state(), "hyper_parameters": {"args": argparse.Namespace(lr=1)}}
    return _torch_save(state, folder / "model.ckpt")


# --------------------------------------------------------------------------- malicious pickles


class _Payload:
    """Pickles to ``func(*args)``: what a malicious checkpoint would run on load."""

    def __init__(self, func: Any, args: tuple[Any, ...]) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def _payload(kind: str, marker: Path) -> _Payload:
    import builtins
    import subprocess

    code = f"open({str(marker)!r}, 'w').close()"
    if kind == "os_system":
        return _Payload(os.system, (f"touch {marker}",))
    if kind == "exec":
        return _Payload(builtins.exec, (code,))
    if kind == "eval":
        return _Payload(builtins.eval, (code,))
    if kind == "popen":
        return _Payload(subprocess.Popen, (["touch", str(marker)],))
    raise ValueError(kind)


def _malicious(kind: str, legacy: bool, skip: bool, message: str, exit_code: int = 1) -> None:
    suffix = "legacy" if legacy else "zip"
    name = f"payload_{kind}_{suffix}" + ("_skip_objects" if skip else "")

    def writer(folder: Path) -> Case:
        state = _small_state()
        state["x"] = _payload(kind, folder / MARKER)
        path = _torch_save(state, folder / "model.pt", legacy=legacy)
        args = ("--skip-objects",) if skip else ()
        return Case(name, path, exit_code, message, args, succeeds=exit_code == 0, payload=True)

    writer.__name__ = name
    case()(writer)


for _legacy in (False, True):
    _malicious("os_system", _legacy, False, "probably malicious")
    _malicious("os_system", _legacy, True, "--skip-objects cannot help")
    # torch.save writes protocol 2 with Python 2 names: subprocess.Popen becomes commands.Popen.
    for _kind, _name in (
        ("exec", "builtins.exec"),
        ("eval", "builtins.eval"),
        ("popen", "commands.Popen (= subprocess.Popen)"),
    ):
        _malicious(_kind, _legacy, False, f"{_name} can run code")
        _malicious(_kind, _legacy, True, f"Warning: {_name} can run code", exit_code=0)


# --------------------------------------------------------------------------- NumPy .npy / .npz


def _npy_bytes(array: Any, header: dict[str, Any] | None = None) -> bytes:
    """A .npy file of ``array``; ``header`` replaces the header numpy would write."""
    import io

    import numpy as np
    from numpy.lib import format as npformat

    buffer = io.BytesIO()
    if header is None:
        np.save(buffer, array)
        return buffer.getvalue()
    npformat.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + array.tobytes()


@case(message="truncated .npy file")
def npy_truncated(folder: Path) -> Path:
    import numpy as np

    return _write(folder / "w.npy", _npy_bytes(np.ones((8, 8), dtype=np.float32))[:-40])


@case(message="truncated .npy file: its header claims 9671406556917033397649408 bytes")
def npy_huge_claimed_shape(folder: Path) -> Path:
    import numpy as np

    header = {"descr": "<f4", "fortran_order": False, "shape": (2**40, 2**41)}
    return _write(folder / "w.npy", _npy_bytes(np.ones(4, dtype=np.float32), header))


def _npy_unclosed_bracket() -> bytes:
    """A .npy whose header dict has an unclosed bracket: numpy's header parser raises
    tokenize.TokenError (issue 28 §3: it escaped as "unexpected TokenError")."""
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (4, 4"
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 64


@case(message="corrupt .npy header: the header dict is not valid Python literal syntax")
def npy_header_unclosed_bracket(folder: Path) -> Path:
    return _write(folder / "a.weight.npy", _npy_unclosed_bracket())


@case(message="corrupt .npy header (member 'a.weight.npy'): the header dict is not valid")
def npz_member_header_unclosed_bracket(folder: Path) -> Path:
    path = folder / "weights.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.weight.npy", _npy_unclosed_bracket())
    return path


@case(message="object array, which only pickle can read")
def npz_object_array(folder: Path) -> Path:
    import numpy as np

    path = folder / "weights.npz"
    np.savez(path, w=np.eye(2), x=np.array([_Payload(os.system, ("touch PWNED",))], dtype=object))
    return path


@case(message="points outside the archive")
def npz_member_path_escape(folder: Path) -> Path:
    import numpy as np

    path = folder / "weights.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("../../escape.npy", _npy_bytes(np.eye(2)))
    return path


@case(message="more than the file can hold")
def npz_member_claims_more_than_file(folder: Path) -> Path:
    import numpy as np

    path = folder / "weights.npz"
    np.savez_compressed(path, w=np.zeros((64, 64), dtype=np.float32))
    blob = bytearray(path.read_bytes())
    struct.pack_into("<I", blob, 22, 2**32 - 1)
    central = blob.find(b"PK\x01\x02")
    struct.pack_into("<I", blob, central + 24, 2**32 - 1)
    return _write(path, bytes(blob))


@case(message="no layer could be measured")
def npz_all_nan(folder: Path) -> Path:
    import numpy as np

    path = folder / "weights.npz"
    np.savez(path, **{"fc.weight": np.full((4, 4), np.nan, dtype=np.float32)})
    return path


# --------------------------------------------------------------------------- GGUF


def _gguf_bytes(folder: Path, values: Any) -> bytes:
    """A GGUF file with one float32 tensor ``blk.0.attn_q.weight`` holding ``values``."""
    import gguf

    path = folder / "source.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("blk.0.attn_q.weight", values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    blob = path.read_bytes()
    path.unlink()
    return blob


def _gguf_dims_at(blob: bytes) -> int:
    name = b"blk.0.attn_q.weight"
    return blob.index(struct.pack("<Q", len(name)) + name) + 8 + len(name) + 4


@case(message="beyond the end of the")
def gguf_truncated(folder: Path) -> Path:
    import numpy as np

    blob = _gguf_bytes(folder, np.eye(32, dtype=np.float32))
    return _write(folder / "model.gguf", blob[:-512])


@case(message="claims 4398046511104 bytes")
def gguf_huge_claimed_tensor(folder: Path) -> Path:
    import numpy as np

    blob = bytearray(_gguf_bytes(folder, np.eye(32, dtype=np.float32)))
    struct.pack_into("<QQ", blob, _gguf_dims_at(bytes(blob)), 2**20, 2**20)
    return _write(folder / "model.gguf", bytes(blob))


@case(message="tensor 'blk.0.attn_q.weight' has GGML type id 4242")
def gguf_unknown_type_id(folder: Path) -> Path:
    import numpy as np

    blob = bytearray(_gguf_bytes(folder, np.eye(32, dtype=np.float32)))
    struct.pack_into("<I", blob, _gguf_dims_at(bytes(blob)) + 16, 4242)
    return _write(folder / "model.gguf", bytes(blob))


@case(message="corrupt GGUF header: claims 4611686018427387904 tensors")
def gguf_lying_tensor_count(folder: Path) -> Path:
    import numpy as np

    blob = _gguf_bytes(folder, np.eye(32, dtype=np.float32))
    return _write(folder / "model.gguf", blob[:8] + struct.pack("<Q", 2**62) + blob[16:])


def _gguf_kv_bytes(key: bytes, kind: int, value: bytes) -> bytes:
    """A GGUF v3 file with no tensors and one metadata entry (type ``kind``, raw ``value``)."""
    return (
        b"GGUF"
        + struct.pack("<IQQ", 3, 0, 1)
        + struct.pack("<Q", len(key))
        + key
        + struct.pack("<I", kind)
        + value
    )


@case(message="metadata value 'x' nests arrays more than 8 deep")
def gguf_arrays_nested_too_deep(folder: Path) -> Path:
    """issue 28 §4: the nesting limit used to be reported as "unknown type 9" (9 is ARRAY)."""
    array = 9
    value = struct.pack("<IQ", 4, 0)  # innermost: an empty array of uint32
    for _ in range(12):
        value = struct.pack("<IQ", array, 1) + value
    return _write(folder / "model.gguf", _gguf_kv_bytes(b"x", array, value))


@case(message="no layer could be measured")
def gguf_all_inf(folder: Path) -> Path:
    import numpy as np

    blob = _gguf_bytes(folder, np.full((32, 32), np.inf, dtype=np.float32))
    return _write(folder / "model.gguf", blob)


# --------------------------------------------------------------------------- TorchScript


def _scripted_archive(folder: Path, replace: dict[str, bytes] | None = None) -> Path:
    """A torch.jit.save archive of a Linear, with members (by name suffix) replaced."""
    import io
    import warnings

    import torch

    path = folder / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(torch.nn.Linear(8, 4)), str(path))
    if replace:
        source = zipfile.ZipFile(io.BytesIO(path.read_bytes()))
        with zipfile.ZipFile(path, "w") as out:
            for info in source.infolist():
                new = next((v for k, v in replace.items() if info.filename.endswith(k)), None)
                out.writestr(info, source.read(info) if new is None else new)
    return path


def _torchscript_payload(folder: Path) -> Case:
    state = {"weight": _payload("exec", folder / MARKER)}
    path = _scripted_archive(folder, {"/data.pkl": pickle.dumps(state, protocol=2)})
    return Case("torchscript_payload_exec", path, 1, "builtins.exec can run code", payload=True)


_torchscript_payload.__name__ = "torchscript_payload_exec"
case()(_torchscript_payload)


@case(message="holds 4 bytes, not 128")
def torchscript_storage_lies(folder: Path) -> Path:
    return _scripted_archive(folder, {"/data/0": b"\0" * 4})


@case(message="damaged zip archive")
def torchscript_truncated(folder: Path) -> Path:
    path = _scripted_archive(folder)
    return _write(path, path.read_bytes()[:-200])


# --------------------------------------------------------------------------- Keras / HDF5


@case(message="points to another file; refused")
def hdf5_external_link(folder: Path) -> Path:
    """An external link to a file outside the model's folder: never followed."""
    import h5py
    import numpy as np

    outside = folder / "outside"
    outside.mkdir()
    with h5py.File(outside / "secret.h5", "w") as h5:
        h5["kernel"] = np.eye(3, dtype=np.float32)
    path = folder / "weights.h5"
    with h5py.File(path, "w") as h5:
        h5["dense/dense/kernel:0"] = np.eye(3, dtype=np.float32)
        h5["dense/dense/bias:0"] = h5py.ExternalLink("outside/secret.h5", "/kernel")
    return path


@case(message="is virtual (maps other files); refused")
def hdf5_virtual_dataset(folder: Path) -> Path:
    import h5py
    import numpy as np

    with h5py.File(folder / "source.h5", "w") as h5:
        h5["data"] = np.ones((4, 4), np.float32)
    layout = h5py.VirtualLayout(shape=(4, 4), dtype=np.float32)
    layout[:] = h5py.VirtualSource("source.h5", "data", shape=(4, 4))
    path = folder / "weights.h5"
    with h5py.File(path, "w") as h5:
        h5.create_virtual_dataset("layers/dense/vars/0", layout)
    return path


@case(message="claims 4398046511104 bytes")
def hdf5_huge_unwritten_dataset(folder: Path) -> Path:
    import h5py
    import numpy as np

    path = folder / "weights.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset(
            "layers/dense/vars/0", shape=(2**20, 2**20), dtype=np.float32, chunks=True
        )
    return path


@case(message="cannot read Keras/HDF5 weights")
def hdf5_truncated(folder: Path) -> Path:
    import h5py
    import numpy as np

    path = folder / "weights.h5"
    with h5py.File(path, "w") as h5:
        h5["layers/dense/vars/0"] = np.ones((64, 64), np.float32)
    return _write(path, path.read_bytes()[:4000])


@case(message="its weights member is named '../model.weights.h5'")
def keras_weights_member_dotdot(folder: Path) -> Path:
    """issue 28 §4: a ``../`` weights member was called "not a torch.save archive"."""
    import h5py
    import numpy as np

    weights = folder / "inner.h5"
    with h5py.File(weights, "w") as h5:
        h5["layers/dense/vars/0"] = np.ones((4, 4), np.float32)
    path = folder / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", "{}")
        archive.writestr("config.json", "{}")
        archive.writestr("../model.weights.h5", weights.read_bytes())
    weights.unlink()
    return path


@case(message="more than the file can hold")
def keras_member_claims_more_than_file(folder: Path) -> Path:
    import h5py
    import numpy as np

    weights = folder / "model.weights.h5"
    with h5py.File(weights, "w") as h5:
        h5["layers/dense/vars/0"] = np.ones((4, 4), np.float32)
    path = folder / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{}")
        archive.write(weights, "model.weights.h5")
    weights.unlink()
    blob = bytearray(path.read_bytes())
    info = zipfile.ZipFile(path).getinfo("model.weights.h5")
    struct.pack_into("<I", blob, info.header_offset + 22, 2**32 - 1)
    position = blob.find(b"PK\x01\x02")
    while position != -1:
        name_len = struct.unpack_from("<H", blob, position + 28)[0]
        if bytes(blob[position + 46 : position + 46 + name_len]) == b"model.weights.h5":
            struct.pack_into("<I", blob, position + 24, 2**32 - 1)
        position = blob.find(b"PK\x01\x02", position + 4)
    return _write(path, bytes(blob))


# --------------------------------------------------------------------------- file-system cases


@case(message="folder holds no checkpoint")
def directory_without_weights(folder: Path) -> Path:
    (folder / "README.md").write_text("no weights here\n")
    (folder / "config.json").write_text("{}")
    return folder


@case(message="no such file or directory")
def nonexistent_path(folder: Path) -> Path:
    return folder / "does-not-exist.safetensors"


@case(message="no such file or directory")
def dangling_symlink(folder: Path) -> Path:
    path = folder / "model.safetensors"
    path.symlink_to(folder / "gone.safetensors")
    return path


@case(message="not a regular file")
def fifo_instead_of_file(folder: Path) -> Path:
    """Opening a FIFO for reading blocks until a writer appears: sncli must not even try."""
    path = folder / "model.safetensors"
    os.mkfifo(path)
    return path


# --------------------------------------------------------------------------- ONNX models


def onnx_model_bytes(weight_location: str | None = None, dims: tuple[int, ...] = (4, 4)) -> bytes:
    """A one-node ONNX model y = x·Wᵀ; W embedded, or external at ``weight_location``."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "fc.weight")
    if weight_location is not None or dims != (4, 4):
        del weight.dims[:]
        weight.dims.extend(dims)
    if weight_location is not None:
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        for key, value in (("location", weight_location), ("offset", "0"), ("length", "64")):
            entry = weight.external_data.add()
            entry.key, entry.value = key, value
    node = helper.make_node("Gemm", ["x", "fc.weight"], ["y"], transB=1)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


@case(message="truncated or malformed protobuf")
def onnx_truncated(folder: Path) -> Path:
    data = onnx_model_bytes()
    return _write(folder / "model.onnx", data[: len(data) // 2 + 3])


@case(message="leaves the model's folder")
def onnx_external_escape(folder: Path) -> Path:
    inner = folder / "inner"
    inner.mkdir()
    (folder / "secret.bin").write_bytes(b"\0" * 64)
    return _write(inner / "model.onnx", onnx_model_bytes("../secret.bin"))


@case(message="leaves the model's folder")
def onnx_external_symlink_escape(folder: Path) -> Path:
    inner = folder / "inner"
    inner.mkdir()
    (folder / "secret.bin").write_bytes(b"\0" * 64)
    (inner / "model.onnx.data").symlink_to(folder / "secret.bin")
    return _write(inner / "model.onnx", onnx_model_bytes("model.onnx.data"))


@case(message="not a relative path")
def onnx_external_absolute(folder: Path) -> Path:
    return _write(folder / "model.onnx", onnx_model_bytes("/etc/passwd"))


@case(message="is missing")
def onnx_external_missing(folder: Path) -> Path:
    return _write(folder / "model.onnx", onnx_model_bytes("model.onnx.data"))


@case(message="past the end")
def onnx_external_truncated(folder: Path) -> Path:
    (folder / "model.onnx.data").write_bytes(b"\0" * 10)
    return _write(folder / "model.onnx", onnx_model_bytes("model.onnx.data"))


@case(message="needs 4000000000000000 bytes")
def onnx_huge_claimed_dims(folder: Path) -> Path:
    return _write(folder / "model.onnx", onnx_model_bytes(dims=(1000000, 1000000000)))


def _non_utf8(data: bytes, name: bytes) -> bytes:
    """The model's bytes with one name (same length) replaced by bytes that are not UTF-8."""
    assert len(name) == 9 and data.count(name) >= 1
    return data.replace(name, b"\xff\xfe" + b"x" * 7)


@case(message="is not UTF-8 text")
def onnx_initializer_name_not_utf8(folder: Path) -> Path:
    return _write(folder / "model.onnx", _non_utf8(onnx_model_bytes(), b"fc.weight"))


@case(message="is not UTF-8 text")
def onnx_constant_name_not_utf8(folder: Path) -> Path:
    """Paddle2ONNX's layout (the weight is a Constant node's output), its name not UTF-8."""
    import onnx
    from onnx import helper

    model = onnx.ModelProto.FromString(onnx_model_bytes())
    value = onnx.TensorProto.FromString(model.graph.initializer[0].SerializeToString())
    value.name = ""
    model.graph.ClearField("initializer")
    model.graph.node.insert(0, helper.make_node("Constant", [], ["fc.weight"], value=value))
    return _write(folder / "model.onnx", _non_utf8(model.SerializeToString(), b"fc.weight"))


def _unreadable(folder: Path) -> Case:
    path = _write(folder / "model.safetensors", valid_safetensors())
    path.chmod(0)
    skip = None
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        skip = "running as root: file permissions do not block reads"
    return Case("unreadable_file", path, EXIT_ERROR, "permission denied", skip_reason=skip)


_unreadable.__name__ = "unreadable_file"
case()(_unreadable)


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "hostile_corpus")
    for written in write_corpus(out):
        print(f"{written.name:40s} -> {written.target}")
