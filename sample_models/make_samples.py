"""Make the small committed sample checkpoints, deterministically, from real torch modules.

Run from the repository root:  python sample_models/make_samples.py
Each model is built with a fixed seed; the spectrally normalized discriminators take a few SGD
steps in train mode so their stored u, v vectors are realistic (not fully converged).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

HERE = Path(__file__).resolve().parent


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )


def discriminator(sn: object) -> nn.Module:
    """A DCGAN/SN-GAN style discriminator for 32×32 images, every layer spectrally normalized."""
    torch.manual_seed(1)
    return nn.Sequential(
        sn(nn.Conv2d(3, 32, 4, stride=2, padding=1)),  # type: ignore[operator]
        nn.LeakyReLU(0.1),
        sn(nn.Conv2d(32, 64, 4, stride=2, padding=1)),  # type: ignore[operator]
        nn.LeakyReLU(0.1),
        sn(nn.Conv2d(64, 128, 4, stride=2, padding=1)),  # type: ignore[operator]
        nn.LeakyReLU(0.1),
        nn.Flatten(),
        sn(nn.Linear(128 * 4 * 4, 1)),  # type: ignore[operator]
    )


def train_a_little(model: nn.Module, steps: int = 5) -> None:
    torch.manual_seed(2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        loss = model(torch.randn(8, 3, 32, 32)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


class SmallCNN(nn.Module):
    """Conv-BN-ReLU classifier, as a Lightning module would hold it under ``self.model``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def lightning_checkpoint() -> dict[str, object]:
    torch.manual_seed(3)
    model = SmallCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(3):
        loss = model(torch.randn(16, 1, 28, 28)).logsumexp(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [],
        "callbacks": {},
        "hyper_parameters": {"lr": 1e-3, "channels": [16, 32], "num_classes": 10},
    }


def tiny_transformer_state() -> dict[str, torch.Tensor]:
    """A 2-block decoder-only transformer's weights (GPT/Llama-like names), in bf16."""
    torch.manual_seed(4)
    d, ff, vocab, blocks = 64, 256, 512, 2
    state: dict[str, torch.Tensor] = {"model.embed_tokens.weight": torch.randn(vocab, d) * 0.02}
    for i in range(blocks):
        p = f"model.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            state[f"{p}.self_attn.{proj}.weight"] = torch.randn(d, d) / d**0.5
        state[f"{p}.mlp.gate_proj.weight"] = torch.randn(ff, d) / d**0.5
        state[f"{p}.mlp.up_proj.weight"] = torch.randn(ff, d) / d**0.5
        state[f"{p}.mlp.down_proj.weight"] = torch.randn(d, ff) / ff**0.5
        state[f"{p}.input_layernorm.weight"] = torch.ones(d)
        state[f"{p}.post_attention_layernorm.weight"] = torch.ones(d)
    state["model.norm.weight"] = torch.ones(d)
    state["lm_head.weight"] = torch.randn(vocab, d) / d**0.5
    return {k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}


def save_sharded(state: dict[str, torch.Tensor], folder: Path, shards: int = 2) -> None:
    folder.mkdir(exist_ok=True)
    names = list(state)
    per = -(-len(names) // shards)
    weight_map: dict[str, str] = {}
    total = 0
    for index in range(shards):
        file = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n] for n in names[index * per : (index + 1) * per]}
        save_file(part, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
        total += sum(t.numel() * t.element_size() for t in part.values())
    index_json = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2) + "\n")


def fine_tuned(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The MLP after a pretend fine-tune, for ``sncli diff``: a rank-1 update of spectral norm
    0.3 on the middle layer (unit u, v in float64), the head scaled by 1.05, the rest as is."""
    generator = torch.Generator().manual_seed(1)
    tuned = dict(state)
    middle = state["2.weight"].double()
    u = torch.randn(middle.shape[0], generator=generator, dtype=torch.float64)
    v = torch.randn(middle.shape[1], generator=generator, dtype=torch.float64)
    tuned["2.weight"] = (middle + 0.3 * torch.outer(u / u.norm(), v / v.norm())).float()
    tuned["4.weight"] = (state["4.weight"].double() * 1.05).float()
    return tuned


def main() -> None:
    state = {k: v.contiguous() for k, v in mlp().state_dict().items()}
    save_file(state, str(HERE / "mlp.safetensors"), metadata={"format": "pt"})
    save_file(fine_tuned(state), str(HERE / "mlp_finetuned.safetensors"), metadata={"format": "pt"})

    disc = discriminator(nn.utils.parametrizations.spectral_norm)
    train_a_little(disc)
    torch.save(disc.state_dict(), HERE / "sngan_disc_parametrized.pt")

    legacy = discriminator(nn.utils.spectral_norm)
    train_a_little(legacy)
    torch.save(legacy.state_dict(), HERE / "sngan_disc_legacy.pt")

    torch.save(lightning_checkpoint(), HERE / "lightning_cnn.ckpt")

    save_sharded(tiny_transformer_state(), HERE / "tiny_transformer")
    print(f"wrote sample models to {HERE}")


if __name__ == "__main__":
    main()
