"""A tiny Llama checkpoint in Hugging Face names, and its GGUF conversion written the way
llama.cpp's ``convert_hf_to_gguf.py`` writes it: names from gguf's own ``TensorNameMap``, Q/K
rows permuted by the converter's ``LlamaModel.permute`` (copied here in NumPy, not imported
from sncli), 2-D weights quantized with ``gguf.quants.quantize``, 1-D norms kept F32."""

from __future__ import annotations

from pathlib import Path

import numpy as np

N_HEAD, N_HEAD_KV, HIDDEN, FFN, VOCAB = 4, 2, 64, 128, 96


def converter_permute(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """``LlamaModel.permute`` of llama.cpp's convert_hf_to_gguf.py, verbatim in NumPy."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def llama_state_dict(blocks: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    g = np.random.default_rng(seed)
    head_dim = HIDDEN // N_HEAD

    def w(*shape: int) -> np.ndarray:
        return (g.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)

    tensors = {"model.embed_tokens.weight": w(VOCAB, HIDDEN)}
    for i in range(blocks):
        p = f"model.layers.{i}."
        tensors |= {
            p + "self_attn.q_proj.weight": w(N_HEAD * head_dim, HIDDEN),
            p + "self_attn.k_proj.weight": w(N_HEAD_KV * head_dim, HIDDEN),
            p + "self_attn.v_proj.weight": w(N_HEAD_KV * head_dim, HIDDEN),
            p + "self_attn.o_proj.weight": w(HIDDEN, N_HEAD * head_dim),
            p + "mlp.gate_proj.weight": w(FFN, HIDDEN),
            p + "mlp.up_proj.weight": w(FFN, HIDDEN),
            p + "mlp.down_proj.weight": w(HIDDEN, FFN),
            p + "input_layernorm.weight": np.ones(HIDDEN, np.float32),
            p + "post_attention_layernorm.weight": np.ones(HIDDEN, np.float32),
        }
    tensors["model.norm.weight"] = np.ones(HIDDEN, np.float32)
    tensors["lm_head.weight"] = w(VOCAB, HIDDEN)
    return tensors


def write_gguf(
    path: Path,
    tensors: dict[str, np.ndarray],
    qtype: str = "Q8_0",
    *,
    blocks: int = 2,
    permute: bool = True,
    types: dict[str, str] | None = None,
    extra: dict[str, np.ndarray] | None = None,
) -> dict[str, str]:
    """Write ``tensors`` as llama.cpp's converter would; returns HF name → GGUF name."""
    import gguf
    from gguf.quants import quantize

    table = gguf.TensorNameMap(gguf.MODEL_ARCH.LLAMA, blocks)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(blocks)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    names = {}
    for name, data in tensors.items():
        target = table.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None or name.endswith("rotary_emb.inv_freq"):  # the converter skips it
            continue
        names[name] = target
        if permute and name.endswith("q_proj.weight"):
            data = converter_permute(data, N_HEAD, N_HEAD)
        elif permute and name.endswith("k_proj.weight"):
            data = converter_permute(data, N_HEAD, N_HEAD_KV)
        chosen = (types or {}).get(name, qtype) if data.ndim == 2 else "F32"
        kind = gguf.GGMLQuantizationType[chosen]
        if chosen == "F32":
            writer.add_tensor(target, np.ascontiguousarray(data))
        else:
            raw = quantize(np.ascontiguousarray(data), kind)
            writer.add_tensor(target, raw, raw_shape=raw.shape, raw_dtype=kind)
    for target, data in (extra or {}).items():
        writer.add_tensor(target, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return names
