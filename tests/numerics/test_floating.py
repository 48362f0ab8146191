"""sncli.numerics.floating against closed forms: exact rational arithmetic (fractions), math.ldexp
and math.frexp as references, and matrices whose σ is known exactly.

Tolerances: none for the power-of-two helpers (scaling by 2^e is exact away from subnormals, so
results must be bit-identical to math.ldexp); γ_k to 4 ulps of its exact rational value; the
dense σ checks use the allowance under test, DENSE_ROUNDING, and nothing more.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sncli.errors import NumericalError
from sncli.numerics.floating import (
    DENSE_ROUNDING,
    UNIT_ROUNDOFF,
    check_finite,
    gamma,
    pow2_exponent,
    scale_,
    scale_pow2,
)
from sncli.numerics.spectral import exact_sigma

positive_floats = st.floats(min_value=2.0**-1074, max_value=1.7e308, allow_subnormal=True)


def test_unit_roundoff_is_half_the_float64_machine_epsilon() -> None:
    assert torch.finfo(torch.float64).eps / 2 == UNIT_ROUNDOFF
    assert 1.0 + UNIT_ROUNDOFF == 1.0  # a tie, rounded to even
    assert 1.0 + 2 * UNIT_ROUNDOFF > 1.0


@pytest.mark.parametrize("k", [1, 2, 7, 4096, 4096 * 11008, 2**40])
@pytest.mark.parametrize("complex_arith", [False, True])
def test_gamma_matches_the_exact_rational_value(k: int, complex_arith: bool) -> None:
    kk = 2 * k + 2 if complex_arith else k
    u = Fraction(1, 2**53)
    exact = kk * u / (1 - kk * u)
    value = gamma(k, complex_arith=complex_arith)
    assert abs(Fraction(value) - exact) <= 4 * UNIT_ROUNDOFF * exact


def test_gamma_refuses_k_beyond_the_model() -> None:
    assert gamma(2**52 - 1) > 0
    with pytest.raises(ValueError, match="too large"):
        gamma(2**52)
    with pytest.raises(ValueError, match="too large"):
        gamma(2**51, complex_arith=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.int64])
def test_check_finite_accepts_finite_tensors(dtype: torch.dtype) -> None:
    check_finite(torch.arange(-6, 6).reshape(3, 4).to(dtype))
    check_finite(torch.empty(0, 5, dtype=dtype))


def test_check_finite_counts_nan_and_inf() -> None:
    matrix = torch.zeros(4, 5)
    matrix[0, 0] = matrix[3, 4] = math.nan
    matrix[1, 2] = math.inf
    matrix[2, 2] = matrix[2, 3] = -math.inf
    with pytest.raises(NumericalError, match=r"\(2 NaN, 3 Inf\)"):
        check_finite(matrix)
    with pytest.raises(NumericalError, match=r"\(0 NaN, 1 Inf\)"):
        check_finite(torch.tensor([1.0, math.inf], dtype=torch.float16))


@pytest.mark.parametrize(
    ("amax", "limit", "expected"),
    [
        (0.0, 0, 0),
        (1.0, 0, 0),  # inside [2^0, 2^0]
        (3.0, 0, -2),  # 3·2^-2 = 0.75
        (0.1, 0, 3),  # 0.1·2^3 = 0.8
        (0.5, 0, 0),  # frexp(0.5) = (0.5, 0)
        (5.0, 16, 0),  # inside [2^-16, 2^16]
        (2.0**16, 16, 0),
        (2.0**20, 16, -21),  # 2^20·2^-21 = ½
        (2.0**-1074, 200, 1073),  # the smallest subnormal → ½
        (1.7e308, 200, -1024),
    ],
)
def test_pow2_exponent_closed_forms(amax: float, limit: int, expected: int) -> None:
    assert pow2_exponent(amax, limit) == expected


@given(amax=positive_floats, limit=st.integers(0, 1000))
def test_pow2_exponent_brings_amax_into_half_one_or_leaves_it(amax: float, limit: int) -> None:
    exponent = pow2_exponent(amax, limit)
    inside = Fraction(1, 2**limit) <= Fraction(amax) <= 2**limit
    if inside:
        assert exponent == 0
    else:
        scaled = Fraction(amax) * Fraction(2) ** exponent
        assert Fraction(1, 2) <= scaled < 1


@pytest.mark.parametrize(
    ("values", "exponent"),
    [
        ([1.5, -3.0, 0.0, 7e-300], 0),
        ([1.5, -3.0, 0.0, 7e-300], 37),
        ([1.5, -3.0, 0.0, 1e300], -999),
        ([2.0**-1070, -(2.0**-1000)], 2000),  # 2^2000 overflows: two exact steps
        ([2.0**1000, 1.25 * 2.0**1020], -1500),  # 2^-1500 underflows: two exact steps
    ],
)
def test_scale_multiplies_in_place_exactly_like_ldexp(values: list[float], exponent: int) -> None:
    tensor = torch.tensor(values, dtype=torch.float64)
    result = scale_(tensor, exponent)
    assert result is tensor
    assert tensor.tolist() == [math.ldexp(v, exponent) for v in values]


def test_scale_works_in_float32() -> None:
    tensor = torch.tensor([3.0, -0.375, 2.0**-100], dtype=torch.float32)
    scale_(tensor, 20)
    assert tensor.tolist() == [3.0 * 2**20, -0.375 * 2**20, 2.0**-80]


def test_scale_pow2_zero_and_empty_give_none() -> None:
    assert scale_pow2(torch.zeros(3, 4, dtype=torch.float64)) is None
    assert scale_pow2(torch.empty(0, dtype=torch.float64)) is None


@pytest.mark.parametrize(
    ("values", "exponent", "scaled"),
    [
        ([3.0, -5.0], 3, [0.375, -0.625]),  # frexp(5) = (0.625, 3)
        ([0.5, 0.25], 0, [0.5, 0.25]),
        ([-1.0], 1, [-0.5]),
        ([2.0**-1074], -1073, [0.5]),  # subnormal: 2^e does not fit in one float64
        ([1.5 * 2.0**1023, 1.0], 1024, [0.75, 2.0**-1024]),
    ],
)
def test_scale_pow2_closed_forms(values: list[float], exponent: int, scaled: list[float]) -> None:
    result = scale_pow2(torch.tensor(values, dtype=torch.float64))
    assert result is not None
    tensor, e = result
    assert e == exponent
    assert tensor.tolist() == scaled


@given(
    st.lists(
        st.floats(min_value=-1e300, max_value=1e300, allow_subnormal=False),
        min_size=1,
        max_size=8,
    ).filter(lambda xs: any(xs))
)
def test_scale_pow2_is_exact_and_lands_in_half_one(values: list[float]) -> None:
    tensor = torch.tensor(values, dtype=torch.float64)
    result = scale_pow2(tensor)
    assert result is not None
    scaled, exponent = result
    assert tensor.tolist() == values  # not in place
    assert 0.5 <= float(scaled.abs().max()) < 1.0
    assert exponent == math.frexp(max(abs(v) for v in values))[1]
    for before, after in zip(values, scaled.tolist(), strict=True):
        if before == 0.0 or abs(after) >= 2.0**-1022:  # away from underflow: exact
            assert Fraction(after) * Fraction(2) ** exponent == Fraction(before)


@pytest.mark.parametrize(("m", "n"), [(300, 200), (64, 640), (1, 50)])
def test_dense_rounding_covers_exact_sigma_of_the_all_ones_matrix(m: int, n: int) -> None:
    """σ(c·J_{m×n}) = |c|·√(mn) exactly; the dense float64 σ must be within DENSE_ROUNDING."""
    c = 0.1
    truth = c * math.sqrt(m * n)
    sigma = exact_sigma(torch.full((m, n), c, dtype=torch.float64))
    assert abs(sigma - truth) <= DENSE_ROUNDING * truth


def test_dense_rounding_covers_exact_sigma_of_a_reflected_diagonal() -> None:
    """W = H·diag(s) with H = I − 2vvᵀ/vᵀv orthogonal: σ_max(W) = max s (H rounds by ~n·u)."""
    n = 200
    generator = torch.Generator().manual_seed(3)
    v = torch.randn(n, 1, generator=generator, dtype=torch.float64)
    h = torch.eye(n, dtype=torch.float64) - 2.0 * (v @ v.T) / float(v.T @ v)
    s = torch.linspace(0.01, 2.5, n, dtype=torch.float64)
    sigma = exact_sigma(h * s)  # column j scaled by s_j
    assert abs(sigma - 2.5) <= DENSE_ROUNDING * 2.5
