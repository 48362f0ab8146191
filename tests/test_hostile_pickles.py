"""Issue 16 §4: crafted PyTorch files that used to crash, over-allocate or pass as weights.

Every file is built here from opcodes or a real ``torch.save`` archive (no committed blobs).
All cases run through the CLI in one subprocess (one torch import) under ``RLIMIT_AS`` = 1 GiB:
one error line naming the file, exit 1, no traceback, nothing changed, and a peak RSS of the
whole batch — so of every case — under 1 GB.
"""

from __future__ import annotations

import io
import json
import pickle
import resource
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from sncli.formats.pickle_scan import MAX_PICKLE_DEPTH, scan_pickles

ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30

#: Runs ``sncli`` on every case in one process (one torch import), under the caller's
#: RLIMIT_AS; writes each case's exit code and stderr, and the process's peak RSS (VmHWM).
_BATCH = """
import json, sys
from typer.testing import CliRunner
from sncli.cli import app
out, cases = sys.argv[1], json.loads(sys.argv[2])
results = {}
for name, args in cases.items():
    result = CliRunner().invoke(app, args)
    results[name] = [result.exit_code, result.stderr]
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        peak = int(line.split()[1]) / 1024
json.dump({"results": results, "peak_mb": peak}, open(out, "w"))
"""

CASES: dict[str, tuple[str, str]] = {}  # name -> (command, fragment of the error line)


def case(fragment: str, command: str = "inspect"):  # type: ignore[no-untyped-def]
    """Register a writer ``f(folder) -> Path`` of one crafted file."""

    def register(writer):  # type: ignore[no-untyped-def]
        CASES[writer.__name__] = (command, fragment)
        WRITERS[writer.__name__] = writer
        return writer

    return register


WRITERS: dict = {}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Write every case, run them all under RLIMIT_AS = 1 GiB, return what happened."""
    root = tmp_path_factory.mktemp("hostile16")
    paths, args, before = {}, {}, {}
    for name, (command, _) in CASES.items():
        folder = root / name
        folder.mkdir()
        paths[name] = WRITERS[name](folder)
        before[name] = paths[name].read_bytes()
        args[name] = [command, str(paths[name]), "-q"] + (
            ["--in-place"] if command == "normalize" else []
        )

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (GIB, GIB))

    out = root / "results.json"
    completed = subprocess.run(
        [sys.executable, "-c", _BATCH, str(out), json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=limit,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    data = json.loads(out.read_text())
    changed = [n for n in CASES if paths[n].read_bytes() != before[n]]
    return {"paths": paths, "changed": changed, **data}


def test_every_case_within_one_gigabyte(outcomes: dict) -> None:
    """The whole batch ran under RLIMIT_AS = 1 GiB; its peak RSS bounds every case's."""
    assert outcomes["peak_mb"] < 1000, outcomes["peak_mb"]
    assert outcomes["changed"] == []


def torch_zip_with(path: Path, pickle_bytes: bytes, *, deflate: bool = False) -> Path:
    """A real torch.save archive of {} with its data.pkl replaced by ``pickle_bytes``."""
    buffer = io.BytesIO()
    torch.save({}, buffer)
    with (
        zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source,
        zipfile.ZipFile(path, "w") as target,
    ):
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("/data.pkl"):
                data = pickle_bytes
            kind = zipfile.ZIP_DEFLATED if deflate and info.filename.endswith(".pkl") else 0
            target.writestr(info.filename, data, compress_type=kind)
    return path


def deep_key_pickle(depth: int) -> bytes:
    """{((…(0,),…),): 1} with ``depth`` tuples, written opcode by opcode (never built)."""
    return b"\x80\x02}K\x00" + b"\x85" * depth + b"K\x01s."


class _Call:
    """Pickles as ``function(*args)`` without ever calling it."""

    def __init__(self, function: object, *args: object) -> None:
        self.call = (function, args)

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.call  # type: ignore[return-value]


def test_scan_measures_depth_through_the_memo_and_top_down() -> None:
    assert scan_pickles(io.BytesIO(deep_key_pickle(MAX_PICKLE_DEPTH - 5)), 1).too_deep is False
    assert scan_pickles(io.BytesIO(deep_key_pickle(MAX_PICKLE_DEPTH + 5)), 1).too_deep is True
    # Top-down: each list is memoized, appended to its parent, then filled later via BINGET.
    crafted = b"\x80\x02]q\x00"  # the root list, memo 0
    for level in range(1, 250):  # get parent, new list (memo k), parent.append(it), pop parent
        crafted += b"h" + bytes([level - 1]) + b"]q" + bytes([level]) + b"a0"
    crafted += b"."
    assert scan_pickles(io.BytesIO(crafted), 1).too_deep is True
    # A flat dict of many tensors is shallow.
    buffer = io.BytesIO()
    torch.save({f"l{i}": torch.zeros(2) for i in range(300)}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    scan = scan_pickles(io.BytesIO(data), 1)
    assert scan.complete and not scan.too_deep and len(scan.storages) == 300


@case("levels deep")
def deeply_nested_key(folder: Path) -> Path:
    """200,000 nested tuples made torch's weights-only unpickler segfault (exit -11)."""
    return torch_zip_with(folder / "deep.pt", deep_key_pickle(200_000))


@case("levels deep")
def deeply_nested_legacy(folder: Path) -> Path:
    header = b"".join(pickle.dumps(v, protocol=2) for v in (0x1950A86A20F9469CFC6C, 1001, {}))
    path = folder / "deep_legacy.pt"
    path.write_bytes(header + deep_key_pickle(200_000) + pickle.dumps([], protocol=2))
    return path


def _alloc(folder: Path, call: _Call) -> Path:
    return torch_zip_with(folder / "alloc.pt", pickle.dumps({"layer.weight": call}, protocol=2))


@case("calls __builtin__.bytearray(4294967296)")
def bytearray_4gib(folder: Path) -> Path:
    """bytearray(2**32) (allowlisted) cost 4.4 GB from a 1.5 KB file."""
    return _alloc(folder, _Call(bytearray, 2**32))


@case("calls torch.FloatTensor(65536, 65536)")
def float_tensor_16gib(folder: Path) -> Path:
    """Reported as a real layer, σ = 0, "certified"."""
    return _alloc(folder, _Call(torch.FloatTensor, 65536, 65536))


@case("calls torch.FloatTensor(8, 8)")
def float_tensor_uninitialized(folder: Path) -> Path:
    """A different σ on each run (uninitialized memory)."""
    return _alloc(folder, _Call(torch.FloatTensor, 8, 8))


@case("no bytes of the file back", command="normalize")
def float_tensor_uninitialized_normalize(folder: Path) -> Path:
    """normalize wrote such a tensor into a checkpoint."""
    return _alloc(folder, _Call(torch.FloatTensor, 8, 8))


@case("more than 0 tensor records can need")
def zero_padded_deflated_pickle(folder: Path) -> Path:
    """~1000:1 deflated zeros passed the ratio limit; a 1 MB file peaked at 3.4 GB."""
    padded = pickle.dumps({}, protocol=2) + bytes(300 * 2**20)
    path = torch_zip_with(folder / "bomb.pt", padded, deflate=True)
    assert path.stat().st_size < 2 * 2**20
    return path


@case("after its pickle ends")
def padding_after_the_pickle(folder: Path) -> Path:
    padded = pickle.dumps({}, protocol=2) + bytes(8 * 2**20)
    return torch_zip_with(folder / "padded.pt", padded, deflate=True)


@case("its storage needs 64")
def record_larger_than_its_storage(folder: Path) -> Path:
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(4, 4)}, buffer)
    path = folder / "record.pt"
    with (
        zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source,
        zipfile.ZipFile(path, "w") as target,
    ):
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("/data/0"):
                data = data + bytes(2**20)
            target.writestr(info, data)
    return path


def test_bytes_backed_bytearray_is_not_an_allocation() -> None:
    scan = scan_pickles(io.BytesIO(pickle.dumps({"x": bytearray(b"abc")}, protocol=2)), 1)
    assert scan.allocations == ()


@pytest.mark.parametrize("name", list(CASES))
def test_case_refused_with_one_line(name: str, outcomes: dict) -> None:
    code, err = outcomes["results"][name]
    _, fragment = CASES[name]
    lines = err.strip().splitlines()
    assert code == 1, err
    assert len(lines) == 1, err
    assert str(outcomes["paths"][name]) in lines[0] and fragment in lines[0], lines[0]
    assert "Traceback" not in err and "MemoryError" not in err
