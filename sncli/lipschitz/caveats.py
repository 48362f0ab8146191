"""The English of ``sncli lipschitz``: what a bound assumes, why a state dict's product is not a
bound (architecture and chain caveats read from names and shapes), and the one-sentence
statements of what each report's number means. The numbers are in :mod:`.product` and
:mod:`.graph`; nothing here computes one.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from sncli.checkpoint import Checkpoint, natural_key
from sncli.layers import Layer, LayerKind

if TYPE_CHECKING:
    from sncli.formats.onnx import OnnxGraph
    from sncli.lipschitz.graph_results import GraphLipschitzReport, NodeFactor
    from sncli.lipschitz.product import LipschitzReport


ATTENTION_NAME = re.compile(
    r"(^|[._])(q_proj|k_proj|v_proj|qkv|in_proj_weight|query|key|value|attn|attention|"
    r"self_attn|cross_attn|c_attn|mha)([._]|$)",
    re.IGNORECASE,
)
RESIDUAL_NAME = re.compile(
    r"(^|[._])(residual|shortcut|skip|downsample|res_?block|resnet|identity)\w*([._]|$)",
    re.IGNORECASE,
)
LAYERNORM_NAME = re.compile(r"(layer_?norm|rms_?norm|(^|[._])ln(_\w+|\d*)([._]|$)|norm\d*\.)")
#: Recurrent weights: nn.LSTM/GRU/RNN (``weight_ih_l0``, ``weight_hh_l1_reverse``, ``weight_hr_l0``)
#: and the cells (``lstm_cell.weight_ih``, Silero VAD), biases alike.
RECURRENT_NAME = re.compile(r"(^|\.)(weight_(?:ih|hh|hr)(?:_l\d+)?(?:_reverse)?)$")
#: A module named as a head (``cls_head``, ``bbox_head``, ``head``); several of them read one trunk.
HEAD_NAME = re.compile(r"(^|[._])([A-Za-z0-9]*_?head_?[A-Za-z0-9]*)\.")
#: The children of a ModuleList of heads (``heads.0``, ``heads.1``).
HEADS_LIST = re.compile(r"(^|[._])(heads)\.(\d+)\.")

#: What the product of a state dict's factors assumes about the model, which the file does not
#: record (a graph such as ONNX does).
CHAIN_ASSUMPTION = (
    "the network is a plain sequential chain of these layers in key order: no branches, heads, "
    "skips, concatenations, pools or recurrence"
)
ACTIVATION_ASSUMPTION = "activations are 1-Lipschitz (ReLU, LeakyReLU, tanh, …)"
#: How to get a proof instead: export the model's graph.
ONNX_HINT = (
    'export it to ONNX (torch.onnx.export(model, x, "m.onnx")) and run sncli lipschitz on the '
    "graph for a proof"
)


def architecture_caveats(names: Iterable[str]) -> list[str]:
    """Reasons the product is not a Lipschitz bound for this architecture, judged by names."""
    names = list(names)
    caveats = []
    for pattern, what, why in (
        (ATTENTION_NAME, "attention", "dot-product attention is not globally Lipschitz"),
        (
            RESIDUAL_NAME,
            "residual/skip connections",
            "a residual block x + g(x) contributes 1 + Lip(g), not Lip(g)",
        ),
        (
            RECURRENT_NAME,
            "recurrent layers",
            "a recurrent layer applies its weights once per time step, so its weights are no "
            "chain of linear layers",
        ),
    ):
        found = sorted({m.group(2) for n in names if (m := pattern.search(n))})
        if found:
            caveats.append(f"the names show {what} ({', '.join(found[:4])}); {why}")
    heads = sorted({n[: m.end(2)] for n in names if (m := HEAD_NAME.search(n))}, key=natural_key)
    heads += sorted({n[: m.end(3)] for n in names if (m := HEADS_LIST.search(n))}, key=natural_key)
    if len(heads) > 1:
        shown = ", ".join(heads[:4]) + (", …" if len(heads) > 4 else "")
        caveats.append(
            f"the names show several heads ({shown}); heads side by side read the same input, "
            "so the product multiplies maps that are not composed"
        )
    # A module with running statistics is a BatchNorm, whatever its name (DenseNet's norm1).
    batchnorms = {
        n.rpartition(".")[0] for n in names if n.endswith((".running_var", ".running_mean"))
    }
    if any(LAYERNORM_NAME.search(n) and n.rpartition(".")[0] not in batchnorms for n in names):
        caveats.append(
            "LayerNorm/RMSNorm layers are present; their Lipschitz constant is about max|γ|/√ε "
            "(vacuous), and they are not in the product"
        )
    return caveats


def _widths(layer: Layer) -> tuple[int, int] | None:
    """(outputs, inputs) of a linear layer (features) or a convolution (channels; a transposed
    conv stores (in, out, k…)); None for other layers and recurrent weights."""
    if RECURRENT_NAME.search(layer.name):
        return None
    if layer.kind is LayerKind.LINEAR:
        return layer.shape[0], layer.shape[1]
    if layer.kind.is_conv:
        first, second = layer.shape[0], layer.shape[1]
        outputs, inputs = (second, first) if layer.transposed else (first, second)
        # One input channel per output group is a depthwise conv: its stored width is per
        # group (a state dict does not record groups), so it says nothing about what it reads.
        return None if inputs == 1 and outputs > 1 else (outputs, inputs)
    return None


def chain_caveats(layers: Iterable[Layer]) -> list[str]:
    """Heads side by side, judged by shapes: two linear layers (or two convolutions) of one
    parent module, next to each other in key order, that read the same width (channels) while
    neither's output fits the other's input (MTCNN's ``dense6_1``/``dense6_2``/``dense6_3`` on a
    256-wide trunk, PNet's ``conv4_1``/``conv4_2`` on 32 channels). Such layers are not
    composed, so their product can be below the largest of them. Other shape mismatches are not
    judged: key order need not be the order of the model (``classifier`` sorts before
    ``features``)."""
    side = []
    for convs in (False, True):
        ordered = sorted(
            (
                (layer, widths)
                for layer in layers
                if (widths := _widths(layer)) is not None
                and (layer.kind is not LayerKind.LINEAR) == convs
            ),
            key=lambda pair: natural_key(pair[0].name),
        )
        for (first, (out_a, in_a)), (second, (out_b, in_b)) in itertools.pairwise(ordered):
            if (
                first.name.rpartition(".")[0].rpartition(".")[0]
                != (second.name.rpartition(".")[0].rpartition(".")[0])
            ):
                continue
            if in_a == in_b and out_a != in_b and out_b != in_a:
                side.append((first, second, in_a, "channel" if convs else "wide"))
    if not side:
        return []
    first, second, width, unit = side[0]
    more = f", and {len(side) - 1} more such pair(s)" if len(side) > 1 else ""
    return [
        f"the shapes show layers side by side, such as heads on one trunk ({first.short_name} "
        f"and {second.short_name} both read a {width}-{unit} input and neither reads the "
        f"other's output{more}); maps side by side are not composed, and the product of their σ "
        "can be below the largest of them"
    ]


#: Why an expert is no factor of the state-dict product (its ``Skipped`` reason).
EXPERT_EXCLUDED = (
    "expert of a mixture-of-experts stack: experts sit side by side, not in a chain, so no "
    "expert is a factor of the product"
)


def moe_caveats(layers: Iterable[Layer]) -> list[str]:
    """A mixture of experts is not a chain: a router sends each token to k of E experts side by
    side and sums their outputs with its weights, so multiplying experts as layers is wrong."""
    stacks = sorted({layer.stack for layer in layers if layer.stack is not None}, key=natural_key)
    if not stacks:
        return []
    shown = ", ".join(stacks[:3]) + (", …" if len(stacks) > 3 else "")
    return [
        f"the model is a mixture of experts ({len(stacks)} expert stack(s): {shown}); a router "
        "sends each token to some of the experts side by side and sums their outputs with "
        "input-dependent weights, so the experts are not layers of a chain and are left out of "
        "the product, which is no bound on the model"
    ]


def selection_caveats(checkpoint: Checkpoint, left_out: list[str]) -> list[str]:
    if not left_out:
        return []
    shown = ", ".join(checkpoint.short_name(n) for n in left_out[:3])
    return [
        f"--filter/--exclude left {len(left_out)} of the model's layers out of the product "
        f"({shown}{', …' if len(left_out) > 3 else ''}): a product over a subset of the layers "
        "is not a bound on the model"
    ]


def graph_assumptions(graph: OnnxGraph, nodes: list[NodeFactor]) -> list[str]:
    """What the graph bound assumes (the model is its graph, in exact arithmetic; ℓ2 norms)."""
    shapes = ", ".join(
        f"{v.name} {'×'.join(str(d) for d in (v.shape or ()))}" for v in graph.inputs
    )
    items = [
        f"the function is the model's ONNX graph in exact arithmetic, inputs {shapes}",
        "ℓ2 norms over all graph inputs jointly and all outputs jointly",
    ]
    if any(n.op in ("Conv", "ConvTranspose") for n in nodes):
        items.append("conv factors are certified upper bounds on the zero-padded convolution")
    if any(n.op == "BatchNormalization" for n in nodes):
        items.append("BatchNormalization in inference mode (running statistics)")
    return items


def product_statement(report: LipschitzReport) -> str:
    """One plain sentence on what the number means and whether it holds."""
    text = _product_statement(report)
    if report.chain is not None and report.valid_bound:
        ratio = 10.0 ** (report.best_log10 - report.log10_bound) if report.bound > 0 else 1.0
        text += (
            " With --mlp, L is ECLipsE-Fast's bound over the whole chain of linear layers "
            "(Xu & Sivaranjani 2024; proven in float64), "
            f"{ratio:.3g}× the product of σ; it also assumes every activation is "
            "slope-restricted to [0, 1] (ReLU, LeakyReLU, tanh, sigmoid, ELU, softplus; not "
            "GELU or SiLU)."
        )
    elif report.chain_note:
        text += f" --mlp does not apply: {report.chain_note}."
    return text


def _product_statement(report: LipschitzReport) -> str:
    what = (
        "For any two inputs x, y, ‖f(x) − f(y)‖ ≤ L·‖x − y‖ (ℓ2): L bounds how much the "
        "network can stretch a change of its input"
    )
    if not report.valid_architecture:
        refused = "--assume sequential is refused: " if report.refused else ""
        return (
            f"{what}. Here the product is NOT a valid bound: {refused}"
            + "; ".join(report.caveats)
            + ". The per-layer numbers are still shown (diagnostic only); "
            + ONNX_HINT.replace("export it", "export the model")
            + "."
        )
    if report.partial:
        return (
            f"{what}. Here the product covers only the layers selected by --filter/--exclude "
            f"({len(report.unselected)} left out, e.g. {report.unselected[0]}), so it is NOT a "
            "bound on the model and not certified: a left-out layer can stretch its input "
            "by any factor."
        )
    fixes = []
    if any(f.source.startswith("reshaped") for f in report.factors):
        fixes.append("--conv operator")
    if any(f.source.startswith("circular") for f in report.factors):
        fixes.append("--padding zeros")
    if any(
        not f.certified and not f.source.startswith(("reshaped", "circular"))
        for f in report.factors
    ):
        fixes.append("--certified")
    chain = (
        f"{what}. The product holds if the network is a plain sequential chain of these "
        "layers in this order (no branches, heads, skips, pools or recurrence) with "
        "1-Lipschitz activations (ReLU, LeakyReLU, tanh…"
        + (
            "; the PReLU slopes are factors"
            if any(f.kind == "prelu" for f in report.factors)
            else ""
        )
        + ")"
    )
    if not report.assumed:
        factors = ""
        if not report.upper_bound:
            factors = (
                "; besides, not every factor is a proven upper bound (see the certified "
                "column), so it is an estimate (" + " and ".join(fixes) + " for proven factors)"
            )
        return (
            f"{chain}. A state dict does not record the architecture, so this L is "
            f"conditional, not certified{factors}: pass --assume sequential if the model is "
            "such a chain, or " + ONNX_HINT + "."
        )
    if report.certified and report.chain is not None:
        proof = "the bound over the chain (below) is proven, so this L is certified"
    elif report.certified:
        proof = "every factor is a proven upper bound, so this L is certified"
    elif report.upper_bound:
        proof = (
            "every factor is an upper bound under the assumptions below, but not every "
            "one is proven (see the certified column), so this L is not certified; use "
            + " and ".join(fixes)
            + " for a proof"
        )
    else:
        proof = (
            "not every factor is a proven upper bound (see the certified column), so "
            "this L is an estimate; use " + " and ".join(fixes) + " for a proof"
        )
    return f"{chain}, as asserted with --assume sequential; {proof}."


def graph_statement(report: GraphLipschitzReport) -> str:
    what = (
        "For any two inputs x, y, ‖f(x) − f(y)‖ ≤ L·‖x − y‖ (ℓ2, all graph inputs and all "
        "outputs together)"
    )
    if report.certified:
        return (
            f"{what}. L is certified: the bound follows the model's graph node by node and "
            "every node's factor is proven."
        )
    shown = "; ".join(
        f"node {n.name} ({n.op}): {n.why or 'not proven'}" for n in report.problems[:3]
    )
    more = f" and {len(report.problems) - 3} more" if len(report.problems) > 3 else ""
    if report.bound is None:
        return f"{what}. No bound: {shown}{more}."
    return (
        f"{what}. L is an upper bound but NOT certified: {shown}{more}. The vacuous factor "
        "is a valid bound, far above the true constant."
    )
