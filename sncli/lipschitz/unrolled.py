"""A convolution at a small static size as the matrix it is: zero padding bounded as zero padding.

The torus and τ* bounds of :mod:`sncli.numerics.conv` are proofs for the zero-padded conv but
not its norm: at 8×8 the padding ring makes them 9–11 % high (issue #25). When the unrolled
matrix (out·∏n_out × in·∏n_in) is small, its σ is computed like a dense Gemm's
(:func:`sncli.lipschitz.ops._sigma_upper`: dense float64 SVD with the DENSE_ROUNDING allowance,
or the certified interval above 256) — the exact norm of the layer at this size, as Delattre et
al. (2024, arXiv 2402.00240) bound zero padding through the Toeplitz (here: the whole) matrix
rather than the circulant one. The matrix is built from the ONNX definition
y[o, i] = Σ_{c,t} K[o, c, t]·x[c, s·i + d·t − p_b] (x = 0 outside the image), groups as a
block-diagonal kernel. The matrix also joins the dense chains W_1 → act → … → W_l
(:func:`sncli.lipschitz.graph._chains`, through Flatten into the Gemm layers after it), so a
small CNN's convs and dense layers are bounded together by ECLipsE-Fast / LipSDP-Neuron.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


#: Largest unrolled matrix (entries) built, and its largest side.
UNROLLED_ENTRIES = 1 << 21
UNROLLED_SIDE = 2048


def unrolled_conv(
    kernel: np.ndarray,
    size: tuple[int, ...],
    strides: tuple[int, ...],
    dilations: tuple[int, ...],
    pads: tuple[int, ...],
    groups: int = 1,
) -> np.ndarray | None:
    """The zero-padded conv at input ``size`` as a dense float64 matrix (rows: output in
    (channel, *spatial) row-major order, columns: input likewise), or None when it would exceed
    :data:`UNROLLED_ENTRIES` / :data:`UNROLLED_SIDE`. ``pads`` is ONNX's (begins…, ends…)."""
    import numpy as np

    dims = len(size)
    out_ch, per_group = kernel.shape[:2]
    in_ch = per_group * groups
    taps = kernel.shape[2:]
    out_size = tuple(
        (size[a] + pads[a] + pads[a + dims] - dilations[a] * (taps[a] - 1) - 1) // strides[a] + 1
        for a in range(dims)
    )
    if any(n <= 0 for n in out_size):
        return None
    rows, cols = out_ch * math.prod(out_size), in_ch * math.prod(size)
    if rows * cols > UNROLLED_ENTRIES or max(rows, cols) > UNROLLED_SIDE:
        return None
    matrix = np.zeros((rows, cols))
    out_grid = np.stack(
        [g.reshape(-1) for g in np.meshgrid(*[np.arange(n) for n in out_size], indexing="ij")],
        axis=1,
    )  # (P_out, d)
    step = out_ch // groups
    in_strides = [math.prod(size[a + 1 :]) for a in range(dims)]
    for tap in np.ndindex(*taps):
        position = out_grid * np.asarray(strides) + np.asarray(tap) * np.asarray(dilations)
        position = position - np.asarray(pads[:dims])
        valid = ((position >= 0) & (position < np.asarray(size))).all(axis=1)
        out_index = np.nonzero(valid)[0]
        in_index = (position[valid] * np.asarray(in_strides)).sum(axis=1)
        for o in range(out_ch):
            g = o // step
            for c in range(per_group):
                column = (g * per_group + c) * math.prod(size) + in_index
                matrix[o * len(out_grid) + out_index, column] += kernel[(o, c, *tap)]
    return matrix


def unrolled_for(
    attributes: dict[str, Any], kernel: Any, size: Any, dilations: Any, groups: int
) -> np.ndarray | None:
    """The unrolled matrix of an ONNX Conv node (its ``attributes``; BatchNorm already folded
    into ``kernel``) at its static ``size``; None when the size is unknown, ``auto_pad`` is
    SAME or the matrix is too large. ``sncli.lipschitz.ops._conv`` takes its σ and registers
    it as a linear layer for chains."""
    if size is None or attributes.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    dims = len(size)
    pads = tuple(attributes.get("pads", [0] * (2 * dims)))
    strides = tuple(attributes.get("strides", [1] * dims))
    return unrolled_conv(kernel, tuple(size), strides, tuple(dilations), pads, groups)
