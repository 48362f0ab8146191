"""Convolution operator norms against explicitly built convolution matrices (float64 SVD).

Explicit matrices come from applying F.conv{1,2,3}d / F.conv_transpose{1,2}d to every basis
image (≤ 300 pixels·channels). Tolerances:
* EXACT_TOL = 2e-9 (relative): the circular norm is a certified upper bound within δ = 1e-9 of
  the max over the DFT grid, so it may exceed the explicit σ by that much and never fall below
  it by more than REF_TOL = 1e-12 (float64 SVD of the explicit matrix).
* Upper bounds must be ≥ explicit·(1 − REF_TOL); lower bounds ≤ explicit·(1 + REF_TOL).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sncli.numerics.conv import (
    ConvNorm,
    auto_grid,
    bound_factor,
    circular_operator_norm,
    conv_operator_norm,
    torus_norm_upper_bound,
    zero_padding_lower_bound,
)

EXACT_TOL = 2e-9
REF_TOL = 1e-12
GRID = 16


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _kernel(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed), dtype=torch.float64)


def _basis(channels: int, size: tuple[int, ...]) -> torch.Tensor:
    count = channels * math.prod(size)
    return torch.eye(count, dtype=torch.float64).reshape(count, channels, *size)


def _sigma(outputs: torch.Tensor) -> float:
    matrix = outputs.reshape(outputs.shape[0], -1)
    return float(torch.linalg.svdvals(matrix)[0]) if matrix.numel() else 0.0


def _effective(kernel: torch.Tensor, dilation: int) -> list[int]:
    return [dilation * (k - 1) + 1 for k in kernel.shape[2:]]


def circular_sigma(
    kernel: torch.Tensor,
    size: tuple[int, ...],
    stride: int | tuple[int, ...] = 1,
    dilation: int = 1,
) -> float:
    """σ of the circular conv with n/s outputs per axis: tile the input, then a valid conv."""
    dims = kernel.dim() - 2
    basis = _basis(kernel.shape[1], size)
    k_eff = _effective(kernel, dilation)
    reps = [1, 1] + [-(-(n + k - 1) // n) for n, k in zip(size, k_eff, strict=True)]
    index = (
        slice(None),
        slice(None),
        *[slice(0, n + k - 1) for n, k in zip(size, k_eff, strict=True)],
    )
    tiled = basis.repeat(*reps)[index]
    conv = getattr(F, f"conv{dims}d")
    return _sigma(conv(tiled, kernel, stride=stride, dilation=dilation))


def zero_sigma(
    kernel: torch.Tensor, n: int, stride: int, padding: int, dilation: int = 1
) -> float | None:
    dims = kernel.dim() - 2
    conv = getattr(F, f"conv{dims}d")
    try:
        out = conv(
            _basis(kernel.shape[1], (n,) * dims),
            kernel,
            stride=stride,
            padding=padding,
            dilation=dilation,
        )
    except RuntimeError:  # kernel larger than the padded input
        return None
    return _sigma(out)


def transposed_sigma(weight: torch.Tensor, n: int, stride: int, padding: int) -> float | None:
    dims = weight.dim() - 2
    conv_t = getattr(F, f"conv_transpose{dims}d")
    try:
        out = conv_t(_basis(weight.shape[0], (n,) * dims), weight, stride=stride, padding=padding)
    except RuntimeError:
        return None
    return _sigma(out)


@pytest.mark.parametrize(
    ("shape", "size", "stride", "dilation"),
    [
        ((3, 2, 3, 3), (6, 6), 1, 1),
        ((2, 3, 2, 3), (6, 6), 1, 1),
        ((3, 2, 3, 3), (6, 6), 2, 1),
        ((2, 2, 4, 4), (8, 8), 2, 1),
        ((2, 2, 3, 3), (9, 9), 3, 1),
        ((2, 3, 5, 5), (3, 3), 1, 1),
        ((2, 2, 4, 2), (2, 4), 2, 1),
        ((2, 2, 3, 3), (8, 8), 1, 2),
        ((2, 2, 3, 3), (6, 4), (2, 1), 1),
        ((3, 2, 5), (10,), 2, 1),
        ((1, 1, 7), (4,), 1, 1),
        ((2, 2, 2, 3, 2), (4, 4, 4), 1, 1),
        ((2, 2, 3, 3, 3), (4, 4, 4), 2, 1),
    ],
)
def test_circular_norm_equals_explicit_matrix(
    shape: tuple[int, ...], size: tuple[int, ...], stride: int | tuple[int, ...], dilation: int
) -> None:
    kernel = _kernel(*shape, seed=sum(shape))
    expected = circular_sigma(kernel, size, stride, dilation)
    value = circular_operator_norm(kernel, size, stride, dilation)
    assert expected * (1 - REF_TOL) <= value <= expected * (1 + EXACT_TOL)
    result = conv_operator_norm(
        kernel, padding="circular", input_size=size, stride=stride, dilation=dilation
    )
    assert result.exact and result.value == result.upper == value
    assert result.lower is not None
    assert expected * (1 - EXACT_TOL) <= result.lower <= expected * (1 + REF_TOL)


def test_circular_matches_pytorch_padding_mode() -> None:
    layer = torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular", bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(_kernel(4, 3, 3, 3, seed=5))
        expected = _sigma(layer(_basis(3, (7, 7))))
    value = circular_operator_norm(layer.weight.detach(), (7, 7))
    assert expected * (1 - REF_TOL) <= value <= expected * (1 + EXACT_TOL)


def test_circular_stride_must_divide_input_size() -> None:
    with pytest.raises(ValueError, match="divisible"):
        circular_operator_norm(_kernel(2, 2, 3, 3), (7, 7), 2)


@pytest.mark.parametrize("shape", [(5, 3, 1, 1), (4, 6, 1), (3, 3, 1, 1, 1)])
def test_one_by_one_conv_is_the_matrix_norm(shape: tuple[int, ...]) -> None:
    kernel = _kernel(*shape, seed=3)
    expected = float(torch.linalg.svdvals(kernel.reshape(shape[0], shape[1]))[0])
    dims = len(shape) - 2
    for result in (
        conv_operator_norm(kernel),
        conv_operator_norm(kernel, input_size=(5,) * dims, stride=2),
        conv_operator_norm(kernel, padding="circular", input_size=(4,) * dims, stride=2),
    ):
        assert expected * (1 - REF_TOL) <= result.value <= expected * (1 + EXACT_TOL)
        assert result.lower is None or result.lower <= expected * (1 + REF_TOL)
    assert conv_operator_norm(kernel, input_size=(5,) * dims).lower == pytest.approx(
        expected, rel=1e-10
    )


ZERO_CASES = [
    ((2, 3, 3, 3), 1),
    ((3, 2, 3, 3), 2),
    ((2, 2, 2, 4), 1),
    ((1, 1, 5, 5), 1),
    ((3, 2, 4, 4), 2),
    ((2, 2, 3, 3), 1),
    ((2, 3, 5), 1),
]


@pytest.mark.parametrize(("shape", "dilation"), ZERO_CASES)
def test_zero_padding_bounds_bracket_explicit_matrices(
    shape: tuple[int, ...], dilation: int
) -> None:
    kernel = _kernel(*shape, seed=11 * len(shape) + shape[-1])
    k_eff = max(_effective(kernel, dilation))
    upper = torus_norm_upper_bound(kernel, GRID, dilation)
    for n in (3, 4, 6, 7, 10):
        for stride in (1, 2):
            sigmas = [
                s
                for p in range(k_eff + 1)
                if (s := zero_sigma(kernel, n, stride, p, dilation)) is not None
            ]
            for sigma in sigmas:
                assert sigma <= upper * (1 + REF_TOL)
            lower = zero_padding_lower_bound(kernel, n, stride=stride, dilation=dilation)
            if lower is not None:
                assert lower <= min(sigmas) * (1 + REF_TOL)
    assert circular_sigma(kernel, (8,) * (kernel.dim() - 2), dilation=dilation) <= upper


def test_zero_padding_lower_bound_is_tight_for_large_inputs() -> None:
    kernel = _kernel(3, 3, 3, 3, seed=2)
    result = conv_operator_norm(kernel, input_size=(12, 12), grid=32)
    explicit = zero_sigma(kernel, 12, 1, 1)
    assert explicit is not None
    assert result.lower is not None and result.upper is not None
    assert result.lower <= explicit <= result.upper
    assert result.lower >= 0.9 * result.upper
    assert not result.exact and result.value == result.upper


def test_lower_bound_is_none_when_nothing_can_be_proved() -> None:
    kernel = _kernel(2, 2, 3, 3)
    assert conv_operator_norm(kernel, grid=GRID).lower is None
    assert zero_padding_lower_bound(kernel, (1, 1)) is None
    assert conv_operator_norm(kernel, padding="circular", grid=GRID).lower is None


@pytest.mark.parametrize(
    ("shape", "stride"), [((2, 3, 3, 3), 1), ((3, 2, 4, 4), 2), ((2, 2, 3), 3)]
)
def test_conv_transpose_equals_adjoint_conv_and_is_bounded(
    shape: tuple[int, ...], stride: int
) -> None:
    weight = _kernel(*shape, seed=17)
    dims = weight.dim() - 2
    k = weight.shape[-1]
    upper = conv_operator_norm(weight, transposed=True, grid=GRID).upper
    assert upper is not None
    for n in (3, 5, 6):
        sigmas = []
        for p in range(k):
            sigma = transposed_sigma(weight, n, stride, p)
            if sigma is None:
                continue
            sigmas.append(sigma)
            out_size = (n - 1) * stride - 2 * p + k
            conv = getattr(F, f"conv{dims}d")
            adjoint = conv(
                _basis(weight.shape[1], (out_size,) * dims), weight, stride=stride, padding=p
            )
            assert _sigma(adjoint) == pytest.approx(sigma, rel=1e-12)
            assert sigma <= upper * (1 + REF_TOL)
        result = conv_operator_norm(weight, input_size=n, stride=stride, transposed=True, grid=GRID)
        if result.lower is not None:
            assert result.lower <= min(sigmas) * (1 + REF_TOL)


def test_transposed_norm_matches_torch_module() -> None:
    layer = torch.nn.ConvTranspose2d(3, 2, 4, stride=2, padding=1, bias=False).double()
    with torch.no_grad():
        explicit = _sigma(layer(_basis(3, (5, 5))))
    result = conv_operator_norm(
        layer.weight.detach(), input_size=(5, 5), stride=2, transposed=True, grid=GRID
    )
    assert result.lower is not None and result.upper is not None
    assert result.lower <= explicit <= result.upper


def _all_equal(c: float, k: int) -> torch.Tensor:
    return torch.full((1, 1, k, k), c, dtype=torch.float64)


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_all_equal_kernel(n: int) -> None:
    c, k = 0.5, 3
    kernel = _all_equal(c, k)
    assert circular_operator_norm(kernel, (n, n)) == pytest.approx(c * k * k, rel=EXACT_TOL)
    assert circular_operator_norm(kernel, (n, n)) >= c * k * k
    upper = torus_norm_upper_bound(kernel, GRID)
    assert c * k * k <= upper <= c * k * k * bound_factor((3, 3), (GRID, GRID), (1, 1)) * 1.001
    same = c * (1 + 2 * math.cos(math.pi / (n + 1))) ** 2
    assert zero_sigma(kernel, n, 1, 1) == pytest.approx(same, rel=1e-12)
    lower = zero_padding_lower_bound(kernel, (n, n))
    assert lower is None or lower <= same * (1 + REF_TOL)


def reshape_norms(kernel: torch.Tensor) -> tuple[float, float]:
    """(R_out, R_in) by float64 SVD: σ of the (out, in·k) and (in, out·k) reshapes."""
    k = kernel.double()
    r_out = float(torch.linalg.svdvals(k.reshape(k.shape[0], -1))[0])
    r_in = float(torch.linalg.svdvals(k.transpose(0, 1).reshape(k.shape[1], -1))[0])
    return r_out, r_in


def test_sobel_checkerboard_and_delta_kernels() -> None:
    sobel = torch.outer(torch.tensor([1.0, 2, 1]), torch.tensor([1.0, 0, -1]))[None, None]
    assert circular_operator_norm(sobel, (8, 8)) == pytest.approx(8.0, rel=EXACT_TOL)
    assert circular_operator_norm(sobel, (6, 6)) == pytest.approx(4 * math.sqrt(3), rel=EXACT_TOL)
    factor = bound_factor((3, 3), (32, 32), (1, 1))  # the peak (0, π/2) is a grid point
    assert 8.0 <= torus_norm_upper_bound(sobel, 32) <= 8.0 * factor * (1 + 1e-8)
    assert reshape_norms(sobel) == pytest.approx((math.sqrt(12), math.sqrt(12)), rel=1e-12)

    checker = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])[None, None]
    assert circular_operator_norm(checker, (6, 6)) == pytest.approx(4.0, rel=EXACT_TOL)
    expected_5 = 4 * math.sin(2 * math.pi / 5) ** 2
    assert circular_operator_norm(checker, (5, 5)) == pytest.approx(expected_5, rel=EXACT_TOL)
    assert torus_norm_upper_bound(checker, GRID) >= 4.0
    assert reshape_norms(checker) == pytest.approx((2.0, 2.0), rel=1e-12)

    tap = _kernel(4, 3, seed=8)
    delta = torch.zeros(4, 3, 3, 3, dtype=torch.float64)
    delta[:, :, 1, 1] = tap
    norm = float(torch.linalg.svdvals(tap)[0])
    assert circular_operator_norm(delta, (5, 5)) == pytest.approx(norm, rel=EXACT_TOL)
    result = conv_operator_norm(delta, input_size=(8, 8), grid=GRID)
    assert result.lower == pytest.approx(norm, rel=1e-10)
    assert norm <= result.value <= norm * bound_factor((3, 3), (GRID, GRID), (1, 1)) * 1.001


@pytest.mark.parametrize(
    "shape", [(4, 3, 3, 3), (3, 5, 2, 2), (2, 2, 1, 5), (6, 2, 3), (2, 3, 2, 2, 2)]
)
def test_reshape_sandwich(shape: tuple[int, ...]) -> None:
    kernel = _kernel(*shape, seed=31)
    r_out, r_in = reshape_norms(kernel)
    sizes = kernel.shape[2:]
    dims = len(sizes)
    circ = circular_operator_norm(kernel, (max(sizes),) * dims)
    grid = tuple(1 if k == 1 else GRID for k in sizes)
    factor = bound_factor(tuple(sizes), grid, (1,) * dims)
    upper = torus_norm_upper_bound(kernel, GRID)
    assert max(r_out, r_in) <= circ * (1 + REF_TOL)
    assert circ <= upper
    assert upper <= math.sqrt(math.prod(sizes)) * min(r_out, r_in) * factor * (1 + 1e-5)


def test_half_precision_and_zero_kernels() -> None:
    kernel = _kernel(4, 4, 3, 3, seed=9)
    half = kernel.to(torch.float16)
    assert torus_norm_upper_bound(half, GRID) >= circular_sigma(half.double(), (8, 8))
    zero = torch.zeros(3, 2, 3, 3)
    assert conv_operator_norm(zero) == ConvNorm(
        0.0, 0.0, 0.0, True, "zero kernel", "the kernel is all zeros"
    )
    assert circular_operator_norm(zero, (4, 4)) == 0.0
    assert torus_norm_upper_bound(zero) == 0.0


def test_refusals() -> None:
    kernel = _kernel(2, 2, 3, 3)
    for mode in ("reflect", "replicate"):
        with pytest.raises(ValueError, match="not supported"):
            conv_operator_norm(kernel, padding=mode)
    with pytest.raises(ValueError, match="ConvTranspose"):
        conv_operator_norm(kernel, padding="circular", input_size=(4, 4), transposed=True)
    with pytest.raises(ValueError):
        conv_operator_norm(kernel, stride=(1, 2, 3))
    with pytest.raises(ValueError):
        circular_operator_norm(torch.ones(3, 3), (4, 4))
    with pytest.raises(ValueError):
        torus_norm_upper_bound(kernel, 0)


def test_coarse_grids_are_refined_until_the_factor_is_at_most_two() -> None:
    kernel = _kernel(2, 2, 7, 7, seed=1)
    upper = torus_norm_upper_bound(kernel, 2)
    assert upper >= circular_sigma(kernel, (8, 8))
    assert bound_factor((3, 3), (32, 32), (1, 1)) == pytest.approx(
        1 / math.cos(math.pi / 32) ** 2, rel=1e-14
    )
    with pytest.raises(ValueError):
        bound_factor((7, 7), (2, 2), (1, 1))
    with pytest.raises(ValueError):  # N must exceed d(k−1) on every axis: 6 = 2·(4−1)
        bound_factor((3, 4), (16, 6), (1, 2))


def test_auto_grid_follows_cost() -> None:
    """The cheapest N reaching each target (the factor falls with N): 12/23/46 for 3×3."""
    import sncli.numerics.conv as conv

    assert auto_grid((512, 512, 3, 3)) == 12
    assert auto_grid((256, 256, 3, 3)) == 23
    assert auto_grid((64, 64, 3, 3)) == 46
    for shape, dilation in (
        ((512, 512, 3, 3), 1),
        ((256, 256, 3, 3), 1),
        ((64, 64, 3, 3), 1),
        ((3, 64, 7, 7), 1),
        ((8, 8, 2, 2), 1),
        ((8, 8, 3, 3), 2),
        ((4, 4, 5), 1),
        ((4, 4, 3, 3, 3), 1),
    ):
        n = auto_grid(shape, dilation)
        sizes, dims = shape[2:], len(shape) - 2
        factor = bound_factor(sizes, (n,) * dims, (dilation,) * dims)
        target = next(t for t in conv.AUTO_TARGETS if factor <= t)
        assert (
            n - 1 <= dilation * (max(sizes) - 1)
            or bound_factor(sizes, (n - 1,) * dims, (dilation,) * dims) > target
        )


@pytest.mark.parametrize(("shape", "n", "stride"), [((52, 49, 3, 3), 4, 1), ((50, 49, 2, 2), 4, 2)])
def test_many_channels_take_the_lanczos_and_cholesky_path(
    shape: tuple[int, ...], n: int, stride: int
) -> None:
    kernel = _kernel(*shape, seed=41)
    expected = circular_sigma(kernel, (n, n), stride)
    value = circular_operator_norm(kernel, (n, n), stride)
    assert expected * (1 - REF_TOL) <= value <= expected * (1 + EXACT_TOL)


def test_refinement_and_delta_escalation_stay_sound(monkeypatch: pytest.MonkeyPatch) -> None:
    import sncli.numerics.conv as conv

    kernel = _kernel(60, 52, 3, 3, seed=43)
    symbols = torch.fft.fft2(kernel, s=(8, 8)).permute(2, 3, 0, 1).reshape(-1, 60, 52)
    expected = float(torch.linalg.svdvals(symbols).max())
    monkeypatch.setattr(conv, "_REFINE_STEPS", 2)
    taps = conv._taps(kernel, (1, 1))
    assert taps is not None
    for delta in (1e-9, 1e-17):
        result = conv._grid_max(taps, (8, 8), delta)
        upper = math.ldexp(result.upper, taps.exponent)
        lower = math.ldexp(result.lower, taps.exponent)
        assert lower <= expected * (1 + REF_TOL) and upper >= expected * (1 - REF_TOL)
        assert upper <= expected * (1 + 1e-6)


def test_groups_take_the_max_over_blocks() -> None:
    layer = torch.nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False).double()
    circular = torch.nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False, padding_mode="circular")
    circular = circular.double()
    with torch.no_grad():
        circular.weight.copy_(layer.weight)
        zero_explicit = _sigma(layer(_basis(4, (6, 6))))
        circular_explicit = _sigma(circular(_basis(4, (6, 6))))
    weight = layer.weight.detach()
    exact = conv_operator_norm(weight, padding="circular", input_size=(6, 6), groups=2)
    assert circular_explicit * (1 - REF_TOL) <= exact.value <= circular_explicit * (1 + EXACT_TOL)
    bounded = conv_operator_norm(weight, input_size=(6, 6), groups=2, grid=GRID)
    assert bounded.lower is not None and bounded.upper is not None
    assert bounded.lower <= zero_explicit <= bounded.upper
    assert conv_operator_norm(weight, grid=GRID).value >= bounded.upper * (1 - REF_TOL)
    with pytest.raises(ValueError, match="groups"):
        conv_operator_norm(weight, groups=4)


@pytest.mark.parametrize(
    ("groups", "per_group", "kernel", "size", "stride", "dilation"),
    [
        (16, 1, (3, 3), (6, 10), (1, 1), (1, 1)),  # depthwise 3×3 (960 unknowns: SVD < 1 s)
        (8, 1, (5, 5), (12, 16), (2, 2), (1, 1)),  # depthwise 5×5, stride 2 (MobileNet/PP-OCR)
        (6, 2, (3, 3), (10, 10), (2, 1), (2, 1)),  # two input channels per group
        (5, 1, (3,), (30,), (3,), (2,)),  # 1-D, dilation 2, kernel wider than the stride
        (4, 3, (3, 3, 3), (4, 4, 5), (1, 1, 1), (1, 1, 1)),  # 3-D
    ],
)
def test_one_output_channel_per_group_against_the_dense_operator(
    groups: int, per_group: int, kernel: tuple, size: tuple, stride: tuple, dilation: tuple
) -> None:
    """Depthwise convs take the batched FFT path (one row per group); against the circular
    conv's dense matrix (torch's own conv on every basis image) and the per-group path."""
    weight = torch.randn(groups, per_group, *kernel, generator=_gen(7), dtype=torch.float64)
    dims = len(size)
    pads: list[int] = []
    for k, d in zip(reversed(kernel), reversed(dilation), strict=True):
        pads += [0, d * (k - 1)]  # wrap the end: the circular conv on the torus
    conv = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    basis = F.pad(_basis(groups * per_group, size), pads, mode="circular")
    truth = _sigma(conv(basis, weight, stride=stride, dilation=dilation, groups=groups))
    fast = conv_operator_norm(
        weight, padding="circular", input_size=size, stride=stride, dilation=dilation, groups=groups
    )
    assert fast.exact and fast.lower is not None
    assert fast.lower <= truth * (1 + REF_TOL) and truth <= fast.upper
    assert fast.upper <= truth * (1 + 1e-10)
    per_group_path = max(
        conv_operator_norm(
            part, padding="circular", input_size=size, stride=stride, dilation=dilation
        ).upper
        for part in weight.chunk(groups, dim=0)
    )
    assert fast.upper == pytest.approx(per_group_path, rel=EXACT_TOL)


def _reference_grams(taps, grid: tuple[int, ...], freqs) -> torch.Tensor:
    """K̂ᴴK̂ of the taps' exact symbol Σ_t K_t e^{−i p_t·ω} (complex exp per tap, float64, on
    torch: a second implementation beside conv.py's NumPy)."""
    freqs, positions = torch.from_numpy(freqs), torch.from_numpy(taps.positions)
    omega = 2 * math.pi * freqs.to(torch.float64) / torch.tensor(grid, dtype=torch.float64)
    phases = torch.exp(-1j * (omega @ positions.T.to(torch.float64)))  # (F, T)
    values = torch.from_numpy(taps.values).to(torch.complex128)
    symbols = torch.einsum("ft,rnt->frn", phases, values)
    return symbols.mH @ symbols


@pytest.mark.parametrize(
    ("shape", "dilation", "stride", "grid"),
    [
        ((5, 7, 3, 3), (1, 1), (1, 1), (8, 8)),  # out < in: the transposed orientation
        ((9, 4, 3, 5), (2, 1), (1, 1), (8, 6)),
        ((6, 6, 3), (1,), (1,), (7,)),
        ((3, 4, 3, 3, 3), (1, 1, 1), (1, 1, 1), (4, 4, 4)),
        ((8, 5, 3, 3), (1, 1), (2, 2), (4, 4)),  # polyphase: taps merged at shared positions
        ((8, 8, 1, 1), (1, 1), (1, 1), (1, 1)),
    ],
)
def test_difference_grams_match_the_symbol_grams_within_their_bound(
    shape: tuple[int, ...],
    dilation: tuple[int, ...],
    stride: tuple[int, ...],
    grid: tuple[int, ...],
) -> None:
    """Σ_d D_d e^{id·ω} (the fast path) against K̂ᴴK̂ of the exact symbol: the stated rounding
    bound holds, and it is not vacuous (≤ 1e-11 of ‖G‖)."""
    import sncli.numerics.conv as conv

    taps = conv._taps(_kernel(*shape, seed=sum(shape)), dilation)
    assert taps is not None
    taps = conv._merged(conv._polyphase(taps, stride))
    assert taps.values.shape[0] >= taps.values.shape[1]
    differences = conv._differences(taps)
    freqs = conv._frequencies(grid)
    fast = torch.from_numpy(differences.grams(grid, freqs))
    reference = _reference_grams(taps, grid, freqs)
    gap = torch.linalg.matrix_norm(fast - reference, ord=2)
    size = torch.linalg.matrix_norm(reference, ord=2)
    assert float(gap.max()) <= differences.error
    assert differences.error <= 1e-11 * float(size.max())


@pytest.mark.parametrize(
    ("shape", "grid"), [((12, 10, 3, 3), (8, 8)), ((7, 16, 3, 3), (6, 6)), ((10, 9, 5), (16,))]
)
def test_both_gram_paths_certify_the_same_grid_max(
    monkeypatch: pytest.MonkeyPatch, shape: tuple[int, ...], grid: tuple[int, ...]
) -> None:
    """Difference Grams and K̂ᴴK̂ give the same certified max, both ≥ the FFT/SVD reference."""
    import sncli.numerics.conv as conv

    kernel = _kernel(*shape, seed=7)
    spatial = tuple(range(2, kernel.dim()))
    symbols = torch.fft.fftn(kernel, s=grid, dim=spatial)
    symbols = symbols.permute(*range(2, kernel.dim()), 0, 1).reshape(-1, *shape[:2])
    expected = float(torch.linalg.svdvals(symbols).max())
    taps = conv._taps(kernel, (1,) * len(grid))
    assert taps is not None
    results = {}
    for fast in (True, False):
        monkeypatch.setattr(conv, "_use_differences", lambda *_, fast=fast: fast)
        results[fast] = conv._grid_max(taps, grid, conv.CERT_DELTA)
    for result in results.values():
        upper = math.ldexp(result.upper, taps.exponent)
        lower = math.ldexp(result.lower, taps.exponent)
        assert lower <= expected * (1 + REF_TOL)
        assert expected * (1 - REF_TOL) <= upper <= expected * (1 + EXACT_TOL)
    assert results[True].upper == pytest.approx(results[False].upper, rel=EXACT_TOL)


def test_the_cost_model_takes_differences_for_3x3_kernels_on_fine_grids() -> None:
    import sncli.numerics.conv as conv

    def taps(*shape: int):
        result = conv._taps(_kernel(*shape), (1,) * (len(shape) - 2))
        assert result is not None
        return conv._merged(result)

    assert conv._use_differences(taps(64, 64, 3, 3), 144)
    assert conv._use_differences(taps(512, 256, 3, 3), 144)
    assert not conv._use_differences(taps(64, 64, 3, 3), 4)
    assert not conv._use_differences(taps(4, 6, 3, 3), 40)
    assert not conv._use_differences(taps(512, 512, 3, 3, 3), 1000)  # 524 MB stack: direct
