"""Time and check the dense kernels ``sncli spectrum`` could use, per shape, one thread.

    python bench/spectrum_kernels.py

For each shape of the benchmark checkpoints (bf16 Gaussian-bulk matrices, the hardest case for
small singular values): float64 Gram (lower block triangle, as sncli forms it) + eigvalsh,
float64 gesdd (``torch.linalg.svdvals``), and float32 Gram + eigvalsh; with the relative error of
σ_max and of the smallest σ against float64 scipy ``svdvals``. bench/README.md has the numbers.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = [(256, 256), (1024, 1024), (3072, 1024), (4096, 1024), (1024, 4096), (32, 4096)]


def best_of(function, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        function()
        times.append(time.perf_counter() - began)
    return min(times)


def gram64(w):
    """sncli's kernel: float64 Gram (lower block triangle) + eigvalsh."""
    import numpy as np
    import torch

    from sncli.numerics.spectral import _gram64

    lam = torch.linalg.eigvalsh(_gram64(w, 0, lower_only=True), UPLO="L")
    return np.sqrt(np.clip(lam.numpy()[::-1], 0, None))


def gesdd(w):
    """float64 svdvals on the tall orientation."""
    import torch

    m, n = w.shape
    tall = w.double() if m >= n else w.double().T.contiguous()
    return torch.linalg.svdvals(tall).numpy()


def gram32(w):
    """float32 Gram + eigvalsh."""
    import numpy as np
    import torch

    w32 = w.float()
    g = w32.T @ w32 if w.shape[0] >= w.shape[1] else w32 @ w32.T
    return np.sqrt(np.clip(torch.linalg.eigvalsh(g).double().numpy()[::-1], 0, None))


def main() -> None:
    import scipy.linalg
    import torch

    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    print(
        "| shape | fp64 Gram + eigvalsh (ms) | fp64 gesdd (ms) | fp32 Gram + eigvalsh (ms) | "
        "σ_max error: Gram64 / fp32 | σ_min error: Gram64 / fp32 | σ_min/σ_max |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for m, n in SHAPES:
        w = (torch.randn(m, n, generator=generator) / math.sqrt(n)).bfloat16()
        ref = scipy.linalg.svdvals(w.double().numpy())

        kernels = (gram64, gesdd, gram32)
        times = [best_of(lambda f=f, w=w: f(w)) * 1e3 for f in kernels]
        a, b = gram64(w), gram32(w)
        top = [abs(x[0] - ref[0]) / ref[0] for x in (a, b)]
        low = [abs(x[-1] - ref[-1]) / ref[-1] for x in (a, b)]
        print(
            f"| {m}×{n} | {times[0]:.0f} | {times[1]:.0f} | {times[2]:.0f} | "
            f"{top[0]:.0e} / {top[1]:.0e} | {low[0]:.0e} / {low[1]:.0e} | {ref[-1] / ref[0]:.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
