"""ECLipsE-Fast, certified: against a plain float64 reimplementation, torch's Jacobians, the
product of σ, and chains whose constant is known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sncli.errors import NumericalError
from sncli.numerics.eclipse import (
    _certified_positive_definite,
    eclipse_fast_bound,
    eclipse_fast_certificate,
)


def reference(weights: list[np.ndarray], alpha: float = 0.0, beta: float = 1.0) -> float:
    """ECLipsE-Fast as the paper and the authors' code write it, in float64 (not certified)."""
    m = (alpha + beta) / 2
    x = np.eye(weights[0].shape[1])
    for w in weights[:-1]:
        mat = w @ np.linalg.inv(x) @ w.T
        lam = 1 / (2 * m * m * np.max(np.linalg.eigvalsh(mat)))
        x = lam * np.eye(w.shape[0]) - lam * lam * m * m * mat
    last = weights[-1]
    return float(np.sqrt(np.max(np.linalg.eigvals(last.T @ last @ np.linalg.inv(x)).real)))


def sigma(w: np.ndarray) -> float:
    return float(scipy.linalg.svdvals(w)[0])


def random_net(widths: list[int], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.standard_normal((widths[i + 1], widths[i])) / math.sqrt(widths[i])
        for i in range(len(widths) - 1)
    ]


NETS = [([5, 32, 32, 2], 0), ([20, 64, 64, 64, 10], 1), ([784, 256, 256, 256, 10], 2)]


@pytest.mark.parametrize(
    ("widths", "seed", "alpha", "beta"),
    [(*net, *slopes) for net in NETS[:2] for slopes in ((0.0, 1.0), (0.1, 1.0), (-1.0, 0.0))]
    + [(*NETS[2], 0.0, 1.0)],
)
def test_agrees_with_a_float64_reimplementation(
    widths: list[int], seed: int, alpha: float, beta: float
) -> None:
    weights = random_net(widths, seed)
    result = eclipse_fast_certificate(weights, alpha, beta)
    truth = reference(weights, alpha, beta)
    assert result.method == "eclipse-fast"
    assert result.bound >= truth * (1 - 1e-12)
    assert result.bound == pytest.approx(truth, rel=1e-7)
    assert result.estimate == pytest.approx(truth, rel=1e-7)
    if (alpha, beta) == (0.0, 1.0):  # ECLipsE-Fast ≤ ∏σ for [0, 1] slopes
        product = math.prod(sigma(w) for w in weights)
        assert result.bound <= product * (1 + 1e-7)
        assert result.bound < 0.8 * product  # and much tighter on random nets


def torch_mlp(weights: list[np.ndarray], activation: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for i, w in enumerate(weights):
        linear = torch.nn.Linear(w.shape[1], w.shape[0]).double()
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w))
            linear.bias.copy_(torch.randn(w.shape[0], generator=gen, dtype=torch.float64))
        layers.append(linear)
        if i < len(weights) - 1:
            layers.append(activation)
    return torch.nn.Sequential(*layers)


@pytest.mark.parametrize(
    ("activation", "alpha"),
    [(torch.nn.ReLU(), 0.0), (torch.nn.Tanh(), 0.0), (torch.nn.LeakyReLU(0.25), 0.25)],
)
@pytest.mark.parametrize(("widths", "seed"), NETS[:2])
def test_bounds_sampled_jacobians_of_the_torch_mlp(
    activation: torch.nn.Module, alpha: float, widths: list[int], seed: int
) -> None:
    weights = random_net(widths, seed)
    bound = eclipse_fast_bound(weights, alpha, 1.0)
    model = torch_mlp(weights, activation, seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(500, widths[0], generator=gen, dtype=torch.float64) * 2
    # Samples are independent, so the Jacobian of the batch sum holds every sample's Jacobian.
    jac = torch.autograd.functional.jacobian(lambda t: model(t).sum(0), x, vectorize=True)
    largest = float(torch.linalg.matrix_norm(jac.permute(1, 0, 2), ord=2).max())
    assert 0 < largest <= bound


def test_one_layer_is_its_sigma() -> None:
    (w,) = random_net([30, 12], 3)
    bound = eclipse_fast_bound([w])
    assert sigma(w) <= bound <= sigma(w) * (1 + 1e-10)
    assert eclipse_fast_certificate([w]).method == "single layer σ"


@pytest.mark.parametrize("seed", [0, 1])
def test_scaled_orthogonal_chains_are_exact(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scales = [0.5, 3.0, 1.7, 0.2]
    weights = [c * scipy.linalg.qr(rng.standard_normal((16, 16)))[0] for c in scales]
    bound = eclipse_fast_bound(weights)
    assert bound >= math.prod(scales) * (1 - 1e-13)
    assert bound == pytest.approx(math.prod(scales), rel=1e-8)


def test_diagonal_chain_with_one_dominant_coordinate_is_exact() -> None:
    """x ↦ D₃ relu(D₂ relu(D₁x)) with positive diagonals is separable: its constant is
    max_j ∏ d_ij, here 3·2·4 = 24 on coordinate 0, which the Jacobian at e₀ attains."""
    diagonals = [[3.0, 1.0, 0.5], [2.0, 1.5, 0.1], [4.0, 2.0, 1.0]]
    weights = [np.diag(d) for d in diagonals]
    bound = eclipse_fast_bound(weights)
    model = torch_mlp(weights, torch.nn.ReLU(), 0)
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.zeros_(layer.bias)
    jac = torch.autograd.functional.jacobian(model, torch.tensor([1.0, 0, 0], dtype=torch.float64))
    assert float(torch.linalg.matrix_norm(jac, ord=2)) == pytest.approx(24.0, rel=1e-15)
    assert 24.0 <= bound == pytest.approx(24.0, rel=1e-8)


def test_scalar_chain() -> None:
    weights = [np.array([[-2.0]]), np.array([[0.5]]), np.array([[7.0]])]
    assert eclipse_fast_bound(weights) == pytest.approx(7.0, rel=1e-8)
    assert eclipse_fast_bound(weights) >= 7.0


@settings(max_examples=25, deadline=None)
@given(
    c=st.floats(min_value=1e-3, max_value=1e3) | st.floats(min_value=-1e3, max_value=-1e-3),
    layer=st.integers(min_value=0, max_value=2),
)
def test_positive_scaling(c: float, layer: int) -> None:
    weights = random_net([6, 10, 8, 3], 4)
    base = eclipse_fast_bound(weights)
    scaled = list(weights)
    scaled[layer] = c * weights[layer]
    assert eclipse_fast_bound(scaled) == pytest.approx(abs(c) * base, rel=1e-7)


def test_degenerate_inputs() -> None:
    weights = random_net([4, 5, 3], 5)
    assert eclipse_fast_bound([weights[0], np.zeros((3, 5))]) == 0.0
    assert eclipse_fast_bound([np.zeros((5, 4)), weights[1]]) == 0.0
    assert eclipse_fast_bound(weights, 0.0, 0.0) == 0.0  # constant activations
    assert eclipse_fast_bound([np.zeros((2, 2))]) == 0.0
    bad = [weights[0], weights[1].copy()]
    bad[1][0, 0] = math.nan
    with pytest.raises(NumericalError, match="non-finite"):
        eclipse_fast_bound(bad)
    with pytest.raises(NumericalError):
        eclipse_fast_bound([np.full((2, 2), math.inf)])
    for alpha, beta in ((-1.0, 1.0), (1.0, 0.5), (0.0, math.inf)):
        with pytest.raises(ValueError, match="slope"):
            eclipse_fast_bound(weights, alpha, beta)
    with pytest.raises(ValueError, match="input width"):
        eclipse_fast_bound([weights[0], weights[0]])
    with pytest.raises(ValueError):
        eclipse_fast_bound([])
    with pytest.raises(ValueError, match="not a matrix"):
        eclipse_fast_bound([np.ones(3)])


def test_huge_and_tiny_weights_scale_exactly() -> None:
    weights = random_net([6, 10, 3], 6)
    base = eclipse_fast_bound(weights)
    huge = [w * 2.0**300 for w in weights]
    assert eclipse_fast_bound(huge) == pytest.approx(base * 2.0**600, rel=1e-12)
    assert math.isinf(eclipse_fast_bound([w * 2.0**1000 for w in weights]))  # an upper bound
    tiny = [w * 2.0**-600 for w in weights]
    assert eclipse_fast_bound(tiny) > 0


def test_the_positive_definiteness_proof_is_strict() -> None:
    n = 50
    v = np.ones(n) / math.sqrt(n)
    assert _certified_positive_definite(np.eye(n), 0.0)
    assert not _certified_positive_definite(np.eye(n), 1.0)  # I − 1·(anything) may be singular
    singular = np.eye(n) - np.outer(v, v)  # λ_min = 0 up to rounding
    assert not _certified_positive_definite(singular, 0.0)
    barely = np.eye(n) - (1 - 1e-13) * np.outer(v, v)  # λ_min = 1e-13: below the allowance
    assert not _certified_positive_definite(barely, 0.0)
    clear = np.eye(n) - (1 - 1e-6) * np.outer(v, v)
    assert _certified_positive_definite(clear, 0.0)
