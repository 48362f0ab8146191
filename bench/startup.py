"""Start-up time of whole ``sncli`` processes: ``sncli --help`` and ``sncli CMD --help``.

    python bench/startup.py                      # this checkout
    python bench/startup.py OLD_TREE NEW_TREE    # two source trees, runs interleaved

Each tree is put first on PYTHONPATH (a checkout's root, holding ``sncli/``); the median of
``--runs`` runs is printed per tree and command line, with the load average at the start.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMAND_LINES = (("--help",), ("inspect", "--help"), ("report", "--help"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="*", default=[str(Path(__file__).resolve().parents[1])])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    script = shutil.which("sncli") or str(Path(sys.executable).with_name("sncli"))
    print(f"load average {os.getloadavg()[0]:.1f}, {args.runs} runs each, median seconds")
    for line in COMMAND_LINES:
        times: dict[str, list[float]] = {tree: [] for tree in args.trees}
        for _ in range(args.runs):
            for tree in args.trees:  # interleaved: the trees see the same machine state
                env = {**os.environ, "PYTHONPATH": tree}
                start = time.perf_counter()
                subprocess.run([script, *line], env=env, stdout=subprocess.DEVNULL, check=True)
                times[tree].append(time.perf_counter() - start)
        medians = "  ".join(f"{statistics.median(t):.3f} ({tree})" for tree, t in times.items())
        print(f"sncli {' '.join(line):<16} {medians}")
    floor = []
    for _ in range(args.runs):  # what the help of any typer + rich program costs
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import typer.main, typer.rich_utils"], check=True)
        floor.append(time.perf_counter() - start)
    print(f"import typer + rich     {statistics.median(floor):.3f}")


if __name__ == "__main__":
    main()
