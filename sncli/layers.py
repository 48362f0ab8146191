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
from sncli.numerics.spectral import as_matrix
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
    what ``torch.nn.utils.spectral_norm`` does.
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
            return "reshape(in, out*k) [transposed conv]"
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
    as PyTorch's spectral_norm does; shapes alone cannot tell them from ordinary convolutions.
    In spectral-norm checkpoints the stored u vector's length settles the question.
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
        if group is not None and kind.is_conv:
            u_len = checkpoint.tensors[group.u_key].numel
            if u_len == info.shape[1] and u_len != info.shape[0]:
                is_transposed = True
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
            )
        )
    for key in checkpoint.non_tensor_keys:
        skipped.append(Skipped(key, "not a tensor"))
    skipped.sort(key=lambda s: natural_key(s.name))
    return Classification(layers=layers, skipped=skipped)


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
