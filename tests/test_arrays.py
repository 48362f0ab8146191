"""sncli.arrays: torch's random numbers drawn by NumPy, bfloat16 as bits, torch ⇄ NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sncli.arrays import (
    as_float,
    bfloat16_from_bits,
    dtype_name,
    from_torch,
    is_array,
    is_bfloat16,
    to_torch,
    torch_randn,
    upcast,
)


@pytest.mark.parametrize("seed", [0, 1, 7, 12345, 2**32 + 5, -3])
@pytest.mark.parametrize(
    "shape",
    [(1,), (2,), (3,), (4, 3), (15,), (16,), (17,), (4, 33), (1, 1000), (4, 1023), (2, 4099)],
)
def test_torch_randn_draws_torchs_numbers(seed: int, shape: tuple[int, ...]) -> None:
    """The same numbers as torch.randn (float64, a fresh generator), up to the last-ulp
    differences of NumPy's and the C library's log/sin/cos."""
    expected = torch.randn(
        *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    ).numpy()
    actual = torch_randn(seed, shape)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=4e-16, atol=0)


def test_bfloat16_bits_upcast_as_torch_does() -> None:
    bits = np.random.default_rng(0).integers(0, 1 << 16, size=1 << 16, dtype=np.uint16)
    bits[:8] = [0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0x0001, 0x807F, 0x3F80]  # ±0, ±inf, nan…
    array = bfloat16_from_bits(bits)
    expected = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).float().numpy()
    got = upcast(array)
    assert got.dtype == np.float32
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))  # NaN payloads too
    with np.errstate(invalid="ignore"):  # signalling NaN patterns
        wide, reference = upcast(array, np.float64), expected.astype(np.float64)
    assert np.array_equal(wide, reference, equal_nan=True)


def test_bfloat16_views_keep_their_class() -> None:
    array = bfloat16_from_bits(np.arange(24, dtype=np.uint16)).reshape(4, 6)
    for view in (array.T, array[1:3], array.reshape(2, 12), array.transpose(1, 0)[::2]):
        assert is_bfloat16(view) and is_array(view) and dtype_name(view) == "bfloat16"
    assert as_float(array) is array
    out = np.empty((2, 6), np.float32)
    assert upcast(array[:2], np.float32, out=out) is out


def test_torch_round_trip() -> None:
    for tensor in (
        torch.randn(5, 7, dtype=torch.bfloat16),
        torch.randn(5, 7, dtype=torch.float16),
        torch.randn(5, 7, dtype=torch.float64).T,
        torch.tensor(3.0),
        torch.arange(6, dtype=torch.int32),
    ):
        array = from_torch(tensor)
        back = to_torch(array)
        assert back.dtype == tensor.dtype and back.shape == tensor.shape
        assert torch.equal(back, tensor)
    float8 = torch.randn(4, 4).to(torch.float8_e4m3fn)
    assert np.array_equal(from_torch(float8), float8.float().numpy())
    assert not is_array(torch.zeros(2)) and not is_array([1.0])


def test_integers_become_float32() -> None:
    array = as_float(np.arange(6, dtype=np.int64).reshape(2, 3))
    assert array.dtype == np.float32
    with pytest.raises(ValueError, match="complex"):
        as_float(np.zeros((2, 2), np.complex64))


def test_bfloat16_arrays_pickle() -> None:
    """Dask workers may pickle what they load (``--scheduler``)."""
    import pickle

    array = bfloat16_from_bits(np.arange(12, dtype=np.uint16)).reshape(3, 4).T
    back = pickle.loads(pickle.dumps(array))
    assert is_bfloat16(back) and back.shape == (4, 3)
    assert np.array_equal(upcast(back), upcast(array))
