"""The unrolled zero-padded conv (sncli.lipschitz.unrolled) against torch's conv on every basis
image (stride, dilation, groups, asymmetric pads, 1-D and 2-D), and the graph factor it gives."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sncli.lipschitz.unrolled import unrolled_conv  # noqa: E402


@pytest.mark.parametrize(
    ("kernel_shape", "size", "strides", "dilations", "pads", "groups"),
    [
        ((4, 2, 3, 3), (5, 6), (1, 1), (1, 1), (1, 1, 1, 1), 1),
        ((4, 2, 3, 2), (7, 6), (2, 1), (1, 2), (0, 2, 1, 0), 1),
        ((6, 1, 3, 3), (6, 6), (2, 2), (1, 1), (1, 1, 1, 1), 3),
        ((3, 2, 4), (9,), (3,), (2,), (2, 1), 1),
    ],
)
def test_matches_torch(kernel_shape, size, strides, dilations, pads, groups) -> None:
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal(kernel_shape)
    matrix = unrolled_conv(kernel, size, strides, dilations, pads, groups)
    assert matrix is not None
    in_ch = kernel_shape[1] * groups
    count = in_ch * int(np.prod(size))
    basis = torch.eye(count, dtype=torch.float64).reshape(count, in_ch, *size)
    dims = len(size)
    torch_pads = []
    for a in reversed(range(dims)):  # F.pad: last axis first, (begin, end)
        torch_pads += [pads[a], pads[a + dims]]
    padded = torch.nn.functional.pad(basis, torch_pads)
    fn = torch.nn.functional.conv2d if dims == 2 else torch.nn.functional.conv1d
    out = fn(padded, torch.from_numpy(kernel), stride=strides, dilation=dilations, groups=groups)
    np.testing.assert_allclose(matrix, out.reshape(count, -1).T.numpy(), atol=1e-12)


def test_too_large_is_none() -> None:
    assert unrolled_conv(np.ones((64, 64, 3, 3)), (32, 32), (1, 1), (1, 1), (1, 1, 1, 1)) is None


def test_graph_factor_is_the_zero_padded_norm(tmp_path: Path) -> None:
    """At 8×8 the conv's factor is the exact zero-padded norm (below the torus bound)."""
    pytest.importorskip("onnx")
    from sncli.lipschitz import graph_lipschitz

    torch.manual_seed(0)
    model = torch.nn.Conv2d(2, 3, 3, 1, 1, bias=False)
    path = tmp_path / "conv.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(1, 2, 8, 8),), str(path), dynamo=False)
    report = graph_lipschitz(path, lower=False)
    weight = model.weight.detach().double().numpy()
    exact = np.linalg.norm(unrolled_conv(weight, (8, 8), (1, 1), (1, 1), (1, 1, 1, 1)), 2)
    assert report.bound is not None
    assert exact <= report.bound <= exact * (1 + 1e-9)
    factor = next(n for n in report.nodes if n.op == "Conv")
    assert "unrolled" in factor.source
