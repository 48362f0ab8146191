"""``sncli.diff``: matched layers, ‖B − A‖₂ against closed forms and float64 SVD, listing of
missing and mismatched tensors, byte-equality, sharded against single-file sides.

Tolerances: exact/dense σ to 1e-12 relative of float64 SVD; the default auto method to its
1e-4 error target (a lower bound, so ≤ the reference).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import scipy.linalg
import torch
from safetensors.torch import save_file

from sncli.analysis import MethodOptions
from sncli.checkpoint import open_checkpoint
from sncli.diff import diff_checkpoints
from sncli.errors import NoLayersMatchedError, NumericalError
from sncli.numerics.spectral import Method

EXACT = MethodOptions(method=Method.EXACT, workers=1)


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(50, 16, generator=g),
        "layers.0.weight": torch.randn(32, 16, generator=g),
        "layers.0.bias": torch.randn(32, generator=g),
        "layers.1.weight": torch.randn(24, 32, generator=g),
        "conv.weight": torch.randn(8, 4, 3, 3, generator=g),
        "head.weight": torch.randn(10, 24, generator=g),
    }


def _save(tmp_path: Path, name: str, tensors: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def _diff(a: Path, b: Path, **kwargs: object):
    with open_checkpoint(a) as ca, open_checkpoint(b) as cb:
        return diff_checkpoints(ca, cb, **{"options": EXACT, **kwargs})


def _svd(matrix: torch.Tensor) -> float:
    return float(scipy.linalg.svdvals(matrix.double().reshape(matrix.shape[0], -1).numpy())[0])


def test_identical_checkpoints_are_all_unchanged(tmp_path: Path) -> None:
    tensors = _weights()
    report = _diff(
        _save(tmp_path, "a.safetensors", tensors), _save(tmp_path, "b.safetensors", tensors)
    )
    assert report.layers and all(layer.unchanged for layer in report.layers)
    assert all(layer.delta_sigma == 0 and layer.relative == 0 for layer in report.layers)
    assert report.exceeding(0.0) == []
    assert report.only_in_a == report.only_in_b == [] and report.mismatched == []


def test_rank_one_update_has_exactly_its_spectral_norm(tmp_path: Path) -> None:
    """B = A + c·u vᵀ (unit u, v) on two layers: ‖ΔW‖₂ = |c|; only those layers change."""
    a = _weights()
    b = dict(a)
    g = torch.Generator().manual_seed(9)
    changes = {"layers.1.weight": 0.75, "conv.weight": -2.5}
    for name, c in changes.items():
        rows = a[name].shape[0]
        u = torch.randn(rows, generator=g, dtype=torch.float64)
        v = torch.randn(a[name][0].numel(), generator=g, dtype=torch.float64)
        update = c * torch.outer(u / u.norm(), v / v.norm())
        b[name] = (a[name].double() + update.reshape(a[name].shape)).float()
    report = _diff(_save(tmp_path, "a.safetensors", a), _save(tmp_path, "b.safetensors", b))
    changed = {layer.name: layer for layer in report.changed}
    assert set(changed) == set(changes)
    for name, c in changes.items():
        layer = changed[name]
        reference = _svd(b[name].double() - a[name].double())  # float32 rounding of B included
        assert layer.delta_sigma == pytest.approx(reference, rel=1e-12)
        assert layer.delta_sigma == pytest.approx(abs(c), rel=1e-6)
        assert layer.sigma_a == pytest.approx(_svd(a[name]), rel=1e-12)
        assert layer.relative == pytest.approx(layer.delta_sigma / layer.sigma_a, rel=1e-15)
        frob = float(torch.linalg.vector_norm(b[name].double() - a[name].double()))
        assert layer.delta_frobenius == pytest.approx(frob, rel=1e-12)
    assert [layer.name for layer in report.exceeding(0.0)] == sorted(changes)


@pytest.mark.parametrize("c", [1.5, 0.25, -1.0])
def test_scaled_checkpoint_moves_by_c_minus_one(tmp_path: Path, c: float) -> None:
    a = _weights()
    b = {k: (v.double() * c).float() for k, v in a.items()}
    report = _diff(_save(tmp_path, "a.safetensors", a), _save(tmp_path, "b.safetensors", b))
    for layer in report.layers:
        assert layer.relative == pytest.approx(abs(c - 1), rel=1e-6)
        assert layer.relative_frobenius == pytest.approx(abs(c - 1), rel=1e-6)
        assert layer.sigma_b == pytest.approx(abs(c) * layer.sigma_a, rel=1e-6)
        # same directions up to sign: every principal cosine is 1
        assert layer.subspace_cosines is not None
        assert min(layer.subspace_cosines) == pytest.approx(1.0, abs=1e-9)
        assert layer.outside_top_subspace == 0 and layer.intruder_indices == ()


def test_auto_method_is_a_lower_bound_within_its_tolerance(tmp_path: Path) -> None:
    a = _weights()
    b = {k: v + 0.1 * torch.randn_like(v) for k, v in a.items()}
    a_path, b_path = _save(tmp_path, "a.safetensors", a), _save(tmp_path, "b.safetensors", b)
    with open_checkpoint(a_path) as ca, open_checkpoint(b_path) as cb:
        report = diff_checkpoints(ca, cb, options=MethodOptions(workers=2))
    for layer in report.layers:
        reference = _svd(b[layer.key_b].double() - a[layer.key_a].double())
        assert reference * (1 - 1e-4) <= layer.delta_sigma <= reference * (1 + 1e-12)


def test_missing_extra_and_mismatched_tensors_are_listed(tmp_path: Path) -> None:
    a = _weights()
    b = dict(a)
    del b["head.weight"]
    b["new.weight"] = torch.randn(3, 3)
    b["layers.1.weight"] = torch.randn(24, 30)  # reshaped: not compared
    b["conv.weight"] = a["conv.weight"].to(torch.float16)  # dtype change: compared
    report = _diff(_save(tmp_path, "a.safetensors", a), _save(tmp_path, "b.safetensors", b))
    assert report.only_in_a == ["head.weight"]
    assert report.only_in_b == ["new.weight"]
    mismatched = {m.name: m for m in report.mismatched}
    assert set(mismatched) == {"layers.1.weight", "conv.weight"}
    assert not mismatched["layers.1.weight"].compared
    assert mismatched["conv.weight"].compared and mismatched["conv.weight"].dtype_b == "float16"
    names = {layer.name for layer in report.layers}
    assert "conv.weight" in names and "layers.1.weight" not in names
    conv = next(layer for layer in report.layers if layer.name == "conv.weight")
    assert not conv.unchanged and 0 < conv.relative < 1e-3  # float16 rounding only


def test_a_prefix_on_one_side_still_matches(tmp_path: Path) -> None:
    a = _weights()
    b = {f"module.{k}": v for k, v in a.items()}
    torch.save(b, tmp_path / "b.pt")
    report = _diff(_save(tmp_path, "a.safetensors", a), tmp_path / "b.pt")
    assert all(layer.unchanged for layer in report.layers)
    assert report.only_in_a == report.only_in_b == []
    assert {layer.key_b for layer in report.layers} >= {"module.layers.0.weight"}


def test_sharded_side_against_a_single_file(tmp_path: Path) -> None:
    a = _weights()
    names = sorted(a)
    shards = {"s1.safetensors": names[:3], "s2.safetensors": names[3:]}
    folder = tmp_path / "sharded"
    folder.mkdir()
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: a[k].contiguous() for k in keys}, str(folder / shard))
        weight_map.update(dict.fromkeys(keys, shard))
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    report = _diff(_save(tmp_path, "a.safetensors", a), index)
    assert len(report.layers) == 5 and all(layer.unchanged for layer in report.layers)


def test_nothing_in_common_is_an_error(tmp_path: Path) -> None:
    a = _save(tmp_path, "a.safetensors", {"x.weight": torch.randn(3, 4)})
    b = _save(tmp_path, "b.safetensors", {"y.weight": torch.randn(3, 4)})
    with pytest.raises(NoLayersMatchedError, match="nothing to compare"):
        _diff(a, b)


def test_non_finite_weights_are_reported(tmp_path: Path) -> None:
    a = {"fc.weight": torch.randn(4, 4)}
    b = {"fc.weight": torch.full((4, 4), float("nan"))}
    with pytest.raises(NumericalError, match="NaN"):
        _diff(_save(tmp_path, "a.safetensors", a), _save(tmp_path, "b.safetensors", b))


def test_certified_difference_has_a_proven_upper_bound(tmp_path: Path) -> None:
    a = _weights()
    b = {k: v + 0.01 * torch.ones_like(v) for k, v in a.items()}
    options = MethodOptions(method=Method.LANCZOS, certify=True, workers=1)
    report = _diff(
        _save(tmp_path, "a.safetensors", a), _save(tmp_path, "b.safetensors", b), options=options
    )
    for layer in report.layers:
        reference = _svd(b[layer.key_b].double() - a[layer.key_a].double())
        assert layer.delta_upper is not None and layer.certified
        assert layer.delta_sigma <= reference * (1 + 1e-12) <= layer.delta_upper * (1 + 1e-12)


def test_to_pandas_has_one_row_per_layer(tmp_path: Path) -> None:
    pytest.importorskip("pandas")
    a = _weights()
    b = dict(a)
    b["head.weight"] = a["head.weight"] * 2
    report = _diff(_save(tmp_path, "a.safetensors", a), _save(tmp_path, "b.safetensors", b))
    frame = report.to_pandas()
    assert list(frame["name"]) == [layer.name for layer in report.layers]
    assert frame.set_index("name").loc["head.weight", "relative"] == pytest.approx(1.0, rel=1e-6)
    assert frame.attrs["only_in_a"] == []


def test_a_layer_moving_from_zero_sorts_first_and_fails_any_gate(tmp_path: Path) -> None:
    """A zero-initialised LoRA B that trained: ‖A‖₂ = 0, so relative is None (not 0), the gate
    counts it as above any threshold, and no subspace is compared on the zero side."""
    from sncli.diff import relative_change

    a = {"lora_B.weight": torch.zeros(8, 4), "fc.weight": torch.randn(8, 8)}
    b = {"lora_B.weight": torch.full((8, 4), 0.01), "fc.weight": a["fc.weight"] * 1.1}
    report = _diff(_save(tmp_path, "a.safetensors", a), _save(tmp_path, "b.safetensors", b))
    lora = next(layer for layer in report.layers if layer.name == "lora_B.weight")
    assert lora.relative is None and lora.delta_sigma > 0
    assert relative_change(lora) == float("inf")
    assert lora.subspace_cosines is None and lora.outside_top_subspace is None
    assert lora.intruder_indices is None
    assert [layer.name for layer in report.exceeding(1e6)] == ["lora_B.weight"]


def test_non_finite_layers_are_listed_as_not_compared(tmp_path: Path) -> None:
    a = {"fc1.weight": torch.randn(4, 4), "fc2.weight": torch.randn(4, 4)}
    b = dict(a)
    b["fc2.weight"] = a["fc2.weight"].clone()
    b["fc2.weight"][3, 3] = float("nan")
    report = _diff(_save(tmp_path, "a.safetensors", a), _save(tmp_path, "b.safetensors", b))
    assert [item.name for item in report.unmeasured] == ["fc2.weight"]
    assert "NaN" in report.unmeasured[0].reason and "in B" in report.unmeasured[0].reason
    assert [layer.name for layer in report.layers] == ["fc1.weight"]


def _spiked(m: int, n: int, values: list[float], seed: int) -> torch.Tensor:
    """A float32 m×n matrix with the given top singular values over a small Gaussian bulk."""
    g = torch.Generator().manual_seed(seed)
    k = len(values)
    u = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64)).Q
    bulk = torch.randn(m, n, generator=g, dtype=torch.float64) * 0.01 / n**0.5
    return ((u * torch.tensor(values, dtype=torch.float64)) @ v.T + bulk).float()


def test_iterative_subspaces_state_their_error_and_match_lapack(tmp_path: Path) -> None:
    """Above subspaces.DENSE_SIDE (300×280): well-separated top values converge, the stated
    cosine error is small (below 1e-3), every cosine is within it of LAPACK's, no
    intruder is left unresolved, and σ of each side (the top Ritz value, reused from the
    iteration) is a lower bound within auto's 1e-4 of float64 SVD."""
    from sncli.numerics import subspaces

    values = [2.0**-i * 8 for i in range(10)]
    a = _spiked(300, 280, values, 1)
    b = (
        a
        + 0.3
        * torch.outer(torch.linalg.qr(torch.randn(300, 1)).Q[:, 0], torch.ones(280))
        / 280**0.5
    )
    report = _diff(
        _save(tmp_path, "a.safetensors", {"w.weight": a}),
        _save(tmp_path, "b.safetensors", {"w.weight": b}),
        options=MethodOptions(workers=1),
    )
    (layer,) = report.layers
    assert min(a.shape) > subspaces.DENSE_SIDE
    assert layer.subspace_error is not None and layer.subspace_error < 1e-3
    left_a = scipy.linalg.svd(a.double().numpy(), full_matrices=False)[0][:, :8]
    left_b = scipy.linalg.svd(b.double().numpy(), full_matrices=False)[0][:, :8]
    exact = scipy.linalg.svdvals(left_a.T @ left_b)
    assert layer.subspace_cosines == pytest.approx(list(exact), abs=layer.subspace_error + 1e-12)
    assert layer.intruder_unresolved == ()
    for sigma, matrix in ((layer.sigma_a, a), (layer.sigma_b, b)):
        assert _svd(matrix) * (1 - 1e-4) <= sigma <= _svd(matrix) * (1 + 1e-13)


def test_unresolved_subspaces_say_so(tmp_path: Path) -> None:
    """A Gaussian 300×300 layer (no gap among its top values) slightly changed: the top-8
    subspaces cannot be resolved by the iteration, and the report says error 1 rather than
    pretending; the intruder directions are unresolved, not counted."""
    g = torch.Generator().manual_seed(4)
    a = torch.randn(300, 300, generator=g)
    b = a + 0.01 * a.roll(1, 0)
    report = _diff(
        _save(tmp_path, "a.safetensors", {"w.weight": a}),
        _save(tmp_path, "b.safetensors", {"w.weight": b}),
        options=MethodOptions(workers=1),
    )
    (layer,) = report.layers
    assert layer.subspace_error == 1.0
    assert layer.intruder_unresolved and layer.intruder_indices == ()
