"""Kernels as tap matrices and their symbols K̂(ω) = Σ_a K_a e^{−i a·ω}, for :mod:`.conv`
(NumPy): scaled taps (exact power-of-two scaling), the polyphase split of a strided conv, grid
frequencies and exactly reduced phase angles, the symbol by an explicit DFT with its rounding
bound, and the tap-difference Grams G(ω) = Σ_d D_d e^{i d·ω} with theirs.

Rounding facts relied on beyond IEEE arithmetic: NumPy's float64 ``cos``/``sin`` are within
4 ulp (NumPy's SIMD/SVML routines; glibc's within 1), so a phase factor computed from an angle
with absolute error ≤ 6πu is within 6πu + 8u < 32u of e^{−iθ} (:func:`_angles`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sncli.numerics.floating import SLACK, UNIT_ROUNDOFF, check_finite, gamma

if TYPE_CHECKING:
    import numpy as np

IntOrTuple = int | tuple[int, ...]


@dataclass(frozen=True)
class _Taps:
    """A kernel as scaled tap matrices and integer tap positions (dilation applied)."""

    values: np.ndarray  # (out, in, T) float64, max|entry| ∈ [½, 1)
    positions: np.ndarray  # (T, d) int64
    exponent: int

    @property
    def taps(self) -> int:
        return self.values.shape[2]


def as_kernel(kernel: Any) -> np.ndarray:
    """A kernel (NumPy array or torch tensor, any float dtype) as a float64 NumPy array; a
    torch tensor is read through ``.numpy()`` (torch is already loaded when one exists)."""
    import numpy as np

    from sncli.arrays import from_torch, is_array, to_float64

    if not is_array(kernel):
        if kernel.is_complex():
            raise ValueError("complex convolution kernels are not supported")
        kernel = from_torch(kernel)
    if np.iscomplexobj(kernel):
        raise ValueError("complex convolution kernels are not supported")
    return np.asarray(to_float64(kernel), dtype=np.float64)


def _spatial(kernel: np.ndarray) -> int:
    if kernel.ndim < 3 or kernel.ndim > 5:
        raise ValueError(
            f"expected a Conv1d/2d/3d kernel (out, in, *k), got shape {tuple(kernel.shape)}"
        )
    return kernel.ndim - 2


def _per_dim(value: IntOrTuple, dims: int, name: str) -> tuple[int, ...]:
    values = (value,) * dims if isinstance(value, int) else tuple(int(v) for v in value)
    if len(values) != dims:
        raise ValueError(f"{name} needs {dims} entries for this kernel, got {value!r}")
    if any(v < 1 for v in values):
        raise ValueError(f"{name} must be ≥ 1, got {value!r}")
    return values


def _effective_size(kernel: np.ndarray, dilation: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d * (k - 1) + 1 for k, d in zip(kernel.shape[2:], dilation, strict=True))


def _taps(kernel: np.ndarray, dilation: tuple[int, ...]) -> _Taps | None:
    """Scaled tap matrices (max|entry| ∈ [½, 1), an exact power-of-two scaling, as
    :func:`sncli.numerics.floating.scale_pow2`); None for an all-zero kernel."""
    import numpy as np

    kernel = as_kernel(kernel)
    check_finite(kernel)
    peak = float(np.abs(kernel).max()) if kernel.size else 0.0
    if peak == 0.0:
        return None
    exponent = math.frexp(peak)[1]
    first = -exponent // 2
    values = kernel * 2.0**first * 2.0 ** (-exponent - first)
    out_ch, in_ch = values.shape[:2]
    sizes = values.shape[2:]
    positions = np.indices(sizes, dtype=np.int64).reshape(len(sizes), -1).T
    positions = positions * np.asarray(dilation, dtype=np.int64)
    return _Taps(np.ascontiguousarray(values.reshape(out_ch, in_ch, -1)), positions, exponent)


def _polyphase(taps: _Taps, stride: tuple[int, ...]) -> _Taps:
    """The stride-s conv as a stride-1 conv on the s-phase components of the input.

    y[i] = Σ_a K_a x[s·i + a]: writing a = s·q + r, x[s(i+q) + r] = x_r[i+q], so the tap at a moves
    to position q and to the input channel block of phase r (exact for circular padding, s | n).
    """
    import numpy as np

    if all(s == 1 for s in stride):
        return taps
    s = np.asarray(stride, dtype=np.int64)
    residues = taps.positions % s
    phase = np.zeros(taps.taps, dtype=np.int64)
    for j, sj in enumerate(stride):
        phase = phase * sj + residues[:, j]
    phases = math.prod(stride)
    out_ch, in_ch, count = taps.values.shape
    values = np.zeros((out_ch, phases, in_ch, count))
    values[:, phase, :, np.arange(count)] = taps.values.transpose(2, 0, 1)
    return _Taps(values.reshape(out_ch, phases * in_ch, count), taps.positions // s, taps.exponent)


def _frequencies(grid: tuple[int, ...]) -> np.ndarray:
    """Grid frequency indices, one of each ±ω pair (K̂(−ω) = conj K̂(ω) for a real kernel)."""
    import numpy as np

    half = max(range(len(grid)), key=lambda j: grid[j])
    sizes = tuple(m // 2 + 1 if j == half else m for j, m in enumerate(grid))
    return np.indices(sizes, dtype=np.int64).reshape(len(grid), -1).T.copy()


def _phases(taps: _Taps, grid: tuple[int, ...], freqs: np.ndarray) -> np.ndarray:
    """θ_{f,t} = ω_f·position_t mod 2π as (F, T), reduced exactly in integers: θ = 2π·r/L."""
    return _angles(taps.positions, grid, freqs)


def _angles(positions: np.ndarray, grid: tuple[int, ...], freqs: np.ndarray) -> np.ndarray:
    """ω_f·p mod 2π for integer offsets p (T, d), any sign, as (F, T): θ = 2π·r/L with the
    integer r reduced exactly, so θ has absolute error ≤ 6πu and cos/sin are within 32u
    (NumPy's cos/sin: ≤ 4 ulp, module docstring)."""
    import numpy as np

    period = math.prod(grid)
    grid_t = np.asarray(grid, dtype=np.int64)
    weight = np.asarray([period // m for m in grid], dtype=np.int64)
    phase = (freqs[:, None, :] * positions[None, :, :]) % grid_t  # floor mod: in [0, m)
    index = (phase * weight).sum(axis=-1) % period
    return index.astype(np.float64) / period * (2.0 * math.pi)


def _symbols(
    taps: _Taps, grid: tuple[int, ...], freqs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """K̂ at the given grid frequencies, (F, out, in) complex128, by an explicit DFT, and an
    upper bound on each ‖K̂_computed(ω)‖_F².

    Each phase factor is within 32u of e^{−iθ} (θ has absolute error ≤ 6πu); see
    :func:`_symbol_error` for what that costs.
    """
    import numpy as np

    theta = _phases(taps, grid, freqs)
    out_ch, in_ch, count = taps.values.shape
    flat = taps.values.reshape(out_ch * in_ch, count).T
    real = np.cos(theta) @ flat
    imag = -(np.sin(theta) @ flat)
    fro = (real * real).sum(axis=1) + (imag * imag).sum(axis=1)
    fro = fro / (1.0 - gamma(2 * out_ch * in_ch + 2)) * SLACK
    symbols = np.empty(real.shape, dtype=np.complex128)
    symbols.real, symbols.imag = real, imag
    return symbols.reshape(-1, out_ch, in_ch), fro


def _frobenius_estimates(taps: _Taps, grid: tuple[int, ...], freqs: np.ndarray) -> np.ndarray:
    """‖K̂(ω)‖_F² = pᴴCp with p the phase vector and C the T×T tap Gram: cheap, for ordering."""
    import numpy as np

    out_ch, in_ch, count = taps.values.shape
    flat = taps.values.reshape(out_ch * in_ch, count)
    tap_gram = (flat.T @ flat).astype(np.complex128)
    p = np.exp(-1j * _phases(taps, grid, freqs))
    return ((p.conj() @ tap_gram) * p).sum(axis=1).real


def _symbol_error(taps: _Taps) -> float:
    """Bound on ‖K̂_computed(ω) − K̂(ω)‖₂ at every ω (scaled units).

    Each entry is Σ_t K_t·φ_t with |φ̂_t − φ_t| ≤ 32u, summed with error γ_T (Higham Lemma 3.5),
    per real component; so |error| ≤ √2(γ_T + 33u)·Σ_t|K_t| entrywise, and in Frobenius norm
    ≤ √2(γ_T + 33u)·√T·‖K‖_F by Cauchy–Schwarz.
    """
    import numpy as np

    count = taps.taps
    fro = float(np.linalg.norm(taps.values)) * (1.0 + gamma(taps.values.size + 2))
    return math.sqrt(2.0) * (gamma(count) + 33 * UNIT_ROUNDOFF) * math.sqrt(count) * fro * SLACK


@dataclass(frozen=True)
class _DifferenceGrams:
    """G(ω) = K̂(ω)ᴴK̂(ω) = Σ_d D_d e^{i d·ω} with D_d = Σ_{a−b=d} K_aᵀK_b (taps at a, b).

    Since D_{−d} = D_dᵀ, G(ω) = D_0 + Σ_{d∈H} [S_d cos(d·ω) + i A_d sin(d·ω)] over one half H of
    the nonzero differences, S_d = D_d + D_dᵀ, A_d = D_d − D_dᵀ (``stack``). Forming G then
    costs 2|H|·n² instead of the n²·rows of K̂ᴴK̂: D is built once, T(T+1)/2 products n×rows×n.
    ``error`` bounds ‖Ĝ(ω) − G(ω)‖₂ for the *exact* symbol at every ω (see :func:`_differences`).
    """

    offsets: np.ndarray  # (H, d) int64
    stack: np.ndarray  # (2H+1, 2n²): D_0, then S_d in the real slots, A_d in the imaginary
    size: int
    error: float

    def grams(
        self, grid: tuple[int, ...], freqs: np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Ĝ at the frequencies (F, n, n) complex128: one real product [1, cos θ, sin θ]·stack
        written straight into the interleaved real view of ``out`` (reused: fresh pages cost
        more than the product)."""
        import numpy as np

        n = self.size
        theta = _angles(self.offsets, grid, freqs)
        ones = np.ones((freqs.shape[0], 1))
        coefficients = np.concatenate([ones, np.cos(theta), np.sin(theta)], axis=1)
        if out is None:
            out = np.empty((freqs.shape[0], n, n), dtype=np.complex128)
        out = out[: freqs.shape[0]]
        np.matmul(coefficients, self.stack, out=out.view(np.float64).reshape(-1, 2 * n * n))
        return out


def _merged(taps: _Taps) -> _Taps:
    """Taps at the same position summed (after the polyphase split they sit in disjoint
    channel blocks, so the sums are exact), and oriented (rows, n) with n the smaller side."""
    import numpy as np

    values = taps.values
    if values.shape[0] < values.shape[1]:
        values = values.transpose(1, 0, 2)  # K̂ᵀ has the singular values of K̂
    unique, inverse = np.unique(taps.positions, axis=0, return_inverse=True)
    if unique.shape[0] < taps.taps:
        merged = np.zeros((*values.shape[:2], unique.shape[0]))
        for t, target in enumerate(inverse.reshape(-1)):
            merged[:, :, target] += values[:, :, t]
        values = merged
    return _Taps(np.ascontiguousarray(values), unique, taps.exponent)


def _canonical(offset: tuple[int, ...]) -> bool:
    """One of each ±d pair: the first nonzero coordinate is positive."""
    for value in offset:
        if value:
            return value > 0
    return False


def _differences(taps: _Taps) -> _DifferenceGrams:
    """D_0, S_d, A_d of the (merged) taps in float64, with the rounding bound.

    Error, per entry (Higham Lemma 3.5, any summation order): each D̂_d is a sum of ≤ T products
    of length ``rows``, so |D̂_d − D_d| ≤ γ_{T(rows+1)} Σ|K_a|ᵀ|K_b|, and over all d (both signs,
    |e^{idω}| = 1) ‖ΣΔD_d e^{idω}‖_F ≤ γ_{T(rows+1)}·(Σ_a‖K_a‖_F)². Forming Ĝ from D̂: S, A and
    the half of D_0 + D_0ᵀ cost u each, cos/sin are within 32u, the length-(2|H|+1) sums
    (zeros included) γ_{2|H|+1}; so each of the real and imaginary parts is off by
    ≤ (γ_{2|H|+1} + 40u)·(‖D̂_0‖_F + 2Σ_H‖D̂_d‖_F)·(1 + 34u) in Frobenius norm. Cholesky reads
    Ĝ's lower triangle only, and the entrywise bounds are symmetric, so they hold for the
    Hermitian matrix it sees.
    """
    import numpy as np

    values = taps.values.transpose(2, 0, 1)  # (T, rows, n)
    count, rows, n = values.shape
    positions = [tuple(int(v) for v in p) for p in taps.positions]
    half = sorted(
        {
            tuple(a - b for a, b in zip(pa, pb, strict=True))
            for pa in positions
            for pb in positions
            if _canonical(tuple(a - b for a, b in zip(pa, pb, strict=True)))
        }
    )
    index = {d: i for i, d in enumerate(half)}
    base = np.zeros((n, n))
    diffs = np.zeros((len(half), n, n))
    wide = values.transpose(1, 0, 2).reshape(rows, count * n)
    for a in range(count):
        products = values[a].T @ wide[:, a * n :]  # K_aᵀ [K_a … K_{T−1}]
        for b in range(a, count):
            block = products[:, (b - a) * n : (b - a + 1) * n]
            d = tuple(x - y for x, y in zip(positions[a], positions[b], strict=True))
            if b == a:
                base += block
            elif _canonical(d):
                diffs[index[d]] += block
            else:
                diffs[index[tuple(-x for x in d)]] += block.T
    base = (base + base.T) * 0.5
    norms = np.linalg.norm(values.reshape(count, -1), axis=1)
    tap_sum = float(norms.sum()) * (1.0 + gamma(rows * n + count + 2))
    grow = 1.0 + gamma(n * n + 2)
    formed = float(np.linalg.norm(base)) * grow + 2 * grow * float(
        np.linalg.norm(diffs.reshape(len(half), n * n), axis=1).sum()
    ) * (1.0 + gamma(len(half) + 1))
    error = gamma(count * (rows + 1)) * tap_sum * tap_sum + 2.0 * (
        gamma(2 * len(half) + 1) + 40 * UNIT_ROUNDOFF
    ) * formed * (1.0 + 34 * UNIT_ROUNDOFF)
    offsets = np.asarray(half, dtype=np.int64).reshape(len(half), taps.positions.shape[1])
    stack = np.zeros((2 * len(half) + 1, n * n, 2))
    stack[0, :, 0] = base.reshape(-1)
    transposed = diffs.transpose(0, 2, 1)
    stack[1 : len(half) + 1, :, 0] = (diffs + transposed).reshape(len(half), n * n)
    stack[len(half) + 1 :, :, 1] = (diffs - transposed).reshape(len(half), n * n)
    return _DifferenceGrams(
        offsets=offsets,
        stack=stack.reshape(2 * len(half) + 1, 2 * n * n),
        size=n,
        error=error * SLACK * SLACK,
    )
