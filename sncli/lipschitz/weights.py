"""The tensors a product-bound factor reads, and the small factors computed from them.

Where the checkpoint is read without torch (``Checkpoint.numpy_native``: safetensors, GGUF,
NumPy, Keras, ONNX) weights come as NumPy arrays and the σ kernels run on NumPy
(:mod:`sncli.numerics.spectral_numpy`, :mod:`sncli.numerics.bounds_numpy`); PyTorch files keep
torch tensors and torch's kernels. A convolution's operator norm (:mod:`sncli.numerics.conv`)
runs on NumPy for every format (a torch weight is read as a float64 array).

BatchNorm and PReLU factors are read as NumPy for every format: max|γ|/√(var + ε) and
max(1, max|a|) are a few correctly rounded float64 operations, so NumPy gives torch's numbers
bit for bit.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from sncli.arrays import is_array, to_float64
from sncli.errors import NumericalError
from sncli.layers import BATCHNORM_EPS, effective_weight
from sncli.numerics.floating import check_finite
from sncli.numerics.spectral import as_matrix
from sncli.run import load_weight

if TYPE_CHECKING:
    from sncli.checkpoint import Checkpoint
    from sncli.formats.safetensors import SafetensorsStreamReader
    from sncli.layers import Layer


def is_plain(checkpoint: Checkpoint, layer: Layer) -> bool:
    """The layer's weight is a stored tensor as it is (no parametrization, nothing derived)."""
    return (
        layer.spectral_norm is None
        and layer.weight_norm is None
        and layer.name in checkpoint.tensors
        and layer.name not in checkpoint.unsupported
        and layer.name not in checkpoint.derived
    )


def layer_weight(
    checkpoint: Checkpoint, layer: Layer, reader: SafetensorsStreamReader | None
) -> tuple[Any, float | None]:
    """(the weight the model uses, PyTorch's σ̂ = uᵀWv when spectral norm divides by it):
    NumPy where the checkpoint is read without torch, else torch (:func:`effective_weight`)."""
    arrays = checkpoint.numpy_native
    if is_plain(checkpoint, layer):  # inspect's readinto path: no mmap'd pages left resident
        return load_weight(checkpoint, layer.name, reader, arrays=arrays), None
    if arrays:
        return effective_weight_array(checkpoint, layer)
    return effective_weight(checkpoint, layer)


def effective_weight_array(checkpoint: Checkpoint, layer: Layer) -> tuple[Any, float | None]:
    """:func:`sncli.layers.effective_weight` on NumPy (no torch): W/σ̂ in float64 for a
    spectral-norm layer (legacy files: the stored normalized weight), else the weight as stored
    (a weight-norm pair composed by ``Checkpoint.load_array``)."""
    weight = checkpoint.load_array(layer.name)
    info = layer.spectral_norm
    if info is None:
        return weight, None
    if info.v_key is None:
        if info.effective_key is None:
            raise NumericalError("spectral-norm layer without a stored v vector")
        return checkpoint.load_array(info.effective_key), None
    matrix = to_float64(as_matrix(weight, layer.reshape_dim))
    u = to_float64(checkpoint.load_array(info.u_key)).reshape(-1)
    v = to_float64(checkpoint.load_array(info.v_key)).reshape(-1)
    estimate = float(u @ (matrix @ v))
    if not math.isfinite(estimate) or estimate == 0.0:
        raise NumericalError(f"stored σ̂ = uᵀWv is {estimate}: the model's weight would be NaN")
    return to_float64(weight) / estimate, estimate


def chain_matrix(checkpoint: Checkpoint, layer: Layer) -> Any:
    """The layer's effective weight as a float64 NumPy matrix (out, in), for ECLipsE-Fast."""
    arrays = checkpoint.numpy_native
    weight, _ = (
        effective_weight_array(checkpoint, layer) if arrays else effective_weight(checkpoint, layer)
    )
    matrix = as_matrix(weight, 0)
    if is_array(matrix):
        return to_float64(matrix)
    return matrix.double().numpy()


def batchnorm_lipschitz(checkpoint: Checkpoint, prefix: str, keys: tuple[str, str, str]) -> float:
    """max|γ_c|/√(var_c + ε) of an eval-mode BatchNorm (float64, NumPy). Raises
    ``NumericalError`` on NaN/Inf or a negative running variance."""
    import numpy as np

    gamma = to_float64(checkpoint.load_array(keys[0]))
    var = to_float64(checkpoint.load_array(keys[1]))
    check_finite(gamma)
    check_finite(var)
    if bool((var < 0).any()):
        raise NumericalError(f"{prefix}: negative running_var")
    return float((np.abs(gamma) / np.sqrt(var + BATCHNORM_EPS)).max())


def prelu_lipschitz(checkpoint: Checkpoint, key: str) -> float:
    """max(1, max|a_c|) of a PReLU's stored slopes (float64, NumPy); ``NumericalError`` on
    NaN/Inf."""
    import numpy as np

    slopes = to_float64(checkpoint.load_array(key))
    check_finite(slopes)
    return max(1.0, float(np.abs(slopes).max())) if slopes.size else 1.0
