"""``spectrum_snr`` (the "Spectrum" paper's layer SNR) against a torch transcription of
``ModelModifier.calculate_snr_for_layer`` (cognitivecomputations/spectrum, spectrum.py) and a
closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sncli.numerics.esd import spectrum_snr


def spectrum_code(weights: torch.Tensor) -> float:
    """Spectrum's own lines (float64 here): svdvals, IQR σ, MP threshold, Σ above / Σ below,
    divided by the largest singular value."""
    s = torch.linalg.svdvals(weights)
    max_singular_value = s[0]
    q75, q25 = torch.quantile(s, torch.tensor([0.75, 0.25], dtype=s.dtype))
    sigma_estimated = (q75 - q25) / 1.349
    n, m = weights.shape[-2:]
    beta = n / m if n < m else m / n
    mp_threshold = sigma_estimated * np.sqrt((1 + np.sqrt(beta)) ** 2)
    signal = s[s > mp_threshold].sum()
    noise = s[s <= mp_threshold].sum()
    snr = signal / noise if noise != 0 else float("inf")
    return float(snr / max_singular_value)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (50, 50), (200, 30)])
def test_matches_the_reference_code(seed: int, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape) / np.sqrt(max(shape))
    w[:, :3] *= 4  # a few strong directions above a bulk
    w += 3 * np.outer(rng.standard_normal(shape[0]), rng.standard_normal(shape[1])) / max(shape)
    sigma = np.linalg.svd(w, compute_uv=False)
    expected = spectrum_code(torch.from_numpy(w))
    if expected == float("inf"):  # no σ at or below the threshold: sncli reports null
        assert spectrum_snr(sigma, shape) is None
    else:
        assert spectrum_snr(sigma, shape) == pytest.approx(expected, rel=1e-10)


def test_closed_form() -> None:
    """σ = 1…8 of an 8×16 matrix: q75 = 6.25, q25 = 2.75 (linear), σ_est = 3.5/1.349, threshold
    σ_est·(1 + √½) ≈ 4.43: noise 1+2+3+4, signal 5+6+7+8, SNR 2.6, ÷ σ_max 8 = 0.325."""
    sigma = np.arange(8, 0, -1, dtype=np.float64)
    assert spectrum_snr(sigma, (8, 16)) == pytest.approx(0.325, rel=1e-14)
    assert spectrum_snr(sigma, (16, 8)) == pytest.approx(0.325, rel=1e-14)  # β = min/max


def test_undefined() -> None:
    assert spectrum_snr(np.zeros(5), (5, 5)) is None  # zero matrix
    assert spectrum_snr(np.array([3.0, 2.9, 2.8, 2.7]), (4, 8)) is None  # no σ below: Spectrum ∞
    assert spectrum_snr(np.array([]), (0, 3)) is None
