"""Top singular subspaces and principal angles against float64 LAPACK SVD and closed forms.

Tolerances: cosines of exactly known angles to 1e-10 (dense eigh of the Gram squares the
condition, ~1e-13 here); subspace-iteration vectors to 1e-8 of the LAPACK subspace.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sncli.numerics import subspaces
from sncli.numerics.subspaces import captured_fractions, principal_cosines, top_left_subspace

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=torch.float64)).Q


def _matrix(u: torch.Tensor, values: list[float], v: torch.Tensor) -> torch.Tensor:
    return (u * torch.tensor(values, dtype=torch.float64)) @ v.T


@pytest.mark.parametrize("shape", [(30, 20), (20, 30)])
def test_top_subspace_spans_the_lapack_singular_vectors(shape: tuple[int, int]) -> None:
    m, n = shape
    k = min(m, n)
    values = [10.0 / (i + 1) for i in range(k)]
    u, v = _orthonormal(m, k, 1), _orthonormal(n, k, 2)
    space = top_left_subspace(_matrix(u, values, v), 4)
    cosines = principal_cosines(space.vectors, u[:, :4])
    assert cosines == pytest.approx([1.0] * 4, abs=1e-10)
    assert space.values.tolist() == pytest.approx(values[:4], rel=1e-12)
    assert space.residual < 1e-12


def test_subspace_iteration_agrees_with_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    u, v = _orthonormal(60, 40, 3), _orthonormal(50, 40, 4)
    values = [2.0**-i for i in range(40)]  # gaps of 2: converges fast
    matrix = _matrix(u, values, v)
    monkeypatch.setattr(subspaces, "DENSE_SIDE", 10)
    space = top_left_subspace(matrix, 5)
    assert "subspace iteration" in space.method
    assert principal_cosines(space.vectors, u[:, :5]) == pytest.approx([1.0] * 5, abs=1e-8)


def test_rotated_directions_have_known_principal_angles() -> None:
    """B's top direction rotated by θ in the plane of A's first and (k+1)-th: the smallest
    cosine is cos θ and the rotated direction keeps cos θ of its length in A's top-k span."""
    k, theta = 3, 0.7
    u = _orthonormal(20, 10, 5)
    v = _orthonormal(12, 10, 6)
    values = [9.0, 8.0, 7.0, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    rotated = u.clone()
    rotated[:, 0] = math.cos(theta) * u[:, 0] + math.sin(theta) * u[:, k]
    rotated[:, k] = -math.sin(theta) * u[:, 0] + math.cos(theta) * u[:, k]
    a = top_left_subspace(_matrix(u, values, v), k)
    b = top_left_subspace(_matrix(rotated, values, v), k)
    cosines = principal_cosines(a.vectors, b.vectors)
    assert min(cosines) == pytest.approx(math.cos(theta), abs=1e-10)
    captured = sorted(captured_fractions(a.vectors, b.vectors))
    assert captured[0] == pytest.approx(math.cos(theta), abs=1e-10)
    assert captured[1:] == pytest.approx([1.0, 1.0], abs=1e-10)


def test_orthogonal_subspaces_have_zero_cosines() -> None:
    basis = torch.eye(6, dtype=torch.float64)
    assert principal_cosines(basis[:, :2], basis[:, 2:4]) == pytest.approx([0.0, 0.0])
    assert captured_fractions(basis[:, :2], basis[:, 2:4]) == pytest.approx([0.0, 0.0])


def test_rank_deficient_and_zero_matrices_are_cut_to_their_rank() -> None:
    """A tall rank-1 matrix has a 1-dimensional top subspace (not 8 noisy columns), equal to
    itself with cosine 1; a zero matrix has none."""
    generator = torch.Generator().manual_seed(11)
    u = torch.randn(100, generator=generator, dtype=torch.float64)
    v = torch.randn(20, generator=generator, dtype=torch.float64)
    space = top_left_subspace(torch.outer(u, v), 8)
    assert space.vectors.shape == (100, 1)
    assert principal_cosines(space.vectors, space.vectors) == pytest.approx([1.0])
    assert principal_cosines(space.vectors, (u / u.norm())[:, None]) == pytest.approx([1.0])
    empty = top_left_subspace(torch.zeros(30, 10, dtype=torch.float64), 4)
    assert empty.vectors.shape == (30, 0)
    assert principal_cosines(empty.vectors, space.vectors[:30]) == []


@pytest.mark.parametrize("dense_side", [512, 8])
@pytest.mark.parametrize(
    ("scale", "dtype"),
    [
        (1e-41, torch.float32),
        (1e-300, torch.float64),
        (1e300, torch.float64),
        (1e-310, torch.float64),
    ],
)
def test_extreme_scales_give_the_same_subspace(
    monkeypatch: pytest.MonkeyPatch, scale: float, dtype: torch.dtype, dense_side: int
) -> None:
    """issue 28 §2: a subnormal (or huge) layer's subspace and σ equal those of the matrix
    scaled by a power of two; the residual stays at rounding level (its σ⁴ products would
    underflow unscaled); dense and iterative (float32 copies scaled into range)."""
    monkeypatch.setattr(subspaces, "DENSE_SIDE", dense_side)
    generator = torch.Generator().manual_seed(2)
    base = torch.randn(40, 30, generator=generator, dtype=torch.float64)
    matrix = (base * scale).to(dtype)
    exponent = -math.frexp(float(matrix.abs().max()))[1]
    unit = matrix.double() * 2.0 ** (exponent // 2) * 2.0 ** (exponent - exponent // 2)
    here, there = top_left_subspace(matrix, 5), top_left_subspace(unit, 5)
    assert here.vectors.shape == (40, 5)
    assert min(principal_cosines(here.vectors, there.vectors)) > 1 - 1e-12
    ratio = here.values / there.values
    expected = math.ldexp(1.0, -exponent)
    assert ratio == pytest.approx([expected] * 5, rel=1e-12)
    if dense_side > 40:
        assert here.residual < 1e-12
    else:  # a Gaussian's top-5 is not resolved in 3–6 steps: the same residual and sin θ
        assert here.residual == pytest.approx(there.residual, rel=1e-6)
        assert here.error(5) == pytest.approx(there.error(5), rel=1e-6)


def _numpy_intruders(a: torch.Tensor, b: torch.Tensor, k: int, threshold: float) -> list[int]:
    """PEFT's definition written directly in NumPy (float64 LAPACK): each of B's top-k left
    singular vectors against all of A's, largest |cos| below the threshold."""
    import numpy as np

    u_a = np.linalg.svd(a.numpy(), full_matrices=False)[0]
    u_b = np.linalg.svd(b.numpy(), full_matrices=False)[0]
    best = np.abs(u_b[:, :k].T @ u_a).max(axis=1)
    return [int(j) for j in np.nonzero(best < threshold)[0]]


def _numpy_best_cosines(a: torch.Tensor, b: torch.Tensor, k: int) -> list[float]:
    import numpy as np

    u_a = np.linalg.svd(a.numpy(), full_matrices=False)[0]
    u_b = np.linalg.svd(b.numpy(), full_matrices=False)[0]
    return np.abs(u_b[:, :k].T @ u_a).max(axis=1).tolist()


@pytest.mark.parametrize("dense_side", [512, 8])
@pytest.mark.parametrize("shape", [(50, 40), (40, 50)])
def test_intruders_match_a_direct_numpy_computation(
    monkeypatch: pytest.MonkeyPatch, dense_side: int, shape: tuple[int, int]
) -> None:
    """A fine-tune-like B (A plus rank-4 updates in random directions) against NumPy's full
    SVDs, for thresholds away from every reference cosine (the decision is well-posed)."""
    monkeypatch.setattr(subspaces, "DENSE_SIDE", dense_side)
    m, n = shape
    k = min(m, n)
    u, v = _orthonormal(m, k, 11), _orthonormal(n, k, 12)
    a = _matrix(u, [3.0 * 0.9**i for i in range(k)], v)
    g = torch.Generator().manual_seed(13)
    update = torch.randn(m, 4, generator=g, dtype=torch.float64) @ torch.randn(
        4, n, generator=g, dtype=torch.float64
    )
    b = a + 0.4 * update
    reference = _numpy_best_cosines(a, b, 10)
    found_any = False
    for threshold in (0.3, 0.5, 0.7, 0.9):
        assert min(abs(c - threshold) for c in reference) > 1e-6
        result = subspaces.intruder_dimensions(a, b, 10, threshold)
        assert result is not None and result.checked == 10
        assert list(result.indices) == _numpy_intruders(a, b, 10, threshold)
        found_any |= bool(result.indices)
    assert found_any  # the test exercises intruders, not only their absence


@pytest.mark.parametrize("dense_side", [512, 8])
def test_rank_one_update_outside_the_base_spectrum_is_the_only_intruder(
    monkeypatch: pytest.MonkeyPatch, dense_side: int
) -> None:
    """A is 60×40 (its left singular vectors span 40 of 60 dimensions); B = A + 20·x yᵀ with x
    orthogonal to all of them: B's top singular vector is x (|cos| 0 with every u_i(A)),
    the other top vectors are A's own (|cos| 1)."""
    monkeypatch.setattr(subspaces, "DENSE_SIDE", dense_side)
    basis = _orthonormal(60, 41, 21)
    u, x = basis[:, :40], basis[:, 40:]
    v, y = _orthonormal(40, 40, 22), _orthonormal(40, 1, 23)
    a = _matrix(u, [10.0 / (i + 1) for i in range(40)], v)
    b = a + 20.0 * x @ y.T
    result = subspaces.intruder_dimensions(a, b, 10, 0.5)
    assert result is not None
    assert result.indices == (0,) and result.checked == 10
    assert _numpy_intruders(a, b, 10, 0.5) == [0]
    # the same update in A's own top direction is no intruder
    assert subspaces.intruder_dimensions(a, a + 20.0 * u[:, :1] @ y.T, 10, 0.5).indices == ()


def test_screening_decides_without_a_full_svd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above DENSE_SIDE A's top k + 16 vectors decide: a direction spread evenly over 16 of
    them (|cos| = 1/4 with each, nothing outside) is an intruder, a rescaled A has none, and
    neither needs A's full SVD; a direction outside them does."""
    monkeypatch.setattr(subspaces, "DENSE_SIDE", 8)
    u, v = _orthonormal(80, 60, 31), _orthonormal(70, 60, 32)
    a = _matrix(u, [10.0 * 0.95**i for i in range(60)], v)
    spread = u[:, 3:19].sum(dim=1, keepdim=True) / 4.0
    b = a + 30.0 * spread @ v[:, :1].T
    result = subspaces.intruder_dimensions(a, b, 2, 0.5)
    assert result is not None and result.indices == (0,) and not result.full_svd
    assert _numpy_intruders(a, b, 2, 0.5) == [0]
    scaled = subspaces.intruder_dimensions(a, 1.5 * a, 10, 0.5)
    assert scaled is not None and scaled.indices == () and not scaled.full_svd
    tail = u[:, 40:56].sum(dim=1, keepdim=True) / 4.0
    far = subspaces.intruder_dimensions(a, a + 30.0 * tail @ v[:, :1].T, 2, 0.5)
    assert far is not None and far.indices == (0,) and far.full_svd


def test_intruders_of_a_zero_base_are_not_defined() -> None:
    b = _orthonormal(20, 5, 41) @ _orthonormal(10, 5, 42).T
    assert subspaces.intruder_dimensions(torch.zeros(20, 10), b, 10, 0.5) is None
    empty = subspaces.intruder_dimensions(b, torch.zeros(20, 10), 10, 0.5)
    assert empty is not None and empty.indices == () and empty.checked == 0


# --- the stated errors (Wedin's sin θ from the Ritz residuals and gaps) ----------------------


def _spectrum(
    size: int, k: int, gap_exponent: int, cluster: int, above: int, seed: int
) -> np.ndarray:
    """Decreasing singular values with adversarial features: σ_k/σ_{k+1} − 1 = 10^-gap_exponent
    (0: equal), ``cluster`` values right below σ_{k+1} within 1e-6 of it, and ``above`` values
    right above σ_k within 1e-7 of it (a cluster straddling the cut)."""
    rng = np.random.default_rng(seed)
    values = np.sort(rng.uniform(0.05, 1.0, size))[::-1] * 10.0
    for j in range(1, min(above, k - 1) + 1):
        values[k - 1 - j] = values[k - 1] * (1.0 + 1e-7 * j)
    values = np.sort(values)[::-1]
    if k < size:
        values[k] = values[k - 1] / (1.0 + (10.0**-gap_exponent if gap_exponent else 0.0))
        for j in range(k + 1, min(size, k + 1 + cluster)):
            values[j] = values[k] * (1.0 - 1e-6 * (j - k))
        values[k + 1 + cluster :] = np.minimum(values[k + 1 + cluster :], values[k] * 0.999)
        values = np.sort(values)[::-1]
    return values


def _exact_left(matrix: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """LAPACK's top-k left singular vectors and the reference's own sin θ allowance
    (~u·σ_1/gap: the exact subspace is only known that well)."""
    left, values, _ = np.linalg.svd(matrix, full_matrices=False)
    gap = values[k - 1] - (values[k] if k < values.size else 0.0)
    allowance = 1.0 if gap <= 0 else min(1.0, 1e-13 * values[0] / gap)
    return left[:, :k], allowance


@settings(
    max_examples=int(os.environ.get("SNCLI_EXAMPLES", 40)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    m=st.integers(20, 70),
    n=st.integers(20, 70),
    k=st.integers(1, 6),
    gap_exponent=st.integers(0, 9),
    cluster=st.integers(0, 6),
    above=st.integers(0, 4),
    update=st.sampled_from([0.0, 1e-6, 1e-3, 0.1, 3.0]),
    seed=st.integers(0, 2**16),
)
def test_stated_cosine_error_holds_on_adversarial_gaps(
    monkeypatch: pytest.MonkeyPatch,
    m: int,
    n: int,
    k: int,
    gap_exponent: int,
    cluster: int,
    above: int,
    update: float,
    seed: int,
) -> None:
    """Subspace iteration (DENSE_SIDE lowered) on A with a tiny or zero gap after σ_k and a
    cluster below it, and on B = A + a rank-2 update: every principal cosine is within the
    stated error of the one from LAPACK's exact subspaces, and so is each span (sin θ).
    (``monkeypatch`` sets the same value for every example.)"""
    monkeypatch.setattr(subspaces, "DENSE_SIDE", 8)
    size = min(m, n)
    k = min(k, size - 1)
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.standard_normal((m, size)))[0]
    v = np.linalg.qr(rng.standard_normal((n, size)))[0]
    a = (u * _spectrum(size, k, gap_exponent, cluster, above, seed)) @ v.T
    b = a + update * rng.standard_normal((m, 2)) @ rng.standard_normal((2, n))
    found = subspaces.compare_directions(a, b, k, 0, 0.5, seed=seed)
    exact_a, slack_a = _exact_left(a, k)
    exact_b, slack_b = _exact_left(b, k)
    assert found.cosines is not None and found.cosine_error is not None
    exact = principal_cosines(exact_a, exact_b)
    error = max(abs(x - y) for x, y in zip(found.cosines, exact, strict=True))
    assert error <= found.cosine_error + slack_a + slack_b + 1e-12
    for (sigma, _), matrix in zip(found.sigmas, (a, b), strict=True):  # Ritz: lower bounds
        assert sigma <= np.linalg.norm(matrix, 2) * (1 + 1e-13)
    for matrix, reference, slack in ((a, exact_a, slack_a), (b, exact_b, slack_b)):
        space = top_left_subspace(matrix, k, seed=seed)
        width = space.vectors.shape[1]
        if width < k:  # cut to the numerical rank
            continue
        sin = math.sqrt(max(0.0, 1.0 - min(principal_cosines(space.vectors, reference)) ** 2))
        assert sin <= space.error(k) + slack + 1e-7  # sin from cos: √ of rounding


def test_resolved_subspaces_state_small_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Well-separated top values (gaps of 2×): the iterative spans converge and say so, the
    cosines agree with LAPACK's to within the (small) stated error."""
    monkeypatch.setattr(subspaces, "DENSE_SIDE", 8)
    rng = np.random.default_rng(5)
    u = np.linalg.qr(rng.standard_normal((90, 60)))[0]
    v = np.linalg.qr(rng.standard_normal((70, 60)))[0]
    values = np.concatenate([[64.0, 32.0, 16.0, 8.0], np.linspace(1.0, 0.5, 56)])
    a = (u * values) @ v.T
    b = a + 0.5 * np.outer(u[:, 1], v[:, 0])
    found = subspaces.compare_directions(a, b, 4, 4, 0.5)
    assert found.cosine_error is not None and found.cosine_error < subspaces.DEFAULT_TOL
    assert found.estimate
    exact = principal_cosines(_exact_left(a, 4)[0], _exact_left(b, 4)[0])
    assert found.cosines == pytest.approx(exact, abs=found.cosine_error + 1e-12)
    assert found.intruders is not None and found.intruders.unresolved == ()
    sigma, error = found.sigmas[0]
    assert sigma == pytest.approx(64.0, rel=max(error, 1e-12)) and sigma <= 64.0 * (1 + 1e-13)


@settings(
    max_examples=int(os.environ.get("SNCLI_EXAMPLES", 40)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    m=st.integers(24, 70),
    n=st.integers(24, 70),
    gap_exponent=st.integers(0, 9),
    cluster=st.integers(0, 6),
    update=st.sampled_from([1e-3, 0.1, 1.0, 3.0, 30.0]),
    outside=st.booleans(),
    threshold=st.sampled_from([0.3, 0.5, 0.7]),
    seed=st.integers(0, 2**16),
)
def test_decided_intruders_match_lapack(
    monkeypatch: pytest.MonkeyPatch,
    m: int,
    n: int,
    gap_exponent: int,
    cluster: int,
    update: float,
    outside: bool,
    threshold: float,
    seed: int,
) -> None:
    """Every intruder decision that is not reported unresolved equals PEFT's definition on
    LAPACK's full SVDs (where that reference is itself well-defined: B's vector separated from
    its neighbours, its largest |cos| away from the threshold). The update is random or, with
    ``outside``, along a direction outside A's column space (an intruder when strong)."""
    monkeypatch.setattr(subspaces, "DENSE_SIDE", 8)
    size, k = min(m, n), 4
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.standard_normal((m, m)))[0]
    v = np.linalg.qr(rng.standard_normal((n, size)))[0]
    a = (u[:, :size] * _spectrum(size, k, gap_exponent, cluster, 0, seed)) @ v.T
    # outside A's column space when there is room (m > n), else a random direction
    direction = u[:, size : size + 2] if outside and m >= size + 2 else rng.standard_normal((m, 2))
    b = a + update * direction @ rng.standard_normal((2, n))
    found = subspaces.compare_directions(a, b, 0, k, threshold, seed=seed).intruders
    assert found is not None
    left_a = np.linalg.svd(a, full_matrices=False)[0]  # A has full rank: no arbitrary vectors
    left_b, values_b, _ = np.linalg.svd(b, full_matrices=False)
    best = np.abs(left_b[:, :k].T @ left_a).max(axis=1)
    for j in range(found.checked):
        if j in found.unresolved:
            continue
        gaps = np.abs(np.delete(values_b, j) - values_b[j]).min()
        if abs(best[j] - threshold) <= 1e-10 * values_b[0] / max(gaps, 1e-300):
            continue  # the reference itself cannot tell
        assert (j in found.indices) == (best[j] < threshold), (j, best[j])
