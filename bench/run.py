"""Benchmark sncli's σ methods against the loops a user would write, in one run.

    python bench/run.py            # ~3 min on 2 cores: 302M-parameter bf16 checkpoint + scaling
    python bench/run.py --quick    # ~30 s smoke run on small checkpoints
    python bench/run.py --large    # adds a 1B-parameter float32 (4 GB) checkpoint
    python bench/run.py --lipschitz  # only: sncli lipschitz / inspect on ResNet-18 and VGG-11
    python bench/run.py --spectrum   # only: sncli spectrum vs svdvals loop and WeightWatcher
    python bench/run.py --graph      # only: lipschitz over ONNX graphs (MLP, ResNet-18, LSTM)

Checkpoints are generated (seeded, bench/synth.py) into a temporary folder that is deleted
afterwards (``--keep`` keeps it). Every measurement runs in its own subprocess, so each reports
its own wall time (from opening the file to the last σ; interpreter and ``import torch``
excluded, listed separately) and its own peak RSS (VmHWM from /proc, which, unlike ru_maxrss,
does not include the parent's memory at fork time). Relative errors are against the float64
``scipy.linalg.svdvals`` loop of the same run. Results also go to ``bench/out/*.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

SNCLI_METHODS = ("exact", "auto", "lanczos", "power")


# --- child processes: one measurement each, one JSON line on stdout ------------------------


def _peak_rss() -> int:
    """This process's peak resident set (VmHWM) in bytes."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _weights(path: str):
    from safetensors import safe_open

    with safe_open(path, framework="pt") as handle:
        for name in handle.keys():  # noqa: SIM118 - safe_open is not a dict
            tensor = handle.get_tensor(name)
            if tensor.dim() == 2:
                yield name, tensor


def _allocation_child(kind: str, path: str) -> tuple[dict[str, float], dict[str, object]]:
    """The children of ``_allocation_agreement``: sncli's extra metrics, or WeightWatcher's and
    AlphaPruning's."""
    import torch

    sigmas: dict[str, float] = {}
    extra: dict[str, object] = {}
    if kind == "spectrum_allocation":  # spectrum with --hill --mp-fit --randomize (seed 0)
        import sncli
        from sncli.spectrum import EXTRA_METRICS, SpectrumOptions, spectra

        options = SpectrumOptions(hill=True, mp_fit=True, randomize=True)
        with sncli.open_checkpoint(path) as ckpt:
            report = spectra(ckpt, options=options)
        sigmas = {layer.name: layer.sigma_max for layer in report.layers}
        extra = {
            "metrics": {
                layer.name: {m: getattr(layer, m) for m in EXTRA_METRICS} for layer in report.layers
            }
        }
    else:  # /work/venv-ww: analyze(mp_fit, randomize) + AP
        import numpy as np
        import weightwatcher
        from safetensors.torch import load_file

        np.random.seed(0)
        details = weightwatcher.WeightWatcher(model=str(Path(path).parent)).analyze(
            mp_fit=True, randomize=True
        )
        columns = [c for c in WW_ALLOCATION_COLUMNS if c in details.columns]
        rows = details[["name", *columns]].to_dict(orient="records")
        extra = {"ww_metrics": {row.pop("name") + ".weight": row for row in rows}}
        # AlphaPruning's alpha_mid (lib/esd_utils.py, net_esd_estimator, fix_fingers='xmin_mid'),
        # its own code path: float32 torch svdvals, eigs ascending, i = int(N/2)
        hill = {}
        for name, tensor in load_file(str(path)).items():
            if tensor.dim() != 2:
                continue
            eigs = torch.square(torch.linalg.svdvals(tensor.to(torch.float32)).flatten())
            eigs, _ = torch.sort(eigs, descending=False)
            i = int(len(eigs) / 2)
            n = float(len(eigs) - i)
            logs = torch.log(eigs)
            hill[name] = (1 + n / (torch.sum(logs[i:]) - n * logs[i])).item()
        extra["alphapruning_alpha_mid"] = hill
    return sigmas, extra


def child(kind: str, path: str, method: str | None) -> dict[str, object]:
    """Run one measurement in this process."""
    began = time.perf_counter()
    import torch

    imported = time.perf_counter()
    baseline_rss = _peak_rss()
    sigmas: dict[str, float] = {}
    extra: dict[str, object] = {}
    start = time.perf_counter()
    if kind == "sncli":
        import sncli
        from sncli.analysis import MethodOptions

        with sncli.open_checkpoint(path) as ckpt:
            report = sncli.spectral_norms(ckpt, options=MethodOptions(method=method))
        sigmas = {layer.name: layer.sigma for layer in report.layers}
        steps = [layer.iterations for layer in report.layers if layer.iterations is not None]
        extra = {
            "workers": report.workers,
            "iterations_total": sum(steps),
            "iterations_max": max(steps, default=0),
            "algorithms": sorted({layer.algorithm for layer in report.layers}),
            "bounds": sorted({layer.bound.value for layer in report.layers}),
        }
    elif kind == "lipschitz":  # sncli lipschitz's defaults: dense linear σ, conv operator norm
        import sncli
        from sncli.lipschitz import lipschitz_report

        cpu = time.process_time()
        with sncli.open_checkpoint(path) as ckpt:
            lip = lipschitz_report(ckpt)
        sigmas = {f.name: f.sigma for f in lip.factors}
        extra = {
            "log10_bound": lip.log10_bound,
            "factors": len(lip.factors),
            "cpu_seconds": time.process_time() - cpu,  # all threads: robust to others' load
        }
    elif kind == "spectrum":  # sncli spectrum's engine, full spectra; values to <path>.sncli.npz
        import sncli
        from sncli.spectrum import save_spectra, spectra

        with sncli.open_checkpoint(path) as ckpt:
            report = spectra(ckpt)
        sigmas = {layer.name: layer.sigma_max for layer in report.layers}
        start_save = time.perf_counter()
        save_spectra(report, f"{path}.sncli.npz")
        extra = {
            "workers": report.workers,
            "algorithms": sorted({layer.algorithm for layer in report.layers}),
            "save_seconds": time.perf_counter() - start_save,
            "metrics": {layer.name: layer.metrics() for layer in report.layers},
        }
    elif kind in ("spectrum_allocation", "weightwatcher_allocation"):
        sigmas, extra = _allocation_child(kind, path)
    elif kind == "svdvals64_spectra":  # float64 scipy svdvals loop, values to <path>.svd.npz
        import numpy as np
        import scipy.linalg

        spectra_by_name = {}
        for name, tensor in _weights(path):
            spectra_by_name[name] = scipy.linalg.svdvals(tensor.double().numpy())
            sigmas[name] = float(spectra_by_name[name][0])
        np.savez(f"{path}.svd.npz", **spectra_by_name)
    elif kind == "weightwatcher":  # run by /work/venv-ww's python: analyze() on the folder
        import weightwatcher

        details = weightwatcher.WeightWatcher(model=str(Path(path).parent)).analyze()
        columns = [c for c in WW_COLUMNS if c in details.columns]
        rows = details[["name", *columns]].to_dict(orient="records")
        extra = {"ww_metrics": {row.pop("name") + ".weight": row for row in rows}}
        sigmas = {name: float(row["sv_max"]) for name, row in extra["ww_metrics"].items()}
    elif kind == "matrix_norm":
        for name, tensor in _weights(path):
            sigmas[name] = float(torch.linalg.matrix_norm(tensor.float(), ord=2))
        extra = {"torch_threads": torch.get_num_threads()}
    elif kind == "svdvals64":
        import scipy.linalg

        for name, tensor in _weights(path):
            sigmas[name] = float(scipy.linalg.svdvals(tensor.double().numpy())[0])
    elif kind in ("io", "io_cold"):
        from sncli.formats.safetensors import SafetensorsStreamReader, read_safetensors_header

        if kind == "io_cold":  # drop this file's pages from the page cache (our file only)
            with open(path, "rb") as handle:
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            start = time.perf_counter()
        reader = SafetensorsStreamReader()
        total = 0
        for name in read_safetensors_header(Path(path)).tensors:
            total += reader.read(Path(path), name).numel()
        reader.close()
        extra = {"elements": total}
    else:
        raise SystemExit(f"unknown child kind {kind!r}")
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "startup_seconds": imported - began,
        "sigmas": sigmas,
        "peak_rss": _peak_rss(),
        "import_rss": baseline_rss,
        **extra,
    }


#: WeightWatcher's columns compared with sncli spectrum's metrics (ww name -> sncli name).
WW_COLUMNS = {
    "sv_max": "sigma_max",
    "lambda_max": "lambda_max",
    "log_norm": "log_norm",
    "log_spectral_norm": "log_spectral_norm",
    "stable_rank": "stable_rank",
    "alpha": "alpha",
    "xmin": "xmin",
    "D": "ks_distance",
    "num_pl_spikes": "num_pl_spikes",
    "alpha_weighted": "alpha_weighted",
    "log_alpha_norm": "log_alpha_norm",
    "entropy": "entropy",
    "matrix_rank": "numerical_rank",
}


#: WeightWatcher's mp_fit/randomize columns compared with sncli's --mp-fit/--randomize ones.
WW_ALLOCATION_COLUMNS = {
    "mp_softrank": "mp_softrank",
    "num_spikes": "num_spikes",
    "bulk_max": "bulk_max",
    "rand_distance": "rand_distance",
    "num_traps": "num_traps",
    "max_rand_eval": "max_rand_eval",
}


# --- parent: generate, run children, tabulate ------------------------------------------------


@dataclass
class Result:
    label: str
    checkpoint: str
    kind: str
    method: str | None
    seconds: float
    runs: list[float]
    peak_rss: int
    import_rss: int
    startup: float
    load_before: float
    sigmas: dict[str, float]
    extra: dict[str, object] = field(default_factory=dict)


def run_child(
    label: str,
    kind: str,
    path: Path,
    method: str | None,
    repeat: int,
    env: dict[str, str],
    python: str = sys.executable,
) -> Result:
    runs: list[dict[str, object]] = []
    walls: list[float] = []
    load = os.getloadavg()[0]
    for _ in range(repeat):
        command = [python, str(Path(__file__)), "--child", kind, str(path)]
        if method:
            command += ["--method", method]
        began = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        walls.append(time.perf_counter() - began)
        if done.returncode != 0:
            raise SystemExit(f"{label} failed:\n{done.stderr}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    times = sorted(float(r["seconds"]) for r in runs)
    median = times[len(times) // 2]
    first = runs[0]
    extra = {k: v for k, v in first.items() if k not in Result.__dataclass_fields__}
    extra.pop("startup_seconds", None)
    extra["whole_process_seconds"] = sorted(walls)[len(walls) // 2]
    return Result(
        label=label,
        checkpoint=path.name,
        kind=kind,
        method=method,
        seconds=median,
        runs=times,
        peak_rss=max(int(r["peak_rss"]) for r in runs),
        import_rss=int(first["import_rss"]),
        startup=float(first["startup_seconds"]),
        load_before=load,
        sigmas=first["sigmas"],  # type: ignore[arg-type]
        extra=extra,
    )


def max_error(result: Result, reference: dict[str, float]) -> tuple[float, str]:
    """Largest |σ − σ_ref|/σ_ref over layers, and the layer where it occurs."""
    worst, where = 0.0, ""
    for name, ref in reference.items():
        error = abs(result.sigmas[name] - ref) / ref if ref else abs(result.sigmas[name])
        if error >= worst:
            worst, where = error, name
    return worst, where


def fmt_mb(value: int) -> str:
    return f"{value / 2**20:,.0f}"


def fmt_err(value: float) -> str:
    return "0" if value == 0 else f"{value:.1e}"


def main_table(
    results: list[Result], reference: dict[str, float], pair: str | None, largest_fp32: int
) -> str:
    by = {r.label: r for r in results}
    norm = by.get("matrix_norm loop")
    svd = by.get("float64 svdvals loop")
    lines = [
        "| method | time (s) | × vs matrix_norm loop | × vs fp64 svdvals loop | "
        "max rel. error vs fp64 SVD | error on the 0.1% pair | peak RSS (MB) | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        ratio_norm = f"{norm.seconds / r.seconds:.1f}×" if norm and r.sigmas else ""
        ratio_svd = f"{svd.seconds / r.seconds:.1f}×" if svd and r.sigmas else ""
        if r.sigmas:
            worst, _ = max_error(r, reference)
            pair_error = abs(r.sigmas[pair] - reference[pair]) / reference[pair] if pair else None
            errors = (fmt_err(worst), "" if pair_error is None else fmt_err(pair_error))
        else:
            errors = ("", "")
        notes = []
        if "workers" in r.extra:
            notes.append(f"{r.extra['workers']} workers")
            notes.append(
                f"block steps Σ{r.extra['iterations_total']} max {r.extra['iterations_max']}"
            )
            notes.append("bound " + "/".join(r.extra["bounds"]))  # type: ignore[arg-type]
        if "torch_threads" in r.extra:
            notes.append(f"{r.extra['torch_threads']} torch threads")
        if len(r.runs) > 1:
            notes.append("median of " + ", ".join(f"{t:.2f}" for t in r.runs))
        if r.load_before > 0.5:
            notes.append(f"load {r.load_before:.1f}")
        lines.append(
            f"| {r.label} | {r.seconds:.2f} | {ratio_norm} | {ratio_svd} | {errors[0]} | "
            f"{errors[1]} | {fmt_mb(r.peak_rss)} | {'; '.join(notes)} |"
        )
    target = 2 * largest_fp32 + 500 * 2**20
    lines.append("")
    lines.append(
        f"Peak RSS includes Python + torch ({fmt_mb(results[0].import_rss)} MB after import). "
        f"Memory target: 2 × largest fp32 tensor ({fmt_mb(largest_fp32)} MB) + 500 MB = "
        f"{fmt_mb(target)} MB. Interpreter start + `import torch`: "
        f"{results[0].startup:.2f} s per process, not included in the times."
    )
    return "\n".join(lines)


def scaling_table(rows: list[tuple[str, int, int, int, dict[str, Result]]]) -> str:
    lines = [
        "| checkpoint | parameters | file (MB) | largest fp32 tensor (MB) | method | time (s) | "
        "ns / parameter | peak RSS (MB) | RSS target (MB) |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for name, params, size, largest, results in rows:
        for method, r in results.items():
            lines.append(
                f"| {name} | {params / 1e6:,.0f}M | {fmt_mb(size)} | {fmt_mb(largest)} | "
                f"{method} | {r.seconds:.2f} | {r.seconds / params * 1e9:.1f} | "
                f"{fmt_mb(r.peak_rss)} | {fmt_mb(2 * largest + 500 * 2**20)} |"
            )
    return "\n".join(lines)


def environment() -> dict[str, object]:
    import torch

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:  # pragma: no cover
        pass
    return {
        "cpu": cpu or platform.processor(),
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "loadavg": os.getloadavg(),
    }


def generate(specs: list, folder: Path) -> dict[str, Path]:
    import synth

    paths = {}
    for spec in specs:
        path = folder / f"{spec.name()}.safetensors"
        began = time.perf_counter()
        synth.write(spec, path)
        size = path.stat().st_size / 2**20
        print(
            f"  generated {path.name}: {spec.parameters / 1e6:.0f}M parameters, {size:,.0f} MB "
            f"in {time.perf_counter() - began:.1f} s",
            flush=True,
        )
        paths[spec.name()] = path
    return paths


#: ``lipschitz`` may take at most this many times ``inspect`` on the same CNN checkpoint.
LIPSCHITZ_TARGET_RATIO = 5.0


def lipschitz_section(folder: Path, env: dict[str, str], repeat: int) -> dict[str, object]:
    """``sncli lipschitz`` against ``sncli inspect`` on ResNet-18 and VGG-11 state dicts."""
    import synth

    print("\n## Lipschitz: `sncli lipschitz` vs `sncli inspect` on the same CNN file")
    lines = [
        "| checkpoint | parameters | file (MB) | inspect (s) | lipschitz (s) | lipschitz CPU (s) | "
        "lipschitz / inspect | inspect RSS (MB) | lipschitz RSS (MB) | log10 L | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    rows = []
    for arch in ("resnet18", "vgg11"):
        path = folder / f"{arch}.safetensors"
        began = time.perf_counter()
        synth.write_cnn(arch, path)
        print(f"  generated {path.name} in {time.perf_counter() - began:.1f} s", flush=True)
        inspect = run_child("sncli inspect", "sncli", path, "auto", repeat, env)
        lip = run_child("sncli lipschitz", "lipschitz", path, None, 1, env)
        ratio = lip.seconds / inspect.seconds
        params = sum(math.prod(shape) for _, shape in synth.CNN_SHAPES[arch]())
        verdict = "met" if ratio <= LIPSCHITZ_TARGET_RATIO else "NOT met"
        lines.append(
            f"| {arch} | {params / 1e6:.1f}M | {fmt_mb(path.stat().st_size)} | "
            f"{inspect.seconds:.2f} | {lip.seconds:.2f} | {lip.extra['cpu_seconds']:.2f} | "
            f"{ratio:.1f}× | {fmt_mb(inspect.peak_rss)} | {fmt_mb(lip.peak_rss)} | "
            f"{lip.extra['log10_bound']:.4f} | "
            f"≤ {LIPSCHITZ_TARGET_RATIO:g}×: {verdict} |"
        )
        rows.append({"checkpoint": arch, "inspect": inspect, "lipschitz": lip, "ratio": ratio})
    table = "\n".join(lines)
    print(table, flush=True)
    return {"table": table, "rows": rows}


#: Where ``--spectrum`` finds WeightWatcher (its own venv: ``python3 -m venv /work/venv-ww &&
#: /work/venv-ww/bin/pip install torch==2.13.0 weightwatcher``); override with $SNCLI_WW_PYTHON.
WW_PYTHON = os.environ.get("SNCLI_WW_PYTHON", "/work/venv-ww/bin/python")
#: Issue 12's targets: ≥ 3× WeightWatcher's analyze(), ≥ 2× the float64 svdvals loop, every
#: σ_max within 1e-6 of float64 SVD.
SPECTRUM_TARGETS = {"weightwatcher": 3.0, "svdvals": 2.0, "sigma_error": 1e-6}


def _whole_process(command: list[str], env: dict[str, str], repeat: int) -> list[float]:
    """Wall-clock seconds of a whole process (interpreter start and imports included), sorted."""
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        times.append(time.perf_counter() - began)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    return sorted(times)


def _spectrum_errors(path: Path) -> dict[str, float]:
    """sncli's spectra against the float64 svdvals loop's, from the two children's .npz files."""
    import numpy as np

    worst = {"sigma_max": 0.0, "sigma_ge_1e-3": 0.0, "all_abs_over_sigma_max": 0.0}
    with np.load(f"{path}.sncli.npz") as ours, np.load(f"{path}.svd.npz") as ref:
        for name in ref.files:
            a, b = ours[name], ref[name]
            big = b >= 1e-3 * b[0]
            worst["sigma_max"] = max(worst["sigma_max"], abs(a[0] - b[0]) / b[0])
            rel = float(np.max(np.abs(a[big] - b[big]) / b[big]))
            worst["sigma_ge_1e-3"] = max(worst["sigma_ge_1e-3"], rel)
            absolute = float(np.max(np.abs(a - b)) / b[0])
            worst["all_abs_over_sigma_max"] = max(worst["all_abs_over_sigma_max"], absolute)
    return worst


def _metric_agreement(ours: dict[str, dict], theirs: dict[str, dict]) -> list[str]:
    """Per metric: the largest relative difference between sncli and WeightWatcher, and on how
    many layers they differ beyond 1e-9."""
    lines = ["| metric (WeightWatcher name) | layers | max rel. difference | layers > 1e-9 |"]
    lines.append("|---|---:|---:|---:|")
    for ww_name, name in WW_COLUMNS.items():
        diffs = []
        for layer, row in theirs.items():
            if layer not in ours or ww_name not in row:
                continue
            a, b = ours[layer].get(name), row[ww_name]
            if a is None or b is None or (isinstance(b, float) and math.isnan(b)):
                continue
            diffs.append(abs(a - b) / abs(b) if b else abs(a))
        if diffs:
            over = sum(1 for d in diffs if d > 1e-9)
            lines.append(f"| {name} ({ww_name}) | {len(diffs)} | {max(diffs):.1e} | {over} |")
    return lines


def spectrum_section(folder: Path, env: dict[str, str], repeat: int, quick: bool) -> dict:
    """``sncli spectrum`` (full spectra) against the float64 svdvals loop and WeightWatcher."""
    import synth

    spec = synth.Spec(512, 8) if quick else synth.Spec(1024, 24)
    where = folder / spec.name()  # WeightWatcher reads a folder holding model*.safetensors
    where.mkdir(parents=True, exist_ok=True)
    path = where / "model.safetensors"
    began = time.perf_counter()
    synth.write(spec, path)
    print(
        f"\n## Spectrum: {spec.name()} ({spec.parameters / 1e6:.0f}M parameters, "
        f"{path.stat().st_size / 2**20:,.0f} MB, generated in {time.perf_counter() - began:.0f} s)",
        flush=True,
    )
    ours = run_child("sncli spectrum (engine)", "spectrum", path, None, repeat, env)
    cli = [sys.executable, "-m", "sncli", "spectrum", str(path), "--format", "json", "-q"]
    cli_times = _whole_process([*cli, "--save-spectra", f"{path}.cli.npz"], env, repeat)
    svd = run_child("float64 svdvals loop", "svdvals64_spectra", path, None, 1, env)
    svd_whole = [float(svd.extra["whole_process_seconds"])]  # type: ignore[arg-type]
    ww = None
    ww_whole: list[float] = []
    if Path(WW_PYTHON).exists():
        ww = run_child(
            "WeightWatcher analyze()", "weightwatcher", path, None, 1, _ww_env(env), WW_PYTHON
        )
        ww_whole = [float(ww.extra["whole_process_seconds"])]  # type: ignore[arg-type]
    errors = _spectrum_errors(path)
    median = cli_times[len(cli_times) // 2]
    lines = [
        "| run | compute (s) | whole process (s) | × sncli (whole process) | peak RSS (MB) "
        "| notes |",
        "|---|---:|---:|---:|---:|---|",
        f"| sncli spectrum | {ours.seconds:.2f} | {median:.2f} | 1.0× | {fmt_mb(ours.peak_rss)} | "
        f"{ours.extra['workers']} workers; {', '.join(ours.extra['algorithms'])}; whole process: "
        f"the CLI with --format json --save-spectra, median of "
        + ", ".join(f"{t:.2f}" for t in cli_times)
        + " |",
        f"| float64 scipy svdvals loop | {svd.seconds:.2f} | {svd_whole[0]:.2f} | "
        f"{svd_whole[0] / median:.1f}× | {fmt_mb(svd.peak_rss)} | safe_open + get_tensor |",
    ]
    if ww is not None:
        lines.append(
            f"| WeightWatcher 0.7 analyze() | {ww.seconds:.2f} | {ww_whole[0]:.2f} | "
            f"{ww_whole[0] / median:.1f}× | {fmt_mb(ww.peak_rss)} | defaults, model=folder |"
        )
    else:
        lines.append(f"| WeightWatcher | | | | | skipped: no {WW_PYTHON} (see bench/README.md) |")
    lines += [
        "",
        f"Accuracy against the float64 svdvals loop: σ_max max rel. error "
        f"{fmt_err(errors['sigma_max'])}; every σ ≥ 1e-3·σ_max {fmt_err(errors['sigma_ge_1e-3'])}; "
        f"every σ, absolute / σ_max {fmt_err(errors['all_abs_over_sigma_max'])}.",
    ]
    verdicts = [
        ("≥ 2× float64 svdvals loop", svd_whole[0] / median >= SPECTRUM_TARGETS["svdvals"]),
        ("σ_max within 1e-6", errors["sigma_max"] <= SPECTRUM_TARGETS["sigma_error"]),
    ]
    if ww is not None:
        ratio = ww_whole[0] / median
        verdicts.insert(0, ("≥ 3× WeightWatcher", ratio >= SPECTRUM_TARGETS["weightwatcher"]))
    lines.append(
        "Targets: " + "; ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in verdicts)
    )
    if ww is not None:
        lines += ["", "Agreement with WeightWatcher's numbers on the same file:", ""]
        lines += _metric_agreement(ours.extra["metrics"], ww.extra["ww_metrics"])
        lines.append(
            "(numerical_rank differs by design: sncli takes ε of the stored dtype, WeightWatcher's "
            "matrix_rank float64's.)"
        )
        lines += _allocation_agreement(path, env)
    table = "\n".join(lines)
    print(table, flush=True)
    return {"table": table, "sncli": ours, "svdvals": svd, "weightwatcher": ww, "errors": errors}


def _allocation_agreement(path: Path, env: dict[str, str]) -> list[str]:
    """sncli's --hill/--mp-fit/--randomize against WeightWatcher 0.7.7's analyze(mp_fit=True,
    randomize=True) and AlphaPruning's alpha_mid code (float32 torch) on the same file. The
    fitted MP bulk is deterministic (compared exactly); the randomized metrics come from
    different random permutations on each side (compared as distributions)."""
    import statistics

    ours = run_child(
        "sncli spectrum --hill --mp-fit --randomize", "spectrum_allocation", path, None, 1, env
    )
    ww = run_child(
        "WeightWatcher analyze(mp_fit, randomize)",
        "weightwatcher_allocation",
        path,
        None,
        1,
        _ww_env(env),
        WW_PYTHON,
    )
    mine, theirs = ours.extra["metrics"], ww.extra["ww_metrics"]  # type: ignore[union-attr]
    lines = [
        "",
        f"Allocation metrics (sncli --hill --mp-fit --randomize {ours.seconds:.1f} s; "
        f"WeightWatcher analyze(mp_fit=True, randomize=True) {ww.seconds:.1f} s, one run each):",
        "",
        "| metric | layers | agreement |",
        "|---|---:|---|",
    ]
    hill = ww.extra["alphapruning_alpha_mid"]  # type: ignore[index]
    diffs = [abs(mine[k]["alpha_hill"] - v) / abs(v) for k, v in hill.items() if k in mine]
    lines.append(
        f"| alpha_hill vs AlphaPruning's alpha_mid (float32 torch svdvals) | {len(diffs)} | "
        f"max rel. difference {max(diffs):.1e} |"
    )
    for name in ("mp_softrank", "bulk_max", "num_spikes"):
        pairs = [(mine[k][name], row[name]) for k, row in theirs.items() if k in mine]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None and b == b]
        rel = [abs(a - b) / abs(b) if b else abs(a) for a, b in pairs]
        same = sum(1 for a, b in pairs if a == b)
        lines.append(
            f"| {name} (deterministic) | {len(pairs)} | max rel. difference {max(rel):.1e}; "
            f"{same} identical |"
        )
    for name in ("rand_distance", "max_rand_eval"):
        pairs = [(mine[k][name], row[name]) for k, row in theirs.items() if k in mine]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None and b == b]
        rel = [abs(a - b) / abs(b) for a, b in pairs if b]
        ours_median = statistics.median(a for a, _ in pairs)
        lines.append(
            f"| {name} (random) | {len(pairs)} | median sncli {ours_median:.4g}"
            f", WeightWatcher {statistics.median(b for _, b in pairs):.4g}; rel. difference "
            f"median {statistics.median(rel):.1e}, max {max(rel):.1e} |"
        )
    pairs = [(mine[k]["num_traps"], row["num_traps"]) for k, row in theirs.items() if k in mine]
    same = sum(1 for a, b in pairs if a == b)
    lines.append(
        f"| num_traps (random) | {len(pairs)} | equal on {same}; sncli total "
        f"{sum(a or 0 for a, _ in pairs)}, WeightWatcher total {sum(int(b) for _, b in pairs)} |"
    )
    return lines


def _ww_env(env: dict[str, str]) -> dict[str, str]:
    """WeightWatcher's venv must not see this checkout's packages on PYTHONPATH."""
    clean = dict(env)
    clean.pop("PYTHONPATH", None)
    return clean


def benchmark(args: argparse.Namespace) -> None:
    import synth
    import torch

    began = time.perf_counter()
    env = dict(os.environ)
    if args.spectrum:
        folder = Path(args.workdir or tempfile.mkdtemp(prefix="sncli-bench-"))
        folder.mkdir(parents=True, exist_ok=True)
        info = environment()
        print(f"# sncli benchmark ({info['cpu']}, {info['cores']} cores, torch {info['torch']})")
        print(f"load average at start: {info['loadavg']}", flush=True)
        try:
            section = spectrum_section(folder, env, args.repeat, args.quick)
            report = {"environment": info, "spectrum": section, "loadavg_end": os.getloadavg()}
            print(
                f"\ntotal {time.perf_counter() - began:.0f} s; load average at end: "
                f"{os.getloadavg()}"
            )
            _save_report(report, args.json, "spectrum")
        finally:
            if not args.keep and not args.workdir:
                shutil.rmtree(folder, ignore_errors=True)
        return
    if args.graph:
        from graph import graph_section

        folder = Path(args.workdir or tempfile.mkdtemp(prefix="sncli-bench-"))
        folder.mkdir(parents=True, exist_ok=True)
        info = environment()
        print(f"# sncli graph benchmark ({info['cpu']}, {info['cores']} cores)")
        print(f"load average at start: {info['loadavg']}", flush=True)
        try:
            report = {"environment": info, "graph": graph_section(folder)}
            report["loadavg_end"] = os.getloadavg()
            print(f"\ntotal {time.perf_counter() - began:.0f} s; load at end: {os.getloadavg()}")
            _save_report(report, args.json, "graph")
        finally:
            if not args.keep and not args.workdir:
                shutil.rmtree(folder, ignore_errors=True)
        return
    if args.lipschitz:
        folder = Path(args.workdir or tempfile.mkdtemp(prefix="sncli-bench-"))
        folder.mkdir(parents=True, exist_ok=True)
        info = environment()
        print(f"# sncli benchmark ({info['cpu']}, {info['cores']} cores, torch {info['torch']})")
        print(f"load average at start: {info['loadavg']}", flush=True)
        try:
            report = {"environment": info, "lipschitz": lipschitz_section(folder, env, 1)}
            report["loadavg_end"] = os.getloadavg()
            print(
                f"\ntotal {time.perf_counter() - began:.0f} s; load average at end: "
                f"{os.getloadavg()}"
            )
            _save_report(report, args.json, "lipschitz")
        finally:
            if not args.keep and not args.workdir:
                shutil.rmtree(folder, ignore_errors=True)
        return
    if args.quick:
        main = synth.Spec(512, 8)
        hard = synth.Spec(512, 2, gaussian=True)
        scaling = [synth.Spec(256, 4), synth.Spec(768, 4, dtype=torch.float32)]
    else:
        main = synth.Spec(1024, 24)  # 302M parameters
        hard = synth.Spec(1024, 4, gaussian=True)
        scaling = [synth.Spec(512, 4), synth.Spec(1024, 8, dtype=torch.float32)]
    if args.large:
        scaling.append(synth.Spec(4096, 5, dtype=torch.float32, layout="llama"))
    folder = Path(args.workdir or tempfile.mkdtemp(prefix="sncli-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    info = environment()
    print(f"# sncli benchmark ({info['cpu']}, {info['cores']} cores, torch {info['torch']})")
    print(f"load average at start: {info['loadavg']}", flush=True)
    try:
        paths = generate([main, hard, *scaling], folder)
        report: dict[str, object] = {"environment": info}

        def largest_fp32(spec) -> int:
            return max(m * n for _, (m, n), _ in spec.shapes()) * 4

        for title, spec, methods in (
            ("Main checkpoint", main, SNCLI_METHODS),
            ("Hard case: every weight a bare Gaussian bulk", hard, ("exact", "auto")),
        ):
            path = paths[spec.name()]
            print(f"\n## {title}: {path.name} ({spec.parameters / 1e6:.0f}M parameters)")
            print("running ...", flush=True)
            results = [
                run_child("read every tensor once (warm)", "io", path, None, 3, env),
                run_child("read every tensor once (cold)", "io_cold", path, None, 1, env),
                run_child("float64 svdvals loop", "svdvals64", path, None, 1, env),
                run_child("matrix_norm loop", "matrix_norm", path, None, 1, env),
            ]
            for method in methods:
                repeat = args.repeat if method in ("exact", "auto") else 1
                results.append(run_child(f"sncli {method}", "sncli", path, method, repeat, env))
            reference = results[2].sigmas
            pair = next((name for name, _, kind in spec.shapes() if kind == "pair"), None)
            table = main_table(results, reference, pair, largest_fp32(spec))
            print(table, flush=True)
            report[title] = {"checkpoint": path.name, "table": table, "results": results}

        print("\n## Scaling (sncli auto and exact; time from opening the file to the last σ)")
        rows = []
        for spec in [*scaling, main]:
            path = paths[spec.name()]
            results = {
                method: run_child(f"sncli {method}", "sncli", path, method, 1, env)
                for method in ("auto", "exact")
            }
            rows.append(
                (path.name, spec.parameters, path.stat().st_size, largest_fp32(spec), results)
            )
        table = scaling_table(rows)
        print(table)
        report["scaling"] = {"table": table, "rows": rows}
        report["total_seconds"] = time.perf_counter() - began
        report["loadavg_end"] = os.getloadavg()
        print(f"\ntotal {report['total_seconds']:.0f} s; load average at end: {os.getloadavg()}")
        _save_report(report, args.json, "results")
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(folder, ignore_errors=True)


def _save_report(report: dict, path: str | None, prefix: str) -> None:
    """The run's numbers as JSON: ``path``, or bench/out/<prefix>-<unix time>.json."""
    out = Path(path) if path else HERE / "out" / f"{prefix}-{int(time.time())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, default=_jsonable, indent=1))
    print(f"results: {out}")


def _jsonable(value: object) -> object:
    if hasattr(value, "__dataclass_fields__"):
        return dict(value.__dict__)
    return str(value)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small checkpoints (~30 s)")
    size.add_argument("--large", action="store_true", help="add a 1B-parameter fp32 checkpoint")
    size.add_argument(
        "--lipschitz",
        action="store_true",
        help="only sncli lipschitz vs inspect on ResNet-18 and VGG-11 state dicts (target ≤ 5×)",
    )
    parser.add_argument(
        "--spectrum",
        action="store_true",
        help="only sncli spectrum (full spectra) vs a float64 svdvals loop and WeightWatcher "
        "analyze() on the 302M-parameter checkpoint (--quick: a small one)",
    )
    size.add_argument(
        "--graph",
        action="store_true",
        help="only the bound over ONNX graphs: MNIST MLP, ResNet-18 at 224, LSTM (bench/graph.py)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of sncli exact/auto (median)")
    parser.add_argument("--workdir", help="generate checkpoints here and keep them")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--json", help="where to write the results (default bench/out/)")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    if arguments.child:
        print(json.dumps(child(arguments.child[0], arguments.child[1], arguments.method)))
    else:
        benchmark(arguments)
