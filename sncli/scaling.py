"""Scaling a weight to a σ target in its stored dtype: the arithmetic ``normalize`` writes with.

σ is measured again on the values as stored (float64 LAPACK), and the factor is shaved until the
stored weight's σ is at most the target, since rounding to the dtype can push it above.

Every function takes torch tensors or NumPy arrays (``Checkpoint.load_array``: safetensors and
GGUF are normalized without torch). On NumPy the float64 products are the same IEEE operations
and the cast back rounds as torch's ``.to(dtype)`` does (:func:`cast_float64`), so the stored
values are torch's wherever the factor is; σ itself comes from NumPy's LAPACK, which agrees
with torch's to ~1e-15 relative (sncli/numerics/spectral_numpy.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sncli.arrays import bfloat16_from_bits, dtype_name, is_array, to_float64
from sncli.dtypes import UNIT_ROUNDOFF
from sncli.errors import NumericalError
from sncli.layers import BATCHNORM_EPS
from sncli.numerics.spectral import as_matrix, exact_sigma

if TYPE_CHECKING:
    import numpy as np
    import torch

_MAX_SHAVES = 24


def diagonal_norm(gamma: torch.Tensor, running_var: torch.Tensor | None) -> float:
    """max|γ| (norm scales), or BatchNorm's max|γ|/√(running_var + ε)."""
    if is_array(gamma):
        import numpy as np

        array = np.abs(to_float64(gamma))
        if running_var is not None:
            array = array / np.sqrt(to_float64(running_var) + BATCHNORM_EPS)
        return float(array.max()) if array.size else 0.0
    import torch

    values = gamma.to(torch.float64).abs()
    if running_var is not None:
        values = values / torch.sqrt(running_var.to(torch.float64) + BATCHNORM_EPS)
    return float(values.max()) if values.numel() else 0.0


def measure(
    tensor: torch.Tensor, reshape_dim: int, running_var: torch.Tensor | None = None
) -> float:
    if len(tensor.shape) == 1:
        return diagonal_norm(tensor, running_var)
    return exact_sigma(as_matrix(tensor, reshape_dim))


def scaled_weight(
    weight: torch.Tensor,
    plan: Any,
    target: float,
    running_var: torch.Tensor | None = None,
) -> tuple[torch.Tensor, float, int]:
    """Scale in float64, cast to the stored dtype, shave until the stored σ ≤ target.

    ``running_var`` is given for BatchNorm scales, whose factor is max|γ|/√(running_var + ε).
    Returns (new tensor, σ measured on the stored values, number of shaving steps).
    """
    unit = UNIT_ROUNDOFF.get(plan.dtype, 2.0**-8)
    if is_array(weight):
        w64, stored = to_float64(weight), dtype_name(weight)

        def cast(values: Any) -> Any:
            return cast_float64(values, stored)
    else:
        import torch

        w64 = weight.to(torch.float64)

        def cast(values: Any) -> Any:
            return values.to(weight.dtype)

    factor = plan.scale
    for shaves in range(_MAX_SHAVES):
        new = cast(w64 * factor)
        sigma = measure(new, plan.reshape_dim, running_var)
        if sigma <= target:
            return new, sigma, shaves
        factor *= (target / sigma) * (1.0 - min(unit * 2.0 ** (shaves - 3), 0.5))
    raise NumericalError(
        f"could not bring σ to {target} in {plan.dtype} (last {sigma:.9g}); "
        "the dtype is too coarse for this target"
    )


def cast_float64(values: np.ndarray, dtype: str) -> np.ndarray:
    """float64 ``values`` in ``dtype`` (bfloat16 as a :class:`sncli.arrays.BFloat16Array`),
    rounded as torch's ``.to(dtype)`` rounds a float64 tensor: to float32 first (nearest even,
    overflow to ±inf), then to bfloat16 by c10's ``round_to_nearest_even`` on the bits (NaN →
    0x7FC0) or to float16 by NumPy (nearest even). Torch's double → half and double → bfloat16
    conversions go through float32, so a value near a half-way point of the narrow type is
    rounded twice; NumPy's direct ``astype(float16)`` rounds once and differs there
    (tests/test_torch_free_normalize.py checks 10⁵ such values against torch)."""
    import numpy as np

    if dtype == "float64":
        return np.array(values, dtype=np.float64, copy=True)
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"no NumPy cast to {dtype}")
    with np.errstate(over="ignore"):
        single = np.asarray(values, dtype=np.float64).astype(np.float32)
    if dtype == "float32":
        return single
    if dtype == "float16":
        with np.errstate(over="ignore"):
            return single.astype(np.float16)
    bits = single.view(np.uint32)
    rounded = bits >> 16  # in place from here: one uint32 temporary
    rounded &= 1
    rounded += 0x7FFF
    rounded += bits
    rounded >>= 16
    result = rounded.astype(np.uint16)
    nan = np.isnan(single)
    if nan.any():
        result[nan] = 0x7FC0
    return bfloat16_from_bits(result)


def top_vectors(matrix: Any) -> tuple[Any, Any]:
    """Unit u, v with Wv = σu for σ = σ_max, in float64:
    :func:`sncli.numerics.spectral.top_singular_vectors`, and its NumPy twin for an array (the
    same smaller-Gram ``eigh``, on NumPy's LAPACK)."""
    if not is_array(matrix):
        from sncli.numerics.spectral import top_singular_vectors

        return top_singular_vectors(matrix)
    import numpy as np

    w = to_float64(matrix)
    if w.shape[0] <= w.shape[1]:
        _, vectors = np.linalg.eigh(w @ w.T)
        u = vectors[:, -1]
        v = w.T @ u
        return u, v / np.linalg.norm(v)
    _, vectors = np.linalg.eigh(w.T @ w)
    v = vectors[:, -1]
    u = w @ v
    return u / np.linalg.norm(u), v


def stack_plans(plans: list[Any]) -> list[Any]:
    """``plans`` with the experts of each mixture-of-experts stack replaced by one plan that
    writes the stack (named by its key, ``experts`` holding theirs), in first-seen order."""
    import dataclasses

    result: list[Any] = []
    members: dict[str, list[Any]] = {}
    for plan in plans:
        if plan.stack is None:
            result.append(plan)
            continue
        if plan.stack not in members:
            members[plan.stack] = []
            result.append(plan.stack)
        members[plan.stack].append(plan)
    return [
        item
        if not isinstance(item, str)
        else dataclasses.replace(
            members[item][0], name=item, output_name=item, experts=tuple(members[item])
        )
        for item in result
    ]


def scaled_stack(
    checkpoint: Any, plan: Any, target: float, outcome: Callable[..., Any], arrays: bool = False
) -> tuple[dict[str, Any], list[Any]]:
    """A stack with each planned expert scaled by its own factor (``scaled_weight``), the others
    as stored; and ``outcome(...)`` (normalize's ``LayerOutcome``) per scaled expert. The stack
    is read once, and written whole; as NumPy with ``arrays`` (``Checkpoint.load_array``)."""
    if arrays:
        stack = checkpoint.load_array(plan.name).copy()
    else:
        stack = checkpoint.load(plan.name).clone()
    outcomes = []
    for expert in plan.experts:
        part = checkpoint.experts.slices[expert.name]
        weight = stack[part.index].T if part.transposed else stack[part.index]
        new, sigma, shaves = scaled_weight(weight, expert, target)
        stack[part.index] = new.T if part.transposed else new
        outcomes.append(
            outcome(
                expert.name,
                expert.name,
                expert.dtype,
                expert.sigma_before,
                sigma,
                expert.scale,
                shaves,
            )
        )
    return {plan.name: stack}, outcomes
