"""Batched Hermitian certificates and top eigenpairs on NumPy/SciPy, for :mod:`.conv`.

:func:`certify_hermitian_batch` is :func:`sncli.numerics.bounds.certify_hermitian_batch` (the
same proof, constant for constant) with the Cholesky factorizations done by LAPACK ``potrf``
one matrix at a time (SciPy's OpenBLAS: as fast as torch's batched ``cholesky_ex`` at 16–512
channels on this AMD EPYC, faster from 128 up; NumPy's batched ``cholesky`` raises on the first
failure instead of reporting which one failed). :func:`lanczos_top`, :func:`subspace_estimates`
and :func:`certified_ratio` are the estimates and the proven lower bound conv.py used on torch,
with torch's seeded start vectors drawn by :func:`sncli.arrays.torch_randn`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from sncli.numerics.floating import SLACK, UNIT_ROUNDOFF, gamma

if TYPE_CHECKING:
    import numpy as np

_SMALLEST_SUBNORMAL = 2.0**-1074
_SINGLE_ROUNDOFF = 2.0**-24
_SINGLE_SUBNORMAL = 2.0**-149


def certify_hermitian_batch(
    matrices: np.ndarray,
    mu: float,
    error: np.ndarray,
    *,
    complex_arith: bool,
    overwrite: bool = False,
    single: bool = False,
) -> np.ndarray:
    """For computed Hermitian M̂_b (batch, n, n; lower triangles read) with ‖M̂_b − M_b‖₂ ≤
    ``error[b]``: True only if λ_max(M_b) < μ.

    The proof of :func:`sncli.numerics.bounds.certify_hermitian_batch`: Cholesky of
    fl(μI − M̂ − cI), c covering ``error``, Cholesky's backward error (Demmel 1989; Higham
    Thm 10.3), the diagonal subtraction, Rump's underflow term and, with ``single``, the
    rounding to single precision. ``overwrite`` negates and factors ``matrices`` in place. Each
    matrix is factored by ``potrf`` on its transposed (Fortran-order) view with ``uplo='U'``,
    which reads exactly the lower triangle of the C-order matrix (as the conjugate, whose
    eigenvalues and rounding errors mirror the matrix's); matrices already refused by their
    diagonal are not factored.
    """
    import numpy as np
    import scipy.linalg.lapack

    batch, n = matrices.shape[0], matrices.shape[-1]
    u = _SINGLE_ROUNDOFF if single else UNIT_ROUNDOFF
    k = 2 * (n + 1) + 2 if complex_arith else n + 1  # γ_{n+1}, complex as in floating.gamma
    if k * u >= 0.1:
        return np.zeros(batch, dtype=bool)
    g_chol = k * u / (1.0 - k * u)
    diag = np.diagonal(matrices, axis1=-2, axis2=-1).real
    shifted = mu - diag
    peak = diag.max(axis=-1)
    ok = (shifted > 0).all(axis=-1)
    trace_up = np.clip(shifted, 0, None).sum(axis=-1) * (1.0 + gamma(n + 1)) * SLACK
    conversion = np.zeros_like(trace_up)
    denominator = 1.0 - 2.01 * UNIT_ROUNDOFF
    if single:  # the float64 matrix rounded to single, and tr of the rounded one
        fro = np.linalg.norm(matrices.reshape(batch, -1), axis=-1)
        fro = fro * (1.0 + gamma(2 * n * n + 2)) * SLACK
        root_n = math.sqrt(n) * (1.0 + 4 * UNIT_ROUNDOFF)
        conversion = _SINGLE_ROUNDOFF * (math.sqrt(2.0) * fro + root_n * mu)
        trace_up = trace_up * (1.0 + 2 * _SINGLE_ROUNDOFF)
        denominator -= 1.01 * root_n * _SINGLE_ROUNDOFF
    subnormal = _SINGLE_SUBNORMAL if single else _SMALLEST_SUBNORMAL
    c = (
        error
        + g_chol / (1.0 - g_chol) * trace_up
        + 2.01 * UNIT_ROUNDOFF * (mu + peak)
        + conversion
        + 8 * (n + 1) * subnormal
    ) / denominator
    c = c * SLACK
    new_diag = shifted - c[:, None]
    if single:  # rounded to single, negated (exact), the diagonal rounded: fl₃₂(μI − M̂ − cI)
        low = np.complex64 if np.iscomplexobj(matrices) else np.float32
        matrix = matrices.astype(low)
        np.negative(matrix, out=matrix)
    elif overwrite and matrices.flags.c_contiguous:
        matrix = np.negative(matrices, out=matrices)
    else:
        matrix = -matrices
    index = np.arange(n)
    matrix[:, index, index] = new_diag
    ok &= (new_diag > 0).all(axis=-1)
    # LAPACK's potrf can report success on a matrix holding NaN off the diagonal: such a
    # matrix proves nothing (none is expected: the inputs are finite and scaled by 2^k)
    ok &= np.isfinite(matrix).all(axis=(-2, -1))
    (potrf,) = scipy.linalg.lapack.get_lapack_funcs(("potrf",), (matrix,))
    for b in np.nonzero(ok)[0]:
        _, info = potrf(matrix[b].T, lower=0, clean=0, overwrite_a=1)
        ok[b] = info == 0
    return ok


def lanczos_top(gram: np.ndarray, steps: int, seed: int = 0) -> tuple[float, np.ndarray]:
    """Top Ritz pair of a Hermitian PSD matrix by Lanczos with full reorthogonalization, from
    torch's seeded Gaussian start (:func:`sncli.arrays.torch_randn`)."""
    import numpy as np
    from scipy.linalg import eigh_tridiagonal

    from sncli.arrays import torch_randn

    n = gram.shape[0]
    steps = max(1, min(steps, n))
    q = torch_randn(seed, (n,)).astype(gram.dtype)
    q = q / np.linalg.norm(q)
    basis = np.zeros((steps, n), dtype=gram.dtype)
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(steps):
        basis[j] = q
        w = gram @ q
        alphas.append(float(np.vdot(q, w).real))
        for _ in range(2):
            w = w - basis[: j + 1].T @ (basis[: j + 1].conj() @ w)
        beta = float(np.linalg.norm(w))
        if j + 1 == steps or beta <= 1e-14 * max(abs(alphas[0]), 1e-300):
            break
        betas.append(beta)
        q = w / beta
    k = len(alphas)
    values, vectors = eigh_tridiagonal(
        np.asarray(alphas), np.asarray(betas[: k - 1]), select="i", select_range=(k - 1, k - 1)
    )
    return float(values[0]), basis[:k].T @ vectors[:, 0].astype(gram.dtype)


def subspace_estimates(grams: np.ndarray, width: int = 4, iterations: int = 6) -> np.ndarray:
    """Rayleigh–Ritz values (≤ λ_max of each computed Gram) after a few steps of batched
    subspace iteration from a seeded start: cheap, only to pick the block to refine."""
    import numpy as np

    from sncli.arrays import torch_randn

    batch, n, _ = grams.shape
    start = torch_randn(0, (n, min(width, n))).astype(grams.dtype)
    basis = np.broadcast_to(start, (batch, *start.shape))
    for _ in range(iterations):
        basis = np.linalg.qr(grams @ basis)[0]
    ritz = basis.conj().swapaxes(-1, -2) @ (grams @ basis)
    return np.linalg.eigvalsh(ritz)[..., -1]


def certified_ratio(w: np.ndarray, x: np.ndarray) -> float:
    """A guaranteed lower bound on ‖Wx‖/‖x‖ from float64 products, real or complex: the bound of
    :func:`sncli.numerics.bounds.certified_ratio` (‖fl(Wx) − Wx‖ ≤ γ_n‖W‖_F‖x‖, complex γ
    for complex operands; Higham Lemma 3.5; a complex norm's γ counts its 2k real squares)."""
    import numpy as np

    m, n = w.shape
    cplx = np.iscomplexobj(w) or np.iscomplexobj(x)
    norm_z = float(np.linalg.norm(w @ x))
    norm_x = float(np.linalg.norm(x))
    if norm_x == 0.0 or not math.isfinite(norm_z):
        return 0.0
    parts = 2 if cplx else 1  # a complex norm sums 2k real squares
    fro_sq = float(np.linalg.norm(w)) ** 2 / (1.0 - gamma(parts * w.size + 3)) * SLACK
    norm_x_up = norm_x * (1.0 + gamma(parts * n + 2)) * SLACK
    error = gamma(n, complex_arith=cplx) * math.sqrt(fro_sq) * norm_x_up
    numerator = norm_z * (1.0 - gamma(parts * m + 2)) - error
    if numerator <= 0.0:
        return 0.0
    return max(0.0, math.nextafter(numerator / norm_x_up / SLACK, 0.0))
