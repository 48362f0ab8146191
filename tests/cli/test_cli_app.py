"""The application as a whole: entry points, --help and --version, one-line error messages."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import invoke
from typer.testing import CliRunner

from sncli.cli import app


def test_version_and_help() -> None:
    code, out, _ = invoke("--version")
    assert code == 0 and out.startswith("sncli ")
    for command in ("inspect", "lipschitz", "normalize"):
        code, out, _ = invoke(command, "--help")
        assert code == 0 and "Examples" in out


def test_help_does_not_import_torch() -> None:
    code = "import sys, sncli.cli; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_installed_entry_point_runs(mlp_path: Path) -> None:
    exe = shutil.which("sncli") or str(Path(sys.executable).parent / "sncli")
    result = subprocess.run(
        [exe, "inspect", str(mlp_path), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["layers"]) == 3
    result = subprocess.run(
        [sys.executable, "-m", "sncli", "inspect", "/nonexistent.safetensors"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1
    assert result.stderr == "sncli: error: /nonexistent.safetensors: no such file or directory\n"


def test_missing_file_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    code, _, err = invoke("inspect", str(missing))
    assert code == 1
    assert err == f"sncli: error: {missing}: no such file or directory\n"


def test_not_a_checkpoint(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"hello world, definitely not a checkpoint")
    code, _, err = invoke("inspect", str(junk))
    assert code == 1
    assert err.startswith(f"sncli: error: {junk}: ") and err.count("\n") == 1
    assert "Traceback" not in err


def test_only_cli_and_render_import_rich_and_only_cli_imports_typer() -> None:
    package = Path(__file__).resolve().parents[2] / "sncli"
    allowed = {"rich": {"cli", "render"}, "typer": {"cli"}}
    offenders = []
    for path in package.rglob("*.py"):
        where = path.relative_to(package).parts[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in allowed and where not in allowed[top]:
                    offenders.append(f"{path.relative_to(package)} imports {name}")
    assert offenders == []


def test_help_shows_no_type_for_on_off_flags() -> None:
    """A flag takes no value: ``--certified <bool>`` in help read as if it wanted one."""
    for command in ("inspect", "lipschitz", "normalize", "diff", "spectrum", "report"):
        code, out, _ = invoke(command, "--help")
        assert code == 0 and "<bool>" not in out, command
    code, out, _ = invoke("inspect", "--help")
    assert "<auto|exact" in out  # options with values keep their type


#: What each command's checkpoint argument must say it reads (issue 28).
INPUT_WORDS = (
    "safetensors",
    "PyTorch",
    "TorchScript",
    "GGUF",
    ".npy/.npz",
    "Keras",
    "ONNX",
    "TFLite",
    "LoRA adapter",
    "Hugging Face id",
)


@pytest.mark.parametrize(
    "command", ["inspect", "spectrum", "lipschitz", "normalize", "diff", "report", "track"]
)
def test_every_checkpoint_help_lists_every_input(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "400"})
    text = " ".join(result.stdout.split())
    missing = [word for word in INPUT_WORDS if word not in text]
    assert result.exit_code == 0 and not missing, (command, missing)


def test_lipschitz_help_names_the_onnx_graph_bound_and_the_grid() -> None:
    from sncli.numerics.conv import auto_grid

    result = CliRunner().invoke(app, ["lipschitz", "--help"], env={"COLUMNS": "400"})
    text = " ".join(result.stdout.split())
    assert "ONNX model gets the certified bound over its real graph" in text
    grids = [auto_grid((channels, channels, 3, 3)) for channels in (207, 327, 328)]
    assert grids == [46, 23, 12]  # what the help says
    assert "for 3×3 kernels 46 below 208 channels, 23 below 328, 12 beyond" in text
    assert auto_grid((208, 208, 3, 3)) == 23
