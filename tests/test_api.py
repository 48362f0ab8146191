"""The public Python API (issue 28): every name of ``sncli.__all__`` imports from ``sncli``, every
entry point runs on a sample model given by path (results checked against float64 SVD), and
every options dataclass takes an enum's string form or refuses it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import sncli
from sncli.arguments import as_enum

REL = 1e-10  # exact/dense σ against float64 LAPACK SVD of the same float32 weights


def svd_sigmas(path: Path) -> dict[str, float]:
    """σ of every 2-D weight of a safetensors file, from float64 LAPACK."""
    return {
        name: float(np.linalg.svd(value.astype(np.float64), compute_uv=False)[0])
        for name, value in load_file(path).items()
        if value.ndim == 2
    }


def test_every_name_in_all_imports_from_sncli() -> None:
    namespace: dict[str, object] = {}
    exec("from sncli import *", namespace)  # the star import is what is tested
    missing = [name for name in sncli.__all__ if name not in namespace]
    assert not missing
    for name in ("spectra", "lipschitz_report", "graph_lipschitz", "plan_normalization"):
        assert name in sncli.__all__
    assert "sncli" in repr(sncli.spectra.__module__)
    assert sorted(sncli.__all__) == sncli.__all__
    with pytest.raises(AttributeError, match="no_such_name"):
        sncli.no_such_name  # noqa: B018


def test_importing_sncli_imports_no_engine_beyond_inspect() -> None:
    code = (
        "import sys, sncli; "
        "print(sorted(m for m in ('torch', 'numpy', 'sncli.normalize', 'sncli.lipschitz', "
        "'sncli.report', 'sncli.diff') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_inspect_spectrum_by_path(mlp_path: Path) -> None:
    truth = svd_sigmas(mlp_path)
    report = sncli.spectral_norms(str(mlp_path), options=sncli.MethodOptions(method="exact"))
    assert report.method == "exact"
    assert {layer.name for layer in report.layers} == set(truth)
    for layer in report.layers:
        assert layer.sigma == pytest.approx(truth[layer.name], rel=REL)
    spectrum = sncli.spectra(mlp_path)
    for layer in spectrum.layers:
        assert layer.values[0] == pytest.approx(truth[layer.name], rel=REL)
    with sncli.open_checkpoint(mlp_path) as ckpt:  # an opened checkpoint is left open
        assert sncli.spectral_norms(ckpt, kinds=["linear"]).layers
        assert sncli.spectral_norms(ckpt, include=r"^2\.").layers[0].name == "2.weight"


def test_lipschitz_by_path_takes_the_string_assumption(mlp_path: Path) -> None:
    truth = svd_sigmas(mlp_path)
    by_string = sncli.lipschitz_report(mlp_path, sncli.LipschitzOptions(assume="sequential"))
    by_enum = sncli.lipschitz_report(
        str(mlp_path), sncli.LipschitzOptions(assume=sncli.Assumption.SEQUENTIAL)
    )
    plain = sncli.lipschitz_report(mlp_path)
    assert by_string.certified and by_enum.certified and not plain.certified
    assert by_string.bound == by_enum.bound == plain.bound
    assert by_string.bound == pytest.approx(float(np.prod(list(truth.values()))), rel=1e-9)


def test_graph_lipschitz_by_path_and_checkpoint(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    weight = np.array([[3.0, 1.0, 0.0], [0.0, 1.0, 2.0]], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "lin.onnx"
    path.write_bytes(model.SerializeToString())
    sigma = float(np.linalg.svd(weight.astype(np.float64), compute_uv=False)[0])
    assert sncli.is_graph_model(path)
    report = sncli.graph_lipschitz(str(path), lower=False)
    assert report.bound == pytest.approx(sigma, rel=1e-6)
    with sncli.open_checkpoint(path) as ckpt:
        assert sncli.graph_lipschitz(ckpt, lower=False).bound == report.bound


def test_normalize_plan_and_write_by_path(mlp_path: Path, tmp_path: Path) -> None:
    options = sncli.NormalizeOptions(target=0.5, mode="clip", method="exact")
    assert options.mode is sncli.NormalizeMode.CLIP and options.method is sncli.Method.EXACT
    plan = sncli.plan_normalization(str(mlp_path), options)
    out = tmp_path / "out.safetensors"
    result = sncli.normalize_checkpoint(str(mlp_path), plan, str(out))
    assert result.layers
    after = svd_sigmas(out)
    for name, before in svd_sigmas(mlp_path).items():
        assert after[name] == pytest.approx(min(before, 0.5), rel=1e-6)  # float32 rounding


def test_diff_report_recover_track_by_path(samples: Path, tmp_path: Path) -> None:
    a, b = samples / "mlp.safetensors", samples / "mlp_finetuned.safetensors"
    ta, tb = load_file(a), load_file(b)
    diff = sncli.diff_checkpoints(str(a), str(b), options=sncli.MethodOptions(method="exact"))
    assert diff.layers
    for layer in diff.layers:
        delta = tb[layer.name].astype(np.float64) - ta[layer.name].astype(np.float64)
        truth = float(np.linalg.svd(delta, compute_uv=False)[0])
        assert layer.delta_sigma == pytest.approx(truth, rel=1e-6)
    report = sncli.build_report(a, b)
    assert isinstance(report, sncli.ModelReport) and report.diff is not None
    assert report.checkpoint == str(a)
    copy = tmp_path / "mlp.safetensors"
    shutil.copy(a, copy)
    assert sncli.recover(str(copy)) == []  # nothing unfinished
    track = sncli.track([str(a), str(b)], steps=[0, 1])
    assert [point.step for point in track.checkpoints] == [0, 1]


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: sncli.MethodOptions(method="fastest"), "MethodOptions.method"),
        (lambda: sncli.LipschitzOptions(assume="residual"), "LipschitzOptions.assume"),
        (lambda: sncli.LipschitzOptions(conv="toeplitz"), "LipschitzOptions.conv"),
        (lambda: sncli.LipschitzOptions(padding="reflect"), "LipschitzOptions.padding"),
        (lambda: sncli.NormalizeOptions(mode="squash"), "NormalizeOptions.mode"),
    ],
)
def test_unknown_enum_values_are_refused(build, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        build()


def test_enum_strings_become_members() -> None:
    options = sncli.LipschitzOptions(
        method="power", conv="reshape", padding="circular", assume="sequential", include="^2"
    )
    assert options.method is sncli.Method.POWER and options.conv is sncli.ConvPolicy.RESHAPE
    assert options.padding is sncli.Padding.CIRCULAR
    assert options.assume is sncli.Assumption.SEQUENTIAL
    assert options.include == ("^2",)
    assert sncli.TrackOptions(include="^2").include == ("^2",)
    assert as_enum("exact", sncli.Method, "m") is sncli.Method.EXACT
    with pytest.raises(TypeError, match="Checkpoint or a path"):
        sncli.spectral_norms(42)  # type: ignore[arg-type]
