"""``sncli spectrum`` on the CPU and on a GPU in one run (issue 26, item 5): wall times, their
ratio and the largest relative difference of the singular values.

    python bench/gpu.py             # a GPU box (estimated 2–4 min with 16 cores; not yet run)
    python bench/gpu.py --quick     # tiny sizes: checks the script (CPU only without CUDA)

Checkpoints (bench/synth.py, bf16, seeded, written to ``--dir`` and removed afterwards):

* the 302M GPT-layout synthetic, ``synth.Spec(1024, 24)``: 96 matrices of side 1024;
* a 7B-shaped slice: LLaMA-7B's layout (d = 4096, ffn 11008: q/k/v/o 4096², gate/up 11008×4096,
  down 4096×11008), ``--blocks-7b`` of its 32 blocks (default 2: 14 matrices, 405M parameters,
  0.8 GB). The whole 6.5B would be 13 GB to write and several minutes of 16-core CPU time per
  run; every block has the same shapes, so the full model costs about 32/blocks times this
  slice once the workers are saturated (the CPU run of 2 blocks leaves 2 of 16 cores idle, so
  that scaling is, if anything, slightly pessimistic for the CPU).

Then each kernel shape alone: one CPU thread against the GPU, the GPU's Gram and eigvalsh
apart (where the GPU's time goes). Both checkpoint runs are ``sncli.spectrum.spectra`` with the
default options (full float64 spectra, one worker per core; on the GPU the workers load and
compute metrics while the device computes one layer at a time). CUDA's start-up (context,
cuBLAS/cuSOLVER handles) is timed apart, before the GPU run. Without CUDA it prints "no CUDA"
and exits 0 (``--quick`` still runs the CPU side and the fallback, to check the script).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def specs(quick: bool, blocks_7b: int) -> list:
    import synth

    if quick:
        return [synth.Spec(64, 2), synth.Spec(128, 1, layout="llama")]
    return [synth.Spec(1024, 24), synth.Spec(4096, blocks_7b, layout="llama")]


def timed_spectra(path: Path, device: str):
    """(wall seconds including opening, the report, the CPU kernels: "numpy" or "torch")."""
    import sncli
    from sncli.spectrum import SpectrumOptions, spectra

    began = time.perf_counter()
    with sncli.open_checkpoint(path) as ckpt:
        report = spectra(ckpt, options=SpectrumOptions(device=device))
        kernels = "numpy" if ckpt.numpy_native else "torch"
    return time.perf_counter() - began, report, kernels


def differences(gpu, cpu) -> tuple[float, float, float]:
    """Largest relative difference of σ_max, of any σᵢ, and of any σᵢ relative to σ₁."""
    import numpy as np

    top = every = scaled = 0.0
    for a, b in zip(gpu.layers, cpu.layers, strict=True):
        assert a.name == b.name
        delta = np.abs(a.values - b.values)
        top = max(top, float(delta[0] / b.values[0]) if b.values[0] else 0.0)
        positive = b.values > 0
        if positive.any():
            every = max(every, float(np.max(delta[positive] / b.values[positive])))
        scaled = max(scaled, float(np.max(delta) / b.values[0]) if b.values[0] else 0.0)
    return top, every, scaled


def cuda_start() -> float:
    """Seconds to create the CUDA context and the cuBLAS/cuSOLVER handles the kernels use."""
    import torch

    began = time.perf_counter()
    x = torch.randn(64, 64, dtype=torch.float64, device="cuda")
    torch.linalg.eigvalsh(x @ x.T)
    torch.linalg.svdvals(x)
    torch.cuda.synchronize()
    return time.perf_counter() - began


#: Kernel shapes timed alone: the 302M's three, LLaMA-7B's three (q/k/v/o, gate/up, down).
KERNEL_SHAPES = [(1024, 1024), (3072, 1024), (4096, 1024), (4096, 4096), (11008, 4096)]
QUICK_KERNEL_SHAPES = [(96, 64), (256, 128)]


def kernel_times(shapes: list[tuple[int, int]], has_cuda: bool) -> list[tuple]:
    """Per shape (bf16 Gaussian): one-thread CPU seconds of the full-spectrum kernel on NumPy
    (as one worker runs it on a safetensors file; the checkpoint runs above use torch's MKL
    kernels instead on Intel CPUs above 300M parameters) and the GPU's, best of 3 after a
    warm-up (host→device copy of the bf16 matrix included), with the GPU's Gram and eigvalsh
    apart."""
    import numpy as np
    import torch

    from sncli.arrays import from_torch
    from sncli.numerics.spectral import _gram64
    from sncli.numerics.svd import singular_values
    from sncli.run import torch_threads

    rows = []
    generator = torch.Generator().manual_seed(0)
    for m, n in shapes:
        host = (torch.randn(m, n, generator=generator) / n**0.5).to(torch.bfloat16)
        array = from_torch(host)
        with torch_threads(1):
            began = time.perf_counter()
            cpu = singular_values(array).values
            cpu_s = time.perf_counter() - began
        gpu_s = gram_s = eig_s = float("nan")
        diff = float("nan")
        if has_cuda:
            runs, grams, eigs = [], [], []
            for _ in range(4):
                torch.cuda.synchronize()
                began = time.perf_counter()
                gpu = singular_values(host.to("cuda")).values
                runs.append(time.perf_counter() - began)
                moved = host.to("cuda")
                torch.cuda.synchronize()
                began = time.perf_counter()
                gram = _gram64(moved, 0, lower_only=True)
                torch.cuda.synchronize()
                grams.append(time.perf_counter() - began)
                torch.linalg.eigvalsh(gram, UPLO="L")
                torch.cuda.synchronize()
                eigs.append(time.perf_counter() - began - grams[-1])
            gpu_s, gram_s, eig_s = min(runs[1:]), min(grams[1:]), min(eigs[1:])
            diff = float(np.max(np.abs(gpu - cpu) / cpu))
        rows.append((m, n, cpu_s, gpu_s, gram_s, eig_s, diff))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (checks the script)")
    parser.add_argument("--blocks-7b", type=int, default=2, help="blocks of the 7B slice")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the files")
    args = parser.parse_args()

    import synth
    import torch

    has_cuda = torch.cuda.is_available()
    if not has_cuda and not args.quick:
        print("no CUDA: nothing to compare (run on a GPU box, or --quick to check the script)")
        return 0
    gpu_name = torch.cuda.get_device_name(0) if has_cuda else "none (no CUDA)"
    load = os.getloadavg()[0]
    print(f"GPU: {gpu_name} · CPU cores: {os.cpu_count()} · torch {torch.__version__}")
    print(f"load average (1 min) before: {load:.2f}")
    root = Path(tempfile.mkdtemp(prefix="sncli-gpu-", dir=args.dir))
    rows = []
    try:
        if has_cuda:
            print(f"CUDA start-up: {cuda_start():.2f} s (not in the GPU times)")
        warm = synth.write(synth.Spec(64, 1), root / "warm-up.safetensors")
        for device in ("cpu", "cuda"):  # imports and first kernel launches, untimed
            timed_spectra(warm, device)
        warm.unlink()
        for spec in specs(args.quick, args.blocks_7b):
            began = time.perf_counter()
            path = synth.write(spec, root / f"{spec.name()}.safetensors")
            written = time.perf_counter() - began
            size = path.stat().st_size / 1e9
            print(
                f"{spec.name()}: {spec.parameters / 1e6:.1f}M parameters, {size:.2f} GB, "
                f"written in {written:.1f} s"
            )
            cpu_s, cpu, kernels = timed_spectra(path, "cpu")
            gpu_s, gpu, _ = timed_spectra(path, "cuda")
            print(f"  CPU run on {kernels}'s kernels, {cpu.workers} workers")
            for note in gpu.notes:
                print(f"  note: {note}")
            top, every, scaled = differences(gpu, cpu)
            rows.append(
                (
                    spec.name(),
                    len(cpu.layers),
                    cpu.workers,
                    cpu_s,
                    gpu_s,
                    top,
                    every,
                    scaled,
                    gpu.device,
                )
            )
            path.unlink()
        kernels = kernel_times(QUICK_KERNEL_SHAPES if args.quick else KERNEL_SHAPES, has_cuda)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    print(
        "one matrix, full spectrum (s): CPU one thread · GPU (copy + Gram + eigvalsh) · "
        "GPU Gram · GPU eigvalsh · max rel. diff σ_i"
    )
    for m, n, cpu_s, gpu_s, gram_s, eig_s, diff in kernels:
        print(f"  {m:>5}×{n:<5}{cpu_s:>9.3f}{gpu_s:>9.3f}{gram_s:>9.3f}{eig_s:>9.3f}{diff:>10.1e}")
    print()
    print(
        f"{'checkpoint':<28}{'layers':>7}{'workers':>8}{'cpu s':>9}{'gpu s':>9}"
        f"{'cpu/gpu':>9}{'max rel. diff σ_max':>21}{'σ_i':>10}{'Δσ_i/σ_1':>10}  device"
    )
    for name, layers, workers, cpu_s, gpu_s, top, every, scaled, device in rows:
        print(
            f"{name:<28}{layers:>7}{workers:>8}{cpu_s:>9.2f}{gpu_s:>9.2f}"
            f"{cpu_s / gpu_s:>9.2f}{top:>21.1e}{every:>10.1e}{scaled:>10.1e}  {device}"
        )
    print(f"load average (1 min) after: {os.getloadavg()[0]:.2f}")
    if not has_cuda:
        print("no CUDA: the 'gpu' column is the CPU fallback (with its note); ratio meaningless")
    return 0


if __name__ == "__main__":
    sys.exit(main())
