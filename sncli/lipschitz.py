"""The product Lipschitz bound ∏ σ_l of a checkpoint's layers, and when it is one.

For a feed-forward composition f = f_L ∘ … ∘ f_1 of linear/conv layers and 1-Lipschitz
activations, Lip(f) ≤ ∏ Lip(f_l) in ℓ2. A state dict records names and shapes only, so the layers
are taken in key order and the architecture is judged from names: attention (not globally
Lipschitz, Kim et al. 2021) and residual connections (a block contributes 1 + L) make the product
no bound at all, and the report says so. The product is accumulated in log10, since hundreds of
factors overflow floating point.

Per layer the factor is, by policy:
* linear: σ of the weight (SN layers: of W/σ̂, the weight the model uses);
* conv, ``--conv operator`` (default): the norm of the convolution as a map on images — exact for
  circular padding at a given input size (Sedghi et al. 2019), else a certified upper bound on the
  torus norm, valid for zero padding at any input size, stride and dilation;
* conv, ``--conv reshape``: σ of the reshaped kernel, which is *not* a bound on the operator;
* BatchNorm in eval mode: the diagonal map γ/√(var + ε), L = max |γ_c|/√(var_c + ε).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, Any

from sncli.checkpoint import Checkpoint, natural_key
from sncli.dtypes import bits_per_element
from sncli.errors import NoLayersMatchedError, NumericalError, SncliError
from sncli.formats.safetensors import SafetensorsStreamReader
from sncli.layers import (
    BATCHNORM_EPS,
    Layer,
    LayerKind,
    Skipped,
    classify,
    effective_weight,
    matches,
    select,
)
from sncli.messages import ProgressCallback
from sncli.numerics.bounds import sigma_interval
from sncli.numerics.conv import conv_operator_norm
from sncli.numerics.floating import DENSE_ROUNDING, check_finite
from sncli.numerics.spectral import (
    DEFAULT_POWER_ITERS,
    DEFAULT_SEED,
    BoundKind,
    Method,
    as_matrix,
    largest_singular_value,
)
from sncli.pipeline import available_cores, budget_bytes, load_weight, read_ahead_map, torch_threads

if TYPE_CHECKING:
    import torch


ATTENTION_NAME = re.compile(
    r"(^|[._])(q_proj|k_proj|v_proj|qkv|in_proj_weight|query|key|value|attn|attention|"
    r"self_attn|cross_attn|c_attn|mha)([._]|$)",
    re.IGNORECASE,
)
RESIDUAL_NAME = re.compile(
    r"(^|[._])(residual|shortcut|skip|downsample|res_?block|resnet|identity)\w*([._]|$)",
    re.IGNORECASE,
)
LAYERNORM_NAME = re.compile(r"(layer_?norm|rms_?norm|(^|[._])ln(_\w+|\d*)([._]|$)|norm\d*\.)")


class ConvPolicy(str, Enum):
    OPERATOR = "operator"
    RESHAPE = "reshape"


class Padding(str, Enum):
    ZEROS = "zeros"
    CIRCULAR = "circular"


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
    #: factors computed concurrently, each with single-threaded torch (None: one per core)
    workers: int | None = None


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
            and all(f.is_upper_bound for f in self.factors)
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
    def certified(self) -> bool:
        """True only when every factor is a proven upper bound, the architecture fits and no
        layer was left out by --filter/--exclude."""
        return (
            self.valid_architecture and not self.partial and all(f.certified for f in self.factors)
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
        what = (
            "For any two inputs x, y, ‖f(x) − f(y)‖ ≤ L·‖x − y‖ (ℓ2): L bounds how much the "
            "network can stretch a change of its input"
        )
        if not self.valid_architecture:
            return (
                f"{what}. Here the product is NOT a valid bound: "
                + "; ".join(self.caveats)
                + ". The per-layer numbers are still shown (diagnostic only)."
            )
        if self.partial:
            return (
                f"{what}. Here the product covers only the layers selected by --filter/--exclude "
                f"({len(self.unselected)} left out, e.g. {self.unselected[0]}), so it is NOT a "
                "bound on the model and not certified: a left-out layer can stretch its input "
                "by any factor."
            )
        if self.certified:
            proof = "every factor is a proven upper bound, so this L is certified"
        else:
            fixes = []
            if any(f.source.startswith("reshaped") for f in self.factors):
                fixes.append("--conv operator")
            if any(f.source.startswith("circular") for f in self.factors):
                fixes.append("--padding zeros")
            if any(
                not f.certified and not f.source.startswith(("reshaped", "circular"))
                for f in self.factors
            ):
                fixes.append("--certified")
            if self.upper_bound:
                proof = (
                    "every factor is an upper bound under the assumptions below, but not every "
                    "one is proven (see the certified column), so this L is not certified; use "
                    + " and ".join(fixes)
                    + " for a proof"
                )
            else:
                proof = (
                    "not every factor is a proven upper bound (see the certified column), so "
                    "this L is an estimate; use " + " and ".join(fixes) + " for a proof"
                )
        return (
            f"{what}. The product holds if the network is the sequential composition of these "
            f"layers in this order with 1-Lipschitz activations (ReLU, LeakyReLU, tanh…); {proof}."
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


def _matrix_factor(layer: Layer, weight: torch.Tensor, options: LipschitzOptions) -> Factor:
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


def _conv_factor(layer: Layer, weight: torch.Tensor, options: LipschitzOptions) -> Factor:
    check_finite(weight)
    if options.conv is ConvPolicy.RESHAPE:
        factor = _matrix_factor(layer, weight, options)
        return replace(
            factor,
            certified=False,
            source="reshaped kernel σ (not an operator-norm bound)",
            reshape_sigma=factor.sigma,
        )
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


def _reshape_sigma(layer: Layer, weight: torch.Tensor, options: LipschitzOptions) -> float:
    """The displayed σ of the reshaped kernel (the side spectral_norm uses), by ``auto``.

    Only displayed, never a factor: ``auto`` is dense float64 up to a smaller side of 128 and a
    float32 block-Lanczos lower bound within ~1e-4 beyond, where the dense Gram of both reshapes
    cost as much as the operator norm itself (bench/README.md).
    """
    matrix = as_matrix(weight, layer.reshape_dim)
    return largest_singular_value(matrix, Method.AUTO, seed=options.seed).sigma


def _batchnorm_factor(checkpoint: Checkpoint, prefix: str, keys: tuple[str, str, str]) -> Factor:
    import torch

    gamma = checkpoint.load(keys[0]).to(torch.float64)
    var = checkpoint.load(keys[1]).to(torch.float64)
    check_finite(gamma)
    check_finite(var)
    if bool((var < 0).any()):
        raise NumericalError(f"{prefix}: negative running_var")
    lipschitz = float((gamma.abs() / torch.sqrt(var + BATCHNORM_EPS)).max())
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
    weight: torch.Tensor | None = None
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
    plain = (
        layer.spectral_norm is None
        and layer.weight_norm is None
        and layer.name in checkpoint.tensors
        and layer.name not in checkpoint.unsupported
        and layer.name not in checkpoint.derived
    )
    if plain:  # inspect's readinto path: no mmap'd pages left resident
        task.weight = load_weight(checkpoint, layer.name, reader)
    else:
        task.weight, task.estimate = effective_weight(checkpoint, layer)


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


def _compute_factors(
    checkpoint: Checkpoint,
    work: list[tuple[str, Layer | None, tuple[str, str, str] | None]],
    options: LipschitzOptions,
    progress: ProgressCallback | None,
) -> tuple[list[Factor], list[str]]:
    """Every factor, in ``work``'s order, and the layers refused for non-finite values.

    inspect's pipeline (:mod:`sncli.pipeline`): one reader thread streams tensors ahead within a
    byte budget, ``options.workers`` threads (default: one per core) compute the factors, each
    with single-threaded torch. The factors are the same as computed one by one on one thread.
    """
    layers = [layer for _, layer, _ in work if layer is not None]
    largest = max((_task_bytes(layer) for layer in layers), default=0)
    widest = max((math.prod(layer.shape) for layer in layers), default=0)

    def compute(task: _Task) -> Factor | str:
        if task.bad is not None:
            return f"{task.name} ({task.bad})"
        if task.factor is not None:
            return task.factor
        try:
            return _layer_factor(task, options)
        except NumericalError as exc:
            return f"{task.name} ({exc.message})"

    with torch_threads(1):
        outcomes = read_ahead_map(
            checkpoint,
            work,
            nbytes=lambda item: _task_bytes(item[1]),
            load=lambda item, reader: _read_task(checkpoint, item, reader),
            compute=compute,
            budget=budget_bytes(largest, widest),
            workers=max(1, options.workers or min(available_cores(), len(work))),
            label=lambda item: checkpoint.short_name(item[0]),
            progress=progress,
            thread_name="sncli-lipschitz",
        )
    factors = [item for item in outcomes if isinstance(item, Factor)]
    return factors, [item for item in outcomes if isinstance(item, str)]


def architecture_caveats(names: Iterable[str]) -> list[str]:
    """Reasons the product is not a Lipschitz bound for this architecture, judged by names."""
    names = list(names)
    caveats = []
    for pattern, what, why in (
        (ATTENTION_NAME, "attention", "dot-product attention is not globally Lipschitz"),
        (
            RESIDUAL_NAME,
            "residual/skip connections",
            "a residual block x + g(x) contributes 1 + Lip(g), not Lip(g)",
        ),
    ):
        found = sorted({m.group(2) for n in names if (m := pattern.search(n))})
        if found:
            caveats.append(f"the names show {what} ({', '.join(found[:4])}); {why}")
    # A module with running statistics is a BatchNorm, whatever its name (DenseNet's norm1).
    batchnorms = {
        n.rpartition(".")[0] for n in names if n.endswith((".running_var", ".running_mean"))
    }
    if any(LAYERNORM_NAME.search(n) and n.rpartition(".")[0] not in batchnorms for n in names):
        caveats.append(
            "LayerNorm/RMSNorm layers are present; their Lipschitz constant is about max|γ|/√ε "
            "(vacuous), and they are not in the product"
        )
    return caveats


def _selection_caveats(checkpoint: Checkpoint, left_out: list[str]) -> list[str]:
    if not left_out:
        return []
    shown = ", ".join(checkpoint.short_name(n) for n in left_out[:3])
    return [
        f"--filter/--exclude left {len(left_out)} of the model's layers out of the product "
        f"({shown}{', …' if len(left_out) > 3 else ''}): a product over a subset of the layers "
        "is not a bound on the model"
    ]


def lipschitz_report(
    checkpoint: Checkpoint,
    options: LipschitzOptions | None = None,
    progress: ProgressCallback | None = None,
) -> LipschitzReport:
    """The per-layer factors and their product, with validity caveats. Refuses NaN/Inf weights."""
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
    bn_keys = {k for keys in batchnorms.values() for k in keys if k}
    bn_keys |= {f"{p}.running_mean" for p in batchnorms} | {
        f"{p}.num_batches_tracked" for p in batchnorms
    }
    excluded = [s for s in excluded if s.name not in bn_keys or s.name.endswith("bias")]
    excluded = [
        Skipped(s.name, s.reason + (" (not a Lipschitz factor)" if s.reason == "bias" else ""))
        for s in excluded
    ]
    if not layers and not batchnorms:
        raise NoLayersMatchedError(
            "nothing to bound: no linear or conv layer matched", checkpoint.path
        )

    work: list[tuple[str, Layer | None, tuple[str, str, str] | None]] = [
        (layer.name, layer, None) for layer in layers
    ] + [(keys[0], None, keys) for keys in batchnorms.values()]
    work.sort(key=lambda item: natural_key(item[0]))
    factors, bad = _compute_factors(checkpoint, work, options, progress)
    if bad:
        raise NumericalError(
            "no meaningful bound: non-finite weights in "
            + ", ".join(bad[:3])
            + (f" and {len(bad) - 3} more" if len(bad) > 3 else ""),
            checkpoint.path,
        )
    caveats = architecture_caveats(checkpoint.tensors)
    valid = not caveats
    caveats += _selection_caveats(checkpoint, left_out)
    assumptions = [
        "layers compose sequentially in key order",
        "activations are 1-Lipschitz (ReLU, LeakyReLU, tanh, …)",
    ]
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
    return LipschitzReport(
        checkpoint=str(checkpoint.path),
        options=options,
        factors=factors,
        excluded=excluded,
        valid_architecture=valid,
        caveats=caveats,
        assumptions=assumptions,
        notes=list(checkpoint.notes),
        unselected=left_out,
    )
