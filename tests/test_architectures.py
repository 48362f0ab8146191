"""Issue 10: which tensors are layers, on the key names and shapes of real architectures.

``normalize`` on every architecture of ``tests/arch_state_dicts.py`` must change exactly the
linear/conv weights (listed there from the real modules' types) and leave every other tensor
byte for byte: ViT ``cls_token``/``pos_embed``, ConvNeXt ``layer_scale``/``gamma``, Swin bias
tables, PReLU slopes, BatchNorm parameters and statistics.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import sncli
from sncli.checkpoint import open_checkpoint
from sncli.layers import LayerKind, classify, select
from sncli.lipschitz import LipschitzOptions, architecture_caveats, lipschitz_report
from sncli.normalize import NormalizeOptions, normalize_checkpoint, plan_normalization
from sncli.numerics.spectral import Method
from tests.arch_state_dicts import (
    ARCHITECTURES,
    BATCHNORM_PREFIXES,
    EMBEDDINGS,
    layer_weights,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def save(tmp_path: Path, state: dict[str, torch.Tensor], name: str = "model") -> Path:
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    same = a.dtype == b.dtype and a.shape == b.shape
    return same and a.reshape(-1).view(torch.uint8).equal(b.reshape(-1).view(torch.uint8))


def reasons(path: Path) -> dict[str, str]:
    with open_checkpoint(path) as ckpt:
        return {s.name: s.reason for s in classify(ckpt).skipped}


def layers(path: Path) -> dict[str, LayerKind]:
    with open_checkpoint(path) as ckpt:
        return {layer.name: layer.kind for layer in classify(ckpt).layers}


# --------------------------------------------------------------------------- normalize


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_normalize_changes_only_linear_and_conv_weights(tmp_path: Path, arch: str) -> None:
    state = ARCHITECTURES[arch]()
    source = save(tmp_path, state)
    expected = layer_weights(arch, state)
    out = tmp_path / "out.safetensors"
    with open_checkpoint(source) as ckpt:
        plan = plan_normalization(ckpt, NormalizeOptions(method=Method.DENSE))
        assert {p.name for p in plan.changed} == expected
        normalize_checkpoint(ckpt, plan, out)
    written = load_file(str(out))
    assert list(written) == list(load_file(str(source)))
    for key, before in state.items():
        after = written[key]
        if key in expected:
            assert not same_bytes(before, after), key
            if arch != "dcgan_generator":  # ConvTranspose reshapes are issue 10's defect 2
                matrix = after.double().reshape(after.shape[0], -1)
                assert float(torch.linalg.svdvals(matrix)[0]) <= 1.0 + 1e-6, key
        else:
            assert same_bytes(before, after), f"{arch}: {key} was changed"


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_normalize_norms_never_touches_parameters_or_prelu(tmp_path: Path, arch: str) -> None:
    """--norms adds norm scales (1-D weights next to a bias/running stats, or norm-named) only."""
    state = ARCHITECTURES[arch]()
    source = save(tmp_path, state)
    with open_checkpoint(source) as ckpt:
        plan = plan_normalization(ckpt, NormalizeOptions(method=Method.DENSE, norms=True))
    changed = {p.name for p in plan.changed}
    norms = changed - layer_weights(arch, state)
    for key in norms:
        prefix = key.rpartition(".")[0]
        assert state[key].dim() == 1 and key.endswith(".weight"), key
        assert "prelu" not in key and not key.endswith("act.weight"), key
        assert f"{prefix}.bias" in state or "norm" in prefix, key


# --------------------------------------------------------------------------- classification


def test_vit_tiny_parameters_are_skipped_with_their_reason(tmp_path: Path) -> None:
    path = save(tmp_path, ARCHITECTURES["vit_tiny"]())
    skipped = reasons(path)
    assert skipped["cls_token"] == "parameter, not a layer weight (cls_token)"
    assert skipped["pos_embed"] == "parameter, not a layer weight (pos_embed)"
    assert skipped["norm.weight"] == "norm scale (1-D)"
    kinds = layers(path)
    assert kinds["patch_embed.proj.weight"] is LayerKind.CONV2D
    assert kinds["blocks.0.attn.qkv.weight"] is LayerKind.LINEAR
    assert kinds["blocks.1.mlp.fc1.weight"] is LayerKind.LINEAR
    assert kinds["head.weight"] is LayerKind.LINEAR
    assert "cls_token" not in kinds and "pos_embed" not in kinds


@pytest.mark.parametrize(
    ("arch", "key", "leaf"),
    [
        ("convnext_tiny", "features.1.0.layer_scale", "layer_scale"),
        ("convnext_tiny_fb", "stages.0.1.gamma", "gamma"),
        ("convnext_timm", "stages.1.blocks.0.gamma", "gamma"),
        ("swin_tiny", "layers.0.blocks.0.attn.relative_position_bias_table", None),
    ],
)
def test_scale_and_bias_table_parameters_are_not_layers(
    tmp_path: Path, arch: str, key: str, leaf: str | None
) -> None:
    path = save(tmp_path, ARCHITECTURES[arch]())
    leaf = leaf or key.rpartition(".")[2]
    assert reasons(path)[key] == f"parameter, not a layer weight ({leaf})"
    assert key not in layers(path)


def test_convnext_counts(tmp_path: Path) -> None:
    """torchvision ConvNeXt: every depthwise/down-sampling conv and MLP linear is a layer."""
    state = ARCHITECTURES["convnext_tiny"]()
    kinds = layers(save(tmp_path, state))
    assert set(kinds) == layer_weights("convnext_tiny", state)
    assert kinds["features.1.0.block.0.weight"] is LayerKind.CONV2D  # C×1×7×7 depthwise
    assert kinds["features.2.1.weight"] is LayerKind.CONV2D  # down-sampling conv


def test_prelu_slopes_are_not_norm_scales(tmp_path: Path) -> None:
    path = save(tmp_path, ARCHITECTURES["srgan_generator"]())
    skipped = reasons(path)
    assert skipped["block1.1.weight"] == "PReLU slope"  # nn.PReLU() in a Sequential, shape [1]
    assert skipped["block2.prelu.weight"] == "PReLU slope"
    assert skipped["upsample.act.weight"] == "PReLU slope"
    assert skipped["block2.bn1.weight"] == "norm scale (1-D)"  # running stats next to it


def test_norms_on_batchnorm_reach_the_target_with_running_var(tmp_path: Path) -> None:
    """The written BN's factor max|γ|/√(running_var+ε) equals the target (independent formula)."""
    state = ARCHITECTURES["resnet18"]()
    source = save(tmp_path, state)
    out = tmp_path / "out.safetensors"
    with open_checkpoint(source) as ckpt:
        plan = plan_normalization(ckpt, NormalizeOptions(method=Method.DENSE, norms=True))
        bn = next(p for p in plan.layers if p.name == "layer1.0.bn1.weight")
        gamma, var = state["layer1.0.bn1.weight"].double(), state["layer1.0.bn1.running_var"]
        before = float((gamma.abs() / torch.sqrt(var.double() + 1e-5)).max())
        assert bn.sigma_before == pytest.approx(before, rel=1e-12)
        normalize_checkpoint(ckpt, plan, out)
    written = load_file(str(out))
    for prefix in ("bn1", "layer1.0.bn1", "layer4.1.bn2", "layer2.0.downsample.1"):
        gamma = written[f"{prefix}.weight"].double()
        var = written[f"{prefix}.running_var"].double()
        assert same_bytes(written[f"{prefix}.running_var"], state[f"{prefix}.running_var"])
        factor = float((gamma.abs() / torch.sqrt(var + 1e-5)).max())
        assert factor == pytest.approx(1.0, rel=1e-6) and factor <= 1.0, prefix
    with open_checkpoint(out) as ckpt:
        report = lipschitz_report(ckpt, LipschitzOptions(include=(r"bn|downsample\.1",)))
    assert all(f.sigma == pytest.approx(1.0, rel=1e-6) for f in report.factors)


def test_norms_on_layernorm_is_max_gamma(tmp_path: Path) -> None:
    state = ARCHITECTURES["vit_tiny"]()
    source = save(tmp_path, state)
    out = tmp_path / "out.safetensors"
    with open_checkpoint(source) as ckpt:
        plan = plan_normalization(ckpt, NormalizeOptions(method=Method.DENSE, norms=True))
        normalize_checkpoint(ckpt, plan, out)
    written = load_file(str(out))
    assert float(written["norm.weight"].abs().max()) == pytest.approx(1.0, rel=1e-6)
    assert same_bytes(written["cls_token"], state["cls_token"])


@pytest.mark.parametrize("arch", sorted(EMBEDDINGS))
def test_embeddings_by_name_and_role(tmp_path: Path, arch: str) -> None:
    state = ARCHITECTURES[arch]()
    kinds = layers(save(tmp_path, state))
    embeddings = {name for name, kind in kinds.items() if kind is LayerKind.EMBEDDING}
    assert embeddings == EMBEDDINGS[arch]


@pytest.mark.parametrize(
    ("arch", "key", "note"),
    [
        ("gpt_neox", "embed_out.weight", "'embed_out' ends in 'out', a projection"),
        (
            "diffusers_unet",
            "down_blocks.0.resnets.0.time_emb_proj.weight",
            "'time_emb_proj' ends in 'proj', a projection",
        ),
        (
            "diffusers_unet",
            "time_embedding.linear_1.weight",
            "'time_embedding' is in the name, but its module 'linear_1' is not an embedding",
        ),
        (
            "qwen_moe",
            "model.layers.0.mlp.shared_expert.gate_proj.weight",
            "'shared_expert' is in the name, but its module 'gate_proj' is not an embedding",
        ),
        ("gpt_neox", "gpt_neox.embed_in.weight", "embedding: 'embed_in' names an embedding"),
        ("bert", "bert.embeddings.word_embeddings.weight", "'word_embeddings' names an"),
    ],
)
def test_every_embedding_decision_is_listed(tmp_path: Path, arch: str, key: str, note: str) -> None:
    with open_checkpoint(save(tmp_path, ARCHITECTURES[arch]())) as ckpt:
        layer = next(x for x in classify(ckpt).layers if x.name == key)
    assert note in layer.note
    assert (layer.kind is LayerKind.EMBEDDING) == note.startswith(("embedding", "'word"))


def test_embedding_with_a_bias_is_linear(tmp_path: Path) -> None:
    state = {"pos_embedding.weight": torch.randn(8, 4), "pos_embedding.bias": torch.randn(8)}
    with open_checkpoint(save(tmp_path, state)) as ckpt:
        (layer,) = classify(ckpt).layers
    assert layer.kind is LayerKind.LINEAR
    assert "has a bias, which an embedding table has not" in layer.note


def test_lipschitz_lists_embedding_decisions(tmp_path: Path) -> None:
    with open_checkpoint(save(tmp_path, ARCHITECTURES["gpt_neox"]())) as ckpt:
        report = lipschitz_report(ckpt)
    excluded = {s.name: s.reason for s in report.excluded}
    assert excluded["gpt_neox.embed_in.weight"].startswith("embedding ('embed_in' names")
    assert "embed_out.weight" in {f.name for f in report.factors}


# --------------------------------------------------------------------------- defect 8 bits


def test_batchnorm_named_norm1_is_not_layernorm() -> None:
    state = ARCHITECTURES["densenet121"]()
    assert any(BATCHNORM_PREFIXES["densenet121"].fullmatch(k.rpartition(".")[0]) for k in state)
    caveats = architecture_caveats(state)
    assert not any("LayerNorm" in c for c in caveats), caveats
    # A real LayerNorm named norm1 (ViT) is still reported.
    assert any("LayerNorm" in c for c in architecture_caveats(ARCHITECTURES["vit_tiny"]()))


def test_filter_matches_the_short_name_too(tmp_path: Path) -> None:
    state = {f"module.{k}": v for k, v in ARCHITECTURES["vgg11"]().items()}
    with open_checkpoint(save(tmp_path, state)) as ckpt:
        found = classify(ckpt).layers
        assert {x.short_name for x in found if x.name == "module.features.0.weight"} == {
            "features.0.weight"
        }
        by_short = [x.name for x in select(found, [r"^features\.0\."])]
        by_key = [x.name for x in select(found, [r"^module\.features\.0\."])]
        assert by_short == by_key == ["module.features.0.weight"]
        assert len(select(found, (), [r"^classifier\."])) == 8
        plan = plan_normalization(
            ckpt, NormalizeOptions(method=Method.DENSE, include=(r"^classifier",))
        )
        assert {p.name for p in plan.layers} == {f"module.classifier.{i}.weight" for i in (0, 3, 6)}
        report = lipschitz_report(ckpt, LipschitzOptions(exclude=(r"^features",)))
        assert len(report.factors) == 3
        assert math.isfinite(report.log10_bound)


def test_inspect_reports_the_decisions(tmp_path: Path) -> None:
    from rich.console import Console

    from sncli.analysis import spectral_norms
    from sncli.render.inspect import inspect_to_dict, print_inspect_table

    with open_checkpoint(save(tmp_path, ARCHITECTURES["gpt_neox"]())) as ckpt:
        report = spectral_norms(ckpt)
    data = inspect_to_dict(report, report.layers)
    by_name = {item["name"]: item for item in data["layers"]}
    assert by_name["embed_out.weight"]["kind"] == "linear"
    assert "'embed_out' ends in 'out'" in by_name["embed_out.weight"]["classification"]
    assert by_name["gpt_neox.embed_in.weight"]["kind"] == "embedding"
    assert "classification" not in by_name["gpt_neox.layers.0.attention.dense.weight"]
    console = Console(record=True, width=300)
    print_inspect_table(report, report.layers, console)
    assert "'embed_out' ends in 'out', a projection" in console.export_text()


LSTM_NOTE = "recurrent: the 4 gates of an LSTM stacked (4×5 rows); σ is the stack's, not one gate's"


def test_rnn_and_attention_weights_stay_layers(tmp_path: Path) -> None:
    """Real torch modules: LSTM and MultiheadAttention weights are layers, their biases are biases;
    a bare projection Parameter (CLIP's text_projection) is a parameter, not a layer weight."""
    from torch import nn

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.members = nn.Linear(3, 3)
            self.lstm = nn.LSTM(4, 5)
            self.self_attn = nn.MultiheadAttention(8, 2)
            self.text_projection = nn.Parameter(torch.randn(4, 4))

    path = tmp_path / "m.pt"
    torch.save(Model().state_dict(), path)
    with open_checkpoint(path) as ckpt:
        result = classify(ckpt)
    assert {x.name: (x.kind, x.note) for x in result.layers} == {
        "members.weight": (LayerKind.LINEAR, ""),
        "lstm.weight_ih_l0": (LayerKind.LINEAR, LSTM_NOTE),
        "lstm.weight_hh_l0": (LayerKind.LINEAR, LSTM_NOTE),
        "self_attn.in_proj_weight": (LayerKind.LINEAR, ""),
        "self_attn.out_proj.weight": (LayerKind.LINEAR, ""),
    }
    skipped = {s.name: s.reason for s in result.skipped}
    assert skipped["lstm.bias_ih_l0"] == skipped["self_attn.in_proj_bias"] == "bias"
    assert skipped["text_projection"] == "parameter, not a layer weight (text_projection)"


def test_recurrent_weights_one_rule(tmp_path: Path) -> None:
    """nn.LSTM/GRU/RNN weights and a cell's (Silero VAD's ``lstm_cell.weight_ih``) are read the
    same way: linear layers whose note says how many gates their rows stack (issue 28)."""
    import numpy as np
    from torch import nn

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(4, 8)
            self.lstm_cell = nn.LSTMCell(16, 6)
            self.gru = nn.GRU(3, 5)
            self.projected = nn.LSTM(4, 8, proj_size=3)
            self.rnn = nn.RNN(3, 6)

    model = Model()
    path = tmp_path / "rnn.pt"
    torch.save(model.state_dict(), path)
    with open_checkpoint(path) as ckpt:
        layers = {layer.name: layer for layer in classify(ckpt).layers}
    gates = {name: layer.gates for name, layer in layers.items()}
    assert gates == {
        "lstm.weight_ih_l0": 4,
        "lstm.weight_hh_l0": 4,
        "lstm_cell.weight_ih": 4,
        "lstm_cell.weight_hh": 4,
        "gru.weight_ih_l0": 3,
        "gru.weight_hh_l0": 3,
        "projected.weight_ih_l0": 4,  # weight_hh is (32, 3): the hidden size is weight_hr's
        "projected.weight_hh_l0": 4,
        "projected.weight_hr_l0": 1,
        "rnn.weight_ih_l0": 1,
        "rnn.weight_hh_l0": 1,
    }
    assert all(layer.kind is LayerKind.LINEAR for layer in layers.values())
    assert "4 gates of an LSTM stacked (4×6 rows)" in layers["lstm_cell.weight_ih"].note
    assert "3 gates of a GRU" in layers["gru.weight_hh_l0"].note
    assert "output projection" in layers["projected.weight_hr_l0"].note
    report = sncli.spectral_norms(path, options=sncli.MethodOptions(method="exact"))
    weight = model.lstm_cell.weight_ih.detach().double().numpy()
    sigma = {layer.name: layer.sigma for layer in report.layers}
    assert sigma["lstm_cell.weight_ih"] == pytest.approx(
        float(np.linalg.svd(weight, compute_uv=False)[0]), rel=1e-10
    )
