"""Floating-point helpers shared by the numerics modules.

NaN/Inf checks, exact power-of-two scaling, Higham's rounding-error model (u, γ_k) and the
rounding allowance on a dense float64 σ. Imports nothing from sncli but ``sncli.errors``, so
:mod:`.spectral`, :mod:`.bounds` and :mod:`.conv` can all build on it without a cycle.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from sncli.arrays import is_array, is_bfloat16, upcast
from sncli.errors import NumericalError

if TYPE_CHECKING:
    import numpy as np
    import torch

UNIT_ROUNDOFF = 2.0**-53
#: 1e-12 relative: the rounding allowance on a σ computed densely in float64 (``exact_sigma``:
#: LAPACK ``eigvalsh`` of the Gram matrix, backward stable, so off by a few ulps times the
#: dimension; u = 2⁻⁵³ ≈ 1.1e-16 and 1e-12 ≈ 9000·u). Where such a value counts as certified,
#: σ·(1 + DENSE_ROUNDING) is the upper bound and σ·(1 − DENSE_ROUNDING) the lower (render,
#: lipschitz), and normalize verifies σ ≤ target·(1 + DENSE_ROUNDING). An allowance for typical
#: rounding, not a proof (the worst-case Gram error grows with ‖W‖_F²/σ²); proven bounds are in
#: :mod:`.bounds`.
DENSE_ROUNDING = 1e-12
#: A factor 1 + 64u applied on top of a proven bound's error terms: room for the few roundings
#: of the bound's own final arithmetic (:mod:`.bounds`, :mod:`.conv`).
SLACK = 1.0 + 64 * UNIT_ROUNDOFF


def gamma(k: int, *, complex_arith: bool = False) -> float:
    """Higham's γ_k = ku/(1−ku); for complex arithmetic γ_{2k+2} (see :mod:`.bounds`)."""
    if complex_arith:
        k = 2 * k + 2
    ku = k * UNIT_ROUNDOFF
    if ku >= 0.5:
        raise ValueError(f"matrix too large for the rounding-error model (k={k})")
    return ku / (1.0 - ku)


def check_finite(matrix: torch.Tensor) -> None:
    """Raise ``NumericalError`` naming how many NaN/Inf entries the matrix holds (a torch
    tensor or a NumPy array)."""
    if is_array(matrix):
        check_finite_array(matrix)
        return
    import torch

    finite = torch.isfinite(matrix)
    if bool(finite.all()):
        return
    nan = int(torch.isnan(matrix).sum())
    inf = int(matrix.numel() - int(finite.sum()) - nan)
    raise NumericalError(f"non-finite values ({nan} NaN, {inf} Inf)")


#: Elements converted at a time when a bfloat16 array is checked (as the σ kernels' chunks).
_CHECK_CHUNK = 1 << 18


def check_finite_array(array: np.ndarray) -> None:
    """:func:`check_finite` for a NumPy array (bfloat16 bits checked chunk by chunk)."""
    import numpy as np

    flat = array.reshape(-1)
    nan = inf = 0
    for start in range(0, flat.size, _CHECK_CHUNK):
        part = flat[start : start + _CHECK_CHUNK]
        values = upcast(part) if is_bfloat16(part) else part
        if values.dtype.kind not in "fc":
            continue
        finite = np.isfinite(values)
        if finite.all():
            continue
        bad_nan = int(np.isnan(values).sum())
        nan += bad_nan
        inf += int(values.size - int(finite.sum()) - bad_nan)
    if nan or inf:
        raise NumericalError(f"non-finite values ({nan} NaN, {inf} Inf)")


def pow2_exponent(amax: float, limit: int = 0) -> int:
    """e with 2^e·amax in [½, 1) when amax is outside [2^-limit, 2^limit], else 0.

    Multiplying by a power of two is exact (barring subnormals), so scaling never changes the
    answer; it keeps WᵀW products away from overflow and denormals (1e30·Q, 1e-15·I and
    subnormal inputs, whose 2^e does not fit in one float64: tests/numerics/test_spectral.py).
    """
    if amax == 0.0 or math.ldexp(1.0, -limit) <= amax <= math.ldexp(1.0, limit):
        return 0
    return -math.frexp(amax)[1]


def scale_(tensor: torch.Tensor, exponent: int) -> torch.Tensor:
    """tensor·2^exponent in place, in two exact steps when 2^exponent would overflow."""
    if exponent:
        half = exponent // 2
        for part in (half, exponent - half) if abs(exponent) > 1000 else (exponent,):
            tensor *= math.ldexp(1.0, part)  # in place, a torch tensor or a NumPy array
    return tensor


def scale_pow2(tensor: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """(tensor·2^(−e), e) with max|entry| ∈ [½, 1), or None for an all-zero (or empty) tensor.

    Multiplying by a power of two is exact; entries that fall into the subnormal range change by
    at most 2⁻¹⁰⁷⁵ each, far below the relative slack every bound carries.
    """
    if tensor.numel() == 0:
        return None
    peak = float(tensor.abs().max())
    if peak == 0.0:
        return None
    exponent = math.frexp(peak)[1]
    first = -exponent // 2
    return tensor * 2.0**first * 2.0 ** (-exponent - first), exponent
