"""sncli.formats.safetensors on its own: the header writer, the header validator, the streaming
reader and ``tensor_bytes``, each checked against the official ``safetensors`` library (an
independent implementation of the format), never against sncli's own output."""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sncli.errors import CheckpointError
from sncli.formats.safetensors import (
    SafetensorsStreamReader,
    read_safetensors_header,
    safetensors_header_bytes,
    tensor_bytes,
)

#: safetensors code -> torch dtype, written out here from the format's specification.
CODES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
STREAM_CODES = ("F32", "F16", "BF16", "F64", "I64")
ODD_SHAPES = [(), (0,), (3, 0, 2), (1,), (7,), (3, 5), (2, 3, 5), (1, 1, 1, 3)]


def make_tensor(code: str, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    dtype = CODES[code]
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=generator, dtype=torch.float64) * 100).to(dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    info = torch.iinfo(dtype)
    low, high = max(info.min, -(2**40)), min(info.max, 2**40)
    return torch.randint(low, high, shape, generator=generator, dtype=torch.int64).to(dtype)


def bits(tensor: torch.Tensor) -> bytes:
    """The tensor's bytes, by a route other than ``tensor_bytes`` (NaN-safe equality)."""
    return bytes(tensor.contiguous().reshape(-1).view(torch.uint8).tolist())


def write_by_hand(
    path: Path,
    tensors: dict[str, torch.Tensor],
    codes: dict[str, str],
    metadata: dict[str, str] | None = None,
) -> None:
    entries = [(name, codes[name], tuple(t.shape), len(bits(t))) for name, t in tensors.items()]
    with path.open("wb") as handle:
        handle.write(safetensors_header_bytes(entries, metadata))
        for tensor in tensors.values():
            handle.write(tensor_bytes(tensor))


def assert_same_tensor(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype
    assert tuple(actual.shape) == tuple(expected.shape)
    assert bits(actual) == bits(expected)


# --- safetensors_header_bytes + tensor_bytes, read back by the official library -------------


def sample_tensors() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    specs = [
        ("layer.0.weight", "F32", (4, 3)),
        ("layer.0.bias", "F16", (3,)),  # 6 bytes: the next tensor starts unaligned
        ("emb", "BF16", (5, 2)),
        ("scale", "F64", ()),
        ("steps", "I64", (2,)),
        ("mask", "BOOL", (3, 1)),
        ("empty", "F32", (0, 4)),
        ("ünïcode name ✓", "I8", (5,)),
    ]
    tensors = {name: make_tensor(code, shape, i) for i, (name, code, shape) in enumerate(specs)}
    return tensors, {name: code for name, code, _ in specs}


def test_written_file_loads_in_official_library(tmp_path: Path) -> None:
    tensors, codes = sample_tensors()
    path = tmp_path / "hand.safetensors"
    write_by_hand(path, tensors, codes, {"format": "pt", "note": "ünïcode"})
    loaded = load_file(str(path))
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert_same_tensor(loaded[name], tensor)
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata() == {"format": "pt", "note": "ünïcode"}


def test_header_reader_agrees_with_official_library(tmp_path: Path) -> None:
    tensors, codes = sample_tensors()
    path = tmp_path / "hand.safetensors"
    write_by_hand(path, tensors, codes, {"format": "pt"})
    header = read_safetensors_header(path)
    assert header.metadata == {"format": "pt"}
    with safe_open(str(path), "pt") as handle:
        assert set(header.tensors) == set(handle.keys())
        for name in handle.keys():  # noqa: SIM118 - safe_open is not a Mapping
            dtype, shape, _ = header.tensors[name]
            view = handle.get_slice(name)
            assert dtype == view.get_dtype()
            assert list(shape) == view.get_shape()
    # Offsets: the byte lengths laid end to end in writing order, counted here independently.
    position = 0
    for name, tensor in tensors.items():
        length = tensor.numel() * tensor.element_size()
        assert header.tensors[name][2] == (position, position + length)
        position += length
    (header_len,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert header.data_start == 8 + header_len
    assert path.stat().st_size == header.data_start + position


def test_header_reader_reads_official_files(tmp_path: Path) -> None:
    tensors, codes = sample_tensors()
    path = tmp_path / "official.safetensors"
    save_file(tensors, str(path), metadata={"k": "v"})
    header = read_safetensors_header(path)
    assert header.metadata == {"k": "v"}
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    reference = json.loads(raw[8 : 8 + header_len])
    reference.pop("__metadata__")
    assert header.data_start == 8 + header_len
    assert header.tensors == {
        name: (entry["dtype"], tuple(entry["shape"]), tuple(entry["data_offsets"]))
        for name, entry in reference.items()
    }
    assert {name: dtype for name, (dtype, _, _) in header.tensors.items()} == codes


@pytest.mark.parametrize("name_length", range(17))
@pytest.mark.parametrize("metadata", [None, {}, {"a": "b"}])
def test_header_is_padded_to_8_bytes(name_length: int, metadata: dict[str, str] | None) -> None:
    raw = safetensors_header_bytes([("x" * name_length, "F32", (2,), 8)], metadata)
    (header_len,) = struct.unpack("<Q", raw[:8])
    assert header_len == len(raw) - 8
    assert len(raw) % 8 == 0
    text = raw[8:].decode("utf-8")
    assert text.rstrip(" ").endswith("}")
    assert len(text) - len(text.rstrip(" ")) < 8  # minimal padding, spaces only
    parsed = json.loads(text)
    assert parsed["x" * name_length] == {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    assert parsed.get("__metadata__") == metadata


def test_header_keeps_multibyte_names_aligned(tmp_path: Path) -> None:
    # ensure_ascii=False: the padding must count UTF-8 bytes, not characters.
    for name in ("é", "éé", "✓", "🙂", "a🙂"):
        raw = safetensors_header_bytes([(name, "U8", (1,), 1)], None)
        assert len(raw) % 8 == 0
        path = tmp_path / "x.safetensors"
        path.write_bytes(raw + b"\x07")
        assert load_file(str(path))[name].tolist() == [7]


# --- SafetensorsStreamReader --------------------------------------------------------------


@pytest.fixture(scope="module")
def stream_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    tensors = {}
    for code in STREAM_CODES:
        for index, shape in enumerate(ODD_SHAPES):
            tensors[f"{code}.{index}"] = make_tensor(code, shape, index)
    path = tmp_path_factory.mktemp("stream") / "all.safetensors"
    save_file(tensors, str(path))  # the official writer
    return path, list(tensors)


@pytest.mark.parametrize("code", STREAM_CODES)
@pytest.mark.parametrize("shape_index", range(len(ODD_SHAPES)))
def test_stream_reader_matches_safe_open(
    stream_file: tuple[Path, list[str]], code: str, shape_index: int
) -> None:
    path, _ = stream_file
    key = f"{code}.{shape_index}"
    reader = SafetensorsStreamReader()
    try:
        actual = reader.read(path, key)
    finally:
        reader.close()
    with safe_open(str(path), "pt") as handle:
        expected = handle.get_tensor(key)
    assert tuple(expected.shape) == ODD_SHAPES[shape_index]
    assert_same_tensor(actual, expected)


def test_stream_reader_reads_every_tensor_with_one_handle(
    stream_file: tuple[Path, list[str]],
) -> None:
    path, keys = stream_file
    reader = SafetensorsStreamReader()
    try:
        # Backwards, so every read seeks; the buffers must not share memory with each other.
        results = {key: reader.read(path, key) for key in reversed(keys)}
    finally:
        reader.close()
    reference = load_file(str(path))
    for key in keys:
        assert_same_tensor(results[key], reference[key])
    pointers = [t.untyped_storage().data_ptr() for t in results.values() if t.numel()]
    assert len(set(pointers)) == len(pointers)


def test_stream_reader_result_is_writable_and_owned(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, str(path))
    reader = SafetensorsStreamReader()
    first = reader.read(path, "w")
    first.mul_(0)
    second = reader.read(path, "w")
    reader.close()
    assert second.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert load_file(str(path))["w"].sum().item() == 15.0


def test_stream_reader_reads_several_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({"x": torch.ones(2)}, str(a))
    save_file({"x": torch.full((3,), 2.0, dtype=torch.float64)}, str(b))
    reader = SafetensorsStreamReader()
    try:
        assert reader.read(a, "x").tolist() == [1.0, 1.0]
        assert reader.read(b, "x").tolist() == [2.0, 2.0, 2.0]
        assert reader.read(a, "x").dtype == torch.float32
    finally:
        reader.close()


def test_stream_reader_reports_a_file_truncated_after_opening(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    save_file({"a": torch.ones(4), "b": torch.ones(4)}, str(path))
    reader = SafetensorsStreamReader()
    try:
        reader.read(path, "a")  # header read and cached, handle open
        with path.open("r+b") as handle:
            handle.truncate(path.stat().st_size - 4)
        with pytest.raises(CheckpointError, match="file ended"):
            reader.read(path, "b")  # the official writer puts "b" last (same dtype, by name)
    finally:
        reader.close()


# --- tensor_bytes ---------------------------------------------------------------------------


@pytest.mark.parametrize("code", [c for c in CODES if c != "BF16"])
@pytest.mark.parametrize("shape", ODD_SHAPES)
def test_tensor_bytes_equals_numpy(code: str, shape: tuple[int, ...]) -> None:
    tensor = make_tensor(code, shape, 3)
    assert tensor_bytes(tensor) == tensor.numpy().tobytes()


@pytest.mark.parametrize("shape", ODD_SHAPES)
def test_tensor_bytes_bfloat16(shape: tuple[int, ...]) -> None:
    # numpy has no bfloat16: compare through its bit pattern as int16.
    tensor = make_tensor("BF16", shape, 4)
    assert tensor_bytes(tensor) == tensor.view(torch.int16).numpy().tobytes()


def test_tensor_bytes_of_views_are_in_logical_order() -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    for view in (base.t(), base[:, 1::2], base[1:3], base.reshape(2, 3, 4).permute(2, 0, 1)):
        assert not view.is_contiguous() or view.storage_offset() != 0
        assert tensor_bytes(view) == view.numpy().tobytes()  # numpy copies in C order
        assert len(tensor_bytes(view)) == view.numel() * 4


def test_tensor_bytes_detaches() -> None:
    tensor = torch.randn(3, 2, requires_grad=True)
    assert tensor_bytes(tensor) == tensor.detach().numpy().tobytes()


# --- property: random tensor lists round-trip -----------------------------------------------

names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=12,
).filter(lambda n: n != "__metadata__")
specs = st.lists(
    st.tuples(names, st.sampled_from(sorted(CODES)), st.lists(st.integers(0, 5), max_size=4)),
    max_size=6,
    unique_by=lambda spec: spec[0],
)


@settings(max_examples=60, deadline=None)
@given(
    specs=specs,
    metadata=st.none() | st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
)
def test_random_tensor_lists_round_trip(
    specs: list[tuple[str, str, list[int]]], metadata: dict[str, str] | None
) -> None:
    tensors = {
        name: make_tensor(code, tuple(shape), i) for i, (name, code, shape) in enumerate(specs)
    }
    codes = {name: code for name, code, _ in specs}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "random.safetensors"
        write_by_hand(path, tensors, codes, metadata)
        loaded = load_file(str(path))
        header = read_safetensors_header(path)
        with safe_open(str(path), "pt") as handle:
            official_metadata = handle.metadata()
        reader = SafetensorsStreamReader()
        try:
            streamed = {name: reader.read(path, name) for name in tensors}
        finally:
            reader.close()
    assert header.data_start % 8 == 0
    assert header.metadata == metadata
    assert official_metadata == metadata
    assert set(loaded) == set(tensors) == set(header.tensors)
    for name, tensor in tensors.items():
        assert_same_tensor(loaded[name], tensor)
        assert_same_tensor(streamed[name], tensor)
        assert header.tensors[name][:2] == (codes[name], tuple(tensor.shape))
