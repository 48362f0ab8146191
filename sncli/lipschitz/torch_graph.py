"""An ONNX graph as a torch function, for the lower-bound search's Jacobian power iteration.

Only a guide: the direction it finds is re-evaluated on the real model with onnxruntime, and
only that ratio is reported, so a mistake here can make the lower bound weaker, never wrong.
Ops outside the table raise ``Unsupported`` (the search then falls back to onnxruntime alone).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from sncli.formats.onnx import OnnxGraph, OnnxNode


class Unsupported(Exception):
    """The graph has an op this evaluator does not know."""


def _a(node: OnnxNode, name: str, default: Any) -> Any:
    return node.attributes.get(name, default)


def _pads(node: OnnxNode, dims: int) -> tuple[list[int], bool]:
    """(F.pad list, symmetric) from ONNX pads [b1.., e1..]."""
    pads = list(_a(node, "pads", [0] * (2 * dims)))
    if _a(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise Unsupported("auto_pad SAME")
    flat: list[int] = []
    for i in reversed(range(dims)):
        flat += [pads[i], pads[i + dims]]
    return flat, all(pads[i] == pads[i + dims] for i in range(dims))


def _conv(node: OnnxNode, x: Any, w: Any, b: Any | None) -> Any:
    import torch.nn.functional as F

    dims = w.dim() - 2
    flat, _ = _pads(node, dims)
    strides = list(_a(node, "strides", [1] * dims))
    dilations = list(_a(node, "dilations", [1] * dims))
    groups = int(_a(node, "group", 1))
    if node.op_type == "ConvTranspose":
        pads = list(_a(node, "pads", [0] * (2 * dims)))
        if any(pads[i] != pads[i + dims] for i in range(dims)):
            raise Unsupported("asymmetric ConvTranspose pads")
        out_pad = list(_a(node, "output_padding", [0] * dims))
        fn = getattr(F, f"conv_transpose{dims}d")
        return fn(x, w, b, strides, pads[:dims], out_pad, groups, dilations)
    fn = getattr(F, f"conv{dims}d")
    return fn(F.pad(x, flat), w, b, strides, 0, dilations, groups)


def _pool(node: OnnxNode, x: Any) -> Any:
    import torch.nn.functional as F

    kernel = list(_a(node, "kernel_shape", []))
    dims = len(kernel)
    strides = list(_a(node, "strides", [1] * dims))
    flat, symmetric = _pads(node, dims)
    ceil = bool(_a(node, "ceil_mode", 0))
    pads = list(_a(node, "pads", [0] * (2 * dims)))
    if node.op_type == "MaxPool":
        dil = list(_a(node, "dilations", [1] * dims))
        if not symmetric:
            x = F.pad(x, flat, value=-math.inf)
            pads = [0] * (2 * dims)
        fn = getattr(F, f"max_pool{dims}d")
        return fn(x, kernel, strides, pads[:dims], dil, ceil)
    if not symmetric or list(_a(node, "dilations", [1] * dims)) != [1] * dims:
        raise Unsupported("asymmetric or dilated AveragePool")
    fn = getattr(F, f"avg_pool{dims}d")
    include = bool(_a(node, "count_include_pad", 0))
    return fn(x, kernel, strides, pads[:dims], ceil, include)


def _gemm(node: OnnxNode, args: list[Any]) -> Any:
    a, b = args[0], args[1]
    if _a(node, "transA", 0):
        a = a.t()
    if _a(node, "transB", 0):
        b = b.t()
    y = float(_a(node, "alpha", 1.0)) * (a @ b)
    if len(args) > 2 and args[2] is not None:
        y = y + float(_a(node, "beta", 1.0)) * args[2]
    return y


def _reshape(x: Any, shape: Any) -> Any:
    target = [int(s) for s in shape.tolist()]
    target = [x.shape[i] if s == 0 else s for i, s in enumerate(target)]
    return x.reshape(target)


def _batchnorm(node: OnnxNode, args: list[Any]) -> Any:
    x, gamma, beta, mean, var = args[:5]
    shape = [1, -1] + [1] * (x.dim() - 2)
    eps = float(_a(node, "epsilon", 1e-5))
    scale = gamma / (var + eps).sqrt()
    return (x - mean.reshape(shape)) * scale.reshape(shape) + beta.reshape(shape)


def _unary_table(relu_beta: float | None = None) -> dict[str, Callable[[OnnxNode, Any], Any]]:
    import torch
    import torch.nn.functional as F

    return {
        "Relu": (lambda _n, x: F.relu(x))
        if relu_beta is None
        else (lambda _n, x: F.softplus(x, relu_beta)),
        "LeakyRelu": lambda _n, x: F.leaky_relu(x, float(_a(_n, "alpha", 0.01))),
        "Sigmoid": lambda _n, x: torch.sigmoid(x),
        "Tanh": lambda _n, x: torch.tanh(x),
        "Elu": lambda _n, x: F.elu(x, float(_a(_n, "alpha", 1.0))),
        "Selu": lambda _n, x: F.selu(x),
        "Softplus": lambda _n, x: F.softplus(x),
        "Gelu": lambda _n, x: F.gelu(x, approximate=_a(_n, "approximate", "none")),
        "Erf": lambda _n, x: torch.erf(x),
        "HardSwish": lambda _n, x: F.hardswish(x),
        "HardSigmoid": lambda _n, x: torch.clamp(
            float(_a(_n, "alpha", 0.2)) * x + float(_a(_n, "beta", 0.5)), 0, 1
        ),
        "Mish": lambda _n, x: F.mish(x),
        "Abs": lambda _n, x: x.abs(),
        "Neg": lambda _n, x: -x,
        "Identity": lambda _n, x: x,
        "Dropout": lambda _n, x: x,
        "Softmax": lambda _n, x: torch.softmax(x, int(_a(_n, "axis", -1))),
        "LogSoftmax": lambda _n, x: torch.log_softmax(x, int(_a(_n, "axis", -1))),
        "Flatten": lambda _n, x: x.reshape(math.prod(x.shape[: int(_a(_n, "axis", 1))]), -1),
        "Transpose": lambda _n, x: x.permute(
            *(_a(_n, "perm", None) or list(reversed(range(x.dim()))))
        ),
        "GlobalAveragePool": lambda _n, x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
        "GlobalMaxPool": lambda _n, x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True),
        "MaxPool": _pool,
        "AveragePool": _pool,
    }


def _apply(node: OnnxNode, args: list[Any], table: dict[str, Any]) -> list[Any]:
    import torch

    op = node.op_type
    if op in table:
        return [table[op](node, args[0])]
    if op in ("Conv", "ConvTranspose"):
        return [_conv(node, args[0], args[1], args[2] if len(args) > 2 else None)]
    if op in ("Gemm",):
        return [_gemm(node, args)]
    simple = {
        "MatMul": lambda a: a[0] @ a[1],
        "Add": lambda a: a[0] + a[1],
        "Sub": lambda a: a[0] - a[1],
        "Mul": lambda a: a[0] * a[1],
        "Div": lambda a: a[0] / a[1],
        "Max": lambda a: torch.maximum(a[0], a[1]),
        "Min": lambda a: torch.minimum(a[0], a[1]),
        "Where": lambda a: torch.where(a[0].bool(), a[1], a[2]),
        "PRelu": lambda a: torch.where(a[0] >= 0, a[0], a[0] * a[1]),
        "Reshape": lambda a: _reshape(a[0], a[1]),
        "BatchNormalization": lambda a: _batchnorm(node, a),
        "Concat": lambda a: torch.cat(a, int(_a(node, "axis", 0))),
        "Squeeze": lambda a: a[0].reshape(
            [d for i, d in enumerate(a[0].shape) if d != 1 or not _in_axes(i, node, a)]
        ),
        "Unsqueeze": lambda a: _unsqueeze(node, a),
        "ReduceMean": lambda a: _reduce(node, a, "mean"),
        "ReduceSum": lambda a: _reduce(node, a, "sum"),
    }
    if op in simple:
        return [simple[op](args)]
    raise Unsupported(op)


def _axes(node: OnnxNode, args: list[Any]) -> list[int]:
    if len(args) > 1 and args[1] is not None:
        return [int(v) for v in args[1].reshape(-1).tolist()]
    return list(_a(node, "axes", []))


def _in_axes(index: int, node: OnnxNode, args: list[Any]) -> bool:
    axes = _axes(node, args)
    rank = args[0].dim()
    return not axes or index in [a % rank for a in axes]


def _reduce(node: OnnxNode, args: list[Any], how: str) -> Any:
    """ReduceMean/ReduceSum: axes from the attribute (opset < 18) or the second input."""
    x = args[0]
    axes = _axes(node, args)
    if not axes:
        if _a(node, "noop_with_empty_axes", 0):
            return x
        axes = list(range(x.dim()))
    dims = tuple(sorted(a % x.dim() for a in axes))
    keep = bool(_a(node, "keepdims", 1))
    return x.mean(dim=dims, keepdim=keep) if how == "mean" else x.sum(dim=dims, keepdim=keep)


def _unsqueeze(node: OnnxNode, args: list[Any]) -> Any:
    x = args[0]
    rank = x.dim() + len(_axes(node, args))
    for axis in sorted(a % rank for a in _axes(node, args)):
        x = x.unsqueeze(axis)
    return x


def torch_function(
    graph: OnnxGraph,
    order: Sequence[OnnxNode],
    constants: dict[str, Any],
    dtype: Any,
    relu_beta: float | None = None,
) -> Callable[[list[Any]], Any]:
    """f(inputs) → the concatenated outputs, evaluated with torch (differentiable); with
    ``relu_beta``, ReLU is smoothed to softplus(β) (for gradient ascent only)."""
    import numpy as np
    import torch

    table = _unary_table(relu_beta)

    def tensor(value: Any) -> Any:
        array = np.array(value)
        if array.dtype.kind == "f":
            return torch.as_tensor(array, dtype=dtype)
        return torch.as_tensor(array)

    fixed: dict[str, Any] = {}
    for name in graph.initializers:
        if name not in constants:
            constants[name] = graph.load(name)

    def lookup(name: str, env: dict[str, Any]) -> Any:
        if not name:
            return None
        if name in env:
            return env[name]
        if name not in fixed:
            fixed[name] = tensor(constants[name])
        return fixed[name]

    def f(inputs: list[Any]) -> Any:
        env = {v.name: x for v, x in zip(graph.inputs, inputs, strict=True)}
        for node in order:
            if all(not n or n in constants for n in node.outputs):
                continue
            args = [lookup(n, env) for n in node.inputs]
            for name, value in zip(node.outputs, _apply(node, args, table), strict=False):
                if name:
                    env[name] = value
        return torch.cat([env[o.name].reshape(-1) for o in graph.outputs])

    return f


def power_direction(
    f: Callable[[list[Any]], Any],
    x: Any,
    split: Callable[[Any], list[Any]],
    iterations: int,
    seed: int,
) -> tuple[Any, float]:
    """Power iteration on JᵀJ at x (forward- and reverse-mode AD): (unit direction, ‖Jv‖)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    v /= torch.linalg.vector_norm(v)
    estimate = 0.0

    def g(z: Any) -> Any:
        return f(split(z))

    for _ in range(iterations):
        _, jv = torch.func.jvp(g, (x,), (v,))
        _, pullback = torch.func.vjp(g, x)
        (w,) = pullback(jv)
        estimate = float(torch.linalg.vector_norm(jv))
        norm = torch.linalg.vector_norm(w)
        if not bool(torch.isfinite(norm)) or float(norm) == 0.0:
            break
        v = w / norm
    return v, estimate
