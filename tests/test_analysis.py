"""spectral_norms on the committed sample checkpoints and on small generated ones.

Every layer's σ is compared with float64 LAPACK on the layer's reshaped matrix (the matrix
torch's spectral_norm uses): ``exact``/``dense`` to 1e-10, ``auto``/``lanczos`` to their 1e-4
error target and never above σ, ``power`` never above σ.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import sncli
from sncli.analysis import (
    InspectReport,
    LayerSigma,
    MethodOptions,
    SortKey,
    measure_layer,
    sort_layers,
    spectral_norms,
)
from sncli.errors import CheckpointError, NoLayersMatchedError
from sncli.layers import LayerKind, classify
from sncli.numerics.spectral import BoundKind, Method, as_matrix
from sncli.parametrizations import SpectralNormStyle

SAMPLE_FIXTURES = [
    "mlp_path",
    "disc_parametrized_path",
    "disc_legacy_path",
    "lightning_path",
    "transformer_index_path",
]


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Small matrices: one torch thread avoids oversubscribing a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def svd_sigma(matrix: torch.Tensor) -> float:
    return float(torch.linalg.svdvals(matrix.double())[0])


def reference_sigmas(path: Path) -> dict[str, float]:
    """float64 SVD of every classified layer's reshaped matrix, read independently."""
    with sncli.open_checkpoint(path) as ckpt:
        return {
            layer.name: svd_sigma(as_matrix(ckpt.load(layer.name), layer.reshape_dim))
            for layer in classify(ckpt).layers
        }


def analyse(path: Path, **options: object) -> InspectReport:
    with sncli.open_checkpoint(path) as ckpt:
        return spectral_norms(ckpt, options=MethodOptions(**options))  # type: ignore[arg-type]


def assert_accurate(layer: LayerSigma, expected: float) -> None:
    error = (expected - layer.sigma) / expected
    if layer.bound is BoundKind.LOWER:
        assert error >= -1e-12, f"{layer.name}: {layer.sigma} above σ={expected}"
    if layer.method in (Method.EXACT, Method.DENSE) or layer.bound is BoundKind.EXACT:
        assert abs(error) <= 1e-10, f"{layer.name}: {error:.1e}"
    elif layer.method is not Method.POWER:
        assert abs(error) <= 1e-4, f"{layer.name}: {error:.1e}"


@pytest.mark.parametrize("fixture", SAMPLE_FIXTURES)
@pytest.mark.parametrize("method", list(Method))
def test_sample_models_match_float64_svd(
    fixture: str, method: Method, request: pytest.FixtureRequest
) -> None:
    path = request.getfixturevalue(fixture)
    expected = reference_sigmas(path)
    report = analyse(path, method=method)
    assert report.method is method
    assert [layer.name for layer in report.layers] == list(expected)
    for layer in report.layers:
        assert layer.method is method
        assert_accurate(layer, expected[layer.name])
    assert report.seconds is not None and report.seconds >= 0
    assert report.device == "cpu"


def test_auto_is_the_default(mlp_path: Path) -> None:
    assert MethodOptions().method is Method.AUTO
    report = analyse(mlp_path)
    assert report.method is Method.AUTO
    kinds = {layer.algorithm.split("-")[0] for layer in report.layers}
    assert kinds <= {"dense", "block"}


@pytest.mark.parametrize("fixture", ["disc_parametrized_path", "disc_legacy_path"])
def test_spectral_norm_checkpoints(fixture: str, request: pytest.FixtureRequest) -> None:
    """σ̂ = uᵀWv from the stored vectors, and the σ of W/σ̂ the model really uses (≥ 1)."""
    path = request.getfixturevalue(fixture)
    report = analyse(path, method=Method.EXACT)
    state = torch.load(path, weights_only=True)
    style = SpectralNormStyle.LEGACY if "legacy" in fixture else SpectralNormStyle.PARAMETRIZATION
    assert len(report.layers) == 4
    for layer in report.layers:
        reading = layer.spectral_norm
        assert reading is not None and reading.style is style
        if style is SpectralNormStyle.LEGACY:
            base = layer.name.removesuffix("_orig")
            u, v = state[base + "_u"], state[base + "_v"]
        else:
            base = layer.name.removesuffix(".original")
            u, v = state[base + ".0._u"], state[base + ".0._v"]
        matrix = state[layer.name].double().reshape(layer.matrix_shape)
        sigma_hat = float(u.double() @ matrix @ v.double())
        assert reading.sigma_stored_estimate == pytest.approx(sigma_hat, rel=1e-12)
        # u, v are unit vectors only to float32 rounding, so σ̂ ≤ σ holds to ~1e-7
        assert sigma_hat <= layer.sigma * (1 + 1e-6)
        assert reading.sigma_effective == pytest.approx(layer.sigma / sigma_hat, rel=1e-12)
        assert reading.sigma_effective >= 1 - 1e-6
        effective = svd_sigma(matrix / sigma_hat)
        assert reading.sigma_effective == pytest.approx(effective, rel=1e-10)


def test_legacy_version_0_layout(tmp_path: Path) -> None:
    """Old spectral_norm dicts store the normalized weight and u but no v."""
    generator = torch.Generator().manual_seed(0)
    raw = torch.randn(20, 12, generator=generator, dtype=torch.float64)
    normalized = raw / 3.0
    path = tmp_path / "v0.pt"
    torch.save(
        {"fc.weight_orig": raw, "fc.weight_u": torch.randn(20), "fc.weight": normalized}, path
    )
    (layer,) = analyse(path, method=Method.EXACT).layers
    reading = layer.spectral_norm
    assert reading is not None and "version-0" in reading.note
    assert reading.sigma_effective == pytest.approx(svd_sigma(normalized), rel=1e-12)
    assert reading.sigma_stored_estimate == pytest.approx(3.0, rel=1e-12)


SN_APIS = {
    "legacy": nn.utils.spectral_norm,
    "parametrization": nn.utils.parametrizations.spectral_norm,
}


def trained_sn_conv_transpose(api: str) -> nn.Module:
    """A real SN ConvTranspose2d(8, 8, 4) after a few train-mode forwards (power iterations)."""
    torch.manual_seed(0)
    module = SN_APIS[api](nn.ConvTranspose2d(8, 8, 4))
    module.train()
    with torch.no_grad():
        for _ in range(4):
            module(torch.randn(2, 8, 5, 5))
        module.eval()
        module(torch.randn(1, 8, 5, 5))  # legacy SN sets .weight in a forward pre-hook
    return module


def torch_used_sigma(module: nn.Module, dim: int = 1) -> float:
    """float64 SVD of the weight the module really uses (W/σ̂), reshaped along ``dim``."""
    return svd_sigma(as_matrix(module.weight.detach().double(), dim))


@pytest.mark.parametrize("api", list(SN_APIS))
def test_square_sn_conv_transpose_sigma_effective(tmp_path: Path, api: str) -> None:
    """Issue 10, defect 2: in == out channels; the stored u, v pick PyTorch's dim-1 reshape."""
    module = trained_sn_conv_transpose(api)
    path = tmp_path / f"{api}.pt"
    torch.save(module.state_dict(), path)
    expected = torch_used_sigma(module)
    assert abs(torch_used_sigma(module, 0) / expected - 1) > 0.01  # the wrong reshape differs
    (layer,) = analyse(path, method=Method.EXACT).layers
    assert layer.transposed and layer.matrix_shape == (8, 128)
    assert layer.matrix == "reshape(out, in*k) [transposed conv: dim 1 first]"
    assert layer.reshape_note is None
    reading = layer.spectral_norm
    assert reading is not None and reading.sigma_effective is not None
    # module.weight is W/σ̂ rounded to float32: agreement to float32 accuracy
    assert reading.sigma_effective == pytest.approx(expected, rel=1e-6)
    raw = module.state_dict()[layer.name].double()
    assert layer.sigma == pytest.approx(svd_sigma(as_matrix(raw, 1)), rel=1e-10)


WEIGHT_NORMS = {
    "legacy": nn.utils.weight_norm,
    "parametrization": nn.utils.parametrizations.weight_norm,
}


def weight_norm_model(style: str) -> nn.Module:
    """Linear, Conv1d (HiFi-GAN style, dim 0) and Conv2d under one of PyTorch's weight norms."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Conv1d(4, 8, 7), nn.Conv2d(3, 4, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # legacy weight_norm is deprecated
        for index in range(3):
            WEIGHT_NORMS[style](model[index])
    with torch.no_grad():  # make g differ from ‖v‖, so W is not v
        for index in range(3):
            weight_g = (
                model[index].parametrizations.weight.original0
                if style == "parametrization"
                else model[index].weight_g
            )
            weight_g.mul_(torch.linspace(0.5, 3.0, weight_g.numel()).reshape(weight_g.shape))
        model[0](torch.randn(2, 6))  # legacy weight norm recomputes .weight in a pre-hook
        model[1](torch.randn(1, 4, 12))
        model[2](torch.randn(1, 3, 6, 6))
    return model


@pytest.mark.parametrize("style", list(WEIGHT_NORMS))
@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_weight_norm_checkpoints(tmp_path: Path, style: str, fmt: str) -> None:
    """Issue 10, defect 4: inspect read weight-norm layers' composed names from the file."""
    model = weight_norm_model(style)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / f"wn.{fmt}"
    if fmt == "pt":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    composed = "weight" if style == "legacy" else "parametrizations.weight"
    expected = {
        f"{index}.{composed}": svd_sigma(as_matrix(model[index].weight.detach().double()))
        for index in range(3)
    }
    for workers in (1, 2):
        report = analyse(path, method=Method.EXACT, workers=workers)
        assert {layer.name: layer.sigma for layer in report.layers} == pytest.approx(
            expected, rel=1e-6
        )
    with sncli.open_checkpoint(path) as ckpt:
        for layer in classify(ckpt).layers:
            measured = measure_layer(ckpt, layer, MethodOptions(method=Method.DENSE))
            assert measured.sigma == pytest.approx(expected[layer.name], rel=1e-6)


def trained_sn_linear(tmp_path: Path, shape: tuple[int, int] = (600, 400)) -> Path:
    torch.manual_seed(1)
    layer = nn.utils.parametrizations.spectral_norm(nn.Linear(shape[1], shape[0], bias=False))
    path = tmp_path / "sn.pt"
    torch.save(layer.state_dict(), path)  # 15 warm-up iterations: u, v are close to the top
    return path


@pytest.mark.parametrize("method", [Method.AUTO, Method.EXACT, Method.LANCZOS])
def test_warm_start_from_stored_vectors(tmp_path: Path, method: Method) -> None:
    path = trained_sn_linear(tmp_path)
    expected = reference_sigmas(path)
    warm = analyse(path, method=method)
    cold = analyse(path, method=method, warm_start=False)
    (layer,) = warm.layers
    assert layer.warm_start is True
    assert cold.layers[0].warm_start is False
    assert layer.iterations <= cold.layers[0].iterations
    assert_accurate(layer, expected[layer.name])
    assert_accurate(cold.layers[0], expected[layer.name])


def test_nan_layer_is_skipped_with_reason(tmp_path: Path) -> None:
    weights = {"a.weight": torch.randn(8, 8), "b.weight": torch.randn(8, 8)}
    weights["b.weight"][2, 3] = math.nan
    weights["b.weight"][4, 4] = math.inf
    path = tmp_path / "nan.safetensors"
    save_file(weights, str(path))
    for workers in (1, 2):
        report = analyse(path, workers=workers)
        assert [layer.name for layer in report.layers] == ["a.weight"]
        skipped = {s.name: s.reason for s in report.skipped}
        assert skipped["b.weight"] == "non-finite values (1 NaN, 1 Inf)"


def test_filters_kinds_and_no_layers(transformer_index_path: Path, tmp_path: Path) -> None:
    with sncli.open_checkpoint(transformer_index_path) as ckpt:
        only = spectral_norms(ckpt, include=[r"layers\.1\.mlp"], exclude=["down"])
        assert [layer.short_name for layer in only.layers] == [
            "model.layers.1.mlp.gate_proj.weight",
            "model.layers.1.mlp.up_proj.weight",
        ]
        embeddings = spectral_norms(ckpt, kinds=[LayerKind.EMBEDDING])
        assert [layer.kind for layer in embeddings.layers] == [LayerKind.EMBEDDING]
        with pytest.raises(NoLayersMatchedError, match="none of its 16 layers matched"):
            spectral_norms(ckpt, include=["no-such-layer"])
    path = tmp_path / "norms.safetensors"
    save_file({"ln.weight": torch.ones(4), "ln.bias": torch.zeros(4)}, str(path))
    with (
        sncli.open_checkpoint(path) as ckpt,
        pytest.raises(NoLayersMatchedError, match="no weight"),
    ):
        spectral_norms(ckpt)


def test_sort_layers(transformer_index_path: Path) -> None:
    layers = analyse(transformer_index_path).layers
    by_sigma = sort_layers(layers, SortKey.SIGMA)
    assert [layer.sigma for layer in by_sigma] == sorted((x.sigma for x in layers), reverse=True)
    assert sort_layers(layers, "sigma", reverse=True) == by_sigma[::-1]
    by_size = sort_layers(layers, SortKey.SIZE)
    sizes = [layer.matrix_shape[0] * layer.matrix_shape[1] for layer in by_size]
    assert sizes == sorted(sizes, reverse=True)
    by_name = sort_layers(by_sigma, SortKey.NAME)
    assert [layer.name for layer in by_name] == [layer.name for layer in layers]


def test_workers_and_progress_do_not_change_results(transformer_index_path: Path) -> None:
    calls: list[tuple[int, int, str]] = []
    with sncli.open_checkpoint(transformer_index_path) as ckpt:
        one = spectral_norms(ckpt, options=MethodOptions(workers=1))
        two = spectral_norms(
            ckpt,
            options=MethodOptions(workers=2),
            progress=lambda done, total, name: calls.append((done, total, name)),
        )
    assert one.layers == two.layers
    assert (one.workers, two.workers) == (1, 2)
    assert [done for done, _, _ in calls] == list(range(17))
    assert calls[0] == (0, 16, one.layers[0].short_name)
    assert calls[-1] == (16, 16, "")


def test_unavailable_device_falls_back_with_a_note(mlp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    report = analyse(mlp_path, device="cuda")
    assert report.device == "cpu"
    assert any("CUDA is not available" in note for note in report.notes)
    assert report.layers == analyse(mlp_path).layers


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device(transformer_index_path: Path) -> None:  # pragma: no cover - needs a GPU
    expected = reference_sigmas(transformer_index_path)
    report = analyse(transformer_index_path, device="cuda")
    assert report.device.startswith("cuda")
    for layer in report.layers:
        assert_accurate(layer, expected[layer.name])


def test_certify_proves_upper_bounds(mlp_path: Path) -> None:
    expected = reference_sigmas(mlp_path)
    for layer in analyse(mlp_path, certify=True).layers:
        assert layer.certified is True
        assert layer.upper is not None and layer.upper >= expected[layer.name]


def test_measure_layer(mlp_path: Path) -> None:
    with sncli.open_checkpoint(mlp_path) as ckpt:
        layer = classify(ckpt).layers[1]
        result = measure_layer(ckpt, layer, MethodOptions(method=Method.EXACT))
        expected = svd_sigma(ckpt.load(layer.name))
    assert result.sigma == pytest.approx(expected, rel=1e-10)


def test_read_error_propagates_from_the_reader_thread(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file({f"l{i}.weight": torch.randn(64, 64) for i in range(6)}, str(path))
    with sncli.open_checkpoint(path) as ckpt:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])  # truncated after opening
        with pytest.raises(CheckpointError, match=r"safetensors|ended while reading"):
            spectral_norms(ckpt, options=MethodOptions(workers=2))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_peak_memory_does_not_grow_with_layer_count(tmp_path: Path) -> None:
    """Tensors are streamed: 96 × 2 MB layers must not add the 192 MB file to peak RSS.

    Peak RSS is the child's VmHWM: ru_maxrss would include the parent's RSS at fork time.
    """
    generator = torch.Generator().manual_seed(0)
    small, many = tmp_path / "small.safetensors", tmp_path / "many.safetensors"
    save_file({"l.weight": torch.randn(1024, 512, generator=generator)}, str(small))
    layers = {f"l{i}.weight": torch.randn(1024, 512, generator=generator) for i in range(96)}
    save_file(layers, str(many))
    script = textwrap.dedent(
        f"""
        import re, sncli
        from sncli.analysis import MethodOptions
        for path in ({str(small)!r}, {str(many)!r}):
            with sncli.open_checkpoint(path) as ckpt:
                sncli.spectral_norms(ckpt, options=MethodOptions(workers=2))
            status = open("/proc/self/status").read()
            print(int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) * 1024)
        """
    )
    run = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    warmed, after = (int(line) for line in run.stdout.split())
    assert after - warmed < 96 << 20, f"peak RSS grew by {(after - warmed) / 2**20:.0f} MB"
