"""The SVD of a low-rank product s·B·A from its factors, never forming the m×n matrix.

With B = Q_B R_B (m×k₁) and Aᵀ = Q_A R_A (n×k₂) (reduced QR), s·B·A = Q_B (s R_B R_Aᵀ) Q_Aᵀ,
and the SVD of the small core C = s R_B R_Aᵀ = U_c Σ V_cᵀ gives s·B·A = (Q_B U_c) Σ (Q_A V_c)ᵀ:
the same singular values, with orthonormal singular vectors. Cost O((m + n) r²) against
O(m n r) to form B·A and O(m n min(m, n)) to take its SVD. Everything in float64 (NumPy/LAPACK).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sncli.errors import NumericalError

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class LowRankSVD:
    """s·B·A = U diag(values) Vᵀ: ``values`` largest first (min of the factors' ranks, ≤ r),
    ``left`` (m × k) and ``right`` (n × k) with orthonormal columns; float64."""

    values: np.ndarray
    left: np.ndarray
    right: np.ndarray


def _float64(matrix: object) -> np.ndarray:
    import numpy as np

    if hasattr(matrix, "detach"):  # a torch tensor: bf16/fp16 go through float64
        import torch

        matrix = matrix.detach().to(torch.float64).cpu().numpy()  # type: ignore[attr-defined]
    return np.asarray(matrix, dtype=np.float64)


def lowrank_svd(b: object, a: object, scale: float = 1.0) -> LowRankSVD:
    """The SVD of ``scale · b @ a`` (b: m × r, a: r × n) from QR of b and aᵀ and an SVD of the
    r×r core. Raises ``NumericalError`` when a factor holds NaN or Inf."""
    import numpy as np

    b64, a64 = _float64(b), _float64(a)
    for label, factor in (("B", b64), ("A", a64)):
        bad = int(factor.size - np.count_nonzero(np.isfinite(factor)))
        if bad:
            raise NumericalError(f"{bad} non-finite values (NaN/Inf) in LoRA factor {label}")
    if b64.ndim != 2 or a64.ndim != 2 or b64.shape[1] != a64.shape[0]:
        raise ValueError(f"factors do not chain: B {b64.shape}, A {a64.shape}")
    q_b, r_b = np.linalg.qr(b64)
    q_a, r_a = np.linalg.qr(a64.T)
    core = float(scale) * (r_b @ r_a.T)
    u_c, values, vt_c = np.linalg.svd(core)
    return LowRankSVD(values, q_b @ u_c, q_a @ vt_c.T)


def lowrank_singular_values(b: object, a: object, scale: float = 1.0) -> np.ndarray:
    """The nonzero-rank singular values of ``scale · b @ a`` (largest first, float64)."""
    return lowrank_svd(b, a, scale).values


def difference_factors(
    b1: object, a1: object, s1: float, b2: object, a2: object, s2: float
) -> tuple[np.ndarray, np.ndarray]:
    """Factors (B, A) of s₂B₂A₂ − s₁B₁A₁ = [s₂B₂, −s₁B₁]·[A₂; A₁] (rank ≤ r₁ + r₂)."""
    import numpy as np

    b = np.concatenate([s2 * _float64(b2), -s1 * _float64(b1)], axis=1)
    a = np.concatenate([_float64(a2), _float64(a1)], axis=0)
    return b, a


def principal_cosines(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Cosines of the principal angles between the column spans of two orthonormal bases
    (largest first; min of their widths)."""
    import numpy as np

    if left.shape[1] == 0 or right.shape[1] == 0:
        return np.zeros(0)
    values = np.linalg.svd(left.T @ right, compute_uv=False)
    return np.clip(values, 0.0, 1.0)


def numerical_basis(svd: LowRankSVD, side: str = "left") -> np.ndarray:
    """The singular vectors of the nonzero singular values (above 1e-12 of the largest times
    the width): the span of the update's columns (``left``) or rows (``right``)."""
    values = svd.values
    if values.size == 0 or values[0] == 0:
        return (svd.left if side == "left" else svd.right)[:, :0]
    width = max(svd.left.shape[0], svd.right.shape[0])
    keep = int((values > values[0] * width * 2.0**-52).sum())
    vectors = svd.left if side == "left" else svd.right
    return vectors[:, :keep]
