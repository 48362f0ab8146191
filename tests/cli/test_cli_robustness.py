"""Issue 16 §4: what reached the user raw — SIGBUS, closed or broken stdout, paths with escapes,
non-UTF-8 and 255-byte names, deep state dicts, torch's unformatted messages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import invoke, svd_sigma
from safetensors.torch import load

from sncli.formats.torch_file import _unformatted

ROOT = Path(__file__).resolve().parents[2]


def matrices(path: Path) -> list[torch.Tensor]:
    """The 2-D tensors of a safetensors file (read as bytes: its name may not be UTF-8)."""
    return [t for t in load(path.read_bytes()).values() if t.dim() == 2]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SNCLI_DEBUG"}
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_sigbus_from_a_truncated_mapped_pt_is_one_line(tmp_path: Path) -> None:
    """torch.load(mmap=True) reading a file truncated meanwhile died by SIGBUS (exit -7)."""
    path = tmp_path / "big.pt"
    torch.save({"w": torch.ones(512, 1024)}, path)
    script = f"""
import os
from sncli.cli.sink import catch_sigbus
from sncli.checkpoint import open_checkpoint
catch_sigbus({str(path)!r})
ckpt = open_checkpoint({str(path)!r})
tensor = ckpt.load("w")
os.truncate({str(path)!r}, 4096)
print(float(tensor.sum()))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=600
    )
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "SIGBUS" in lines[0]


def test_closed_and_broken_stdout(mlp_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "m.safetensors"
    shutil.copy(mlp_path, target)
    command = [sys.executable, "-m", "sncli", "normalize", str(target), "--in-place"]
    closed = subprocess.run(  # started with stdout closed (`>&-`)
        command, stderr=subprocess.PIPE, env=_env(), timeout=600, preexec_fn=lambda: os.close(1)
    )
    assert closed.returncode == 0, closed.stderr
    assert b"please report" not in closed.stderr
    assert all(svd_sigma(w) <= 1 + 1e-12 for w in matrices(target))
    process = subprocess.Popen(
        [*command, "--target", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    err = process.stderr.read()
    assert process.wait(timeout=600) in (1, 141)
    assert b"please report" not in err and b"Traceback" not in err
    assert all(svd_sigma(w) <= 0.5 + 1e-12 for w in matrices(target))


def test_paths_with_escapes_and_newlines_are_sanitized(tmp_path: Path) -> None:
    path = tmp_path / "evil\x1b[2J\nname.pt"
    path.write_bytes(b"garbage" * 10)
    code, _, err = invoke("inspect", str(path))
    assert code == 1
    assert "\x1b" not in err and len(err.strip().splitlines()) == 1
    assert "evil\\x1b[2J\\nname.pt" in err


@pytest.mark.parametrize(
    "name",
    [os.fsdecode(b"m\xff\xfe.safetensors"), "L" * 243 + ".safetensors"],
    ids=["non-utf8", "255-bytes"],
)
def test_odd_names_normalize_in_place_and_lipschitz(
    mlp_path: Path, tmp_path: Path, name: str
) -> None:
    target = tmp_path / name
    shutil.copy(mlp_path, target)
    assert len(os.fsencode(target.name)) <= 255
    code, _, err = invoke("lipschitz", str(target), "--format", "json", "-q")
    assert code == 0, err
    code, _, err = invoke("normalize", str(target), "--in-place", "--format", "json", "-q")
    assert code == 0, err
    assert all(svd_sigma(w) <= 1 + 1e-12 for w in matrices(target))
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_non_utf8_name_in_a_real_terminal_run(mlp_path: Path, tmp_path: Path) -> None:
    target = tmp_path / os.fsdecode(b"m\xff.safetensors")
    shutil.copy(mlp_path, target)
    env = {**_env(), "PYTHONIOENCODING": "utf-8", "COLUMNS": "200"}
    result = subprocess.run(
        [sys.executable, "-m", "sncli", "lipschitz", str(target)],
        capture_output=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert b"m\\udcff.safetensors" in result.stdout


def test_state_dict_five_levels_deep_is_found_and_named(tmp_path: Path) -> None:
    path = tmp_path / "deep.pt"
    torch.save({"a": {"b": {"c": {"d": {"e": {"w": torch.ones(3, 3)}}}}}}, path)
    code, _, err = invoke("inspect", str(path))
    assert code == 1
    assert "lies deeper, under 'a/b/c/d/e': pick it with --key 'a/b/c/d/e'" in err
    code, _, err = invoke("inspect", str(path), "--key", "a/b/c/d/e", "--format", "json", "-q")
    assert code == 0, err


def test_deep_hyper_parameters_are_refused_when_read(tmp_path: Path) -> None:
    """Lightning hyper_parameters nested 2,000 levels: "write failed: maximum recursion depth"."""
    nested: dict = {}
    for _ in range(2000):
        nested = {"x": nested}
    path = tmp_path / "deep.ckpt"
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)
    try:
        torch.save({"state_dict": {"w": torch.ones(3, 3)}, "hyper_parameters": nested}, path)
    finally:
        sys.setrecursionlimit(limit)
    code, _, err = invoke("normalize", str(path), "--in-place")
    assert code == 1
    assert "levels deep" in err and "recursion" not in err


def test_unformatted_placeholders_are_not_shown() -> None:
    assert _unformatted("size %ld exceeds %zu, got %s") == "size ? exceeds ?, got ?"
    assert _unformatted("100% sure") == "100% sure"
