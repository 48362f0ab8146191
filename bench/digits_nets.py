"""Small networks trained on scikit-learn's digits (8×8 in [0, 1]) for ``bench/graph.py``'s
tightness section, and the reference lower bound a 20-start gradient ascent finds on them.

Seeded; each trains in a few seconds on a CPU. Needs scikit-learn (``load_digits`` ships the
data inside the package: nothing is downloaded).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(c, c, 3, 1, 1)
        self.bn_a = nn.BatchNorm2d(c)
        self.b = nn.Conv2d(c, c, 3, 1, 1)
        self.bn_b = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn_b(self.b(torch.relu(self.bn_a(self.a(x))))))


class ResCNN(nn.Module):
    def __init__(self, c: int = 16, blocks: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, 1, 1), nn.BatchNorm2d(c), nn.ReLU())
        self.blocks = nn.Sequential(*[Block(c) for _ in range(blocks)])
        self.fc = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x.reshape(-1, 1, 8, 8)))
        return self.fc(x.mean(dim=(2, 3)))


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 1, 1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(512, 10),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.reshape(-1, 1, 8, 8))


class CNNTanh(nn.Module):
    """conv → tanh → conv → tanh → flatten → fc: no pooling, so the unrolled convs and the fc
    form one dense chain."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, 1, 1), nn.Tanh(), nn.Conv2d(8, 8, 3, 1, 1), nn.Tanh(),
            nn.Flatten(), nn.Linear(512, 10),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.reshape(-1, 1, 8, 8))


def _mlp(widths: list[int]) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32)
    return x, torch.tensor(data.target)


def models() -> list[tuple[str, nn.Module]]:
    torch.manual_seed(0)
    return [
        ("mlp_64x2", _mlp([64, 64, 64, 10])),
        ("mlp_256x4", _mlp([64, 256, 256, 256, 256, 10])),
        ("cnn", CNN()),
        ("rescnn_bn3", ResCNN()),
        ("cnn_tanh", CNNTanh()),
    ]


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 30) -> float:
    """Adam, batch 64, seeded; returns the training accuracy."""
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def export(model: nn.Module, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(1, 64),), str(path), dynamo=False)


def reference_lower(model: nn.Module, x: torch.Tensor, starts: int = 20, steps: int = 150) -> float:
    """The best difference quotient of the float64 model found by a 20-start ascent: σ(J) ascent
    with ReLU smoothed (softplus, β annealed 2 → 64; the true model's σ(J) is recorded), started
    at the data points with the largest σ(J), then pair-ratio ascent; the value is a real
    ‖f(a) − f(b)‖/‖a − b‖ of the unmodified float64 model."""
    import copy

    f = copy.deepcopy(model).double().eval()
    data = x.double()

    def sigma(inputs: torch.Tensor) -> torch.Tensor:
        jac = torch.func.vmap(torch.func.jacrev(lambda z: f(z[None])[0]))(inputs)
        return torch.linalg.matrix_norm(jac, 2)

    gen = torch.Generator().manual_seed(0)
    pool = torch.cat(
        [data, data.mean(0) + torch.randn((400, 64), generator=gen, dtype=torch.float64)]
    )
    scores = sigma(pool).detach()
    start = pool[scores.argsort(descending=True)[:starts]].clone()
    best_point = start[0].clone()
    best = float(scores.max())
    relu = torch.relu

    def smooth(beta: float):
        return lambda t: nn.functional.softplus(t, beta)

    for step in range(steps):
        beta = 2.0 * 32.0 ** (step / max(1, steps - 1))
        torch.relu = smooth(beta)  # type: ignore[assignment]
        try:
            for m in f.modules():
                if isinstance(m, nn.ReLU):
                    m.forward = smooth(beta)  # type: ignore[method-assign]
            z = start.clone().requires_grad_(True)
            s = sigma(z).sum()
            (g,) = torch.autograd.grad(s, z)
        finally:
            torch.relu = relu  # type: ignore[assignment]
            for m in f.modules():
                if isinstance(m, nn.ReLU):
                    del m.forward
        start = start + 0.02 * g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
        true = sigma(start).detach()
        if float(true.max()) > best:
            best, best_point = float(true.max()), start[true.argmax()].clone()
    # a real difference quotient along the top singular vector at the best point
    jac = torch.func.jacrev(lambda z: f(z[None])[0])(best_point)
    v = torch.linalg.svd(jac).Vh[0]
    quotient = 0.0
    with torch.no_grad():
        for h in (1e-3, 1e-5, 1e-7):
            q = float((f((best_point + h * v)[None]) - f(best_point[None])).norm() / h)
            quotient = max(quotient, q)
    # pair ratios from the best points
    a = start.clone().requires_grad_(True)
    b = (
        start + 0.05 * torch.randn(start.shape, generator=gen, dtype=torch.float64)
    ).requires_grad_(True)
    opt = torch.optim.Adam([a, b], 1e-2)
    for _ in range(steps):
        opt.zero_grad()
        r = (f(a) - f(b)).norm(dim=1) / (a - b).norm(dim=1)
        (-r.sum()).backward()
        opt.step()
    with torch.no_grad():
        r = (f(a) - f(b)).norm(dim=1) / (a - b).norm(dim=1)
    return max(quotient, float(r.max()))
