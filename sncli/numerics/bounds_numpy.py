"""The Cholesky certificate of :mod:`.bounds` for a real NumPy matrix (no torch).

The same proof as :meth:`sncli.numerics.bounds.ScaledGram.certify` with
:func:`~sncli.numerics.bounds.certify_hermitian_batch` (real, double, one matrix): scale W by
a power of two so max|w| ∈ [½, 1), form G = WᵀW of the smaller side in float64, and factor
μI − Ĝ − cI with μ = (σ̂(1+δ))² rounded down and c covering the Gram's rounding
(γ_inner‖W‖_F², Higham Lemma 3.5), Cholesky's backward error (Demmel 1989; Higham Thm 10.3),
the diagonal subtraction and Rump's underflow term. Success proves σ_max ≤ σ̂(1+δ).

:func:`sigma_interval_array` is :func:`sncli.numerics.bounds.sigma_interval` on NumPy
(``lipschitz --certified`` and ``--mlp`` on files read without torch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sncli.arrays import upcast
from sncli.numerics.estimates import SigmaInterval
from sncli.numerics.floating import SLACK, UNIT_ROUNDOFF, check_finite_array, gamma

if TYPE_CHECKING:
    import numpy as np

_SMALLEST_SUBNORMAL = 2.0**-1074


def _down(value: float) -> float:
    return max(0.0, math.nextafter(value, 0.0))


def scaled_gram(matrix: np.ndarray) -> tuple[np.ndarray, int, int, float] | None:
    """(G = WᵀW of the smaller side of 2^(−e)·W, e, inner dimension, upper bound on ‖·‖_F²);
    None for the zero matrix. Raises ``NumericalError`` on NaN/Inf."""
    prepared = _prepare(matrix)
    if prepared is None:
        return None
    w, exponent = prepared
    return w.T @ w, exponent, w.shape[0], _frobenius_sq_upper(w)


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


def bidiagonal(alphas: list[float], betas: list[float]) -> np.ndarray:
    """The k×k or k×(k+1) upper bidiagonal with ``alphas`` on the diagonal, ``betas`` above."""
    import numpy as np

    k = len(alphas)
    b = np.zeros((k, k + (len(betas) == k)))
    b[np.arange(k), np.arange(k)] = alphas
    b[np.arange(len(betas)), np.arange(1, len(betas) + 1)] = betas
    return b


def bidiagonal_sigma(alphas: list[float], betas: list[float]) -> float:
    import numpy as np

    return float(np.linalg.svd(bidiagonal(alphas, betas), compute_uv=False)[0])


def _prepare(matrix: np.ndarray) -> tuple[np.ndarray, int] | None:
    """:func:`sncli.numerics.bounds._prepare` on NumPy: 2^(−e)·W in float64, max|w| ∈ [½, 1),
    oriented rows ≥ columns (contiguous); None for the zero (or empty) matrix."""
    import numpy as np

    if matrix.ndim != 2:
        raise ValueError(f"expected a matrix, got shape {tuple(matrix.shape)}")
    w = upcast(matrix, np.float64)
    check_finite_array(w)
    if w.size == 0:
        return None
    peak = float(np.abs(w).max())
    if peak == 0.0:
        return None
    exponent = math.frexp(peak)[1]
    first = -exponent // 2
    w *= 2.0**first  # upcast gave a fresh array: scaled in place
    w *= 2.0 ** (-exponent - first)
    if w.shape[0] < w.shape[1]:
        w = w.T
    return np.ascontiguousarray(w), exponent


def _frobenius_sq_upper(w: np.ndarray) -> float:
    import numpy as np

    return float(np.linalg.norm(w)) ** 2 / (1.0 - gamma(w.size + 3)) * SLACK


def _ldexp_down(value: float, exponent: int) -> float:
    result = math.ldexp(value, exponent)
    return _down(result) if 0.0 < result < 2.0**-1022 else result


def certified_ratio_array(w: np.ndarray, x: np.ndarray) -> float:
    """:func:`sncli.numerics.bounds.certified_ratio` (real): a proven lower bound on
    ‖Wx‖/‖x‖ from float64 products."""
    import numpy as np

    m, n = w.shape
    norm_z = float(np.linalg.norm(w @ x))
    norm_x = float(np.linalg.norm(x))
    if norm_x == 0.0 or not math.isfinite(norm_z):
        return 0.0
    norm_x_up = norm_x * (1.0 + gamma(n + 2)) * SLACK
    error = gamma(n) * math.sqrt(_frobenius_sq_upper(w)) * norm_x_up
    numerator = norm_z * (1.0 - gamma(m + 2)) - error
    if numerator <= 0.0:
        return 0.0
    return _down(numerator / norm_x_up / SLACK)


def _lanczos_scaled(w: np.ndarray, iterations: int, seed: int, tol: float) -> tuple[float, int]:
    """:func:`sncli.numerics.bounds._lanczos_scaled` on a real scaled, oriented matrix, from
    torch's start vector (:func:`sncli.arrays.torch_randn`): (certified lower bound, steps)."""
    import numpy as np

    from sncli.arrays import torch_randn

    m, n = w.shape
    steps = max(1, min(iterations, n))
    start = torch_randn(seed, (n,))
    right = np.zeros((steps + 1, n))
    left = np.zeros((steps, m))
    alphas: list[float] = []
    betas: list[float] = []
    right[0] = start / np.linalg.norm(start)
    previous = 0.0
    for j in range(steps):
        u = w @ right[j]
        if j > 0:
            u = u - betas[-1] * left[j - 1]
        for _ in range(2):
            u = u - left[:j].T @ (left[:j] @ u)
        alpha = float(np.linalg.norm(u))
        if alpha <= 1e-14 * max(alphas + betas, default=alpha):
            break
        left[j] = u / alpha
        alphas.append(alpha)
        v = w.T @ left[j] - alpha * right[j]
        for _ in range(2):
            v = v - right[: j + 1].T @ (right[: j + 1] @ v)
        beta = float(np.linalg.norm(v))
        if beta <= 1e-14 * max(alphas):
            break
        betas.append(beta)
        right[j + 1] = v / beta
        if j % 4 == 3:
            value = bidiagonal_sigma(alphas, betas)
            if value - previous <= tol * value:
                break
            previous = value
    if not alphas:
        return 0.0, 0
    _, _, vh = np.linalg.svd(bidiagonal(alphas, betas))
    y = vh[0]
    x = right[: y.shape[0]].T @ y
    return certified_ratio_array(w, x), len(alphas)


def _relative_margin(
    gram: np.ndarray, exponent: int, inner: int, fro: float, sigma: float
) -> float:
    """:meth:`sncli.numerics.bounds.ScaledGram.relative_margin` (real)."""
    import numpy as np

    n = gram.shape[0]
    mu = math.ldexp(sigma, -exponent) ** 2
    if mu <= 0.0:
        return math.inf
    trace = float(np.clip(mu - gram.diagonal(), 0, None).sum())
    g_chol = gamma(n + 1)
    return (gamma(inner) * fro + g_chol / (1.0 - g_chol) * trace) / mu


def gram_iteration_upper_bound_array(matrix: np.ndarray, iterations: int) -> float:
    """:func:`sncli.numerics.bounds.gram_iteration_upper_bound` (real, NumPy): a proven upper
    bound on σ_max by Gram iteration, with the same rounding margin."""
    import numpy as np

    prepared = _prepare(matrix)
    if prepared is None:
        return 0.0
    w, exponent = prepared
    m, n = w.shape
    kappa = (1.0 - UNIT_ROUNDOFF * math.sqrt(n)) ** 2
    if iterations > 0:
        kappa *= 1.0 - n * gamma(m)
    logs: list[float] = []
    g = w
    for _ in range(iterations):
        f = float(np.linalg.norm(g))
        logs.append(math.log(f))
        g = g / f
        g = g.T @ g
    logs.append(math.log(float(np.linalg.norm(g))))
    weights = [2.0**-j for j in range(iterations)] + [2.0**-iterations]
    terms = [wt * lg for wt, lg in zip(weights, logs, strict=True)]
    log_value = math.fsum(terms)
    log_error = (2 * UNIT_ROUNDOFF + gamma(len(terms))) * sum(abs(t) for t in terms) * SLACK
    value = math.exp(log_value + log_error) / (kappa * (1.0 - gamma(g.size + 3))) * SLACK
    return math.nextafter(math.ldexp(value, exponent), math.inf)


def sigma_interval_array(
    matrix: np.ndarray,
    *,
    seed: int,
    iterations: int,
    tol: float,
    deltas: Sequence[float],
    fallback_iterations: int,
) -> SigmaInterval:
    """:func:`sncli.numerics.bounds.sigma_interval` for a real NumPy matrix (no torch; called
    through it, with its constants): the same steps (Lanczos from torch's start vector floored
    by the largest column norm, then the Cholesky certificate over the same δ ladder, Gram
    iteration as the fallback), so the same interval to float64 rounding."""
    import numpy as np

    prepared = _prepare(matrix)
    if prepared is None:
        return SigmaInterval(0.0, 0.0, "zero matrix", "zero matrix")
    w, exponent = prepared
    lanczos, steps = _lanczos_scaled(w, iterations, seed, tol)
    column = np.zeros(w.shape[1])
    column[int(np.argmax(np.linalg.norm(w, axis=0)))] = 1.0
    col = certified_ratio_array(w, column)
    lower_scaled = max(lanczos, col)
    lower = _ldexp_down(lower_scaled, exponent)
    lower_method = f"lanczos ({steps} steps)" if lanczos >= col else "largest column norm"
    gram, inner, fro = w.T @ w, w.shape[0], _frobenius_sq_upper(w)
    floor = _relative_margin(gram, exponent, inner, fro, lower)
    for delta in deltas:
        if 2.0 * delta <= floor and delta != deltas[-1]:
            continue
        bound = lower * (1.0 + delta)
        if not math.isfinite(bound) or bound <= 0.0:
            continue
        scaled = math.ldexp(bound, -exponent)
        if certify_gram(gram, _down(scaled * scaled), inner, fro):
            return SigmaInterval(lower, bound, lower_method, f"cholesky certificate (δ={delta:g})")
    upper = gram_iteration_upper_bound_array(matrix, fallback_iterations)
    method = f"gram iteration ({fallback_iterations} steps)"
    return SigmaInterval(lower, max(upper, lower), lower_method, method)
