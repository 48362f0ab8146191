"""Benchmark ``sncli diff SOURCE.safetensors SOURCE-Q8_0.gguf``: a synthetic Llama pair.

    python bench/quant_diff.py                       # d=2048 × 16 blocks, ffn 5632 (≈0.9B)
    python bench/quant_diff.py --hidden 512 --blocks 4 --ffn 1376   # quick

The source is a random Llama state dict in Hugging Face names (float32); the GGUF is written
as llama.cpp's converter writes it (gguf's name tables, Q/K rows permuted, 2-D weights Q8_0 by
``gguf.quants.quantize``). Prints, in one run: ``sncli inspect SOURCE`` and ``sncli diff SOURCE
GGUF`` wall times (fresh processes), their ratio, and the per-type summary.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import gguf_llama


def _state(hidden: int, blocks: int, ffn: int, vocab: int) -> dict[str, np.ndarray]:
    gguf_llama.HIDDEN, gguf_llama.FFN, gguf_llama.VOCAB = hidden, ffn, vocab
    gguf_llama.N_HEAD, gguf_llama.N_HEAD_KV = hidden // 64, max(1, hidden // 256)
    return gguf_llama.llama_state_dict(blocks)


def _run(*args: str) -> tuple[float, str]:
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "sncli", *args], capture_output=True, text=True, check=True
    )
    return time.perf_counter() - began, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--blocks", type=int, default=16)
    parser.add_argument("--ffn", type=int, default=5632)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--norms-only", action="store_true", help="--top-k 0 --intruder-top-k 0")
    args = parser.parse_args()
    from safetensors.numpy import save_file

    with tempfile.TemporaryDirectory() as folder:
        source, quantized = Path(folder) / "model.safetensors", Path(folder) / "model-Q8_0.gguf"
        tensors = _state(args.hidden, args.blocks, args.ffn, args.vocab)
        params = sum(t.size for t in tensors.values())
        began = time.perf_counter()
        save_file(tensors, str(source))
        gguf_llama.write_gguf(quantized, tensors, "Q8_0", blocks=args.blocks)
        del tensors
        print(f"{params / 1e6:.0f}M parameters; written in {time.perf_counter() - began:.0f} s")
        inspect_s, _ = _run("inspect", str(source), "--format", "json", "-q")
        diff_s, out = _run(
            "diff",
            str(source),
            str(quantized),
            "--format",
            "json",
            "-q",
            *(["--top-k", "0", "--intruder-top-k", "0"] if args.norms_only else []),
        )
        data = json.loads(out)
        print(f"inspect {inspect_s:.1f} s, diff {diff_s:.1f} s, ratio {diff_s / inspect_s:.2f}")
        for row in data["quantization"]["by_type"]:
            print(json.dumps(row))
        print(f"unmatched: {len(data['quantization']['unmatched'])}")


if __name__ == "__main__":
    main()
