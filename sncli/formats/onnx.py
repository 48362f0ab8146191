"""ONNX models: the stored tensors (for ``inspect``) and the graph (for ``lipschitz``).

Parsed with the ``onnx`` package (``load_external_data=False``: sncli reads external data
itself). Weights are initializers or the ``value`` of ``Constant`` nodes (Paddle2ONNX writes
every weight so), listed under the name the graph gives them (the initializer's name, the
Constant's output); the graph says which ones a Conv/ConvTranspose/Gemm/MatMul node uses as its
weight, through Identity and float Casts (``FormatContents.roles``). Data may be embedded
(``raw_data`` or the typed fields) or external, as torch's dynamo exporter writes it
(``model.onnx`` + ``model.onnx.data``). Before any data is read:

* every tensor's dims are non-negative and its byte size matches what the file holds
  (``raw_data`` length, typed field length, or the external ``length`` and the data file's
  size), so a header never allocates more than the files contain;
* an external ``location`` is a relative path that stays inside the model's folder once
  symlinks are resolved, and names a regular file.

A truncated or malformed protobuf, a name that is not UTF-8, a missing data file or a bad
location is a ``CheckpointError`` naming the file. The graph is given as plain dataclasses
(``OnnxGraph``) with shapes from ONNX shape inference, so the engine walking it needs no
``onnx`` types.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sncli.arrays import bfloat16_from_bits, to_torch
from sncli.errors import CheckpointError
from sncli.formats.common import FormatContents, describe, quote, regular_file_size

if TYPE_CHECKING:
    import numpy as np

#: ONNX TensorProto.DataType → (torch dtype name, numpy dtype name, bytes per element).
#: bfloat16 is read as uint16 and reinterpreted by torch.
ONNX_DTYPES: dict[int, tuple[str, str, int]] = {
    1: ("float32", "float32", 4),
    2: ("uint8", "uint8", 1),
    3: ("int8", "int8", 1),
    4: ("uint16", "uint16", 2),
    5: ("int16", "int16", 2),
    6: ("int32", "int32", 4),
    7: ("int64", "int64", 8),
    9: ("bool", "bool", 1),
    10: ("float16", "float16", 2),
    11: ("float64", "float64", 8),
    12: ("uint32", "uint32", 4),
    13: ("uint64", "uint64", 8),
    16: ("bfloat16", "uint16", 2),
}
#: Typed storage fields of a TensorProto, by data type (used when raw_data is empty).
_TYPED_FIELD = {
    1: "float_data",
    2: "int32_data",
    3: "int32_data",
    4: "int32_data",
    5: "int32_data",
    6: "int32_data",
    7: "int64_data",
    9: "int32_data",
    10: "int32_data",
    11: "double_data",
    12: "uint64_data",
    13: "uint64_data",
    16: "int32_data",
}

Dim = int | str | None


@dataclass(frozen=True)
class OnnxValue:
    """A graph input, output or intermediate value: its dtype and shape, as far as known.

    ``shape`` holds ints for static dims, the symbol (``"batch"``) for named dynamic ones and
    None for unknown ones; ``shape`` itself is None when the rank is unknown.
    """

    name: str
    dtype: str | None
    shape: tuple[Dim, ...] | None


@dataclass(frozen=True)
class OnnxNode:
    """One node: op, inputs/outputs by value name ('' = an omitted optional input) and attributes
    as plain Python values (ints, floats, strings, lists; a tensor attribute as a numpy array;
    a subgraph as the string ``"<graph>"``)."""

    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class OnnxGraph:
    """The main graph of an ONNX model, ready to walk (nodes in file order)."""

    path: Path
    files: list[Path]
    opset: int
    inputs: list[OnnxValue]
    outputs: list[OnnxValue]
    nodes: list[OnnxNode]
    values: dict[str, OnnxValue]
    initializers: dict[str, tuple[tuple[int, ...], str]]
    load: Callable[[str], np.ndarray]
    notes: list[str] = field(default_factory=list)
    #: Inputs whose shape is still dynamic once --input-shape and the defaults are applied.
    dynamic: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Tensor:
    """Where one initializer's bytes are: embedded in the proto, or a range of a data file."""

    name: str
    shape: tuple[int, ...]
    data_type: int
    file: Path | None = None
    offset: int = 0
    length: int = 0


def _parse_model(path: Path) -> Any:
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - onnx is a dependency
        raise CheckpointError("reading ONNX models needs the 'onnx' package", path) from exc
    size = regular_file_size(path)
    if size == 0:
        raise CheckpointError("empty file, not an ONNX model", path)
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError and friends: protobuf gives no common base
        raise CheckpointError(
            f"not a valid ONNX model (truncated or malformed protobuf: {describe(exc)})", path
        ) from exc
    if not model.HasField("graph"):
        raise CheckpointError("not a valid ONNX model: no graph", path)
    _check_names(model, path)
    return model


def _names(model: Any) -> Iterator[tuple[str, Any]]:
    """Every name sncli reads from the main graph, with where it is (for a message)."""
    graph = model.graph
    for opset in model.opset_import:
        yield "an opset domain", opset.domain
    for kind, infos in (
        ("graph input", graph.input),
        ("graph output", graph.output),
        ("value_info", graph.value_info),
    ):
        for index, info in enumerate(infos):
            yield f"{kind} {index}'s name", info.name
    for index, tensor in enumerate(graph.initializer):
        yield f"initializer {index}'s name", tensor.name
    for index, node in enumerate(graph.node):
        where = f"node {index}"
        yield f"{where}'s name", node.name
        yield f"{where}'s op type", node.op_type
        yield f"{where}'s domain", node.domain
        for kind, values in (("input", node.input), ("output", node.output)):
            for position, value in enumerate(values):
                yield f"{where}'s {kind} {position}", value
        for attribute in node.attribute:
            yield f"{where}'s attribute name", attribute.name
            if attribute.HasField("t"):
                yield f"{where}'s tensor attribute name", attribute.t.name


def _check_names(model: Any, path: Path) -> None:
    """Refuse names that are not UTF-8: protobuf hands them over as bytes (ONNX requires UTF-8
    strings), which no later step expects."""
    for where, value in _names(model):
        if not isinstance(value, str):
            shown = bytes(value).decode("utf-8", "backslashreplace")
            raise CheckpointError(
                f"not a valid ONNX model: {where} {quote(shown)} is not UTF-8 text "
                "(ONNX names are UTF-8 strings)",
                path,
            )


def _numel(shape: tuple[int, ...], name: str, path: Path) -> int:
    if any(d < 0 for d in shape):
        raise CheckpointError(f"tensor {quote(name)} has a negative dimension {shape}", path)
    return math.prod(shape)


def _external_file(location: str, name: str, folder: Path, path: Path) -> Path:
    """The data file a location names, refused unless it stays inside the model's folder."""
    if not location or os.path.isabs(location) or "\x00" in location:
        raise CheckpointError(
            f"tensor {quote(name)}: external data location {quote(location)} is not a relative "
            "path inside the model's folder",
            path,
        )
    candidate = folder / location
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(
            f"tensor {quote(name)}: external data file {quote(location)} is missing", path
        ) from exc
    if not resolved.is_relative_to(folder.resolve()):
        raise CheckpointError(
            f"tensor {quote(name)}: external data location {quote(location)} leaves the model's "
            "folder (refused)",
            path,
        )
    return resolved


def _tensor_entry(
    proto: Any, path: Path, sizes: dict[Path, int], name: str | None = None
) -> _Tensor:
    """Check one TensorProto's claims against the bytes it has and say where they are.

    ``name`` is the name the graph gives the tensor (a Constant's output), when not its own.
    """
    name = proto.name if name is None else name
    shape = tuple(int(d) for d in proto.dims)
    numel = _numel(shape, name, path)
    if proto.data_type not in ONNX_DTYPES:
        return _Tensor(name, shape, proto.data_type)
    itemsize = ONNX_DTYPES[proto.data_type][2]
    expected = numel * itemsize
    if proto.data_location == 1:  # EXTERNAL
        info = {entry.key: entry.value for entry in proto.external_data}
        file = _external_file(info.get("location", ""), name, path.parent, path)
        if file not in sizes:
            sizes[file] = regular_file_size(file)
        try:
            offset = int(info.get("offset", "0") or 0)
            length = int(info.get("length", str(expected)) or expected)
        except ValueError as exc:
            message = f"tensor {quote(name)}: bad external offset/length"
            raise CheckpointError(message, path) from exc
        if offset < 0 or length != expected:
            raise CheckpointError(
                f"tensor {quote(name)}: external data claims {length} bytes at offset {offset}, "
                f"its shape {list(shape)} needs {expected}",
                path,
            )
        if offset + length > sizes[file]:
            raise CheckpointError(
                f"tensor {quote(name)}: external data ends at byte {offset + length}, past the "
                f"end of {file.name} ({sizes[file]} bytes; truncated?)",
                path,
            )
        return _Tensor(name, shape, proto.data_type, file, offset, length)
    if proto.raw_data:
        held = len(proto.raw_data)
    else:  # typed fields hold one entry per element
        held = len(getattr(proto, _TYPED_FIELD[proto.data_type])) * itemsize
    if held != expected:
        raise CheckpointError(
            f"tensor {quote(name)}: shape {list(shape)} needs {expected} bytes, the file holds "
            f"{held}",
            path,
        )
    return _Tensor(name, shape, proto.data_type)


def _to_numpy(tensor: _Tensor, proto: Any) -> np.ndarray:
    """The tensor's values as a numpy array (bfloat16 as its uint16 bit pattern)."""
    import numpy as np

    np_name = ONNX_DTYPES[tensor.data_type][1]
    if tensor.file is not None:
        with tensor.file.open("rb") as handle:
            handle.seek(tensor.offset)
            data = handle.read(tensor.length)
        if len(data) != tensor.length:
            raise OSError(5, "data file ended early")
        return np.frombuffer(data, dtype=np.dtype(np_name).newbyteorder("<")).reshape(tensor.shape)
    if proto.raw_data:
        raw = np.frombuffer(proto.raw_data, dtype=np.dtype(np_name).newbyteorder("<"))
        return raw.reshape(tensor.shape)
    values = getattr(proto, _TYPED_FIELD[tensor.data_type])
    if tensor.data_type in (10, 16):  # fp16/bf16 bit patterns stored in int32_data
        return np.asarray(values, dtype=np.uint16).view(np_name).reshape(tensor.shape)
    return np.asarray(values, dtype=np_name).reshape(tensor.shape)


#: Weight inputs of the nodes whose weights are layers: Conv/ConvTranspose read their weight
#: as input 1; Gemm and MatMul use whichever operand is stored (B, or else A).
_WEIGHT_INPUTS = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (1, 0), "MatMul": (1, 0)}
#: TensorProto float types: a Cast to one of them keeps a weight a weight.
_FLOAT_TYPES = frozenset({1, 10, 11, 16})
#: AttributeProto.TENSOR and SPARSE_TENSOR.
_TENSOR_ATTRIBUTE, _SPARSE_ATTRIBUTE = 4, 11
_GRAPH_ATTRIBUTE, _GRAPHS_ATTRIBUTE = 5, 10  # AttributeProto.GRAPH, GRAPHS


#: How deep subgraphs (If branches, Loop/Scan bodies) are followed for weights.
MAX_SUBGRAPH_DEPTH = 16


def _subgraphs(node: Any) -> Iterator[Any]:
    """The subgraphs a node holds in its attributes (If's branches, Loop's and Scan's body)."""
    for attribute in node.attribute:
        if attribute.type == _GRAPH_ATTRIBUTE:
            yield attribute.g
        elif attribute.type == _GRAPHS_ATTRIBUTE:
            yield from attribute.graphs


def _nodes(graph: Any, nested: bool, depth: int = 0) -> Iterator[Any]:
    """The graph's nodes, and with ``nested`` those of its subgraphs (depth-first, bounded)."""
    for node in graph.node:
        yield node
        if nested and depth < MAX_SUBGRAPH_DEPTH:
            for subgraph in _subgraphs(node):
                yield from _nodes(subgraph, nested, depth + 1)


def _graphs(graph: Any, depth: int = 0) -> Iterator[Any]:
    """The graph and its subgraphs, bounded by :data:`MAX_SUBGRAPH_DEPTH`."""
    yield graph
    if depth < MAX_SUBGRAPH_DEPTH:
        for node in graph.node:
            for subgraph in _subgraphs(node):
                yield from _graphs(subgraph, depth + 1)


def _constant_nodes(graph: Any, nested: bool = False) -> Iterator[tuple[str, Any]]:
    """(output name, node) of every Constant node of the main graph (and its subgraphs)."""
    for node in _nodes(graph, nested):
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
            yield node.output[0], node


class _Store:
    """The stored tensors of one model (initializers and Constant ``value`` tensors), checked,
    with their data read on demand."""

    def __init__(self, model: Any, path: Path, nested: bool = False) -> None:
        self.path = path
        self.protos: dict[str, Any] = {}
        self.entries: dict[str, _Tensor] = {}
        #: Names that are Constant outputs, not initializers.
        self.constants: set[str] = set()
        #: Tensors listed but not read, with the reason (sparse Constants).
        self.refused: dict[str, str] = {}
        #: With ``nested``: subgraph tensors not listed because their name is taken.
        self.shadowed = 0
        sizes: dict[Path, int] = {}
        for proto in model.graph.initializer:
            if proto.name in self.entries:
                raise CheckpointError(f"duplicate initializer {quote(proto.name)}", path)
            self.entries[proto.name] = _tensor_entry(proto, path, sizes)
            self.protos[proto.name] = proto
        if nested:  # initializers of If branches and Loop/Scan bodies, where names are free
            for subgraph in list(_graphs(model.graph))[1:]:
                for proto in subgraph.initializer:
                    if proto.name in self.entries:
                        self.shadowed += 1
                        continue
                    self.entries[proto.name] = _tensor_entry(proto, path, sizes)
                    self.protos[proto.name] = proto
        for name, node in _constant_nodes(model.graph, nested):
            if nested and name in self.entries:
                self.shadowed += 1
                continue
            for attribute in node.attribute:
                if attribute.name == "value" and attribute.type == _TENSOR_ATTRIBUTE:
                    self._add(name, _tensor_entry(attribute.t, path, sizes, name), attribute.t)
                elif attribute.name == "sparse_value" and attribute.type == _SPARSE_ATTRIBUTE:
                    sparse = attribute.sparse_tensor
                    shape = tuple(int(d) for d in sparse.dims)
                    _numel(shape, name, path)
                    self._add(name, _Tensor(name, shape, sparse.values.data_type), None)
                    self.refused[name] = (
                        "sparse Constant (sparse_value): sncli reads dense tensors only"
                    )
        self.files = [path, *sorted(sizes)]

    def _add(self, name: str, entry: _Tensor, proto: Any) -> None:
        if name in self.entries:
            raise CheckpointError(
                f"two stored tensors are named {quote(name)} (initializers and Constant "
                "outputs must have distinct names)",
                self.path,
            )
        self.entries[name] = entry
        self.protos[name] = proto
        self.constants.add(name)

    def numpy(self, name: str) -> np.ndarray:
        entry = self.entries[name]
        if name in self.refused:
            raise CheckpointError(f"tensor {quote(name)}: {self.refused[name]}", self.path)
        if entry.data_type not in ONNX_DTYPES:
            raise CheckpointError(
                f"tensor {quote(name)}: ONNX data type {entry.data_type} is not supported",
                self.path,
            )
        try:
            return _to_numpy(entry, self.protos[name])
        except OSError as exc:
            raise CheckpointError(
                f"tensor {quote(name)}: cannot read its data: {exc.strerror or exc}", self.path
            ) from exc

    def torch(self, name: str) -> Any:
        return to_torch(self.array(name))

    def array(self, name: str) -> Any:
        """A private copy of the tensor as NumPy (bfloat16 as a
        :class:`sncli.arrays.BFloat16Array`)."""
        array = self.numpy(name).copy()
        if self.entries[name].data_type == 16:
            return bfloat16_from_bits(array)
        return array

    def table(
        self, *, constants: bool = True
    ) -> tuple[dict[str, tuple[tuple[int, ...], str]], dict[str, str]]:
        """(name → (shape, dtype), name → why it cannot be read), Constant values included
        unless ``constants`` is False (the graph walk evaluates Constant nodes itself)."""
        tensors, unsupported = {}, {}
        for name, entry in self.entries.items():
            if not constants and name in self.constants:
                continue
            known = ONNX_DTYPES.get(entry.data_type)
            tensors[name] = (entry.shape, known[0] if known else f"onnx-type-{entry.data_type}")
            if name in self.refused:
                unsupported[name] = self.refused[name]
            elif known is None:
                unsupported[name] = f"ONNX data type {entry.data_type} is not supported"
        return tensors, unsupported


def _weight_roles(graph: Any, stored: dict[str, _Tensor]) -> tuple[dict[str, str], int]:
    """Which stored tensors a Conv/ConvTranspose/Gemm/MatMul node (of the graph or a subgraph)
    uses as its weight (name → op type), followed back through Identity and Casts to float
    types; and how many of them reach their node through a Cast that changes the float type."""
    passes: dict[str, tuple[str, int | None]] = {}  # value → (its source value, Cast's type)
    for node in _nodes(graph, nested=True):
        if node.domain not in ("", "ai.onnx") or len(node.input) != 1 or len(node.output) != 1:
            continue
        if node.op_type == "Identity":
            passes[node.output[0]] = (node.input[0], None)
        elif node.op_type == "Cast":
            to = next((int(a.i) for a in node.attribute if a.name == "to"), None)
            if to in _FLOAT_TYPES:
                passes[node.output[0]] = (node.input[0], to)

    def source(value: str) -> tuple[str | None, bool]:
        cast = False
        for _ in range(len(passes) + 1):  # a cycle of Identities ends here
            if value in stored:
                return value, cast
            if value not in passes:
                return None, False
            value, to = passes[value]
            cast = cast or to is not None
        return None, False

    roles: dict[str, str] = {}
    recast: set[str] = set()
    for node in _nodes(graph, nested=True):
        positions = _WEIGHT_INPUTS.get(node.op_type)
        if positions is None or node.domain not in ("", "ai.onnx"):
            continue
        found = [source(node.input[i]) if i < len(node.input) else (None, False) for i in positions]
        weights = [(name, cast) for name, cast in found if name is not None]
        if len(weights) != 1:  # no stored operand, or two (constant arithmetic, not a layer)
            continue
        name, cast = weights[0]
        roles.setdefault(name, node.op_type)
        if cast:
            recast.add(name)
    return roles, len(recast)


def _main_graph_names(graph: Any) -> set[str]:
    return {p.name for p in graph.initializer} | {name for name, _ in _constant_nodes(graph)}


def read_onnx(path: Path) -> FormatContents:
    """The model's stored tensors (initializers and Constant values) as a checkpoint's tensors,
    with the graph's word on which of them are Conv/ConvTranspose/Gemm/MatMul weights."""
    model = _parse_model(path)
    store = _Store(model, path, nested=True)
    tensors, unsupported = store.table()
    roles, recast = _weight_roles(model.graph, store.entries)
    notes = [
        f"{path.name}: ONNX model ({len(model.graph.node)} nodes); its initializers and "
        "Constant-node values are listed as tensors, layers told by the node that uses each as "
        "its weight ('sncli lipschitz' bounds the graph itself)"
    ]
    constant_weights = sum(1 for name in roles if name in store.constants)
    if constant_weights:
        notes.append(
            f"{constant_weights} of its {len(roles)} layer weights are Constant nodes' values "
            "(listed under the Constant's output name)"
        )
    inside = len(set(tensors) - _main_graph_names(model.graph))
    if inside:
        notes.append(
            f"{inside} tensors are stored inside subgraphs (If branches, Loop/Scan bodies) and "
            "listed under their own names"
        )
    if store.shadowed:
        notes.append(
            f"{store.shadowed} tensors inside subgraphs are not listed: their name is taken by "
            "another stored tensor"
        )
    if recast:
        notes.append(
            f"{recast} weights reach their node through a Cast to another float type: σ is that "
            "of the stored values"
        )
    return FormatContents(
        format="onnx",
        files=store.files,
        tensors=tensors,
        load=store.torch,
        load_array=store.array,
        notes=notes,
        unsupported=unsupported,
        roles=roles,
    )


def _value(info: Any) -> OnnxValue:
    kind = info.type.WhichOneof("value") if info.HasField("type") else None
    if kind != "tensor_type":
        return OnnxValue(info.name, None, None)
    tensor_type = info.type.tensor_type
    known = ONNX_DTYPES.get(tensor_type.elem_type)
    shape: tuple[Dim, ...] | None = None
    if tensor_type.HasField("shape"):
        dims: list[Dim] = []
        for dim in tensor_type.shape.dim:
            which = dim.WhichOneof("value")
            if which == "dim_value":
                dims.append(int(dim.dim_value))
            elif which == "dim_param":
                dims.append(str(dim.dim_param))
            else:
                dims.append(None)
        shape = tuple(dims)
    return OnnxValue(info.name, known[0] if known else None, shape)


def _attribute(attribute: Any, node: str, path: Path) -> Any:
    import onnx

    kind = attribute.type
    types = onnx.AttributeProto
    if kind in (types.GRAPH, types.GRAPHS):
        return "<graph>"
    if kind == types.TENSOR:
        entry = _tensor_entry(attribute.t, path, {}, f"{node}.{attribute.name}")
        if entry.data_type not in ONNX_DTYPES:
            raise CheckpointError(
                f"node {quote(node)}: tensor attribute {quote(attribute.name)} is of ONNX data "
                f"type {entry.data_type}, which sncli does not read",
                path,
            )
        try:
            array = _to_numpy(entry, attribute.t)
        except OSError as exc:
            raise CheckpointError(
                f"node {quote(node)}: cannot read its tensor attribute {quote(attribute.name)}: "
                f"{exc.strerror or exc}",
                path,
            ) from exc
        return array.view("uint16") if entry.data_type == 16 else array
    if kind in (types.SPARSE_TENSOR, types.SPARSE_TENSORS, types.TENSORS, types.TYPE_PROTO):
        return f"<{types.AttributeType.Name(kind).lower()}>"
    value = onnx.helper.get_attribute_value(attribute)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
    return value


def _inferred(model: Any, notes: list[str]) -> Any:
    """The model with ONNX shape inference applied (the model as is when inference fails)."""
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # inference is best effort: the engine reports what stays unknown
        notes.append(f"ONNX shape inference failed ({describe(exc)}); shapes as stored")
        return model


#: Dynamic dims sncli may fix itself: a batch dimension (first dim, or a symbol named so),
#: because a batch of independent samples has the Lipschitz constant of one sample.
_BATCH_SYMBOL = re.compile(r"^(batch|batch_size|batchsize|bs|n|b|N|B)$|batch|DynamicDimension\.0$")


@dataclass(frozen=True)
class InputShapes:
    """How the graph inputs' dynamic dims were made static: by the user, by the model's
    metadata, or by the batch default; ``dynamic`` names what is still dynamic."""

    given: dict[str, tuple[int, ...]]
    notes: tuple[str, ...]
    dynamic: tuple[str, ...]


def _dims(info: Any) -> list[Dim]:
    dims: list[Dim] = []
    for dim in info.type.tensor_type.shape.dim:
        which = dim.WhichOneof("value")
        if which == "dim_value" and dim.dim_value > 0:
            dims.append(int(dim.dim_value))
        elif which == "dim_param" and dim.dim_param not in ("?", "-1", ""):
            dims.append(str(dim.dim_param))
        else:  # unnamed, "?" or a negative dim_value (Paddle2ONNX writes -1): anonymous
            dims.append(None)
    return dims


def _shown(dims: list[Dim] | tuple[Dim, ...]) -> str:
    return "×".join("?" if d is None else str(d) for d in dims) or "scalar"


def _metadata_sizes(model: Any) -> tuple[int, ...] | None:
    """The input image size an exporter wrote in the metadata (Ultralytics: imgsz=[320, 320])."""
    props = {p.key: p.value for p in model.metadata_props}
    text = props.get("imgsz")
    if text is None:
        return None
    numbers = re.findall(r"\d+", text)
    if len(numbers) == 1:
        numbers *= 2
    sizes = tuple(int(n) for n in numbers)
    return sizes if len(sizes) == 2 and all(0 < n <= 1 << 16 for n in sizes) else None


def fix_input_shapes(
    model: Any, given: Mapping[str, tuple[int, ...]], path: Path, initializers: set[str]
) -> InputShapes:
    """Make the graph inputs static, in ``model`` itself: the user's ``given`` shapes first
    (the key ``""`` means the only input), then a model-wide value for each dim symbol they
    fix, then the batch default (1) and the size in the model's metadata; every choice is said
    in ``notes``. Inconsistent or impossible shapes are a CheckpointError."""
    tensors = [
        i
        for i in model.graph.input
        if i.name not in initializers and i.type.WhichOneof("value") == "tensor_type"
    ]
    shapes = {i.name: _dims(i) for i in tensors}
    given = dict(given)
    if "" in given:
        if len(shapes) != 1:
            raise CheckpointError(
                f"a bare --input-shape needs a model with one input; this one has "
                f"{len(shapes)}: give NAME=SHAPE for each of {', '.join(map(quote, shapes))}",
                path,
            )
        given[next(iter(shapes))] = given.pop("")
    symbols = _apply_given(shapes, given, path)
    notes = _apply_defaults(shapes, set(given), symbols, _metadata_sizes(model))
    for dims in shapes.values():  # symbols fixed later (a batch symbol) reach every input
        dims[:] = [symbols.get(d, d) if isinstance(d, str) else d for d in dims]
    _write_static(tensors, shapes, path)
    static = {n: tuple(d) for n, d in shapes.items() if all(isinstance(x, int) for x in d)}
    dynamic = tuple(f"{quote(n)} {_shown(d)}" for n, d in shapes.items() if n not in static)
    return InputShapes(static, tuple(notes), dynamic)  # type: ignore[arg-type]


def _apply_given(
    shapes: dict[str, list[Dim]], given: dict[str, tuple[int, ...]], path: Path
) -> dict[str, int]:
    """Put the user's shapes in ``shapes``; the values they give the dims' symbols."""
    symbols: dict[str, int] = {}
    for name, shape in given.items():
        if name not in shapes:
            raise CheckpointError(
                f"--input-shape names {quote(name)}, which is not an input of the model "
                f"(inputs: {', '.join(map(quote, shapes)) or 'none'})",
                path,
            )
        dims = shapes[name]
        if len(shape) != len(dims):
            raise CheckpointError(
                f"--input-shape {quote(name)}={_shown(list(shape))}: the model's input has "
                f"rank {len(dims)} ({_shown(dims)})",
                path,
            )
        for axis, (want, have) in enumerate(zip(shape, dims, strict=True)):
            if isinstance(have, int) and have != want:
                raise CheckpointError(
                    f"--input-shape {quote(name)}={_shown(list(shape))}: dim {axis} is fixed "
                    f"to {have} in the model",
                    path,
                )
            if isinstance(have, str) and symbols.setdefault(have, want) != want:
                raise CheckpointError(
                    f"--input-shape gives the model's dimension {quote(have)} two values "
                    f"({symbols[have]} and {want})",
                    path,
                )
        shapes[name] = list(shape)
    return symbols


def _apply_defaults(
    shapes: dict[str, list[Dim]],
    given: set[str],
    symbols: dict[str, int],
    sizes: tuple[int, ...] | None,
) -> list[str]:
    """Fix what the user left dynamic where the choice is safe: a dim symbol the user fixed
    elsewhere, a batch dim (1: a batch of independent samples has one sample's constant), an
    image size from the metadata. Returns the notes that say so."""
    notes = []
    for name, dims in shapes.items():
        if name in given:
            continue
        old = list(dims)
        dims[:] = [symbols.get(d, d) if isinstance(d, str) else d for d in dims]
        said = []
        first = dims[0] if dims else 0
        if len(dims) >= 2 and (
            first is None or (isinstance(first, str) and _BATCH_SYMBOL.search(first))
        ):
            if isinstance(first, str):
                symbols.setdefault(first, 1)
            dims[0] = 1
            said.append("batch 1")
        if sizes and len(dims) == 4 and not any(isinstance(d, int) for d in dims[2:]):
            dims[2:] = list(sizes)
            said.append(f"{sizes[0]}×{sizes[1]} from the model's metadata (imgsz)")
        if old != dims and all(isinstance(d, int) for d in dims):
            notes.append(
                f"input {quote(name)} {_shown(old)} taken as {_shown(dims)} "
                f"({', '.join(said) or 'its dimension names'}; --input-shape to choose)"
            )
    return notes


def _write_static(tensors: list[Any], shapes: dict[str, list[Dim]], path: Path) -> None:
    """Write the static dims into the inputs' protos (for shape inference), refusing inputs
    larger than :data:`MAX_INPUT_ELEMENTS` values in all."""
    elements = 0
    for info in tensors:
        dims = shapes[info.name]
        if all(isinstance(d, int) for d in dims):
            elements += math.prod(dims)  # type: ignore[arg-type]
            if elements > MAX_INPUT_ELEMENTS:
                raise CheckpointError(
                    f"the inputs hold over {MAX_INPUT_ELEMENTS:,} values "
                    f"({quote(info.name)} {_shown(dims)}); sncli bounds graphs up to that size",
                    path,
                )
        for dim, value in zip(info.type.tensor_type.shape.dim, dims, strict=True):
            if isinstance(value, int):
                dim.Clear()
                dim.dim_value = value


#: The largest input (all inputs together, values) a graph bound is computed for: 2**28
#: float32 values are 1 GiB per copy; the engine's factors are linear in it, the lower-bound
#: search holds a few copies (sncli.lipschitz.lower checks its own budget too).
MAX_INPUT_ELEMENTS = 1 << 28


def read_onnx_graph(
    path: Path, input_shapes: Mapping[str, tuple[int, ...]] | None = None
) -> OnnxGraph:
    """The main graph as plain data, with shapes from ONNX shape inference once the inputs'
    dynamic dims are fixed (:func:`fix_input_shapes`)."""
    model = _parse_model(path)
    store = _Store(model, path)
    notes: list[str] = []
    fixed = fix_input_shapes(model, input_shapes or {}, path, set(store.entries))
    notes += fixed.notes
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    inferred = _inferred(model, notes)
    graph = inferred.graph
    values: dict[str, OnnxValue] = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        values[info.name] = _value(info)
    nodes = []
    for index, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{index}"
        attributes = {a.name: _attribute(a, name, path) for a in node.attribute}
        nodes.append(
            OnnxNode(
                name,
                node.op_type,
                node.domain,
                tuple(node.input),
                tuple(node.output),
                attributes,
            )
        )
    tensors, _ = store.table(constants=False)
    inputs = [values[i.name] for i in graph.input if i.name not in tensors]
    outputs = [values[o.name] for o in graph.output]
    return OnnxGraph(
        path=path,
        files=store.files,
        opset=opset,
        inputs=inputs,
        outputs=outputs,
        nodes=nodes,
        values=values,
        initializers=tensors,
        load=store.numpy,
        notes=notes,
        dynamic=fixed.dynamic,
    )
