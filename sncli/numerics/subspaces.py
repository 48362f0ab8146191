"""Top singular subspaces of a matrix and the principal angles between two of them.

What ``sncli diff`` needs to say whether a fine-tune kept a layer's top singular directions:
the top-K left singular vectors of A and of B, the cosines of the principal angles between the
two subspaces (Björck & Golub 1973: the singular values of U_Aᵀ U_B), per direction of B how
much of it lies in A's subspace (‖U_Aᵀ u_j‖), and the intruder dimensions of Shuttleworth et
al. (2024): B's top singular vectors far from every singular vector of A, one at a time
(:func:`intruder_dimensions`). NumPy/SciPy only (no torch).

Vectors come from a dense float64 LAPACK SVD up to ``DENSE_SIDE``; above it from subspace
iteration with float32 products, A and B in lockstep from one start (:func:`top_subspaces`),
and a float64 Rayleigh–Ritz step on each final basis. Each subspace carries the sin θ of its
angle to the exact top-k subspace from Wedin's theorem (1972; Stewart & Sun, *Matrix
Perturbation Theory*, Thm V.4.4): max(‖sin Θ_left‖, ‖sin Θ_right‖) ≤ max(‖R‖, ‖S‖)/δ for the
Ritz residuals R = AW − UΣ̂, S = AᵀU − WΣ̂ and the gap δ = σ̂_k − σ_{k+1}. Dense, σ_{k+1} comes
from LAPACK (a bound, within rounding); iterative, σ_{k+1} is estimated from above by the
(k+1)-th Ritz value plus its residual (an estimate: a direction the iteration never saw cannot
be ruled out, as for every Krylov method). Since the cosines are the singular values of
P_A P_B, they move by at most ε_A + ε_B when the projectors move by ε_A and ε_B
(:func:`cosine_error`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sncli.errors import NumericalError

if TYPE_CHECKING:
    import numpy as np

#: Smaller side up to which the top vectors come from a dense float64 SVD (exact, and cheap
#: there). One thread, quiet: NumPy's SVD of 512×512 0.16 s, 2048×512 0.30 s, against ~0.03 s
#: for the iteration of a 512-sided pair; ``diff`` of the d=512 benchmark went from 6.1× to
#: 1.6× one ``inspect`` when 512 moved from dense to iterated.
DENSE_SIDE = 256
#: Columns beyond the k wanted: they carry the (k+1)-th Ritz pair for the gap and speed the
#: convergence of the k-th (rate σ_{p+1}/σ_k per product with AᵀA). 6: diff's 10 + 6 = 16
#: columns, where OpenBLAS's float32 GEMM on 4096×1024 takes 2.4 ms against 3.2 ms at 18.
OVERSAMPLE = 6
#: Default target of the cosine error (ε_A + ε_B): iterations stop once the estimate is below it.
DEFAULT_TOL = 1e-4
#: Fewest and most subspace-iteration steps (each: one product with A and one with Aᵀ). Four
#: keep ``diff`` of the 302M-parameter benchmark pair within 3× one ``inspect`` (six: 2.9–3.9×
#: under load); a top-K inside a bulk of nearly equal values is not resolved by any affordable
#: number (it is said so).
MIN_STEPS = 3
MAX_STEPS = 4
#: Steps of the standalone :func:`intruder_dimensions` (one matrix pair, no time budget).
STANDALONE_STEPS = 30
#: Each leading vector is iterated until its own sin θ estimate is below this (or it will not
#: be within ``MAX_STEPS``): enough to decide an intruder threshold such as 0.5.
VECTOR_TOL = 1e-3
#: A's top vectors computed beyond k to screen B's directions before any full SVD of A.
_SCREEN_EXTRA = 16
#: B's vector error below which an undecided intruder direction is worth A's full SVD.
_RESOLVED = 0.1
_EPS = 2.0**-53


@dataclass(frozen=True)
class TopSubspace:
    """The top left singular vectors of a matrix (columns of ``vectors``, m×r float64), its
    right vectors (``right``, n×r), the values, and how far they can be trusted.

    ``sin_theta[j]`` is the sin θ between the span of the first j + 1 columns and the exact
    top-(j + 1) left singular subspace (1 when nothing is known: a gap that is not resolved);
    ``estimate`` says it rests on an estimated σ_{j+2} (iterative) rather than LAPACK's.
    ``residual`` is max_j ‖Aᵀu_j − σ_j w_j‖/σ_1 of the pairs (≈1e-15 dense).
    """

    vectors: np.ndarray
    values: np.ndarray
    residual: float
    method: str
    right: np.ndarray | None = None
    sin_theta: np.ndarray | None = None
    #: sin θ of each column alone (its own gap to σ_{j−1} and σ_{j+1}).
    vector_errors: np.ndarray | None = None
    estimate: bool = False
    steps: int = 0
    #: Every left singular vector (m×min(m, n)), kept by the dense SVD for the intruder check.
    every: np.ndarray | None = None
    #: Estimated relative error of ``values[0]`` as σ_1 (a Ritz value: a lower bound), from
    #: its residual and gap as ``inspect``'s block Lanczos estimates it (0 dense).
    sigma_error: float = 0.0

    def error(self, k: int) -> float:
        """sin θ of the top-``k`` span (0 for an empty one)."""
        k = min(k, self.vectors.shape[1])
        if k == 0 or self.sin_theta is None:
            return 0.0
        return float(self.sin_theta[k - 1])


def as_float64(matrix: Any) -> np.ndarray:
    """``matrix`` as a NumPy float64 array (a NumPy array, bfloat16 bits included, or a torch
    tensor on any device). May share memory with ``matrix``."""
    import numpy as np

    from sncli.arrays import is_bfloat16, to_float64

    if is_bfloat16(matrix):  # uint16 bits: np.asarray would read them as integers
        return to_float64(matrix)
    if isinstance(matrix, np.ndarray):
        return np.asarray(matrix, dtype=np.float64)
    import torch  # only reached with a torch tensor, so torch is already loaded

    return matrix.detach().to("cpu", torch.float64).numpy()


def _exponent(a: np.ndarray) -> int:
    """e with max|a|·2^(−e) in [½, 1) (0 for a zero or empty matrix)."""
    peak = max(float(a.max()), -float(a.min())) if a.size else 0.0
    return math.frexp(peak)[1] if peak > 0 else 0


def _scaled(a: np.ndarray, exponent: int, dtype: Any) -> np.ndarray:
    """a·2^(−exponent) as ``dtype``, in one pass (two for factors beyond float64's range):
    exact barring subnormals."""
    import numpy as np

    out = np.empty(a.shape, dtype=dtype)  # multiplied in float64, rounded once on output
    if abs(exponent) < 1000:
        return np.multiply(a, math.ldexp(1.0, -exponent), out=out, casting="same_kind")
    half = -exponent // 2  # 2^-exponent overflows: two steps, the first in float64
    return np.multiply(
        a * math.ldexp(1.0, half), math.ldexp(1.0, -exponent - half), out=out, casting="same_kind"
    )


def _single(a: np.ndarray) -> np.ndarray | None:
    """A float32 copy of ``a`` for the iteration in one pass, when its entries lie well inside
    float32's range (max|a| in [2⁻⁶⁰, 2⁶⁰]: σ⁴-sized products stay finite and normal; always so
    for bfloat16/float16/float32 weights of ordinary size); else None (scale first)."""
    import numpy as np

    single = np.empty(a.shape, dtype=np.float32)
    with np.errstate(over="ignore"):  # an entry beyond float32: inf, caught below
        np.copyto(single, a, casting="same_kind")
    peak = max(float(single.max()), -float(single.min())) if single.size else 0.0
    if not math.ldexp(1.0, -60) <= peak <= math.ldexp(1.0, 60):  # also NaN, 0 and overflow
        return None
    return single


#: Float64 matrices are scaled to max|a| in [½, 1) only beyond 2^±this: σ-sized products stay
#: far from over- and underflow below it (float32 copies are always scaled).
_FLOAT64_RANGE = 400


def _rank(values: np.ndarray, shape: tuple[int, ...]) -> int:
    """How many values are above σ_1·max(m, n)·2⁻⁵² (directions of zero singular values are
    arbitrary: comparing them would report noise as rotation)."""
    if values.size == 0 or values[0] <= 0:
        return 0
    return int((values > values[0] * max(shape) * 2.0**-52).sum())


def _sin_theta(
    values: np.ndarray, residuals: np.ndarray, allowance: float, upper_next: np.ndarray
) -> np.ndarray:
    """Wedin's bound per leading span: ‖S_{:j}‖_F (+ rounding) over σ̂_j − σ_{j+1}."""
    import numpy as np

    cumulative = np.sqrt(np.cumsum(residuals**2)) + allowance
    gap = values - upper_next
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = np.where(gap > 0, cumulative / np.where(gap > 0, gap, 1.0), 1.0)
    return np.minimum(bound, 1.0)


def top_left_subspace(
    matrix: Any,
    k: int,
    *,
    seed: int = 0,
    tol: float = DEFAULT_TOL,
    start: Any = None,
    max_steps: int = MAX_STEPS,
) -> TopSubspace:
    """The top-``k`` left singular subspace of a 2-D array or tensor, with its sin θ.

    ``k`` is cut to the numerical rank (σ > σ_1·max(m, n)·2⁻⁵²); a zero matrix has an empty
    subspace (0 columns). Above ``DENSE_SIDE``: subspace iteration until the sin θ estimate
    of the top-k span is below ``tol``/2 (or stops improving); ``start``: right vectors to
    begin from (n×c, e.g. another matrix's ``right``); ``max_steps``: at most this many steps.
    """
    return top_subspaces([matrix], k, seed=seed, tol=tol, start=start, max_steps=max_steps)[0]


def top_subspaces(
    matrices: list[Any],
    k: int,
    *,
    seed: int = 0,
    tol: float = DEFAULT_TOL,
    start: Any = None,
    max_steps: int = MAX_STEPS,
) -> list[TopSubspace]:
    """:func:`top_left_subspace` of several matrices of one shape, iterated together (same
    start, same steps: see :func:`_float32_steps`)."""
    import dataclasses

    import numpy as np

    arrays = [as_float64(matrix) for matrix in matrices]
    m, n = arrays[0].shape
    iterated = min(m, n) > DENSE_SIDE
    singles = [_single(a) if iterated else None for a in arrays]
    exponents = [
        _exponent(a) if single is None else 0 for a, single in zip(arrays, singles, strict=True)
    ]
    shifts = [e if abs(e) > _FLOAT64_RANGE else 0 for e in exponents]
    arrays = [
        _scaled(a, shift, np.float64) if shift else a
        for a, shift in zip(arrays, shifts, strict=True)
    ]
    k = max(0, min(k, m, n))
    try:
        if not iterated:
            spaces = [_dense(a, k) for a in arrays]
        else:
            singles = [
                _scaled(a, e - shift, np.float32) if single is None else single
                for a, e, shift, single in zip(arrays, exponents, shifts, singles, strict=True)
            ]
            spaces = _iterative(arrays, singles, k, seed, tol, start, max_steps)
    except np.linalg.LinAlgError as exc:
        raise NumericalError(
            "top singular subspace not measurable: float64 LAPACK did not converge"
        ) from exc
    return [
        dataclasses.replace(space, values=np.ldexp(space.values, shift))
        for space, shift in zip(spaces, shifts, strict=True)
    ]


def _dense(a: np.ndarray, k: int) -> TopSubspace:
    import numpy as np

    m, n = a.shape
    left, values, right_t = np.linalg.svd(a, full_matrices=False)
    rank = min(k, _rank(values, a.shape))
    every = left
    left, right = left[:, :rank], right_t[:rank].T
    residuals = np.linalg.norm(a.T @ left - right * values[:rank], axis=0)
    following = values[1 : rank + 1] if rank < values.size else np.zeros(0)
    following = np.concatenate([following, np.zeros(rank - following.size)])
    # LAPACK's σ are backward stable: each within ~min(m,n)·u·σ_1 of the true one
    slack = 4 * min(m, n) * _EPS * float(values[0]) if values.size else 0.0
    sin_theta = _sin_theta(values[:rank] - slack, residuals, slack, following + slack)
    errors = _vector_errors(values[:rank] - 2 * slack, residuals, slack, following)
    top = float(values[0]) if rank else 1.0
    return TopSubspace(
        vectors=left,
        values=values[:rank].copy(),
        residual=float(residuals.max()) / top if rank else 0.0,
        method="dense float64 (LAPACK SVD)",
        right=right,
        sin_theta=sin_theta,
        vector_errors=errors,
        every=every,
    )


def _ritz(a: np.ndarray, basis: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rayleigh–Ritz from a right basis V (orthonormal columns): AV = UΣ̂Wᵀ gives left Ritz
    vectors U, values Σ̂ and right Ritz vectors VW (then AW − UΣ̂ = 0 up to rounding)."""
    import numpy as np

    image = a @ basis
    q, r = np.linalg.qr(image)
    small_left, values, small_right_t = np.linalg.svd(r)
    return q @ small_left, values, basis @ small_right_t.T


def _float32_steps(
    singles: list[np.ndarray], bases: list[np.ndarray], k: int, tol: float, max_steps: int
) -> tuple[list[np.ndarray], int, bool]:
    """Subspace iteration on AᵀA in float32 for each matrix, in lockstep: each step's Ritz
    pairs (float32 products, float64 p×p eigenproblem) give the sin θ estimate of the top-k
    span; all stop together once each is below ``tol``, at the float32 rounding floor, or
    settled (see :func:`_settled`). The same start and the same number of steps for A and B
    make their truncation errors alike, so the cosines between the two spans come out better
    than each span's own sin θ (measured in bench/diff.py). Returns the last bases, the steps
    taken and whether float32 rounding stopped one of them."""
    import numpy as np

    bases = [basis.astype(np.float32) for basis in bases]
    previous = [np.full(basis.shape[1], math.inf) for basis in bases]
    floored, steps = False, 0
    for steps in range(1, max_steps + 1):
        finished = True
        for index, single in enumerate(singles):
            basis = bases[index]
            image = single @ basis
            squares, small = np.linalg.eigh((image.T @ image).astype(np.float64))
            values, small = np.sqrt(squares[::-1].clip(min=0.0)), small[:, ::-1]
            usable = values > values[0] * 1e-6
            scale = np.where(usable, 1.0 / np.where(usable, values, 1.0), 0.0)
            left = (image @ small.astype(np.float32)) * scale.astype(np.float32)
            back = single.T @ left
            residuals = np.linalg.norm(
                back.astype(np.float64) - (basis.astype(np.float64) @ small) * values, axis=0
            )
            residual, gap = _progress(values, residuals, k)
            # the float32 products' rounding floor of a residual
            floor = 64 * 2.0**-24 * math.sqrt(single.shape[1]) * float(values[0])
            if float(residuals[:k].max()) <= floor and residual > tol * gap:
                floored = True
            elif residual > tol * gap and not (
                steps >= MIN_STEPS
                and _settled(values, residuals, previous[index], k, tol, max_steps - steps)
            ):
                finished = False
            previous[index] = residuals
            bases[index] = np.linalg.qr(back)[0]
        if finished:
            break
    # float32 QR leaves the columns orthonormal to ~1e-8 only: Rayleigh–Ritz needs them exact
    return [np.linalg.qr(basis.astype(np.float64))[0] for basis in bases], steps, floored


def _iterative(
    matrices: list[np.ndarray],
    singles: list[np.ndarray],
    k: int,
    seed: int,
    tol: float,
    start: Any,
    max_steps: int,
) -> list[TopSubspace]:
    """Subspace iteration with p = k + ``OVERSAMPLE`` columns from one start for every matrix:
    float32 steps in lockstep, then per matrix a float64 Rayleigh–Ritz step on its final basis
    (and float64 steps while the float32 floor kept its sin θ estimate above ``tol``/2 and it
    still falls fast enough)."""
    import numpy as np

    m, n = matrices[0].shape
    p = min(k + OVERSAMPLE, m, n)
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((n, p))
    if start is not None and start.shape[1]:
        width = min(p, start.shape[1])
        basis[:, :width] = start[:, :width]
    basis = np.linalg.qr(basis)[0]
    bases, steps, floor = _float32_steps(
        singles, [basis] * len(singles), max(k, 1), tol / 2, max_steps
    )
    return [
        _finish(a, b, k, tol, steps, floor, max_steps) for a, b in zip(matrices, bases, strict=True)
    ]


def _finish(
    a: np.ndarray, basis: np.ndarray, k: int, tol: float, steps: int, floor: bool, max_steps: int
) -> TopSubspace:
    """Float64 Rayleigh–Ritz on the final basis, its residuals and the sin θ estimates."""
    import numpy as np

    m, n = a.shape
    p = basis.shape[1]
    target = max(k, 1)
    previous = math.inf
    precision = "float32"
    while True:
        left, values, right = _ritz(a, basis)
        back = a.T @ left
        residuals = np.linalg.norm(back - right * values, axis=0)
        residual, gap = _progress(values, residuals, target)
        if not floor or residual <= tol / 2 * gap or steps >= 2 * max_steps:
            break
        goal = tol / 2 * gap
        if previous < math.inf and _hopeless(residual / previous, residual, goal, max_steps):
            break
        previous, steps, precision = residual, steps + 1, "float32 + float64"
        basis = np.linalg.qr(back)[0]
    # rounding of AW and AᵀU: γ_max(m,n)·‖A‖_F·(a few), ‖A‖_F ≤ √min(m, n)·σ_1
    allowance = 4 * max(m, n) * _EPS * math.sqrt(min(m, n)) * float(values[0] + residuals[0])
    rank = min(k, _rank(values, a.shape))
    upper = values + residuals  # σ̂_j plus its residual: an estimate of σ_j from above
    # past the last column nothing is known, unless the columns span all of A's row space
    last = 0.0 if p == min(m, n) else math.inf
    following = np.array([upper[j + 1 :].max() if j + 1 < p else last for j in range(p)])
    sin_theta = _sin_theta(values, residuals, allowance, following)
    top = float(values[0]) if rank else 1.0
    return TopSubspace(
        sigma_error=_sigma_error(values, residuals),
        vectors=left[:, :rank],
        values=values[:rank].copy(),
        residual=float(residuals[:rank].max()) / top if rank else 0.0,
        method=f"subspace iteration ({steps} steps {precision}, Rayleigh–Ritz float64)",
        right=right,
        sin_theta=sin_theta[:rank],
        vector_errors=_vector_errors(values, residuals, allowance, following)[:rank],
        estimate=True,
        steps=steps,
    )


def _vector_errors(
    values: np.ndarray, residuals: np.ndarray, allowance: float, following: np.ndarray
) -> np.ndarray:
    """sin θ of each singular vector pair alone: its residual over the distance from σ̂_j to
    every other singular value (above: σ̂_{j−1}, a lower bound of σ_{j−1}; below: ``following``;
    and σ̂_j itself, the distance to the −σ_i of the Jordan–Wielandt matrix)."""
    import numpy as np

    above = np.concatenate([[math.inf], values[:-1]]) - values
    below = values - following
    gap = np.minimum(np.minimum(above, below), values)
    with np.errstate(divide="ignore", invalid="ignore"):
        error = np.where(gap > 0, (residuals + allowance) / np.where(gap > 0, gap, 1.0), 1.0)
    return np.minimum(error, 1.0)


def _sigma_error(values: np.ndarray, residuals: np.ndarray) -> float:
    """(σ_1 − σ̂_1)/σ_1 estimated on AᵀA: θ = σ̂², residual η = σ̂·s (AW = UΣ̂ exactly), error
    min(η, η²/gap) with gap = θ − θ_2 − η_2, relative to 2θ (sncli.numerics.spectral's rule)."""
    if values.size == 0 or values[0] <= 0:
        return 0.0
    theta = float(values[0]) ** 2
    error = float(values[0] * residuals[0])
    if values.size > 1:
        gap = theta - float(values[1]) ** 2 - float(values[1] * residuals[1])
        if gap > error:
            error = min(error, error * error / gap)
    return error / (2.0 * theta)


def _progress(values: np.ndarray, residuals: np.ndarray, k: int) -> tuple[float, float]:
    """‖S_k‖_F and the gap it is divided by in the sin θ estimate of the top-k span: below σ̂_k
    the next Ritz value plus its residual, or while that overlaps σ̂_k, the Ritz values' own
    gap (what the residual must at least get below for the estimate to say anything)."""
    import numpy as np

    residual = float(np.sqrt((residuals[:k] ** 2).sum()))
    if k >= values.size:
        return residual, float(values[k - 1])
    gap = float(values[k - 1]) - float((values[k:] + residuals[k:]).max())
    if gap <= 0:
        gap = float(values[k - 1] - values[k])
    return residual, max(gap, float(values[0]) * 2.0**-52)


def _settled(
    values: np.ndarray,
    residuals: np.ndarray,
    previous: np.ndarray,
    k: int,
    tol: float,
    remaining: int,
) -> bool:
    """Whether every one of the first k Ritz vectors is resolved (residual below ``tol`` times
    its gap to the neighbouring Ritz values) or will not be within ``remaining`` steps at its rate:
    the spans of well-separated leading vectors keep converging while a bulk of close singular
    values below them, which no affordable number of steps resolves, stops the iteration."""
    import numpy as np

    above = np.concatenate([[math.inf], values[:-1]]) - values
    below = np.concatenate([values[1:], [0.0]])
    gaps = np.maximum(np.minimum(above, values - below), float(values[0]) * 2.0**-52)
    for j in range(min(k, values.size)):
        goal = max(tol, VECTOR_TOL) * gaps[j]
        if residuals[j] > goal and not _hopeless(
            residuals[j] / previous[j], float(residuals[j]), goal, remaining
        ):
            return False
    return True


def _hopeless(rate: float, residual: float, goal: float, remaining: int) -> bool:
    """Whether the residual, falling by ``rate`` per step, would stay above ``goal`` through the
    ``remaining`` steps (or stagnates: rate above 0.9)."""
    if rate > 0.9:
        return True
    return math.log(goal / residual) / math.log(max(rate, 1e-300)) > remaining


def cosine_error(first: TopSubspace, second: TopSubspace, k: int) -> float:
    """How far the principal cosines of the two top-``k`` spans can be from the exact ones:
    ε_A + ε_B (Weyl's inequality for the singular values of P_A P_B), at most 1."""
    return min(1.0, first.error(k) + second.error(k))


def principal_cosines(first: Any, second: Any) -> list[float]:
    """Cosines of the principal angles between the column spaces of two orthonormal bases,
    largest first (1 = a shared direction, 0 = orthogonal); as many as the smaller basis has
    columns (none when either is empty)."""
    import numpy as np

    first, second = np.asarray(first), np.asarray(second)
    if first.shape[1] == 0 or second.shape[1] == 0:
        return []
    values = np.linalg.svd(first.T @ second, compute_uv=False)
    return [min(1.0, float(v)) for v in values]


def captured_fractions(reference: Any, directions: Any) -> list[float]:
    """‖referenceᵀ d_j‖ for each unit column d_j: the part of it inside the reference span."""
    import numpy as np

    norms = np.linalg.norm(np.asarray(reference).T @ np.asarray(directions), axis=0)
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
    #: Directions whose largest |cos| is within its vector's error of the threshold (their
    #: vectors are not resolved: a singular value too close to a neighbour for the iterations).
    unresolved: tuple[int, ...] = ()


def intruder_dimensions(
    base: Any, tuned: Any, k: int, threshold: float, *, seed: int = 0
) -> Intruders | None:
    """Which of ``tuned``'s top-``k`` left singular vectors are intruders against ``base``.

    The definition is PEFT's ``_calc_intruder_ids``: each of B's top-k left singular vectors
    (``full_matrices=False``) against all min(m, n) left singular vectors of A, one at a time.
    It needs A's full SVD (O(mn·min(m, n))); above ``DENSE_SIDE`` A's top k + 16 vectors are
    computed first (see :func:`screen_intruders`). None when A is zero (its singular vectors
    are arbitrary).
    """
    a = as_float64(base)
    m, n = a.shape
    top_b = top_left_subspace(tuned, k, seed=seed, max_steps=STANDALONE_STEPS)
    top_a = None
    if min(m, n) > DENSE_SIDE:
        top_a = top_left_subspace(
            a, min(m, n, k + _SCREEN_EXTRA), seed=seed, max_steps=STANDALONE_STEPS
        )
    return screen_intruders(a, top_a, top_b, k, threshold)


def screen_intruders(
    a: np.ndarray, top_a: TopSubspace | None, top_b: TopSubspace, k: int, threshold: float
) -> Intruders | None:
    """The intruders among ``top_b``'s first ``k`` vectors against float64 ``a``.

    Each direction's decision allows for the error of B's vector (``vector_errors``): a
    direction whose largest |cos| lies within that error of the threshold is ``unresolved``
    (no full SVD of A can settle it). With ``top_a`` (A's top vectors; not needed up to
    ``DENSE_SIDE``) a direction is decided when one of them has |cos| ≥ threshold beyond both
    vectors' errors (not an intruder), or when the part of u_j outside their span, plus that
    span's sin θ, is below the threshold (no other singular vector of A can reach it: an
    intruder); A's full SVD is paid for only when an undecided direction's own error is below
    ``_RESOLVED``.
    """
    import numpy as np

    zero = top_a.vectors.shape[1] == 0 if top_a is not None else not bool(np.any(a))
    if zero:  # (a nonzero A has at least one top vector)
        return None
    vectors = top_b.vectors[:, :k]
    count = vectors.shape[1]
    if count == 0:
        return Intruders((), 0, False)
    errors = _errors(top_b, count)
    undecided = np.ones(count, dtype=bool)
    intruder = np.zeros(count, dtype=bool)
    if top_a is not None and top_a.every is None and top_a.vectors.shape[1]:
        cosines = top_a.vectors.T @ vectors
        which = np.abs(cosines).argmax(axis=0)
        best = np.abs(cosines)[which, np.arange(count)]
        margin = errors + _errors(top_a, top_a.vectors.shape[1])[which]
        outside = np.sqrt(np.clip(1.0 - (cosines**2).sum(axis=0), 0.0, None))
        span = top_a.error(top_a.vectors.shape[1])
        kept = best - margin >= threshold
        far = best + margin < threshold  # no computed vector of A comes near u_j
        intruder = far & (outside + span + errors < threshold)
        undecided = ~(kept | intruder)
        # only a direction far from A's top vectors with much of it outside their span can be
        # a new direction that A's full SVD would settle (a LoRA-style intruder); one close to
        # a cluster of A's vectors the iterations did not separate stays unresolved
        wanted = undecided & far & (errors < _RESOLVED)
    else:
        wanted = undecided
    every = None if top_a is None else top_a.every
    full = every is None and bool(wanted.any())
    if top_a is None or full or every is not None:
        try:
            left = every if every is not None else np.linalg.svd(a, full_matrices=False)[0]
        except np.linalg.LinAlgError as exc:
            raise NumericalError(
                "intruder dimensions not measurable: float64 LAPACK SVD did not converge"
            ) from exc
        best = np.abs(left.T @ vectors).max(axis=0)
        decided = wanted & (np.abs(best - threshold) > errors)
        intruder = np.where(decided, best < threshold, intruder)
        undecided = undecided & ~decided
    return Intruders(
        tuple(int(j) for j in np.nonzero(intruder)[0]),
        count,
        full or every is not None or top_a is None,
        tuple(int(j) for j in np.nonzero(undecided)[0]),
    )


def _errors(space: TopSubspace, count: int) -> np.ndarray:
    import numpy as np

    if space.vector_errors is None:
        return np.zeros(count)
    return space.vector_errors[:count]


@dataclass(frozen=True)
class Comparison:
    """How B's top singular directions relate to A's (see :func:`compare_directions`).

    ``cosines``: of the principal angles between the top-``top_k`` left subspaces (None when
    not asked for or a side is zero); ``cosine_error``: how far each can be from the exact
    one (ε_A + ε_B, Wedin; ``estimate`` when iterative); ``captured``: ‖U_Aᵀ u_j‖ per
    direction of B; ``intruders``: see :func:`screen_intruders`.
    """

    cosines: tuple[float, ...] | None
    cosine_error: float | None
    captured: tuple[float, ...] | None
    intruders: Intruders | None
    estimate: bool
    method: str
    #: (σ̂_1, its estimated relative error) of A and of B: Ritz values, lower bounds of σ_1.
    sigmas: tuple[tuple[float, float], tuple[float, float]] = ((0.0, 0.0), (0.0, 0.0))


def compare_directions(
    a: Any,
    b: Any,
    top_k: int,
    intruder_k: int,
    intruder_threshold: float,
    *,
    seed: int = 0,
    tol: float = DEFAULT_TOL,
) -> Comparison:
    """The top-``top_k`` subspace overlap of A and B and B's top-``intruder_k`` intruders,
    from one top subspace per side, iterated together (A's also screens the intruders)."""
    a, b = as_float64(a), as_float64(b)
    width = max(top_k, intruder_k)
    space_a, space_b = top_subspaces([a, b], width, seed=seed, tol=tol)
    cosines = error = captured = None
    if top_k and space_a.vectors.shape[1] and space_b.vectors.shape[1]:
        first, second = space_a.vectors[:, :top_k], space_b.vectors[:, :top_k]
        cosines = tuple(principal_cosines(first, second))
        captured = tuple(captured_fractions(first, second))
        error = cosine_error(space_a, space_b, top_k)
    intruders = None
    if intruder_k:
        intruders = screen_intruders(a, space_a, space_b, intruder_k, intruder_threshold)
    sigmas = tuple(
        (float(space.values[0]) if space.values.size else 0.0, space.sigma_error)
        for space in (space_a, space_b)
    )
    return Comparison(
        cosines,
        error,
        captured,
        intruders,
        space_a.estimate,
        f"{space_a.method}; {space_b.method}",
        sigmas,  # type: ignore[arg-type]
    )
