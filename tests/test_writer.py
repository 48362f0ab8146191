"""Crash safety of writes: SIGKILL mid-write, a full disk, an unwritable folder.

Each case runs the real ``sncli normalize --in-place`` in a subprocess and checks afterwards that
the original is byte-identical (or, for a kill after the rename, the complete verified new file),
and that no temporary file is left behind.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sncli.formats.safetensors import safetensors_header_bytes
from sncli.writer import TEMP_MARKER, staged_write

CLI = [sys.executable, "-m", "sncli"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small weights and 128 MB of 1-D buffers (copied verbatim): a long write, cheap σ."""
    folder = tmp_path_factory.mktemp("big")
    generator = torch.Generator().manual_seed(0)
    weights = {f"layers.{i}.weight": torch.randn(64, 48, generator=generator) for i in range(2)}
    weights.update({f"buffers.{i}": torch.randn(2**22, generator=generator) for i in range(8)})
    path = folder / "big.safetensors"
    save_file(weights, str(path))
    return path


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if TEMP_MARKER in p.name]


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def wait_for_no_temp(folder: Path, timeout: float = 300.0) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not temp_files(folder):
            return []
        time.sleep(0.05)
    return temp_files(folder)


def is_complete_normalized(path: Path) -> bool:
    import scipy.linalg

    tensors = load_file(str(path))
    return all(
        scipy.linalg.svdvals(t.double().numpy())[0] <= 1 + 1e-12
        for t in tensors.values()
        if t.dim() == 2
    )


@pytest.mark.parametrize("when", ["temp-appears", "temp-grown", "late"])
def test_sigkill_mid_write_leaves_original_or_new_and_no_temp(
    big_checkpoint: Path, tmp_path: Path, when: str
) -> None:
    target = tmp_path / "model.safetensors"
    target.write_bytes(big_checkpoint.read_bytes())
    original = sha256(target)
    process = subprocess.Popen(
        [*CLI, "normalize", str(target), "--in-place", "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 600
    killed_with_temp = False
    thresholds = {"temp-appears": 0, "temp-grown": 2**24, "late": target.stat().st_size}
    while time.monotonic() < deadline and process.poll() is None:
        temps = temp_files(tmp_path)
        if temps and size_of(temps[0]) >= thresholds[when]:
            process.send_signal(signal.SIGKILL)
            killed_with_temp = True
            break
        time.sleep(0.002)
    process.wait(timeout=600)
    if when != "late":
        assert killed_with_temp, "the writer finished before it could be killed"
    assert wait_for_no_temp(tmp_path) == []
    if sha256(target) != original:
        assert is_complete_normalized(target)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_full_disk_rlimit_fsize_leaves_original(
    big_checkpoint: Path, tmp_path: Path, suffix: str
) -> None:
    target = tmp_path / f"model{suffix}"
    if suffix == ".pt":
        torch.save(load_file(str(big_checkpoint)), target)
    else:
        target.write_bytes(big_checkpoint.read_bytes())
    original = sha256(target)
    limit = target.stat().st_size // 3

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    result = subprocess.run(
        [*CLI, "normalize", str(target), "--in-place", "-q"],
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size,
        timeout=600,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert str(target) in lines[0] and "nothing was changed" in lines[0]
    assert sha256(target) == original
    assert wait_for_no_temp(tmp_path) == []


def test_unwritable_output_folder(mlp_path: Path) -> None:
    result = subprocess.run(
        [*CLI, "normalize", str(mlp_path), "-o", "/proc/sncli-cannot-write.safetensors"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_folder_in_place(mlp_path: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    target = folder / "m.safetensors"
    target.write_bytes(mlp_path.read_bytes())
    original = sha256(target)
    folder.chmod(0o555)
    try:
        result = subprocess.run(
            [*CLI, "normalize", str(target), "--in-place", "-q"],
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        folder.chmod(0o755)
    assert result.returncode == 1
    assert sha256(target) == original
    assert temp_files(folder) == []


def test_staged_write_discards_on_exception(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(ValueError), staged_write(target) as (handle, _):
        handle.write(b"new partial")
        raise ValueError("boom")
    assert target.read_bytes() == b"old"
    assert wait_for_no_temp(tmp_path) == []


def test_staged_write_commit(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with staged_write(target) as (handle, staged):
        handle.write(b"new")
    staged.commit()
    assert target.read_bytes() == b"new"
    assert temp_files(tmp_path) == []


def test_header_bytes_are_aligned_and_match_safetensors(tmp_path: Path) -> None:
    tensor = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    header = safetensors_header_bytes([("t", "F32", (2, 3), 24)], {"format": "pt"})
    assert len(header) % 8 == 0
    path = tmp_path / "h.safetensors"
    path.write_bytes(header + tensor.numpy().tobytes())
    assert torch.equal(load_file(str(path))["t"], tensor)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_tensor_bytes_of_arrays_match_torch(dtype: torch.dtype) -> None:
    """normalize writes NumPy arrays (bfloat16 as its bits) without torch: their bytes are the
    torch tensor's, in C order also for a transposed (non-contiguous) view and an empty one."""
    from sncli.arrays import from_torch
    from sncli.formats.safetensors import tensor_bytes

    generator = torch.Generator().manual_seed(3)
    tensor = torch.randn(6, 10, generator=generator).to(dtype)
    for case in (tensor, tensor.T, tensor[:, ::3], tensor[:0]):
        array = from_torch(case)
        assert tensor_bytes(array) == tensor_bytes(case)
        assert len(tensor_bytes(array)) == case.numel() * case.element_size()
