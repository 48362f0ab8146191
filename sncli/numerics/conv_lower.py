"""Proved lower bounds on a zero-padded convolution's operator norm at a known input size
(NumPy; :func:`zero_padding_lower_bound`, re-exported by :mod:`.conv`).

A test image is refined by a few float32 power iterations of TᵀT, where T (the full
convolution, or the ConvTranspose without its crop) and Tᵀ are applied tap by tap: one
(out × in)·(in × pixels) product per kernel tap on shifted (strided) windows, on images of
≤ 1024 pixels. The ratio ‖Tx‖/‖x‖ is then evaluated in float64 with a rounding margin, so only
the final evaluation matters for the proof; the iterations only pick x.
"""

from __future__ import annotations

import math
from itertools import product
from typing import TYPE_CHECKING, Any

from sncli.numerics.conv_symbols import _effective_size, _per_dim, _spatial, _taps, as_kernel
from sncli.numerics.floating import SLACK, check_finite, gamma

if TYPE_CHECKING:
    import numpy as np

    from sncli.numerics.conv_symbols import IntOrTuple

LOWER_BOUND_ITERATIONS = 8
_LOWER_BOUND_PIXELS = 1024
_REFINE_STEPS = 96


def zero_padding_lower_bound(
    kernel: Any,
    input_size: IntOrTuple,
    *,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    transposed: bool = False,
    iterations: int = LOWER_BOUND_ITERATIONS,
    start_frequency: tuple[float, ...] | None = None,
) -> float | None:
    """A proved lower bound on the zero-padded conv's norm at ``input_size``, for every padding.

    Convolution: for a test image x supported on [k_eff−1, n−k_eff] per axis, every output of the
    full convolution of x lies inside the layer's output for any padding p ≥ 0, and T_p x is that
    full convolution sampled at the positions ≡ −p (mod s). Shifting x by t < s moves the
    sampling phase, so leaving s−1 pixels of room, any phase r is reached for every p: the bound
    is max_r ‖full(x)[r::s]‖/‖x‖. An output pixel whose window lies inside the input
    (n ≥ k_eff + s − 1) gives R_out; for stride 1 an interior input pixel (n ≥ 2k_eff − 1) gives
    R_in.
    ConvTranspose (assuming padding ≤ dilation·(k−1), PyTorch's usual range): x supported on
    [c, n−1−c], c = ⌈(k_eff−1)/s⌉, loses nothing to the crop, so ‖conv_transpose(x)‖/‖x‖ without
    padding bounds it; one interior pixel gives σ(weight.reshape(in, -1)).
    x starts as a plane wave at ``start_frequency`` (the symbol's argmax; random if None), is
    refined by a few float32 power iterations on a window of ≤ 1024 pixels, and the final ratio
    is evaluated in float64 with a rounding margin. Returns None when the input is too small for
    any of these arguments.
    """
    w = as_kernel(kernel)
    dims = _spatial(w)
    size = _per_dim(input_size, dims, "input_size")
    strides = _per_dim(stride, dims, "stride")
    dil = _per_dim(dilation, dims, "dilation")
    check_finite(w)
    k_eff = _effective_size(w, dil)
    candidates: list[float] = []
    if transposed:
        margin = tuple(-(-(k - 1) // s) for k, s in zip(k_eff, strides, strict=True))
        room = tuple(n - 2 * c for n, c in zip(size, margin, strict=True))
        if all(r >= 1 for r in room):
            candidates.append(_lanczos_lower_bound(w.reshape(w.shape[0], -1)))
    else:
        if all(n >= k + s - 1 for n, k, s in zip(size, k_eff, strides, strict=True)):
            candidates.append(_lanczos_lower_bound(w.reshape(w.shape[0], -1)))
        if all(s == 1 for s in strides) and all(
            n >= 2 * k - 1 for n, k in zip(size, k_eff, strict=True)
        ):
            candidates.append(_lanczos_lower_bound(w.swapaxes(0, 1).reshape(w.shape[1], -1)))
        margin = tuple(k - 1 for k in k_eff)
        room = tuple(
            n - 2 * (k - 1) - (s - 1) for n, k, s in zip(size, k_eff, strides, strict=True)
        )
    if all(r >= 1 for r in room):
        candidates.append(
            _power_lower_bound(
                w, room, margin, strides, dil, transposed, iterations, start_frequency
            )
        )
    return max(candidates) if candidates else None


def _lanczos_lower_bound(matrix: np.ndarray) -> float:
    """:func:`sncli.numerics.bounds.lanczos_lower_bound` on NumPy (its defaults: 128 steps,
    tol 1e-13, seed 0; torch's start vector): a proven lower bound on σ_max."""
    from sncli.numerics.bounds_numpy import _lanczos_scaled, _ldexp_down, _prepare

    prepared = _prepare(matrix)
    if prepared is None:
        return 0.0
    value, _ = _lanczos_scaled(prepared[0], 128, 0, 1e-13)
    return _ldexp_down(value, prepared[1])


def _power_lower_bound(
    w: np.ndarray,
    room: tuple[int, ...],
    margin: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    transposed: bool,
    iterations: int,
    start_frequency: tuple[float, ...] | None,
) -> float:
    import numpy as np

    budget = max(1, round(_LOWER_BOUND_PIXELS ** (1.0 / len(room))))
    window = tuple(min(r, budget) for r in room)
    x = _plane_wave(w, window, dilation, start_frequency, transposed)
    w32 = w.astype(np.float32)
    x = x.astype(np.float32)
    for _ in range(iterations):  # x ← TᵀTx/‖·‖, T the first stride phase (as torch's autograd)
        grad = _adjoint(
            w32,
            _forward(w32, x, margin, stride, dilation, transposed),
            x.shape,
            margin,
            stride,
            dilation,
            transposed,
        )
        norm = float(np.linalg.norm(grad))
        if not math.isfinite(norm) or norm == 0.0:
            break
        x = grad / np.float32(norm)
    x = x.astype(np.float64)
    outputs = _outputs(w, x, margin, stride, dilation, transposed)
    return max(_certified_output_ratio(w, x, y, transposed) for y in outputs)


def _plane_wave(
    w: np.ndarray,
    window: tuple[int, ...],
    dilation: tuple[int, ...],
    frequency: tuple[float, ...] | None,
    transposed: bool,
) -> np.ndarray:
    """Re(v·e^{−iω·q}), v the top singular vector of K̂(ω) on the operator's input side, as
    (channels, *window)."""
    import numpy as np

    from sncli.arrays import torch_randn
    from sncli.numerics.hermitian_numpy import lanczos_top

    channels = w.shape[0] if transposed else w.shape[1]
    taps = _taps(w, dilation)
    if frequency is None or taps is None:
        return torch_randn(0, (1, channels, *window))[0]
    phase = taps.positions.astype(np.float64) @ np.asarray(frequency, dtype=np.float64)
    sym = (taps.values * np.exp(-1j * phase)).sum(axis=-1)
    side = sym if transposed else sym.conj().T
    vec = lanczos_top(side @ side.conj().T, _REFINE_STEPS)[1]
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in window], indexing="ij")
    angle = sum(g * f for g, f in zip(grids, frequency, strict=True))
    wave = vec.reshape(channels, *([1] * len(window))) * np.exp(-1j * angle)
    return np.ascontiguousarray(wave.real)


def _tap_windows(
    kernel_size: tuple[int, ...],
    dilation: tuple[int, ...],
    step: tuple[int, ...],
    count: tuple[int, ...],
) -> list[tuple[tuple[int, ...], tuple[slice, ...]]]:
    """(tap index, the slices dilation·a + step·[0, count)) per kernel tap a."""
    return [
        (
            a,
            tuple(
                slice(d * i, d * i + s * (c - 1) + 1, s)
                for i, d, s, c in zip(a, dilation, step, count, strict=True)
            ),
        )
        for a in product(*[range(k) for k in kernel_size])
    ]


def _full(
    w: np.ndarray, x: np.ndarray, margin: tuple[int, ...], dilation: tuple[int, ...]
) -> np.ndarray:
    """The stride-1 cross-correlation (PyTorch's conv) of x zero-padded by ``margin``."""
    import numpy as np

    out_ch, in_ch = w.shape[:2]
    padded = np.pad(x, [(0, 0)] + [(m, m) for m in margin])
    k = w.shape[2:]
    size = tuple(p - d * (kk - 1) for p, d, kk in zip(padded.shape[1:], dilation, k, strict=True))
    out = np.zeros((out_ch, math.prod(size)), dtype=x.dtype)
    for a, window in _tap_windows(k, dilation, (1,) * len(k), size):
        out += w[(slice(None), slice(None), *a)] @ padded[(slice(None), *window)].reshape(in_ch, -1)
    return out.reshape(out_ch, *size)


def _transposed(
    w: np.ndarray, x: np.ndarray, stride: tuple[int, ...], dilation: tuple[int, ...]
) -> np.ndarray:
    """PyTorch's conv_transpose without padding: y[s·i + d·a] += W_aᵀx[i] (weight (in, out, *k))."""
    import numpy as np

    in_ch, out_ch = w.shape[:2]
    k, n = w.shape[2:], x.shape[1:]
    size = tuple(
        (m - 1) * s + d * (kk - 1) + 1 for m, s, d, kk in zip(n, stride, dilation, k, strict=True)
    )
    out = np.zeros((out_ch, *size), dtype=x.dtype)
    flat = x.reshape(in_ch, -1)
    for a, window in _tap_windows(k, dilation, stride, n):
        out[(slice(None), *window)] += (w[(slice(None), slice(None), *a)].T @ flat).reshape(
            out_ch, *n
        )
    return out


def _forward(
    w: np.ndarray,
    x: np.ndarray,
    margin: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    transposed: bool,
) -> np.ndarray:
    """The operator the power iteration uses: the ConvTranspose, or the full convolution's
    first stride phase."""
    if transposed:
        return _transposed(w, x, stride, dilation)
    return _full(w, x, margin, dilation)[(slice(None), *[slice(0, None, s) for s in stride])]


def _adjoint(
    w: np.ndarray,
    y: np.ndarray,
    shape: tuple[int, ...],
    margin: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    transposed: bool,
) -> np.ndarray:
    """:func:`_forward`'s adjoint applied to y, as an image of ``shape``."""
    import numpy as np

    k = w.shape[2:]
    if transposed:  # x̄[i] = Σ_a W_a y[s·i + d·a]
        in_ch, out_ch = w.shape[:2]
        out = np.zeros((in_ch, math.prod(shape[1:])), dtype=y.dtype)
        for a, window in _tap_windows(k, dilation, stride, shape[1:]):
            out += w[(slice(None), slice(None), *a)] @ y[(slice(None), *window)].reshape(out_ch, -1)
        return out.reshape(shape)
    out_ch, in_ch = w.shape[:2]
    padded_shape = tuple(n + 2 * m for n, m in zip(shape[1:], margin, strict=True))
    size = tuple(p - d * (kk - 1) for p, d, kk in zip(padded_shape, dilation, k, strict=True))
    full = np.zeros((out_ch, *size), dtype=y.dtype)  # the subsampling's adjoint: zero-fill
    full[(slice(None), *[slice(0, None, s) for s in stride])] = y
    flat = full.reshape(out_ch, -1)
    padded = np.zeros((in_ch, *padded_shape), dtype=y.dtype)
    for a, window in _tap_windows(k, dilation, (1,) * len(k), size):
        padded[(slice(None), *window)] += (w[(slice(None), slice(None), *a)].T @ flat).reshape(
            in_ch, *size
        )
    inner = tuple(slice(m, m + n) for m, n in zip(margin, shape[1:], strict=True))
    return padded[(slice(None), *inner)]


def _outputs(
    w: np.ndarray,
    x: np.ndarray,
    margin: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    transposed: bool,
) -> list[np.ndarray]:
    """The operator on a test image: its full output, split by stride phase for a convolution."""
    if transposed:
        return [_transposed(w, x, stride, dilation)]
    full = _full(w, x, margin, dilation)
    return [
        full[(slice(None), *[slice(p, None, s) for p, s in zip(phase, stride, strict=True)])]
        for phase in product(*[range(s) for s in stride])
    ]


def _certified_output_ratio(w: np.ndarray, x: np.ndarray, y: np.ndarray, transposed: bool) -> float:
    """Lower bound on ‖T x‖/‖x‖ given y = fl(T x) restricted to some outputs.

    Each output is a sum of ≤ c·T products (c input channels, T taps; here summed as T
    length-c products, any order), so ‖fl(Tx) − Tx‖ ≤ γ_{cT}‖|K|*|x|‖ ≤ γ_{cT}·√T‖K‖_F‖x‖
    (Higham Lemma 3.5; ‖|K|*·‖ ≤ Σ_a‖K_a‖₂). The zero padding and the strided windows are
    exact.
    """
    import numpy as np

    count = math.prod(w.shape[2:])
    channels = w.shape[0] if transposed else w.shape[1]
    fro = float(np.linalg.norm(w)) * (1.0 + gamma(w.size + 2))
    norm_x = float(np.linalg.norm(x)) * (1.0 + gamma(x.size + 2)) * SLACK
    norm_y = float(np.linalg.norm(y)) * (1.0 - gamma(y.size + 2))
    if norm_x == 0.0:
        return 0.0
    error = gamma(channels * count + 2) * math.sqrt(count) * fro * norm_x
    return max(0.0, math.nextafter((norm_y - error) / norm_x / SLACK, 0.0))
