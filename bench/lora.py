"""Benchmark a LoRA update's spectrum from its factors against forming B·A.

    python bench/lora.py             # r = 16 on 4096 × 4096 (float32 factors)
    python bench/lora.py --quick     # r = 16 on 1024 × 1024

Both routes in one run, on the same factors, float64, single-threaded torch/NumPy as sncli's
workers run:

* from factors (``sncli.numerics.lowrank``): QR of B (m×r) and Aᵀ (n×r), SVD of the r×r core:
  O((m + n) r²);
* formed: ΔW = s·B·A (m×n, float64), then its singular values as ``sncli spectrum`` computes a
  dense layer's (:func:`sncli.numerics.svd.singular_values`), and also only σ_max as
  ``inspect --method exact`` would (:func:`largest_singular_value`).

The medians of ``--repeat`` runs and their ratios are printed, and the values are checked to
agree (relative 1e-9).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def _median(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        began = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    # One BLAS thread, as sncli's workers run: on a loaded machine threaded OpenBLAS made the
    # 4096×16 QR 15× slower (324 ms against 20.5 ms).
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")

    import numpy as np
    import torch

    from sncli.numerics.lowrank import lowrank_singular_values
    from sncli.numerics.spectral import Method, largest_singular_value
    from sncli.numerics.svd import singular_values

    torch.set_num_threads(1)
    side = 1024 if args.quick else 4096
    r, scale = args.rank, 2.0
    gen = torch.Generator().manual_seed(0)
    b = torch.randn(side, r, generator=gen)
    a = torch.randn(r, side, generator=gen)

    factor_s, values = _median(lambda: lowrank_singular_values(b, a, scale), args.repeat * 10)

    def formed_spectrum() -> np.ndarray:
        product = scale * (b.double() @ a.double())
        return np.asarray(singular_values(product).values)

    def formed_sigma() -> float:
        product = scale * (b.double() @ a.double())
        return largest_singular_value(product, Method.EXACT).sigma

    full_s, full = _median(formed_spectrum, args.repeat)
    sigma_s, sigma = _median(formed_sigma, args.repeat)
    assert np.allclose(values, full[:r], rtol=1e-9), "spectra disagree"
    assert abs(sigma - values[0]) <= 1e-9 * values[0], "σ_max disagrees"
    print(f"ΔW = s·B·A, r = {r}, {side}×{side}, factors float32, one thread")
    print(f"  from factors (QR + r×r SVD): {factor_s * 1e3:9.3f} ms  (all {r} σ)")
    print(f"  formed, full spectrum:       {full_s * 1e3:9.3f} ms  ratio {full_s / factor_s:8.0f}×")
    print(
        f"  formed, σ_max only (exact):  {sigma_s * 1e3:9.3f} ms  ratio {sigma_s / factor_s:8.0f}×"
    )
    print(f"  σ_max = {values[0]:.12g} (both routes agree to 1e-9)")


if __name__ == "__main__":
    main()
