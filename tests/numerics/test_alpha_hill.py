"""``alpha_hill`` (AlphaPruning's PL_Alpha_Hill) against a plain-loop transcription of
``net_esd_estimator(fix_fingers='xmin_mid')`` (haiquanlu/AlphaPruning, lib/esd_utils.py) and
closed forms: exact Pareto quantiles and a geometric upper half. Tolerance 1e-12 relative (sums
of ≤ 1000 float64 logs)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sncli.numerics.esd import alpha_hill, spectrum_metrics


def alphapruning_xmin_mid(eigs: list[float]) -> float:
    """AlphaPruning's code, written out with Python floats: eigs ascending, i = int(N / 2),
    n = N − i, α = 1 + n / (Σ log eigs[i:] − n·log eigs[i])."""
    eigs = sorted(eigs)
    big_n = len(eigs)
    i = int(big_n / 2)
    n = float(big_n - i)
    total = sum(math.log(x) for x in eigs[i:])
    return 1 + n / (total - n * math.log(eigs[i]))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("count", [3, 10, 101, 512])
def test_matches_the_reference_code(seed: int, count: int) -> None:
    rng = np.random.default_rng(seed)
    lam = rng.lognormal(0.0, 2.0, count)
    assert alpha_hill(lam) == pytest.approx(alphapruning_xmin_mid(list(lam)), rel=1e-12)


@pytest.mark.parametrize("true_alpha", [1.5, 2.0, 3.5, 6.0])
@pytest.mark.parametrize("n", [8, 100, 1000])
def test_exact_pareto_quantiles(true_alpha: float, n: int) -> None:
    """Upper half λⱼ = xmin·(1 − j/n)^(−1/(α−1)), j = 0…n−1: Σ ln(λⱼ/xmin) = (n ln n − ln n!)/(α−1),
    so α_hill = 1 + n(α − 1)/(n ln n − ln n!) exactly (→ α as n grows). The lower half, below
    the median, does not enter."""
    upper = [(1 - j / n) ** (-1 / (true_alpha - 1)) for j in range(n)]
    lower = list(np.linspace(0.01, 0.99, n))
    expected = 1 + n * (true_alpha - 1) / (n * math.log(n) - math.lgamma(n + 1))
    assert alpha_hill(np.array(lower + upper)) == pytest.approx(expected, rel=1e-12)
    if n == 1000:
        assert alpha_hill(np.array(lower + upper)) == pytest.approx(true_alpha, rel=0.01)


def test_geometric_upper_half() -> None:
    """ln(λⱼ/xmin) = c·j, j = 0…n−1: α = 1 + 2/(c(n − 1)); an odd count puts the median one
    further up (index N//2)."""
    c, n = 0.25, 40
    upper = [math.exp(c * j) for j in range(n)]
    assert alpha_hill(np.array([0.5] * n + upper)) == pytest.approx(1 + 2 / (c * (n - 1)))
    # 2n − 1 eigenvalues: index N//2 = n − 1 is upper[0] again, the tail the same n values.
    assert alpha_hill(np.array([0.5] * (n - 1) + upper)) == pytest.approx(1 + 2 / (c * (n - 1)))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(1e-3, 1e3), min_size=2, max_size=60),
    st.floats(1e-6, 1e6),
)
def test_scale_invariant(values: list[float], scale: float) -> None:
    """α_hill depends on ratios λⱼ/xmin only: normalizing the ESD (WᵀW/N, as some codes do)
    or scaling W changes nothing."""
    lam = np.array(values)
    a, b = alpha_hill(lam), alpha_hill(lam * scale)
    assert (a is None) == (b is None)
    if a is not None:
        assert b == pytest.approx(a, rel=1e-9)


def test_undefined_cases() -> None:
    assert alpha_hill(np.array([1.0])) is None  # fewer than two eigenvalues
    assert alpha_hill(np.array([1.0, 2.0])) is None  # a one-value tail: Σ ln(λ/xmin) = 0
    assert alpha_hill(np.array([0.0, 0.0, 0.0, 1.0])) is None  # zero median: ln 0
    assert alpha_hill(np.array([0.1, 2.0, 2.0, 2.0])) is None  # constant upper half: α = ∞
    assert alpha_hill(np.array([0.0, 0.0, 1.0, 2.0])) is not None  # zeros below the median


def test_spectrum_metrics_carries_it() -> None:
    """From singular values: λ = σ², as AlphaPruning squares svdvals."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((60, 40))
    sigma = np.linalg.svd(w, compute_uv=False)
    metrics = spectrum_metrics(sigma, w.shape, 2.0**-23)
    assert metrics.alpha_hill == pytest.approx(alphapruning_xmin_mid(list(sigma**2)), rel=1e-12)
