"""Convolutions and pools in float64 NumPy with their adjoints, for :mod:`.numpy_graph`.

A convolution is im2col (``sliding_window_view``, strided and dilated, copied in chunks of at
most ``CHUNK_BYTES``) times the weights, one matmul per group; its adjoint (the VJP of Conv,
and ConvTranspose's forward) adds each kernel tap's product into a strided slice of the input
(one matmul per tap, no im2col buffer). Max pools keep the flat index of each window's maximum
(the JVP gathers there, the VJP scatters with ``bincount``); average pools are linear, with
torch's divisor (``count_include_pad``, windows clipped by ``ceil_mode``).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from typing import Any

#: Largest im2col buffer one chunk of a convolution copies (bytes); the rows of the first
#: output dimension are split to fit it (a 224×224×64 3×3 layer is 231 MB whole).
CHUNK_BYTES = 32 << 20


def pad(x: Any, begin: Sequence[int], end: Sequence[int], value: float = 0.0) -> Any:
    """x padded on its spatial axes (all but the first two) by ``begin``/``end``."""
    import numpy as np

    if not any(begin) and not any(end):
        return x
    shape = [n + b + e for n, b, e in zip(x.shape[2:], begin, end, strict=True)]
    out = np.full((*x.shape[:2], *shape), value) if value else np.zeros((*x.shape[:2], *shape))
    out[crop_index(begin, x.shape[2:])] = x  # np.pad's own bookkeeping costs more on small maps
    return out


def crop_index(begin: Sequence[int], size: Sequence[int]) -> tuple[slice, ...]:
    """The index of the spatial window at ``begin`` of extent ``size``."""
    return (slice(None), slice(None), *(slice(b, b + s) for b, s in zip(begin, size, strict=True)))


def crop(x: Any, begin: Sequence[int], size: Sequence[int]) -> Any:
    """The spatial window of ``x`` at ``begin`` of extent ``size`` (the adjoint of :func:`pad`)."""
    return x[crop_index(begin, size)]


def _taps(
    size: Sequence[int], strides: Sequence[int], dilations: Sequence[int], out: Sequence[int]
) -> list[tuple[int, tuple[slice, ...]]]:
    """Per kernel tap (row-major): its index and the strided slice of the input it reads."""
    return _taps_cached(tuple(size), tuple(strides), tuple(dilations), tuple(out))


@functools.lru_cache(maxsize=256)
def _taps_cached(
    size: tuple[int, ...],
    strides: tuple[int, ...],
    dilations: tuple[int, ...],
    out: tuple[int, ...],
) -> list[tuple[int, tuple[slice, ...]]]:
    taps = []
    for j, offset in enumerate(itertools.product(*(range(k) for k in size))):
        index = tuple(
            slice(o * d, o * d + s * (n - 1) + 1, s)
            for o, d, s, n in zip(offset, dilations, strides, out, strict=True)
        )
        taps.append((j, (slice(None), slice(None), *index)))
    return taps


def out_size(
    length: int,
    kernel: int,
    stride: int,
    dilation: int,
    begin: int,
    end: int,
    ceil: bool = False,
) -> int:
    """Output length of a window op; with ``ceil``, torch's rule: the last window must start
    inside the input or its leading pad."""

    span = length + begin + end - dilation * (kernel - 1) - 1
    if not ceil:
        return span // stride + 1
    count = -(-span // stride) + 1
    if (count - 1) * stride >= length + begin:
        count -= 1
    return count


def windows(
    xp: Any, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int], out: Any
) -> Any:
    """View (N, C, *out, *kernel) of the padded input's windows (no copy)."""

    from numpy.lib.stride_tricks import as_strided

    # sliding_window_view's view, strided and dilated, built directly (its checks cost more than
    # a small layer's product)
    step = xp.strides[2:]
    shape = (*xp.shape[:2], *out, *kernel)
    strides = (
        *xp.strides[:2],
        *(t * s for t, s in zip(step, strides, strict=True)),
        *(t * d for t, d in zip(step, dilations, strict=True)),
    )
    return as_strided(xp, shape, strides, writeable=False)


def conv_valid(
    xp: Any, w: Any, strides: Sequence[int], dilations: Sequence[int], groups: int
) -> Any:
    """Unpadded N-d cross-correlation: xp (N, C, *L), w (M, C/G, *k) → (N, M, *out)."""
    import numpy as np

    n, c = xp.shape[:2]
    m, cg = w.shape[:2]
    kernel = w.shape[2:]
    dims = len(kernel)
    out = [
        out_size(length, k, s, d, 0, 0)
        for length, k, s, d in zip(xp.shape[2:], kernel, strides, dilations, strict=True)
    ]
    g, mg, taps = groups, m // groups, math.prod(kernel)
    view = windows(xp, kernel, strides, dilations, out).reshape(n, g, cg, *out, *kernel)
    perm = (0, 1, *range(3, 3 + dims), 2, *range(3 + dims, 3 + 2 * dims))
    weights = np.ascontiguousarray(w.reshape(g, mg, cg * taps).transpose(0, 2, 1))
    result = np.empty((n, g, mg, *out))
    rest = math.prod(out[1:])
    rows = max(1, CHUNK_BYTES // max(1, 8 * n * c * taps * rest))
    for r0 in range(0, out[0], rows):
        r1 = min(out[0], r0 + rows)
        part = view[:, :, :, r0:r1].transpose(perm).reshape(n, g, (r1 - r0) * rest, cg * taps)
        product = np.matmul(part, weights)  # (N, G, P, Mg)
        result[:, :, :, r0:r1] = product.transpose(0, 1, 3, 2).reshape(n, g, mg, r1 - r0, *out[1:])
    return result.reshape(n, m, *out)


def conv_valid_adjoint(
    y: Any,
    w: Any,
    strides: Sequence[int],
    dilations: Sequence[int],
    groups: int,
    spatial: Sequence[int],
) -> Any:
    """The adjoint of :func:`conv_valid` for an input of spatial size ``spatial``:
    y (N, M, *out) → (N, C, *spatial), one matmul per kernel tap."""
    import numpy as np

    n, m = y.shape[:2]
    out = y.shape[2:]
    cg = w.shape[1]
    kernel = w.shape[2:]
    g, mg, taps = groups, m // groups, math.prod(kernel)
    per_group = y.reshape(n, g, mg, math.prod(out))
    weights = np.ascontiguousarray(w.reshape(g, mg, cg, taps).transpose(3, 0, 2, 1))
    x = np.zeros((n, g * cg, *spatial))
    for j, index in _taps(kernel, strides, dilations, out):
        # (N, G, Cg, P); depthwise (one channel in and out per group): a scale per channel
        part = weights[j] * per_group if mg == cg == 1 else np.matmul(weights[j], per_group)
        x[index] += part.reshape(n, g * cg, *out)
    return x


def max_pool(
    x: Any,
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    begin: Sequence[int],
    end: Sequence[int],
    ceil: bool,
) -> tuple[Any, Any, tuple[tuple[int, ...], list[int], list[int]]]:
    """(y, flat index of each max in the padded input, (padded shape, begin, end pads))."""
    import numpy as np

    spatial = x.shape[2:]
    out = [
        out_size(length, k, s, d, b, e, ceil)
        for length, k, s, d, b, e in zip(
            spatial, kernel, strides, dilations, begin, end, strict=True
        )
    ]
    tail = [
        max(e, (n - 1) * s + d * (k - 1) + 1 - length - b)
        for length, k, s, d, b, e, n in zip(
            spatial, kernel, strides, dilations, begin, end, out, strict=True
        )
    ]
    xp = pad(x, begin, tail, -math.inf)
    view = windows(xp, kernel, strides, dilations, out)
    flat = view.reshape(*view.shape[: 2 + len(out)], -1)
    arg = np.argmax(flat, axis=-1)
    y = np.take_along_axis(flat, arg[..., None], -1)[..., 0]
    offsets = np.unravel_index(arg, tuple(kernel))
    n, c = x.shape[:2]
    position = np.arange(n * c).reshape(n, c, *([1] * len(out)))
    for axis, (length, s, d, o) in enumerate(
        zip(xp.shape[2:], strides, dilations, offsets, strict=True)
    ):
        shape = [1] * (2 + len(out))
        shape[2 + axis] = -1
        position = position * length + (np.arange(out[axis]) * s).reshape(shape) + o * d
    return y, position, (xp.shape, list(begin), tail)


def avg_divisor(
    spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    out: Sequence[int],
    include_pad: bool,
) -> Any:
    """torch's avg_pool divisor per output position (windows clipped to the padded input, or
    to the input without ``include_pad``), as an array broadcasting over (N, C, *out)."""
    import numpy as np

    divisor = np.ones([1] * (2 + len(out)))
    for axis, (length, k, s, p, n) in enumerate(
        zip(spatial, kernel, strides, pads, out, strict=True)
    ):
        start = np.arange(n) * s - p
        stop = np.minimum(start + k, length + p)
        if not include_pad:
            stop = np.minimum(stop, length)
            start = np.maximum(start, 0)
        shape = [1] * (2 + len(out))
        shape[2 + axis] = n
        divisor = divisor * (stop - start).reshape(shape)
    return divisor


def avg_pool(
    x: Any,
    kernel: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    ceil: bool,
    include: bool,
) -> tuple[Any, Any, list[int]]:
    """(y, divisor, end pads) of an average pool with symmetric ``pads``, no dilation."""
    import numpy as np

    spatial = x.shape[2:]
    ones = [1] * len(kernel)
    out = [
        out_size(length, k, s, 1, p, p, ceil)
        for length, k, s, p in zip(spatial, kernel, strides, pads, strict=True)
    ]
    tail = [
        max(p, (n - 1) * s + k - length - p)
        for length, k, s, p, n in zip(spatial, kernel, strides, pads, out, strict=True)
    ]
    xp = pad(x, pads, tail)
    total = np.zeros((*x.shape[:2], *out))
    for _, index in _taps(kernel, strides, ones, out):
        total += xp[index]
    divisor = avg_divisor(spatial, kernel, strides, pads, out, include)
    return total / divisor, divisor, tail


def avg_pool_adjoint(
    u: Any,
    divisor: Any,
    spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    tail: Sequence[int],
) -> Any:
    """The adjoint of :func:`avg_pool` at cotangent u (N, C, *out) → (N, C, *spatial)."""
    import numpy as np

    out = u.shape[2:]
    share = u / divisor
    padded = [n + p + t for n, p, t in zip(spatial, pads, tail, strict=True)]
    xp = np.zeros((*u.shape[:2], *padded))
    for _, index in _taps(kernel, strides, [1] * len(kernel), out):
        xp[index] += share
    return crop(xp, pads, spatial)
