"""Per-layer spectral norms of a checkpoint: the library behind ``sncli inspect``.

Layers are measured through :mod:`sncli.run` (a reader thread ahead of single-threaded
workers, within a byte budget); bench/README.md has the numbers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from typing import TYPE_CHECKING, Any

from sncli.arguments import CheckpointSource, coerce_fields, takes_checkpoints
from sncli.arrays import is_array, to_float64
from sncli.checkpoint import Checkpoint, natural_key
from sncli.dtypes import bits_per_element
from sncli.errors import NumericalError
from sncli.formats.safetensors import SafetensorsStreamReader
from sncli.layers import Layer, LayerKind, Skipped, refuse_if_none_measured, select_or_refuse
from sncli.messages import ProgressCallback
from sncli.numerics.floating import DENSE_ROUNDING
from sncli.numerics.spectral import (
    DEFAULT_POWER_ITERS,
    DEFAULT_POWER_TOL,
    DEFAULT_SEED,
    DEFAULT_TOL,
    BoundKind,
    Method,
    as_matrix,
    largest_singular_value,
    matvec64,
    resolve_device,
)
from sncli.parametrizations import SpectralNormStyle
from sncli.run import available_cores, load_weight, measure_layers, torch_threads
from sncli.run.dask import refuse_device_with_scheduler

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_POWER_ITERS",
    "DEFAULT_POWER_TOL",
    "DEFAULT_SEED",
    "DEFAULT_TOL",
    "InspectReport",
    "LayerSigma",
    "MethodOptions",
    "SortKey",
    "SpectralNormReading",
    "measure_layer",
    "sort_layers",
    "spectral_norms",
]


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
    """σ of one layer's weight matrix.

    ``bound`` says whether σ is two-sided (exact) or a lower bound; ``error_estimate`` is the
    estimated relative error of iterative methods; ``certified``/``upper`` report a proven upper
    side (dense LAPACK, or ``MethodOptions.certify``); ``algorithm`` is what actually ran;
    ``warm_start`` is True when the stored spectral-norm v vector seeded the iteration;
    ``reshape_note`` is the layer's (how an uncertain conv reshape was decided).
    """

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
    error_estimate: float | None = None
    certified: bool = False
    upper: float | None = None
    algorithm: str = ""
    warm_start: bool = False
    reshape_note: str | None = None
    #: How the name was read (embedding or not), from ``Layer.note``; "" when no name decided.
    note: str = ""
    #: A LoRA update's rank r and scale s (kind ``lora``, :mod:`sncli.adapters`); else None.
    rank: int | None = None
    scale: float | None = None
    #: An expert of a mixture-of-experts stack: its index and the stack's key (``Layer``).
    expert: int | None = None
    stack: str | None = None

    @property
    def sigma_upper(self) -> float | None:
        """A proven upper bound on σ when one is known: the certificate's, or for a dense float64
        result σ plus its rounding allowance (``DENSE_ROUNDING``, 1e-12 relative)."""
        if self.upper is not None:
            return self.upper
        if self.certified:
            return self.sigma * (1 + DENSE_ROUNDING)
        return None


@dataclass(frozen=True)
class InspectReport:
    """Result of analysing a checkpoint: layers with σ, and everything skipped with a reason.

    ``device`` and ``workers`` record where and with how many threads σ was computed;
    ``seconds`` is the wall time of the analysis (opening excluded).
    """

    checkpoint: str
    format: str
    method: Method
    layers: list[LayerSigma]
    skipped: list[Skipped]
    notes: list[str] = field(default_factory=list)
    device: str = "cpu"
    workers: int = 1
    seconds: float | None = None

    @property
    def largest(self) -> LayerSigma | None:
        """The layer of largest σ among linear/conv layers (what a network's stretch is made
        of); embedding tables, whose input is discrete, are :attr:`largest_embedding`."""
        layers = [layer for layer in self.layers if layer.kind is not LayerKind.EMBEDDING]
        return max(layers, key=lambda layer: layer.sigma, default=None)

    @property
    def largest_embedding(self) -> LayerSigma | None:
        """The embedding table of largest σ (informational), or None."""
        layers = [layer for layer in self.layers if layer.kind is LayerKind.EMBEDDING]
        return max(layers, key=lambda layer: layer.sigma, default=None)

    def to_pandas(self) -> Any:
        """The layers as a pandas DataFrame (pandas optional); ``skipped`` is in ``attrs``."""
        from sncli.tables import to_frame

        skipped = {s.name: s.reason for s in self.skipped}
        attrs = {"checkpoint": self.checkpoint, "format": self.format, "method": self.method}
        return to_frame(self.layers, ("sigma_upper",), **attrs, skipped=skipped)


@dataclass(frozen=True)
class MethodOptions:
    """Settings shared by every σ computation in one run.

    ``tol``: the relative error target of ``auto``/``lanczos`` (default ``DEFAULT_TOL``) or the
    relative change that stops ``power`` (default ``DEFAULT_POWER_TOL``); None picks the default.
    ``device``: "cpu" or e.g. "cuda" (falls back to the CPU with a note when unavailable).
    ``workers``: layers measured concurrently, each with single-threaded torch (None: one per
    core, at most one per layer; 1 on a GPU). ``certify``: prove an upper bound
    per layer (float64 Gram + Cholesky; slower). ``warm_start``: seed iterations with the u/v
    vectors stored in spectral-norm checkpoints. ``scheduler``: the address of a Dask
    scheduler to run the layers on as tasks (:mod:`sncli.run.dask`; CPU workers only).
    """

    method: Method = Method.AUTO
    iters: int = DEFAULT_POWER_ITERS
    tol: float | None = None
    seed: int = DEFAULT_SEED
    device: str = "cpu"
    workers: int | None = None
    certify: bool = False
    warm_start: bool = True
    scheduler: str | None = None

    def __post_init__(self) -> None:
        coerce_fields(self, method=Method)


@dataclass
class _Loaded:
    """A layer's tensors, read by the reader thread."""

    layer: Layer
    weight: torch.Tensor | None
    u: torch.Tensor | None = None
    v: torch.Tensor | None = None
    effective: torch.Tensor | None = None


def _load_layer(
    checkpoint: Checkpoint, layer: Layer, reader: SafetensorsStreamReader | None
) -> _Loaded:
    """The layer's tensors: NumPy arrays where the format is read without torch
    (``Checkpoint.numpy_native``), else torch tensors (PyTorch files keep torch's kernels)."""
    arrays = checkpoint.numpy_native
    load = checkpoint.load_array if arrays else checkpoint.load
    weight = load_weight(checkpoint, layer.name, reader, arrays=arrays)
    loaded = _Loaded(layer, weight)
    info = layer.spectral_norm
    if info is not None:
        loaded.u = load(info.u_key)
        if info.v_key is not None:
            loaded.v = load(info.v_key)
        elif info.effective_key is not None:
            loaded.effective = load_weight(checkpoint, info.effective_key, reader, arrays=arrays)
    return loaded


def _stored_estimate(
    layer: Layer,
    loaded: _Loaded,
    matrix: torch.Tensor,
    sigma: float,
    options: MethodOptions,
) -> SpectralNormReading | None:
    info = layer.spectral_norm
    if info is None:
        return None
    if info.v_key is None:
        if loaded.effective is None:
            return SpectralNormReading(info.style, None, None, "no stored v vector")
        eff = largest_singular_value(
            as_matrix(loaded.effective, layer.reshape_dim), Method.EXACT, seed=options.seed
        )
        estimate = sigma / eff.sigma if eff.sigma > 0 else None
        return SpectralNormReading(
            info.style, estimate, eff.sigma, "legacy version-0 layout: normalized weight stored"
        )
    if is_array(matrix):
        u, v = to_float64(loaded.u).reshape(-1), to_float64(loaded.v).reshape(-1)
    else:
        import torch

        u = loaded.u.to(torch.float64).reshape(-1)
        v = loaded.v.to(torch.float64).reshape(-1)
    if u.shape[0] != matrix.shape[0] or v.shape[0] != matrix.shape[1]:
        return SpectralNormReading(
            info.style, None, None, "stored u/v do not match the weight's shape"
        )
    product = matvec64(matrix, v)
    estimate = float(u @ (product if is_array(product) else product.cpu()))
    if estimate == 0.0 or not math.isfinite(estimate):
        return SpectralNormReading(
            info.style, estimate, None, "stored estimate is zero: PyTorch would produce NaN"
        )
    return SpectralNormReading(info.style, estimate, sigma / estimate)


def _measure(loaded: _Loaded, options: MethodOptions, device: str) -> LayerSigma:
    layer = loaded.layer
    matrix = as_matrix(loaded.weight, layer.reshape_dim)
    start = None
    if options.warm_start and loaded.v is not None and math.prod(loaded.v.shape) == matrix.shape[1]:
        start = loaded.v
    estimate = largest_singular_value(
        matrix,
        options.method,
        iters=options.iters,
        tol=options.tol,
        seed=options.seed,
        start=start,
        device=device,
        certify=options.certify,
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
        spectral_norm=_stored_estimate(layer, loaded, matrix, estimate.sigma, options),
        transposed=layer.transposed,
        error_estimate=estimate.error_estimate,
        certified=estimate.certified,
        upper=estimate.upper,
        algorithm=estimate.algorithm,
        warm_start=start is not None and estimate.iterations is not None,
        reshape_note=layer.reshape_note,
        note=layer.note,
        expert=layer.expert,
        stack=layer.stack,
    )


def measure_layer(checkpoint: Checkpoint, layer: Layer, options: MethodOptions) -> LayerSigma:
    """Load one layer's weight and compute its σ. Raises ``NumericalError`` on NaN/Inf."""
    device, _ = resolve_device(options.device)
    return _measure(_load_layer(checkpoint, layer, None), options, device)


def _layer_bytes(layer: Layer) -> int:
    import math

    total = math.prod(layer.shape) * bits_per_element(layer.dtype) // 8
    if layer.weight_norm is not None:  # the stored v, and W = g·v/‖v‖ composed in float64
        total += math.prod(layer.shape) * 8
    info = layer.spectral_norm
    return total * 2 if info is not None and info.effective_key else total


def _worker_count(options: MethodOptions, layers: int, device: str) -> int:
    if options.workers is not None:
        return max(1, options.workers)
    if device != "cpu":
        return 1
    return max(1, min(available_cores(), layers))


def _measure_or_skip(loaded: _Loaded, options: MethodOptions, device: str) -> LayerSigma | Skipped:
    try:
        return _measure(loaded, options, device)
    except NumericalError as exc:
        return Skipped(loaded.layer.name, exc.message)


def _load_for_task(
    checkpoints: tuple[Checkpoint, ...], layer: Layer, reader: SafetensorsStreamReader | None
) -> _Loaded:
    return _load_layer(checkpoints[0], layer, reader)


@takes_checkpoints("checkpoint")
def spectral_norms(
    checkpoint: CheckpointSource,
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
    ``progress(done, total, next_name)`` is called from the calling thread.
    Raises ``NoLayersMatchedError`` when nothing is left to analyse, and ``NumericalError``
    (exit 1) when no selected layer could be measured (all non-finite): "0 layers analysed" is
    not a result a CI gate should pass.
    """
    options = options or MethodOptions()
    selected, classification = select_or_refuse(checkpoint, include, exclude, transposed, kinds)
    began = time.perf_counter()
    device, device_note = resolve_device(options.device)
    refuse_device_with_scheduler(options.scheduler, options.device)
    workers = _worker_count(options, len(selected), device)
    # Single-threaded torch on the CPU, parallel across layers: the block operations are many
    # small GEMMs, and 2 OpenMP threads on them ran 26× slower than 2 workers × 1 thread on a
    # loaded 2-core machine (302M-parameter checkpoint, auto: 87 s against 3.3 s).
    with torch_threads(1 if device == "cpu" else None):
        results, failed, workers, run_notes = measure_layers(
            (checkpoint,),
            selected,
            measured=LayerSigma,
            nbytes=_layer_bytes,
            width=lambda layer: layer.matrix_shape[0] * layer.matrix_shape[1],
            load=_load_for_task,
            compute=partial(_measure_or_skip, options=options, device=device),
            workers=workers,
            label=lambda layer: layer.short_name,
            progress=progress,
            thread_name="sncli-sigma",
            scheduler=options.scheduler,
            threads=None,
        )
    refuse_if_none_measured(len(results), failed, checkpoint.path)
    skipped = list(classification.skipped) + failed
    skipped.sort(key=lambda s: natural_key(s.name))
    notes = list(checkpoint.notes)
    if device_note:
        notes.append(device_note)
    notes += run_notes
    return InspectReport(
        checkpoint=str(checkpoint.path),
        format=checkpoint.format,
        method=options.method,
        layers=results,
        skipped=skipped,
        notes=notes,
        device=device,
        workers=workers,
        seconds=time.perf_counter() - began,
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
