"""Benchmark ``sncli report`` against ``sncli spectrum`` alone on one synthetic checkpoint.

    python bench/report.py            # d=1024 × 24 blocks (302M bf16, 576 MB), several minutes
    python bench/report.py --quick    # d=512 × 8 blocks
    python bench/report.py --d 1536 --blocks 32   # 906M bf16 (1.7 GB), the issue's size class

Whole processes (interpreter start included), alternating, fastest of ``--repeat`` runs each:
``sncli spectrum CKPT --format json``, ``sncli report CKPT`` with its default sections (σ taken
from the spectra, Lipschitz factors, figures) and ``sncli report CKPT --sections spectrum``
(what the report costs beyond the spectra it needs). Issue #26's target: report ≤ 1.1×
spectrum.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import synth


def timed(command: list[str]) -> float:
    """Wall seconds of one whole process."""
    began = time.perf_counter()
    subprocess.run(command, capture_output=True, check=True)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--d", type=int, default=None)
    parser.add_argument("--blocks", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    d, blocks = (512, 8) if args.quick else (1024, 24)
    spec = synth.Spec(d=args.d or d, blocks=args.blocks or blocks)
    sncli = [sys.executable, "-m", "sncli"]
    with tempfile.TemporaryDirectory(prefix="sncli-report-bench-") as folder:
        path = Path(folder) / "model.safetensors"
        synth.write(spec, path)
        html = str(Path(folder) / "report.html")
        runs = {
            "spectrum": [*sncli, "spectrum", str(path), "--format", "json", "--quiet"],
            "report": [*sncli, "report", str(path), "-o", html, "--force", "--quiet"],
            "report --sections spectrum": [
                *sncli,
                *("report", str(path), "-o", html, "--force", "--quiet"),
                *("--sections", "spectrum"),
            ],
        }
        best = {name: float("inf") for name in runs}
        for _ in range(args.repeat):
            for name, command in runs.items():
                best[name] = min(best[name], timed(command))
        size = path.stat().st_size / 2**20
        print(f"checkpoint: d={spec.d} × {spec.blocks} blocks, {spec.parameters / 1e6:,.0f}M")
        print(f"parameters, {size:,.0f} MB; load {os.getloadavg()[0]:.1f}")
        for name, seconds in best.items():
            ratio = seconds / best["spectrum"]
            print(f"sncli {name:<28} {seconds:8.2f} s  {ratio:5.2f}× spectrum")


if __name__ == "__main__":
    main()
