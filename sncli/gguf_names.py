"""Hugging Face tensor names ↔ llama.cpp GGUF names, and llama.cpp's Q/K row permutation.

What ``sncli diff model.safetensors model-Q8_0.gguf`` needs to pair a quantized file with its
source. The names come from the ``gguf`` package's own tables (``gguf.TensorNameMap`` for the
architecture the GGUF file declares in ``general.architecture``, with its ``block_count``): the
table ``convert_hf_to_gguf.py`` itself uses, so every architecture gguf knows is mapped the way
the converter maps it. Tensors the converter renames by hand (fused or split projections such
as Baichuan's ``W_pack``, expert stacks it merges) are listed as unmatched with the reason.

llama.cpp's converter permutes the rows of the Q and K projections of the ``llama`` family
(``LlamaModel.permute``: ``reshape(n_head, 2, d/n_head/2, …).swapaxes(1, 2)``, with n_head_kv
heads for K) to turn Hugging Face's rotate-half RoPE layout into llama.cpp's interleaved one.
:func:`unpermute_rows` undoes it, with the head counts from the GGUF metadata.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: llama.cpp's GGUF tensor names whose rows the converter permutes for RoPE (``attn_q`` with
#: n_head heads, ``attn_k`` with n_head_kv), for the architectures whose converter class does
#: so (``LlamaModel`` and its subclasses without ``undo_permute = False``, DeciLM, DeepSeek,
#: Granite). Mistral-format conversions are ``llama`` but not permuted: which layout a file
#: holds is decided by the data (:func:`closer_layout`), not by this table alone.
PERMUTED_ARCHITECTURES = frozenset({"llama", "deci", "deepseek", "granite", "granitemoe"})
_PERMUTED_SUFFIXES = {"attn_q.weight": "head_count", "attn_k.weight": "head_count_kv"}


@dataclass(frozen=True)
class NamePair:
    """One source tensor and the GGUF tensor the converter writes it to.

    ``heads``: the head count to undo llama.cpp's Q/K row permutation with (None when the
    tensor is not a Q/K projection of a permuted architecture).
    """

    source: str
    gguf: str
    heads: int | None = None


@dataclass(frozen=True)
class Unmatched:
    """A tensor of one side with no partner on the other, and why."""

    name: str
    side: str  # "source" or "gguf"
    reason: str


@dataclass(frozen=True)
class NameMapping:
    architecture: str
    pairs: list[NamePair]
    unmatched: list[Unmatched] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _architecture(metadata: Mapping[str, Any]) -> tuple[Any, str] | None:
    """(gguf.MODEL_ARCH, name) of the file's ``general.architecture``, None if gguf lacks it."""
    from gguf.constants import MODEL_ARCH_NAMES

    name = metadata.get("general.architecture")
    for arch, arch_name in MODEL_ARCH_NAMES.items():
        if arch_name == name:
            return arch, arch_name
    return None


def _block_count(metadata: Mapping[str, Any], arch: str, gguf_names: Iterable[str]) -> int:
    """``{arch}.block_count``, else one more than the largest ``blk.N.`` in the file."""
    count = metadata.get(f"{arch}.block_count")
    if isinstance(count, int) and 0 <= count <= 1_000_000:
        return count
    blocks = [int(n.split(".")[1]) for n in gguf_names if n.startswith("blk.") and n.count(".") > 1]
    return max((b + 1 for b in blocks if b < 1_000_000), default=0)


def _heads(metadata: Mapping[str, Any], arch: str, what: str) -> int | None:
    value = metadata.get(f"{arch}.attention.{what}")
    if what == "head_count_kv" and value is None:
        value = metadata.get(f"{arch}.attention.head_count")
    return value if isinstance(value, int) and value > 0 else None


def map_names(
    source_names: Iterable[str],
    gguf_names: Iterable[str],
    metadata: Mapping[str, Any],
) -> NameMapping:
    """Pair the source's tensor names (Hugging Face) with a GGUF file's, by gguf's tables for
    the file's architecture; list every name left over with the reason."""
    from gguf.tensor_mapping import TensorNameMap

    source_names, gguf_list = list(source_names), list(gguf_names)
    in_gguf = set(gguf_list)
    found = _architecture(metadata)
    if found is None:
        name = metadata.get("general.architecture")
        reason = (
            f"the GGUF architecture {name!r} has no tensor-name table in the gguf package"
            if name is not None
            else "the GGUF file declares no general.architecture"
        )
        unmatched = [Unmatched(n, "source", reason) for n in source_names]
        unmatched += [Unmatched(n, "gguf", reason) for n in gguf_list]
        return NameMapping(str(name), [], unmatched)
    arch, arch_name = found
    table = TensorNameMap(arch, _block_count(metadata, arch_name, gguf_list))
    permuted = arch_name in PERMUTED_ARCHITECTURES
    pairs: list[NamePair] = []
    unmatched: list[Unmatched] = []
    notes: list[str] = []
    used: dict[str, str] = {}
    for source in source_names:
        target = table.get_name(source, try_suffixes=(".weight", ".bias"))
        if target is None:
            unmatched.append(
                Unmatched(source, "source", f"no llama.cpp name in gguf's table for {arch_name}")
            )
        elif target not in in_gguf:
            unmatched.append(
                Unmatched(source, "source", f"maps to {target}, which the GGUF file lacks")
            )
        elif target in used:
            unmatched.append(
                Unmatched(source, "source", f"maps to {target}, already paired with {used[target]}")
            )
        else:
            used[target] = source
            heads = None
            suffix = ".".join(target.split(".")[-2:])
            if permuted and suffix in _PERMUTED_SUFFIXES:
                heads = _heads(metadata, arch_name, _PERMUTED_SUFFIXES[suffix])
                if heads is None:
                    notes.append(
                        f"{target}: no {arch_name}.attention.{_PERMUTED_SUFFIXES[suffix]} in "
                        "the GGUF metadata, so llama.cpp's Q/K row permutation is not undone"
                    )
            pairs.append(NamePair(source, target, heads))
    for name in gguf_list:
        if name not in used:
            unmatched.append(Unmatched(name, "gguf", "no tensor of the source maps to it"))
    return NameMapping(arch_name, pairs, unmatched, notes)


def unpermute_rows(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of llama.cpp's ``LlamaModel.permute(w, heads, heads)``: rows grouped as
    (heads, d/heads/2, 2) back to Hugging Face's (heads, 2, d/heads/2)."""
    rows = tensor.shape[0]
    if heads <= 0 or rows % (2 * heads):
        raise ValueError(f"{rows} rows cannot be split into {heads} heads of pairs")
    rest = tuple(tensor.shape[1:])
    return tensor.reshape(heads, rows // heads // 2, 2, *rest).swapaxes(1, 2).reshape(tensor.shape)


def permute_rows(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's ``LlamaModel.permute(w, heads, heads)`` (the converter's direction)."""
    rows = tensor.shape[0]
    if heads <= 0 or rows % (2 * heads):
        raise ValueError(f"{rows} rows cannot be split into {heads} heads of pairs")
    rest = tuple(tensor.shape[1:])
    return tensor.reshape(heads, 2, rows // heads // 2, *rest).swapaxes(1, 2).reshape(tensor.shape)


def closer_layout(
    source: torch.Tensor, quantized: torch.Tensor, heads: int
) -> tuple[torch.Tensor, bool]:
    """The GGUF tensor in the source's row order: un-permuted when that is nearer the source
    in Frobenius norm (a quantized copy is within its rounding of one layout and ~√2·‖W‖_F
    from the other), as stored otherwise (a Mistral-format conversion is not permuted).
    Returns (tensor, whether the permutation was undone)."""
    import torch

    if quantized.shape[0] % (2 * heads):
        return quantized, False
    undone = unpermute_rows(quantized, heads)
    w = source.to(torch.float64)
    plain = float(torch.linalg.vector_norm(quantized.to(torch.float64) - w))
    unpermuted = float(torch.linalg.vector_norm(undone.to(torch.float64) - w))
    return (undone, True) if unpermuted <= plain else (quantized, False)
