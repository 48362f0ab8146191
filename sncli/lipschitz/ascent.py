"""The multi-start, multi-scale ascent behind the lower bound (:mod:`sncli.lipschitz.lower`).

With the graph rebuilt in float64 NumPy (:mod:`sncli.lipschitz.numpy_graph`, J·v and Jᵀ·u from
one recorded forward pass): starting points at several input scales (Gaussian and uniform in
[0, 1], the range of normalized images), each scored by a short power iteration on J(x)ᵀJ(x);
from the best, ascent on ‖J(x)v‖ with ReLU smoothed (softplus, β annealed upward; the unsmoothed
‖J(x)v‖ is what is recorded), then the difference quotient ‖f(x + hv) − f(x)‖/h of the float64
rebuild at a few steps h, less an allowance for the outputs' rounding (``ROUNDING``). Only a
guide: :mod:`.lower` re-checks the winning pair against the model under onnxruntime before it
reports. Random numbers: torch's for the seed (:class:`sncli.arrays.TorchGenerator`), so the
starts are those of the torch search this replaced.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

#: The float64 quotient's allowance for the rounding of the two outputs, relative to their
#: norms: ‖f(x) − f(y)‖ is reduced by ROUNDING·(‖f(x)‖ + ‖f(y)‖) before it is divided.
ROUNDING = 1024 * 2.0**-53


class _Tape(Protocol):
    value: Any

    def jvp(self, v: Any) -> Any: ...

    def vjp(self, u: Any) -> Any: ...

    def jvp_and_bend(self, v: Any) -> tuple[Any, Any]: ...


class Function(Protocol):
    """The flat float64 function the ascent climbs (:class:`.numpy_graph.FlatGraph`)."""

    def tape(self, z: Any, relu_beta: float | None = None) -> _Tape: ...

    def __call__(self, z: Any) -> Any: ...


@dataclass(frozen=True)
class Pair:
    """x and x + h·v (flat float64 numpy vectors) with the float64 quotient there."""

    x: Any
    y: Any
    ratio: float


def _norm(v: Any) -> float:
    import numpy as np

    return float(np.linalg.norm(v))


def _power(f: Function, x: Any, v: Any, steps: int) -> tuple[Any, float]:
    """``steps`` power iterations on J(x)ᵀJ(x) from v: (unit direction, ‖J(x)v‖ at the last)."""
    tape = f.tape(x)
    value = 0.0
    for _ in range(steps):
        jv = tape.jvp(v)
        w = tape.vjp(jv)
        value = _norm(jv)
        norm = _norm(w)
        if not math.isfinite(norm) or norm == 0.0:
            break
        v = w / norm
    return v, value


def _gradient(f: Function, x: Any, v: Any, beta: float) -> Any | None:
    """∇ₓ‖J(x)v‖ of the smoothed graph, or None where ‖J(x)v‖ is 0 or not finite.

    With u = J(x)v/‖J(x)v‖ it is Σₖ uₖ ∂(J(x)v)ₖ/∂x = d/dε J(x + εv)ᵀu at ε = 0 (second
    derivatives commute): one forward-over-reverse pass of the tape
    (:meth:`.numpy_graph.Tape.jvp_and_bend`), exact, as torch.func.grad through a jvp was.
    """
    jv, grad = f.tape(x, beta).jvp_and_bend(v)
    size = _norm(jv)
    if not math.isfinite(size) or size == 0.0:
        return None
    return grad


def _starts(x0: Any, base: float, effort: int, rng: Any) -> list[Any]:
    """The seeded x, then Gaussian and uniform-[0, 1] points at several scales."""
    n = x0.size
    starts = [x0]
    if effort <= 0:
        return starts
    for scale in (0.3, 1.0, 3.0, 0.1, 10.0)[: 2 + effort]:
        starts.append(scale * base * rng.randn(n))
        starts.append(scale * rng.rand(n))
    for _ in range(effort - 1):
        starts.append(base * rng.randn(n))
        starts.append(rng.rand(n))
    return starts


def _climb(
    f: Function, x: Any, v: Any, steps: int, base: float, deadline: float
) -> tuple[float, Any, Any]:
    """Ascent on ‖J(x)v‖ with ReLU smoothed (β from 2 to 64); the best unsmoothed (value, x, v)."""
    n = x.size
    best = (0.0, x, v)
    for step in range(steps):
        if time.monotonic() > deadline:
            break
        grad = _gradient(f, x, v, 2.0 * 32.0 ** (step / max(1, steps - 1)))
        norm = 0.0 if grad is None else _norm(grad)
        if grad is None or not math.isfinite(norm) or norm == 0.0:
            break
        radius = max(_norm(x), base * math.sqrt(n))
        x = x + 0.02 * radius * grad / norm
        v, value = _power(f, x, v, 2)
        if math.isfinite(value) and value > best[0]:
            best = (value, x.copy(), v)
    return best


def ascend(f: Function, start: Any, *, seed: int, effort: int, deadline: float) -> Pair | None:
    """The best pair found before ``deadline`` (time.monotonic); ``f`` is the flat-vector graph
    in float64 (``f.tape(z, beta)`` with ReLU replaced by softplus(β) when ``beta``)."""
    import numpy as np

    from sncli.arrays import TorchGenerator

    rng = TorchGenerator(seed)
    x0 = np.asarray(start, dtype=np.float64).reshape(-1)
    n = x0.size
    base = max(1.0, _norm(x0) / math.sqrt(n))
    scored: list[tuple[float, Any, Any]] = []
    for x in _starts(x0, base, effort, rng):
        if time.monotonic() > deadline and scored:
            break
        v = rng.randn(n)
        v, value = _power(f, x, v / _norm(v), 3 if effort else 8)
        if math.isfinite(value):
            scored.append((value, x, v))
    if not scored:
        return None
    scored.sort(key=lambda s: -s[0])
    best_value, best_x, best_v = scored[0]
    for _, x, v in scored[: 1 + effort] if effort > 0 else []:
        value, x, v = _climb(f, x.copy(), v, 12 * effort, base, deadline)
        if value > best_value:
            best_value, best_x, best_v = value, x, v
    best: Pair | None = None
    fx = f(best_x)
    radius = max(_norm(best_x) / math.sqrt(n), base)
    for h in (1e-2, 1e-4, 1e-6):
        y = best_x + h * radius * best_v
        fy = f(y)
        change = _norm(fy - fx) - ROUNDING * (_norm(fx) + _norm(fy))
        ratio = change / _norm(y - best_x)
        if math.isfinite(ratio) and (best is None or ratio > best.ratio):
            best = Pair(best_x.copy(), y.copy(), ratio)
    return best
