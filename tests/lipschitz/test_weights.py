"""sncli.lipschitz.weights: the NumPy effective weight (W/σ̂ of spectral norm, a weight-norm
pair) against sncli.layers.effective_weight on torch, and BatchNorm/PReLU factors against the
closed forms computed in torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sncli.arrays import to_float64
from sncli.checkpoint import Checkpoint, open_checkpoint
from sncli.layers import BATCHNORM_EPS, Layer, classify, effective_weight
from sncli.lipschitz.weights import (
    batchnorm_lipschitz,
    chain_matrix,
    effective_weight_array,
    prelu_lipschitz,
)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Checkpoint:
    gen = torch.Generator().manual_seed(5)
    state = {
        "sn.weight_orig": torch.randn(12, 20, generator=gen),
        "sn.weight_u": torch.randn(12, generator=gen),
        "sn.weight_v": torch.randn(20, generator=gen),
        "wn.weight_g": torch.rand(6, 1, generator=gen) + 0.5,
        "wn.weight_v": torch.randn(6, 12, generator=gen).half(),
        "fc.weight": torch.randn(4, 6, generator=gen).bfloat16(),
        "bn.weight": torch.randn(6, generator=gen),
        "bn.bias": torch.randn(6, generator=gen),
        "bn.running_mean": torch.randn(6, generator=gen),
        "bn.running_var": torch.rand(6, generator=gen) + 0.01,
        "act.prelu.weight": torch.randn(6, generator=gen) * 2,
    }
    path = tmp_path / "m.safetensors"
    save_file(state, str(path))
    return open_checkpoint(path)


def _layers(checkpoint: Checkpoint) -> dict[str, Layer]:
    return {layer.name: layer for layer in classify(checkpoint).layers}


def test_effective_weight_array_equals_torch(checkpoint: Checkpoint) -> None:
    layers = _layers(checkpoint)
    assert set(layers) >= {"sn.weight_orig", "wn.weight", "fc.weight"}
    for name, layer in layers.items():
        free, free_estimate = effective_weight_array(checkpoint, layer)
        weight, estimate = effective_weight(checkpoint, layer)
        assert isinstance(free, np.ndarray)
        if estimate is None:
            assert free_estimate is None
        else:
            assert free_estimate == pytest.approx(estimate, rel=1e-13)
        expected = weight.double().numpy()
        got = to_float64(free)  # bfloat16 arrays hold their bits
        np.testing.assert_allclose(got, expected, rtol=1e-13, atol=0, err_msg=name)
        np.testing.assert_allclose(chain_matrix(checkpoint, layer), expected, rtol=1e-13)


def test_batchnorm_and_prelu_closed_forms(checkpoint: Checkpoint) -> None:
    gamma = checkpoint.load("bn.weight").double()
    var = checkpoint.load("bn.running_var").double()
    expected = float((gamma.abs() / torch.sqrt(var + BATCHNORM_EPS)).max())
    keys = ("bn.weight", "bn.running_var", "bn.bias")
    assert batchnorm_lipschitz(checkpoint, "bn", keys) == expected  # bit for bit
    slopes = checkpoint.load("act.prelu.weight").double()
    assert prelu_lipschitz(checkpoint, "act.prelu.weight") == max(1.0, float(slopes.abs().max()))
