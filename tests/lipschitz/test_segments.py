"""Conv segments of ONNX graphs bounded jointly (sncli.lipschitz.segments): torch exports with
BatchNorm, checked against the brute-force sup over activation patterns of the same network
(linear maps taken from the torch modules themselves), against the old per-node rule, and
against lower bounds."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from sncli.lipschitz import graph_lipschitz  # noqa: E402


def _randomize_bn(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 2 + 0.2)
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=gen))
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=gen))


class Block1d(torch.nn.Module):
    """relu(x + bn(conv(relu(bn(conv(x)))))) on 1-D signals."""

    def __init__(self, c: int, hidden: int, dilation: int = 1) -> None:
        super().__init__()
        self.a = torch.nn.Conv1d(c, hidden, 3, padding=dilation, dilation=dilation)
        self.bn_a = torch.nn.BatchNorm1d(hidden)
        self.b = torch.nn.Conv1d(hidden, c, 3, padding=1)
        self.bn_b = torch.nn.BatchNorm1d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn_b(self.b(torch.relu(self.bn_a(self.a(x))))))


def _export(model: torch.nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(shape),), str(path), dynamo=False)
    return path


def _linear(module: torch.nn.Module, shape: tuple[int, ...]) -> np.ndarray:
    """The affine module's linear part as a matrix: f(e_i) − f(0), column by column."""
    size = int(np.prod(shape))
    with torch.no_grad():
        zero = module(torch.zeros((1, *shape), dtype=torch.float64)).reshape(-1)
        basis = torch.eye(size, dtype=torch.float64).reshape(size, *shape)
        return (module(basis).reshape(size, -1) - zero).T.numpy()


def _brute_force(block: Block1d, c: int, hidden: int, n: int) -> float:
    """max over all 0/1 patterns of ‖D_out(I + B D_h A)‖: ≥ the true Lipschitz constant."""
    block = block.double().eval()
    a = _linear(torch.nn.Sequential(block.a, block.bn_a), (c, n))
    b = _linear(torch.nn.Sequential(block.b, block.bn_b), (hidden, n))
    best = 0.0
    for inner in itertools.product((0.0, 1.0), repeat=hidden * n):
        core = np.eye(c * n) + b @ (np.asarray(inner)[:, None] * a)
        for outer in itertools.product((0.0, 1.0), repeat=c * n):
            best = max(best, float(np.linalg.norm(np.asarray(outer)[:, None] * core, 2)))
    return best


@pytest.mark.parametrize(("seed", "dilation"), [(0, 1), (1, 2), (2, 1)])
def test_residual_block_against_brute_force(tmp_path: Path, seed: int, dilation: int) -> None:
    torch.manual_seed(seed)
    c, hidden, n = 1, 2, 4
    block = Block1d(c, hidden, dilation)
    _randomize_bn(block, seed)
    path = _export(block, (1, c, n), tmp_path / "block.onnx")
    old = graph_lipschitz(path, lower=False, chain_seconds=0)
    new = graph_lipschitz(path, lower=False)
    exact = _brute_force(block, c, hidden, n)
    assert new.certified
    assert new.bound is not None and old.bound is not None
    assert exact <= new.bound <= old.bound
    assert any("Fourier LipSDP" in chain.method for chain in new.chains)


class ResCNN(torch.nn.Module):
    def __init__(self, c: int = 3, blocks: int = 2) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(
            torch.nn.Conv2d(1, c, 3, 1, 1), torch.nn.BatchNorm2d(c), torch.nn.ReLU()
        )
        self.blocks = torch.nn.Sequential(*[Block2d(c) for _ in range(blocks)])
        self.fc = torch.nn.Linear(c, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class Block2d(torch.nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(c, c, 3, 1, 1)
        self.bn_a = torch.nn.BatchNorm2d(c)
        self.b = torch.nn.Conv2d(c, c, 3, 1, 1)
        self.bn_b = torch.nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(
            x + self.bn_b(self.b(torch.nn.functional.leaky_relu(self.bn_a(self.a(x)), 0.1)))
        )


def _jacobian_max(model: torch.nn.Module, shape: tuple[int, ...], samples: int = 16) -> float:
    f = model.double().eval()
    gen = torch.Generator().manual_seed(0)
    best = 0.0
    for _ in range(samples):
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(lambda z: f(z).reshape(-1), x).reshape(
            -1, x.numel()
        )
        best = max(best, float(torch.linalg.matrix_norm(jac, 2)))
    return best


def test_residual_cnn_joint_bound(tmp_path: Path) -> None:
    """A stem and two residual blocks (BatchNorm, LeakyReLU inside) on 6×6 images: one segment
    from the stem's input to the last block's output; the bound is certified, tighter than the
    per-node rule, and above the Jacobian norms and the searched lower bound."""
    torch.manual_seed(3)
    model = ResCNN()
    _randomize_bn(model, 3)
    path = _export(model, (1, 1, 6, 6), tmp_path / "rescnn.onnx")
    old = graph_lipschitz(path, lower=False, chain_seconds=0)
    new = graph_lipschitz(path, seed=0)
    assert new.certified and new.bound is not None and old.bound is not None
    assert new.bound < old.bound
    segments = [c for c in new.chains if "Fourier LipSDP" in c.method]
    assert len(segments) == 1 and "5 activations" in segments[0].method
    assert new.lower is not None and new.lower.value <= new.bound
    assert _jacobian_max(model, (1, 1, 6, 6)) <= new.bound


def test_strided_conv_is_not_a_segment(tmp_path: Path) -> None:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(2, 2, 3, 2, 1)
    )
    path = _export(model, (1, 1, 8, 8), tmp_path / "strided.onnx")
    report = graph_lipschitz(path, lower=False)
    assert not any("Fourier LipSDP" in c.method for c in report.chains)
    assert report.bound is not None and report.certified


def test_conv_flatten_gemm_chain_against_brute_force(tmp_path: Path) -> None:
    """conv → relu → flatten → fc as one dense chain of the unrolled conv and the fc (ECLipsE /
    LipSDP-Neuron): ≥ the sup over the 2⁸ activation patterns, below the product."""
    torch.manual_seed(5)
    model = torch.nn.Sequential(
        torch.nn.Conv1d(1, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(8, 2),
    )  # fmt: skip
    path = _export(model, (1, 1, 4), tmp_path / "chain.onnx")
    report = graph_lipschitz(path, lower=False)
    conv = _linear(model[0].double(), (1, 4))
    fc = model[3].weight.detach().double().numpy()
    exact = max(
        float(np.linalg.norm(fc @ (np.asarray(p)[:, None] * conv), 2))
        for p in itertools.product((0.0, 1.0), repeat=8)
    )
    chain = next(c for c in report.chains if "Gemm" in c.nodes[-1])
    assert report.certified and report.bound is not None
    assert exact <= report.bound <= chain.product
    assert report.bound < float(np.linalg.norm(conv, 2) * np.linalg.norm(fc, 2))


def test_explicit_batchnorm_nodes_are_folded(tmp_path: Path) -> None:
    """An ONNX graph written by hand with BatchNormalization nodes (not fused by an exporter)
    and no outer activation: y = x + BN(conv_B(relu(BN(conv_A(x))))), asymmetric pads. The
    bound is ≥ the brute-force sup over patterns of the folded dense maps."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    n = 4
    ka = rng.standard_normal((2, 1, 3)).astype(np.float32)
    kb = rng.standard_normal((1, 2, 3)).astype(np.float32)
    bn = {}
    for name, c in (("a", 2), ("b", 1)):
        bn[name] = [rng.standard_normal(c) * 3, rng.standard_normal(c), rng.standard_normal(c),
                    rng.random(c) + 0.05]  # fmt: skip
    inits = [numpy_helper.from_array(ka, "ka"), numpy_helper.from_array(kb, "kb")]
    for name, values in bn.items():
        for field, v in zip(("g", "beta", "mean", "var"), values, strict=True):
            inits.append(numpy_helper.from_array(np.asarray(v, np.float32), f"{name}_{field}"))
    nodes = [
        helper.make_node("Conv", ["x", "ka"], ["ua"], pads=[0, 2]),
        helper.make_node("BatchNormalization", ["ua", "a_g", "a_beta", "a_mean", "a_var"], ["va"]),
        helper.make_node("Relu", ["va"], ["h"]),
        helper.make_node("Conv", ["h", "kb"], ["ub"], pads=[2, 0]),
        helper.make_node("BatchNormalization", ["ub", "b_g", "b_beta", "b_mean", "b_var"], ["vb"]),
        helper.make_node("Add", ["x", "vb"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 1, n))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, 1, n))],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "bn.onnx"
    path.write_bytes(model.SerializeToString())

    def dense(kernel: np.ndarray, scale: np.ndarray, begin: int) -> np.ndarray:
        out_ch, in_ch, taps = kernel.shape
        mat = np.zeros((out_ch * n, in_ch * n))
        for o, c, t, i in itertools.product(range(out_ch), range(in_ch), range(taps), range(n)):
            if 0 <= i + t - begin < n:
                mat[o * n + i, c * n + i + t - begin] += float(kernel[o, c, t]) * scale[o]
        return mat

    scale = {k: np.float64(v[0]).astype(np.float32) / np.sqrt(v[3].astype(np.float32) + 1e-5)
             for k, v in bn.items()}  # fmt: skip
    a, b = dense(ka, scale["a"], 0), dense(kb, scale["b"], 2)
    exact = max(
        float(np.linalg.norm(np.eye(n) + b @ (np.asarray(p)[:, None] * a), 2))
        for p in itertools.product((0.0, 1.0), repeat=2 * n)
    )
    report = graph_lipschitz(path, lower=False)
    assert report.certified and report.bound is not None
    assert any("Fourier LipSDP" in c.method for c in report.chains)
    assert exact <= report.bound <= graph_lipschitz(path, lower=False, chain_seconds=0).bound
    assert report.bound <= exact * 1.5


def test_segments_cut_to_the_cost_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a cost cap that fits about two activations, the stem and blocks split into several
    segments that follow one another; the bound stays certified, above the Jacobian norms and
    at most the per-node rule's."""
    from sncli.numerics import conv_program

    torch.manual_seed(4)
    model = ResCNN()
    _randomize_bn(model, 4)
    path = _export(model, (1, 1, 6, 6), tmp_path / "rescnn.onnx")
    torus = 8 * 5  # 8×8 torus, one axis halved
    monkeypatch.setattr(
        conv_program, "PROGRAM_MAX_COST", torus * 9**3
    )  # D ≤ 9: the input and two activations
    cut = graph_lipschitz(path, lower=False)
    old = graph_lipschitz(path, lower=False, chain_seconds=0)
    segments = [c for c in cut.chains if "Fourier LipSDP" in c.method]
    assert len(segments) >= 2
    assert cut.certified and cut.bound is not None and old.bound is not None
    assert _jacobian_max(model, (1, 1, 6, 6)) <= cut.bound <= old.bound
