"""lipschitz's performance path on ResNet- and VGG-shaped state dicts (torchvision key names):
the reader/worker pipeline gives the same factors as one thread, the linear factors are float64
SVD's, and the displayed reshape σ costs only the side shown."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import scipy.linalg
import torch
from safetensors.torch import save_file

import sncli.numerics.spectral as spectral_module
from sncli.checkpoint import open_checkpoint
from sncli.lipschitz import LipschitzOptions, lipschitz_report


def svd_sigma(matrix: torch.Tensor) -> float:
    return float(scipy.linalg.svdvals(matrix.double().reshape(matrix.shape[0], -1).numpy())[0])


def _bn(state: dict[str, torch.Tensor], prefix: str, channels: int, g: torch.Generator) -> None:
    state[f"{prefix}.weight"] = 1.0 + 0.2 * torch.randn(channels, generator=g)
    state[f"{prefix}.bias"] = 0.1 * torch.randn(channels, generator=g)
    state[f"{prefix}.running_mean"] = 0.1 * torch.randn(channels, generator=g)
    state[f"{prefix}.running_var"] = 0.5 + torch.rand(channels, generator=g)
    state[f"{prefix}.num_batches_tracked"] = torch.tensor(100)


def resnet_state(width: int = 4) -> dict[str, torch.Tensor]:
    """torchvision ResNet-18's key names and layout (stem, 4 stages × 2 basic blocks,
    downsample 1×1 + BN, fc), channels scaled down from 64…512 to width…8·width."""
    g = torch.Generator().manual_seed(18)
    state: dict[str, torch.Tensor] = {"conv1.weight": torch.randn(width, 3, 7, 7, generator=g)}
    _bn(state, "bn1", width, g)
    inplanes = width
    for stage, planes in enumerate((width, 2 * width, 4 * width, 8 * width), start=1):
        for block in range(2):
            p = f"layer{stage}.{block}"
            first = inplanes if block == 0 else planes
            state[f"{p}.conv1.weight"] = torch.randn(planes, first, 3, 3, generator=g) / 9
            _bn(state, f"{p}.bn1", planes, g)
            state[f"{p}.conv2.weight"] = torch.randn(planes, planes, 3, 3, generator=g) / 9
            _bn(state, f"{p}.bn2", planes, g)
            if block == 0 and stage > 1:
                state[f"{p}.downsample.0.weight"] = torch.randn(planes, inplanes, 1, 1, generator=g)
                _bn(state, f"{p}.downsample.1", planes, g)
        inplanes = planes
    state["fc.weight"] = torch.randn(100, 8 * width, generator=g) / 8
    state["fc.bias"] = torch.zeros(100)
    return state


def vgg_state() -> dict[str, torch.Tensor]:
    """torchvision VGG-11's key names (features.N conv, classifier.0/3/6), channels scaled down."""
    g = torch.Generator().manual_seed(11)
    state: dict[str, torch.Tensor] = {}
    index, channels = 0, 3
    for item in (4, "M", 8, "M", 16, 16, "M", 32, 32, "M", 32, 32, "M"):
        if item == "M":
            index += 1
            continue
        assert isinstance(item, int)
        state[f"features.{index}.weight"] = torch.randn(item, channels, 3, 3, generator=g) / 9
        state[f"features.{index}.bias"] = torch.zeros(item)
        index, channels = index + 2, item
    for index, (rows, cols) in ((0, (256, 32 * 7 * 7)), (3, (256, 256)), (6, (10, 256))):
        state[f"classifier.{index}.weight"] = torch.randn(rows, cols, generator=g) / cols**0.5
        state[f"classifier.{index}.bias"] = torch.zeros(rows)
    return state


def report_for(path: Path, **options: object):  # type: ignore[no-untyped-def]
    with open_checkpoint(path) as ckpt:
        return lipschitz_report(ckpt, LipschitzOptions(**options))  # type: ignore[arg-type]


@pytest.mark.usefixtures("single_torch_thread")
@pytest.mark.parametrize("make", [resnet_state, vgg_state], ids=["resnet18", "vgg11"])
def test_pipeline_factors_do_not_depend_on_workers_or_reader(make, tmp_path: Path) -> None:
    """Workers × single-threaded BLAS and the readinto reader change nothing: the same factors,
    in the same (natural key) order, as one worker; torch.load of the same tensors gives them
    too, its linear σ on torch's kernels where the safetensors file runs NumPy's (float64 dense
    σ on two BLAS libraries: 1e-13 relative, measured ≤ 5e-16; a conv's operator norm runs on
    NumPy for both, bit for bit, the reshaped kernel's displayed σ on each reader's kernels)."""
    state = make()
    save_file(state, tmp_path / "model.safetensors")
    torch.save(state, tmp_path / "model.pt")
    one = report_for(tmp_path / "model.safetensors", workers=1, grid=8)
    many = report_for(tmp_path / "model.safetensors", workers=3, grid=8)
    pickled = report_for(tmp_path / "model.pt", workers=2, grid=8)
    assert [f.name for f in one.factors] == [f.name for f in many.factors]
    assert [f.name for f in one.factors] == [f.name for f in pickled.factors]
    for a, b, c in zip(one.factors, many.factors, pickled.factors, strict=True):
        assert a == b
        if a.kind == "linear":
            for field in ("sigma", "sigma_lower", "sigma_upper"):
                assert getattr(a, field) == pytest.approx(getattr(c, field), rel=1e-13)
            c = replace(c, sigma=a.sigma, sigma_lower=a.sigma_lower, sigma_upper=a.sigma_upper)
        elif a.reshape_sigma is not None:
            assert a.reshape_sigma == pytest.approx(c.reshape_sigma, rel=1e-13)
            c = replace(c, reshape_sigma=a.reshape_sigma)
        assert a == c
    weights = {n for n, t in state.items() if n.endswith("weight") and t.dim() >= 2}
    assert {f.name for f in one.factors if f.kind != "batchnorm"} == weights
    for factor in one.factors:
        assert factor.certified
        if factor.kind == "linear":  # dense float64: σ + its rounding allowance
            assert factor.sigma == pytest.approx(svd_sigma(state[factor.name]), rel=1e-11)
            assert factor.sigma >= svd_sigma(state[factor.name])
        elif factor.kind.startswith("conv"):  # operator norm ≥ σ of either reshape
            kernel = state[factor.name]
            both = max(svd_sigma(kernel), svd_sigma(kernel.transpose(0, 1).contiguous()))
            assert factor.sigma >= both * (1 - 1e-12)


def test_displayed_reshape_sigma_costs_only_the_side_shown(tmp_path: Path, monkeypatch) -> None:
    """The reshape column is σ(weight.reshape(out, -1)) by ``auto``: beyond a side of 128 a
    block-Lanczos lower bound within 1e-4 of float64 SVD, with no dense Gram of either reshape
    (both were computed densely before, ~40 s on a ResNet-18). Up to 128, dense: exact."""
    g = torch.Generator().manual_seed(3)
    big = torch.randn(160, 144, 3, 3, generator=g)
    small = torch.randn(24, 16, 3, 3, generator=g)
    save_file(
        {"layer4.0.conv1.weight": big, "layer1.0.conv1.weight": small},
        tmp_path / "m.safetensors",
    )
    from sncli.numerics import spectral_numpy

    dense_sides: list[tuple[int, ...]] = []

    # the weights are NumPy arrays (safetensors, read without torch): spectral_numpy's dense
    # σ is the one that runs; torch's is counted too, to show it does not
    def counting(original):  # type: ignore[no-untyped-def]
        def call(matrix):  # type: ignore[no-untyped-def]
            dense_sides.append(tuple(matrix.shape))
            return original(matrix)

        return call

    for module, name in ((spectral_module, "exact_sigma"), (spectral_numpy, "exact_sigma_array")):
        monkeypatch.setattr(module, name, counting(getattr(module, name)))
    report = report_for(tmp_path / "m.safetensors", workers=1, grid=8)
    monkeypatch.undo()
    assert dense_sides == [(24, 144)]  # only the small layer's shown reshape, densely
    shown = {f.name: f.reshape_sigma for f in report.factors}
    exact_big = svd_sigma(big)
    assert shown["layer4.0.conv1.weight"] <= exact_big * (1 + 1e-12)
    assert shown["layer4.0.conv1.weight"] == pytest.approx(exact_big, rel=1e-4)
    assert shown["layer1.0.conv1.weight"] == pytest.approx(svd_sigma(small), rel=1e-12)
    assert shown["layer1.0.conv1.weight"] == spectral_numpy.exact_sigma_array(
        small.double().reshape(24, -1).numpy()
    )


def test_transposed_conv_shows_the_dim1_first_reshape(tmp_path: Path) -> None:
    """A ConvTranspose's reshape column is σ(weight.transpose(0, 1).reshape(out, -1)), the
    matrix spectral_norm uses for it (dim=1)."""
    weight = torch.randn(32, 12, 4, 4, generator=torch.Generator().manual_seed(5))
    save_file({"decoder.0.weight": weight}, tmp_path / "g.safetensors")
    report = report_for(tmp_path / "g.safetensors", transposed=("decoder",))
    (factor,) = report.factors
    assert factor.reshape_sigma == pytest.approx(
        svd_sigma(weight.transpose(0, 1).contiguous()), rel=1e-12
    )


def test_wide_gram_chunks_keep_float64_accuracy() -> None:
    """exact_sigma of a wide matrix whose smaller side exceeds 512 (rank-512 Gram updates
    instead of 504-row ones) against float64 SVD, and its Gram against float64 W·Wᵀ."""
    w = torch.randn(520, 1200, generator=torch.Generator().manual_seed(9))
    assert spectral_module.CHUNK_ELEMENTS // 520 < spectral_module.GRAM_MIN_RANK
    gram = spectral_module._gram64(w, 0)
    reference = w.double() @ w.double().T
    assert float((gram - reference).abs().max()) <= 1e-12 * float(reference.abs().max())
    assert spectral_module.exact_sigma(w) == pytest.approx(svd_sigma(w), rel=1e-13)


@pytest.mark.parametrize("transpose", [False, True])
def test_large_gram_lower_block_triangle_against_svd(transpose: bool) -> None:
    """From a side of 1024 exact_sigma accumulates only the lower block triangle of the Gram
    (what eigvalsh reads): that triangle equals float64 W·Wᵀ's, σ equals float64 SVD's."""
    w = torch.randn(1100, 1300, generator=torch.Generator().manual_seed(4))
    w = w.T.contiguous() if transpose else w
    assert min(w.shape) >= spectral_module.GRAM_BLOCK_SIDE
    lower = spectral_module._gram64(w, 0, lower_only=True)
    small = w.double() if w.shape[0] <= w.shape[1] else w.double().T
    reference = small @ small.T
    scale = float(reference.abs().max())
    assert float((torch.tril(lower) - torch.tril(reference)).abs().max()) <= 1e-13 * scale
    assert spectral_module.exact_sigma(w) == pytest.approx(svd_sigma(w), rel=1e-13)
