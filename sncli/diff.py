"""How two checkpoints of one model differ, spectrally: the library behind ``sncli diff``.

Layers are matched by their displayed name (a ``module.``-style prefix on every key of one side
is ignored, as ``inspect`` does). For every matched layer pair: σ of each side, ‖B − A‖₂ of the
difference by the same methods and error control as ``inspect`` (``MethodOptions``), relative
to ‖A‖₂, the Frobenius distances; with ``top_k``, how much the top-K left singular subspaces
overlap (cosines of the principal angles) and how many of B's top-K directions lie mostly
outside A's top-K subspace (‖U_Aᵀu_j‖ < ``subspace_threshold``); with ``intruder_top_k``, the
intruder dimensions of Shuttleworth et al. (2024) as PEFT computes them: B's top singular
vectors whose largest |cos| with every singular vector of A is below ``intruder_threshold``.
Pairs stream
through :mod:`sncli.run` (a reader thread within a byte budget, single-threaded workers),
so memory stays near one layer pair plus its difference.

Where both sides are read without torch (``Checkpoint.numpy_native``: safetensors, GGUF, NumPy,
Keras, ONNX) a pair is NumPy arrays and every kernel is NumPy's (torch is never imported);
PyTorch files, and ``--device cuda``, keep torch tensors and torch's σ kernels (on the GPU for
the σ of A, B and B − A; the top subspaces are NumPy's on the CPU either way).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from sncli.analysis import MethodOptions
from sncli.arguments import CheckpointSource, takes_checkpoints
from sncli.arrays import dtype_name, float64_copy, is_array, is_bfloat16
from sncli.checkpoint import Checkpoint, natural_key
from sncli.dtypes import bits_per_element
from sncli.errors import BoundExceededError, NoLayersMatchedError, NumericalError
from sncli.layers import Layer, Skipped, classify, select
from sncli.messages import ProgressCallback
from sncli.numerics.spectral import (
    BoundKind,
    Method,
    SigmaEstimate,
    as_matrix,
    largest_singular_value,
    resolve_device,
)
from sncli.run import available_cores, load_weight, measure_layers
from sncli.run.dask import refuse_device_with_scheduler

if TYPE_CHECKING:
    from sncli.formats.safetensors import SafetensorsStreamReader
    from sncli.quant_diff import QuantizationReport

DEFAULT_TOP_K = 8
#: B's direction u_j counts as outside A's top-K subspace when ‖U_Aᵀu_j‖ (its part inside that
#: span) is below this: cos < 0.5 means more than 60° from every direction of the subspace.
DEFAULT_SUBSPACE_THRESHOLD = 0.5
#: Intruder dimensions (Shuttleworth et al. 2024; PEFT's ``reduce_intruder_dimension``
#: defaults): B's top 10 singular vectors, each an intruder when its largest |cos| with any
#: singular vector of A is below 0.5.
DEFAULT_INTRUDER_TOP_K = 10
DEFAULT_INTRUDER_THRESHOLD = 0.5


@dataclass(frozen=True)
class Mismatch:
    """A tensor both sides hold under one name but with different shapes or dtypes."""

    name: str
    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]
    dtype_a: str
    dtype_b: str
    #: True when the shapes agree (a dtype change): the layer is still compared.
    compared: bool


@dataclass(frozen=True)
class LayerDiff:
    """One matched layer: both σ, the spectral and Frobenius norms of B − A, subspace overlap.

    ``unchanged`` is True when the two tensors are byte-for-byte equal (then every distance is
    0 and nothing was computed). ``delta_bound`` says whether ``delta_sigma`` is two-sided
    (exact) or a lower bound, as for ``inspect``; ``delta_upper`` is a proven upper bound on
    ‖B − A‖₂ when one is known. ``relative`` is None when ‖A‖₂ = 0.
    """

    name: str
    key_a: str
    key_b: str
    kind: str
    shape: tuple[int, ...]
    dtype_a: str
    dtype_b: str
    matrix: str
    matrix_shape: tuple[int, int]
    unchanged: bool
    sigma_a: float
    sigma_b: float
    delta_sigma: float
    relative: float | None
    delta_frobenius: float
    relative_frobenius: float | None
    delta_bound: BoundKind
    delta_upper: float | None = None
    certified: bool = False
    algorithm: str = ""
    subspace_cosines: tuple[float, ...] | None = None
    #: How far each of ``subspace_cosines`` can be from the exact value (ε_A + ε_B from the
    #: Ritz residuals and gaps, Wedin's sin θ theorem; an estimate for layers above
    #: ``subspaces.DENSE_SIDE``, whose gap rests on an estimated σ_{k+1}; 1: not resolved).
    subspace_error: float | None = None
    #: How many of B's top-K directions have less than ``subspace_threshold`` of their length
    #: inside A's top-K subspace.
    outside_top_subspace: int | None = None
    #: Intruder dimensions: which of B's top ``intruder_top_k`` singular vectors (0-based) have
    #: max |cos| < ``intruder_threshold`` with every singular vector of A (None: not computed,
    #: or A is zero).
    intruder_indices: tuple[int, ...] | None = None
    #: B's top directions whose intruder decision lies within their vector's error (a singular
    #: value too close to its neighbours to resolve): neither counted nor ruled out.
    intruder_unresolved: tuple[int, ...] | None = None
    #: How the rows were aligned before comparing (a GGUF side: "llama.cpp Q/K permutation
    #: undone (N heads)"); empty when compared as stored.
    rows: str = ""
    #: An expert of a mixture-of-experts stack: its index and the stack's key in A.
    expert: int | None = None
    stack: str | None = None
    #: What ``sigma_a``/``sigma_b`` are relative to the true σ (a lower bound for an iterative
    #: estimate, as ``inspect`` marks it with ≥).
    bound_a: BoundKind = BoundKind.EXACT
    bound_b: BoundKind = BoundKind.EXACT

    @property
    def intruder_dimensions(self) -> int | None:
        return None if self.intruder_indices is None else len(self.intruder_indices)


@dataclass(frozen=True)
class DiffReport:
    """Everything ``sncli diff`` found about two checkpoints."""

    a: str
    b: str
    format_a: str
    format_b: str
    method: Method
    top_k: int
    #: The threshold of the intruder dimensions (``intruder_top_k``), not of ``top_k``'s measure.
    intruder_threshold: float
    layers: list[LayerDiff]
    only_in_a: list[str]
    only_in_b: list[str]
    mismatched: list[Mismatch]
    skipped: list[Skipped]
    #: Matched layers that could not be compared (NaN/Inf on a side), with the reason: a CI gate
    #: must fail on them, not pass because nothing was measured.
    unmeasured: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    workers: int = 1
    seconds: float | None = None
    intruder_top_k: int = 0
    subspace_threshold: float = DEFAULT_SUBSPACE_THRESHOLD
    #: Set when exactly one side is GGUF: names paired by llama.cpp's tables, error per type.
    quantization: QuantizationReport | None = None
    #: Where the σ of A, B and B − A were computed ("cpu", or the torch device, e.g. "cuda").
    device: str = "cpu"
    #: Why not on the requested device ("device 'cuda' requested but CUDA is not available…");
    #: also in ``notes``.
    device_note: str | None = None

    @property
    def changed(self) -> list[LayerDiff]:
        return [layer for layer in self.layers if not layer.unchanged]

    def exceeding(self, threshold: float) -> list[LayerDiff]:
        """Layers whose ``relative`` change is above ``threshold`` (a moved layer with ‖A‖₂ = 0
        counts as above any threshold)."""

        return [
            layer
            for layer in self.layers
            if not layer.unchanged and relative_change(layer) > threshold
        ]

    def gate(self, threshold: float) -> None:
        """The ``--fail-above`` gate: raise :class:`BoundExceededError` when a layer could not
        be compared or moved more than ``threshold`` (relative ‖B−A‖₂/‖A‖₂), naming them."""
        if self.unmeasured:
            names = ", ".join(item.name for item in self.unmeasured[:10])
            raise BoundExceededError(
                f"--fail-above cannot pass: {len(self.unmeasured)} layer(s) could not be "
                f"compared (non-finite weights): {names}"
            )
        offending = self.exceeding(threshold)
        if offending:
            names = ", ".join(layer.name for layer in offending[:10])
            more = f" and {len(offending) - 10} more" if len(offending) > 10 else ""
            raise BoundExceededError(
                f"{len(offending)} layer(s) moved more than --fail-above {threshold:g} "
                f"(relative ‖B−A‖₂/‖A‖₂): {names}{more}"
            )

    def to_pandas(self) -> Any:
        """The matched layers as a pandas DataFrame (pandas optional); the lists of tensors
        only in A, only in B and mismatched are in ``attrs``."""
        from sncli.tables import to_frame

        return to_frame(
            self.layers,
            a=self.a,
            b=self.b,
            method=self.method,
            only_in_a=self.only_in_a,
            only_in_b=self.only_in_b,
            mismatched=[m.name for m in self.mismatched],
        )


def relative_change(layer: LayerDiff) -> float:
    """``relative`` for ordering and gates: +inf for a layer that moved from ‖A‖₂ = 0 (a
    zero-initialised LoRA B, say), 0 for an unchanged one."""
    if layer.relative is not None:
        return layer.relative
    return math.inf if layer.delta_sigma > 0 else 0.0


@dataclass(frozen=True)
class Pair:
    name: str
    layer_a: Layer
    layer_b: Layer
    #: Undo llama.cpp's Q/K row permutation of the GGUF side ("a" or "b") with this many heads.
    heads: int | None = None
    gguf_side: str = ""


@dataclass
class _LoadedPair:
    """A layer pair as read: NumPy arrays (``device`` None) or torch tensors on ``device``."""

    pair: Pair
    a: Any
    b: Any
    rows: str = ""
    device: str | None = None


def _byte_equal(a: Any, b: Any) -> bool:
    """Same dtype, shape and bytes (no arithmetic: −0 ≠ +0, NaN payloads compared as bits)."""
    if is_array(a):
        import numpy as np

        if dtype_name(a) != dtype_name(b) or a.shape != b.shape:
            return False
        bits_a = np.ascontiguousarray(a.view(np.ndarray)).reshape(-1).view(np.uint8)
        bits_b = np.ascontiguousarray(b.view(np.ndarray)).reshape(-1).view(np.uint8)
        if bits_a.size % 8 == 0:  # 8 bytes a comparison: 4× faster than bytes on 4096×1024 bf16
            bits_a, bits_b = bits_a.view(np.uint64), bits_b.view(np.uint64)
        return bool(np.array_equal(bits_a, bits_b))
    import torch

    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a, b = a.contiguous(), b.contiguous()
    return torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8))


def _finite(matrix: Any) -> bool:
    """Whether every entry is finite, in one pass without a mask (min and max propagate NaN)."""
    if is_array(matrix):
        import numpy as np

        from sncli.numerics.spectral_numpy import max_abs

        if is_bfloat16(matrix):  # exponent bits all ones (Inf, NaN): |bits| ≥ 0x7F80
            magnitudes = np.bitwise_and(matrix.view(np.ndarray), 0x7FFF, dtype=np.uint16)
            return matrix.size == 0 or int(magnitudes.max()) < 0x7F80
        try:
            max_abs(matrix)  # chunk by chunk (bfloat16 upcast), NaN/Inf: NumericalError
        except NumericalError:
            return False
        return True
    import torch

    if matrix.numel() == 0:
        return True
    try:
        low, high = torch.aminmax(matrix)
    except RuntimeError:  # a dtype without min/max kernels (float8): check_finite decides
        return False
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def _frobenius(matrix: Any) -> float:
    if is_array(matrix):
        import numpy as np

        return float(np.linalg.norm(matrix.reshape(-1)))
    import torch

    return float(torch.linalg.vector_norm(matrix))


def _sigma(matrix: Any, options: MethodOptions, device: str | None = None) -> Any:
    return largest_singular_value(
        matrix,
        options.method,
        iters=options.iters,
        tol=options.tol,
        seed=options.seed,
        certify=options.certify,
        device=device or "cpu",
    )


@dataclass(frozen=True)
class Directions:
    """What ``diff`` measures of the singular directions (0 turns a measure off)."""

    top_k: int = DEFAULT_TOP_K
    subspace_threshold: float = DEFAULT_SUBSPACE_THRESHOLD
    intruder_top_k: int = DEFAULT_INTRUDER_TOP_K
    intruder_threshold: float = DEFAULT_INTRUDER_THRESHOLD


def _compare(loaded: _LoadedPair, options: MethodOptions, directions: Directions) -> LayerDiff:
    from sncli.numerics.floating import check_finite
    from sncli.numerics.subspaces import compare_directions

    pair = loaded.pair
    layer = pair.layer_a
    common = {
        "name": pair.name,
        "key_a": pair.layer_a.name,
        "key_b": pair.layer_b.name,
        "kind": layer.kind.value,
        "shape": layer.shape,
        "dtype_a": pair.layer_a.dtype,
        "dtype_b": pair.layer_b.dtype,
        "matrix": layer.matrix_description,
        "matrix_shape": layer.matrix_shape,
        "rows": loaded.rows,
        "expert": layer.expert,
        "stack": layer.stack,
    }
    a = as_matrix(loaded.a, layer.reshape_dim)
    b = as_matrix(loaded.b, pair.layer_b.reshape_dim)
    equal = _byte_equal(loaded.a, loaded.b)
    for side, matrix in (("A", a),) if equal else (("A", a), ("B", b)):  # equal bits: one check
        if _finite(matrix):
            continue
        try:
            check_finite(matrix)  # the count of NaN and Inf for the message
        except NumericalError as exc:
            raise NumericalError(f"{exc.message} in {side}") from exc
    top_k, intruder_k = directions.top_k, directions.intruder_top_k
    device = loaded.device
    if equal:
        estimate = _sigma(a, options, device)
        sigma = estimate.sigma
        return LayerDiff(
            **common,
            bound_a=estimate.bound,
            bound_b=estimate.bound,
            unchanged=True,
            sigma_a=sigma,
            sigma_b=sigma,
            delta_sigma=0.0,
            relative=0.0 if sigma > 0 else None,
            delta_frobenius=0.0,
            relative_frobenius=0.0 if sigma > 0 else None,
            delta_bound=BoundKind.EXACT,
            delta_upper=0.0,
            certified=True,
            algorithm="byte-equal",
            subspace_cosines=(1.0,) * min(top_k, *a.shape) if top_k and sigma > 0 else None,
            subspace_error=0.0 if top_k and sigma > 0 else None,
            outside_top_subspace=0 if top_k and sigma > 0 else None,
            # each of B's singular vectors is one of A's: |cos| = 1, no intruder
            intruder_indices=() if intruder_k and sigma > 0 else None,
            intruder_unresolved=() if intruder_k and sigma > 0 else None,
        )
    a64, b64 = float64_copy(a), float64_copy(b)
    cosines: tuple[float, ...] | None = None
    outside: int | None = None
    error: float | None = None
    intruders = unresolved = None
    found = None
    if top_k or intruder_k:
        found = compare_directions(
            a64, b64, top_k, intruder_k, directions.intruder_threshold, seed=options.seed
        )
        cosines, error = found.cosines, found.cosine_error
        if found.captured is not None:
            outside = sum(1 for value in found.captured if value < directions.subspace_threshold)
        if found.intruders is not None:
            intruders, unresolved = found.intruders.indices, found.intruders.unresolved
    estimate_a, estimate_b = (
        _ritz_sigma(found, side, options) or _sigma(matrix, options, device)
        for side, matrix in enumerate((a, b))
    )
    sigma_a, sigma_b = estimate_a.sigma, estimate_b.sigma
    difference = b64 - a64  # one layer pair and its difference: the memory of this task
    delta = _sigma(difference, options, device)
    frob_a = _frobenius(a64)
    delta_frob = _frobenius(difference)
    del difference
    return LayerDiff(
        **common,
        bound_a=estimate_a.bound,
        bound_b=estimate_b.bound,
        unchanged=False,
        sigma_a=sigma_a,
        sigma_b=sigma_b,
        delta_sigma=delta.sigma,
        relative=delta.sigma / sigma_a if sigma_a > 0 else None,
        delta_frobenius=delta_frob,
        relative_frobenius=delta_frob / frob_a if frob_a > 0 else None,
        delta_bound=delta.bound,
        delta_upper=delta.upper if delta.upper is not None else None,
        certified=delta.certified,
        algorithm=delta.algorithm,
        subspace_cosines=cosines,
        subspace_error=error,
        outside_top_subspace=outside,
        intruder_indices=intruders,
        intruder_unresolved=unresolved,
    )


def _ritz_sigma(found: Any, side: int, options: MethodOptions) -> SigmaEstimate | None:
    """σ of side A (0) or B (1) from the subspace iteration's top Ritz value, a lower bound like
    ``auto``'s, when its estimated error meets ``auto``'s target (without ``certify``); None:
    run the σ method itself."""
    from sncli.numerics.spectral import DEFAULT_TOL

    if found is None or not found.estimate or options.certify:
        return None
    if Method(options.method) is not Method.AUTO:
        return None
    sigma, error = found.sigmas[side]
    if sigma <= 0 or error > (options.tol if options.tol is not None else DEFAULT_TOL):
        return None
    return SigmaEstimate(
        sigma,
        Method(options.method),
        BoundKind.LOWER,
        converged=True,
        error_estimate=error,
        algorithm="subspace iteration (top-k subspaces), Rayleigh–Ritz float64",
    )


def _pair_bytes(pair: Pair) -> int:
    """Both sides as stored, plus the float64 copies and their difference, plus the float32
    copies the subspace iteration works on."""
    size = math.prod(pair.layer_a.shape)
    stored = size * (bits_per_element(pair.layer_a.dtype) + bits_per_element(pair.layer_b.dtype))
    return stored // 8 + 3 * 8 * size + 2 * 4 * size


def _budget_width(pair: Pair) -> int:
    """``measure_layers``' ``width`` for diff: its budget is 2 × 4 bytes × the widest width,
    so a pair's bytes / 4 lets two of the largest pairs be in flight — both workers compute,
    where a budget of one pair left the second idle on every large layer (the 302M benchmark:
    one pair of 4096×1024 is 150 MB)."""
    return _pair_bytes(pair) // 4


def _load_pair(
    a: Checkpoint,
    b: Checkpoint,
    pair: Pair,
    reader: SafetensorsStreamReader | None,
    device: str | None = None,
) -> _LoadedPair:
    """Both sides of ``pair``: NumPy arrays when ``device`` is None, else torch tensors moved
    to ``device``; a GGUF side's rows in the source's order (llama.cpp's Q/K permutation)."""
    arrays = device is None
    first = load_weight(a, pair.layer_a.name, reader, arrays=arrays)
    second_reader = reader if b.format == "safetensors" else None
    second = load_weight(b, pair.layer_b.name, second_reader, arrays=arrays)
    if not arrays:  # (on the CPU: the tensors themselves)
        first, second = first.to(device), second.to(device)
    loaded = _LoadedPair(pair, first, second, device=device)
    if pair.heads is not None:
        if arrays:
            from sncli.quant_diff import closer_layout_array as closer_layout
        else:
            from sncli.gguf_names import closer_layout  # type: ignore[assignment]

        if pair.gguf_side == "b":
            loaded.b, undone = closer_layout(loaded.a, loaded.b, pair.heads)
        else:
            loaded.a, undone = closer_layout(loaded.b, loaded.a, pair.heads)
        if undone:
            loaded.rows = f"llama.cpp Q/K permutation undone ({pair.heads} heads)"
    return loaded


def _compare_or_skip(
    loaded: _LoadedPair, options: MethodOptions, directions: Directions
) -> LayerDiff | Skipped:
    try:
        return _compare(loaded, options, directions)
    except NumericalError as exc:
        return Skipped(loaded.pair.layer_a.name, exc.message)


def _load_for_task(
    checkpoints: tuple[Checkpoint, ...],
    pair: Pair,
    reader: SafetensorsStreamReader | None,
    device: str | None = None,
) -> _LoadedPair:
    return _load_pair(checkpoints[0], checkpoints[1], pair, reader, device)


def torch_device(requested: str) -> tuple[str | None, str | None]:
    """The device torch's kernels run on for ``--device`` (None: the CPU, not asked for or
    not available) and the note of a fallback to the CPU (:func:`resolve_device`'s)."""
    if requested in ("", "cpu"):
        return None, None
    device, note = resolve_device(requested)
    return (None if note is not None else device), note


def pair_device(a: Checkpoint, b: Checkpoint, requested: str) -> tuple[str | None, str | None]:
    """Where a run's pairs are compared: None for NumPy on the CPU (both sides read without
    torch), a torch device otherwise ("cpu" for a PyTorch file, as ``inspect`` measures one
    with torch's kernels); and the fallback note of ``requested``."""
    device, note = torch_device(requested)
    if device is None and not (a.numpy_native and b.numpy_native):
        device = "cpu"
    return device, note


def _tensor_names(checkpoint: Checkpoint) -> dict[str, str]:
    """Displayed name → key, for every tensor (and composed weight-norm weight)."""
    names = {checkpoint.short_name(key): key for key in checkpoint.tensors}
    names.update({checkpoint.short_name(key): key for key in checkpoint.derived})
    return names


@takes_checkpoints("a", "b")
def diff_checkpoints(
    a: CheckpointSource,
    b: CheckpointSource,
    *,
    options: MethodOptions | None = None,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    transposed: Iterable[str] = (),
    top_k: int = DEFAULT_TOP_K,
    intruder_threshold: float = DEFAULT_INTRUDER_THRESHOLD,
    progress: ProgressCallback | None = None,
    intruder_top_k: int = DEFAULT_INTRUDER_TOP_K,
    subspace_threshold: float = DEFAULT_SUBSPACE_THRESHOLD,
) -> DiffReport:
    """Compare every layer the two checkpoints share (see the module docstring).

    When exactly one side is a GGUF file, names are paired by llama.cpp's tables instead
    (:mod:`sncli.gguf_names`) and ``quantization`` summarises the error per GGUF type.
    Tensors only one side holds, and same-named tensors whose shape or dtype differ, are listed
    (``only_in_a``, ``only_in_b``, ``mismatched``). Raises ``NoLayersMatchedError`` when no
    layer is left to compare, ``NumericalError`` when a compared weight holds NaN/Inf.
    """
    options = options or MethodOptions()
    refuse_device_with_scheduler(options.scheduler, options.device)
    if top_k < 0 or intruder_top_k < 0:
        raise ValueError(f"top_k and intruder_top_k must be ≥ 0, got {top_k}, {intruder_top_k}")
    directions = Directions(top_k, subspace_threshold, intruder_top_k, intruder_threshold)
    if (a.format == "gguf") != (b.format == "gguf"):  # a quantized file against its source
        return _diff_quantized(a, b, options, directions, progress, include, exclude, transposed)
    names_a, names_b = _tensor_names(a), _tensor_names(b)
    only_a = sorted(set(names_a) - set(names_b), key=natural_key)
    only_b = sorted(set(names_b) - set(names_a), key=natural_key)
    mismatched: list[Mismatch] = []
    for name in sorted(set(names_a) & set(names_b), key=natural_key):
        info_a, info_b = a.tensors.get(names_a[name]), b.tensors.get(names_b[name])
        if info_a is None or info_b is None:
            continue
        if info_a.shape != info_b.shape or info_a.dtype != info_b.dtype:
            mismatched.append(
                Mismatch(
                    name,
                    info_a.shape,
                    info_b.shape,
                    info_a.dtype,
                    info_b.dtype,
                    info_a.shape == info_b.shape,
                )
            )
    classified_a = classify(a, transposed=transposed)
    layers_a = {layer.short_name: layer for layer in classified_a.layers}
    classified_b = classify(b, transposed=transposed)
    layers_b = {layer.short_name: layer for layer in classified_b.layers}
    selected = select(list(layers_a.values()), include, exclude)
    pairs = [
        Pair(layer.short_name, layer, layers_b[layer.short_name])
        for layer in selected
        if layer.short_name in layers_b and layers_b[layer.short_name].shape == layer.shape
    ]
    if not pairs:
        raise NoLayersMatchedError(
            "nothing to compare: no layer with the same name and shape is in both checkpoints"
            + (" after the filters" if (list(include) or list(exclude)) else ""),
            b.path,
        )
    return measure_pairs(
        a,
        b,
        pairs,
        options=options,
        directions=directions,
        progress=progress,
        only_in=(only_a, only_b),
        mismatched=mismatched,
        skipped=list(classified_a.skipped),
    )


def _diff_quantized(
    a: Checkpoint,
    b: Checkpoint,
    options: MethodOptions,
    directions: Directions,
    progress: ProgressCallback | None,
    include: Iterable[str],
    exclude: Iterable[str],
    transposed: Iterable[str],
) -> DiffReport:
    """A GGUF file against its source (see :mod:`sncli.quant_diff`)."""
    from dataclasses import replace

    from sncli.quant_diff import pair_quantized, summarize

    found = pair_quantized(a, b, include=include, exclude=exclude, transposed=transposed)
    pairs = [Pair(name, la, lb, heads, found.gguf_side) for name, la, lb, heads in found.pairs]
    if not pairs:
        raise NoLayersMatchedError(
            "nothing to compare: no layer of the source pairs with a tensor of the GGUF file "
            f"(architecture {found.architecture}; {len(found.unmatched)} unmatched names)",
            (a if found.gguf_side == "a" else b).path,
        )
    only = {
        side: [u.name for u in found.unmatched if u.side == side] for side in ("source", "gguf")
    }
    sides = ("gguf", "source") if found.gguf_side == "a" else ("source", "gguf")
    report = measure_pairs(
        a,
        b,
        pairs,
        options=options,
        directions=directions,
        progress=progress,
        only_in=(only[sides[0]], only[sides[1]]),
        mismatched=[],
        skipped=found.skipped,
    )
    quantization = summarize(found.architecture, found.gguf_side, report.layers, found.unmatched)
    return replace(report, notes=report.notes + found.notes, quantization=quantization)


def measure_pairs(
    a: Checkpoint,
    b: Checkpoint,
    pairs: list[Pair],
    *,
    options: MethodOptions,
    directions: Directions,
    progress: ProgressCallback | None,
    only_in: tuple[list[str], list[str]],
    mismatched: list[Mismatch],
    skipped: list[Skipped],
) -> DiffReport:
    """Compare the matched ``pairs`` through :mod:`sncli.run` and assemble the report."""
    began = time.perf_counter()
    device, device_note = pair_device(a, b, options.device)
    on_gpu = device not in (None, "cpu")
    workers = options.workers or (1 if on_gpu else max(1, min(available_cores(), len(pairs))))
    results, failed, workers, run_notes = measure_layers(
        (a, b),
        pairs,
        measured=LayerDiff,
        nbytes=_pair_bytes,
        width=_budget_width,
        load=partial(_load_for_task, device=device),
        compute=partial(_compare_or_skip, options=options, directions=directions),
        workers=workers,
        label=lambda pair: pair.name,
        progress=progress,
        thread_name="sncli-diff",
        scheduler=options.scheduler,
        threads=None if on_gpu else 1,
    )
    if not results:
        raise NumericalError(
            f"no layer could be compared: {failed[0].name}: {failed[0].reason}", a.path
        )
    notes = [f"A: {note}" for note in a.notes] + [f"B: {note}" for note in b.notes] + run_notes
    if device_note:
        notes.append(device_note)
    return DiffReport(
        a=str(a.path),
        b=str(b.path),
        format_a=a.format,
        format_b=b.format,
        method=Method(options.method),
        top_k=directions.top_k,
        intruder_threshold=directions.intruder_threshold,
        layers=results,
        only_in_a=only_in[0],
        only_in_b=only_in[1],
        mismatched=mismatched,
        skipped=skipped,
        unmeasured=failed,
        notes=notes,
        workers=workers,
        seconds=time.perf_counter() - began,
        intruder_top_k=directions.intruder_top_k,
        subspace_threshold=directions.subspace_threshold,
        device=device or "cpu",
        device_note=device_note,
    )
