"""Decide which tensors are layers, what kind, and which matrix stands for each.

A state dict records names and shapes, not modules, so classification is by shape and name:
2-D weights are linear maps, 3-5-D weights are convolutions, embeddings are recognised by name,
1-D tensors are biases or normalisation parameters. Tensors saved by PyTorch's two spectral-norm
APIs are grouped into one layer with their stored power-iteration vectors; weight norm's g and v
become one layer whose weight ``Checkpoint.load`` composes (W = g·v/‖v‖).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from sncli.checkpoint import Checkpoint, TensorInfo, natural_key
from sncli.dtypes import FLOAT_DTYPES
from sncli.errors import NumericalError
from sncli.numerics.spectral import Method, as_matrix, largest_singular_value
from sncli.parametrizations import (
    SpectralNormInfo,
    WeightNormPair,
    spectral_norm_groups,
)

if TYPE_CHECKING:
    import torch


class LayerKind(str, Enum):
    LINEAR = "linear"
    CONV1D = "conv1d"
    CONV2D = "conv2d"
    CONV3D = "conv3d"
    EMBEDDING = "embedding"

    @property
    def is_conv(self) -> bool:
        return self in (LayerKind.CONV1D, LayerKind.CONV2D, LayerKind.CONV3D)


EMBEDDING_NAME = re.compile(
    r"(^|[._])(embed\w*|wte|wpe|tok_embeddings|word_embeddings|position_embeddings|"
    r"token_type_embeddings|shared|emb)([._]|$)",
    re.IGNORECASE,
)
NORM_NAME = re.compile(r"(norm|ln_?\w*|bn\d*|batchnorm|layernorm|rmsnorm)", re.IGNORECASE)


@dataclass(frozen=True)
class Layer:
    """One weight to analyse.

    ``name`` is the key of the raw weight in the file, except for weight-norm layers
    (``weight_norm`` set): there it names the weight ``Checkpoint.load`` composes from the
    stored g and v (``conv.weight`` or ``conv.parametrizations.weight``). Either way
    ``checkpoint.load(layer.name)`` gives the weight. ``reshape_dim`` is the dimension moved to
    the front before flattening to a matrix (0 normally, 1 for transposed convolutions), which is
    what ``torch.nn.utils.spectral_norm`` does. ``reshape_note`` says how a convolution's reshape
    was decided when that is not certain (no spectral-norm vectors to tell, or vectors that did
    not tell).
    """

    name: str
    short_name: str
    kind: LayerKind
    shape: tuple[int, ...]
    dtype: str
    reshape_dim: int = 0
    spectral_norm: SpectralNormInfo | None = None
    transposed: bool = False
    weight_norm: WeightNormPair | None = None
    reshape_note: str | None = None

    @property
    def matrix_shape(self) -> tuple[int, int]:
        rows = self.shape[self.reshape_dim]
        total = 1
        for d in self.shape:
            total *= d
        return rows, (total // rows if rows else 0)

    @property
    def matrix_description(self) -> str:
        """How the weight became a matrix, so a reshape norm is never taken for an operator norm."""
        if not self.kind.is_conv:
            return "weight"
        if self.reshape_dim == 1:
            # ConvTranspose stores (in, out/groups, k…); spectral_norm(dim=1) moves dim 1 first.
            return "reshape(out, in*k) [transposed conv: dim 1 first]"
        return "reshape(out, in*k)"


@dataclass(frozen=True)
class Skipped:
    """A tensor not analysed, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class Classification:
    layers: list[Layer]
    skipped: list[Skipped]


def _kind_for(info: TensorInfo, short: str) -> LayerKind | None:
    ndim = len(info.shape)
    if ndim == 2:
        return LayerKind.EMBEDDING if EMBEDDING_NAME.search(short) else LayerKind.LINEAR
    if ndim in (3, 4, 5):
        return (LayerKind.CONV1D, LayerKind.CONV2D, LayerKind.CONV3D)[ndim - 3]
    return None


def _skip_reason(info: TensorInfo, short: str) -> str:
    ndim = len(info.shape)
    leaf = short.rsplit(".", 1)[-1]
    if ndim == 0:
        return "scalar"
    if leaf in ("running_mean", "running_var"):
        return "batch-norm statistic"
    if ndim == 1:
        if leaf == "bias" or leaf.endswith("_bias"):
            return "bias"
        if NORM_NAME.search(short) or leaf == "weight":
            return "norm scale (1-D)"
        return "1-D tensor"
    return f"{ndim}-D tensor"


def classify(
    checkpoint: Checkpoint,
    *,
    transposed: Iterable[str] = (),
) -> Classification:
    """Sort a checkpoint's tensors into layers to analyse and skipped tensors with reasons.

    ``transposed`` holds regexes naming ConvTranspose weights: their matrix is formed along dim 1,
    as PyTorch's spectral_norm does; shapes alone cannot tell them from ordinary convolutions
    (such layers carry a ``reshape_note`` saying so). In spectral-norm checkpoints the stored
    u, v settle the question (see ``_sn_reshape``); only when in == out channels does that read
    the weight and the vectors (one layer at a time).
    """
    patterns = [re.compile(p) for p in transposed]
    names = set(checkpoint.tensors)
    weight_norms = {
        composed: pair
        for composed, pair in checkpoint.derived.items()
        if pair.g_key in names and pair.v_key in names
    }
    sn = spectral_norm_groups(names, set(weight_norms))
    roles: dict[str, str] = {}
    for owner, group in sn.items():
        roles[group.u_key] = f"spectral-norm power-iteration vector u of {owner}"
        if group.v_key:
            roles[group.v_key] = f"spectral-norm power-iteration vector v of {owner}"
        if group.effective_key:
            roles[group.effective_key] = f"spectral-norm stored normalized weight of {owner}"
    by_v = {pair.v_key: composed for composed, pair in weight_norms.items()}
    for composed, pair in weight_norms.items():
        roles[pair.g_key] = f"weight-norm magnitude g (of {composed})"
    layers: list[Layer] = []
    skipped: list[Skipped] = []
    for key, info in checkpoint.tensors.items():
        if key in checkpoint.aliases:
            skipped.append(Skipped(key, f"shares storage with {checkpoint.aliases[key]}"))
            continue
        if key in roles:
            skipped.append(Skipped(key, roles[key]))
            continue
        if key in checkpoint.unsupported:
            skipped.append(Skipped(key, checkpoint.unsupported[key]))
            continue
        reason = _dtype_problem(info.dtype)
        if reason is not None:
            skipped.append(Skipped(key, reason))
            continue
        name = by_v.get(key, key)
        if name != key and checkpoint.tensors[weight_norms[name].g_key].dtype not in FLOAT_DTYPES:
            skipped.append(Skipped(key, "weight-norm g is not a float tensor"))
            continue
        short = checkpoint.short_name(name)
        kind = _kind_for(info, short)
        if kind is None:
            skipped.append(Skipped(key, _skip_reason(info, short)))
            continue
        if info.numel == 0:
            skipped.append(Skipped(key, "empty tensor"))
            continue
        is_transposed = kind.is_conv and any(p.search(name) for p in patterns)
        group = sn.get(name)
        note = None
        if kind.is_conv and group is not None:
            dim, note = _sn_reshape(checkpoint, name, info.shape, group, int(is_transposed))
            is_transposed = dim == 1
        elif kind.is_conv and not is_transposed:
            note = UNTOLD_RESHAPE
        layers.append(
            Layer(
                name=name,
                short_name=short,
                kind=kind,
                shape=info.shape,
                dtype=info.dtype,
                reshape_dim=1 if is_transposed else 0,
                spectral_norm=group,
                transposed=is_transposed,
                weight_norm=weight_norms.get(name),
                reshape_note=note,
            )
        )
    for key in checkpoint.non_tensor_keys:
        skipped.append(Skipped(key, "not a tensor"))
    skipped.sort(key=lambda s: natural_key(s.name))
    return Classification(layers=layers, skipped=skipped)


#: A convolution without spectral-norm vectors: Conv (out, in, k…) and ConvTranspose
#: (in, out, k…) weights look alike.
UNTOLD_RESHAPE = (
    "Conv or ConvTranspose cannot be told from the shape: reshaped as a Conv (dim 0 first); "
    "name ConvTranspose weights with --transposed"
)
#: PyTorch's σ̂ = uᵀWv is at least this fraction of σ for the reshape its power iteration ran on
#: (measured ≥ 0.95 after one training step, ≤ 0.83 for the other reshape down to 2 channels).
SN_ESTIMATE_AGREEMENT = 0.9


def _sn_reshape(
    checkpoint: Checkpoint,
    name: str,
    shape: tuple[int, ...],
    group: SpectralNormInfo,
    flagged: int,
) -> tuple[int, str | None]:
    """(reshape dim, note) of a spectral-norm convolution, read from its stored u and v.

    PyTorch's u has one entry per row of the matrix it normalizes (``shape[0]`` for Conv,
    ``shape[1]`` for ConvTranspose), v one per column. When only one reshape fits, that is it.
    When both fit (in == out channels), the weight and vectors are read: the right reshape is
    the one where σ̂ = uᵀWv is close to σ (≥ ``SN_ESTIMATE_AGREEMENT``·σ), since PyTorch's
    power iteration converged there. Otherwise ``flagged`` (1 when ``--transposed`` names the
    layer) decides, and the note says the reshape is a guess. Vectors that decide override
    ``flagged`` (with a note when they contradict it).
    """
    numel = math.prod(shape)
    u_len = checkpoint.tensors[group.u_key].numel
    v_len = checkpoint.tensors[group.v_key].numel if group.v_key else None
    fits = [shape[d] == u_len and (v_len is None or u_len * v_len == numel) for d in (0, 1)]
    how = "as --transposed says" if flagged else "as a Conv"
    if fits[0] != fits[1]:
        dim = 0 if fits[0] else 1
        if flagged and dim == 0:
            return dim, (
                "the stored spectral-norm u, v fit only a Conv's reshape (dim 0 first); "
                "--transposed does not apply"
            )
        return dim, None
    if not fits[0]:
        return flagged, f"the stored u, v fit neither reshape: reshaped along dim {flagged} {how}"
    if group.v_key is None:
        return flagged, (
            "in == out channels and no stored v vector: Conv or ConvTranspose cannot be told; "
            f"reshaped along dim {flagged} {how}"
        )
    ratios = _sn_agreement(checkpoint, name, group)
    if ratios is not None:
        best = max((0, 1), key=lambda d: ratios[d])
        if ratios[best] >= SN_ESTIMATE_AGREEMENT > ratios[1 - best]:
            if flagged and best == 0:
                return best, (
                    "the stored spectral-norm u, v match a Conv's reshape (dim 0 first: "
                    f"uᵀWv/σ = {ratios[0]:.3g}, against {ratios[1]:.3g} along dim 1); "
                    "--transposed does not apply"
                )
            return best, None
        shown = f"uᵀWv/σ = {ratios[0]:.3g} along dim 0, {ratios[1]:.3g} along dim 1"
    else:
        shown = "the weight or vectors are not finite"
    return flagged, (
        f"in == out channels and the stored u, v do not tell Conv from ConvTranspose ({shown}): "
        f"reshaped along dim {flagged} {how}"
    )


def _sn_agreement(
    checkpoint: Checkpoint, name: str, group: SpectralNormInfo
) -> tuple[float, float] | None:
    """uᵀWv/σ(W) for the dim-0 and dim-1 reshapes (float64); None when not finite."""
    import torch

    assert group.v_key is not None
    weight = checkpoint.load(name).to(torch.float64)
    u = checkpoint.load(group.u_key).to(torch.float64).reshape(-1)
    v = checkpoint.load(group.v_key).to(torch.float64).reshape(-1)
    if not all(bool(torch.isfinite(t).all()) for t in (weight, u, v)):
        return None
    ratios = []
    for dim in (0, 1):
        matrix = as_matrix(weight, dim)
        sigma = largest_singular_value(matrix, Method.AUTO, tol=1e-3, start=v).sigma
        ratios.append(float(torch.dot(u, matrix @ v)) / sigma if sigma > 0 else 0.0)
    return ratios[0], ratios[1]


def _dtype_problem(dtype: str) -> str | None:
    if dtype.startswith(("int", "uint", "bool")):
        return f"integer/bool tensor ({dtype})"
    if dtype.startswith("complex"):
        return f"complex tensor ({dtype}) not supported"
    if dtype not in FLOAT_DTYPES:
        return f"dtype {dtype} not supported"
    return None


def matches(name: str, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> bool:
    """True when ``name`` matches any ``include`` regex (or there are none) and no ``exclude``."""
    return (not include or any(re.search(p, name) for p in include)) and not any(
        re.search(p, name) for p in exclude
    )


def select(
    layers: list[Layer], include: Iterable[str] = (), exclude: Iterable[str] = ()
) -> list[Layer]:
    """Keep layers whose key matches any ``include`` regex (all if none) and no ``exclude``."""
    include, exclude = tuple(include), tuple(exclude)
    return [layer for layer in layers if matches(layer.name, include, exclude)]


def effective_weight(checkpoint: Checkpoint, layer: Layer) -> tuple[torch.Tensor, float | None]:
    """The weight a model really uses, and PyTorch's σ̂ = uᵀWv when spectral norm divides by it.

    Spectral-norm layers give W/σ̂ in float64 (legacy version-0 files: the stored normalized
    weight, σ̂ unknown); other layers give their weight as stored. Raises ``NumericalError`` when
    σ̂ is zero or not finite, where PyTorch itself would produce NaN.
    """
    import torch

    weight = checkpoint.load(layer.name)
    info = layer.spectral_norm
    if info is None:
        return weight, None
    if info.v_key is None:
        if info.effective_key is None:
            raise NumericalError("spectral-norm layer without a stored v vector")
        return checkpoint.load(info.effective_key), None
    matrix = as_matrix(weight, layer.reshape_dim).to(torch.float64)
    u = checkpoint.load(info.u_key).to(torch.float64).reshape(-1)
    v = checkpoint.load(info.v_key).to(torch.float64).reshape(-1)
    estimate = float(torch.dot(u, matrix @ v))
    if not math.isfinite(estimate) or estimate == 0.0:
        raise NumericalError(f"stored σ̂ = uᵀWv is {estimate}: the model's weight would be NaN")
    return weight.to(torch.float64) / estimate, estimate
