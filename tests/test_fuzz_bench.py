"""bench/fuzz.py (issue 28): a short run of the mutation fuzzer finds nothing (no "unexpected",
traceback, signal, timeout or over-memory outcome) on three formats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_short_fuzz_run_is_clean(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SNCLI_DEBUG", None)
    completed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "fuzz.py"),
            "--out",
            str(tmp_path),
            "--seconds",
            "10",
            "--cases",
            "4",
            "--only",
            "fc1.weight.npy",
            "m.npz",
            "mlp.safetensors",
            "--commands",
            "inspect",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    runs = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(runs) == 12
    assert {run["cls"] for run in runs} <= {"ok", "clean-error"}
