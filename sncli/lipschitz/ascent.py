"""The multi-start, multi-scale ascent behind the lower bound (:mod:`sncli.lipschitz.lower`).

With the graph rebuilt in torch in float64 (:mod:`sncli.lipschitz.torch_graph`): starting
points at several input scales (Gaussian and uniform in [0, 1], the range of normalized images),
each scored by a short power iteration on J(x)ᵀJ(x); from the best, ascent on ‖J(x)v‖ with ReLU
smoothed (softplus, β annealed upward; the unsmoothed ‖J(x)v‖ is what is recorded), then the
difference quotient ‖f(x + hv) − f(x)‖/h of the float64 rebuild at a few steps h, less an
allowance for the outputs' rounding (``ROUNDING``). Only a guide:
:mod:`.lower` re-checks the winning pair against the model under onnxruntime before it reports.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: The float64 quotient's allowance for the rounding of the two outputs, relative to their
#: norms: ‖f(x) − f(y)‖ is reduced by ROUNDING·(‖f(x)‖ + ‖f(y)‖) before it is divided.
ROUNDING = 1024 * 2.0**-53


@dataclass(frozen=True)
class Pair:
    """x and x + h·v (flat float64 numpy vectors) with the float64 quotient there."""

    x: Any
    y: Any
    ratio: float


def _power(g: Callable[[Any], Any], x: Any, v: Any, steps: int) -> tuple[Any, float]:
    """``steps`` power iterations on J(x)ᵀJ(x) from v: (unit direction, ‖J(x)v‖ at the last)."""
    import torch

    value = 0.0
    for _ in range(steps):
        _, jv = torch.func.jvp(g, (x,), (v,))
        _, pull = torch.func.vjp(g, x)
        (w,) = pull(jv)
        value = float(torch.linalg.vector_norm(jv))
        norm = torch.linalg.vector_norm(w)
        if not bool(torch.isfinite(norm)) or float(norm) == 0.0:
            break
        v = w / norm
    return v, value


def _starts(x0: Any, base: float, effort: int, gen: Any) -> list[Any]:
    """The seeded x, then Gaussian and uniform-[0, 1] points at several scales."""
    import torch

    n = x0.numel()
    starts = [x0]
    if effort <= 0:
        return starts
    for scale in (0.3, 1.0, 3.0, 0.1, 10.0)[: 2 + effort]:
        starts.append(scale * base * torch.randn(n, generator=gen, dtype=torch.float64))
        starts.append(scale * torch.rand(n, generator=gen, dtype=torch.float64))
    for _ in range(effort - 1):
        starts.append(base * torch.randn(n, generator=gen, dtype=torch.float64))
        starts.append(torch.rand(n, generator=gen, dtype=torch.float64))
    return starts


def _climb(
    build: Callable[[float | None], Callable[[Any], Any]],
    x: Any,
    v: Any,
    steps: int,
    base: float,
    deadline: float,
) -> tuple[float, Any, Any]:
    """Ascent on ‖J(x)v‖ with ReLU smoothed (β from 2 to 64); the best unsmoothed (value, x, v)."""
    import torch

    exact = build(None)
    n = x.numel()
    best = (0.0, x, v)
    for step in range(steps):
        if time.monotonic() > deadline:
            break
        smooth = build(2.0 * 32.0 ** (step / max(1, steps - 1)))

        def along(z: Any, v: Any = v, smooth: Any = smooth) -> Any:
            return torch.linalg.vector_norm(torch.func.jvp(smooth, (z,), (v,))[1])

        grad = torch.func.grad(along)(x)
        norm = float(torch.linalg.vector_norm(grad))
        if not math.isfinite(norm) or norm == 0.0:
            break
        radius = max(float(torch.linalg.vector_norm(x)), base * math.sqrt(n))
        x = x + 0.02 * radius * grad / norm
        v, value = _power(exact, x, v, 2)
        if math.isfinite(value) and value > best[0]:
            best = (value, x.clone(), v)
    return best


def ascend(
    build: Callable[[float | None], Callable[[Any], Any]],
    start: Any,
    *,
    seed: int,
    effort: int,
    deadline: float,
) -> Pair | None:
    """The best pair found before ``deadline`` (time.monotonic); ``build(beta)`` gives the
    flat-vector function in float64, with ReLU replaced by softplus(β) when ``beta``."""
    import torch

    exact = build(None)
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.as_tensor(start, dtype=torch.float64)
    n = x0.numel()
    base = max(1.0, float(torch.linalg.vector_norm(x0)) / math.sqrt(n))
    scored: list[tuple[float, Any, Any]] = []
    for x in _starts(x0, base, effort, gen):
        if time.monotonic() > deadline and scored:
            break
        v = torch.randn(n, generator=gen, dtype=torch.float64)
        v, value = _power(exact, x, v / torch.linalg.vector_norm(v), 3 if effort else 8)
        if math.isfinite(value):
            scored.append((value, x, v))
    if not scored:
        return None
    scored.sort(key=lambda s: -s[0])
    best_value, best_x, best_v = scored[0]
    for _, x, v in scored[: 1 + effort] if effort > 0 else []:
        value, x, v = _climb(build, x.clone(), v, 12 * effort, base, deadline)
        if value > best_value:
            best_value, best_x, best_v = value, x, v
    best: Pair | None = None
    with torch.no_grad():
        fx = exact(best_x)
        radius = max(float(torch.linalg.vector_norm(best_x)) / math.sqrt(n), base)
        for h in (1e-2, 1e-4, 1e-6):
            y = best_x + h * radius * best_v
            fy = exact(y)
            change = float(torch.linalg.vector_norm(fy - fx)) - ROUNDING * float(
                torch.linalg.vector_norm(fx) + torch.linalg.vector_norm(fy)
            )
            ratio = change / float(torch.linalg.vector_norm(y - best_x))
            if math.isfinite(ratio) and (best is None or ratio > best.ratio):
                best = Pair(best_x.numpy().copy(), y.numpy().copy(), ratio)
    return best
