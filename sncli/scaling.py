"""Scaling a weight to a σ target in its stored dtype: the arithmetic ``normalize`` writes with.

σ is measured again on the values as stored (float64 LAPACK), and the factor is shaved until the
stored weight's σ is at most the target, since rounding to the dtype can push it above.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sncli.dtypes import UNIT_ROUNDOFF
from sncli.errors import NumericalError
from sncli.layers import BATCHNORM_EPS
from sncli.numerics.spectral import as_matrix, exact_sigma

if TYPE_CHECKING:
    import torch

_MAX_SHAVES = 24


def diagonal_norm(gamma: torch.Tensor, running_var: torch.Tensor | None) -> float:
    """max|γ| (norm scales), or BatchNorm's max|γ|/√(running_var + ε)."""
    import torch

    values = gamma.to(torch.float64).abs()
    if running_var is not None:
        values = values / torch.sqrt(running_var.to(torch.float64) + BATCHNORM_EPS)
    return float(values.max()) if values.numel() else 0.0


def measure(
    tensor: torch.Tensor, reshape_dim: int, running_var: torch.Tensor | None = None
) -> float:
    if tensor.dim() == 1:
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
    import torch

    unit = UNIT_ROUNDOFF.get(plan.dtype, 2.0**-8)
    w64 = weight.to(torch.float64)
    factor = plan.scale
    for shaves in range(_MAX_SHAVES):
        new = (w64 * factor).to(weight.dtype)
        sigma = measure(new, plan.reshape_dim, running_var)
        if sigma <= target:
            return new, sigma, shaves
        factor *= (target / sigma) * (1.0 - min(unit * 2.0 ** (shaves - 3), 0.5))
    raise NumericalError(
        f"could not bring σ to {target} in {plan.dtype} (last {sigma:.9g}); "
        "the dtype is too coarse for this target"
    )


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
    checkpoint: Any, plan: Any, target: float, outcome: Callable[..., Any]
) -> tuple[dict[str, Any], list[Any]]:
    """A stack with each planned expert scaled by its own factor (``scaled_weight``), the others
    as stored; and ``outcome(...)`` (normalize's ``LayerOutcome``) per scaled expert. The stack
    is read once, and written whole."""
    stack = checkpoint.load(plan.name).clone()
    outcomes = []
    for expert in plan.experts:
        part = checkpoint.experts.slices[expert.name]
        weight = stack[part.index].t() if part.transposed else stack[part.index]
        new, sigma, shaves = scaled_weight(weight, expert, target)
        stack[part.index] = new.t() if part.transposed else new
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
