"""``sncli lipschitz``'s upper bounds never import torch (issue 26 item 1): on an exported ONNX
CNN with BatchNorm and residual blocks (conv operator norms, circular DFT and torus bounds, the
zero-padding lower bound, Fourier LipSDP segments), an ONNX MLP (LipSDP-Neuron's descent) and a
safetensors state dict with convolutions (conv operator-norm factors).

Each case runs ``sncli lipschitz`` in a subprocess where torch cannot be imported (the
meta-path finder of tests/test_torch_free.py) and the same command in this process, torch
loaded (the safetensors case reads the weights as torch tensors, ``Checkpoint.numpy_native``
False: the path of a PyTorch file); every JSON value is compared. The ONNX lower-bound search
(lower.py/ascent.py) still runs on torch, so the ONNX cases pass ``--no-lower``.

Determinism: the Fourier LipSDP search of :mod:`sncli.numerics.conv_program` runs until a
wall-clock deadline, so both runs give it a clock that ticks once per reading (the same
iterations in both processes); the MLP's ``--chain-seconds 60`` leaves LipSDP-Neuron's
descent to its step and convergence rules (the CNN's chains lie inside conv segments, where
only ECLipsE-Fast runs). Then the two runs execute the same NumPy code on the same float64
inputs: upper bounds must agree to 1e-9 relative, lower bounds (float32 power iterations on the
same start) to 1e-6. Measured: the ONNX runs identical; the state dict read as torch tensors
within 1.7e-15 (σ of the reshaped kernels and the linear layer by torch's LAPACK).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from sncli.checkpoint import Checkpoint
from sncli.cli import app
from tests.no_torch import BLOCK_TORCH, RUN_SNCLI, run_without_torch

REPO = Path(__file__).resolve().parent.parent

#: tests/no_torch.py's runner, with conv_program's clock replaced by a counter (each reading
#: 0.25 s later), so the segment search's budget is counted in steps, not seconds.
NO_TORCH = (
    BLOCK_TORCH
    + """
class Ticks:
    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        self.now += 0.25
        return self.now

from sncli.numerics import conv_program

conv_program.time = Ticks()
"""
    + RUN_SNCLI
)

UPPER_TOL = 1e-9
LOWER_TOL = 1e-6


class _Ticks:
    """A stand-in for the ``time`` module whose clock advances 0.25 s per reading (NO_TORCH's
    ``Ticks``): conv_program's 3 s budget is 12 readings in both runs."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 0.25
        return self.now


class _Residual(torch.nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.b1 = torch.nn.BatchNorm2d(channels)
        self.c2 = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.b2 = torch.nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))


class _ResNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 5, padding=2)
        self.bn = torch.nn.BatchNorm2d(8)
        self.r1 = _Residual(8)
        self.down = torch.nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.r2 = _Residual(12)
        self.fc = torch.nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.r1(torch.relu(self.bn(self.stem(x))))
        x = self.r2(torch.relu(self.down(x)))
        return self.fc(x.mean(dim=(2, 3)))


def _export(model: torch.nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(shape),), str(path), dynamo=False)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("torch_free_bounds")
    torch.manual_seed(0)
    cnn = _ResNet()
    for module in cnn.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 2.0)
            module.running_mean.uniform_(-1, 1)
            module.weight.data.uniform_(0.5, 2.0)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(20, 48),
        torch.nn.ReLU(),
        torch.nn.Linear(48, 48),
        torch.nn.ReLU(),
        torch.nn.Linear(48, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 5),
    )
    state = {k: v.contiguous() for k, v in cnn.state_dict().items()}
    rng = np.random.default_rng(7)
    state["deep.weight"] = torch.from_numpy(rng.standard_normal((40, 24, 3, 3))).float()
    paths = {
        "cnn": _export(cnn, (1, 3, 20, 20), root / "cnn.onnx"),
        "mlp": _export(mlp, (1, 20), root / "mlp.onnx"),
        "state": root / "cnn.safetensors",
    }
    save_file(state, str(paths["state"]))
    return paths


def _torch_free(args: list[str]) -> dict[str, Any]:
    done = run_without_torch(args, script=NO_TORCH)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _in_process(args: list[str], monkeypatch: pytest.MonkeyPatch, arrays: bool) -> dict[str, Any]:
    from sncli.numerics import conv_program

    monkeypatch.setattr(conv_program, "time", _Ticks())
    if not arrays:
        monkeypatch.setattr(Checkpoint, "numpy_native", property(lambda _: False))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _compare(free: Any, reference: Any, path: str = "") -> int:
    """Every value equal (floats: UPPER_TOL, or LOWER_TOL under a key naming a lower bound);
    returns how many floats were compared."""
    if isinstance(reference, dict):
        assert isinstance(free, dict) and free.keys() == reference.keys(), path
        return sum(_compare(free[k], reference[k], f"{path}.{k}") for k in reference)
    if isinstance(reference, list):
        assert isinstance(free, list) and len(free) == len(reference), path
        pairs = enumerate(zip(free, reference, strict=True))
        return sum(_compare(a, b, f"{path}[{i}]") for i, (a, b) in pairs)
    if isinstance(reference, float) and isinstance(free, float):
        tol = LOWER_TOL if "lower" in path.rsplit(".", 1)[-1] else UPPER_TOL
        assert free == pytest.approx(reference, rel=tol, abs=1e-300), path
        return 1
    assert free == reference, path
    return 0


def _methods(result: dict[str, Any]) -> str:
    return json.dumps(result, ensure_ascii=False)


@pytest.mark.parametrize(
    ("name", "extra", "arrays", "expected"),
    [
        (
            "cnn",
            ["--no-lower", "--grid", "8"],
            True,
            ("Fourier LipSDP", "(DFT", "upper bound τ*", "lower bound from a test input"),
        ),
        ("mlp", ["--no-lower", "--chain-seconds", "60"], True, ("LipSDP-Neuron",)),
        ("state", ["--conv", "operator"], False, ("upper bound τ*",)),
    ],
)
def test_lipschitz_upper_bounds_without_torch(
    files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    extra: list[str],
    arrays: bool,
    expected: tuple[str, ...],
) -> None:
    args = ["lipschitz", str(files[name]), "--format", "json", *extra]
    free = _torch_free(args)
    reference = _in_process(args, monkeypatch, arrays)
    for word in expected:  # the routes this case is meant to take were taken
        assert word in _methods(free), word
    assert _compare(free, reference) >= 3
    assert free["bound"] > 0
