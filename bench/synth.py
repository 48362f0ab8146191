"""Seeded synthetic transformer checkpoints with realistic spectra, written as safetensors.

Each weight is a Marchenko–Pastur bulk (Gaussian, entries N(0, 1/n)) plus low-rank "spikes", the
shape trained weights take (random-init bulk + learned low-rank structure, Martin & Mahoney 2021,
JMLR 22(165)): σ of a spike of strength s above the bulk edge 1+√(m/n) is pushed up slightly
(BBP transition) but keeps its order. Per block (GPT layout, fused QKV): ``attn.qkv`` power-law
spikes s_k ∝ k^-½; ``attn.proj`` one spike 4× the bulk edge; ``mlp.fc1`` steeper power-law spikes
s_k ∝ k^-1; ``mlp.fc2`` power-law spikes. ``gaussian`` instead gives every weight the bare bulk
(a random initialization: top gaps ~1%, the hardest case for iterative methods). Block 0's
``attn.proj`` instead carries two spikes 0.1% apart, so its top two singular values are within
0.1% of each other. Llama layout (``--layout llama``): q/k/v/o, gate/up/down.

Tensors are generated one at a time and streamed to disk, so generating a multi-GB file needs
memory for one tensor only.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

SAFETENSORS_CODES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}


@dataclass(frozen=True)
class Spec:
    """One synthetic checkpoint: ``blocks`` transformer blocks of width ``d``."""

    d: int
    blocks: int
    dtype: torch.dtype = torch.bfloat16
    layout: str = "gpt"  # gpt: qkv, proj, fc1 (4d×d), fc2 (d×4d); llama: q,k,v,o, gate/up/down
    seed: int = 0
    gaussian: bool = False  # every weight the bare Marchenko–Pastur bulk

    @property
    def ffn(self) -> int:
        return 4 * self.d if self.layout == "gpt" else int(8 * self.d / 3 / 256 + 0.999) * 256

    def shapes(self) -> list[tuple[str, tuple[int, int], str]]:
        """(name, shape, spectrum kind) of every weight, in file order."""
        d, f = self.d, self.ffn
        out: list[tuple[str, tuple[int, int], str]] = []
        for b in range(self.blocks):
            p = f"blocks.{b}"
            pair = "pair" if b == 0 else "spike"
            if self.layout == "gpt":
                out += [
                    (f"{p}.attn.qkv.weight", (3 * d, d), "powerlaw"),
                    (f"{p}.attn.proj.weight", (d, d), pair),
                    (f"{p}.mlp.fc1.weight", (f, d), "steep"),
                    (f"{p}.mlp.fc2.weight", (d, f), "powerlaw"),
                ]
            else:
                out += [
                    (f"{p}.attn.q_proj.weight", (d, d), "powerlaw"),
                    (f"{p}.attn.k_proj.weight", (d, d), "powerlaw"),
                    (f"{p}.attn.v_proj.weight", (d, d), "steep"),
                    (f"{p}.attn.o_proj.weight", (d, d), pair),
                    (f"{p}.mlp.gate_proj.weight", (f, d), "powerlaw"),
                    (f"{p}.mlp.up_proj.weight", (f, d), "steep"),
                    (f"{p}.mlp.down_proj.weight", (d, f), "spike"),
                ]
        if self.gaussian:
            out = [(name, shape, "bulk") for name, shape, _ in out]
        return out

    @property
    def parameters(self) -> int:
        return sum(m * n for _, (m, n), _ in self.shapes())

    def name(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        kind = "-gaussian" if self.gaussian else ""
        return f"{self.layout}-d{self.d}x{self.blocks}-{dtype}{kind}"


def weight(shape: tuple[int, int], kind: str, seed: int) -> torch.Tensor:
    """One float32 matrix with the named spectrum (see module docstring)."""
    m, n = shape
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(m, n, generator=generator) / math.sqrt(n)
    edge = 1 + math.sqrt(m / n)
    if kind == "bulk":
        return w
    if kind == "spike":
        strengths = [4 * edge]
    elif kind == "pair":
        strengths = [3 * edge, 3 * edge * (1 - 1e-3)]
    elif kind == "powerlaw":
        strengths = [2.5 * edge * (k + 1) ** -0.5 for k in range(12)]
    elif kind == "steep":
        strengths = [5 * edge * (k + 1) ** -1.0 for k in range(12)]
    else:
        raise ValueError(kind)
    r = len(strengths)
    left = torch.linalg.qr(torch.randn(m, r, generator=generator, dtype=torch.float64))[0]
    right = torch.linalg.qr(torch.randn(n, r, generator=generator, dtype=torch.float64))[0]
    s = torch.tensor(strengths, dtype=torch.float64)
    w.addmm_((left * s).float(), right.T.float())
    return w


def tensors(spec: Spec) -> Iterator[tuple[str, torch.Tensor]]:
    for index, (name, shape, kind) in enumerate(spec.shapes()):
        yield name, weight(shape, kind, spec.seed * 100_003 + index).to(spec.dtype)


def write(spec: Spec, path: Path) -> Path:
    """Stream ``spec``'s tensors into a safetensors file at ``path``."""
    code = SAFETENSORS_CODES[spec.dtype]
    size = torch.finfo(spec.dtype).bits // 8
    header: dict[str, object] = {"__metadata__": {"format": "pt", "generator": "bench/synth.py"}}
    offset = 0
    for name, (m, n), _ in spec.shapes():
        header[name] = {
            "dtype": code,
            "shape": [m, n],
            "data_offsets": [offset, offset + m * n * size],
        }
        offset += m * n * size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(raw)))
        handle.write(raw)
        for _, tensor in tensors(spec):
            handle.write(tensor.contiguous().view(torch.uint8).numpy().data)
    return path
