"""Seeded state dicts with the key names and shapes of real architectures (no network, no timm).

Each function returns ``{key: tensor}`` as the real model's ``state_dict()`` would name it
(timm ViT-tiny, MLP-Mixer, Swin, ConvNeXt-T; torchvision ResNet-18, VGG-11, MobileNetV2,
DenseNet-121, EfficientNet-B0, RegNetY, ConvNeXt; a DCGAN generator; an SRGAN generator with
PReLU; and the language/diffusion models whose names fooled the embedding detection). Widths
and depths are shrunk where the shape does not matter; the shapes that do (``cls_token``
1×1×D, ``pos_embed`` 1×(N+1)×D, ``layer_scale`` C×1×1, relative-position bias tables, PReLU
slopes of shape [C] or [1], ConvTranspose in×out×k×k) are the real ones.

``ARCHITECTURES`` maps a name to its generator; ``LAYER_WEIGHTS`` holds, per architecture, a
function saying which keys are the weights of linear/conv modules (by the real model's own
module types, written out per architecture, so the test does not reuse sncli's rules).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

import torch

State = dict[str, torch.Tensor]


class _Builder:
    """Adds seeded tensors under real names."""

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.state: State = {}

    def rand(self, key: str, *shape: int, scale: float = 0.1) -> None:
        self.state[key] = torch.randn(*shape, generator=self.gen) * scale

    def ones(self, key: str, *shape: int) -> None:
        self.state[key] = 1.0 + 0.1 * torch.randn(*shape, generator=self.gen)

    def linear(self, prefix: str, out: int, inp: int, bias: bool = True) -> None:
        self.rand(f"{prefix}.weight", out, inp)
        if bias:
            self.rand(f"{prefix}.bias", out)

    def conv(self, prefix: str, out: int, inp: int, k: int, bias: bool = False) -> None:
        self.rand(f"{prefix}.weight", out, inp, k, k)
        if bias:
            self.rand(f"{prefix}.bias", out)

    def layernorm(self, prefix: str, dim: int) -> None:
        self.ones(f"{prefix}.weight", dim)
        self.rand(f"{prefix}.bias", dim)

    def batchnorm(self, prefix: str, dim: int) -> None:
        self.ones(f"{prefix}.weight", dim)
        self.rand(f"{prefix}.bias", dim)
        self.rand(f"{prefix}.running_mean", dim)
        self.state[f"{prefix}.running_var"] = 0.5 + torch.rand(dim, generator=self.gen)
        self.state[f"{prefix}.num_batches_tracked"] = torch.tensor(100, dtype=torch.int64)


# --------------------------------------------------------------------------- timm transformers


def vit_tiny(depth: int = 2) -> State:
    """timm ``vit_tiny_patch16_224`` (D = 192, 3 heads, 196 patches + cls), ``depth`` blocks."""
    b = _Builder(1)
    d = 192
    b.rand("cls_token", 1, 1, d, scale=1e-6)
    b.rand("pos_embed", 1, 197, d, scale=0.02)
    b.conv("patch_embed.proj", d, 3, 16, bias=True)
    for i in range(depth):
        p = f"blocks.{i}"
        b.layernorm(f"{p}.norm1", d)
        b.linear(f"{p}.attn.qkv", 3 * d, d)
        b.linear(f"{p}.attn.proj", d, d)
        b.layernorm(f"{p}.norm2", d)
        b.linear(f"{p}.mlp.fc1", 4 * d, d)
        b.linear(f"{p}.mlp.fc2", d, 4 * d)
    b.layernorm("norm", d)
    b.linear("head", 1000, d)
    return b.state


def mlp_mixer(depth: int = 2) -> State:
    """timm ``mixer_s16_224`` naming (196 tokens), width shrunk to 64."""
    b = _Builder(2)
    d, tokens = 64, 196
    b.conv("stem.proj", d, 3, 16, bias=True)
    for i in range(depth):
        p = f"blocks.{i}"
        b.layernorm(f"{p}.norm1", d)
        b.linear(f"{p}.mlp_tokens.fc1", d // 2, tokens)
        b.linear(f"{p}.mlp_tokens.fc2", tokens, d // 2)
        b.layernorm(f"{p}.norm2", d)
        b.linear(f"{p}.mlp_channels.fc1", 4 * d, d)
        b.linear(f"{p}.mlp_channels.fc2", d, 4 * d)
    b.layernorm("norm", d)
    b.linear("head", 1000, d)
    return b.state


def swin_tiny() -> State:
    """timm ``swin_tiny_patch4_window7_224`` naming: window 7, relative-position bias tables."""
    b = _Builder(3)
    dims, heads = (32, 64), (2, 4)
    b.conv("patch_embed.proj", dims[0], 3, 4, bias=True)
    b.layernorm("patch_embed.norm", dims[0])
    for s, (d, h) in enumerate(zip(dims, heads, strict=True)):
        p = f"layers.{s}.blocks.0"
        b.layernorm(f"{p}.norm1", d)
        b.rand(f"{p}.attn.relative_position_bias_table", (2 * 7 - 1) ** 2, h, scale=0.02)
        b.state[f"{p}.attn.relative_position_index"] = torch.arange(49 * 49).reshape(49, 49)
        b.linear(f"{p}.attn.qkv", 3 * d, d)
        b.linear(f"{p}.attn.proj", d, d)
        b.layernorm(f"{p}.norm2", d)
        b.linear(f"{p}.mlp.fc1", 4 * d, d)
        b.linear(f"{p}.mlp.fc2", d, 4 * d)
        if s + 1 < len(dims):
            b.layernorm(f"layers.{s}.downsample.norm", 4 * d)
            b.linear(f"layers.{s}.downsample.reduction", 2 * d, 4 * d, bias=False)
    b.layernorm("norm", dims[-1])
    b.linear("head", 10, dims[-1])
    return b.state


# --------------------------------------------------------------------------- ConvNeXt


def convnext_tiny() -> State:
    """torchvision ``convnext_tiny`` naming: ``features.S.B.layer_scale`` of shape C×1×1."""
    b = _Builder(4)
    dims = (24, 48)
    b.conv("features.0.0", dims[0], 3, 4, bias=True)
    b.layernorm("features.0.1", dims[0])  # LayerNorm2d
    for s, d in enumerate(dims):
        stage = 1 + 2 * s
        for blk in range(2):
            p = f"features.{stage}.{blk}"
            b.rand(f"{p}.layer_scale", d, 1, 1, scale=1e-6)
            b.state[f"{p}.block.0.weight"] = torch.randn(d, 1, 7, 7, generator=b.gen) * 0.1
            b.rand(f"{p}.block.0.bias", d)
            b.layernorm(f"{p}.block.2", d)
            b.linear(f"{p}.block.3", 4 * d, d)
            b.linear(f"{p}.block.5", d, 4 * d)
        if s + 1 < len(dims):
            b.layernorm(f"features.{stage + 1}.0", d)
            b.conv(f"features.{stage + 1}.1", dims[s + 1], d, 2, bias=True)
    b.layernorm("classifier.0", dims[-1])
    b.linear("classifier.2", 1000, dims[-1])
    return b.state


def convnext_tiny_fb() -> State:
    """facebookresearch/ConvNeXt naming: ``downsample_layers``, ``stages.S.B.gamma`` [C]."""
    b = _Builder(5)
    dims = (24, 48)
    b.conv("downsample_layers.0.0", dims[0], 3, 4, bias=True)
    b.layernorm("downsample_layers.0.1", dims[0])
    for s, d in enumerate(dims):
        if s:
            b.layernorm(f"downsample_layers.{s}.0", dims[s - 1])
            b.conv(f"downsample_layers.{s}.1", d, dims[s - 1], 2, bias=True)
        for blk in range(2):
            p = f"stages.{s}.{blk}"
            b.rand(f"{p}.gamma", d, scale=1e-6)
            b.state[f"{p}.dwconv.weight"] = torch.randn(d, 1, 7, 7, generator=b.gen) * 0.1
            b.rand(f"{p}.dwconv.bias", d)
            b.layernorm(f"{p}.norm", d)
            b.linear(f"{p}.pwconv1", 4 * d, d)
            b.linear(f"{p}.pwconv2", d, 4 * d)
    b.layernorm("norm", dims[-1])
    b.linear("head", 1000, dims[-1])
    return b.state


def convnext_timm() -> State:
    """timm ``convnext_tiny`` naming: ``stages.S.blocks.B.gamma`` [C], ``stages.S.downsample``."""
    b = _Builder(6)
    dims = (24, 48)
    b.conv("stem.0", dims[0], 3, 4, bias=True)
    b.layernorm("stem.1", dims[0])
    for s, d in enumerate(dims):
        if s:
            b.layernorm(f"stages.{s}.downsample.0", dims[s - 1])
            b.conv(f"stages.{s}.downsample.1", d, dims[s - 1], 2, bias=True)
        p = f"stages.{s}.blocks.0"
        b.rand(f"{p}.gamma", d, scale=1e-6)
        b.state[f"{p}.conv_dw.weight"] = torch.randn(d, 1, 7, 7, generator=b.gen) * 0.1
        b.rand(f"{p}.conv_dw.bias", d)
        b.layernorm(f"{p}.norm", d)
        b.linear(f"{p}.mlp.fc1", 4 * d, d)
        b.linear(f"{p}.mlp.fc2", d, 4 * d)
    b.layernorm("head.norm", dims[-1])
    b.linear("head.fc", 1000, dims[-1])
    return b.state


# --------------------------------------------------------------------------- torchvision CNNs


def resnet18(width: int = 8) -> State:
    """torchvision ``resnet18`` naming (all four stages, two BasicBlocks each), width shrunk."""
    b = _Builder(7)
    b.conv("conv1", width, 3, 7)
    b.batchnorm("bn1", width)
    inp = width
    for stage in range(4):
        out = width * 2**stage
        for blk in range(2):
            p = f"layer{stage + 1}.{blk}"
            b.conv(f"{p}.conv1", out, inp if blk == 0 else out, 3)
            b.batchnorm(f"{p}.bn1", out)
            b.conv(f"{p}.conv2", out, out, 3)
            b.batchnorm(f"{p}.bn2", out)
            if blk == 0 and stage > 0:
                b.conv(f"{p}.downsample.0", out, inp, 1)
                b.batchnorm(f"{p}.downsample.1", out)
        inp = out
    b.linear("fc", 1000, inp)
    return b.state


def vgg11(width: int = 8) -> State:
    """torchvision ``vgg11`` naming: ``features.{0,3,6,8,11,13,16,18}``, ``classifier.{0,3,6}``."""
    b = _Builder(8)
    channels = [width, 2 * width, 4 * width, 4 * width, 8 * width, 8 * width, 8 * width, 8 * width]
    inp = 3
    for index, out in zip((0, 3, 6, 8, 11, 13, 16, 18), channels, strict=True):
        b.conv(f"features.{index}", out, inp, 3, bias=True)
        inp = out
    b.linear("classifier.0", 64, inp * 7 * 7)
    b.linear("classifier.3", 64, 64)
    b.linear("classifier.6", 1000, 64)
    return b.state


def mobilenet_v2() -> State:
    """torchvision ``mobilenet_v2`` naming: ConvBNReLU as ``features.N.0``/``features.N.1``."""
    b = _Builder(9)
    b.conv("features.0.0", 16, 3, 3)
    b.batchnorm("features.0.1", 16)
    b.state["features.1.conv.0.0.weight"] = torch.randn(16, 1, 3, 3, generator=b.gen) * 0.1
    b.batchnorm("features.1.conv.0.1", 16)
    b.conv("features.1.conv.1", 8, 16, 1)
    b.batchnorm("features.1.conv.2", 8)
    b.conv("features.2.conv.0.0", 48, 8, 1)
    b.batchnorm("features.2.conv.0.1", 48)
    b.state["features.2.conv.1.0.weight"] = torch.randn(48, 1, 3, 3, generator=b.gen) * 0.1
    b.batchnorm("features.2.conv.1.1", 48)
    b.conv("features.2.conv.2", 12, 48, 1)
    b.batchnorm("features.2.conv.3", 12)
    b.conv("features.18.0", 64, 12, 1)
    b.batchnorm("features.18.1", 64)
    b.linear("classifier.1", 1000, 64)
    return b.state


def densenet121() -> State:
    """torchvision ``densenet121`` naming: BatchNorms called ``norm0``, ``norm1``, ``norm5``…"""
    b = _Builder(10)
    growth, bottleneck = 8, 16
    b.conv("features.conv0", 16, 3, 7)
    b.batchnorm("features.norm0", 16)
    inp = 16
    for layer in range(2):
        p = f"features.denseblock1.denselayer{layer + 1}"
        b.batchnorm(f"{p}.norm1", inp)
        b.conv(f"{p}.conv1", bottleneck, inp, 1)
        b.batchnorm(f"{p}.norm2", bottleneck)
        b.conv(f"{p}.conv2", growth, bottleneck, 3)
        inp += growth
    b.batchnorm("features.transition1.norm", inp)
    b.conv("features.transition1.conv", inp // 2, inp, 1)
    b.batchnorm("features.norm5", inp // 2)
    b.linear("classifier", 1000, inp // 2)
    return b.state


def efficientnet_b0() -> State:
    """torchvision ``efficientnet_b0`` naming: MBConv ``block.N``, squeeze-excitation ``fc1``."""
    b = _Builder(11)
    b.conv("features.0.0", 32, 3, 3)
    b.batchnorm("features.0.1", 32)
    p = "features.1.0.block"
    b.state[f"{p}.0.0.weight"] = torch.randn(32, 1, 3, 3, generator=b.gen) * 0.1
    b.batchnorm(f"{p}.0.1", 32)
    b.conv(f"{p}.1.fc1", 8, 32, 1, bias=True)
    b.conv(f"{p}.1.fc2", 32, 8, 1, bias=True)
    b.conv(f"{p}.2.0", 16, 32, 1)
    b.batchnorm(f"{p}.2.1", 16)
    b.conv("features.8.0", 64, 16, 1)
    b.batchnorm("features.8.1", 64)
    b.linear("classifier.1", 1000, 64)
    return b.state


def regnet_y() -> State:
    """torchvision ``regnet_y_400mf`` naming: ``trunk_output.block1.block1-0.f.{a,b,se,c}``."""
    b = _Builder(12)
    b.conv("stem.0", 32, 3, 3)
    b.batchnorm("stem.1", 32)
    p = "trunk_output.block1.block1-0"
    b.conv(f"{p}.proj.0", 48, 32, 1)
    b.batchnorm(f"{p}.proj.1", 48)
    b.conv(f"{p}.f.a.0", 48, 32, 1)
    b.batchnorm(f"{p}.f.a.1", 48)
    b.conv(f"{p}.f.b.0", 48, 8, 3)  # grouped conv: in/groups channels
    b.batchnorm(f"{p}.f.b.1", 48)
    b.conv(f"{p}.f.se.fc1", 8, 48, 1, bias=True)
    b.conv(f"{p}.f.se.fc2", 48, 8, 1, bias=True)
    b.conv(f"{p}.f.c.0", 48, 48, 1)
    b.batchnorm(f"{p}.f.c.1", 48)
    b.linear("fc", 1000, 48)
    return b.state


# --------------------------------------------------------------------------- generators


def dcgan_generator(nz: int = 100, ngf: int = 8) -> State:
    """PyTorch-examples DCGAN ``netG``: ConvTranspose2d weights are in × out × 4 × 4."""
    b = _Builder(13)
    channels = [nz, ngf * 8, ngf * 4, ngf * 2, ngf, 3]
    for step, (inp, out) in enumerate(itertools.pairwise(channels)):
        b.rand(f"main.{3 * step}.weight", inp, out, 4, 4, scale=0.02)
        if out != 3:
            b.batchnorm(f"main.{3 * step + 1}", out)
    return b.state


def srgan_generator(c: int = 16) -> State:
    """SRGAN/SRResNet naming: PReLU slopes ``block1.1.weight`` [1] and ``*.prelu.weight`` [C]."""
    b = _Builder(14)
    b.conv("block1.0", c, 3, 9, bias=True)
    b.state["block1.1.weight"] = torch.full((1,), 0.25)  # nn.PReLU() in a Sequential
    for i in range(2):
        p = f"block{i + 2}"
        b.conv(f"{p}.conv1", c, c, 3, bias=True)
        b.batchnorm(f"{p}.bn1", c)
        b.state[f"{p}.prelu.weight"] = 0.25 + 0.05 * torch.randn(c, generator=b.gen)
        b.conv(f"{p}.conv2", c, c, 3, bias=True)
        b.batchnorm(f"{p}.bn2", c)
    b.conv("upsample.conv", 4 * c, c, 3, bias=True)
    b.state["upsample.act.weight"] = 0.25 + 0.05 * torch.randn(4 * c, generator=b.gen)
    b.conv("out", 3, c, 9, bias=True)
    return b.state


# --------------------------------------------------------------------------- embeddings or not


def gpt_neox(d: int = 32, vocab: int = 64) -> State:
    """GPT-NeoX/Pythia naming: ``embed_in`` is the embedding, ``embed_out`` the output head."""
    b = _Builder(15)
    b.rand("gpt_neox.embed_in.weight", vocab, d)
    p = "gpt_neox.layers.0"
    b.layernorm(f"{p}.input_layernorm", d)
    b.linear(f"{p}.attention.query_key_value", 3 * d, d)
    b.linear(f"{p}.attention.dense", d, d)
    b.layernorm(f"{p}.post_attention_layernorm", d)
    b.linear(f"{p}.mlp.dense_h_to_4h", 4 * d, d)
    b.linear(f"{p}.mlp.dense_4h_to_h", d, 4 * d)
    b.layernorm("gpt_neox.final_layer_norm", d)
    b.linear("embed_out", vocab, d, bias=False)
    return b.state


def qwen_moe(d: int = 32, vocab: int = 64) -> State:
    """Qwen2-MoE naming: ``mlp.shared_expert.*`` and ``mlp.shared_expert_gate`` are linear maps."""
    b = _Builder(16)
    b.rand("model.embed_tokens.weight", vocab, d)
    p = "model.layers.0"
    b.ones(f"{p}.input_layernorm.weight", d)
    for name in ("q_proj", "k_proj", "v_proj"):
        b.linear(f"{p}.self_attn.{name}", d, d)
    b.linear(f"{p}.self_attn.o_proj", d, d, bias=False)
    b.ones(f"{p}.post_attention_layernorm.weight", d)
    b.linear(f"{p}.mlp.gate", 4, d, bias=False)
    for e in range(2):
        b.linear(f"{p}.mlp.experts.{e}.gate_proj", 2 * d, d, bias=False)
        b.linear(f"{p}.mlp.experts.{e}.up_proj", 2 * d, d, bias=False)
        b.linear(f"{p}.mlp.experts.{e}.down_proj", d, 2 * d, bias=False)
    b.linear(f"{p}.mlp.shared_expert.gate_proj", 2 * d, d, bias=False)
    b.linear(f"{p}.mlp.shared_expert.up_proj", 2 * d, d, bias=False)
    b.linear(f"{p}.mlp.shared_expert.down_proj", d, 2 * d, bias=False)
    b.linear(f"{p}.mlp.shared_expert_gate", 1, d, bias=False)
    b.ones("model.norm.weight", d)
    b.linear("lm_head", vocab, d, bias=False)
    return b.state


def diffusers_unet(c: int = 16) -> State:
    """diffusers ``UNet2DModel`` naming: ``time_embedding.linear_1``, ``time_emb_proj``."""
    b = _Builder(17)
    b.linear("time_embedding.linear_1", 4 * c, c)
    b.linear("time_embedding.linear_2", 4 * c, 4 * c)
    b.conv("conv_in", c, 3, 3, bias=True)
    p = "down_blocks.0.resnets.0"
    b.layernorm(f"{p}.norm1", c)  # GroupNorm: weight and bias
    b.conv(f"{p}.conv1", c, c, 3, bias=True)
    b.linear(f"{p}.time_emb_proj", c, 4 * c)
    b.layernorm(f"{p}.norm2", c)
    b.conv(f"{p}.conv2", c, c, 3, bias=True)
    b.layernorm("conv_norm_out", c)
    b.conv("conv_out", 3, c, 3, bias=True)
    return b.state


def bert(d: int = 32, vocab: int = 64) -> State:
    """HF BERT naming: ``bert.embeddings.{word,position,token_type}_embeddings``."""
    b = _Builder(18)
    b.rand("bert.embeddings.word_embeddings.weight", vocab, d)
    b.rand("bert.embeddings.position_embeddings.weight", 16, d)
    b.rand("bert.embeddings.token_type_embeddings.weight", 2, d)
    b.layernorm("bert.embeddings.LayerNorm", d)
    p = "bert.encoder.layer.0"
    b.linear(f"{p}.attention.self.query", d, d)
    b.linear(f"{p}.attention.output.dense", d, d)
    b.layernorm(f"{p}.attention.output.LayerNorm", d)
    b.linear(f"{p}.intermediate.dense", 4 * d, d)
    b.linear(f"{p}.output.dense", d, 4 * d)
    b.linear("bert.pooler.dense", d, d)
    return b.state


def gpt2(d: int = 32, vocab: int = 64) -> State:
    """HF GPT-2 naming: ``transformer.wte``/``wpe``; Conv1D weights stored in × out."""
    b = _Builder(19)
    b.rand("transformer.wte.weight", vocab, d)
    b.rand("transformer.wpe.weight", 16, d)
    p = "transformer.h.0"
    b.layernorm(f"{p}.ln_1", d)
    b.linear(f"{p}.attn.c_attn", d, 3 * d)
    b.layernorm(f"{p}.ln_2", d)
    b.linear(f"{p}.mlp.c_fc", d, 4 * d)
    b.layernorm("transformer.ln_f", d)
    return b.state


def llama_meta(d: int = 32, vocab: int = 64) -> State:
    """Meta's original LLaMA naming: ``tok_embeddings``, ``layers.N.attention.wq``, ``output``."""
    b = _Builder(20)
    b.rand("tok_embeddings.weight", vocab, d)
    b.linear("layers.0.attention.wq", d, d, bias=False)
    b.ones("layers.0.attention_norm.weight", d)
    b.ones("norm.weight", d)
    b.linear("output", vocab, d, bias=False)
    return b.state


ARCHITECTURES: dict[str, Callable[[], State]] = {
    "vit_tiny": vit_tiny,
    "mlp_mixer": mlp_mixer,
    "swin_tiny": swin_tiny,
    "convnext_tiny": convnext_tiny,
    "convnext_tiny_fb": convnext_tiny_fb,
    "convnext_timm": convnext_timm,
    "resnet18": resnet18,
    "vgg11": vgg11,
    "mobilenet_v2": mobilenet_v2,
    "densenet121": densenet121,
    "efficientnet_b0": efficientnet_b0,
    "regnet_y": regnet_y,
    "dcgan_generator": dcgan_generator,
    "srgan_generator": srgan_generator,
    "gpt_neox": gpt_neox,
    "qwen_moe": qwen_moe,
    "diffusers_unet": diffusers_unet,
    "bert": bert,
    "gpt2": gpt2,
    "llama_meta": llama_meta,
}

#: Embedding tables (nn.Embedding) of the language models above, by their real module types.
EMBEDDINGS: dict[str, set[str]] = {
    "gpt_neox": {"gpt_neox.embed_in.weight"},
    "qwen_moe": {"model.embed_tokens.weight"},
    "bert": {
        "bert.embeddings.word_embeddings.weight",
        "bert.embeddings.position_embeddings.weight",
        "bert.embeddings.token_type_embeddings.weight",
    },
    "gpt2": {"transformer.wte.weight", "transformer.wpe.weight"},
    "llama_meta": {"tok_embeddings.weight"},
}

#: Keys that are NOT linear/conv weights though a loose rule could take them for one
#: (≥ 2-D, or 1-D ``weight`` leaves that are activations): written out from the real models.
NOT_LAYERS: dict[str, re.Pattern[str]] = {
    "vit_tiny": re.compile(r"cls_token|pos_embed"),
    "swin_tiny": re.compile(r".*relative_position_(bias_table|index)"),
    "convnext_tiny": re.compile(r".*layer_scale"),
    "convnext_tiny_fb": re.compile(r".*gamma"),
    "convnext_timm": re.compile(r".*gamma"),
    "srgan_generator": re.compile(r"block1\.1\.weight|.*prelu\.weight|upsample\.act\.weight"),
}

#: The BatchNorm modules (torchvision types) whose names do not say BatchNorm.
BATCHNORM_PREFIXES: dict[str, re.Pattern[str]] = {
    "densenet121": re.compile(r".*norm\d*$"),
}


def layer_weights(name: str, state: State) -> set[str]:
    """Keys of linear/conv module weights (what normalize may change), from the real models:
    every ≥ 2-D ``*.weight`` except the architecture's embeddings and listed non-layers."""
    out = set()
    pattern = NOT_LAYERS.get(name)
    for key, tensor in state.items():
        if not key.endswith("weight") or tensor.dim() < 2:
            continue
        if key in EMBEDDINGS.get(name, set()):
            continue
        if pattern is not None and pattern.fullmatch(key):
            continue
        out.add(key)
    return out
