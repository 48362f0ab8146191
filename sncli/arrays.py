"""NumPy arrays in place of torch tensors, for the formats and kernels that need no torch.

Readers of safetensors, GGUF, NumPy, Keras and ONNX files hand the σ and spectrum kernels NumPy
arrays (``Checkpoint.load_array``), so those commands run without importing torch (1.4–1.9 s of
start-up). NumPy has no bfloat16 without ``ml_dtypes`` (whose import alone takes ~1 s), so a
bf16 tensor is its raw bits, ``uint16``, viewed as :class:`BFloat16Array`: slicing, ``.T`` and
``reshape`` keep the class, and :func:`upcast` turns any piece of it into float32 exactly
(bf16 is the top half of a float32: ``bits << 16``).

:func:`torch_randn` draws the numbers ``torch.randn`` draws for the same seed, so a kernel's
random start block on NumPy is the one it has on torch and the two paths agree to rounding.

Imports numpy only inside functions (``sncli --help`` loads none of it); a leaf that
``formats/`` and ``numerics/`` may both import.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

_BFLOAT16: type | None = None
#: The NumPy dtypes the kernels compute with directly (others are upcast to float32 first).
FLOAT_KINDS = ("float16", "float32", "float64")


def bfloat16_array_type() -> type:
    """The ``np.ndarray`` subclass that marks uint16 data as bfloat16 bits (created once)."""
    global _BFLOAT16
    if _BFLOAT16 is None:
        import numpy as np

        class BFloat16Array(np.ndarray):
            """bfloat16 values held as their uint16 bit patterns (see :func:`upcast`)."""

            def __reduce__(self) -> tuple[Any, tuple[Any]]:  # a local class: pickle the bits
                return bfloat16_from_bits, (np.array(self.view(np.ndarray)),)

        _BFLOAT16 = BFloat16Array
    return _BFLOAT16


def bfloat16_from_bits(bits: np.ndarray) -> np.ndarray:
    """``bits`` (any 16-bit integer array) as a :class:`BFloat16Array` view, no copy."""
    import numpy as np

    return bits.view(np.uint16).view(bfloat16_array_type())


def is_bfloat16(array: Any) -> bool:
    return _BFLOAT16 is not None and isinstance(array, _BFLOAT16)


def is_array(value: Any) -> bool:
    """Whether ``value`` is a NumPy array (a torch tensor is not)."""
    module = type(value).__module__
    if module != "numpy" and not is_bfloat16(value):
        return False
    import numpy as np

    return isinstance(value, np.ndarray)


def dtype_name(array: np.ndarray) -> str:
    """The dtype as sncli names it (torch's names): ``bfloat16`` for a :class:`BFloat16Array`."""
    return "bfloat16" if is_bfloat16(array) else str(array.dtype)


def upcast(array: np.ndarray, dtype: Any = None, out: np.ndarray | None = None) -> np.ndarray:
    """``array`` converted to ``dtype`` (default float32; a fresh array or ``out``).

    bfloat16 bits become float32 by a 16-bit shift (exact); float16/32/64 convert as NumPy
    does (exactly, upwards); integers and booleans are exact in float32 up to 2²⁴.
    """
    import numpy as np

    target = np.dtype(np.float32 if dtype is None else dtype)
    if is_bfloat16(array):
        raw = array.view(np.ndarray)
        if out is not None and out.dtype == np.float32:  # straight into the buffer, no temporary
            np.left_shift(raw, 16, out=out.view(np.uint32), dtype=np.uint32)
            return out
        wide = np.left_shift(raw, 16, dtype=np.uint32).view(np.float32)
        if out is None:
            return wide if target == np.float32 else wide.astype(target)
        out[...] = wide
        return out
    if out is None:
        return np.array(array, dtype=target, copy=True, order="C")
    out[...] = array
    return out


def as_float(array: np.ndarray) -> np.ndarray:
    """``array`` in a float dtype the kernels compute with: floats as they are, bfloat16
    (upcast chunk by chunk by the kernels) as it is, anything else as float32."""
    import numpy as np

    if is_bfloat16(array) or array.dtype in (np.float16, np.float32, np.float64):
        return array
    if array.dtype.kind == "c":
        raise ValueError("complex matrices are not supported")
    return upcast(array)


def to_float64(array: np.ndarray) -> np.ndarray:
    """A float64 copy (``upcast`` to float64)."""
    import numpy as np

    return upcast(array, np.float64)


def float64_copy(value: Any) -> Any:
    """A float64 copy of a NumPy array (:func:`to_float64`) or of a torch tensor (as torch)."""
    if is_array(value):
        return to_float64(value)
    import torch

    return value.to(torch.float64)


def torch_randn(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """``torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=float64)``.

    torch's CPU generator is the standard MT19937 seeded with the seed's low 32 bits, as NumPy's
    ``RandomState`` seeds it. A float64 uniform takes two 32-bit draws (first the high word)
    and keeps 53 bits. From 16 values on, torch fills uniforms and transforms each block of 16
    by Box–Muller (u1 = 1 − data[j], u2 = data[j+8]), recomputing the last 16 from fresh draws
    when the size is not a multiple of 16; below 16 it draws pairs (u1, u2) and returns
    r·cos θ then the cached r·sin θ, with r = √(−2 log1p(−u2)), θ = 2π·u1. The values agree with
    torch's to the last bit up to the 1-ulp differences of NumPy's and the C library's log,
    sin and cos (tests/test_arrays.py compares them).
    """
    import numpy as np

    size = math.prod(shape)
    state = np.random.RandomState(seed & 0xFFFFFFFF)

    def uniforms(count: int) -> np.ndarray:
        words = state.randint(0, 1 << 32, size=2 * count, dtype=np.uint64)
        high, low = words[0::2], words[1::2]
        return ((high & 0x1FFFFF) << np.uint64(32) | low).astype(np.float64) * 2.0**-53

    if size >= 16:
        data = uniforms(size)
        whole = size - size % 16
        _box_muller_16(data[:whole].reshape(-1, 16))
        if size % 16:
            tail = uniforms(16)
            _box_muller_16(tail.reshape(1, 16))
            data[size - 16 :] = tail
        return data.reshape(shape)
    out = np.empty(size, dtype=np.float64)
    for i in range(0, size, 2):
        u1, u2 = uniforms(2)
        radius = math.sqrt(-2.0 * math.log1p(-u2))
        theta = 2.0 * math.pi * u1
        out[i] = radius * math.cos(theta)
        if i + 1 < size:
            out[i + 1] = radius * math.sin(theta)
    return out.reshape(shape)


class TorchGenerator:
    """``torch.Generator().manual_seed(seed)`` for a sequence of float64 ``randn``/``rand`` calls
    on one generator: the numbers torch draws, in the order it draws them (the search of
    :mod:`sncli.lipschitz.ascent` draws its starts this way without torch).

    The engine is :func:`torch_randn`'s (MT19937 seeded as NumPy's ``RandomState``, two 32-bit
    words per float64 uniform, blocks of 16 by Box–Muller); below 16 values torch draws pairs and
    caches r·sin θ in the generator, so a cached normal carries over to the next ``randn``
    (tests/test_arrays_generator.py compares sequences of calls with torch's).
    """

    def __init__(self, seed: int) -> None:
        import numpy as np

        self._state = np.random.RandomState(seed & 0xFFFFFFFF)
        self._cached: float | None = None

    def _uniforms(self, count: int) -> np.ndarray:
        import numpy as np

        words = self._state.randint(0, 1 << 32, size=2 * count, dtype=np.uint64)
        high, low = words[0::2], words[1::2]
        return ((high & 0x1FFFFF) << np.uint64(32) | low).astype(np.float64) * 2.0**-53

    def rand(self, size: int) -> np.ndarray:
        """``torch.rand(size, generator=g, dtype=torch.float64)``: uniform in [0, 1)."""
        return self._uniforms(size)

    def randn(self, size: int) -> np.ndarray:
        """``torch.randn(size, generator=g, dtype=torch.float64)``."""
        import numpy as np

        if size >= 16:
            data = self._uniforms(size)
            whole = size - size % 16
            _box_muller_16(data[:whole].reshape(-1, 16))
            if size % 16:
                tail = self._uniforms(16)
                _box_muller_16(tail.reshape(1, 16))
                data[size - 16 :] = tail
            return data
        out = np.empty(size, dtype=np.float64)
        for i in range(size):
            if self._cached is not None:
                out[i], self._cached = self._cached, None
                continue
            u1, u2 = self._uniforms(2)
            radius = math.sqrt(-2.0 * math.log1p(-u2))
            theta = 2.0 * math.pi * u1
            out[i] = radius * math.cos(theta)
            self._cached = radius * math.sin(theta)
        return out


def _box_muller_16(blocks: np.ndarray) -> None:
    """torch's ``normal_fill_16`` on each row of 16 uniforms, in place."""
    import numpy as np

    u1 = 1.0 - blocks[:, :8]
    u2 = blocks[:, 8:].copy()
    radius = np.sqrt(-2.0 * np.log(u1))
    theta = 2.0 * math.pi * u2
    blocks[:, :8] = radius * np.cos(theta)
    blocks[:, 8:] = radius * np.sin(theta)


def to_torch(array: np.ndarray) -> Any:
    """The array as a CPU torch tensor sharing its memory where it can (bfloat16 included);
    imports torch (``--device cuda``, or a caller not yet converted to NumPy)."""
    import numpy as np
    import torch

    bf16 = is_bfloat16(array)
    if bf16:
        array = array.view(np.ndarray).view(np.int16)
    if not (array.flags.c_contiguous and array.flags.writeable):
        array = array.copy(order="C")
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if bf16 else tensor


def from_torch(tensor: Any) -> np.ndarray:
    """A CPU torch tensor as NumPy, sharing memory where it can: bfloat16 as its bits
    (:class:`BFloat16Array`), dtypes NumPy cannot hold (float8…) upcast to float32."""
    import torch

    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        return bfloat16_from_bits(tensor.view(torch.int16).numpy())
    try:
        return tensor.numpy()
    except TypeError:  # float8 and other dtypes without a NumPy equivalent: exact in float32
        return tensor.to(torch.float32).numpy()
