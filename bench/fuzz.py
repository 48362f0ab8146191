"""Mutation fuzzer for sncli's readers (issue 28: it found the subnormal-layer abort and the
.npy TokenError).

Writes small valid seed files of every format sncli reads (safetensors, torch zip and legacy,
ONNX embedded and with external data, GGUF F32/F16/Q8_0, .npy, .npz stored and deflated,
TorchScript, Keras .h5 and .keras), then for each seed, for a time budget, mutates it (bit
flips, interesting integers, truncation, insertion, chunk duplication, deletion; for zip
formats half the cases mutate one member and re-zip it) and runs ``sncli inspect`` and
``sncli lipschitz`` (``--format json -q``) on it in a forked child under an address-space
limit and a SIGKILL timeout. Each run is classified: ok, clean-error (exit 1–4 with a
``sncli: error:`` line), or a finding: unexpected-error ("unexpected …"), traceback, signal,
timeout, over-memory, other. Findings are kept (the input folder) under OUT/keep/.

The RNG is seeded from --seed and the seed file's name (crc32), so a run is reproducible.

    python bench/fuzz.py --out /tmp/fuzz --seconds 60            # 60 s per seed file
    python bench/fuzz.py --out /tmp/fuzz --seconds 5 --only m.npz fc1.weight.npy

Exit status 1 when any finding was recorded. Results: OUT/results.jsonl.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import resource
import shutil
import signal
import sys
import time
import traceback
import zipfile
import zlib
from collections import Counter
from pathlib import Path

SEED_FILES = [
    "mlp.safetensors",
    "mlp.pt",
    "mlp_legacy.pt",
    "mlp.onnx",
    "ext/mlp_ext.onnx",
    "conv.onnx",
    "m.gguf",
    "fc1.weight.npy",
    "m.npz",
    "mz.npz",
    "mlp_ts.pt",
    "model.weights.h5",
    "m.keras",
]
INTERESTING = [
    b"\x00" * 4,
    b"\xff" * 4,
    b"\xff" * 8,
    b"\x7f\xff\xff\xff",
    b"\x00\x00\x00\x80",
    b"\x01\x00\x00\x00",
    b"\xff\xff\xff\x7f\x00\x00\x00\x00",
    b"\x00\x00\x00\x00\x00\x00\xf0\x7f",
]
CLEAN = ("ok", "clean-error")


def make_seeds(out: Path, only: set[str]) -> None:
    """Small valid files of every format (only those named in ``only``, when given)."""
    import numpy as np
    import torch

    want = lambda name: not only or name in only  # noqa: E731
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if want("mlp.safetensors"):
        from safetensors.torch import save_file

        save_file(sd, str(out / "mlp.safetensors"))
    if want("mlp.pt"):
        torch.save(sd, out / "mlp.pt")
    if want("mlp_legacy.pt"):
        torch.save(sd, out / "mlp_legacy.pt", _use_new_zipfile_serialization=False)
    if want("mlp.onnx") or want("ext/mlp_ext.onnx"):
        import onnx

        torch.onnx.export(model, (torch.randn(1, 8),), str(out / "mlp.onnx"), dynamo=False)
        (out / "ext").mkdir(exist_ok=True)
        onnx.save_model(
            onnx.load(str(out / "mlp.onnx")),
            str(out / "ext" / "mlp_ext.onnx"),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="mlp_ext.onnx.data",
            size_threshold=0,
        )
    if want("conv.onnx"):
        conv = torch.nn.Sequential(
            torch.nn.Conv2d(1, 2, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Flatten(),
            torch.nn.Linear(2 * 6 * 6, 3),
        )
        torch.onnx.export(conv, (torch.randn(1, 1, 6, 6),), str(out / "conv.onnx"), dynamo=False)
    if want("m.gguf"):
        import gguf

        writer = gguf.GGUFWriter(str(out / "m.gguf"), "llama")
        rng = np.random.RandomState(0)
        writer.add_tensor("blk.0.ffn_down.weight", rng.randn(16, 32).astype(np.float32))
        writer.add_tensor("blk.0.ffn_up.weight", rng.randn(32, 16).astype(np.float16))
        q8 = gguf.GGMLQuantizationType.Q8_0
        quantized = gguf.quants.quantize(rng.randn(8, 64).astype(np.float32), q8)
        writer.add_tensor("blk.0.attn_q.weight", quantized, raw_shape=quantized.shape, raw_dtype=q8)
        writer.add_tensor("output_norm.weight", np.ones(16, np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    arrays = {k: v.numpy() for k, v in sd.items()}
    if want("fc1.weight.npy"):
        np.save(out / "fc1.weight.npy", arrays["0.weight"])
    if want("m.npz"):
        np.savez(out / "m.npz", **arrays)
    if want("mz.npz"):
        np.savez_compressed(out / "mz.npz", **arrays)
    if want("mlp_ts.pt"):
        torch.jit.save(torch.jit.script(model), str(out / "mlp_ts.pt"))
    if want("model.weights.h5") or want("m.keras"):
        import h5py

        with h5py.File(out / "model.weights.h5", "w") as h5:
            layers = h5.create_group("layers")
            for i, (name, a, b) in enumerate([("dense", 8, 16), ("dense_1", 16, 4)]):
                group = layers.create_group(name).create_group("vars")
                group.create_dataset("0", data=np.random.RandomState(i).randn(a, b).astype("f4"))
                group.create_dataset("1", data=np.zeros(b, np.float32))
            h5.create_group("optimizer").create_group("vars")
        with zipfile.ZipFile(out / "m.keras", "w") as archive:
            archive.writestr("metadata.json", json.dumps({"keras_version": "3.5.0"}))
            archive.writestr("config.json", json.dumps({"class_name": "Sequential"}))
            archive.write(out / "model.weights.h5", "model.weights.h5")


def mutate_bytes(rng: random.Random, data: bytes) -> tuple[bytes, list[str]]:
    buffer = bytearray(data)
    how = []
    for _ in range(rng.choice([1, 1, 1, 2, 3, 5])):
        if not buffer:
            break
        op = rng.choice(["flip", "flip", "byte", "int", "trunc", "insert", "dup", "delete"])
        i = rng.randrange(len(buffer))
        if op == "flip":
            buffer[i] ^= 1 << rng.randrange(8)
        elif op == "byte":
            buffer[i] = rng.randrange(256)
        elif op == "int":
            value = rng.choice(INTERESTING)
            buffer[i : i + len(value)] = value
        elif op == "trunc":
            del buffer[i:]
        elif op == "insert":
            buffer[i:i] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 4, 64])))
        elif op == "dup":
            j = rng.randrange(len(buffer))
            buffer[i:i] = buffer[j : j + rng.choice([8, 64, 512])]
        else:
            del buffer[i : i + rng.choice([1, 4, 64])]
        how.append(f"{op}@{i}")
    return bytes(buffer), how


def mutate_zip(rng: random.Random, data: bytes) -> tuple[bytes, list[str]]:
    source = zipfile.ZipFile(io.BytesIO(data))
    infos = source.infolist()
    target = rng.choice([i for i in infos if not i.is_dir()])
    out = io.BytesIO()
    how: list[str] = []
    with zipfile.ZipFile(out, "w") as archive:
        for info in infos:
            payload = source.read(info)
            if info is target:
                payload, how = mutate_bytes(rng, payload)
            entry = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            entry.compress_type = info.compress_type
            archive.writestr(entry, payload)
    return out.getvalue(), [f"member {target.filename}", *how]


def run_child(argv: list[str], folder: Path, memory: int, limit_s: float) -> dict:
    """sncli's CLI in a forked child (the parent imported everything once)."""
    from sncli.cli import main as sncli_main

    out, err = folder / "stdout", folder / "stderr"
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 98
        try:
            os.setpgid(0, 0)
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
            os.dup2(os.open(out, flags), 1)
            os.dup2(os.open(err, flags), 2)
            sys.argv = ["sncli", *argv]
            try:
                sncli_main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:
                traceback.print_exc()
                code = 99
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    deadline = start + limit_s
    timed_out = False
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            done, status, usage = os.wait4(pid, 0)
            break
        time.sleep(0.01)
    return {
        "rc": os.waitstatus_to_exitcode(status),
        "timeout": timed_out,
        "secs": round(time.monotonic() - start, 2),
        "maxrss_mb": round(usage.ru_maxrss / 1024),
        "stderr": err.read_bytes().decode("utf-8", "replace")[-600:],
    }


def classify(result: dict) -> str:
    text = result["stderr"]
    if result["timeout"]:
        return "timeout"
    if result["rc"] < 0:
        return "signal"
    if "Traceback" in text:
        return "traceback"
    if "MemoryError" in text or "bad_alloc" in text or "can't allocate memory" in text:
        return "over-memory"
    if "unexpected " in text and "please report" in text:
        return "unexpected-error"
    if result["rc"] == 0:
        return "ok"
    errors = [line for line in text.strip().splitlines() if line.startswith("sncli: error")]
    if result["rc"] in (1, 2, 3, 4) and len(errors) == 1:
        return "clean-error"
    return "other"


def fuzz(args: argparse.Namespace) -> Counter:
    out: Path = args.out
    seeds = out / "seeds"
    only = set(args.only or [])
    make_seeds(seeds, only)
    # Preload what the children need, once (fork shares it).
    import sncli.cli  # noqa: F401

    (out / "keep").mkdir(parents=True, exist_ok=True)
    counts: Counter = Counter()
    with (out / "results.jsonl").open("a") as results:
        for name in SEED_FILES:
            if only and name not in only:
                continue
            data = (seeds / name).read_bytes()
            is_zip = data[:2] == b"PK"
            rng = random.Random(zlib.crc32(name.encode()) ^ args.seed)
            end = time.monotonic() + args.seconds
            number = 0
            while time.monotonic() < end and (args.cases is None or number < args.cases):
                number += 1
                case = out / "work"
                shutil.rmtree(case, ignore_errors=True)
                case.mkdir(parents=True)
                if name.startswith("ext/"):
                    extra = (seeds / "ext" / "mlp_ext.onnx.data").read_bytes()
                    mutated, how = data, []
                    if rng.random() < 0.3:
                        extra, how = mutate_bytes(rng, extra)
                        how = ["data:", *how]
                    else:
                        mutated, how = mutate_bytes(rng, data)
                    (case / "mlp_ext.onnx.data").write_bytes(extra)
                elif is_zip and rng.random() < 0.5:
                    try:
                        mutated, how = mutate_zip(rng, data)
                    except (zipfile.BadZipFile, ValueError, OSError):
                        mutated, how = mutate_bytes(rng, data)
                else:
                    mutated, how = mutate_bytes(rng, data)
                target = case / Path(name).name
                target.write_bytes(mutated)
                for command in args.commands:
                    argv = [command, str(target), "--format", "json", "-q"]
                    result = run_child(argv, case, args.memory_gib << 30, args.timeout)
                    result.update(seed=name, case=number, cmd=command, how=how)
                    result["cls"] = classify(result)
                    counts[result["cls"]] += 1
                    if result["cls"] not in CLEAN:
                        keep = out / "keep" / f"{Path(name).name}.{number}.{command}"
                        shutil.copytree(case, keep, dirs_exist_ok=True)
                        result["kept"] = str(keep)
                        print(f"FINDING {result['cls']}: {keep}: {result['stderr'][-200:]}")
                    results.write(json.dumps(result) + "\n")
                    results.flush()
            print(f"{name}: {number} cases", flush=True)
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="work and results folder")
    parser.add_argument("--seconds", type=float, default=60, help="time budget per seed file")
    parser.add_argument("--cases", type=int, default=None, help="at most this many per seed")
    parser.add_argument("--seed", type=int, default=0, help="RNG seed (reproducible runs)")
    parser.add_argument("--only", nargs="*", help=f"seed files among {SEED_FILES}")
    parser.add_argument("--commands", nargs="*", default=["inspect", "lipschitz"])
    parser.add_argument("--memory-gib", type=int, default=4, help="RLIMIT_AS per child")
    parser.add_argument("--timeout", type=float, default=30, help="SIGKILL after (s)")
    counts = fuzz(parser.parse_args())
    print("outcomes:", dict(sorted(counts.items())))
    return 1 if any(k not in CLEAN for k in counts) else 0


if __name__ == "__main__":
    sys.exit(main())
