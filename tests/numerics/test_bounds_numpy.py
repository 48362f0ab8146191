"""sncli.numerics.bounds_numpy's certified interval and Gram iteration (NumPy, no torch): proven
sides around float64 LAPACK's σ_max, and the numbers torch's :mod:`sncli.numerics.bounds` gives.

The NumPy twin runs the same steps from the same start vector, so the intervals agree to
float64 rounding (1e-13 relative allowed; measured ≤ 2.3e-16) and name the same methods."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sncli.errors import NumericalError
from sncli.numerics import bounds_numpy
from sncli.numerics.bounds import gram_iteration_upper_bound, sigma_interval
from sncli.numerics.bounds_numpy import gram_iteration_upper_bound_array

SHAPES = [(24, 40), (300, 270), (5, 3), (140, 400), (1, 7), (9, 1)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_interval_encloses_lapack_and_equals_torch(shape: tuple[int, int], dtype: type) -> None:
    rng = np.random.default_rng(sum(shape))
    matrix = (rng.standard_normal(shape) * rng.uniform(0.01, 50.0)).astype(dtype)
    free = sigma_interval(matrix, seed=3)  # a NumPy array: bounds_numpy.sigma_interval_array
    truth = float(np.linalg.svd(matrix.astype(np.float64), compute_uv=False)[0])
    assert free.lower <= truth * (1 + 1e-15) and truth <= free.upper
    assert free.relative_width < 1e-6
    reference = sigma_interval(torch.from_numpy(matrix), seed=3)
    assert free.lower == pytest.approx(reference.lower, rel=1e-13)
    assert free.upper == pytest.approx(reference.upper, rel=1e-13)
    assert (free.lower_method, free.upper_method) == (
        reference.lower_method,
        reference.upper_method,
    )


def test_dispatch_and_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """``sigma_interval`` on a NumPy array runs the NumPy twin; the zero matrix is [0, 0]."""
    calls = []
    twin = bounds_numpy.sigma_interval_array
    monkeypatch.setattr(
        bounds_numpy, "sigma_interval_array", lambda *a, **k: calls.append(1) or twin(*a, **k)
    )
    assert sigma_interval(np.zeros((3, 4))).upper == 0.0
    matrix = np.diag([3.0, 1.0])
    assert sigma_interval(matrix).lower <= 3.0 <= sigma_interval(matrix).upper
    assert len(calls) == 3


def test_non_finite_refused() -> None:
    with pytest.raises(NumericalError):
        sigma_interval(np.array([[1.0, np.nan]]))


@pytest.mark.parametrize("iterations", [0, 3, 8])
def test_gram_iteration_equals_torch(iterations: int) -> None:
    rng = np.random.default_rng(iterations)
    matrix = rng.standard_normal((50, 30))
    value = gram_iteration_upper_bound_array(matrix, iterations)
    assert value >= float(np.linalg.svd(matrix, compute_uv=False)[0])
    reference = gram_iteration_upper_bound(torch.from_numpy(matrix), iterations)
    assert value == pytest.approx(reference, rel=1e-13)
