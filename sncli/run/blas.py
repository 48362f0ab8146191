"""The threads of NumPy's (and SciPy's) OpenBLAS, set for a run as torch's are.

Per-layer work runs on single-threaded workers (:mod:`.local`); NumPy's OpenBLAS starts one
thread per core by default, which oversubscribes the cores beside the workers exactly as torch's
threads did (``run/local.py``). There is no NumPy API for it (``threadpoolctl`` is not a
dependency), so the OpenBLAS libraries this process has loaded are found in ``/proc/self/maps``
and their ``*openblas_set_num_threads*`` entry points called through ctypes. Elsewhere (no
``/proc``, another BLAS) nothing is changed.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator
from pathlib import Path

#: (getter, setter) symbol pairs: NumPy/SciPy wheels' scipy-openblas (64-bit ints, then 32),
#: then a system OpenBLAS.
_SYMBOLS = (
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
    ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
    ("openblas_get_num_threads", "openblas_set_num_threads"),
)


def _loaded_openblas() -> list[str]:
    """Paths of the OpenBLAS libraries mapped into this process."""
    try:
        maps = Path("/proc/self/maps").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    found: list[str] = []
    for line in maps.splitlines():
        path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
        if "openblas" in Path(path).name.lower() and path not in found:
            found.append(path)
    return found


def _controls() -> list[tuple[ctypes._CFuncPtr, ctypes._CFuncPtr]]:
    controls = []
    for path in _loaded_openblas():
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for getter, setter in _SYMBOLS:
            get = getattr(library, getter, None)
            put = getattr(library, setter, None)
            if get is not None and put is not None:
                get.restype = ctypes.c_int
                put.argtypes = [ctypes.c_int]
                controls.append((get, put))
                break
    return controls


@contextlib.contextmanager
def numpy_blas_threads(count: int) -> Iterator[None]:
    """Set every loaded OpenBLAS to ``count`` threads (importing NumPy first, so its library is
    loaded), restoring each afterwards."""
    import numpy  # noqa: F401 - loads NumPy's OpenBLAS, whose threads are set here

    controls = _controls()
    before = [get() for get, _ in controls]
    for _, put in controls:
        put(count)
    try:
        yield
    finally:
        for (_, put), value in zip(controls, before, strict=True):
            put(value)
