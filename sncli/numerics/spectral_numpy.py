"""σ_max of a NumPy matrix on the CPU: :mod:`.spectral`'s methods without torch.

The same algorithms, constants, tolerances and random start blocks as the torch kernels in
:mod:`.spectral` (whose docstring explains them): float64 Gram + ``eigvalsh`` (dense), block
Lanczos on WᵀW streamed in converted chunks, power iteration, the Cholesky certificate. Only
the arithmetic library differs (NumPy's OpenBLAS/LAPACK instead of torch's), so results agree
with the torch path to rounding: float64 values to ~1e-15 relative, float32 block Lanczos to
its float32 products (~1e-7 at worst; the start blocks are torch's, :func:`sncli.arrays.
torch_randn`). :func:`sncli.numerics.spectral.largest_singular_value` sends NumPy input here
when it computes on the CPU.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from sncli.arrays import as_float, is_bfloat16, torch_randn, upcast
from sncli.errors import NumericalError
from sncli.numerics import estimates as sp
from sncli.numerics.bounds_numpy import certify_upper
from sncli.numerics.estimates import BoundKind, Method, SigmaEstimate
from sncli.numerics.floating import check_finite_array, pow2_exponent, scale_

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import numpy as np


def as_matrix_array(weight: np.ndarray, reshape_dim: int = 0) -> np.ndarray:
    """:func:`sncli.numerics.spectral.as_matrix` for a NumPy array (a view where possible)."""
    if weight.ndim < 2:
        raise ValueError(f"need at least 2 dimensions, got shape {tuple(weight.shape)}")
    if reshape_dim != 0:
        order = [reshape_dim, *[d for d in range(weight.ndim) if d != reshape_dim]]
        weight = weight.transpose(order)
    return weight.reshape(weight.shape[0], -1)


def _row_chunks(matrix: np.ndarray) -> Iterator[np.ndarray]:

    m, n = matrix.shape
    step = max(1, sp.CHUNK_ELEMENTS // max(n, 1))
    for start in range(0, m, step):
        yield matrix[start : start + step]


def max_abs(matrix: np.ndarray) -> float:
    """max|w| without a full copy; raises ``NumericalError`` on NaN/Inf."""
    if matrix.size == 0:
        return 0.0
    value = 0.0
    for chunk in _row_chunks(matrix):
        values = upcast(chunk) if is_bfloat16(chunk) else chunk
        low, high = float(values.min()), float(values.max())
        if not (math.isfinite(low) and math.isfinite(high)):  # NaN would slip through max()
            value = math.nan
            break
        value = max(value, -low, high)
    if not math.isfinite(value):
        check_finite_array(matrix)
    return value


def _chunk64(part: np.ndarray, exponent: int) -> np.ndarray:
    import numpy as np

    return scale_(upcast(part, np.float64), exponent)


def _gram64(matrix: np.ndarray, exponent: int, lower_only: bool = False) -> np.ndarray:
    """float64 Gram matrix of the smaller side of 2^e·matrix (as :func:`.spectral._gram64`)."""
    import numpy as np

    m, n = matrix.shape
    tall = m >= n
    side = n if tall else m
    gram = np.zeros((side, side), dtype=np.float64)
    length = m if tall else n
    step = max(1, sp.CHUNK_ELEMENTS // max(side, 1), sp.GRAM_MIN_RANK)
    for start in range(0, length, step):
        part = matrix[start : start + step] if tall else matrix[:, start : start + step].T
        chunk = _chunk64(part, exponent)
        if lower_only and side >= sp.GRAM_BLOCK_SIDE:
            for row in range(0, side, sp.GRAM_BLOCK):
                end = min(side, row + sp.GRAM_BLOCK)
                gram[row:end, :end] += chunk[:, row:end].T @ chunk[:, :end]
        else:
            gram += chunk.T @ chunk
    return gram


def exact_sigma_array(matrix: np.ndarray) -> float:
    """σ_max via float64 ``eigvalsh`` of the smaller Gram matrix (scaled to avoid overflow)."""
    import numpy as np

    if matrix.size == 0:
        return 0.0
    amax = max_abs(matrix)
    if amax == 0.0:
        return 0.0
    exponent = pow2_exponent(amax)
    if matrix.shape[0] == 1 or matrix.shape[1] == 1:
        return math.ldexp(float(np.linalg.norm(_chunk64(matrix, exponent))), -exponent)
    gram = _gram64(matrix, exponent, lower_only=True)
    top = float(np.linalg.eigvalsh(gram, UPLO="L")[-1])
    return math.ldexp(math.sqrt(max(top, 0.0)), -exponent)


def _norm(vector: np.ndarray) -> float:
    """‖x‖₂ without underflow or overflow of the squares."""
    import numpy as np

    largest = float(np.abs(vector).max()) if vector.size else 0.0
    if largest == 0.0 or not math.isfinite(largest):
        return largest
    exponent = pow2_exponent(largest)
    scaled = scale_(vector.astype(np.float64, copy=True), exponent)
    return math.ldexp(float(np.linalg.norm(scaled)), -exponent)


def matvec64_array(matrix: np.ndarray, vector: np.ndarray, exponent: int = 0) -> np.ndarray:
    """(2^e·matrix) @ vector in float64, converting W a chunk of rows at a time."""
    import numpy as np

    x = np.asarray(vector, dtype=np.float64).reshape(-1)
    if matrix.dtype == np.float64 and not is_bfloat16(matrix) and exponent == 0:
        return matrix @ x
    out = np.empty(matrix.shape[0], dtype=np.float64)
    start = 0
    for chunk in _row_chunks(matrix):
        np.matmul(_chunk64(chunk, exponent), x, out=out[start : start + chunk.shape[0]])
        start += chunk.shape[0]
    return out


def _sigma_of(matrix: np.ndarray, vector: np.ndarray, exponent: int) -> float:
    import numpy as np

    x = np.asarray(vector, dtype=np.float64).reshape(-1)
    x = x / np.linalg.norm(x)
    return math.ldexp(_norm(matvec64_array(matrix, x, exponent)), -exponent)


#: A matrix whose converted (upcast, scaled) copy takes at most this many bytes is converted
#: once per operator rather than a chunk at a time on every product (4096² float32: 64 MiB).
CONVERTED_COPY_BYTES = 64 << 20


class _NormalOperator:
    """X ↦ X·(sWᵀ)(sW), s = 2^e, for blocks X of row vectors, streaming W in converted chunks."""

    def __init__(self, matrix: np.ndarray, dtype: np.dtype, exponent: int) -> None:
        import numpy as np

        self.matrix = matrix
        self.dtype = np.dtype(dtype)
        self.exponent = exponent
        bf16 = is_bfloat16(matrix)
        self.scale_first = exponent != 0 and (
            (matrix.dtype == np.float64 and not bf16) or abs(exponent) > sp.FLOAT32_SAFE_EXPONENT
        )
        m, n = matrix.shape
        self.rows = max(1, min(m, sp.CHUNK_ELEMENTS // max(n, 1)))
        self.direct = (
            not bf16 and matrix.dtype == self.dtype and exponent == 0 and matrix.flags.c_contiguous
        )
        self.buffer = None if self.direct else np.empty((self.rows, n), dtype=self.dtype)
        if not self.direct and m * n * self.dtype.itemsize <= CONVERTED_COPY_BYTES:
            # Convert once, not on every step: the same chunks and values (so the same
            # products), without re-reading bf16 bits each pass (a quarter of a float32 step's
            # time at 4096×1024; this bounds the copy's memory per worker).
            converted = np.empty((m, n), dtype=self.dtype)
            start = 0
            for chunk in self._chunks():
                converted[start : start + chunk.shape[0]] = chunk
                start += chunk.shape[0]
            self.matrix, self.direct, self.buffer = converted, True, None

    def _chunks(self) -> Iterator[np.ndarray]:
        m = self.matrix.shape[0]
        for start in range(0, m, self.rows):
            part = self.matrix[start : start + self.rows]
            if self.buffer is None:
                yield part
                continue
            chunk = self.buffer[: part.shape[0]]
            if self.scale_first:
                chunk[...] = _chunk64(part, self.exponent)
            else:
                scale_(upcast(part, self.dtype, out=chunk), self.exponent)
            yield chunk

    def __call__(self, block: np.ndarray) -> np.ndarray:
        import numpy as np

        out = np.zeros_like(block)
        for chunk in self._chunks():
            # (W·Xᵀ)ᵀ·W: OpenBLAS's thin GEMMs run 1.5–2× faster in this order than as
            # (X·Wᵀ)·W (4 rows of 1024 against a 256×1024 float32 chunk: 4.8 against 8–10 ms
            # per 1024×4096 matrix, one thread).
            out += (chunk @ block.T).T @ chunk
        return out


def _orthonormal_rows(block: np.ndarray, basis: np.ndarray | None) -> np.ndarray:
    """Rows of ``block`` orthonormalized against ``basis`` (twice) and QR, with deflation."""
    import numpy as np

    before = float(np.linalg.norm(block, axis=1).max())
    if basis is not None and basis.shape[0]:
        for _ in range(2):
            block = block - (block @ basis.T) @ basis
    _, values, directions = np.linalg.svd(block, full_matrices=False)
    eps = np.finfo(block.dtype).eps
    keep = values > 64 * eps * math.sqrt(block.shape[1]) * before
    if not bool(keep.any()):
        return block[:0]
    block = directions[keep]
    if basis is not None and basis.shape[0]:
        block = block - (block @ basis.T) @ basis
    return np.ascontiguousarray(np.linalg.qr(block.T)[0].T)


def _block_lanczos(
    operator: Callable[[np.ndarray], np.ndarray],
    n: int,
    dtype: np.dtype,
    *,
    tol: float,
    max_dim: int,
    seed: int,
    start: np.ndarray | None,
    block: int | None = None,
) -> tuple[float, np.ndarray, float, int, bool]:
    """:func:`.spectral._block_lanczos` on NumPy: (θ, Ritz vector, error, steps, converged)."""
    import numpy as np

    width = max(1, min(block or sp.BLOCK_SIZE, n))
    min_steps = 1 if start is None else sp.WARM_START_MIN_STEPS
    first = torch_randn(seed, (width, n))
    if start is not None and start.size == n:
        guess = upcast(start, np.float64).reshape(-1)
        norm = float(np.linalg.norm(guess))
        if math.isfinite(norm) and norm > 0:
            first[0] = guess / norm
    basis = _orthonormal_rows(first.astype(dtype), None)
    images = operator(basis)
    gram = (basis @ images.T).astype(np.float64)
    gram = (gram + gram.T) / 2
    last = basis.shape[0]
    steps = 1
    while True:
        values, vectors = np.linalg.eigh(gram)
        k = values.shape[0]
        top = vectors[:, -1].astype(dtype)
        ritz = top @ basis
        theta = float(values[-1])
        residual = float(np.linalg.norm(top @ images - dtype.type(theta) * ritz))
        error = residual
        if k > 1:
            second = vectors[:, -2].astype(dtype)
            rho2 = float(
                np.linalg.norm(second @ images - dtype.type(values[-2]) * (second @ basis))
            )
            gap = theta - float(values[-2]) - rho2
            if gap > residual:
                error = min(residual, residual * residual / gap)
        complete = k >= n
        converged = complete or theta <= 0.0 or (steps >= min_steps and error <= tol * theta)
        if converged or k >= max_dim:
            return theta, ritz, error, steps, converged
        fresh = _orthonormal_rows(images[k - last :], basis)[: max_dim - k]
        if fresh.shape[0] == 0:
            return theta, ritz, error, steps, True
        fresh_images = operator(fresh)
        cross = (basis @ fresh_images.T).astype(np.float64)
        corner = (fresh @ fresh_images.T).astype(np.float64)
        corner = (corner + corner.T) / 2
        gram = np.block([[gram, cross], [cross.T, corner]])
        basis = np.concatenate([basis, fresh])
        images = np.concatenate([images, fresh_images])
        last = fresh.shape[0]
        steps += 1


def lanczos_array(
    matrix: np.ndarray,
    amax: float,
    tol: float,
    precision: str | None,
    max_dim: int,
    seed: int,
    start: np.ndarray | None,
    method: Method,
    block: int | None = None,
) -> SigmaEstimate:
    """:func:`.spectral._lanczos` on NumPy."""
    import numpy as np

    if precision is None:
        precision = "float64" if tol < sp.FLOAT32_TOL_FLOOR else "float32"
    if precision not in ("float32", "float64"):
        raise ValueError(f"precision must be float32 or float64, not {precision!r}")
    if amax == 0.0:
        return SigmaEstimate(0.0, method, BoundKind.EXACT, 0, True, 0.0, True, algorithm="zero")
    dtype = np.dtype(np.float64 if precision == "float64" else np.float32)
    exponent = pow2_exponent(amax, 16 if dtype == np.float32 else 200)
    n = matrix.shape[1]
    theta, vector, error, steps, converged = _block_lanczos(
        _NormalOperator(matrix, dtype, exponent),
        n,
        dtype,
        tol=2.0 * tol,
        max_dim=min(max_dim, n),
        seed=seed,
        start=start,
        block=block,
    )
    sigma = _sigma_of(matrix, vector, exponent)
    relative = error / (2.0 * theta) if theta > 0 else 0.0
    return SigmaEstimate(
        sigma,
        method,
        BoundKind.LOWER,
        steps,
        converged,
        relative,
        algorithm=f"block-lanczos-{precision}",
    )


def power_array(
    matrix: np.ndarray, *, iters: int, tol: float, seed: int, start: np.ndarray | None
) -> SigmaEstimate:
    """:func:`.spectral.power_iteration` on NumPy."""
    import numpy as np

    amax = max_abs(matrix)
    if amax == 0.0:
        return SigmaEstimate(0.0, Method.POWER, BoundKind.LOWER, 0, True, algorithm="power")
    exponent = pow2_exponent(amax, 16)
    operator = _NormalOperator(matrix, np.dtype(np.float32), exponent)
    v = torch_randn(seed, (1, matrix.shape[1]))
    if start is not None and start.size == matrix.shape[1]:
        guess = upcast(start, np.float64).reshape(1, -1)
        if bool(np.isfinite(guess).all()) and float(np.linalg.norm(guess)) > 0:
            v = guess
    v = v.astype(np.float32)
    v = v / np.linalg.norm(v)
    sigma_prev = 0.0
    converged = False
    used = 0
    for used in range(1, iters + 1):  # noqa: B007 - `used` is reported after the loop
        image = operator(v)
        norm = float(np.linalg.norm(image))
        if norm == 0.0 or not math.isfinite(norm):
            converged = norm == 0.0
            break
        v = image / np.float32(norm)
        sigma = math.sqrt(norm)
        if abs(sigma - sigma_prev) <= tol * sigma:
            converged = True
            break
        sigma_prev = sigma
    value = _sigma_of(matrix, v, exponent)
    return SigmaEstimate(value, Method.POWER, BoundKind.LOWER, used, converged, algorithm="power")


def largest_singular_value_array(
    matrix: np.ndarray,
    method: Method,
    iters: int,
    tol: float | None,
    seed: int,
    start: np.ndarray | None,
    certify: bool,
) -> SigmaEstimate:
    """:func:`.spectral._largest_singular_value` for a NumPy matrix on the CPU."""
    import numpy as np

    if matrix.ndim != 2:
        raise ValueError(f"expected a matrix, got shape {tuple(matrix.shape)}")
    matrix = as_float(matrix)
    try:
        amax = max_abs(matrix)
        if amax == 0.0:
            estimate = SigmaEstimate(0.0, method, BoundKind.EXACT, 0, True, 0.0, True, 0.0, "zero")
        elif method is Method.POWER:
            estimate = power_array(
                matrix,
                iters=iters,
                tol=sp.DEFAULT_POWER_TOL if tol is None else tol,
                seed=seed,
                start=start,
            )
        elif (
            method is Method.DENSE
            or (method is Method.AUTO and min(matrix.shape) <= sp.DENSE_MAX_SIDE)
            or (method is Method.EXACT and min(matrix.shape) <= sp.EXACT_DENSE_MAX_SIDE)
        ):
            estimate = _dense(matrix, method)
        elif method is Method.EXACT:
            estimate = lanczos_array(
                matrix,
                amax,
                sp.EXACT_TOL / 2,
                "float64",
                sp.MAX_KRYLOV_DIM,
                seed,
                start,
                method,
                sp.EXACT_BLOCK_SIZE,
            )
            if estimate.converged:
                estimate = dataclasses.replace(estimate, bound=BoundKind.EXACT)
            else:
                estimate = _dense(matrix, method, "lanczos did not converge")
        else:
            target = sp.DEFAULT_TOL if tol is None else tol
            max_dim = (
                sp.MAX_KRYLOV_DIM
                if method is Method.AUTO
                else min(sp.MAX_KRYLOV_DIM, iters * sp.BLOCK_SIZE)
            )
            estimate = lanczos_array(matrix, amax, target, None, max_dim, seed, start, method)
            if method is Method.AUTO and not estimate.converged:
                estimate = _dense(matrix, method, "lanczos did not converge")
        if certify:
            estimate = _certify(matrix, estimate)
    except np.linalg.LinAlgError as exc:
        raise NumericalError(
            "σ not measurable: float64 LAPACK did not converge on this matrix"
        ) from exc
    return estimate


def _dense(matrix: np.ndarray, method: Method, why: str = "") -> SigmaEstimate:

    name = "dense-eigvalsh-float64" + (f" ({why})" if why else "")
    return SigmaEstimate(
        exact_sigma_array(matrix), method, BoundKind.EXACT, None, None, 0.0, True, algorithm=name
    )


def _certify(matrix: np.ndarray, estimate: SigmaEstimate) -> SigmaEstimate:
    """:func:`.spectral._certify`: the same δ ladder on one float64 Gram matrix."""
    import dataclasses

    if estimate.sigma == 0.0 and estimate.certified:
        return dataclasses.replace(estimate, upper=0.0)
    floor = max(1e-8, 4.0 * (estimate.error_estimate or 0.0))
    deltas = [d for d in (1e-8, 1e-6, 1e-4, 1e-2) if d >= floor] or [floor]
    upper = certify_upper(matrix, estimate.sigma, deltas)
    if upper is not None:
        return dataclasses.replace(estimate, certified=True, upper=float(upper))
    return estimate
