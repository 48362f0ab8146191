"""The Cholesky certificate of :mod:`.bounds` for a real NumPy matrix (no torch).

The same proof as :meth:`sncli.numerics.bounds.ScaledGram.certify` with
:func:`~sncli.numerics.bounds.certify_hermitian_batch` (real, double, one matrix): scale W by
a power of two so max|w| ∈ [½, 1), form G = WᵀW of the smaller side in float64, and factor
μI − Ĝ − cI with μ = (σ̂(1+δ))² rounded down and c covering the Gram's rounding
(γ_inner‖W‖_F², Higham Lemma 3.5), Cholesky's backward error (Demmel 1989; Higham Thm 10.3),
the diagonal subtraction and Rump's underflow term. Success proves σ_max ≤ σ̂(1+δ).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sncli.arrays import upcast
from sncli.numerics.floating import SLACK, UNIT_ROUNDOFF, check_finite_array, gamma

if TYPE_CHECKING:
    import numpy as np

_SMALLEST_SUBNORMAL = 2.0**-1074


def _down(value: float) -> float:
    return max(0.0, math.nextafter(value, 0.0))


def scaled_gram(matrix: np.ndarray) -> tuple[np.ndarray, int, int, float] | None:
    """(G = WᵀW of the smaller side of 2^(−e)·W, e, inner dimension, upper bound on ‖·‖_F²);
    None for the zero matrix. Raises ``NumericalError`` on NaN/Inf."""
    import numpy as np

    w = upcast(matrix, np.float64)
    check_finite_array(w)
    if w.size == 0:
        return None
    peak = float(np.abs(w).max())
    if peak == 0.0:
        return None
    exponent = math.frexp(peak)[1]
    first = -exponent // 2
    w *= 2.0**first
    w *= 2.0 ** (-exponent - first)
    if w.shape[0] < w.shape[1]:
        w = w.T
    w = np.ascontiguousarray(w)
    fro = float(np.linalg.norm(w)) ** 2 / (1.0 - gamma(w.size + 3)) * SLACK
    return w.T @ w, exponent, w.shape[0], fro


def certify_gram(gram: np.ndarray, mu: float, inner: int, frobenius_sq_upper: float) -> bool:
    """True only if λ_max(AᵀA) < μ for the computed Gram ``gram`` = fl(AᵀA) of A with
    ``inner`` rows and ‖A‖_F² ≤ ``frobenius_sq_upper``."""
    import numpy as np

    n = gram.shape[-1]
    error = gamma(inner) * frobenius_sq_upper + inner * n * _SMALLEST_SUBNORMAL
    u = UNIT_ROUNDOFF
    k = n + 1
    if k * u >= 0.1:
        return False
    g_chol = k * u / (1.0 - k * u)
    diag = gram.diagonal()
    shifted = mu - diag
    if not bool((shifted > 0).all()):
        return False
    trace_up = float(np.clip(shifted, 0, None).sum()) * (1.0 + gamma(n + 1)) * SLACK
    peak = float(diag.max())
    c = (
        error
        + g_chol / (1.0 - g_chol) * trace_up
        + 2.01 * UNIT_ROUNDOFF * (mu + peak)
        + 8 * (n + 1) * _SMALLEST_SUBNORMAL
    ) / (1.0 - 2.01 * UNIT_ROUNDOFF)
    c *= SLACK
    new_diag = shifted - c
    if not bool((new_diag > 0).all()):
        return False
    shifted_matrix = -gram
    np.fill_diagonal(shifted_matrix, new_diag)
    try:
        np.linalg.cholesky(shifted_matrix)
    except np.linalg.LinAlgError:
        return False
    return True


def certify_upper(matrix: np.ndarray, sigma_hat: float, deltas: Sequence[float]) -> float | None:
    """The first σ̂(1+δ) over ``deltas`` proved ≥ σ_max(matrix), else None (one Gram matrix).

    For the zero matrix every σ̂(1+δ) ≥ 0 is proved.
    """
    prepared = scaled_gram(matrix)
    for delta in deltas:
        bound = sigma_hat * (1.0 + delta)
        if not math.isfinite(bound) or bound < 0.0:
            continue
        if prepared is None:
            return bound
        if bound == 0.0:
            continue
        gram, exponent, inner, fro = prepared
        scaled = math.ldexp(bound, -exponent)
        if certify_gram(gram, _down(scaled * scaled), inner, fro):
            return bound
    return None
