"""The ONNX reader: initializers embedded and external, the checks before reading, the graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sncli.checkpoint import open_checkpoint  # noqa: E402
from sncli.errors import CheckpointError  # noqa: E402
from sncli.formats import sniff_format  # noqa: E402
from sncli.formats.onnx import read_onnx, read_onnx_graph  # noqa: E402


def _model(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    nodes = [helper.make_node("Gemm", ["x", "fc.weight", "fc.bias"], ["y"], transB=1)]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


WEIGHTS = {
    "fc.weight": np.arange(12, dtype=np.float32).reshape(4, 3) / 7,
    "fc.bias": np.ones(4, dtype=np.float16),
}


def test_embedded_initializers_open_like_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_model(WEIGHTS), str(path))
    assert sniff_format(path) == "onnx"
    with open_checkpoint(path) as ckpt:
        assert ckpt.format == "onnx"
        assert {n: (i.shape, i.dtype) for n, i in ckpt.tensors.items()} == {
            "fc.weight": ((4, 3), "float32"),
            "fc.bias": ((4,), "float16"),
        }
        assert np.array_equal(ckpt.load("fc.weight").numpy(), WEIGHTS["fc.weight"])
        assert np.array_equal(ckpt.load("fc.bias").numpy(), WEIGHTS["fc.bias"])


def test_external_data_as_torch_writes_it(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(
        _model(WEIGHTS),
        str(path),
        save_as_external_data=True,
        location="m.onnx.data",
        size_threshold=0,
    )
    contents = read_onnx(path)
    assert contents.files == [path, (tmp_path / "m.onnx.data").resolve()]
    assert np.array_equal(contents.load("fc.weight").numpy(), WEIGHTS["fc.weight"])
    graph = read_onnx_graph(path)
    assert [n.op_type for n in graph.nodes] == ["Gemm"]
    assert graph.inputs[0].shape == (1, 3)  # the batch dimension is taken as 1, and said
    assert graph.notes == ["input 'x' batch×3 taken as 1×3 (batch 1; --input-shape to choose)"]
    assert graph.outputs[0].shape == (1, 4)  # from shape inference
    assert read_onnx_graph(path, {"x": (5, 3)}).outputs[0].shape == (5, 4)
    assert np.array_equal(graph.load("fc.bias"), WEIGHTS["fc.bias"])


def test_typed_fields_and_bfloat16(tmp_path: Path) -> None:
    import torch

    model = _model({})
    weight = helper.make_tensor("fc.weight", TensorProto.FLOAT, [2, 2], [1.0, 2.0, 3.0, 4.0])
    bias = helper.make_tensor("fc.bias", TensorProto.BFLOAT16, [2], [1.5, -2.0])
    model.graph.initializer.extend([weight, bias])
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    contents = read_onnx(path)
    assert contents.load("fc.weight").tolist() == [[1.0, 2.0], [3.0, 4.0]]
    loaded = contents.load("fc.bias")
    assert loaded.dtype == torch.bfloat16 and loaded.float().tolist() == [1.5, -2.0]


def test_typed_field_with_too_few_values(tmp_path: Path) -> None:
    model = _model({})
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1000, 1000])
    tensor.float_data.extend([1.0, 2.0])
    model.graph.initializer.append(tensor)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(CheckpointError, match="needs 4000000 bytes, the file holds 8"):
        read_onnx(path)


def test_wrong_external_length(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(
        _model(WEIGHTS), str(path), save_as_external_data=True, location="d", size_threshold=0
    )
    model = onnx.load(str(path), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "length":
            entry.value = "8"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(CheckpointError, match="claims 8 bytes"):
        read_onnx(path)


def test_pt2_is_refused_without_unpickling(tmp_path: Path) -> None:
    import torch

    ep = torch.export.export(torch.nn.Linear(2, 2), (torch.randn(1, 2),))
    path = tmp_path / "m.pt2"
    torch.export.save(ep, str(path))
    with pytest.raises(CheckpointError, match=r"torch\.export\.load unpickles"):
        open_checkpoint(path)
