"""Gated products x·g(x) where g is a piecewise-linear scalar function of x: HardSwish as
exporters write it (``x·Clip(x + 3, 0, 6)/6``, ``x·HardSigmoid(x)``). Such a node is one
scalar function t ↦ t·g(t) applied elementwise, so its Lipschitz constant is sup|d(t·g(t))/dt|,
computed exactly from g's knots (:meth:`Piecewise.product_slope`)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sncli.numerics.floating import DENSE_ROUNDING

if TYPE_CHECKING:
    from sncli.formats.onnx import OnnxNode
    from sncli.lipschitz.ops import _Context


@dataclass(frozen=True)
class Piecewise:
    """A continuous piecewise-linear scalar function: knots (t, g(t)) in increasing t and the
    slopes left of the first and right of the last knot."""

    knots: tuple[tuple[float, float], ...]
    left: float
    right: float

    def map(self, scale: float, shift: float) -> Piecewise:
        """t ↦ scale·g(t) + shift."""
        return Piecewise(
            tuple((t, scale * y + shift) for t, y in self.knots),
            scale * self.left,
            scale * self.right,
        )

    def clip(self, low: float, high: float) -> Piecewise:
        """t ↦ min(max(g(t), low), high): knots added where g crosses a limit (the tails are
        extended past their crossings first)."""
        (t_first, y_first), (t_last, y_last) = self.knots[0], self.knots[-1]
        reach = 1.0
        for slope, y in ((self.left, y_first), (self.right, y_last)):
            for limit in (low, high):
                if slope != 0 and math.isfinite(limit):
                    reach = max(reach, 2 * abs((limit - y) / slope))
        points = [
            (t_first - reach, y_first - self.left * reach),
            *self.knots,
            (t_last + reach, y_last + self.right * reach),
        ]
        clipped: list[tuple[float, float]] = []
        for (t0, y0), (t1, y1) in itertools.pairwise(points):
            clipped.append((t0, min(max(y0, low), high)))
            for limit in (low, high):
                if math.isfinite(limit) and (y0 - limit) * (y1 - limit) < 0:
                    clipped.append((t0 + (limit - y0) * (t1 - t0) / (y1 - y0), limit))
        clipped.append((points[-1][0], min(max(points[-1][1], low), high)))
        left = self.left if low < points[0][1] < high else 0.0
        right = self.right if low < points[-1][1] < high else 0.0
        return Piecewise(tuple(sorted(clipped)), left, right)

    def product_slope(self) -> float | None:
        """sup |d/dt (t·g(t))| (None when unbounded). On a piece g = a·t + b the derivative
        2a·t + b is linear in t, so its largest |value| is at the piece's ends."""
        pieces = list(itertools.pairwise(self.knots))
        best = 0.0
        for (t0, y0), (t1, y1) in pieces:
            if t1 == t0:
                continue
            a = (y1 - y0) / (t1 - t0)
            b = y0 - a * t0
            best = max(best, abs(2 * a * t0 + b), abs(2 * a * t1 + b))
        for slope, (_, y) in ((self.left, self.knots[0]), (self.right, self.knots[-1])):
            if slope != 0:
                return None  # t·(a·t + b) grows without bound
            best = max(best, abs(y))
        return best


#: How far back a gate's scalar ops are followed to reach the gated tensor.
_GATE_DEPTH = 8


def _scalar_const(ctx: _Context, name: str) -> float | None:
    """A constant input that is one number (or all of its entries equal)."""
    if not name or not ctx.is_const(name):
        return None
    value = ctx.const(name)
    if value.size == 0 or value.dtype.kind not in "fiu":
        return None
    flat = value.reshape(-1).astype("float64")
    return float(flat[0]) if bool((flat == flat[0]).all()) and math.isfinite(flat[0]) else None


def _gate_function(ctx: _Context, gate: str, x: str) -> Piecewise | None:
    """g with gate = g(x) elementwise, when only scalar piecewise-linear ops (Add/Sub/Mul/Div
    by a number, Clip, Relu, HardSigmoid) lie between them; else None."""
    steps = []
    name = gate
    for _ in range(_GATE_DEPTH):
        if name == x:
            break
        node = ctx.producers.get(name)
        if node is None:
            return None
        variables = [n for n in node.inputs if n and not ctx.is_const(n)]
        if len(variables) != 1:
            return None
        steps.append((node, variables[0]))
        name = variables[0]
    else:
        return None
    g = Piecewise(((0.0, 0.0),), 1.0, 1.0)
    for node, var in reversed(steps):
        op = node.op_type
        if op in ("Add", "Sub", "Mul", "Div"):
            other = node.inputs[1] if node.inputs[0] == var else node.inputs[0]
            c = _scalar_const(ctx, other)
            if c is None or (op == "Div" and (c == 0 or node.inputs[0] != var)):
                return None
            if op == "Add":
                g = g.map(1.0, c)
            elif op == "Sub":
                g = g.map(1.0, -c) if node.inputs[0] == var else g.map(-1.0, c)
            else:
                g = g.map(c if op == "Mul" else 1.0 / c, 0.0)
        elif op == "Clip":
            bounds = []
            for index, key, default in ((1, "min", -math.inf), (2, "max", math.inf)):
                given = node.inputs[index] if len(node.inputs) > index else ""
                value = _scalar_const(ctx, given) if given else node.attributes.get(key, default)
                if value is None:
                    return None
                bounds.append(float(value))
            g = g.clip(*bounds)
        elif op == "Relu":
            g = g.clip(0.0, math.inf)
        elif op == "HardSigmoid":
            g = g.map(
                float(node.attributes.get("alpha", 0.2)), float(node.attributes.get("beta", 0.5))
            )
            g = g.clip(0.0, 1.0)
        else:
            return None
    return g


def gated_product(ctx: _Context, node: OnnxNode) -> tuple[float, str, str] | None:
    """Mul(x, g(x)) with g piecewise linear (HardSwish as x·Clip(x + 3, 0, 6), x·HardSigmoid(x)):
    (sup|d(t·g(t))/dt|, source, x); None for other products."""
    a, b = node.inputs[0], node.inputs[1]
    for gate, x in ((a, b), (b, a)):
        g = _gate_function(ctx, gate, x)
        if g is None:
            continue
        slope = g.product_slope()
        if slope is not None:
            return (
                slope * (1 + DENSE_ROUNDING),
                "x·g(x), g piecewise linear (HardSwish): max|f'|",
                x,
            )
    return None
