"""Mixture-of-experts stacks (sncli.experts): each expert a layer ``KEY[e]``, σ against float64
numpy SVD of each slice, on files written by gguf's writer (with gguf's own tensor names) and by
transformers (a tiny gpt-oss from a config, ``save_pretrained``; a tiny Mixtral's fused state
dict)."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import quants
from gguf.constants import MODEL_TENSOR, TENSOR_NAMES, GGMLQuantizationType
from typer.testing import CliRunner

from sncli import MethodOptions, open_checkpoint, spectral_norms
from sncli.cli import app
from sncli.errors import CheckpointError
from sncli.layers import LayerKind, classify
from sncli.numerics.spectral import Method

E, FF, D = 8, 128, 64
#: σ of each expert against float64 LAPACK: dense float64 σ agrees to rounding.
RTOL = 1e-10
EXACT = MethodOptions(method=Method.EXACT)


def run(*args: str, code: int = 0) -> tuple[str, str]:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, result.stderr
    return result.stdout, result.stderr


def _sigma(matrix: np.ndarray) -> float:
    return float(np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False)[0])


def gguf_stacks(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """gate/up (E, ff, d) and down (E, d, ff): GGUF's (E, out, in), named from gguf's tables."""
    stacks = {}
    for tensor in (MODEL_TENSOR.FFN_GATE_EXP, MODEL_TENSOR.FFN_UP_EXP, MODEL_TENSOR.FFN_DOWN_EXP):
        shape = (E, D, FF) if tensor is MODEL_TENSOR.FFN_DOWN_EXP else (E, FF, D)
        name = TENSOR_NAMES[tensor].format(bid=0) + ".weight"
        stacks[name] = rng.standard_normal(shape).astype(np.float32)
    return stacks


def write_gguf(
    path: Path,
    stacks: dict[str, np.ndarray],
    *,
    expert_count: int | None = E,
    raw: GGMLQuantizationType | None = None,
) -> Path:
    writer = gguf.GGUFWriter(str(path), "qwen2moe")
    if expert_count is not None:
        writer.add_expert_count(expert_count)
    for name, data in stacks.items():
        if raw is None:
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, quants.quantize(data, raw), raw_dtype=raw)
    writer.add_tensor("blk.0.ffn_norm.weight", np.ones(D, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def moe_gguf(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    stacks = gguf_stacks(np.random.default_rng(0))
    return write_gguf(tmp_path / "moe.gguf", stacks), stacks


def test_gguf_stack_is_one_linear_layer_per_expert(moe_gguf) -> None:
    path, stacks = moe_gguf
    with open_checkpoint(path) as ckpt:
        layers = {layer.name: layer for layer in classify(ckpt).layers}
        for name, data in stacks.items():
            for e in range(E):
                layer = layers[f"{name}[{e}]"]
                assert (layer.kind, layer.expert, layer.stack) == (LayerKind.LINEAR, e, name)
                assert layer.shape == data.shape[1:]  # (out, in), as stored
                assert "GGUF *_exps" in layer.note
                np.testing.assert_array_equal(ckpt.load(layer.name).numpy(), data[e])
        assert not any(layer.kind.is_conv for layer in layers.values())
        assert set(layers) == {f"{n}[{e}]" for n in stacks for e in range(E)}


def test_gguf_expert_sigma_is_each_slice_sigma_not_the_reshape(moe_gguf) -> None:
    path, stacks = moe_gguf
    with open_checkpoint(path) as ckpt:
        report = spectral_norms(ckpt, options=EXACT)
    got = {layer.name: layer.sigma for layer in report.layers}
    for name, data in stacks.items():
        reshape = _sigma(data.reshape(E, -1))
        for e in range(E):
            want = _sigma(data[e])
            assert got[f"{name}[{e}]"] == pytest.approx(want, rel=RTOL)
            assert want < reshape / 2  # the 8×8192 reshape's σ is no expert's
    largest = max(report.layers, key=lambda layer: layer.sigma)
    assert largest.sigma == pytest.approx(
        max(_sigma(d[e]) for d in stacks.values() for e in range(E))
    )


def test_gguf_inspect_json_names_experts_and_groups_stacks(moe_gguf) -> None:
    path, stacks = moe_gguf
    data = json.loads(run("inspect", str(path), "--format", "json", "--method", "exact")[0])
    by_name = {item["name"]: item for item in data["layers"]}
    name = "blk.0.ffn_down_exps.weight"
    item = by_name[f"{name}[3]"]
    assert (item["expert"], item["stack"], item["shape"]) == (3, name, [D, FF])
    assert item["sigma"] == pytest.approx(_sigma(stacks[name][3]), rel=RTOL)
    groups = {g["stack"]: g for g in data["summary"]["expert_stacks"]}
    assert set(groups) == set(stacks)
    for stack, values in stacks.items():
        sigmas = [_sigma(values[e]) for e in range(E)]
        top = int(np.argmax(sigmas))
        assert groups[stack]["experts"] == E
        assert groups[stack]["largest"]["expert"] == top
        assert groups[stack]["largest"]["sigma"] == pytest.approx(sigmas[top], rel=RTOL)


def test_gguf_quantized_expert_loads_only_its_slice(tmp_path: Path) -> None:
    stacks = gguf_stacks(np.random.default_rng(1))
    path = write_gguf(tmp_path / "q8.gguf", stacks, raw=GGMLQuantizationType.Q8_0)
    with open_checkpoint(path) as ckpt:
        for name in stacks:
            whole = ckpt.load(name).numpy()
            for e in (0, E - 1):
                np.testing.assert_array_equal(ckpt.load(f"{name}[{e}]").numpy(), whole[e])
        report = spectral_norms(ckpt, options=EXACT)
    got = {layer.name: layer.sigma for layer in report.layers}
    reader = gguf.GGUFReader(str(path))
    for tensor in reader.tensors:
        if tensor.name not in stacks:
            continue
        values = quants.dequantize(tensor.data, tensor.tensor_type).reshape(
            stacks[tensor.name].shape
        )
        for e in range(E):
            assert got[f"{tensor.name}[{e}]"] == pytest.approx(_sigma(values[e]), rel=RTOL)


def test_gguf_expert_count_disagreeing_with_metadata_is_refused(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "bad.gguf", gguf_stacks(np.random.default_rng(2)), expert_count=4)
    with pytest.raises(CheckpointError, match=r"holds 8 experts .* qwen2moe.expert_count = 4"):
        open_checkpoint(path)
    _, err = run("inspect", str(path), code=1)  # CheckpointError
    assert "bad.gguf" in err and "qwen2moe.expert_count = 4" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unknown_3d_expert_tensor_is_skipped_not_a_conv(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "odd.safetensors"
    save_file(
        {
            "mlp.experts.scales.weight": torch.randn(4, 8, 8),
            "mlp.moe.router_table.weight": torch.randn(4, 8, 8),
            "conv.weight": torch.randn(8, 4, 3),
        },
        str(path),
    )
    with open_checkpoint(path) as ckpt:
        result = classify(ckpt)
    kinds = {layer.name: layer.kind for layer in result.layers}
    assert kinds == {"conv.weight": LayerKind.CONV1D}
    reasons = {s.name: s.reason for s in result.skipped}
    for name in ("mlp.experts.scales.weight", "mlp.moe.router_table.weight"):
        assert "not a known expert-stack layout" in reasons[name]


HF_COMMON = {
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
}


def tiny_model(kind: str, **extra: object):
    """A tiny transformers MoE model from a config, its experts drawn N(0, 1)."""
    transformers = pytest.importorskip("transformers")
    import torch

    config = transformers.AutoConfig.for_model(kind, **HF_COMMON, **extra)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "experts" in name:
                param.normal_()
    return model


@pytest.fixture(scope="module")
def gpt_oss(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """gpt-oss saved by ``save_pretrained``: fused (E, in, out) stacks (``x @ W[e]``)."""
    model = tiny_model(
        "gpt_oss", num_local_experts=4, num_experts_per_tok=2, layer_types=["full_attention"]
    )
    folder = tmp_path_factory.mktemp("gpt_oss")
    model.save_pretrained(folder)
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return folder, state


def test_gpt_oss_stacks_are_transposed_to_out_in(gpt_oss) -> None:
    import torch

    folder, state = gpt_oss
    model = tiny_model(
        "gpt_oss", num_local_experts=4, num_experts_per_tok=2, layer_types=["full_attention"]
    )
    experts = model.model.layers[0].mlp.experts
    x = torch.randn(5, HF_COMMON["hidden_size"])
    with open_checkpoint(folder) as ckpt:
        layers = {layer.name: layer for layer in classify(ckpt).layers}
        report = spectral_norms(ckpt, options=EXACT, include=["experts"])
        for stem in ("gate_up_proj", "down_proj"):
            key = f"model.layers.0.mlp.experts.{stem}"
            stack = state[key]
            for e in range(4):
                layer = layers[f"{key}[{e}]"]
                assert layer.shape == stack.shape[:0:-1]  # (out, in) = stored (in, out) reversed
                assert "transposed" in layer.note and "config.json" in layer.note
                matrix = ckpt.load(layer.name)
                np.testing.assert_array_equal(matrix.numpy(), stack[e].T)
                if stem == "gate_up_proj":  # the model's own product: x @ W[e] = (Wᵀ x)
                    want = x @ experts.gate_up_proj[e].detach()
                    torch.testing.assert_close(x @ matrix.T, want)
    got = {layer.name: layer.sigma for layer in report.layers}
    assert len(got) == 8
    for name, sigma in got.items():
        key, e = name[:-3], int(name[-2])
        assert sigma == pytest.approx(_sigma(state[key][e]), rel=RTOL)


@pytest.mark.parametrize("writer", ["safetensors", "torch"])
def test_mixtral_fused_state_dict_is_out_in(tmp_path: Path, writer: str) -> None:
    """Mixtral's in-memory experts (what ``torch.save(model.state_dict())`` keeps): fused
    ``gate_up_proj`` (E, 2·ff, hidden) and ``down_proj`` (E, hidden, ff), F.linear layout; no
    config.json, so the hidden width comes from the norm scales."""
    import torch
    from safetensors.torch import save_file

    model = tiny_model("mixtral", num_local_experts=4, num_experts_per_tok=2)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / ("m.safetensors" if writer == "safetensors" else "m.pt")
    if writer == "safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    with open_checkpoint(path) as ckpt:
        layers = {layer.name: layer for layer in classify(ckpt).layers}
        report = spectral_norms(ckpt, options=EXACT, include=["experts"])
    key = "model.layers.0.mlp.experts.gate_up_proj"
    assert state[key].shape == (4, 96, 32)
    assert layers[f"{key}[2]"].shape == (96, 32)
    assert "as stored" in layers[f"{key}[2]"].note and "norm scales" in layers[f"{key}[2]"].note
    got = {layer.name: layer.sigma for layer in report.layers}
    assert len(got) == 8
    for name, sigma in got.items():
        stack, e = name[:-3], int(name[-2])
        assert sigma == pytest.approx(_sigma(state[stack][e].numpy()), rel=RTOL)


def test_config_expert_count_disagreeing_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = tiny_model("mixtral", num_local_experts=4, num_experts_per_tok=2)
    save_file(
        {k: v.detach().contiguous() for k, v in model.state_dict().items()},
        str(tmp_path / "model.safetensors"),
    )
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 32, "num_local_experts": 3}))
    with pytest.raises(
        CheckpointError, match=r"holds 4 experts .*config.json says num_local_experts = 3"
    ):
        open_checkpoint(tmp_path)


def test_safetensors_expert_reads_only_its_slice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from safetensors.torch import save_file

    from sncli.formats.safetensors import SafetensorsStreamReader

    stack = torch.randn(4, 6, 5, dtype=torch.float64)
    save_file(
        {"moe.experts.w2": stack, "norm.weight": torch.ones(6)}, str(tmp_path / "s.safetensors")
    )
    reads: list[object] = []
    original = SafetensorsStreamReader._read

    def spy(self, file, key, index):  # type: ignore[no-untyped-def]
        reads.append(index)
        return original(self, file, key, index)

    monkeypatch.setattr(SafetensorsStreamReader, "_read", spy)
    with open_checkpoint(tmp_path / "s.safetensors") as ckpt:
        for e in range(4):
            torch.testing.assert_close(ckpt.load(f"moe.experts.w2[{e}]"), stack[e], rtol=0, atol=0)
    assert reads == [0, 1, 2, 3]


def test_gguf_spectrum_and_diff_per_expert(moe_gguf, tmp_path: Path) -> None:
    path, stacks = moe_gguf
    other = {
        k: v + 0.1 * np.random.default_rng(9).standard_normal(v.shape).astype(np.float32)
        for k, v in stacks.items()
    }
    path_b = write_gguf(tmp_path / "b.gguf", other)
    spectrum = json.loads(run("spectrum", str(path), "--format", "json")[0])
    diff = json.loads(
        run("diff", str(path), str(path_b), "--format", "json", "--method", "exact")[0]
    )
    name = "blk.0.ffn_gate_exps.weight"
    layer = next(item for item in spectrum["layers"] if item["name"] == f"{name}[5]")
    assert (layer["expert"], layer["stack"]) == (5, name)
    want = np.linalg.svd(stacks[name][5].astype(np.float64), compute_uv=False)
    assert layer["sigma_max"] == pytest.approx(want[0], rel=RTOL)
    assert layer["frobenius"] == pytest.approx(np.sqrt((want**2).sum()), rel=1e-9)
    assert spectrum["summary"]["expert_stacks"][0]["experts"] == E
    pairs = {item["name"]: item for item in diff["layers"]}
    assert len(pairs) == 3 * E
    for stack in stacks:
        for e in range(E):
            item = pairs[f"{stack}[{e}]"]
            delta = other[stack][e].astype(np.float64) - stacks[stack][e].astype(np.float64)
            assert (item["expert"], item["stack"]) == (e, stack)
            assert item["delta_sigma"] == pytest.approx(_sigma(delta), rel=1e-9)
            assert item["relative"] == pytest.approx(
                _sigma(delta) / _sigma(stacks[stack][e]), rel=1e-9
            )
    groups = {g["stack"]: g for g in diff["summary"]["expert_stacks"]}
    top = max(range(E), key=lambda e: pairs[f"{name}[{e}]"]["relative"])
    assert groups[name]["largest"]["expert"] == top


def test_normalize_gguf_scales_each_expert_by_its_own_sigma(moe_gguf, tmp_path: Path) -> None:
    path, stacks = moe_gguf
    out = tmp_path / "out.gguf"
    run("normalize", str(path), "-o", str(out), "--target", "1")
    written = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(out)).tensors}
    for name, data in stacks.items():
        new = written[name].reshape(data.shape)
        for e in range(E):
            sigma = _sigma(new[e])
            assert 1 - 1e-6 < sigma <= 1 + 1e-12
            np.testing.assert_allclose(new[e], data[e] / _sigma(data[e]), rtol=1e-6, atol=1e-7)


def test_normalize_gpt_oss_transposed_stacks(gpt_oss, tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    folder, state = gpt_oss
    out = tmp_path / "out.safetensors"
    run("normalize", str(folder), "-o", str(out), "--target", "0.5", "--filter", "experts")
    written = load_file(str(out))
    for stem in ("gate_up_proj", "down_proj"):
        key = f"model.layers.0.mlp.experts.{stem}"
        for e in range(4):
            assert _sigma(written[key][e]) == pytest.approx(0.5, rel=1e-6)
            assert _sigma(written[key][e]) <= 0.5 * (1 + 1e-12)
            np.testing.assert_allclose(
                written[key][e], state[key][e] * 0.5 / _sigma(state[key][e]), rtol=1e-6, atol=1e-7
            )
    np.testing.assert_array_equal(
        written["model.layers.0.mlp.router.weight"], state["model.layers.0.mlp.router.weight"]
    )


def test_normalize_refuses_a_stack_disagreeing_with_metadata(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "bad.gguf", gguf_stacks(np.random.default_rng(3)), expert_count=6)
    _, err = run("normalize", str(path), "-o", str(tmp_path / "out.gguf"), code=1)
    assert "qwen2moe.expert_count = 6" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.gguf").exists()


def test_lipschitz_never_chains_experts(moe_gguf, gpt_oss) -> None:
    from sncli.lipschitz.product import lipschitz_report

    path, _ = moe_gguf
    _, err = run("lipschitz", str(path), code=4)
    assert "mixture of experts" in err and "not in a chain" in err
    folder, _ = gpt_oss
    with open_checkpoint(folder) as ckpt:
        report = lipschitz_report(ckpt)
    assert not report.valid_architecture
    assert any("mixture of experts" in c for c in report.caveats)
    assert not any("[" in f.name for f in report.factors)  # no expert is a factor
    reasons = {s.name: s.reason for s in report.excluded}
    assert "side by side" in reasons["model.layers.0.mlp.experts.gate_up_proj[0]"]
    assert not any("heads on one trunk" in c for c in report.caveats)
