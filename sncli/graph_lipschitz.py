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
the op table (:data:`OP_TABLE`, README "Lipschitz on the graph"); an op without a rule, a product
of two variable tensors (attention), recurrences and control flow give no bound (None), and the
report names the node, its op and why. LayerNorm gets its vacuous max|γ|/√ε, shown but not
certified. On maximal chains W_1 → act → … → W_l of constant-weight Gemm/MatMul and
slope-restricted activations, :func:`chain_bound` replaces the product of the factors.

A lower bound is found by a short seeded search with onnxruntime (:func:`lower_bound_search`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sncli.errors import CheckpointError, InputShapeError, SncliError
from sncli.formats.common import describe, quote
from sncli.formats.onnx import OnnxGraph, OnnxNode, read_onnx_graph

if TYPE_CHECKING:
    import numpy as np

#: BatchNormalization's default epsilon in ONNX.
ONNX_BN_EPS = 1e-5
#: The lower-bound search's wall-clock budget (seconds); what it found by then is kept.
LOWER_SECONDS = 60.0
#: Relative allowance for float64 rounding in σ of small matrices and folded weights.
ROUNDING = 1e-12
#: Known Lipschitz constants of smooth activations: max |f'|, rounded up (checked in tests).
GELU = 1.1290  # Φ(x) + xφ(x) at x = √2: 1.128904…
GELU_TANH = 1.1291  # tanh approximation: 1.128993…
SILU = 1.0999  # σ(x)(1 + x(1 − σ(x))): 1.099839…
MISH = 1.0886  # 1.088498…
SELU = 1.0507009873554805 * 1.6732632423543772 * (1 + 1e-15)  # scale·alpha
SOFTMAX = 0.5  # ‖diag(p) − ppᵀ‖₂ ≤ ½
ERF = 2.0 / math.sqrt(math.pi) * (1 + 1e-15)

#: Activations with a slope range [α, β] usable by chain bounds (ECLipsE): op → (α, β).
_SLOPES_FIXED = {
    "Relu": (0.0, 1.0),
    "Tanh": (0.0, 1.0),
    "Sigmoid": (0.0, 0.25),
    "Softplus": (0.0, 1.0),
}
#: Ops that only move, select or copy entries once: factor 1.
SHAPE_OPS = frozenset(
    {
        "Identity",
        "Dropout",
        "Flatten",
        "Reshape",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Slice",
        "Split",
        "DepthToSpace",
        "SpaceToDepth",
        "Relu",
        "Abs",
        "Neg",
        "Clip",
        "Tanh",
        "Softplus",
        "Softsign",
        "Celu",
        "GlobalMaxPool",
        "ReduceMax",
        "ReduceMin",
        "ReduceL2",
    }
)
#: Ops that need a rule we do not have, with the reason shown.
NOT_LIPSCHITZ = {
    "LSTM": "recurrent layer: its Lipschitz constant over a sequence is not bounded by its weights",
    "GRU": "recurrent layer: its Lipschitz constant over a sequence is not bounded by its weights",
    "RNN": "recurrent layer: its Lipschitz constant over a sequence is not bounded by its weights",
    "Loop": "control flow (Loop): the number of iterations is not bounded",
    "If": "control flow (If): branches switch discontinuously",
    "Scan": "control flow (Scan): a recurrence",
    "Exp": "not globally Lipschitz",
    "Log": "not globally Lipschitz",
    "Sqrt": "not globally Lipschitz",
    "Reciprocal": "not globally Lipschitz",
    "Pow": "not globally Lipschitz",
    "Round": "discontinuous",
    "Floor": "discontinuous",
    "Ceil": "discontinuous",
    "Sign": "discontinuous",
    "ArgMax": "discontinuous (an index)",
    "ArgMin": "discontinuous (an index)",
    "TopK": "selects by value; its indices are discontinuous",
    "NonZero": "data-dependent shape",
    "ThresholdedRelu": "discontinuous",
}
_NORMS = ("LayerNormalization", "InstanceNormalization", "GroupNormalization")


@dataclass(frozen=True)
class NodeFactor:
    """One node's factor: how much it can stretch its variable input(s), and on what grounds.

    ``factor`` is None when no bound is known (``why`` says why); ``proven`` when it is a proof
    (a vacuous LayerNorm factor is shown but not proven, ``vacuous`` marks it).
    """

    name: str
    op: str
    factor: float | None
    source: str
    proven: bool
    why: str = ""
    vacuous: bool = False
    lower: float | None = None


@dataclass(frozen=True)
class OutputBound:
    name: str
    bound: float | None
    certified: bool


@dataclass(frozen=True)
class PathStep:
    """A node on the path of the largest contribution, with the bound reached after it."""

    node: str
    op: str
    factor: float | None
    running: float | None
    proven: bool


@dataclass(frozen=True)
class LowerBound:
    """max ‖f(x) − f(y)‖/‖x − y‖ found by a seeded search: a true lower bound on Lip(f)."""

    value: float
    evaluations: int
    method: str


@dataclass(frozen=True)
class ChainInfo:
    """A maximal chain W_1 → act → … → W_l and what bounds it."""

    nodes: tuple[str, ...]
    bound: float
    product: float
    method: str
    proven: bool


@dataclass(frozen=True)
class GraphLipschitzReport:
    checkpoint: str
    nodes: list[NodeFactor]
    outputs: list[OutputBound]
    path: list[PathStep]
    chains: list[ChainInfo]
    lower: LowerBound | None
    assumptions: list[str]
    caveats: list[str]
    notes: list[str] = field(default_factory=list)
    #: ∏ of the proven factors on every node (the "product of layer σ" of a state dict).
    product: float | None = None
    #: Wall seconds of the bound ("bound") and of the lower-bound search ("lower").
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def bound(self) -> float | None:
        """The joint bound √(Σ L_j²) over the outputs; None when some output has none."""
        values = [o.bound for o in self.outputs]
        if not values or any(v is None for v in values):
            return None
        return math.sqrt(sum(v * v for v in values if v is not None))

    @property
    def log10_bound(self) -> float | None:
        bound = self.bound
        if bound is None:
            return None
        return -math.inf if bound == 0 else math.log10(bound)

    @property
    def certified(self) -> bool:
        return self.bound is not None and all(o.certified for o in self.outputs)

    @property
    def problems(self) -> list[NodeFactor]:
        """Nodes on the way to an output whose factor is not proven."""
        return [n for n in self.nodes if not n.proven]

    def statement(self) -> str:
        what = (
            "For any two inputs x, y, ‖f(x) − f(y)‖ ≤ L·‖x − y‖ (ℓ2, all graph inputs and all "
            "outputs together)"
        )
        if self.certified:
            return (
                f"{what}. L is certified: the bound follows the model's graph node by node and "
                "every node's factor is proven."
            )
        shown = "; ".join(
            f"node {n.name} ({n.op}): {n.why or 'not proven'}" for n in self.problems[:3]
        )
        more = f" and {len(self.problems) - 3} more" if len(self.problems) > 3 else ""
        if self.bound is None:
            return f"{what}. No bound: {shown}{more}."
        return (
            f"{what}. L is an upper bound but NOT certified: {shown}{more}. The vacuous factor "
            "is a valid bound, far above the true constant."
        )


# ------------------------------------------------------------------------ numerics per op


def _sigma_upper(matrix: np.ndarray) -> tuple[float, float, str]:
    """(certified upper, lower, method) of σ_max of a float64 matrix."""
    import torch

    from sncli.numerics.bounds import sigma_interval

    w = torch.from_numpy(matrix.astype("float64", copy=False))
    if w.numel() == 0:
        return 0.0, 0.0, "empty"
    if min(w.shape) <= 256:
        import numpy as np

        sigma = float(np.linalg.norm(matrix, 2)) if matrix.size else 0.0
        return sigma * (1 + ROUNDING), sigma * (1 - ROUNDING), "dense float64 SVD"
    interval = sigma_interval(w)
    return interval.upper, interval.lower, interval.upper_method


def chain_bound(
    weights: Sequence[np.ndarray], alpha: float, beta: float, product: float | None = None
) -> tuple[float, str]:
    """A certified bound for W_l ∘ act ∘ … ∘ act ∘ W_1, activations slope-restricted in [α, β].

    The product ∏σ(W_i)·max(|α|, |β|)^(l−1) always holds; ECLipsE-Fast
    (``sncli.numerics.eclipse.eclipse_fast_bound``, Xu & Sivaranjani 2024) when that module is
    present, and the smaller of the two (both are proofs) is returned. The one switch for the
    chain method.
    """
    slope = max(abs(alpha), abs(beta))
    if product is None:  # the caller may pass the product of its certified factors
        product = math.prod(_sigma_upper(w)[0] for w in weights) * slope ** (len(weights) - 1)
    try:
        from sncli.numerics.eclipse import eclipse_fast_bound  # type: ignore[import-not-found]
    except ImportError:
        return product, "product of σ (ECLipsE-Fast not available)"
    try:
        eclipse = float(eclipse_fast_bound(list(weights), alpha, beta))
    except (ValueError, ArithmeticError, SncliError):  # outside its conditions: the product
        return product, "product of σ (ECLipsE-Fast refused this chain)"
    if math.isfinite(eclipse) and eclipse < product:
        return eclipse, "ECLipsE-Fast"
    return product, "product of σ (≤ ECLipsE-Fast here)"


#: Up to this many outputs × inputs a 1-D pool's norm is the exact σ of its dense matrix;
#: above, the Schur bound √(max row sum · max column sum) in O(out·k) time and O(n) memory.
POOL_DENSE = 1 << 20


def _pool_rows(
    n: int, k: int, s: int, d: int, pads: tuple[int, int], out: int, include: bool
) -> Iterator[tuple[list[int], float]]:
    """Each output's (taps inside the input, weight per tap) of a 1-D average pool. The
    divisor is the number of taps inside the input (``include``: inside the padded input
    [−begin, n + end)), as PyTorch and onnxruntime divide; any smaller divisor would only raise
    the entries (≥ 0), so σ stays an upper bound."""
    begin, end = pads
    for j in range(out):
        taps = [j * s - begin + i * d for i in range(k)]
        valid = [t for t in taps if 0 <= t < n]
        inside = [t for t in taps if -begin <= t < n + end] if include else valid
        yield valid, 1.0 / max(len(inside), 1)


def _pool_matrix(
    n: int, k: int, s: int, d: int, pads: tuple[int, int], out: int, include: bool
) -> Any:
    """The 1-D average-pool matrix (out × n), entries as :func:`_pool_rows` weights them."""
    import numpy as np

    matrix = np.zeros((out, n))
    for j, (valid, weight) in enumerate(_pool_rows(n, k, s, d, pads, out, include)):
        for t in valid:
            matrix[j, t] += weight
    return matrix


def _pool_norm(
    n: int, k: int, s: int, d: int, pads: tuple[int, int], out: int, include: bool
) -> tuple[float, bool]:
    """(an upper bound on σ of the 1-D pool matrix, whether it is exact). Exact (dense SVD) up
    to :data:`POOL_DENSE` entries; else the Schur test ‖P‖₂ ≤ √(‖P‖₁‖P‖∞) for a matrix of
    non-negative entries (exact for non-overlapping windows of one size: 1/√k)."""
    import numpy as np

    if out * n <= POOL_DENSE:
        matrix = _pool_matrix(n, k, s, d, pads, out, include)
        return (float(np.linalg.norm(matrix, 2)) if matrix.size else 0.0), True
    rows, columns = 0.0, np.zeros(n)
    for valid, weight in _pool_rows(n, k, s, d, pads, out, include):
        rows = max(rows, weight * len(valid))
        np.add.at(columns, valid, weight)
    return math.sqrt(rows * float(columns.max(initial=0.0))), False


@dataclass
class _Rule:
    """How a node maps its inputs' bounds to one output's: ``mode`` 'sum' or 'rss' of
    coefficient × L(input) over ``terms`` (input name, coefficient)."""

    terms: list[tuple[str, float]]
    mode: str = "sum"


@dataclass
class _Linear:
    """A constant-weight Gemm/MatMul as a matrix (out × in), for chains."""

    matrix: Any
    var_input: str


class _Context:
    """Pass 1 state: constants, shapes, consumers; per-node factors and rules."""

    def __init__(self, graph: OnnxGraph, grid: int | None) -> None:
        self.graph = graph
        self.grid = grid
        self.constants: dict[str, Any] = {}
        self.variable: set[str] = set()
        self.discrete: set[str] = set()
        self.factors: dict[str, NodeFactor] = {}
        self.rules: dict[str, _Rule | None] = {}
        self.linears: dict[str, _Linear] = {}
        self.slopes: dict[str, tuple[float, float]] = {}
        self.consumers: dict[str, list[OnnxNode]] = {}
        self.folded: dict[str, OnnxNode] = {}
        self.producers = {n: node for node in graph.nodes for n in node.outputs if n}
        for node in graph.nodes:
            for name in node.inputs:
                if name:
                    self.consumers.setdefault(name, []).append(node)

    def const(self, name: str) -> Any:
        if name not in self.constants:
            self.constants[name] = self.graph.load(name)
        return self.constants[name]

    def is_const(self, name: str) -> bool:
        return name in self.constants or (
            name in self.graph.initializers and name not in self.variable
        )

    def shape(self, name: str) -> tuple[Any, ...] | None:
        if name in self.constants:
            return tuple(int(d) for d in self.constants[name].shape)
        if self.is_const(name):  # an initializer: its shape without reading its data
            return self.graph.initializers[name][0]
        value = self.graph.values.get(name)
        return None if value is None else value.shape


def _static(shape: tuple[Any, ...] | None) -> tuple[int, ...] | None:
    if shape is None or any(not isinstance(d, int) for d in shape):
        return None
    return tuple(shape)


def _broadcast_factor(ctx: _Context, name: str, out: str) -> float | None:
    """√(copies) when ``name`` is broadcast to ``out``'s shape; None when unknown."""
    a, b = ctx.shape(name), ctx.shape(out)
    if a is None or b is None:
        return None if a != b else 1.0
    copies = 1
    padded = (1,) * (len(b) - len(a)) + tuple(a)
    for da, db in zip(padded, b, strict=False):
        if da == db:
            continue
        if da == 1 and isinstance(db, int):
            copies *= db
        else:
            return None
    return math.sqrt(copies)


def _attr(node: OnnxNode, name: str, default: Any) -> Any:
    return node.attributes.get(name, default)


class _NoRule(Exception):
    """No bound for this node: the message says why."""


def _elementwise_activation(ctx: _Context, node: OnnxNode, var: str) -> tuple[float, str]:
    op = node.op_type
    if op in ("LeakyRelu",):
        alpha = float(_attr(node, "alpha", 0.01))
        if 0 <= alpha <= 1:
            ctx.slopes[node.name] = (alpha, 1.0)
        return max(1.0, abs(alpha)), f"LeakyRelu: max(1, |α|), α = {alpha:g}"
    if op == "PRelu":
        slope_name = node.inputs[1]
        if not ctx.is_const(slope_name):
            raise _NoRule("PRelu slope is not a constant")
        slope = ctx.const(slope_name).astype("float64")
        top = float(abs(slope).max()) if slope.size else 0.0
        if slope.size and float(slope.min()) >= 0 and top <= 1:
            ctx.slopes[node.name] = (float(slope.min()), 1.0)
        return max(1.0, top), f"PRelu: max(1, max|a|), max|a| = {top:g}"
    if op == "Elu":
        alpha = float(_attr(node, "alpha", 1.0))
        if 0 <= alpha <= 1:
            ctx.slopes[node.name] = (0.0, 1.0)
        return max(1.0, abs(alpha)), f"Elu: max(1, α), α = {alpha:g}"
    if op == "Selu":
        alpha = float(_attr(node, "alpha", 1.6732632423543772))
        gamma = float(_attr(node, "gamma", 1.0507009873554805))
        return abs(gamma) * max(1.0, abs(alpha)) * (1 + 1e-15), "Selu: γ·max(1, α)"
    return _fixed_activation(ctx, node, var)


def _fixed_activation(ctx: _Context, node: OnnxNode, var: str) -> tuple[float, str]:
    op = node.op_type
    if op == "HardSigmoid":
        alpha = float(_attr(node, "alpha", 0.2))
        return abs(alpha), "HardSigmoid: α"
    if op == "HardSwish":
        return 1.5, "HardSwish: max slope (2x + 3)/6 at x = 3"
    if op == "Gelu":
        approx = _attr(node, "approximate", "none")
        return (GELU_TANH, "Gelu (tanh): max|f'|") if approx == "tanh" else (GELU, "Gelu: max|f'|")
    if op == "Mish":
        return MISH, "Mish: max|f'|"
    if op == "Sigmoid":
        ctx.slopes[node.name] = (0.0, 0.25)
        return 0.25, "Sigmoid: ¼"
    if op == "Erf":
        return ERF, "Erf: 2/√π"
    if op in ("Softmax", "LogSoftmax"):
        if op == "Softmax":
            return SOFTMAX, "Softmax: ‖diag(p) − ppᵀ‖ ≤ ½"
        shape = _static(ctx.shape(var))
        if shape is None:
            raise _NoRule("LogSoftmax needs the static size of its axis")
        n = shape[int(_attr(node, "axis", -1))]
        return 1 + math.sqrt(n), "LogSoftmax: ‖I − 1pᵀ‖ ≤ 1 + √n"
    if op in _SLOPES_FIXED:
        ctx.slopes[node.name] = _SLOPES_FIXED[op]
    raise KeyError(op)


def _fold_batchnorm(ctx: _Context, node: OnnxNode) -> Any | None:
    """The per-channel scale γ/√(var + ε) of a BatchNormalization that alone consumes this
    node's output, or None (the BN is then its own node)."""
    out = node.outputs[0]
    users = ctx.consumers.get(out, [])
    if len(users) != 1 or users[0].op_type != "BatchNormalization":
        return None
    if any(o.name == out for o in ctx.graph.outputs):
        return None
    bn = users[0]
    if not all(ctx.is_const(n) for n in bn.inputs[1:5]):
        return None
    scale = _bn_scale(ctx, bn)
    ctx.folded[bn.name] = node
    return scale


def _bn_scale(ctx: _Context, bn: OnnxNode) -> Any:
    import numpy as np

    gamma = ctx.const(bn.inputs[1]).astype(np.float64)
    var = ctx.const(bn.inputs[4]).astype(np.float64)
    eps = float(_attr(bn, "epsilon", ONNX_BN_EPS))
    if bool((var + eps <= 0).any()):
        raise _NoRule("BatchNormalization with var + ε ≤ 0")
    return gamma / np.sqrt(var + eps)


def _conv(ctx: _Context, node: OnnxNode, var: str) -> tuple[float, str, float | None]:
    import numpy as np
    import torch

    from sncli.numerics.conv import conv_operator_norm

    if not ctx.is_const(node.inputs[1]):
        raise _NoRule("the kernel is not a constant")
    kernel = ctx.const(node.inputs[1]).astype(np.float64)
    transposed = node.op_type == "ConvTranspose"
    groups = int(_attr(node, "group", 1))
    scale = _fold_batchnorm(ctx, node) if (groups == 1 or not transposed) else None
    note = ""
    if scale is not None:
        shape = (1, -1) if transposed else (-1, 1)
        kernel = kernel * scale.reshape(*shape, *([1] * (kernel.ndim - 2)))
        note = " (BatchNorm folded in)"
    dims = kernel.ndim - 2
    strides = tuple(_attr(node, "strides", [1] * dims))
    dilations = tuple(_attr(node, "dilations", [1] * dims))
    shape = _static(ctx.shape(var))
    size = shape[2:] if shape is not None and len(shape) == dims + 2 else None
    torch_kernel = torch.from_numpy(np.ascontiguousarray(kernel))
    torus = None if transposed else _circular_embedding(node, kernel, size, strides, ctx.grid)
    try:
        if torus is not None:
            norm = conv_operator_norm(
                torch_kernel,
                padding="circular",
                input_size=torus,
                stride=strides,
                dilation=dilations,
                groups=groups,
            )
        else:
            norm = conv_operator_norm(
                torch_kernel,
                padding="zeros",
                input_size=size,
                stride=strides,
                dilation=dilations,
                transposed=transposed,
                grid=ctx.grid,
                groups=groups,
            )
    except ValueError as exc:
        raise _NoRule(f"cannot bound this convolution: {exc}") from exc
    upper = (norm.upper if norm.upper is not None else norm.value) * (1 + 4 * 2.0**-53)
    where = f" at input {'×'.join(map(str, size))}" if size else ""
    if torus is not None:
        described = (
            f"the zero-padded conv is a restriction of the circular one on the "
            f"{'×'.join(map(str, torus))} torus (input + padding), whose norm is computed "
            f"exactly (DFT, certified to ~1e-9): an upper bound"
        )
        return upper, f"{node.op_type}{where}{note}: {described}", None
    return upper, f"{node.op_type}{where}{note}: {norm.description}", norm.lower


def _circular_embedding(
    node: OnnxNode,
    kernel: Any,
    size: tuple[int, ...] | None,
    strides: tuple[int, ...],
    grid: int | None,
) -> tuple[int, ...] | None:
    """The torus a zero-padded conv at this static size embeds in, when it is worth using.

    With N_i ≥ n_i + pad_begin_i + pad_end_i (a multiple of the stride), every output of the
    zero-padded conv reads only taps inside the zero-extended input, so the layer is the
    circular strided conv on the N-torus restricted to some outputs and to inputs supported
    on the image: its norm is at most the circular norm, which the DFT gives exactly — tighter
    than the torus bound τ* (no grid factor). Used when its frequency count is at most twice
    the torus bound's grid (1×1 kernels keep τ* = σ(W), computed on one frequency).
    """
    from sncli.numerics.conv import auto_grid

    if size is None or _attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    dims = len(size)
    pads = list(_attr(node, "pads", [0] * (2 * dims)))
    torus = []
    for i in range(dims):
        n = size[i] + pads[i] + pads[i + dims]
        torus.append(-(-n // strides[i]) * strides[i])
    dilations = tuple(_attr(node, "dilations", [1] * dims))
    chosen = grid if grid is not None else auto_grid(tuple(kernel.shape), dilations)
    spatial = kernel.shape[2:]
    torus_cost = math.prod(chosen if k > 1 else 1 for k in spatial)
    circular_cost = math.prod(n // s for n, s in zip(torus, strides, strict=True))
    return tuple(torus) if circular_cost <= 2 * torus_cost else None


def _gemm(ctx: _Context, node: OnnxNode) -> tuple[float, str, _Rule, float | None]:
    """Gemm/MatMul with one constant operand: σ of the linear map on the variable one."""
    import numpy as np

    a, b = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 else ""
    a_var, b_var = not ctx.is_const(a), not ctx.is_const(b)
    if a_var and b_var:
        raise _NoRule("product of two variable tensors (bilinear, e.g. attention)")
    var = a if a_var else b
    weight = ctx.const(b if a_var else a).astype(np.float64)
    if weight.ndim != 2:
        raise _NoRule(f"{node.op_type} with a constant of rank {weight.ndim} is not supported")
    if node.op_type == "Gemm":
        alpha = float(_attr(node, "alpha", 1.0))
        # Y = α·A'·B' + β·C. A variable: rows x ↦ x·B', the matrix B'ᵀ (out × in).
        if a_var:
            matrix = weight if int(_attr(node, "transB", 0)) else weight.T
        else:
            matrix = weight.T if int(_attr(node, "transA", 0)) else weight
        matrix = alpha * matrix
    else:
        matrix = weight.T if a_var else weight
    note = ""
    out_shape = ctx.shape(node.outputs[0])
    if a_var and out_shape is not None and len(out_shape) == 2:
        scale = _fold_batchnorm(ctx, node)
        if scale is not None:
            matrix = scale[:, None] * matrix
            note = " (BatchNorm folded in)"
    upper, lower, method = _sigma_upper(matrix)
    terms = [(var, upper)]
    if c and not ctx.is_const(c):
        factor = _broadcast_factor(ctx, c, node.outputs[0])
        if factor is None:
            raise _NoRule("the bias's broadcast needs static shapes")
        terms.append((c, abs(float(_attr(node, "beta", 1.0))) * factor))
    elif a_var:
        ctx.linears[node.name] = _Linear(matrix, var)
    source = f"σ({'W' if a_var else 'A'}) ({method}){note}"
    return upper, source, _Rule(terms), lower


def _avgpool(ctx: _Context, node: OnnxNode, var: str) -> tuple[float, str]:
    shape, out = _static(ctx.shape(var)), _static(ctx.shape(node.outputs[0]))
    if shape is None or out is None:
        raise _NoRule("AveragePool needs static input and output shapes (dynamic shape)")
    kernel = list(_attr(node, "kernel_shape", []))
    dims = len(kernel)
    strides = list(_attr(node, "strides", [1] * dims))
    dilations = list(_attr(node, "dilations", [1] * dims))
    pads = list(_attr(node, "pads", [0] * (2 * dims)))
    if _attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise _NoRule("AveragePool with auto_pad SAME is not supported")
    include = bool(_attr(node, "count_include_pad", 0))
    total, exact = 1.0, True
    for i in range(dims):
        norm, dense = _pool_norm(
            shape[2 + i],
            kernel[i],
            strides[i],
            dilations[i],
            (pads[i], pads[i + dims]),
            out[2 + i],
            include,
        )
        total *= norm
        exact = exact and dense
    if exact:
        return total * (
            1 + ROUNDING
        ), "AveragePool: exact norm at this size (Kronecker of 1-D pools)"
    return total * (1 + ROUNDING), "AveragePool: Kronecker of 1-D pools, √(‖P‖₁‖P‖∞) per axis"


def _maxpool(node: OnnxNode) -> tuple[float, str]:
    kernel = list(_attr(node, "kernel_shape", []))
    dims = len(kernel)
    strides = list(_attr(node, "strides", [1] * dims))
    dilations = list(_attr(node, "dilations", [1] * dims))
    copies = 1
    for k, s, d in zip(kernel, strides, dilations, strict=True):
        copies *= min(k, -(-((k - 1) * d + 1) // s))
    return math.sqrt(copies), "MaxPool: √(windows per input) = √∏⌈k/s⌉"


def _reduce_axes(ctx: _Context, node: OnnxNode, var: str) -> int:
    shape = ctx.shape(var)
    axes = _attr(node, "axes", None)
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        if not ctx.is_const(node.inputs[1]):
            raise _NoRule("reduction axes are not constant")
        axes = [int(a) for a in ctx.const(node.inputs[1]).reshape(-1)]
    if shape is None:
        raise _NoRule("needs the static shape of its input (dynamic shape)")
    if not axes:
        if _attr(node, "noop_with_empty_axes", 0):
            return 1
        axes = list(range(len(shape)))
    count = 1
    for axis in axes:
        dim = shape[axis]
        if not isinstance(dim, int):
            raise _NoRule(f"reduces over a dynamic dimension {dim!r}")
        count *= dim
    return count


def _broadcast_terms(ctx: _Context, variables: list[str], out: str) -> list[tuple[str, float]]:
    terms = []
    for name in variables:
        factor = _broadcast_factor(ctx, name, out)
        if factor is None:
            raise _NoRule(f"broadcasting {quote(name)} needs static shapes (dynamic shape)")
        terms.append((name, factor))
    return terms


def _scaling(ctx: _Context, node: OnnxNode, variables: list[str], out: str) -> NodeFactor:
    """Mul/Div of one variable tensor by a constant: max|c| (or max|1/c|) × the broadcast."""
    op, var = node.op_type, variables[0]
    if len(variables) > 1 and op == "Mul" and _is_silu(ctx, node):
        return NodeFactor(node.name, "Mul", SILU, "x·sigmoid(x) (SiLU): max|f'|", True)
    if len(variables) > 1:
        raise _NoRule("product or quotient of two variable tensors (e.g. attention)")
    if op == "Div" and node.inputs[0] != var:
        raise _NoRule("division by a variable tensor is not Lipschitz")
    other = node.inputs[1] if node.inputs[0] == var else node.inputs[0]
    value = abs(ctx.const(other).astype("float64"))
    if op == "Div":
        if bool((value == 0).any()):
            raise _NoRule("division by zero")
        value = 1.0 / value
    top = float(value.max()) if value.size else 0.0
    factor = _broadcast_terms(ctx, [var], out)[0][1]
    exact = _scaling_exact(ctx, value, var, out) if factor != 1 else None
    if exact is not None:
        source = f"{op} by a constant, broadcast: max over entries of √(Σ c² over its copies)"
        return NodeFactor(node.name, op, exact, source, True)
    source = f"{op} by a constant: max|c| = {top:g}" + (
        f", × √{factor * factor:g} broadcast" if factor != 1 else ""
    )
    return NodeFactor(node.name, op, top * factor, source, True)


def _scaling_exact(ctx: _Context, value: Any, var: str, out: str) -> float | None:
    """The exact norm of x ↦ c ⊙ broadcast(x): its columns are orthogonal (each output reads
    one input entry), so it is the largest √(Σ c²) over the copies of one entry."""
    import numpy as np

    shape, target = _static(ctx.shape(var)), _static(ctx.shape(out))
    if shape is None or target is None:
        return None
    padded = (1,) * (len(target) - len(shape)) + shape
    squares = np.broadcast_to(value * value, target)
    axes = tuple(i for i, (a, b) in enumerate(zip(padded, target, strict=True)) if a == 1 < b)
    total = squares.sum(axis=axes) if axes else squares
    return float(np.sqrt(total.max())) * (1 + ROUNDING) if total.size else 0.0


@dataclass(frozen=True)
class _Piecewise:
    """A continuous piecewise-linear scalar function: knots (t, g(t)) in increasing t and the
    slopes left of the first and right of the last knot."""

    knots: tuple[tuple[float, float], ...]
    left: float
    right: float

    def map(self, scale: float, shift: float) -> _Piecewise:
        """t ↦ scale·g(t) + shift."""
        return _Piecewise(
            tuple((t, scale * y + shift) for t, y in self.knots),
            scale * self.left,
            scale * self.right,
        )

    def clip(self, low: float, high: float) -> _Piecewise:
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
        return _Piecewise(tuple(sorted(clipped)), left, right)

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


def _gate_function(ctx: _Context, gate: str, x: str) -> _Piecewise | None:
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
    g = _Piecewise(((0.0, 0.0),), 1.0, 1.0)
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
                value = _scalar_const(ctx, given) if given else _attr(node, key, default)
                if value is None:
                    return None
                bounds.append(float(value))
            g = g.clip(*bounds)
        elif op == "Relu":
            g = g.clip(0.0, math.inf)
        elif op == "HardSigmoid":
            g = g.map(float(_attr(node, "alpha", 0.2)), float(_attr(node, "beta", 0.5)))
            g = g.clip(0.0, 1.0)
        else:
            return None
    return g


def _gated_product(ctx: _Context, node: OnnxNode) -> tuple[float, str, str] | None:
    """Mul(x, g(x)) with g piecewise linear (HardSwish as x·Clip(x + 3, 0, 6), x·HardSigmoid(x)):
    (sup|d(t·g(t))/dt|, source, x); None for other products."""
    a, b = node.inputs[0], node.inputs[1]
    for gate, x in ((a, b), (b, a)):
        g = _gate_function(ctx, gate, x)
        if g is None:
            continue
        slope = g.product_slope()
        if slope is not None:
            return slope * (1 + ROUNDING), "x·g(x), g piecewise linear (HardSwish): max|f'|", x
    return None


def _is_silu(ctx: _Context, node: OnnxNode) -> bool:
    """Mul(x, Sigmoid(x)) in either order: SiLU as exporters write it."""
    a, b = node.inputs[0], node.inputs[1]
    for gate, x in ((a, b), (b, a)):
        producer = ctx.producers.get(gate)
        if producer is not None and producer.op_type == "Sigmoid" and producer.inputs[0] == x:
            return True
    return False


def _multi_input(
    ctx: _Context, node: OnnxNode, variables: list[str]
) -> tuple[NodeFactor, list[_Rule | None]] | None:
    """Rules of ops that combine tensors (Add, Concat, Mul…); None for other ops."""
    op, out = node.op_type, node.outputs[0]
    if op in ("Gemm", "MatMul"):
        factor, source, rule, lower = _gemm(ctx, node)
        return NodeFactor(node.name, op, factor, source, True, lower=lower), [rule]
    if op in ("Add", "Sub", "Sum", "Max", "Min"):
        mode = "rss" if op in ("Max", "Min") else "sum"
        how = "√(Σ L²) (elementwise max/min)" if mode == "rss" else "Σ L (sum of paths)"
        rule = _Rule(_broadcast_terms(ctx, variables, out), mode)
        return NodeFactor(node.name, op, 1.0, f"{op}: {how}", True), [rule]
    if op == "Mul" and len(variables) > 1:
        gated = _gated_product(ctx, node)
        if gated is not None:
            slope, source, x = gated
            return NodeFactor(node.name, op, slope, source, True), [_Rule([(x, slope)])]
    if op in ("Mul", "Div"):
        factor = _scaling(ctx, node, variables, out)
        assert factor.factor is not None
        if factor.source.startswith("x·sigmoid"):  # the Sigmoid's input carries the bound
            gate = ctx.producers.get(node.inputs[0])
            first_is_gate = (
                gate is not None and gate.op_type == "Sigmoid" and gate.inputs[0] == node.inputs[1]
            )
            var = node.inputs[1] if first_is_gate else node.inputs[0]
            return factor, [_Rule([(var, factor.factor)])]
        return factor, [_Rule([(variables[0], factor.factor)])]
    if op == "Concat":
        rule = _Rule([(n, 1.0) for n in variables], "rss")
        return NodeFactor(node.name, op, 1.0, "Concat: √(Σ L²)", True), [rule]
    if op == "Where":
        if not ctx.is_const(node.inputs[0]):
            raise _NoRule("the condition is a variable tensor (discontinuous selection)")
        rule = _Rule(_broadcast_terms(ctx, variables, out), "rss")
        return NodeFactor(node.name, op, 1.0, "Where: √(Σ L²)", True), [rule]
    return None


def _node_rule(ctx: _Context, node: OnnxNode) -> tuple[NodeFactor, list[_Rule | None]]:
    """Pass 1 for one node with at least one variable input: its factor and output rules."""
    op = node.op_type
    variables = [n for n in node.inputs if n and not ctx.is_const(n)]
    discrete = [n for n in variables if n in ctx.discrete]
    if discrete:
        raise _NoRule(f"its input {quote(discrete[0])} is discrete (integer)")
    if node.domain not in ("", "ai.onnx"):
        raise _NoRule(f"custom op of domain {node.domain!r}: no Lipschitz rule")
    if op in NOT_LIPSCHITZ:
        raise _NoRule(NOT_LIPSCHITZ[op])
    multi = _multi_input(ctx, node, variables)
    if multi is not None:
        return multi
    if op == "Shape":
        raise _NoRule("dynamic shape: its input's shape is not static")
    var = variables[0]
    if any(n != node.inputs[0] for n in variables):
        raise _NoRule("a variable tensor in a parameter position (e.g. a computed shape)")
    lower = None
    if op in ("Conv", "ConvTranspose"):
        factor, source, lower = _conv(ctx, node, var)
    else:
        factor, source = _unary_factor(ctx, node, var)
    rules: list[_Rule | None] = [_Rule([(var, factor)])]
    rules += [None] * (len(node.outputs) - 1)
    if op == "Split":
        rules = [_Rule([(var, 1.0)]) for _ in node.outputs]
    return NodeFactor(node.name, op, factor, source, True, lower=lower), rules


def _unary_factor(ctx: _Context, node: OnnxNode, var: str) -> tuple[float, str]:
    op = node.op_type
    if op in SHAPE_OPS:
        if op in _SLOPES_FIXED:
            ctx.slopes[node.name] = _SLOPES_FIXED[op]
        return 1.0, f"{op}: 1"
    if op == "Cast":
        if _attr(node, "to", 1) in (1, 10, 11, 16):
            return 1.0, "Cast between float types: 1 (in exact arithmetic)"
        raise _NoRule("cast to a discrete type")
    try:
        return _elementwise_activation(ctx, node, var)
    except KeyError:
        pass
    if op == "BatchNormalization":
        if not all(ctx.is_const(n) for n in node.inputs[1:5]):
            raise _NoRule("BatchNorm parameters are not constants (training mode?)")
        scale = _bn_scale(ctx, node)
        top = float(abs(scale).max()) * (1 + ROUNDING) if scale.size else 0.0
        return top, "BatchNorm (eval): max|γ|/√(var + ε)"
    return _pool_factor(ctx, node, var)


def _pool_factor(ctx: _Context, node: OnnxNode, var: str) -> tuple[float, str]:
    op = node.op_type
    if op == "MaxPool":
        return _maxpool(node)
    if op == "AveragePool":
        return _avgpool(ctx, node, var)
    if op == "GlobalAveragePool":
        shape = _static(ctx.shape(var))
        if shape is None:
            raise _NoRule("needs the static spatial size of its input (dynamic shape)")
        count = math.prod(shape[2:])
        return 1.0 / math.sqrt(count) * (1 + ROUNDING), f"GlobalAveragePool: 1/√{count}"
    if op in ("ReduceMean", "ReduceSum"):
        count = _reduce_axes(ctx, node, var)
        if op == "ReduceMean":
            return (1.0 / math.sqrt(count)) * (1 + ROUNDING), f"ReduceMean: 1/√{count}"
        return math.sqrt(count) * (1 + ROUNDING), f"ReduceSum: √{count}"
    if op == "Pad":
        mode = _attr(node, "mode", "constant")
        if mode != "constant":
            raise _NoRule(f"Pad mode {mode!r} copies entries (no rule yet)")
        return 1.0, "Pad (constant): 1"
    if op in ("Expand", "Tile"):
        factor = _broadcast_factor(ctx, var, node.outputs[0])
        shape, out = _static(ctx.shape(var)), _static(ctx.shape(node.outputs[0]))
        if op == "Tile" and shape is not None and out is not None:
            factor = math.sqrt(math.prod(out) / max(1, math.prod(shape)))
        if factor is None:
            raise _NoRule("needs static shapes (dynamic shape)")
        return factor * (1 + ROUNDING), f"{op}: √(copies)"
    if op in ("Resize", "Upsample"):
        return _resize(ctx, node, var)
    if op == "Gather":
        return _gather(ctx, node)
    if op in _NORMS:
        return _norm_factor(ctx, node)
    raise _NoRule(f"no Lipschitz rule for op {op}")


def _resize(ctx: _Context, node: OnnxNode, var: str) -> tuple[float, str]:
    if _attr(node, "mode", "nearest") != "nearest":
        raise _NoRule("Resize other than nearest: no rule yet")
    shape, out = _static(ctx.shape(var)), _static(ctx.shape(node.outputs[0]))
    if shape is None or out is None:
        raise _NoRule("needs static shapes (dynamic shape)")
    copies = math.prod(-(-o // max(i, 1)) for i, o in zip(shape, out, strict=True))
    return math.sqrt(copies), "Resize (nearest): √(max copies) = √∏⌈out/in⌉"


def _gather(ctx: _Context, node: OnnxNode) -> tuple[float, str]:
    import numpy as np

    if not ctx.is_const(node.inputs[1]):
        raise _NoRule("gather at variable indices (an embedding lookup: discrete input)")
    indices = ctx.const(node.inputs[1]).reshape(-1)
    shape = _static(ctx.shape(node.inputs[0]))
    axis = int(_attr(node, "axis", 0))
    if shape is None:
        raise _NoRule("needs the static shape of its data (dynamic shape)")
    wrapped = np.where(indices < 0, indices + shape[axis], indices)
    copies = int(np.bincount(wrapped.astype(np.int64)).max()) if wrapped.size else 0
    return math.sqrt(copies), "Gather at constant indices: √(max repeats)"


def _norm_factor(ctx: _Context, node: OnnxNode) -> tuple[float, str]:
    import numpy as np

    eps = float(_attr(node, "epsilon", 1e-5))
    gamma = ctx.const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else None
    if gamma is not None and not ctx.is_const(node.inputs[1]):
        raise _NoRule("scale is not a constant")
    top = float(np.abs(gamma).max()) if gamma is not None and gamma.size else 1.0
    raise _Vacuous(top / math.sqrt(eps) * (1 + ROUNDING), f"max|γ|/√ε, ε = {eps:g}")


class _Vacuous(Exception):
    def __init__(self, factor: float, source: str) -> None:
        super().__init__(source)
        self.factor = factor
        self.source = source


# ------------------------------------------------------------------------ constants


def _evaluate_constant(ctx: _Context, node: OnnxNode) -> list[Any] | None:
    """The outputs of a node whose inputs are all constant (or static shapes), or None."""
    if node.op_type == "Constant":
        value = node.attributes.get("value")
        if value is None:
            for key in ("value_float", "value_int", "value_floats", "value_ints"):
                if key in node.attributes:
                    import numpy as np

                    value = np.asarray(node.attributes[key])
        return None if value is None or isinstance(value, str) else [value]
    if node.op_type == "Shape":
        shape = _static(ctx.shape(node.inputs[0]))
        if shape is None:
            return None
        import numpy as np

        start, end = _attr(node, "start", 0), _attr(node, "end", None)
        return [np.asarray(shape[start:end], dtype=np.int64)]
    if node.op_type == "Size":
        shape = _static(ctx.shape(node.inputs[0]))
        if shape is None:
            return None
        import numpy as np

        return [np.asarray(math.prod(shape), dtype=np.int64)]
    if any(n and not ctx.is_const(n) for n in node.inputs):
        return None
    return _reference_run(ctx, node)


def _reference_run(ctx: _Context, node: OnnxNode) -> list[Any]:
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    names = [n for n in node.inputs if n]
    feeds = {n: ctx.const(n) for n in names}
    import numpy as np

    attributes = {  # a tensor attribute (ConstantOfShape's value) goes back as a TensorProto
        k: numpy_helper.from_array(v) if isinstance(v, np.ndarray) else v
        for k, v in node.attributes.items()
        if not isinstance(v, str | type(None))
    }
    attributes.update(
        {k: v for k, v in node.attributes.items() if isinstance(v, str) and not v.startswith("<")}
    )
    proto = helper.make_node(node.op_type, list(node.inputs), list(node.outputs), **attributes)
    if node.domain:
        proto.domain = node.domain
    inputs = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(feeds[n].dtype), None)
        for n in names
    ]
    outputs = [helper.make_tensor_value_info(n, 0, None) for n in node.outputs if n]
    model = helper.make_model(
        helper.make_graph([proto], "constant", inputs, outputs),
        opset_imports=[helper.make_opsetid("", max(ctx.graph.opset, 7))],
    )
    del onnx, numpy_helper
    return list(ReferenceEvaluator(model).run(None, feeds))


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
            if ctx.linears[nxt.name].var_input != act.outputs[0]:
                break
            chain += [act, nxt]
            current = nxt
        if len(chain) >= 3:
            chains.append(chain)
    return chains


def _passthrough(ctx: _Context, node: OnnxNode) -> bool:
    """A node that does not change a chain's Lipschitz constant: a BatchNorm folded into the
    linear before it, or the Add of a constant bias."""
    if node.name in ctx.folded:
        return True
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
    ctx: _Context, order: list[OnnxNode], chains: list[list[OnnxNode]]
) -> tuple[dict[str, _Bound], list[ChainInfo]]:
    bounds: dict[str, _Bound] = {v.name: _Bound(1.0, True) for v in ctx.graph.inputs}
    for name in ctx.discrete & set(bounds):
        bounds[name] = _Bound(None, False)
    ends: dict[str, tuple[str, float, bool]] = {}
    infos = []
    for chain in chains:
        linears = [n for n in chain if n.name in ctx.linears]
        acts = [ctx.slopes[n.name] for n in chain if n.name in ctx.slopes]
        alpha, beta = min(a for a, _ in acts), max(b for _, b in acts)
        weights = [ctx.linears[n.name].matrix for n in linears]
        product = math.prod(ctx.factors[n.name].factor or 0.0 for n in chain)
        value, method = chain_bound(weights, alpha, beta, product)
        value = min(value, product)
        start = ctx.linears[chain[0].name].var_input
        ends[_chain_end_output(ctx, chain[-1])] = (start, value, True)
        infos.append(ChainInfo(tuple(n.name for n in chain), value, product, method, True))
    for node in order:
        for name in node.outputs:
            if not name or name in ctx.constants:
                continue
            bounds[name] = _combine(ctx, bounds, name, node)
            if name in ends:
                source, value, _ = ends[name]
                base = bounds.get(source, _Bound(None, False))
                if base.value is not None and bounds[name].value is not None:
                    chained = base.value * value
                    if chained < bounds[name].value:
                        bounds[name] = _Bound(
                            chained, bounds[name].proven, bounds[name].parent, node.name
                        )
    return bounds, infos


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
        value = math.sqrt(sum(p * p for p, _ in parts)) * (1 + ROUNDING)
    else:
        value = sum(p for p, _ in parts) * (1 + ROUNDING)
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
    path: str | Path,
    *,
    grid: int | None = None,
    seed: int = 0,
    lower: bool = True,
    budget: int = 192,
    progress: Callable[[str], None] | None = None,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    lower_seconds: float = LOWER_SECONDS,
) -> GraphLipschitzReport:
    """The DAG bound of an ONNX model, per output and jointly, with a searched lower bound.

    ``input_shapes`` fixes the inputs' dynamic dims (``--input-shape``; the key "" is the only
    input); dims left dynamic after the defaults of :func:`read_onnx_graph` are refused with
    an :class:`InputShapeError` naming each input, before any factor is computed.
    """
    import time

    began = time.perf_counter()
    path = Path(path)
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
    bounds, infos = _pass_two(ctx, order, chains)
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
    notes = list(graph.notes)
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
        )
        if why:
            notes.append(f"no lower bound: {why}")
        seconds["lower"] = time.perf_counter() - began - seconds["bound"]
    report = GraphLipschitzReport(
        checkpoint=str(path),
        nodes=nodes,
        outputs=outputs,
        path=path_steps,
        chains=infos,
        lower=found,
        assumptions=_assumptions(graph, nodes),
        caveats=[f"node {n.name} ({n.op}): {n.why}" for n in nodes if not n.proven],
        notes=notes,
        product=product,
        seconds=seconds,
    )
    return report


def _assumptions(graph: OnnxGraph, nodes: list[NodeFactor]) -> list[str]:
    shapes = ", ".join(
        f"{v.name} {'×'.join(str(d) for d in (v.shape or ()))}" for v in graph.inputs
    )
    items = [
        f"the function is the model's ONNX graph in exact arithmetic, inputs {shapes}",
        "ℓ2 norms over all graph inputs jointly and all outputs jointly",
    ]
    if any(n.op in ("Conv", "ConvTranspose") for n in nodes):
        items.append("conv factors are certified upper bounds on the zero-padded convolution")
    if any(n.op == "BatchNormalization" for n in nodes):
        items.append("BatchNormalization in inference mode (running statistics)")
    return items


# ------------------------------------------------------------------------ lower bound


#: Inputs up to this size get the whole finite-difference Jacobian (one run per coordinate).
FULL_JACOBIAN = 1024
#: The share of the available memory the search may plan to use (checked before it allocates).
LOWER_MEMORY_SHARE = 0.5


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


def _available_memory() -> int:
    """MemAvailable from /proc/meminfo (bytes); 4 GiB where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 4 << 30


def _graph_values(graph: OnnxGraph) -> int:
    """How many values the graph's tensors hold at its static shapes (known ones only)."""
    total = 0
    for value in graph.values.values():
        if value.shape is not None and all(isinstance(d, int) for d in value.shape):
            total += math.prod(value.shape)
    return total


def ort_cause(exc: BaseException) -> str:
    """onnxruntime's message as one line without its status prefix (it names the node)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if text.startswith("[ONNXRuntimeError]"):
        text = text.split(" : ", 3)[-1]
    return text[:300]


def lower_bound_or_why(
    graph: OnnxGraph,
    *,
    seed: int = 0,
    budget: int = 192,
    order: Sequence[OnnxNode] | None = None,
    constants: dict[str, Any] | None = None,
    seconds: float = LOWER_SECONDS,
) -> tuple[LowerBound | None, str | None]:
    """:func:`lower_bound_search` that never fails: (lower bound, None) or (None, why not).

    The memory the search plans (the input vector and its few copies, the finite-difference
    basis, the torch graph's activations) is checked against the available memory first; the
    search stops at ``seconds`` with the best ratio found; an onnxruntime error is one line.
    """
    inputs = sum(math.prod(v.shape or ()) for v in graph.inputs)
    allowed = _available_memory() * LOWER_MEMORY_SHARE
    planned = 8 * inputs * (min(16, inputs) + 8)
    if planned > allowed:
        return None, (
            f"the search would need about {planned / 2**30:.1f} GiB for the inputs' "
            f"{inputs:,} values (over half of the memory available)"
        )
    torch_fits = 8 * 3 * max(_graph_values(graph), inputs) <= allowed
    try:
        found = lower_bound_search(
            graph,
            seed=seed,
            budget=budget,
            order=order if torch_fits else None,
            constants=constants if torch_fits else None,
            seconds=seconds,
        )
    except MemoryError:
        return None, "out of memory during the search"
    except _NoProbe as exc:
        return None, str(exc)
    if found is None:
        return None, "no input direction changed the output (every ratio was 0 or not finite)"
    return found, None


def lower_bound_search(
    graph: OnnxGraph,
    *,
    seed: int = 0,
    budget: int = 192,
    order: Sequence[OnnxNode] | None = None,
    constants: dict[str, Any] | None = None,
    seconds: float = LOWER_SECONDS,
) -> LowerBound | None:
    """The largest ‖f(x + δ) − f(x)‖/‖δ‖ found by a short seeded search, evaluated by onnxruntime.

    Directions: a Jacobian power iteration at a seeded Gaussian x with the graph rebuilt in torch
    (:mod:`sncli.graph_eval`, when every op is known there), else the finite-difference
    Jacobian (whole, up to 1024 inputs; else sampled on random subspaces). Whatever found the
    direction, the reported ratio is that of two real evaluations of the model by onnxruntime,
    so it is a lower bound on its Lipschitz constant (up to the evaluations' float32 rounding).
    None when every ratio was 0; ``_NoProbe`` (with the reason) when the model cannot be run.
    The search stops after ``seconds`` with the best ratio found by then.
    """
    probe = _Probe(graph, seed, seconds)
    best, method = 0.0, ""
    if order is not None and constants is not None:
        try:
            iterations = max(2, min(16, budget // 8)) if probe.total <= 20_000 else 6
            best = probe.power(order, constants, iterations)
            method = "Jacobian power iteration (torch) verified"
        except _NoProbe:
            raise
        except Exception:  # an op the torch evaluator lacks, AD fails, out of time: fall back
            best = max(0.0, probe.best)
    if (best == 0.0 or probe.total <= FULL_JACOBIAN) and not probe.out_of_time():
        try:
            found = probe.finite_differences(budget)
        except _NoProbe:
            raise
        except _OutOfTime:
            found = probe.best
        if found > best:
            best, method = found, "finite-difference Jacobian"
    if not math.isfinite(best) or best <= 0.0:
        return None
    stopped = "; stopped at the time budget" if probe.stopped else ""
    return LowerBound(
        best,
        probe.evaluations,
        f"largest ‖f(x+δ) − f(x)‖/‖δ‖ with onnxruntime ({method or 'best ratio found'}; "
        f"{probe.evaluations} evaluations, float32{stopped})",
    )


class _NoProbe(Exception):
    """The model cannot be run for the search; the message says why (one line)."""


class _OutOfTime(Exception):
    pass


class _Probe:
    """The model under onnxruntime at a seeded point x, with the joint float input as a vector."""

    def __init__(self, graph: OnnxGraph, seed: int, seconds: float = LOWER_SECONDS) -> None:
        import time

        import numpy as np

        self.deadline = time.monotonic() + seconds
        self.stopped = False
        self.best = 0.0
        try:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3
            self.session = ort.InferenceSession(
                str(graph.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime refuses some valid graphs
            raise _NoProbe(f"onnxruntime cannot load the model: {ort_cause(exc)}") from exc
        self.graph = graph
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.feeds: dict[str, Any] = {}
        self.floats: list[str] = []
        static = {v.name: v.shape for v in graph.inputs}
        for value in self.session.get_inputs():
            shape = static.get(value.name)
            if shape is None or not all(isinstance(d, int) for d in shape):
                raise _NoProbe(f"input {quote(value.name)} has no static shape")
            if value.type in ("tensor(float)", "tensor(double)", "tensor(float16)"):
                dtype = {"tensor(double)": np.float64, "tensor(float16)": np.float16}.get(
                    value.type, np.float32
                )
                self.feeds[value.name] = self.rng.standard_normal(shape).astype(dtype)
                self.floats.append(value.name)
            elif "int" in value.type:
                self.feeds[value.name] = np.zeros(shape, dtype=np.int64)
            else:
                raise _NoProbe(f"input {quote(value.name)} is a {value.type}, not a tensor")
        if not self.floats:
            raise _NoProbe("the model has no float input")
        self.sizes = [self.feeds[n].size for n in self.floats]
        self.total = sum(self.sizes)
        self.x = np.concatenate([self.feeds[n].astype(np.float64).reshape(-1) for n in self.floats])
        self.evaluations = 0
        self.base = self.run(self.x, check_time=False)
        self.scale = max(1.0, float(np.linalg.norm(self.x)) / math.sqrt(self.total))

    def out_of_time(self) -> bool:
        import time

        return time.monotonic() > self.deadline

    def run(self, vector: Any, *, check_time: bool = True) -> Any:
        import numpy as np

        if check_time and self.out_of_time():
            self.stopped = True
            raise _OutOfTime
        local = dict(self.feeds)
        offset = 0
        for name, size in zip(self.floats, self.sizes, strict=True):
            part = vector[offset : offset + size].reshape(self.feeds[name].shape)
            local[name] = part.astype(self.feeds[name].dtype)
            offset += size
        self.evaluations += 1
        try:
            outputs = self._session_run(self.session, local)
        except MemoryError:
            raise
        except Exception as exc:  # onnxruntime's errors name the node
            raise _NoProbe(f"onnxruntime cannot run the model: {ort_cause(exc)}") from exc
        return np.concatenate([np.asarray(o, dtype=np.float64).reshape(-1) for o in outputs])

    @staticmethod
    def _session_run(session: Any, feeds: dict[str, Any]) -> list[Any]:
        return session.run(None, feeds)

    def ratio(self, direction: Any) -> float:
        """max over two step sizes of ‖f(x + δ) − f(x)‖/‖δ‖ along a unit direction."""
        import numpy as np

        best = 0.0
        for step in (1e-2, 1e-3):
            delta = step * self.scale * direction
            norm = float(np.linalg.norm(delta))
            if norm > 0:
                change = float(np.linalg.norm(self.run(self.x + delta) - self.base))
                best = max(best, change / norm)
                if math.isfinite(best):
                    self.best = max(self.best, best)
        return best

    def power(self, order: Sequence[OnnxNode], constants: dict[str, Any], iterations: int) -> float:
        import torch

        from sncli.graph_eval import power_direction, torch_function

        dtype = torch.float64 if self.total <= 20_000 else torch.float32
        f = torch_function(self.graph, order, dict(constants), dtype)
        names = [v.name for v in self.graph.inputs]
        fixed = {n: torch.as_tensor(v) for n, v in self.feeds.items() if n not in self.floats}

        def split(z: Any) -> list[Any]:
            parts, offset = {}, 0
            for name, size in zip(self.floats, self.sizes, strict=True):
                parts[name] = z[offset : offset + size].reshape(self.feeds[name].shape)
                offset += size
            return [parts.get(n, fixed.get(n)) for n in names]

        x = torch.as_tensor(self.x, dtype=dtype)
        direction, _ = power_direction(f, x, split, iterations, self.seed)
        return self.ratio(direction.to(torch.float64).numpy())

    def finite_differences(self, budget: int) -> float:
        import numpy as np

        full = self.total <= FULL_JACOBIAN
        k = self.total if full else min(16, self.total)
        step = 1e-2 * self.scale
        best, direction = 0.0, None
        used = 0
        while used + k + 2 <= max(budget, k + 2):
            if full:
                basis = np.eye(self.total)
            else:
                basis = self.rng.standard_normal((self.total, k))
                if direction is not None:
                    basis[:, 0] = direction
                basis, _ = np.linalg.qr(basis)
            diffs = np.stack(
                [(self.run(self.x + step * basis[:, i]) - self.base) / step for i in range(k)], 1
            )
            _, _, vt = np.linalg.svd(diffs, full_matrices=False)
            direction = basis @ vt[0]
            direction /= np.linalg.norm(direction)
            best = max(best, self.ratio(direction))
            used += k + 2
            if full:
                break
        return best


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
