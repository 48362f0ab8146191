"""Spectrum metrics (sncli.numerics.esd) against closed forms and literal re-derivations.

Closed forms: diagonal, orthogonal, rank-1 and Hilbert matrices (whose singular values come from
an mpmath eigen-decomposition at 50 digits, independent of LAPACK); a Pareto sample whose α is
known; the power-law fit against the formula of the issue written out as plain loops (and
WeightWatcher's small-n rule likewise). Tolerances: 1e-12 relative on closed forms (float64
sums of ≤ 1000 terms), the Pareto α within 4 standard errors.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from sncli.numerics.esd import (
    EVALS_THRESH,
    MIN_EVALS,
    WW_ENTROPY_EPSILON,
    effective_rank,
    fit_power_law,
    frobenius,
    mp_edge,
    numerical_rank,
    partial_metrics,
    spectrum_metrics,
    stable_rank,
    ww_entropy,
)

F64 = float(np.finfo(np.float64).eps)
F32 = float(np.finfo(np.float32).eps)


def brute_standard(data: list[float]) -> tuple[int, float, float]:
    """The issue's rule, literally: every xmin but the largest, MLE α, KS D, smallest D."""
    data = sorted(data)
    best = (None, math.nan, math.inf)
    for i in range(len(data) - 1):
        n = len(data) - i
        s = sum(math.log(x / data[i]) for x in data[i:])
        alpha = 1 + n / s
        d = max(abs(1 - (data[i + k] / data[i]) ** (1 - alpha) - k / n) for k in range(n))
        if d < best[2]:
            best = (i, alpha, d)
    return best  # type: ignore[return-value]


def brute_small_n(data: list[float]) -> tuple[int, float, float]:
    """WeightWatcher's fit_powerlaw_smallN (k_min 8, no prior), literally."""
    data = sorted(data)
    best, best_j = None, math.inf
    for i in range(len(data) - 1):
        n = len(data) - i
        if n < 8:
            continue
        s = sum(math.log(x / data[i]) for x in data[i:])
        if s <= 1e-12:
            continue
        alpha = 1 + (n - 1) / s
        if alpha <= 1:
            continue
        d = max(abs(k / n - (1 - (data[i + k] / data[i]) ** (1 - alpha))) for k in range(n))
        j = d - 0.868 / math.sqrt(n)
        if j < best_j:
            best, best_j = (i, alpha, d), j
    if best is None:
        n = len(data)
        s = sum(math.log(x / data[0]) for x in data)
        alpha = 1 + (n - 1) / s
        d = max(abs(k / n - (1 - (data[k] / data[0]) ** (1 - alpha))) for k in range(n))
        best = (0, alpha, d)
    return best


def ww_entropy_by_hand(sigma: list[float], rank: int) -> float:
    lam = [s * s for s in sigma]
    total = sum(lam)
    p = [x / total + WW_ENTROPY_EPSILON for x in lam]
    return -sum(q * math.log(q) for q in p) / math.log(rank + WW_ENTROPY_EPSILON)


def test_diagonal_closed_forms() -> None:
    d = [9.0, 7.0, 5.0, 4.0, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5]
    shape = (12, 10)  # diag(d) padded with two zero rows: the same singular values
    m = spectrum_metrics(np.array(d), shape, F32)
    sq = sum(x * x for x in d)
    p = [x / sum(d) for x in d]
    assert m.sigma_max == 9.0 and m.sigma_min == 0.5
    assert m.condition_number == pytest.approx(18.0, rel=1e-15)
    assert m.frobenius == pytest.approx(math.sqrt(sq), rel=1e-14)
    assert m.nuclear == pytest.approx(sum(d), rel=1e-15)
    assert m.stable_rank == pytest.approx(sq / 81.0, rel=1e-14)
    assert m.effective_rank == pytest.approx(math.exp(-sum(q * math.log(q) for q in p)), rel=1e-13)
    assert m.numerical_rank == 10
    assert m.rank_tolerance == pytest.approx(9.0 * 12 * F32, rel=1e-15)
    assert m.lambda_max == 81.0
    assert m.log_norm == pytest.approx(math.log10(sq), rel=1e-14)
    assert m.log_spectral_norm == pytest.approx(math.log10(81.0), rel=1e-14)
    assert m.entropy == pytest.approx(ww_entropy_by_hand(d, 10), rel=1e-12)
    edge = sq / 120 * (math.sqrt(12) + math.sqrt(10)) ** 2
    assert m.mp_edge == pytest.approx(edge, rel=1e-14)
    assert m.mp_spikes == sum(1 for x in d if x * x > edge)
    i, alpha, ks = brute_small_n([x * x for x in d])  # 10 eigenvalues: the small-n rule
    assert m.small_n_fit
    assert m.alpha == pytest.approx(alpha, rel=1e-12)
    assert m.xmin == pytest.approx(sorted(x * x for x in d)[i], rel=1e-15)
    assert m.ks_distance == pytest.approx(ks, rel=1e-12)
    assert m.num_pl_spikes == sum(1 for x in d if x * x >= m.xmin)
    assert m.alpha_weighted == pytest.approx(alpha * math.log10(81.0), rel=1e-12)
    assert m.log_alpha_norm == pytest.approx(
        math.log10(sum((x * x) ** alpha for x in d)), rel=1e-12
    )


@pytest.mark.parametrize("n", [8, 64, 300])
def test_orthogonal_closed_forms(n: int) -> None:
    m = spectrum_metrics(np.ones(n), (n, n), F64)
    assert m.stable_rank == pytest.approx(n, rel=1e-14)
    assert m.effective_rank == pytest.approx(n, rel=1e-12)
    e = WW_ENTROPY_EPSILON  # p = 1/n + ε, rank n + ε: −n(1/n + ε)ln(1/n + ε)/ln(n + ε)
    closed = -n * (1 / n + e) * math.log(1 / n + e) / math.log(n + e)
    assert m.entropy == pytest.approx(closed, rel=1e-13)
    assert m.entropy == pytest.approx(1.0, abs=1e-6)
    assert m.condition_number == 1.0
    assert m.numerical_rank == n
    assert m.frobenius == pytest.approx(math.sqrt(n), rel=1e-14)
    assert m.nuclear == n
    assert m.mp_edge == pytest.approx(4.0, rel=1e-14) and m.mp_spikes == 0
    # A constant spectrum has no tail to fit (α = 1 + n/0): no α rather than infinity.
    assert m.alpha is None and m.alpha_weighted is None and m.log_alpha_norm is None


@pytest.mark.parametrize(("m", "n", "s"), [(20, 10, 3.0), (64, 256, 0.01), (9, 9, 1e6)])
def test_rank_one_closed_forms(m: int, n: int, s: float) -> None:
    k = min(m, n)
    sigma = np.zeros(k)
    sigma[0] = s
    metrics = spectrum_metrics(sigma, (m, n), F64)
    assert metrics.stable_rank == 1.0 and metrics.effective_rank == 1.0
    assert metrics.numerical_rank == 1
    assert metrics.condition_number is None and metrics.sigma_min == 0.0
    assert metrics.frobenius == s and metrics.nuclear == s
    assert metrics.entropy == pytest.approx(ww_entropy_by_hand([s] + [0.0] * (k - 1), 1), rel=1e-9)
    edge = s * s / (m * n) * (math.sqrt(m) + math.sqrt(n)) ** 2
    assert metrics.mp_edge == pytest.approx(edge, rel=1e-14)
    assert metrics.mp_spikes == 1  # s² > edge whenever mn > (√m + √n)²
    # One eigenvalue above 1e-5 (or none): WeightWatcher's fit fails, no α.
    assert metrics.alpha is None


def hilbert_singular_values(n: int) -> list[float]:
    """Eigenvalues of the (SPD) Hilbert matrix at 50 digits: its singular values."""
    with mpmath.workdps(50):
        h = mpmath.hilbert(n)
        values = mpmath.eigsy(h)[0]
        return sorted((float(v) for v in values), reverse=True)


def test_hilbert_closed_forms() -> None:
    sigma = hilbert_singular_values(8)
    m = spectrum_metrics(np.array(sigma), (8, 8), F64)
    assert m.condition_number == pytest.approx(1.5258e10, rel=1e-4)  # cond₂(H₈), as tabulated
    assert m.nuclear == pytest.approx(sum(1 / (2 * i + 1) for i in range(8)), rel=1e-14)  # trace
    assert m.frobenius == pytest.approx(
        math.sqrt(sum(1 / (i + j + 1) ** 2 for i in range(8) for j in range(8))), rel=1e-14
    )
    assert m.numerical_rank == 8  # σ_min ≈ 1.1e-10 > σ_max·8·ε₆₄
    # ... but with float32's ε the tolerance is 1.6e-6: σ₆ = 1.3e-6 and below drop out.
    assert numerical_rank(np.array(sigma), (8, 8), F32) == 5


def test_pareto_sample_recovers_alpha() -> None:
    """λ with density ∝ λ^−2.5 on [1, ∞), below it a bulk: α̂ within 4 standard errors."""
    rng = np.random.default_rng(7)
    alpha = 2.5
    tail = (1 - rng.random(3000)) ** (-1 / (alpha - 1))
    bulk = rng.uniform(0.05, 0.9, 1000)
    fit = fit_power_law(np.concatenate([bulk, tail]))
    assert fit is not None and not fit.small_n
    error = (fit.alpha - 1) / math.sqrt(fit.tail)
    assert abs(fit.alpha - alpha) < 4 * error
    assert 0.9 <= fit.xmin <= 1.6 and fit.tail >= 2000
    assert fit.ks_distance < 0.05


def test_geometric_spectrum_by_hand() -> None:
    """λ_j = 2^j (j < 25): at xmin = λ₀, Σ ln(λ_j/λ₀) = ln 2·n(n−1)/2, α = 1 + 2/((n−1) ln 2)."""
    data = [2.0**j for j in range(25)]
    index, alpha, ks = brute_standard(data)
    fit = fit_power_law(np.array(data))
    assert fit is not None
    assert (fit.xmin, fit.tail) == (data[index], 25 - index)
    assert fit.alpha == pytest.approx(alpha, rel=1e-12)
    assert fit.ks_distance == pytest.approx(ks, rel=1e-12)
    n = 25 - index
    assert fit.alpha == pytest.approx(1 + 2 / ((n - 1) * math.log(2)), rel=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_standard_fit_matches_the_literal_rule(seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = np.exp(rng.normal(0, 1.5, 150))
    index, alpha, ks = brute_standard(list(data))
    fit = fit_power_law(data)
    assert fit is not None
    assert fit.xmin == sorted(data)[index]
    assert fit.alpha == pytest.approx(alpha, rel=1e-11)
    assert fit.ks_distance == pytest.approx(ks, rel=1e-11)


@pytest.mark.parametrize("count", [3, 7, 8, 12, 19])
def test_small_n_rule_matches_weightwatcher(count: int) -> None:
    rng = np.random.default_rng(count)
    data = np.exp(rng.normal(0, 1, count))
    fit = fit_power_law(data)
    index, alpha, ks = brute_small_n(list(data))
    assert fit is not None and fit.small_n
    assert fit.xmin == sorted(data)[index]
    assert fit.alpha == pytest.approx(alpha, rel=1e-12)
    assert fit.ks_distance == pytest.approx(ks, rel=1e-12)


def test_fit_ignores_eigenvalues_below_the_threshold() -> None:
    data = np.exp(np.random.default_rng(1).normal(0, 1, 60))
    fit = fit_power_law(data)
    padded = fit_power_law(np.concatenate([data, np.full(40, EVALS_THRESH / 2), np.zeros(5)]))
    assert fit == padded
    assert fit_power_law(np.array([1.0])) is None
    assert fit_power_law(np.zeros(30)) is None


def test_no_fit_below_min_evals_and_zero_matrix() -> None:
    few = spectrum_metrics(np.array([3.0, 2.0, 1.0]), (3, 40), F32)
    assert MIN_EVALS > 3 and few.alpha is None and few.stable_rank is not None
    zero = spectrum_metrics(np.zeros(5), (5, 5), F32)
    assert zero.stable_rank is None and zero.effective_rank is None and zero.entropy is None
    assert zero.log_norm is None and zero.condition_number is None and zero.numerical_rank == 0
    assert zero.mp_spikes == 0
    with pytest.raises(ValueError, match="expected 5 singular values"):
        spectrum_metrics(np.ones(4), (5, 9), F32)


def test_partial_metrics() -> None:
    sigma = np.array([10.0, 4.0, 3.0, 2.0, 1.0, 1.0])
    fro = float(np.sqrt(np.sum(sigma**2)))
    shape = (30, 6)
    edge = fro**2 / 180 * (math.sqrt(30) + math.sqrt(6)) ** 2
    top2 = partial_metrics(sigma[:2], fro, shape)
    assert top2.stable_rank == pytest.approx(float(np.sum(sigma**2)) / 100, rel=1e-14)
    assert top2.log_norm == pytest.approx(math.log10(fro**2), rel=1e-14)
    assert top2.mp_edge == pytest.approx(edge, rel=1e-14)
    full = spectrum_metrics(sigma, shape, F64)
    # 10² is above the edge, 4² is not: two values settle the count; one does not.
    assert 16 <= edge < 100
    assert top2.mp_spikes == full.mp_spikes == 1
    assert partial_metrics(sigma[:1], fro, shape).mp_spikes is None


def test_frobenius_does_not_overflow() -> None:
    assert frobenius(np.array([1e300, 1e300])) == pytest.approx(math.sqrt(2) * 1e300, rel=1e-15)
    assert frobenius(np.array([1e-300, 1e-300])) == pytest.approx(math.sqrt(2) * 1e-300, rel=1e-15)
    assert mp_edge(4.0, (0, 3)) == 0.0


spectra = st.lists(st.floats(0.1, 10.0), min_size=MIN_EVALS, max_size=60)


@settings(max_examples=40, deadline=None)
@given(sigma=spectra, scale=st.floats(0.1, 10.0))
def test_scale_invariance(sigma: list[float], scale: float) -> None:
    """α, KS D, stable rank, effective rank, entropy and MP spike counts ignore a factor c.

    Eigenvalues equal up to rounding but not exactly (λ = 100 and 100·(1 − 4e-16)) make
    Σ ln(λⱼ/λᵢ) pure rounding noise, α ~ 1e15 and D arbitrary, in any implementation of the rule
    (WeightWatcher's too); such spectra are left out.
    """
    s = np.sort(np.array(sigma))[::-1]
    gaps = np.abs(np.diff(s)) / s[1:]
    assume(bool(np.all((gaps == 0) | (gaps > 1e-6))))
    shape = (len(sigma) + 3, len(sigma))
    a = spectrum_metrics(s, shape, F32)
    b = spectrum_metrics(scale * s, shape, F32)
    assert b.stable_rank == pytest.approx(a.stable_rank, rel=1e-12)
    assert b.effective_rank == pytest.approx(a.effective_rank, rel=1e-12)
    assert b.entropy == pytest.approx(a.entropy, rel=1e-9)
    assert b.mp_spikes == a.mp_spikes or _near_edge(s, shape)
    assert b.numerical_rank == a.numerical_rank
    if a.alpha is None:
        assert b.alpha is None
    elif b.xmin == pytest.approx(scale**2 * a.xmin, rel=1e-9):  # the same xmin was chosen
        assert b.alpha == pytest.approx(a.alpha, rel=1e-8)
        assert b.ks_distance == pytest.approx(a.ks_distance, rel=1e-8, abs=1e-12)
    else:  # rounding may flip a near-tie between candidates: their D must then be tied
        assert b.ks_distance == pytest.approx(a.ks_distance, rel=1e-8)


def _near_edge(s: np.ndarray, shape: tuple[int, int]) -> bool:
    edge = mp_edge(float(np.sum(s**2)), shape)
    return bool(np.any(np.abs(s**2 - edge) <= 1e-12 * edge))


@example(sigma=[2.0, 5e-324])  # a subnormal σ: p underflowed to 0 and 0·ln 0 gave NaN
@settings(max_examples=40, deadline=None)
@given(sigma=st.lists(st.floats(0.0, 1e3), min_size=1, max_size=40))
def test_rank_bounds(sigma: list[float]) -> None:
    s = np.array(sigma)
    if not np.any(s > 0):
        assert (
            stable_rank(s) is None and effective_rank(s) is None and ww_entropy(s, (40, 40)) is None
        )
        return
    nonzero = int(np.count_nonzero(s))
    assert 1 - 1e-12 <= stable_rank(s) <= nonzero * (1 + 1e-12)
    assert 1 - 1e-12 <= effective_rank(s) <= nonzero * (1 + 1e-12)
    assert stable_rank(s) <= effective_rank(s) * (1 + 1e-12) or nonzero == 1
