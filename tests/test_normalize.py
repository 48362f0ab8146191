"""normalize: σ after ≤ target in the stored dtype, everything else bit-identical, atomic writes."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn

from sncli.checkpoint import open_checkpoint
from sncli.errors import NoLayersMatchedError, SncliError, WriteError
from sncli.formats.safetensors import read_safetensors_header
from sncli.layers import classify
from sncli.normalize import (
    Action,
    NormalizeMode,
    NormalizeOptions,
    normalize_checkpoint,
    plan_normalization,
    scaled_weight,
)
from sncli.numerics.spectral import as_matrix

#: How far below the target `--mode scale` may land after rounding to each dtype (relative).
SCALE_FLOOR = {
    torch.float64: 1e-12,
    torch.float32: 1e-5,
    torch.float16: 2e-2,
    torch.bfloat16: 4e-2,
}
#: The float64 LAPACK measurement's own error when checking σ ≤ target (relative).
MEASURE = 1e-12


def svd_sigma(tensor: torch.Tensor, reshape_dim: int = 0) -> float:
    matrix = as_matrix(tensor.to(torch.float64), reshape_dim).numpy()
    return float(scipy.linalg.svdvals(matrix)[0])


def run(
    path: Path, out: Path | None, *, in_place: bool = False, **options: object
) -> tuple[object, object]:
    with open_checkpoint(path, key=options.pop("key", None)) as ckpt:  # type: ignore[arg-type]
        plan = plan_normalization(ckpt, NormalizeOptions(**options))  # type: ignore[arg-type]
        result = normalize_checkpoint(ckpt, plan, out, in_place=in_place)
    return plan, result


def safetensors_layout(path: Path) -> tuple[list[str], dict[str, str] | None, dict[str, bytes]]:
    """Header key order, metadata and raw bytes of each tensor."""
    header = read_safetensors_header(path)
    data = path.read_bytes()
    raw = {
        name: data[header.data_start + b : header.data_start + e]
        for name, (_, _, (b, e)) in header.tensors.items()
    }
    size = struct.unpack("<Q", data[:8])[0]
    order = [k for k in json.loads(data[8 : 8 + size]) if k != "__metadata__"]
    return order, header.metadata, raw


def test_mlp_scale_to_target_rest_bit_identical(mlp_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "mlp.safetensors"
    _, result = run(mlp_path, out, target=0.5)
    order_in, meta_in, raw_in = safetensors_layout(mlp_path)
    order_out, meta_out, raw_out = safetensors_layout(out)
    assert order_in == order_out
    assert meta_out is not None and meta_in is not None
    assert {k: v for k, v in meta_out.items() if k != "sncli"} == meta_in
    assert json.loads(meta_out["sncli"])["target"] == 0.5
    weights = {n for n in raw_in if n.endswith("weight")}
    for name in raw_in:
        if name not in weights:
            assert raw_in[name] == raw_out[name], name
    tensors = load_file(str(out))
    for name in weights:
        sigma = svd_sigma(tensors[name])
        assert 0.5 * (1 - SCALE_FLOOR[torch.float32]) <= sigma <= 0.5 * (1 + MEASURE)
    assert result.verified  # type: ignore[attr-defined]
    assert mlp_path.read_bytes() != out.read_bytes()


def test_clip_leaves_layers_below_target_byte_identical(mlp_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "clipped.safetensors"
    sigmas = {n: svd_sigma(t) for n, t in load_file(str(mlp_path)).items() if t.dim() == 2}
    target = sorted(sigmas.values())[1] * (1 + 1e-9)  # two layers at or below, one above
    plan, _ = run(mlp_path, out, target=target, mode=NormalizeMode.CLIP)
    _, _, raw_in = safetensors_layout(mlp_path)
    _, _, raw_out = safetensors_layout(out)
    tensors = load_file(str(out))
    for name, before in sigmas.items():
        if before <= target:
            assert raw_in[name] == raw_out[name]
        else:
            assert svd_sigma(tensors[name]) <= target * (1 + MEASURE)
    actions = {p.name: p.action for p in plan.layers}  # type: ignore[attr-defined]
    assert Action.KEEP in actions.values() and Action.SCALE in actions.values()


def test_sharded_bf16_keeps_layout_and_index(transformer_index_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "tt"
    run(transformer_index_path, out)
    src = transformer_index_path.parent
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in src.iterdir())
    index_in = json.loads(transformer_index_path.read_text())
    index_out = json.loads((out / transformer_index_path.name).read_text())
    assert index_out["weight_map"] == index_in["weight_map"]
    total = 0
    for shard in sorted(out.glob("*.safetensors")):
        order_in, _, raw_in = safetensors_layout(src / shard.name)
        order_out, _, raw_out = safetensors_layout(shard)
        assert order_in == order_out
        total += sum(len(b) for b in raw_out.values())
        tensors = load_file(str(shard))
        for name, tensor in tensors.items():
            assert tensor.dtype == torch.bfloat16
            selected = tensor.dim() == 2 and "embed" not in name
            if selected:
                sigma = svd_sigma(tensor)
                assert 1 - SCALE_FLOOR[torch.bfloat16] <= sigma <= 1 + MEASURE, name
            else:
                assert raw_in[name] == raw_out[name], name
    assert index_out["metadata"]["total_size"] == total


@pytest.mark.parametrize("fixture", ["disc_parametrized_path", "disc_legacy_path"])
def test_spectral_norm_checkpoint_keeps_u_v_consistent(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    path: Path = request.getfixturevalue(fixture)
    out = tmp_path / "out.pt"
    run(path, out)
    before = torch.load(path, weights_only=True)
    after = torch.load(out, weights_only=True)
    assert list(before) == list(after)
    with open_checkpoint(out) as ckpt:
        layers = classify(ckpt).layers
        for layer in layers:
            info = layer.spectral_norm
            assert info is not None and info.v_key is not None
            weight = after[layer.name].double()
            matrix = as_matrix(weight, layer.reshape_dim)
            u, v = after[info.u_key].double(), after[info.v_key].double()
            estimate = float(u @ matrix @ v)
            assert svd_sigma(weight) == pytest.approx(1.0, rel=1e-5)
            assert estimate == pytest.approx(svd_sigma(weight), rel=1e-6)
    for name, tensor in before.items():
        if name.endswith(("bias",)):
            assert torch.equal(tensor, after[name])


SN_APIS = {
    "legacy": nn.utils.spectral_norm,
    "parametrization": nn.utils.parametrizations.spectral_norm,
}


def _sn_conv_transpose(api: str, *, train: bool) -> nn.Module:
    """A real SN ConvTranspose2d(8, 8, 4): in == out, so u's length cannot tell the reshape."""
    torch.manual_seed(0)
    module = SN_APIS[api](nn.ConvTranspose2d(8, 8, 4))
    with torch.no_grad():
        if train:  # a few power iterations, as training runs them
            module.train()
            for _ in range(4):
                module(torch.randn(2, 8, 5, 5))
        module.eval()
        module(torch.randn(1, 8, 5, 5))  # legacy SN sets .weight in a forward pre-hook
    return module


def _used_sigma(module: nn.Module) -> float:
    """σ of the weight the module uses, reshaped as PyTorch's spectral_norm does (dim 1 first)."""
    with torch.no_grad():
        module.eval()
        module(torch.randn(1, 8, 5, 5))
        return svd_sigma(module.weight.detach(), 1)


@pytest.mark.parametrize("api", list(SN_APIS))
def test_square_sn_conv_transpose_normalized_in_the_model(api: str, tmp_path: Path) -> None:
    """Issue 10, defect 2: the written model, loaded back into torch, has the target σ."""
    path = tmp_path / "sn.pt"
    torch.save(_sn_conv_transpose(api, train=True).state_dict(), path)
    out = tmp_path / "out.pt"
    plan, result = run(path, out)
    assert [layer.reshape_dim for layer in plan.layers] == [1]  # type: ignore[attr-defined]
    assert result.verified  # type: ignore[attr-defined]
    reloaded = _sn_conv_transpose(api, train=False)
    reloaded.load_state_dict(torch.load(out, weights_only=True))
    assert _used_sigma(reloaded) == pytest.approx(1.0, rel=1e-5)

    baked = tmp_path / "baked.pt"
    run(path, baked, bake=True, target=0.5)
    plain = nn.ConvTranspose2d(8, 8, 4)
    plain.load_state_dict(torch.load(baked, weights_only=True))
    sigma = _used_sigma(plain)
    assert 0.5 * (1 - SCALE_FLOOR[torch.float32]) <= sigma <= 0.5 * (1 + MEASURE)


def _plain_discriminator() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 4, stride=2, padding=1),
        nn.LeakyReLU(0.1),
        nn.Conv2d(32, 64, 4, stride=2, padding=1),
        nn.LeakyReLU(0.1),
        nn.Conv2d(64, 128, 4, stride=2, padding=1),
        nn.LeakyReLU(0.1),
        nn.Flatten(),
        nn.Linear(128 * 4 * 4, 1),
    )


@pytest.mark.parametrize(
    ("fixture", "wrap"),
    [
        ("disc_parametrized_path", nn.utils.parametrizations.spectral_norm),
        ("disc_legacy_path", nn.utils.spectral_norm),
    ],
)
def test_bake_preserves_the_models_function(
    fixture: str, wrap: object, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """--bake with a target no layer exceeds writes exactly W/σ̂: same outputs, plain keys."""
    path: Path = request.getfixturevalue(fixture)
    out = tmp_path / "baked.pt"
    run(path, out, bake=True, mode=NormalizeMode.CLIP, target=10.0)
    baked = torch.load(out, weights_only=True)
    assert not any(k.endswith(("_u", "_v", "_orig")) or "parametrizations" in k for k in baked)
    plain = _plain_discriminator()
    plain.load_state_dict(baked)
    original = _plain_discriminator()
    for index in (0, 2, 4, 7):
        wrap(original[index])  # type: ignore[operator]
    original.load_state_dict(torch.load(path, weights_only=True))
    plain.eval()
    original.eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(plain(x), original(x), rtol=1e-5, atol=1e-6)


def test_bake_with_scale_normalizes_the_used_weight(disc_legacy_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "baked.pt"
    run(disc_legacy_path, out, bake=True)
    baked = torch.load(out, weights_only=True)
    for name in ("0.weight", "2.weight", "4.weight", "7.weight"):
        assert 1 - 1e-5 <= svd_sigma(baked[name]) <= 1 + MEASURE


def test_lightning_wrapper_kept_with_warning(lightning_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.ckpt"
    _, result = run(lightning_path, out)
    before = torch.load(lightning_path, weights_only=True)
    after = torch.load(out, weights_only=True)
    assert list(before) == list(after)
    assert after["epoch"] == before["epoch"]
    assert list(after["state_dict"]) == list(before["state_dict"])
    for name, tensor in before["state_dict"].items():
        if tensor.dim() in (2, 4):
            assert svd_sigma(after["state_dict"][name]) <= 1 + MEASURE
        else:
            assert torch.equal(tensor, after["state_dict"][name]) and tensor.dtype == (
                after["state_dict"][name].dtype
            )
    assert any("optimizer state" in w for w in result.warnings)  # type: ignore[attr-defined]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(64, 64), (300, 40), (1, 500), (128, 16, 3, 3)])
def test_sigma_after_never_above_target_per_dtype(
    dtype: torch.dtype, shape: tuple[int, ...], tmp_path: Path
) -> None:
    generator = torch.Generator().manual_seed(sum(shape))
    weights = {
        f"layer{i}.weight": (torch.randn(shape, generator=generator) * (i + 0.3)).to(dtype)
        for i in range(3)
    }
    src = tmp_path / "in.safetensors"
    save_file(weights, str(src))
    out = tmp_path / "out.safetensors"
    run(src, out, target=0.7)
    for name, tensor in load_file(str(out)).items():
        assert tensor.dtype == dtype
        sigma = svd_sigma(tensor)
        assert 0.7 * (1 - SCALE_FLOOR[dtype]) <= sigma <= 0.7 * (1 + MEASURE), name


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 24),
    cols=st.integers(1, 24),
    target=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**16),
)
def test_property_normalized_sigma_equals_target(
    rows: int, cols: int, target: float, seed: int
) -> None:
    from sncli.normalize import LayerPlan

    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    sigma = svd_sigma(weight)
    plan = LayerPlan(
        "w", "w", "linear", (rows, cols), "float32", 0, sigma, target / sigma, Action.SCALE
    )
    new, measured, _ = scaled_weight(weight, plan, target)
    truth = svd_sigma(new)
    assert truth <= target * (1 + MEASURE)
    assert truth >= target * (1 - SCALE_FLOOR[torch.float32])
    assert measured == pytest.approx(truth, rel=1e-12)


def test_zero_and_nonfinite_weights_are_skipped_never_nan(tmp_path: Path) -> None:
    weights = {
        "zero.weight": torch.zeros(8, 8),
        "nan.weight": torch.full((8, 8), float("nan")),
        "inf.weight": torch.eye(8) * float("inf"),
        "ok.weight": torch.eye(8) * 3,
    }
    src = tmp_path / "in.safetensors"
    save_file(weights, str(src))
    out = tmp_path / "out.safetensors"
    plan, _ = run(src, out)
    actions = {p.name: p.action for p in plan.layers}  # type: ignore[attr-defined]
    assert actions == {
        "inf.weight": Action.SKIP,
        "nan.weight": Action.SKIP,
        "ok.weight": Action.SCALE,
        "zero.weight": Action.SKIP,
    }
    _, _, raw_in = safetensors_layout(src)
    _, _, raw_out = safetensors_layout(out)
    for name in ("zero.weight", "nan.weight", "inf.weight"):
        assert raw_in[name] == raw_out[name]
    assert torch.allclose(load_file(str(out))["ok.weight"], torch.eye(8))


def test_dry_run_plan_writes_nothing(mlp_path: Path, tmp_path: Path) -> None:
    with open_checkpoint(mlp_path) as ckpt:
        plan = plan_normalization(ckpt, NormalizeOptions(target=2.0))
    assert [p.action for p in plan.layers] == [Action.SCALE] * 3
    for layer in plan.layers:
        assert layer.expected_after == pytest.approx(2.0)
    assert list(tmp_path.iterdir()) == []


def test_refuses_output_equal_to_input_and_existing_output(mlp_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "m.safetensors"
    src.write_bytes(mlp_path.read_bytes())
    with open_checkpoint(src) as ckpt:
        plan = plan_normalization(ckpt, NormalizeOptions())
        with pytest.raises(SncliError, match="--in-place"):
            normalize_checkpoint(ckpt, plan, src)
        existing = tmp_path / "exists.safetensors"
        existing.write_bytes(b"keep me")
        with pytest.raises(SncliError, match="--force"):
            normalize_checkpoint(ckpt, plan, existing)
        assert existing.read_bytes() == b"keep me"
    assert src.read_bytes() == mlp_path.read_bytes()


def test_in_place_replaces_atomically_and_leaves_no_temp(mlp_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "m.safetensors"
    src.write_bytes(mlp_path.read_bytes())
    inode_before = src.stat().st_ino
    run(src, None, in_place=True)
    assert src.stat().st_ino != inode_before  # a new file was renamed over the old one
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    for _name, tensor in load_file(str(src)).items():
        if tensor.dim() == 2:
            assert svd_sigma(tensor) <= 1 + MEASURE


def test_no_layer_matched(mlp_path: Path) -> None:
    with open_checkpoint(mlp_path) as ckpt, pytest.raises(NoLayersMatchedError):
        plan_normalization(ckpt, NormalizeOptions(include=("nothing-like-this",)))


def test_missing_output_folder_is_an_error(mlp_path: Path, tmp_path: Path) -> None:
    with open_checkpoint(mlp_path) as ckpt:
        plan = plan_normalization(ckpt, NormalizeOptions())
        with pytest.raises(WriteError):
            normalize_checkpoint(ckpt, plan, tmp_path / "no" / "such" / "dir" / "x.safetensors")


def test_norm_scales_and_embeddings_only_when_asked(transformer_index_path: Path) -> None:
    with open_checkpoint(transformer_index_path) as ckpt:
        default = plan_normalization(ckpt, NormalizeOptions())
        wide = plan_normalization(ckpt, NormalizeOptions(embeddings=True, norms=True))
    names = {p.name for p in default.layers}
    assert "model.embed_tokens.weight" not in names
    assert not any("norm" in n for n in names)
    wide_names = {p.name for p in wide.layers}
    assert "model.embed_tokens.weight" in wide_names
    assert "model.norm.weight" in wide_names
    norm = next(p for p in wide.layers if p.name == "model.norm.weight")
    assert norm.sigma_before == pytest.approx(1.0)


# ------------------------------------------------------------------ paths (issue 16 §3)


def _sharded(folder: Path, shards: list[str]) -> Path:
    """An index over ``shards`` (relative paths), one 12×8 weight each, σ ≈ 10."""
    generator = torch.Generator().manual_seed(1)
    weight_map = {}
    for i, shard in enumerate(shards):
        path = folder / shard
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({f"l{i}.weight": torch.randn(12, 8, generator=generator) * 3}, str(path))
        weight_map[f"l{i}.weight"] = shard
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


def test_sharded_output_keeps_the_relative_layout(tmp_path: Path) -> None:
    """Two shards both named model.safetensors in different subfolders: both kept."""
    index = _sharded(tmp_path / "in", ["a/model.safetensors", "b/model.safetensors", "c.st"])
    out = tmp_path / "out"
    run(index, out)
    for shard in ("a/model.safetensors", "b/model.safetensors", "c.st"):
        (tensor,) = load_file(str(out / shard)).values()
        assert svd_sigma(tensor) <= 1 + MEASURE
    with open_checkpoint(out) as reopened:
        assert sorted(reopened.tensors) == ["l0.weight", "l1.weight", "l2.weight"]


def test_in_place_refuses_a_shard_linked_outside_the_folder(tmp_path: Path) -> None:
    index = _sharded(tmp_path / "ckpt", ["s0.safetensors", "s1.safetensors"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shard = index.parent / "s1.safetensors"
    shard.rename(elsewhere / "s1.safetensors")
    shard.symlink_to(elsewhere / "s1.safetensors")
    before = {
        p.name: p.read_bytes()
        for p in (index.parent / "s0.safetensors", elsewhere / "s1.safetensors")
    }
    with pytest.raises(WriteError, match="outside the checkpoint's folder"):
        run(index, None, in_place=True)
    after = {
        p.name: p.read_bytes()
        for p in (index.parent / "s0.safetensors", elsewhere / "s1.safetensors")
    }
    assert after == before


def test_in_place_writes_through_a_symlink_and_keeps_mode_and_owner(
    mlp_path: Path, tmp_path: Path
) -> None:
    real = tmp_path / "store" / "mlp.safetensors"
    real.parent.mkdir()
    real.write_bytes(mlp_path.read_bytes())
    real.chmod(0o640)
    link = tmp_path / "mlp.safetensors"
    link.symlink_to(real)
    owner = (real.stat().st_uid, real.stat().st_gid)
    run(link, None, in_place=True)
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert real.stat().st_mode & 0o777 == 0o640
    assert (real.stat().st_uid, real.stat().st_gid) == owner
    for name, tensor in load_file(str(real)).items():
        if tensor.dim() == 2:
            assert svd_sigma(tensor) <= 1 + MEASURE, name
    assert [p.name for p in real.parent.iterdir()] == ["mlp.safetensors"]


def test_plan_changed_is_computed_once(mlp_path: Path) -> None:
    """50,000 layers took 397 s in a terminal: ``changed`` was rebuilt per progress update."""
    with open_checkpoint(mlp_path) as ckpt:
        plan = plan_normalization(ckpt, NormalizeOptions())
    assert plan.changed is plan.changed
    assert [p.name for p in plan.changed] == [p.name for p in plan.layers]


def test_recurrent_gate_stacks_are_refused(tmp_path: Path) -> None:
    """An LSTM's weight_ih/weight_hh stack 4 gates: scaling one to σ = 1 would scale every gate
    by one factor, so normalize leaves them untouched, says so, and normalizes the rest
    (a plain RNN's weights are one matrix each and are normalized)."""

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(4, 8)
            self.rnn = nn.RNN(3, 6)
            self.fc = nn.Linear(8, 2)

    state = Model().state_dict()
    path = tmp_path / "rnn.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    with open_checkpoint(path) as ckpt:
        plan = plan_normalization(ckpt, NormalizeOptions(target=1.0))
        planned = {p.name for p in plan.layers}
        assert planned == {"fc.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0"}
        reasons = {s.name: s.reason for s in plan.skipped}
        assert reasons["lstm.weight_ih_l0"].startswith(
            "recurrent gate stack (the 4 gates of an LSTM stacked (4×8 rows))"
        )
        assert any("2 recurrent gate stacks left as they are" in note for note in plan.notes)
        out = tmp_path / "out.safetensors"
        normalize_checkpoint(ckpt, plan, out)
    written = load_file(out)
    for key in ("lstm.weight_ih_l0", "lstm.weight_hh_l0"):
        assert torch.equal(written[key], state[key])
    sigma = torch.linalg.matrix_norm(written["rnn.weight_hh_l0"].double(), ord=2)
    assert float(sigma) == pytest.approx(1.0, rel=1e-6)
    with (
        open_checkpoint(path) as ckpt,
        pytest.raises(NoLayersMatchedError, match="recurrent gate stack"),
    ):
        plan_normalization(ckpt, NormalizeOptions(include=("lstm",)))
