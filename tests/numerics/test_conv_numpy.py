"""conv.py on NumPy against what it computed on torch, and its NumPy parts against torch's.

* Golden values: the certified norms and lower bounds of ``conv_operator_norm`` on seeded
  random kernels as the torch implementation (commit 49c6857, torch 2.x, MKL, one thread)
  computed them. Upper bounds to 1e-9 relative (a block certified at a different threshold
  moves the bound by ≤ δ = 1e-9; measured ≤ 6e-16), lower bounds to 1e-7 (float32 power
  iterations; measured ≤ 9e-9). The independent references (explicit conv matrices' SVD) are
  in tests/numerics/test_conv.py.
* conv_lower's tap-by-tap convolution, ConvTranspose and adjoint against torch's F.conv*d /
  F.conv_transpose*d and ⟨Tx, y⟩ = ⟨x, Tᵀy⟩ (float64: 1e-12 relative).
* hermitian_numpy.certify_hermitian_batch against sncli.numerics.bounds'
  (torch) on the same batches: the same verdicts, and no verdict above the true λ_max.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sncli.numerics import conv_lower
from sncli.numerics.conv import conv_operator_norm
from sncli.numerics.hermitian_numpy import certify_hermitian_batch

#: (shape, options, value, lower) from the torch implementation; kernel = standard normal of
#: numpy.random.default_rng(100 + index).
GOLDEN = [
    ((8, 5, 3, 3), {"padding": "zeros", "grid": 16}, 15.573368935378202, None),
    ((16, 16, 3, 3), {"padding": "zeros", "grid": None}, 23.844431193998915, None),
    ((64, 32, 3, 3), {"padding": "zeros", "grid": None}, 41.879334036745604, None),
    ((6, 9, 5, 5), {"padding": "zeros", "grid": 12, "dilation": 2}, 38.32000412154176, None),
    ((7, 4, 3), {"padding": "zeros", "grid": None}, 7.30009981953192, None),
    ((4, 3, 3, 3, 3), {"padding": "zeros", "grid": 8}, 28.742461272158362, None),
    (
        (12, 8, 3, 3),
        {"padding": "zeros", "input_size": (10, 10), "grid": 16},
        19.764613563252727,
        17.885452177780614,
    ),
    (
        (12, 8, 3, 3),
        {"padding": "zeros", "input_size": (11, 9), "stride": 2, "grid": 16},
        19.02768786096646,
        11.837244961094067,
    ),
    (
        (8, 12, 4, 4),
        {"padding": "zeros", "input_size": (9, 9), "stride": 2, "transposed": True, "grid": 16},
        27.391794980785313,
        16.95326867105938,
    ),
    (
        (10, 6, 3, 3),
        {"padding": "circular", "input_size": (8, 8)},
        16.5613122146107,
        16.5613121980485,
    ),
    (
        (10, 6, 3, 3),
        {"padding": "circular", "input_size": (12, 12), "stride": 2},
        12.863967285273878,
        12.863967272409235,
    ),
    (
        (80, 70, 3, 3),
        {"padding": "circular", "input_size": (8, 8)},
        51.902363697174266,
        51.9023636452619,
    ),
    (
        (16, 1, 3, 3),
        {"padding": "circular", "input_size": (12, 12), "groups": 16},
        7.6935753814876335,
        7.693575381469351,
    ),
    (
        (8, 2, 3, 3),
        {"padding": "zeros", "input_size": (10, 10), "groups": 4, "grid": 16},
        11.6100681213148,
        10.328924776921676,
    ),
    ((32, 32, 1, 1), {"padding": "zeros"}, 11.147559605870656, None),
]


@pytest.mark.parametrize("index", range(len(GOLDEN)))
def test_norms_match_the_torch_implementation(index: int) -> None:
    shape, options, value, lower = GOLDEN[index]
    kernel = np.random.default_rng(100 + index).standard_normal(shape)
    for given in (kernel, torch.from_numpy(kernel)):  # a torch kernel is read as NumPy
        norm = conv_operator_norm(given, **options)
        assert norm.value == pytest.approx(value, rel=1e-9)
        assert norm.upper == norm.value
        if lower is None:
            assert norm.lower is None
        else:
            assert norm.lower is not None and norm.lower <= norm.value
            assert norm.lower == pytest.approx(lower, rel=1e-7)


def test_float32_and_torch_kernels_are_read_as_float64() -> None:
    kernel = np.random.default_rng(0).standard_normal((6, 4, 3, 3)).astype(np.float32)
    expected = conv_operator_norm(kernel.astype(np.float64), grid=12).value
    assert conv_operator_norm(kernel, grid=12).value == expected
    assert conv_operator_norm(torch.from_numpy(kernel), grid=12).value == expected
    assert conv_operator_norm(torch.from_numpy(kernel).bfloat16(), grid=12).value > 0
    with pytest.raises(ValueError, match="complex"):
        conv_operator_norm(kernel.astype(np.complex128))


@pytest.mark.parametrize(
    ("shape", "size", "stride", "dilation"),
    [
        ((5, 3, 3, 3), (7, 6), (1, 1), (1, 1)),
        ((4, 2, 3, 5), (9, 8), (2, 3), (2, 1)),
        ((3, 4, 3), (11,), (2,), (1,)),
        ((2, 3, 2, 2, 3), (4, 5, 4), (1, 2, 1), (1, 1, 2)),
    ],
)
def test_tap_by_tap_convolutions_match_torch(
    shape: tuple[int, ...], size: tuple[int, ...], stride: tuple[int, ...], dilation: tuple
) -> None:
    rng = np.random.default_rng(sum(shape))
    w = rng.standard_normal(shape)
    dims = len(size)
    margin = tuple(d * (k - 1) for k, d in zip(shape[2:], dilation, strict=True))
    x = rng.standard_normal((shape[1], *size))
    conv = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    pads: list[int] = []
    for m in reversed(margin):
        pads += [m, m]
    full = conv(F.pad(torch.from_numpy(x)[None], pads), torch.from_numpy(w), dilation=dilation)[0]
    ours = conv_lower._outputs(w, x, margin, stride, dilation, transposed=False)
    assert np.allclose(ours[0], full.numpy()[(slice(None), *[slice(0, None, s) for s in stride])])
    assert len(ours) == math.prod(stride)
    first = conv_lower._forward(w, x, margin, stride, dilation, transposed=False)
    y = rng.standard_normal(first.shape)
    back = conv_lower._adjoint(w, y, x.shape, margin, stride, dilation, transposed=False)
    assert np.vdot(first, y) == pytest.approx(np.vdot(x, back), rel=1e-12)
    # ConvTranspose: weight (in, out, *k) of the same numbers, input of shape[0] channels
    xt = rng.standard_normal((shape[0], *size))
    tconv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[dims - 1]
    expected = tconv(
        torch.from_numpy(xt)[None], torch.from_numpy(w), stride=stride, dilation=dilation
    )[0].numpy()
    ours_t = conv_lower._forward(w, xt, margin, stride, dilation, transposed=True)
    assert ours_t.shape == expected.shape and np.allclose(ours_t, expected, rtol=1e-12, atol=1e-12)
    yt = rng.standard_normal(ours_t.shape)
    back_t = conv_lower._adjoint(w, yt, xt.shape, margin, stride, dilation, transposed=True)
    assert np.vdot(ours_t, yt) == pytest.approx(np.vdot(xt, back_t), rel=1e-12)


@pytest.mark.parametrize("single", [False, True])
@pytest.mark.parametrize("complex_arith", [False, True])
def test_hermitian_certificate_agrees_with_torch(single: bool, complex_arith: bool) -> None:
    """Batches of Hermitian matrices whose λ_max sits just below and just above μ: the NumPy
    certificate gives torch's verdicts and never certifies a matrix with λ_max ≥ μ."""
    from sncli.numerics.bounds import certify_hermitian_batch as torch_certify

    rng = np.random.default_rng(5)
    n, batch, mu = 40, 24, 1.0
    mats = []
    for b in range(batch):
        a = rng.standard_normal((n, n))
        if complex_arith:
            a = a + 1j * rng.standard_normal((n, n))
        q = np.linalg.qr(a)[0]
        top = mu * (1 + (-1) ** b * 10.0 ** -(1 + b % 8))  # 1 ± 1e-1 … 1 ± 1e-8
        values = np.concatenate([rng.uniform(0, 0.9 * mu, n - 1), [top]])
        mats.append((q * values) @ q.conj().T)
    stack = np.stack(mats)
    truth = np.linalg.eigvalsh(stack)[:, -1]
    error = np.full(batch, 1e-14)
    ours = certify_hermitian_batch(
        stack.copy(), mu, error, complex_arith=complex_arith, single=single
    )
    theirs = torch_certify(
        torch.from_numpy(stack.copy()),
        mu,
        torch.from_numpy(error),
        complex_arith=complex_arith,
        single=single,
    ).numpy()
    assert not (ours & (truth >= mu)).any()
    assert (ours == theirs).all()
    assert ours.sum() >= 3  # λ_max = 1 − 1e-2 (b = 1, 9, 17) is proved in every mode
    in_place = stack.copy()
    again = certify_hermitian_batch(
        in_place, mu, error, complex_arith=complex_arith, overwrite=True
    )
    if not single:
        assert (again == ours).all()


def test_hermitian_certificate_refuses_a_matrix_holding_nan() -> None:
    """LAPACK's potrf can succeed on a matrix with NaN below the diagonal; such a matrix proves
    nothing, so it is refused (the same finite matrix is certified)."""
    base = np.diag([1.0, 2.0, 3.0])
    base[1, 0] = base[0, 1] = 0.1
    poisoned = base.copy()
    poisoned[2, 0] = poisoned[0, 2] = np.nan
    ok = certify_hermitian_batch(np.stack([base, poisoned]), 10.0, np.zeros(2), complex_arith=False)
    assert ok.tolist() == [True, False]
