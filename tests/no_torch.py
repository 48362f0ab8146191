"""sncli (or any script) in a subprocess where torch cannot be imported: the runner behind the
``tests/test_torch_free*.py`` files (issue 26: those commands must never need torch)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: A meta-path finder that raises ImportError for ``torch`` and ``torch.*``.
BLOCK_TORCH = """
import sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is unimportable in this test (tests/no_torch.py)")
        return None

sys.meta_path.insert(0, NoTorch())
"""

#: ``sncli ARGS`` as ``python -m sncli`` does it.
RUN_SNCLI = """
import runpy
sys.argv = ["sncli", *sys.argv[1:]]
runpy.run_module("sncli", run_name="__main__", alter_sys=True)
"""

#: ``python -c NO_TORCH ARGS`` runs ``sncli ARGS`` with torch unimportable.
NO_TORCH = BLOCK_TORCH + RUN_SNCLI


def run_without_torch(
    args: list[str], *, script: str = NO_TORCH, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -c script ARGS`` from the repository root, this checkout first on the path."""
    environment = {
        **os.environ,
        **(env or {}),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO,
        check=False,
    )
