"""Conv segments of an ONNX graph bounded jointly: residual blocks and conv chains as programs.

A *segment* runs from a tensor p to a tensor q through stride-1 convolutions that keep the
image size (BatchNorm folded into them, a constant bias added), slope-restricted activations
with slopes in [0, β] (ReLU, LeakyReLU/PReLU with slope in [0, 1], tanh, sigmoid, ELU with
α ≤ 1, softplus) and Adds of two such tensors, every conv reading p or an activation output.
Such a segment — a stack of residual blocks relu(x + B·relu(A·x)), a chain conv → act → conv,
a pre-activation block — is a :class:`sncli.numerics.conv_program.ConvProgram`, and
:func:`sncli.numerics.conv_program.program_bound` proves L(q) ≤ ρ·L(p) jointly (Fourier-domain
LipSDP with one multiplier per channel, zero padding exactly as zero padding on a torus that
holds the padding ring). The graph walk takes the smaller of that and the DAG rule's
L(p)·(1 + L(A)L(B))… for q (:func:`sncli.lipschitz.graph._pass_two`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sncli.formats.onnx import OnnxNode
from sncli.lipschitz.ops import _attr, _bn_scale, _Context, _static

if TYPE_CHECKING:
    from sncli.numerics.conv_program import ConvProgram, ConvTerm


@dataclass(frozen=True)
class Segment:
    """A segment p → q, its program, and the nodes in it (for the report)."""

    source: str
    end: str
    program: ConvProgram
    nodes: tuple[str, ...]


#: Ops that pass a tensor through unchanged (in value differences).
_IDENTITY_OPS = ("Identity", "Dropout")


def _conv_term(ctx: _Context, node: OnnxNode, source: int, size: tuple[int, ...]) -> Any:
    """The conv as a :class:`ConvTerm` (BatchNorm folded, groups expanded), or None when it is
    not a stride-1 conv that keeps the image size."""
    import numpy as np

    from sncli.numerics.conv_program import ConvTerm

    if node.op_type != "Conv" or not ctx.is_const(node.inputs[1]):
        return None
    factor = ctx.factors.get(node.name)
    if factor is None or not factor.proven:
        return None
    kernel = ctx.const(node.inputs[1]).astype(np.float64)
    dims = kernel.ndim - 2
    if dims != len(size) or _attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    if any(s != 1 for s in _attr(node, "strides", [1] * dims)):
        return None
    dilations = tuple(int(d) for d in _attr(node, "dilations", [1] * dims))
    pads = list(_attr(node, "pads", [0] * (2 * dims)))
    for a in range(dims):
        if pads[a] + pads[a + dims] != dilations[a] * (kernel.shape[2 + a] - 1):
            return None
    groups = int(_attr(node, "group", 1))
    if groups > 1:  # block-diagonal dense kernel: the same operator
        out_ch, per_group = kernel.shape[:2]
        dense = np.zeros((out_ch, per_group * groups, *kernel.shape[2:]))
        step = out_ch // groups
        for g in range(groups):
            dense[g * step : (g + 1) * step, g * per_group : (g + 1) * per_group] = kernel[
                g * step : (g + 1) * step
            ]
        kernel = dense
    for bn_name, producer in ctx.folded.items():
        if producer.name == node.name:
            bn = next(n for n in ctx.graph.nodes if n.name == bn_name)
            kernel = kernel * _bn_scale(ctx, bn).reshape(-1, *([1] * (dims + 1)))
    return ConvTerm(source, kernel, dilations, tuple(int(p) for p in pads[:dims]))


def _image(ctx: _Context, name: str) -> tuple[int, int, tuple[int, ...]] | None:
    """(batch, channels, spatial size) of a static tensor of rank ≥ 3, else None."""
    shape = _static(ctx.shape(name))
    if shape is None or len(shape) < 3:
        return None
    return shape[0], shape[1], tuple(shape[2:])


def _grow(ctx: _Context, order: list[OnnxNode], start: str) -> tuple[dict, list] | None:
    """Every tensor reachable from ``start`` through segment ops whose variable inputs all are
    in the region, with its expression (a list of ConvTerm over values 0 = start, k =
    activation k), and the activations in order (channels, terms, β, node name)."""
    from sncli.numerics.conv_program import ConvTerm

    image = _image(ctx, start)
    if image is None:
        return None
    batch, _, size = image
    exprs: dict[str, list[ConvTerm]] = {start: [ConvTerm(0)]}
    acts: list[tuple[int, list[ConvTerm], float, str, str]] = []
    producer_seen = False
    for node in order:
        if not producer_seen:
            producer_seen = start in node.outputs or start in {v.name for v in ctx.graph.inputs}
            if start in node.outputs:
                continue
        factor = ctx.factors.get(node.name)
        if not node.outputs or factor is None or not factor.proven:
            continue
        out = node.outputs[0]
        variables = [n for n in node.inputs if n and not ctx.is_const(n)]
        if not variables or any(v not in exprs for v in variables):
            continue
        shape = _image(ctx, out)
        if shape is None or shape[0] != batch or shape[2] != size:
            continue
        expr = _node_expr(ctx, node, variables, exprs, acts, size)
        if expr is not None:
            exprs[out] = expr
    return exprs, acts


def _node_expr(
    ctx: _Context,
    node: OnnxNode,
    variables: list[str],
    exprs: dict,
    acts: list,
    size: tuple[int, ...],
) -> list | None:
    from sncli.numerics.conv_program import ConvTerm

    op = node.op_type
    first = exprs[variables[0]]
    if node.name in ctx.folded or op in _IDENTITY_OPS:
        return first
    if (
        op in ("Add", "Sub")
        and len(variables) == 1
        and (op == "Add" or variables[0] == node.inputs[0])
    ):
        # a constant added (or subtracted): no change in differences, if it does not broadcast
        # the tensor to a larger shape
        if _static(ctx.shape(variables[0])) != _static(ctx.shape(node.outputs[0])):
            return None
        return first
    if op in ("Add", "Sum") and len(variables) == len([n for n in node.inputs if n]):
        shapes = {_static(ctx.shape(v)) for v in variables}
        if len(shapes) != 1:
            return None
        return [t for v in variables for t in exprs[v]]
    if op == "Conv" and variables == [node.inputs[0]]:
        if len(first) != 1 or first[0].kernel is not None:
            return None  # a conv must read x or an activation output (the torus argument)
        return _single(_conv_term(ctx, node, first[0].source, size))
    if node.name in ctx.slopes:
        low, high = ctx.slopes[node.name]
        if low < 0 or high < 0:
            return None
        image = _image(ctx, node.outputs[0])
        assert image is not None
        acts.append((image[1], first, float(high), node.name, node.outputs[0]))
        return [ConvTerm(len(acts))]
    return None


def _single(term: Any) -> list | None:
    return None if term is None else [term]


def _program(ctx: _Context, start: str, exprs: dict, acts: list, end: str) -> ConvProgram | None:
    """The program from ``start`` to ``end``, keeping only the activations ``end`` reads."""
    from sncli.numerics.conv_program import Activation, ConvProgram, ConvTerm

    image = _image(ctx, start)
    assert image is not None
    needed: set[int] = set()
    todo = [t.source for t in exprs[end]]
    while todo:
        k = todo.pop()
        if k == 0 or k in needed:
            continue
        needed.add(k)
        todo += [t.source for t in acts[k - 1][1]]
    if not needed:
        return None
    index = {0: 0}
    for new, k in enumerate(sorted(needed), start=1):
        index[k] = new

    def renumber(terms: list) -> tuple:
        return tuple(ConvTerm(index[t.source], t.kernel, t.dilation, t.pads) for t in terms)

    activations = tuple(
        Activation(acts[k - 1][0], renumber(acts[k - 1][1]), acts[k - 1][2]) for k in sorted(needed)
    )
    if not any(t.kernel is not None for a in activations for t in a.terms):
        return None
    return ConvProgram(image[1], image[2], activations, renumber(exprs[end]))


def _least_cost(ctx: _Context, start: str) -> float:
    """A lower bound on the cost of any program from ``start`` (one activation one channel
    wide, the torus no larger than the image): to skip starts that cannot fit, before any
    kernel is read."""
    image = _image(ctx, start)
    if image is None:
        return math.inf
    size = image[2]
    freqs = math.prod(size) // max(size) * (max(size) // 2 + 1)
    return float(freqs) * (image[1] + 1) ** 3


def find_segments(ctx: _Context, order: list[OnnxNode]) -> list[Segment]:
    """Maximal segments (module docstring), each cut to the last tensor whose program fits
    :data:`sncli.numerics.conv_program.PROGRAM_MAX_COST`; segments follow one another."""
    from sncli.numerics.conv_program import PROGRAM_MAX_COST, program_cost

    starts = []
    for node in order:
        conv = node.op_type == "Conv" and node.inputs and not ctx.is_const(node.inputs[0])
        if conv and node.inputs[0] not in starts:
            starts.append(node.inputs[0])
    position = {name: i for i, node in enumerate(order) for name in node.outputs if name}
    inside: set[str] = set()
    segments: list[Segment] = []
    for start in starts:
        if start in inside or _least_cost(ctx, start) > PROGRAM_MAX_COST:
            continue
        grown = _grow(ctx, order, start)
        if grown is None:
            continue
        exprs, acts = grown
        folded = {n for producer in ctx.folded.values() for n in producer.outputs}
        ends = sorted(  # not a conv's own output when a BatchNorm folded into it follows
            (n for n in exprs if n != start and n not in folded),
            key=lambda n: -position.get(n, -1),
        )
        for end in ends:
            program = _program(ctx, start, exprs, acts, end)
            if program is None or program_cost(program) > PROGRAM_MAX_COST:
                continue
            names = tuple(
                node.name
                for node in order
                if node.outputs
                and node.outputs[0] in exprs
                and position.get(node.outputs[0], -1) <= position.get(end, -1)
            )
            segments.append(Segment(start, end, program, names))
            inside.update(n for n in exprs if position.get(n, -1) < position.get(end, -1))
            break
    return segments
