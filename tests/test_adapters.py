"""LoRA adapters as input (sncli.adapters, sncli.formats.peft), on adapters written by PEFT's
own ``save_pretrained`` over a tiny Llama built from a config; every number against a float64
NumPy SVD of s·B·A formed explicitly here (and of W + ΔW from PEFT's ``merge_and_unload``)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sncli.adapters import (
    adapter_sigmas,
    adapter_spectra,
    diff_adapters,
    diff_with_base,
    merged_checkpoint,
)
from sncli.checkpoint import open_checkpoint
from sncli.cli import app
from sncli.errors import CheckpointError
from sncli.lipschitz import lipschitz_report

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

RUNNER = CliRunner()
TOL = 1e-10  # relative: float64 QR + SVD of the core against a float64 SVD of the product


def _tiny_llama(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
    )
    return transformers.LlamaForCausalLM(config).eval()


def _make_adapter(folder: Path, seed: int = 0, **lora: object) -> torch.nn.Module:
    """PEFT's own adapter over the tiny Llama (B random, not PEFT's zeros); returns the model."""
    model = _tiny_llama()
    settings = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]}
    settings.update(lora)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(**settings))
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    wrapped.save_pretrained(folder)
    return wrapped


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lora")
    _tiny_llama().save_pretrained(root / "base")
    _make_adapter(
        root / "plain",
        rank_pattern={"down_proj": 8},
        alpha_pattern={"layers.1.self_attn.v_proj": 3},
    )
    _make_adapter(root / "rslora", seed=5, use_rslora=True, r=8, lora_alpha=16)
    _make_adapter(root / "dora", seed=7, use_dora=True)
    return root


def _expected_scale(config: dict, module: str, rank: int) -> float:
    alpha = config["lora_alpha"]
    for pattern, value in config.get("alpha_pattern", {}).items():
        if module.endswith(pattern):
            alpha = value
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _reference(folder: Path) -> dict[str, tuple[np.ndarray, int, float]]:
    """module → (singular values of s·B·A formed in float64, r, s) from the raw file."""
    from safetensors.numpy import load_file

    config = json.loads((folder / "adapter_config.json").read_text())
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    result = {}
    for key, a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[: -len(".lora_A.weight")].removeprefix("base_model.model.")
        b = tensors[key.replace("lora_A", "lora_B")].astype(np.float64)
        rank = a.shape[0]
        scale = _expected_scale(config, module, rank)
        product = scale * (b @ a.astype(np.float64))
        result[module] = (np.linalg.svd(product, compute_uv=False), rank, scale)
    return result


@pytest.mark.parametrize("name", ["plain", "rslora", "dora"])
def test_inspect_sigma_of_the_update(tree: Path, name: str) -> None:
    expected = _reference(tree / name)
    with open_checkpoint(tree / name) as ckpt:
        assert ckpt.adapter is not None and ckpt.adapter.format == "peft"
        report = adapter_sigmas(ckpt)
    assert {layer.name for layer in report.layers} == set(expected)
    for layer in report.layers:
        values, rank, scale = expected[layer.name]
        assert layer.kind.value == "lora"
        assert (layer.rank, layer.scale) == (rank, pytest.approx(scale, rel=1e-15))
        assert layer.sigma == pytest.approx(values[0], rel=TOL)
    # the patterns really differed: r = 8 on down_proj, α = 3 on one v_proj
    if name == "plain":
        ranks = {layer.name: layer.rank for layer in report.layers}
        assert ranks["model.layers.0.mlp.down_proj"] == 8
        scales = {layer.name: layer.scale for layer in report.layers}
        assert scales["model.layers.1.self_attn.v_proj"] == pytest.approx(3 / 4)
        assert scales["model.layers.0.self_attn.v_proj"] == pytest.approx(2.0)


def test_spectrum_values_and_metrics(tree: Path) -> None:
    expected = _reference(tree / "rslora")
    with open_checkpoint(tree / "rslora") as ckpt:
        report = adapter_spectra(ckpt)
    for layer in report.layers:
        values = expected[layer.name][0]
        r = layer.rank
        assert layer.count == r
        np.testing.assert_allclose(layer.values, values[:r], rtol=TOL, atol=1e-12 * values[0])
        assert layer.frobenius == pytest.approx(np.sqrt((values**2).sum()), rel=1e-10)
        assert layer.nuclear == pytest.approx(values.sum(), rel=1e-10)
        assert layer.numerical_rank == r
        assert layer.sigma_min == 0.0


def test_cli_json_has_rank_and_scale(tree: Path) -> None:
    result = RUNNER.invoke(app, ["inspect", str(tree / "plain"), "--format", "json", "-q"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert all(item["kind"] == "lora" for item in data["layers"])
    assert all({"rank", "scale"} <= set(item) for item in data["layers"])
    result = RUNNER.invoke(app, ["spectrum", str(tree / "plain"), "--format", "json", "-q"])
    assert result.exit_code == 0, result.output
    layer = json.loads(result.stdout)["layers"][0]
    assert len(layer["singular_values"]) == layer["rank"]


def _peft_merged(tree: Path, name: str) -> dict[str, np.ndarray]:
    model = peft.PeftModel.from_pretrained(_tiny_llama(), str(tree / name))
    merged = model.merge_and_unload()
    return {k: v.detach().double().numpy() for k, v in merged.state_dict().items()}


@pytest.mark.parametrize("name", ["plain", "dora"])
def test_base_gives_the_merged_weight(tree: Path, name: str) -> None:
    """--base: σ of W + ΔW against PEFT's own merge_and_unload (DoRA rows rescaled too)."""
    weights = _peft_merged(tree, name)
    with (
        open_checkpoint(tree / name) as adapter,
        open_checkpoint(tree / "base") as base,
    ):
        merged = merged_checkpoint(adapter, base)
        assert len(merged.tensors) == len(adapter.adapter.modules)
        for key in merged.tensors:
            ours = merged.load(key).numpy()
            np.testing.assert_allclose(ours, weights[key], rtol=0, atol=1e-5)
        result = RUNNER.invoke(
            app,
            ["inspect", str(tree / name), "--base", str(tree / "base"), "-q", "--format", "json"],
        )
    assert result.exit_code == 0, result.output
    for item in json.loads(result.stdout)["layers"]:
        reference = np.linalg.svd(weights[item["name"]], compute_uv=False)[0]
        assert item["sigma"] == pytest.approx(reference, rel=1e-5)


def test_diff_base_adapter(tree: Path) -> None:
    weights = _peft_merged(tree, "plain")
    with (
        open_checkpoint(tree / "plain") as adapter,
        open_checkpoint(tree / "base") as base,
    ):
        report = diff_with_base(base, adapter, top_k=0)
        base_weights = {k: base.load(k).double().numpy() for k in base.tensors}
    assert len(report.layers) == 6 and report.only_in_a == [] and report.only_in_b == []
    for layer in report.layers:
        delta = weights[layer.name] - base_weights[layer.name]
        assert layer.delta_sigma == pytest.approx(
            np.linalg.svd(delta, compute_uv=False)[0], rel=1e-4
        )
        assert layer.sigma_a == pytest.approx(
            np.linalg.svd(base_weights[layer.name], compute_uv=False)[0], rel=1e-4
        )
    result = RUNNER.invoke(app, ["diff", str(tree / "base"), str(tree / "plain"), "-q"])
    assert result.exit_code == 0, result.output


def _orthonormal(matrix: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    u, _, vt = np.linalg.svd(matrix)
    return u[:, :rank], vt[:rank].T


def test_diff_two_adapters_principal_angles(tree: Path) -> None:
    from safetensors.numpy import load_file

    with (
        open_checkpoint(tree / "plain") as a,
        open_checkpoint(tree / "dora") as b,
    ):
        report = diff_adapters(a, b)
        modules_a = {m.name: m for m in a.adapter.modules}
        modules_b = {m.name: m for m in b.adapter.modules}
    raw_a = load_file(str(tree / "plain" / "adapter_model.safetensors"))
    raw_b = load_file(str(tree / "dora" / "adapter_model.safetensors"))

    def delta(raw: dict, module: object) -> np.ndarray:
        b_ = raw[module.b_key].astype(np.float64)
        return module.scale * (b_ @ raw[module.a_key].astype(np.float64))

    assert len(report.layers) == 6
    for layer in report.layers:
        da, db = delta(raw_a, modules_a[layer.name]), delta(raw_b, modules_b[layer.name])
        assert layer.delta_sigma == pytest.approx(
            np.linalg.svd(db - da, compute_uv=False)[0], rel=1e-10
        )
        ua, va = _orthonormal(da, layer.rank_a)
        ub, vb = _orthonormal(db, layer.rank_b)
        np.testing.assert_allclose(
            layer.cosines_left, np.linalg.svd(ua.T @ ub, compute_uv=False), atol=1e-10
        )
        np.testing.assert_allclose(
            layer.cosines_right, np.linalg.svd(va.T @ vb, compute_uv=False), atol=1e-10
        )
    same = RUNNER.invoke(app, ["diff", str(tree / "plain"), str(tree / "plain"), "-q"])
    assert same.exit_code == 0, same.output
    result = RUNNER.invoke(
        app, ["diff", str(tree / "plain"), str(tree / "plain"), "-q", "--format", "json"]
    )
    for item in json.loads(result.stdout)["layers"]:
        assert item["delta_sigma"] == pytest.approx(0.0, abs=1e-12)
        assert min(item["cosines_left"]) == pytest.approx(1.0, abs=1e-10)


def test_lipschitz_refuses_an_adapter(tree: Path) -> None:
    with open_checkpoint(tree / "plain") as ckpt, pytest.raises(CheckpointError, match="not a net"):
        lipschitz_report(ckpt)
    result = RUNNER.invoke(app, ["lipschitz", str(tree / "plain")])
    assert result.exit_code == 1
    assert "is a LoRA adapter, not a network" in result.output
    assert "Traceback" not in result.output


def _one_line_error(args: list[str], *needles: str) -> None:
    result = RUNNER.invoke(app, args)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bad_input_one_line(tree: Path, tmp_path: Path) -> None:
    # a config whose r disagrees with the tensors
    wrong = tmp_path / "wrong_r"
    shutil.copytree(tree / "plain", wrong)
    config = json.loads((wrong / "adapter_config.json").read_text())
    config["r"] = 16
    (wrong / "adapter_config.json").write_text(json.dumps(config))
    _one_line_error(["inspect", str(wrong)], "adapter_model.safetensors", "rank 4", "r = 16")
    # an adapter without its config
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(tree / "plain" / "adapter_model.safetensors", alone)
    _one_line_error(["inspect", str(alone)], "adapter_model.safetensors", "adapter_config.json")
    # A without B
    from safetensors.torch import load_file, save_file

    half = tmp_path / "half"
    shutil.copytree(tree / "plain", half)
    tensors = load_file(str(half / "adapter_model.safetensors"))
    dropped = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
    del tensors[dropped]
    save_file(tensors, str(half / "adapter_model.safetensors"))
    _one_line_error(["inspect", str(half)], "adapter_model.safetensors", "no B factor", "q_proj")
    # --base that is not the adapter's base
    other = tmp_path / "other_base"
    transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=100,
        )
    ).save_pretrained(other)
    _one_line_error(
        ["inspect", str(tree / "plain"), "--base", str(other)], "model.safetensors", "shape"
    )


def test_kohya_file_by_hand(tmp_path: Path) -> None:
    """kohya's documented layout: <module>.lora_down.weight, .lora_up.weight, .alpha; a conv
    LoRA (down (r, in, 3, 3), up (out, r, 1, 1)) and a module without alpha (s = 1)."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(3)
    tensors = {
        "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.randn(
            4, 32, generator=gen
        ),
        "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": torch.randn(
            16, 4, generator=gen
        ),
        "lora_unet_mid_block_attentions_0_proj_in.alpha": torch.tensor(2.0),
        "lora_unet_conv_in.lora_down.weight": torch.randn(2, 3, 3, 3, generator=gen),
        "lora_unet_conv_in.lora_up.weight": torch.randn(8, 2, 1, 1, generator=gen),
        "lora_unet_conv_in.alpha": torch.tensor(1.0),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.randn(
            4, 8, generator=gen
        ),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.randn(
            8, 4, generator=gen
        ),
    }
    path = tmp_path / "style.safetensors"
    save_file(tensors, str(path))
    with open_checkpoint(path) as ckpt:
        assert ckpt.adapter is not None and ckpt.adapter.format == "kohya"
        report = adapter_sigmas(ckpt)
    by_name = {layer.name: layer for layer in report.layers}
    for module, scale in (
        ("lora_unet_mid_block_attentions_0_proj_in", 2.0 / 4),
        ("lora_unet_conv_in", 1.0 / 2),
        ("lora_te_text_model_encoder_layers_0_mlp_fc1", 1.0),
    ):
        down = tensors[f"{module}.lora_down.weight"].double()
        up = tensors[f"{module}.lora_up.weight"].double()
        product = scale * (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1))
        layer = by_name[module]
        assert layer.scale == pytest.approx(scale)
        assert layer.sigma == pytest.approx(float(torch.linalg.matrix_norm(product, 2)), rel=TOL)
    assert by_name["lora_unet_conv_in"].shape == (8, 3, 3, 3)


@pytest.mark.parametrize("name", ["plain", "rslora"])
def test_normalize_writes_an_adapter_peft_loads(tree: Path, tmp_path: Path, name: str) -> None:
    """σ(s·B·A) = target per module, measured on the written file by PEFT's loaded model."""
    out = tmp_path / f"{name}_sn"
    result = RUNNER.invoke(
        app, ["normalize", str(tree / name), "-o", str(out), "--target", "0.5", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert (out / "adapter_config.json").read_bytes() == (
        tree / name / "adapter_config.json"
    ).read_bytes()
    model = peft.PeftModel.from_pretrained(_tiny_llama(), str(out))
    before = _reference(tree / name)
    seen = 0
    for module_name, module in model.named_modules():
        if not hasattr(module, "lora_A") or "default" not in getattr(module, "lora_A", {}):
            continue
        b = module.lora_B["default"].weight.detach().double().numpy()
        a = module.lora_A["default"].weight.detach().double().numpy()
        scale = module.scaling["default"]
        sigma = np.linalg.svd(scale * (b @ a), compute_uv=False)[0]
        assert sigma <= 0.5 and sigma == pytest.approx(0.5, rel=1e-6)
        key = module_name.removeprefix("base_model.model.")
        old_values, _, old_scale = before[key]
        assert scale == pytest.approx(old_scale)  # config untouched: only the factors moved
        seen += 1
        assert old_values[0] > 0.5
    assert seen == 6
    # clip: nothing above 100 → every module kept, factors byte-equal
    kept = tmp_path / "kept"
    result = RUNNER.invoke(
        app,
        ["normalize", str(tree / name), "-o", str(kept), "--target", "100", "--mode", "clip", "-q"],
    )
    assert result.exit_code == 0, result.output
    from safetensors.torch import load_file

    old = load_file(str(tree / name / "adapter_model.safetensors"))
    new = load_file(str(kept / "adapter_model.safetensors"))
    assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)


def test_normalize_refuses_without_writing(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "dora_sn"
    _one_line_error(
        ["normalize", str(tree / "dora"), "-o", str(out), "-q"], "DoRA", "adapter_model"
    )
    assert not out.exists()
    wrong = tmp_path / "wrong_r"
    shutil.copytree(tree / "plain", wrong)
    config = json.loads((wrong / "adapter_config.json").read_text())
    config["rank_pattern"]["q_proj"] = 2
    (wrong / "adapter_config.json").write_text(json.dumps(config))
    _one_line_error(["normalize", str(wrong), "-o", str(out), "-q"], "rank 4", "r = 2")
    assert not out.exists()


def test_normalize_kohya_bf16(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    gen = torch.Generator().manual_seed(9)
    tensors = {
        "lora_te_encoder_fc1.lora_down.weight": torch.randn(4, 48, generator=gen).bfloat16(),
        "lora_te_encoder_fc1.lora_up.weight": torch.randn(24, 4, generator=gen).bfloat16(),
        "lora_te_encoder_fc1.alpha": torch.tensor(8.0).bfloat16(),
    }
    path = tmp_path / "k.safetensors"
    save_file(tensors, str(path))
    out = tmp_path / "k_sn.safetensors"
    result = RUNNER.invoke(app, ["normalize", str(path), "-o", str(out), "--target", "1", "-q"])
    assert result.exit_code == 0, result.output
    written = load_file(str(out))
    down = written["lora_te_encoder_fc1.lora_down.weight"]
    assert down.dtype == torch.bfloat16
    product = 2.0 * (written["lora_te_encoder_fc1.lora_up.weight"].double() @ down.double())
    sigma = float(torch.linalg.matrix_norm(product, 2))
    assert sigma <= 1.0 and sigma > 0.99  # bf16 rounding, shaved below the target
    assert torch.equal(written["lora_te_encoder_fc1.alpha"], tensors["lora_te_encoder_fc1.alpha"])
