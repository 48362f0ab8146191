"""sncli.dtypes against torch's own facts about its dtypes (itemsize, finfo, and the values a
dtype can hold, enumerated bit pattern by bit pattern)."""

from __future__ import annotations

import re

import pytest
import torch

from sncli.dtypes import (
    FLOAT_DTYPES,
    SAFETENSORS_DTYPES,
    TORCH_TO_SAFETENSORS,
    UNIT_ROUNDOFF,
    bits_per_element,
)

#: Codes whose elements are smaller than a byte. torch has no per-element dtype for them:
#: F4 maps to ``float4_e2m1fn_x2`` (two elements packed in one byte), the F6 types have no torch
#: dtype at all. The table counts bits per *element*, as safetensors' shapes do.
SUB_BYTE = {"F4", "F6_E2M3", "F6_E3M2"}


def torch_dtype(name: str) -> torch.dtype | None:
    value = getattr(torch, name, None)
    return value if isinstance(value, torch.dtype) else None


BYTE_SIZED = [code for code in SAFETENSORS_DTYPES if code not in SUB_BYTE]


@pytest.mark.parametrize("code", BYTE_SIZED)
def test_bits_match_torch_itemsize(code: str) -> None:
    bits, name = SAFETENSORS_DTYPES[code]
    dtype = torch_dtype(name)
    if dtype is None:
        pytest.skip(f"torch {torch.__version__} has no {name}")
    assert bits == dtype.itemsize * 8
    assert bits_per_element(name) == dtype.itemsize * 8


@pytest.mark.parametrize("code", BYTE_SIZED)
def test_code_names_its_width(code: str) -> None:
    # I16, U32, F64, BF16, F8_*, C64 (two float32): the digits after the letters are the bits.
    bits, _ = SAFETENSORS_DTYPES[code]
    if code == "BOOL":
        assert bits == 8  # safetensors stores one byte per bool
        return
    match = re.fullmatch(r"(?:[A-Z]+?)(\d+)(?:_.*)?", code)
    assert match is not None, code
    assert bits == int(match[1])


def test_sub_byte_entries() -> None:
    # F4 is E2M1: sign + 2 exponent + 1 mantissa = 4 bits; F6_EaMb: 1 + a + b = 6 bits.
    assert SAFETENSORS_DTYPES["F4"] == (4, "float4_e2m1fn_x2")
    for code in ("F6_E2M3", "F6_E3M2"):
        exponent, mantissa = map(int, re.fullmatch(r"F6_E(\d)M(\d)", code).groups())
        assert SAFETENSORS_DTYPES[code][0] == 1 + exponent + mantissa == 6
        assert SAFETENSORS_DTYPES[code][1] == code.lower().replace("f6_", "float6_")
    # torch's float4_e2m1fn_x2, where present, packs two 4-bit elements into one byte.
    packed = torch_dtype("float4_e2m1fn_x2")
    if packed is not None:
        assert packed.itemsize * 8 == 2 * SAFETENSORS_DTYPES["F4"][0]
    assert bits_per_element("float6_e2m3") == 6  # from the table, even without a torch dtype


def test_torch_to_safetensors_inverts_the_table() -> None:
    assert len(TORCH_TO_SAFETENSORS) == len(SAFETENSORS_DTYPES)  # no torch name used twice
    for code, (_, name) in SAFETENSORS_DTYPES.items():
        assert TORCH_TO_SAFETENSORS[name] == code
    for name, code in TORCH_TO_SAFETENSORS.items():
        assert SAFETENSORS_DTYPES[code][1] == name


def test_safetensors_codes_agree_with_the_official_library(tmp_path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    names = [n for n in TORCH_TO_SAFETENSORS if torch_dtype(n) is not None]
    tensors = {}
    for name in names:
        try:
            tensors[name] = torch.zeros(2, dtype=torch_dtype(name))
        except (RuntimeError, TypeError):  # pragma: no cover - dtype without a CPU allocator
            continue
    supported = {}
    for name, tensor in tensors.items():
        try:
            save_file({"t": tensor}, str(tmp_path / "probe.safetensors"))
        except (KeyError, ValueError, TypeError):
            continue  # this safetensors release does not know the dtype
        with safe_open(str(tmp_path / "probe.safetensors"), "pt") as handle:
            supported[name] = handle.get_slice("t").get_dtype()
    assert {"float32", "float16", "bfloat16", "float64", "int64"} <= set(supported)
    for name, code in supported.items():
        assert TORCH_TO_SAFETENSORS[name] == code


def spacing_above_one(dtype: torch.dtype) -> float:
    """The gap between 1 and the next value of ``dtype``, from the values themselves."""
    if dtype.itemsize <= 2:
        patterns = torch.arange(2 ** (8 * dtype.itemsize), dtype=torch.int32)
        carrier = torch.uint8 if dtype.itemsize == 1 else torch.int16
        values = patterns.to(carrier).view(dtype).double()
        values = values[torch.isfinite(values)]
        return values[values > 1].min().item() - 1
    one = torch.ones((), dtype=dtype)
    return (torch.nextafter(one, one * 2) - one).item()


@pytest.mark.parametrize("name", sorted(UNIT_ROUNDOFF))
def test_unit_roundoff_is_half_the_spacing_at_one(name: str) -> None:
    dtype = torch_dtype(name)
    if dtype is None:
        pytest.skip(f"torch {torch.__version__} has no {name}")
    assert UNIT_ROUNDOFF[name] == spacing_above_one(dtype) / 2


#: torch.finfo(float8_e5m2fnuz).eps is 2^-3, but the value after 1.0 is 1.25 (2 mantissa bits:
#: eps = 2^-2), as the enumeration above shows; the table follows the values.
FINFO_WRONG = {"float8_e5m2fnuz"}


@pytest.mark.parametrize("name", sorted(UNIT_ROUNDOFF))
def test_unit_roundoff_is_half_finfo_eps(name: str) -> None:
    dtype = torch_dtype(name)
    if dtype is None:
        pytest.skip(f"torch {torch.__version__} has no {name}")
    eps = torch.finfo(dtype).eps
    if name in FINFO_WRONG and eps != spacing_above_one(dtype):
        assert UNIT_ROUNDOFF[name] == eps  # torch's eps is half the real one here
        return
    assert UNIT_ROUNDOFF[name] == eps / 2


def test_float_dtypes_are_the_floating_torch_dtypes_we_round() -> None:
    assert set(UNIT_ROUNDOFF) == FLOAT_DTYPES
    for name in FLOAT_DTYPES:
        dtype = torch_dtype(name)
        if dtype is not None:
            assert dtype.is_floating_point
            assert name in TORCH_TO_SAFETENSORS  # every analysed dtype can be stored
    assert {"float64", "float32", "float16", "bfloat16"} <= FLOAT_DTYPES


@pytest.mark.parametrize(
    ("name", "bits"),
    [("complex128", 128), ("complex32", 32), ("qint8", 8), ("qint32", 32)],
)
def test_bits_per_element_outside_the_table(name: str, bits: int) -> None:
    assert name not in TORCH_TO_SAFETENSORS
    assert bits_per_element(name) == bits
    assert bits_per_element(name) == getattr(torch, name).itemsize * 8


def test_bits_per_element_of_an_unknown_name() -> None:
    with pytest.raises(AttributeError):
        bits_per_element("float7_not_a_dtype")
