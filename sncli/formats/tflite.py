"""TFLite models (``.tflite``: a FlatBuffer whose identifier ``TFL3`` is at byte 4): the constant
weights of the layers that have them, read by sncli's own bounds-checked FlatBuffer parser (no
TensorFlow, no generated schema code).

Every offset, vtable and vector length is checked against the file before it is followed; table
counts are capped; a shape's element count × type size must equal the bytes its buffer holds,
so no claim in the file allocates more than the file holds. The schema is walked to a fixed
depth (model → subgraph → operator → tensor → quantization), so cyclic or deep offsets cannot
recurse.

Weights are the constant filter inputs of ``CONV_2D``, ``DEPTHWISE_CONV_2D``,
``FULLY_CONNECTED``, ``TRANSPOSE_CONV``, ``CONV_3D``, ``CONV_3D_TRANSPOSE`` and (2-D)
``BATCH_MATMUL`` (a filter fed through ``DEQUANTIZE`` is read from that op's constant input),
named ``<tensor name>.weight`` (``.bias`` for the constant bias next to it) and reported in
PyTorch's orientation so layers classify and measure as for a state dict:

* CONV_2D (out, kh, kw, in) → (out, in, kh, kw); CONV_3D (kd, kh, kw, in, out) → (out, in, k…);
* DEPTHWISE_CONV_2D (1, kh, kw, channels) → (channels, 1, kh, kw), PyTorch's depthwise weight;
* FULLY_CONNECTED (out, in) as stored; BATCH_MATMUL's constant (in, out) → (out, in) (as stored
  with ``adj_y``);
* TRANSPOSE_CONV (out, kh, kw, in) → (out, in, kh, kw), CONV_3D_TRANSPOSE (k…, out, in) → (out,
  in, k…): reshaped dim 0 first, that is PyTorch's ConvTranspose matrix (spectral_norm's dim 1).

int8/uint8/int16/int32 tensors are dequantized to float32 with their stored per-tensor or
per-channel (``quantized_dimension``) scales and zero points, labelled ``INT8 (dequantized)``;
float16/bfloat16/float32 are read as stored. Sparse tensors, custom quantization, int4 and other
types are listed as skipped with the reason; a malformed file is one ``CheckpointError``.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sncli.dtypes import DEQUANTIZED
from sncli.errors import CheckpointError
from sncli.formats.common import FormatContents, quote, regular_file_size

IDENTIFIER = b"TFL3"
#: How to get a TFLite model's other weights (or its graph) analysed.
CONVERT_HINT = (
    "convert it to ONNX (python -m tf2onnx.convert --tflite MODEL.tflite --output MODEL.onnx) "
    "or analyse the Keras/SavedModel it came from"
)
_MAX_SUBGRAPHS = 10_000
_MAX_OPERATORS = 2_000_000  # over all subgraphs
_MAX_TENSORS = 2_000_000  # per subgraph
_MAX_OPERATOR_CODES = 100_000
_MAX_RANK = 16
_MAX_NAME = 1024  # bytes of a tensor name kept

#: TFLite TensorType → (TFLite name, numpy dtype name, bytes per element) of the types read.
_TYPES: dict[int, tuple[str, str, int]] = {
    0: ("FLOAT32", "float32", 4),
    1: ("FLOAT16", "float16", 2),
    2: ("INT32", "int32", 4),
    3: ("UINT8", "uint8", 1),
    7: ("INT16", "int16", 2),
    9: ("INT8", "int8", 1),
    10: ("FLOAT64", "float64", 8),
    18: ("BFLOAT16", "uint16", 2),
}
_FLOAT_TYPES = {0: "float32", 1: "float16", 10: "float64", 18: "bfloat16"}
_TYPE_NAMES = {
    4: "INT64",
    5: "STRING",
    6: "BOOL",
    8: "COMPLEX64",
    11: "COMPLEX128",
    12: "UINT64",
    13: "RESOURCE",
    14: "VARIANT",
    15: "UINT32",
    16: "UINT16",
    17: "INT4",
}

CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, DEQUANTIZE, DENSIFY = 3, 4, 9, 6, 124
TRANSPOSE_CONV, CONV_3D, CONV_3D_TRANSPOSE, BATCH_MATMUL = 67, 132, 141, 126
_FULLY_CONNECTED_OPTIONS, _BATCH_MATMUL_OPTIONS = 8, 101


@dataclass(frozen=True)
class _Layout:
    """Where a weight op keeps its filter and bias, and how the filter becomes PyTorch's."""

    op: str
    filter_input: int
    bias_input: int | None
    rank: int
    perm: tuple[int, ...]  # stored dims → reported dims (torch.permute order)


_LAYOUTS = {
    CONV_2D: _Layout("CONV_2D", 1, 2, 4, (0, 3, 1, 2)),
    DEPTHWISE_CONV_2D: _Layout("DEPTHWISE_CONV_2D", 1, 2, 4, (3, 0, 1, 2)),
    FULLY_CONNECTED: _Layout("FULLY_CONNECTED", 1, 2, 2, (0, 1)),
    TRANSPOSE_CONV: _Layout("TRANSPOSE_CONV", 1, 3, 4, (0, 3, 1, 2)),
    CONV_3D: _Layout("CONV_3D", 1, 2, 5, (4, 3, 0, 1, 2)),
    CONV_3D_TRANSPOSE: _Layout("CONV_3D_TRANSPOSE", 1, 3, 5, (3, 4, 0, 1, 2)),
    BATCH_MATMUL: _Layout("BATCH_MATMUL", 1, None, 2, (1, 0)),
}
_BATCH_MATMUL_ADJ_Y = _Layout("BATCH_MATMUL", 1, None, 2, (0, 1))
#: Ops that carry weights sncli does not read (named in a note when a model has them).
_UNREAD_WEIGHT_OPS = {
    7: "EMBEDDING_LOOKUP",
    16: "LSTM",
    24: "RNN",
    27: "SVDF",
    32: "CUSTOM",
    35: "UNIDIRECTIONAL_SEQUENCE_RNN",
    44: "UNIDIRECTIONAL_SEQUENCE_LSTM",
    46: "BIDIRECTIONAL_SEQUENCE_RNN",
    52: "BIDIRECTIONAL_SEQUENCE_LSTM",
    171: "STABLEHLO_CONVOLUTION",
    197: "STABLEHLO_DOT_GENERAL",
}


class _Malformed(Exception):
    """A FlatBuffer read that would leave the file or break the schema (the message says which)."""


class _Flat:
    """Bounds-checked reads of little-endian scalars, tables, vectors and strings."""

    def __init__(self, data: Any, size: int) -> None:
        self.data = data
        self.size = size

    def need(self, pos: int, length: int, what: str) -> None:
        if pos < 0 or length < 0 or pos + length > self.size:
            raise _Malformed(f"{what} at byte {pos} runs past the end of the file ({self.size})")

    def scalar(self, fmt: str, pos: int, what: str) -> Any:
        self.need(pos, struct.calcsize(fmt), what)
        return struct.unpack_from("<" + fmt, self.data, pos)[0]

    def table(self, pos: int, what: str) -> _Table:
        vtable = pos - self.scalar("i", pos, what)
        vt_size = self.scalar("H", vtable, f"vtable of {what}")
        inline = self.scalar("H", vtable + 2, f"vtable of {what}")
        if vt_size < 4 or vt_size % 2 or inline < 4:
            raise _Malformed(f"bad vtable of {what} at byte {vtable}")
        self.need(vtable, vt_size, f"vtable of {what}")
        self.need(pos, inline, what)
        return _Table(self, pos, vtable, (vt_size - 4) // 2, inline, what)

    def vector(self, pos: int, elem: int, what: str, limit: int | None = None) -> tuple[int, int]:
        """(first element's position, count) of the vector at ``pos``."""
        count = self.scalar("I", pos, what)
        if limit is not None and count > limit:
            raise _Malformed(f"{what} holds {count} entries, more than sncli reads ({limit})")
        self.need(pos + 4, count * elem, f"{what} ({count} entries)")
        return pos + 4, count


class _Table:
    """One FlatBuffer table: field ``i`` of the schema, default when absent."""

    def __init__(self, flat: _Flat, pos: int, vtable: int, fields: int, inline: int, what: str):
        self.flat, self.pos, self.vtable, self.fields, self.inline = (
            flat,
            pos,
            vtable,
            fields,
            inline,
        )
        self.what = what

    def _field(self, index: int, size: int) -> int | None:
        if index >= self.fields:
            return None
        offset = struct.unpack_from("<H", self.flat.data, self.vtable + 4 + 2 * index)[0]
        if offset == 0:
            return None
        if offset + size > self.inline:
            raise _Malformed(f"field {index} of {self.what} lies outside its table")
        return self.pos + offset

    def scalar(self, index: int, fmt: str, default: Any) -> Any:
        pos = self._field(index, struct.calcsize(fmt))
        return default if pos is None else struct.unpack_from("<" + fmt, self.flat.data, pos)[0]

    def target(self, index: int) -> int | None:
        pos = self._field(index, 4)
        if pos is None:
            return None
        return pos + struct.unpack_from("<I", self.flat.data, pos)[0]

    def table(self, index: int, what: str) -> _Table | None:
        pos = self.target(index)
        return None if pos is None else self.flat.table(pos, what)

    def vector(self, index: int, elem: int, what: str, limit: int | None = None) -> tuple[int, int]:
        pos = self.target(index)
        return (0, 0) if pos is None else self.flat.vector(pos, elem, what, limit)

    def numbers(self, index: int, fmt: str, what: str, limit: int | None = None) -> Any:
        """A vector of scalars as a numpy array (a view of the file, nothing copied)."""
        import numpy as np

        dtype = np.dtype("<" + fmt)
        start, count = self.vector(index, dtype.itemsize, what, limit)
        return (
            np.frombuffer(self.flat.data, dtype=dtype, count=count, offset=start)
            if count
            else (np.zeros(0, dtype=dtype))
        )

    def tables(self, index: int, what: str, limit: int) -> list[int]:
        """Positions of the tables a vector of offsets points to (each checked when read)."""
        start, count = self.vector(index, 4, what, limit)
        return [
            start + 4 * i + struct.unpack_from("<I", self.flat.data, start + 4 * i)[0]
            for i in range(count)
        ]

    def string(self, index: int, what: str) -> str:
        pos = self.target(index)
        if pos is None:
            return ""
        start, count = self.flat.vector(pos, 1, what)
        raw = bytes(self.flat.data[start : start + min(count, _MAX_NAME)])
        return raw.decode("utf-8", "replace")


@dataclass(frozen=True)
class _Quant:
    scale: Any  # float32 array, one per channel (or one)
    zero_point: Any  # int64 array, as long as scale
    axis: int


@dataclass(frozen=True)
class _Weight:
    """One listed tensor: where its bytes are and how they become the reported tensor."""

    tensor: str  # the TFLite tensor name, for messages
    type: int
    stored_shape: tuple[int, ...]
    start: int  # file offset of the data
    nbytes: int
    quant: _Quant | None
    perm: tuple[int, ...] | None

    @property
    def shape(self) -> tuple[int, ...]:
        if self.perm is None:
            return self.stored_shape
        return tuple(self.stored_shape[i] for i in self.perm)

    @property
    def dtype(self) -> str:
        if self.quant is not None:
            return _TYPES[self.type][0] + DEQUANTIZED
        return _FLOAT_TYPES.get(self.type, _TYPES[self.type][1] if self.type in _TYPES else "")


class _Unsupported(Exception):
    """A tensor sncli does not read (listed as skipped with this reason)."""


class _Model:
    """The parts of a TFLite model the reader needs, parsed on demand and checked."""

    def __init__(self, flat: _Flat) -> None:
        self.flat = flat
        root = flat.scalar("I", 0, "root offset")
        model = flat.table(root, "the model table")
        version = model.scalar(0, "I", 0)
        if version != 3:
            raise _Malformed(f"schema version {version} (sncli reads TFLite schema version 3)")
        self.codes = [
            self._opcode(pos) for pos in model.tables(1, "operator codes", _MAX_OPERATOR_CODES)
        ]
        self.subgraphs = model.tables(2, "subgraphs", _MAX_SUBGRAPHS)
        self.buffers = model.tables(4, "buffers", _MAX_TENSORS * 4)
        for index in range(len(self.buffers)):  # all checked: a cut file fails here
            self.buffer(index, f"buffer {index}")

    def _opcode(self, pos: int) -> int:
        code = self.flat.table(pos, "an operator code")
        deprecated = code.scalar(0, "b", 0)
        return max(int(deprecated), int(code.scalar(3, "i", 0)))

    def buffer(self, index: int, tensor: str) -> tuple[int, int]:
        """(file offset, length) of buffer ``index``'s data; length 0 when it holds none."""
        if index >= len(self.buffers):
            raise _Malformed(f"tensor {quote(tensor)} names buffer {index} of {len(self.buffers)}")
        buffer = self.flat.table(self.buffers[index], f"buffer {index}")
        start, count = buffer.vector(0, 1, f"data of buffer {index}")
        offset, size = buffer.scalar(1, "Q", 0), buffer.scalar(2, "Q", 0)
        if count == 0 and offset > 1:  # data kept after the FlatBuffer (models over 2 GB)
            self.flat.need(offset, size, f"data of buffer {index}")
            return offset, size
        return start, count


@dataclass
class _Subgraph:
    model: _Model
    index: int
    name: str
    tensors: list[int]
    operators: list[int]

    def tensor(self, index: int) -> _Table:
        if not 0 <= index < len(self.tensors):
            raise _Malformed(f"an operator of subgraph {self.index} names tensor {index}")
        return self.model.flat.table(self.tensors[index], f"tensor {index}")


def _shape(tensor: _Table, name: str) -> tuple[int, ...]:
    dims = tensor.numbers(0, "i", f"shape of {quote(name)}", _MAX_RANK)
    if any(int(d) < 0 for d in dims):
        raise _Malformed(f"tensor {quote(name)} has a negative dimension {tuple(dims.tolist())}")
    return tuple(int(d) for d in dims)


def _quantization(tensor: _Table, name: str, shape: tuple[int, ...]) -> _Quant | None:
    import numpy as np

    quant = tensor.table(4, f"quantization of {quote(name)}")
    if quant is None:
        return None
    if quant.scalar(4, "B", 0) != 0:
        raise _Unsupported("TFLite custom quantization (details) is not read")
    scale = quant.numbers(2, "f", f"scales of {quote(name)}", max(shape, default=1) or 1)
    zero = quant.numbers(3, "q", f"zero points of {quote(name)}", max(shape, default=1) or 1)
    if scale.size == 0:
        return None
    axis = int(quant.scalar(6, "i", 0))
    if not np.all(np.isfinite(scale)):
        raise _Unsupported("its quantization scales are not finite")
    if zero.size not in (0, scale.size):
        raise _Unsupported(f"{scale.size} quantization scales but {zero.size} zero points")
    if scale.size > 1 and not (0 <= axis < len(shape) and shape[axis] == scale.size):
        raise _Unsupported(
            f"{scale.size} per-channel scales do not fit dimension {axis} of shape {shape}"
        )
    zero = np.zeros(scale.size, dtype=np.int64) if zero.size == 0 else zero
    return _Quant(scale.astype(np.float32), zero.astype(np.int64), axis)


def _weight(sub: _Subgraph, index: int, perm: tuple[int, ...] | None) -> _Weight:
    """The constant tensor ``index`` of ``sub``, checked (``_Unsupported`` when not read)."""
    model = sub.model
    tensor = sub.tensor(index)
    name = tensor.string(3, f"name of tensor {index}") or f"tensor {index}"
    shape = _shape(tensor, name)
    kind = int(tensor.scalar(1, "b", 0))
    if tensor.target(6) is not None:
        raise _Unsupported("a sparse TFLite tensor (sparsity parameters) is not read")
    if kind not in _TYPES:
        label = _TYPE_NAMES.get(kind, f"type {kind}")
        raise _Unsupported(f"TFLite {label} tensors are not read")
    start, nbytes = model.buffer(int(tensor.scalar(2, "I", 0)), name)
    expected = math.prod(shape) * _TYPES[kind][2]
    if nbytes != expected:
        raise _Malformed(
            f"tensor {quote(name)} ({_TYPES[kind][0]} × {shape}) needs {expected} bytes, its "
            f"buffer holds {nbytes}"
        )
    quant = None if kind in _FLOAT_TYPES else _quantization(tensor, name, shape)
    if kind not in _FLOAT_TYPES and quant is None:
        raise _Unsupported(f"an {_TYPES[kind][0]} tensor without quantization scales")
    return _Weight(name, kind, shape, start, nbytes, quant, perm)


def _is_constant(sub: _Subgraph, index: int) -> bool:
    tensor = sub.tensor(index)
    return sub.model.buffer(int(tensor.scalar(2, "I", 0)), f"tensor {index}")[1] > 0


@dataclass(frozen=True)
class _Op:
    code: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    table: _Table


def _operators(sub: _Subgraph, budget: list[int]) -> list[_Op]:
    flat, codes = sub.model.flat, sub.model.codes
    ops = []
    for number, pos in enumerate(sub.operators):
        budget[0] -= 1
        if budget[0] < 0:
            raise _Malformed(f"more than {_MAX_OPERATORS} operators: not read")
        op = flat.table(pos, f"operator {number} of subgraph {sub.index}")
        code_index = int(op.scalar(0, "I", 0))
        if code_index >= len(codes):
            raise _Malformed(f"operator {number} names operator code {code_index} of {len(codes)}")
        inputs = op.numbers(1, "i", f"inputs of operator {number}", _MAX_TENSORS)
        outputs = op.numbers(2, "i", f"outputs of operator {number}", _MAX_TENSORS)
        ops.append(_Op(codes[code_index], tuple(inputs.tolist()), tuple(outputs.tolist()), op))
    return ops


def _layout(op: _Op) -> _Layout:
    layout = _LAYOUTS[op.code]
    if op.code == FULLY_CONNECTED and op.table.scalar(3, "B", 0) == _FULLY_CONNECTED_OPTIONS:
        options = op.table.table(4, "FULLY_CONNECTED options")
        if options is not None and options.scalar(1, "b", 0) != 0:
            raise _Unsupported("FULLY_CONNECTED weights in a shuffled format are not read")
    if op.code == BATCH_MATMUL and op.table.scalar(3, "B", 0) == _BATCH_MATMUL_OPTIONS:
        options = op.table.table(4, "BATCH_MATMUL options")
        if options is not None and options.scalar(1, "B", 0):
            return _BATCH_MATMUL_ADJ_Y
    return layout


class _Listing:
    """The weights found so far, by reported name, and what was skipped."""

    def __init__(self) -> None:
        self.weights: dict[str, _Weight] = {}
        self.unsupported: dict[str, tuple[tuple[tuple[int, ...], str], str]] = {}
        self.seen: set[tuple[int, int]] = set()
        self.names: set[str] = set()
        self.ops: dict[str, int] = {}
        self.unread: dict[str, int] = {}

    def base(self, sub: _Subgraph, index: int) -> str:
        tensor = sub.tensor(index)
        name = tensor.string(3, f"name of tensor {index}") or f"tensor{index}"
        if sub.index:
            name = f"{sub.name or f'subgraph{sub.index}'}/{name}"
        if f"{name}.weight" in self.names or f"{name}.bias" in self.names:
            name = f"{name}#{sub.index}.{index}"
        return name


def _source(sub: _Subgraph, index: int, producers: dict[int, _Op]) -> int | None:
    """The constant tensor behind input ``index``: itself, or a DEQUANTIZE's constant input;
    None when the input is computed at run time."""
    if index < 0:
        return None
    if _is_constant(sub, index):
        return index
    producer = producers.get(index)
    if producer is None:
        return None
    if producer.code == DENSIFY:
        raise _Unsupported("sparse TFLite weights (DENSIFY) are not read")
    source = producer.inputs[0] if producer.inputs else -1
    return source if source >= 0 and _is_constant(sub, source) else None


def _list_op(sub: _Subgraph, op: _Op, producers: dict[int, _Op], listing: _Listing) -> None:
    layout = _LAYOUTS[op.code]
    if layout.filter_input >= len(op.inputs):
        return
    filter_index = op.inputs[layout.filter_input]
    try:
        layout = _layout(op)
        source = _source(sub, filter_index, producers)
    except _Unsupported as exc:
        source, problem = None, str(exc)
    else:
        problem = ""
    if (source is None and not problem) or (sub.index, filter_index) in listing.seen:
        return
    listing.seen.add((sub.index, filter_index))
    base = listing.base(sub, filter_index)
    name = f"{base}.weight"
    listing.names.add(name)
    try:
        if problem:
            raise _Unsupported(problem)
        assert source is not None
        weight = _weight(sub, source, layout.perm)
        if len(weight.stored_shape) != layout.rank or (
            op.code == DEPTHWISE_CONV_2D and weight.stored_shape[0] != 1
        ):
            raise _Unsupported(
                f"a {layout.op} filter of shape {weight.stored_shape} is not one sncli reads "
                f"(expected rank {layout.rank})"
            )
    except _Unsupported as exc:
        listing.unsupported[name] = (((), "unknown"), f"TFLite tensor: {exc}")
        return
    listing.weights[name] = weight
    listing.ops[layout.op] = listing.ops.get(layout.op, 0) + 1
    slot = layout.bias_input
    bias = op.inputs[slot] if slot is not None and slot < len(op.inputs) else -1
    if bias >= 0:
        if (sub.index, bias) in listing.seen or not _is_constant(sub, bias):
            return
        listing.seen.add((sub.index, bias))
        listing.names.add(f"{base}.bias")
        try:
            listing.weights[f"{base}.bias"] = _weight(sub, bias, None)
        except _Unsupported as exc:
            listing.unsupported[f"{base}.bias"] = (((), "unknown"), f"TFLite tensor: {exc}")


def _scan(model: _Model) -> _Listing:
    listing = _Listing()
    budget = [_MAX_OPERATORS]
    for number, pos in enumerate(model.subgraphs):
        table = model.flat.table(pos, f"subgraph {number}")
        sub = _Subgraph(
            model,
            number,
            table.string(4, f"name of subgraph {number}"),
            table.tables(0, f"tensors of subgraph {number}", _MAX_TENSORS),
            table.tables(3, f"operators of subgraph {number}", _MAX_OPERATORS),
        )
        ops = _operators(sub, budget)
        producers = {
            out: op for op in ops if op.code in (DEQUANTIZE, DENSIFY) for out in op.outputs
        }
        for op in ops:
            if op.code in _LAYOUTS:
                _list_op(sub, op, producers, listing)
            elif op.code in _UNREAD_WEIGHT_OPS and any(
                0 <= i < len(sub.tensors) and _is_constant(sub, i) for i in op.inputs
            ):
                label = _UNREAD_WEIGHT_OPS[op.code]
                listing.unread[label] = listing.unread.get(label, 0) + 1
    return listing


def _load(flat: _Flat, weight: _Weight) -> Any:
    import numpy as np
    import torch

    np_name = _TYPES[weight.type][1]
    count = weight.nbytes // _TYPES[weight.type][2]
    raw = np.frombuffer(
        flat.data, dtype=np.dtype(np_name).newbyteorder("<"), count=count, offset=weight.start
    ).reshape(weight.stored_shape)
    if weight.quant is not None:
        quant = weight.quant
        view = [1] * raw.ndim
        if quant.scale.size > 1:
            view[quant.axis] = quant.scale.size
        scale = quant.scale.astype(np.float64).reshape(view) if raw.ndim else quant.scale[0]
        zero = (
            quant.zero_point.astype(np.float64).reshape(view) if raw.ndim else quant.zero_point[0]
        )
        array = ((raw.astype(np.float64) - zero) * scale).astype(np.float32)
    else:
        array = np.array(raw, dtype=raw.dtype.newbyteorder("="))
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if weight.type == 18:
        tensor = tensor.view(torch.bfloat16)
    if weight.perm is not None:
        tensor = tensor.permute(*weight.perm)
    return tensor.contiguous()


def _notes(path: Path, listing: _Listing) -> list[str]:
    ops = ", ".join(f"{count} {op}" for op, count in sorted(listing.ops.items()))
    notes = [
        f"{path.name}: TFLite model; the constant weights of its layers ({ops or 'none'}) are "
        "listed in PyTorch's orientation: conv filters (out, in, k…), depthwise "
        "(channels, 1, kh, kw), fully connected (out, in); its graph is not analysed"
    ]
    quantized = sorted({w.dtype for w in listing.weights.values() if w.quant is not None})
    if quantized:
        notes.append(
            f"quantized weights ({', '.join(quantized)}) are dequantized with their stored "
            "scales and zero points: σ is that of the dequantized weight (what the model "
            "computes with)"
        )
    if any(op in listing.ops for op in ("TRANSPOSE_CONV", "CONV_3D_TRANSPOSE")):
        notes.append(
            "TRANSPOSE_CONV filters are listed as (out, in, k…): their reshape(out, in*k) is "
            "PyTorch's ConvTranspose matrix (dim 1 first); do not name them with --transposed"
        )
    if listing.unread:
        shown = ", ".join(f"{count} {op}" for op, count in sorted(listing.unread.items()))
        notes.append(f"weights of {shown} operators are not read; to analyse them, {CONVERT_HINT}")
    return notes


def read_tflite(path: Path) -> FormatContents:
    """The constant weights of a ``.tflite`` model's layers, in PyTorch's orientation."""
    size = regular_file_size(path)
    if size < 8:
        raise CheckpointError("truncated TFLite model (shorter than its 8-byte header)", path)
    with path.open("rb") as handle:
        data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    error = ""
    try:
        if data[4:8] != IDENTIFIER:
            raise _Malformed("no 'TFL3' identifier at byte 4")
        flat = _Flat(data, size)
        model = _Model(flat)
        listing = _scan(model)
    except _Malformed as exc:
        error = f"malformed TFLite model: {exc}"
    except (struct.error, ValueError, IndexError, OverflowError) as exc:
        error = f"malformed TFLite model: a FlatBuffer field cannot be read ({type(exc).__name__})"
    if error:  # closed here, once the exception (whose frames hold views of the map) is gone
        _close(data)
        raise CheckpointError(error, path)
    if not listing.weights and not listing.unsupported:
        _close(data)
        unread = ", ".join(sorted(listing.unread))
        raise CheckpointError(
            "TFLite model without constant weights sncli reads (filters of CONV_2D, "
            "DEPTHWISE_CONV_2D, FULLY_CONNECTED, TRANSPOSE_CONV, CONV_3D, BATCH_MATMUL)"
            + (f"; its {unread} weights are not read" if unread else "")
            + f"; {CONVERT_HINT}",
            path,
        )
    tensors = {name: (w.shape, w.dtype) for name, w in listing.weights.items()}
    tensors.update({name: entry for name, (entry, _) in listing.unsupported.items()})
    load: Callable[[str], Any] = lambda name: _load(flat, listing.weights[name])  # noqa: E731
    return FormatContents(
        format="tflite",
        files=[path],
        tensors=tensors,
        load=load,
        notes=_notes(path, listing),
        unsupported={name: reason for name, (_, reason) in listing.unsupported.items()},
        close=lambda: _close(data),
        conv_layout_known=True,
    )


def _close(data: mmap.mmap) -> None:
    """Unmap the file (left to the garbage collector while a view of it is still alive)."""
    with contextlib.suppress(BufferError):
        data.close()
