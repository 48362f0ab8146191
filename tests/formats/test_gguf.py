"""sncli.formats.gguf, checked against the gguf package's own reader (``gguf.GGUFReader`` and
``gguf.quants.dequantize``) on files written by ``gguf.GGUFWriter``; σ against float64 SVD of
what the library returns."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
import scipy.linalg
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sncli import MethodOptions, open_checkpoint, spectral_norms
from sncli.errors import CheckpointError
from sncli.formats import sniff_format
from sncli.layers import LayerKind, classify
from sncli.numerics.spectral import Method


def _dequantizable() -> list[GGMLQuantizationType]:
    found = []
    for qtype in GGMLQuantizationType:
        block = np.zeros((1, GGML_QUANT_SIZES[qtype][1]), dtype=np.uint8)
        try:
            quants.dequantize(block, qtype)
        except NotImplementedError:
            continue
        found.append(qtype)
    return found


DEQUANTIZABLE = _dequantizable()
PLAIN = {"F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"}


def _raw_blocks(qtype: GGMLQuantizationType, rows: int, seed: int) -> np.ndarray:
    """Random bytes for ``rows`` rows of two blocks; every byte ≤ 0x3B, so every float16 scale
    in a block is finite and below 1 (the quantized values are then finite too)."""
    size = GGML_QUANT_SIZES[qtype][1]
    rng = np.random.default_rng(seed)
    return rng.integers(0, 0x3C, size=(rows, 2 * size), dtype=np.uint8)


def _write(path: Path, tensors: dict[str, tuple[np.ndarray, GGMLQuantizationType | None]]) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    for name, (data, raw_dtype) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _library(path: Path) -> dict[str, tuple[tuple[int, ...], np.ndarray, str]]:
    """What the gguf package reads: PyTorch-order shape, dequantized data, type name."""
    reader = gguf.GGUFReader(str(path))
    result = {}
    for tensor in reader.tensors:
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        values = quants.dequantize(tensor.data, tensor.tensor_type)
        result[tensor.name] = (shape, np.asarray(values).reshape(shape), tensor.tensor_type.name)
    return result


def _sigma64(array: np.ndarray) -> float:
    return float(scipy.linalg.svdvals(np.asarray(array, np.float64).reshape(array.shape[0], -1))[0])


@pytest.mark.parametrize("qtype", DEQUANTIZABLE, ids=lambda q: q.name)
def test_every_type_gguf_dequantizes_matches_its_reader(tmp_path: Path, qtype) -> None:
    if qtype.name in PLAIN:
        rng = np.random.default_rng(int(qtype))
        dtype = {"F32": np.float32, "F16": np.float16, "BF16": None}[qtype.name]
        data = rng.standard_normal((6, 64)).astype(np.float32)
        # bf16: the top half of float32, as gguf writes it
        data = quants.quantize(data, qtype) if dtype is None else data.astype(dtype)
        raw = None if dtype is not None else qtype
    else:
        data, raw = _raw_blocks(qtype, 6, int(qtype)), qtype
    path = _write(tmp_path / "model.gguf", {"blk.0.ffn_up.weight": (data, raw)})
    shape, expected, type_name = _library(path)["blk.0.ffn_up.weight"]
    assert sniff_format(path) == "gguf"
    with open_checkpoint(path) as ckpt:
        info = ckpt.tensors["blk.0.ffn_up.weight"]
        assert info.shape == shape
        label = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}.get(type_name)
        assert info.dtype == (label or f"{type_name} (dequantized)")
        loaded = ckpt.load("blk.0.ffn_up.weight").float().numpy()
        np.testing.assert_array_equal(loaded, expected.astype(np.float32))
        assert np.isfinite(loaded).all()
        report = spectral_norms(ckpt, options=MethodOptions(method=Method.EXACT))
        if label is None:
            assert any("σ is that of the dequantized weight" in n for n in ckpt.notes)
    assert report.layers[0].sigma == pytest.approx(_sigma64(expected), rel=1e-6, abs=1e-12)


def test_shapes_are_reported_as_pytorch_would(tmp_path: Path) -> None:
    """GGUF stores dims fastest first; a (3, 64) numpy array comes back (3, 64), values intact."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((3, 64)).astype(np.float32)
    conv = rng.standard_normal((4, 2, 3, 5)).astype(np.float32)
    path = _write(tmp_path / "m.gguf", {"w.weight": (weight, None), "c.weight": (conv, None)})
    reader = gguf.GGUFReader(str(path))
    assert [t.shape.tolist() for t in reader.tensors] == [[64, 3], [5, 3, 2, 4]]  # reversed
    with open_checkpoint(path) as ckpt:
        assert ckpt.tensors["w.weight"].shape == (3, 64)
        assert ckpt.tensors["c.weight"].shape == (4, 2, 3, 5)
        np.testing.assert_array_equal(ckpt.load("w.weight").numpy(), weight)
        np.testing.assert_array_equal(ckpt.load("c.weight").numpy(), conv)


def _llama(path: Path) -> Path:
    rng = np.random.default_rng(0)

    def q8(rows: int, cols: int) -> tuple[np.ndarray, GGMLQuantizationType]:
        values = rng.standard_normal((rows, cols)).astype(np.float32) * 0.05
        return quants.quantize(values, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0

    def f32(*shape: int) -> tuple[np.ndarray, None]:
        return rng.standard_normal(shape).astype(np.float32), None

    tensors = {
        "token_embd.weight": q8(50, 64),
        "blk.0.attn_norm.weight": f32(64),
        "blk.0.attn_q.weight": q8(64, 64),
        "blk.0.attn_k.weight": q8(32, 64),
        "blk.0.attn_v.weight": q8(32, 64),
        "blk.0.attn_output.weight": q8(64, 64),
        "blk.0.ffn_norm.weight": f32(64),
        "blk.0.ffn_gate.weight": q8(96, 64),
        "blk.0.ffn_up.weight": q8(96, 64),
        "blk.0.ffn_down.weight": q8(64, 96),
        "output_norm.weight": f32(64),
        "output.weight": q8(50, 64),
    }
    return _write(path, tensors)


def test_llama_cpp_names_classify_like_hugging_face_ones(tmp_path: Path) -> None:
    path = _llama(tmp_path / "llama.gguf")
    library = _library(path)
    with open_checkpoint(path) as ckpt:
        classification = classify(ckpt)
        report = spectral_norms(ckpt, options=MethodOptions(method=Method.DENSE))
        json_dtypes = {n: i.dtype for n, i in ckpt.tensors.items()}
    kinds = {layer.name: layer.kind for layer in classification.layers}
    assert kinds.pop("token_embd.weight") == LayerKind.EMBEDDING
    assert set(kinds.values()) == {LayerKind.LINEAR}
    assert set(kinds) == {n for n in library if n.endswith(("attn_q.weight", "_k.weight"))} | {
        "blk.0.attn_v.weight",
        "blk.0.attn_output.weight",
        "blk.0.ffn_gate.weight",
        "blk.0.ffn_up.weight",
        "blk.0.ffn_down.weight",
        "output.weight",
    }
    skipped = {s.name: s.reason for s in classification.skipped}
    for norm in ("blk.0.attn_norm.weight", "blk.0.ffn_norm.weight", "output_norm.weight"):
        assert skipped[norm] == "norm scale (1-D)"
    assert json_dtypes["blk.0.ffn_down.weight"] == "Q8_0 (dequantized)"
    for layer in report.layers:
        assert layer.shape == library[layer.name][0]
        assert layer.sigma == pytest.approx(_sigma64(library[layer.name][1]), rel=1e-6)


def test_inspect_json_labels_dequantized_dtypes(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sncli.cli import app

    path = _llama(tmp_path / "llama.gguf")
    result = CliRunner().invoke(app, ["inspect", str(path), "--format", "json"])
    assert result.exit_code == 0, result.output
    layers = {layer["name"]: layer for layer in json.loads(result.stdout)["layers"]}
    assert layers["blk.0.attn_q.weight"]["dtype"] == "Q8_0 (dequantized)"
    assert layers["blk.0.attn_q.weight"]["shape"] == [64, 64]
    assert layers["blk.0.ffn_down.weight"]["shape"] == [64, 96]
    assert "σ is that of the dequantized weight" in result.stderr


def test_types_gguf_cannot_dequantize_are_listed_skipped(tmp_path: Path) -> None:
    missing = [q for q in GGMLQuantizationType if q not in DEQUANTIZABLE and q.name not in PLAIN]
    assert missing, "every type dequantizes now: pick another case"
    qtype = missing[0]
    path = _write(
        tmp_path / "m.gguf",
        {
            "a.weight": (_raw_blocks(qtype, 2, 0), qtype),
            "b.weight": (np.eye(4, dtype=np.float32), None),
        },
    )
    with open_checkpoint(path) as ckpt:
        assert "no dequantizer" in ckpt.unsupported["a.weight"]
        report = spectral_norms(ckpt)
    assert [layer.name for layer in report.layers] == ["b.weight"]
    assert any(s.name == "a.weight" and qtype.name in s.reason for s in report.skipped)


def _type_field(blob: bytes, name: str) -> int:
    """Byte offset of a tensor info's type id in a GGUF file."""
    encoded = name.encode()
    start = blob.index(struct.pack("<Q", len(encoded)) + encoded) + 8 + len(encoded)
    n_dims = struct.unpack_from("<I", blob, start)[0]
    return start + 4 + 8 * n_dims


def test_unknown_type_id_names_the_tensor(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.gguf", {"fork.weight": (np.eye(4, dtype=np.float32), None)})
    blob = bytearray(path.read_bytes())
    struct.pack_into("<I", blob, _type_field(bytes(blob), "fork.weight"), 250)
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=r"tensor 'fork\.weight' has GGML type id 250"):
        open_checkpoint(path)


def test_lying_headers(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.gguf", {"w.weight": (np.eye(32, dtype=np.float32), None)})
    blob = path.read_bytes()
    cases = {
        "truncated": (blob[:-100], "beyond the end"),
        "header cut": (blob[:40], "truncated GGUF file"),
        "tensor count": (blob[:8] + struct.pack("<Q", 2**62) + blob[16:], "more than"),
        "kv count": (blob[:16] + struct.pack("<Q", 2**62) + blob[24:], "more than"),
        "version": (blob[:4] + struct.pack("<I", 7) + blob[8:], "version 7"),
        "big-endian": (blob[:4] + struct.pack(">I", 3) + blob[8:], "big-endian"),
    }
    huge = bytearray(blob)
    dims_at = _type_field(blob, "w.weight") - 16
    struct.pack_into("<QQ", huge, dims_at, 2**40, 2**40)
    cases["huge tensor"] = (bytes(huge), "beyond the end")
    for label, (data, message) in cases.items():
        path.write_bytes(data)
        with pytest.raises(CheckpointError, match=message):
            open_checkpoint(path)
        assert label


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_damaged_headers_never_escape_as_other_errors(data: st.DataObject) -> None:
    """Random bytes overwritten in the header: a CheckpointError or a valid read, nothing else."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = _llama(Path(folder) / "m.gguf")
        blob = bytearray(path.read_bytes())
        header_end = blob.index(b"output.weight") + 40
        for _ in range(data.draw(st.integers(1, 4))):
            at = data.draw(st.integers(0, header_end))
            blob[at] = data.draw(st.integers(0, 255))
        path.write_bytes(bytes(blob))
        try:
            with open_checkpoint(path) as ckpt:
                for name in list(ckpt.tensors)[:3]:
                    if name not in ckpt.unsupported:
                        ckpt.load(name)
        except CheckpointError:
            pass


# --------------------------------------------------------------------------- normalize → GGUF


def _plain_model(path: Path) -> dict[str, np.ndarray]:
    """F32, F16 and BF16 weights (and a quantized one, to leave out), scaled up so σ > 1."""
    rng = np.random.default_rng(5)
    f32 = (rng.standard_normal((24, 16)) * 3).astype(np.float32)
    f16 = (rng.standard_normal((16, 32)) * 3).astype(np.float16)
    bf16 = quants.quantize(
        (rng.standard_normal((8, 64)) * 3).astype(np.float32), GGMLQuantizationType.BF16
    )
    q8 = quants.quantize(
        rng.standard_normal((8, 64)).astype(np.float32) * 3, GGMLQuantizationType.Q8_0
    )
    norm = rng.random(16).astype(np.float32)
    _write(
        path,
        {
            "blk.0.ffn_up.weight": (f32, None),
            "blk.0.ffn_down.weight": (f16, None),
            "blk.0.attn_q.weight": (bf16, GGMLQuantizationType.BF16),
            "blk.0.attn_k.weight": (q8, GGMLQuantizationType.Q8_0),
            "blk.0.ffn_norm.weight": (norm, None),
        },
    )
    return _library(path)


def test_normalize_writes_gguf_for_plain_tensors(tmp_path: Path) -> None:
    from sncli.normalize import NormalizeOptions, normalize_checkpoint, plan_normalization

    source = tmp_path / "model.gguf"
    before = _plain_model(source)
    output = tmp_path / "normalized.gguf"
    options = NormalizeOptions(exclude=("attn_k",))
    with open_checkpoint(source) as ckpt:
        plan = plan_normalization(ckpt, options)
        result = normalize_checkpoint(ckpt, plan, output)
    assert {o.name for o in result.layers} == {
        "blk.0.ffn_up.weight",
        "blk.0.ffn_down.weight",
        "blk.0.attn_q.weight",
    }
    after = _library(output)  # read back by the gguf package itself
    for name, (shape, values, type_name) in after.items():
        assert (shape, type_name) == (before[name][0], before[name][2])
        if name in {o.name for o in result.layers}:
            sigma = _sigma64(values)
            assert sigma <= 1.0 * (1 + 1e-12), name
            assert sigma == pytest.approx(1.0, rel=1e-2), name  # rounding to f16/bf16 shaves
            ratio = values.astype(np.float64) / before[name][1].astype(np.float64)
            assert np.nanstd(ratio) < 1e-2 * np.nanmean(ratio), name  # a uniform scale
        else:
            np.testing.assert_array_equal(values, before[name][1])
    original, written = gguf.GGUFReader(str(source)), gguf.GGUFReader(str(output))
    assert list(original.fields) == list(written.fields)
    assert source.stat().st_size == output.stat().st_size


def test_normalize_refuses_quantized_gguf_tensors(tmp_path: Path) -> None:
    from sncli.normalize import NormalizeOptions, normalize_checkpoint, plan_normalization

    source = tmp_path / "model.gguf"
    _plain_model(source)
    output = tmp_path / "normalized.gguf"
    with open_checkpoint(source) as ckpt:
        plan = plan_normalization(ckpt, NormalizeOptions())
        with pytest.raises(CheckpointError, match=r"quantized \(Q8_0; e\.g\. 'blk\.0\.attn_k"):
            normalize_checkpoint(ckpt, plan, output)
    assert not output.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]


def test_partially_overlapping_tensor_data_is_refused(tmp_path: Path) -> None:
    """Issue #28: tensors sharing part of their bytes (a crafted file) were read, and normalize
    then failed its verification without naming why; now one line names both tensors."""
    from sncli.formats.gguf import GGUFTensor, _refuse_partial_overlaps

    def tensor(name: str, offset: int, nbytes: int) -> GGUFTensor:
        return GGUFTensor(name, (nbytes // 4,), 0, "F32", offset, nbytes)

    path = tmp_path / "m.gguf"
    same = {"a": tensor("a", 64, 32), "b": tensor("b", 64, 32), "c": tensor("c", 96, 32)}
    _refuse_partial_overlaps(same, path)  # the same range twice, or ranges that touch: fine
    crafted = {"a": tensor("a", 64, 32), "b": tensor("b", 80, 32)}
    with pytest.raises(CheckpointError, match=r"tensors 'a' \(bytes 64–96\) and 'b' .* overlap"):
        _refuse_partial_overlaps(crafted, path)
