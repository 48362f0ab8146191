"""σ_max by every method against float64 LAPACK (scipy.linalg.svdvals) and closed forms.

Tolerances (relative error unless stated):
* ``exact`` and ``dense``: 1e-10 against float64 svdvals, 1e-12 on closed forms;
* ``auto`` and ``lanczos``: the requested ``tol`` (1e-4 by default), and never above the true σ
  by more than float64 rounding (1e-12) — their value is ‖Wx‖ for a unit x;
* ``power``: never above σ (1e-12 rounding); 1e-3 on well-gapped spectra only, because its
  stopping rule is not an error bound.
"""

from __future__ import annotations

import ctypes
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sncli.errors import NumericalError
from sncli.numerics.spectral import (
    DEFAULT_TOL,
    DENSE_MAX_SIDE,
    EXACT_DENSE_MAX_SIDE,
    WARM_START_MIN_STEPS,
    BoundKind,
    Method,
    SigmaEstimate,
    as_matrix,
    check_device,
    exact_sigma,
    lanczos_sigma,
    largest_singular_value,
    matvec64,
    power_iteration,
    resolve_device,
)

ALL_METHODS = list(Method)
ROUNDING = 1e-12
GOLDEN = (1 + math.sqrt(5)) / 2
HILBERT = {
    4: 1.500214280059243,
    8: 1.695938996921950,
    12: 1.795372059561998,
    16: 1.860036442743327,
}


def set_openblas_threads(count: int) -> None:
    """Set the thread count of the OpenBLAS copies bundled with scipy and numpy, if loaded.

    Environment variables only work before start-up and threadpoolctl is not installed; on a
    loaded 2-core machine a 2-thread OpenBLAS svdvals of 300×200 took 1.3 s instead of 3 ms.
    """
    for package in (scipy, np):
        folder = Path(package.__file__).resolve().parent.parent / f"{package.__name__}.libs"
        for path in folder.glob("*openblas*"):
            library = ctypes.CDLL(str(path))
            for name in ("scipy_openblas_set_num_threads", "scipy_openblas_set_num_threads64_"):
                setter = getattr(library, name, None)
                if setter is not None:
                    setter(count)
                    break


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """One BLAS thread: these matrices are small, and 2 threads on a shared 2-core machine
    oversubscribe (measured: 10–250× slowdowns)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    set_openblas_threads(1)
    yield
    torch.set_num_threads(before)
    set_openblas_threads(before)


def reference(matrix: torch.Tensor) -> float:
    """float64 LAPACK σ_max of the matrix's exact float64 value."""
    return float(scipy.linalg.svdvals(matrix.double().numpy())[0])


def gaussian(m: int, n: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(m, n, generator=generator, dtype=torch.float64) / math.sqrt(n)).to(dtype)


def spiked_pair(m: int, n: int, seed: int = 0, rel_gap: float = 1e-3) -> torch.Tensor:
    """Gaussian bulk plus two spikes whose singular values are ``rel_gap`` apart."""
    generator = torch.Generator().manual_seed(seed)
    bulk = torch.randn(m, n, generator=generator, dtype=torch.float64) / math.sqrt(n)
    left = torch.linalg.qr(torch.randn(m, 2, generator=generator, dtype=torch.float64))[0]
    right = torch.linalg.qr(torch.randn(n, 2, generator=generator, dtype=torch.float64))[0]
    strength = 3 * (1 + math.sqrt(m / n))
    spikes = left @ torch.diag(torch.tensor([1.0, 1.0 - rel_gap], dtype=torch.float64)) @ right.T
    return bulk + strength * spikes


def check(estimate: SigmaEstimate, expected: float, method: Method, tol: float = DEFAULT_TOL):
    """Assert the accuracy each method promises (module docstring)."""
    scale = max(abs(expected), 1e-300)
    error = (expected - estimate.sigma) / scale
    assert estimate.method is method
    if estimate.bound is BoundKind.LOWER:
        assert error >= -ROUNDING, f"{method}: {estimate.sigma} above true σ {expected}"
    if method in (Method.EXACT, Method.DENSE):
        assert estimate.bound is BoundKind.EXACT
        assert abs(error) <= 1e-10, f"{method}: relative error {error:.2e}"
    elif method in (Method.AUTO, Method.LANCZOS):
        assert abs(error) <= tol, f"{method}: relative error {error:.2e} > {tol}"


# --- every method on random matrices of many shapes ---------------------------------------


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize(
    "shape", [(40, 30), (30, 40), (300, 200), (200, 300), (700, 400), (5000, 3), (3, 5000)]
)
def test_random_matrices_match_float64_svd(method: Method, shape: tuple[int, int]) -> None:
    # A spike keeps the spectrum gapped so the power stopping rule is accurate here too.
    matrix = spiked_pair(*shape, seed=sum(shape), rel_gap=0.5) if min(shape) > 2 else None
    if matrix is None:
        matrix = gaussian(*shape, seed=1)
    estimate = largest_singular_value(matrix, method)
    expected = reference(matrix)
    check(estimate, expected, method)
    if method is Method.POWER:
        assert abs(expected - estimate.sigma) <= 1e-3 * expected


@pytest.mark.parametrize("method", ALL_METHODS)
def test_gaussian_bulk_without_gap(method: Method) -> None:
    """Marchenko–Pastur spectra have top gaps of ~1%: the hardest realistic case."""
    matrix = gaussian(600, 300, seed=7)
    check(largest_singular_value(matrix, method), reference(matrix), method)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", ALL_METHODS)
def test_input_dtypes_are_upcast(method: Method, dtype: torch.dtype) -> None:
    matrix = spiked_pair(400, 300, seed=3, rel_gap=0.3).to(dtype)
    check(largest_singular_value(matrix, method), reference(matrix), method)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_fp16_gram_would_overflow(method: Method) -> None:
    """All-16 fp16 512×512: σ = 8192, Gram entries 131072 > 65504 (fp16 max)."""
    matrix = torch.full((512, 512), 16.0, dtype=torch.float16)
    estimate = largest_singular_value(matrix, method)
    assert estimate.sigma == pytest.approx(8192.0, rel=1e-10)


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("scale", [1e30, 1e-30, 1e-15])
def test_extreme_scales_in_float32(method: Method, scale: float) -> None:
    """Scaling by powers of two keeps WᵀW away from overflow and denormals (fp32 input)."""
    base = torch.linalg.qr(gaussian(300, 300, seed=2))[0]
    matrix = (base * scale).to(torch.float32)
    check(largest_singular_value(matrix, method), reference(matrix), method)


# --- closed forms ---------------------------------------------------------------------------


def closed_forms() -> list[tuple[str, torch.Tensor, float]]:
    generator = torch.Generator().manual_seed(5)
    u = torch.randn(37, generator=generator, dtype=torch.float64)
    v = torch.randn(23, generator=generator, dtype=torch.float64)
    q = torch.linalg.qr(torch.randn(50, 50, generator=generator, dtype=torch.float64))[0]
    row = torch.randn(1, 400, generator=generator, dtype=torch.float64)
    cases = [
        ("diag(3,-5,2)", torch.diag(torch.tensor([3.0, -5.0, 2.0], dtype=torch.float64)), 5.0),
        ("orthogonal", q, 1.0),
        ("-2.5·orthogonal", -2.5 * q, 2.5),
        ("rank-1", torch.outer(u, v), float(u.norm() * v.norm())),
        ("ones(7,9)", torch.ones(7, 9, dtype=torch.float64), math.sqrt(63)),
        ("zero", torch.zeros(6, 4, dtype=torch.float64), 0.0),
        ("1×n", row, float(row.norm())),
        ("n×1", row.T.contiguous(), float(row.norm())),
        ("1×1", torch.tensor([[-3.25]], dtype=torch.float64), 3.25),
        ("[[1,1],[0,1]]", torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=torch.float64), GOLDEN),
        ("nilpotent shift", torch.diag(torch.ones(4, dtype=torch.float64), 1), 1.0),
        ("1e-15·I", 1e-15 * torch.eye(5, dtype=torch.float64), 1e-15),
    ]
    for size, value in HILBERT.items():
        index = torch.arange(size, dtype=torch.float64)
        cases.append((f"Hilbert {size}", 1.0 / (index[:, None] + index[None, :] + 1), value))
    return cases


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize(("name", "matrix", "expected"), closed_forms())
def test_closed_forms(method: Method, name: str, matrix: torch.Tensor, expected: float) -> None:
    estimate = largest_singular_value(matrix, method)
    if estimate.bound is BoundKind.LOWER:
        assert estimate.sigma <= expected * (1 + ROUNDING) + 1e-300
        assert estimate.sigma == pytest.approx(expected, rel=DEFAULT_TOL, abs=1e-300)
        return
    assert estimate.sigma == pytest.approx(expected, rel=1e-12, abs=1e-300), name
    assert reference(matrix) == pytest.approx(expected, rel=1e-12, abs=1e-300)


@pytest.mark.parametrize(("name", "matrix", "expected"), closed_forms())
def test_closed_forms_through_krylov(name: str, matrix: torch.Tensor, expected: float) -> None:
    """The Lanczos code path itself (not the dense shortcut for small matrices), in float64."""
    estimate = lanczos_sigma(matrix, tol=1e-13)
    assert estimate.sigma == pytest.approx(expected, rel=1e-11, abs=1e-300), name
    assert estimate.sigma <= expected * (1 + ROUNDING) + 1e-300


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_finite_raises(method: Method, bad: float, dtype: torch.dtype) -> None:
    matrix = gaussian(300, 200).to(dtype)
    matrix[17, 3] = bad
    with pytest.raises(NumericalError, match="non-finite"):
        largest_singular_value(matrix, method)


def test_non_finite_message_counts() -> None:
    matrix = torch.ones(3, 3)
    matrix[0, 0] = math.nan
    matrix[1, 1] = math.inf
    with pytest.raises(NumericalError, match=r"1 NaN, 1 Inf"):
        largest_singular_value(matrix)


def test_rejects_non_matrices() -> None:
    with pytest.raises(ValueError, match="expected a matrix"):
        largest_singular_value(torch.ones(3))
    with pytest.raises(ValueError, match="complex"):
        largest_singular_value(torch.ones(2, 2, dtype=torch.complex64))


def test_float8_input_is_upcast() -> None:
    matrix = gaussian(200, 150, seed=4).to(torch.float8_e4m3fn)
    expected = reference(matrix.float())
    assert largest_singular_value(matrix).sigma == pytest.approx(expected, rel=1e-10)


# --- invariances (hypothesis) --------------------------------------------------------------

finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False, width=64)
matrices = st.tuples(st.integers(1, 12), st.integers(1, 12)).flatmap(
    lambda shape: arrays(np.float64, shape, elements=finite)
)
krylov = {"method": Method.LANCZOS, "tol": 1e-12}  # the Krylov path even for small matrices


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(matrices, st.floats(min_value=-1e3, max_value=1e3, allow_nan=False).filter(bool))
def test_scaling(values: np.ndarray, c: float) -> None:
    matrix = torch.from_numpy(values)
    for options in ({"method": Method.EXACT}, krylov):
        base = largest_singular_value(matrix, **options).sigma
        scaled = largest_singular_value(c * matrix, **options).sigma
        assert scaled == pytest.approx(abs(c) * base, rel=1e-9, abs=1e-300)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(matrices, st.randoms(use_true_random=False))
def test_transpose_and_permutations(values: np.ndarray, rng) -> None:
    matrix = torch.from_numpy(values)
    expected = reference(matrix)
    rows = list(range(matrix.shape[0]))
    cols = list(range(matrix.shape[1]))
    rng.shuffle(rows)
    rng.shuffle(cols)
    variants = [matrix.T.contiguous(), matrix[rows][:, cols].contiguous()]
    for variant in variants:
        for options in ({"method": Method.EXACT}, krylov):
            got = largest_singular_value(variant, **options).sigma
            assert got == pytest.approx(expected, rel=1e-9, abs=1e-300 + 1e-12 * expected)


# --- power iteration -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_power_is_a_lower_bound(seed: int) -> None:
    matrix = gaussian(300, 200, seed=seed)
    expected = reference(matrix)
    for iters in (1, 3, 10, 100):
        estimate = power_iteration(matrix, iters=iters, tol=0.0, seed=seed)
        assert estimate.sigma <= expected * (1 + ROUNDING)
        assert estimate.bound is BoundKind.LOWER
        assert estimate.iterations == iters
        assert estimate.converged is False


def test_power_reports_convergence_and_is_deterministic() -> None:
    matrix = spiked_pair(300, 200, rel_gap=0.5)
    first = power_iteration(matrix, seed=3)
    again = power_iteration(matrix, seed=3)
    other = power_iteration(matrix, seed=4)
    assert first == again
    assert first.converged is True
    assert 1 < first.iterations < 1000
    assert other.sigma == pytest.approx(first.sigma, rel=1e-6)


def test_power_stopping_rule_is_not_an_error_bound() -> None:
    """On a top pair 0.1% apart power iteration 'converges' well short of σ."""
    matrix = spiked_pair(400, 300, seed=1)
    expected = reference(matrix)
    estimate = power_iteration(matrix, tol=1e-4)
    assert estimate.converged
    assert estimate.sigma <= expected * (1 + ROUNDING)
    auto = largest_singular_value(matrix, Method.AUTO)
    assert abs(expected - auto.sigma) <= 1e-4 * expected


def test_start_vector_orthogonal_to_the_top() -> None:
    """diag(2,1) started at e₂: power iteration never leaves σ=1; block Lanczos finds 2."""
    matrix = torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64))
    start = torch.tensor([0.0, 1.0], dtype=torch.float64)
    stuck = power_iteration(matrix, start=start)
    assert stuck.sigma == pytest.approx(1.0)
    assert stuck.bound is BoundKind.LOWER
    found = lanczos_sigma(matrix, start=start)
    assert found.sigma == pytest.approx(2.0, rel=1e-12)
    # the same trap on a matrix big enough for the Krylov path of auto/exact
    big = torch.diag(torch.linspace(1.0, 0.5, 400, dtype=torch.float64))
    big[0, 0] = 2.0
    trap = torch.zeros(400, dtype=torch.float64)
    trap[1] = 1.0
    for method in (Method.AUTO, Method.EXACT, Method.LANCZOS):
        estimate = largest_singular_value(big, method, start=trap)
        assert estimate.sigma == pytest.approx(2.0, rel=1e-4)


def test_zero_start_vector_is_ignored() -> None:
    matrix = spiked_pair(300, 200, rel_gap=0.5)
    expected = reference(matrix)
    zero = torch.zeros(200)
    for method in ALL_METHODS:
        estimate = largest_singular_value(matrix, method, start=zero)
        assert estimate.sigma == pytest.approx(expected, rel=1e-3)


# --- block Lanczos: error control, near-degenerate pairs, warm starts ----------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("rel_gap", [1e-3, 1e-6])
@pytest.mark.parametrize("shape", [(600, 300), (300, 600)])
def test_near_degenerate_top_pair(seed: int, rel_gap: float, shape: tuple[int, int]) -> None:
    """A single-vector Lanczos with a residual/gap rule was fooled here (module docstring)."""
    matrix = spiked_pair(*shape, seed=seed, rel_gap=rel_gap).to(torch.float32)
    expected = reference(matrix)
    for method in (Method.AUTO, Method.LANCZOS, Method.EXACT):
        check(largest_singular_value(matrix, method, seed=seed), expected, method)


def test_near_degenerate_diagonal() -> None:
    values = torch.linspace(0.9, 0.1, 400, dtype=torch.float64)
    values[0], values[1] = 1.0, 1.0 - 1e-6
    generator = torch.Generator().manual_seed(0)
    q1 = torch.linalg.qr(torch.randn(500, 400, generator=generator, dtype=torch.float64))[0]
    q2 = torch.linalg.qr(torch.randn(400, 400, generator=generator, dtype=torch.float64))[0]
    matrix = (q1 * values) @ q2.T
    for method in ALL_METHODS:
        estimate = largest_singular_value(matrix, method)
        check(estimate, 1.0, method)
        assert estimate.sigma == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("tol", [1e-2, 1e-4, 1e-6, 1e-9])
def test_lanczos_meets_requested_tolerance(tol: float) -> None:
    matrix = gaussian(700, 400, seed=11, dtype=torch.float32)
    expected = reference(matrix)
    estimate = largest_singular_value(matrix, Method.LANCZOS, tol=tol)
    check(estimate, expected, Method.LANCZOS, tol=tol)
    assert estimate.converged
    assert estimate.error_estimate is not None
    assert estimate.error_estimate <= tol
    assert estimate.algorithm.endswith("float64" if tol < 1e-6 else "float32")


def test_lanczos_reports_non_convergence_and_auto_falls_back() -> None:
    matrix = gaussian(700, 400, seed=12)
    expected = reference(matrix)
    capped = largest_singular_value(matrix, Method.LANCZOS, iters=2, tol=1e-8)
    assert capped.converged is False
    assert capped.iterations == 2
    assert capped.bound is BoundKind.LOWER
    assert capped.sigma <= expected * (1 + ROUNDING)


def test_exact_reports_two_sided_and_auto_a_lower_bound() -> None:
    big = gaussian(700, 400, seed=13)
    small = gaussian(100, 90, seed=13)
    exact = largest_singular_value(big, Method.EXACT)
    assert exact.bound is BoundKind.EXACT
    assert exact.converged is True
    assert exact.certified is False  # Krylov: upper side not proven
    assert exact.error_estimate is not None and exact.error_estimate <= 1e-12
    assert "lanczos" in exact.algorithm
    assert min(small.shape) <= EXACT_DENSE_MAX_SIDE
    dense = largest_singular_value(small, Method.EXACT)
    assert dense.certified is True
    assert "dense" in dense.algorithm
    auto = largest_singular_value(big, Method.AUTO)
    assert auto.bound is BoundKind.LOWER
    assert auto.iterations is not None and auto.converged is True
    assert min(small.shape) <= DENSE_MAX_SIDE
    assert largest_singular_value(small, Method.AUTO).bound is BoundKind.EXACT


def test_warm_start_from_the_top_vector_converges_at_once() -> None:
    matrix = gaussian(700, 400, seed=14)
    _, _, vh = torch.linalg.svd(matrix)
    cold = largest_singular_value(matrix, Method.AUTO)
    warm = largest_singular_value(matrix, Method.AUTO, start=vh[0])
    assert warm.iterations < cold.iterations
    assert warm.iterations <= WARM_START_MIN_STEPS
    assert warm.sigma == pytest.approx(reference(matrix), rel=1e-12)


def test_lanczos_is_deterministic_with_seed() -> None:
    matrix = gaussian(500, 300, seed=15, dtype=torch.bfloat16)
    first = largest_singular_value(matrix, Method.AUTO, seed=1)
    assert largest_singular_value(matrix, Method.AUTO, seed=1) == first
    assert largest_singular_value(matrix, Method.EXACT, seed=1) == largest_singular_value(
        matrix, Method.EXACT, seed=1
    )


def test_low_rank_wide_matrix_exhausts_the_krylov_space() -> None:
    generator = torch.Generator().manual_seed(16)
    left = torch.randn(300, 3, generator=generator, dtype=torch.float64)
    right = torch.randn(3, 800, generator=generator, dtype=torch.float64)
    matrix = left @ right
    for method in (Method.AUTO, Method.EXACT, Method.LANCZOS):
        estimate = largest_singular_value(matrix, method)
        assert estimate.sigma == pytest.approx(reference(matrix), rel=1e-10)


# --- certificate, devices, helpers ---------------------------------------------------------


@pytest.mark.parametrize("method", [Method.EXACT, Method.AUTO, Method.POWER])
def test_certify_adds_a_proven_upper_bound(method: Method) -> None:
    matrix = gaussian(400, 300, seed=17, dtype=torch.float32)
    expected = reference(matrix)
    estimate = largest_singular_value(matrix, method, certify=True)
    assert estimate.certified is True
    assert estimate.upper is not None
    assert estimate.upper >= expected
    assert estimate.sigma <= estimate.upper


def test_resolve_device() -> None:
    assert resolve_device("cpu") == ("cpu", None)
    if not torch.cuda.is_available():
        device, note = resolve_device("cuda")
        assert device == "cpu"
        assert note is not None and "CUDA is not available" in note
    # A name that is no device sncli computes on is refused, not a silent CPU fallback.
    for bad in ("no-such-device", "tpu", "mps", "cuda:x", "CPU", "cuda:0:1"):
        with pytest.raises(ValueError, match="cpu, cuda or cuda:N"):
            resolve_device(bad)
    assert check_device("cuda:1") == "cuda:1"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ALL_METHODS)
def test_cuda_matches_cpu(method: Method) -> None:  # pragma: no cover - needs a GPU
    matrix = spiked_pair(700, 400, seed=18, rel_gap=0.3).to(torch.bfloat16)
    check(largest_singular_value(matrix, method, device="cuda"), reference(matrix), method)


def test_matvec64_and_exact_sigma() -> None:
    matrix = gaussian(1000, 300, seed=19, dtype=torch.bfloat16)
    vector = torch.randn(300, dtype=torch.float64)
    torch.testing.assert_close(matvec64(matrix, vector), matrix.double() @ vector)
    assert exact_sigma(matrix) == pytest.approx(reference(matrix), rel=1e-12)
    assert exact_sigma(torch.zeros(0, 3)) == 0.0


def test_as_matrix_reshapes_like_spectral_norm() -> None:
    weight = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    assert as_matrix(weight).shape == (2, 60)
    transposed = as_matrix(weight, 1)
    assert transposed.shape == (3, 40)
    torch.testing.assert_close(transposed[1], weight[:, 1].reshape(-1))
    with pytest.raises(ValueError, match="at least 2"):
        as_matrix(torch.ones(3))


# -------------------------------------------------------------- subnormal and extreme scales
# issue 28 §2: a 300×300 float32 layer of ~1e-41 (subnormal) made Lanczos fail (2^136 as a
# float32 factor is Inf) and power iteration return 55% of σ. Reference: float64 SVD of the
# matrix scaled by 2^e (exact: σ scales by the same power of two), scaled back.


def _scaled_reference(matrix: torch.Tensor) -> float:
    values = matrix.double().numpy()
    exponent = -math.frexp(float(np.abs(values).max()))[1]
    top = float(scipy.linalg.svdvals(np.ldexp(values, exponent))[0])
    return math.ldexp(top, -exponent)


@pytest.mark.parametrize(
    ("scale", "dtype"),
    [
        (1e-41, torch.float32),  # subnormal float32 (the reported layer)
        (1e-44, torch.float32),  # deep subnormal: a few significant bits each
        (1e-300, torch.float64),
        (1e-310, torch.float64),  # subnormal float64
        (1e-39, torch.bfloat16),
        (1e30, torch.float32),
        (1e300, torch.float64),
    ],
)
@pytest.mark.parametrize("method", ["auto", "lanczos", "exact", "power", "dense"])
def test_extreme_scales_measured_right_by_every_method(
    scale: float, dtype: torch.dtype, method: str
) -> None:
    generator = torch.Generator().manual_seed(0)
    matrix = (torch.randn(300, 300, generator=generator, dtype=torch.float64) * scale).to(dtype)
    assert float(matrix.abs().max()) > 0
    reference = _scaled_reference(matrix)
    estimate = largest_singular_value(matrix, method, certify=True)
    rtol = {"exact": 1e-10, "dense": 1e-10, "power": 1e-3}.get(method, DEFAULT_TOL)
    assert abs(estimate.sigma / reference - 1) <= rtol, (estimate.sigma, reference)
    assert estimate.sigma <= reference * (1 + 1e-12)
    assert estimate.upper is not None and estimate.upper >= reference * (1 - 1e-12)


def test_lapack_failure_is_a_numerical_error_for_that_layer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Were LAPACK to fail on a layer anyway, the caller gets NumericalError (that layer is
    reported as not measurable), never a bare _LinAlgError."""

    def fail(*_: object, **__: object) -> None:
        raise torch.linalg.LinAlgError("failed to converge")

    monkeypatch.setattr(torch.linalg, "eigvalsh", fail)
    monkeypatch.setattr(torch.linalg, "eigh", fail)
    matrix = torch.randn(300, 300, generator=torch.Generator().manual_seed(1))
    for method in ("auto", "lanczos", "exact", "dense"):
        with pytest.raises(NumericalError, match="not measurable"):
            largest_singular_value(matrix, method)
