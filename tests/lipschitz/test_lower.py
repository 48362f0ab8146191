"""The lower-bound search (sncli.lipschitz.lower, .ascent): true difference quotients of the
model, never above the certified bound, near the exact constant where it is known."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sncli.lipschitz import graph_lipschitz  # noqa: E402
from sncli.render.graph_lipschitz import graph_to_dict  # noqa: E402


def _save(path: Path, nodes, inputs, outputs, inits) -> Path:
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, f, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, f, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in inits],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    return path


def test_residual_lower_never_above_the_bound(tmp_path: Path) -> None:
    """y = x + 0.5x is exactly 1.5-Lipschitz; float32 quotients used to print 1.50013 here."""
    path = _save(
        tmp_path / "res.onnx",
        [
            helper.make_node("Gemm", ["x", "w"], ["g"], transB=1),
            helper.make_node("Add", ["x", "g"], ["y"]),
        ],
        [("x", [1, 3])],
        [("y", [1, 3])],
        [("w", 0.5 * np.eye(3))],
    )
    for effort in (0, 1, 2):
        report = graph_lipschitz(path, lower_effort=effort)
        assert report.lower is not None
        assert report.lower.value <= report.bound
        if effort:
            assert report.lower.value == pytest.approx(1.5, rel=1e-9)
            assert report.lower.point is not None and report.lower.point.output == "y"


def _relu_mlp(tmp_path: Path, seed: int, widths: list[int]) -> tuple[Path, list, list]:
    rng = np.random.default_rng(seed)
    weights = [
        rng.standard_normal((widths[i + 1], widths[i])).astype(np.float32) / np.sqrt(widths[i])
        for i in range(len(widths) - 1)
    ]
    biases = [0.3 * rng.standard_normal(w.shape[0]).astype(np.float32) for w in weights]
    nodes, inits, x = [], [], "x"
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [f"z{i}"], transB=1))
        inits += [(f"w{i}", w), (f"b{i}", b)]
        x = f"z{i}"
        if i < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"a{i}"]))
            x = f"a{i}"
    nodes[-1].output[0] = "y"
    path = _save(
        tmp_path / f"mlp{seed}.onnx",
        nodes,
        [("x", [1, widths[0]])],
        [("y", [1, widths[-1]])],
        inits,
    )
    return path, [w.astype(np.float64) for w in weights], [b.astype(np.float64) for b in biases]


def _exact(weights: list, biases: list) -> float:
    """Brute force over the activation patterns with an open region (LP per pattern)."""
    from scipy.optimize import linprog

    n = weights[0].shape[1]
    hidden = [w.shape[0] for w in weights[:-1]]
    best = 0.0
    for bits in itertools.product((0.0, 1.0), repeat=sum(hidden)):
        rows, rhs, k = [], [], 0
        a, c = np.eye(n), np.zeros(n)
        for w, b, h in zip(weights[:-1], biases[:-1], hidden, strict=True):
            mask = np.array(bits[k : k + h])
            k += h
            pre_a, pre_c = w @ a, w @ c + b
            sign = np.where(mask > 0, -1.0, 1.0)
            rows.append(sign[:, None] * pre_a)
            rhs.append(-sign * pre_c - 1e-7)
            a, c = mask[:, None] * pre_a, mask * pre_c
        result = linprog(
            np.zeros(n), A_ub=np.vstack(rows), b_ub=np.concatenate(rhs), bounds=[(-1e3, 1e3)] * n
        )
        if result.status == 0:
            best = max(best, float(np.linalg.norm(weights[-1] @ a, 2)))
    return best


@pytest.mark.parametrize("seed", range(3))
def test_tiny_relu_nets_lower_near_exact(tmp_path: Path, seed: int) -> None:
    """lower ≤ the exact constant (brute force) ≤ certified, and lower ≥ 0.5·exact."""
    path, weights, biases = _relu_mlp(tmp_path, seed, [2, 5, 4, 3])
    exact = _exact(weights, biases)
    report = graph_lipschitz(path)
    assert report.lower is not None and report.certified
    assert 0.5 * exact <= report.lower.value <= exact * (1 + 1e-6) <= report.bound


def test_lower_point_in_json(tmp_path: Path) -> None:
    path, _, _ = _relu_mlp(tmp_path, 5, [16, 32, 32, 4])
    report = graph_lipschitz(path)
    data = graph_to_dict(report)
    point = data["lower_point"]
    assert point["output"] == "y" and 0 <= point["output_index"] < 4
    assert point["input_norm"] > 0 and point["step"] > 0
    assert data["lower"] <= data["bound"]
    plain = graph_lipschitz(path, lower_effort=0)
    assert plain.lower is not None and plain.lower.value <= report.lower.value * (1 + 1e-6)
