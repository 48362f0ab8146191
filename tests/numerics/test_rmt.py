"""WeightWatcher's MP fit and randomized ESD (sncli.numerics.rmt) without WeightWatcher: the
KDE against its dense definition and a single-point closed form, the Jensen–Shannon distance
against ``scipy.stats.entropy`` and its bounds, the MP fit on matrices whose bulk is known
(i.i.d. Gaussian: σ_mp ≈ 1, no spike; planted rank-one signals: the spikes), scale invariance,
and the seeded randomization (reproducible, ‖W‖_F kept, a planted large element is a trap).
The fit's agreement with WeightWatcher 0.7.7 itself is measured in bench/run.py --spectrum."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, stats

from sncli.numerics import rmt


def dense_kde(data: np.ndarray, points: np.ndarray, h: float) -> np.ndarray:
    kernel = np.clip(1 - np.abs(points[:, None] - data[None, :]) / h, 0, None)
    return kernel.sum(axis=1) / (data.size * h)


@pytest.mark.parametrize("seed", range(3))
def test_kde_matches_its_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = rng.gamma(2.0, 1.0, 700)
    points = np.linspace(0, data.max() + 0.5, 1000)
    got = rmt.linear_kde(data, points, 0.1)
    np.testing.assert_allclose(got, dense_kde(data, points, 0.1), rtol=1e-12, atol=1e-15)
    # a density: integrates to 1 (trapezoid on a fine grid, the kernel being piecewise linear)
    fine = np.linspace(-0.2, data.max() + 0.2, 40001)
    assert np.trapezoid(rmt.linear_kde(data, fine, 0.1), fine) == pytest.approx(1, rel=1e-5)


def test_kde_single_point_triangle() -> None:
    """One sample at 1: the triangle (1/h)(1 − |x − 1|/h) of height 1/h and half-width h."""
    points = np.array([0.85, 0.95, 1.0, 1.05, 1.1, 1.2])
    expected = np.array([0.0, 5.0, 10.0, 5.0, 0.0, 0.0])
    np.testing.assert_allclose(rmt.linear_kde(np.array([1.0]), points, 0.1), expected, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_jensen_shannon_matches_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p, q = np.sort(rng.gamma(1.5, 1.0, 200)), np.sort(rng.gamma(3.0, 1.0, 200))
    m = (p + q) / 2
    expected = math.sqrt((stats.entropy(p, m) + stats.entropy(q, m)) / 2)
    assert rmt.jensen_shannon_distance(p, q) == pytest.approx(expected, rel=1e-12)
    assert rmt.jensen_shannon_distance(p, q) == pytest.approx(rmt.jensen_shannon_distance(q, p))
    assert 0 < rmt.jensen_shannon_distance(p, q) <= math.sqrt(math.log(2))
    assert rmt.jensen_shannon_distance(p, p) == 0.0
    assert rmt.jensen_shannon_distance(p, 3 * p) == pytest.approx(0.0, abs=1e-7)


def gaussian_evals(n: int, m: int, seed: int, spikes: tuple[float, ...] = ()) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, m)) / math.sqrt(n)
    for strength in spikes:  # rank-one signals far above the bulk (BBP: visible beyond 1/√Q)
        u, v = rng.standard_normal(n), rng.standard_normal(m)
        w += strength * np.outer(u / np.linalg.norm(u), v / np.linalg.norm(v))
    return np.sort(np.linalg.svd(w, compute_uv=False) ** 2)


@pytest.mark.parametrize(("n", "m"), [(1200, 300), (800, 400), (1000, 100)])
def test_pure_noise_fits_the_bulk(n: int, m: int) -> None:
    """I.i.d. entries: the rescaled ESD is MP with σ = 1: σ_mp ≈ 1, no spike, softrank ≈ 1."""
    fit = rmt.mp_fit(gaussian_evals(n, m, 0), (n, m))
    assert fit is not None
    assert fit.sigma == pytest.approx(1.0, abs=0.08)
    assert fit.num_spikes == 0
    assert fit.mp_softrank == pytest.approx(1.0, abs=0.15)


def test_planted_spikes_are_counted() -> None:
    evals = gaussian_evals(1200, 300, 1, spikes=(6.0, 8.0, 10.0))
    fit = rmt.mp_fit(evals, (1200, 300))
    assert fit is not None
    assert fit.num_spikes == 3
    assert fit.mp_softrank < 0.5
    # the edge sits between the bulk's top and the smallest spike
    assert evals[-4] < fit.bulk_max < evals[-3]


def test_scale_invariance_and_units() -> None:
    evals = gaussian_evals(600, 200, 2, spikes=(5.0,))
    a, b = rmt.mp_fit(evals, (600, 200)), rmt.mp_fit(evals * 1e4, (200, 600))
    assert a is not None and b is not None
    assert (a.num_spikes, a.mp_softrank) == (b.num_spikes, pytest.approx(b.mp_softrank, rel=1e-9))
    assert b.bulk_max == pytest.approx(1e4 * a.bulk_max, rel=1e-9)


def test_fit_is_the_brute_force_minimum() -> None:
    """An independent transcription of resid_mp + fit_density_with_range (dense KDE, a plain
    grid search, the same fmin polish) gives the same σ."""
    n, m = 500, 250
    evals = gaussian_evals(n, m, 3, spikes=(4.0,))
    q = n / m
    scaled = evals * (evals.size / evals.sum())
    x = np.linspace(0, scaled.max() + 0.5, 1000)
    y = dense_kde(scaled, x, 0.1)
    x, y = x[y > 0.01], y[y > 0.01]
    peak = x[np.argmax(y)]

    def resid(sigma: float) -> float:
        sigma = float(np.ravel(sigma)[0])
        b = (sigma * (1 + 1 / math.sqrt(q))) ** 2
        a = (sigma * (1 - 1 / math.sqrt(q))) ** 2
        if b < peak or b > x.max() or a > peak:
            return 1000.0**2 * x.size
        with np.errstate(all="ignore"):
            mp = np.nan_to_num(np.sqrt((b - x) * (x - a)) / (2 * math.pi * sigma**2 * x / q))
        return float(np.sum((mp - y) ** 2))

    s = math.sqrt(scaled.max() / (1 + 1 / math.sqrt(q)) ** 2)
    grid = np.arange(0.05 * s, 2.0 * s, 0.01 * s)
    start = grid[int(np.argmin([resid(g) for g in grid]))]
    sigma = optimize.fmin(resid, start, disp=False)[0]
    fit = rmt.mp_fit(evals, (n, m))
    assert fit is not None
    assert fit.sigma == pytest.approx(sigma, rel=1e-6)


def test_undefined_fit() -> None:
    assert rmt.mp_fit(np.zeros(10), (20, 10)) is None
    assert rmt.mp_fit(np.array([]), (0, 10)) is None


def test_randomization_is_seeded_and_keeps_the_norm() -> None:
    rng = np.random.default_rng(5)
    w = rng.standard_normal((80, 50))
    evals = np.linalg.svd(w, compute_uv=False) ** 2
    a = rmt.randomized_esd(w, evals, rmt.layer_rng(7, "layers.0.q_proj.weight"))
    b = rmt.randomized_esd(w, evals, rmt.layer_rng(7, "layers.0.q_proj.weight"))
    c = rmt.randomized_esd(w, evals, rmt.layer_rng(8, "layers.0.q_proj.weight"))
    assert a == b
    assert a.rand_distance != c.rand_distance
    draws = rmt.randomized_eigenvalues(w, rmt.layer_rng(7, "x"), 2)
    for draw in draws:  # a permutation keeps ‖W‖_F² = Σλ
        assert draw.sum() == pytest.approx(evals.sum(), rel=1e-12)
    assert not np.array_equal(draws[0], draws[1])
    # layers' generators differ by name and do not depend on other layers
    first = rmt.layer_rng(7, "a").random(3)
    assert not np.array_equal(first, rmt.layer_rng(7, "b").random(3))
    assert np.array_equal(first, rmt.layer_rng(7, "a").random(3))


def test_a_large_element_is_a_trap() -> None:
    """Permuting a Gaussian W leaves a Gaussian W: no trap, a small distance. One huge element
    survives any permutation as a rank-one spike of the randomized W: a correlation trap."""
    rng = np.random.default_rng(6)
    w = rng.standard_normal((400, 200))
    evals = np.linalg.svd(w, compute_uv=False) ** 2
    clean = rmt.randomized_esd(w, evals, rmt.layer_rng(0, "w"))
    assert clean.num_traps == 0
    assert clean.rand_distance is not None and clean.rand_distance < 0.05
    w[3, 7] = 200.0
    evals = np.linalg.svd(w, compute_uv=False) ** 2
    trapped = rmt.randomized_esd(w, evals, rmt.layer_rng(0, "w"))
    assert trapped.num_traps == 1
    assert trapped.max_rand_eval == pytest.approx(200.0**2, rel=0.05)


def test_small_layers_pool_five_replicas() -> None:
    """Below 100 eigenvalues WeightWatcher pools 5 randomizations for the traps' fit."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((90, 30))
    evals = np.linalg.svd(w, compute_uv=False) ** 2
    pooled = rmt.randomized_eigenvalues(w, rmt.layer_rng(1, "w"), rmt.SMALL_LAYER_REPLICAS)
    result = rmt.randomized_esd(w, evals, rmt.layer_rng(1, "w"))
    assert result.max_rand_eval == pytest.approx(max(float(d.max()) for d in pooled), rel=1e-12)


def test_the_callers_svd_gives_the_same_draws() -> None:
    """The engine passes its own SVD; the permutations, hence the values, are the same."""
    rng = np.random.default_rng(9)
    w = rng.standard_normal((120, 70))
    evals = np.linalg.svd(w, compute_uv=False) ** 2
    a = rmt.randomized_esd(w, evals, rmt.layer_rng(2, "w"))
    b = rmt.randomized_esd(
        w, evals, rmt.layer_rng(2, "w"), lambda m: np.linalg.svd(m, compute_uv=False)
    )
    assert a.num_traps == b.num_traps
    assert a.rand_distance == pytest.approx(b.rand_distance, rel=1e-9)
    assert a.max_rand_eval == pytest.approx(b.max_rand_eval, rel=1e-12)
