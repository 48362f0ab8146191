"""Benchmark ``sncli diff``: a 302M-parameter checkpoint against a perturbed copy of itself.

    python bench/diff.py            # d=1024 × 24 blocks (302M bf16, 576 MB per side), ~3 min
    python bench/diff.py --quick    # d=512 × 8 blocks

B is A with a seeded rank-4 update of spectral norm 1e-2·σ(A) on every other block's weights and
the rest byte-equal. Prints, in one run: ``sncli inspect A`` and ``sncli diff A B`` wall times
(each a fresh process, interpreter start included) and their ratio, peak RSS of both, and the
largest relative error of ``delta_sigma`` against float64 ``scipy.linalg.svdvals`` of B − A, and
the subspace cosines and intruder decisions against full float64 SVDs of A and B (with the
cosine error ``diff`` states; ``--no-directions`` skips these SVDs).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import synth


def write_perturbed(spec: synth.Spec, source: Path, path: Path) -> set[str]:
    """B: A's tensors, every other block's weights plus a rank-4 update (‖·‖₂ = 1e-2·‖W‖₂)."""
    from safetensors import safe_open

    header_len = struct.unpack("<Q", source.read_bytes()[:8])[0]
    changed: set[str] = set()
    with safe_open(str(source), framework="pt") as reader, path.open("wb") as handle:
        raw = source.read_bytes()[: 8 + header_len]
        handle.write(raw)  # same header: same names, shapes, dtypes and offsets
        for index, (name, _, _) in enumerate(spec.shapes()):
            tensor = reader.get_tensor(name)
            block = int(name.split(".")[1])
            if block % 2 == 0:
                g = torch.Generator().manual_seed(index)
                m, n = tensor.shape
                u = torch.linalg.qr(torch.randn(m, 4, generator=g, dtype=torch.float64)).Q
                v = torch.linalg.qr(torch.randn(n, 4, generator=g, dtype=torch.float64)).Q
                scale = 1e-2 * float(torch.linalg.matrix_norm(tensor.double(), ord=2))
                tensor = (tensor.double() + scale * u @ v.T).to(tensor.dtype)
                changed.add(name)
            handle.write(tensor.contiguous().view(torch.uint8).numpy().data)
    return changed


class Directions:
    """Subspace cosines and intruders of ``diff`` against full float64 LAPACK SVDs of A and B:
    the largest cosine error, whether each is within the stated ``subspace_error``, and the
    intruder decisions (reported, unresolved) against the exact ones."""

    def __init__(self) -> None:
        self.errors: list[tuple[float, float, str]] = []
        self.intruders = {"agree": 0, "wrong": 0, "unresolved": 0}

    def add(self, layer: dict, a: np.ndarray, b: np.ndarray) -> None:
        from scipy.linalg import svd

        left_a = svd(a, full_matrices=False)[0]
        left_b = svd(b, full_matrices=False)[0]
        k = len(layer["subspace_cosines"])
        exact = np.linalg.svd(left_a[:, :k].T @ left_b[:, :k], compute_uv=False)
        error = float(np.abs(np.minimum(exact, 1.0) - layer["subspace_cosines"]).max())
        self.errors.append((error, layer["subspace_error"], layer["name"]))
        best = np.abs(left_b[:, :10].T @ left_a).max(axis=1)
        truth = {int(j) for j in np.nonzero(best < 0.5)[0]}
        unresolved = set(layer["intruder_unresolved"])
        for j in range(10):
            if j in unresolved:
                self.intruders["unresolved"] += 1
            elif (j in layer["intruder_indices"]) == (j in truth):
                self.intruders["agree"] += 1
            else:
                self.intruders["wrong"] += 1

    def print(self) -> None:
        error, stated, name = max(self.errors)
        held = sum(1 for e, s, _ in self.errors if e <= s)
        resolved = [s for _, s, _ in self.errors if s < 1]
        print(
            f"subspace cosines vs float64 SVD: max error {error:.1e} ({name}, stated "
            f"{stated:.1e}); within the stated error: {held}/{len(self.errors)} layers; "
            f"stated error < 1 on {len(resolved)} layers"
            + (f" (largest {max(resolved):.1e})" if resolved else "")
        )
        counts = self.intruders
        print(
            f"intruder decisions (top-10 per changed layer) vs float64 SVD: {counts['agree']} "
            f"agree, {counts['wrong']} differ, {counts['unresolved']} reported unresolved"
        )


def timed(command: list[str]) -> tuple[float, int, str]:
    """Wall seconds, the child's peak RSS (bytes) and its stdout."""
    began = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return seconds, peak, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the fastest counts")
    parser.add_argument(
        "--no-directions",
        dest="directions",
        action="store_false",
        help="skip checking the subspace cosines and intruders against full float64 SVDs",
    )
    args = parser.parse_args()
    spec = synth.Spec(d=512, blocks=8) if args.quick else synth.Spec(d=1024, blocks=24)
    with tempfile.TemporaryDirectory(prefix="sncli-diff-bench-") as folder:
        a, b = Path(folder) / "a.safetensors", Path(folder) / "b.safetensors"
        synth.write(spec, a)
        changed = write_perturbed(spec, a, b)
        sncli = [sys.executable, "-m", "sncli"]
        # ru_maxrss of RUSAGE_CHILDREN is the largest child so far: diff runs second, so its
        # figure is max(inspect, diff); diff's own peak is reported when it is the larger one.
        # With --repeat, the two alternate and each keeps its fastest run (a shared machine's
        # load only ever adds time).
        inspect_s = diff_s = math.inf
        for _ in range(args.repeat):
            seconds, inspect_rss, _ = timed([*sncli, "inspect", str(a), "--format", "json"])
            inspect_s = min(inspect_s, seconds)
            seconds, diff_rss, out = timed([*sncli, "diff", str(a), str(b), "--format", "json"])
            diff_s = min(diff_s, seconds)
        report = json.loads(out)
        from safetensors.torch import load_file
        from scipy.linalg import svdvals

        ta, tb = load_file(str(a)), load_file(str(b))
        worst, where = 0.0, ""
        directions = Directions()
        for layer in report["layers"]:
            name = layer["name"]
            if layer["unchanged"]:
                assert name not in changed and torch.equal(ta[name], tb[name])
                continue
            reference = float(svdvals((tb[name].double() - ta[name].double()).numpy())[0])
            error = abs(layer["delta_sigma"] - reference) / reference
            if error > worst:
                worst, where = error, name
            if args.directions:
                directions.add(layer, ta[name].double().numpy(), tb[name].double().numpy())
        unchanged = report["summary"]["unchanged"]
        print(f"checkpoint: d={spec.d} × {spec.blocks} blocks, {a.stat().st_size / 2**20:,.0f} MB")
        print(f"layers: {report['summary']['compared']} compared, {unchanged} byte-equal")
        print(f"sncli inspect A: {inspect_s:.2f} s, peak RSS {inspect_rss / 2**20:,.0f} MB")
        print(f"sncli diff A B:  {diff_s:.2f} s, peak RSS ≤ {diff_rss / 2**20:,.0f} MB")
        print(f"diff / inspect: {diff_s / inspect_s:.2f}× (fastest of {args.repeat} each)")
        print(f"max relative error of delta_sigma vs float64 SVD: {worst:.1e} ({where})")
        if args.directions:
            directions.print()


if __name__ == "__main__":
    main()
