"""sncli.arrays.TorchGenerator draws what one torch.Generator draws over a sequence of float64
randn/rand calls (the lower-bound search's starts, sncli/lipschitz/ascent.py): equal values,
to 1 ulp-level differences of NumPy's and the C library's log/sin/cos (4e-16 relative)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sncli.arrays import TorchGenerator  # noqa: E402


@pytest.mark.parametrize("size", [1, 3, 5, 15, 16, 21, 100, 1000, 150_528])
@pytest.mark.parametrize("seed", [0, 7, 2**40 + 3])
def test_sequences_match_torch(size: int, seed: int) -> None:
    ours = TorchGenerator(seed)
    theirs = torch.Generator().manual_seed(seed)
    for kind in ("randn", "rand", "randn", "randn", "rand", "randn"):
        mine = getattr(ours, kind)(size)
        expected = getattr(torch, kind)(size, generator=theirs, dtype=torch.float64).numpy()
        assert mine.shape == expected.shape
        np.testing.assert_allclose(mine, expected, rtol=4e-16, atol=4e-16)


def test_odd_small_randn_carries_its_cached_normal() -> None:
    """torch caches the second normal of a pair: randn(3) then randn(1) is randn(4)'s values."""
    ours = TorchGenerator(5)
    split = np.concatenate([ours.randn(3), ours.randn(1)])
    whole = torch.randn(4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    np.testing.assert_allclose(split, whole.numpy(), rtol=4e-16, atol=4e-16)
