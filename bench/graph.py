"""``bench/run.py --graph``: the bound over an ONNX graph — time and tightness, in one run.

Models (seeded, exported with torch.onnx.export, dynamo=False): an MNIST-size MLP
(784-512-512-10, ReLU), a ResNet-18-shaped CNN (torchvision's layout: 7×7/2 stem, BatchNorm,
3×3/2 max pool, 8 basic blocks to 512 channels, global average pool, fc 1000; built here, as
torchvision is not a dependency) at 224×224, and an LSTM (2 layers, 64 hidden, 32 steps).
Printed per model: the time of ``graph_lipschitz`` without and with the lower-bound search,
the time of the plain product of its layers' σ (the σ of every Gemm/Conv weight), the bound,
bound / product of layer σ and bound / lower.

Then the tightness section (``tightness_section``; also ``python bench/graph.py --tightness``):
small nets trained here on scikit-learn's digits (bench/digits_nets.py: MLP 64-64-64-10, MLP
64-256×4-10, a ReLU CNN, a residual CNN with BatchNorm; seeded, a few seconds each), per model:
∏σ of the layers, the bound as before (ECLipsE-Fast chains, no conv segments, one power
iteration: ``chain_seconds=0, lower_effort=0``), the bound now (LipSDP-Neuron descent, conv
segments by Fourier LipSDP, multi-start ascent), sncli's ``lower``, the best lower bound of a
20-start ascent on the torch model (``digits_nets.reference_lower``), times, and tightness =
certified / best lower.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

LAYER_OPS = ("Gemm", "MatMul", "Conv", "ConvTranspose", "BatchNormalization")


class Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.pool = nn.MaxPool2d(3, 2, 1)
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [Basic(cin, cout, stride), Basic(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.pool(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(16, 64, num_layers=2, batch_first=True)
        self.head = nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0][:, -1])


def _models() -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    mlp = nn.Sequential(
        nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
    )
    resnet = ResNet18()
    for module in resnet.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    return [
        ("mnist-mlp", mlp, (1, 784)),
        ("resnet18-224", resnet, (1, 3, 224, 224)),
        ("lstm", Recurrent(), (1, 32, 16)),
    ]


def _product_seconds(report, path: Path) -> tuple[float, float]:
    """The plain product of the layers' σ (Gemm/Conv weights as stored), and its time."""
    import numpy as np

    from sncli.formats.onnx import read_onnx_graph
    from sncli.lipschitz.ops import _sigma_upper

    began = time.perf_counter()
    graph = read_onnx_graph(path)
    log = 0.0
    for node in graph.nodes:
        if node.op_type in ("Gemm", "MatMul") and node.inputs[1] in graph.initializers:
            weight = graph.load(node.inputs[1]).astype(np.float64)
            if weight.ndim == 2:
                log += math.log10(_sigma_upper(weight)[0])
    factors = [n.factor for n in report.nodes if n.op in ("Conv", "ConvTranspose")]
    log += sum(math.log10(f) for f in factors if f)
    return 10.0**log, time.perf_counter() - began


def graph_section(folder: Path) -> dict:
    from sncli.lipschitz import graph_lipschitz

    lines = [
        "| model | inputs | graph bound (s) | lower search (s) | bound | certified | "
        "bound / ∏σ | bound / lower | ∏σ (s) | chain method |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    rows = []
    for name, model, shape in _models():
        path = folder / f"{name}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (torch.randn(shape),), str(path), dynamo=False)
        report = graph_lipschitz(path, lower=True)
        bound_s, lower_s = report.seconds["bound"], report.seconds.get("lower", 0.0)
        lower = report.lower.value if report.lower else None
        if name == "lstm":  # no layer σ product is meaningful for a recurrence
            product, product_s = None, 0.0
        else:
            product, product_s = _product_seconds(report, path)
        bound = report.bound
        ratio = "--" if bound is None or not product else f"{bound / product:.3f}"
        loose = "--" if bound is None or not lower else f"{bound / lower:.3g}"
        chain = report.chains[0].method if report.chains else "--"
        lines.append(
            f"| {name} | {'×'.join(map(str, shape))} | {bound_s:.2f} | {lower_s:.2f} | "
            f"{'none' if bound is None else f'{bound:.4g}'} | {report.certified} | {ratio} | "
            f"{loose} | {product_s:.2f} | {chain} |"
        )
        if report.bound is None:
            lines.append(f"|  ↳ {name}: {report.statement()[-160:]} |||||||||")
        print(lines[-1], flush=True)
        rows.append(
            {
                "model": name,
                "bound": bound,
                "certified": report.certified,
                "lower": lower,
                "product": product,
                "bound_seconds": bound_s,
                "with_lower_seconds": lower_s,
                "product_seconds": product_s,
            }
        )
    table = "\n".join(lines)
    print(table, flush=True)
    return {"table": table, "rows": rows, "tightness": tightness_section(folder)}


def tightness_section(folder: Path) -> dict:
    """Before/after bounds and lower bounds on the digits nets (module docstring)."""
    from sncli.lipschitz import graph_lipschitz

    try:
        import digits_nets
    except ImportError as exc:  # scikit-learn missing
        print(f"tightness section skipped: {exc}", flush=True)
        return {"skipped": str(exc)}
    x, y = digits_nets.digits()
    lines = [
        "| model | acc | ∏σ | bound before (s) | bound now (s) | lower before | lower now (s) | "
        "best lower (20-start) | before / best | now / best | lower now / best |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = []
    for name, model in digits_nets.models():
        accuracy = digits_nets.train(model, x, y)
        path = folder / f"{name}.onnx"
        digits_nets.export(model, path)
        before = graph_lipschitz(path, chain_seconds=0, lower_effort=0)
        now = graph_lipschitz(path)
        best = digits_nets.reference_lower(model, x)
        old_low = before.lower.value if before.lower else float("nan")
        new_low = now.lower.value if now.lower else float("nan")
        assert now.bound is not None and before.bound is not None
        best = max(best, new_low, old_low)
        row = {
            "model": name,
            "accuracy": accuracy,
            "product": now.product,
            "bound_before": before.bound,
            "bound_before_seconds": before.seconds["bound"],
            "bound_now": now.bound,
            "bound_now_seconds": now.seconds["bound"],
            "lower_before": old_low,
            "lower_before_seconds": before.seconds.get("lower"),
            "lower_now": new_low,
            "lower_now_seconds": now.seconds.get("lower"),
            "best_lower": best,
        }
        rows.append(row)
        lines.append(
            f"| {name} | {accuracy:.3f} | {now.product:.4g} | {before.bound:.4g} "
            f"({before.seconds['bound']:.1f}) | {now.bound:.4g} ({now.seconds['bound']:.1f}) | "
            f"{old_low:.4g} | {new_low:.4g} ({now.seconds.get('lower', 0):.1f}) | {best:.4g} | "
            f"{before.bound / best:.3f} | {now.bound / best:.3f} | {new_low / best:.2f} |"
        )
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table, flush=True)
    return {"table": table, "rows": rows}


if __name__ == "__main__" and "--tightness" in sys.argv:
    import tempfile

    sys.path.insert(0, str(HERE))
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="sncli-tight-") as tmp:
        tightness_section(Path(tmp))
