"""Issue 6: hostile and broken input never runs code, crashes, hangs or over-allocates.

Every case of ``tests/hostile_corpus.py`` goes through the real CLI in its own process (forked
from a server that imported sncli and torch once: ForkServer): one error line naming the file,
the documented exit code, no traceback, a few seconds at most, nothing written. Malicious
pickles must never run (their marker file never appears), with or without ``--skip-objects``.
Numerically hostile weights are reported honestly, a fuzzer hammers the safetensors header
path, and memory stays bounded under an address-space limit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import queue
import resource
import stat
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hostile_corpus
import pytest
import torch
from hostile_corpus import MARKER, Case, safetensors_bytes, valid_safetensors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sncli.checkpoint import open_checkpoint
from sncli.errors import EXIT_ERROR, CheckpointError, SncliError, UnsafePickleError
from sncli.formats.safetensors import read_safetensors_header

CLI = [sys.executable, "-m", "sncli", "inspect"]
#: CPU-time budget per CLI run (user + system of the child, importing torch included): a CPU
#: budget holds on a busy machine, where a wall-clock one fails; a run blocked without using CPU
#: is caught by ``HANG_S``.
TIME_LIMIT_S = 20.0
#: Wall-clock limit per CLI run: only a hang reaches it, so it is generous (a busy machine).
HANG_S = 600.0


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str
    elapsed: float
    #: The child's CPU time, user + system (os.wait4).
    cpu: float = 0.0
    #: The child's own peak RSS (VmHWM after exec), when measured.
    peak_rss_mb: float | None = None


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SNCLI_DEBUG"}
    env.update(PYTHONDONTWRITEBYTECODE="1", COLUMNS="200", NO_COLOR="1")
    return env


#: Runs the CLI in-process and records VmHWM at exit: ru_maxrss would include the parent's
#: memory (Linux carries it across fork and exec), VmHWM belongs to the exec'd image alone.
_MEASURED_MAIN = """
import atexit, runpy, sys
out = sys.argv.pop(1)
def report():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            open(out, "w").write(line.split()[1])
atexit.register(report)
sys.argv[0] = "sncli"
runpy.run_module("sncli", run_name="__main__")
"""


def run_cli(
    target: Path,
    *args: str,
    cwd: Path,
    address_space: int | None = None,
    timeout: float = HANG_S,
    measure_to: Path | None = None,
) -> Run:
    """Run ``sncli inspect`` in a subprocess, optionally under RLIMIT_AS and measuring RSS."""

    def limit() -> None:
        if address_space is not None:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    command = [*CLI, str(target), *args]
    if measure_to is not None:
        command = [sys.executable, "-c", _MEASURED_MAIN, str(measure_to), *command[3:]]
    start = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=limit if address_space is not None else None,
    )
    timer = threading.Timer(timeout, process.kill)
    timer.start()
    streams: dict[str, bytes] = {}
    readers = [
        threading.Thread(target=lambda n=name, s=stream: streams.update({n: s.read()}))
        for name, stream in (("out", process.stdout), ("err", process.stderr))
    ]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    _, status, usage = os.wait4(process.pid, 0)  # reaped here, with the child's own rusage
    process.returncode = os.waitstatus_to_exitcode(status)
    timed_out = not timer.is_alive()
    timer.cancel()
    for stream in (process.stdout, process.stderr):
        stream.close()  # type: ignore[union-attr]
    if timed_out:
        pytest.fail(f"sncli inspect {target} did not finish within {timeout} s")
    peak = None
    if measure_to is not None and measure_to.exists():
        peak = int(measure_to.read_text()) / 1024
    return Run(
        process.returncode,
        streams["out"].decode(errors="replace"),
        streams["err"].decode(errors="replace"),
        time.monotonic() - start,
        usage.ru_utime + usage.ru_stime,
        peak,
    )


def snapshot(folder: Path) -> dict[str, Any]:
    """Names, types, sizes, mtimes and hashes of everything under ``folder`` (FIFOs not opened)."""
    result: dict[str, Any] = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        entry: tuple[Any, ...] = (stat.S_IFMT(info.st_mode), info.st_size, info.st_mtime_ns)
        if stat.S_ISREG(info.st_mode) and os.access(path, os.R_OK):
            entry += (hashlib.sha256(path.read_bytes()).hexdigest(),)
        result[str(path.relative_to(folder))] = entry
    return result


#: A server that imports sncli and its readers' libraries once, then forks one child per request
#: (a JSON line: argv, cwd, files for stdout and stderr); the child runs ``sncli.cli.main`` as
#: ``python -m sncli`` does (SystemExit's code; a traceback and 1 for any other exception). The
#: server answers the child's pid, then its exit code and CPU time (os.wait4) once it ends.
_FORK_SERVER = r"""
import atexit, json, os, sys, time, traceback
for name in ("numpy", "torch", "safetensors.torch", "onnx", "h5py", "gguf"):
    try:
        __import__(name)
    except ImportError:
        pass
from sncli.cli import main

def child(request):
    code = 1
    try:
        os.chdir(request["cwd"])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, key in ((1, "out"), (2, "err")):
            os.dup2(os.open(request[key], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
        sys.argv = ["sncli", *request["argv"]]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
            if not isinstance(exc.code, int) and exc.code is not None:
                print(exc.code, file=sys.stderr)
        atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)

for line in sys.stdin:
    request = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        child(request)
    print(pid, flush=True)
    _, status, usage = os.wait4(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    print(json.dumps([code, usage.ru_utime + usage.ru_stime]), flush=True)
"""


class ForkServer:
    """``sncli inspect`` in a fresh process per case without paying Python's and torch's
    start-up each time (~2 s of CPU per .pt case; the corpus has 110 cases): see _FORK_SERVER."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.process = subprocess.Popen(
            [sys.executable, "-c", _FORK_SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_env(),
            text=True,
        )
        self.count = 0

    def run(self, target: Path, *args: str, cwd: Path, timeout: float = HANG_S) -> Run:
        """Like :func:`run_cli` (without its memory options): one forked child per call."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.count += 1
        out, err = (self.folder / f"{self.count}.{key}" for key in ("out", "err"))
        request = {"argv": ["inspect", str(target), *args], "cwd": str(cwd)}
        start = time.monotonic()
        self.process.stdin.write(json.dumps(request | {"out": str(out), "err": str(err)}) + "\n")
        self.process.stdin.flush()
        pid = int(self.process.stdout.readline())
        timer = threading.Timer(timeout, os.kill, (pid, 9))
        timer.start()
        code, cpu = json.loads(self.process.stdout.readline())
        timed_out = not timer.is_alive()
        timer.cancel()
        if timed_out:
            pytest.fail(f"sncli inspect {target} did not finish within {timeout} s")
        read = lambda path: path.read_bytes().decode(errors="replace")  # noqa: E731
        return Run(code, read(out), read(err), time.monotonic() - start, cpu)

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)


CASE_NAMES = list(hostile_corpus.REGISTRY.writers)


@pytest.fixture(scope="module")
def corpus(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[Case, Run | None, dict, dict]]:
    """Write the corpus and run the CLI on every case, two at a time (two fork servers)."""
    root = tmp_path_factory.mktemp("hostile")
    cases = hostile_corpus.write_corpus(root)
    servers: queue.Queue[ForkServer] = queue.Queue()
    for _ in range(2):
        servers.put(ForkServer(tmp_path_factory.mktemp("hostile-output")))

    def one(item: Case) -> tuple[Case, Run | None, dict, dict]:
        folder = root / item.name
        before = snapshot(folder)
        if item.skip_reason:
            return item, None, before, before
        server = servers.get()
        try:
            result = server.run(item.target, *item.args, cwd=folder)
        finally:
            servers.put(server)
        return item, result, before, snapshot(folder)

    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            outcomes = list(pool.map(one, cases))
    finally:
        while not servers.empty():
            servers.get().close()
    return {item.name: (item, result, before, after) for item, result, before, after in outcomes}


def test_corpus_is_large_enough() -> None:
    assert len(CASE_NAMES) >= 30


@pytest.mark.parametrize("name", CASE_NAMES)
def test_corpus_case(name: str, corpus: dict[str, tuple[Case, Run | None, dict, dict]]) -> None:
    item, result, before, after = corpus[name]
    if result is None:
        pytest.skip(item.skip_reason or "skipped")
    assert "Traceback" not in result.stderr, result.stderr
    assert result.cpu < TIME_LIMIT_S, f"took {result.cpu:.1f} s of CPU ({result.elapsed:.1f} s)"
    assert result.returncode == item.exit_code, result.stderr
    assert "\x1b" not in result.stderr, "terminal escape from the file reached stderr"
    assert after == before, "sncli wrote or modified files next to the checkpoint"
    assert not (item.target.parent / MARKER).exists(), "the pickle payload ran"
    assert item.message in result.stderr, result.stderr
    if item.succeeds:
        return
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("sncli: error: "), line
    assert str(item.target) in line
    assert len(line) < 1500, f"error line of {len(line)} characters"
    assert result.stdout == ""


# --------------------------------------------------------------------------- malicious pickles


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("skip_objects", [False, True], ids=["plain", "skip-objects"])
@pytest.mark.parametrize("kind", ["os_system", "exec", "eval", "popen"])
def test_payload_never_runs_in_library(
    tmp_path: Path, kind: str, legacy: bool, skip_objects: bool
) -> None:
    """The library path (no subprocess): loading, listing and reading every tensor."""
    marker = tmp_path / MARKER
    state = {"w": torch.eye(3), "x": hostile_corpus._payload(kind, marker)}
    path = tmp_path / "model.pt"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    try:
        with open_checkpoint(path, skip_objects=skip_objects) as ckpt:
            for name in ckpt.tensors:
                ckpt.load(name)
            assert skip_objects and kind in ("exec", "eval", "popen")
            assert list(ckpt.tensors) == ["w"]
            assert ckpt.non_tensor_keys == ["x"]
            placeholder = ckpt.container(ckpt.files[0])["x"]
            assert type(placeholder).__name__ == "OrderedDict" and len(placeholder) == 0
    except UnsafePickleError as exc:
        assert kind == "os_system" or not skip_objects
        text = str(exc)
        assert "Nothing from the file was run" in text
        assert "malicious" in text
        assert "--skip-objects" in text and "safetensors" in text
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["exec", "popen"])
def test_security_warning_survives_quiet(tmp_path: Path, kind: str) -> None:
    """--quiet hides notes by level, never the line saying the file can run code."""
    from typer.testing import CliRunner

    from sncli.cli import app
    from sncli.messages import Level, level_of

    path = tmp_path / "model.pt"
    torch.save({"w": torch.eye(3), "x": hostile_corpus._payload(kind, tmp_path / MARKER)}, path)
    with open_checkpoint(path, skip_objects=True) as ckpt:
        assert [level_of(n) for n in ckpt.notes] == [Level.SECURITY]
    for quiet in ((), ("-q",)):
        result = CliRunner().invoke(app, ["inspect", str(path), "--skip-objects", *quiet])
        assert result.exit_code == 0, result.output
        warning = [line for line in result.stderr.splitlines() if "can run code" in line]
        assert len(warning) == 1 and "may be malicious" in warning[0]
    assert not (tmp_path / MARKER).exists()


def test_torch_blocklist_beats_allowlisting(tmp_path: Path) -> None:
    """PyTorch refuses os/posix/sys/nt globals even when allowlisted, so --skip-objects can't."""
    from torch import _weights_only_unpickler as wou

    assert {"os", "posix", "sys", "nt"} <= set(wou._blocklisted_modules)
    marker = tmp_path / MARKER
    path = tmp_path / "model.pt"
    torch.save({"x": hostile_corpus._payload("os_system", marker)}, path)
    global_name = f"{os.system.__module__}.system"

    def placeholder(*args: object) -> None:
        raise AssertionError("the placeholder must never be called either")

    with (
        torch.serialization.safe_globals([(placeholder, global_name)]),
        pytest.raises(Exception, match="blocked"),
    ):
        torch.load(path, weights_only=True)
    with pytest.raises(UnsafePickleError, match="cannot help"):
        open_checkpoint(path, skip_objects=True)
    assert not marker.exists()


def test_unsafe_globals_are_listed_statically(tmp_path: Path) -> None:
    from sncli.formats.torch_file import scan_pickle_globals

    marker = tmp_path / MARKER
    for legacy in (False, True):
        path = tmp_path / f"model-{legacy}.pt"
        state = {"a": hostile_corpus._payload("exec", marker)}
        state["b"] = hostile_corpus._payload("popen", marker)
        torch.save(state, path, _use_new_zipfile_serialization=not legacy)
        found = scan_pickle_globals(path)
        # protocol 2 writes Python 2 names, which torch's unpickler sees as they are
        assert "builtins.exec" in found and "commands.Popen" in found
    assert not marker.exists()


# --------------------------------------------------------------------------- unreadable paths


def test_permission_denied_without_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root reads anything, so the corpus case may be skipped; this checks the paths in-process."""
    path = tmp_path / "model.safetensors"
    path.write_bytes(valid_safetensors())
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    with pytest.raises(CheckpointError, match="permission denied"):
        open_checkpoint(path)
    monkeypatch.undo()

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(CheckpointError, match="cannot read file: Permission denied"):
        open_checkpoint(path)


@pytest.mark.parametrize("name", ["a\0b.safetensors", "x" * 5000 + ".safetensors"])
def test_impossible_paths(tmp_path: Path, name: str) -> None:
    with pytest.raises(CheckpointError):
        open_checkpoint(tmp_path / name)


def test_devices_are_never_read(tmp_path: Path) -> None:
    result = run_cli(Path("/dev/zero"), cwd=tmp_path, timeout=600)
    assert result.returncode == EXIT_ERROR
    assert result.stderr == (
        "sncli: error: /dev/zero: not a regular file (a FIFO, device or socket); "
        "only checkpoint files are read\n"
    )


# --------------------------------------------------------------------------- numerically hostile


def _numeric_state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    nan = torch.randn(8, 8, generator=generator)
    nan[3, 4] = float("nan")
    inf = torch.randn(8, 8, generator=generator)
    inf[0, 0], inf[1, 1] = float("inf"), float("-inf")
    return {
        "nan.weight": nan,
        "inf.weight": inf,
        "zeros.weight": torch.zeros(16, 16),
        "denormal.weight": torch.full((8, 8), 1e-40),
        "denormal_mixed.weight": torch.randn(8, 8, generator=generator) * 1e-39,
        # 512×512 of 16.0: σ = 8192 fits fp16, but WWᵀ entries (131072) overflow it.
        "fp16_gram_overflow.weight": torch.full((512, 512), 16.0, dtype=torch.float16),
        # σ = 120000 exceeds the fp16 maximum 65504 itself.
        "fp16_near_max.weight": torch.full((2, 2), 60000.0, dtype=torch.float16),
        "bf16_large.weight": (torch.randn(64, 32, generator=generator) * 1e30).bfloat16(),
        "one_by_one.weight": torch.tensor([[-3.5]]),
        "row.weight": torch.randn(1, 100_000, generator=generator),
        "column.weight": torch.randn(100_000, 1, generator=generator),
        "f64_huge.weight": torch.full((3, 3), 1e300, dtype=torch.float64),
    }


def _float64_sigma(tensor: torch.Tensor) -> float:
    return float(torch.linalg.svdvals(tensor.double())[0])


@pytest.fixture(scope="module")
def numeric_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Run]:
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("numeric")
    path = folder / "numeric.safetensors"
    save_file(_numeric_state(), str(path))
    result = run_cli(path, "--format", "json", "--quiet", cwd=folder)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result


def test_non_finite_layers_are_skipped_not_given_sigma(
    numeric_report: tuple[dict[str, Any], Run],
) -> None:
    report, _ = numeric_report
    layers = {layer["name"] for layer in report["layers"]}
    skipped = {s["name"]: s["reason"] for s in report["skipped"]}
    for name in ("nan.weight", "inf.weight"):
        assert name not in layers
        assert skipped[name].startswith("non-finite")
    assert "1 NaN" in skipped["nan.weight"]
    assert "2 Inf" in skipped["inf.weight"]


@pytest.mark.parametrize(
    "name",
    [
        "zeros.weight",
        "denormal.weight",
        "denormal_mixed.weight",
        "fp16_gram_overflow.weight",
        "fp16_near_max.weight",
        "bf16_large.weight",
        "one_by_one.weight",
        "row.weight",
        "column.weight",
        "f64_huge.weight",
    ],
)
def test_hostile_values_match_float64_svd(
    name: str, numeric_report: tuple[dict[str, Any], Run]
) -> None:
    report, _ = numeric_report
    sigma = {layer["name"]: layer["sigma"] for layer in report["layers"]}[name]
    expected = _float64_sigma(_numeric_state()[name])
    if expected == 0.0:
        assert sigma == 0.0
    else:
        assert sigma == pytest.approx(expected, rel=1e-9), (sigma, expected)


@pytest.fixture(scope="module")
def subnormal_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """issue 28 §2: a 300×300 float32 layer of ~1e-41 (subnormal) beside a normal one, and a
    second checkpoint with both slightly changed (for diff)."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("subnormal")
    generator = torch.Generator().manual_seed(0)
    state = {
        "normal.weight": torch.randn(300, 300, generator=generator),
        "subnormal.weight": torch.randn(300, 300, generator=generator) * 1e-41,
    }
    changed = {k: v + 0.01 * v.roll(1, 0) for k, v in state.items()}
    save_file(state, str(folder / "a.safetensors"))
    save_file(changed, str(folder / "b.safetensors"))
    return folder / "a.safetensors", folder / "b.safetensors"


def _scaled_sigma(tensor: torch.Tensor) -> float:
    """float64 SVD of the matrix scaled by a power of two (σ scales back exactly)."""
    values = tensor.double()
    exponent = -math.frexp(float(values.abs().max()))[1]
    return math.ldexp(_float64_sigma(values * 2.0**exponent), -exponent)


@pytest.mark.parametrize("method", ["auto", "lanczos", "exact", "power"])
def test_subnormal_layer_is_measured_and_the_run_goes_on(
    subnormal_pair: tuple[Path, Path], method: str
) -> None:
    from safetensors.torch import load_file

    path, _ = subnormal_pair
    result = run_cli(path, "--method", method, "--format", "json", "-q", cwd=path.parent)
    assert result.returncode == 0, result.stderr
    sigma = {layer["name"]: layer["sigma"] for layer in json.loads(result.stdout)["layers"]}
    rtol = {"exact": 1e-10, "power": 1e-3}.get(method, 1e-4)
    for name, tensor in load_file(str(path)).items():
        expected = _scaled_sigma(tensor)
        assert sigma[name] == pytest.approx(expected, rel=rtol), (name, sigma[name], expected)
        assert sigma[name] <= expected * (1 + 1e-12)


def test_subnormal_layer_diff(subnormal_pair: tuple[Path, Path]) -> None:
    from safetensors.torch import load_file

    a, b = subnormal_pair
    completed = subprocess.run(
        [sys.executable, "-m", "sncli", "diff", str(a), str(b), "--format", "json", "-q"],
        env=_env(),
        capture_output=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr
    layers = {layer["name"]: layer for layer in json.loads(completed.stdout)["layers"]}
    first, second = load_file(str(a)), load_file(str(b))
    for name in first:
        delta = _scaled_sigma(second[name].double() - first[name].double())
        assert layers[name]["delta_sigma"] == pytest.approx(delta, rel=1e-4)
        assert layers[name]["sigma_a"] == pytest.approx(_scaled_sigma(first[name]), rel=1e-4)
        assert min(layers[name]["subspace_cosines"]) > 0.9


# --------------------------------------------------------------------------- fuzzing


def _fuzz_open(path: Path) -> None:
    """Open and read everything; only sncli's own errors may escape."""
    with contextlib.suppress(SncliError):
        read_safetensors_header(path)
    with contextlib.suppress(SncliError), open_checkpoint(path) as ckpt:
        for name in ckpt.tensors:
            ckpt.load(name)


FUZZ_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)

_json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=8),
)
_json_value = st.recursive(
    _json_scalar,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
_dtypes = st.sampled_from(
    ["F32", "F16", "BF16", "I8", "BOOL", "F8_E4M3", "F4", "F6_E2M3", "C64", "X"]
)
_entry = st.fixed_dictionaries(
    {
        "dtype": st.one_of(_dtypes, _json_value),
        "shape": st.one_of(st.lists(st.integers(-2, 9), max_size=4), _json_value),
        "data_offsets": st.one_of(
            st.lists(st.integers(-4, 200), min_size=2, max_size=2), _json_value
        ),
    }
)
_header = st.dictionaries(
    st.text(min_size=1, max_size=10), st.one_of(_entry, _json_value), max_size=4
)


@FUZZ_SETTINGS
@given(data=st.binary(max_size=300))
def test_fuzz_random_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(data)
    _fuzz_open(path)


@FUZZ_SETTINGS
@given(header=_header, data=st.binary(max_size=200), length_delta=st.integers(-16, 16))
def test_fuzz_structured_headers(
    tmp_path: Path, header: dict[str, Any], data: bytes, length_delta: int
) -> None:
    blob = bytearray(safetensors_bytes(header, data))
    if length_delta:
        struct.pack_into("<Q", blob, 0, max(0, len(blob) - 8 - len(data) + length_delta))
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(bytes(blob))
    _fuzz_open(path)


@FUZZ_SETTINGS
@given(
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=6),
    cut=st.one_of(st.none(), st.integers(0, 400)),
)
def test_fuzz_mutated_valid_file(
    tmp_path: Path, flips: list[tuple[int, int]], cut: int | None
) -> None:
    blob = bytearray(valid_safetensors())
    for position, mask in flips:
        blob[position % len(blob)] ^= mask
    if cut is not None:
        blob = blob[:cut]
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(bytes(blob))
    _fuzz_open(path)


@FUZZ_SETTINGS
@given(
    shape=st.lists(st.integers(0, 6), max_size=3),
    dtype=st.sampled_from(["F32", "F16", "BF16", "F64", "I32", "U8", "F8_E5M2"]),
)
def test_fuzz_valid_headers_open(tmp_path: Path, shape: list[int], dtype: str) -> None:
    """Well-formed files of any shape and dtype open, and each tensor loads with that shape."""
    bits = {"F32": 32, "F16": 16, "BF16": 16, "F64": 64, "I32": 32, "U8": 8, "F8_E5M2": 8}[dtype]
    count = 1
    for size in shape:
        count *= size
    nbytes = count * bits // 8
    header = {"t": {"dtype": dtype, "shape": shape, "data_offsets": [0, nbytes]}}
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(safetensors_bytes(header, bytes(nbytes)))
    with open_checkpoint(path) as ckpt:
        assert list(ckpt.load("t").shape) == shape


@pytest.fixture(scope="module")
def torch_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("torch_fuzz")
    state = {"a.weight": torch.randn(8, 8), "ids": torch.arange(5), "meta": {"epoch": 1}}
    blobs = {}
    for kind, zipped in (("zip", True), ("legacy", False)):
        torch.save(state, folder / kind, _use_new_zipfile_serialization=zipped)
        blobs[kind] = (folder / kind).read_bytes()
    return blobs


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(
    kind=st.sampled_from(["zip", "legacy"]),
    flips=st.lists(st.tuples(st.integers(0, 2**20), st.integers(1, 255)), min_size=1, max_size=4),
    cut=st.one_of(st.none(), st.integers(0, 2**20)),
)
def test_fuzz_mutated_torch_files(
    tmp_path: Path,
    torch_files: dict[str, bytes],
    kind: str,
    flips: list[tuple[int, int]],
    cut: int | None,
) -> None:
    """Damaged zip and legacy .pt files: only sncli's errors escape (or the file still loads)."""
    blob = bytearray(torch_files[kind])
    for position, mask in flips:
        blob[position % len(blob)] ^= mask
    if cut is not None:
        blob = blob[: cut % len(blob)]
    path = tmp_path / "fuzz.pt"
    path.write_bytes(bytes(blob))
    _fuzz_open(path)


# --------------------------------------------------------------------------- resource limits

GIB = 1024**3


@pytest.mark.parametrize(
    "case_name",
    [
        "enormous_claimed_tensor",
        "millions_of_empty_lists",
        "rank_one_million",
        "expanded_view_tensor",
    ],
)
def test_memory_stays_bounded(tmp_path: Path, case_name: str) -> None:
    """Under a 2.5 GiB address-space limit the CLI fails cleanly, with a small peak RSS."""
    folder = tmp_path / "case"
    folder.mkdir()
    item = hostile_corpus.REGISTRY.writers[case_name](folder)
    result = run_cli(
        item.target,
        cwd=folder,
        address_space=int(2.5 * GIB),
        measure_to=tmp_path / "rss",
    )
    assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr
    assert result.returncode == item.exit_code, result.stderr
    assert item.message in result.stderr
    assert result.peak_rss_mb is not None and result.peak_rss_mb < 600, result.peak_rss_mb


def test_large_crafted_header_peak_memory(tmp_path: Path) -> None:
    """A 40 MB header of empty lists (≈1 GB if parsed) is refused with a small footprint."""
    folder = tmp_path / "case"
    folder.mkdir()
    path = folder / "model.safetensors"
    raw = b'{"w": [' + b"[]," * 13_000_000 + b"[]]}"
    path.write_bytes(safetensors_bytes(None, raw=raw))
    result = run_cli(path, cwd=folder, measure_to=tmp_path / "rss")
    assert result.returncode == EXIT_ERROR
    assert "far more than entries need" in result.stderr
    assert result.peak_rss_mb is not None and result.peak_rss_mb < 400, result.peak_rss_mb


def test_error_exit_code_is_documented() -> None:
    assert EXIT_ERROR == 1
