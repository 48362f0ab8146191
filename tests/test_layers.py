"""Issue 2: tensors are classified into layers correctly, from real torch modules.

Spectral-norm checkpoints are checked against PyTorch itself: the stored raw weight and u/v,
reshaped the way classification says, must reproduce the eval-mode ``module.weight`` exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from sncli.checkpoint import Checkpoint, open_checkpoint
from sncli.errors import CheckpointError
from sncli.layers import (
    UNTOLD_RESHAPE,
    Layer,
    LayerKind,
    Skipped,
    classify,
    select,
)
from sncli.numerics.spectral import as_matrix, largest_singular_value
from sncli.parametrizations import SpectralNormInfo, SpectralNormStyle

legacy_sn = nn.utils.spectral_norm
param_sn = nn.utils.parametrizations.spectral_norm
param_wn = nn.utils.parametrizations.weight_norm


def save_pt(module_or_state: nn.Module | dict[str, torch.Tensor], path: Path) -> Path:
    state = (
        module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    )
    torch.save(state, path)
    return path


def opened(tmp_path: Path, module: nn.Module, *, safetensors: bool = False) -> Checkpoint:
    state = {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
    if safetensors:
        path = tmp_path / "model.safetensors"
        save_file(state, str(path))
    else:
        path = save_pt(state, tmp_path / "model.pt")
    return open_checkpoint(path)


def skipped_map(skipped: list[Skipped]) -> dict[str, str]:
    return {s.name: s.reason for s in skipped}


def only_layer(ckpt: Checkpoint, **kwargs: object) -> tuple[Layer, dict[str, str]]:
    result = classify(ckpt, **kwargs)  # type: ignore[arg-type]
    assert len(result.layers) == 1, [layer.name for layer in result.layers]
    return result.layers[0], skipped_map(result.skipped)


def train_steps(module: nn.Module, make_input: Callable[[], torch.Tensor], steps: int = 3) -> None:
    """A few SGD steps in train mode, so stored u, v are realistic; then eval mode."""
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    module.train()
    for _ in range(steps):
        loss = module(make_input()).float().pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    module.eval()


# --------------------------------------------------------------------------- plain layers


def test_mlp_layers_and_biases(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
    result = classify(opened(tmp_path, model))
    assert [(layer.name, layer.kind, layer.matrix_shape) for layer in result.layers] == [
        ("0.weight", LayerKind.LINEAR, (12, 6)),
        ("2.weight", LayerKind.LINEAR, (3, 12)),
    ]
    assert skipped_map(result.skipped) == {"0.bias": "bias", "2.bias": "bias"}
    assert all(layer.spectral_norm is None and layer.weight_norm is None for layer in result.layers)


@pytest.mark.parametrize(
    ("module", "kind", "matrix"),
    [
        (nn.Conv1d(3, 8, 5), LayerKind.CONV1D, (8, 15)),
        (nn.Conv2d(3, 8, (3, 2)), LayerKind.CONV2D, (8, 18)),
        (nn.Conv3d(2, 4, 3), LayerKind.CONV3D, (4, 54)),
    ],
)
def test_conv_kinds_and_reshape(
    tmp_path: Path, module: nn.Module, kind: LayerKind, matrix: tuple[int, int]
) -> None:
    layer, skipped = only_layer(opened(tmp_path, module))
    assert layer.kind is kind and layer.kind.is_conv
    assert layer.matrix_shape == matrix
    assert layer.matrix_description == "reshape(out, in*k)"
    assert skipped == {"bias": "bias"}


def test_embeddings_by_name(tmp_path: Path) -> None:
    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed_tokens = nn.Embedding(20, 4)
            self.wte = nn.Embedding(20, 4)
            self.proj = nn.Linear(4, 4, bias=False)

    kinds = {layer.name: layer.kind for layer in classify(opened(tmp_path, LM())).layers}
    assert kinds == {
        "embed_tokens.weight": LayerKind.EMBEDDING,
        "wte.weight": LayerKind.EMBEDDING,
        "proj.weight": LayerKind.LINEAR,
    }


def test_norm_layers_are_skipped(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.LayerNorm(4), nn.Linear(4, 2))
    result = classify(opened(tmp_path, model))
    assert [layer.name for layer in result.layers] == ["0.weight", "3.weight"]
    assert skipped_map(result.skipped) == {
        "0.bias": "bias",
        "1.weight": "norm scale (1-D)",
        "1.bias": "bias",
        "1.running_mean": "batch-norm statistic",
        "1.running_var": "batch-norm statistic",
        "1.num_batches_tracked": "integer/bool tensor (int64)",
        "2.weight": "norm scale (1-D)",
        "2.bias": "bias",
        "3.bias": "bias",
    }


def test_integer_bool_complex_empty_scalar(tmp_path: Path) -> None:
    state = {
        "ids": torch.zeros(3, 3, dtype=torch.int32),
        "mask": torch.ones(2, 2, dtype=torch.bool),
        "spectrum": torch.zeros(2, 2, dtype=torch.complex64),
        "empty.weight": torch.zeros(0, 4),
        "temperature": torch.tensor(0.5),
        "real.weight": torch.ones(2, 3),
    }
    result = classify(open_checkpoint(save_pt(state, tmp_path / "m.pt")))
    assert [layer.name for layer in result.layers] == ["real.weight"]
    assert skipped_map(result.skipped) == {
        "ids": "integer/bool tensor (int32)",
        "mask": "integer/bool tensor (bool)",
        "spectrum": "complex tensor (complex64) not supported",
        "empty.weight": "empty tensor",
        "temperature": "scalar",
    }


def test_natural_layer_order(tmp_path: Path) -> None:
    model = nn.Sequential(*[nn.Linear(2, 2, bias=False) for _ in range(12)])
    names = [layer.name for layer in classify(opened(tmp_path, model, safetensors=True)).layers]
    assert names == [f"{i}.weight" for i in range(12)]


def test_tied_weights_reported_once(tmp_path: Path) -> None:
    class TiedLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(30, 6)
            self.lm_head = nn.Linear(6, 30, bias=False)
            self.lm_head.weight = self.embed.weight

    result = classify(open_checkpoint(save_pt(TiedLM(), tmp_path / "lm.pt")))
    assert [layer.name for layer in result.layers] == ["embed.weight"]
    assert skipped_map(result.skipped) == {"lm_head.weight": "shares storage with embed.weight"}


def test_select_include_exclude(tmp_path: Path) -> None:
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(11)])
    layers = classify(opened(tmp_path, model)).layers
    assert [x.name for x in select(layers, [r"^1\."])] == ["1.weight"]
    assert [x.name for x in select(layers, [r"^1"], [r"^1\."])] == ["10.weight"]
    assert len(select(layers, (), [r"^[0-4]\."])) == 6


def test_unsupported_tensors_are_skipped(tmp_path: Path) -> None:
    state = {
        "sparse.weight": torch.eye(4).to_sparse(),
        "meta.weight": torch.empty(4, 4, device="meta"),
        "expanded.weight": torch.ones(1).expand(1000, 1000),
        "dense.weight": torch.ones(4, 4),
    }
    ckpt = open_checkpoint(save_pt(state, tmp_path / "odd.pt"))
    result = classify(ckpt)
    assert [layer.name for layer in result.layers] == ["dense.weight"]
    reasons = skipped_map(result.skipped)
    assert reasons["sparse.weight"] == "sparse_coo tensor not supported"
    assert reasons["meta.weight"] == "meta tensor holds no data"
    assert reasons["expanded.weight"].startswith("overlapping view (1000000 elements")
    with pytest.raises(CheckpointError, match="overlapping view"):
        ckpt.load("expanded.weight")


# --------------------------------------------------------------------------- spectral norm


def _stored_sn_weight(ckpt: Checkpoint, layer: Layer) -> torch.Tensor:
    """W / (uᵀ·mat(W)·v), exactly as both PyTorch spectral-norm APIs compute it in eval mode."""
    info = layer.spectral_norm
    assert info is not None and info.v_key is not None
    # clone: safetensors mmap data may sit unaligned, which changes BLAS's summation order
    weight = ckpt.load(layer.name).clone()
    matrix = as_matrix(weight, layer.reshape_dim)
    u = ckpt.load(info.u_key).to(weight.dtype).clone()
    v = ckpt.load(info.v_key).to(weight.dtype).clone()
    return weight / torch.dot(u, torch.mv(matrix, v))


def _sn_modules() -> list[tuple[str, Callable[[], nn.Module], Callable[[], torch.Tensor], bool]]:
    """(id, module factory, input factory, is transposed)."""
    return [
        ("linear", lambda: nn.Linear(7, 5), lambda: torch.randn(4, 7), False),
        ("conv1d", lambda: nn.Conv1d(3, 6, 3), lambda: torch.randn(2, 3, 9), False),
        ("conv2d", lambda: nn.Conv2d(3, 6, 3), lambda: torch.randn(2, 3, 8, 8), False),
        ("convT2d", lambda: nn.ConvTranspose2d(3, 6, 4), lambda: torch.randn(2, 3, 5, 5), True),
        (
            "convT2d_wide",
            lambda: nn.ConvTranspose2d(8, 2, 3),
            lambda: torch.randn(2, 8, 4, 4),
            True,
        ),
        ("embedding", lambda: nn.Embedding(12, 5), lambda: torch.randint(0, 12, (4, 3)), False),
    ]


SN_MODULES = _sn_modules()


@pytest.mark.parametrize(("style", "wrap"), [("legacy", legacy_sn), ("parametrization", param_sn)])
@pytest.mark.parametrize(
    ("label", "make", "make_input", "transposed"), SN_MODULES, ids=[m[0] for m in SN_MODULES]
)
@pytest.mark.parametrize("safetensors", [False, True], ids=["pt", "safetensors"])
def test_spectral_norm_layers_reproduce_module_weight(
    tmp_path: Path,
    style: str,
    wrap: Callable[[nn.Module], nn.Module],
    label: str,
    make: Callable[[], nn.Module],
    make_input: Callable[[], torch.Tensor],
    transposed: bool,
    safetensors: bool,
) -> None:
    torch.manual_seed(0)
    module = wrap(make())
    train_steps(module, make_input)
    with torch.no_grad():
        module(make_input())  # legacy SN recomputes .weight in a forward pre-hook
        expected = module.weight.detach().clone()

    ckpt = opened(tmp_path, module, safetensors=safetensors)
    layer, skipped = only_layer(ckpt)
    info = layer.spectral_norm
    assert info is not None
    if style == "legacy":
        assert layer.name == "weight_orig"
        assert info == SpectralNormInfo(SpectralNormStyle.LEGACY, "weight_u", "weight_v", None)
    else:
        assert layer.name == "parametrizations.weight.original"
        assert info == SpectralNormInfo(
            SpectralNormStyle.PARAMETRIZATION,
            "parametrizations.weight.0._u",
            "parametrizations.weight.0._v",
            None,
        )
    # u and v are skipped, never layers; the only other tensor is the bias.
    assert skipped[info.u_key].startswith("spectral-norm power-iteration vector u of")
    assert skipped[info.v_key].startswith("spectral-norm power-iteration vector v of")
    assert set(skipped) <= {info.u_key, info.v_key, "bias"}
    # ConvTranspose: PyTorch normalizes along dim 1, inferred from the stored u's length.
    assert layer.transposed is transposed
    assert layer.reshape_dim == (1 if transposed else 0)
    assert torch.equal(_stored_sn_weight(ckpt, layer), expected)
    if label == "embedding":
        assert layer.kind is LayerKind.LINEAR  # named "weight" only: shape says 2-D map


def _torch_sn_dim(module: nn.Module) -> int:
    """The dim PyTorch's spectral norm (either API) moves first to form its matrix."""
    if hasattr(module, "parametrizations"):
        return module.parametrizations.weight[0].dim
    (hook,) = [h for h in module._forward_pre_hooks.values() if hasattr(h, "dim")]
    return hook.dim


@pytest.mark.parametrize("wrap", [legacy_sn, param_sn], ids=["legacy", "parametrization"])
def test_square_conv_transpose_decided_by_stored_vectors(
    tmp_path: Path, wrap: Callable[[nn.Module], nn.Module]
) -> None:
    """Issue 10, defect 2: with in == out channels u's length cannot tell; uᵀWv ≈ σ does."""
    torch.manual_seed(0)
    module = wrap(nn.ConvTranspose2d(4, 4, 3))
    train_steps(module, lambda: torch.randn(2, 4, 5, 5))
    with torch.no_grad():
        module(torch.randn(1, 4, 5, 5))
    assert _torch_sn_dim(module) == 1
    ckpt = opened(tmp_path, module)
    for flags in ([], [r"weight"]):
        layer, _ = only_layer(ckpt, transposed=flags)
        assert layer.reshape_dim == 1 and layer.transposed
        assert layer.reshape_note is None
        assert layer.matrix_description == "reshape(out, in*k) [transposed conv: dim 1 first]"
        assert torch.equal(_stored_sn_weight(ckpt, layer), module.weight)


@pytest.mark.parametrize("wrap", [legacy_sn, param_sn], ids=["legacy", "parametrization"])
def test_square_conv_vectors_override_transposed_option(
    tmp_path: Path, wrap: Callable[[nn.Module], nn.Module]
) -> None:
    """A square SN Conv2d named by --transposed stays a Conv: the vectors say so, and a note."""
    torch.manual_seed(0)
    module = wrap(nn.Conv2d(4, 4, 3))
    train_steps(module, lambda: torch.randn(2, 4, 6, 6))
    with torch.no_grad():
        module(torch.randn(1, 4, 6, 6))
    assert _torch_sn_dim(module) == 0
    ckpt = opened(tmp_path, module)
    plain, _ = only_layer(ckpt)
    assert plain.reshape_dim == 0 and plain.reshape_note is None
    flagged, _ = only_layer(ckpt, transposed=[r"weight"])
    assert flagged.reshape_dim == 0 and not flagged.transposed
    assert flagged.reshape_note is not None
    assert "--transposed does not apply" in flagged.reshape_note
    assert torch.equal(_stored_sn_weight(ckpt, flagged), module.weight)


def test_conv_transpose_matrix_is_out_by_in_k(tmp_path: Path) -> None:
    """PyTorch's u for ConvTranspose2d(3, 6, 4) has out = 6 entries: the matrix is (out, in·k)."""
    torch.manual_seed(0)
    module = param_sn(nn.ConvTranspose2d(3, 6, 4))
    ckpt = opened(tmp_path, module)
    layer, _ = only_layer(ckpt)
    assert layer.shape == (3, 6, 4, 4)  # (in, out, k, k)
    assert module.parametrizations.weight[0]._u.numel() == 6
    assert layer.matrix_shape == (6, 3 * 16)
    assert layer.matrix_description == "reshape(out, in*k) [transposed conv: dim 1 first]"


def test_untrained_square_conv_transpose_is_ambiguous(tmp_path: Path) -> None:
    """Legacy SN before any forward: u, v are random and fit both reshapes; say so, honour
    --transposed."""
    torch.manual_seed(0)
    module = legacy_sn(nn.ConvTranspose2d(4, 4, 3))
    ckpt = opened(tmp_path, module)
    guessed, _ = only_layer(ckpt)
    assert guessed.reshape_dim == 0
    assert guessed.reshape_note is not None
    assert "do not tell Conv from ConvTranspose" in guessed.reshape_note
    layer, _ = only_layer(ckpt, transposed=[r"weight_orig$"])
    assert layer.reshape_dim == 1 and layer.transposed
    assert layer.reshape_note is not None and "as --transposed says" in layer.reshape_note


def test_square_sn_without_v_is_ambiguous(tmp_path: Path) -> None:
    state = {
        "weight_orig": torch.randn(4, 4, 3, 3),
        "weight_u": torch.randn(4),
        "weight": torch.randn(4, 4, 3, 3),
    }
    layer, _ = only_layer(open_checkpoint(save_pt(state, tmp_path / "v0.pt")))
    assert layer.reshape_dim == 0
    assert layer.reshape_note is not None and "no stored v vector" in layer.reshape_note


def test_plain_conv_reshape_is_marked_ambiguous(tmp_path: Path) -> None:
    """Without spectral-norm vectors nothing tells Conv from ConvTranspose: a note, or the flag."""
    ckpt = opened(tmp_path, nn.ConvTranspose2d(3, 5, 4))
    guessed, _ = only_layer(ckpt)
    assert guessed.reshape_dim == 0 and guessed.reshape_note == UNTOLD_RESHAPE
    layer, _ = only_layer(ckpt, transposed=[r"^weight$"])
    assert layer.reshape_dim == 1 and layer.reshape_note is None
    assert layer.matrix_shape == (5, 3 * 16)
    linear, _ = only_layer(opened(tmp_path, nn.Linear(3, 4)))
    assert linear.reshape_note is None


def test_named_sn_embedding_is_an_embedding(tmp_path: Path) -> None:
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = param_sn(nn.Embedding(10, 4))

    layer, _ = only_layer(opened(tmp_path, Model()))
    assert layer.kind is LayerKind.EMBEDDING
    assert layer.name == "embedding.parametrizations.weight.original"


def test_legacy_version_0_layout(tmp_path: Path) -> None:
    """Old spectral_norm saved the normalized weight itself and no v vector."""
    state = {
        "weight_orig": torch.randn(5, 3),
        "weight_u": torch.randn(5),
        "weight": torch.randn(5, 3),
    }
    layer, skipped = only_layer(open_checkpoint(save_pt(state, tmp_path / "v0.pt")))
    assert layer.name == "weight_orig"
    assert layer.spectral_norm == SpectralNormInfo(
        SpectralNormStyle.LEGACY, "weight_u", None, "weight"
    )
    assert skipped["weight"].startswith("spectral-norm stored normalized weight of")


def test_sn_model_in_a_sequential(tmp_path: Path) -> None:
    """The committed-sample shape: several SN layers, natural order, one layer each."""
    torch.manual_seed(1)
    model = nn.Sequential(
        param_sn(nn.Conv2d(3, 8, 4, 2, 1)),
        nn.LeakyReLU(0.1),
        param_sn(nn.Conv2d(8, 16, 4, 2, 1)),
        nn.Flatten(),
        param_sn(nn.Linear(16 * 4 * 4, 1)),
    )
    train_steps(model, lambda: torch.randn(4, 3, 16, 16))
    ckpt = opened(tmp_path, model)
    layers = classify(ckpt).layers
    assert [layer.name for layer in layers] == [
        "0.parametrizations.weight.original",
        "2.parametrizations.weight.original",
        "4.parametrizations.weight.original",
    ]
    for layer, index in zip(layers, (0, 2, 4), strict=True):
        assert torch.equal(_stored_sn_weight(ckpt, layer), model[index].weight)


# --------------------------------------------------------------------------- weight norm


@pytest.mark.parametrize(
    ("make", "make_input", "transposed"),
    [
        (lambda: nn.Conv2d(3, 6, 3), lambda: torch.randn(2, 3, 8, 8), False),
        (lambda: nn.ConvTranspose2d(3, 6, 3), lambda: torch.randn(2, 3, 5, 5), True),
        (lambda: nn.Linear(5, 4), lambda: torch.randn(3, 5), False),
    ],
    ids=["conv2d", "convT2d", "linear"],
)
def test_weight_norm_then_spectral_norm(
    tmp_path: Path,
    make: Callable[[], nn.Module],
    make_input: Callable[[], torch.Tensor],
    transposed: bool,
) -> None:
    """Stacked parametrizations: original0 (g), original1 (v), then SN's 1._u / 1._v."""
    torch.manual_seed(0)
    module = param_sn(param_wn(make()))
    train_steps(module, make_input)
    ckpt = opened(tmp_path, module)
    assert {"parametrizations.weight.original0", "parametrizations.weight.1._u"} <= set(
        ckpt.tensors
    )
    layer, skipped = only_layer(ckpt)
    assert layer.name == "parametrizations.weight"  # composed by Checkpoint.load
    assert layer.weight_norm is not None
    assert layer.weight_norm.g_key == "parametrizations.weight.original0"
    assert layer.weight_norm.v_key == "parametrizations.weight.original1"
    assert layer.shape == tuple(module.parametrizations.weight.original1.shape)
    assert layer.spectral_norm is not None
    assert layer.spectral_norm.u_key == "parametrizations.weight.1._u"
    assert layer.transposed is transposed
    assert skipped["parametrizations.weight.original0"].startswith("weight-norm magnitude g")
    assert skipped["parametrizations.weight.1._u"].startswith("spectral-norm power-iteration")
    composed = ckpt.load(layer.name)
    with torch.no_grad():
        weight_norm = module.parametrizations.weight[0]
        torch_composed = weight_norm(
            module.parametrizations.weight.original0, module.parametrizations.weight.original1
        )
        torch.testing.assert_close(composed.float(), torch_composed, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(
            _stored_sn_weight(ckpt, layer).float(), module.weight, rtol=1e-6, atol=1e-7
        )


def test_legacy_weight_norm_conv1d(tmp_path: Path) -> None:
    """HiFi-GAN style: conv.weight_g and conv.weight_v; the layer is their composition."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            with pytest.warns(FutureWarning):
                self.conv = nn.utils.weight_norm(nn.Conv1d(4, 8, 7))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    torch.manual_seed(0)
    block = Block()
    train_steps(block, lambda: torch.randn(2, 4, 20))
    with torch.no_grad():
        block(torch.randn(1, 4, 20))  # recompute .weight from g and v
    ckpt = opened(tmp_path, block)
    layer, skipped = only_layer(ckpt)
    assert layer.name == "conv.weight" and "conv.weight" not in ckpt.tensors
    assert layer.kind is LayerKind.CONV1D and layer.matrix_shape == (8, 28)
    assert skipped == {
        "conv.weight_g": "weight-norm magnitude g (of conv.weight)",
        "conv.bias": "bias",
    }
    torch.testing.assert_close(ckpt.load("conv.weight").float(), block.conv.weight)
    sigma = largest_singular_value(as_matrix(ckpt.load(layer.name))).sigma
    expected = float(torch.linalg.svdvals(block.conv.weight.detach().double().reshape(8, -1))[0])
    assert sigma == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("dim", [0, 1, None])
def test_weight_norm_parametrization_dims(tmp_path: Path, dim: int | None) -> None:
    torch.manual_seed(0)
    module = param_wn(nn.Linear(6, 4), dim=dim)
    ckpt = opened(tmp_path, module)
    layer, skipped = only_layer(ckpt)
    assert layer.weight_norm is not None and layer.weight_norm.dim == dim
    assert layer.spectral_norm is None
    assert "parametrizations.weight.original0" in skipped
    torch.testing.assert_close(ckpt.load(layer.name).float(), module.weight)


# --------------------------------------------------------------------------- low precision


@pytest.mark.parametrize(
    "dtype", [torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2, torch.float64]
)
@pytest.mark.parametrize("safetensors", [False, True], ids=["pt", "safetensors"])
def test_low_precision_layers_sigma(tmp_path: Path, dtype: torch.dtype, safetensors: bool) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(24, 16), nn.Conv2d(2, 4, 3)).to(dtype)
    ckpt = opened(tmp_path, model, safetensors=safetensors)
    result = classify(ckpt)
    assert [(layer.name, layer.dtype) for layer in result.layers] == [
        ("0.weight", str(dtype).removeprefix("torch.")),
        ("1.weight", str(dtype).removeprefix("torch.")),
    ]
    for layer in result.layers:
        weight = ckpt.load(layer.name)
        assert weight.dtype == dtype
        sigma = largest_singular_value(as_matrix(weight, layer.reshape_dim)).sigma
        reference = torch.linalg.svdvals(as_matrix(weight.double(), layer.reshape_dim))[0]
        assert sigma == pytest.approx(float(reference), rel=1e-10)


def test_llama_cpp_names_classify_like_their_hugging_face_counterparts(tmp_path: Path) -> None:
    """GGUF (llama.cpp) names: ``token_embd`` is ``embed_tokens``, ``blk.N.attn_q`` ``q_proj``,
    ``ffn_gate/up/down`` the MLP, ``*_norm`` RMSNorm scales, ``output`` the LM head."""
    llama_cpp = {
        "token_embd.weight": (torch.randn(50, 8), LayerKind.EMBEDDING),
        "position_embd.weight": (torch.randn(16, 8), LayerKind.EMBEDDING),
        "token_types.weight": (torch.randn(2, 8), LayerKind.EMBEDDING),
        "blk.0.attn_q.weight": (torch.randn(8, 8), LayerKind.LINEAR),
        "blk.0.attn_output.weight": (torch.randn(8, 8), LayerKind.LINEAR),
        "blk.0.ffn_gate.weight": (torch.randn(12, 8), LayerKind.LINEAR),
        "blk.0.ffn_down.weight": (torch.randn(8, 12), LayerKind.LINEAR),
        "output.weight": (torch.randn(50, 8), LayerKind.LINEAR),
    }
    norms = ("blk.0.attn_norm.weight", "blk.0.ffn_norm.weight", "output_norm.weight")
    state = {name: tensor for name, (tensor, _) in llama_cpp.items()}
    state.update({name: torch.ones(8) for name in norms})
    result = classify(open_checkpoint(save_pt(state, tmp_path / "m.pt")))
    assert {layer.name: layer.kind for layer in result.layers} == {
        name: kind for name, (_, kind) in llama_cpp.items()
    }
    assert {n: skipped_map(result.skipped)[n] for n in norms} == dict.fromkeys(
        norms, "norm scale (1-D)"
    )
