"""Every singular value of a weight matrix, or its K largest: the kernels behind ``sncli spectrum``.

**Full spectrum** (:func:`singular_values`): the eigenvalues of the smaller float64 Gram matrix
(scaled by a power of two, accumulated chunk by chunk, lower block triangle only) by LAPACK
``eigvalsh``, σᵢ = √λᵢ. Chosen by measurement (one thread, torch 2.13/MKL, this 2-core EPYC;
bench/README.md): Gram + eigvalsh took 0.19/0.29/0.51 s at 1024², 3072×1024, 4096×1024 against
0.30/0.86/1.25 s for float64 gesdd (``svdvals``), and 1.0 ms against 16 ms at 32×4096 (gesdd on
a wide matrix was slower still: 6.1 s at 1024×4096). float32 Gram + eigvalsh saved little
(eigvalsh dominates at side 1024) and loses every σ below ~3e-4·σ₁.

Accuracy: λ from the float64 Gram matrix are off by about ε₆₄·λ₁ (backward stable), so σ₁ is
exact to rounding (≤ 2e-15 relative measured against float64 gesdd) and a small σᵢ to a
relative error of about ε₆₄·(σ₁/σᵢ)² (measured: 4e-11 at σᵢ = 7e-4·σ₁). When the smallest
value is below ``GRAM_RESOLUTION``·σ₁ (near-singular or rank-deficient W, where that error would
reach 1e-6 and rank decisions fail), the layer is recomputed by float64 gesdd on its tall
orientation, which resolves σ down to ε₆₄·σ₁.

**Top K** (:func:`top_singular_values`): block Lanczos on WᵀW in float64 (the operator of
:mod:`.spectral`, streaming W in converted chunks), block size min(K, 16) (at least 2), stopped
when every one of the K Ritz values has an estimated relative error ≤ ``tol``; each Ritz value
is a lower bound on its singular value (Cauchy interlacing). Dense when K is a large part of
the spectrum or when Lanczos does not converge.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from sncli.arrays import is_array
from sncli.numerics.estimates import (
    GRAM_RESOLUTION,
    TOP_K_CHECK_GROWTH,
    TOP_K_DENSE_FRACTION,
    TOP_K_MAX_BLOCK,
    TOP_K_MIN_DIM,
    TOP_K_TOL,
    Spectrum,
    _readonly,
)
from sncli.numerics.floating import pow2_exponent
from sncli.numerics.spectral import (
    _chunk64,
    _gram64,
    _max_abs,
    _NormalOperator,
    _orthonormal_rows,
)

if TYPE_CHECKING:
    import numpy as np
    import torch


def _gesdd(matrix: torch.Tensor, exponent: int) -> np.ndarray:
    """float64 ``svdvals`` of 2^e·W on its tall orientation (wide gesdd was 5× slower)."""
    import torch

    if matrix.shape[0] < matrix.shape[1]:
        matrix = matrix.T
    scaled = _chunk64(matrix, exponent).contiguous()
    return torch.linalg.svdvals(scaled).cpu().numpy()


def singular_values(matrix: torch.Tensor) -> Spectrum:
    """All min(m, n) singular values of a 2-D tensor, largest first, in float64.

    Raises ``NumericalError`` when the matrix holds NaN or Inf. A NumPy matrix is measured on
    NumPy (:mod:`.svd_numpy`, no torch).
    """
    if is_array(matrix):
        from sncli.numerics.svd_numpy import singular_values_array

        return singular_values_array(matrix)
    import numpy as np
    import torch

    matrix = matrix.detach()
    if matrix.dim() != 2:
        raise ValueError(f"expected a matrix, got shape {tuple(matrix.shape)}")
    side = min(matrix.shape)
    if side == 0:
        return Spectrum(_readonly(np.zeros(0)), "empty")
    if matrix.dtype not in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        matrix = matrix.to(torch.float32)
    amax = _max_abs(matrix)
    if amax == 0.0:
        return Spectrum(_readonly(np.zeros(side)), "zero")
    exponent = pow2_exponent(amax)
    if side == 1:
        norm = float(torch.linalg.vector_norm(_chunk64(matrix, exponent)))
        return Spectrum(_readonly(np.array([math.ldexp(norm, -exponent)])), "vector-norm-float64")
    gram = _gram64(matrix, exponent, lower_only=True)
    lam = torch.linalg.eigvalsh(gram, UPLO="L").cpu().numpy()[::-1]
    del gram
    sigma = np.sqrt(np.clip(lam, 0.0, None))
    algorithm = "gram-eigvalsh-float64"
    if sigma[-1] < GRAM_RESOLUTION * sigma[0]:
        sigma = np.sort(_gesdd(matrix, exponent))[::-1]
        algorithm = "gesdd-float64 (near-singular)"
    values = np.ldexp(np.ascontiguousarray(sigma, dtype=np.float64), -exponent)
    return Spectrum(_readonly(values), algorithm)


def frobenius_norm(matrix: torch.Tensor) -> float:
    """‖W‖_F in float64, chunk by chunk (no full float64 copy), scaled against overflow."""
    if is_array(matrix):
        from sncli.numerics.svd_numpy import frobenius_norm_array

        return frobenius_norm_array(matrix)
    import torch

    matrix = matrix.detach()
    if matrix.numel() == 0:
        return 0.0
    if matrix.dtype not in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        matrix = matrix.to(torch.float32)  # float8: exact in float32 (aminmax refuses float8)
    amax = _max_abs(matrix)
    if amax == 0.0:
        return 0.0
    exponent = pow2_exponent(amax)
    flat = matrix.reshape(matrix.shape[0], -1)
    step = max(1, (1 << 18) // max(flat.shape[1], 1))
    total = 0.0
    for start in range(0, flat.shape[0], step):
        chunk = _chunk64(flat[start : start + step], exponent)
        total += float(torch.sum(chunk * chunk))
    return math.ldexp(math.sqrt(total), -exponent)


def top_singular_values(
    matrix: torch.Tensor, k: int, *, tol: float = TOP_K_TOL, seed: int = 0
) -> Spectrum:
    """The ``k`` largest singular values (k ≤ min(m, n)) by float64 block Lanczos on WᵀW.

    Each value is a Ritz value, a lower bound on its σ; ``errors`` are the estimated relative
    errors (residual/gap estimate, as :mod:`.spectral`). Dense (exact) when k ≥ ¼·min(m, n) or
    when Lanczos does not converge within its Krylov cap. NumPy in: on NumPy (no torch).
    """
    if is_array(matrix):
        from sncli.numerics.svd_numpy import top_singular_values_array

        return top_singular_values_array(matrix, k, tol=tol, seed=seed)
    import numpy as np
    import torch

    matrix = matrix.detach()
    side = min(matrix.shape)
    if not 1 <= k <= side:
        raise ValueError(f"k must be between 1 and {side}, got {k}")
    if matrix.dtype not in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        matrix = matrix.to(torch.float32)
    amax = _max_abs(matrix)
    if amax == 0.0:
        return Spectrum(_readonly(np.zeros(k)), "zero", k == side, _readonly(np.zeros(k)), 0, True)
    if k >= TOP_K_DENSE_FRACTION * side or side <= 2 * TOP_K_MAX_BLOCK:
        full = singular_values(matrix)
        return Spectrum(_readonly(full.values[:k].copy()), full.algorithm, k == side)
    exponent = pow2_exponent(amax, 200)
    n = matrix.shape[1]
    ritz = _block_lanczos_top(
        _NormalOperator(matrix, torch.float64, exponent),
        n,
        k,
        device=matrix.device,
        tol=2.0 * tol,
        max_dim=min(n, max(TOP_K_MIN_DIM, 8 * k)),
        seed=seed,
    )
    theta, errors, steps, converged = ritz
    if not converged:
        full = singular_values(matrix)
        return Spectrum(
            _readonly(full.values[:k].copy()),
            full.algorithm + " (lanczos did not converge)",
            k == side,
        )
    values = np.ldexp(np.sqrt(np.clip(theta, 0.0, None)), -exponent)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(theta > 0, errors / (2.0 * theta), 0.0)
    return Spectrum(
        _readonly(values),
        "block-lanczos-float64",
        k == side,
        _readonly(relative),
        steps,
        True,
    )


def _block_lanczos_top(
    operator: object,
    n: int,
    k: int,
    *,
    device: torch.device,
    tol: float,
    max_dim: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Block Lanczos with full reorthogonalization, Rayleigh–Ritz every step, until the top
    ``k`` Ritz values θᵢ each have error estimate ≤ ``tol``·θᵢ (on λ): (θ, absolute error
    estimates, steps, converged). The estimate is min(ρᵢ, ρᵢ²/gapᵢ) with gapᵢ the distance to
    the nearest other Ritz value less its residual (Parlett §11.7), ρᵢ alone when gap ≤ ρᵢ."""
    import numpy as np
    import torch

    dtype = torch.float64
    generator = torch.Generator().manual_seed(seed)
    width = max(2, min(k, TOP_K_MAX_BLOCK, n))
    start = torch.randn(width, n, generator=generator, dtype=dtype)
    basis = _orthonormal_rows(start.to(device=device), None)
    images = operator(basis)  # type: ignore[operator]
    gram = (basis @ images.T).cpu()
    gram = (gram + gram.T) / 2
    last = basis.shape[0]
    steps = 1
    checked = 0
    while True:
        dim = gram.shape[0]
        if dim < min(n, max_dim) and dim < TOP_K_CHECK_GROWTH * checked and checked:
            fresh = _orthonormal_rows(images[dim - last :], basis)[: max_dim - dim]
            if fresh.shape[0]:
                basis, images, gram, last = _extend(operator, basis, images, gram, fresh)
                steps += 1
                continue
        checked = dim
        values, vectors = torch.linalg.eigh(gram)
        order = torch.arange(dim - 1, -1, -1)
        values, vectors = values[order], vectors[:, order]
        count = min(k, dim)
        top = vectors[:, :count].T.to(device)
        residual = torch.linalg.vector_norm(
            top @ images - values[:count, None].to(device) * (top @ basis), dim=1
        ).cpu()
        theta = values.numpy()
        rho = residual.numpy()
        errors = rho.copy()
        for i in range(count):
            others = np.delete(theta, i)
            if others.size:
                gap = float(np.min(np.abs(others - theta[i]))) - rho[i]
                if gap > rho[i]:
                    errors[i] = min(rho[i], rho[i] * rho[i] / gap)
        done = count == k and bool(np.all(errors[:k] <= tol * np.abs(theta[:k])))
        if done or dim >= n:
            return theta[:k], errors[:k], steps, count == k and (done or dim >= n)
        if dim >= max_dim:
            return theta[:count], errors[:count], steps, False
        fresh = _orthonormal_rows(images[dim - last :], basis)[: max_dim - dim]
        if fresh.shape[0] == 0:  # invariant subspace: every remaining direction found
            return theta[:count], errors[:count], steps, count == k
        basis, images, gram, last = _extend(operator, basis, images, gram, fresh)
        steps += 1


def _extend(
    operator: object,
    basis: torch.Tensor,
    images: torch.Tensor,
    gram: torch.Tensor,
    fresh: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Add the orthonormal block ``fresh`` to the Krylov basis, its images and the projection."""
    import torch

    fresh_images = operator(fresh)  # type: ignore[operator]
    cross = (basis @ fresh_images.T).cpu()
    corner = (fresh @ fresh_images.T).cpu()
    corner = (corner + corner.T) / 2
    gram = torch.cat([torch.cat([gram, cross], dim=1), torch.cat([cross.T, corner], dim=1)], dim=0)
    return torch.cat([basis, fresh]), torch.cat([images, fresh_images]), gram, fresh.shape[0]
