"""Certified bounds on σ_max of a dense matrix, rounding errors included.

Every number returned here is a proof, not an estimate: an *upper* bound is never below the true
largest singular value of the float64 value of the input, a *lower* bound never above it. The
float64 arithmetic is accounted for with the standard model fl(a∘b) = (a∘b)(1+ε), |ε| ≤ u = 2⁻⁵³
(Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed. 2002, ch. 2–3 and 10), with
γ_k = ku/(1−ku). Complex input is supported; a complex multiply-add is charged as two real ones
(complex products have error ≤ √2·γ₂, Higham §3.6), so γ_k becomes γ_{2k+2}. ``log``/``exp``/
``cos``/``sin`` are assumed accurate to 1 ulp (glibc); every final value gets a few ulps of slack.

Each input is first scaled by a power of two so that max|w| ∈ [½, 1): that is exact, keeps Gram
matrices far from overflow (1e30·Q in fp32, fp16 values near 65504) and is undone exactly.

* :func:`gram_iteration_upper_bound` — Gram iteration (Delattre et al., ICML 2023).
* :func:`cholesky_certificate` — proves σ ≤ σ̂(1+δ) with one Cholesky factorization
  (Demmel 1989; Higham Thm 10.3; Rump, BIT 46, 2006).
* :func:`lanczos_lower_bound` — Golub–Kahan–Lanczos bidiagonalization (Golub & Kahan 1965).
* :func:`sigma_interval` — the cheapest tight certified interval combining the last two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sncli.numerics.bounds_numpy import bidiagonal as _bidiagonal
from sncli.numerics.bounds_numpy import bidiagonal_sigma as _bidiagonal_sigma
from sncli.numerics.estimates import SigmaInterval
from sncli.numerics.floating import SLACK, UNIT_ROUNDOFF, check_finite, gamma, scale_pow2

if TYPE_CHECKING:
    import torch

_SMALLEST_SUBNORMAL = 2.0**-1074
DEFAULT_GRAM_ITERATIONS = 6
DEFAULT_LANCZOS_ITERATIONS = 128
DEFAULT_LANCZOS_TOL = 1e-13
CERTIFICATE_DELTAS = (1e-12, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2)
FALLBACK_GRAM_ITERATIONS = 8


@dataclass(frozen=True)
class _Scaled:
    """W·2^(−exponent) in float64/complex128 with max|entry| ∈ [½, 1), oriented rows ≥ columns."""

    matrix: torch.Tensor
    exponent: int

    @property
    def is_complex(self) -> bool:
        return self.matrix.is_complex()


def _as_float64(matrix: torch.Tensor) -> torch.Tensor:
    import torch

    if matrix.dim() != 2:
        raise ValueError(f"expected a matrix, got shape {tuple(matrix.shape)}")
    check_finite(matrix)
    target = torch.complex128 if matrix.is_complex() else torch.float64
    return matrix.to(target)


def _prepare(matrix: torch.Tensor) -> _Scaled | None:
    """Upcast, check finiteness, scale and orient so that rows ≥ columns (σ is unchanged)."""
    scaled = scale_pow2(_as_float64(matrix))
    if scaled is None:
        return None
    w, exponent = scaled
    if w.shape[0] < w.shape[1]:
        w = w.mH
    return _Scaled(w.contiguous(), exponent)


def _frobenius_sq_upper(w: torch.Tensor) -> float:
    """An upper bound on ‖W‖_F² from one float64 reduction (relative error ≤ γ_{N+1})."""
    import torch

    value = float(torch.linalg.vector_norm(w)) ** 2
    return value / (1.0 - gamma(w.numel() + 3)) * SLACK


def _up(value: float) -> float:
    return math.nextafter(value, math.inf)


def _down(value: float) -> float:
    return max(0.0, math.nextafter(value, 0.0))


def _ldexp_down(value: float, exponent: int) -> float:
    """value·2^exponent, rounded toward zero when the result is subnormal (inexact)."""
    result = math.ldexp(value, exponent)
    return _down(result) if 0.0 < result < 2.0**-1022 else result


def gram_iteration_upper_bound(
    matrix: torch.Tensor, iterations: int = DEFAULT_GRAM_ITERATIONS
) -> float:
    """A guaranteed upper bound on σ_max by ``iterations`` steps of Gram iteration.

    Delattre, Barthélemy, Araujo & Allauzen (ICML 2023): G ← GᴴG/‖G‖_F², tracked in the log domain
    so nothing overflows; after t steps the exact value is the Schatten-2^(t+1) norm
    (Σσᵢ^p)^(1/p) ≥ σ₁, within rank^(1/p) of it. t = 0 gives ‖W‖_F.

    Rounding margin (proved here, fp64 otherwise falls 1–2 ulp *below* σ): with n the small side,
    one step perturbs the normalized iterate H (‖H‖_F = 1) by ≤ u‖H‖_F in the division and by
    ≤ γ_m‖H‖_F² in the product (Higham Lemma 3.5), while ‖H‖_{S_p} ≥ ‖H‖₂ ≥ ‖H‖_F/√n. So each
    step keeps a_{j+1} ≥ (a_j/f_j)²·κ, κ = (1−u√n)²(1−nγ_m), and the exponents 2^(−1−j) sum
    below 1: the computed value divided by κ(1−γ_{n²+3}) and widened for log/exp rounding bounds
    the exact Schatten norm of the float64 input, hence σ₁. The relative margin is ≈ mnu
    (5e-9 at 4096×11008), invisible next to the method's own looseness.
    """
    import torch

    if iterations < 0:
        raise ValueError(f"iterations must be ≥ 0, got {iterations}")
    prepared = _prepare(matrix)
    if prepared is None:
        return 0.0
    w = prepared.matrix
    m, n = w.shape
    cplx = prepared.is_complex
    kappa = (1.0 - UNIT_ROUNDOFF * math.sqrt(n)) ** 2
    if iterations > 0:
        kappa *= 1.0 - n * gamma(m, complex_arith=cplx)
    logs: list[float] = []
    g = w
    for _ in range(iterations):
        f = float(torch.linalg.matrix_norm(g))
        logs.append(math.log(f))
        g = g / f
        g = g.mH @ g
    logs.append(math.log(float(torch.linalg.matrix_norm(g))))
    weights = [2.0**-j for j in range(iterations)] + [2.0**-iterations]
    terms = [wt * lg for wt, lg in zip(weights, logs, strict=True)]
    log_value = math.fsum(terms)
    log_error = (2 * UNIT_ROUNDOFF + gamma(len(terms))) * sum(abs(t) for t in terms) * SLACK
    frob_error = 1.0 - gamma(g.numel() + 3)
    value = math.exp(log_value + log_error) / (kappa * frob_error) * SLACK
    return _up(math.ldexp(value, prepared.exponent))


@dataclass(frozen=True)
class ScaledGram:
    """The float64 Gram matrix of the smaller side of 2^(−e)·W and what its rounding error needs.

    Built once and reused by :meth:`certify` for several trial bounds (one syrk, then n³/3 each).
    """

    gram: torch.Tensor
    exponent: int
    inner: int
    frobenius_sq_upper: float
    is_complex: bool

    @classmethod
    def from_matrix(cls, matrix: torch.Tensor) -> ScaledGram | None:
        """None for the zero matrix (σ = 0 exactly)."""
        prepared = _prepare(matrix)
        if prepared is None:
            return None
        return cls.from_scaled(prepared)

    @classmethod
    def from_scaled(cls, prepared: _Scaled) -> ScaledGram:
        w = prepared.matrix
        return cls(
            gram=w.mH @ w,
            exponent=prepared.exponent,
            inner=w.shape[0],
            frobenius_sq_upper=_frobenius_sq_upper(w),
            is_complex=prepared.is_complex,
        )

    def certify(self, sigma_hat: float, delta: float) -> float | None:
        """σ̂(1+δ) if a Cholesky factorization proves σ_max below it, else None."""
        bound = sigma_hat * (1.0 + delta)
        if not math.isfinite(bound) or bound <= 0.0:
            return None
        scaled = math.ldexp(bound, -self.exponent)
        mu = _down(scaled * scaled)
        ok = certify_gram_batch(
            self.gram.unsqueeze(0),
            mu,
            [self.frobenius_sq_upper],
            inner=self.inner,
            complex_arith=self.is_complex,
        )
        return bound if bool(ok[0]) else None

    def relative_margin(self, sigma_hat: float) -> float:
        """c/μ at μ = σ̂²: a certificate needs (1+δ)² − 1 above this, so δ ≳ half of it."""
        n = self.gram.shape[0]
        mu = math.ldexp(sigma_hat, -self.exponent) ** 2
        if mu <= 0.0:
            return math.inf
        trace = float((mu - self.gram.diagonal().real).clamp(min=0).sum())
        g_inner = gamma(self.inner, complex_arith=self.is_complex)
        g_chol = gamma(n + 1, complex_arith=self.is_complex)
        return (g_inner * self.frobenius_sq_upper + g_chol / (1.0 - g_chol) * trace) / mu


def certify_gram_batch(
    grams: torch.Tensor,
    mu: float,
    frobenius_sq_upper: list[float],
    *,
    inner: int,
    complex_arith: bool,
) -> torch.Tensor:
    """For each computed Gram Ĝ_b = fl(A_bᴴA_b) (batch, n, n): True only if λ_max(A_bᴴA_b) < μ.

    ``frobenius_sq_upper[b]`` bounds ‖A_b‖_F², ``inner`` is A_b's row count: the Gram rounding
    is ‖Ĝ − AᴴA‖₂ ≤ γ_inner‖A‖_F² (Higham Lemma 3.5/§3.6), the rest is
    :func:`certify_hermitian_batch`.
    """
    import torch

    g_inner = gamma(inner, complex_arith=complex_arith)
    fro = torch.tensor(frobenius_sq_upper, dtype=torch.float64)
    error = g_inner * fro + inner * grams.shape[-1] * _SMALLEST_SUBNORMAL
    return certify_hermitian_batch(grams, mu, error, complex_arith=complex_arith)


def certify_hermitian_batch(
    matrices: torch.Tensor,
    mu: float,
    error: torch.Tensor,
    *,
    complex_arith: bool,
    overwrite: bool = False,
    single: bool = False,
) -> torch.Tensor:
    """For computed Hermitian M̂_b (batch, n, n; lower triangles read) with ‖M̂_b − M_b‖₂ ≤
    ``error[b]`` (underflow in forming M̂ included): True only if λ_max(M_b) < μ.

    Cholesky runs on fl(μI − M̂ − cI) with c covering (i) ``error``, (ii) Cholesky's backward
    error: success implies λ_min ≥ −γ_{n+1}·tr/(1−γ_{n+1}) (Demmel 1989; Higham Thm 10.3 with
    ‖|R|‖_F² ≤ tr/(1−γ)), (iii) the diagonal subtraction rounding ≤ 2u(μ + m̂ᵢᵢ + c) and (iv)
    Rump's underflow term (BIT 46, 2006, isspd). ``overwrite`` factors in place (the matrices
    are destroyed; saves a copy of the batch).

    ``single`` factors the shifted matrix in single precision (about 2× faster for complex
    n ≤ 256): (ii) and (iv) then use u = 2⁻²⁴, and c also covers (v) rounding the float64 matrix
    to single, ≤ u·‖fl(μI − M̂ − cI)‖_F ≤ u(√2‖M̂‖_F + √n(μ + c)) (the Hermitian matrix read from
    M̂'s lower triangle has Frobenius norm ≤ √2‖M̂‖_F). The margin is ~n·u·tr, so this proves
    less: callers fall back to double for the blocks it does not certify.
    """
    import torch

    n = matrices.shape[-1]
    u = _SINGLE_ROUNDOFF if single else UNIT_ROUNDOFF  # of the factorization
    k = 2 * (n + 1) + 2 if complex_arith else n + 1  # γ_{n+1}, complex as in floating.gamma
    if k * u >= 0.1:
        return torch.zeros(matrices.shape[:-2], dtype=torch.bool)
    g_chol = k * u / (1.0 - k * u)
    diag = matrices.diagonal(dim1=-2, dim2=-1).real
    shifted = mu - diag
    ok = (shifted > 0).all(dim=-1)
    trace_up = shifted.clamp(min=0).sum(dim=-1) * (1.0 + gamma(n + 1)) * SLACK
    peak = diag.max(dim=-1).values
    conversion = torch.zeros_like(trace_up)
    denominator = 1.0 - 2.01 * UNIT_ROUNDOFF
    if single:  # (v): the float64 matrix rounded to single, and tr of the rounded one
        entries = torch.view_as_real(matrices) if matrices.is_complex() else matrices
        fro = torch.linalg.vector_norm(entries.reshape(*matrices.shape[:-2], -1), dim=-1)
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
    new_diag = shifted - c.unsqueeze(-1)
    if single:  # rounded to single, negated (exact), the diagonal rounded: fl₃₂(μI − M̂ − cI)
        low = torch.complex64 if matrices.is_complex() else torch.float32
        matrix = matrices.to(low).neg_()
    else:
        matrix = matrices.neg_() if overwrite else -matrices
    matrix.diagonal(dim1=-2, dim2=-1).copy_(new_diag.to(matrix.dtype))
    if single or overwrite:
        info = torch.empty(matrix.shape[:-2], dtype=torch.int32)
        torch.linalg.cholesky_ex(matrix, out=(matrix, info))
    else:
        _, info = torch.linalg.cholesky_ex(matrix)
    return ok & (info == 0) & (new_diag > 0).all(dim=-1)


_SINGLE_ROUNDOFF = 2.0**-24
_SINGLE_SUBNORMAL = 2.0**-149


def cholesky_certificate(
    matrix: torch.Tensor, sigma_hat: float, delta: float = 1e-8
) -> float | None:
    """σ̂(1+δ) if it is *proved* to be ≥ σ_max, else None (the certificate failed).

    Forms G = WᴴW of the smaller side in float64 (after an exact power-of-two pre-scale) and
    factors μI − G − cI with μ = (σ̂(1+δ))² rounded down; see :func:`certify_gram_batch` for c.
    The margin c/μ is ≈ (n² + mn)u, so δ = 1e-8 certifies up to roughly 4096×11008; retry with a
    larger δ beyond. For the zero matrix any σ̂ ≥ 0 is certified.
    """
    gram = ScaledGram.from_matrix(matrix)
    if gram is None:
        bound = sigma_hat * (1.0 + delta)
        return bound if math.isfinite(bound) and bound >= 0.0 else None
    return gram.certify(sigma_hat, delta)


def certified_ratio(w: torch.Tensor, x: torch.Tensor) -> float:
    """A guaranteed lower bound on ‖Wx‖/‖x‖ from float64 products.

    ‖fl(Wx) − Wx‖ ≤ γ_n‖|W||x|‖ ≤ γ_n‖W‖_F‖x‖ (Higham Lemma 3.5); norms carry γ_{k+2}.
    The loss relative to σ is at most n·u·‖W‖_F/σ ≤ n^1.5·u.
    """
    import torch

    m, n = w.shape
    cplx = w.is_complex() or x.is_complex()
    z = w @ x
    norm_z = float(torch.linalg.vector_norm(z))
    norm_x = float(torch.linalg.vector_norm(x))
    if norm_x == 0.0 or not math.isfinite(norm_z):
        return 0.0
    norm_x_up = norm_x * (1.0 + gamma(n + 2)) * SLACK
    error = gamma(n, complex_arith=cplx) * math.sqrt(_frobenius_sq_upper(w)) * norm_x_up
    numerator = norm_z * (1.0 - gamma(m + 2)) - error
    if numerator <= 0.0:
        return 0.0
    return _down(numerator / norm_x_up / SLACK)


def _lanczos_scaled(w: torch.Tensor, iterations: int, seed: int, tol: float) -> tuple[float, int]:
    """GKL on a scaled, oriented matrix; (certified lower bound, steps taken).

    After k steps U_kᴴ W V_{k+1} = [B_k | β_k e_k] (k×(k+1) upper bidiagonal); its top singular
    value is the Ritz value, exact once the Krylov space is invariant (α or β vanishes).
    """
    import torch

    m, n = w.shape
    steps = max(1, min(iterations, n))
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(n, generator=generator, dtype=torch.float64)
    if w.is_complex():
        start = torch.complex(start, torch.randn(n, generator=generator, dtype=torch.float64))
    right = torch.zeros(steps + 1, n, dtype=w.dtype)
    left = torch.zeros(steps, m, dtype=w.dtype)
    alphas: list[float] = []
    betas: list[float] = []
    right[0] = start / torch.linalg.vector_norm(start)
    previous = 0.0
    for j in range(steps):
        u = w @ right[j]
        if j > 0:
            u = u - betas[-1] * left[j - 1]
        for _ in range(2):
            u = u - left[:j].T @ (left[:j].conj() @ u)
        alpha = float(torch.linalg.vector_norm(u))
        if alpha <= 1e-14 * max(alphas + betas, default=alpha):
            break
        left[j] = u / alpha
        alphas.append(alpha)
        v = w.mH @ left[j] - alpha * right[j]
        for _ in range(2):
            v = v - right[: j + 1].T @ (right[: j + 1].conj() @ v)
        beta = float(torch.linalg.vector_norm(v))
        if beta <= 1e-14 * max(alphas):
            break
        betas.append(beta)
        right[j + 1] = v / beta
        if j % 4 == 3:
            value = _bidiagonal_sigma(alphas, betas)
            if value - previous <= tol * value:
                break
            previous = value
    if not alphas:
        return 0.0, 0
    _, y = _bidiagonal_top(alphas, betas)
    x = right[: y.shape[0]].T @ y.to(w.dtype)
    return certified_ratio(w, x), len(alphas)


def _bidiagonal_top(alphas: list[float], betas: list[float]) -> tuple[float, torch.Tensor]:
    """Top singular value and right singular vector of :func:`_bidiagonal`.

    numpy's LAPACK call is ~10× faster than torch's for these tiny matrices.
    """
    import numpy as np
    import torch

    _, s, vh = np.linalg.svd(_bidiagonal(alphas, betas))
    return float(s[0]), torch.from_numpy(vh[0].copy())


def lanczos_lower_bound(
    matrix: torch.Tensor,
    iterations: int = DEFAULT_LANCZOS_ITERATIONS,
    seed: int = 0,
    tol: float = DEFAULT_LANCZOS_TOL,
) -> float:
    """A guaranteed lower bound on σ_max by Golub–Kahan–Lanczos with full reorthogonalization.

    Runs at most ``iterations`` steps on the small side from a seeded Gaussian start (a fixed
    start can be orthogonal to the top vector), stopping early when the top Ritz value moves by
    less than ``tol`` (relative) over four steps. Lanczos converges like e^(−4k√gap) (Kaniel–
    Paige–Saad), so far faster than power iteration on small gaps. The value returned is not the
    Ritz value itself but ‖Wx‖/‖x‖ for the Ritz vector x, evaluated with a rounding margin
    (:func:`certified_ratio`), so it never exceeds σ_max.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be ≥ 1, got {iterations}")
    prepared = _prepare(matrix)
    if prepared is None:
        return 0.0
    value, _ = _lanczos_scaled(prepared.matrix, iterations, seed, tol)
    return _ldexp_down(value, prepared.exponent)


def sigma_interval(matrix: torch.Tensor, *, seed: int = 0) -> SigmaInterval:
    """The cheapest tight certified interval for σ_max.

    Lower: Lanczos (:func:`lanczos_lower_bound`), floored by the largest ‖We_i‖ of the tall side.
    Upper: the Cholesky certificate at σ̂ = lower with δ = 1e-12, 1e-10, …, 1e-2 in turn, skipping
    the δ below what the rounding allowance c/μ ≈ (n² + mn)u can possibly prove (one Gram matrix,
    one Cholesky per try), falling back to Gram iteration if all fail.
    Cost: O(mn·k) for Lanczos plus one n²m syrk and n³/3 per Cholesky, n = small side.
    A NumPy matrix runs the same steps on NumPy (:func:`.bounds_numpy.sigma_interval_array`).
    """
    from sncli.arrays import is_array

    if is_array(matrix):
        from sncli.numerics.bounds_numpy import sigma_interval_array

        return sigma_interval_array(
            matrix,
            seed=seed,
            iterations=DEFAULT_LANCZOS_ITERATIONS,
            tol=DEFAULT_LANCZOS_TOL,
            deltas=CERTIFICATE_DELTAS,
            fallback_iterations=FALLBACK_GRAM_ITERATIONS,
        )
    import torch

    prepared = _prepare(matrix)
    if prepared is None:
        return SigmaInterval(0.0, 0.0, "zero matrix", "zero matrix")
    w = prepared.matrix
    lanczos, steps = _lanczos_scaled(w, DEFAULT_LANCZOS_ITERATIONS, seed, DEFAULT_LANCZOS_TOL)
    col = certified_ratio(w, torch.eye(w.shape[1], dtype=w.dtype)[:, _max_column(w)])
    lower_scaled = max(lanczos, col)
    lower = _ldexp_down(lower_scaled, prepared.exponent)
    lower_method = f"lanczos ({steps} steps)" if lanczos >= col else "largest column norm"
    gram = ScaledGram.from_scaled(prepared)
    floor = gram.relative_margin(lower)
    for delta in CERTIFICATE_DELTAS:
        if 2.0 * delta <= floor and delta != CERTIFICATE_DELTAS[-1]:
            continue
        upper = gram.certify(lower, delta)
        if upper is not None:
            return SigmaInterval(lower, upper, lower_method, f"cholesky certificate (δ={delta:g})")
    upper = gram_iteration_upper_bound(matrix, FALLBACK_GRAM_ITERATIONS)
    method = f"gram iteration ({FALLBACK_GRAM_ITERATIONS} steps)"
    return SigmaInterval(lower, max(upper, lower), lower_method, method)


def _max_column(w: torch.Tensor) -> int:
    import torch

    return int(torch.argmax(torch.linalg.vector_norm(w, dim=0)))
