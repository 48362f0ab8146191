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


# --- CNN state dicts with torchvision's key names and shapes (seeded random weights) ----------


def resnet18_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of torchvision's ResNet-18 state dict, in its order."""
    out: list[tuple[str, tuple[int, ...]]] = [("conv1.weight", (64, 3, 7, 7))]
    out += _bn("bn1", 64)
    inplanes = 64
    for stage, planes in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            p = f"layer{stage}.{block}"
            first_in = inplanes if block == 0 else planes
            out.append((f"{p}.conv1.weight", (planes, first_in, 3, 3)))
            out += _bn(f"{p}.bn1", planes)
            out.append((f"{p}.conv2.weight", (planes, planes, 3, 3)))
            out += _bn(f"{p}.bn2", planes)
            if block == 0 and stage > 1:
                out.append((f"{p}.downsample.0.weight", (planes, inplanes, 1, 1)))
                out += _bn(f"{p}.downsample.1", planes)
        inplanes = planes
    out += [("fc.weight", (1000, 512)), ("fc.bias", (1000,))]
    return out


def vgg11_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of torchvision's VGG-11 state dict (no BatchNorm), in its order."""
    out: list[tuple[str, tuple[int, ...]]] = []
    index, channels = 0, 3
    for item in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
        if item == "M":
            index += 1
            continue
        out += [(f"features.{index}.weight", (item, channels, 3, 3))]
        out += [(f"features.{index}.bias", (item,))]
        index += 2  # conv, ReLU
        channels = item
    for index, (rows, cols) in ((0, (4096, 25088)), (3, (4096, 4096)), (6, (1000, 4096))):
        out += [(f"classifier.{index}.weight", (rows, cols))]
        out += [(f"classifier.{index}.bias", (rows,))]
    return out


def _bn(prefix: str, channels: int) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (f"{prefix}.{name}", (channels,))
        for name in ("weight", "bias", "running_mean", "running_var")
    ] + [(f"{prefix}.num_batches_tracked", ())]


CNN_SHAPES = {"resnet18": resnet18_shapes, "vgg11": vgg11_shapes}


def cnn_tensor(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A trained-looking value for one tensor: He-normal weights (fan-out, as torchvision
    initializes convs), small linear weights, BatchNorm γ ≈ 1 and running_var ≈ 1."""
    generator = torch.Generator().manual_seed(seed)
    if name.endswith("num_batches_tracked"):
        return torch.tensor(1000, dtype=torch.int64)
    if len(shape) == 4:
        fan_out = shape[0] * shape[2] * shape[3]
        return torch.randn(shape, generator=generator) * math.sqrt(2.0 / fan_out)
    if len(shape) == 2:
        return torch.randn(shape, generator=generator) / math.sqrt(shape[1])
    if name.endswith("running_var"):
        return 0.5 + torch.rand(shape, generator=generator)
    if name.endswith("weight"):
        return 1.0 + 0.2 * torch.randn(shape, generator=generator)
    return 0.1 * torch.randn(shape, generator=generator)


def write_cnn(arch: str, path: Path, seed: int = 0) -> Path:
    """Stream a seeded float32 ``arch`` ("resnet18" or "vgg11") state dict to ``path``."""
    shapes = CNN_SHAPES[arch]()
    header: dict[str, object] = {"__metadata__": {"format": "pt", "generator": "bench/synth.py"}}
    offset = 0
    for name, shape in shapes:
        code, size = ("I64", 8) if name.endswith("num_batches_tracked") else ("F32", 4)
        end = offset + math.prod(shape) * size
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(raw)))
        handle.write(raw)
        for index, (name, shape) in enumerate(shapes):
            tensor = cnn_tensor(name, shape, seed * 100_003 + index)
            handle.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return path
