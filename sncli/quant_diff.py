"""A quantized GGUF file against its source: which tensors pair up, and the error per quant type.

``diff`` pairs the two sides by :mod:`sncli.gguf_names` when exactly one side is GGUF; every
pair is then an ordinary :class:`~sncli.diff.LayerDiff` (‖Q − W‖₂ is ``delta_sigma``,
‖Q − W‖₂/‖W‖₂ is ``relative``, ‖Q − W‖_F/‖W‖_F is ``relative_frobenius``, with W the A side).
This module adds σ_max drift and the summary per GGUF type.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sncli.dtypes import DEQUANTIZED
from sncli.gguf_names import Unmatched

if TYPE_CHECKING:
    from sncli.checkpoint import Checkpoint
    from sncli.diff import LayerDiff
    from sncli.layers import Layer, Skipped


@dataclass(frozen=True)
class QuantTypeSummary:
    """The matched layers of one GGUF type: how far their quantized weights are from A's."""

    type: str
    layers: int
    parameters: int
    relative_max: float
    relative_median: float
    relative_frobenius_max: float
    relative_frobenius_median: float
    #: (σ_max(B) − σ_max(A))/σ_max(A) of largest magnitude, with its sign.
    sigma_drift_max: float


@dataclass(frozen=True)
class QuantizationReport:
    architecture: str
    #: Which side ("a" or "b") is the GGUF file; relative values are to A.
    gguf_side: str
    by_type: list[QuantTypeSummary]
    unmatched: list[Unmatched] = field(default_factory=list)


def sigma_drift(layer: LayerDiff) -> float | None:
    """(σ_max(B) − σ_max(A))/σ_max(A); None when σ_max(A) = 0."""
    return (layer.sigma_b - layer.sigma_a) / layer.sigma_a if layer.sigma_a > 0 else None


def quant_type(layer: LayerDiff, gguf_side: str) -> str:
    label = layer.dtype_b if gguf_side == "b" else layer.dtype_a
    return label.removesuffix(DEQUANTIZED)


def summarize(
    architecture: str, gguf_side: str, layers: Iterable[LayerDiff], unmatched: list[Unmatched]
) -> QuantizationReport:
    """One :class:`QuantTypeSummary` per GGUF type, largest relative error first."""
    import math

    groups: dict[str, list[LayerDiff]] = {}
    for layer in layers:
        groups.setdefault(quant_type(layer, gguf_side), []).append(layer)
    summaries = []
    for name, group in groups.items():
        relative = [layer.relative for layer in group if layer.relative is not None]
        frob = [layer.relative_frobenius for layer in group if layer.relative_frobenius is not None]
        drifts = [d for layer in group if (d := sigma_drift(layer)) is not None]
        summaries.append(
            QuantTypeSummary(
                type=name,
                layers=len(group),
                parameters=sum(math.prod(layer.shape) for layer in group),
                relative_max=max(relative, default=math.nan),
                relative_median=statistics.median(relative) if relative else math.nan,
                relative_frobenius_max=max(frob, default=math.nan),
                relative_frobenius_median=statistics.median(frob) if frob else math.nan,
                sigma_drift_max=max(drifts, key=abs, default=math.nan),
            )
        )
    summaries.sort(key=lambda s: -s.relative_max if s.relative_max == s.relative_max else 0)
    return QuantizationReport(architecture, gguf_side, summaries, unmatched)


@dataclass(frozen=True)
class QuantPairs:
    """The layer pairs of a GGUF file and its source, in (A, B) order."""

    architecture: str
    gguf_side: str
    #: (source name, layer of A, layer of B, heads to undo the Q/K permutation with)
    pairs: list[tuple[str, Layer, Layer, int | None]]
    unmatched: list[Unmatched]
    skipped: list[Skipped]
    notes: list[str]


def pair_quantized(
    a: Checkpoint,
    b: Checkpoint,
    *,
    include: Iterable[str],
    exclude: Iterable[str],
    transposed: Iterable[str],
) -> QuantPairs:
    """Pair a GGUF file's layers with its source's (either order) by
    :func:`sncli.gguf_names.map_names`; a pair whose shapes differ is unmatched, with both."""
    from sncli.formats.gguf import read_gguf_header
    from sncli.gguf_names import map_names
    from sncli.layers import classify, select

    gguf_side = "a" if a.format == "gguf" else "b"
    quantized, source = (a, b) if gguf_side == "a" else (b, a)
    header = read_gguf_header(quantized.files[0])
    mapping = map_names(source.tensors, quantized.tensors, header.metadata)
    classified_source = classify(source, transposed=transposed)
    by_key = {layer.name: layer for layer in classify(quantized, transposed=transposed).layers}
    chosen = {layer.name for layer in select(classified_source.layers, include, exclude)}
    source_layers = {layer.name: layer for layer in classified_source.layers}
    unmatched = list(mapping.unmatched)
    pairs = []
    for pair in mapping.pairs:
        layer_s, layer_q = source_layers.get(pair.source), by_key.get(pair.gguf)
        if layer_s is None or layer_q is None or pair.source not in chosen:
            continue  # not a layer (a norm vector: listed as skipped) or filtered out
        if layer_s.shape != layer_q.shape:
            reason = f"shape {layer_s.shape} differs from {pair.gguf}'s {layer_q.shape}"
            unmatched.append(Unmatched(pair.source, "source", reason))
            continue
        first, second = (layer_q, layer_s) if gguf_side == "a" else (layer_s, layer_q)
        pairs.append((pair.source, first, second, pair.heads))
    return QuantPairs(
        mapping.architecture,
        gguf_side,
        pairs,
        unmatched,
        list(classified_source.skipped),
        [f"GGUF: {note}" for note in mapping.notes],
    )


def closer_layout_array(source: Any, quantized: Any, heads: int) -> tuple[Any, bool]:
    """:func:`sncli.gguf_names.closer_layout` for NumPy arrays (no torch): the GGUF array
    un-permuted when that is nearer the source in Frobenius norm (float64 differences)."""
    import numpy as np

    from sncli.arrays import to_float64
    from sncli.gguf_names import unpermute_rows

    if quantized.shape[0] % (2 * heads):
        return quantized, False
    undone = unpermute_rows(quantized, heads)
    w = to_float64(source)
    plain = float(np.linalg.norm((to_float64(quantized) - w).reshape(-1)))
    unpermuted = float(np.linalg.norm((to_float64(undone) - w).reshape(-1)))
    return (undone, True) if unpermuted <= plain else (quantized, False)
