"""The torus bound's grid factor Π_j sec(π·τ_j/N_j) against brute-force τ* = sup_ω σ_max(K̂(ω)).

τ* is found independently: σ_max by float64 LAPACK SVD of K̂ on a fine grid, then a local
maximisation (scipy, Nelder–Mead) from the best fine-grid points. Every evaluated point is ≤ τ*,
so ``upper ≥ brute·(1 − 1e-12)`` is a strict check of soundness (1e-12: the SVD's rounding); and
``upper ≤ factor·brute·(1 + 1e-8)`` checks tightness (the certificate's δ = 1e-9 plus how far
the local search stops short of τ*). Grids are coarse (the factor is large there) and odd
(π, where the adversarial kernels peak, is then no grid point).
"""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

import sncli.numerics.conv as conv
from sncli.numerics.conv import bound_factor, torus_norm_upper_bound

SOUND_TOL = 1e-12
TIGHT_TOL = 1e-8

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _symbol_sigma(kernel: np.ndarray, dilation: int, omegas: np.ndarray) -> np.ndarray:
    """σ_max(K̂(ω)) for ω of shape (F, d), by float64 SVD of Σ_a K_a e^{−i a·ω}."""
    sizes = kernel.shape[2:]
    taps = np.array(list(product(*[range(k) for k in sizes])), dtype=np.float64) * dilation
    flat = kernel.reshape(kernel.shape[0], kernel.shape[1], -1)
    phases = np.exp(-1j * omegas @ taps.T)  # (F, T)
    symbols = np.einsum("ft,oit->foi", phases, flat)
    return np.linalg.svd(symbols, compute_uv=False)[:, 0]


def brute_tau(kernel: torch.Tensor, dilation: int = 1) -> float:
    """sup_ω σ_max(K̂(ω)) from below: a fine grid, then Nelder–Mead from its 4 best points."""
    weights = kernel.double().numpy()
    dims = weights.ndim - 2
    fine = {1: 2048, 2: 160, 3: 36}[dims]
    axes = [np.arange(fine) * (2 * math.pi / fine)] * dims
    omegas = np.stack([g.reshape(-1) for g in np.meshgrid(*axes, indexing="ij")], axis=1)
    sigmas = _symbol_sigma(weights, dilation, omegas)
    best = float(sigmas.max())
    for start in omegas[np.argsort(sigmas)[-4:]]:
        found = minimize(
            lambda w: -float(_symbol_sigma(weights, dilation, w[None, :])[0]),
            start,
            method="Nelder-Mead",
            options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 4000},
        )
        best = max(best, -float(found.fun))
    return best


CASES = [  # (out, in, *k), dilation, N
    ((1, 1, 3, 3), 1, 5),
    ((2, 3, 2, 2), 1, 3),
    ((3, 2, 3, 3), 1, 7),
    ((4, 4, 3, 3), 1, 12),
    ((2, 2, 5, 5), 1, 9),
    ((2, 3, 3, 3), 2, 9),
    ((2, 2, 2, 5), 1, 9),
    ((3, 1, 4), 1, 7),
    ((2, 2, 5), 2, 17),
    ((2, 2, 2, 2, 2), 1, 3),
    ((2, 1, 3, 3, 3), 1, 5),
]


@pytest.mark.parametrize(("shape", "dilation", "grid"), CASES)
def test_torus_bound_brackets_brute_force_tau(
    shape: tuple[int, ...], dilation: int, grid: int
) -> None:
    kernel = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape) + grid))
    sizes, factor = conv._torus_grid(tuple(shape[2:]), grid, (dilation,) * (len(shape) - 2))
    assert sizes == tuple(1 if k == 1 else grid for k in shape[2:])  # no doubling: factor ≤ 2
    tau = brute_tau(kernel, dilation)
    upper = torus_norm_upper_bound(kernel, grid, dilation)
    assert upper >= tau * (1 - SOUND_TOL)
    assert upper <= factor * tau * (1 + TIGHT_TOL)


def _alternating(dims: int) -> torch.Tensor:
    """One channel, taps ±1 in a 2^d checkerboard: |K̂(ω)| = 2^d·Π|sin(ω_j/2)|, peak 2^d at ω = π."""
    signs = torch.tensor([1.0, -1.0], dtype=torch.float64)
    kernel = signs
    for _ in range(dims - 1):
        kernel = kernel[..., None] * signs
    return kernel[None, None]


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("grid", [3, 5, 9])
def test_alternating_kernels_make_the_factor_exact(dims: int, grid: int) -> None:
    """On an odd grid the best grid value is 2^d·cos(π/2N)^d, and the factor Π sec(π/2N) is what
    it takes to reach τ* = 2^d: the product of per-axis factors is sharp here."""
    kernel = _alternating(dims)
    tau = 2.0**dims
    upper = torus_norm_upper_bound(kernel, grid)
    assert upper >= tau
    assert upper == pytest.approx(tau, rel=1e-8)
    grid_max = tau * math.cos(math.pi / (2 * grid)) ** dims
    assert upper / bound_factor((2,) * dims, (grid,) * dims, (1,) * dims) == pytest.approx(
        grid_max, rel=1e-8
    )


def test_a_factor_of_one_fails_on_a_peak_between_grid_points(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check above can fail: without the factor (or with only part of it) the bound falls
    below τ* on kernels that peak between grid points."""
    modulated = torch.cos(1.35 * torch.arange(5, dtype=torch.float64))[
        None, None
    ]  # between 2π/7·{1, 2}
    cases = [(_alternating(2), 4.0, 5), (modulated, brute_tau(modulated), 7)]
    for kernel, tau, grid in cases:
        assert torus_norm_upper_bound(kernel, grid) >= tau * (1 - SOUND_TOL)
    real = conv._factor
    monkeypatch.setattr(conv, "_factor", lambda *args: 1.0 if real(*args) is not None else None)
    for kernel, tau, grid in cases:
        assert torus_norm_upper_bound(kernel, grid) < tau * (1 - 1e-3)
    # One axis' factor only (the square root of the 2-D product) is not enough either.
    monkeypatch.setattr(conv, "_factor", lambda *args: math.sqrt(real(*args)))
    assert torus_norm_upper_bound(_alternating(2), 5) < 4.0 * (1 - 1e-3)


def test_bernstein_szego_inequality_on_random_trigonometric_polynomials() -> None:
    """h'² + n²h² ≤ n²‖h‖² (Szegő 1928), the step the factor rests on, and its consequence
    h(t* + s) ≥ ‖h‖·cos(n·s) for |n·s| ≤ π around a maximiser t*."""
    rng = np.random.default_rng(0)
    t = np.linspace(0.0, 2 * math.pi, 20001)
    for n in (1, 2, 3, 6):
        for _ in range(20):
            a, b = rng.standard_normal((2, n + 1))
            k = np.arange(n + 1)[:, None]
            h = (a[:, None] * np.cos(k * t) + b[:, None] * np.sin(k * t)).sum(axis=0)
            dh = (k * (b[:, None] * np.cos(k * t) - a[:, None] * np.sin(k * t))).sum(axis=0)
            if -h.min() > h.max():  # so that max h = ‖h‖
                a, b, h, dh = -a, -b, -h, -dh
            top = int(np.argmax(h))

            def neg(x: np.ndarray, a: np.ndarray = a, b: np.ndarray = b) -> float:
                kk = np.arange(a.shape[0])
                return -float((a * np.cos(kk * x[0]) + b * np.sin(kk * x[0])).sum())

            found = minimize(neg, [t[top]], method="Nelder-Mead", options={"xatol": 1e-12})
            peak = max(float(np.abs(h).max()), -float(found.fun))
            assert (dh**2 + n**2 * h**2).max() <= n**2 * peak**2 * (1 + 1e-9)
            s = t - float(found.x[0])
            near = np.abs(n * s) <= math.pi
            floor = peak * np.cos(n * s[near])
            assert (h[near] >= floor - 1e-9 * peak).all()
