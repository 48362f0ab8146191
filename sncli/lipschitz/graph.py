"""Lipschitz bounds over a model's real graph (ONNX): the DAG rule, per output and jointly.

Every tensor t gets a bound L(t) on its Lipschitz constant (ℓ2) as a function of all graph
inputs together (their concatenation); a graph input has L = 1, a constant L = 0. A node maps
its inputs' bounds to its outputs' bounds by one of two rules:

* sum: L(out) = Σ c_i·L(in_i) — a unary op with constant c (c·L), Add/Sub (L₁ + L₂), Gemm with
  a variable bias;
* rss: L(out) = √(Σ (c_i·L(in_i))²) — Concat, elementwise Max/Min and Where, whose outputs split
  into parts each depending on one input.

Separate graph outputs give the joint bound √(Σ L(out_j)²) (the outputs' concatenation). A
residual x + g(x) gets L(x)·(1 + L(g)) from the sum rule. Each node's factor c is proven by
the op table (:mod:`sncli.lipschitz.ops`, README "Lipschitz on the graph"); an op without a
rule, a product of two variable tensors (attention), recurrences and control flow give no bound
(None), and the report names the node, its op and why. LayerNorm gets its vacuous max|γ|/√ε,
shown but not certified. On maximal chains W_1 → act → … → W_l of constant-weight Gemm/MatMul
(and convs at a small static size, as their unrolled matrices, through Flatten into the Gemm
after them) and slope-restricted activations, :func:`chain_bound` replaces the product of the
factors. Conv segments — stride-1 convs, activations and residual Adds, e.g. a stack of residual
blocks — are bounded jointly by Fourier-domain LipSDP (:mod:`sncli.lipschitz.segments`); each
tensor takes the smallest of the DAG rule and every chain or segment that ends there.

A lower bound is found by a short seeded search with onnxruntime
(:func:`sncli.lipschitz.lower.lower_bound_search`). The per-op factors are in
:mod:`sncli.lipschitz.ops`, the report types in :mod:`sncli.lipschitz.graph_results`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sncli.checkpoint import Checkpoint
from sncli.errors import CheckpointError, InputShapeError, SncliError
from sncli.formats.common import describe, quote
from sncli.formats.onnx import OnnxGraph, OnnxNode, read_onnx_graph
from sncli.lipschitz.caveats import graph_assumptions
from sncli.lipschitz.graph_results import (
    ChainInfo,
    GraphLipschitzReport,
    NodeFactor,
    OutputBound,
    PathStep,
)
from sncli.lipschitz.lower import (
    LOWER_ASCENT_SECONDS,
    LOWER_EFFORT,
    LOWER_SECONDS,
    lower_bound_or_why,
)
from sncli.lipschitz.ops import (
    _broadcast_factor,
    _Context,
    _evaluate_constant,
    _node_rule,
    _NoRule,
    _Rule,
    _static,
    _Vacuous,
    chain_bound,
)
from sncli.lipschitz.segments import Segment, find_segments
from sncli.numerics.floating import DENSE_ROUNDING

# ------------------------------------------------------------------------ the walk


def _topological(graph: OnnxGraph) -> list[OnnxNode]:
    """Nodes in dependency order; a cycle or an undefined input is a CheckpointError."""
    producers: dict[str, int] = {}
    for index, node in enumerate(graph.nodes):
        for name in node.outputs:
            if name:
                producers[name] = index
    known = set(graph.initializers) | {v.name for v in graph.inputs}
    pending = [0] * len(graph.nodes)
    users: dict[int, list[int]] = {}
    for index, node in enumerate(graph.nodes):
        for name in node.inputs:
            if not name or (name in known and name not in producers):
                continue
            if name not in producers:
                raise CheckpointError(
                    f"node {quote(node.name)} reads {quote(name)}, which no node, input or "
                    "initializer defines",
                    graph.path,
                )
            pending[index] += 1
            users.setdefault(producers[name], []).append(index)
    ready = [i for i, count in enumerate(pending) if count == 0]
    order: list[int] = []
    while ready:
        index = ready.pop(0)
        order.append(index)
        for user in users.get(index, []):
            pending[user] -= 1
            if pending[user] == 0:
                ready.append(user)
    if len(order) != len(graph.nodes):
        stuck = next(graph.nodes[i] for i, count in enumerate(pending) if count > 0)
        raise CheckpointError(
            f"the graph has a cycle through node {quote(stuck.name)} ({stuck.op_type})",
            graph.path,
        )
    return [graph.nodes[i] for i in order]


def _pass_one(ctx: _Context, order: list[OnnxNode]) -> None:
    for value in ctx.graph.inputs:
        ctx.variable.add(value.name)
        if value.dtype is None or not value.dtype.startswith(("float", "bfloat")):
            ctx.discrete.add(value.name)
    for node in order:
        if node.name in ctx.folded:
            producer = ctx.folded[node.name]
            ctx.factors[node.name] = NodeFactor(
                node.name, node.op_type, 1.0, f"folded into {producer.name}", True
            )
            ctx.rules[node.outputs[0]] = _Rule([(node.inputs[0], 1.0)])
            ctx.variable.update(n for n in node.outputs if n)
            continue
        try:
            values = _evaluate_constant(ctx, node)
        except Exception as exc:  # the reference evaluator raises many types
            values = None
            ctx.factors[node.name] = NodeFactor(
                node.name, node.op_type, None, "", False, f"cannot evaluate: {describe(exc)}"
            )
        if values is not None:
            for name, value in zip(node.outputs, values, strict=False):
                if name:
                    ctx.constants[name] = value
            continue
        ctx.variable.update(n for n in node.outputs if n)
        _visit(ctx, node)


def _visit(ctx: _Context, node: OnnxNode) -> None:
    try:
        factor, rules = _node_rule(ctx, node)
    except _Vacuous as vac:
        var = next(n for n in node.inputs if n and not ctx.is_const(n))
        factor = NodeFactor(
            node.name,
            node.op_type,
            vac.factor,
            f"{node.op_type}: {vac.source} (vacuous)",
            False,
            f"{node.op_type}'s only proven bound is the vacuous max|γ|/√ε",
            vacuous=True,
        )
        rules = [_Rule([(var, vac.factor)])]
    except _NoRule as exc:
        factor = NodeFactor(node.name, node.op_type, None, "", False, str(exc))
        rules = [None] * len(node.outputs)
    except SncliError:
        raise
    except Exception as exc:  # a malformed node (missing attribute, bad rank): name it
        factor = NodeFactor(
            node.name, node.op_type, None, "", False, f"malformed node: {describe(exc)}"
        )
        rules = [None] * len(node.outputs)
    ctx.factors[node.name] = factor
    for name, rule in zip(node.outputs, rules, strict=False):
        if name:
            ctx.rules[name] = rule
            if factor.op in ("ArgMax", "ArgMin", "NonZero", "Shape"):
                ctx.discrete.add(name)
    for name in node.outputs[1:]:
        if name and node.op_type in ("MaxPool", "Dropout", "TopK"):
            ctx.discrete.add(name)


@dataclass
class _Bound:
    value: float | None
    proven: bool
    parent: str | None = None
    node: str | None = None


def _chains(ctx: _Context, order: list[OnnxNode]) -> list[list[OnnxNode]]:
    """Maximal chains linear → act → linear … → linear whose inner tensors have one consumer."""
    produced = {name: node for node in order for name in node.outputs if name}
    outputs = {o.name for o in ctx.graph.outputs}

    def single_next(node: OnnxNode) -> OnnxNode | None:
        out = node.outputs[0]
        users = ctx.consumers.get(out, [])
        if out in outputs or len(users) != 1:
            return None
        user = users[0]
        if _passthrough(ctx, user):
            return single_next(user)
        return user

    chains = []
    for node in order:
        if node.name not in ctx.linears or not ctx.factors[node.name].proven:
            continue
        start = produced.get(ctx.linears[node.name].var_input)
        if start is not None and start.name in ctx.slopes:
            previous = produced.get(start.inputs[0])
            while previous is not None and _passthrough(ctx, previous):
                if previous.name in ctx.folded:
                    previous = ctx.folded[previous.name]
                    continue
                var = next(n for n in previous.inputs if not ctx.is_const(n))
                previous = produced.get(var)
            if (
                previous is not None
                and previous.name in ctx.linears
                and single_next(previous) is start
                and single_next(start) is node
            ):
                continue  # not the start of a maximal chain
        chain = [node]
        current = node
        while True:
            act = single_next(current)
            if act is None or act.name not in ctx.slopes or not ctx.factors[act.name].proven:
                break
            nxt = single_next(act)
            if nxt is None or nxt.name not in ctx.linears:
                break
            if _through(ctx, ctx.linears[nxt.name].var_input) != act.outputs[0]:
                break
            if ctx.linears[nxt.name].matrix.shape[1] != ctx.linears[current.name].matrix.shape[0]:
                break
            chain += [act, nxt]
            current = nxt
        if len(chain) >= 3:
            chains.append(chain)
    return chains


def _through(ctx: _Context, name: str) -> str:
    """The tensor ``name`` is a pass-through copy of (back through Flatten, bias Adds…)."""
    producer = ctx.producers.get(name)
    while producer is not None and _passthrough(ctx, producer):
        if producer.name in ctx.folded:
            break
        name = next(n for n in producer.inputs if n and not ctx.is_const(n))
        producer = ctx.producers.get(name)
    return name


def _passthrough(ctx: _Context, node: OnnxNode) -> bool:
    """A node that does not change a chain's Lipschitz constant: a BatchNorm folded into the
    linear before it, the Add of a constant bias, or a Flatten/Reshape that keeps the batch
    axis (row-major order per sample: the unrolled conv's rows are the Gemm's columns)."""
    if node.name in ctx.folded:
        return True
    if node.op_type in ("Flatten", "Reshape"):
        before, after = _static(ctx.shape(node.inputs[0])), _static(ctx.shape(node.outputs[0]))
        factor = ctx.factors.get(node.name)
        return (
            before is not None
            and after is not None
            and len(before) >= 2
            and len(after) >= 2
            and before[0] == after[0]
            and factor is not None
            and factor.proven
        )
    if node.op_type != "Add" or len(node.inputs) != 2:
        return False
    factor = ctx.factors.get(node.name)
    variables = [n for n in node.inputs if not ctx.is_const(n)]
    return (
        len(variables) == 1
        and factor is not None
        and factor.proven
        and (_broadcast_factor(ctx, variables[0], node.outputs[0]) == 1.0)
    )


def _chain_end_output(ctx: _Context, node: OnnxNode) -> str:
    out = node.outputs[0]
    users = ctx.consumers.get(out, [])
    while len(users) == 1 and _passthrough(ctx, users[0]):
        out = users[0].outputs[0]
        users = ctx.consumers.get(out, [])
    return out


def _pass_two(
    ctx: _Context,
    order: list[OnnxNode],
    chains: list[list[OnnxNode]],
    chain_seconds: float | None = None,
    segments: list[tuple[Segment, float, str]] = (),
) -> tuple[dict[str, _Bound], list[ChainInfo]]:
    bounds: dict[str, _Bound] = {v.name: _Bound(1.0, True) for v in ctx.graph.inputs}
    for name in ctx.discrete & set(bounds):
        bounds[name] = _Bound(None, False)
    ends: dict[str, list[tuple[str, float, int]]] = {}
    infos = []
    for chain in chains:
        linears = [n for n in chain if n.name in ctx.linears]
        acts = [ctx.slopes[n.name] for n in chain if n.name in ctx.slopes]
        alpha, beta = min(a for a, _ in acts), max(b for _, b in acts)
        weights = [ctx.linears[n.name].matrix for n in linears]
        product = math.prod(ctx.factors[n.name].factor or 0.0 for n in chain)
        seconds = chain_seconds
        if any({n.name for n in chain} <= set(s.nodes) for s, _, _ in segments):
            seconds = 0.0  # inside a conv segment (unrolled convs): ECLipsE-Fast only
        value, method = chain_bound(weights, alpha, beta, product, seconds)
        value = min(value, product)
        start = ctx.linears[chain[0].name].var_input
        ends.setdefault(_chain_end_output(ctx, chain[-1]), []).append((start, value, -1))
        infos.append(ChainInfo(tuple(n.name for n in chain), value, product, method, True))
    for index, (segment, value, _) in enumerate(segments):
        ends.setdefault(segment.end, []).append((segment.source, value, index))
    rule_ratio: dict[int, float] = {}
    for node in order:
        for name in node.outputs:
            if not name or name in ctx.constants:
                continue
            bounds[name] = _combine(ctx, bounds, name, node)
            for source, value, index in ends.get(name, []):
                base = bounds.get(source, _Bound(None, False))
                if base.value is not None and bounds[name].value is not None:
                    if index < 0:  # a dense chain
                        chained = base.value * value
                        if chained < bounds[name].value:
                            bounds[name] = _Bound(
                                chained, bounds[name].proven, bounds[name].parent, node.name
                            )
                        continue
                    chained = base.value * value * (1 + DENSE_ROUNDING)
                    if base.value > 0:
                        rule_ratio[index] = bounds[name].value / base.value
                    if chained < bounds[name].value:
                        bounds[name] = _Bound(
                            chained, bounds[name].proven and base.proven, source, node.name
                        )
    for index, (segment, value, method) in enumerate(segments):
        product = math.prod(ctx.factors[n].factor or 0.0 for n in segment.nodes)
        ratio = rule_ratio.get(index)
        rule = "" if ratio is None else f"; the DAG rule gives {ratio:.6g}"
        infos.append(ChainInfo(segment.nodes, value, product, method + rule, True))
    return bounds, infos


def _segment_bounds(
    ctx: _Context, order: list[OnnxNode], seconds: float | None
) -> list[tuple[Segment, float, str]]:
    """Each conv segment's proven bound (:mod:`sncli.lipschitz.segments`); a segment whose
    certificate fails is left to the DAG rule. ``seconds`` 0 skips them (the old bound)."""
    from sncli.numerics.conv_program import PROGRAM_SECONDS, program_bound

    if seconds is not None and seconds <= 0:
        return []
    found = []
    for segment in find_segments(ctx, order):
        try:
            result = program_bound(segment.program, PROGRAM_SECONDS if seconds is None else seconds)
        except (ValueError, ArithmeticError, SncliError):
            continue
        method = (
            f"Fourier LipSDP over a conv segment ({len(segment.program.activations)} "
            f"activations, {'×'.join(map(str, result.torus))} torus, per-channel multipliers)"
        )
        found.append((segment, result.bound, method))
    return found


def _combine(ctx: _Context, bounds: dict[str, _Bound], name: str, node: OnnxNode) -> _Bound:
    rule = ctx.rules.get(name)
    factor = ctx.factors.get(node.name)
    if rule is None or factor is None:
        return _Bound(None, False, None, node.name)
    parts = []
    proven = factor.proven
    for source, coefficient in rule.terms:
        if source in ctx.constants or (ctx.is_const(source) and source not in bounds):
            continue
        base = bounds.get(source)
        if base is None or base.value is None:
            return _Bound(None, False, source, node.name)
        proven = proven and base.proven
        parts.append((coefficient * base.value, source))
    if not parts:
        return _Bound(0.0, proven, None, node.name)
    if rule.mode == "rss":
        value = math.sqrt(sum(p * p for p, _ in parts)) * (1 + DENSE_ROUNDING)
    else:
        value = sum(p for p, _ in parts) * (1 + DENSE_ROUNDING)
    parent = max(parts, key=lambda p: p[0])[1]
    return _Bound(value, proven, parent, node.name)


def _path(ctx: _Context, bounds: dict[str, _Bound], output: str) -> list[PathStep]:
    steps = []
    name: str | None = output
    seen = set()
    while name is not None and name in bounds and name not in seen:
        seen.add(name)
        bound = bounds[name]
        if bound.node is None:
            break
        factor = ctx.factors[bound.node]
        steps.append(PathStep(factor.name, factor.op, factor.factor, bound.value, bound.proven))
        name = bound.parent
    return steps[::-1]


def _ancestors(ctx: _Context, order: list[OnnxNode]) -> set[str]:
    """Names of the nodes some graph output depends on."""
    produced = {name: node for node in order for name in node.outputs if name}
    todo = [o.name for o in ctx.graph.outputs]
    seen: set[str] = set()
    nodes: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in produced:
            continue
        seen.add(name)
        node = produced[name]
        if name in ctx.constants:
            continue
        nodes.add(node.name)
        todo += [n for n in node.inputs if n]
    return nodes


def graph_lipschitz(
    path: str | os.PathLike[str] | Checkpoint,
    *,
    grid: int | None = None,
    seed: int = 0,
    lower: bool = True,
    budget: int = 192,
    progress: Callable[[str], None] | None = None,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    lower_seconds: float = LOWER_SECONDS,
    lower_effort: int = LOWER_EFFORT,
    chain_seconds: float | None = None,
) -> GraphLipschitzReport:
    """The DAG bound of an ONNX model, per output and jointly, with a searched lower bound.

    ``input_shapes`` fixes the inputs' dynamic dims (``--input-shape``; the key "" is the only
    input); dims left dynamic after the defaults of :func:`read_onnx_graph` are refused with
    an :class:`InputShapeError` naming each input, before any factor is computed. The search
    for a lower bound never costs the bound (:func:`lower_bound_or_why`; ``lower_effort`` sets
    its multi-start ascent, 0 for the single power iteration, and the ascent's time:
    ``lower_effort`` × the larger of 4 s and the bound's own time); ``chain_seconds`` is each dense
    chain's budget for LipSDP-Neuron's descent (:func:`chain_bound`; 0: ECLipsE-Fast alone) and
    each conv segment's for its multipliers (default 3 s; 0: no segments, the DAG rule there).
    """
    import time

    began = time.perf_counter()
    path = Path(path.path if isinstance(path, Checkpoint) else path)
    graph = read_onnx_graph(path, input_shapes)
    if not graph.outputs:
        raise CheckpointError("the graph has no outputs", path)
    if graph.dynamic:
        raise InputShapeError(
            f"the bound needs static input shapes, and {'; '.join(graph.dynamic)} "
            f"{'is' if len(graph.dynamic) == 1 else 'are'} dynamic: give "
            + ", ".join(f"--input-shape {_shape_hint(d)}" for d in graph.dynamic),
            path,
        )
    order = _topological(graph)
    ctx = _Context(graph, grid)
    if progress:
        progress("factors")
    _pass_one(ctx, order)
    chains = _chains(ctx, order)
    notes = list(graph.notes)
    # The DAG rule alone first: where it leaves every output unbounded, chains and segments
    # cannot help (they only multiply a bound their start already has), so their time budgets
    # are not spent (ppocr's cls/det models: 41 s → 4.4 s).
    bounds, infos = _pass_two(ctx, order, [], 0.0, [])
    if not _all_unbounded(graph, ctx, bounds):
        segments = _segment_bounds(ctx, order, chain_seconds)
        bounds, infos = _pass_two(ctx, order, chains, chain_seconds, segments)
    elif chains:
        notes.append("no output has a bound, so no dense chain or conv segment was bounded")
    outputs = []
    for value in graph.outputs:
        if value.name in ctx.constants:
            outputs.append(OutputBound(value.name, 0.0, True))
            continue
        bound = bounds.get(value.name, _Bound(None, False))
        certified = bound.value is not None and bound.proven
        outputs.append(OutputBound(value.name, bound.value, certified))
    used = _ancestors(ctx, order)
    nodes = [ctx.factors[n.name] for n in order if n.name in ctx.factors and n.name in used]
    largest = max(
        (o for o in outputs), key=lambda o: -1.0 if o.bound is None else o.bound, default=None
    )
    unbounded = next((o for o in outputs if o.bound is None), None)
    shown = unbounded or largest
    path_steps = _path(ctx, bounds, shown.name) if shown is not None else []
    proven = [n.factor for n in nodes if n.factor is not None and n.proven]
    product = math.prod(proven) if proven else None
    seconds = {"bound": time.perf_counter() - began}
    found = None
    if lower:
        if progress:
            progress("lower bound")
        found, why = lower_bound_or_why(
            graph,
            seed=seed,
            budget=budget,
            order=order,
            constants=ctx.constants,
            seconds=lower_seconds,
            effort=lower_effort,
            ascent_seconds=lower_effort * max(LOWER_ASCENT_SECONDS, seconds["bound"]),
        )
        if why:
            notes.append(f"no lower bound: {why}")
        joint = [o.bound for o in outputs]
        if found is not None and None not in joint:
            bound = math.sqrt(sum(v * v for v in joint if v is not None))
            if found.value > bound:  # a lower bound above a proof: a bug, never printed
                notes.append(
                    f"no lower bound: the search's ratio {found.value:.9g} exceeds the bound "
                    f"{bound:.9g}, which cannot be (please report this model)"
                )
                found = None
        seconds["lower"] = time.perf_counter() - began - seconds["bound"]
    report = GraphLipschitzReport(
        checkpoint=str(path),
        nodes=nodes,
        outputs=outputs,
        path=path_steps,
        chains=infos,
        lower=found,
        assumptions=graph_assumptions(graph, nodes),
        caveats=[f"node {n.name} ({n.op}): {n.why}" for n in nodes if not n.proven],
        notes=notes,
        product=product,
        seconds=seconds,
    )
    return report


def _all_unbounded(graph: OnnxGraph, ctx: _Context, bounds: dict[str, _Bound]) -> bool:
    """Whether no graph output has a bound (constant outputs have one: 0)."""
    return all(
        v.name not in ctx.constants and bounds.get(v.name, _Bound(None, False)).value is None
        for v in graph.outputs
    )


def _shape_hint(dynamic: str) -> str:
    """``'x' 1×3×?×?`` → ``x=1x3xHxW`` (the option's form, with letters for the unknowns)."""
    name, _, dims = dynamic.rpartition(" ")
    parts = dims.split("×")
    unknown = [i for i, d in enumerate(parts) if not d.isdigit()]
    letters = ["H", "W"] if len(unknown) == 2 and len(parts) == 4 else ["L"]
    if len(unknown) > len(letters):
        letters = [f"D{i + 1}" for i in range(len(unknown))]
    for index, letter in zip(unknown, letters, strict=True):
        parts[index] = letter
    return f"{name.strip(chr(39))}={'x'.join(parts)}"


def is_graph_model(path: str | Path) -> bool:
    """Whether ``lipschitz`` should bound this file's graph (an ONNX model)."""
    from sncli.formats import sniff_format

    candidate = Path(path)
    if not candidate.is_file():
        return False
    try:
        return sniff_format(candidate) == "onnx"
    except SncliError:
        return False
