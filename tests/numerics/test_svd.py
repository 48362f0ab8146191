"""Full spectra and top-K singular values (sncli.numerics.svd) against float64 LAPACK and
closed forms.

Tolerances (relative unless stated): σ_max 1e-13 against float64 scipy svdvals; every σ ≥
1e-3·σ_max 1e-9 (the Gram route's error grows like ε·(σ_max/σ)²: measured 4e-11 at 7e-4);
near-singular matrices go to gesdd, whose small σ are accurate to ~ε·σ_max absolute;
top-K values within 10× their error estimate (≤ TOP_K_TOL = 1e-8) and never above the true σ
by more than 1e-12 (Ritz values are lower bounds).
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sncli.errors import NumericalError
from sncli.numerics.svd import (
    GRAM_RESOLUTION,
    TOP_K_DENSE_FRACTION,
    TOP_K_TOL,
    frobenius_norm,
    singular_values,
    top_singular_values,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def reference(matrix: torch.Tensor) -> np.ndarray:
    return scipy.linalg.svdvals(matrix.double().numpy())


def random_matrix(shape: tuple[int, int], seed: int, dtype: torch.dtype = torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=generator) / math.sqrt(shape[1])).to(dtype)


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [
        ((300, 120), torch.float32),
        ((120, 300), torch.bfloat16),
        ((256, 256), torch.float16),
        ((1030, 1024), torch.float32),  # side ≥ 1024: the lower-block-triangle Gram
        ((64, 2000), torch.float64),
        ((5, 7), torch.float32),
    ],
)
def test_full_spectrum_matches_float64_svd(shape: tuple[int, int], dtype: torch.dtype) -> None:
    w = random_matrix(shape, sum(shape), dtype)
    spectrum = singular_values(w)
    ref = reference(w)
    assert spectrum.values.shape == (min(shape),) and spectrum.complete
    assert spectrum.algorithm == "gram-eigvalsh-float64"
    assert np.all(np.diff(spectrum.values) <= 0)
    assert spectrum.values[0] == pytest.approx(ref[0], rel=1e-13)
    big = ref >= 1e-3 * ref[0]
    np.testing.assert_allclose(spectrum.values[big], ref[big], rtol=1e-9)
    np.testing.assert_allclose(spectrum.values, ref, rtol=0, atol=1e-12 * ref[0])
    assert not spectrum.values.flags.writeable


def test_closed_forms() -> None:
    d = torch.tensor([5.0, 3.0, 2.0, 0.5], dtype=torch.float64)
    np.testing.assert_allclose(singular_values(torch.diag(d)).values, d.numpy(), rtol=1e-15)
    g = torch.Generator().manual_seed(1)
    q = torch.linalg.qr(torch.randn(50, 50, generator=g, dtype=torch.float64))[0]
    np.testing.assert_allclose(singular_values(q).values, np.ones(50), rtol=1e-13)
    u, v = torch.randn(40, 1, dtype=torch.float64), torch.randn(1, 30, dtype=torch.float64)
    rank1 = singular_values(3 * u @ v)
    assert rank1.values[0] == pytest.approx(3 * float(u.norm() * v.norm()), rel=1e-14)
    assert rank1.algorithm == "gesdd-float64 (near-singular)"
    assert np.all(rank1.values[1:] <= 1e-14 * rank1.values[0])


def test_hilbert_goes_to_gesdd_and_resolves_small_values() -> None:
    n = 8
    h = torch.tensor([[1.0 / (i + j + 1) for j in range(n)] for i in range(n)], dtype=torch.float64)
    spectrum = singular_values(h)
    assert spectrum.algorithm == "gesdd-float64 (near-singular)"
    with mpmath.workdps(50):
        exact = sorted((float(x) for x in mpmath.eigsy(mpmath.hilbert(n))[0]), reverse=True)
    np.testing.assert_allclose(spectrum.values, exact, rtol=0, atol=4e-16 * exact[0])
    assert spectrum.values[-1] / spectrum.values[0] < GRAM_RESOLUTION


def test_scaling_extremes_and_special_matrices() -> None:
    w = random_matrix((60, 40), 3, torch.float64)
    ref = reference(w)
    for scale in (1e-200, 1e200, 2.0**-1070 * 2**40):
        values = singular_values(w * scale).values
        assert values[0] == pytest.approx(ref[0] * scale, rel=1e-13)
    assert list(singular_values(torch.zeros(4, 6)).values) == [0.0] * 4
    assert singular_values(torch.zeros(4, 6)).algorithm == "zero"
    vec = torch.tensor([[3.0, 4.0]])
    assert singular_values(vec).values.tolist() == [5.0]
    assert singular_values(torch.zeros(0, 3)).values.size == 0
    w[3, 2] = float("nan")
    with pytest.raises(NumericalError, match="non-finite"):
        singular_values(w)
    with pytest.raises(ValueError, match="expected a matrix"):
        singular_values(torch.ones(3))


def test_frobenius_norm() -> None:
    w = random_matrix((700, 500), 4)
    assert frobenius_norm(w) == pytest.approx(float(np.linalg.norm(w.double().numpy())), rel=1e-14)
    assert frobenius_norm(torch.full((3, 3), 1e300, dtype=torch.float64)) == pytest.approx(3e300)
    assert frobenius_norm(torch.zeros(2, 2)) == 0.0


@pytest.mark.parametrize(("shape", "k"), [((800, 300), 5), ((300, 900), 20), ((1500, 300), 1)])
def test_top_k_matches_float64_svd_and_is_a_lower_bound(shape: tuple[int, int], k: int) -> None:
    w = random_matrix(shape, k, torch.bfloat16)
    top = top_singular_values(w, k)
    ref = reference(w)[:k]
    assert top.algorithm == "block-lanczos-float64" and not top.complete
    assert top.values.shape == (k,) and top.errors is not None and top.converged
    np.testing.assert_allclose(top.values, ref, rtol=10 * TOP_K_TOL)
    assert np.all(top.values <= ref * (1 + 1e-12))
    assert np.all(top.errors <= TOP_K_TOL)
    assert np.all(np.abs(top.values - ref) / ref <= 10 * np.maximum(top.errors, 1e-13))


def test_top_k_dense_when_k_is_a_large_part() -> None:
    w = random_matrix((200, 100), 9)
    k = int(TOP_K_DENSE_FRACTION * 100)
    top = top_singular_values(w, k)
    assert top.algorithm.startswith("gram") and top.errors is None
    np.testing.assert_allclose(top.values, reference(w)[:k], rtol=1e-12)
    assert top_singular_values(w, 100).complete
    with pytest.raises(ValueError, match="k must be between 1 and 100"):
        top_singular_values(w, 101)


def test_top_k_on_a_low_rank_matrix() -> None:
    """Rank 3 < K: the Krylov space becomes invariant; the values past the rank are 0."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(500, 3, generator=g, dtype=torch.float64) @ torch.randn(
        3, 400, generator=g, dtype=torch.float64
    )
    top = top_singular_values(w, 6)
    ref = reference(w)[:6]
    np.testing.assert_allclose(top.values[:3], ref[:3], rtol=1e-9)
    assert np.all(top.values[3:] <= 1e-6 * ref[0])


@settings(max_examples=20, deadline=None)
@given(
    m=st.integers(1, 40),
    n=st.integers(1, 40),
    c=st.floats(-1e3, 1e3).filter(lambda x: abs(x) > 1e-3),
    seed=st.integers(0, 2**16),
)
def test_scaling_property(m: int, n: int, c: float, seed: int) -> None:
    """σ(cW) = |c|·σ(W)."""
    w = random_matrix((m, n), seed, torch.float64)
    a = singular_values(w).values
    b = singular_values(c * w).values
    np.testing.assert_allclose(b, abs(c) * a, rtol=1e-9, atol=1e-12 * abs(c) * a[0])
