"""The NumPy σ and spectrum kernels against float64 LAPACK SVD (an independent reference) and
against the torch kernels on the same values (the same start blocks: they agree to rounding)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sncli.arrays import bfloat16_from_bits, from_torch, upcast
from sncli.errors import NumericalError
from sncli.numerics.spectral import BoundKind, Method, largest_singular_value
from sncli.numerics.svd import frobenius_norm, singular_values, top_singular_values

SHAPES = [(40, 30), (300, 150), (150, 300), (400, 270)]  # dense, Lanczos (auto), float64 Lanczos
DTYPES = ["float64", "float32", "float16", "bfloat16"]


def _matrix(shape: tuple[int, int], dtype: str, seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    """(NumPy array, torch tensor) holding the same values; a spiked Gaussian spectrum."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(shape) + 3.0 * np.outer(rng.random(shape[0]), rng.random(shape[1]))
    tensor = torch.from_numpy(values).to(getattr(torch, dtype))
    return from_torch(tensor), tensor


def _truth(array: np.ndarray) -> np.ndarray:
    return np.linalg.svd(upcast(array, np.float64), compute_uv=False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_methods_against_lapack_svd(shape: tuple[int, int], dtype: str) -> None:
    array, _ = _matrix(shape, dtype)
    sigma = _truth(array)[0]
    dense = largest_singular_value(array, Method.DENSE)
    assert dense.sigma == pytest.approx(sigma, rel=1e-12) and dense.certified
    exact = largest_singular_value(array, Method.EXACT, certify=True)
    assert exact.sigma == pytest.approx(sigma, rel=1e-10) and exact.bound is BoundKind.EXACT
    assert exact.upper is not None and sigma <= exact.upper <= sigma * (1 + 1e-6)
    for method in (Method.AUTO, Method.LANCZOS):
        estimate = largest_singular_value(array, method)
        assert estimate.sigma <= sigma * (1 + 1e-13)  # ‖Wx‖: a lower bound
        assert estimate.sigma >= sigma * (1 - 1e-4)  # the default error target
    power = largest_singular_value(array, Method.POWER)
    assert sigma * (1 - 1e-2) <= power.sigma <= sigma * (1 + 1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("method", list(Method))
def test_same_as_the_torch_kernels(shape: tuple[int, int], dtype: str, method: Method) -> None:
    array, tensor = _matrix(shape, dtype, seed=1)
    ours = largest_singular_value(array, method, certify=True)
    theirs = largest_singular_value(tensor, method, certify=True)
    assert (ours.algorithm, ours.bound, ours.certified) == (
        theirs.algorithm,
        theirs.bound,
        theirs.certified,
    )
    if method is Method.POWER:  # a stopping rule on a 1e-6 change: rounding moves it a step
        assert abs(ours.iterations - theirs.iterations) <= 2
        rel = 1e-5
    else:
        assert ours.iterations == theirs.iterations
        rel = 1e-12 if ours.bound is BoundKind.EXACT else 1e-6
    assert ours.sigma == pytest.approx(theirs.sigma, rel=rel)
    assert ours.upper == pytest.approx(theirs.upper, rel=rel)  # σ·(1 + δ), same δ


def test_scaling_extremes_zero_and_non_finite() -> None:
    base, _ = _matrix((300, 140), "float64")
    sigma = _truth(base)[0]
    for scale in (1e-300, 1e300, 2.0**-1060):
        for method in (Method.DENSE, Method.EXACT, Method.AUTO):
            estimate = largest_singular_value(base * scale, method)
            assert estimate.sigma == pytest.approx(sigma * scale, rel=1e-4 if scale else 0)
    zero = largest_singular_value(np.zeros((200, 150), np.float32), Method.AUTO, certify=True)
    assert zero.sigma == 0.0 and zero.upper == 0.0
    bad = base.astype(np.float32)
    bad[3, 4] = np.nan
    bad[5, 6] = np.inf
    with pytest.raises(NumericalError, match=r"1 NaN, 1 Inf"):
        largest_singular_value(bad, Method.AUTO)
    bits = np.full((4, 4), 0x3F80, np.uint16)
    bits[1, 1] = 0x7FC0  # bfloat16 NaN
    with pytest.raises(NumericalError, match="NaN"):
        largest_singular_value(bfloat16_from_bits(bits), Method.DENSE)


@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
def test_spectrum_kernels(dtype: str) -> None:
    array, tensor = _matrix((260, 200), dtype, seed=2)
    truth = _truth(array)
    spectrum = singular_values(array)
    kappa = truth[0] / truth[-1]
    np.testing.assert_allclose(spectrum.values, truth, rtol=4 * 2.0**-52 * kappa**2 + 1e-13)
    np.testing.assert_allclose(spectrum.values, singular_values(tensor).values, rtol=1e-11)
    top = top_singular_values(array, 5, tol=1e-8, seed=0)
    assert top.algorithm == "block-lanczos-float64"
    np.testing.assert_allclose(top.values, truth[:5], rtol=1e-7)
    assert np.all(top.values <= truth[:5] * (1 + 1e-13))
    reference = top_singular_values(tensor, 5, tol=1e-8, seed=0)
    assert top.steps == reference.steps
    np.testing.assert_allclose(top.values, reference.values, rtol=1e-10)
    fro = math.sqrt(float(np.sum(upcast(array, np.float64) ** 2)))
    assert frobenius_norm(array) == pytest.approx(fro, rel=1e-13)


def test_near_singular_goes_to_gesdd() -> None:
    rng = np.random.default_rng(3)
    low_rank = rng.standard_normal((120, 6)) @ rng.standard_normal((6, 80))
    spectrum = singular_values(low_rank)
    assert spectrum.algorithm.startswith("gesdd")
    np.testing.assert_allclose(spectrum.values[:6], _truth(low_rank)[:6], rtol=1e-12)
    assert np.all(spectrum.values[6:] < 1e-12 * spectrum.values[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_numpy_input_on_cuda_runs_the_torch_kernels() -> None:
    array, tensor = _matrix((300, 150), "bfloat16", seed=4)
    for method in (Method.AUTO, Method.EXACT):
        on_gpu = largest_singular_value(array, method, device="cuda")
        reference = largest_singular_value(tensor, method, device="cuda")
        assert on_gpu == reference
