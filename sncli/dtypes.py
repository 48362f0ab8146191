"""Facts about dtypes, in one table each: safetensors codes, bit widths, unit roundoff.

Dtypes are named as torch names them without the ``torch.`` prefix (``"bfloat16"``).
"""

from __future__ import annotations

#: safetensors dtype code -> (bits per element, torch dtype name).
SAFETENSORS_DTYPES: dict[str, tuple[int, str]] = {
    "BOOL": (8, "bool"),
    "U8": (8, "uint8"),
    "I8": (8, "int8"),
    "F8_E5M2": (8, "float8_e5m2"),
    "F8_E4M3": (8, "float8_e4m3fn"),
    "F8_E4M3FNUZ": (8, "float8_e4m3fnuz"),
    "F8_E5M2FNUZ": (8, "float8_e5m2fnuz"),
    "F8_E8M0": (8, "float8_e8m0fnu"),
    "I16": (16, "int16"),
    "U16": (16, "uint16"),
    "F16": (16, "float16"),
    "BF16": (16, "bfloat16"),
    "I32": (32, "int32"),
    "U32": (32, "uint32"),
    "F32": (32, "float32"),
    "I64": (64, "int64"),
    "U64": (64, "uint64"),
    "F64": (64, "float64"),
    "C64": (64, "complex64"),
    "F4": (4, "float4_e2m1fn_x2"),
    "F6_E2M3": (6, "float6_e2m3"),
    "F6_E3M2": (6, "float6_e3m2"),
}
#: torch dtype name -> safetensors dtype code.
TORCH_TO_SAFETENSORS = {name: code for code, (_, name) in SAFETENSORS_DTYPES.items()}

#: Unit roundoff of each floating dtype we analyse: how far one rounding can move a value
#: (relative), 2^-(mantissa bits + 1).
UNIT_ROUNDOFF = {
    "float64": 2.0**-53,
    "float32": 2.0**-24,
    "float16": 2.0**-11,
    "bfloat16": 2.0**-8,
    "float8_e4m3fn": 2.0**-4,
    "float8_e4m3fnuz": 2.0**-4,
    "float8_e5m2": 2.0**-3,
    "float8_e5m2fnuz": 2.0**-3,
}

#: Floating dtypes whose weights we analyse (after upcasting).
FLOAT_DTYPES = frozenset(UNIT_ROUNDOFF)

_BITS = {name: bits for bits, name in SAFETENSORS_DTYPES.values()}

#: The label of a quantized tensor that its reader dequantizes to float32 (``Q4_K (dequantized)``).
DEQUANTIZED = " (dequantized)"


def analysed_dtype(dtype: str) -> str:
    """The dtype a tensor is loaded as: float32 for dequantized labels, else the dtype itself."""
    return "float32" if dtype.endswith(DEQUANTIZED) else dtype


def bits_per_element(dtype: str) -> int:
    """Bits of one element as loaded; dtypes safetensors cannot store are asked of NumPy, then
    torch."""
    dtype = analysed_dtype(dtype)
    bits = _BITS.get(dtype)
    if bits is not None:
        return bits
    import numpy as np

    try:  # complex128 and other NumPy dtypes (npy/npz files): no torch needed
        return np.dtype(dtype).itemsize * 8
    except TypeError:
        pass
    import torch

    return getattr(torch, dtype).itemsize * 8
