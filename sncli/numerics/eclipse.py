"""ECLipsE-Fast: a closed-form Lipschitz bound for a chain of linear layers, proven in float64.

The network is f(x) = W_l φ(W_{l−1} ⋯ φ(W_1 x)) (biases do not change the constant), every
activation φ slope-restricted to [α, β] elementwise, αβ ≥ 0 (ReLU and tanh: [0, 1]). ECLipsE-Fast
(Xu & Sivaranjani, NeurIPS 2024, "ECLipsE: Efficient Compositional Lipschitz Constant
Estimation for Deep Neural Networks", and the authors' ``eclipse-nn`` code) picks the LipSDP
multipliers layer by layer in closed form, with m = (α + β)/2:

    X₀ = I;  for i < l:  M_i = W_i X_{i−1}⁻¹ W_iᵀ,  λ_i = 1/(2m²λ_max(M_i)),
                         X_i = λ_i I − λ_i²m²M_i;
    L̂ = √λ_max(W_lᵀ W_l X_{l−1}⁻¹).

The αβ·W_iᵀΛ_iW_i term of LipSDP is left out, as the authors' code does; it is positive
semidefinite when αβ ≥ 0, so leaving it out only loosens the bound. For [0, 1], L̂ ≤ ∏σ(W_i).

**Why L̂ bounds Lip(f), and what is proven here.** For any λ_i > 0 and symmetric Y_i with
Y₀ = I, if every block matrix

    B_i = [[Y_{i−1}, mλ_i W_iᵀ], [mλ_i W_i, λ_i I − Y_i]] ⪰ 0   (i < l),  and  c·Y_{l−1} ⪰ W_lᵀW_l,

then ‖f(x) − f(y)‖ ≤ √c·‖x − y‖: the slope condition gives, per neuron,
λ(Δw − αΔv)(βΔv − Δw) ≥ 0; adding these to ‖Δx‖² and completing the square layer by layer with
the B_i leaves Δw_{l−1}ᵀY_{l−1}Δw_{l−1} − ‖Δy‖²/c ≥ 0. ECLipsE-Fast's X_i is the Y_i that makes
the Schur complement of B_i zero. Here the λ_i and X_i are computed in float64, each Y_i is X_i
shifted down by τλ_i·I (τ = 1e-10, more if needed), and the *conditions* are verified with a
rounding allowance: each B_i and c·Y_{l−1} − W_lᵀW_l is shown positive definite by a float64
Cholesky factorization of the matrix shifted by its rounding error bound (Higham, *Accuracy and
Stability*, Thm 10.3, as :mod:`.bounds` does; the entries' own rounding is added to the shift).
The result is a proof for the float64 value of the weights, a few 1e-10 above the closed form.

The conditions are homogeneous: scaling W_i by c_i > 0, or m, scales the bound by
|m|^{l−1}∏c_i exactly (Y_i and λ_i scale by 1/∏_{j≤i}(m c_j)²), so the certificate is computed
for 2^{−e_i}·W_i with max|entry| in [½, 1) and m = 1, and scaled back with upward rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sncli.errors import NumericalError
from sncli.numerics.floating import UNIT_ROUNDOFF, gamma

if TYPE_CHECKING:
    import numpy as np

_U = UNIT_ROUNDOFF
_TINY = 2.0**-1074
_SLACK = 1.0 + 64 * UNIT_ROUNDOFF
#: Relative downward shifts τ of each X_i (Y_i = X_i − τλ_i I), and relative margins η on the
#: final λ_max (c = ĉ(1 + η)), tried in turn: multiples of the smallest a Cholesky certificate
#: of size n can prove, about n·γ_{n+1} (:func:`_ladder`).
LADDER = (16.0, 1e3, 1e5, 1e7, 1e9)


@dataclass(frozen=True)
class EclipseBound:
    """A certified upper bound on the Lipschitz constant of the chain, and how it was found."""

    #: Proven: ‖f(x) − f(y)‖ ≤ bound·‖x − y‖ for every x, y.
    bound: float
    #: ECLipsE-Fast's closed form in float64 (not proven; ``bound`` is a little above it).
    estimate: float
    #: "eclipse-fast", "single layer σ", "zero layer", "constant activation" or
    #: "product of σ" (the fallback when a certificate fails).
    method: str


def _up(value: float) -> float:
    return math.nextafter(value, math.inf)


def _mul_up(a: float, b: float) -> float:
    """An upper bound on a·b for a, b ≥ 0 (fl(a·b) is within half an ulp)."""
    return _up(a * b)


def _validate(
    weights: Sequence[np.ndarray], alpha: float, beta: float
) -> tuple[list[np.ndarray], float]:
    import numpy as np

    if not (math.isfinite(alpha) and math.isfinite(beta)) or alpha > beta or alpha * beta < 0:
        raise ValueError(
            f"activations must be slope-restricted to [alpha, beta] with alpha ≤ beta and "
            f"alpha·beta ≥ 0, finite; got [{alpha}, {beta}]"
        )
    if len(weights) == 0:
        raise ValueError("no weight matrices")
    mats = []
    for i, w in enumerate(weights):
        a = np.asarray(w)
        if a.ndim != 2:
            raise ValueError(f"weight {i} is not a matrix (shape {a.shape})")
        if not np.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"weight {i} has dtype {a.dtype}, not real")
        a = a.astype(np.float64)  # exact for float16/32/64 and small integers
        if not np.isfinite(a).all():
            raise NumericalError(f"weight {i} has non-finite values")
        if i and a.shape[1] != mats[-1].shape[0]:
            raise ValueError(
                f"weight {i} (shape {a.shape}) cannot follow weight {i - 1} "
                f"(shape {mats[-1].shape}): its input width differs"
            )
        mats.append(a)
    return mats, (alpha + beta) / 2.0


def _frobenius_up(a: np.ndarray) -> float:
    """An upper bound on ‖A‖_F (a float64 reduction has relative error ≤ γ_{N+1})."""
    import numpy as np

    return float(np.linalg.norm(a)) * (1.0 + gamma(a.size + 2)) * _SLACK


def _certified_positive_definite(a: np.ndarray, radius: float) -> bool:
    """True only if every symmetric matrix within ‖·‖₂ ≤ ``radius`` of the symmetric float64
    matrix ``a`` is positive definite.

    A Cholesky factorization of fl(A − cI) that runs to completion has R̂ᵀR̂ = Ã + ΔA with
    ‖ΔA‖₂ ≤ γ_{n+1}‖R̂‖_F² ≤ γ_{n+1}tr(Ã)/(1 − γ_{n+1}) (Higham Thm 10.3; Demmel 1989), so
    λ_min(A) ≥ c − that − the diagonal subtraction's rounding (≤ u·max a_jj) − an underflow
    term (Rump, BIT 46, 2006); c is chosen to exceed all of it plus ``radius``.
    """
    import numpy as np
    import scipy.linalg

    n = a.shape[0]
    diag = np.diagonal(a).copy()
    if not (diag > 0).all():
        return False
    g = gamma(n + 1)
    trace_up = float(diag.sum()) * (1.0 + gamma(n + 1)) * _SLACK
    shift = (
        radius
        + g / (1.0 - g) * trace_up
        + 2.01 * _U * float(diag.max())
        + (n * n + 8 * (n + 1)) * _TINY
    ) / (1.0 - 2.01 * _U)
    shift *= _SLACK
    b = a.copy()
    b[np.diag_indices(n)] = diag - shift
    if not (np.diagonal(b) > 0).all():
        return False
    try:
        scipy.linalg.cholesky(b, lower=True, overwrite_a=True, check_finite=False)
    except np.linalg.LinAlgError:
        return False
    return True


def _top_eigenvalue(sym: np.ndarray) -> float:
    """λ_max of a symmetric matrix (float64 LAPACK; an estimate, the proof is elsewhere)."""
    import numpy as np
    import scipy.linalg

    n = sym.shape[0]
    try:  # the top eigenvalue only (dsyevr); it can fail on clustered spectra (Q·c)
        top = scipy.linalg.eigh(
            sym, eigvals_only=True, subset_by_index=[n - 1, n - 1], check_finite=False
        )
        return float(top[0])
    except np.linalg.LinAlgError:
        return float(np.linalg.eigvalsh(sym)[-1])


def _whitened(y_factor: np.ndarray | None, w: np.ndarray) -> np.ndarray:
    """G with GᵀG ≈ W Y⁻¹ Wᵀ for Y = LLᵀ (float64; an estimate only)."""
    import scipy.linalg

    if y_factor is None:
        return w.T
    return scipy.linalg.solve_triangular(y_factor, w.T, lower=True, check_finite=False)


def _ladder(n: int) -> list[float]:
    """Relative shifts to try for a certificate of size n: from 16·n·γ_{n+1} (what the Cholesky
    rounding allowance needs, about n²u) up, never below 1e-12 nor above 0.1."""
    base = n * gamma(n + 1)
    return [min(0.1, max(1e-12, step * base)) for step in LADDER]


def _first_certified(w: np.ndarray, gram: np.ndarray, lam: float, y_next: np.ndarray) -> bool:
    """B₁ ⪰ 0 with Y₀ = I, by its Schur complement λI − Y₁ − λ²WWᵀ ≻ 0 (an exact equivalence),
    proven; ``gram`` = fl(WWᵀ)."""
    import numpy as np

    n = y_next.shape[0]
    low = -y_next
    low[np.diag_indices(n)] = lam - np.diagonal(y_next)  # |error| ≤ u|·| per diagonal entry
    lam2 = lam * lam  # |error| ≤ u·λ²
    scaled = lam2 * gram  # |error| ≤ u|λ²G| per entry
    s = low - scaled  # |error| ≤ u|s|/(1 − u) per entry
    frob = _frobenius_up(w)
    radius = (
        lam2 * (gamma(w.shape[1]) + 2.01 * _U) * frob * frob
        + _U * (_frobenius_up(low) + _frobenius_up(scaled) + _frobenius_up(s))
    ) * (1.0 + 4 * _U) + 4 * s.size * _TINY
    return _certified_positive_definite(s, radius * _SLACK)


def _pow2_exponent(value: float) -> int:
    """e with 2^(−2e)·value in [¼, 4): the scale of a block in the B_i test."""
    return math.frexp(value)[1] // 2


def _block_certified(
    y_prev: np.ndarray, scale_prev: float, w: np.ndarray, lam: float, y_next: np.ndarray
) -> bool:
    """B = [[Y_prev, λWᵀ], [λW, λI − Y_next]] ≻ 0, proven (after an exact power-of-two
    congruence diag(2^−a I, 2^−b I) that brings both diagonal blocks near 1)."""
    import numpy as np

    n0, n1 = y_prev.shape[0], y_next.shape[0]
    a, b = _pow2_exponent(scale_prev), _pow2_exponent(lam)
    off = lam * w  # one rounding per entry: |error| ≤ u|λw|
    low = -y_next
    low_diag = lam - np.diagonal(y_next)  # one rounding per entry
    low[np.diag_indices(n1)] = low_diag
    block = np.empty((n0 + n1, n0 + n1))
    block[:n0, :n0] = np.ldexp(y_prev, -2 * a)
    block[n0:, :n0] = np.ldexp(off, -a - b)
    block[:n0, n0:] = block[n0:, :n0].T
    block[n0:, n0:] = np.ldexp(low, -2 * b)
    radius = (
        math.ldexp(_U * lam * _frobenius_up(w), -a - b)
        + math.ldexp(_U * float(np.abs(low_diag).max()), -2 * b)
    ) * (1.0 + 4 * _U) + (n0 + n1) ** 2 * _TINY
    return _certified_positive_definite(block, radius * _SLACK)


def _final_certified(y: np.ndarray, gram: np.ndarray, gram_error: float, c: float) -> bool:
    """c·Y − WᵀW ≻ 0, proven; ``gram`` = fl(WᵀW) with ‖fl(WᵀW) − WᵀW‖₂ ≤ ``gram_error``."""
    cy = c * y  # |error| ≤ u|cY| per entry
    s = cy - gram  # |error| ≤ u|fl(cy − gram)|/(1 − u) per entry
    radius = _U * (_frobenius_up(cy) + _frobenius_up(s)) * (1.0 + 4 * _U) + gram_error
    return _certified_positive_definite(s, radius * _SLACK)


def _product_bound(mats: list[np.ndarray], slope: float) -> float:
    """max(|α|, |β|)^(l−1)·∏σ(W_i) with certified σ upper bounds (always valid; on NumPy,
    no torch: the same interval as on torch)."""
    from sncli.numerics.bounds import sigma_interval

    bound = 1.0
    for i, w in enumerate(mats):
        bound = _mul_up(bound, sigma_interval(w).upper)
        if i:
            bound = _mul_up(bound, slope)
    return bound


def _chain_scaled(mats: list[np.ndarray]) -> tuple[float, float] | None:
    """(certified √c, float64 estimate) for the scaled chain with m = 1; None if a certificate
    failed at every shift."""
    import numpy as np
    import scipy.linalg

    y = np.eye(mats[0].shape[1])
    factor = None  # Cholesky factor of y (None: the identity)
    scale = 1.0  # λ of the previous layer (1 for Y₀ = I): the size of y's eigenvalues
    for i, w in enumerate(mats[:-1]):
        g = _whitened(factor, w)
        m_hat = g.T @ g  # for i = 0 this is fl(WWᵀ), used by the proof too
        lam = 1.0 / (2.0 * _top_eigenvalue(m_hat))
        x = lam * np.eye(w.shape[0]) - (lam * lam) * m_hat
        x = (x + x.T) / 2.0
        size = w.shape[0] if i == 0 else w.shape[0] + w.shape[1]
        for tau in _ladder(size):
            y_next = x.copy()
            y_next[np.diag_indices(w.shape[0])] -= tau * lam
            if i == 0 and _first_certified(w, m_hat, lam, y_next):
                break
            if i > 0 and _block_certified(y, scale, w, lam, y_next):
                break
        else:
            return None
        y, scale = y_next, lam
        try:
            factor = scipy.linalg.cholesky(y, lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            return None
    return final_bound(y, factor, mats[-1])


def final_bound(y: np.ndarray, factor: np.ndarray, w: np.ndarray) -> tuple[float, float] | None:
    """(certified bound, estimate) of the chain's last step: the smallest c on the ladder above
    λ_max of the whitened last weight for which c·Y − WᵀW is proven positive definite
    (float64 Cholesky with the Gram's rounding allowance); None when no rung certifies."""
    g = _whitened(factor, w)
    c_hat = _top_eigenvalue(g.T @ g)
    gram = w.T @ w
    frob = _frobenius_up(w)
    gram_error = gamma(w.shape[0]) * frob * frob * (1.0 + 4 * _U) + y.size * _TINY
    for eta in _ladder(y.shape[0]):
        c = c_hat * (1.0 + eta)
        if _final_certified(y, gram, gram_error, c):
            return _up(math.sqrt(c)), math.sqrt(c_hat)
    return None


def eclipse_fast_certificate(
    weights: Sequence[np.ndarray], alpha: float = 0.0, beta: float = 1.0
) -> EclipseBound:
    """ECLipsE-Fast's bound on the chain W_1, φ, W_2, …, φ, W_l, proven in float64 (see the
    module docstring). ``weights[i]`` has shape (out, in); activations are slope-restricted to
    [alpha, beta], alpha·beta ≥ 0. Raises ``ValueError`` on bad shapes or slopes and
    ``NumericalError`` on NaN/Inf weights."""
    import numpy as np

    mats, m = _validate(weights, alpha, beta)
    if any(not w.any() for w in mats):
        return EclipseBound(0.0, 0.0, "zero layer")
    if len(mats) == 1:
        upper = _product_bound(mats, 1.0)
        return EclipseBound(upper, upper, "single layer σ")
    if m == 0.0:  # slopes in [0, 0]: every activation is constant
        return EclipseBound(0.0, 0.0, "constant activation")
    exponents = [math.frexp(float(np.abs(w).max()))[1] for w in mats]
    scaled = [np.ldexp(w, -e) for w, e in zip(mats, exponents, strict=True)]
    exact = all(
        np.array_equal(np.ldexp(s, e), w) for s, w, e in zip(scaled, mats, exponents, strict=True)
    )
    result = _chain_scaled(scaled) if exact else None
    if result is None:
        product = _product_bound(mats, max(abs(alpha), abs(beta)))
        return EclipseBound(product, product, "product of σ")
    root, estimate = result
    m_abs = _up(abs(alpha + beta) / 2.0)  # ≥ |α + β|/2 although α + β was rounded
    bound, plain = root, estimate
    for _ in range(len(mats) - 1):
        bound = _mul_up(bound, m_abs)
        plain *= abs(m)
    total = sum(exponents)
    return EclipseBound(_ldexp_up(bound, total), _ldexp_up(plain, total), "eclipse-fast")


def _ldexp_up(value: float, exponent: int) -> float:
    """An upper bound on value·2^exponent (value > 0): inf on overflow, rounded up when the
    result is subnormal, the smallest subnormal when it underflows."""
    try:
        result = math.ldexp(value, exponent)
    except OverflowError:
        return math.inf
    return _up(result) if result < 2.0**-1022 else result


def eclipse_fast_bound(
    weights: Sequence[np.ndarray], alpha: float = 0.0, beta: float = 1.0
) -> float:
    """A certified upper bound ≥ ECLipsE-Fast's closed form on the Lipschitz constant (ℓ2) of
    x ↦ W_l φ(W_{l−1} ⋯ φ(W_1 x)), φ slope-restricted to [alpha, beta], alpha·beta ≥ 0.
    One layer: its certified σ. A zero matrix or constant activations: 0."""
    return eclipse_fast_certificate(weights, alpha, beta).bound
