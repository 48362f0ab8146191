"""An ONNX graph as a float64 NumPy function with its Jacobian products, for the lower-bound
search (:mod:`.lower`, :mod:`.ascent`) without torch.

One forward pass (:meth:`NumpyGraph.tape`) records, per node, what its tangent and adjoint need
(an activation's derivative, a max pool's argmax, nothing for a linear op); :meth:`Tape.jvp`
is J(x)·v (forward mode) and :meth:`Tape.vjp` is J(x)ᵀ·u (reverse mode) at the recorded x, each
costing about one forward pass. Convolutions and pools are in :mod:`.numpy_kernels`.

Only a guide: the pair the search finds is re-evaluated on the real model with onnxruntime, and
only a ratio that agrees is reported, so a mistake here can make the lower bound weaker, never
wrong. Ops outside the table raise :class:`Unsupported` (the search then falls back to
onnxruntime alone). ``relu_beta`` replaces ReLU by softplus(β) (for the ascent's gradient).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sncli.formats.onnx import OnnxGraph, OnnxNode

#: A node's rule at the recorded point: (output, JVP from the inputs' tangents (None where an
#: input does not depend on the graph's inputs), VJP giving the inputs' cotangents[, curvature]).
#: The optional curvature(tangents, ȳ) is the VJP's own derivative along the tangents at a fixed
#: cotangent ȳ, d/dε J(x + εẋ)ᵀȳ (absent: 0, as for linear and piecewise-linear ops).
Rule = tuple[Any, ...]

#: SELU's constants (ONNX's defaults, torch's values).
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_GAMMA = 1.0507009873554804934193349852946


class Unsupported(Exception):
    """The graph has an op (or an op's form) this evaluator does not know."""


def _a(node: OnnxNode, name: str, default: Any) -> Any:
    return node.attributes.get(name, default)


def _pads(node: OnnxNode, dims: int) -> tuple[list[int], list[int]]:
    """(begin, end) pads per spatial dim from ONNX pads [b1.., e1..]."""
    pads = list(_a(node, "pads", [0] * (2 * dims)))
    if _a(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise Unsupported("auto_pad SAME")
    if any(p < 0 for p in pads):
        raise Unsupported("negative pads")
    return pads[:dims], pads[dims:]


def _unbroadcast(g: Any, shape: Sequence[int]) -> Any:
    """The sum of g over the axes along which an operand of ``shape`` was broadcast."""
    extra = g.ndim - len(shape)
    if extra:
        g = g.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def _linear(y: Any, forward: Callable[[Any], Any], adjoint: Callable[[Any], Any]) -> Rule:
    """A rule for a map linear in its one live input (the first)."""
    return y, lambda t: forward(t[0]), lambda u: [adjoint(u)]


def _diagonal(y: Any, slope: Any, bend: Any = None) -> Rule:
    """A rule for an elementwise map of the first input with derivative ``slope`` and second
    derivative ``bend`` (None: 0)."""
    if bend is None:
        return y, lambda t: t[0] * slope, lambda u: [u * slope]
    return y, lambda t: t[0] * slope, lambda u: [u * slope], lambda t, u: [t[0] * bend * u]


def _softplus(x: Any, beta: float = 1.0) -> tuple[Any, Any, Any]:
    """(log(1 + e^{βx})/β, its derivative σ(βx), its second derivative), without overflow."""
    import numpy as np

    s = _sigmoid(beta * x)
    return np.logaddexp(0.0, beta * x) / beta, s, beta * s * (1.0 - s)


def _sigmoid(x: Any) -> Any:
    import numpy as np

    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _erf(x: Any) -> Any:
    from scipy.special import erf

    return erf(x)


def _unary(node: OnnxNode, x: Any, relu_beta: float | None) -> tuple[Any, Any, Any] | None:
    """(f(x), f'(x), f''(x) or None where it is 0 a.e.) for the elementwise activations, None
    for another op."""
    import numpy as np

    op = node.op_type
    if op == "Relu":
        if relu_beta is not None:
            return _softplus(x, relu_beta)
        return np.maximum(x, 0.0), (x > 0).astype(np.float64), None
    if op == "LeakyRelu":
        alpha = float(_a(node, "alpha", 0.01))
        return np.where(x > 0, x, alpha * x), np.where(x > 0, 1.0, alpha), None
    if op == "Sigmoid":
        s = _sigmoid(x)
        return s, s * (1.0 - s), s * (1.0 - s) * (1.0 - 2.0 * s)
    if op == "Tanh":
        t = np.tanh(x)
        return t, 1.0 - t * t, -2.0 * t * (1.0 - t * t)
    if op in ("Elu", "Selu"):
        alpha = float(_a(node, "alpha", 1.0 if op == "Elu" else SELU_ALPHA))
        gamma = float(_a(node, "gamma", SELU_GAMMA)) if op == "Selu" else 1.0
        e = np.expm1(np.minimum(x, 0.0))
        bend = gamma * np.where(x > 0, 0.0, alpha * (e + 1))
        return (
            gamma * np.where(x > 0, x, alpha * e),
            gamma * np.where(x > 0, 1.0, alpha * (e + 1)),
            bend,
        )
    if op == "Softplus":
        return _softplus(x)
    if op == "Gelu":
        if _a(node, "approximate", "none") == "tanh":
            c, k = math.sqrt(2.0 / math.pi), 0.044715
            t = np.tanh(c * (x + k * x**3))
            inner = c * (1 + 3 * k * x * x)  # d/dx of c(x + kx³)
            sech2 = 1 - t * t
            slope = 0.5 * (1 + t) + 0.5 * x * sech2 * inner
            bend = sech2 * inner + 0.5 * x * sech2 * (6 * c * k * x - 2 * t * inner * inner)
            return 0.5 * x * (1 + t), slope, bend
        cdf = 0.5 * (1.0 + _erf(x / math.sqrt(2.0)))
        pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
        return x * cdf, cdf + x * pdf, pdf * (2.0 - x * x)
    if op == "Erf":
        slope = 2.0 / math.sqrt(math.pi) * np.exp(-x * x)
        return _erf(x), slope, -2.0 * x * slope
    if op == "HardSwish":
        y = x * np.clip(x + 3.0, 0.0, 6.0) / 6.0
        inside = (x >= -3.0) & (x <= 3.0)
        slope = np.where(x < -3.0, 0.0, np.where(x <= 3.0, (2.0 * x + 3.0) / 6.0, 1.0))
        return y, slope, np.where(inside, 1.0 / 3.0, 0.0)
    if op == "HardSigmoid":
        z = float(_a(node, "alpha", 0.2)) * x + float(_a(node, "beta", 0.5))
        inside = (z >= 0) & (z <= 1)
        return np.clip(z, 0.0, 1.0), np.where(inside, float(_a(node, "alpha", 0.2)), 0.0), None
    if op == "Mish":
        sp, s, ds = _softplus(x)
        t = np.tanh(sp)
        sech2 = 1.0 - t * t
        return x * t, t + x * sech2 * s, sech2 * (2.0 * s + x * ds - 2.0 * x * t * s * s)
    if op == "Abs":
        return np.abs(x), np.sign(x), None
    return None


def _reshaped(x: Any, shape: Sequence[int]) -> Rule:
    y = x.reshape(shape)
    return _linear(y, lambda t: t.reshape(y.shape), lambda u: u.reshape(x.shape))


def _reshape(x: Any, shape: Any) -> Rule:
    target = [int(s) for s in shape.reshape(-1).tolist()]
    target = [x.shape[i] if s == 0 else s for i, s in enumerate(target)]
    return _reshaped(x, target)


def _axes(node: OnnxNode, args: list[Any]) -> list[int]:
    if len(args) > 1 and args[1] is not None:
        return [int(v) for v in args[1].reshape(-1).tolist()]
    return list(_a(node, "axes", []))


def _squeeze(node: OnnxNode, args: list[Any]) -> Rule:
    x = args[0]
    axes = [a % x.ndim for a in _axes(node, args)]
    return _reshaped(x, [d for i, d in enumerate(x.shape) if d != 1 or (axes and i not in axes)])


def _unsqueeze(node: OnnxNode, args: list[Any]) -> Rule:
    x = args[0]
    rank = x.ndim + len(_axes(node, args))
    shape = list(x.shape)
    for axis in sorted(a % rank for a in _axes(node, args)):
        shape.insert(axis, 1)
    return _reshaped(x, shape)


def _transpose(node: OnnxNode, x: Any) -> Rule:
    import numpy as np

    perm = list(_a(node, "perm", None) or reversed(range(x.ndim)))
    back = list(np.argsort(perm))
    return _linear(x.transpose(perm), lambda t: t.transpose(perm), lambda u: u.transpose(back))


def _reduce(node: OnnxNode, args: list[Any], how: str) -> Rule:
    """ReduceMean/ReduceSum: axes from the attribute (opset < 18) or the second input."""
    import numpy as np

    x = args[0]
    axes = _axes(node, args)
    if not axes:
        if _a(node, "noop_with_empty_axes", 0):
            return _linear(x, lambda t: t, lambda u: u)
        axes = list(range(x.ndim))
    dims = tuple(sorted(a % x.ndim for a in axes))
    keep = bool(_a(node, "keepdims", 1))
    scale = 1.0 / math.prod(x.shape[d] for d in dims) if how == "mean" else 1.0

    def forward(t: Any) -> Any:
        return t.sum(axis=dims, keepdims=keep) * scale

    def adjoint(u: Any) -> Any:
        full = u if keep else np.expand_dims(u, dims)
        return np.broadcast_to(full * scale, x.shape)

    return _linear(forward(x), forward, adjoint)


def _softmax(node: OnnxNode, x: Any, log: bool) -> Rule:
    import numpy as np

    axis = int(_a(node, "axis", -1))
    shifted = x - x.max(axis=axis, keepdims=True)
    lse = np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
    y = shifted - lse
    p = np.exp(y)

    def both(t: Any) -> Any:  # softmax's Jacobian diag(p) − ppᵀ is symmetric
        return p * (t - (p * t).sum(axis=axis, keepdims=True))

    if log:
        return (
            y,
            lambda t: t[0] - (p * t[0]).sum(axis=axis, keepdims=True),
            lambda u: [u - p * u.sum(axis=axis, keepdims=True)],
            lambda t, u: [-both(t[0]) * u.sum(axis=axis, keepdims=True)],
        )

    def bend(t: list[Any], u: Any) -> list[Any]:
        """d/dε of p ⊙ (ȳ − ⟨p, ȳ⟩) along ṗ = both(ẋ)."""
        dp = both(t[0])
        return [
            dp * (u - (p * u).sum(axis=axis, keepdims=True))
            - p * (dp * u).sum(axis=axis, keepdims=True)
        ]

    return p, lambda t: both(t[0]), lambda u: [both(u)], bend


def _gemm(node: OnnxNode, args: list[Any], live: list[bool]) -> Rule:
    import numpy as np

    a, b = args[0], args[1]
    c = args[2] if len(args) > 2 else None
    ta, tb = bool(_a(node, "transA", 0)), bool(_a(node, "transB", 0))
    alpha, beta = float(_a(node, "alpha", 1.0)), float(_a(node, "beta", 1.0))
    am, bm = (a.T if ta else a), (b.T if tb else b)
    y = alpha * (am @ bm)
    if c is not None:
        y = y + beta * c

    def jvp(t: list[Any]) -> Any:
        out = np.zeros(y.shape)
        if t[0] is not None:
            out = out + alpha * ((t[0].T if ta else t[0]) @ bm)
        if t[1] is not None:
            out = out + alpha * (am @ (t[1].T if tb else t[1]))
        if len(t) > 2 and t[2] is not None:
            out = out + beta * t[2]
        return out

    def vjp(u: Any) -> list[Any]:
        da = db = dc = None
        if live[0]:
            da = alpha * (u @ bm.T)
            da = da.T if ta else da
        if live[1]:
            db = alpha * (am.T @ u)
            db = db.T if tb else db
        if len(live) > 2 and live[2] and c is not None:
            dc = _unbroadcast(beta * u, c.shape)
        return [da, db, dc]

    if not (live[0] and live[1]):
        return y, jvp, vjp

    def bend(
        t: list[Any], u: Any
    ) -> list[Any]:  # bilinear: each operand's VJP at the other's tangent
        da = _gemm(node, [a, t[1]], [True, True])[2](u)[0] if t[1] is not None else None
        db = _gemm(node, [t[0], b], [True, True])[2](u)[1] if t[0] is not None else None
        return [da, db, None]

    return y, jvp, vjp, bend


def _matmul(args: list[Any], live: list[bool]) -> Rule:
    """MatMul with NumPy's (= ONNX's) broadcasting; 1-D operands as a row/column."""
    a, b = args
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b

    def product(p: Any, q: Any) -> Any:
        r = (p[None, :] if p.ndim == 1 else p) @ (q[:, None] if q.ndim == 1 else q)
        if b.ndim == 1:
            r = r[..., 0]
        if a.ndim == 1:
            r = r[..., 0, :] if b.ndim > 1 else r[..., 0]
        return r

    y = product(a, b)

    def jvp(t: list[Any]) -> Any:
        out = 0.0
        if t[0] is not None:
            out = out + product(t[0], b)
        if t[1] is not None:
            out = out + product(a, t[1])
        return out

    def vjp(u: Any) -> list[Any]:
        u2 = u.reshape(*y.shape[:-1], 1, -1) if a.ndim == 1 and b.ndim > 1 else u
        if b.ndim == 1:
            u2 = u2[..., None]
        if a.ndim == 1 and b.ndim == 1:
            u2 = u.reshape(1, 1)
        da = _unbroadcast(u2 @ b2.swapaxes(-1, -2), a2.shape).reshape(a.shape) if live[0] else None
        db = _unbroadcast(a2.swapaxes(-1, -2) @ u2, b2.shape).reshape(b.shape) if live[1] else None
        return [da, db]

    if not (live[0] and live[1]):
        return y, jvp, vjp

    def bend(
        t: list[Any], u: Any
    ) -> list[Any]:  # bilinear: each operand's VJP at the other's tangent
        da = _matmul([a, t[1]], [True, True])[2](u)[0] if t[1] is not None else None
        db = _matmul([t[0], b], [True, True])[2](u)[1] if t[0] is not None else None
        return [da, db]

    return y, jvp, vjp, bend


def _binary(op: str, a: Any, b: Any) -> Rule:
    """Add/Sub/Mul/Div/Max/Min with broadcasting: (y, jvp, vjp)."""
    import numpy as np

    if op in ("Add", "Sub"):
        sign = 1.0 if op == "Add" else -1.0
        da, db = 1.0, sign
        y = a + b if op == "Add" else a - b
    elif op == "Mul":
        y, da, db = a * b, b, a
    elif op == "Div":
        y, da = a / b, 1.0 / b
        db = -y / b
    elif op in ("Max", "Min"):
        wins = a > b if op == "Max" else a < b
        da = np.where(a == b, 0.5, wins.astype(np.float64))  # ties split, as torch.maximum's
        db = 1.0 - da
        y = np.maximum(a, b) if op == "Max" else np.minimum(a, b)
    else:  # pragma: no cover - the caller checks
        raise Unsupported(op)

    def jvp(t: list[Any]) -> Any:
        out = np.zeros(y.shape)
        if t[0] is not None:
            out = out + t[0] * da
        if t[1] is not None:
            out = out + t[1] * db
        return out

    def vjp(u: Any) -> list[Any]:
        return [_unbroadcast(u * da, np.shape(a)), _unbroadcast(u * db, np.shape(b))]

    if op not in ("Mul", "Div"):  # Add, Sub: linear; Max, Min: piecewise linear
        return y, jvp, vjp

    def bend(t: list[Any], u: Any) -> list[Any]:
        """d/dε of the VJP: Mul's (uḃ, uȧ); Div's (−uḃ/b², −uȧ/b² + 2uaḃ/b³)."""
        ta = 0.0 if t[0] is None else t[0]
        tb = 0.0 if t[1] is None else t[1]
        if op == "Mul":
            ga, gb = u * tb, u * ta
        else:
            ga = -u * tb / (b * b)
            gb = -u * ta / (b * b) + 2.0 * u * a * tb / (b * b * b)
        return [
            _unbroadcast(np.broadcast_to(ga, y.shape), np.shape(a)),
            _unbroadcast(np.broadcast_to(gb, y.shape), np.shape(b)),
        ]

    return y, jvp, vjp, bend


def _where(args: list[Any]) -> Rule:
    import numpy as np

    cond = args[0].astype(bool)
    y = np.where(cond, args[1], args[2])

    def jvp(t: list[Any]) -> Any:
        zero = np.zeros(y.shape)
        return np.where(cond, zero if t[1] is None else t[1], zero if t[2] is None else t[2])

    def vjp(u: Any) -> list[Any]:
        return [
            None,
            _unbroadcast(np.where(cond, u, 0.0), args[1].shape),
            _unbroadcast(np.where(cond, 0.0, u), args[2].shape),
        ]

    return y, jvp, vjp


def _concat(node: OnnxNode, args: list[Any]) -> Rule:
    import numpy as np

    axis = int(_a(node, "axis", 0))
    y = np.concatenate(args, axis)
    cuts = np.cumsum([x.shape[axis] for x in args])[:-1]

    def jvp(t: list[Any]) -> Any:
        parts = [np.zeros(x.shape) if d is None else d for x, d in zip(args, t, strict=True)]
        return np.concatenate(parts, axis)

    return y, jvp, lambda u: np.split(u, cuts, axis)


def _batchnorm(node: OnnxNode, args: list[Any]) -> Rule:
    import numpy as np

    x, gamma, beta, mean, var = args[:5]
    shape = [1, -1] + [1] * (x.ndim - 2)
    eps = float(_a(node, "epsilon", 1e-5))
    scale = (gamma / np.sqrt(var + eps)).reshape(shape)
    return _diagonal((x - mean.reshape(shape)) * scale + beta.reshape(shape), scale)


def _prelu(x: Any, slope: Any) -> Rule:
    import numpy as np

    factor = np.where(x >= 0, 1.0, slope * np.ones(x.shape))
    return _diagonal(x * factor, factor)


def _conv(node: OnnxNode, args: list[Any]) -> Rule:
    """Conv (im2col) and ConvTranspose (the adjoint of a conv), N-d."""
    from sncli.lipschitz.numpy_kernels import conv_valid, conv_valid_adjoint, crop, pad

    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else None
    dims = w.ndim - 2
    begin, end = _pads(node, dims)
    strides = list(_a(node, "strides", [1] * dims))
    dilations = list(_a(node, "dilations", [1] * dims))
    groups = int(_a(node, "group", 1))
    bias = 0.0 if b is None else b.reshape(1, -1, *([1] * dims))
    spatial = x.shape[2:]
    if node.op_type == "Conv":
        padded = [n + p + q for n, p, q in zip(spatial, begin, end, strict=True)]

        def forward(t: Any) -> Any:
            return conv_valid(pad(t, begin, end), w, strides, dilations, groups)

        def adjoint(u: Any) -> Any:
            full = conv_valid_adjoint(u, w, strides, dilations, groups, padded)
            return crop(full, begin, spatial)

        return _linear(forward(x) + bias, forward, adjoint)
    if "output_shape" in node.attributes:
        raise Unsupported("ConvTranspose with output_shape")
    extra = list(_a(node, "output_padding", [0] * dims))
    full = [
        (n - 1) * s + d * (k - 1) + 1
        for n, s, d, k in zip(spatial, strides, dilations, w.shape[2:], strict=True)
    ]
    size = [f + e - p - q for f, e, p, q in zip(full, extra, begin, end, strict=True)]

    def forward_t(t: Any) -> Any:
        y = conv_valid_adjoint(t, w, strides, dilations, groups, full)
        return crop(pad(y, [0] * dims, extra), begin, size)

    def adjoint_t(u: Any) -> Any:
        back = crop(pad(u, begin, end), [0] * dims, full)
        return conv_valid(back, w, strides, dilations, groups)

    return _linear(forward_t(x) + bias, forward_t, adjoint_t)


def _pool(node: OnnxNode, x: Any) -> Rule:
    import numpy as np

    from sncli.lipschitz.numpy_kernels import avg_pool, avg_pool_adjoint, crop, max_pool

    kernel = list(_a(node, "kernel_shape", []))
    dims = len(kernel)
    strides = list(_a(node, "strides", [1] * dims))
    dilations = list(_a(node, "dilations", [1] * dims))
    begin, end = _pads(node, dims)
    ceil = bool(_a(node, "ceil_mode", 0))
    spatial = x.shape[2:]
    if node.op_type == "MaxPool":
        y, index, (shape, pb, tail) = max_pool(x, kernel, strides, dilations, begin, end, ceil)
        from sncli.lipschitz.numpy_kernels import pad

        def jvp(t: list[Any]) -> Any:
            return pad(t[0], pb, tail).reshape(-1)[index]

        def vjp(u: Any) -> list[Any]:
            size = math.prod(shape)
            full = np.bincount(index.reshape(-1), u.reshape(-1), size).reshape(shape)
            return [crop(full, pb, spatial)]

        return y, jvp, vjp
    if begin != end or dilations != [1] * dims:
        raise Unsupported("asymmetric or dilated AveragePool")
    include = bool(_a(node, "count_include_pad", 0))
    y, divisor, tail = avg_pool(x, kernel, strides, begin, ceil, include)
    return _linear(
        y,
        lambda t: avg_pool(t, kernel, strides, begin, ceil, include)[0],
        lambda u: avg_pool_adjoint(u, divisor, spatial, kernel, strides, begin, tail),
    )


def _global(op: str, x: Any) -> Rule:
    import numpy as np

    axes = tuple(range(2, x.ndim))
    if op == "GlobalAveragePool":
        count = math.prod(x.shape[2:])
        return _linear(
            x.mean(axis=axes, keepdims=True),
            lambda t: t.mean(axis=axes, keepdims=True),
            lambda u: np.broadcast_to(u / count, x.shape),
        )
    flat = x.reshape(*x.shape[:2], -1)
    arg = np.argmax(flat, axis=-1)[..., None]
    keep = (*x.shape[:2], *([1] * len(axes)))

    def vjp(u: Any) -> list[Any]:
        full = np.zeros(flat.shape)
        np.put_along_axis(full, arg, u.reshape(*x.shape[:2], 1), -1)
        return [full.reshape(x.shape)]

    return (
        np.take_along_axis(flat, arg, -1).reshape(keep),
        lambda t: np.take_along_axis(t[0].reshape(flat.shape), arg, -1).reshape(keep),
        vjp,
    )


def _apply(node: OnnxNode, args: list[Any], live: list[bool], relu_beta: float | None) -> Rule:
    """The node's rule at ``args``; :class:`Unsupported` for an op (or a live operand, such as a
    computed conv weight) the table lacks."""
    op = node.op_type
    x = args[0] if args else None
    if op in ("Identity", "Dropout"):
        return _linear(x, lambda t: t, lambda u: u)
    if op == "Neg":
        return _linear(-x, lambda t: -t, lambda u: -u)
    triple = _unary(node, x, relu_beta) if x is not None else None
    if triple is not None:
        return _diagonal(*triple)
    first_only = {
        "Softmax": lambda: _softmax(node, x, False),
        "LogSoftmax": lambda: _softmax(node, x, True),
        "Flatten": lambda: _reshaped(x, [math.prod(x.shape[: int(_a(node, "axis", 1))]), -1]),
        "Transpose": lambda: _transpose(node, x),
        "GlobalAveragePool": lambda: _global(op, x),
        "GlobalMaxPool": lambda: _global(op, x),
        "MaxPool": lambda: _pool(node, x),
        "AveragePool": lambda: _pool(node, x),
        "Conv": lambda: _conv(node, args),
        "ConvTranspose": lambda: _conv(node, args),
        "PRelu": lambda: _prelu(x, args[1]),
        "Reshape": lambda: _reshape(x, args[1]),
        "BatchNormalization": lambda: _batchnorm(node, args),
        "Squeeze": lambda: _squeeze(node, args),
        "Unsqueeze": lambda: _unsqueeze(node, args),
        "ReduceMean": lambda: _reduce(node, args, "mean"),
        "ReduceSum": lambda: _reduce(node, args, "sum"),
    }
    if op in first_only:
        if any(live[1:]):
            raise Unsupported(f"{op} with an operand other than the first computed from the input")
        return first_only[op]()
    if op in ("Add", "Sub", "Mul", "Div", "Max", "Min"):
        if len(args) != 2:
            raise Unsupported(f"{op} of {len(args)} inputs")
        return _binary(op, args[0], args[1])
    if op == "Gemm":
        return _gemm(node, args, live)
    if op == "MatMul":
        return _matmul(args, live)
    if op == "Where":
        return _where(args)
    if op == "Concat":
        return _concat(node, args)
    raise Unsupported(op)


@dataclass(frozen=True)
class _Step:
    """One recorded node: its input names and which depend on the graph's inputs, its output."""

    inputs: tuple[str, ...]
    live: tuple[bool, ...]
    output: str
    jvp: Callable[[list[Any]], Any]
    vjp: Callable[[Any], list[Any]]
    bend: Callable[[list[Any], Any], list[Any]] | None = None


class Tape:
    """The graph's outputs at one point with what J·v and Jᵀ·u there need."""

    def __init__(self, values: dict[str, Any], steps: list[_Step], graph: OnnxGraph) -> None:
        import numpy as np

        self.steps = steps
        self.inputs = [v.name for v in graph.inputs]
        self.outputs = [(v.name, np.shape(values[v.name])) for v in graph.outputs]
        self.value = np.concatenate([np.reshape(values[v.name], -1) for v in graph.outputs])
        self.value = self.value.astype(np.float64)

    def _tangents(self, tangents: dict[str, Any]) -> dict[str, Any]:
        """Every live value's tangent for the inputs' ``tangents``."""
        known = dict(tangents)
        for step in self.steps:
            known[step.output] = step.jvp(
                [
                    known.get(n) if live else None
                    for n, live in zip(step.inputs, step.live, strict=True)
                ]
            )
        return known

    def _flat(self, known: dict[str, Any]) -> Any:
        import numpy as np

        return np.concatenate(
            [
                np.reshape(known[n], -1) if n in known else np.zeros(math.prod(s))
                for n, s in self.outputs
            ]
        )

    def _seed(self, cotangent: Any) -> dict[str, Any]:
        known: dict[str, Any] = {}
        offset = 0
        for name, shape in self.outputs:
            size = math.prod(shape)
            part = cotangent[offset : offset + size].reshape(shape)
            _add(known, name, part)
            offset += size
        return known

    def jvp(self, tangents: dict[str, Any]) -> Any:
        """J·v for tangents per input name (absent: zero), as the flat concatenated outputs."""
        return self._flat(self._tangents(tangents))

    def vjp(self, cotangent: Any) -> dict[str, Any]:
        """Jᵀ·u for u over the flat concatenated outputs: the cotangent per input name (inputs
        the outputs do not depend on are absent)."""
        known = self._seed(cotangent)
        for step in reversed(self.steps):
            if step.output in known:
                _spread(known, step, step.vjp(known.pop(step.output)))
        return {n: known[n] for n in self.inputs if n in known}

    def jvp_and_bend(
        self, tangents: dict[str, Any], unit: bool = True
    ) -> tuple[Any, dict[str, Any]]:
        """(J·v, d/dε J(x + εv)ᵀu at ε = 0) with u = J·v/‖J·v‖ (``unit``) or J·v: forward over
        reverse mode, exact where the ops are twice differentiable (the a.e. derivative of a
        piecewise-linear op, whose own curvature is 0). Since second derivatives commute, the
        second is ∇ₓ⟨u, J(x)v⟩, which is ∇ₓ‖J(x)v‖ for u fixed at J(x)v/‖J(x)v‖."""
        import numpy as np

        known = self._tangents(tangents)
        jv = self._flat(known)
        size = float(np.linalg.norm(jv))
        u = jv / size if unit and size > 0 else jv
        bar, dot = self._seed(u), {}
        for step in reversed(self.steps):
            if step.output in dot:
                _spread(dot, step, step.vjp(dot.pop(step.output)))
            if step.output in bar:
                ybar = bar.pop(step.output)
                _spread(bar, step, step.vjp(ybar))
                if step.bend is not None:
                    ins = [
                        known.get(n) if live else None
                        for n, live in zip(step.inputs, step.live, strict=True)
                    ]
                    _spread(dot, step, step.bend(ins, ybar))
        return jv, {n: dot[n] for n in self.inputs if n in dot}


def _add(known: dict[str, Any], name: str, value: Any) -> None:
    known[name] = known[name] + value if name in known else value


def _spread(known: dict[str, Any], step: _Step, grads: list[Any]) -> None:
    """Add a step's input cotangents (None: nothing) to ``known``."""
    for name, live, g in zip(step.inputs, step.live, grads, strict=False):
        if live and g is not None:
            _add(known, name, g)


class NumpyGraph:
    """The graph in float64 NumPy: :meth:`tape` evaluates it and records its Jacobian rules."""

    def __init__(
        self, graph: OnnxGraph, order: Sequence[OnnxNode], constants: dict[str, Any]
    ) -> None:
        self.graph = graph
        self.order = [n for n in order if not all(not o or o in constants for o in n.outputs)]
        self.constants = constants
        self.fixed: dict[str, Any] = {}
        for name in graph.initializers:
            if name not in constants:
                constants[name] = graph.load(name)

    def _constant(self, name: str) -> Any:
        import numpy as np

        if name not in self.fixed:
            array = np.asarray(self.constants[name])
            self.fixed[name] = array.astype(np.float64) if array.dtype.kind == "f" else array
        return self.fixed[name]

    def tape(self, inputs: dict[str, Any], relu_beta: float | None = None) -> Tape:
        """Evaluate at ``inputs`` (by name; float ones are the variables), recording the rules."""
        import numpy as np

        env: dict[str, Any] = {}
        live: set[str] = set()
        for name, value in inputs.items():
            array = np.asarray(value)
            if array.dtype.kind == "f":
                env[name] = array.astype(np.float64)
                live.add(name)
            else:
                env[name] = array
        steps: list[_Step] = []
        for node in self.order:
            args = [
                None if not n else env[n] if n in env else self._constant(n) for n in node.inputs
            ]
            flags = [bool(n) and n in live for n in node.inputs]
            y, jvp, vjp, *bend = _apply(node, args, flags, relu_beta)
            out = node.outputs[0]
            env[out] = y
            if any(flags):
                live.add(out)
                step = _Step(tuple(node.inputs), tuple(flags), out, jvp, vjp, *bend)
                steps.append(step)
        for value in self.graph.outputs:
            if value.name not in env:
                env[value.name] = self._constant(value.name)
        return Tape(env, steps, self.graph)


class FlatTape:
    """A :class:`Tape` over one flat float64 vector (the float inputs, concatenated)."""

    def __init__(
        self, tape: Tape, floats: Sequence[str], shapes: Sequence[tuple[int, ...]]
    ) -> None:
        self.tape = tape
        self.floats = floats
        self.shapes = shapes
        self.value = tape.value

    def jvp(self, v: Any) -> Any:
        """J·v for a flat input direction v."""
        return self.tape.jvp(_split(v, self.floats, self.shapes))

    def vjp(self, u: Any) -> Any:
        """Jᵀ·u as a flat input vector."""
        return self._flat(self.tape.vjp(u))

    def jvp_and_bend(self, v: Any, unit: bool = True) -> tuple[Any, Any]:
        """(J·v, ∇ₓ⟨u, J(x)v⟩) with u = J·v/‖J·v‖ (``unit``) or J·v (:meth:`Tape.jvp_and_bend`)."""
        jv, grads = self.tape.jvp_and_bend(_split(v, self.floats, self.shapes), unit)
        return jv, self._flat(grads)

    def _flat(self, grads: dict[str, Any]) -> Any:
        import numpy as np

        return np.concatenate(
            [
                np.reshape(grads[n], -1) if n in grads else np.zeros(math.prod(s))
                for n, s in zip(self.floats, self.shapes, strict=True)
            ]
        )


def _split(z: Any, floats: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> dict[str, Any]:
    parts, offset = {}, 0
    for name, shape in zip(floats, shapes, strict=True):
        size = math.prod(shape)
        parts[name] = z[offset : offset + size].reshape(shape)
        offset += size
    return parts


class FlatGraph:
    """The graph as a function of one flat float64 vector: the float inputs (``floats``, in
    order) concatenated; the other inputs fixed at ``feeds``."""

    def __init__(
        self,
        graph: OnnxGraph,
        order: Sequence[OnnxNode],
        constants: dict[str, Any],
        feeds: dict[str, Any],
        floats: Sequence[str],
    ) -> None:
        import numpy as np

        self.graph = NumpyGraph(graph, order, constants)
        self.floats = list(floats)
        self.shapes = [tuple(np.shape(feeds[n])) for n in self.floats]
        self.fixed = {n: np.asarray(v) for n, v in feeds.items() if n not in self.floats}

    def tape(self, z: Any, relu_beta: float | None = None) -> FlatTape:
        """Evaluate at the flat vector z, recording the Jacobian rules."""
        inputs = dict(self.fixed)
        inputs.update(_split(z, self.floats, self.shapes))
        return FlatTape(self.graph.tape(inputs, relu_beta), self.floats, self.shapes)

    def __call__(self, z: Any) -> Any:
        """The flat concatenated outputs at z."""
        return self.tape(z).value
