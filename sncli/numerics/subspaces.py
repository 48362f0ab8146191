"""Top singular subspaces of a matrix and the principal angles between two of them.

What ``sncli diff`` needs to say whether a fine-tune kept a layer's top singular directions:
the top-K left singular vectors of A and of B, the cosines of the principal angles between the
two subspaces (Björck & Golub 1973: the singular values of U_Aᵀ U_B), per direction of B how
much of it lies in A's subspace (‖U_Aᵀ u_j‖), and the intruder dimensions of Shuttleworth et
al. (2024): B's top singular vectors far from every singular vector of A, one at a time
(:func:`intruder_dimensions`). These are diagnostics, not bounds: vectors come from float64 LAPACK
(dense LAPACK SVD up to ``DENSE_SIDE``) or from float64 randomized subspace iteration with a
reported residual, cut to the numerical rank; cosines carry the vectors' rounding (~1e-14
dense).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sncli.errors import NumericalError

if TYPE_CHECKING:
    import torch

#: Smaller side up to which the top vectors come from a dense float64 SVD (cheap there); larger
#: layers use subspace iteration (12 steps, k + 8 vectors).
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
    """The top-``k`` left singular subspace of a 2-D tensor.

    ``k`` is cut to the numerical rank (σ > σ_1·max(m, n)·2⁻⁵²): directions of zero singular
    values are arbitrary, and comparing them would report noise as rotation. A zero matrix has
    an empty subspace (0 columns).
    """
    import torch

    from sncli.numerics.floating import scale_pow2

    a = matrix.detach().to(torch.float64, copy=True)
    # Scaled by a power of two (exact; the vectors do not change, σ scales back exactly): the
    # residual's σ⁴-sized products of a 1e-41 (subnormal float32) or 1e-200 layer would
    # underflow to zero, of a 1e200 one overflow.
    scaled = scale_pow2(a)
    exponent = 0
    if scaled is not None:
        a, exponent = scaled
    m, n = a.shape
    k = max(0, min(k, m, n))
    try:
        return _top_left_subspace(a, k, exponent, seed)
    except torch.linalg.LinAlgError as exc:
        raise NumericalError(
            "top singular subspace not measurable: float64 LAPACK did not converge"
        ) from exc


def _top_left_subspace(a: torch.Tensor, k: int, exponent: int, seed: int) -> TopSubspace:
    import torch

    from sncli.numerics.floating import scale_

    m, n = a.shape
    if min(m, n) <= DENSE_SIDE:
        left, _, _ = torch.linalg.svd(a, full_matrices=False)
        method = "dense float64 (LAPACK SVD)"
    else:
        generator = torch.Generator().manual_seed(seed)
        basis = torch.randn(n, k + _OVERSAMPLE, generator=generator, dtype=torch.float64)
        for _ in range(_ITERATIONS):
            # (Qᵀa)ᵀ rather than aᵀQ: the skinny product along a's rows is 2.5× faster (measured)
            basis = torch.linalg.qr((torch.linalg.qr(a @ basis).Q.T @ a).T).Q
        left, _, _ = torch.linalg.svd(a @ basis, full_matrices=False)
        method = f"subspace iteration float64 ({_ITERATIONS} steps)"
    left = left[:, :k]
    images = (left.T @ a).T
    sigma = torch.linalg.vector_norm(images, dim=0)
    top = float(sigma.max()) if sigma.numel() else 0.0
    rank = int((sigma > top * max(m, n) * 2.0**-52).sum()) if top > 0 else 0
    left, sigma, images = left[:, :rank], sigma[:rank], images[:, :rank]
    residual_vectors = a @ images - left * sigma.square()
    residual = (
        float(torch.linalg.vector_norm(residual_vectors, dim=0).max()) / (top * top)
        if rank
        else 0.0
    )
    values = scale_(sigma.clone(), exponent)
    return TopSubspace(vectors=left, values=values, residual=residual, method=method)


def principal_cosines(first: torch.Tensor, second: torch.Tensor) -> list[float]:
    """Cosines of the principal angles between the column spaces of two orthonormal bases,
    largest first (1 = a shared direction, 0 = orthogonal); as many as the smaller basis has
    columns (none when either is empty)."""
    import torch

    if first.shape[1] == 0 or second.shape[1] == 0:
        return []
    values = torch.linalg.svdvals(first.T @ second)
    return [min(1.0, float(v)) for v in values]


def captured_fractions(reference: torch.Tensor, directions: torch.Tensor) -> list[float]:
    """‖referenceᵀ d_j‖ for each unit column d_j: the part of it inside the reference span."""
    import torch

    norms = torch.linalg.vector_norm(reference.T @ directions, dim=0)
    return [min(1.0, float(v)) for v in norms]


@dataclass(frozen=True)
class Intruders:
    """Intruder dimensions of a fine-tuned matrix B against its base A (Shuttleworth et al.
    2024, as PEFT's ``reduce_intruder_dimension`` computes them).

    ``indices``: which of B's top ``checked`` left singular vectors (0-based, largest σ first)
    have max_i |⟨u_j(B), u_i(A)⟩| < threshold over ALL of A's left singular vectors. ``checked``
    is k cut to B's numerical rank. ``full_svd``: whether A's full SVD was needed (else every
    direction was decided by A's top vectors alone, see :func:`intruder_dimensions`).
    """

    indices: tuple[int, ...]
    checked: int
    full_svd: bool


#: A's top vectors computed beyond k to screen B's directions before any full SVD of A.
_SCREEN_EXTRA = 16


def intruder_dimensions(
    base: torch.Tensor, tuned: torch.Tensor, k: int, threshold: float, *, seed: int = 0
) -> Intruders | None:
    """Which of ``tuned``'s top-``k`` left singular vectors are intruders against ``base``.

    The definition is PEFT's ``_calc_intruder_ids``: each of B's top-k left singular vectors
    (``full_matrices=False``) against all min(m, n) left singular vectors of A, one at a time.
    It needs A's full SVD (O(mn·min(m, n))); above ``DENSE_SIDE`` A's top k + 16 vectors are
    computed first and decide a direction when one of them already has |cos| ≥ threshold (not
    an intruder), or when the part of u_j outside them is shorter than the threshold (then no
    other singular vector of A can reach it: an intruder); only undecided directions pay for
    the full SVD. None when A is zero (its singular vectors are arbitrary).
    """
    import torch

    a = base.detach().to(torch.float64)
    top_b = top_left_subspace(tuned, k, seed=seed).vectors
    m, n = a.shape
    if not bool(a.any()):
        return None
    if top_b.shape[1] == 0:
        return Intruders((), 0, False)
    full = min(m, n) <= DENSE_SIDE
    best: torch.Tensor | None = None
    if not full:
        top_a = top_left_subspace(a, min(m, n, k + _SCREEN_EXTRA), seed=seed).vectors
        if top_a.shape[1] == 0:
            return None
        cosines = top_a.T @ top_b
        best = cosines.abs().max(dim=0).values
        outside = (1.0 - cosines.square().sum(dim=0)).clamp_min(0.0).sqrt()
        undecided = (best < threshold) & (outside >= threshold)
        full = bool(undecided.any())
    if full:
        try:
            left = torch.linalg.svd(a, full_matrices=False).U
        except torch.linalg.LinAlgError as exc:
            raise NumericalError(
                "intruder dimensions not measurable: float64 LAPACK SVD did not converge"
            ) from exc
        best = (left.T @ top_b).abs().max(dim=0).values
    assert best is not None
    indices = tuple(int(j) for j in torch.nonzero(best < threshold).flatten())
    return Intruders(indices, top_b.shape[1], full)
