"""LipSDP-Neuron by first-order descent (sncli.numerics.lipsdp): closed forms, the brute-force
Lipschitz constant of tiny ReLU nets (every activation pattern that has an open region), and
difference quotients of random nets; never above ECLipsE-Fast, never below a lower bound."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sncli.numerics.eclipse import eclipse_fast_certificate
from sncli.numerics.lipsdp import _certify, lipsdp_neuron_certificate


def _exact_relu_lipschitz(
    weights: list[np.ndarray], biases: list[np.ndarray]
) -> tuple[float, float]:
    """(max ‖J‖ over the activation patterns whose region is open (an LP per pattern): the
    Lipschitz constant of the piecewise-linear ReLU net, exactly (float64 SVD); max ‖J‖ over
    every 0/1 pattern: the largest Lipschitz constant of any net with these weights and
    activations slope-restricted to [0, 1], which a bound on that class must cover too)."""
    from scipy.optimize import linprog

    n = weights[0].shape[1]
    hidden = [w.shape[0] for w in weights[:-1]]
    best, every = 0.0, 0.0
    for bits in itertools.product((0.0, 1.0), repeat=sum(hidden)):
        masks, k = [], 0
        for h in hidden:
            masks.append(np.array(bits[k : k + h]))
            k += h
        # affine maps of x: pre-activation of layer i is A_i x + c_i inside the region
        rows, rhs = [], []
        a, c = np.eye(n), np.zeros(n)
        for w, b, mask in zip(weights[:-1], biases[:-1], masks, strict=True):
            pre_a, pre_c = w @ a, w @ c + b
            sign = np.where(mask > 0, -1.0, 1.0)  # active: pre ≥ 1e-7; inactive: pre ≤ −1e-7
            rows.append(sign[:, None] * pre_a)
            rhs.append(-sign * pre_c - 1e-7)
            a, c = mask[:, None] * pre_a, mask * pre_c
        result = linprog(
            np.zeros(n), A_ub=np.vstack(rows), b_ub=np.concatenate(rhs), bounds=[(-1e3, 1e3)] * n
        )
        norm = float(np.linalg.norm(weights[-1] @ a, 2))
        every = max(every, norm)
        if result.status == 0:
            best = max(best, norm)
    return best, every


def test_diagonal_chain_is_exact() -> None:
    """Decoupled neurons: Lip(x ↦ B·relu(A·x)) with diagonal A, B is max|a_i b_i|, and per-neuron
    multipliers reach it; one scalar multiplier (ECLipsE-Fast) does not."""
    a, b = np.diag([4.0, 1.0, 0.5]), np.diag([0.25, 3.0, 2.0])
    exact = 3.0
    fast = eclipse_fast_certificate([a, b])
    found = lipsdp_neuron_certificate([a, b], seconds=20.0)
    assert found.method == "lipsdp-neuron"
    assert exact <= found.bound <= exact * (1 + 1e-3)
    assert found.bound < fast.bound


def test_scalar_chain_closed_form() -> None:
    """One neuron per layer: |w_1 w_2 w_3| (ReLU), the tightest any method can give."""
    weights = [np.array([[2.0]]), np.array([[-3.0]]), np.array([[0.5]])]
    found = lipsdp_neuron_certificate(weights, seconds=5.0)
    assert 3.0 <= found.bound <= 3.0 * (1 + 1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_tiny_relu_nets_against_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    widths = [2, 4, 3, 2] if seed % 2 else [2, 5, 2]
    weights = [rng.standard_normal((widths[i + 1], widths[i])) for i in range(len(widths) - 1)]
    biases = [rng.standard_normal(w.shape[0]) for w in weights]
    exact, every = _exact_relu_lipschitz(weights, biases)
    fast = eclipse_fast_certificate(weights).bound
    found = lipsdp_neuron_certificate(weights, seconds=1.0)
    assert 0 < exact <= every * (1 + 1e-12) <= found.bound <= fast


@pytest.mark.parametrize("alpha,beta", [(0.0, 1.0), (0.0, 0.25), (0.1, 1.0)])
def test_random_nets_above_difference_quotients(alpha: float, beta: float) -> None:
    """Certified ≥ every difference quotient of the net with its activations at both slope
    ends (a leaky ReLU with slopes α and β is slope-restricted to [α, β])."""
    rng = np.random.default_rng(7)
    widths = [6, 24, 24, 24, 3]
    weights = [rng.standard_normal((widths[i + 1], widths[i])) for i in range(len(widths) - 1)]

    def f(x: np.ndarray) -> np.ndarray:
        for w in weights[:-1]:
            z = w @ x
            x = np.where(z > 0, beta * z, alpha * z)
        return weights[-1] @ x

    found = lipsdp_neuron_certificate(weights, alpha, beta, seconds=1.0)
    fast = eclipse_fast_certificate(weights, alpha, beta).bound
    assert found.bound <= fast
    lower = 0.0
    for _ in range(2000):
        x, d = rng.standard_normal(6), rng.standard_normal(6)
        d *= 1e-4 / np.linalg.norm(d)
        lower = max(lower, np.linalg.norm(f(x + d) - f(x)) / np.linalg.norm(d))
    assert 0 < lower <= found.bound


def test_no_time_is_eclipse_fast() -> None:
    rng = np.random.default_rng(1)
    weights = [
        rng.standard_normal((8, 5)),
        rng.standard_normal((8, 8)),
        rng.standard_normal((2, 8)),
    ]
    fast = eclipse_fast_certificate(weights)
    assert lipsdp_neuron_certificate(weights, seconds=0.0) == fast
    better = lipsdp_neuron_certificate(weights, seconds=2.0)
    assert better.bound <= fast.bound


def test_infeasible_multipliers_are_not_certified() -> None:
    """The certificate checks the conditions, not the descent: multipliers far too large make
    T − TWY⁻¹WᵀT indefinite, and no bound comes out."""
    rng = np.random.default_rng(2)
    weights = [rng.standard_normal((4, 3)), rng.standard_normal((2, 4))]
    assert _certify(weights, [np.full(4, 1e3)]) is None
    assert _certify(weights, [np.full(4, 1e-3)]) is not None


def _torch_objective(weights: list, logs: list) -> object:
    """c(T) on torch (the descent's objective before it moved to NumPy): autograd's reference
    for the analytic gradient."""
    import torch

    factor = None
    for w, log_t in zip(weights[:-1], logs, strict=False):
        t = torch.exp(log_t)
        g = w.T if factor is None else torch.linalg.solve_triangular(factor, w.T, upper=False)
        y = torch.diag(t) - t[:, None] * (g.T @ g) * t[None, :]
        factor = torch.linalg.cholesky((y + y.T) / 2)
    g = torch.linalg.solve_triangular(factor, weights[-1].T, upper=False)
    return torch.linalg.eigvalsh(g.T @ g)[-1]


@pytest.mark.parametrize("widths", [(6, 9, 8, 7, 3), (5, 12, 4), (10, 16, 16, 16, 16, 6)])
def test_gradient_matches_autograd_and_finite_differences(widths: tuple[int, ...]) -> None:
    """∂ log c/∂ log t of :func:`sncli.numerics.lipsdp._gradient` against torch autograd
    through the Cholesky factors, triangular solves and eigvalsh (1e-8 relative to the largest
    entry; measured ≤ 1e-15), and against central differences (step 1e-6: truncation and
    rounding ≈ 1e-9 of the entries; allowed 1e-6), at random feasible multipliers."""
    import torch

    from sncli.numerics.lipsdp import _gradient, _objective

    rng = np.random.default_rng(sum(widths))
    weights = [
        rng.standard_normal((widths[i + 1], widths[i])) / (3 * np.sqrt(widths[i]))
        for i in range(len(widths) - 1)
    ]
    logs = [np.log(0.3) + 0.3 * rng.standard_normal(w.shape[0]) for w in weights[:-1]]
    forward = _objective(weights, logs)
    assert forward is not None
    grads = _gradient(forward, logs)
    params = [torch.from_numpy(x).requires_grad_(True) for x in logs]
    value = _torch_objective([torch.from_numpy(w) for w in weights], params)
    assert float(value.detach()) == pytest.approx(forward.value, rel=1e-12)
    reference = torch.autograd.grad(torch.log(value), params)
    scale = max(float(r.abs().max()) for r in reference)
    for ours, theirs in zip(grads, reference, strict=True):
        assert np.abs(ours - theirs.numpy()).max() <= 1e-8 * scale
    step = 1e-6
    for layer, log_t in enumerate(logs):
        for i in range(log_t.size):
            values = []
            for sign in (1, -1):
                moved = [x.copy() for x in logs]
                moved[layer][i] += sign * step
                point = _objective(weights, moved)
                assert point is not None
                values.append(np.log(point.value))
            numeric = (values[0] - values[1]) / (2 * step)
            assert abs(grads[layer][i] - numeric) <= 1e-6 * scale


def test_descent_matches_the_former_torch_descent() -> None:
    """The NumPy descent against the bound torch's descent (autograd, before this module moved
    to NumPy) certified for a 784-100-100-10 chain: 1.6819776410 (NumPy: 1.6819776447). The
    two follow the same iterates to ~1e-12 for ~100 steps, then may part where λ_max of the
    final Gram turns (nearly) multiple, as it does near the optimum: measured gaps up to 2.4e-4
    relative, either sign, on other chains. Allowed: 1e-3."""
    rng = np.random.default_rng(202)
    widths = (784, 100, 100, 10)
    weights = [
        rng.standard_normal((widths[j + 1], widths[j])) / np.sqrt(widths[j]) for j in range(3)
    ]
    found = lipsdp_neuron_certificate(weights, seconds=30.0)
    assert found.method == "lipsdp-neuron"
    assert found.bound < eclipse_fast_certificate(weights).bound
    assert found.bound == pytest.approx(1.6819776410345502, rel=1e-3)
