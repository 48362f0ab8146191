"""The float64 NumPy rebuild of ONNX graphs (sncli.lipschitz.numpy_graph): each op's value, J·v
and Jᵀ·u against torch's functional op with torch.func.jvp/vjp, to 1e-10 relative (both are
float64; measured ≤ 1e-15), over seeded random shapes and attributes (stride, dilation, groups,
asymmetric pads, ceil_mode, count_include_pad, broadcasting); and whole exported models:
the value against onnxruntime (float32 model: 1e-5 relative), ⟨Jv, u⟩ = ⟨v, Jᵀu⟩ to 1e-12, and
J·v, Jᵀ·u against torch.func on the float64 torch model (1e-10)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
import torch.nn.functional as F  # noqa: E402

from sncli.formats.onnx import OnnxNode, read_onnx_graph  # noqa: E402
from sncli.lipschitz.numpy_graph import FlatGraph, Unsupported, _apply  # noqa: E402
from tests.lipschitz.test_graph import Residual, _bn_stats  # noqa: E402

#: Relative tolerance of float64 against float64 (different summation orders only).
TOL = 1e-10


def _node(op: str, n_inputs: int = 1, **attributes: Any) -> OnnxNode:
    return OnnxNode("n", op, "", tuple(f"i{k}" for k in range(n_inputs)), ("y",), attributes)


def _close(mine: Any, theirs: Any) -> None:
    theirs = np.asarray(theirs)
    assert np.shape(mine) == theirs.shape
    scale = max(float(np.linalg.norm(theirs)), 1e-300)
    assert float(np.linalg.norm(np.asarray(mine) - theirs)) <= TOL * scale


def check(
    node: OnnxNode,
    args: list[Any],
    live: list[bool],
    reference: Callable[..., Any],
    seed: int = 0,
    relu_beta: float | None = None,
) -> None:
    """The rule's value, JVP, VJP and the VJP's derivative along the tangents (its curvature
    term; 0 where the rule has none) at ``args`` against ``reference`` (torch, over the live
    args in order) and torch.func.jvp/vjp (jvp of vjp for the last)."""
    rng = np.random.default_rng(seed)
    y, jvp, vjp, *bend = _apply(node, args, live, relu_beta)
    primals = tuple(torch.as_tensor(a) for a, flag in zip(args, live, strict=True) if flag)

    def ref(*xs: Any) -> Any:
        full, it = [], iter(xs)
        for a, flag in zip(args, live, strict=True):
            full.append(next(it) if flag else (None if a is None else torch.as_tensor(a)))
        return reference(*full)

    expected = ref(*primals)
    _close(y, expected.numpy())
    tangents = [
        rng.standard_normal(a.shape) if flag else None for a, flag in zip(args, live, strict=True)
    ]
    _, jv = torch.func.jvp(
        ref, primals, tuple(torch.as_tensor(t) for t in tangents if t is not None)
    )
    _close(jvp(tangents), jv.numpy())
    u = rng.standard_normal(expected.shape)
    _, pull = torch.func.vjp(ref, *primals)
    theirs = pull(torch.as_tensor(u))
    mine = [g for g, flag in zip(vjp(u), live, strict=False) if flag]
    for a, b in zip(mine, theirs, strict=True):
        _close(a, b.numpy())

    def pulled(*xs: Any) -> Any:
        return torch.func.vjp(ref, *xs)[1](torch.as_tensor(u))

    moved = tuple(torch.as_tensor(t) for t in tangents if t is not None)
    _, curvature = torch.func.jvp(pulled, primals, moved)
    ours = bend[0](tangents, u) if bend else [None] * len(args)
    ours = [g for g, flag in zip(ours, live, strict=False) if flag]
    for a, b in zip(ours, curvature, strict=True):
        if a is None:  # a linear or piecewise-linear rule: torch's curvature is 0 too
            assert float(torch.linalg.vector_norm(b)) == 0.0
        else:
            _close(a, b.numpy())


def _conv_cases(count: int) -> list[tuple[Any, ...]]:
    """Seeded random Conv forms: (dims, stride, dilation, groups, pads begin, pads end)."""
    rng = np.random.default_rng(11)
    cases = []
    for _ in range(count):
        dims = int(rng.integers(1, 4))
        cases.append(
            (
                dims,
                [int(s) for s in rng.integers(1, 4, dims)],
                [int(d) for d in rng.integers(1, 3, dims)],
                int(rng.choice([1, 2, 4])),
                [int(p) for p in rng.integers(0, 3, dims)],
                [int(p) for p in rng.integers(0, 3, dims)],
            )
        )
    return cases


@pytest.mark.parametrize("case", _conv_cases(24))
def test_conv(case: tuple[Any, ...]) -> None:
    dims, strides, dilations, groups, begin, end = case
    rng = np.random.default_rng(sum(strides) + 7 * groups + dims)
    size = {1: 13, 2: 9, 3: 6}[dims]
    kernel = [int(k) for k in rng.integers(1, 4, dims)]
    x = rng.standard_normal((2, 2 * groups, *([size] * dims)))
    w = rng.standard_normal((3 * groups, 2, *kernel))
    b = rng.standard_normal(3 * groups)
    node = _node("Conv", 3, strides=strides, dilations=dilations, group=groups, pads=begin + end)
    flat = [p for i in reversed(range(dims)) for p in (begin[i], end[i])]
    conv = getattr(F, f"conv{dims}d")
    check(
        node,
        [x, w, b],
        [True, False, False],
        lambda x, w, b: conv(F.pad(x, flat), w, b, strides, 0, dilations, groups),
    )


@pytest.mark.parametrize("case", _conv_cases(16))
def test_conv_transpose(case: tuple[Any, ...]) -> None:
    """ConvTranspose, asymmetric pads as the symmetric-free torch op cropped."""
    dims, strides, dilations, groups, begin, end = case
    rng = np.random.default_rng(sum(strides) + 5 * groups + dims)
    size = {1: 7, 2: 5, 3: 3}[dims]
    kernel = [int(k) for k in rng.integers(2, 4, dims)]
    extra = [int(rng.integers(0, max(s, d))) for s, d in zip(strides, dilations, strict=True)]
    x = rng.standard_normal((2, 2 * groups, *([size] * dims)))
    w = rng.standard_normal((2 * groups, 3, *kernel))
    b = rng.standard_normal(3 * groups)
    node = _node(
        "ConvTranspose",
        3,
        strides=strides,
        dilations=dilations,
        group=groups,
        pads=begin + end,
        output_padding=extra,
    )
    fn = getattr(F, f"conv_transpose{dims}d")

    def ref(x: Any, w: Any, b: Any) -> Any:
        y = fn(x, w, b, strides, 0, extra, groups, dilations)
        index = [slice(None), slice(None)]
        index += [slice(p, n - q) for p, q, n in zip(begin, end, y.shape[2:], strict=True)]
        return y[tuple(index)]

    check(node, [x, w, b], [True, False, False], ref)


def _pool_cases() -> list[tuple[Any, ...]]:
    """(dims, kernel, stride, dilation, pads begin, pads end, ceil): seeded, pads ≤ kernel/2
    (torch's limit); asymmetric pads without ceil_mode."""
    rng = np.random.default_rng(3)
    cases = []
    for i in range(24):
        dims = int(rng.integers(1, 4))
        kernel = [int(k) for k in rng.integers(2, 4, dims)]
        begin = [int(rng.integers(0, k // 2 + 1)) for k in kernel]
        symmetric = i % 2 == 0
        end = begin if symmetric else [int(rng.integers(0, k // 2 + 1)) for k in kernel]
        cases.append(
            (
                dims,
                kernel,
                [int(s) for s in rng.integers(1, 4, dims)],
                [int(d) for d in rng.integers(1, 3, dims)],
                begin,
                end,
                symmetric and bool(rng.integers(0, 2)),
            )
        )
    return cases


@pytest.mark.parametrize("case", _pool_cases())
def test_max_pool(case: tuple[Any, ...]) -> None:
    dims, kernel, strides, dilations, begin, end, ceil = case
    rng = np.random.default_rng(len(kernel) + sum(strides))
    x = rng.standard_normal((2, 3, *([9 if dims < 3 else 7] * dims)))
    node = _node(
        "MaxPool",
        kernel_shape=kernel,
        strides=strides,
        dilations=dilations,
        pads=begin + end,
        ceil_mode=int(ceil),
    )
    fn = getattr(F, f"max_pool{dims}d")
    flat = [p for i in reversed(range(dims)) for p in (begin[i], end[i])]

    def ref(x: Any) -> Any:
        if begin == end:
            return fn(x, kernel, strides, begin, dilations, ceil)
        return fn(F.pad(x, flat, value=-math.inf), kernel, strides, 0, dilations, ceil)

    check(node, [x], [True], ref)


@pytest.mark.parametrize("case", [c for c in _pool_cases() if c[4] == c[5]])
@pytest.mark.parametrize("include", [False, True])
def test_average_pool(case: tuple[Any, ...], include: bool) -> None:
    dims, kernel, strides, _, pads, _, ceil = case
    rng = np.random.default_rng(len(kernel) + sum(strides) + include)
    x = rng.standard_normal((2, 3, *([8] * dims)))
    node = _node(
        "AveragePool",
        kernel_shape=kernel,
        strides=strides,
        pads=pads + pads,
        ceil_mode=int(ceil),
        count_include_pad=int(include),
    )
    fn = getattr(F, f"avg_pool{dims}d")
    check(node, [x], [True], lambda x: fn(x, kernel, strides, pads, ceil, include))


def test_unsupported_pool_and_conv_forms() -> None:
    x = np.zeros((1, 1, 4, 4))
    with pytest.raises(Unsupported):
        _apply(_node("AveragePool", kernel_shape=[2, 2], pads=[0, 0, 1, 1]), [x], [True], None)
    with pytest.raises(Unsupported):
        _apply(
            _node("Conv", 2, auto_pad="SAME_UPPER"), [x, np.ones((1, 1, 3, 3))], [True, False], None
        )
    with pytest.raises(Unsupported):
        _apply(_node("Conv", 2), [x, np.ones((1, 1, 3, 3))], [True, True], None)
    with pytest.raises(Unsupported):
        _apply(_node("Loop"), [x], [True], None)


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pools(op: str) -> None:
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 4))
    if op == "GlobalAveragePool":
        check(_node(op), [x], [True], lambda x: x.mean(dim=(2, 3), keepdim=True))
    else:
        check(_node(op), [x], [True], lambda x: x.amax(dim=(2, 3), keepdim=True))


SQRT2 = math.sqrt(2.0)
UNARY: dict[str, tuple[dict[str, Any], Callable[[Any], Any]]] = {
    "Relu": ({}, F.relu),
    "LeakyRelu": ({"alpha": 0.13}, lambda x: F.leaky_relu(x, 0.13)),
    "Sigmoid": ({}, torch.sigmoid),
    "Tanh": ({}, torch.tanh),
    "Elu": ({"alpha": 0.7}, lambda x: F.elu(x, 0.7)),
    "Selu": ({}, F.selu),
    "Softplus": ({}, lambda x: F.softplus(x, threshold=1e6)),
    "Gelu": ({}, F.gelu),
    "Erf": ({}, torch.erf),
    "HardSwish": ({}, F.hardswish),
    "HardSigmoid": ({"alpha": 0.3, "beta": 0.4}, lambda x: torch.clamp(0.3 * x + 0.4, 0, 1)),
    "Mish": ({}, F.mish),
    "Abs": ({}, torch.abs),
    "Neg": ({}, torch.neg),
    "Identity": ({}, lambda x: x),
    "Dropout": ({}, lambda x: x),
}


@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary(op: str) -> None:
    attributes, fn = UNARY[op]
    x = 2.0 * np.random.default_rng(len(op)).standard_normal((3, 4, 5))
    check(_node(op, **attributes), [x], [True], fn)


def test_gelu_tanh_and_smoothed_relu() -> None:
    x = 2.0 * np.random.default_rng(2).standard_normal((3, 7))
    check(_node("Gelu", approximate="tanh"), [x], [True], lambda x: F.gelu(x, approximate="tanh"))
    for beta in (2.0, 64.0):
        check(
            _node("Relu"),
            [x],
            [True],
            lambda x, beta=beta: F.softplus(x, beta, threshold=1e6),
            relu_beta=beta,
        )


@pytest.mark.parametrize("axis", [-1, 0, 1])
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax(op: str, axis: int) -> None:
    x = 3.0 * np.random.default_rng(axis + 5).standard_normal((3, 4, 5))
    fn = torch.softmax if op == "Softmax" else torch.log_softmax
    check(_node(op, axis=axis), [x], [True], lambda x: fn(x, axis))


@pytest.mark.parametrize("ta", [0, 1])
@pytest.mark.parametrize("tb", [0, 1])
@pytest.mark.parametrize("live_b", [False, True])
def test_gemm(ta: int, tb: int, live_b: bool) -> None:
    rng = np.random.default_rng(ta + 2 * tb)
    a = rng.standard_normal((4, 3) if ta else (3, 4))
    b = rng.standard_normal((5, 4) if tb else (4, 5))
    c = rng.standard_normal(5)
    node = _node("Gemm", 3, transA=ta, transB=tb, alpha=0.7, beta=1.3)

    def ref(a: Any, b: Any, c: Any) -> Any:
        return 0.7 * ((a.T if ta else a) @ (b.T if tb else b)) + 1.3 * c

    check(node, [a, b, c], [True, live_b, live_b], ref)


MATMUL_SHAPES = [
    ((2, 3, 4), (4, 5)),
    ((4,), (4, 5)),
    ((3, 4), (4,)),
    ((4,), (2, 4, 3)),
    ((1, 3, 4), (2, 4, 5)),
    ((4,), (4,)),
]


@pytest.mark.parametrize("shapes", MATMUL_SHAPES)
@pytest.mark.parametrize("live_b", [False, True])
def test_matmul(shapes: tuple[tuple[int, ...], ...], live_b: bool) -> None:
    rng = np.random.default_rng(len(shapes[0]) + 3 * len(shapes[1]))
    a, b = rng.standard_normal(shapes[0]), rng.standard_normal(shapes[1])
    check(_node("MatMul", 2), [a, b], [True, live_b], torch.matmul)


BINARY = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": torch.div,
    "Max": torch.maximum,
    "Min": torch.minimum,
}


@pytest.mark.parametrize("op", sorted(BINARY))
@pytest.mark.parametrize("shapes", [((3, 4), (3, 4)), ((2, 3, 4), (3, 1)), ((4,), (2, 3, 4))])
@pytest.mark.parametrize("live", [(True, True), (True, False), (False, True)])
def test_binary(op: str, shapes: tuple[tuple[int, ...], ...], live: tuple[bool, bool]) -> None:
    rng = np.random.default_rng(len(op))
    a, b = rng.standard_normal(shapes[0]), rng.standard_normal(shapes[1])
    if op == "Div":
        b = np.sign(b) * (0.5 + np.abs(b))
    check(_node(op, 2), [a, b], list(live), BINARY[op])


def test_where_prelu_batchnorm() -> None:
    rng = np.random.default_rng(9)
    cond = rng.standard_normal((3, 4)) > 0
    a, b = rng.standard_normal((3, 4)), rng.standard_normal(4)
    check(
        _node("Where", 3), [cond, a, b], [False, True, True], lambda c, a, b: torch.where(c, a, b)
    )
    x = rng.standard_normal((2, 3, 4, 4))
    slope = rng.standard_normal((3, 1, 1))
    check(_node("PRelu", 2), [x, slope], [True, False], lambda x, s: torch.where(x >= 0, x, x * s))
    gamma, beta, mean = rng.standard_normal(3), rng.standard_normal(3), rng.standard_normal(3)
    var = rng.uniform(0.5, 2.0, 3)
    check(
        _node("BatchNormalization", 5, epsilon=1e-3),
        [x, gamma, beta, mean, var],
        [True, False, False, False, False],
        lambda x, g, b, m, v: F.batch_norm(x, m, v, g, b, False, 0.0, 1e-3),
    )


def test_shape_ops() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 1, 4))
    live = [True, False]
    check(_node("Reshape", 2), [x, np.array([0, -1, 4])], live, lambda x, _: x.reshape(2, 3, 4))
    check(_node("Flatten", axis=2), [x], [True], lambda x: x.reshape(6, 4))
    check(_node("Transpose", perm=[3, 0, 2, 1]), [x], [True], lambda x: x.permute(3, 0, 2, 1))
    check(_node("Transpose"), [x], [True], lambda x: x.permute(3, 2, 1, 0))
    check(_node("Squeeze", 2), [x, np.array([-2])], live, lambda x, _: x.squeeze(2))
    check(_node("Squeeze"), [x], [True], lambda x: x.squeeze(2))
    check(_node("Unsqueeze", axes=[0, -1]), [x], [True], lambda x: x[None, ..., None])
    y = rng.standard_normal((2, 5, 1, 4))
    check(_node("Concat", 2, axis=1), [x, y], [True, True], lambda x, y: torch.cat([x, y], 1))
    check(_node("Concat", 2, axis=1), [x, y], [False, True], lambda x, y: torch.cat([x, y], 1))


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceSum"])
@pytest.mark.parametrize("keep", [0, 1])
def test_reduce(op: str, keep: int) -> None:
    x = np.random.default_rng(keep).standard_normal((2, 3, 4))
    how = torch.mean if op == "ReduceMean" else torch.sum
    check(_node(op, axes=[-1, 1], keepdims=keep), [x], [True], lambda x: how(x, (1, 2), bool(keep)))
    check(
        _node(op, 2, keepdims=keep),
        [x, np.array([0])],
        [True, False],
        lambda x, _: how(x, (0,), bool(keep)),
    )


class _Cnn(torch.nn.Module):
    """Strided, grouped and dilated convs, both pools (ceil_mode, count_include_pad), a
    transposed conv and the activations exporters write."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.c2 = torch.nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4)
        self.up = torch.nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
        self.pool = torch.nn.MaxPool2d(3, 2, ceil_mode=True)
        self.avg = torch.nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False)
        self.fc = torch.nn.Linear(4 * 4 * 4, 6)

    def forward(self, x: Any) -> Any:
        x = F.gelu(self.c1(x))
        x = F.hardswish(self.c2(x)) + torch.sigmoid(x)
        x = self.avg(torch.tanh(self.up(self.pool(x))))
        return torch.log_softmax(self.fc(torch.flatten(x, 1)), -1)


class _Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(10, 16), torch.nn.Linear(16, 3)

    def forward(self, x: Any) -> Any:
        return self.b(F.elu(self.a(x)))


MODELS: dict[str, tuple[Callable[[], Any], tuple[int, ...]]] = {
    "mlp": (_Mlp, (2, 10)),
    "cnn": (_Cnn, (1, 3, 12, 12)),
    "residual": (Residual, (1, 2, 8, 8)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_exported_models(tmp_path: Path, name: str) -> None:
    from sncli.lipschitz.graph import _pass_one, _topological
    from sncli.lipschitz.ops import _Context

    make, shape = MODELS[name]
    torch.manual_seed(0)
    model = make()
    _bn_stats(model)
    model.eval()
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():  # unfolded: BatchNorm stays a node, the weights the model's
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.randn(shape),), str(path), do_constant_folding=False, dynamo=False
        )
    graph = read_onnx_graph(path)
    order = _topological(graph)
    ctx = _Context(graph, None)
    _pass_one(ctx, order)
    (value,) = graph.inputs
    f = FlatGraph(graph, order, dict(ctx.constants), {value.name: np.zeros(shape)}, [value.name])
    rng = np.random.default_rng(1)
    x = rng.standard_normal(math.prod(shape))
    tape = f.tape(x)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (theirs,) = session.run(None, {value.name: x.reshape(shape).astype(np.float32)})
    scale = float(np.linalg.norm(theirs))
    assert float(np.linalg.norm(tape.value - theirs.reshape(-1))) <= 1e-5 * scale
    v, u = rng.standard_normal(x.size), rng.standard_normal(tape.value.size)
    jv, ju = tape.jvp(v), tape.vjp(u)
    assert abs(jv @ u - v @ ju) <= 1e-12 * np.linalg.norm(jv) * np.linalg.norm(u)
    double = model.double()

    def g(z: Any) -> Any:
        return double(z.reshape(shape)).reshape(-1)

    xt = torch.as_tensor(x)
    _close(tape.value, g(xt).detach().numpy())
    _close(jv, torch.func.jvp(g, (xt,), (torch.as_tensor(v),))[1].detach().numpy())
    _close(ju, torch.func.vjp(g, xt)[1](torch.as_tensor(u))[0].detach().numpy())
    # the ascent's gradient ∇ₓ‖J(x)v‖, against torch.func.grad through a jvp
    along, grad = tape.jvp_and_bend(v)
    _close(along, jv)
    vt = torch.as_tensor(v)
    theirs = torch.func.grad(lambda z: torch.linalg.vector_norm(torch.func.jvp(g, (z,), (vt,))[1]))(
        xt
    )
    _close(grad, theirs.detach().numpy())
