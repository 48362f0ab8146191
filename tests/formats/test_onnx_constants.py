"""ONNX weights stored as Constant nodes (Paddle2ONNX) or behind Identity/Cast, and names that
are not UTF-8.

σ are checked against float64 LAPACK SVDs of the weights as ``onnx.numpy_helper.to_array``
decodes them (not sncli's reader); the graphs rewritten here are checked by onnxruntime to
compute what the original computes.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sncli.analysis import spectral_norms  # noqa: E402
from sncli.checkpoint import open_checkpoint  # noqa: E402
from sncli.diff import diff_checkpoints  # noqa: E402
from sncli.errors import CheckpointError  # noqa: E402
from sncli.formats.onnx import read_onnx, read_onnx_graph  # noqa: E402
from sncli.layers import classify  # noqa: E402
from sncli.numerics.spectral import BoundKind  # noqa: E402
from sncli.spectrum import spectra  # noqa: E402
from tests.cli.cli_helpers import invoke  # noqa: E402

#: ``auto`` reports each σ within this relative error (its default tolerance), from below.
AUTO_TOL = 1e-4


def _reference_sigma(weight: np.ndarray, op: str) -> float:
    """σ of the weight reshaped as torch's spectral_norm does (ConvTranspose: dim 1 first)."""
    w = np.asarray(weight, dtype=np.float64)
    if op == "ConvTranspose":
        w = np.swapaxes(w, 0, 1)
    return float(np.linalg.svd(w.reshape(w.shape[0], -1), compute_uv=False)[0])


def _check_sigma(measured: float, bound: BoundKind, truth: float) -> None:
    if bound == BoundKind.EXACT:
        assert measured == pytest.approx(truth, rel=1e-9)
    else:  # a lower bound within the tolerance
        assert truth * (1 - AUTO_TOL) <= measured <= truth * (1 + 1e-9)


# ---------------------------------------------------------------------- the real PP-OCR models


def _rapidocr_models() -> list[Path]:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or spec.origin is None:
        return []
    return sorted((Path(spec.origin).parent / "models").glob("*.onnx"))


RAPIDOCR = _rapidocr_models()


def _constant_weights(path: Path) -> dict[str, tuple[np.ndarray, str]]:
    """Independently: every Conv/ConvTranspose/Gemm/MatMul weight a Constant node produces,
    decoded by onnx's own numpy_helper → (array, op type)."""
    model = onnx.load(str(path))
    constants = {
        node.output[0]: numpy_helper.to_array(node.attribute[0].t)
        for node in model.graph.node
        if node.op_type == "Constant" and node.attribute[0].name == "value"
    }
    found: dict[str, tuple[np.ndarray, str]] = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            stored = [name for name in node.input[:2] if name in constants]
            if len(stored) == 1:
                found[stored[0]] = (constants[stored[0]], node.op_type)
    return found


@pytest.mark.skipif(not RAPIDOCR, reason="rapidocr-onnxruntime is not installed")
@pytest.mark.parametrize("path", RAPIDOCR, ids=lambda p: p.name)
def test_paddle_constant_weights_are_layers(path: Path) -> None:
    expected = _constant_weights(path)
    model = onnx.load(str(path))
    conv_nodes = sum(
        1
        for node in model.graph.node
        if node.op_type in ("Conv", "ConvTranspose") and node.input[1] in expected
    )
    assert conv_nodes >= 20  # the files hold 53–64 conv weights, all as Constant nodes
    assert not model.graph.initializer
    with open_checkpoint(path) as ckpt:
        report = spectral_norms(ckpt)
    by_name = {layer.name: layer for layer in report.layers}
    assert set(by_name) == set(expected)
    assert sum(1 for layer in report.layers if layer.kind.is_conv) == conv_nodes
    for name, (weight, op) in expected.items():
        layer = by_name[name]
        assert layer.shape == weight.shape
        _check_sigma(layer.sigma, layer.bound, _reference_sigma(weight, op))
    assert any("Constant nodes' values" in note for note in report.notes)


@pytest.mark.skipif(not RAPIDOCR, reason="rapidocr-onnxruntime is not installed")
def test_paddle_model_diffed_with_itself_is_zero() -> None:
    path = min(RAPIDOCR, key=lambda p: p.stat().st_size)  # the classifier, 0.6 MB
    with open_checkpoint(path) as a, open_checkpoint(path) as b:
        report = diff_checkpoints(a, b)
    assert len(report.layers) == len(_constant_weights(path))
    for layer in report.layers:
        assert layer.unchanged and layer.delta_sigma == 0 and layer.delta_frobenius == 0


# ------------------------------------------------ a torch export, its weights moved to Constants


def _export(tmp_path: Path) -> Path:
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 5, 3, padding=1)
            self.up = torch.nn.ConvTranspose2d(5, 4, 2, stride=2)
            self.fc = torch.nn.Linear(4 * 8 * 8, 7)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.up(torch.relu(self.conv(x)))).flatten(1))

    torch.manual_seed(0)
    path = tmp_path / "init.onnx"
    torch.onnx.export(Net().eval(), (torch.randn(1, 3, 4, 4),), str(path), dynamo=False)
    return path


def _to_constants(model: onnx.ModelProto, *, identity: bool = False) -> onnx.ModelProto:
    """The model with every initializer turned into a Constant node of the same output name
    (with ``identity``: a Constant named ``NAME.const`` read through ``Identity`` → NAME)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    nodes = []
    for tensor in model.graph.initializer:
        name = tensor.name
        source = f"{name}.const" if identity else name
        value = onnx.TensorProto.FromString(tensor.SerializeToString())
        value.name = ""
        nodes.append(helper.make_node("Constant", [], [source], value=value))
        if identity:
            nodes.append(helper.make_node("Identity", [source], [name]))
    model.graph.ClearField("initializer")
    inputs = [i for i in model.graph.input if i.name not in {n.output[0] for n in nodes}]
    model.graph.ClearField("input")
    model.graph.input.extend(inputs)
    rest = list(model.graph.node)
    model.graph.ClearField("node")
    model.graph.node.extend(nodes + rest)
    onnx.checker.check_model(model)
    return model


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_constant_and_identity_weights_match_the_initializers(tmp_path: Path) -> None:
    source = _export(tmp_path)
    model = onnx.load(str(source))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    variants = {"const": _to_constants(model), "ident": _to_constants(model, identity=True)}
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32)
    for label, variant in variants.items():
        onnx.save(variant, str(tmp_path / f"{label}.onnx"))
        assert np.array_equal(_run(tmp_path / f"{label}.onnx", x), _run(source, x))

    def measured(path: Path) -> dict[str, tuple[float, tuple[int, int], bool]]:
        with open_checkpoint(path) as ckpt:
            report = spectral_norms(ckpt)
            layers = {layer.name: layer for layer in classify(ckpt).layers}
        return {s.name: (s.sigma, s.matrix_shape, layers[s.name].transposed) for s in report.layers}

    reference = measured(source)
    assert set(reference) == {"conv.weight", "up.weight", "fc.weight"}
    assert reference["up.weight"][1:] == ((4, 5 * 2 * 2), True)  # the graph says ConvTranspose
    ops = {"conv.weight": "Conv", "up.weight": "ConvTranspose", "fc.weight": "Gemm"}
    for name, op in ops.items():
        assert reference[name][0] == pytest.approx(_reference_sigma(weights[name], op), rel=1e-9)
    assert measured(tmp_path / "const.onnx") == reference
    ident = measured(tmp_path / "ident.onnx")
    assert ident == {f"{name}.const": value for name, value in reference.items()}


def test_spectrum_and_diff_see_constant_weights(tmp_path: Path) -> None:
    source = _export(tmp_path)
    model = onnx.load(str(source))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    path = tmp_path / "const.onnx"
    onnx.save(_to_constants(model), str(path))
    with open_checkpoint(path) as ckpt:
        report = spectra(ckpt)
    values = {layer.name: layer.values for layer in report.layers}
    assert set(values) == {"conv.weight", "up.weight", "fc.weight"}
    full = np.linalg.svd(weights["fc.weight"].astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(values["fc.weight"], full, rtol=1e-9, atol=1e-12 * full[0])
    with open_checkpoint(source) as a, open_checkpoint(path) as b:
        diff = diff_checkpoints(a, b)
    assert {layer.name for layer in diff.layers} == set(values)
    assert all(layer.unchanged and layer.delta_sigma == 0 for layer in diff.layers)


def test_normalize_plans_constant_weights_and_refuses_to_write(tmp_path: Path) -> None:
    source = _export(tmp_path)
    path = tmp_path / "const.onnx"
    onnx.save(_to_constants(onnx.load(str(source))), str(path))
    code, out, _ = invoke("normalize", str(path), "-o", str(tmp_path / "out.onnx"), "--dry-run")
    assert code == 0 and "conv.weight" in out and "up.weight" in out and "fc.weight" in out
    code, _, err = invoke("normalize", str(path), "-o", str(tmp_path / "out.onnx"))
    assert code == 1 and not (tmp_path / "out.onnx").exists()
    assert err.strip().count("\n") == 0
    assert "cannot write a normalized copy" in err and "not onnx" in err


def test_cast_of_a_constant_is_followed(tmp_path: Path) -> None:
    """A float16 Constant cast to float32 before a Gemm: the stored tensor is the weight."""
    weight = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float16)
    nodes = [
        helper.make_node("Constant", [], ["w16"], value=numpy_helper.from_array(weight, "")),
        helper.make_node("Cast", ["w16"], ["w32"], to=TensorProto.FLOAT),
        helper.make_node("Gemm", ["x", "w32"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])],
    )
    path = tmp_path / "cast.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with open_checkpoint(path) as ckpt:
        report = spectral_norms(ckpt)
    assert [(s.name, s.dtype) for s in report.layers] == [("w16", "float16")]
    assert report.layers[0].sigma == pytest.approx(_reference_sigma(weight, "Gemm"), rel=1e-9)
    assert any("through a Cast" in note for note in report.notes)


def _one_constant(value: onnx.AttributeProto) -> onnx.ModelProto:
    node = helper.make_node("Constant", [], ["w"])
    node.attribute.append(value)
    nodes = [node, helper.make_node("MatMul", ["x", "w"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_sparse_constant_is_listed_as_not_read(tmp_path: Path) -> None:
    values = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "")
    indices = numpy_helper.from_array(np.array([0, 5], np.int64), "")
    sparse = helper.make_sparse_tensor(values, indices, [3, 4])
    path = tmp_path / "sparse.onnx"
    onnx.save(_one_constant(helper.make_attribute("sparse_value", sparse)), str(path))
    contents = read_onnx(path)
    assert contents.tensors == {"w": ((3, 4), "float32")}
    assert "sparse" in contents.unsupported["w"]
    code, _, err = invoke("inspect", str(path))
    assert code == 4 and "nothing to analyse" in err  # listed as skipped, not read


def test_constant_claims_checked_before_reading(tmp_path: Path) -> None:
    value = numpy_helper.from_array(np.ones((3, 2), np.float32), "")
    value.dims[:] = [1 << 31, 1 << 31]
    path = tmp_path / "huge.onnx"
    onnx.save(_one_constant(helper.make_attribute("value", value)), str(path))
    with pytest.raises(CheckpointError, match="the file holds 24"):
        read_onnx(path)


def test_external_constant_read_inside_the_folder_only(tmp_path: Path) -> None:
    weight = np.arange(12, dtype=np.float32).reshape(3, 4) / 5
    model = _one_constant(helper.make_attribute("value", numpy_helper.from_array(weight, "")))
    folder = tmp_path / "m"
    folder.mkdir()
    onnx.save(
        model,
        str(folder / "m.onnx"),
        save_as_external_data=True,
        location="m.data",
        size_threshold=0,
        convert_attribute=True,
    )
    stored = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    assert stored.graph.node[0].attribute[0].t.data_location == TensorProto.EXTERNAL
    contents = read_onnx(folder / "m.onnx")
    assert np.array_equal(contents.load("w").numpy(), weight)
    assert contents.roles == {"w": "MatMul"}
    graph = read_onnx_graph(folder / "m.onnx")
    assert np.array_equal(graph.nodes[0].attributes["value"], weight)
    (tmp_path / "outside.data").write_bytes((folder / "m.data").read_bytes())
    for entry in stored.graph.node[0].attribute[0].t.external_data:
        if entry.key == "location":
            entry.value = "../outside.data"
    (folder / "m.onnx").write_bytes(stored.SerializeToString())
    for read in (read_onnx, read_onnx_graph):
        with pytest.raises(CheckpointError, match="leaves the model's folder"):
            read(folder / "m.onnx")


# ---------------------------------------------------------------------- names that are not UTF-8


def _gemm_model() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones((4, 8), np.float32), "w")
    nodes = [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1, name="gemm")]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _rename(model: onnx.ModelProto, where: str) -> None:
    """Put the placeholder QQ (patched to b"\\xff\\xfe" in the bytes) in one name field."""
    graph = model.graph
    if where == "node input":
        graph.node[0].input[0] = "QQ"
    elif where == "initializer":
        graph.node[0].input[1] = "QQ"
        graph.initializer[0].name = "QQ"
    elif where == "node name":
        graph.node[0].name = "QQ"
    elif where == "graph input":
        graph.input[0].name = "QQ"
        graph.node[0].input[0] = "QQ"
    elif where == "constant output":
        value = numpy_helper.from_array(np.ones((4, 8), np.float32), "")
        graph.node.insert(0, helper.make_node("Constant", [], ["QQ"], value=value))
        graph.node[1].input[1] = "QQ"
        graph.ClearField("initializer")


@pytest.mark.parametrize(
    "where", ["node input", "initializer", "node name", "graph input", "constant output"]
)
@pytest.mark.parametrize("command", ["inspect", "lipschitz"])
def test_names_that_are_not_utf8_are_one_line(tmp_path: Path, where: str, command: str) -> None:
    model = _gemm_model()
    _rename(model, where)
    path = tmp_path / "m.onnx"
    data = model.SerializeToString()
    assert data.count(b"QQ") >= 1
    path.write_bytes(data.replace(b"QQ", b"\xff\xfe"))
    code, out, err = invoke(command, str(path))
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sncli: error: ") and str(path) in lines[0]
    assert "is not UTF-8 text" in lines[0] and "\\xff\\xfe" in lines[0]
    assert "unexpected" not in err


# ------------------------------------------------------------------- weights inside subgraphs


def test_weights_inside_if_branches_are_listed(tmp_path: Path) -> None:
    """Silero VAD's exports keep their convs inside If branches (spox inlines them there with a
    Constant per weight; the op18 export reads outer initializers from inside the branches)."""
    rng = np.random.default_rng(3)
    inner = rng.standard_normal((4, 2, 3)).astype(np.float32)  # a Constant in the then branch
    outer = rng.standard_normal((5, 2, 3)).astype(np.float32)  # an initializer the else uses
    then_branch = helper.make_graph(
        [
            helper.make_node(
                "Constant", [], ["then.w"], value=numpy_helper.from_array(inner, "then.w")
            ),
            helper.make_node("Conv", ["x", "then.w"], ["y_then"]),
        ],
        "then",
        [],
        [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, None)],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Conv", ["x", "outer.kernel"], ["y_else"])],
        "else",
        [],
        [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, None)],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch)],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(outer, "outer.kernel")],
    )
    path = tmp_path / "if.onnx"
    path.write_bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    )
    with open_checkpoint(path) as ckpt:
        report = spectral_norms(ckpt)
    found = {layer.name: layer for layer in report.layers}
    assert set(found) == {"then.w", "outer.kernel"}  # "kernel" is no weight name: the graph says
    for name, weight in (("then.w", inner), ("outer.kernel", outer)):
        assert found[name].kind == "conv1d"
        _check_sigma(found[name].sigma, found[name].bound, _reference_sigma(weight, "Conv"))
    assert any("inside subgraphs" in note for note in report.notes)
