"""The op table of the graph bound: each ONNX op's Lipschitz factor and how it maps its inputs'
bounds to its outputs' (README "Lipschitz on the graph"), the constants of smooth activations,
σ of small matrices, :func:`chain_bound` for chains W_1 → act → … → W_l, and the evaluation of
constant subgraphs. :mod:`sncli.lipschitz.graph` walks the graph with these rules.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sncli.errors import SncliError
from sncli.formats.common import quote
from sncli.formats.onnx import OnnxGraph, OnnxNode
from sncli.lipschitz.gates import gated_product
from sncli.lipschitz.graph_results import NodeFactor
from sncli.lipschitz.unrolled import unrolled_for as _unrolled
from sncli.numerics.floating import DENSE_ROUNDING

if TYPE_CHECKING:
    import numpy as np

#: BatchNormalization's default epsilon in ONNX.
ONNX_BN_EPS = 1e-5

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


# ------------------------------------------------------------------------ numerics per op


def _sigma_upper(matrix: np.ndarray) -> tuple[float, float, str]:
    """(certified upper, lower, method) of σ_max of a float64 matrix (NumPy: the interval of
    :func:`sncli.numerics.bounds.sigma_interval`, which runs :mod:`.bounds_numpy` on arrays)."""
    import numpy as np

    from sncli.numerics.bounds import sigma_interval

    w = matrix.astype("float64", copy=False)
    if w.size == 0:
        return 0.0, 0.0, "empty"
    if min(w.shape) <= 256:
        sigma = float(np.linalg.norm(w, 2))
        return sigma * (1 + DENSE_ROUNDING), sigma * (1 - DENSE_ROUNDING), "dense float64 SVD"
    interval = sigma_interval(w)
    return interval.upper, interval.lower, interval.upper_method


def chain_bound(
    weights: Sequence[np.ndarray],
    alpha: float,
    beta: float,
    product: float | None = None,
    seconds: float | None = None,
) -> tuple[float, str]:
    """A certified bound for W_l ∘ act ∘ … ∘ act ∘ W_1, activations slope-restricted in [α, β].

    The product ∏σ(W_i)·max(|α|, |β|)^(l−1) always holds; LipSDP-Neuron's multipliers found by
    first-order descent from ECLipsE-Fast's within ``seconds``
    (``sncli.numerics.lipsdp.lipsdp_neuron_certificate``; never above ECLipsE-Fast, Xu &
    Sivaranjani 2024, whose bound it falls back to) where their conditions hold, and the
    smaller (all are proofs) is returned. ``seconds`` 0: ECLipsE-Fast alone. The one switch for
    the chain method.
    """
    slope = max(abs(alpha), abs(beta))
    if product is None:  # the caller may pass the product of its certified factors
        product = math.prod(_sigma_upper(w)[0] for w in weights) * slope ** (len(weights) - 1)
    from sncli.numerics.lipsdp import LIPSDP_SECONDS, lipsdp_neuron_certificate
    from sncli.run.blas import numpy_blas_threads

    try:  # one BLAS thread: the matrices are small, and threads fighting for cores cost 10×
        with numpy_blas_threads(1):
            found = lipsdp_neuron_certificate(
                list(weights), alpha, beta, seconds=LIPSDP_SECONDS if seconds is None else seconds
            )
    except (ValueError, ArithmeticError, SncliError):  # outside its conditions: the product
        return product, "product of σ (ECLipsE-Fast refused this chain)"
    value = float(found.bound)
    if math.isfinite(value) and value < product:
        if found.method == "lipsdp-neuron":
            return value, "LipSDP-Neuron (first-order, from ECLipsE-Fast)"
        return value, "ECLipsE-Fast"
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
    torus = None if transposed else _circular_embedding(node, kernel, size, strides, ctx.grid)
    try:
        if torus is not None:
            norm = conv_operator_norm(
                kernel,
                padding="circular",
                input_size=torus,
                stride=strides,
                dilation=dilations,
                groups=groups,
            )
        else:
            norm = conv_operator_norm(
                kernel,
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
    dense = None  # zero padding as zero padding, and a linear layer for chains (unrolled.py)
    matrix = None if transposed else _unrolled(node.attributes, kernel, size, dilations, groups)
    if matrix is not None:
        ctx.linears[node.name] = _Linear(matrix, var)
        dense = _sigma_upper(matrix)
    if dense is not None and dense[0] < upper:
        return dense[0], f"{node.op_type}{where}{note}: {dense[2]} of the unrolled matrix", dense[1]
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
            1 + DENSE_ROUNDING
        ), "AveragePool: exact norm at this size (Kronecker of 1-D pools)"
    return total * (1 + DENSE_ROUNDING), "AveragePool: Kronecker of 1-D pools, √(‖P‖₁‖P‖∞) per axis"


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
    return float(np.sqrt(total.max())) * (1 + DENSE_ROUNDING) if total.size else 0.0


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
        gated = gated_product(ctx, node)
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
        top = float(abs(scale).max()) * (1 + DENSE_ROUNDING) if scale.size else 0.0
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
        return 1.0 / math.sqrt(count) * (1 + DENSE_ROUNDING), f"GlobalAveragePool: 1/√{count}"
    if op in ("ReduceMean", "ReduceSum"):
        count = _reduce_axes(ctx, node, var)
        if op == "ReduceMean":
            return (1.0 / math.sqrt(count)) * (1 + DENSE_ROUNDING), f"ReduceMean: 1/√{count}"
        return math.sqrt(count) * (1 + DENSE_ROUNDING), f"ReduceSum: √{count}"
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
        return factor * (1 + DENSE_ROUNDING), f"{op}: √(copies)"
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
    raise _Vacuous(top / math.sqrt(eps) * (1 + DENSE_ROUNDING), f"max|γ|/√ε, ε = {eps:g}")


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
