"""WeightWatcher 0.7.7's random-matrix metrics: its fitted Marchenko–Pastur bulk (``mp_fit``)
and its randomized ESD (``randomize``), transcribed in numpy/scipy (no torch, no sklearn).

Followed line by line from ``weightwatcher`` 0.7.7 (PyPI wheel):

* :func:`mp_fit` is ``WeightWatcher.mp_fit`` (``weightwatcher.py``): the eigenvalues rescaled to
  mean 1 (``Wscale² = len(evals)/Σλ``), σ_mp fitted by ``RMT_Util.fit_density_with_range`` (a
  brute-force grid over σ, polished by ``scipy.optimize.fmin``, minimizing ``RMT_Util.resid_mp``:
  the squared distance between the MP density and a linear-kernel KDE of bandwidth 0.1, the
  quarter-circle law of the singular values when Q = 1), the bulk edge λ₊ = (σ(1 + 1/√Q))², the
  spikes those λ above λ₊ + √TW (TW = Q^{-1/2}·λ₊^{2/3}·M^{-2/3}), ``mp_softrank`` = λ₊/λ_max.
* :func:`randomized_eigenvalues` is ``WeightWatcher.random_eigenvalues``: the eigenvalues of W
  with its elements permuted at random (``np.random.shuffle`` of the flattened W), 5 replicas
  pooled when the layer has fewer than 100 eigenvalues (``apply_random_esd``).
* :func:`jensen_shannon_distance` is ``RMT_Util.jensen_shannon_distance`` (the two sorted
  eigenvalue vectors taken as distributions, as ``scipy.stats.entropy`` normalizes them).
* :func:`randomized_esd`: ``rand_distance`` (that distance between the ESD and the randomized
  one), ``num_traps`` (WeightWatcher's ``rand_num_spikes``: the spikes of ``mp_fit`` applied to
  the randomized eigenvalues, correlation traps) and ``max_rand_eval``.

The KDE is sklearn's ``KernelDensity(kernel='linear')`` evaluated exactly (density
(1/(n h))·Σ max(0, 1 − |x − xᵢ|/h)); it does not depend on σ, so it is computed once per fit.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

#: ``resid_mp``'s KDE bandwidth (``fit_density_with_range(bw=0.1)``).
BANDWIDTH = 0.1
#: ``resid_mp`` drops the grid points where the KDE is below this.
DENSITY_THRESH = 0.01
#: ``resid_mp`` evaluates the KDE on this many points of [0, max + 0.5].
GRID_POINTS = 1000
#: ``apply_random_esd`` pools this many randomizations when a layer has < 100 eigenvalues.
SMALL_LAYER_REPLICAS = 5
SMALL_LAYER_EVALS = 100


@dataclass(frozen=True)
class MPFit:
    """WeightWatcher's Marchenko–Pastur fit of one ESD.

    ``sigma`` is σ_mp of the rescaled ESD (mean eigenvalue 1); ``bulk_max``/``bulk_min`` the
    fitted edges in the units of the eigenvalues given (``bulk_max``/``Wscale²``, as WeightWatcher
    reports them); ``num_spikes`` the eigenvalues above the edge plus its Tracy–Widom allowance;
    ``mp_softrank`` λ₊/λ_max (rescaled, so scale free).
    """

    sigma: float
    bulk_max: float
    bulk_min: float
    num_spikes: int
    mp_softrank: float
    w_scale: float


def linear_kde(data: np.ndarray, points: np.ndarray, bandwidth: float) -> np.ndarray:
    """sklearn's ``KernelDensity(kernel='linear', bandwidth=h).score_samples`` exponentiated:
    (1/(n h))·Σᵢ max(0, 1 − |x − xᵢ|/h), evaluated exactly at every point."""
    import numpy as np

    data = np.sort(np.asarray(data, dtype=np.float64))
    points = np.asarray(points, dtype=np.float64)
    low = np.searchsorted(data, points - bandwidth, side="right")
    high = np.searchsorted(data, points + bandwidth, side="left")
    out = np.zeros(points.shape)
    for k in np.flatnonzero(high > low):
        near = data[low[k] : high[k]]
        out[k] = float(np.sum(1.0 - np.abs(points[k] - near) / bandwidth))
    return out / (data.size * bandwidth)


def _marchenko_pastur(x: np.ndarray, q: float, sigma: float) -> tuple[np.ndarray, float, float]:
    """``RMT_Util.marchenko_pastur_fun``: the MP density (NaN outside the support → 0)."""
    import numpy as np

    y = 1 / q
    b = np.power(sigma * (1 + np.sqrt(1 / q)), 2)
    a = np.power(sigma * (1 - np.sqrt(1 / q)), 2)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        val = np.nan_to_num((1 / (2 * np.pi * sigma * sigma * x * y)) * np.sqrt((b - x) * (x - a)))
    return val, float(a), float(b)


def _quarter_circle(x: np.ndarray, sigma: float) -> np.ndarray:
    """``RMT_Util.quarter_circle_fun`` (σ scales the height only, as there)."""
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.nan_to_num((1 / (np.pi * sigma * sigma)) * np.sqrt(4 - x**2))


class _Residual:
    """``RMT_Util.resid_mp(..., allresid=False)`` for one ESD: the KDE computed once."""

    def __init__(self, to_fit: np.ndarray, q: float, bandwidth: float) -> None:
        import numpy as np

        xde = np.linspace(0, np.max(to_fit) + 0.5, GRID_POINTS)
        yde = linear_kde(to_fit, xde, bandwidth)
        good = np.where(yde > DENSITY_THRESH)[0]
        self.x, self.y, self.q = xde[good], yde[good], q
        self.peak_x = float(self.x[np.where(self.y == np.max(self.y))[0][0]]) if good.size else 0.0

    def __call__(self, p: np.ndarray | float) -> float:
        import numpy as np

        sigma = float(np.asarray(p).reshape(-1)[0])
        if self.x.size == 0:
            return 0.0
        if self.q == 1:
            resid = _quarter_circle(self.x, sigma) - self.y
        else:
            ymp, a, b = _marchenko_pastur(self.x, self.q, sigma)
            if (b < self.peak_x) | (b > float(np.max(self.x))) | (a > self.peak_x):
                resid = np.zeros(len(self.y)) + 1000
            else:
                resid = ymp - self.y
        return float(np.sum(resid**2))


def fit_sigma(to_fit: np.ndarray, q: float, lambda_max: float) -> float:
    """``RMT_Util.fit_density_with_range``: ``scipy.optimize.brute`` over σ in
    [0.05 s, 2 s) by 0.01 s (s = √(λ_max/(1 + 1/√Q)²), ``calc_sigma``), finished by ``fmin``."""
    import warnings

    from scipy import optimize

    scale = math.sqrt(lambda_max / (1.0 + 1.0 / math.sqrt(q)) ** 2)
    ranges = (slice(0.05 * scale, 2.0 * scale, 0.01 * scale),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        best = optimize.brute(_Residual(to_fit, q, BANDWIDTH), ranges, full_output=True)
    return float(best[0][0])


def mp_fit(eigenvalues: np.ndarray, shape: tuple[int, int]) -> MPFit | None:
    """WeightWatcher's ``mp_fit`` of the eigenvalues of an m×n W (N = max, M = min, Q = N/M).

    None for a zero or non-finite spectrum (WeightWatcher logs a warning and reports −1 there).
    """
    import numpy as np

    evals = np.asarray(eigenvalues, dtype=np.float64)
    big, small = max(shape), min(shape)
    total = float(np.sum(evals))
    if evals.size == 0 or small == 0 or not total > 0 or not math.isfinite(total):
        return None
    q = big / small
    w_scale = math.sqrt(evals.shape[0]) / math.sqrt(total)
    to_plot = (w_scale * w_scale) * evals
    lambda_max = float(np.max(to_plot))
    to_fit = np.sqrt(to_plot) if q == 1 else to_plot
    sigma = fit_sigma(to_fit, q, lambda_max)
    bulk_max = (sigma * (1 + 1 / math.sqrt(q))) ** 2
    bulk_min = (sigma * (1 - 1 / math.sqrt(q))) ** 2
    tw = 1 / math.sqrt(q) * bulk_max ** (2 / 3) * small ** (-2 / 3)
    bulk_max_tw = bulk_max + math.sqrt(tw)
    return MPFit(
        sigma=sigma,
        bulk_max=bulk_max / (w_scale * w_scale),
        bulk_min=bulk_min / (w_scale * w_scale),
        num_spikes=int(np.count_nonzero(to_plot > bulk_max_tw)),
        mp_softrank=bulk_max / lambda_max,
        w_scale=w_scale,
    )


def jensen_shannon_distance(p: np.ndarray, q: np.ndarray) -> float:
    """``RMT_Util.jensen_shannon_distance``: √((KL(p‖m) + KL(q‖m))/2), m = (p + q)/2, each
    vector normalized to sum 1 (``scipy.stats.entropy``), natural logarithms."""
    import numpy as np
    from scipy.special import rel_entr

    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    m = (p + q) / 2

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.sum(rel_entr(a / np.sum(a), b / np.sum(b))))

    # ≥ 0 in exact arithmetic; rounding can leave −1e-17 for equal distributions, where
    # WeightWatcher's np.sqrt returns NaN: sncli returns 0.
    return math.sqrt(max(0.0, (kl(p, m) + kl(q, m)) / 2))


def layer_rng(seed: int, name: str) -> np.random.Generator:
    """The generator of one layer's randomizations: from ``seed`` and the layer's name (CRC-32),
    so a layer's result depends on neither the order nor the set of layers analysed."""
    import numpy as np

    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode())])


#: Singular values of a float64 matrix (any order): the caller's SVD.
SingularValues = Callable[["np.ndarray"], "np.ndarray"]


def _lapack_svdvals(matrix: np.ndarray) -> np.ndarray:
    import scipy.linalg

    return scipy.linalg.svdvals(matrix, check_finite=False)


def randomized_eigenvalues(
    matrix: np.ndarray,
    rng: np.random.Generator,
    replicas: int = 1,
    svdvals: SingularValues | None = None,
) -> list[np.ndarray]:
    """Per replica, the eigenvalues σ² (ascending) of ``matrix`` with its elements permuted at
    random. ``svdvals``: the SVD to use (default float64 LAPACK ``gesdd`` via scipy, whose own
    BLAS threads oversubscribe beside parallel workers: sncli's engine passes its own)."""
    import numpy as np

    svd = svdvals or _lapack_svdvals
    flat = np.asarray(matrix, dtype=np.float64).reshape(-1)
    out = []
    for _ in range(replicas):
        shuffled = rng.permutation(flat).reshape(matrix.shape)
        sigma = np.asarray(svd(shuffled), dtype=np.float64)
        out.append(np.sort(sigma * sigma))
    return out


@dataclass(frozen=True)
class RandomizedESD:
    """WeightWatcher's randomized-ESD metrics of one layer (see the module docstring)."""

    rand_distance: float | None
    num_traps: int | None
    max_rand_eval: float


def randomized_esd(
    matrix: np.ndarray,
    eigenvalues: np.ndarray,
    rng: np.random.Generator,
    svdvals: SingularValues | None = None,
) -> RandomizedESD:
    """``apply_random_esd`` and ``apply_mp_fit(random=True)`` on one m×n ``matrix`` whose
    eigenvalues (σ², any order) are ``eigenvalues``.

    WeightWatcher draws one set of replicas for the traps and ``max_rand_eval`` and a fresh
    single permutation for ``rand_distance``; sncli uses the first replica for the distance (the
    same distribution, one SVD fewer).
    """
    import numpy as np

    evals = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    replicas = SMALL_LAYER_REPLICAS if evals.size < SMALL_LAYER_EVALS else 1
    draws = randomized_eigenvalues(matrix, rng, replicas, svdvals)
    pooled = np.sort(np.concatenate(draws))
    fit = mp_fit(pooled, matrix.shape)
    distance = None
    if evals.size and float(np.sum(evals)) > 0:
        distance = jensen_shannon_distance(evals, draws[0])
    return RandomizedESD(
        rand_distance=distance,
        num_traps=None if fit is None else fit.num_spikes,
        max_rand_eval=float(np.max(pooled)) if pooled.size else 0.0,
    )
