"""ONNX models as users have them (issue #23): dynamic input shapes made static by
``--input-shape`` or stated defaults, shape subgraphs folded once they are, gated products
(HardSwish written as x·Clip(x + 3, 0, 6)/6), average pools over long inputs in linear time, and
a lower-bound search that never loses the upper bound."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from sncli.cli import app  # noqa: E402
from sncli.errors import EXIT_USAGE, CheckpointError, InputShapeError  # noqa: E402
from sncli.formats.onnx import read_onnx_graph  # noqa: E402
from sncli.lipschitz import (  # noqa: E402
    graph_lipschitz,
    lower,
    ops,
)

F = TensorProto.FLOAT


def save(path: Path, nodes, inputs, outputs, inits=(), metadata=None, opset: int = 17) -> Path:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, F, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, F, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    path.write_bytes(model.SerializeToString())
    return path


def conv_model(path: Path, shape, metadata=None) -> Path:
    weight = np.full((2, 3, 1, 1), 0.5, dtype=np.float32)
    return save(
        path,
        [helper.make_node("Conv", ["images", "w"], ["y"], name="conv")],
        [("images", shape)],
        [("y", None)],
        [("w", weight)],
        metadata,
    )


# ------------------------------------------------------------------------- input shapes


def test_given_shape_and_symbols_reach_every_input(tmp_path: Path) -> None:
    path = save(
        tmp_path / "two.onnx",
        [helper.make_node("Add", ["a", "b"], ["y"])],
        [("a", ["batch", "seq"]), ("b", ["batch", "seq"])],
        [("y", None)],
    )
    graph = read_onnx_graph(path, {"a": (2, 7)})
    assert [v.shape for v in graph.inputs] == [(2, 7), (2, 7)] and not graph.dynamic
    assert graph.values["y"].shape == (2, 7)  # shape inference saw the static dims


def test_batch_default_is_said_and_other_dims_refused(tmp_path: Path) -> None:
    path = conv_model(tmp_path / "c.onnx", ["N", 3, "height", "width"])
    graph = read_onnx_graph(path)
    assert graph.dynamic == ("'images' 1×3×height×width",)
    with pytest.raises(InputShapeError, match=r"give --input-shape images=1x3xHxW") as info:
        graph_lipschitz(path, lower=False)
    assert info.value.exit_code == EXIT_USAGE
    report = graph_lipschitz(path, lower=False, input_shapes={"": (1, 3, 4, 5)})
    assert math.sqrt(6) * 0.5 <= report.bound <= math.sqrt(6) * 0.5 * (1 + 1e-6)  # σ(0.5·1₂ₓ₃)
    paddle = conv_model(tmp_path / "p.onnx", [-1, 3, 8, 8])  # Paddle2ONNX writes -1
    graph = read_onnx_graph(paddle)
    assert graph.inputs[0].shape == (1, 3, 8, 8)
    assert graph.notes == [
        "input 'images' ?×3×8×8 taken as 1×3×8×8 (batch 1; --input-shape to choose)"
    ]


def test_metadata_image_size(tmp_path: Path) -> None:
    path = conv_model(tmp_path / "u.onnx", ["batch", 3, "h", "w"], {"imgsz": "[320, 256]"})
    graph = read_onnx_graph(path)
    assert graph.inputs[0].shape == (1, 3, 320, 256) and not graph.dynamic
    assert "320×256 from the model's metadata (imgsz)" in graph.notes[0]
    # the user's shape wins over the metadata
    assert read_onnx_graph(path, {"images": (1, 3, 64, 64)}).inputs[0].shape == (1, 3, 64, 64)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"x": (1, 3, 4, 4)}, "names 'x', which is not an input of the model"),
        ({"images": (1, 3, 4)}, "the model's input has rank 4"),
        ({"images": (1, 4, 4, 4)}, "dim 1 is fixed to 3 in the model"),
        ({"images": (1, 3, 1 << 15, 1 << 15)}, "the inputs hold over"),
    ],
)
def test_bad_input_shapes_are_one_line(tmp_path: Path, given: dict, message: str) -> None:
    path = conv_model(tmp_path / "c.onnx", ["N", 3, "h", "w"])
    with pytest.raises(CheckpointError, match=message):
        read_onnx_graph(path, given)


def test_symbol_given_two_values_and_bare_shape_with_two_inputs(tmp_path: Path) -> None:
    path = save(
        tmp_path / "two.onnx",
        [helper.make_node("Add", ["a", "b"], ["y"])],
        [("a", ["s"]), ("b", ["s"])],
        [("y", None)],
    )
    with pytest.raises(CheckpointError, match="dimension 's' two values"):
        read_onnx_graph(path, {"a": (3,), "b": (4,)})
    with pytest.raises(CheckpointError, match="a bare --input-shape needs a model with one input"):
        read_onnx_graph(path, {"": (3,)})


# -------------------------------------------------------------- shape subgraphs are folded


def test_constant_of_shape_from_shape_arithmetic_is_folded(tmp_path: Path) -> None:
    """YOLOv8's head: Shape → Gather → Unsqueeze → Concat → ConstantOfShape, added to the data;
    a constant once the input shape is static (it was 'malformed node: list index …')."""
    value = numpy_helper.from_array(np.array([2.0], dtype=np.float32))
    path = save(
        tmp_path / "cos.onnx",
        [
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Gather", ["s", "i"], ["d"], axis=0),
            helper.make_node("Unsqueeze", ["d", "zero"], ["u"]),
            helper.make_node("Concat", ["one", "u"], ["shape"], axis=0),
            helper.make_node("ConstantOfShape", ["shape"], ["c"], value=value, name="cos"),
            helper.make_node("Mul", ["x", "c"], ["y"]),
        ],
        [("x", ["batch", "n"])],
        [("y", None)],
        [
            ("i", np.array(1, dtype=np.int64)),
            ("zero", np.array([0], dtype=np.int64)),
            ("one", np.array([1], dtype=np.int64)),
        ],
    )
    report = graph_lipschitz(path, lower=False, input_shapes={"x": (1, 5)})
    assert report.certified and report.bound == pytest.approx(2.0, rel=1e-9)


# --------------------------------------------------------------------- gated products


def gate_model(path: Path, steps: list[tuple[str, dict, list[float]]]) -> Path:
    """y = x · g(x), g the chain of ``steps`` (op, attributes, scalar constants)."""
    nodes, inits, current = [], [], "x"
    for index, (op, attrs, constants) in enumerate(steps):
        names = [f"c{index}_{j}" for j in range(len(constants))]
        inits += [(n, np.array(v, dtype=np.float32)) for n, v in zip(names, constants, strict=True)]
        nodes.append(helper.make_node(op, [current, *names], [f"g{index}"], **attrs))
        current = f"g{index}"
    nodes.append(helper.make_node("Mul", ["x", current], ["y"], name="gated"))
    return save(path, nodes, [("x", [1, 64])], [("y", [1, 64])], inits)


def numeric_slope(path: Path, low: float = -40.0, high: float = 40.0) -> float:
    """max |f(t + h) − f(t)|/h over a fine grid, f evaluated by onnxruntime (float32)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    t = np.linspace(low, high, 64 * 2000).astype(np.float64)
    values = np.concatenate(
        [
            session.run(None, {"x": c.reshape(1, 64).astype(np.float32)})[0].reshape(-1)
            for c in t.reshape(-1, 64)
        ]
    ).astype(np.float64)
    return float(np.max(np.abs(np.diff(values) / np.diff(t))))


def test_hardswish_as_paddle_writes_it(tmp_path: Path) -> None:
    path = gate_model(tmp_path / "hs.onnx", [("Add", {}, [3.0]), ("Clip", {}, [0.0, 6.0])])
    divided = tmp_path / "hs6.onnx"
    model = onnx.load(str(path))
    model.graph.node[-1].output[0] = "p"
    model.graph.node.append(helper.make_node("Div", ["p", "six"], ["y"]))
    model.graph.initializer.append(numpy_helper.from_array(np.array(6.0, np.float32), "six"))
    divided.write_bytes(model.SerializeToString())
    report = graph_lipschitz(divided, lower=False)
    assert report.certified and report.bound == pytest.approx(1.5, rel=1e-9)
    assert numeric_slope(divided) == pytest.approx(1.5, rel=1e-3)


def test_unbounded_gate_is_refused(tmp_path: Path) -> None:
    path = gate_model(tmp_path / "sq.onnx", [("Add", {}, [3.0])])  # x·(x + 3): not Lipschitz
    report = graph_lipschitz(path, lower=False)
    assert report.bound is None and "product or quotient of two variable" in report.statement()


def reference_gate(steps: list[tuple[str, dict, list[float]]], t: np.ndarray) -> np.ndarray:
    """t·g(t) in float64 numpy, each op as the ONNX spec defines it (the test's oracle; checked
    against onnxruntime below)."""
    g = t.copy()
    for op, attributes, numbers in steps:  # the file holds float32 constants and attributes
        attrs = {k: float(np.float32(v)) for k, v in attributes.items()}
        constants = [float(np.float32(v)) for v in numbers]
        if op == "Add":
            g = g + constants[0]
        elif op == "Mul":
            g = g * constants[0]
        elif op == "Relu":
            g = np.maximum(g, 0.0)
        elif op == "HardSigmoid":
            g = np.clip(attrs["alpha"] * g + attrs["beta"], 0.0, 1.0)
        elif op == "Clip":
            g = np.clip(g, constants[0], constants[1])
    return t * g


MAGNITUDE = st.floats(0.5, 3.0) | st.floats(-3.0, -0.5)
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("Add"), st.just({}), st.tuples(st.floats(-2, 2)).map(list)),
        st.tuples(st.just("Mul"), st.just({}), st.tuples(MAGNITUDE).map(list)),
        st.tuples(st.just("Relu"), st.just({}), st.just([])),
        st.tuples(
            st.just("HardSigmoid"),
            st.fixed_dictionaries({"alpha": st.floats(0.2, 1.0), "beta": st.floats(-1, 1)}),
            st.just([]),
        ),
        st.tuples(
            st.just("Clip"), st.just({}), st.tuples(st.floats(-3, 0), st.floats(0.1, 4)).map(list)
        ),
    ),
    min_size=1,
    max_size=4,
).map(lambda steps: [*steps, ("Clip", {}, [-2.0, 2.0])])  # the last step bounds g


@settings(max_examples=30, deadline=None)
@given(steps=STEPS)
def test_gate_slope_is_the_true_supremum(tmp_path_factory, steps) -> None:
    """The rule's sup|d(t·g(t))/dt| is ≥ every difference quotient of t·g(t) on a fine float64
    grid over [−400, 400] (every knot lies within ±100 for these constants) and within 1% of
    the largest; the oracle agrees with onnxruntime's evaluation of the same file."""
    path = gate_model(tmp_path_factory.mktemp("gate") / "g.onnx", steps)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probe = np.random.default_rng(0).uniform(-100, 100, (1, 64))
    got = session.run(None, {"x": probe.astype(np.float32)})[0].astype(np.float64)
    want = reference_gate(steps, probe.astype(np.float32).astype(np.float64))
    assert np.allclose(got, want, rtol=1e-5, atol=1e-3)
    report = graph_lipschitz(path, lower=False)
    assert report.certified
    t = np.linspace(-400.0, 400.0, 4_000_001)
    numeric = float(np.max(np.abs(np.diff(reference_gate(steps, t)) / np.diff(t))))
    assert numeric <= report.bound * (1 + 1e-9)
    assert report.bound <= numeric * 1.01 + 1e-9


# ----------------------------------------------------------------------------- pools


def test_long_average_pool_uses_no_dense_matrix(tmp_path: Path, monkeypatch) -> None:
    """The attack file: one AveragePool over a 1-D input of 200,000 (minutes with an n×n matrix)."""
    n = 200_000
    path = save(
        tmp_path / "pool.onnx",
        [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3], strides=[3])],
        [("x", [1, 1, n])],
        [("y", None)],
    )

    def refuse(*_args, **_kwargs):
        raise AssertionError("a dense pool matrix at this size")

    monkeypatch.setattr(ops, "_pool_matrix", refuse)
    report = graph_lipschitz(path, lower=False)
    assert report.certified and report.bound == pytest.approx(1 / math.sqrt(3), rel=1e-9)


@pytest.mark.parametrize(
    ("n", "k", "s", "pads", "include"),
    [(50, 3, 1, (1, 1), False), (64, 4, 2, (0, 0), True), (37, 5, 2, (2, 1), False)],
)
def test_schur_pool_bound_is_above_the_exact_norm(n, k, s, pads, include) -> None:
    out = (n + sum(pads) - k) // s + 1
    exact = float(np.linalg.norm(ops._pool_matrix(n, k, s, 1, pads, out, include), 2))
    bound, dense = ops._pool_norm(n, k, s, 1, pads, out, include)
    assert dense and bound == pytest.approx(exact, rel=1e-12)
    old = ops.POOL_DENSE
    try:
        ops.POOL_DENSE = 0
        schur, dense = ops._pool_norm(n, k, s, 1, pads, out, include)
    finally:
        ops.POOL_DENSE = old
    assert not dense and exact <= schur <= exact * 1.5


# --------------------------------------------------------------- the lower-bound search


def small_model(tmp_path: Path) -> Path:
    return save(
        tmp_path / "lin.onnx",
        [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)],
        [("x", [1, 3])],
        [("y", [1, 2])],
        [("w", np.array([[3.0, 0, 0], [0, 1, 0]], dtype=np.float32))],
    )


def test_runtime_failure_keeps_the_bound(tmp_path: Path, monkeypatch) -> None:
    def fail(_self, _session, _feeds):
        raise RuntimeError(
            "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Non-zero status code returned while "
            "running Reshape node. Name:'/model/Reshape' Status Message: cannot reshape\nmore"
        )

    monkeypatch.setattr(lower._Probe, "_session_run", fail)
    report = graph_lipschitz(small_model(tmp_path))
    assert report.bound == pytest.approx(3.0, rel=1e-9) and report.lower is None
    assert report.notes == [
        "no lower bound: onnxruntime cannot run the model: Non-zero status code returned while "
        "running Reshape node. Name:'/model/Reshape' Status Message: cannot reshape"
    ]


def test_memory_budget_checked_before_the_search(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(lower, "_available_memory", lambda: 10)
    report = graph_lipschitz(small_model(tmp_path))
    assert report.bound == pytest.approx(3.0, rel=1e-9) and report.lower is None
    assert "over half of the memory available" in report.notes[0]


def test_search_found_and_time_budget(tmp_path: Path) -> None:
    report = graph_lipschitz(small_model(tmp_path))
    assert 2.99 < report.lower.value <= 3.0 * (1 + 1e-4)  # float32 evaluations (#25)
    stopped = graph_lipschitz(small_model(tmp_path), lower_seconds=0.0)
    assert stopped.bound == report.bound
    assert stopped.lower is None or "stopped at the time budget" in stopped.lower.method


# ------------------------------------------------------------------------------- CLI


def test_cli_options(tmp_path: Path) -> None:
    runner = CliRunner()
    path = conv_model(tmp_path / "c.onnx", ["N", 3, "h", "w"])
    result = runner.invoke(app, ["lipschitz", str(path)])
    assert result.exit_code == 2 and "--input-shape images=1x3xHxW" in result.output
    result = runner.invoke(
        app, ["lipschitz", str(path), "--input-shape", "images=1x3x4x4", "--no-lower"]
    )
    assert result.exit_code == 0, result.output
    assert "no lower bound" not in result.output and "lower bound found" not in result.output
    for bad in (["--input-shape", "images=1xax4"], ["--input-size", "4x4"]):
        result = runner.invoke(app, ["lipschitz", str(path), *bad])
        assert result.exit_code == 2
    result = runner.invoke(app, ["lipschitz", "sample_models/mlp.safetensors", "--no-lower"])
    assert result.exit_code == 2 and "for ONNX models" in " ".join(
        result.output.replace("│", " ").split()
    )
