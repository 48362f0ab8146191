"""lipschitz computes its factors costliest first (no large conv left alone at the end while the
other worker idles) and still reports them in natural key order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import sncli.lipschitz.product as lipschitz_module
from sncli.checkpoint import open_checkpoint
from sncli.lipschitz import LipschitzOptions, lipschitz_report
from sncli.numerics.conv import torus_bound_cost


def test_torus_bound_cost_grows_with_channels_and_grid() -> None:
    assert torus_bound_cost((64, 64, 3, 3)) < torus_bound_cost((128, 128, 3, 3))
    assert torus_bound_cost((64, 64, 3, 3), grid=8) < torus_bound_cost((64, 64, 3, 3), grid=16)
    assert torus_bound_cost((8, 8, 1, 1)) < torus_bound_cost((8, 8, 3, 3))


@pytest.mark.usefixtures("single_torch_thread")
def test_factors_are_computed_costliest_first_and_reported_in_key_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = torch.Generator().manual_seed(5)
    state = {
        "layer1.0.conv1.weight": torch.randn(4, 4, 3, 3, generator=g) / 9,
        "layer1.0.bn1.weight": 1.0 + 0.1 * torch.randn(4, generator=g),
        "layer1.0.bn1.bias": torch.zeros(4),
        "layer1.0.bn1.running_mean": torch.zeros(4),
        "layer1.0.bn1.running_var": torch.ones(4),
        "layer2.0.conv1.weight": torch.randn(16, 4, 3, 3, generator=g) / 9,
        "layer3.0.conv1.weight": torch.randn(32, 16, 3, 3, generator=g) / 9,
        "fc.weight": torch.randn(10, 32, generator=g) / 6,
    }
    save_file(state, tmp_path / "m.safetensors")
    computed: list[str] = []
    original = lipschitz_module._layer_factor

    def recording(task, options):  # type: ignore[no-untyped-def]
        computed.append(task.name)
        return original(task, options)

    monkeypatch.setattr(lipschitz_module, "_layer_factor", recording)
    with open_checkpoint(tmp_path / "m.safetensors") as ckpt:
        report = lipschitz_report(ckpt, LipschitzOptions(workers=1, grid=8))
    assert computed == [
        "layer3.0.conv1.weight",
        "layer2.0.conv1.weight",
        "layer1.0.conv1.weight",
        "fc.weight",
    ]
    assert [f.name for f in report.factors] == [
        "fc.weight",
        "layer1.0.bn1.weight",
        "layer1.0.conv1.weight",
        "layer2.0.conv1.weight",
        "layer3.0.conv1.weight",
    ]
