"""``sncli.gguf_names``: Hugging Face ↔ GGUF names from gguf's tables, and the inverse of
llama.cpp's Q/K row permutation against the converter's own expression (exact: a permutation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf_llama import N_HEAD, N_HEAD_KV, converter_permute, llama_state_dict, write_gguf

from sncli.formats.gguf import read_gguf_header
from sncli.gguf_names import closer_layout, map_names, permute_rows, unpermute_rows


@pytest.mark.parametrize(("rows", "heads"), [(64, 4), (32, 2), (48, 3), (8, 1)])
def test_unpermute_inverts_the_converter_permutation(rows: int, heads: int) -> None:
    w = np.random.default_rng(rows).standard_normal((rows, 5))
    permuted = converter_permute(w, heads, heads)
    assert not np.array_equal(permuted, w) or rows // heads == 2
    back = unpermute_rows(torch.from_numpy(permuted), heads).numpy()
    assert np.array_equal(back, w)
    assert np.array_equal(permute_rows(torch.from_numpy(w), heads).numpy(), permuted)
    with pytest.raises(ValueError, match="heads"):
        unpermute_rows(torch.zeros(rows + 1, 2), heads)


def test_llama_names_from_a_converted_file(tmp_path: Path) -> None:
    tensors = llama_state_dict()
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)
    tensors["model.vision_tower.patch.weight"] = np.ones((4, 4), np.float32)
    path = tmp_path / "m.gguf"
    written = write_gguf(path, tensors, extra={"rope_freqs.weight": np.ones(8, np.float32)})
    header = read_gguf_header(path)
    mapping = map_names(tensors, header.tensors, header.metadata)
    assert mapping.architecture == "llama"
    pairs = {p.source: p for p in mapping.pairs}
    assert {s: p.gguf for s, p in pairs.items()} == {
        s: t for s, t in written.items() if t in header.tensors
    }
    assert pairs["model.layers.1.self_attn.q_proj.weight"].gguf == "blk.1.attn_q.weight"
    assert pairs["model.layers.1.self_attn.q_proj.weight"].heads == N_HEAD
    assert pairs["model.layers.0.self_attn.k_proj.weight"].heads == N_HEAD_KV
    assert pairs["model.layers.0.self_attn.v_proj.weight"].heads is None
    assert pairs["lm_head.weight"].gguf == "output.weight"
    reasons = {u.name: (u.side, u.reason) for u in mapping.unmatched}
    assert reasons == {
        "model.layers.0.self_attn.rotary_emb.inv_freq": (
            "source",
            "maps to blk.0.attn_rot_embd, which the GGUF file lacks",
        ),
        "model.vision_tower.patch.weight": (
            "source",
            "no llama.cpp name in gguf's table for llama",
        ),
        "rope_freqs.weight": ("gguf", "no tensor of the source maps to it"),
    }


def test_unknown_architecture_leaves_everything_unmatched() -> None:
    mapping = map_names(["a.weight"], ["blk.0.x.weight"], {"general.architecture": "nope"})
    assert mapping.pairs == []
    assert {u.side for u in mapping.unmatched} == {"source", "gguf"}
    assert all("'nope' has no tensor-name table" in u.reason for u in mapping.unmatched)


def test_other_architectures_use_their_own_table() -> None:
    """qwen2 (no permutation in its converter) maps the same HF names, with no heads."""
    mapping = map_names(
        ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.bias"],
        ["blk.0.attn_q.weight", "blk.0.attn_q.bias"],
        {"general.architecture": "qwen2", "qwen2.block_count": 1, "qwen2.attention.head_count": 4},
    )
    assert [(p.gguf, p.heads) for p in mapping.pairs] == [
        ("blk.0.attn_q.weight", None),
        ("blk.0.attn_q.bias", None),
    ]


def test_closer_layout_picks_the_stored_order_of_an_unpermuted_file() -> None:
    w = torch.randn(32, 16, dtype=torch.float64)
    noisy = w + 1e-3 * torch.randn(32, 16, dtype=torch.float64)
    back, undone = closer_layout(w, permute_rows(noisy, 4), 4)
    assert undone and torch.equal(back, noisy)
    same, undone = closer_layout(w, noisy, 4)  # a Mistral-format conversion: not permuted
    assert not undone and torch.equal(same, noisy)
