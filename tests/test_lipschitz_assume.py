"""A bare state dict never certifies a bound: the product is conditional on a plain chain, which
``--assume sequential`` asserts and which names or shapes can refuse (issue 11, item 5).

Every case is a real torch module whose state dict is saved and read back; the module itself is
the independent check: its true Lipschitz constant (σ of the Jacobian of a linear map, or sampled
Jacobian norms) against what the product says.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from sncli.checkpoint import open_checkpoint
from sncli.cli import app
from sncli.errors import EXIT_BOUND_EXCEEDED
from sncli.lipschitz import Assumption, LipschitzOptions, LipschitzReport, lipschitz_report

SEQUENTIAL = Assumption.SEQUENTIAL


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def save(module: nn.Module, tmp_path: Path, name: str = "model.pt") -> Path:
    path = tmp_path / name
    torch.save(module.state_dict(), path)
    return path


def report_for(path: Path, **options: object) -> LipschitzReport:
    with open_checkpoint(path) as ckpt:
        return lipschitz_report(ckpt, LipschitzOptions(**options))  # type: ignore[arg-type]


def jacobian_sigma(module: nn.Module, x: torch.Tensor) -> float:
    """‖J_f(x)‖₂ in float64 (the module is converted to float64)."""
    model = module.double().eval()
    jac = torch.autograd.functional.jacobian(lambda t: torch.cat(_flat(model(t))), x.double())
    return float(torch.linalg.matrix_norm(jac.reshape(-1, x.numel()), ord=2))


def _flat(out: torch.Tensor | tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    return [t.reshape(-1) for t in (out if isinstance(out, tuple) else (out,))]


def set_linear(layer: nn.Linear, weight: torch.Tensor) -> None:
    with torch.no_grad():
        layer.weight.copy_(weight)
        if layer.bias is not None:
            layer.bias.zero_()


class Mlp(nn.Sequential):
    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__(
            nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)
        )


class TwoHeads(nn.Module):
    """One trunk (σ 1), two heads (σ 10 and 0.001): the joint map has constant 10, the product
    of the three σ is 0.01."""

    def __init__(self, names: tuple[str, str] = ("head_a", "head_b")) -> None:
        super().__init__()
        self.names = names
        self.trunk = nn.Linear(4, 10)
        set_linear(self.trunk, torch.eye(10, 4))
        for name, scale in zip(names, (10.0, 0.001), strict=True):
            head = nn.Linear(10, 1)
            set_linear(head, scale * torch.eye(1, 10))
            self.add_module(name, head)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = torch.relu(self.trunk(x))
        return tuple(getattr(self, n)(h) for n in self.names)


class ONet(nn.Module):
    """MTCNN ONet's tail as facenet-pytorch names it: dense5, then three heads dense6_1/2/3."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.dense5 = nn.Linear(32, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.prelu5(self.dense5(x))
        return self.dense6_1(h), self.dense6_2(h), self.dense6_3(h)


def test_a_bare_state_dict_is_conditional_never_certified(tmp_path: Path) -> None:
    module = Mlp()
    report = report_for(save(module, tmp_path))
    assert report.valid_architecture and report.upper_bound
    assert not report.certified and report.architecture is None
    statement = report.statement()
    assert "conditional, not certified" in statement
    assert "--assume sequential" in statement and "ONNX" in statement
    assert "not certified" in report.assumptions[0]
    # The same file with the chain asserted: certified, and above the torch model's Jacobians.
    assumed = report_for(save(module, tmp_path), assume=SEQUENTIAL)
    assert assumed.certified and assumed.architecture == "assumed"
    assert "asserted with --assume sequential" in assumed.statement()
    assert assumed.bound == report.bound
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert jacobian_sigma(module, torch.randn(6, generator=gen)) <= assumed.bound


@pytest.mark.parametrize(
    ("names", "why"),
    [(("head_a", "head_b"), "several heads"), (("out1", "out2"), "layers side by side")],
)
def test_two_heads_refuse_the_assumption(tmp_path: Path, names: tuple[str, str], why: str) -> None:
    module = TwoHeads(names)
    truth = jacobian_sigma(module, torch.ones(4))  # a linear map where the trunk is positive
    assert truth == pytest.approx(10.0, rel=1e-6)
    report = report_for(save(module, tmp_path), assume=SEQUENTIAL)
    assert report.bound == pytest.approx(0.01, rel=1e-6)  # the product is below the truth
    assert not report.valid_architecture and report.refused and not report.certified
    assert report.architecture is None
    assert any(why in c for c in report.caveats), report.caveats
    assert "--assume sequential is refused" in report.statement()


def test_mtcnn_onet_heads_are_side_by_side(tmp_path: Path) -> None:
    report = report_for(save(ONet(), tmp_path), assume=SEQUENTIAL)
    assert report.refused and not report.certified
    (caveat,) = report.caveats
    assert "side by side" in caveat
    assert "dense6_1.weight and dense6_2.weight both read a 256-wide input" in caveat
    assert "1 more such pair" in caveat  # dense6_2 / dense6_3


class PNet(nn.Module):
    """MTCNN PNet as facenet-pytorch names it: a conv trunk, then heads conv4_1 (2 channels) and
    conv4_2 (4 channels) both reading conv3's 32 channels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv1 = nn.Conv2d(3, 10, 3)
        self.conv2 = nn.Conv2d(10, 16, 3)
        self.conv3 = nn.Conv2d(16, 32, 3)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = torch.relu(self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x))))))
        return self.conv4_1(h), self.conv4_2(h)


def test_mtcnn_pnet_conv_heads_are_side_by_side(tmp_path: Path) -> None:
    """Issue #23: the conv heads were multiplied as a chain and certified (L ≤ 750 on the real
    PNet, whose graph bound is 1135)."""
    report = report_for(save(PNet(), tmp_path), assume=SEQUENTIAL)
    assert report.refused and not report.certified and not report.valid_architecture
    (caveat,) = report.caveats
    assert "conv4_1.weight and conv4_2.weight both read a 32-channel input" in caveat
    # transposed convs are judged by their stored (in, out, k…) layout: two ConvTranspose heads
    # reading 8 channels are side by side; read as plain convs they would read 4 and 2
    module = nn.Module()
    module.up4_1 = nn.ConvTranspose2d(8, 4, 2)
    module.up4_2 = nn.ConvTranspose2d(8, 2, 2)
    path = save(module, tmp_path, "t.pt")
    heads = report_for(path, assume=SEQUENTIAL, transposed=(r"up",))
    assert heads.refused and "both read a 8-channel input" in heads.caveats[0]
    assert not report_for(path, assume=SEQUENTIAL).refused
    # depthwise convs store one input channel per group: consecutive ones are no heads
    chain = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 8, 3, groups=8))
    assert not report_for(save(chain, tmp_path, "dw.pt"), assume=SEQUENTIAL).refused


def test_residual_names_refuse_and_unnamed_residuals_stay_conditional(tmp_path: Path) -> None:
    class Residual(nn.Module):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name
            fc = nn.Linear(4, 4)
            set_linear(fc, 0.5 * torch.eye(4))
            self.add_module(name, fc)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + getattr(self, self.name)(x)

    module = Residual("res_block")
    assert jacobian_sigma(module, torch.randn(4)) == pytest.approx(1.5, rel=1e-12)
    report = report_for(save(module, tmp_path), assume=SEQUENTIAL)
    assert report.bound == pytest.approx(0.5, rel=1e-9)
    assert report.refused and any("residual" in c for c in report.caveats)
    # A residual the names do not show cannot be told from a chain: conditional, not certified.
    hidden = report_for(save(Residual("fc"), tmp_path, "hidden.pt"))
    assert hidden.valid_architecture and not hidden.certified
    assert "conditional" in hidden.statement()


def test_prelu_slope_three_is_a_factor(tmp_path: Path) -> None:
    module = nn.Sequential(nn.Linear(4, 4), nn.PReLU(init=3.0), nn.Linear(4, 4))
    set_linear(module[0], torch.eye(4))
    set_linear(module[2], torch.eye(4))
    truth = jacobian_sigma(module, -torch.ones(4))
    assert truth == pytest.approx(3.0, rel=1e-12)
    path = save(module, tmp_path)
    report = report_for(path, assume=SEQUENTIAL)
    assert [(f.name, f.kind) for f in report.factors] == [
        ("0.weight", "linear"),
        ("1.weight", "prelu"),
        ("2.weight", "linear"),
    ]
    prelu = report.factors[1]
    assert prelu.sigma == 3.0 and prelu.certified and "max(1, max|a|)" in prelu.source
    assert report.certified and report.bound >= truth
    assert report.bound == pytest.approx(3.0, rel=1e-11)
    assert "1.weight" not in {s.name for s in report.excluded}
    assert any("PReLU" in a for a in report.assumptions)
    # Left out by --exclude, the slope makes the product partial (it can stretch by 3).
    assert report_for(path, assume=SEQUENTIAL, exclude=(r"^1\.",)).partial


@pytest.mark.parametrize(
    ("slopes", "factor"), [([0.5, -2.0, 3.0, 1.0], 3.0), ([0.25, -0.5, 0.0, 0.1], 1.0)]
)
def test_per_channel_prelu_is_max_of_one_and_the_largest_slope(
    tmp_path: Path, slopes: list[float], factor: float
) -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.act = nn.PReLU(4)
            set_linear(self.fc, torch.eye(4))
            with torch.no_grad():
                self.act.weight.copy_(torch.tensor(slopes))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.fc(x).unsqueeze(0)).squeeze(0)

    module = Block()
    report = report_for(save(module, tmp_path), assume=SEQUENTIAL)
    assert [f.sigma for f in report.factors if f.kind == "prelu"] == [factor]
    worst = -torch.tensor([1.0 if abs(a) == max(abs(s) for s in slopes) else 0.0 for a in slopes])
    if factor > 1:
        assert jacobian_sigma(module, worst) == pytest.approx(factor, rel=1e-12)


def test_recurrent_weights_refuse_the_assumption(tmp_path: Path) -> None:
    class Rnn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(4, 8)
            self.fc = nn.Linear(8, 2)

    class Silero(nn.Module):  # Silero VAD's decoder: an LSTMCell, then a 1x1 conv
        def __init__(self) -> None:
            super().__init__()
            self.lstm_cell = nn.LSTMCell(16, 16)
            self.out = nn.Conv1d(16, 1, 1)

    for module, key in ((Rnn(), "weight_ih_l0"), (Silero(), "weight_ih")):
        path = save(module, tmp_path, f"{key}.pt")
        report = report_for(path, assume=SEQUENTIAL)
        assert report.refused and not report.certified
        (caveat,) = report.caveats
        assert "recurrent layers" in caveat and key in caveat
        data = json.loads(invoke("lipschitz", str(path), "--format", "json", "-q")[1])
        assert data["bound"] is None and data["certified"] is False


def test_cli_assume_certified_gate(tmp_path: Path) -> None:
    path = save(Mlp(), tmp_path)
    gate = ("--certified", "--fail-above", "1e6", "-q")
    code, _, err = invoke("lipschitz", str(path), *gate)
    assert code == EXIT_BOUND_EXCEEDED and "not certified" in err
    assert "does not record the architecture" in err
    code, out, err = invoke("lipschitz", str(path), *gate, "--assume", "sequential")
    assert code == 0 and err == "" and "certified upper bound" in out
    code, out, _ = invoke("lipschitz", str(path), "--format", "json", "-q")
    data = json.loads(out)
    assert data["certified"] is False and data["architecture"] is None
    assert data["lower"] is None and data["outputs"] == [] and data["bound"] > 0
    heads = save(TwoHeads(), tmp_path, "heads.pt")
    code, out, _ = invoke("lipschitz", str(heads), "--assume", "sequential", "-q")
    assert code == 0 and "--assume sequential refused" in " ".join(out.split())
    code, _, err = invoke("lipschitz", str(heads), "--assume", "sequential", "--fail-above", "1")
    assert code == EXIT_BOUND_EXCEEDED and "--assume sequential refused" in err


JSON = ("--format", "json", "-q")


def test_subprocess_assume_sequential(mlp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sncli",
            "lipschitz",
            str(mlp_path),
            "--assume",
            "sequential",
            *JSON,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["certified"] is True and data["architecture"] == "assumed"


# --- --mlp: ECLipsE-Fast over a chain of linear layers -----------------------------------------


def test_mlp_chain_bound_is_eclipse_fast(tmp_path: Path) -> None:
    from sncli.numerics.eclipse import eclipse_fast_bound

    module = Mlp()
    path = save(module, tmp_path)
    weights = [module[i].weight.detach().double().numpy() for i in (0, 2, 4)]
    report = report_for(path, assume=SEQUENTIAL, mlp=True, method="power")
    assert report.chain is not None and report.chain.method == "eclipse-fast"
    assert report.chain.value == eclipse_fast_bound(weights)
    assert report.best_bound == pytest.approx(report.chain.value, rel=1e-12)
    assert report.best_bound < 0.9 * report.bound  # tighter than the product of σ
    assert report.certified  # the chain certificate does not rest on the power-method factors
    assert "ECLipsE-Fast" in report.statement() and "[0, 1]" in report.statement()
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        assert jacobian_sigma(module, torch.randn(6, generator=gen)) <= report.best_bound
    conditional = report_for(path, mlp=True)
    assert conditional.chain is not None and not conditional.certified
    code, out, _ = invoke("lipschitz", str(path), "--mlp", *JSON)
    data = json.loads(out)
    assert data["bound"] == pytest.approx(report.chain.value, rel=1e-12)
    assert data["certified"] is False and data["mlp"]["method"] == "eclipse-fast"
    assert data["mlp"]["product_log10"] == pytest.approx(conditional.log10_bound, rel=1e-12)
    limit = str(0.5 * (report.best_bound + report.bound))  # between the two bounds
    code, _, _ = invoke("lipschitz", str(path), "--assume", "sequential", "--fail-above", limit)
    assert code == EXIT_BOUND_EXCEEDED
    gate = ("--assume", "sequential", "--certified", "--mlp", "--fail-above", limit)
    code, out, _ = invoke("lipschitz", str(path), *gate, "-q")
    assert code == 0 and "ECLipsE-Fast over the chain" in out


def test_mlp_does_not_apply_to_convolutions_or_refused_chains(tmp_path: Path) -> None:
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2))
    report = report_for(save(conv, tmp_path), assume=SEQUENTIAL, mlp=True)
    assert report.chain is None and "conv2d" in report.chain_note
    assert "--mlp does not apply" in report.statement()
    assert report.best_log10 == report.log10_bound
    heads = report_for(save(TwoHeads(), tmp_path, "heads.pt"), assume=SEQUENTIAL, mlp=True)
    assert heads.chain is None and not heads.certified
    data = json.loads(invoke("lipschitz", str(tmp_path / "heads.pt"), "--mlp", *JSON)[1])
    assert data["bound"] is None and data["mlp"]["bound"] is None
