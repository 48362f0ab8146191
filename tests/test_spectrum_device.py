"""``spectrum --device`` (issue 26): the singular values computed by the torch float64 kernels on
a GPU, the metrics on the CPU, and the CPU fallback with ``inspect``'s note.

Without a GPU the device branch is run with "cuda" resolved to torch's CPU device
(``sncli.spectrum._compute_device`` patched): the matrix is moved to a torch device and the
torch kernels run, the NumPy kernels forbidden. Its spectra are compared with the NumPy path's
to the tolerances of tests/test_torch_free.py (same algorithms in float64 on another library):
1e-11 relative for every float (σ_i included: ≥ 4·ε·(σ₁/σᵢ)², the Gram method's error, where
that is larger; σ_min and κ likewise); top-K Lanczos values 1e-9 relative (or 1e-7·σ₁ absolute:
a zero singular value's λ is rounding noise ε·λ₁, so its σ = √λ is ~√ε·σ₁), error estimates
1e-8 absolute. On a real GPU (skipped without CUDA) the GPU's spectra are compared with the CPU's at
1e-10 relative (cuBLAS/cuSOLVER sum in another order; same ε·(σ₁/σᵢ)² allowance).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import sncli
import sncli.spectrum as spectrum_module
from sncli.cli import app
from sncli.numerics import svd_numpy
from sncli.run.dask import SchedulerError
from sncli.spectrum import METRICS, SpectrumOptions, SpectrumReport, spectra

REPO = Path(__file__).resolve().parent.parent
EPS = 2.0**-52
NO_CUDA = not torch.cuda.is_available()

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Layers taking every branch of the full-spectrum kernel: a side ≥ 1024 (lower block
    triangle Gram, several chunks), bf16 and fp16 upcasts, a wide matrix, a conv, a rank-3
    layer (near-singular: gesdd) and a 1×n row (vector norm)."""
    rng = np.random.default_rng(7)

    def gaussian(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.from_numpy(rng.standard_normal(shape) / math.sqrt(shape[-1])).to(dtype)

    low = rng.standard_normal((90, 3)) @ rng.standard_normal((3, 70))
    tensors = {
        "big.weight": gaussian(1100, 1030, dtype=torch.bfloat16),
        "wide.weight": gaussian(60, 300, dtype=torch.float16),
        "mid.weight": gaussian(200, 150, dtype=torch.float64),
        "conv.weight": gaussian(16, 8, 3, 3),
        "low.weight": torch.from_numpy(low).float(),
        "row.weight": gaussian(1, 64),
    }
    path = tmp_path_factory.mktemp("device") / "model.safetensors"
    save_file(tensors, str(path))
    return path


def _run(path: Path, exclude: tuple[str, ...] = (), **options: Any) -> SpectrumReport:
    with sncli.open_checkpoint(path) as ckpt:
        return spectra(ckpt, options=SpectrumOptions(**options), exclude=exclude)


def _value_tolerance(values: np.ndarray) -> np.ndarray:
    """Relative tolerance of each σᵢ: 1e-11, or 4·ε·(σ₁/σᵢ)² where the Gram method's error is
    larger (module docstring)."""
    with np.errstate(divide="ignore"):
        ratio = np.where(values > 0, values[0] / values, np.inf)
    return np.maximum(1e-11, 4 * EPS * ratio**2)


def _assert_same(device: SpectrumReport, cpu: SpectrumReport, scale: float = 1.0) -> None:
    """Every layer's values and metrics agree (module docstring); ``scale`` widens the float64
    tolerances (1e-10 for a real GPU)."""
    assert [x.name for x in device.layers] == [x.name for x in cpu.layers]
    assert [s.name for s in device.skipped] == [s.name for s in cpu.skipped]
    for a, b in zip(device.layers, cpu.layers, strict=True):
        assert (a.algorithm, a.bound, a.complete, a.count) == (
            b.algorithm,
            b.bound,
            b.complete,
            b.count,
        )
        if b.bound == "lower":  # top-K float64 Lanczos to a 1e-8 target
            # σ = √λ: a λ near 0 (the rank-3 layer's 4th) is ε·λ₁ noise, σ ~ √ε·σ₁ = 1.5e-8·σ₁.
            floor = 1e-7 * float(b.values[0])
            np.testing.assert_allclose(a.values, b.values, rtol=1e-9 * scale, atol=floor)
            real = b.values > floor  # a noise value's relative error estimate is noise too
            np.testing.assert_allclose(
                a.error_estimates[real], b.error_estimates[real], atol=1e-8, rtol=0
            )
        else:
            allowed = scale * _value_tolerance(b.values) * b.values + 1e-300
            assert np.all(np.abs(a.values - b.values) <= allowed), a.name
        kappa = b.condition_number or 0.0
        for name in (*METRICS, *cpu.extras):
            x, y = getattr(a, name), getattr(b, name)
            if isinstance(y, float) and isinstance(x, float):
                rel = 1e-11 * scale
                if name in ("sigma_min", "condition_number"):
                    rel = max(rel, 4 * EPS * kappa * kappa)
                assert math.isclose(x, y, rel_tol=rel, abs_tol=1e-300), (a.name, name, x, y)
            else:
                assert x == y, (a.name, name, x, y)


def _device_as_torch_cpu(monkeypatch: pytest.MonkeyPatch, forbid: bool = True) -> list[Any]:
    """Resolve every GPU request to torch's CPU device, forbid the NumPy kernels (``forbid``;
    the randomized ESD runs them on the CPU by design), and record what ``_to_device`` hands
    the kernels."""
    monkeypatch.setattr(spectrum_module, "_compute_device", lambda _: ("cpu", None))

    def numpy_kernel(*_: object, **__: object) -> None:
        raise AssertionError("the device branch must run torch's kernels")

    names = ("singular_values_array", "top_singular_values_array", "frobenius_norm_array")
    for name in names if forbid else ():
        monkeypatch.setattr(svd_numpy, name, numpy_kernel)
    moved: list[Any] = []
    real = spectrum_module._to_device

    def spy(matrix: Any, device: str) -> Any:
        result = real(matrix, device)
        moved.append(result)
        return result

    monkeypatch.setattr(spectrum_module, "_to_device", spy)
    return moved


@pytest.mark.parametrize(
    "options",
    [{}, {"top_k": 4}, {"hill": True, "snr": True, "mp_fit": True, "randomize": True}],
    ids=["full", "top-k", "allocation"],
)
def test_device_branch_matches_the_numpy_path(
    model: Path, options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The rank-3 layer's 67 zero σ are rounding noise (~1e-16·σ₁, library-dependent): the
    # allocation metrics fitted to them (α-Hill…) differ in their 10th digit, so it is left out.
    exclude = ("low",) if options.get("hill") else ()
    cpu = _run(model, exclude, **options)
    moved = _device_as_torch_cpu(monkeypatch, forbid="randomize" not in options)
    device = _run(model, exclude, device="cuda", **options)
    assert len(moved) == len(cpu.layers) == 6 - len(exclude)
    assert all(isinstance(m, torch.Tensor) and m.device.type == "cpu" for m in moved)
    assert {m.dtype for m in moved} >= {torch.bfloat16, torch.float16, torch.float64}
    algorithms = {layer.algorithm for layer in device.layers}
    if not options:  # every branch of the full-spectrum kernel was taken
        assert algorithms == {
            "gram-eigvalsh-float64",
            "gesdd-float64 (near-singular)",
            "vector-norm-float64",
        }
    _assert_same(device, cpu)


def test_device_branch_on_pytorch_files(
    disc_legacy_path: Path, transformer_index_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Torch tensors (a PyTorch file) go to the device as they are; sharded safetensors too."""
    references = [_run(p) for p in (disc_legacy_path, transformer_index_path)]
    _device_as_torch_cpu(monkeypatch)
    for path, cpu in zip((disc_legacy_path, transformer_index_path), references, strict=True):
        _assert_same(_run(path, device="cuda:0"), cpu)


@pytest.mark.skipif(not NO_CUDA, reason="checks the fallback without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_fallback_to_cpu_with_a_note(model: Path, device: str) -> None:
    result = CliRunner().invoke(
        app, ["spectrum", str(model), "--device", device, "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    assert f"device {device!r} requested but CUDA is not available" in result.stderr
    data = json.loads(result.stdout)
    assert "device" not in data  # computed on the CPU: the CPU run's JSON
    plain = CliRunner().invoke(app, ["spectrum", str(model), "--format", "json"])
    assert plain.exit_code == 0
    assert data == json.loads(plain.stdout)
    report = _run(model, device=device)
    assert report.device == "cpu"
    assert any("CUDA is not available" in note for note in report.notes)


def test_device_is_shown_when_not_the_cpu(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The JSON's ``device`` and the table's caption name the GPU (here a stand-in name)."""
    monkeypatch.setattr(spectrum_module, "_compute_device", lambda _: ("cpu", None))
    real = spectra

    def on_gpu(*args: Any, **kwargs: Any) -> SpectrumReport:
        import dataclasses

        return dataclasses.replace(real(*args, **kwargs), device="cuda:0")

    import sncli.cli.spectrum as cli_spectrum

    monkeypatch.setattr(cli_spectrum, "spectra", on_gpu)
    result = CliRunner().invoke(app, ["spectrum", str(model), "--device", "cuda", "-f", "big"])
    assert result.exit_code == 0, result.output
    assert "Full spectra in float64, on cuda:0" in " ".join(result.stdout.split())
    result = CliRunner().invoke(
        app, ["spectrum", str(model), "--device", "cuda", "--format", "json"]
    )
    assert json.loads(result.stdout)["device"] == "cuda:0"


def test_device_with_a_scheduler_is_refused(model: Path) -> None:
    with pytest.raises(SchedulerError, match="--device cuda"):
        _run(model, device="cuda", scheduler="tcp://127.0.0.1:1")


def test_cpu_request_does_not_import_torch() -> None:
    """``--device cpu`` (the default) on safetensors stays torch-free: only a GPU request
    resolves the device through torch."""
    script = (
        "import sys\n"
        "from sncli.spectrum import _compute_device\n"
        "assert _compute_device('cpu') == (None, None)\n"
        "assert 'torch' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(NO_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("options", [{}, {"top_k": 4}], ids=["full", "top-k"])
def test_gpu_matches_cpu(
    model: Path, transformer_index_path: Path, options: dict[str, Any]
) -> None:  # pragma: no cover - needs a GPU
    for path in (model, transformer_index_path):
        cpu = _run(path, **options)
        gpu = _run(path, device="cuda", **options)
        assert gpu.device.startswith("cuda")
        assert not any("computed on the CPU" in note for note in gpu.notes)
        _assert_same(gpu, cpu, scale=10.0)


def test_gpu_bench_quick(tmp_path: Path) -> None:
    """bench/gpu.py --quick: tiny synthetic checkpoints, CPU and (where present) CUDA runs;
    without CUDA it says so and exits 0."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu.py"), "--quick", "--dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cpu" in done.stdout
    if NO_CUDA:
        assert "no CUDA" in done.stdout
    else:  # pragma: no cover - needs a GPU
        assert "max rel. diff" in done.stdout
    assert not list(tmp_path.iterdir())  # the synthetic files are removed


def test_layer_spectrum_warns_when_the_gpu_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one-layer API says (a RuntimeWarning) that a requested GPU was not there."""
    import torch
    from safetensors.torch import save_file

    from sncli.checkpoint import open_checkpoint
    from sncli.layers import classify
    from sncli.spectrum import SpectrumOptions, layer_spectrum

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = tmp_path / "one.safetensors"
    save_file({"fc.weight": torch.randn(8, 4, dtype=torch.float64)}, path)
    with open_checkpoint(path) as ckpt:
        layer = next(layer for layer in classify(ckpt).layers if layer.name == "fc.weight")
        with pytest.warns(RuntimeWarning, match="CUDA is not available"):
            spectrum = layer_spectrum(ckpt, layer, SpectrumOptions(device="cuda"))
    assert spectrum.sigma_max > 0
