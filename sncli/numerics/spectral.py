"""Largest singular value σ(W) of a weight matrix, by several methods.

Which side each method errs on is what a user must know: any value of the form
‖Wx‖ for a unit x is a *lower* bound; only a dense backward-stable method or a certificate bounds σ
from above. Every method reports that in ``SigmaEstimate.bound`` and ``certified``.

* ``auto`` (the default of :class:`sncli.analysis.MethodOptions`): the cheapest route to a
  requested relative *error* ``tol`` (default 1e-4; an error target, not a stopping rule). Smaller
  side ≤ 128: dense. Otherwise block Lanczos in float32 (float64 when ``tol`` < 1e-6, below what
  float32 products resolve), stopped by a residual/gap error estimate; dense if it does not
  converge. Reports ‖Wx‖ in float64, a lower bound, with its error estimate.
* ``exact``: σ to float64 accuracy. Smaller side ≤ 256: dense. Otherwise float64 block Lanczos
  until the estimated relative error of σ² is below 1e-12 (σ: 5e-13; ≤5e-13 measured against
  float64 SVD on the benchmark checkpoints, ≤1e-10 asserted in the tests), dense if it does not
  get there. Two-sided within that tolerance, but ``certified`` is False: a Krylov method proves
  only the lower side, and the upper side rests on the random start block not being orthogonal
  to the top singular direction. ``certify=True`` adds a proven upper bound (Cholesky
  certificate, :mod:`sncli.numerics.bounds`; costs a float64 Gram matrix).
* ``lanczos``: float32 block Lanczos at ``tol`` with no fallback; reports whether it converged.
* ``power``: power iteration (Miyato et al. 2018) stopped when σ changes by less than ``tol`` — a
  stopping rule, not an error bound (measured: a 1e-4 change left a 1e-3 error; on a top
  pair 0.1% apart it stopped 7.5e-3 short in the quick benchmark).
* ``dense``: the largest eigenvalue of the smaller Gram matrix in float64 by LAPACK (``eigvalsh``),
  after scaling by a power of two: backward stable, so two-sided within a few ulps times the
  dimension (``certified``). The reference; slowest on large matrices.

**Why block Lanczos, streamed in chunks.** Measured on this 2-core AMD EPYC (Zen 4), torch
2.13/MKL, one thread, 4096×1024 bf16 (bench/README.md has whole-checkpoint numbers):

* Dense: float64 Gram 180 ms + eigvalsh 100 ms; the float32 Gram alone 90 ms (and 2e-7 relative
  error); float32 LAPACK svdvals 320 ms. Anything that forms the n²m Gram costs more than a whole
  Krylov run on realistic spectra (3–8 block steps of ~3–5 ms).
* Applying WᵀW to a block of b row vectors streams W once: each 256K-element chunk is converted
  (bf16 → float32/float64) into a reused buffer and used for both products while it is in cache.
  b=4: 2.9 ms (float32) / 4.9 ms (float64), versus 5.2 ms (b=8) for a pre-converted float32 copy
  read twice. No full-size float32/float64 copy of W is ever made.
* MKL's thin GEMMs are pathological in column layout (W @ X with 2–8 columns: 7 ms; Wᵀ @ Y:
  37 ms, versus 1–2 ms with the vectors as rows), so blocks are kept as rows.
* Blocks resolve near-degenerate top pairs: single-vector Lanczos with a residual-and-gap rule
  claimed 2e-5 while the true error was 6e-4 on a pair 0.1% apart — the pair's second member was
  not yet in the Krylov space, so the "gap" was measured to the bulk.
* A float32 first stage before float64 did not pay: the float64 stage restarts and needed 16–19
  of the 41 steps a cold float64 run took on a Gaussian matrix, after 21 float32 steps.
* Rejected: power iteration (no error control; 1109 steps on the 302M benchmark checkpoint
  against 346 for float32 block Lanczos at a 1e-4 error); ARPACK ``svds(k=1)`` (2.8 s on a
  checkpoint of the same shapes, slower than ``exact`` here, refuses 1×n, and
  runs on scipy's own OpenBLAS threads, which oversubscribe beside torch's: a 2-thread 300×200
  svdvals took 1.3 s instead of 3 ms under load); Gram iteration and float32 Gram + Lanczos (the
  Gram dominates).

**NumPy input** (safetensors, GGUF, NumPy, Keras and ONNX files are read as NumPy, so those
commands never import torch) runs the same methods in :mod:`.spectral_numpy` on NumPy's
OpenBLAS/LAPACK, from the same random start blocks (:func:`sncli.arrays.torch_randn`): results
agree to rounding (float64 ~1e-15, float32 Lanczos ≤ 1e-6 relative, the same step counts;
tests/test_torch_free.py). OpenBLAS's thin float32 GEMMs are slower than MKL's (one thread,
4 rows against a 1024×4096 float32 matrix: 4.8 ms against 1.0 ms), so ``auto`` computes
1.5–1.8× longer on NumPy; a whole process still wins on small and mid-sized checkpoints, which
no longer pay torch's ~1.5 s import (bench/README.md). On ``cuda`` NumPy input is moved to torch.

Kaniel–Paige–Saad: Lanczos converges like exp(−4k√γ), γ = (λ₁−λ_{b+1})/(λ_{b+1}−λₙ) for block
size b (Golub & Van Loan, *Matrix Computations*, 4th ed., §10.3–10.4). The error estimate for the
top Ritz value θ₁ with residual ρ₁ is min(ρ₁, ρ₁²/gap), gap = θ₁ − θ₂ − ρ₂ (Parlett, *The Symmetric
Eigenvalue Problem*, §11.7), the quadratic form used only when gap > ρ₁.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sncli.arrays import is_array
from sncli.errors import NumericalError
from sncli.numerics.bounds import ScaledGram
from sncli.numerics.estimates import (
    BLOCK_SIZE,
    CHUNK_ELEMENTS,
    DEFAULT_POWER_ITERS,
    DEFAULT_POWER_TOL,
    DEFAULT_SEED,
    DEFAULT_TOL,
    DENSE_MAX_SIDE,
    EXACT_BLOCK_SIZE,
    EXACT_DENSE_MAX_SIDE,
    EXACT_TOL,
    FLOAT32_SAFE_EXPONENT,
    FLOAT32_TOL_FLOOR,
    GRAM_BLOCK,
    GRAM_BLOCK_SIDE,
    GRAM_MIN_RANK,
    MAX_KRYLOV_DIM,
    WARM_START_MIN_STEPS,
    BoundKind,
    Method,
    SigmaEstimate,
)
from sncli.numerics.floating import check_finite, pow2_exponent, scale_

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import torch


def as_matrix(weight: torch.Tensor, reshape_dim: int = 0) -> torch.Tensor:
    """Flatten a weight to the matrix PyTorch's spectral_norm normalizes.

    ``reshape_dim`` goes first (0 for Linear/Conv, 1 for ConvTranspose), the rest is flattened.
    The result is detached: σ needs no gradient, and an ``nn.Parameter`` would make torch warn
    (``float()`` of a tensor that requires grad) or refuse (``mv`` with ``out=``).
    A NumPy array gives a NumPy matrix (a view where the layout allows).
    """
    if is_array(weight):
        from sncli.numerics.spectral_numpy import as_matrix_array

        return as_matrix_array(weight, reshape_dim)
    weight = weight.detach()
    if weight.dim() < 2:
        raise ValueError(f"need at least 2 dimensions, got shape {tuple(weight.shape)}")
    if reshape_dim != 0:
        order = [reshape_dim, *[d for d in range(weight.dim()) if d != reshape_dim]]
        weight = weight.permute(*order)
    return weight.reshape(weight.shape[0], -1)


def _max_abs(matrix: torch.Tensor) -> float:
    """max|w| in one pass without a copy; raises ``NumericalError`` on NaN/Inf."""
    import torch

    if matrix.numel() == 0:
        return 0.0
    low, high = torch.aminmax(matrix)
    value = max(-float(low), float(high))
    if not math.isfinite(value):
        check_finite(matrix)
    return value


def _chunk64(part: torch.Tensor, exponent: int) -> torch.Tensor:
    import torch

    return scale_(part.to(torch.float64, copy=True), exponent)


def _gram64(matrix: torch.Tensor, exponent: int, lower_only: bool = False) -> torch.Tensor:
    """float64 Gram matrix of the smaller side of 2^e·matrix, accumulated chunk by chunk.

    ``lower_only``: from a side of ``GRAM_BLOCK_SIDE`` on, only the lower block triangle (block
    rows of ``GRAM_BLOCK``) is accumulated — what ``eigvalsh`` reads — for (b+1)/2b of the
    multiply-adds (56% at side 4096; 2048×8192: 1.85 s instead of 2.56 s, one thread); the
    blocks above it stay zero.
    """
    import torch

    m, n = matrix.shape
    tall = m >= n
    side = n if tall else m
    gram = torch.zeros(side, side, dtype=torch.float64, device=matrix.device)
    length = m if tall else n
    # Rank-k updates of a side×side Gram are memory-bound below k ≈ 512: at 4096×25088 the
    # 64-row chunks of CHUNK_ELEMENTS re-read the 134 MB Gram 392 times.
    step = max(1, CHUNK_ELEMENTS // max(side, 1), GRAM_MIN_RANK)
    for start in range(0, length, step):
        part = matrix[start : start + step] if tall else matrix[:, start : start + step].T
        chunk = _chunk64(part, exponent)
        if lower_only and side >= GRAM_BLOCK_SIDE:
            for row in range(0, side, GRAM_BLOCK):
                end = min(side, row + GRAM_BLOCK)
                gram[row:end, :end].addmm_(chunk[:, row:end].T, chunk[:, :end])
        else:
            gram.addmm_(chunk.T, chunk)
    return gram


def exact_sigma(matrix: torch.Tensor) -> float:
    """σ_max via float64 ``eigvalsh`` of the smaller Gram matrix (scaled to avoid overflow)."""
    if is_array(matrix):
        from sncli.numerics.spectral_numpy import exact_sigma_array

        return exact_sigma_array(matrix)
    import torch

    if matrix.numel() == 0:
        return 0.0
    amax = _max_abs(matrix)
    if amax == 0.0:
        return 0.0
    exponent = pow2_exponent(amax)
    if matrix.shape[0] == 1 or matrix.shape[1] == 1:
        return math.ldexp(float(torch.linalg.vector_norm(_chunk64(matrix, exponent))), -exponent)
    gram = _gram64(matrix, exponent, lower_only=True)
    top = float(torch.linalg.eigvalsh(gram, UPLO="L")[-1])
    return math.ldexp(math.sqrt(max(top, 0.0)), -exponent)


def _norm(vector: torch.Tensor) -> float:
    """‖x‖₂ without underflow or overflow of the squares (torch's vector_norm does not scale)."""
    import torch

    largest = float(vector.abs().max()) if vector.numel() else 0.0
    if largest == 0.0 or not math.isfinite(largest):
        return largest
    exponent = pow2_exponent(largest)
    scaled = scale_(vector.to(torch.float64, copy=True), exponent)
    return math.ldexp(float(torch.linalg.vector_norm(scaled)), -exponent)


def matvec64(matrix: torch.Tensor, vector: torch.Tensor, exponent: int = 0) -> torch.Tensor:
    """(2^e·matrix) @ vector in float64, converting W a chunk of rows at a time (no full copy).

    NumPy in (matrix and vector), NumPy out."""
    if is_array(matrix):
        from sncli.numerics.spectral_numpy import matvec64_array

        return matvec64_array(matrix, vector, exponent)
    import torch

    m, n = matrix.shape
    x = vector.to(device=matrix.device, dtype=torch.float64).reshape(-1)
    if matrix.dtype == torch.float64 and exponent == 0:
        return matrix @ x
    out = torch.empty(m, dtype=torch.float64, device=matrix.device)
    step = max(1, CHUNK_ELEMENTS // max(n, 1))
    for start in range(0, m, step):
        chunk = _chunk64(matrix[start : start + step], exponent)
        torch.mv(chunk, x, out=out[start : start + step])
    return out


def _sigma_of(matrix: torch.Tensor, vector: torch.Tensor, exponent: int) -> float:
    """‖Wx‖/‖x‖ in float64: scaled by 2^e so that subnormal or huge W keep full precision."""
    import torch

    x = vector.to(torch.float64).reshape(-1)
    x = x / torch.linalg.vector_norm(x)
    return math.ldexp(_norm(matvec64(matrix, x, exponent)), -exponent)


class _NormalOperator:
    """X ↦ X·(sWᵀ)(sW), s = 2^e, for blocks X of row vectors, streaming W in converted chunks.

    Each chunk of rows is converted (and scaled) into a reused buffer and used for both products
    while it is in cache; see the module docstring for timings.
    """

    def __init__(self, matrix: torch.Tensor, dtype: torch.dtype, exponent: int) -> None:
        import torch

        self.matrix = matrix
        self.dtype = dtype
        self.exponent = exponent
        # float64 values outside the float32 range must be scaled before the conversion; so
        # must float32 ones whose 2^e is itself outside it (subnormal weights: 1e-41 needs
        # 2^136, which is Inf as a float32 factor). Scaling in float64 is exact either way.
        self.scale_first = exponent != 0 and (
            matrix.dtype == torch.float64 or abs(exponent) > FLOAT32_SAFE_EXPONENT
        )
        m, n = matrix.shape
        on_cpu = matrix.device.type == "cpu"
        self.rows = max(1, min(m, CHUNK_ELEMENTS // max(n, 1))) if on_cpu else m
        self.direct = matrix.dtype == dtype and exponent == 0 and matrix.is_contiguous()
        self.buffer = (
            None if self.direct else torch.empty(self.rows, n, dtype=dtype, device=matrix.device)
        )

    def _chunks(self) -> Iterator[torch.Tensor]:
        m = self.matrix.shape[0]
        for start in range(0, m, self.rows):
            part = self.matrix[start : start + self.rows]
            if self.buffer is None:
                yield part
                continue
            chunk = self.buffer[: part.shape[0]]
            if self.scale_first:
                chunk.copy_(_chunk64(part, self.exponent))
            else:
                scale_(chunk.copy_(part), self.exponent)
            yield chunk

    def __call__(self, block: torch.Tensor) -> torch.Tensor:
        import torch

        out = torch.zeros_like(block)
        for chunk in self._chunks():
            out.addmm_(block @ chunk.T, chunk)
        return out


@dataclass(frozen=True)
class _Ritz:
    """Outcome of a block Lanczos run on (sW)ᵀ(sW)."""

    theta: float  # top Ritz value (λ of the scaled Gram)
    vector: torch.Tensor  # its unit Ritz vector, length n
    error: float  # estimated absolute error of theta
    steps: int
    converged: bool
    complete: bool  # the Krylov space became invariant or all of Rⁿ


def _orthonormal_rows(block: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    """Rows of ``block`` orthonormalized against ``basis`` (twice: "twice is enough") and QR.

    Directions that vanish below rounding level are dropped (deflation).
    """
    import torch

    before = float(torch.linalg.vector_norm(block, dim=1).max())
    if basis is not None and basis.shape[0]:
        for _ in range(2):
            block = block - (block @ basis.T) @ basis
    # Deflate by the singular values of the b×n block. Not by QR's diagonal: when the first row
    # vanishes, unpivoted QR's first column is noise and the later rows' components along it are
    # lost (this dropped the top direction of diag(2,1…) warm-started at e₂). Not by the b×b Gram
    # matrix either: it resolves singular values only down to √eps·‖block‖, which let noise in.
    _, values, directions = torch.linalg.svd(block, full_matrices=False)
    eps = torch.finfo(block.dtype).eps
    keep = values > 64 * eps * math.sqrt(block.shape[1]) * before
    if not bool(keep.any()):
        return block[:0]
    block = directions[keep]
    if basis is not None and basis.shape[0]:
        block = block - (block @ basis.T) @ basis
    return torch.linalg.qr(block.T)[0].T.contiguous()


def _block_lanczos(
    operator: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    dtype: torch.dtype,
    device: torch.device,
    *,
    tol: float,
    max_dim: int,
    seed: int,
    start: torch.Tensor | None,
    block: int | None = None,
) -> _Ritz:
    """Block Lanczos with full reorthogonalization and Rayleigh–Ritz every step.

    Stops when the estimated error of the top Ritz value is ≤ ``tol``·θ (relative, on λ = σ²),
    when the space is exhausted, or at ``max_dim``. The start block is seeded Gaussian; a
    ``start`` vector (stored power-iteration v, a warm start) replaces its first row.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    width = max(1, min(block or BLOCK_SIZE, n))
    # A warm start that is an exact eigenvector of a lower singular value has zero residual at
    # once, while the random rows have not yet been amplified (diag(2,1…) started at e₂ stopped
    # at σ=1 after one step); a few steps let a larger σ show up.
    min_steps = 1 if start is None else WARM_START_MIN_STEPS
    first = torch.randn(width, n, generator=generator, dtype=torch.float64)
    if start is not None and start.numel() == n:
        guess = start.detach().to(torch.float64).reshape(-1).cpu()
        norm = float(torch.linalg.vector_norm(guess))
        if math.isfinite(norm) and norm > 0:
            first[0] = guess / norm
    basis = _orthonormal_rows(first.to(device=device, dtype=dtype), None)
    images = operator(basis)
    gram = (basis @ images.T).to(torch.float64).cpu()
    gram = (gram + gram.T) / 2
    last = basis.shape[0]
    steps = 1
    while True:
        values, vectors = torch.linalg.eigh(gram)
        k = values.shape[0]
        top = vectors[:, -1].to(device=device, dtype=dtype)
        ritz = top @ basis
        residual = float(torch.linalg.vector_norm(top @ images - float(values[-1]) * ritz))
        theta = float(values[-1])
        error = residual
        if k > 1:
            second = vectors[:, -2].to(device=device, dtype=dtype)
            rho2 = float(
                torch.linalg.vector_norm(second @ images - float(values[-2]) * (second @ basis))
            )
            gap = theta - float(values[-2]) - rho2
            if gap > residual:
                error = min(residual, residual * residual / gap)
        complete = k >= n
        converged = complete or theta <= 0.0 or (steps >= min_steps and error <= tol * theta)
        if converged or k >= max_dim:
            return _Ritz(theta, ritz, error, steps, converged, complete)
        fresh = _orthonormal_rows(images[k - last :], basis)[: max_dim - k]
        if fresh.shape[0] == 0:  # invariant subspace (rank ≤ dimension): nothing left to find
            return _Ritz(theta, ritz, error, steps, True, True)
        fresh_images = operator(fresh)
        cross = (basis @ fresh_images.T).to(torch.float64).cpu()
        corner = (fresh @ fresh_images.T).to(torch.float64).cpu()
        corner = (corner + corner.T) / 2
        gram = torch.cat(
            [torch.cat([gram, cross], dim=1), torch.cat([cross.T, corner], dim=1)], dim=0
        )
        basis = torch.cat([basis, fresh])
        images = torch.cat([images, fresh_images])
        last = fresh.shape[0]
        steps += 1


def lanczos_sigma(
    matrix: torch.Tensor,
    *,
    tol: float = DEFAULT_TOL,
    precision: str | None = None,
    max_dim: int = MAX_KRYLOV_DIM,
    seed: int = DEFAULT_SEED,
    start: torch.Tensor | None = None,
) -> SigmaEstimate:
    """σ_max by block Lanczos on WᵀW, to an estimated relative error ``tol`` on σ.

    ``precision`` is "float32" or "float64" (default: float64 below ``FLOAT32_TOL_FLOOR``).
    The reported σ is ‖Wx‖ for the final Ritz vector x, evaluated in float64: a lower bound.
    ``start`` (length ``matrix.shape[1]``) warm-starts the run, e.g. a stored spectral-norm v.
    Raises ``NumericalError`` on NaN/Inf.
    """
    return _lanczos(matrix, _max_abs(matrix), tol, precision, max_dim, seed, start, Method.LANCZOS)


def _lanczos(
    matrix: torch.Tensor,
    amax: float,
    tol: float,
    precision: str | None,
    max_dim: int,
    seed: int,
    start: torch.Tensor | None,
    method: Method,
    block: int | None = None,
) -> SigmaEstimate:
    import torch

    if precision is None:
        precision = "float64" if tol < FLOAT32_TOL_FLOOR else "float32"
    if precision not in ("float32", "float64"):
        raise ValueError(f"precision must be float32 or float64, not {precision!r}")
    if amax == 0.0:
        return SigmaEstimate(0.0, method, BoundKind.EXACT, 0, True, 0.0, True, algorithm="zero")
    dtype = torch.float64 if precision == "float64" else torch.float32
    exponent = pow2_exponent(amax, 16 if dtype == torch.float32 else 200)
    n = matrix.shape[1]
    ritz = _block_lanczos(
        _NormalOperator(matrix, dtype, exponent),
        n,
        dtype,
        matrix.device,
        tol=2.0 * tol,
        max_dim=min(max_dim, n),
        seed=seed,
        start=start,
        block=block,
    )
    sigma = _sigma_of(matrix, ritz.vector, exponent)
    error = ritz.error / (2.0 * ritz.theta) if ritz.theta > 0 else 0.0
    return SigmaEstimate(
        sigma,
        method,
        BoundKind.LOWER,
        ritz.steps,
        ritz.converged,
        error,
        algorithm=f"block-lanczos-{precision}",
    )


def power_iteration(
    matrix: torch.Tensor,
    *,
    iters: int = DEFAULT_POWER_ITERS,
    tol: float = DEFAULT_POWER_TOL,
    seed: int = DEFAULT_SEED,
    start: torch.Tensor | None = None,
) -> SigmaEstimate:
    """Power iteration on WᵀW (Miyato et al. 2018), float32 steps, float64 final value.

    Each step is v ← WᵀWv/‖WᵀWv‖ (one streamed pass over W). Stops when the relative change of
    the σ estimate falls below ``tol`` or after ``iters`` steps — a stopping rule, not an error
    bound. The reported σ is ‖Wv‖ for the final unit v computed in float64, hence a lower bound.
    ``start`` (length ``matrix.shape[1]``) replaces the seeded Gaussian start vector.
    """
    import torch

    amax = _max_abs(matrix)
    if amax == 0.0:
        return SigmaEstimate(0.0, Method.POWER, BoundKind.LOWER, 0, True, algorithm="power")
    exponent = pow2_exponent(amax, 16)
    operator = _NormalOperator(matrix, torch.float32, exponent)
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(1, matrix.shape[1], generator=generator, dtype=torch.float64)
    if start is not None and start.numel() == matrix.shape[1]:
        guess = start.detach().to(torch.float64).reshape(1, -1).cpu()
        if bool(torch.isfinite(guess).all()) and float(torch.linalg.vector_norm(guess)) > 0:
            v = guess
    v = v.to(device=matrix.device, dtype=torch.float32)
    v = v / torch.linalg.vector_norm(v)
    sigma_prev = 0.0
    converged = False
    used = 0
    for used in range(1, iters + 1):  # noqa: B007 - `used` is reported after the loop
        image = operator(v)
        norm = float(torch.linalg.vector_norm(image))
        if norm == 0.0 or not math.isfinite(norm):
            converged = norm == 0.0
            break
        v = image / norm
        sigma = math.sqrt(norm)
        if abs(sigma - sigma_prev) <= tol * sigma:
            converged = True
            break
        sigma_prev = sigma
    value = _sigma_of(matrix, v, exponent)
    return SigmaEstimate(value, Method.POWER, BoundKind.LOWER, used, converged, algorithm="power")


def _dense(matrix: torch.Tensor, method: Method, why: str = "") -> SigmaEstimate:
    name = "dense-eigvalsh-float64" + (f" ({why})" if why else "")
    return SigmaEstimate(
        exact_sigma(matrix), method, BoundKind.EXACT, None, None, 0.0, True, algorithm=name
    )


def _certify(matrix: torch.Tensor, estimate: SigmaEstimate) -> SigmaEstimate:
    """Add a proven upper bound from the Cholesky certificate of :mod:`.bounds`, if any.

    Tries δ from just above the estimated error up to 1e-2 on one float64 Gram matrix; the
    certificate's rounding margin is ≈5e-9 at 4096×11008, so δ ≥ 1e-8.
    """
    import dataclasses

    if estimate.sigma == 0.0 and estimate.certified:
        return dataclasses.replace(estimate, upper=0.0)
    floor = max(1e-8, 4.0 * (estimate.error_estimate or 0.0))
    deltas = [d for d in (1e-8, 1e-6, 1e-4, 1e-2) if d >= floor] or [floor]
    gram = ScaledGram.from_matrix(matrix)
    for delta in deltas:
        upper = (
            gram.certify(estimate.sigma, delta)
            if gram is not None
            else estimate.sigma * (1 + delta)
        )
        if upper is not None:
            return dataclasses.replace(estimate, certified=True, upper=float(upper))
    return estimate


def largest_singular_value(
    matrix: torch.Tensor,
    method: Method | str = Method.EXACT,
    *,
    iters: int = DEFAULT_POWER_ITERS,
    tol: float | None = None,
    seed: int = DEFAULT_SEED,
    start: torch.Tensor | None = None,
    device: str = "cpu",
    certify: bool = False,
) -> SigmaEstimate:
    """σ_max of a 2-D tensor of any float dtype (half types are upcast chunk by chunk).

    ``tol``: for ``auto``/``lanczos`` the relative error target (default ``DEFAULT_TOL``); for
    ``power`` the relative change that stops it (default ``DEFAULT_POWER_TOL``); unused by
    ``exact``/``dense``. ``iters`` caps power steps, and block-Lanczos steps of ``lanczos``.
    ``start`` is a warm-start right vector (length ``matrix.shape[1]``). ``device`` moves the
    matrix first ("cuda" needs a CUDA build; see :func:`resolve_device`). ``certify`` adds a
    proven upper bound (costs a float64 Gram matrix and a Cholesky factorization).
    Raises ``NumericalError`` when the matrix holds NaN or Inf (no σ would be meaningful) or
    when LAPACK fails on it (the caller reports that one layer as not measurable).

    A NumPy matrix (``start`` then NumPy too) is measured by the same methods on NumPy/LAPACK
    (:mod:`.spectral_numpy`, no torch) when the device is the CPU; on a GPU it is moved to torch.
    """
    if is_array(matrix):
        if device in ("", "cpu"):
            from sncli.numerics.spectral_numpy import largest_singular_value_array

            return largest_singular_value_array(
                matrix, Method(method), iters, tol, seed, start, certify
            )
        from sncli.arrays import to_torch

        matrix = to_torch(matrix)
        start = None if start is None else to_torch(start)
    import torch

    try:
        return _largest_singular_value(
            matrix, Method(method), iters, tol, seed, start, device, certify
        )
    except torch.linalg.LinAlgError as exc:
        raise NumericalError(
            "σ not measurable: float64 LAPACK did not converge on this matrix"
        ) from exc


def _largest_singular_value(
    matrix: torch.Tensor,
    method: Method,
    iters: int,
    tol: float | None,
    seed: int,
    start: torch.Tensor | None,
    device: str,
    certify: bool,
) -> SigmaEstimate:
    import torch

    matrix = matrix.detach()  # an nn.Parameter: no autograd warnings, no refused out= kernels
    if matrix.dim() != 2:
        raise ValueError(f"expected a matrix, got shape {tuple(matrix.shape)}")
    if matrix.is_complex():
        raise ValueError("complex matrices are not supported")
    if matrix.dtype not in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        matrix = matrix.to(torch.float32)  # float8 and integer types: exact in float32
    host = matrix
    if device != "cpu" or matrix.device.type != "cpu":
        matrix = matrix.to(device)
    amax = _max_abs(matrix)
    if amax == 0.0:
        estimate = SigmaEstimate(0.0, method, BoundKind.EXACT, 0, True, 0.0, True, 0.0, "zero")
    elif method is Method.POWER:
        estimate = power_iteration(
            matrix,
            iters=iters,
            tol=DEFAULT_POWER_TOL if tol is None else tol,
            seed=seed,
            start=start,
        )
    elif (
        method is Method.DENSE
        or (method is Method.AUTO and min(matrix.shape) <= DENSE_MAX_SIDE)
        or (method is Method.EXACT and min(matrix.shape) <= EXACT_DENSE_MAX_SIDE)
    ):
        estimate = _dense(matrix, method)
    elif method is Method.EXACT:
        estimate = _lanczos(
            matrix,
            amax,
            EXACT_TOL / 2,
            "float64",
            MAX_KRYLOV_DIM,
            seed,
            start,
            method,
            EXACT_BLOCK_SIZE,
        )
        if estimate.converged:
            estimate = _replace(estimate, bound=BoundKind.EXACT)
        else:
            estimate = _dense(matrix, method, "lanczos did not converge")
    else:
        target = DEFAULT_TOL if tol is None else tol
        max_dim = (
            MAX_KRYLOV_DIM if method is Method.AUTO else min(MAX_KRYLOV_DIM, iters * BLOCK_SIZE)
        )
        estimate = _lanczos(matrix, amax, target, None, max_dim, seed, start, method)
        if method is Method.AUTO and not estimate.converged:
            estimate = _dense(matrix, method, "lanczos did not converge")
    if certify:  # the certificate's rounding analysis is for the CPU's IEEE float64
        estimate = _certify(host.cpu(), estimate)
    return estimate


def _replace(estimate: SigmaEstimate, **changes: object) -> SigmaEstimate:
    import dataclasses

    return dataclasses.replace(estimate, **changes)  # type: ignore[arg-type]


DEVICE_NAME = re.compile(r"cpu|cuda(:\d+)?")


def check_device(device: str) -> str:
    """``device`` if it names a device sncli computes on (cpu, cuda, cuda:N); else ValueError."""
    if not DEVICE_NAME.fullmatch(device):
        raise ValueError(f"{device!r} is not a device sncli computes on: use cpu, cuda or cuda:N")
    return device


def resolve_device(device: str) -> tuple[str, str | None]:
    """The device to compute on and a note when the requested one is unavailable (then "cpu").

    A name other than cpu, cuda, cuda:N is a ``ValueError``, never a silent fallback.
    """
    if device in ("", "cpu"):
        return "cpu", None
    check_device(device)
    import torch

    probe = torch.device(device)
    if probe.type == "cuda" and not torch.cuda.is_available():
        return "cpu", f"device {device!r} requested but CUDA is not available; computed on the CPU"
    if (
        probe.type == "cuda"
        and probe.index is not None
        and probe.index >= torch.cuda.device_count()
    ):
        return "cpu", f"device {device!r} does not exist; computed on the CPU"
    return str(probe), None


def top_singular_vectors(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit u, v with Wv = σu for σ = σ_max (float64, via the smaller Gram matrix)."""
    import torch

    w = matrix.to(torch.float64)
    if w.shape[0] <= w.shape[1]:
        _, vectors = torch.linalg.eigh(w @ w.T)
        u = vectors[:, -1]
        v = w.T @ u
        v = v / torch.linalg.vector_norm(v)
    else:
        _, vectors = torch.linalg.eigh(w.T @ w)
        v = vectors[:, -1]
        u = w @ v
        u = u / torch.linalg.vector_norm(u)
    return u, v
