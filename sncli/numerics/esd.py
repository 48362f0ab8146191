"""Metrics of a layer's singular-value spectrum: ranks, norms and WeightWatcher's ESD metrics.

Everything here is a pure function of the singular values σ₁ ≥ … ≥ σ_k ≥ 0 of one m×n matrix
(k = min(m, n)), as float64 numpy arrays, so it is tested against closed forms on its own.

* ``stable_rank`` ‖W‖_F²/σ₁²; ``effective_rank`` (Roy & Vetterli 2007) exp(−Σ pᵢ ln pᵢ),
  pᵢ = σᵢ/Σσ; ``numerical_rank`` #σᵢ > tol, tol = σ₁·max(m, n)·ε (numpy's ``matrix_rank``
  rule, with the ε the caller passes: sncli passes the stored dtype's).
* WeightWatcher 0.7.x's metrics on the eigenvalues λᵢ = σᵢ² of WᵀW (not normalized): the
  power-law tail fit (:func:`fit_power_law`, its ``WW_powerlaw.WWFit``), ``log_alpha_norm``,
  ``alpha_weighted`` and the matrix entropy (:func:`ww_entropy`, its ``RMT_Util.matrix_entropy``).
* AlphaPruning's ``PL_Alpha_Hill`` (:func:`alpha_hill`): the Hill estimate of the tail exponent
  with xmin fixed at the median eigenvalue, the per-layer number behind AlphaPruning's sparsity
  allocation.
* Spectrum's layer signal-to-noise ratio (:func:`spectrum_snr`), by which its authors choose
  the layers to unfreeze.
* A Marchenko–Pastur bulk edge (:func:`mp_edge`): the largest eigenvalue a random matrix of the
  same shape and the same ‖W‖_F would have, and the number of λ above it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

#: WeightWatcher fits the power law to the eigenvalues above this (``EVALS_THRESH``, absolute).
EVALS_THRESH = 1e-5
#: Below this many fitted eigenvalues WeightWatcher switches to its small-n rule.
SMALL_N_CUTOFF = 20
#: The small-n rule only considers tails of at least this many eigenvalues (``k_min``).
SMALL_N_MIN_TAIL = 8
#: WeightWatcher skips layers with fewer eigenvalues than this (``DEFAULT_MIN_EVALS``); sncli
#: computes every other metric for them but no power-law fit.
MIN_EVALS = 8
#: The ε WeightWatcher adds to p and to the rank in its entropy (``EPSILON``, float64 runs).
WW_ENTROPY_EPSILON = 1e-10


@dataclass(frozen=True)
class PowerLawFit:
    """WeightWatcher's power-law fit of the eigenvalue tail λ ≥ ``xmin``.

    ``alpha`` is the MLE exponent of p(λ) ∝ λ^−α on the tail, ``ks_distance`` the
    Kolmogorov–Smirnov distance D between the tail and the fitted law, ``tail`` the number of
    fitted eigenvalues (λ ≥ xmin among those > 1e-5), ``fitted`` how many eigenvalues were above
    1e-5, ``small_n`` whether WeightWatcher's small-n rule chose the fit.
    """

    alpha: float
    xmin: float
    ks_distance: float
    tail: int
    fitted: int
    small_n: bool


def _as_sorted(values: np.ndarray) -> np.ndarray:
    import numpy as np

    return np.sort(np.asarray(values, dtype=np.float64))[::-1]


def frobenius(sigma: np.ndarray) -> float:
    """‖W‖_F = √Σσᵢ² (scaled, so that huge or tiny σ neither overflow nor underflow)."""
    import numpy as np

    top = float(np.max(sigma, initial=0.0))
    if top == 0.0:
        return 0.0
    return top * float(np.sqrt(np.sum((np.asarray(sigma) / top) ** 2)))


def stable_rank(sigma: np.ndarray) -> float | None:
    """‖W‖_F²/σ₁² (in [1, rank]); None for the zero matrix."""
    import numpy as np

    top = float(np.max(sigma, initial=0.0))
    if top == 0.0:
        return None
    return float(np.sum((np.asarray(sigma) / top) ** 2))


def effective_rank(sigma: np.ndarray) -> float | None:
    """Roy & Vetterli's effective rank exp(H(p)), pᵢ = σᵢ/Σσ, 0·ln 0 = 0; None for zero W."""
    import numpy as np

    sigma = np.asarray(sigma, dtype=np.float64)
    total = float(np.sum(sigma))
    if total == 0.0:
        return None
    p = sigma[sigma > 0] / total
    p = p[p > 0]  # a subnormal σ over a large total underflows to 0 (0·ln 0 = 0, not NaN)
    return float(np.exp(-np.sum(p * np.log(p))))


def rank_tolerance(sigma_max: float, shape: tuple[int, int], eps: float) -> float:
    """numpy's ``matrix_rank`` threshold σ₁·max(m, n)·ε."""
    return sigma_max * max(shape) * eps


def numerical_rank(sigma: np.ndarray, shape: tuple[int, int], eps: float) -> int:
    """The number of σᵢ above ``rank_tolerance`` (σ₁·max(m, n)·ε)."""
    import numpy as np

    sigma = np.asarray(sigma, dtype=np.float64)
    if sigma.size == 0:
        return 0
    return int(np.count_nonzero(sigma > rank_tolerance(float(sigma.max()), shape, eps)))


def ww_entropy(sigma: np.ndarray, shape: tuple[int, int]) -> float | None:
    """WeightWatcher's matrix entropy −Σ p ln p / ln r, p = σ²/Σσ² + 1e-10, r = rank + 1e-10.

    The rank is numpy's ``matrix_rank`` rule with float64's ε (WeightWatcher computes in
    float64) and N = max(m, n). 1 for an orthogonal matrix; None for the zero matrix.
    """
    import numpy as np

    sigma = np.asarray(sigma, dtype=np.float64)
    lam = sigma * sigma
    total = float(np.sum(lam))
    if total == 0.0 or not math.isfinite(total):
        return None
    rank = numerical_rank(sigma, shape, float(np.finfo(np.float64).eps)) + WW_ENTROPY_EPSILON
    p = lam / total + WW_ENTROPY_EPSILON
    return float(-np.sum(p * np.log(p)) / np.log(rank))


def mp_edge(frobenius_sq: float, shape: tuple[int, int]) -> float:
    """λ₊ = s²(√m + √n)², s² = ‖W‖_F²/(mn): the upper edge of the Marchenko–Pastur law of WᵀW
    for an m×n matrix of i.i.d. entries with the same mean square as W (a null model: spikes'
    own energy raises s², so the edge is conservative, never lower than the bulk's)."""
    m, n = shape
    if m == 0 or n == 0:
        return 0.0
    return frobenius_sq / (m * n) * (math.sqrt(m) + math.sqrt(n)) ** 2


def alpha_hill(eigenvalues: np.ndarray) -> float | None:
    """AlphaPruning's ``PL_Alpha_Hill``: α = 1 + n/Σ_{j≥i} ln(λⱼ/λᵢ), xmin = λᵢ the median.

    Transcribes ``net_esd_estimator(fix_fingers='xmin_mid')`` of AlphaPruning
    (github.com/haiquanlu/AlphaPruning, ``lib/esd_utils.py``, the metric ``alpha_mid`` that
    ``get_esd_metrics`` computes): the eigenvalues λ = σ² of WᵀW, not normalized and not
    filtered (its default ``filter_zeros=False``), sorted ascending; i = ⌊N/2⌋ (``xmin_pos=2``),
    n = N − i, α = 1 + n/(Σ_{j≥i} ln λⱼ − n·ln λᵢ). AlphaPruning takes float32 singular values;
    sncli passes its float64 ones. Scale invariant (λ → cλ leaves α unchanged). None with fewer
    than two eigenvalues, a zero median (ln 0) or a constant upper half (α = ∞).
    """
    import numpy as np

    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    count = lam.size
    if count < 2:
        return None
    index = count // 2  # int(len(nz_eigs) / xmin_pos), xmin_pos = 2
    if not lam[index] > 0:
        return None
    n = float(count - index)
    logs = np.log(lam[index:])
    denominator = float(np.sum(logs)) - n * float(logs[0])
    if not denominator > 0:
        return None
    value = 1.0 + n / denominator
    return value if math.isfinite(value) else None


def spectrum_snr(sigma: np.ndarray, shape: tuple[int, int]) -> float | None:
    """The "Spectrum" SNR of a layer (Hartford et al. 2024), as its code computes it.

    Transcribes ``ModelModifier.calculate_snr_for_layer`` of github.com/cognitivecomputations/
    spectrum (``spectrum.py``): σ_est = (q₇₅ − q₂₅)/1.349 over the singular values (linear
    quantiles, ``torch.quantile``), threshold σ_est·(1 + √β) with β = min(m, n)/max(m, n)
    (``_marchenko_pastur_threshold``), SNR = Σσ above the threshold / Σσ at or below it, and
    the reported value that SNR divided by σ_max (``snr_ratio``). Not scale invariant (÷ σ_max).
    None when no σ is at or below the threshold (Spectrum: ∞) or for the zero matrix.
    """
    import numpy as np

    sigma = np.asarray(sigma, dtype=np.float64)
    m, n = shape
    if sigma.size == 0 or m == 0 or n == 0:
        return None
    top = float(np.max(sigma))
    if top == 0.0:
        return None
    q75, q25 = np.quantile(sigma, [0.75, 0.25])
    beta = n / m if n < m else m / n
    threshold = (q75 - q25) / 1.349 * math.sqrt((1 + math.sqrt(beta)) ** 2)
    noise = float(np.sum(sigma[sigma <= threshold]))
    if noise == 0.0:
        return None
    signal = float(np.sum(sigma[sigma > threshold]))
    return signal / noise / top


#: Candidate xmins evaluated at once by ``_standard_fit`` (a block × N array of float64).
FIT_BLOCK = 64


def _standard_fit(data: np.ndarray) -> tuple[int, float, float]:
    """WWFit.fit_power_law_standard on ascending ``data``: (index of xmin, α, D).

    Vectorized over blocks of candidates; (λⱼ/λᵢ)^(1−α) is evaluated as exp((1−α)·ln(λⱼ/λᵢ)),
    equal to WeightWatcher's power to rounding.
    """
    import numpy as np

    count = data.size
    logs = np.log(data)
    suffix = np.cumsum(logs[::-1])[::-1]
    first = np.arange(count - 1)
    n = (count - first).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        alphas = 1.0 + n / (suffix[:-1] - n * logs[:-1])  # inf for a constant tail
        ds = np.ones(count - 1)
        for start in range(0, count - 1, FIT_BLOCK):
            rows = first[start : start + FIT_BLOCK]
            offset = np.arange(start, count)[None, :] - rows[:, None]  # k = j − i
            diff = logs[None, start:] - logs[rows][:, None]
            power = np.where(diff == 0.0, 1.0, np.exp((1.0 - alphas[rows])[:, None] * diff))
            deviation = np.abs(1.0 - power - offset / n[rows][:, None])
            deviation[offset < 0] = 0.0
            ds[rows] = np.where(alphas[rows] > 1, deviation.max(axis=1), 1.0)
    best = int(np.argmin(ds))
    return best, float(alphas[best]), float(ds[best])


def _small_n_fit(data: np.ndarray) -> tuple[int, float, float]:
    """WWFit.fit_powerlaw_smallN (k_min = 8, no prior): bias-corrected α = 1 + (n−1)/Σ ln(λ/xmin),
    xmin minimizing J = D − 0.868/√n over tails of ≥ 8; all the data when none qualifies."""
    import numpy as np

    count = data.size
    logs = np.log(data)
    best, best_alpha, best_d, best_j = -1, math.nan, 1.0, math.inf
    for i in range(count - 1):
        n_int = count - i
        if n_int < SMALL_N_MIN_TAIL:
            continue
        n = float(n_int)
        s = float(np.sum(logs[i:])) - n * float(logs[i])
        if s <= 1e-12:
            continue
        alpha = 1.0 + (n - 1.0) / s
        if alpha <= 1.0:
            continue
        d = float(
            np.max(np.abs(np.arange(n_int) / n - (1.0 - (data[i:] / data[i]) ** (1 - alpha))))
        )
        j = d - 0.868 / math.sqrt(n)
        if j < best_j:
            best, best_alpha, best_d, best_j = i, alpha, d, j
    if best >= 0:
        return best, best_alpha, best_d
    n = float(count)
    s = float(np.sum(logs)) - n * float(logs[0])
    if s <= 1e-12:
        # WeightWatcher reports its "pathological case" defaults α = 1, D = 1 here (a constant
        # spectrum): not a fit, so sncli reports none.
        return 0, math.nan, 1.0
    alpha = 1.0 + (n - 1.0) / s
    d = float(np.max(np.abs(np.arange(count) / n - (1.0 - (data / data[0]) ** (1 - alpha)))))
    return 0, alpha, d


def fit_power_law(eigenvalues: np.ndarray) -> PowerLawFit | None:
    """WeightWatcher 0.7.x's power-law fit of an ESD (``WW_powerlaw.WWFit``, its default).

    Takes the eigenvalues > 1e-5 in ascending order; for every candidate xmin = λᵢ but the
    largest, the MLE α = 1 + n/Σ_{j≥i} ln(λⱼ/λᵢ) (n = number of λ ≥ λᵢ) and the KS distance
    D = max_k |1 − (λ_{i+k}/λᵢ)^{1−α} − k/n|; the xmin with the smallest D wins. Below 20
    such eigenvalues WeightWatcher's small-n rule decides instead (:func:`_small_n_fit`).
    None when fewer than two eigenvalues exceed 1e-5 (WeightWatcher's fit fails there).
    """
    import numpy as np

    lam = np.asarray(eigenvalues, dtype=np.float64)
    data = np.sort(lam[lam > EVALS_THRESH])
    if data.size < 2:
        return None
    small = data.size < SMALL_N_CUTOFF
    index, alpha, d = (_small_n_fit if small else _standard_fit)(data)
    if not math.isfinite(alpha):
        return None
    xmin = float(data[index])
    return PowerLawFit(
        alpha=alpha,
        xmin=xmin,
        ks_distance=d,
        tail=int(data.size - index),
        fitted=int(data.size),
        small_n=small,
    )


@dataclass(frozen=True)
class SpectrumMetrics:
    """Every metric of one singular-value spectrum (see the module docstring).

    ``None`` where a metric is undefined (the zero matrix; no power-law fit below
    ``MIN_EVALS`` eigenvalues or when it fails).
    """

    sigma_max: float
    sigma_min: float
    condition_number: float | None
    frobenius: float
    nuclear: float
    stable_rank: float | None
    effective_rank: float | None
    numerical_rank: int
    rank_tolerance: float
    lambda_max: float
    log_norm: float | None
    log_spectral_norm: float | None
    alpha: float | None
    xmin: float | None
    ks_distance: float | None
    num_pl_spikes: int | None
    alpha_weighted: float | None
    log_alpha_norm: float | None
    entropy: float | None
    mp_edge: float
    mp_spikes: int
    small_n_fit: bool = False
    alpha_hill: float | None = None
    snr: float | None = None


def _log10(value: float) -> float | None:
    return math.log10(value) if value > 0 and math.isfinite(value) else None


def spectrum_metrics(sigma: np.ndarray, shape: tuple[int, int], eps: float) -> SpectrumMetrics:
    """All metrics of the full spectrum ``sigma`` (min(m, n) values) of an m×n matrix.

    ``eps`` is the machine epsilon that ``numerical_rank`` uses (sncli: the stored dtype's).
    """
    import numpy as np

    sigma = _as_sorted(sigma)
    if sigma.size != min(shape):
        raise ValueError(f"expected {min(shape)} singular values, got {sigma.size}")
    top = float(sigma[0]) if sigma.size else 0.0
    low = float(sigma[-1]) if sigma.size else 0.0
    fro = frobenius(sigma)
    lam = sigma * sigma
    lambda_max = top * top
    fit = fit_power_law(lam) if sigma.size >= MIN_EVALS else None
    alpha = None if fit is None else fit.alpha
    log_alpha_norm = None
    if alpha is not None:
        with np.errstate(over="ignore"):
            log_alpha_norm = _log10(float(np.sum(lam**alpha)))
    log_spectral = _log10(lambda_max)
    edge = mp_edge(fro * fro, shape)
    return SpectrumMetrics(
        sigma_max=top,
        sigma_min=low,
        condition_number=top / low if low > 0 else None,
        frobenius=fro,
        nuclear=float(np.sum(sigma)),
        stable_rank=stable_rank(sigma),
        effective_rank=effective_rank(sigma),
        numerical_rank=numerical_rank(sigma, shape, eps),
        rank_tolerance=rank_tolerance(top, shape, eps),
        lambda_max=lambda_max,
        log_norm=_log10(fro * fro),
        log_spectral_norm=log_spectral,
        alpha=alpha,
        xmin=None if fit is None else fit.xmin,
        ks_distance=None if fit is None else fit.ks_distance,
        num_pl_spikes=None if fit is None else int(np.count_nonzero(lam >= fit.xmin)),
        alpha_weighted=None if alpha is None or log_spectral is None else alpha * log_spectral,
        log_alpha_norm=log_alpha_norm,
        entropy=ww_entropy(sigma, shape),
        mp_edge=edge,
        mp_spikes=int(np.count_nonzero(lam > edge)) if top > 0 else 0,
        small_n_fit=fit is not None and fit.small_n,
        alpha_hill=alpha_hill(lam),
        snr=spectrum_snr(sigma, shape),
    )


@dataclass(frozen=True)
class PartialMetrics:
    """What the K largest singular values and ‖W‖_F still determine (``--top-k``).

    ``mp_spikes`` is exact only when the K-th λ is at or below the edge (else None: there may be
    more spikes than K); the other full-spectrum metrics are not defined from a partial spectrum.
    """

    sigma_max: float
    frobenius: float
    stable_rank: float | None
    lambda_max: float
    log_norm: float | None
    log_spectral_norm: float | None
    mp_edge: float
    mp_spikes: int | None


def partial_metrics(
    top: np.ndarray, frobenius_norm: float, shape: tuple[int, int]
) -> PartialMetrics:
    """Metrics from the K largest singular values ``top`` and the Frobenius norm of W."""
    import numpy as np

    top = _as_sorted(top)
    sigma_max = float(top[0]) if top.size else 0.0
    fro_sq = frobenius_norm * frobenius_norm
    edge = mp_edge(fro_sq, shape)
    lam = top * top
    above = int(np.count_nonzero(lam > edge))
    complete = top.size == min(shape) or (top.size > 0 and float(lam[-1]) <= edge)
    return PartialMetrics(
        sigma_max=sigma_max,
        frobenius=frobenius_norm,
        stable_rank=fro_sq / sigma_max**2 if sigma_max > 0 else None,
        lambda_max=sigma_max * sigma_max,
        log_norm=_log10(fro_sq),
        log_spectral_norm=_log10(sigma_max * sigma_max),
        mp_edge=edge,
        mp_spikes=(above if complete else None) if sigma_max > 0 else 0,
    )
