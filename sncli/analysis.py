"""Per-layer spectral norms of a checkpoint: the library behind ``sncli inspect``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from sncli.checkpoint import Checkpoint, natural_key
from sncli.errors import NoLayersMatchedError, NumericalError
from sncli.layers import Layer, LayerKind, Skipped, SpectralNormStyle, classify, select
from sncli.spectral import (
    DEFAULT_POWER_ITERS,
    DEFAULT_POWER_TOL,
    DEFAULT_SEED,
    BoundKind,
    Method,
    as_matrix,
    largest_singular_value,
)

if TYPE_CHECKING:
    import torch

ProgressCallback = Callable[[int, int, str], None]


@dataclass(frozen=True)
class SpectralNormReading:
    """What a checkpoint saved from a spectrally normalized model says about a layer.

    PyTorch's spectral_norm divides the raw weight by σ̂ = uᵀWv from its stored vectors, so the
    model uses W/σ̂, whose σ is ``sigma_effective`` = σ(W)/σ̂ (≥ 1, since σ̂ ≤ σ).
    """

    style: SpectralNormStyle
    sigma_stored_estimate: float | None
    sigma_effective: float | None
    note: str = ""


@dataclass(frozen=True)
class LayerSigma:
    """σ of one layer's weight matrix."""

    name: str
    short_name: str
    kind: LayerKind
    shape: tuple[int, ...]
    dtype: str
    matrix_shape: tuple[int, int]
    matrix: str
    sigma: float
    method: Method
    bound: BoundKind
    iterations: int | None = None
    converged: bool | None = None
    spectral_norm: SpectralNormReading | None = None
    transposed: bool = False


@dataclass(frozen=True)
class InspectReport:
    """Result of analysing a checkpoint: layers with σ, and everything skipped with a reason."""

    checkpoint: str
    format: str
    method: Method
    layers: list[LayerSigma]
    skipped: list[Skipped]
    notes: list[str] = field(default_factory=list)

    @property
    def largest(self) -> LayerSigma | None:
        return max(self.layers, key=lambda layer: layer.sigma, default=None)


@dataclass(frozen=True)
class MethodOptions:
    """Settings shared by every σ computation in one run."""

    method: Method = Method.EXACT
    iters: int = DEFAULT_POWER_ITERS
    tol: float = DEFAULT_POWER_TOL
    seed: int = DEFAULT_SEED


def _stored_estimate(
    checkpoint: Checkpoint, layer: Layer, matrix: torch.Tensor, sigma: float
) -> SpectralNormReading | None:
    import torch

    info = layer.spectral_norm
    if info is None:
        return None
    if info.v_key is None:
        if info.effective_key is None:
            return SpectralNormReading(info.style, None, None, "no stored v vector")
        stored = checkpoint.load(info.effective_key)
        eff = largest_singular_value(as_matrix(stored.double(), layer.reshape_dim))
        estimate = sigma / eff.sigma if eff.sigma > 0 else None
        return SpectralNormReading(
            info.style, estimate, eff.sigma, "legacy version-0 layout: normalized weight stored"
        )
    u = checkpoint.load(info.u_key).to(torch.float64).reshape(-1)
    v = checkpoint.load(info.v_key).to(torch.float64).reshape(-1)
    if u.numel() != matrix.shape[0] or v.numel() != matrix.shape[1]:
        return SpectralNormReading(
            info.style, None, None, "stored u/v do not match the weight's shape"
        )
    estimate = float(torch.dot(u, matrix.to(torch.float64) @ v))
    if estimate == 0.0 or not torch.isfinite(torch.tensor(estimate)):
        return SpectralNormReading(
            info.style, estimate, None, "stored estimate is zero: PyTorch would produce NaN"
        )
    return SpectralNormReading(info.style, estimate, sigma / estimate)


def measure_layer(checkpoint: Checkpoint, layer: Layer, options: MethodOptions) -> LayerSigma:
    """Load one layer's weight and compute its σ. Raises ``NumericalError`` on NaN/Inf."""
    weight = checkpoint.load(layer.name)
    matrix = as_matrix(weight, layer.reshape_dim)
    estimate = largest_singular_value(
        matrix, options.method, iters=options.iters, tol=options.tol, seed=options.seed
    )
    return LayerSigma(
        name=layer.name,
        short_name=layer.short_name,
        kind=layer.kind,
        shape=layer.shape,
        dtype=layer.dtype,
        matrix_shape=layer.matrix_shape,
        matrix=layer.matrix_description,
        sigma=estimate.sigma,
        method=estimate.method,
        bound=estimate.bound,
        iterations=estimate.iterations,
        converged=estimate.converged,
        spectral_norm=_stored_estimate(checkpoint, layer, matrix, estimate.sigma),
        transposed=layer.transposed,
    )


def spectral_norms(
    checkpoint: Checkpoint,
    *,
    options: MethodOptions | None = None,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    transposed: Iterable[str] = (),
    kinds: Iterable[LayerKind] | None = None,
    progress: ProgressCallback | None = None,
) -> InspectReport:
    """σ of every selected layer in a checkpoint, in natural key order.

    ``include``/``exclude`` are regexes searched in tensor keys. Layers with NaN/Inf weights are
    listed as skipped with the count of bad values rather than given a σ.
    Raises ``NoLayersMatchedError`` when nothing is left to analyse.
    """
    options = options or MethodOptions()
    classification = classify(checkpoint, transposed=transposed)
    selected = select(classification.layers, include, exclude)
    if kinds is not None:
        wanted = set(kinds)
        selected = [layer for layer in selected if layer.kind in wanted]
    if not selected:
        found = len(classification.layers)
        reason = (
            f"none of its {found} layers matched the filters"
            if found
            else "it holds no weight matrices (only "
            + (f"{len(classification.skipped)} skipped tensors)" if classification.skipped else ")")
        )
        raise NoLayersMatchedError(f"nothing to analyse: {reason}", checkpoint.path)
    results: list[LayerSigma] = []
    skipped = list(classification.skipped)
    for index, layer in enumerate(selected):
        if progress is not None:
            progress(index, len(selected), layer.short_name)
        try:
            results.append(measure_layer(checkpoint, layer, options))
        except NumericalError as exc:
            skipped.append(Skipped(layer.name, exc.message))
    if progress is not None:
        progress(len(selected), len(selected), "")
    skipped.sort(key=lambda s: natural_key(s.name))
    return InspectReport(
        checkpoint=str(checkpoint.path),
        format=checkpoint.format,
        method=options.method,
        layers=results,
        skipped=skipped,
        notes=list(checkpoint.notes),
    )


class SortKey(str, Enum):
    NAME = "name"
    SIGMA = "sigma"
    SIZE = "size"


def sort_layers(
    layers: list[LayerSigma], key: SortKey | str, *, reverse: bool = False
) -> list[LayerSigma]:
    """Order layers: ``name`` natural ascending; ``sigma`` and ``size`` largest first."""
    key = SortKey(key)
    if key is SortKey.NAME:
        ordered = sorted(layers, key=lambda layer: natural_key(layer.name))
    elif key is SortKey.SIGMA:
        ordered = sorted(layers, key=lambda layer: -layer.sigma)
    else:
        ordered = sorted(layers, key=lambda layer: -layer.matrix_shape[0] * layer.matrix_shape[1])
    return ordered[::-1] if reverse else ordered
