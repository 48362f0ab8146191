"""The DAG bound on ONNX graphs: exact small graphs (onnx.helper) whose constant is known, each
op's factor against onnxruntime evaluations, bad graphs, and real torch exports checked against
the torch model's own Jacobians."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sncli.errors import CheckpointError, InputShapeError  # noqa: E402
from sncli.lipschitz import chain_bound, graph_lipschitz  # noqa: E402

F = TensorProto.FLOAT


def save(path: Path, nodes, inputs, outputs, inits=(), opset: int = 17) -> Path:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, F, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, F, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in inits],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    path.write_bytes(model.SerializeToString())
    return path


def bound_of(path: Path, **kw) -> object:
    return graph_lipschitz(path, lower=kw.pop("lower", False), **kw)


def run(path: Path, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})


# --------------------------------------------------------------------- the "Why" list


def test_two_heads_multiply_nothing(tmp_path: Path) -> None:
    """Trunk 10·I, heads I and 0.001·I: outputs 10x and 0.01x, joint √(100 + 1e-4)."""
    eye = np.eye(4)
    path = save(
        tmp_path / "heads.onnx",
        [
            helper.make_node("Gemm", ["x", "t"], ["h"], transB=1),
            helper.make_node("Gemm", ["h", "a"], ["y1"], transB=1),
            helper.make_node("Gemm", ["h", "b"], ["y2"], transB=1),
        ],
        [("x", [1, 4])],
        [("y1", [1, 4]), ("y2", [1, 4])],
        [("t", 10 * eye), ("a", eye), ("b", 0.001 * eye)],
    )
    report = bound_of(path)
    assert [o.bound for o in report.outputs] == pytest.approx([10.0, 0.01], rel=1e-7)
    assert report.bound == pytest.approx(math.sqrt(100 + 1e-4), rel=1e-7)
    assert report.bound >= math.sqrt(100 + 1e-4) * (1 - 1e-7)  # float32 weights: 10, 0.001
    assert report.certified


def test_residual_is_one_plus_branch(tmp_path: Path) -> None:
    path = save(
        tmp_path / "res.onnx",
        [
            helper.make_node("Gemm", ["x", "w"], ["g"], transB=1),
            helper.make_node("Add", ["x", "g"], ["y"]),
        ],
        [("x", [1, 3])],
        [("y", [1, 3])],
        [("w", 0.5 * np.eye(3))],
    )
    report = bound_of(path)
    assert report.bound == pytest.approx(1.5, rel=1e-9) and report.bound >= 1.5
    assert report.certified
    assert [s.op for s in report.path][-1] == "Add"


def test_overlapping_max_pool(tmp_path: Path) -> None:
    """MaxPool 3×3 stride 1 between identity 1×1 convs: true constant 3 (a bump is seen 9×)."""
    one = np.ones((1, 1, 1, 1))
    path = save(
        tmp_path / "pool.onnx",
        [
            helper.make_node("Conv", ["x", "k1"], ["a"], kernel_shape=[1, 1]),
            helper.make_node(
                "MaxPool", ["a"], ["b"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]
            ),
            helper.make_node("Conv", ["b", "k2"], ["y"], kernel_shape=[1, 1]),
        ],
        [("x", [1, 1, 8, 8])],
        [("y", [1, 1, 8, 8])],
        [("k1", one), ("k2", one)],
    )
    report = bound_of(path)
    assert report.bound == pytest.approx(3.0, rel=1e-6) and report.bound >= 3.0
    x = np.zeros((1, 1, 8, 8))
    bump = x.copy()
    bump[0, 0, 4, 4] = 1.0
    ratio = np.linalg.norm(run(path, bump)[0] - run(path, x)[0])
    assert ratio == pytest.approx(3.0, rel=1e-6)


def test_prelu_slope_three(tmp_path: Path) -> None:
    path = save(
        tmp_path / "prelu.onnx",
        [helper.make_node("PRelu", ["x", "a"], ["y"])],
        [("x", [1, 2])],
        [("y", [1, 2])],
        [("a", np.array([3.0, 0.5]))],
    )
    report = bound_of(path)
    assert report.bound == pytest.approx(3.0, rel=1e-9) and report.bound >= 3.0
    a, b = np.array([[-1.0, 0.0]]), np.array([[-2.0, 0.0]])
    assert np.linalg.norm(run(path, a)[0] - run(path, b)[0]) == pytest.approx(3.0)


def test_concat_skip_is_root_sum_square(tmp_path: Path) -> None:
    path = save(
        tmp_path / "concat.onnx",
        [
            helper.make_node("Mul", ["x", "two"], ["d"]),
            helper.make_node("Concat", ["x", "d"], ["y"], axis=1),
        ],
        [("x", [1, 3])],
        [("y", [1, 6])],
        [("two", np.array(2.0))],
    )
    report = bound_of(path)
    assert report.bound == pytest.approx(math.sqrt(5), rel=1e-9) and report.bound >= math.sqrt(5)


def test_lstm_is_not_certified_and_named(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = save(
        tmp_path / "lstm.onnx",
        [helper.make_node("LSTM", ["x", "w", "r"], ["y"], hidden_size=2, name="rnn0")],
        [("x", [5, 1, 3])],
        [("y", [5, 1, 1, 2])],
        [("w", rng.standard_normal((1, 8, 3))), ("r", rng.standard_normal((1, 8, 2)))],
    )
    report = bound_of(path)
    assert report.bound is None and not report.certified
    assert "node rnn0 (LSTM)" in report.statement() and "recurrent" in report.statement()


def test_unbounded_graph_spends_no_chain_or_segment_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dense chain that feeds a product of two variable tensors: no output can have a bound,
    so the chain is not bounded (no LipSDP budget spent) and a note says so; a graph whose
    output has a bound still bounds its chains."""
    import sncli.lipschitz.graph as graph_module

    rng = np.random.default_rng(3)
    chain = [
        helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2"], ["z"], transB=1),
    ]
    inits = [("w1", rng.standard_normal((6, 4))), ("w2", rng.standard_normal((5, 6)))]
    calls: list[int] = []
    real_chain_bound = graph_module.chain_bound
    monkeypatch.setattr(
        graph_module,
        "chain_bound",
        lambda *a, **k: calls.append(1) or real_chain_bound(*a, **k),
    )
    unbounded = save(
        tmp_path / "unbounded.onnx",
        [*chain, helper.make_node("Mul", ["z", "z"], ["y"])],
        [("x", [1, 4])],
        [("y", [1, 5])],
        inits,
    )
    report = bound_of(unbounded)
    assert report.bound is None and not report.chains and not calls
    assert any("no dense chain or conv segment was bounded" in n for n in report.notes)
    bounded = save(tmp_path / "bounded.onnx", chain, [("x", [1, 4])], [("z", [1, 5])], inits)
    report = bound_of(bounded)
    assert report.bound is not None and report.chains and calls
    assert not any("no dense chain" in n for n in report.notes)


# --------------------------------------------------------------------- other rules


def test_attention_product_and_layernorm(tmp_path: Path) -> None:
    path = save(
        tmp_path / "attn.onnx",
        [
            helper.make_node("MatMul", ["x", "xt"], ["s"], name="scores"),
            helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),
        ],
        [("x", [2, 3])],
        [("s", [2, 2])],
    )
    report = bound_of(path)
    assert report.bound is None
    assert "scores (MatMul)" in report.statement() and "two variable tensors" in report.statement()
    path = save(
        tmp_path / "ln.onnx",
        [helper.make_node("LayerNormalization", ["x", "g"], ["y"], epsilon=1e-4)],
        [("x", [1, 4])],
        [("y", [1, 4])],
        [("g", np.full(4, 2.0))],
    )
    report = bound_of(path)
    assert report.bound == pytest.approx(2.0 / math.sqrt(1e-4), rel=1e-6)
    assert not report.certified and report.nodes[0].vacuous


def test_unknown_op_dynamic_shape_and_cycle(tmp_path: Path) -> None:
    path = save(
        tmp_path / "unknown.onnx",
        [helper.make_node("Hardmax", ["x"], ["y"], name="hm")],
        [("x", [1, 4])],
        [("y", [1, 4])],
    )
    report = bound_of(path)
    assert report.bound is None and "hm (Hardmax): no Lipschitz rule" in report.statement()
    path = save(
        tmp_path / "dyn.onnx",
        [helper.make_node("GlobalAveragePool", ["x"], ["y"], name="gap")],
        [("x", ["n", 2, "h", "w"])],
        [("y", ["n", 2, 1, 1])],
    )
    with pytest.raises(
        InputShapeError, match=r"'x' 1×2×h×w is dynamic: give --input-shape x=1x2xHxW"
    ):
        bound_of(path)
    report = bound_of(path, input_shapes={"x": (1, 2, 3, 3)})
    assert report.bound == pytest.approx(1 / 3, rel=1e-9) and report.certified
    path = save(
        tmp_path / "cycle.onnx",
        [
            helper.make_node("Add", ["x", "b"], ["a"], name="n1"),
            helper.make_node("Relu", ["a"], ["b"], name="n2"),
        ],
        [("x", [1, 2])],
        [("b", [1, 2])],
    )
    with pytest.raises(CheckpointError, match="cycle through node"):
        graph_lipschitz(path, lower=False)


ACTIVATIONS = [
    ("Relu", {}, 1.0),
    ("LeakyRelu", {"alpha": 0.3}, 1.0),
    ("LeakyRelu", {"alpha": -2.0}, 2.0),
    ("Sigmoid", {}, 0.25),
    ("Tanh", {}, 1.0),
    ("Elu", {"alpha": 1.0}, 1.0),
    ("Softplus", {}, 1.0),
    ("Selu", {}, 1.7580993408473766),
    ("HardSigmoid", {"alpha": 1 / 6}, 1 / 6),
    ("HardSwish", {}, 1.5),
    ("Gelu", {}, 1.128904),
    ("Gelu", {"approximate": "tanh"}, 1.128993),
    ("Mish", {}, 1.088498),
    ("Erf", {}, 2 / math.sqrt(math.pi)),
]


@pytest.mark.parametrize(("op", "attrs", "true"), ACTIVATIONS, ids=lambda v: str(v))
def test_activation_factor_against_evaluation(
    tmp_path: Path, op: str, attrs: dict, true: float
) -> None:
    """The factor is ≥ the largest difference quotient onnxruntime shows, and tight to 1e-3."""
    opset = 20 if op == "Gelu" else 18
    path = save(
        tmp_path / "act.onnx",
        [helper.make_node(op, ["x"], ["y"], **attrs)],
        [("x", [1, 40001])],
        [("y", [1, 40001])],
        opset=opset,
    )
    factor = bound_of(path).bound
    x = np.linspace(-8, 8, 40001).reshape(1, -1)
    h = 1e-3
    quotient = np.abs(run(path, x + h)[0] - run(path, x)[0]).max() / h
    assert quotient <= factor * (1 + 1e-3)
    assert factor == pytest.approx(true, rel=2e-4)
    assert factor >= true * (1 - 1e-9)


def test_softmax_half(tmp_path: Path) -> None:
    path = save(
        tmp_path / "sm.onnx",
        [helper.make_node("Softmax", ["x"], ["y"], axis=-1)],
        [("x", [1, 5])],
        [("y", [1, 5])],
    )
    assert bound_of(path).bound == pytest.approx(0.5, rel=1e-9)
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = torch.softmax(torch.tensor(rng.standard_normal(5) * 3), 0)
        jac = torch.diag(p) - torch.outer(p, p)
        assert float(torch.linalg.matrix_norm(jac, 2)) <= 0.5 + 1e-12


def _operator_matrix(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """The linear op's matrix, column by column from onnxruntime on basis inputs."""
    n = math.prod(shape)
    columns = []
    for i in range(n):
        e = np.zeros(n)
        e[i] = 1.0
        columns.append(run(path, e.reshape(shape))[0].reshape(-1))
    return np.stack(columns, 1)


@pytest.mark.parametrize(
    "attrs",
    [
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
        {"kernel_shape": [2, 3], "strides": [1, 2]},
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 0, 1, 1], "ceil_mode": 1},
    ],
)
def test_average_pool_exact(tmp_path: Path, attrs: dict) -> None:
    path = save(
        tmp_path / "avg.onnx",
        [helper.make_node("AveragePool", ["x"], ["y"], **attrs)],
        [("x", [1, 1, 7, 6])],
        [("y", None)],
        opset=19,
    )
    report = bound_of(path)
    true = np.linalg.norm(_operator_matrix(path, (1, 1, 7, 6)), 2)
    assert report.bound >= true * (1 - 1e-6)
    if not attrs.get("ceil_mode"):
        assert report.bound == pytest.approx(true, rel=1e-6)


@pytest.mark.parametrize("height", [6, 7])
def test_conv_factor_bounds_the_operator(
    tmp_path: Path, height: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Strided, dilated, grouped conv: factor ≥ σ of the operator matrix at that size (7 rows
    + padding 2 is not a multiple of the stride: the torus is rounded up). At this size the
    default is the unrolled matrix's σ (exact); the torus bound is checked with it turned off."""
    rng = np.random.default_rng(1)
    path = save(
        tmp_path / "conv.onnx",
        [
            helper.make_node(
                "Conv",
                ["x", "k"],
                ["y"],
                kernel_shape=[3, 3],
                strides=[2, 1],
                dilations=[1, 2],
                pads=[1, 2, 1, 2],
                group=2,
            )
        ],
        [("x", [1, 2, height, 5])],
        [("y", None)],
        [("k", rng.standard_normal((4, 1, 3, 3)))],
    )
    true = np.linalg.norm(_operator_matrix(path, (1, 2, height, 5)), 2)
    report = bound_of(path)
    assert "unrolled" in report.nodes[0].source
    assert true <= report.bound <= true * (1 + 1e-6)  # onnxruntime's float32 columns
    assert report.certified
    monkeypatch.setattr("sncli.lipschitz.unrolled.UNROLLED_ENTRIES", 0)
    report = bound_of(path)
    assert "restriction of the circular one" in report.nodes[0].source
    assert true <= report.bound <= 1.5 * true
    assert report.certified


def test_batchnorm_folded_never_worse_than_product(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    k = rng.standard_normal((3, 2, 3, 3))
    gamma = np.array([2.0, 0.1, 0.1])
    path = save(
        tmp_path / "bn.onnx",
        [
            helper.make_node("Conv", ["x", "k"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"]),
        ],
        [("x", [1, 2, 6, 6])],
        [("y", [1, 3, 6, 6])],
        [("k", k), ("g", gamma), ("b", np.zeros(3)), ("m", np.zeros(3)), ("v", np.ones(3))],
    )
    report = bound_of(path)
    assert report.nodes[1].source.startswith("folded")
    true = np.linalg.norm(_operator_matrix(path, (1, 2, 6, 6)), 2)
    conv_only = save(
        tmp_path / "c.onnx",
        [helper.make_node("Conv", ["x", "k"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
        [("x", [1, 2, 6, 6])],
        [("y", [1, 3, 6, 6])],
        [("k", k)],
    )
    product = bound_of(conv_only).bound * 2.0 / math.sqrt(1 + 1e-5)
    assert true <= report.bound <= product * (1 + 1e-9)


def test_chain_bound_is_a_bound() -> None:
    rng = np.random.default_rng(3)
    weights = [rng.standard_normal((5, 4)), rng.standard_normal((3, 5))]
    value, _ = chain_bound(weights, 0.0, 1.0)
    product = np.prod([np.linalg.norm(w, 2) for w in weights])
    assert np.linalg.norm(weights[1] @ weights[0], 2) <= value <= product * (1 + 1e-9)


# --------------------------------------------------------------------- real torch exports


class TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = torch.nn.Linear(6, 8)
        self.a = torch.nn.Linear(8, 3)
        self.b = torch.nn.Linear(8, 2)

    def forward(self, x):
        h = torch.relu(self.trunk(x))
        return self.a(h), torch.sigmoid(self.b(h))


class Residual(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(2, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.c2 = torch.nn.Conv2d(4, 2, 3, padding=1)
        self.pool = torch.nn.MaxPool2d(3, 2)
        self.fc = torch.nn.Linear(2 * 3 * 3, 5)

    def forward(self, x):
        x = x + self.c2(torch.relu(self.bn(self.c1(x))))
        return self.fc(torch.flatten(self.pool(torch.relu(x)), 1))


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)
        self.ln = torch.nn.LayerNorm(8)

    def forward(self, x):
        return self.ln(x + self.attn(x, x, x, need_weights=False)[0])


class Recurrent(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(3, 4, batch_first=True)

    def forward(self, x):
        return self.lstm(x)[0]


def _bn_stats(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 2.0)
            module.running_mean.uniform_(-1, 1)
            module.weight.data.uniform_(0.5, 2.0)


def export(model: torch.nn.Module, x: torch.Tensor, path: Path, dynamo: bool = False) -> Path:
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=dynamo, external_data=dynamo)
    return path


def max_jacobian_norm(model: torch.nn.Module, shape: tuple[int, ...], samples: int = 8) -> float:
    gen = torch.Generator().manual_seed(0)
    best = 0.0
    for _ in range(samples):
        x = torch.randn(shape, generator=gen, dtype=torch.float64)

        def flat(inp):
            out = model(inp)
            out = out if isinstance(out, tuple) else (out,)
            return torch.cat([o.reshape(-1) for o in out])

        jac = torch.autograd.functional.jacobian(flat, x).reshape(-1, x.numel())
        best = max(best, float(torch.linalg.matrix_norm(jac, 2)))
    return best


@pytest.mark.parametrize(
    ("name", "shape"),
    [("mlp", (1, 10)), ("heads", (1, 6)), ("residual", (1, 2, 8, 8))],
)
def test_torch_exports_are_bounded(tmp_path: Path, name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = {
        "mlp": lambda: torch.nn.Sequential(
            torch.nn.Linear(10, 16),
            torch.nn.Tanh(),
            torch.nn.Linear(16, 16),
            torch.nn.ReLU(),
            torch.nn.Linear(16, 4),
        ),
        "heads": TwoHeads,
        "residual": Residual,
    }[name]()
    _bn_stats(model)
    path = export(model, torch.randn(shape), tmp_path / f"{name}.onnx")
    report = graph_lipschitz(path, budget=64)
    assert report.certified
    jac = max_jacobian_norm(model.double().eval(), shape)
    assert jac <= report.bound
    assert report.lower is not None and report.lower.value <= report.bound
    if name == "mlp":
        assert report.chains and len(report.chains[0].nodes) == 5


def test_dynamo_export_with_external_data(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = Residual()
    _bn_stats(model)
    path = export(model, torch.randn(1, 2, 8, 8), tmp_path / "res.onnx", dynamo=True)
    assert (tmp_path / "res.onnx.data").exists()
    report = graph_lipschitz(path, lower=False)
    assert report.certified
    assert max_jacobian_norm(model.double().eval(), (1, 2, 8, 8)) <= report.bound


@pytest.mark.parametrize("module", [Block, Recurrent])
def test_transformer_and_lstm_exports_not_certified(tmp_path: Path, module: type) -> None:
    torch.manual_seed(0)
    path = export(module(), torch.randn(1, 4, 8 if module is Block else 3), tmp_path / "m.onnx")
    report = graph_lipschitz(path, lower=False)
    assert not report.certified
    ops = {n.op for n in report.problems}
    assert ops & (
        {"MatMul", "LayerNormalization", "Softmax", "Mul", "Div"} if module is Block else {"LSTM"}
    )


@pytest.mark.parametrize("order", [("x", "s"), ("s", "x")])
def test_silu_pattern(tmp_path: Path, order: tuple[str, str]) -> None:
    """Mul(x, Sigmoid(x)) is SiLU (1.0999), not a product of two activations."""
    path = save(
        tmp_path / "silu.onnx",
        [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", list(order), ["y"])],
        [("x", [1, 40001])],
        [("y", [1, 40001])],
    )
    report = bound_of(path)
    assert report.certified and report.bound == pytest.approx(1.099839, rel=1e-4)
    x = np.linspace(-8, 8, 40001).reshape(1, -1)
    quotient = np.abs(run(path, x + 1e-3)[0] - run(path, x)[0]).max() / 1e-3
    assert quotient <= report.bound * (1 + 1e-3)  # float32 evaluation


def test_large_input_conv_uses_the_torus_bound(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    path = save(
        tmp_path / "big.onnx",
        [helper.make_node("Conv", ["x", "k"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
        [("x", [1, 2, 160, 160])],
        [("y", [1, 2, 160, 160])],
        [("k", rng.standard_normal((2, 2, 3, 3)))],
    )
    report = bound_of(path)
    node = report.nodes[0]
    assert "certified upper bound τ*" in node.source and node.lower is not None
    assert node.lower <= report.bound <= 1.02 * node.lower


def test_lower_bound_power_iteration_matches_full_jacobian(tmp_path: Path) -> None:
    """The power iteration on the NumPy rebuild and the finite-difference Jacobian find the same
    ‖J(x)‖."""
    from sncli.formats.onnx import read_onnx_graph
    from sncli.lipschitz.graph import _pass_one, _topological
    from sncli.lipschitz.lower import _Probe
    from sncli.lipschitz.ops import _Context

    torch.manual_seed(0)
    model = Residual()
    _bn_stats(model)
    path = export(model, torch.randn(1, 2, 8, 8), tmp_path / "r.onnx")
    graph = read_onnx_graph(path)
    order = _topological(graph)
    ctx = _Context(graph, None)
    _pass_one(ctx, order)
    probe = _Probe(graph, 0)
    power = probe.power(order, ctx.constants, 16)
    full = probe.finite_differences(10_000)
    assert power == pytest.approx(full, rel=2e-2)


def test_chain_through_bias_adds(tmp_path: Path) -> None:
    """MatMul → Add(bias) → Relu → MatMul → Add(bias), as the dynamo exporter writes Linear on
    3-D inputs, is one chain; its bound is ≥ the sampled Jacobian norms."""
    rng = np.random.default_rng(5)
    w1, w2 = rng.standard_normal((4, 6)), rng.standard_normal((6, 3))
    path = save(
        tmp_path / "mm.onnx",
        [
            helper.make_node("MatMul", ["x", "w1"], ["a"]),
            helper.make_node("Add", ["a", "b1"], ["b"]),
            helper.make_node("Relu", ["b"], ["c"]),
            helper.make_node("MatMul", ["c", "w2"], ["d"]),
            helper.make_node("Add", ["b2", "d"], ["y"]),
        ],
        [("x", [1, 5, 4])],
        [("y", [1, 5, 3])],
        [("w1", w1), ("b1", np.ones(6)), ("w2", w2), ("b2", np.ones(3))],
    )
    report = bound_of(path)
    assert len(report.chains) == 1 and len(report.chains[0].nodes) == 3
    product = np.linalg.norm(w1, 2) * np.linalg.norm(w2, 2)
    assert report.bound <= product * (1 + 1e-9)  # ECLipsE-Fast when present, else the product
    sampled = 0.0
    for _ in range(200):
        mask = (rng.standard_normal(6) + 1 > 0).astype(float)
        sampled = max(sampled, np.linalg.norm(w2.T @ np.diag(mask) @ w1.T, 2))
    assert sampled <= report.bound


def _ints(name: str, values: list[int]) -> tuple[str, np.ndarray]:
    return name, np.asarray(values)


LINEAR_OPS = [
    # (nodes, input shape, integer initializers, float initializers, exact?)
    ([helper.make_node("GlobalAveragePool", ["x"], ["y"])], [1, 2, 3, 4], [], [], True),
    (
        [helper.make_node("ReduceMean", ["x", "ax"], ["y"])],
        [1, 2, 3, 4],
        [("ax", [2, 3])],
        [],
        True,
    ),
    ([helper.make_node("ReduceSum", ["x", "ax"], ["y"])], [1, 2, 3, 4], [("ax", [1])], [], True),
    (
        [helper.make_node("Gather", ["x", "ix"], ["y"], axis=1)],
        [2, 4],
        [("ix", [0, 2, 2, 2])],
        [],
        True,
    ),
    (
        [helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="nearest")],
        [1, 1, 2, 3],
        [],
        [("sc", [1, 1, 2, 3])],
        True,
    ),
    ([helper.make_node("Expand", ["x", "sh"], ["y"])], [1, 3], [("sh", [4, 3])], [], True),
    ([helper.make_node("Tile", ["x", "rp"], ["y"])], [2, 3], [("rp", [2, 2])], [], True),
    ([helper.make_node("Pad", ["x", "pd"], ["y"])], [1, 3], [("pd", [0, 1, 0, 2])], [], True),
    ([helper.make_node("Mul", ["x", "c"], ["y"])], [1, 3], [], [("c", [[2.0], [-5.0]])], True),
    ([helper.make_node("Div", ["x", "c"], ["y"])], [2, 3], [], [("c", [0.5, -4.0, 1.0])], True),
    (
        [helper.make_node("Slice", ["x", "st", "en"], ["y"])],
        [2, 5],
        [("st", [0, 1]), ("en", [1, 4])],
        [],
        False,
    ),
    (
        [helper.make_node("ConvTranspose", ["x", "k"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1])],
        [1, 2, 4, 4],
        [],
        [("k", np.random.default_rng(7).standard_normal((2, 3, 3, 3)))],
        False,
    ),
]


@pytest.mark.parametrize("case", LINEAR_OPS, ids=lambda c: c[0][0].op_type)
def test_linear_op_factor_against_its_matrix(tmp_path: Path, case) -> None:
    """Each linear op's bound ≥ σ of its matrix (built from onnxruntime runs), tight if exact."""
    nodes, shape, ints, floats, exact = case
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F, shape)],
        [helper.make_tensor_value_info("y", F, None)],
        [numpy_helper.from_array(np.asarray(v, dtype=np.int64), k) for k, v in ints]
        + [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in floats],
    )
    path = tmp_path / "op.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path.write_bytes(model.SerializeToString())
    report = bound_of(path)
    assert report.certified, report.statement()
    true = np.linalg.norm(_operator_matrix(path, tuple(shape)), 2)
    assert true <= report.bound * (1 + 1e-6)
    if exact:
        assert report.bound == pytest.approx(true, rel=1e-6)
