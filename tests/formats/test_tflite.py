"""TFLite: weights read by sncli's FlatBuffer parser against independent decoders.

Real models (pymicro-wakeword's int8 wake-word detectors, skipped when the wheel is absent) are
decoded again by the LiteRT interpreter (``ai_edge_litert``): every weight's σ must equal float64
SVD of the interpreter's tensor dequantized with the interpreter's scales and zero points.
One-op float models built here are *run* by LiteRT and the output compared with PyTorch's
conv/linear using the weight in the orientation sncli reports, which checks the layout claims
(OHWI → OIHW, depthwise, TRANSPOSE_CONV). Hostile files must fail as one CheckpointError, fast.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from sncli import MethodOptions, open_checkpoint, spectral_norms
from sncli.errors import CheckpointError
from sncli.formats import sniff_format
from sncli.numerics.spectral import Method

flatbuffers = pytest.importorskip("flatbuffers")


def _wakeword_models() -> list[Path]:
    spec = importlib.util.find_spec("pymicro_wakeword")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    return sorted(folder.glob("*.tflite"))


REAL = _wakeword_models()
needs_real = pytest.mark.skipif(not REAL, reason="pymicro-wakeword (its .tflite models) absent")


def _sigma64(matrix: np.ndarray) -> float:
    return float(scipy.linalg.svdvals(np.asarray(matrix, np.float64))[0])


# --------------------------------------------------------------------------- real models


def _litert_weights(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """tensor name → (op, the weight matrix σ is taken of), decoded by the LiteRT interpreter."""
    interpreter_module = pytest.importorskip("ai_edge_litert.interpreter")
    interpreter = interpreter_module.Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    found = {}
    for op in interpreter._get_ops_details():
        if op["op_name"] not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        index = int(op["inputs"][1])
        detail = details[index]
        raw = interpreter.get_tensor(index).astype(np.float64)
        quant = detail["quantization_parameters"]
        scales = np.asarray(quant["scales"], np.float64)
        zeros = np.asarray(quant["zero_points"], np.float64)
        if scales.size:
            shape = [1] * raw.ndim
            if scales.size > 1:
                shape[quant["quantized_dimension"]] = scales.size
            raw = (raw - zeros.reshape(shape)) * scales.reshape(shape)
        raw = raw.astype(np.float32).astype(np.float64)  # sncli dequantizes to float32
        if op["op_name"] == "CONV_2D":  # (out, kh, kw, in): columns in another order, same σ
            matrix = raw.reshape(raw.shape[0], -1)
        elif op["op_name"] == "DEPTHWISE_CONV_2D":  # (1, kh, kw, channels)
            matrix = raw.reshape(-1, raw.shape[-1]).T
        else:
            matrix = raw
        found[detail["name"]] = (op["op_name"], matrix)
    return found


@needs_real
@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_real_model_sigmas_match_litert(path: Path) -> None:
    reference = _litert_weights(path)
    assert sniff_format(path) == "tflite"
    with open_checkpoint(path) as ckpt:
        report = spectral_norms(ckpt, options=MethodOptions(method=Method.EXACT))
    sigmas = {layer.name.removesuffix(".weight"): layer.sigma for layer in report.layers}
    assert set(sigmas) == set(reference)
    for name, (_, matrix) in reference.items():
        assert sigmas[name] == pytest.approx(_sigma64(matrix), rel=1e-9), name


@needs_real
def test_real_model_tensors_equal_litert_values() -> None:
    path = REAL[0]
    reference = _litert_weights(path)
    with open_checkpoint(path) as ckpt:
        for name, (op, matrix) in reference.items():
            loaded = ckpt.load(f"{name}.weight").double().numpy()
            if op == "CONV_2D":  # reported (out, in, kh, kw)
                loaded = loaded.transpose(0, 2, 3, 1)
            np.testing.assert_array_equal(
                loaded.reshape(matrix.shape[0], -1)
                if op != "DEPTHWISE_CONV_2D"
                else loaded.reshape(loaded.shape[0], -1),
                matrix,
            )


@needs_real
def test_cli_inspect_real_model_json() -> None:
    from typer.testing import CliRunner

    from sncli.cli import app

    path = REAL[0]
    reference = _litert_weights(path)
    result = CliRunner().invoke(app, ["inspect", str(path), "--format", "json"])
    assert result.exit_code == 0, result.output
    layers = json.loads(result.stdout)["layers"]
    assert len(layers) == len(reference)
    for layer in layers:
        _, matrix = reference[layer["name"].removesuffix(".weight")]
        assert layer["dtype"] == "INT8 (dequantized)"
        assert layer["sigma"] == pytest.approx(_sigma64(matrix), rel=1e-4)
    assert "TFLite model" in result.stderr and "dequantized" in result.stderr
    assert "cannot be told" not in result.stdout + result.stderr  # the op tells the layout


# --------------------------------------------------------------------------- models built here

FLOAT32, FLOAT16, INT32, UINT8, INT8, INT4 = 0, 1, 2, 3, 9, 17
CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, TRANSPOSE_CONV, DEQUANTIZE = 3, 4, 9, 67, 6


def _build(tensors: list[dict], ops: list[dict], buffers: list[bytes]) -> bytes:
    """A one-subgraph TFLite model, written field by field (schema slots as in schema.fbs)."""
    b = flatbuffers.Builder(1024)
    b.ForceDefaults(True)

    def ints(values, dtype="<i4"):
        return b.CreateNumpyVector(np.asarray(values, dtype=np.dtype(dtype)))

    def tables(offsets):
        b.StartVector(4, len(offsets), 4)
        for offset in reversed(offsets):
            b.PrependUOffsetTRelative(offset)
        return b.EndVector()

    buffer_offsets = []
    for data in buffers:
        vec = b.CreateNumpyVector(np.frombuffer(data, np.uint8)) if data else None
        b.StartObject(3)
        if vec is not None:
            b.PrependUOffsetTRelativeSlot(0, vec, 0)
        buffer_offsets.append(b.EndObject())
    tensor_offsets = []
    for t in tensors:
        name = b.CreateString(t["name"])
        shape = ints(t["shape"])
        quant = None
        if "quant" in t:
            scales, zeros, axis = t["quant"]
            scale_vec, zero_vec = ints(scales, "<f4"), ints(zeros, "<i8")
            b.StartObject(7)
            b.PrependUOffsetTRelativeSlot(2, scale_vec, 0)
            b.PrependUOffsetTRelativeSlot(3, zero_vec, 0)
            b.PrependInt32Slot(6, axis, 0)
            quant = b.EndObject()
        sparsity = None
        if t.get("sparse"):
            b.StartObject(3)
            sparsity = b.EndObject()
        b.StartObject(10)
        b.PrependUOffsetTRelativeSlot(0, shape, 0)
        b.PrependInt8Slot(1, t.get("type", FLOAT32), 0)
        b.PrependUint32Slot(2, t.get("buffer", 0), 0)
        b.PrependUOffsetTRelativeSlot(3, name, 0)
        if quant is not None:
            b.PrependUOffsetTRelativeSlot(4, quant, 0)
        if sparsity is not None:
            b.PrependUOffsetTRelativeSlot(6, sparsity, 0)
        tensor_offsets.append(b.EndObject())
    codes = sorted({op["code"] for op in ops})
    op_offsets = []
    for op in ops:
        inputs, outputs = ints(op["inputs"]), ints(op["outputs"])
        options = None
        if "options" in op:
            _, fields = op["options"]
            b.StartObject(8)
            for slot, value in fields.items():  # slot 0 is padding (a byte), then ints
                if slot == 0:
                    b.PrependInt8Slot(0, value, 0)
                else:
                    b.PrependInt32Slot(slot, value, 0)
            options = b.EndObject()
        b.StartObject(13)
        b.PrependUint32Slot(0, codes.index(op["code"]), 0)
        b.PrependUOffsetTRelativeSlot(1, inputs, 0)
        b.PrependUOffsetTRelativeSlot(2, outputs, 0)
        if options is not None:
            b.PrependUint8Slot(3, op["options"][0], 0)
            b.PrependUOffsetTRelativeSlot(4, options, 0)
        op_offsets.append(b.EndObject())
    code_offsets = []
    for code in codes:
        b.StartObject(4)
        b.PrependInt8Slot(0, min(code, 127), 0)
        b.PrependInt32Slot(2, 1, 0)
        b.PrependInt32Slot(3, code, 0)
        code_offsets.append(b.EndObject())
    tensor_vec, op_vec = tables(tensor_offsets), tables(op_offsets)
    graph_inputs = ints([i for i, t in enumerate(tensors) if t.get("input")])
    graph_outputs = ints([ops[-1]["outputs"][0]])
    graph_name = b.CreateString("main")
    b.StartObject(5)
    b.PrependUOffsetTRelativeSlot(0, tensor_vec, 0)
    b.PrependUOffsetTRelativeSlot(1, graph_inputs, 0)
    b.PrependUOffsetTRelativeSlot(2, graph_outputs, 0)
    b.PrependUOffsetTRelativeSlot(3, op_vec, 0)
    b.PrependUOffsetTRelativeSlot(4, graph_name, 0)
    graph = b.EndObject()
    subgraphs, code_vec, buffer_vec = tables([graph]), tables(code_offsets), tables(buffer_offsets)
    description = b.CreateString("sncli test")
    b.StartObject(8)
    b.PrependUint32Slot(0, 3, 0)
    b.PrependUOffsetTRelativeSlot(1, code_vec, 0)
    b.PrependUOffsetTRelativeSlot(2, subgraphs, 0)
    b.PrependUOffsetTRelativeSlot(3, description, 0)
    b.PrependUOffsetTRelativeSlot(4, buffer_vec, 0)
    b.Finish(b.EndObject(), file_identifier=b"TFL3")
    return bytes(b.Output())


def _one_op(code: int, weight: np.ndarray, x_shape, y_shape, options=None) -> bytes:
    """input → op(weight) → output, float32 (TRANSPOSE_CONV takes output_shape first)."""
    tensors = [
        {"name": "x", "shape": x_shape, "input": True},
        {"name": "layer/kernel", "shape": weight.shape, "buffer": 1},
        {"name": "y", "shape": y_shape},
    ]
    buffers = [b"", weight.astype("<f4").tobytes()]
    inputs = [0, 1]
    if code != FULLY_CONNECTED:  # conv kernels want a bias: zeros
        tensors.append({"name": "layer/bias", "shape": [y_shape[-1]], "buffer": len(buffers)})
        buffers.append(np.zeros(y_shape[-1], "<f4").tobytes())
        inputs = [0, 1, len(tensors) - 1]
    if code == TRANSPOSE_CONV:
        tensors.append({"name": "out_shape", "shape": [4], "type": INT32, "buffer": 3})
        buffers.append(np.asarray(y_shape, "<i4").tobytes())
        inputs = [4, 1, 0, 3]
    op = {"code": code, "inputs": inputs, "outputs": [2]}
    if options is not None:
        op["options"] = options
    return _build(tensors, [op], buffers)


def _run_litert(blob: bytes, x: np.ndarray) -> np.ndarray:
    interpreter_module = pytest.importorskip("ai_edge_litert.interpreter")
    interpreter = interpreter_module.Interpreter(model_content=blob)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def _case(kind: str, rng: np.random.Generator):
    """(model bytes, input, torch function of the weight as sncli reports it)."""
    x = rng.standard_normal((1, 6, 5, 3)).astype(np.float32)  # NHWC
    nchw = torch.from_numpy(x).permute(0, 3, 1, 2).double()
    valid = {0: 1, 1: 1, 2: 1}  # padding VALID, strides 1
    if kind == "CONV_2D":
        w = rng.standard_normal((4, 3, 2, 3)).astype(np.float32)  # (out, kh, kw, in)
        blob = _one_op(CONV_2D, w, x.shape, [1, 4, 4, 4], (1, valid))
        return blob, x, lambda t: torch.nn.functional.conv2d(nchw, t)
    if kind == "DEPTHWISE_CONV_2D":
        w = rng.standard_normal((1, 3, 2, 3)).astype(np.float32)  # (1, kh, kw, channels)
        blob = _one_op(DEPTHWISE_CONV_2D, w, x.shape, [1, 4, 4, 3], (2, {**valid, 3: 1}))
        return blob, x, lambda t: torch.nn.functional.conv2d(nchw, t, groups=3)
    if kind == "TRANSPOSE_CONV":
        w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)  # (out, kh, kw, in)
        blob = _one_op(TRANSPOSE_CONV, w, x.shape, [1, 7, 7, 4], (49, valid))
        # reported (out, in, kh, kw); PyTorch's ConvTranspose weight is (in, out, kh, kw)
        return blob, x, lambda t: torch.nn.functional.conv_transpose2d(nchw, t.transpose(0, 1))
    w = rng.standard_normal((7, 15)).astype(np.float32)  # FULLY_CONNECTED (out, in)
    flat = x.reshape(6, 15)[:1]
    blob = _one_op(FULLY_CONNECTED, w, [1, 15], [1, 7])
    return blob, flat, lambda t: torch.from_numpy(flat).double() @ t.T


@pytest.mark.parametrize(
    "kind", ["CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED"]
)
def test_reported_orientation_computes_what_litert_computes(tmp_path: Path, kind: str) -> None:
    """The weight as sncli reports it, used as PyTorch's conv/linear weight, gives LiteRT's
    output: the orientation claims are right (and σ is of PyTorch's matrix)."""
    blob, x, torch_op = _case(kind, np.random.default_rng(3))
    expected = _run_litert(blob, x)
    path = tmp_path / "m.tflite"
    path.write_bytes(blob)
    with open_checkpoint(path) as ckpt:
        weight = ckpt.load("layer/kernel.weight").double()
        report = spectral_norms(ckpt, options=MethodOptions(method=Method.EXACT))
    got = torch_op(weight).numpy()
    if got.ndim == 4:
        got = got.transpose(0, 2, 3, 1)  # NCHW → NHWC
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    rows = weight.shape[0]
    assert report.layers[0].sigma == pytest.approx(
        _sigma64(weight.reshape(rows, -1).numpy()), rel=1e-9
    )


def _quantized_fc(tmp_path: Path, kind: int, q: np.ndarray, quant, **tensor) -> Path:
    tensors = [
        {"name": "x", "shape": [1, q.shape[1]], "input": True},
        {"name": "fc/w", "shape": q.shape, "type": kind, "buffer": 1, "quant": quant, **tensor},
        {"name": "y", "shape": [1, q.shape[0]]},
    ]
    blob = _build(
        tensors, [{"code": FULLY_CONNECTED, "inputs": [0, 1], "outputs": [2]}], [b"", q.tobytes()]
    )
    path = tmp_path / "q.tflite"
    path.write_bytes(blob)
    return path


def test_uint8_per_tensor_and_int8_per_channel_dequantized(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    q8 = rng.integers(0, 256, size=(5, 9), dtype=np.uint8)
    path = _quantized_fc(tmp_path, UINT8, q8, ([0.02], [131], 0))
    expected = ((q8.astype(np.float64) - 131) * np.float32(0.02)).astype(np.float32)
    with open_checkpoint(path) as ckpt:
        assert ckpt.tensors["fc/w.weight"].dtype == "UINT8 (dequantized)"
        np.testing.assert_array_equal(ckpt.load("fc/w.weight").numpy(), expected)
    qi = rng.integers(-127, 128, size=(4, 6), dtype=np.int8)
    scales = np.asarray([0.5, 0.01, 2.0, 0.25], np.float32)
    path = _quantized_fc(tmp_path, INT8, qi, (scales, [0, 0, 0, 0], 0))
    expected = (qi.astype(np.float64) * scales.astype(np.float64)[:, None]).astype(np.float32)
    with open_checkpoint(path) as ckpt:
        np.testing.assert_array_equal(ckpt.load("fc/w.weight").numpy(), expected)
        report = spectral_norms(ckpt, options=MethodOptions(method=Method.EXACT))
    assert report.layers[0].sigma == pytest.approx(_sigma64(expected), rel=1e-9)


def test_float16_weights_behind_dequantize(tmp_path: Path) -> None:
    w = np.random.default_rng(2).standard_normal((3, 8)).astype(np.float16)
    tensors = [
        {"name": "x", "shape": [1, 8], "input": True},
        {"name": "fc/w_fp16", "shape": [3, 8], "type": FLOAT16, "buffer": 1},
        {"name": "fc/w", "shape": [3, 8]},
        {"name": "y", "shape": [1, 3]},
    ]
    ops = [
        {"code": DEQUANTIZE, "inputs": [1], "outputs": [2]},
        {"code": FULLY_CONNECTED, "inputs": [0, 2], "outputs": [3]},
    ]
    path = tmp_path / "f16.tflite"
    path.write_bytes(_build(tensors, ops, [b"", w.tobytes()]))
    with open_checkpoint(path) as ckpt:
        assert ckpt.tensors["fc/w.weight"].dtype == "float16"
        np.testing.assert_array_equal(ckpt.load("fc/w.weight").numpy(), w)


def test_unsupported_tensors_are_skipped_with_the_reason(tmp_path: Path) -> None:
    q = np.zeros((4, 4), np.int8)
    path = _quantized_fc(tmp_path, INT8, q, ([0.1], [0], 0), sparse=True)
    with open_checkpoint(path) as ckpt:
        assert "sparse" in ckpt.unsupported["fc/w.weight"]
    path = _quantized_fc(tmp_path, INT4, np.zeros((4, 2), np.uint8), ([0.1], [0], 0))
    with open_checkpoint(path) as ckpt:
        assert "INT4" in ckpt.unsupported["fc/w.weight"]
    path = _quantized_fc(tmp_path, INT8, q, ([0.1, 0.2, 0.3], [0, 0, 0], 0))  # 3 scales, 4 rows
    with open_checkpoint(path) as ckpt:
        assert "per-channel scales do not fit" in ckpt.unsupported["fc/w.weight"]


def test_a_model_without_weights_names_tflite_and_how_to_convert(tmp_path: Path) -> None:
    tensors = [{"name": "x", "shape": [1, 4], "input": True}, {"name": "y", "shape": [1, 4]}]
    path = tmp_path / "relu.tflite"
    path.write_bytes(_build(tensors, [{"code": 19, "inputs": [0], "outputs": [1]}], [b""]))
    with pytest.raises(CheckpointError, match=r"TFLite model without constant weights.*tf2onnx"):
        open_checkpoint(path)


# --------------------------------------------------------------------------- hostile files


def _small_model() -> bytes:
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    return _one_op(FULLY_CONNECTED, w, [1, 4], [1, 3])


def _refused(path: Path, blob: bytes, match: str = "TFLite") -> None:
    path.write_bytes(blob)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=match) as info, open_checkpoint(path) as ckpt:
        for name in ckpt.tensors:
            ckpt.load(name)
    assert "\n" not in info.value.message
    assert time.perf_counter() - start < 2.0


def test_truncated_files(tmp_path: Path) -> None:
    blob = _small_model()
    for cut in (6, 12, len(blob) // 3, len(blob) // 2, len(blob) - 8):
        _refused(tmp_path / "cut.tflite", blob[:cut])


def test_offsets_out_of_range_and_huge_counts(tmp_path: Path) -> None:
    blob = bytearray(_small_model())
    root = struct.unpack_from("<I", blob, 0)[0]
    bad_root = bytearray(blob)
    struct.pack_into("<I", bad_root, 0, 0xFFFFFFF0)
    _refused(tmp_path / "root.tflite", bytes(bad_root), "past the end")
    bad_vtable = bytearray(blob)
    struct.pack_into("<i", bad_vtable, root, -0x7FFFFFFF)
    _refused(tmp_path / "vtable.tflite", bytes(bad_vtable))
    # every vector length in the file claimed huge, one at a time: never an allocation
    for at in range(8, len(blob) - 4, 4):
        count = struct.unpack_from("<I", blob, at)[0]
        if 1 <= count <= 16:
            huge = bytearray(blob)
            struct.pack_into("<I", huge, at, 0x3FFFFFFF)
            try:
                with open_checkpoint(_write(tmp_path / "huge.tflite", huge)) as ckpt:
                    for name in ckpt.tensors:
                        if name not in ckpt.unsupported:
                            ckpt.load(name)
            except CheckpointError as exc:
                assert "\n" not in exc.message


def _write(path: Path, blob: bytes | bytearray) -> Path:
    path.write_bytes(bytes(blob))
    return path


def test_cyclic_offsets_end(tmp_path: Path) -> None:
    """An offset vector whose entries all point back at the model table (a cycle for a
    recursive reader): read to a fixed depth, it ends at once, with an error or not at all."""
    blob = bytearray(_small_model())
    root = struct.unpack_from("<I", blob, 0)[0]
    for at in range(8, len(blob) - 4, 4):
        if at != root:
            cyclic = bytearray(blob)
            struct.pack_into("<I", cyclic, at, (root - at) % (1 << 32))
            start = time.perf_counter()
            try:
                with open_checkpoint(_write(tmp_path / "cyc.tflite", cyclic)) as ckpt:
                    for name in ckpt.tensors:
                        if name not in ckpt.unsupported:
                            ckpt.load(name)
            except CheckpointError as exc:
                assert "\n" not in exc.message
            assert time.perf_counter() - start < 2.0


@needs_real
def test_random_damage_never_escapes_as_another_error(tmp_path: Path) -> None:
    blob = REAL[0].read_bytes()
    rng = np.random.default_rng(7)
    path = tmp_path / "damaged.tflite"
    for _ in range(150):
        damaged = bytearray(blob)
        for at in rng.integers(8, len(blob), size=int(rng.integers(1, 6))):
            damaged[at] = int(rng.integers(0, 256))
        try:
            with open_checkpoint(_write(path, damaged)) as ckpt:
                for name in ckpt.tensors:
                    if name not in ckpt.unsupported:
                        ckpt.load(name)
        except CheckpointError as exc:
            assert "\n" not in exc.message


def test_sniffing(tmp_path: Path) -> None:
    blob = bytearray(_small_model())
    struct.pack_into("<I", blob, 0, struct.unpack_from("<I", blob, 0)[0])
    assert sniff_format(_write(tmp_path / "model.bin", blob)) == "tflite"
    # a root offset starting with 0x80 looks like a pickle's first bytes: TFL3 wins
    assert sniff_format(_write(tmp_path / "p.bin", b"\x80\x00\x00\x00TFL3" + bytes(200))) == (
        "tflite"
    )
    with pytest.raises(CheckpointError, match="not a TFLite model: no 'TFL3'"):
        sniff_format(_write(tmp_path / "x.tflite", b"\x00" * 64))
