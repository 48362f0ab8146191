"""lipschitz: the product bound, its validity statement, certified factors and the CLI gate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from sncli.checkpoint import open_checkpoint
from sncli.cli import app
from sncli.errors import EXIT_BOUND_EXCEEDED, NumericalError
from sncli.lipschitz import (
    Assumption,
    ConvPolicy,
    LipschitzOptions,
    Padding,
    architecture_caveats,
    lipschitz_report,
)

runner = CliRunner()


def svd_sigma(matrix: torch.Tensor) -> float:
    return float(scipy.linalg.svdvals(matrix.double().reshape(matrix.shape[0], -1).numpy())[0])


def report_for(path: Path, **options: object):  # type: ignore[no-untyped-def]
    with open_checkpoint(path) as ckpt:
        return lipschitz_report(ckpt, LipschitzOptions(**options))  # type: ignore[arg-type]


SEQUENTIAL = Assumption.SEQUENTIAL


def test_mlp_product_equals_product_of_float64_svd(mlp_path: Path) -> None:
    report = report_for(mlp_path, assume=SEQUENTIAL)
    tensors = load_file(str(mlp_path))
    truth = math.prod(svd_sigma(tensors[f"{i}.weight"]) for i in (0, 2, 4))
    assert report.bound == pytest.approx(truth, rel=1e-11)
    assert report.bound >= truth
    assert report.certified and report.valid_architecture and report.architecture == "assumed"
    assert [f.name for f in report.factors] == ["0.weight", "2.weight", "4.weight"]
    assert sum(abs(s) for s in report.shares() if s is not None) == pytest.approx(1.0)
    assert report.running_log10()[-1] == pytest.approx(report.log10_bound)


def test_certified_mode_upper_bounds_every_factor(mlp_path: Path) -> None:
    report = report_for(mlp_path, certified=True, assume=SEQUENTIAL)
    tensors = load_file(str(mlp_path))
    for factor in report.factors:
        truth = svd_sigma(tensors[factor.name])
        assert factor.certified
        assert factor.sigma_lower is not None and factor.sigma_upper is not None
        assert factor.sigma_lower <= truth * (1 + 1e-12)
        assert factor.sigma_upper >= truth
        assert factor.sigma == factor.sigma_upper
        assert factor.sigma_upper <= truth * (1 + 1e-4)
    assert report.certified


def test_power_method_product_is_an_estimate(mlp_path: Path) -> None:
    report = report_for(mlp_path, method="power", assume=SEQUENTIAL)
    assert not report.certified
    assert "estimate" in report.statement()


def test_attention_and_residual_names_invalidate_the_bound(transformer_index_path: Path) -> None:
    report = report_for(transformer_index_path, conv=ConvPolicy.RESHAPE)
    assert not report.valid_architecture and not report.certified
    assert "NOT a valid bound" in report.statement()
    assert any("attention" in c for c in report.caveats)
    assert any(s.name == "model.embed_tokens.weight" for s in report.excluded)
    caveats = architecture_caveats(["blocks.0.shortcut.weight", "blocks.0.conv.weight"])
    assert any("residual" in c for c in caveats)
    assert architecture_caveats(["features.0.weight", "classifier.weight"]) == []


def test_batchnorm_is_a_diagonal_factor(lightning_path: Path) -> None:
    report = report_for(lightning_path, conv=ConvPolicy.RESHAPE)
    state = torch.load(lightning_path, weights_only=True)["state_dict"]
    bn = next(f for f in report.factors if f.kind == "batchnorm")
    prefix = bn.name.removesuffix(".weight")
    gamma, var = state[f"{prefix}.weight"].double(), state[f"{prefix}.running_var"].double()
    expected = float((gamma.abs() / torch.sqrt(var + 1e-5)).max())
    assert bn.sigma == pytest.approx(expected, rel=1e-11) and bn.sigma >= expected
    assert not any(s.name == f"{prefix}.running_mean" for s in report.excluded)
    kinds = [f.kind for f in report.factors]
    assert kinds == ["conv2d", "batchnorm", "conv2d", "batchnorm", "linear"]


def test_reshape_policy_is_never_called_certified(disc_parametrized_path: Path) -> None:
    report = report_for(disc_parametrized_path, conv=ConvPolicy.RESHAPE)
    convs = [f for f in report.factors if f.kind == "conv2d"]
    assert convs and not any(f.certified for f in convs)
    assert not report.certified
    assert "--conv operator" in report.statement()


def test_spectral_norm_layers_use_the_effective_weight(disc_legacy_path: Path) -> None:
    report = report_for(disc_legacy_path, conv=ConvPolicy.RESHAPE)
    state = torch.load(disc_legacy_path, weights_only=True)
    linear = next(f for f in report.factors if f.kind == "linear")
    w, u, v = (state[f"7.weight_{s}"].double() for s in ("orig", "u", "v"))
    sigma_hat = float(u @ w @ v)
    assert linear.sigma == pytest.approx(svd_sigma(w) / sigma_hat, rel=1e-10)
    assert "σ̂" in linear.note


def test_log_space_product_survives_hundreds_of_layers(tmp_path: Path) -> None:
    weights = {f"layers.{i}.weight": torch.eye(4, dtype=torch.float64) * 30 for i in range(400)}
    path = tmp_path / "deep.safetensors"
    save_file(weights, str(path))
    report = report_for(path)
    assert report.log10_bound == pytest.approx(400 * math.log10(30), rel=1e-12)
    assert math.isinf(report.bound)
    result = runner.invoke(app, ["lipschitz", str(path), "--format", "json"])
    data = json.loads(result.stdout)
    assert data["bound"] is None and data["log10_bound"] == pytest.approx(590.848, rel=1e-5)
    assert [layer["name"] for layer in data["layers"]][:3] == [
        "layers.0.weight",
        "layers.1.weight",
        "layers.2.weight",
    ]


def test_non_finite_weights_refuse_a_bound(tmp_path: Path) -> None:
    path = tmp_path / "nan.safetensors"
    save_file({"a.weight": torch.eye(3), "b.weight": torch.full((3, 3), float("inf"))}, str(path))
    with pytest.raises(NumericalError, match="non-finite"):
        report_for(path)
    result = runner.invoke(app, ["lipschitz", str(path)])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "b.weight" in result.stderr


def test_zero_layer_gives_zero_bound(tmp_path: Path) -> None:
    path = tmp_path / "zero.safetensors"
    save_file({"a.weight": torch.eye(3) * 2, "b.weight": torch.zeros(3, 3)}, str(path))
    report = report_for(path)
    assert report.bound == 0.0 and report.log10_bound == -math.inf
    result = runner.invoke(app, ["lipschitz", str(path), "--format", "json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["bound"] == 0.0


def test_fail_above_gate_exit_code(mlp_path: Path) -> None:
    # Without --certified the gate compares the (conditional) bound.
    result = runner.invoke(app, ["lipschitz", str(mlp_path), "--fail-above", "1.0"])
    assert result.exit_code == EXIT_BOUND_EXCEEDED
    assert "exceeds --fail-above" in result.stderr
    result = runner.invoke(app, ["lipschitz", str(mlp_path), "--fail-above", "1.1"])
    assert result.exit_code == 0


def test_json_contract(mlp_path: Path) -> None:
    args = ["lipschitz", str(mlp_path), "--format", "json", "--assume", "sequential"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert {"log10_bound", "bound", "certified", "layers", "statement"} <= set(data)
    assert {"lower", "outputs", "architecture"} <= set(data)
    assert data["lower"] is None and data["outputs"] == []
    assert data["certified"] is True and data["architecture"] == "assumed"
    for layer in data["layers"]:
        assert {"name", "sigma", "sigma_lower", "sigma_upper"} <= set(layer)
        assert layer["sigma_lower"] <= layer["sigma"] <= layer["sigma_upper"]


def explicit_conv_norm(kernel: torch.Tensor, n: int, padding: int, stride: int) -> float:
    """σ of the zero-padded convolution built as an explicit matrix (float64 SVD)."""
    cin = kernel.shape[1]
    eye = torch.eye(cin * n * n, dtype=torch.float64).reshape(-1, cin, n, n)
    out = F.conv2d(eye, kernel.double(), padding=padding, stride=stride)
    return float(scipy.linalg.svdvals(out.reshape(out.shape[0], -1).numpy())[0])


def test_discriminator_operator_bound_above_explicit_truth(disc_parametrized_path: Path) -> None:
    """Acceptance: reshape and operator side by side; certified bound ≥ truth."""
    report = report_for(disc_parametrized_path, certified=True, assume=SEQUENTIAL)
    state = torch.load(disc_parametrized_path, weights_only=True)
    assert report.certified
    for factor in report.factors:
        if factor.kind != "conv2d":
            continue
        prefix = factor.name.removesuffix(".parametrizations.weight.original")
        w = state[factor.name].double()
        u = state[f"{prefix}.parametrizations.weight.0._u"].double()
        v = state[f"{prefix}.parametrizations.weight.0._v"].double()
        effective = w / float(u @ w.reshape(w.shape[0], -1) @ v)
        truth = explicit_conv_norm(effective, n=8, padding=1, stride=2)
        assert factor.sigma_upper is not None and factor.sigma_upper >= truth
        assert factor.reshape_sigma is not None
        assert factor.sigma >= factor.reshape_sigma * (1 - 1e-9)


def test_circular_padding_exact_operator_norm(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    kernel = torch.randn(4, 3, 3, 3, generator=generator, dtype=torch.float64)
    path = tmp_path / "conv.safetensors"
    save_file({"conv.weight": kernel}, str(path))
    report = report_for(path, padding=Padding.CIRCULAR, input_size=(6, 6))
    n, cin = 6, 3
    eye = torch.eye(cin * n * n, dtype=torch.float64).reshape(-1, cin, n, n)
    out = F.conv2d(F.pad(eye, (1, 1, 1, 1), mode="circular"), kernel)
    truth = float(scipy.linalg.svdvals(out.reshape(out.shape[0], -1).numpy())[0])
    assert report.factors[0].sigma == pytest.approx(truth, rel=1e-8)  # exact + rounding margin
    assert report.factors[0].sigma >= truth * (1 - 1e-12)
