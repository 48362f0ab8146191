"""run/blas: NumPy's OpenBLAS threads set for a run and restored after it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sncli.numerics.floating import check_finite
from sncli.run import torch_threads
from sncli.run.blas import _controls, numpy_blas_threads


def test_openblas_threads_are_set_and_restored() -> None:
    controls = _controls()
    if not controls:
        pytest.skip("no OpenBLAS loaded in this process (NumPy built against another BLAS)")
    before = [get() for get, _ in controls]
    with numpy_blas_threads(1):
        assert [get() for get, _ in controls] == [1] * len(controls)
        np.ones((64, 64)) @ np.ones((64, 64))
    assert [get() for get, _ in controls] == before
    torch_before = torch.get_num_threads()
    with torch_threads(1):  # both libraries, as the engines run
        assert torch.get_num_threads() == 1
        assert [get() for get, _ in controls] == [1] * len(controls)
    assert torch.get_num_threads() == torch_before
    assert [get() for get, _ in controls] == before


def test_check_finite_takes_parameters_and_arrays() -> None:
    check_finite(torch.nn.Parameter(torch.ones(3, 3)))
    check_finite(np.ones((3, 3)))
