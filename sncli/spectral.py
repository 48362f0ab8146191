"""Largest singular value σ(W) of a weight matrix, by several methods.

* ``exact``: the largest eigenvalue of the smaller Gram matrix (WᵀW or WWᵀ) in float64 by LAPACK
  (``eigvalsh``), after scaling W by max|w| so the Gram matrix cannot overflow. The top eigenvalue
  of a symmetric matrix is perfectly conditioned, so σ is accurate to a few float64 ulps times the
  dimension: a two-sided answer, the reference the other methods are tested against.
* ``power``: power iteration as in Miyato et al. (2018), from a seeded Gaussian start. It stops
  when σ changes by less than ``tol`` (relative) between iterations. Its value is ‖Wv‖ for a
  unit vector v, so it is never above σ (up to float64 rounding): a lower bound, and only an
  estimate — a small change per step does not prove a small error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from sncli.errors import NumericalError

if TYPE_CHECKING:
    import torch


class Method(str, Enum):
    EXACT = "exact"
    POWER = "power"


class BoundKind(str, Enum):
    """What a reported σ is relative to the true σ."""

    EXACT = "exact"  # two-sided, within float64 rounding
    LOWER = "lower"  # never above the true σ


DEFAULT_POWER_ITERS = 1000
DEFAULT_POWER_TOL = 1e-6
DEFAULT_SEED = 0


@dataclass(frozen=True)
class SigmaEstimate:
    """σ of one matrix and how far it can be trusted."""

    sigma: float
    method: Method
    bound: BoundKind
    iterations: int | None = None
    converged: bool | None = None


def as_matrix(weight: torch.Tensor, reshape_dim: int = 0) -> torch.Tensor:
    """Flatten a weight to the matrix PyTorch's spectral_norm normalizes.

    ``reshape_dim`` goes first (0 for Linear/Conv, 1 for ConvTranspose), the rest is flattened.
    """
    if weight.dim() < 2:
        raise ValueError(f"need at least 2 dimensions, got shape {tuple(weight.shape)}")
    if reshape_dim != 0:
        order = [reshape_dim, *[d for d in range(weight.dim()) if d != reshape_dim]]
        weight = weight.permute(*order)
    return weight.reshape(weight.shape[0], -1)


def check_finite(matrix: torch.Tensor) -> None:
    """Raise ``NumericalError`` naming how many NaN/Inf entries the matrix holds."""
    import torch

    finite = torch.isfinite(matrix)
    if bool(finite.all()):
        return
    nan = int(torch.isnan(matrix).sum())
    inf = int(matrix.numel() - int(finite.sum()) - nan)
    raise NumericalError(f"non-finite values ({nan} NaN, {inf} Inf)")


def _upcast(matrix: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return matrix.to(dtype) if matrix.dtype != dtype else matrix


def exact_sigma(matrix: torch.Tensor) -> float:
    """σ_max via float64 ``eigvalsh`` of the smaller Gram matrix (scaled to avoid overflow)."""
    import torch

    w = _upcast(matrix, torch.float64)
    if w.numel() == 0:
        return 0.0
    scale = float(w.abs().max())
    if scale == 0.0:
        return 0.0
    w = w / scale
    if w.shape[0] == 1 or w.shape[1] == 1:
        return float(torch.linalg.vector_norm(w)) * scale
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    top = float(torch.linalg.eigvalsh(gram)[-1])
    return math.sqrt(max(top, 0.0)) * scale


def power_iteration(
    matrix: torch.Tensor,
    *,
    iters: int = DEFAULT_POWER_ITERS,
    tol: float = DEFAULT_POWER_TOL,
    seed: int = DEFAULT_SEED,
) -> SigmaEstimate:
    """Power iteration on WᵀW (Miyato et al. 2018), float32 steps, float64 final value.

    Stops when the relative change of σ falls below ``tol`` or after ``iters`` iterations.
    The reported σ is ‖Wv‖ for the final unit v computed in float64, hence a lower bound.
    """
    import torch

    w = _upcast(matrix, torch.float32) if matrix.dtype != torch.float64 else matrix
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(w.shape[1], generator=generator, dtype=torch.float64).to(w.dtype)
    v = v / torch.linalg.vector_norm(v)
    sigma_prev = 0.0
    converged = False
    used = 0
    for used in range(1, iters + 1):  # noqa: B007 - `used` is reported after the loop
        u = w @ v
        sigma = float(torch.linalg.vector_norm(u))
        if sigma == 0.0:
            converged = True
            break
        u = u / sigma
        v = w.T @ u
        norm_v = float(torch.linalg.vector_norm(v))
        if norm_v == 0.0:
            converged = True
            break
        v = v / norm_v
        if abs(norm_v - sigma_prev) <= tol * norm_v:
            converged = True
            break
        sigma_prev = norm_v
    v64 = v.to(torch.float64)
    v64 = v64 / torch.linalg.vector_norm(v64)
    value = float(torch.linalg.vector_norm(matrix.to(torch.float64) @ v64))
    return SigmaEstimate(value, Method.POWER, BoundKind.LOWER, used, converged)


def largest_singular_value(
    matrix: torch.Tensor,
    method: Method | str = Method.EXACT,
    *,
    iters: int = DEFAULT_POWER_ITERS,
    tol: float = DEFAULT_POWER_TOL,
    seed: int = DEFAULT_SEED,
) -> SigmaEstimate:
    """σ_max of a 2-D tensor of any float dtype (half types are upcast first).

    Raises ``NumericalError`` when the matrix holds NaN or Inf: no σ would be meaningful.
    """
    method = Method(method)
    if matrix.dim() != 2:
        raise ValueError(f"expected a matrix, got shape {tuple(matrix.shape)}")
    check_finite(matrix)
    if method is Method.EXACT:
        return SigmaEstimate(exact_sigma(matrix), Method.EXACT, BoundKind.EXACT)
    return power_iteration(matrix, iters=iters, tol=tol, seed=seed)
