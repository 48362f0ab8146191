"""Wall time and peak memory of whole ``sncli normalize`` processes on a synthetic bf16
safetensors checkpoint (bench/synth.py), for one or more source trees, runs interleaved.

    python bench/normalize.py                        # this checkout
    python bench/normalize.py OLD_TREE NEW_TREE      # e.g. main's snapshot against a branch

Each tree is put first on PYTHONPATH (a checkout's root, holding ``sncli/``) and runs
``python -m sncli normalize CKPT -o OUT --force -q --format json``. The checkpoint is
``Spec(--width, --blocks)``: the default 1024 × 8 holds 8 GPT blocks, 100.7M parameters
(201 MB). Printed: the median wall seconds and peak RSS (GNU ``/usr/bin/time``, if there) per
tree, the load average at the start and the end, and whether every tree wrote the same bytes.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _checkpoint(width: int, blocks: int, folder: Path) -> Path:
    sys.path.insert(0, str(HERE))
    import synth

    path = folder / f"synth-{width}x{blocks}.safetensors"
    if not path.exists():
        synth.write(synth.Spec(width, blocks), path)
    return path


def _run(tree: str, checkpoint: Path, output: Path) -> tuple[float, float | None]:
    """(wall seconds, peak RSS in MB) of one normalize process. The RSS is GNU time's (``%M``):
    a child's own ``ru_maxrss`` would start from this process's size at the fork."""
    env = {**os.environ, "PYTHONPATH": tree}
    command = [sys.executable, "-m", "sncli", "normalize", str(checkpoint)]
    command += ["-o", str(output), "--force", "-q", "--format", "json"]
    timer = shutil.which("time", path="/usr/bin")
    with tempfile.NamedTemporaryFile("r") as report:
        if timer is not None:
            command = [timer, "-f", "%M", "-o", report.name, *command]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=tree, env=env, stdout=subprocess.DEVNULL, check=False)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{tree}: sncli normalize failed")
        text = report.read().strip()
    return wall, int(text.splitlines()[-1]) / 1024 if text else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="*", default=[str(HERE.parent)])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--folder", default=None, help="where the checkpoint is kept")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.folder or scratch)
        checkpoint = _checkpoint(args.width, args.blocks, folder)
        outputs = {t: Path(scratch) / f"out-{i}.safetensors" for i, t in enumerate(args.trees)}
        times: dict[str, list[tuple[float, float]]] = {tree: [] for tree in args.trees}
        print(f"{checkpoint.name}, load average {os.getloadavg()[0]:.1f}, {args.runs} runs each")
        for _ in range(args.runs):
            for tree in args.trees:
                times[tree].append(_run(tree, checkpoint, outputs[tree]))
        for tree, runs in times.items():
            wall = statistics.median(t for t, _ in runs)
            peaks = [m for _, m in runs if m is not None]
            memory = f", peak RSS {max(peaks):.0f} MB" if peaks else ""
            shown = ", ".join(f"{t:.1f}" for t, _ in runs)
            print(f"{tree}: median {wall:.1f} s ({shown}){memory}")
        first = outputs[args.trees[0]]
        same = all(filecmp.cmp(first, out, shallow=False) for out in outputs.values())
        print(f"load average at the end {os.getloadavg()[0]:.1f}; outputs identical: {same}")


if __name__ == "__main__":
    main()
