"""``sncli lipschitz MODEL.onnx``'s lower-bound search runs without torch (issue 26, "torch only
where it must be": the float64 NumPy rebuild, :mod:`sncli.lipschitz.numpy_graph`) and finds
what it finds with torch importable.

Each case runs in a subprocess in which torch cannot be imported (the meta-path finder of
tests/test_torch_free.py) and compares with the same call in this process. The search is not
cut by its time budget (tiny models, budgets of minutes), so both runs do the same float64
arithmetic: the values must agree to 1e-12 relative (measured: equal; the slack is for a BLAS
that splits a product differently between processes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from tests.no_torch import BLOCK_TORCH, NO_TORCH, run_without_torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

#: torch unimportable: a meta-path finder raising ImportError for ``torch`` and ``torch.*``.
BLOCK = BLOCK_TORCH

#: The lower-bound search alone (the upper bound's factors are not computed): its JSON.
LOWER = (
    BLOCK
    + """
import json
from sncli.formats.onnx import read_onnx_graph
from sncli.lipschitz.graph import _topological
from sncli.lipschitz.lower import lower_bound_or_why

from pathlib import Path
graph = read_onnx_graph(Path(sys.argv[1]))
found, why = lower_bound_or_why(
    graph, order=_topological(graph), constants={}, seconds=600.0, ascent_seconds=600.0
)
print(json.dumps({"value": found.value, "text": found.method, "why": why,
                  "torch": sorted(m for m in sys.modules if m.split(".")[0] == "torch")}))
"""
)

#: ``python -m sncli ARGS`` with torch unimportable.
COMMAND = NO_TORCH


def _init(name: str, value: Any) -> Any:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def _save(path: Path, nodes: list[Any], shape: list[int], out: list[int], inits: list[Any]) -> Path:
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", f, shape)],
        [helper.make_tensor_value_info("y", f, out)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A ReLU MLP and a CNN (strided conv, BatchNorm, ReLU, max and average pools, Gemm)."""
    root = tmp_path_factory.mktemp("graphs")
    rng = np.random.default_rng(0)
    mlp = _save(
        root / "mlp.onnx",
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1),
        ],
        [1, 6],
        [1, 3],
        [
            _init("w1", rng.standard_normal((8, 6)) / 2),
            _init("b1", 0.3 * rng.standard_normal(8)),
            _init("w2", rng.standard_normal((3, 8)) / 3),
            _init("b2", np.zeros(3)),
        ],
    )
    cnn = _save(
        root / "cnn.onnx",
        [
            helper.make_node(
                "Conv",
                ["x", "k", "kb"],
                ["c"],
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                strides=[2, 2],
            ),
            helper.make_node("BatchNormalization", ["c", "g", "be", "m", "v"], ["n"]),
            helper.make_node("Relu", ["n"], ["r"]),
            helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[1, 1]),
            helper.make_node("AveragePool", ["p"], ["a"], kernel_shape=[2, 2], strides=[2, 2]),
            helper.make_node("Flatten", ["a"], ["f"]),
            helper.make_node("Gemm", ["f", "w", "b"], ["y"], transB=1),
        ],
        [1, 2, 10, 10],
        [1, 3],
        [
            _init("k", rng.standard_normal((4, 2, 3, 3)) / 3),
            _init("kb", 0.1 * rng.standard_normal(4)),
            _init("g", rng.uniform(0.5, 2.0, 4)),
            _init("be", 0.1 * rng.standard_normal(4)),
            _init("m", 0.1 * rng.standard_normal(4)),
            _init("v", rng.uniform(0.5, 2.0, 4)),
            _init("w", rng.standard_normal((3, 16)) / 4),
            _init("b", np.zeros(3)),
        ],
    )
    return {"mlp": mlp, "cnn": cnn}


def _run(script: str, args: list[str]) -> str:
    done = run_without_torch(args, script=script)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_lower_bound_search_without_torch(models: dict[str, Path], name: str) -> None:
    """The search takes the NumPy ascent (not the onnxruntime-only fallback it would take if
    the rebuild failed) with torch unimportable, and finds the in-process value."""
    from sncli.formats.onnx import read_onnx_graph
    from sncli.lipschitz.graph import _topological
    from sncli.lipschitz.lower import lower_bound_or_why

    free = json.loads(_run(LOWER, [str(models[name])]))
    assert free["torch"] == [] and free["why"] is None
    assert "multi-start ascent (NumPy)" in free["text"]
    assert "stopped at the time budget" not in free["text"]
    graph = read_onnx_graph(models[name])
    found, why = lower_bound_or_why(
        graph, order=_topological(graph), constants={}, seconds=600.0, ascent_seconds=600.0
    )
    assert why is None and found is not None
    assert found.method == free["text"]
    assert free["value"] == pytest.approx(found.value, rel=1e-12, abs=0.0)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_lipschitz_command_without_torch(models: dict[str, Path], name: str) -> None:
    """The whole command with torch unimportable: the same bound and the same lower bound as a
    normal run, and torch never imported (the lower bound's search is not cut by its budget on
    these tiny models)."""
    from typer.testing import CliRunner

    from sncli.cli import app

    # --chain-seconds 0: no wall-clock-budgeted chain or segment search, so both runs take
    # the same upper-bound route under any load (tests/test_torch_free_bounds.py checks those)
    args = ["lipschitz", str(models[name]), "--format", "json", "--chain-seconds", "0"]
    free = json.loads(_run(COMMAND, args))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    reference = json.loads(result.stdout)
    assert free["bound"] is not None
    assert free["bound"] == pytest.approx(reference["bound"], rel=1e-11)
    assert free["lower"] == pytest.approx(reference["lower"], rel=1e-12)
    assert free["lower_method"] == reference["lower_method"]
