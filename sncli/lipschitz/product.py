"""The product Lipschitz bound ∏ σ_l of a checkpoint's layers, and when it is one.

For a feed-forward composition f = f_L ∘ … ∘ f_1 of linear/conv layers and 1-Lipschitz
activations, Lip(f) ≤ ∏ Lip(f_l) in ℓ2. A state dict records names and shapes only, not the
architecture, so no product of its tensors is a proof: by default the product is *conditional*
on a plain sequential chain (layers in key order, 1-Lipschitz activations, no branches, skips,
pools or recurrence) and never certified. ``--assume sequential`` (``LipschitzOptions.assume``)
lets a user assert that chain; the assertion is refused, like the product itself, when names or
shapes contradict it: attention (not globally Lipschitz, Kim et al. 2021), residual connections
(a block contributes 1 + L), recurrent weights (``weight_ih``/``weight_hh``), heads side by side
(consecutive linear layers reading the same input), LayerNorm. The product is accumulated in
log10, since hundreds of factors overflow floating point.

Per layer the factor is, by policy:
* linear: σ of the weight (SN layers: of W/σ̂, the weight the model uses);
* conv, ``--conv operator`` (default): the norm of the convolution as a map on images — exact for
  circular padding at a given input size (Sedghi et al. 2019), else a certified upper bound on the
  torus norm, valid for zero padding at any input size, stride and dilation;
* conv, ``--conv reshape``: σ of the reshaped kernel, which is *not* a bound on the operator;
* BatchNorm in eval mode: the diagonal map γ/√(var + ε), L = max |γ_c|/√(var_c + ε);
* PReLU (its slopes are in the file): max(1, max |a_c|), exact.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, replace
from enum import Enum
from functools import partial
from typing import TYPE_CHECKING, Any

from sncli.arguments import CheckpointSource, coerce_fields, takes_checkpoints
from sncli.checkpoint import Checkpoint, natural_key
from sncli.dtypes import bits_per_element
from sncli.errors import BoundExceededError, NoLayersMatchedError, NumericalError, SncliError
from sncli.formats.safetensors import SafetensorsStreamReader
from sncli.layers import (
    BATCHNORM_EPS,
    Layer,
    LayerKind,
    Skipped,
    classify,
    matches,
    select,
)
from sncli.lipschitz.caveats import (
    ACTIVATION_ASSUMPTION,
    CHAIN_ASSUMPTION,
    EXPERT_EXCLUDED,
    architecture_caveats,
    chain_caveats,
    moe_caveats,
    product_statement,
    selection_caveats,
)
from sncli.lipschitz.weights import (
    batchnorm_lipschitz,
    chain_matrix,
    is_plain,
    layer_weight,
    prelu_lipschitz,
)
from sncli.messages import ProgressCallback
from sncli.numerics.bounds import sigma_interval
from sncli.numerics.floating import DENSE_ROUNDING, check_finite
from sncli.numerics.spectral import (
    DEFAULT_POWER_ITERS,
    DEFAULT_SEED,
    BoundKind,
    Method,
    SigmaEstimate,
    as_matrix,
    largest_singular_value,
)
from sncli.run import available_cores, budget_bytes, map_layers, torch_threads

if TYPE_CHECKING:
    from collections.abc import Mapping


class ConvPolicy(str, Enum):
    OPERATOR = "operator"
    RESHAPE = "reshape"


class Padding(str, Enum):
    ZEROS = "zeros"
    CIRCULAR = "circular"


class Assumption(str, Enum):
    """What a user asserts about the architecture a state dict does not record."""

    SEQUENTIAL = "sequential"


@dataclass(frozen=True)
class LipschitzOptions:
    method: Method = Method.DENSE
    iters: int = DEFAULT_POWER_ITERS
    tol: float | None = None
    seed: int = DEFAULT_SEED
    certified: bool = False
    conv: ConvPolicy = ConvPolicy.OPERATOR
    padding: Padding = Padding.ZEROS
    input_size: tuple[int, ...] | None = None
    grid: int | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    transposed: tuple[str, ...] = ()
    #: factors computed concurrently, each with single-threaded BLAS (None: one per core)
    workers: int | None = None
    #: The user asserts the model is a plain sequential chain (``--assume sequential``); without
    #: it the product of a state dict is conditional and never certified.
    assume: Assumption | None = None
    #: ECLipsE-Fast over the chain when every factor is a linear layer (``--mlp``), for
    #: activations slope-restricted to [0, 1].
    mlp: bool = False
    #: The address of a Dask scheduler to compute the factors on as tasks (:mod:`sncli.run.dask`).
    scheduler: str | None = None

    def __post_init__(self) -> None:
        coerce_fields(self, method=Method, conv=ConvPolicy, padding=Padding, assume=Assumption)
        if self.input_size is not None and not isinstance(self.input_size, tuple):
            object.__setattr__(self, "input_size", tuple(self.input_size))


@dataclass(frozen=True)
class Factor:
    """One layer's factor in the product, with what is known about it."""

    name: str
    short_name: str
    kind: str
    sigma: float
    sigma_lower: float | None
    sigma_upper: float | None
    certified: bool
    source: str
    reshape_sigma: float | None = None
    note: str = ""
    #: Whether ``sigma`` is an upper bound on this layer's Lipschitz constant under the stated
    #: assumptions; None: exactly when ``certified`` (a circular-padding factor is an upper bound
    #: at its input size without being certified).
    upper_bound: bool | None = None

    @property
    def is_upper_bound(self) -> bool:
        return self.certified if self.upper_bound is None else self.upper_bound

    @property
    def log10(self) -> float:
        return math.log10(self.sigma) if self.sigma > 0 else -math.inf


@dataclass(frozen=True)
class ChainBound:
    """A bound over a whole chain of linear layers at once (``--mlp``): ECLipsE-Fast (Xu &
    Sivaranjani, NeurIPS 2024), proven in float64 by :mod:`sncli.numerics.eclipse`, for
    activations slope-restricted to ``slopes``. It holds under the same chain assumption as the
    product, and is usually much tighter."""

    value: float
    method: str
    slopes: tuple[float, float]


@dataclass(frozen=True)
class LipschitzReport:
    checkpoint: str
    options: LipschitzOptions
    factors: list[Factor]
    excluded: list[Skipped]
    valid_architecture: bool
    caveats: list[str]
    assumptions: list[str]
    notes: list[str] = field(default_factory=list)
    #: Layers (and BatchNorms) of the model that --filter/--exclude left out of the product.
    unselected: list[str] = field(default_factory=list)
    #: ECLipsE-Fast over the whole chain of linear layers (``--mlp``), when it applies.
    chain: ChainBound | None = None
    #: Why ``--mlp`` did not apply ("" when it did or was not asked for).
    chain_note: str = ""

    @property
    def best_log10(self) -> float:
        """log10 of the tightest bound held: ECLipsE-Fast's (``--mlp``) or the product."""
        if self.chain is None:
            return self.log10_bound
        value = self.chain.value
        return min(self.log10_bound, math.log10(value) if value > 0 else -math.inf)

    @property
    def best_bound(self) -> float:
        """10^best_log10; ``inf`` when it overflows float64."""
        log = self.best_log10
        if log == -math.inf:
            return 0.0
        return math.inf if log > 308 else 10.0**log

    @property
    def assumed(self) -> bool:
        """The user asserted a sequential chain and nothing in the file contradicts it."""
        return self.options.assume is Assumption.SEQUENTIAL and self.valid_architecture

    @property
    def refused(self) -> bool:
        """``--assume sequential`` was given, but names or shapes contradict it."""
        return self.options.assume is not None and not self.valid_architecture

    @property
    def architecture(self) -> str | None:
        """ "assumed" when the chain was asserted (and not refused); None: no architecture is
        known (a state dict records none), so nothing is certified."""
        return "assumed" if self.assumed else None

    @property
    def partial(self) -> bool:
        """The product covers only some of the model's layers: it bounds nothing about the
        model (a left-out layer can stretch by any factor)."""
        return bool(self.unselected)

    @property
    def upper_bound(self) -> bool:
        """The product is an upper bound on the model's Lipschitz constant (under the stated
        assumptions): the architecture fits, no layer is left out and every factor is an upper
        bound. When False the product of the factors is only an estimate (or a diagnostic)."""
        return (
            self.valid_architecture
            and not self.partial
            and (self.chain is not None or all(f.is_upper_bound for f in self.factors))
        )

    @property
    def log10_bound(self) -> float:
        return sum(f.log10 for f in self.factors)

    def to_pandas(self) -> Any:
        """The factors as a pandas DataFrame (pandas optional); the bound is in ``attrs``."""
        from sncli.tables import to_frame

        attrs = {"checkpoint": self.checkpoint, "log10_bound": self.log10_bound}
        return to_frame(self.factors, ("log10", "is_upper_bound"), **attrs)

    @property
    def bound(self) -> float:
        """The product; ``inf`` when it overflows float64 (use ``log10_bound``)."""
        log = self.log10_bound
        if log == -math.inf:
            return 0.0
        return math.inf if log > 308 else 10.0**log

    @property
    def valid_bound(self) -> bool:
        """The product bounds the model under the stated assumptions (else a diagnostic)."""
        return self.valid_architecture and not self.partial

    @property
    def certified(self) -> bool:
        """True only when the chain is asserted (``--assume sequential``, not refused), every
        factor is a proven upper bound and no layer was left out by --filter/--exclude. A state
        dict does not record its architecture, so without the assertion nothing is certified."""
        return (
            self.assumed
            and not self.partial
            and (self.chain is not None or all(f.certified for f in self.factors))
        )

    def running_log10(self) -> list[float]:
        total, out = 0.0, []
        for factor in self.factors:
            total += factor.log10
            out.append(total)
        return out

    def shares(self) -> list[float | None]:
        """Each factor's signed share of the log-bound: log10 σ_l / Σ |log10 σ_j|.

        Positive shares push the bound up, negative ones down; their magnitudes add up to 1.
        None where a zero layer makes the logarithms infinite.
        """
        total = sum(abs(f.log10) for f in self.factors)
        if total == 0 or not math.isfinite(total):
            return [None] * len(self.factors)
        return [f.log10 / total for f in self.factors]

    def statement(self) -> str:
        """One plain sentence on what the number means and whether it holds."""
        return product_statement(self)

    def gate(
        self, threshold: float, *, certified: bool = False, name: str | None = None, shown: str = ""
    ) -> None:
        """The ``--fail-above`` gate: raise :class:`BoundExceededError` unless the bound is one
        for this architecture, certified when ``certified``, and at most ``threshold``.
        ``name`` is the model as the user named it (default: the report's path), ``shown`` the
        bound as displayed (default: ``%.6g``)."""
        where = self.checkpoint if name is None else name
        shown = shown or f"{self.best_bound:.6g}"
        if not self.valid_architecture:
            raise BoundExceededError(
                f"--fail-above cannot pass: the product ({shown}) is not a Lipschitz bound for "
                "this architecture" + (" (--assume sequential refused)" if self.refused else ""),
                where,
            )
        if certified and not self.certified:
            why = (
                ": a state dict does not record the architecture (--assume sequential asserts "
                "a plain chain; an ONNX export gives a proof)"
                if not self.assumed and not self.partial
                else ""
            )
            raise BoundExceededError(
                f"--fail-above with --certified: the product is not certified{why}", where
            )
        if self.best_log10 > math.log10(max(threshold, 1e-300)):
            raise BoundExceededError(
                f"Lipschitz bound {shown} exceeds --fail-above {threshold:g}", where
            )


def _batchnorm_groups(checkpoint: Checkpoint) -> dict[str, tuple[str, str, str]]:
    """BatchNorm modules: prefix → (weight, running_var, bias-or-'') keys."""
    groups: dict[str, tuple[str, str, str]] = {}
    for name in checkpoint.tensors:
        if name.endswith(".running_var"):
            prefix = name[: -len(".running_var")]
            weight = f"{prefix}.weight"
            if weight in checkpoint.tensors and len(checkpoint.tensors[weight].shape) == 1:
                bias = f"{prefix}.bias" if f"{prefix}.bias" in checkpoint.tensors else ""
                groups[prefix] = (weight, name, bias)
    return groups


def _matrix_factor(layer: Layer, weight: Any, options: LipschitzOptions) -> Factor:
    matrix = as_matrix(weight, layer.reshape_dim)
    check_finite(matrix)
    if options.certified:
        interval = sigma_interval(matrix, seed=options.seed)
        return Factor(
            layer.name,
            layer.short_name,
            layer.kind.value,
            interval.upper,
            interval.lower,
            interval.upper,
            True,
            f"matrix σ upper bound ({interval.upper_method})",
        )
    estimate = largest_singular_value(
        matrix, options.method, iters=options.iters, tol=options.tol, seed=options.seed
    )
    return _factor_of(layer, estimate)


def _factor_of(layer: Layer, estimate: SigmaEstimate) -> Factor:
    """A matrix layer's factor from its σ estimate: certified when the estimate's upper side is
    proven (a dense float64 σ within DENSE_ROUNDING, or a Cholesky certificate)."""
    upper = None
    if estimate.certified:
        upper = estimate.upper if estimate.upper is not None else estimate.sigma
        upper *= 1 + DENSE_ROUNDING
    lower = None
    if estimate.bound is BoundKind.LOWER:
        lower = estimate.sigma
    elif estimate.certified:
        lower = estimate.sigma * (1 - DENSE_ROUNDING)
    if estimate.bound is BoundKind.LOWER:
        source = f"matrix σ ({estimate.method.value}: a lower bound)"
    elif estimate.certified:
        source = f"matrix σ ({estimate.method.value}, certified)"
    else:
        source = f"matrix σ ({estimate.method.value}; upper side not proven)"
    return Factor(
        layer.name,
        layer.short_name,
        layer.kind.value,
        upper if upper is not None else estimate.sigma,
        lower,
        upper,
        upper is not None,
        source,
    )


def _conv_factor(layer: Layer, weight: Any, options: LipschitzOptions) -> Factor:
    """A conv layer's factor. The operator norm runs on NumPy (:mod:`sncli.numerics.conv`; a
    torch weight is read as a float64 array), so every format gives the same factor without
    torch."""
    check_finite(weight)
    if options.conv is ConvPolicy.RESHAPE:
        factor = _matrix_factor(layer, weight, options)
        return replace(
            factor,
            certified=False,
            source="reshaped kernel σ (not an operator-norm bound)",
            reshape_sigma=factor.sigma,
        )
    from sncli.numerics.conv import conv_operator_norm

    circular = options.padding is Padding.CIRCULAR and options.input_size is not None
    try:
        norm = conv_operator_norm(
            weight,
            padding=options.padding.value,
            input_size=options.input_size if circular else None,
            transposed=layer.transposed,
            grid=options.grid,
        )
    except ValueError as exc:
        raise SncliError(f"{layer.name}: cannot bound this convolution: {exc}") from exc
    upper = norm.upper if norm.upper is not None else norm.value
    reshape_sigma = _reshape_sigma(layer, weight, options)
    source = norm.description
    if circular:
        source = (
            f"circular conv at {options.input_size}, stride 1 (exact there; an upper bound for "
            "inputs whose size divides it and for any stride; not certified, since each "
            "layer's input size is not known)"
        )
    return Factor(
        layer.name,
        layer.short_name,
        layer.kind.value,
        upper,
        None,
        upper,
        not circular,
        source,
        reshape_sigma=reshape_sigma,
        upper_bound=True,
    )


def _reshape_sigma(layer: Layer, weight: Any, options: LipschitzOptions) -> float:
    """The displayed σ of the reshaped kernel (the side spectral_norm uses), by ``auto``.

    Only displayed, never a factor: ``auto`` is dense float64 up to a smaller side of 128 and a
    float32 block-Lanczos lower bound within ~1e-4 beyond, where the dense Gram of both reshapes
    cost as much as the operator norm itself (bench/README.md).
    """
    matrix = as_matrix(weight, layer.reshape_dim)
    return largest_singular_value(matrix, Method.AUTO, seed=options.seed).sigma


def _batchnorm_factor(checkpoint: Checkpoint, prefix: str, keys: tuple[str, str, str]) -> Factor:
    lipschitz = batchnorm_lipschitz(checkpoint, prefix, keys)
    upper = lipschitz * (1 + DENSE_ROUNDING)
    return Factor(
        keys[0],
        checkpoint.short_name(keys[0]),
        "batchnorm",
        upper,
        lipschitz,
        upper,
        True,
        f"BatchNorm (eval): max|γ|/√(var+ε), ε={BATCHNORM_EPS:g}",
    )


@dataclass
class _Task:
    """One factor's inputs, read by the reader thread (BatchNorm factors are computed there)."""

    name: str
    layer: Layer | None
    weight: Any = None  # a NumPy array or a torch tensor (sncli.lipschitz.weights)
    estimate: float | None = None
    factor: Factor | None = None
    bad: str | None = None


def _task_bytes(layer: Layer | None) -> int:
    """Bytes a layer holds in flight: the stored weight, plus a float64 copy when it is
    composed (W/σ̂ of spectral norm, g·v/‖v‖ of weight norm)."""
    if layer is None:
        return 0
    count = math.prod(layer.shape)
    total = count * bits_per_element(layer.dtype) // 8
    if layer.spectral_norm is not None or layer.weight_norm is not None:
        total += 8 * count
    return total


def _task_cost(layer: Layer | None, options: LipschitzOptions) -> float:
    """Rough multiply-adds of a factor, only to schedule the costliest first: the torus bound's
    model for a conv operator norm, small²·large for a dense matrix σ, 0 for BatchNorm."""
    if layer is None:
        return 0.0
    if layer.kind.is_conv and options.conv is not ConvPolicy.RESHAPE:
        from sncli.numerics.conv import torus_bound_cost

        with contextlib.suppress(ValueError):  # a bad grid is reported when computed
            return torus_bound_cost(layer.shape, grid=options.grid)
        return 0.0
    rows = layer.shape[layer.reshape_dim]
    cols = math.prod(layer.shape) // max(rows, 1)
    return float(min(rows, cols) ** 2 * max(rows, cols))


def _read_task(
    checkpoint: Checkpoint,
    work: tuple[str, Layer | None, tuple[str, str, str] | None],
    reader: SafetensorsStreamReader | None,
) -> _Task:
    """One factor's inputs (on the reader thread); a non-finite BatchNorm or weight is noted."""
    name, layer, bn = work
    task = _Task(name, layer)
    try:
        _fill_task(checkpoint, task, bn, reader)
    except NumericalError as exc:
        task.bad = exc.message
    return task


def _fill_task(
    checkpoint: Checkpoint,
    task: _Task,
    bn: tuple[str, str, str] | None,
    reader: SafetensorsStreamReader | None,
) -> None:
    layer = task.layer
    if bn is not None:
        task.factor = _batchnorm_factor(checkpoint, task.name, bn)
        return
    assert layer is not None
    task.weight, task.estimate = layer_weight(checkpoint, layer, reader)


def _known_factors(
    checkpoint: Checkpoint,
    layers: list[Layer],
    options: LipschitzOptions,
    known_sigmas: Mapping[str, float] | None,
) -> dict[str, Factor]:
    """Factors of plain linear layers whose dense float64 σ is already known (``sncli report``
    passes the largest value of each full spectrum: the same Gram + eigvalsh as ``--method
    dense``, so the same number to rounding), for the default method only."""
    if not known_sigmas or options.method is not Method.DENSE or options.certified:
        return {}
    return {
        layer.name: _factor_of(
            layer,
            SigmaEstimate(
                known_sigmas[layer.name],
                Method.DENSE,
                BoundKind.EXACT,
                None,
                None,
                0.0,
                True,
                algorithm="dense-eigvalsh-float64 (the spectrum's)",
            ),
        )
        for layer in layers
        if not layer.kind.is_conv
        and layer.name in known_sigmas
        and math.isfinite(known_sigmas[layer.name])
        and is_plain(checkpoint, layer)
    }


def _all_factors(
    checkpoint: Checkpoint,
    layers: list[Layer],
    batchnorms: list[tuple[str, str, str]],
    options: LipschitzOptions,
    progress: ProgressCallback | None,
    known_sigmas: Mapping[str, float] | None,
    notes: list[str],
) -> tuple[list[Factor], list[str]]:
    """The factors of ``layers`` and ``batchnorms`` (those with a known σ not recomputed) and
    the layers refused for non-finite values."""
    known = _known_factors(checkpoint, layers, options, known_sigmas)
    work: list[tuple[str, Layer | None, tuple[str, str, str] | None]] = [
        (layer.name, layer, None) for layer in layers if layer.name not in known
    ] + [(keys[0], None, keys) for keys in batchnorms]
    work.sort(key=lambda item: natural_key(item[0]))
    factors, bad = (
        _compute_factors(checkpoint, work, options, progress, notes) if work else ([], [])
    )
    if known and not work and progress is not None:
        progress(len(known), len(known), "σ from the spectra")
    return factors + list(known.values()), bad


def _layer_factor(task: _Task, options: LipschitzOptions) -> Factor:
    layer = task.layer
    assert layer is not None and task.weight is not None
    if layer.kind.is_conv:
        factor = _conv_factor(layer, task.weight, options)
    else:
        factor = _matrix_factor(layer, task.weight, options)
    if layer.spectral_norm is not None:
        note = (
            "stored normalized weight"
            if task.estimate is None
            else f"W/σ̂ with σ̂ = {task.estimate:.6g} from stored u, v"
        )
        factor = replace(factor, note=note)
    return factor


def _task_factor(task: _Task, options: LipschitzOptions) -> Factor | str:
    """The task's factor, or ``"name (reason)"`` for a non-finite weight."""
    if task.bad is not None:
        return f"{task.name} ({task.bad})"
    if task.factor is not None:
        return task.factor
    try:
        return _layer_factor(task, options)
    except NumericalError as exc:
        return f"{task.name} ({exc.message})"


def _read_for_task(
    checkpoints: tuple[Checkpoint, ...],
    work: tuple[str, Layer | None, tuple[str, str, str] | None],
    reader: SafetensorsStreamReader | None,
) -> _Task:
    return _read_task(checkpoints[0], work, reader)


def _compute_factors(
    checkpoint: Checkpoint,
    work: list[tuple[str, Layer | None, tuple[str, str, str] | None]],
    options: LipschitzOptions,
    progress: ProgressCallback | None,
    notes: list[str],
) -> tuple[list[Factor], list[str]]:
    """Every factor, in ``work``'s order, and the layers refused for non-finite values.

    inspect's pipeline (:mod:`sncli.run`): one reader thread streams tensors ahead within a
    byte budget, ``options.workers`` threads (default: one per core) compute the factors, each
    with single-threaded torch. The factors are the same as computed one by one on one thread.
    They are computed costliest first (:func:`_task_cost`; here and on a cluster), so that no
    large conv is left to run alone at the end while the other workers idle, and returned in
    ``work``'s order.
    """
    layers = [layer for _, layer, _ in work if layer is not None]
    largest = max((_task_bytes(layer) for layer in layers), default=0)
    widest = max((math.prod(layer.shape) for layer in layers), default=0)

    order = sorted(range(len(work)), key=lambda i: -_task_cost(work[i][1], options))
    with torch_threads(1):
        scheduled, run = map_layers(
            (checkpoint,),
            [work[i] for i in order],
            nbytes=lambda item: _task_bytes(item[1]),
            load=_read_for_task,
            compute=partial(_task_factor, options=options),
            budget=budget_bytes(largest, widest),
            workers=max(1, options.workers or min(available_cores(), len(work))),
            label=lambda item: checkpoint.short_name(item[0]),
            progress=progress,
            thread_name="sncli-lipschitz",
            scheduler=options.scheduler,
        )
    if run is not None:
        notes.append(run.note)
    outcomes: list[Factor | str] = [""] * len(work)
    for position, index in enumerate(order):
        outcomes[index] = scheduled[position]
    factors = [item for item in outcomes if isinstance(item, Factor)]
    return factors, [item for item in outcomes if isinstance(item, str)]


#: Slopes ECLipsE-Fast assumes under ``--mlp``: ReLU, LeakyReLU (0 ≤ a ≤ 1), tanh, sigmoid….
MLP_SLOPES = (0.0, 1.0)


def _chain_bound(
    checkpoint: Checkpoint, layers: list[Layer], factors: list[Factor]
) -> tuple[ChainBound | None, str]:
    """ECLipsE-Fast over the linear layers in key order (their effective weights), or why not."""
    from sncli.numerics.eclipse import eclipse_fast_certificate

    others = sorted({f.kind for f in factors if f.kind != "linear"})
    if others:
        return None, "it bounds chains of linear layers only, and this one has " + ", ".join(others)
    by_name = {layer.name: layer for layer in layers}
    weights = [chain_matrix(checkpoint, by_name[factor.name]) for factor in factors]
    try:
        result = eclipse_fast_certificate(weights, *MLP_SLOPES)
    except ValueError as exc:
        return None, str(exc)
    return ChainBound(result.bound, result.method, MLP_SLOPES), ""


def _prelu_factor(checkpoint: Checkpoint, key: str) -> Factor:
    """PReLU(x) = max(x, 0) + a·min(x, 0) per channel: Lipschitz max(1, max|a|), exact."""
    value = prelu_lipschitz(checkpoint, key)
    return Factor(
        key,
        checkpoint.short_name(key),
        "prelu",
        value,
        value,
        value,
        True,
        "PReLU slopes: max(1, max|a|), exact",
    )


@takes_checkpoints("checkpoint")
def lipschitz_report(
    checkpoint: CheckpointSource,
    options: LipschitzOptions | None = None,
    progress: ProgressCallback | None = None,
    *,
    known_sigmas: Mapping[str, float] | None = None,
) -> LipschitzReport:
    """The per-layer factors and their product, with validity caveats. Refuses NaN/Inf weights
    and LoRA adapters (an adapter is not a network). ``known_sigmas``: dense float64 σ already
    computed per layer name (the report's spectra), used instead of a second dense pass."""
    from sncli.adapters import refuse_adapter

    refuse_adapter(checkpoint, "lipschitz")
    options = options or LipschitzOptions()
    classification = classify(checkpoint, transposed=options.transposed)
    selected = select(classification.layers, options.include, options.exclude)
    excluded = list(classification.skipped)
    excluded += [
        Skipped(
            layer.name,
            "embedding"
            + (f" ({layer.note.removeprefix('embedding: ')})" if layer.note else "")
            + ": its input is discrete, the chain starts after it",
        )
        for layer in selected
        if layer.kind is LayerKind.EMBEDDING
    ]
    unselected = {layer.name for layer in classification.layers} - {
        layer.name for layer in selected
    }
    excluded += [Skipped(n, "not selected") for n in unselected]
    layers = [layer for layer in selected if layer.kind is not LayerKind.EMBEDDING]
    excluded += [Skipped(layer.name, EXPERT_EXCLUDED) for layer in layers if layer.stack]
    layers = [layer for layer in layers if layer.stack is None]  # never chained: moe_caveats
    batchnorms = {
        prefix: keys
        for prefix, keys in _batchnorm_groups(checkpoint).items()
        if matches(keys[0], options.include, options.exclude, checkpoint.short_name(keys[0]))
    }
    embeddings = {
        layer.name for layer in classification.layers if layer.kind is LayerKind.EMBEDDING
    }
    left_out = sorted(
        (unselected - embeddings)
        | {
            keys[0]
            for keys in _batchnorm_groups(checkpoint).values()
            if not matches(keys[0], options.include, options.exclude)
        },
        key=natural_key,
    )
    all_prelus = [s.name for s in classification.skipped if s.reason == "PReLU slope"]
    prelus = [
        key
        for key in all_prelus
        if matches(key, options.include, options.exclude, checkpoint.short_name(key))
    ]
    left_out = sorted(set(left_out) | (set(all_prelus) - set(prelus)), key=natural_key)
    bn_keys = {k for keys in batchnorms.values() for k in keys if k}
    bn_keys |= set(prelus)
    bn_keys |= {f"{p}.running_mean" for p in batchnorms} | {
        f"{p}.num_batches_tracked" for p in batchnorms
    }
    excluded = [s for s in excluded if s.name not in bn_keys or s.name.endswith("bias")]
    excluded = [
        Skipped(s.name, s.reason + (" (not a Lipschitz factor)" if s.reason == "bias" else ""))
        for s in excluded
    ]
    if not layers and not batchnorms and not prelus:
        moe = any(layer.stack for layer in selected)
        raise NoLayersMatchedError(
            "nothing to bound: "
            + (
                "the only layers are experts of a mixture of experts, which sit side by side "
                "behind a router, not in a chain, so their σ are no factors of a product"
                if moe
                else "no linear or conv layer matched"
            ),
            checkpoint.path,
        )

    run_notes: list[str] = []
    factors, bad = _all_factors(
        checkpoint, layers, list(batchnorms.values()), options, progress, known_sigmas, run_notes
    )
    for key in prelus:
        try:
            factors.append(_prelu_factor(checkpoint, key))
        except NumericalError as exc:
            bad.append(f"{key} ({exc.message})")
    factors.sort(key=lambda f: natural_key(f.name))
    if bad:
        raise NumericalError(
            "no meaningful bound: non-finite weights in "
            + ", ".join(bad[:3])
            + (f" and {len(bad) - 3} more" if len(bad) > 3 else ""),
            checkpoint.path,
        )
    caveats = architecture_caveats(checkpoint.tensors) + chain_caveats(
        [layer for layer in classification.layers if layer.stack is None]
    )
    caveats += moe_caveats(classification.layers)
    valid = not caveats
    caveats += selection_caveats(checkpoint, left_out)
    if options.assume is Assumption.SEQUENTIAL and valid:
        chain = f"{CHAIN_ASSUMPTION} (asserted with --assume sequential)"
    elif options.assume is Assumption.SEQUENTIAL:
        chain = f"{CHAIN_ASSUMPTION} (asserted with --assume sequential, but refused: see caveats)"
    else:
        chain = (
            f"{CHAIN_ASSUMPTION} (a state dict does not record it, so the bound is conditional "
            "on it and not certified)"
        )
    assumptions = [chain, ACTIVATION_ASSUMPTION]
    if prelus:
        assumptions[1] = (
            "activations other than the PReLUs are 1-Lipschitz (ReLU, LeakyReLU, tanh, …); each "
            "PReLU is a factor max(1, max|a|)"
        )
    if any(f.kind.startswith("conv") for f in factors):
        if options.conv is ConvPolicy.RESHAPE:
            assumptions.append(
                "conv factors are reshaped-kernel σ, which can be below the true operator norm: "
                "the product is then not a bound (use --conv operator)"
            )
        elif options.padding is Padding.CIRCULAR and options.input_size:
            assumptions.append(
                f"convolutions use circular padding; each conv factor is its exact norm on "
                f"{options.input_size} inputs at stride 1, an upper bound for layers whose input "
                "size divides that and for any stride"
            )
        else:
            assumptions.append(
                "conv factors bound zero- or circular-padded convolutions at any input size, "
                "stride and dilation (groups treated as 1, which only loosens the bound); not "
                "reflect/replicate padding"
            )
    if batchnorms:
        assumptions.append(f"BatchNorm in eval mode with ε = {BATCHNORM_EPS:g}")
    if any(s.reason.startswith("embedding") for s in excluded):
        assumptions.append("the chain starts after the embedding (its input is discrete)")
    if any(f.sigma == 0 for f in factors):
        assumptions.append("a zero layer makes the network constant: the bound is 0")
    excluded.sort(key=lambda s: natural_key(s.name))
    chain, chain_note = None, ""
    if options.mlp and valid and not left_out:
        chain, chain_note = _chain_bound(checkpoint, layers, factors)
    elif options.mlp:
        chain_note = "the product is no bound on the model here, so neither is a chain bound"
    if chain is not None:
        assumptions.append(
            "for --mlp (ECLipsE-Fast): every activation is slope-restricted to [0, 1]"
        )
    return LipschitzReport(
        checkpoint=str(checkpoint.path),
        options=options,
        factors=factors,
        excluded=excluded,
        valid_architecture=valid,
        caveats=caveats,
        assumptions=assumptions,
        notes=list(checkpoint.notes) + run_notes,
        unselected=left_out,
        chain=chain,
        chain_note=chain_note,
    )
