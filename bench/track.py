"""Benchmark ``sncli track``: a 20-checkpoint run of a MiniLM-sized model (issue 27).

    python bench/track.py            # 20 checkpoints (+1), ~22.5M parameters each, a few minutes
    python bench/track.py --quick    # 5 checkpoints (+1)

The model has MiniLM-L6's shapes and BERT's names: 6 blocks of width 384 (query, key, value,
attention output 384×384; intermediate 1536×384; output 384×1536), a 30522×384 word embedding,
position and token-type embeddings, LayerNorms and biases (~22.5M float32 parameters, 90 MB
per checkpoint). Step 0's matrices come from ``synth.weight`` (a Marchenko–Pastur bulk plus
low-rank spikes); checkpoint t adds t · 1e-3 · G to each matrix, G a seeded Gaussian of
spectral norm ≈ 1 fixed per matrix, except block 0's query and the token-type embedding, which
never move (their drift must come out exactly 0).

Every measurement is a whole process (interpreter start included), in one run, so the ratios
hold on a loaded machine: ``sncli track --spectrum`` on the run with a cold cache; the same
after a 21st checkpoint is added (one computed, twenty from the cache); ``sncli report`` on the
21 checkpoints after it (the track part from the cache); 20 separate ``sncli spectrum`` calls.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import synth

D, FFN, BLOCKS, VOCAB, POSITIONS = 384, 1536, 6, 30522, 512
STILL = ("encoder.layer.0.attention.self.query.weight", "embeddings.token_type_embeddings.weight")


def shapes() -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, spectrum kind) of every tensor, BERT's names, MiniLM-L6's shapes."""
    out: list[tuple[str, tuple[int, ...], str]] = [
        ("embeddings.word_embeddings.weight", (VOCAB, D), "bulk"),
        ("embeddings.position_embeddings.weight", (POSITIONS, D), "bulk"),
        ("embeddings.token_type_embeddings.weight", (2, D), "bulk"),
        ("embeddings.LayerNorm.weight", (D,), "ones"),
        ("embeddings.LayerNorm.bias", (D,), "zeros"),
    ]
    for b in range(BLOCKS):
        p = f"encoder.layer.{b}"
        for name, kind in (("query", "powerlaw"), ("key", "powerlaw"), ("value", "steep")):
            out += [(f"{p}.attention.self.{name}.weight", (D, D), kind)]
            out += [(f"{p}.attention.self.{name}.bias", (D,), "zeros")]
        out += [
            (f"{p}.attention.output.dense.weight", (D, D), "spike"),
            (f"{p}.attention.output.dense.bias", (D,), "zeros"),
            (f"{p}.attention.output.LayerNorm.weight", (D,), "ones"),
            (f"{p}.attention.output.LayerNorm.bias", (D,), "zeros"),
            (f"{p}.intermediate.dense.weight", (FFN, D), "steep"),
            (f"{p}.intermediate.dense.bias", (FFN,), "zeros"),
            (f"{p}.output.dense.weight", (D, FFN), "powerlaw"),
            (f"{p}.output.dense.bias", (D,), "zeros"),
            (f"{p}.output.LayerNorm.weight", (D,), "ones"),
            (f"{p}.output.LayerNorm.bias", (D,), "zeros"),
        ]
    return out


def base() -> dict[str, torch.Tensor]:
    tensors = {}
    for index, (name, shape, kind) in enumerate(shapes()):
        if kind == "ones":
            tensors[name] = torch.ones(shape)
        elif kind == "zeros":
            tensors[name] = torch.zeros(shape)
        else:
            tensors[name] = synth.weight(shape, kind, 1000 + index)  # type: ignore[arg-type]
    return tensors


def drifts(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per moving matrix, a seeded Gaussian of spectral norm ≈ 1 (≈ √m + √n scaled away)."""
    out = {}
    for index, (name, tensor) in enumerate(tensors.items()):
        if tensor.dim() != 2 or name in STILL:
            continue
        m, n = tensor.shape
        g = torch.Generator().manual_seed(7 + index)
        out[name] = torch.randn(m, n, generator=g) / (math.sqrt(m) + math.sqrt(n))
    return out


def write_checkpoint(folder: Path, step: int, tensors: dict, moves: dict) -> Path:
    from safetensors.torch import save_file

    state = {
        name: (tensor + (step * 1e-3) * moves[name]) if name in moves else tensor
        for name, tensor in tensors.items()
    }
    path = folder / f"step_{step}.safetensors"
    save_file(state, str(path))
    return path


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str, str]:
    began = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - began
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return seconds, result.stdout, result.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 checkpoints instead of 20")
    parser.add_argument("--steps", type=int, default=None, help="checkpoints in the run")
    args = parser.parse_args()
    count = args.steps or (5 if args.quick else 20)
    torch.manual_seed(0)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    sncli = [sys.executable, "-m", "sncli"]
    with tempfile.TemporaryDirectory(prefix="sncli-track-bench-") as scratch:
        folder, cache = Path(scratch) / "run", Path(scratch) / "cache"
        folder.mkdir()
        tensors = base()
        moves = drifts(tensors)
        paths = [write_checkpoint(folder, 100 * t, tensors, moves) for t in range(count)]
        params = sum(t.numel() for t in tensors.values())
        track = [*sncli, "track", str(folder), "--spectrum", "--cache", str(cache)]
        first_s, out, _ = timed([*track, "--format", "json"], env)
        first = json.loads(out)
        write_checkpoint(folder, 100 * count, tensors, moves)
        more_s, out, err = timed([*track, "--format", "json"], env)
        more = json.loads(out)
        page = str(Path(scratch) / "run.html")
        report = [*sncli, "report", str(folder), "--cache", str(cache), "--spectrum", "-o", page]
        report_s, _, _ = timed([*report, "-q"], env)
        lipschitz_s, _, _ = timed([*report, "--sections", "lipschitz", "--force", "-q"], env)
        spectrum_s = 0.0
        for path in paths:
            seconds, out, _ = timed([*sncli, "spectrum", str(path), "--format", "json"], env)
            spectrum_s += seconds
        # checks: the run's numbers against the separate spectrum calls and the still layers
        last = json.loads(out)
        alpha = {layer["name"]: layer["alpha"] for layer in last["layers"]}
        step = 100 * (count - 1)
        worst = max(
            abs(p["alpha"] - alpha[p["layer"]]) / abs(alpha[p["layer"]])
            for p in first["points"]
            if p["step"] == step and p["alpha"] is not None and alpha.get(p["layer"])
        )
        still = {p["drift_first"] for p in more["points"] if p["layer"] in STILL}
        layers = len({p["layer"] for p in first["points"]})
        print(f"load: {os.getloadavg()[0]:.2f} (1-min average at the end), {os.cpu_count()} CPUs")
        print(
            f"run: {count} checkpoints (+1), {params / 1e6:.1f}M parameters, {layers} matrices, "
            f"{paths[0].stat().st_size / 2**20:.0f} MB each"
        )
        print(f"sncli track --spectrum, cold cache ({count}):    {first_s:7.2f} s")
        print(f"sncli track --spectrum, +1 checkpoint ({count + 1}): {more_s:7.2f} s")
        print(f"sncli report on the run after it ({count + 1}):     {report_s:7.2f} s")
        print(f"the same with --sections lipschitz:       {lipschitz_s:7.2f} s")
        print(f"{count} separate sncli spectrum calls:           {spectrum_s:7.2f} s")
        print(f"first run / {count} spectrum calls: {first_s / spectrum_s:.2f}×")
        print(f"rerun with one more / first run: {more_s / first_s:.3f}×")
        print(f"report after track / first run: {report_s / first_s:.3f}×")
        print(f"the rerun's note: {err.strip().splitlines()[-1] if err.strip() else '(none)'}")
        print(f"α at step {step}, track vs spectrum: max relative difference {worst:.1e}")
        print(f"drift_first of the layers that never move: {sorted(still)}")


if __name__ == "__main__":
    main()
