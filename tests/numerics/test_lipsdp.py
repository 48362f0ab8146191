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
