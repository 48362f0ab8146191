"""The singular-value spectrum of every layer and its diagnostics: the library behind
``sncli spectrum``.

Layers are chosen and flattened exactly as ``inspect`` does (:mod:`sncli.layers`: linear, conv
as the reshape ``(out, in·k…)``, embeddings included and marked; spectral-norm layers give their
raw weight) and streamed through :mod:`sncli.run` (a reader thread ahead of
single-threaded workers within a byte budget), so memory is bounded by the largest layers, not
the file. Each worker computes the full spectrum in float64 (:func:`sncli.numerics.svd.
singular_values`) or, with ``top_k``, the K largest values by block Lanczos, then the metrics of
:mod:`sncli.numerics.esd`.

**On a GPU** (``device="cuda"``/``"cuda:N"``) each matrix is moved to the device as a torch
tensor in its stored dtype (bf16 moves half the bytes of float32) and the same torch kernels run
there, still in float64 (float64 Gram + ``eigvalsh``, cuSOLVER): the values have the float64
accuracy of the CPU's (σ₁ to rounding, σᵢ to about ε₆₄·(σ₁/σᵢ)² relative). One layer is on the
device at a time (a lock), so device memory holds one matrix and its Gram; loading and the
metrics (NumPy, on the CPU) stay parallel across the workers. Without CUDA it computes on the
CPU, with the note ``inspect`` gives.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from enum import Enum
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sncli.arguments import CheckpointSource, takes_checkpoints
from sncli.arrays import is_array, to_float64
from sncli.checkpoint import Checkpoint, natural_key
from sncli.dtypes import UNIT_ROUNDOFF, bits_per_element
from sncli.errors import NumericalError, WriteError
from sncli.formats.safetensors import SafetensorsStreamReader
from sncli.layers import Layer, LayerKind, Skipped, refuse_if_none_measured, select_or_refuse
from sncli.messages import ProgressCallback
from sncli.numerics.esd import MIN_EVALS, partial_metrics, spectrum_metrics
from sncli.numerics.spectral import DEFAULT_SEED, as_matrix, resolve_device
from sncli.numerics.svd import (
    TOP_K_TOL,
    frobenius_norm,
    singular_values,
    top_singular_values,
)
from sncli.run import available_cores, load_weight, measure_layers
from sncli.run.dask import refuse_device_with_scheduler

if TYPE_CHECKING:
    import numpy as np
    import pandas
    import torch

    from sncli.numerics.estimates import Spectrum

__all__ = [
    "EXTRA_METRICS",
    "METRICS",
    "LayerSpectrum",
    "SpectrumOptions",
    "SpectrumReport",
    "SpectrumSortKey",
    "layer_spectrum",
    "save_spectra",
    "sort_spectra",
    "spectra",
]

#: Every metric a layer may carry, in the order of the JSON/CSV output; ``None`` when not
#: computed (``--top-k`` omits those that need the full spectrum) or undefined.
METRICS = (
    "sigma_max",
    "sigma_min",
    "condition_number",
    "frobenius",
    "nuclear",
    "stable_rank",
    "effective_rank",
    "numerical_rank",
    "rank_tolerance",
    "lambda_max",
    "log_norm",
    "log_spectral_norm",
    "alpha",
    "xmin",
    "ks_distance",
    "num_pl_spikes",
    "alpha_weighted",
    "log_alpha_norm",
    "entropy",
    "mp_edge",
    "mp_spikes",
)
#: Metrics beyond ``METRICS``, each a column of the output only when asked for (``--hill``,
#: ``--mp-fit``, ``--randomize``; ``SpectrumReport.extras``), so the default output is unchanged.
#: ``alpha_hill``: AlphaPruning's PL_Alpha_Hill (:func:`sncli.numerics.esd.alpha_hill`);
#: ``mp_softrank``, ``num_spikes``, ``bulk_max``: WeightWatcher's fitted Marchenko–Pastur bulk;
#: ``rand_distance``, ``num_traps``, ``max_rand_eval``: its randomized ESD
#: (:mod:`sncli.numerics.rmt`).
HILL_METRICS = ("alpha_hill",)
#: ``snr``: the "Spectrum" paper's layer SNR (:func:`sncli.numerics.esd.spectrum_snr`), ``--snr``.
SNR_METRICS = ("snr",)
MP_FIT_METRICS = ("mp_softrank", "num_spikes", "bulk_max")
RANDOMIZE_METRICS = ("rand_distance", "num_traps", "max_rand_eval")
EXTRA_METRICS = HILL_METRICS + SNR_METRICS + MP_FIT_METRICS + RANDOMIZE_METRICS
#: The extras the summary averages when they are asked for.
AVERAGED_EXTRAS = ("alpha_hill", "snr", "mp_softrank", "rand_distance")
#: Metrics that the K largest singular values and ‖W‖_F determine (``--top-k``).
PARTIAL_METRICS = (
    "sigma_max",
    "frobenius",
    "stable_rank",
    "lambda_max",
    "log_norm",
    "log_spectral_norm",
    "mp_edge",
    "mp_spikes",
)
#: What the summary averages over layers (WeightWatcher's ``get_summary`` columns).
SUMMARY_METRICS = (
    "log_norm",
    "alpha",
    "alpha_weighted",
    "log_alpha_norm",
    "log_spectral_norm",
    "stable_rank",
)


@dataclass(frozen=True)
class LayerSpectrum:
    """One layer's singular values and their metrics.

    ``values`` are the singular values, largest first, float64 (read-only): all min(m, n) of
    them, or the K largest with ``top_k`` (``complete`` False). Metric fields are None when not
    computed or undefined (see ``METRICS``). ``bound`` is "exact" for dense values (float64
    rounding) and "lower" for Lanczos values (each a lower bound on its σ), whose estimated
    relative errors are in ``error_estimates``. ``eps`` is the stored dtype's machine epsilon
    behind ``numerical_rank``.
    """

    name: str
    short_name: str
    kind: LayerKind
    shape: tuple[int, ...]
    dtype: str
    matrix_shape: tuple[int, int]
    matrix: str
    algorithm: str
    bound: str
    complete: bool
    eps: float
    values: np.ndarray = field(repr=False, compare=False)
    error_estimates: np.ndarray | None = field(default=None, repr=False, compare=False)
    steps: int | None = None
    converged: bool | None = None
    sigma_max: float | None = None
    sigma_min: float | None = None
    condition_number: float | None = None
    frobenius: float | None = None
    nuclear: float | None = None
    stable_rank: float | None = None
    effective_rank: float | None = None
    numerical_rank: int | None = None
    rank_tolerance: float | None = None
    lambda_max: float | None = None
    log_norm: float | None = None
    log_spectral_norm: float | None = None
    alpha: float | None = None
    xmin: float | None = None
    ks_distance: float | None = None
    num_pl_spikes: int | None = None
    alpha_weighted: float | None = None
    log_alpha_norm: float | None = None
    entropy: float | None = None
    mp_edge: float | None = None
    mp_spikes: int | None = None
    small_n_fit: bool = False
    alpha_hill: float | None = None
    snr: float | None = None
    mp_softrank: float | None = None
    num_spikes: int | None = None
    bulk_max: float | None = None
    rand_distance: float | None = None
    num_traps: int | None = None
    max_rand_eval: float | None = None
    transposed: bool = False
    reshape_note: str | None = None
    #: How the name was read (embedding or not), from ``Layer.note``; "" when no name decided.
    note: str = ""
    spectral_norm: bool = False
    #: A LoRA update's rank r and scale s (kind ``lora``, :mod:`sncli.adapters`); else None.
    rank: int | None = None
    scale: float | None = None
    #: An expert of a mixture-of-experts stack: its index and the stack's key (``Layer``).
    expert: int | None = None
    stack: str | None = None

    @property
    def count(self) -> int:
        """How many singular values ``values`` holds."""
        return int(self.values.shape[0])

    @property
    def max_error_estimate(self) -> float | None:
        """The largest estimated relative error of the values (Lanczos), else None."""
        if self.error_estimates is None or self.error_estimates.size == 0:
            return None
        return float(self.error_estimates.max())

    def metrics(self) -> dict[str, float | int | None]:
        """The metric fields as a dict, in ``METRICS`` order."""
        return {name: getattr(self, name) for name in METRICS}

    def value(self, metric: str) -> float | int | None:
        """One metric (of ``METRICS`` or ``EXTRA_METRICS``) by name."""
        if metric not in METRICS and metric not in EXTRA_METRICS:
            raise KeyError(metric)
        return getattr(self, metric)


@dataclass(frozen=True)
class SpectrumReport:
    """Spectra of a checkpoint's selected layers, and everything skipped with a reason.

    ``top_k`` is None for full spectra; ``seconds`` is the wall time of the analysis (opening
    excluded); ``workers`` the layers computed at once; ``device`` where the singular values
    were computed ("cpu", or the GPU's torch name such as "cuda:0").
    """

    checkpoint: str
    format: str
    layers: list[LayerSpectrum]
    skipped: list[Skipped]
    top_k: int | None = None
    notes: list[str] = field(default_factory=list)
    workers: int = 1
    seconds: float | None = None
    #: The ``EXTRA_METRICS`` the output carries (from ``SpectrumOptions``), in that order.
    extras: tuple[str, ...] = ()
    device: str = "cpu"

    @property
    def largest(self) -> LayerSpectrum | None:
        return max(self.layers, key=lambda layer: layer.sigma_max or 0.0, default=None)

    def summary(self) -> dict[str, float | None]:
        """The mean of each of ``SUMMARY_METRICS`` over the layers where it is defined."""
        means: dict[str, float | None] = {}
        for name in SUMMARY_METRICS + tuple(m for m in self.extras if m in AVERAGED_EXTRAS):
            values = [getattr(layer, name) for layer in self.layers]
            present = [v for v in values if v is not None and math.isfinite(v)]
            means[name] = sum(present) / len(present) if present else None
        return means

    def to_pandas(self) -> pandas.DataFrame:
        """One row per layer: name, kind, shapes, dtype, algorithm and every metric.

        Needs pandas (imported here, not a dependency of sncli).
        """
        try:
            import pandas
        except ImportError as exc:  # pragma: no cover - pandas is installed in the test env
            raise ImportError("to_pandas() needs pandas: pip install pandas") from exc
        rows = []
        for layer in self.layers:
            row: dict[str, Any] = {
                "name": layer.name,
                "kind": layer.kind.value,
                "shape": layer.shape,
                "dtype": layer.dtype,
                "matrix_shape": layer.matrix_shape,
                "algorithm": layer.algorithm,
                "bound": layer.bound,
                "count": layer.count,
            }
            row.update(layer.metrics())
            row.update({name: getattr(layer, name) for name in self.extras})
            rows.append(row)
        columns = ["name", "kind", "shape", "dtype", "matrix_shape", "algorithm", "bound"]
        return pandas.DataFrame(rows, columns=[*columns, "count", *METRICS, *self.extras])


@dataclass(frozen=True)
class SpectrumOptions:
    """Settings of one spectrum run.

    ``top_k``: only the K largest singular values (block Lanczos, ``tol`` relative error each;
    the metrics that need the whole spectrum are then None). ``workers``: layers computed at
    once, each single-threaded (None: one per core, at most one per layer). ``scheduler``: the
    address of a Dask scheduler to run the layers on as tasks (:mod:`sncli.run.dask`).
    ``hill``/``snr``: the output carries ``alpha_hill``/``snr`` (always computed with a full
    spectrum);
    ``mp_fit``: WeightWatcher's fitted MP bulk; ``randomize``: its randomized-ESD metrics, each
    layer's permutations drawn from ``seed`` and the layer's name (reproducible). ``seed`` also
    starts ``top_k``'s Lanczos. ``device``: cpu, cuda or cuda:N, where the singular values are
    computed (float64 there too; CPU with a note when the GPU is unavailable). The metrics and
    the randomized ESD are computed on the CPU from the values.
    """

    top_k: int | None = None
    tol: float = TOP_K_TOL
    seed: int = DEFAULT_SEED
    workers: int | None = None
    scheduler: str | None = None
    hill: bool = False
    mp_fit: bool = False
    randomize: bool = False
    snr: bool = False
    device: str = "cpu"

    @property
    def extras(self) -> tuple[str, ...]:
        """The ``EXTRA_METRICS`` these options put in the output."""
        return (
            (HILL_METRICS if self.hill else ())
            + (SNR_METRICS if self.snr else ())
            + (MP_FIT_METRICS if self.mp_fit else ())
            + (RANDOMIZE_METRICS if self.randomize else ())
        )


def dtype_eps(dtype: str) -> float:
    """Machine epsilon of a stored dtype (2 × unit roundoff); float32's for others."""
    return 2.0 * UNIT_ROUNDOFF.get(dtype, 2.0**-24)


def _describe(layer: Layer) -> dict[str, Any]:
    return {
        "name": layer.name,
        "short_name": layer.short_name,
        "kind": layer.kind,
        "shape": layer.shape,
        "dtype": layer.dtype,
        "matrix_shape": layer.matrix_shape,
        "matrix": layer.matrix_description,
        "eps": dtype_eps(layer.dtype),
        "transposed": layer.transposed,
        "reshape_note": layer.reshape_note,
        "note": layer.note,
        "spectral_norm": layer.spectral_norm is not None,
        "expert": layer.expert,
        "stack": layer.stack,
    }


def _finite(value: float | int | None) -> float | int | None:
    if value is None or isinstance(value, bool):
        return value
    return value if math.isfinite(value) else None


#: One layer at a time on the GPU (module docstring): its memory holds one matrix and its Gram.
_DEVICE_LOCK = threading.Lock()


def _compute_device(requested: str) -> tuple[str | None, str | None]:
    """(the torch device the values are computed on, None for the CPU engines; the note when
    the requested GPU is unavailable). Imports torch only for a GPU request."""
    if requested in ("", "cpu"):
        return None, None
    device, note = resolve_device(requested)
    return (None if device == "cpu" else device), note


def _to_device(matrix: Any, device: str) -> torch.Tensor:
    """The matrix as a torch tensor on ``device`` in its stored dtype (upcast there, chunk by
    chunk, by the kernels)."""
    if is_array(matrix):
        from sncli.arrays import to_torch

        matrix = to_torch(matrix)
    return matrix.to(device)


def _full_spectrum(matrix: Any, device: str | None) -> Spectrum:
    if device is None:
        return singular_values(matrix)
    with _DEVICE_LOCK:
        return singular_values(_to_device(matrix, device))


def _top_spectrum(
    matrix: Any, options: SpectrumOptions, device: str | None
) -> tuple[Spectrum, float]:
    """The K largest values and ‖W‖_F."""
    top = partial(top_singular_values, k=options.top_k, tol=options.tol, seed=options.seed)
    if device is None:
        return top(matrix), frobenius_norm(matrix)
    with _DEVICE_LOCK:
        moved = _to_device(matrix, device)
        return top(moved), frobenius_norm(moved)


def _spectrum_of(
    layer: Layer, weight: Any, options: SpectrumOptions, device: str | None = None
) -> LayerSpectrum:
    """``device``: the torch device to compute the values on, None for the CPU engines."""
    matrix = as_matrix(weight, layer.reshape_dim)
    side = min(layer.matrix_shape)
    info = _describe(layer)
    if options.top_k is None or options.top_k >= side:
        spectrum = _full_spectrum(matrix, device)
        metrics = spectrum_metrics(spectrum.values, layer.matrix_shape, info["eps"])
        values = {f.name: _finite(getattr(metrics, f.name)) for f in fields(metrics)}
        values.pop("small_n_fit")
        values.update(_rmt_metrics(layer, matrix, spectrum.values, options))
        return LayerSpectrum(
            **info,
            algorithm=spectrum.algorithm,
            bound="exact",
            complete=True,
            values=spectrum.values,
            small_n_fit=metrics.small_n_fit,
            **values,
        )
    spectrum, frobenius = _top_spectrum(matrix, options, device)
    known = partial_metrics(spectrum.values, frobenius, layer.matrix_shape)
    values = {f.name: _finite(getattr(known, f.name)) for f in fields(known)}
    return LayerSpectrum(
        **info,
        algorithm=spectrum.algorithm,
        bound="lower" if spectrum.errors is not None else "exact",
        complete=spectrum.complete,
        values=spectrum.values,
        error_estimates=spectrum.errors,
        steps=spectrum.steps,
        converged=spectrum.converged,
        **values,
    )


def _rmt_metrics(
    layer: Layer, matrix: Any, sigma: np.ndarray, options: SpectrumOptions
) -> dict[str, float | int | None]:
    """WeightWatcher's fitted-MP (``mp_fit``) and randomized-ESD (``randomize``) metrics."""
    if not (options.mp_fit or options.randomize):
        return {}
    import numpy as np

    from sncli.numerics import rmt

    lam = np.asarray(sigma, dtype=np.float64) ** 2
    out: dict[str, float | int | None] = {}
    if options.mp_fit:
        fit = rmt.mp_fit(lam, layer.matrix_shape)
        out["mp_softrank"] = None if fit is None else _finite(fit.mp_softrank)
        out["num_spikes"] = None if fit is None else fit.num_spikes
        out["bulk_max"] = None if fit is None else _finite(fit.bulk_max)
    if options.randomize:
        if is_array(matrix):  # read without torch: the NumPy engine (bfloat16 bits upcast)
            dense, svdvals = to_float64(matrix), _numpy_svdvals
        else:
            dense, svdvals = matrix.detach().cpu().double().numpy(), _engine_svdvals
        randomized = rmt.randomized_esd(
            np.asarray(dense, dtype=np.float64),
            lam,
            rmt.layer_rng(options.seed, layer.name),
            svdvals,
        )
        out["rand_distance"] = _finite(randomized.rand_distance)
        out["num_traps"] = randomized.num_traps
        out["max_rand_eval"] = _finite(randomized.max_rand_eval)
    return out


def _numpy_svdvals(matrix: np.ndarray) -> np.ndarray:
    """:func:`_engine_svdvals` on the NumPy engine (no torch), for layers read as NumPy."""
    return singular_values(matrix).values


def _engine_svdvals(matrix: np.ndarray) -> np.ndarray:
    """The spectrum engine's own float64 SVD (:func:`singular_values`), for the randomized
    ESD: it runs on the worker's single BLAS thread (scipy's ``svdvals`` on its own OpenBLAS
    threads took 6× longer beside two workers under load)."""
    import torch

    return singular_values(torch.from_numpy(matrix)).values


def layer_spectrum(
    checkpoint: Checkpoint, layer: Layer, options: SpectrumOptions | None = None
) -> LayerSpectrum:
    """Load one layer's weight and compute its spectrum. Raises ``NumericalError`` on NaN/Inf;
    a requested GPU that is not available is a ``RuntimeWarning`` (computed on the CPU)."""
    options = options or SpectrumOptions()
    weight = load_weight(checkpoint, layer.name, None, arrays=checkpoint.numpy_native)
    device, note = _compute_device(options.device)
    if note:
        import warnings

        warnings.warn(note, RuntimeWarning, stacklevel=2)
    return _spectrum_of(layer, weight, options, device)


def _spectrum_or_skip(
    loaded: tuple[Layer, Any], options: SpectrumOptions, device: str | None = None
) -> LayerSpectrum | Skipped:
    layer, weight = loaded
    try:
        return _spectrum_of(layer, weight, options, device)
    except NumericalError as exc:
        return Skipped(layer.name, exc.message)


def _load_for_task(
    checkpoints: tuple[Checkpoint, ...], layer: Layer, reader: SafetensorsStreamReader | None
) -> tuple[Layer, Any]:
    checkpoint = checkpoints[0]
    # NumPy where the format is read without torch (no torch import), torch tensors otherwise.
    return layer, load_weight(checkpoint, layer.name, reader, arrays=checkpoint.numpy_native)


def _layer_bytes(layer: Layer) -> int:
    total = math.prod(layer.shape) * bits_per_element(layer.dtype) // 8
    if layer.weight_norm is not None:  # the stored v, and W = g·v/‖v‖ composed in float64
        total += math.prod(layer.shape) * 8
    return total


@takes_checkpoints("checkpoint")
def spectra(
    checkpoint: CheckpointSource,
    *,
    options: SpectrumOptions | None = None,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    transposed: Iterable[str] = (),
    kinds: Iterable[LayerKind] | None = None,
    progress: ProgressCallback | None = None,
) -> SpectrumReport:
    """The singular values and spectral metrics of every selected layer, in natural key order.

    Selection as :func:`sncli.analysis.spectral_norms` (``include``/``exclude`` regexes on keys
    and short names, ``transposed`` for ConvTranspose weights). Layers with NaN/Inf weights are
    listed as skipped. Raises ``NoLayersMatchedError`` when nothing is selected and
    ``NumericalError`` when no selected layer could be measured.
    """
    options = options or SpectrumOptions()
    if options.top_k is not None and options.top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {options.top_k}")
    if options.top_k is not None and options.extras:
        raise ValueError("alpha_hill, the MP fit and the randomized ESD need full spectra")
    selected, classification = select_or_refuse(checkpoint, include, exclude, transposed, kinds)
    skipped = list(classification.skipped)
    began = time.perf_counter()
    device, device_note = _compute_device(options.device)
    refuse_device_with_scheduler(options.scheduler, options.device)
    # On a GPU too: the workers load and compute metrics in parallel, the device runs one layer.
    workers = options.workers or max(1, min(available_cores(), len(selected)))

    # One thread per worker: LAPACK/BLAS threads beside parallel workers oversubscribe the cores
    # (see sncli.run); the float64 Gram and eigvalsh are then the same on any core count.
    results, failed, workers, run_notes = measure_layers(
        (checkpoint,),
        selected,
        measured=LayerSpectrum,
        nbytes=_layer_bytes,
        width=lambda layer: layer.matrix_shape[0] * layer.matrix_shape[1],
        load=_load_for_task,
        compute=partial(_spectrum_or_skip, options=options, device=device),
        workers=workers,
        label=lambda layer: layer.short_name,
        progress=progress,
        thread_name="sncli-spectrum",
        scheduler=options.scheduler,
    )
    refuse_if_none_measured(len(results), failed, checkpoint.path)
    skipped = sorted(skipped + failed, key=lambda s: natural_key(s.name))
    notes = list(checkpoint.notes) + ([device_note] if device_note else []) + run_notes
    few = [layer.short_name for layer in results if layer.complete and layer.count < MIN_EVALS]
    if few:
        notes.append(
            f"no power-law fit for {len(few)} layer{'s' if len(few) != 1 else ''} with fewer "
            f"than {MIN_EVALS} singular values (WeightWatcher skips them): {', '.join(few[:3])}"
            + (" …" if len(few) > 3 else "")
        )
    return SpectrumReport(
        checkpoint=str(checkpoint.path),
        format=checkpoint.format,
        layers=results,
        skipped=skipped,
        top_k=options.top_k,
        notes=notes,
        workers=workers,
        seconds=time.perf_counter() - began,
        extras=options.extras,
        device=device or "cpu",
    )


class SpectrumSortKey(str, Enum):
    NAME = "name"
    SIGMA = "sigma"
    SIZE = "size"
    ALPHA = "alpha"
    STABLE_RANK = "stable_rank"
    CONDITION = "condition"


_SORT_FIELDS = {
    SpectrumSortKey.SIGMA: "sigma_max",
    SpectrumSortKey.ALPHA: "alpha",
    SpectrumSortKey.STABLE_RANK: "stable_rank",
    SpectrumSortKey.CONDITION: "condition_number",
}


def sort_spectra(
    layers: list[LayerSpectrum], key: SpectrumSortKey | str, *, reverse: bool = False
) -> list[LayerSpectrum]:
    """Order layers: ``name`` natural ascending; metrics and ``size`` largest first, layers
    without the metric last (``reverse`` flips the whole order)."""
    key = SpectrumSortKey(key)
    if key is SpectrumSortKey.NAME:
        ordered = sorted(layers, key=lambda layer: natural_key(layer.name))
    elif key is SpectrumSortKey.SIZE:
        ordered = sorted(layers, key=lambda layer: -layer.matrix_shape[0] * layer.matrix_shape[1])
    else:
        name = _SORT_FIELDS[key]

        def order(layer: LayerSpectrum) -> tuple[bool, float]:
            value = getattr(layer, name)
            return (value is None, -(value or 0.0))

        ordered = sorted(layers, key=order)
    return ordered[::-1] if reverse else ordered


def check_spectra_target(path: str | Path, checkpoint: Checkpoint) -> Path:
    """Refuse a ``--save-spectra`` target before any work: a missing folder, a folder, or one of
    the checkpoint's own files (raises ``WriteError``). An existing other file is replaced."""
    target = Path(path)
    if target.is_dir():
        raise WriteError("is a folder, not a file to write the spectra to", target)
    if not target.resolve().parent.is_dir():
        raise WriteError("output folder does not exist", target.parent)
    own = {Path(checkpoint.path).resolve()}
    own |= {Path(info.file).resolve() for info in checkpoint.tensors.values()}
    if target.resolve() in own:
        raise WriteError("is the checkpoint itself; choose another file for the spectra", target)
    return target


def save_spectra(report: SpectrumReport, path: str | Path) -> Path:
    """Write every layer's singular values (float64, largest first) to a NumPy ``.npz``, keyed
    by tensor name, atomically (:func:`sncli.writer.staged_write`). Returns the path written."""
    import zipfile

    import numpy as np

    from sncli.writer import staged_write

    target = Path(path)
    if target.is_dir():
        raise WriteError("is a folder, not a file to write the spectra to", target)
    # Written member by member (np.savez's keyword API would clash with names like "file").
    with (
        staged_write(target) as (handle, pending),
        zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED) as archive,
    ):
        for layer in report.layers:
            with archive.open(f"{layer.name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(layer.values), allow_pickle=False)
    pending.commit()
    return target
