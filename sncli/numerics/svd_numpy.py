"""Every singular value, or the K largest, of a NumPy matrix: :mod:`.svd` without torch.

The same algorithms, constants and start blocks as :mod:`.svd` (whose docstring explains them):
the float64 Gram matrix's ``eigvalsh`` (gesdd when near-singular), ‖W‖_F chunk by chunk, and
float64 block Lanczos for the top K. Only the arithmetic library differs (NumPy's OpenBLAS/
LAPACK), so values agree with the torch path to float64 rounding. :mod:`.svd`'s functions send
NumPy input here.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from sncli.arrays import as_float, torch_randn
from sncli.numerics import estimates as est
from sncli.numerics.estimates import Spectrum, _readonly
from sncli.numerics.floating import pow2_exponent
from sncli.numerics.spectral_numpy import (
    _chunk64,
    _gram64,
    _NormalOperator,
    _orthonormal_rows,
    max_abs,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np


def _gesdd(matrix: np.ndarray, exponent: int) -> np.ndarray:
    """float64 singular values of 2^e·W on its tall orientation (LAPACK gesdd)."""
    import numpy as np

    if matrix.shape[0] < matrix.shape[1]:
        matrix = matrix.T
    scaled = np.ascontiguousarray(_chunk64(matrix, exponent))
    return np.linalg.svd(scaled, compute_uv=False)


def singular_values_array(matrix: np.ndarray) -> Spectrum:
    """:func:`.svd.singular_values` for a NumPy matrix."""
    import numpy as np

    if matrix.ndim != 2:
        raise ValueError(f"expected a matrix, got shape {tuple(matrix.shape)}")
    side = min(matrix.shape)
    if side == 0:
        return Spectrum(_readonly(np.zeros(0)), "empty")
    matrix = as_float(matrix)
    amax = max_abs(matrix)
    if amax == 0.0:
        return Spectrum(_readonly(np.zeros(side)), "zero")
    exponent = pow2_exponent(amax)
    if side == 1:
        norm = float(np.linalg.norm(_chunk64(matrix, exponent)))
        return Spectrum(_readonly(np.array([math.ldexp(norm, -exponent)])), "vector-norm-float64")
    gram = _gram64(matrix, exponent, lower_only=True)
    lam = np.linalg.eigvalsh(gram, UPLO="L")[::-1]
    del gram
    sigma = np.sqrt(np.clip(lam, 0.0, None))
    algorithm = "gram-eigvalsh-float64"
    if sigma[-1] < est.GRAM_RESOLUTION * sigma[0]:
        sigma = np.sort(_gesdd(matrix, exponent))[::-1]
        algorithm = "gesdd-float64 (near-singular)"
    values = np.ldexp(np.ascontiguousarray(sigma, dtype=np.float64), -exponent)
    return Spectrum(_readonly(values), algorithm)


def frobenius_norm_array(matrix: np.ndarray) -> float:
    """:func:`.svd.frobenius_norm` for a NumPy array."""
    import numpy as np

    if matrix.size == 0:
        return 0.0
    flat = as_float(matrix.reshape(matrix.shape[0], -1))
    amax = max_abs(flat)
    if amax == 0.0:
        return 0.0
    exponent = pow2_exponent(amax)
    step = max(1, (1 << 18) // max(flat.shape[1], 1))
    total = 0.0
    for start in range(0, flat.shape[0], step):
        chunk = _chunk64(flat[start : start + step], exponent)
        total += float(np.sum(chunk * chunk))
    return math.ldexp(math.sqrt(total), -exponent)


def top_singular_values_array(matrix: np.ndarray, k: int, *, tol: float, seed: int) -> Spectrum:
    """:func:`.svd.top_singular_values` for a NumPy matrix."""
    import numpy as np

    side = min(matrix.shape)
    if not 1 <= k <= side:
        raise ValueError(f"k must be between 1 and {side}, got {k}")
    matrix = as_float(matrix)
    amax = max_abs(matrix)
    if amax == 0.0:
        return Spectrum(_readonly(np.zeros(k)), "zero", k == side, _readonly(np.zeros(k)), 0, True)
    if k >= est.TOP_K_DENSE_FRACTION * side or side <= 2 * est.TOP_K_MAX_BLOCK:
        full = singular_values_array(matrix)
        return Spectrum(_readonly(full.values[:k].copy()), full.algorithm, k == side)
    exponent = pow2_exponent(amax, 200)
    n = matrix.shape[1]
    theta, errors, steps, converged = _block_lanczos_top(
        _NormalOperator(matrix, np.dtype(np.float64), exponent),
        n,
        k,
        tol=2.0 * tol,
        max_dim=min(n, max(est.TOP_K_MIN_DIM, 8 * k)),
        seed=seed,
    )
    if not converged:
        full = singular_values_array(matrix)
        return Spectrum(
            _readonly(full.values[:k].copy()),
            full.algorithm + " (lanczos did not converge)",
            k == side,
        )
    values = np.ldexp(np.sqrt(np.clip(theta, 0.0, None)), -exponent)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(theta > 0, errors / (2.0 * theta), 0.0)
    return Spectrum(
        _readonly(values), "block-lanczos-float64", k == side, _readonly(relative), steps, True
    )


def _block_lanczos_top(
    operator: Callable[[np.ndarray], np.ndarray],
    n: int,
    k: int,
    *,
    tol: float,
    max_dim: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """:func:`.svd._block_lanczos_top` on NumPy: (θ, absolute error estimates, steps,
    converged)."""
    import numpy as np

    width = max(2, min(k, est.TOP_K_MAX_BLOCK, n))
    basis = _orthonormal_rows(torch_randn(seed, (width, n)), None)
    images = operator(basis)
    gram = basis @ images.T
    gram = (gram + gram.T) / 2
    last = basis.shape[0]
    steps = 1
    checked = 0
    while True:
        dim = gram.shape[0]
        if dim < min(n, max_dim) and dim < est.TOP_K_CHECK_GROWTH * checked and checked:
            fresh = _orthonormal_rows(images[dim - last :], basis)[: max_dim - dim]
            if fresh.shape[0]:
                basis, images, gram, last = _extend(operator, basis, images, gram, fresh)
                steps += 1
                continue
        checked = dim
        values, vectors = np.linalg.eigh(gram)
        values, vectors = values[::-1], vectors[:, ::-1]
        count = min(k, dim)
        top = np.ascontiguousarray(vectors[:, :count].T)
        residual = np.linalg.norm(top @ images - values[:count, None] * (top @ basis), axis=1)
        theta = np.ascontiguousarray(values)
        rho = residual
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
        if fresh.shape[0] == 0:
            return theta[:count], errors[:count], steps, count == k
        basis, images, gram, last = _extend(operator, basis, images, gram, fresh)
        steps += 1


def _extend(
    operator: Callable[[np.ndarray], np.ndarray],
    basis: np.ndarray,
    images: np.ndarray,
    gram: np.ndarray,
    fresh: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Add the orthonormal block ``fresh`` to the Krylov basis, its images and the projection."""
    import numpy as np

    fresh_images = operator(fresh)
    cross = basis @ fresh_images.T
    corner = fresh @ fresh_images.T
    corner = (corner + corner.T) / 2
    gram = np.block([[gram, cross], [cross.T, corner]])
    return (
        np.concatenate([basis, fresh]),
        np.concatenate([images, fresh_images]),
        gram,
        fresh.shape[0],
    )
