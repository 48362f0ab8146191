"""Top singular subspaces of a matrix and the principal angles between two of them.

What ``sncli diff`` needs to say whether a fine-tune kept a layer's top singular directions:
the top-K left singular vectors of A and of B, the cosines of the principal angles between the
two subspaces (Björck & Golub 1973: the singular values of U_Aᵀ U_B), and, per direction of B,
how much of it lies in A's subspace (‖U_Aᵀ u_j‖; an "intruder dimension" when that is small,
Shuttleworth et al. 2024). These are diagnostics, not bounds: vectors come from float64 LAPACK
(dense, up to ``DENSE_SIDE``) or from float64 randomized subspace iteration with a reported
residual, and cosines carry the vectors' rounding (~1e-12 dense).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: Smaller side up to which the top vectors come from a dense float64 eigendecomposition of the
#: smaller Gram matrix (cheap there); larger layers use subspace iteration (12 steps,
#: k + 8 vectors).
DENSE_SIDE = 512
_OVERSAMPLE = 8
_ITERATIONS = 12


@dataclass(frozen=True)
class TopSubspace:
    """The top ``k`` left singular vectors (columns of ``vectors``, m×k float64) and values.

    ``residual`` is max_j ‖AᵀAv_j − σ_j²v_j‖/σ_1² of the computed pairs (≈1e-15 dense): how far
    the vectors are from being singular vectors.
    """

    vectors: torch.Tensor
    values: torch.Tensor
    residual: float
    method: str


def top_left_subspace(matrix: torch.Tensor, k: int, *, seed: int = 0) -> TopSubspace:
    """The top-``k`` left singular subspace of a 2-D tensor (k is cut to the smaller side)."""
    import torch

    a = matrix.detach().to(torch.float64)
    m, n = a.shape
    k = max(1, min(k, m, n))
    if min(m, n) <= DENSE_SIDE:
        if m <= n:
            values, vectors = torch.linalg.eigh(a @ a.T)
            order = torch.argsort(values, descending=True)[:k]
            left = vectors[:, order]
        else:
            values, vectors = torch.linalg.eigh(a.T @ a)
            order = torch.argsort(values, descending=True)[:k]
            left = a @ vectors[:, order]
            left = left / torch.linalg.vector_norm(left, dim=0).clamp(min=1e-300)
        method = "dense float64 (eigh of the smaller Gram)"
    else:
        generator = torch.Generator().manual_seed(seed)
        basis = torch.randn(n, k + _OVERSAMPLE, generator=generator, dtype=torch.float64)
        for _ in range(_ITERATIONS):
            basis = torch.linalg.qr(a.T @ torch.linalg.qr(a @ basis).Q).Q
        small = a @ basis
        u, _, _ = torch.linalg.svd(small, full_matrices=False)
        left = u[:, :k]
        method = f"subspace iteration float64 ({_ITERATIONS} steps)"
    images = a.T @ left
    sigma = torch.linalg.vector_norm(images, dim=0)
    residual_vectors = a @ images - left * sigma.square()
    top = float(sigma.max()) if sigma.numel() else 0.0
    residual = (
        float(torch.linalg.vector_norm(residual_vectors, dim=0).max()) / (top * top) if top else 0.0
    )
    return TopSubspace(vectors=left, values=sigma, residual=residual, method=method)


def principal_cosines(first: torch.Tensor, second: torch.Tensor) -> list[float]:
    """Cosines of the principal angles between the column spaces of two orthonormal bases,
    largest first (1 = a shared direction, 0 = orthogonal)."""
    import torch

    values = torch.linalg.svdvals(first.T @ second)
    return [min(1.0, float(v)) for v in values]


def captured_fractions(reference: torch.Tensor, directions: torch.Tensor) -> list[float]:
    """‖referenceᵀ d_j‖ for each unit column d_j: the part of it inside the reference span."""
    import torch

    norms = torch.linalg.vector_norm(reference.T @ directions, dim=0)
    return [min(1.0, float(v)) for v in norms]
