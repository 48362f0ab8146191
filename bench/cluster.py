"""Benchmark ``--scheduler``: a local run against the same run on a local Dask cluster.

    python bench/cluster.py          # GPT d=1024 × 12 blocks (151M bf16, 302 MB) in 6 shards
    python bench/cluster.py --quick  # d=512 × 8 blocks

Everything runs in one process against one ``LocalCluster`` (a scheduler and two single-threaded
worker processes on 127.0.0.1), so the ratios are within one run. Printed:

* the scheduler round trip: a task that does nothing, and ``inspect`` of the 2-layer sample
  model locally and through the cluster (what ``--scheduler`` costs a small model);
* ``inspect`` (auto) and ``spectrum`` (dense) of the sharded checkpoint: local (one thread per
  core) and on the two workers, one layer per task and grouped (the default 64 MB), the
  results checked equal, with the speed-up and the overhead per task;
* the local per-byte rates the README's plan for a 405B checkpoint is built from.

The first cluster call (workers import torch and parse headers) is timed separately; the others
are the median of ``--repeat`` runs. On this 2-core machine the two workers share the cores the
local run already uses, so a speed-up near 1× is the expected outcome: what is measured is the
overhead, which decides when a real cluster pays off.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import synth

ROOT = Path(__file__).resolve().parent.parent


def write_sharded(spec: synth.Spec, folder: Path, shards: int) -> Path:
    """``spec`` written as ``shards`` safetensors files and an index (block-aligned)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    names = [name for name, _, _ in spec.shapes()]
    per = -(-len(names) // shards)
    weight_map: dict[str, str] = {}
    stream = synth.tensors(spec)
    for shard in range(shards):
        part = dict(next(stream) for _ in names[shard * per : (shard + 1) * per])
        if not part:
            break
        file = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: v.contiguous() for k, v in part.items()}, str(folder / file))
        weight_map.update(dict.fromkeys(part, file))
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


def timed(function: Callable[[], object], repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        began = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - began)
    return statistics.median(times), result


def round_trip(address: str, checkpoint: object, count: int) -> float:
    """Seconds per task for ``count`` ``run_task`` calls with no items (the checkpoint already
    open on the worker), submitted one after another."""
    from distributed import Client

    import sncli
    from sncli.run.dask import checkpoint_ref, run_task

    refs = (checkpoint_ref(checkpoint),)
    with Client(address, set_as_default=False) as client:
        client.submit(run_task, refs, [], None, None, sncli.__version__, pure=False).result()
        began = time.perf_counter()
        for _ in range(count):
            client.submit(run_task, refs, [], None, None, sncli.__version__, pure=False).result()
        return (time.perf_counter() - began) / count


def per_thread_rates(folder: Path) -> dict[str, float]:
    """One-thread constants for the README's 405B plan, measured here in-process:
    inspect (auto) seconds per byte of a 8192×8192 bf16 matrix; spectrum (dense, float64 Gram +
    eigvalsh) fitted as a·m·n² + b·n³ (n the smaller side) from 8192×2048 and 4096×4096."""
    from safetensors.torch import save_file

    from sncli.analysis import MethodOptions, spectral_norms
    from sncli.checkpoint import open_checkpoint
    from sncli.spectrum import SpectrumOptions, spectra

    def one(shape: tuple[int, int], name: str) -> object:
        path = folder / f"{name}.safetensors"
        weight = synth.weight(shape, "powerlaw", 7).to(synth.torch.bfloat16)
        save_file({"layer.weight": weight}, str(path))
        return open_checkpoint(path)

    square = one((8192, 8192), "square")
    inspect_s, _ = timed(lambda: spectral_norms(square, options=MethodOptions(workers=1)), 3)
    tall, even = one((8192, 2048), "tall"), one((4096, 4096), "even")
    tall_s, _ = timed(lambda: spectra(tall, options=SpectrumOptions(workers=1)), 1)
    even_s, _ = timed(lambda: spectra(even, options=SpectrumOptions(workers=1)), 1)
    # tall_s = a·8192·2048² + b·2048³, even_s = (a + b)·4096³
    x1, y1 = 8192 * 2048**2, 2048**3
    x2 = 4096**3
    b = (tall_s - even_s * x1 / x2) / (y1 - x1)
    a = even_s / x2 - b
    return {
        "inspect_s_per_byte": inspect_s / (8192 * 8192 * 2),
        "spectrum_a": a,
        "spectrum_b": b,
        "spectrum_tall_s": tall_s,
        "spectrum_even_s": even_s,
    }


def llama405b_plan(rates: dict[str, float], threads: int) -> list[tuple[str, str]]:
    """Tasks, bytes per worker and expected compute time for Llama-3.1-405B's shapes (126
    blocks, d=16384, FFN 53248, 8 KV heads of 128; bf16, 811 GB in 191 shards) on ``threads``
    worker threads, from the measured one-thread constants (compute only: add the read time)."""
    d, ffn, kv, blocks = 16384, 53248, 1024, 126
    per_block = [(d, d), (kv, d), (kv, d), (d, d), (ffn, d), (ffn, d), (d, ffn)]
    shapes = per_block * blocks + [(128256, d)] * 2
    total = sum(m * n * 2 for m, n in shapes)
    inspect_s = total * rates["inspect_s_per_byte"]
    spectrum_s = sum(
        rates["spectrum_a"] * max(m, n) * min(m, n) ** 2 + rates["spectrum_b"] * min(m, n) ** 3
        for m, n in shapes
    )
    biggest = max(m * n for m, n in shapes)
    return [
        ("405B: matrices, bytes (bf16)", f"{len(shapes)}, {total / 1e9:.0f} GB"),
        ("405B: in flight per worker (2 × widest in fp32)", f"{2 * 4 * biggest / 1e9:.1f} GB"),
        (
            f"405B inspect compute, one thread / {threads} threads",
            f"{inspect_s / 3600:.1f} h / {inspect_s / threads / 60:.1f} min",
        ),
        (
            f"405B spectrum compute, one thread / {threads} threads",
            f"{spectrum_s / 3600:.0f} h / {spectrum_s / threads / 60:.0f} min",
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--plan-threads", type=int, default=512, help="threads in the 405B plan")
    args = parser.parse_args(argv)

    from distributed import LocalCluster

    import sncli.run.dask as cluster
    from sncli.analysis import MethodOptions, spectral_norms
    from sncli.checkpoint import open_checkpoint
    from sncli.spectrum import SpectrumOptions, spectra

    spec = synth.Spec(d=512, blocks=8) if args.quick else synth.Spec(d=1024, blocks=12)
    with tempfile.TemporaryDirectory(prefix="sncli-bench-cluster-") as tmp:
        index = write_sharded(spec, Path(tmp) / spec.name(), shards=6)
        checkpoint = open_checkpoint(index)
        size = sum(Path(f).stat().st_size for f in checkpoint.files)
        layers = len(checkpoint.tensors)
        small = open_checkpoint(ROOT / "sample_models" / "mlp.safetensors")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Couldn't detect a suitable IP address")
            local_cluster = LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                silence_logs=logging.ERROR,
            )
        address = local_cluster.scheduler_address
        rows: list[tuple[str, str]] = []
        try:
            first, _ = timed(
                lambda: spectral_norms(small, options=MethodOptions(scheduler=address)), 1
            )
            per_task = round_trip(address, small, 50)
            small_local, _ = timed(lambda: spectral_norms(small), args.repeat)
            small_remote, _ = timed(
                lambda: spectral_norms(small, options=MethodOptions(scheduler=address)),
                args.repeat,
            )
            rows += [
                ("first cluster call (workers import torch, open the file)", f"{first:.2f} s"),
                ("empty task round trip", f"{per_task * 1e3:.1f} ms"),
                (
                    "inspect sample_models/mlp.safetensors: local / cluster",
                    f"{small_local * 1e3:.0f} ms / {small_remote * 1e3:.0f} ms "
                    f"({small_remote / small_local:.1f}×)",
                ),
            ]
            for command, run_local, run_remote in (
                (
                    "inspect (auto)",
                    lambda: spectral_norms(checkpoint),
                    lambda: spectral_norms(checkpoint, options=MethodOptions(scheduler=address)),
                ),
                (
                    "spectrum (dense)",
                    lambda: spectra(checkpoint),
                    lambda: spectra(checkpoint, options=SpectrumOptions(scheduler=address)),
                ),
            ):
                local_s, local_report = timed(run_local, args.repeat)
                rows.append(
                    (
                        f"{command}: local, 2 threads",
                        f"{local_s:.2f} s ({size / local_s / 1e6:.0f} MB/s)",
                    )
                )
                for label, task_bytes in (("default task size", None), ("one layer per task", 1)):
                    if task_bytes is not None:
                        cluster.DEFAULT_TASK_BYTES, saved = task_bytes, cluster.DEFAULT_TASK_BYTES
                    try:
                        remote_s, remote_report = timed(run_remote, args.repeat)
                    finally:
                        if task_bytes is not None:
                            cluster.DEFAULT_TASK_BYTES = saved
                    tasks = _tasks(remote_report)
                    same = _same(local_report, remote_report)
                    overhead = (remote_s - local_s) / tasks
                    rows.append(
                        (
                            f"{command}: cluster, {label}, {tasks} tasks",
                            f"{remote_s:.2f} s, speed-up {local_s / remote_s:.2f}×, "
                            f"{overhead * 1e3:+.0f} ms per task vs local, "
                            f"{'same results' if same else 'RESULTS DIFFER'}",
                        )
                    )
        finally:
            local_cluster.close()
        rates = per_thread_rates(Path(tmp))
        rows += [
            (
                "one thread: inspect (auto), 8192×8192 bf16",
                f"{1 / rates['inspect_s_per_byte'] / 1e6:.0f} MB/s",
            ),
            (
                "one thread: spectrum (dense) 8192×2048 / 4096×4096",
                f"{rates['spectrum_tall_s']:.2f} s / {rates['spectrum_even_s']:.2f} s "
                f"(a = {rates['spectrum_a']:.3g} s per m·n², "
                f"b = {rates['spectrum_b']:.3g} s per n³)",
            ),
        ]
        rows += llama405b_plan(rates, args.plan_threads)
    print(
        f"\n{spec.name()}: {spec.parameters / 1e6:.0f}M parameters, {layers} matrices, "
        f"{size / 1e6:.0f} MB in 6 shards; 2 workers × 1 thread on 127.0.0.1\n"
    )
    print("| measurement | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


def _tasks(report: object) -> int:
    """The task count the report's cluster note gives."""
    for note in getattr(report, "notes"):  # noqa: B009
        found = re.search(r"(\d+) tasks? on", note)
        if found:
            return int(found.group(1))
    raise AssertionError("no cluster note in the report")


def _same(a: object, b: object) -> bool:
    import numpy as np

    left, right = getattr(a, "layers"), getattr(b, "layers")  # noqa: B009
    if len(left) != len(right):
        return False
    for x, y in zip(left, right, strict=True):
        for key, value in vars(x).items():
            other = getattr(y, key)
            if isinstance(value, np.ndarray):
                if not np.array_equal(value, other):
                    return False
            elif value != other and not (value != value and other != other):  # NaN == NaN
                return False
    return True


if __name__ == "__main__":
    main()
