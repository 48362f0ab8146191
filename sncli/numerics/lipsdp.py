"""LipSDP-Neuron on a chain of dense layers without an SDP solver, proven in float64.

The chain is f(x) = W_l φ(W_{l−1} ⋯ φ(W_1 x)), every φ slope-restricted to [α, β] with αβ ≥ 0,
m = (α + β)/2, as in :mod:`.eclipse`. LipSDP-Neuron (Fazlyab et al., NeurIPS 2019) gives every
hidden neuron its own multiplier: with T_i = diag(t_i), t_i > 0, Y₀ = I and symmetric Y_i, if

    B_i = [[Y_{i−1}, m W_iᵀT_i], [m T_iW_i, T_i − Y_i]] ⪰ 0   (i < l),  and  c·Y_{l−1} ⪰ W_lᵀW_l,

then Lip(f) ≤ √c (per neuron t·(Δw − αΔv)(βΔv − Δw) ≥ 0; summing and completing the square
layer by layer, exactly as the proof in :mod:`.eclipse`, which is the case T_i = λ_iI). For
fixed T the best Y_i make every Schur complement zero,

    Y_i = T_i − m²T_iW_iY_{i−1}⁻¹W_iᵀT_i   (needs Y_i ≻ 0),   c(T) = λ_max(W_lY_{l−1}⁻¹W_lᵀ),

the block elimination of LipSDP-Neuron's tridiagonal LMI, so min_T c(T) is LipSDP-Neuron's value
on the chain. Here c is minimized by Adam on log t (NumPy, float64, exact Cholesky at every
iterate, so every iterate is a valid LipSDP point; the gradient analytic, :func:`_gradient`),
starting from ECLipsE-Fast's multipliers (t_i = λ_i·1, where c(T) is ECLipsE-Fast's closed
form), for a bounded time. The best T found
is then *proven* as :mod:`.eclipse` proves its own: Y_i shifted down by τT_i, every B_i and
c·Y_{l−1} − W_lᵀW_l shown positive definite by a float64 Cholesky factorization with a rounding
allowance (Higham Thm 10.3), c rounded up. The result is never looser than ECLipsE-Fast: when
the descent does not improve on it or a certificate fails, ECLipsE-Fast's certificate is returned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sncli.numerics.eclipse import (
    _SLACK,
    _TINY,
    EclipseBound,
    _certified_positive_definite,
    _frobenius_up,
    _ladder,
    _ldexp_up,
    _mul_up,
    _pow2_exponent,
    _top_eigenvalue,
    _up,
    _validate,
    _whitened,
    eclipse_fast_certificate,
    final_bound,
)
from sncli.numerics.floating import UNIT_ROUNDOFF

if TYPE_CHECKING:
    import numpy as np

_U = UNIT_ROUNDOFF
#: The descent's default wall-clock budget per chain (seconds), and its most steps.
LIPSDP_SECONDS = 2.0
LIPSDP_STEPS = 2000
#: The descent stops when c(T) fell by less than 1e-5 (relative) over this many steps.
CONVERGED_STEPS = 50
#: Chains whose widest layer exceeds this are left to ECLipsE-Fast (a step costs O(n³)).
LIPSDP_MAX_WIDTH = 2048


def lipsdp_neuron_certificate(
    weights: Sequence[np.ndarray],
    alpha: float = 0.0,
    beta: float = 1.0,
    *,
    seconds: float = LIPSDP_SECONDS,
    steps: int = LIPSDP_STEPS,
) -> EclipseBound:
    """A certified bound on the chain's Lipschitz constant from LipSDP-Neuron multipliers found
    by first-order descent within ``seconds`` (module docstring); never above
    :func:`eclipse_fast_certificate`'s, which is returned when the descent does not beat it.
    ``method`` is "lipsdp-neuron" when the descent's bound is the one returned."""
    import numpy as np

    mats, m = _validate(weights, alpha, beta)
    if (
        seconds <= 0
        or steps <= 0
        or len(mats) == 1
        or m == 0.0
        or any(not w.any() for w in mats)
        or max(max(w.shape) for w in mats) > LIPSDP_MAX_WIDTH
    ):
        return eclipse_fast_certificate(weights, alpha, beta)
    exponents = [math.frexp(float(np.abs(w).max()))[1] for w in mats]
    scaled = [np.ldexp(w, -e) for w, e in zip(mats, exponents, strict=True)]
    try:  # the caller sets BLAS threads (sncli.lipschitz.ops.chain_bound: one)
        multipliers, estimate, closed_form = _descend(scaled, seconds, steps)
        root = _certify(scaled, multipliers) if estimate < closed_form else None
    except (ArithmeticError, np.linalg.LinAlgError):
        root = None
    if root is None:
        return eclipse_fast_certificate(weights, alpha, beta)
    m_abs = _up(abs(alpha + beta) / 2.0)
    bound, plain, fast_plain = root, estimate, closed_form
    for _ in range(len(mats) - 1):
        bound = _mul_up(bound, m_abs)
        plain *= abs(m)
        fast_plain *= abs(m)
    total = sum(exponents)
    bound = _ldexp_up(bound, total)
    # ECLipsE-Fast's certified bound is above its closed form: below that, no need to prove it
    if not bound < math.ldexp(fast_plain, total) * (1 - 1e-9):
        fast = eclipse_fast_certificate(weights, alpha, beta)
        if not bound < fast.bound:
            return fast
    return EclipseBound(bound, _ldexp_up(plain, total), "lipsdp-neuron")


def lipsdp_neuron_bound(
    weights: Sequence[np.ndarray],
    alpha: float = 0.0,
    beta: float = 1.0,
    *,
    seconds: float = LIPSDP_SECONDS,
) -> float:
    """:func:`lipsdp_neuron_certificate`'s bound (certified; ≤ ECLipsE-Fast's)."""
    return lipsdp_neuron_certificate(weights, alpha, beta, seconds=seconds).bound


@dataclass(frozen=True)
class _Forward:
    """c(T) and what its gradient needs: the whitened G_i = L_{i−1}⁻¹W_iᵀ (G_1 = W_1ᵀ), the
    Cholesky factors L_i of Y_i, M_i = G_iᵀG_i, and the top eigenvector u of G_lᵀG_l."""

    value: float
    whitened: list[np.ndarray]
    factors: list[np.ndarray]
    grams: list[np.ndarray]
    top: np.ndarray


def _objective(mats: list[np.ndarray], logs: list[np.ndarray]) -> _Forward | None:
    """c(T) for the scaled chain with m = 1 (float64); None when some Y_i ⊁ 0 (the Cholesky
    factorization fails)."""
    import numpy as np
    import scipy.linalg

    whitened, factors, grams = [], [], []
    factor = None
    for w, log_t in zip(mats[:-1], logs, strict=False):
        t = np.exp(log_t)
        g = _whitened(factor, w)
        m_hat = g.T @ g
        y = np.diag(t) - t[:, None] * m_hat * t[None, :]
        try:
            factor = scipy.linalg.cholesky((y + y.T) / 2, lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            return None
        whitened.append(g)
        grams.append(m_hat)
        factors.append(factor)
    g = _whitened(factor, mats[-1])
    whitened.append(g)
    values, vectors = np.linalg.eigh(g.T @ g)
    return _Forward(float(values[-1]), whitened, factors, grams, vectors[:, -1])


def _gradient(forward: _Forward, logs: list[np.ndarray]) -> list[np.ndarray]:
    """∂ log c / ∂ log t_i, analytically (reverse mode through the chain).

    With Y_{i−1} = L_{i−1}L_{i−1}ᵀ and P_i = Y_{i−1}⁻¹W_iᵀ = L_{i−1}⁻ᵀG_i: c = λ_max(W_lY_{l−1}⁻¹
    W_lᵀ) has ∂c = uᵀ∂(W_lY⁻¹W_lᵀ)u = −zᵀ∂Y_{l−1}z, z = P_lu, so Ȳ_{l−1} = −zzᵀ (u the top
    eigenvector; the derivative of a simple eigenvalue). Through Y_i = diag(t_i) −
    (t_it_iᵀ)∘M_i, M_i = W_iY_{i−1}⁻¹W_iᵀ, for a symmetric Ȳ_i: t̄_i = diag(Ȳ_i) −
    2(Ȳ_i∘M_i)t_i, M̄_i = −(t_it_iᵀ)∘Ȳ_i and Ȳ_{i−1} = −P_iM̄_iP_iᵀ (∂Y⁻¹ = −Y⁻¹∂YY⁻¹). The
    same derivative as autograd through the Cholesky factors, triangular solves and eigvalsh
    (tests/numerics/test_lipsdp.py checks it against torch to 1e-8 and finite differences).
    """
    import numpy as np
    import scipy.linalg

    def back(index: int, g: np.ndarray) -> np.ndarray:  # P = L_{index}⁻ᵀ G
        return scipy.linalg.solve_triangular(
            forward.factors[index], g, lower=True, trans="T", check_finite=False
        )

    z = back(-1, forward.whitened[-1] @ forward.top)
    y_bar = -np.outer(z, z)
    grads: list[np.ndarray] = [np.empty(0)] * len(logs)
    for i in range(len(logs) - 1, -1, -1):
        t = np.exp(logs[i])
        t_bar = np.diagonal(y_bar) - 2.0 * ((y_bar * forward.grams[i]) @ t)
        grads[i] = t * t_bar / forward.value
        if i:
            p = back(i - 1, forward.whitened[i])
            y_bar = p @ ((t[:, None] * y_bar * t[None, :]) @ p.T)
    return grads


def _descend(
    mats: list[np.ndarray], seconds: float, steps: int
) -> tuple[list[np.ndarray], float, float]:
    """(multipliers t_i, √c at them, √c at the start: ECLipsE-Fast's closed form) after Adam on
    log t from ECLipsE-Fast's multipliers (the best iterate)."""
    import time

    import numpy as np

    logs = []
    factor = None
    for w in mats[:-1]:  # ECLipsE-Fast's λ_i (m = 1): t_i = λ_i·1 gives its closed form
        g = _whitened(factor, w)
        m_hat = g.T @ g
        lam = 1.0 / (2.0 * _top_eigenvalue(m_hat))
        logs.append(np.full(w.shape[0], math.log(lam)))
        y = lam * np.eye(w.shape[0]) - (lam * lam) * m_hat
        factor = np.linalg.cholesky((y + y.T) / 2.0)
    params = [p.copy() for p in logs]
    first = _objective(mats, params)
    if first is None:
        raise ArithmeticError("ECLipsE-Fast's multipliers are not feasible in float64")
    best_value, best = first.value, [p.copy() for p in params]
    deadline = time.monotonic() + seconds
    rate = 0.05
    adam = _Adam(params)
    checkpoint = best_value
    for step in range(steps):
        if time.monotonic() > deadline:
            break
        if step and step % CONVERGED_STEPS == 0:  # converged: c fell < 1e-5 in that many steps
            if best_value > checkpoint * (1 - 1e-5):
                break
            checkpoint = best_value
        forward = _objective(mats, params)
        if forward is None or not math.isfinite(forward.value):
            for p, b in zip(params, best, strict=True):  # infeasible: back to the best point
                p[...] = b
            rate /= 2  # and smaller steps
            if rate < 1e-5:
                break
            adam = _Adam(params)
            continue
        if forward.value < best_value:
            best_value, best = forward.value, [p.copy() for p in params]
        adam.step(_gradient(forward, params), rate)
    return [np.exp(b) for b in best], math.sqrt(best_value), math.sqrt(first.value)


class _Adam:
    """Adam (Kingma & Ba 2015) on a list of float64 arrays, in place: torch.optim.Adam's
    update, operation for operation."""

    def __init__(self, params: list[np.ndarray]) -> None:
        import numpy as np

        self.params = params
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def step(
        self, grads: list[np.ndarray], rate: float, b1: float = 0.9, b2: float = 0.999
    ) -> None:
        import numpy as np

        self.t += 1
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * (g * g)
            m_hat = m / (1 - b1**self.t)
            v_hat = v / (1 - b2**self.t)
            p -= rate * m_hat / (np.sqrt(v_hat) + 1e-8)


def _block_certified(
    y_prev: np.ndarray | None, w: np.ndarray, t: np.ndarray, y_next: np.ndarray
) -> bool:
    """B = [[Y_prev, WᵀT], [TW, T − Y_next]] ≻ 0, proven (Y_prev None: the identity), after an
    exact power-of-two congruence D·B·D that brings every diagonal entry near 1."""
    import numpy as np

    n1, n0 = w.shape
    top = np.eye(n0) if y_prev is None else y_prev
    a = np.array([_pow2_exponent(float(v)) for v in np.diagonal(top)])
    b = np.array([_pow2_exponent(float(v)) for v in t])
    off = t[:, None] * w  # one rounding per entry: |error| ≤ u|tw|
    low = -y_next
    low_diag = t - np.diagonal(y_next)  # one rounding per entry
    low[np.diag_indices(n1)] = low_diag
    block = np.empty((n0 + n1, n0 + n1))
    block[:n0, :n0] = np.ldexp(top, -(a[:, None] + a[None, :]))
    block[n0:, :n0] = np.ldexp(off, -(b[:, None] + a[None, :]))
    block[:n0, n0:] = block[n0:, :n0].T
    block[n0:, n0:] = np.ldexp(low, -(b[:, None] + b[None, :]))
    scaled_diag = np.ldexp(low_diag, -2 * b)
    radius = (
        _U * (2.0 * _frobenius_up(block[n0:, :n0]) + _frobenius_up(scaled_diag)) * (1.0 + 4 * _U)
        + (n0 + n1) ** 2 * _TINY
    )
    return _certified_positive_definite(block, radius * _SLACK)


def _certify(mats: list[np.ndarray], multipliers: list[np.ndarray]) -> float | None:
    """Certified √c for the scaled chain (m = 1) at multipliers t_i; None if a check failed."""
    import numpy as np
    import scipy.linalg

    y: np.ndarray | None = None
    factor = None
    for w, t in zip(mats[:-1], multipliers, strict=False):
        g = _whitened(factor, w)
        x = np.diag(t) - t[:, None] * (g.T @ g) * t[None, :]
        x = (x + x.T) / 2.0
        size = w.shape[0] + w.shape[1]
        for tau in _ladder(size):
            y_next = x.copy()
            y_next[np.diag_indices(w.shape[0])] -= tau * t
            if _block_certified(y, w, t, y_next):
                break
        else:
            return None
        y = y_next
        try:
            factor = scipy.linalg.cholesky(y, lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            return None
    assert y is not None
    found = final_bound(y, factor, mats[-1])
    return None if found is None else found[0]
