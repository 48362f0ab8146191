"""Operator norms of convolutions as linear maps on images, not of their reshaped kernels.

A kernel K of PyTorch layout (out, in, *k) has the matrix-valued symbol
K̂(ω) = Σ_a K_a e^{−i a·ω} ∈ ℂ^{out×in}. What is computed from it:

* circular padding at a known input size: the exact norm, max over the DFT frequencies of
  σ_max(K̂) (Sedghi, Gupta & Long, ICLR 2019), with strides handled by the polyphase reduction;
* anything else: τ* = sup_ω σ_max(K̂(ω)), which bounds the zero- or circular-padded convolution at
  every input size, stride, padding and crop (a submatrix of the bi-infinite Toeplitz operator,
  followed by subsampling), certified from a finite grid (see :func:`torus_norm_upper_bound`).

ConvTranspose weights (in, out, *k) are the adjoint operator, whose norm is the same, so the
symbol is used as is. ``groups`` is not recorded in a state dict: a grouped weight treated as
groups=1 stacks the groups' row blocks, which can only raise σ (by at most √groups), so every
upper bound here stays valid. Reflect and replicate padding are refused: they can exceed τ*.

Everything runs on NumPy/SciPy (no torch; a torch kernel is read as a float64 array). Per-frequency
σ is *certified* from the smaller Gram matrix G(ω) = K̂ᴴK̂ by one Cholesky per block
(:func:`sncli.numerics.hermitian_numpy.certify_hermitian_batch`, in single precision
first where that proves enough) against the running maximum; only blocks that beat it get an
eigenvalue estimate. G(ω) is summed from tap-difference Grams built once (:class:`_DifferenceGrams`,
2|H|·n² per block instead of K̂ᴴK̂'s n²·rows), or, when few blocks are needed, as K̂ᴴK̂ of the
symbol evaluated by an explicit DFT (real matmuls). Both have a simple rounding bound, which is
part of every certificate. At 512 channels a block costs ≈12 ms on one core (LAPACK zpotrf,
OpenBLAS), against ≈150–300 ms with eigvalsh and ≈900 ms with a complex SVD (measured).

Rounding facts relied on beyond IEEE arithmetic: NumPy's cos/sin within 4 ulp
(:mod:`.conv_symbols`, where the taps, symbols and difference Grams are built); pocketfft's
float64 FFT (numpy.fft) meets the a-priori bound of :data:`FFT_ERROR_CONSTANT`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sncli.numerics.conv_lower import zero_padding_lower_bound
from sncli.numerics.conv_symbols import (
    IntOrTuple,
    _DifferenceGrams,
    _differences,
    _frequencies,
    _frobenius_estimates,
    _merged,
    _per_dim,
    _polyphase,
    _spatial,
    _symbol_error,
    _symbols,
    _Taps,
    _taps,
    as_kernel,
)
from sncli.numerics.floating import SLACK, gamma
from sncli.numerics.hermitian_numpy import (
    certified_ratio,
    certify_hermitian_batch,
    lanczos_top,
    subspace_estimates,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np

DEFAULT_GRID: int | None = None
#: Grid factors auto_grid aims at, tightest first (what N = 64 / 32 / 16 gave 3×3 kernels
#: under the earlier single-direction Bernstein factor).
AUTO_TARGETS = (1.0048, 1.0197, 1.0835)
AUTO_GRID_BUDGET = 4e9
CERT_DELTA = 1e-9
_DENSE_EIG_MAX = 48
_DENSE_REFINE_MAX = 512
#: Channel counts where a single-precision Cholesky is tried first (2× faster, measured).
_SINGLE_MIN, _SINGLE_MAX = 32, 512
_REFINE_STEPS = 96
_CHUNK_ELEMENTS = 1 << 22
#: Largest difference-Gram stack ((2|H|+1)·2n² float64) built per conv: 3×3 at 512 channels is
#: 105 MB; 3×3×3 at 512 (524 MB) takes the direct path instead.
_DIFFERENCE_BYTES = 256 * 2**20
PADDING_MODES = ("zeros", "circular")


@dataclass(frozen=True)
class ConvNorm:
    """The operator norm of a convolution layer, or certified bounds on it.

    ``value`` is what to report: the exact norm when ``exact``, else the certified upper bound.
    ``lower`` is a proven lower bound (None when none can be proved from what is known).
    """

    value: float
    lower: float | None
    upper: float | None
    exact: bool
    method: str
    description: str


@dataclass(frozen=True)
class _GridMax:
    """Certified max over a frequency grid of σ_max of the computed-then-corrected symbol."""

    upper: float  # scaled: ≥ max σ_max(K̂(ω)) of the exact symbol, rounding included
    lower: float | None  # scaled: ≤ that max, rounding included (None when not asked for)
    frequency: tuple[int, ...]  # where the max was found
    blocks: int


def _use_differences(taps: _Taps, blocks: int) -> bool:
    """Difference Grams when building them once (T(T+1)/2 products n×rows×n) plus 2(2|H|+1)·n²
    per block beats K̂ᴴK̂ per block (4·n²·rows real multiply-adds, plus 2·T·n·rows for the
    symbol): for 3×3 kernels from ~12 frequency blocks up."""
    import numpy as np

    rows, n, count = taps.values.shape
    offsets = (taps.positions[:, None, :] - taps.positions[None, :, :]).reshape(
        -1, taps.positions.shape[1]
    )
    half = (np.unique(offsets, axis=0).shape[0] - 1) // 2
    if (2 * half + 1) * 2 * n * n * 8 > _DIFFERENCE_BYTES:
        return False  # the stack would not fit the memory a worker may hold (3×3×3 at 512)
    once = count * (count + 1) / 2 * n * n * rows
    per_block_direct = 4 * n * n * rows + 2 * count * n * rows
    per_block_diff = 2 * (2 * half + 1) * n * n
    return once + blocks * per_block_diff < blocks * per_block_direct


def _refine_top(grams: np.ndarray, steps: int) -> tuple[float, int]:
    """(an estimate ≤ the largest λ_max among the batch, which block): every block's λ_max by
    eigvalsh when small, else a short batched subspace iteration picks the likely largest and
    only that one is refined — by eigvalsh up to 512 (as fast as 96 Lanczos steps there, and
    exact), by Lanczos beyond; the others are then re-certified against it."""
    import numpy as np

    if grams.shape[-1] <= _DENSE_EIG_MAX:
        values = np.linalg.eigvalsh(grams)[..., -1]
        top = int(np.argmax(values))
        return float(values[top]), top
    estimates = subspace_estimates(grams)
    top = int(np.argmax(estimates))
    if grams.shape[-1] <= _DENSE_REFINE_MAX:
        refined = float(np.linalg.eigvalsh(grams[top])[-1])
    else:
        refined = lanczos_top(grams[top], steps)[0]
    return max(float(estimates[top]), refined), top


def _grid_max(taps: _Taps, grid: tuple[int, ...], delta: float, *, lower: bool = True) -> _GridMax:
    """Certified max over the grid (2π/grid)·ℤ^d of σ_max(K̂(ω)), in scaled units.

    Frequencies are visited by decreasing ‖K̂‖_F, in chunks. Each block's Gram matrix comes from
    the tap-difference Grams (:class:`_DifferenceGrams`, when that is cheaper: 3×3 kernels from
    ~12 blocks) or as K̂ᴴK̂ of the computed symbol. A block is certified below the running
    threshold μ = (best·(1+δ))² by a trace bound when that suffices, else by one batched Cholesky
    (:func:`sncli.numerics.bounds.certify_hermitian_batch`). Blocks that fail — candidates for a
    new maximum — get a batched subspace estimate, the likeliest is refined by Lanczos, and the
    rest are re-certified against it, so most blocks cost one Cholesky. δ is raised (×100 up to
    1e-2) only when refinement stalls, with the trace bound as the last resort. Every block ends
    up proved ≤ the returned bound. The lower bound (a Lanczos vector at the best block: 0.6 s
    at 512 channels) only when ``lower``: the torus bound has no use for it.
    """
    import numpy as np

    freqs = _frequencies(grid)
    freqs = freqs[np.argsort(-_frobenius_estimates(taps, grid, freqs), kind="stable")]
    taps = _merged(taps)
    inner, small = taps.values.shape[:2]
    differences = _differences(taps) if _use_differences(taps, freqs.shape[0]) else None
    chunk = max(1, _CHUNK_ELEMENTS // (inner * small))
    buffer = None
    if differences is not None:
        chunk = min(chunk, freqs.shape[0])
        buffer = np.empty((chunk, small, small), dtype=np.complex128)

    def form(selected: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return _block_grams(taps, differences, grid, selected, buffer)

    best, certified = 0.0, 0.0
    best_freq = tuple(int(f) for f in freqs[0])
    single = _SINGLE_MIN <= small <= _SINGLE_MAX
    for start in range(0, freqs.shape[0], chunk):
        block_freqs = freqs[start : start + chunk]
        grams, trace, error = form(block_freqs)
        threshold = _threshold(best, delta)
        trivial = trace <= threshold
        if bool(trivial.any()):
            certified = max(certified, float(trace[trivial].max()))
            keep = np.nonzero(~trivial)[0]
            if keep.size == 0:
                continue
            block_freqs, trace, error = block_freqs[keep], trace[keep], error[keep]
            grams = form(block_freqs)[0] if buffer is not None else grams[keep]
        if small <= _DENSE_EIG_MAX or best == 0.0:
            value, top = _refine_top(grams, _REFINE_STEPS)
            if value > best:
                best, best_freq = value, tuple(int(f) for f in block_freqs[top])
        # The buffer still holds the whole chunk's Grams, in order, until a certificate
        # overwrites it (refinement and the single-precision pass only read it).
        fresh = buffer is not None
        pending = np.arange(block_freqs.shape[0])
        stalls, step_delta = 0, delta
        for _ in range(block_freqs.shape[0] + 8):
            mu = _threshold(best, step_delta)
            ok = np.zeros(pending.size, dtype=bool)
            whole = pending.size == block_freqs.shape[0]
            if single and whole:
                current = _select(form, grams, block_freqs, pending, fresh, buffer is not None)
                ok = certify_hermitian_batch(
                    current, mu, error[pending], complex_arith=True, single=True
                )
                # Single precision proves less (margin ~n·u·tr): used on a chunk's first pass
                # only, and dropped once it certifies under half of a chunk.
                single = 2 * int(ok.sum()) >= pending.size
            rest = np.nonzero(~ok)[0]
            if rest.size > 0:
                # The reused buffer is overwritten by the certificate and formed again later.
                chosen = pending[rest]
                reuse = fresh and whole and rest.size == pending.size
                current = _select(form, grams, block_freqs, chosen, reuse, buffer is not None)
                fresh = False
                ok[rest] = certify_hermitian_batch(
                    current, mu, error[chosen], complex_arith=True, overwrite=True
                )
            if bool(ok.any()):
                certified = max(certified, mu)
            pending = pending[~ok]
            if pending.size == 0:
                break
            if stalls < 2:
                fresh = False
                current = _select(form, grams, block_freqs, pending, False, buffer is not None)
                value, top = _refine_top(current, _REFINE_STEPS if stalls == 0 else small)
                if value > best:
                    best, best_freq = value, tuple(int(f) for f in block_freqs[pending[top]])
                else:
                    stalls += 1
            elif step_delta < 1e-2:
                step_delta *= 100.0
            else:
                break
        if pending.size > 0:
            certified = max(certified, float(trace[pending].max()))
    # The difference Grams bound the exact symbol's Gram; K̂ᴴK̂ that of the computed symbol.
    error = 0.0 if differences is not None else _symbol_error(taps)
    upper = math.nextafter(math.sqrt(certified), math.inf) + error
    return _GridMax(
        upper=math.nextafter(upper * SLACK, math.inf),
        lower=(
            max(0.0, _block_lower_bound(taps, grid, best_freq) - _symbol_error(taps) * SLACK)
            if lower
            else None
        ),
        frequency=best_freq,
        blocks=freqs.shape[0],
    )


def _select(
    form: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]],
    grams: np.ndarray,
    freqs: np.ndarray,
    selection: np.ndarray,
    reuse: bool,
    buffered: bool,
) -> np.ndarray:
    """The Grams of freqs[selection]: ``grams`` itself when ``reuse`` (the buffer still holds the
    whole chunk), else formed again into the reused buffer, or gathered from ``grams``."""
    if reuse:
        return grams
    return form(freqs[selection])[0] if buffered else grams[selection]


def _block_grams(
    taps: _Taps,
    differences: _DifferenceGrams | None,
    grid: tuple[int, ...],
    freqs: np.ndarray,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Computed Grams at the frequencies, an upper bound on each λ_max (a trace or ‖K̂‖_F²), and
    a bound on each Gram's rounding error, for :func:`certify_hermitian_batch`.

    With differences the bounds are about the exact G(ω): λ_max(G) ≤ tr G ≤ tr Ĝ + √n·ε. Else
    they are about the computed symbol K̂_c: ‖Ĝ − K̂_cᴴK̂_c‖₂ ≤ γ_rows‖K̂_c‖_F² (complex).
    """
    import numpy as np

    inner, small = taps.values.shape[:2]
    if differences is not None:
        grams = differences.grams(grid, freqs, out)
        diag = np.diagonal(grams, axis1=-2, axis2=-1).real
        trace = diag.sum(axis=-1) + gamma(small) * np.abs(diag).sum(axis=-1)
        trace = (trace + math.sqrt(small) * differences.error) * SLACK
        error = np.full(freqs.shape[0], differences.error)
        return grams, trace, error
    sym, fro = _symbols(taps, grid, freqs)
    grams = sym.conj().swapaxes(-1, -2) @ sym
    error = gamma(inner, complex_arith=True) * fro + inner * small * 2.0**-1074
    return grams, fro, error


def _block_lower_bound(taps: _Taps, grid: tuple[int, ...], freq: tuple[int, ...]) -> float:
    """‖K̂v‖/‖v‖ for the top eigenvector of the Gram at one frequency, rounding included."""
    import numpy as np

    sym, _ = _symbols(taps, grid, np.asarray([freq], dtype=np.int64))
    sym = sym[0] if sym.shape[2] <= sym.shape[1] else sym[0].conj().T
    gram = sym.conj().T @ sym
    if gram.shape[0] <= _DENSE_EIG_MAX:
        vector = np.linalg.eigh(gram)[1][:, -1]
    else:
        vector = lanczos_top(gram, _REFINE_STEPS)[1]
    return certified_ratio(sym, vector)


def _threshold(best: float, delta: float) -> float:
    """(√best·(1+δ))², rounded down: the eigenvalue level a block is certified below."""
    return math.nextafter((math.sqrt(best) * (1.0 + delta)) ** 2, 0.0)


def bound_factor(
    kernel_size: tuple[int, ...], grid: tuple[int, ...], dilation: tuple[int, ...]
) -> float:
    """Π_j sec(π·τ_j/N_j) with τ_j = d_j(k_j−1)/2: τ* ≤ this × the max of σ_max(K̂) on the grid.

    Derivation, one axis at a time. Let M_0 = τ* and M_j the sup of σ_max(K̂(ω)) over ω whose
    first j coordinates lie on the grid (M_d is the grid max). M_{j−1} is attained at some ω'
    (continuity, compactness) with top singular pair (u, v); along axis j through ω', with the
    other coordinates fixed, h(t) = Re(e^{iφ+ic_j t}·uᴴK̂(ω' + t·e_j)v) (c_j the kernel centre,
    φ making h(0) = M_{j−1}) has frequencies in [−τ_j, τ_j]: a real trigonometric polynomial of
    degree τ_j (for a half-integer τ_j, h(2s) is one of degree 2τ_j in s, which gives the same
    bound), and |h| ≤ σ_max(K̂) ≤ M_{j−1} on the whole line, because the line keeps the first
    j−1 coordinates on the grid. The Bernstein–Szegő inequality h'² + τ_j²h² ≤ τ_j²‖h‖²_∞
    (Szegő 1928; tested in tests/numerics/test_conv_factor.py) makes arccos(h/M_{j−1})
    τ_j-Lipschitz, so h(t) ≥ M_{j−1}·cos(τ_j t) for τ_j|t| ≤ π; the nearest of the N_j grid
    values of axis j is within π/N_j, hence M_j ≥ M_{j−1}·cos(πτ_j/N_j), and τ* ≤ Π_j sec·M_d.
    Needs N_j > d_j(k_j−1) on every axis. The single-direction Bernstein argument used before
    gave 1/(1 − ½(Σ_j πτ_j/N_j)²), about twice the excess (1.0835 for 3×3 at N = 16).
    For 3×3 kernels: 1.0718 / 1.0396 / 1.0189 / 1.0047 at N = 12 / 16 / 23 / 46.
    """
    factor = _factor(kernel_size, grid, dilation)
    if factor is None:
        raise ValueError(f"grid {grid} is too coarse for kernel {kernel_size}")
    return factor


def _factor(
    kernel_size: tuple[int, ...], grid: tuple[int, ...], dilation: tuple[int, ...]
) -> float | None:
    """:func:`bound_factor`, rounded up (the angle and the cosines are within a few u, covered
    by SLACK = 1 + 64u); None when some axis has N_j ≤ d_j(k_j−1)."""
    factor = 1.0
    for k, n, d in zip(kernel_size, grid, dilation, strict=True):
        span = d * (k - 1)
        if span == 0:
            continue
        if n <= span:
            return None
        factor /= math.cos(math.pi * span / (2 * n))
    return math.nextafter(factor * SLACK, math.inf)


def _grid_sizes(
    kernel_size: tuple[int, ...], grid: int, dilation: tuple[int, ...]
) -> tuple[int, ...]:
    """N along every axis where the kernel spans more than one tap, 1 where K̂ is constant."""
    return tuple(
        1 if d * (k - 1) == 0 else grid for k, d in zip(kernel_size, dilation, strict=True)
    )


def _torus_grid(
    kernel_size: tuple[int, ...], grid: int, dilation: tuple[int, ...]
) -> tuple[tuple[int, ...], float]:
    """Grid sizes (1 along size-1 axes, where K̂ is constant) doubled until the factor is ≤ 2."""
    if grid < 1:
        raise ValueError(f"grid must be ≥ 1, got {grid}")
    sizes = _grid_sizes(kernel_size, grid, dilation)
    while True:
        factor = _factor(kernel_size, sizes, dilation)
        if factor is not None and factor <= 2.0:
            return sizes, factor
        sizes = tuple(n if n == 1 else 2 * n for n in sizes)


def _cheapest_grid(kernel_size: tuple[int, ...], dilation: tuple[int, ...], target: float) -> int:
    """The smallest N (so the fewest frequency blocks) whose factor is ≤ ``target``."""
    span = max((d * (k - 1) for k, d in zip(kernel_size, dilation, strict=True)), default=0)
    if span == 0:
        return 1

    def reaches(n: int) -> bool:
        factor = _factor(kernel_size, _grid_sizes(kernel_size, n, dilation), dilation)
        return factor is not None and factor <= target

    low, high = span, 2 * span + 2  # reaches(low) is False: N must exceed the span
    while not reaches(high):
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if reaches(middle) else (middle, high)
    return high


def auto_grid(kernel_shape: tuple[int, ...], dilation: IntOrTuple = 1) -> int:
    """The cheapest N reaching the tightest factor target in (1.0048, 1.0197, 1.0835) whose cost
    stays ≤ 4e9 complex multiply-adds (≈3 s on one core), else the loosest target's N: for 3×3
    kernels N=46 (factor 1.0047) below 208 channels, 23 (1.0189) below 328, 12 (1.0718) beyond.

    Cost ≈ blocks × (small³/3 + (2|H|+1)·small²/2) + T(T+1)/8·small²·large: one Cholesky and
    one difference-Gram sum per frequency block, and the tap-difference Grams once (T taps,
    |H| ≤ (∏(2k−1) − 1)/2 differences; real products count ¼). Grids need not be powers of 2.
    """
    dims = len(kernel_shape) - 2
    dil = _per_dim(dilation, dims, "dilation")
    kernel_size = tuple(kernel_shape[2:])
    for target in AUTO_TARGETS:
        grid = _cheapest_grid(kernel_size, dil, target)
        if _cost(kernel_shape, _grid_sizes(kernel_size, grid, dil)) <= AUTO_GRID_BUDGET:
            return grid
    return grid


def torus_bound_cost(
    kernel_shape: tuple[int, ...], dilation: IntOrTuple = 1, grid: int | None = DEFAULT_GRID
) -> float:
    """Estimated complex multiply-adds of :func:`torus_norm_upper_bound` (see :func:`auto_grid`),
    for scheduling: the largest jobs first."""
    dims = len(kernel_shape) - 2
    dil = _per_dim(dilation, dims, "dilation")
    if grid is None:
        grid = auto_grid(kernel_shape, dil)
    sizes, _ = _torus_grid(tuple(kernel_shape[2:]), grid, dil)
    return _cost(kernel_shape, sizes)


def _cost(kernel_shape: tuple[int, ...], sizes: tuple[int, ...]) -> float:
    out_ch, in_ch = kernel_shape[:2]
    small, large = min(out_ch, in_ch), max(out_ch, in_ch)
    taps = math.prod(kernel_shape[2:])
    half = (math.prod(2 * k - 1 for k in kernel_shape[2:]) - 1) // 2
    per_block = small**3 / 3 + (2 * half + 1) * small**2 / 2
    once = taps * (taps + 1) / 8 * small**2 * large
    return once + _block_count(sizes) * per_block


def _block_count(sizes: tuple[int, ...]) -> int:
    half = max(sizes)
    return math.prod(sizes) // half * (half // 2 + 1)


def torus_norm_upper_bound(
    kernel: Any, grid: int | None = DEFAULT_GRID, dilation: IntOrTuple = 1
) -> float:
    """A certified upper bound on τ* = sup_ω σ_max(K̂(ω)).

    τ* bounds the zero- or circular-padded convolution (or its transpose) at any input size,
    stride, padding and crop. Computed as the certified max of σ_max(K̂) over an N-grid per axis
    (N = ``grid``; 1 along size-1 axes) times :func:`bound_factor` — 1.0718 / 1.0396 / 1.0189 /
    1.0047 for a 3×3 kernel at N = 12 / 16 / 23 / 46. N is doubled while the factor would exceed
    2. ``grid=None`` picks N by cost (:func:`auto_grid`). Cost ≈ N^d/2 frequency blocks, each one
    Cholesky of the smaller channel count: for 512×512×3×3 on one core about 2.5 s at N=12 and
    4 s at N=16.
    """
    kernel = as_kernel(kernel)
    dims = _spatial(kernel)
    dil = _per_dim(dilation, dims, "dilation")
    taps = _taps(kernel, dil)
    if taps is None:
        return 0.0
    if grid is None:
        grid = auto_grid(tuple(kernel.shape), dil)
    sizes, factor = _torus_grid(tuple(kernel.shape[2:]), grid, dil)
    result = _grid_max(taps, sizes, CERT_DELTA, lower=False)
    return math.nextafter(math.ldexp(result.upper * factor * SLACK, taps.exponent), math.inf)


def circular_operator_norm(
    kernel: Any,
    input_size: IntOrTuple,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
) -> float:
    """The exact norm of the circular convolution on an input of ``input_size`` pixels per axis.

    Sedghi, Gupta & Long (ICLR 2019): the singular values are those of K̂ at ω ∈ (2π/n)ℤ^d, so the
    norm is their max. Kernels larger than n wrap around (the DFT of the tap positions handles
    the aliasing). A stride s must divide n: the stride-s conv is then exactly a stride-1 conv on
    the s^d phase components (polyphase), evaluated on the (n/s)-grid. This is the operator with
    n/s outputs per axis, i.e. PyTorch ``padding_mode="circular"`` with 'same' padding
    dilation·(k−1)/2; smaller paddings crop rows (norm ≤ this value).
    The value returned is a certified upper bound within ~1e-9 (relative) of the norm; raises
    ValueError when a stride does not divide the input size.
    """
    kernel = as_kernel(kernel)
    dims = _spatial(kernel)
    size = _per_dim(input_size, dims, "input_size")
    strides = _per_dim(stride, dims, "stride")
    dil = _per_dim(dilation, dims, "dilation")
    return _circular(kernel, size, strides, dil)[1]


def _circular_taps(
    kernel: Any, size: tuple[int, ...], strides: tuple[int, ...], dil: tuple[int, ...]
) -> tuple[_Taps, tuple[int, ...]] | None:
    """The circular strided conv as a stride-1 conv on its phases, and the grid it runs on
    (n/s per axis); None for an all-zero kernel. A stride must divide the input size."""
    bad = [(n, s) for n, s in zip(size, strides, strict=True) if n % s]
    if bad:
        raise ValueError(
            f"circular convolution with stride {_fmt(strides)} needs an input size divisible by "
            f"the stride, got {_fmt(size)}: no exact norm for that case"
        )
    taps = _taps(kernel, dil)
    if taps is None:
        return None
    return _polyphase(taps, strides), tuple(n // s for n, s in zip(size, strides, strict=True))


def _circular(
    kernel: Any, size: tuple[int, ...], strides: tuple[int, ...], dil: tuple[int, ...]
) -> tuple[float, float]:
    """(certified lower, certified upper) for the circular norm; they agree to ~1e-9."""
    phased = _circular_taps(kernel, size, strides, dil)
    if phased is None:
        return 0.0, 0.0
    taps, grid = phased
    result = _grid_max(taps, grid, CERT_DELTA)
    upper = math.nextafter(math.ldexp(result.upper, taps.exponent), math.inf)
    assert result.lower is not None
    lower = math.ldexp(result.lower, taps.exponent)
    return (math.nextafter(lower, 0.0) if lower < 2.0**-1022 else lower), upper


#: Relative allowance for the squares summed and the square root in :func:`_circular_rows`.
FFT_ROUNDING = 1e-12
#: The constant of the float64 FFT's a-priori error bound used there: every DFT entry is off by
#: at most c·(log2 N + 2)·u·√N·‖x‖₂ (Higham 2002, §24.1, gives c ≈ 5 for radix 2; 32 leaves room
#: for pocketfft's mixed-radix and Bluestein paths).
FFT_ERROR_CONSTANT = 32
#: Complex values one batched FFT of :func:`_circular_rows` may hold (64 MiB).
_ROWS_CHUNK = 1 << 22


def _circular_rows(
    kernel: Any, size: tuple[int, ...], strides: tuple[int, ...], dil: tuple[int, ...]
) -> tuple[float, float]:
    """(certified lower, certified upper) of the circular norm of a grouped conv whose groups
    each have one output channel (depthwise convs): the operator is block-diagonal over the
    groups and each group's symbol is a row, so the norm is the largest row norm over the DFT
    grid and the groups — batched FFTs instead of one eigenvalue search per group. A row norm's
    rounding is at most the FFT's error bound (:data:`FFT_ERROR_CONSTANT`) times the group's
    ‖k‖_F, which is added (upper) and subtracted (lower)."""
    import numpy as np

    phased = _circular_taps(kernel, size, strides, dil)
    if phased is None:
        return 0.0, 0.0
    poly, grid = phased
    groups, columns, _ = poly.values.shape
    cells = math.prod(grid)
    flat = np.zeros(poly.positions.shape[0], dtype=np.int64)
    for axis, n in enumerate(grid):  # wrap taps beyond the grid (aliasing), row-major index
        flat = flat * n + poly.positions[:, axis] % n
    top = 0.0
    frobenius = float(np.sqrt(np.square(poly.values).sum(axis=(1, 2))).max())
    step = max(1, _ROWS_CHUNK // max(1, columns * cells))
    for first in range(0, groups, step):
        part = poly.values[first : first + step]
        field = np.zeros((part.shape[0], columns, cells))
        for t, cell in enumerate(flat):  # taps that alias onto one cell are summed
            field[:, :, cell] += part[:, :, t]
        spectrum = np.fft.fftn(
            field.reshape(*field.shape[:2], *grid), axes=tuple(range(2, 2 + len(grid)))
        )
        power = (np.square(spectrum.real) + np.square(spectrum.imag)).sum(axis=1)
        top = max(top, float(power.max()))
    norm = math.sqrt(top)
    fft_error = FFT_ERROR_CONSTANT * (math.log2(cells) + 2) * 2.0**-53 * math.sqrt(cells)
    slack = fft_error * frobenius * (1 + FFT_ROUNDING)
    upper = math.nextafter(math.ldexp(norm * (1 + FFT_ROUNDING) + slack, poly.exponent), math.inf)
    lower = math.ldexp(max(0.0, norm * (1 - FFT_ROUNDING) - slack), poly.exponent)
    return lower, upper


def conv_operator_norm(
    kernel: Any,
    *,
    padding: str = "zeros",
    input_size: IntOrTuple | None = None,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    transposed: bool = False,
    grid: int | None = DEFAULT_GRID,
    groups: int = 1,
) -> ConvNorm:
    """The operator norm of a Conv/ConvTranspose layer, exact when possible, else bounded.

    * circular with a known ``input_size``: exact (:func:`circular_operator_norm`); ``value`` =
      ``upper`` is certified, ``lower`` is proved too, and they agree to ~1e-9.
    * zeros, or unknown size: ``value`` = ``upper`` = the certified τ* bound, valid at any input
      size, stride and padding. With a known size a ``lower`` bound is proved by a test image
      supported away from the border (:func:`zero_padding_lower_bound`); without one, tiny inputs
      could make the norm arbitrarily small, so ``lower`` is None.
    * reflect/replicate: ValueError (they can exceed τ*: up to 2× in 2-D for reflect).

    ``input_size`` is the spatial size of the layer's *input* (for a transposed conv, the input of
    the ConvTranspose). ConvTranspose supports only zero padding in PyTorch.
    ``groups``: the operator is block-diagonal over the groups (weight rows split evenly along
    dim 0, for Conv and ConvTranspose alike), so its norm is the max over groups. A state dict does
    not record groups: with the default 1 the upper bound stays valid for any grouping (stacking
    row blocks can only raise σ, by ≤ √groups), but ``lower`` and the exact circular value then
    hold only for groups=1.
    """
    kernel = as_kernel(kernel)
    if groups < 1 or kernel.ndim < 1 or kernel.shape[0] % groups:
        raise ValueError(f"groups={groups} does not divide the weight's first dimension")
    if groups > 1 and groups == kernel.shape[0] and padding == "circular" and input_size:
        dims = _spatial(kernel)
        size = _per_dim(input_size, dims, "input_size")
        strides = _per_dim(stride, dims, "stride")
        lower, upper = _circular_rows(kernel, size, strides, _per_dim(dilation, dims, "dilation"))
        return ConvNorm(
            value=upper,
            lower=lower,
            upper=upper,
            exact=True,
            method="circular DFT (Sedghi et al. 2019), one output channel per group",
            description=(
                f"exact norm of the circular convolution on {_fmt(size)} inputs, stride "
                f"{_fmt(strides)}, {groups} groups of one output channel (max over the groups "
                "and the DFT grid of each group's symbol row norm, certified to ~1e-9)"
            ),
        )
    if groups > 1:
        import numpy as np

        parts = [
            conv_operator_norm(
                part,
                padding=padding,
                input_size=input_size,
                stride=stride,
                dilation=dilation,
                transposed=transposed,
                grid=grid,
            )
            for part in np.split(kernel, groups, axis=0)
        ]
        lowers = [p.lower for p in parts if p.lower is not None]
        top = max(parts, key=lambda p: p.value)
        return ConvNorm(
            value=top.value,
            lower=max(lowers) if lowers else None,
            upper=top.upper,
            exact=all(p.exact for p in parts),
            method=top.method,
            description=f"max over {groups} groups of: {top.description}",
        )
    dims = _spatial(kernel)
    if padding not in PADDING_MODES:
        raise ValueError(
            f"padding mode {padding!r} is not supported: only 'zeros' and 'circular' have a "
            "certified bound (reflect/replicate padding can exceed the torus norm)"
        )
    if transposed and padding != "zeros":
        raise ValueError("ConvTranspose supports only zero padding in PyTorch")
    dil = _per_dim(dilation, dims, "dilation")
    strides = _per_dim(stride, dims, "stride")
    size = None if input_size is None else _per_dim(input_size, dims, "input_size")
    if padding == "circular" and size is not None:
        lower, upper = _circular(kernel, size, strides, dil)
        return ConvNorm(
            value=upper,
            lower=lower,
            upper=upper,
            exact=True,
            method="circular DFT (Sedghi et al. 2019)",
            description=(
                f"exact norm of the circular convolution on {_fmt(size)} inputs, stride "
                f"{_fmt(strides)} (max over the DFT grid of σ_max of the kernel symbol, "
                "certified to ~1e-9)"
            ),
        )
    taps = _taps(kernel, dil)
    kernel_size = tuple(kernel.shape[2:])
    if taps is None:
        return ConvNorm(0.0, 0.0, 0.0, True, "zero kernel", "the kernel is all zeros")
    if grid is None:
        grid = auto_grid(tuple(kernel.shape), dil)
    sizes, factor = _torus_grid(kernel_size, grid, dil)
    result = _grid_max(taps, sizes, CERT_DELTA, lower=False)
    upper = math.nextafter(math.ldexp(result.upper * factor * SLACK, taps.exponent), math.inf)
    lower = None
    if size is not None and padding == "zeros":
        lower = zero_padding_lower_bound(
            kernel,
            size,
            stride=strides,
            dilation=dil,
            transposed=transposed,
            start_frequency=tuple(
                2 * math.pi * f / n for f, n in zip(result.frequency, sizes, strict=True)
            ),
        )
    what = "ConvTranspose" if transposed else "convolution"
    description = (
        f"certified upper bound τ* on the {padding}-padded {what} at any input size, stride and "
        f"padding (max of σ_max(K̂) on a {_fmt(sizes)} frequency grid × {factor:.4f})"
    )
    if lower is not None:
        description += f"; lower bound from a test input of size {_fmt(size)}"
        if transposed:
            description += " (assuming padding ≤ dilation·(k−1))"
    return ConvNorm(
        value=upper,
        lower=lower,
        upper=upper,
        exact=False,
        method=f"torus bound (grid {_fmt(sizes)})",
        description=description,
    )


def _fmt(values: tuple[int, ...]) -> str:
    return "×".join(str(v) for v in values)
