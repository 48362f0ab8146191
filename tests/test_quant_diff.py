"""``diff SOURCE.safetensors QUANTIZED.gguf``: pairing by llama.cpp names, Q/K rows aligned,
per-tensor error against an independent float64 computation (the converter's permutation of
the source, ``gguf.quants`` round trip, NumPy SVD), the summary per GGUF type.

Tolerances: exact method, float64 on both sides: 1e-10 relative.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf_llama import N_HEAD, N_HEAD_KV, converter_permute, llama_state_dict, write_gguf
from safetensors.numpy import save_file

from sncli.analysis import MethodOptions
from sncli.checkpoint import open_checkpoint
from sncli.diff import diff_checkpoints
from sncli.numerics.spectral import Method

EXACT = MethodOptions(method=Method.EXACT, workers=1)


def _reference(w: np.ndarray, name: str, qtype: str, permuted: bool) -> tuple[float, float, float]:
    """‖Q − W‖₂, ‖Q − W‖₂/‖W‖₂, ‖Q − W‖_F/‖W‖_F in the converter's row order (a common row
    permutation of both sides changes no norm)."""
    import gguf
    from gguf.quants import dequantize, quantize

    if permuted and name.endswith("q_proj.weight"):
        w = converter_permute(w, N_HEAD, N_HEAD)
    elif permuted and name.endswith("k_proj.weight"):
        w = converter_permute(w, N_HEAD, N_HEAD_KV)
    kind = gguf.GGMLQuantizationType[qtype]
    q = dequantize(quantize(w, kind), kind).astype(np.float64)
    d, w64 = q - w.astype(np.float64), w.astype(np.float64)
    spectral = np.linalg.svd(d, compute_uv=False)[0]
    return (
        spectral,
        spectral / np.linalg.svd(w64, compute_uv=False)[0],
        np.linalg.norm(d) / np.linalg.norm(w64),
    )


@pytest.mark.parametrize("permuted", [True, False])
def test_quantized_file_against_its_source(tmp_path: Path, permuted: bool) -> None:
    tensors = llama_state_dict()
    types = {"lm_head.weight": "Q4_0", "model.layers.1.mlp.up_proj.weight": "Q5_1"}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    write_gguf(
        tmp_path / "model.gguf",
        tensors,
        "Q8_0",
        types=types,
        permute=permuted,
        extra={"rope_freqs.weight": np.ones(8, np.float32)},
    )
    with (
        open_checkpoint(tmp_path / "model.safetensors") as a,
        open_checkpoint(tmp_path / "model.gguf") as b,
    ):
        report = diff_checkpoints(a, b, options=EXACT, top_k=0, intruder_top_k=0)
    matrices = [n for n, t in tensors.items() if t.ndim == 2]
    assert sorted(layer.name for layer in report.layers) == sorted(matrices)
    for layer in report.layers:
        qtype = types.get(layer.name, "Q8_0")
        spectral, relative, frobenius = _reference(tensors[layer.name], layer.name, qtype, permuted)
        assert layer.delta_sigma == pytest.approx(spectral, rel=1e-10)
        assert layer.relative == pytest.approx(relative, rel=1e-10)
        assert layer.relative_frobenius == pytest.approx(frobenius, rel=1e-10)
        assert layer.dtype_b == f"{qtype} (dequantized)"
        qk = layer.name.endswith(("q_proj.weight", "k_proj.weight"))
        assert bool(layer.rows) == (qk and permuted)
    quant = report.quantization
    assert quant is not None and quant.architecture == "llama" and quant.gguf_side == "b"
    by_type = {s.type: s for s in quant.by_type}
    assert set(by_type) == {"Q8_0", "Q4_0", "Q5_1"}
    assert by_type["Q8_0"].layers == len(matrices) - 2
    q8 = [layer.relative for layer in report.layers if layer.name not in types]
    assert by_type["Q8_0"].relative_max == max(q8)
    assert (
        by_type["Q4_0"].relative_max > by_type["Q5_1"].relative_max > by_type["Q8_0"].relative_max
    )
    drift = by_type["Q4_0"].sigma_drift_max
    lm = next(layer for layer in report.layers if layer.name == "lm_head.weight")
    assert drift == pytest.approx((lm.sigma_b - lm.sigma_a) / lm.sigma_a, rel=1e-12)
    assert [(u.name, u.side) for u in quant.unmatched] == [("rope_freqs.weight", "gguf")]
    assert report.only_in_b == ["rope_freqs.weight"]


def test_gguf_first_and_json(tmp_path: Path) -> None:
    """GGUF as A works too (relative values then refer to A); JSON carries the summary."""
    from sncli.render.diff import diff_to_dict

    tensors = llama_state_dict(blocks=1)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    write_gguf(tmp_path / "model.gguf", tensors, "Q8_0", blocks=1)
    with (
        open_checkpoint(tmp_path / "model.gguf") as a,
        open_checkpoint(tmp_path / "model.safetensors") as b,
    ):
        report = diff_checkpoints(a, b, options=EXACT, top_k=0, intruder_top_k=0)
    data = diff_to_dict(report, report.layers)
    quant = data["quantization"]
    assert quant["gguf_side"] == "a" and quant["by_type"][0]["type"] == "Q8_0"
    layer = {item["name"]: item for item in data["layers"]}[
        "model.layers.0.self_attn.q_proj.weight"
    ]
    assert layer["key_a"] == "blk.0.attn_q.weight" and "permutation undone" in layer["rows"]
    assert layer["relative"] < 0.01  # aligned: unaligned rows would be ~1
