"""Decide which tensors are layers, what kind, and which matrix stands for each.

A state dict records names and shapes, not modules, so classification is by name and shape.
Only the weight of a linear or conv module is a layer: the key's leaf is ``weight`` (or
``weight_orig``, a parametrization's ``original``, weight norm's composed weight, an RNN's
``weight_ih_l0``…, MultiheadAttention's ``in_proj_weight``), and the shape fits: 2-D is a linear
map, 3-5-D a convolution. Every other parameter (``cls_token``, ``pos_embed``, ``layer_scale``,
``gamma``, ``relative_position_bias_table``…) is skipped with its reason, whatever its shape.
A 2-D weight is an embedding when its module's name says so *and* nothing contradicts the role
(a projection word such as ``proj``/``out``, or a bias, which an embedding table has not); every
such decision is written on the layer (``Layer.note``). 1-D weights are norm scales (with
BatchNorm running statistics or a bias next to them, or a norm-like module name) or PReLU slopes.
Tensors saved by PyTorch's two spectral-norm APIs are grouped into one layer with their stored
power-iteration vectors; weight norm's g and v become one layer whose weight ``Checkpoint.load``
composes (W = g·v/‖v‖).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from sncli.checkpoint import Checkpoint, TensorInfo, natural_key
from sncli.dtypes import FLOAT_DTYPES, analysed_dtype
from sncli.errors import NoLayersMatchedError, NumericalError
from sncli.numerics.spectral import Method, as_matrix, largest_singular_value
from sncli.parametrizations import (
    SpectralNormInfo,
    WeightNormPair,
    parse_parametrized,
    spectral_norm_groups,
)

if TYPE_CHECKING:
    import torch


class LayerKind(str, Enum):
    LINEAR = "linear"
    CONV1D = "conv1d"
    CONV2D = "conv2d"
    CONV3D = "conv3d"
    EMBEDDING = "embedding"
    LORA = "lora"  # a LoRA adapter's update s·B·A (sncli.adapters), never a stored weight

    @property
    def is_conv(self) -> bool:
        return self in (LayerKind.CONV1D, LayerKind.CONV2D, LayerKind.CONV3D)


#: BatchNorm's ε (PyTorch's default): in eval mode the layer is x ↦ γ(x − μ)/√(var + ε) + β.
BATCHNORM_EPS = 1e-5

#: Leaves naming the weight of a linear/conv/embedding module (``weight``), of an RNN
#: (``weight_ih_l0``, ``weight_hh_l1_reverse``, ``weight_hr_l0``) or of MultiheadAttention;
#: a bare matrix saved by hand or converted from JAX/TF (``w``, ``W1``, ``kernel``) too.
WEIGHT_LEAF = re.compile(
    r"weight|weight_(ih|hh|hr)(_l\d+(_reverse)?)?|(in|q|k|v)_proj_weight|[wW]\d*|kernel"
)
#: The weights of a recurrent layer: nn.LSTM/GRU/RNN's ``weight_ih_l0``, ``weight_hh_l1_reverse``,
#: ``weight_hr_l0`` (an LSTM's projection) and a cell's ``weight_ih``/``weight_hh`` (LSTMCell…).
#: One rule for all of them: each is a linear layer whose note says what its rows stack.
RECURRENT_LEAF = re.compile(r"weight_(ih|hh|hr)((?:_l\d+)?(?:_reverse)?)")
#: Gates stacked in the rows of ``weight_ih``/``weight_hh``, by count.
GATE_CELLS = {4: "LSTM", 3: "GRU", 1: "RNN"}
#: Leaves that are matrices only: RNN and attention weights are never convolutions, and a
#: bare ``w``/``kernel`` of more dimensions has no known layout (TF kernels are HWIO).
_MATRIX_ONLY_LEAF = re.compile(r"weight_.+|.+_proj_weight|[wW]\d*|kernel")
#: Module names that are embedding tables in the common model families.
EMBEDDING_MODULES = frozenset(
    {
        "wte",  # GPT-2 token embedding
        "wpe",  # GPT-2 position embedding
        "shared",  # T5/BART shared token embedding
        "embed_tokens",
        "embed_in",  # GPT-NeoX input embedding (its output head is embed_out, a linear map)
        "embed_positions",
        "tok_embeddings",
        "word_embeddings",
        "position_embeddings",
        "token_type_embeddings",
        "relative_attention_bias",  # T5: an nn.Embedding indexed by relative-position bucket
        "token_embd",  # llama.cpp (GGUF) names: token, position and token-type embeddings
        "position_embd",
        "token_types",
    }
)
#: Words (``_``-separated) of a module name that mark an embedding table.
_EMBEDDING_WORDS = frozenset({"embed", "emb", "embedding", "embeddings", "embedder", "embeds"})
#: A module name ending in one of these words is a projection, whatever else it says.
_PROJECTION_WORDS = frozenset(
    {"proj", "projection", "out", "head", "linear", "fc", "dense", "mlp", "lin", "mapping"}
)
#: Names that once made a weight an embedding by accident (listed when the decision is linear).
#: (A part of the module path with one of these ``_``-separated words.)
_EMBEDDING_HINT = re.compile(r"(^|_)(emb\w*|shared|wte|wpe)(_|$)", re.IGNORECASE)
#: Module names of normalisation layers (the module itself, not a parent).
NORM_MODULE = re.compile(r"norm|^(ln|bn|gn)(_?\w+|\d*)$|^(ln|bn|gn)$", re.IGNORECASE)
_PRELU_MODULE = re.compile(r"prelu", re.IGNORECASE)
_ACTIVATION_MODULE = re.compile(r"^(act|activation|relu|nonlin)\w*$", re.IGNORECASE)


@dataclass(frozen=True)
class Layer:
    """One weight to analyse.

    ``name`` is the key of the raw weight in the file, except for weight-norm layers
    (``weight_norm`` set): there it names the weight ``Checkpoint.load`` composes from the
    stored g and v (``conv.weight`` or ``conv.parametrizations.weight``). Either way
    ``checkpoint.load(layer.name)`` gives the weight. ``reshape_dim`` is the dimension moved to
    the front before flattening to a matrix (0 normally, 1 for transposed convolutions), which is
    what ``torch.nn.utils.spectral_norm`` does. ``reshape_note`` says how a convolution's reshape
    was decided when that is not certain (no spectral-norm vectors to tell, or vectors that did
    not tell).
    """

    name: str
    short_name: str
    kind: LayerKind
    shape: tuple[int, ...]
    dtype: str
    reshape_dim: int = 0
    spectral_norm: SpectralNormInfo | None = None
    transposed: bool = False
    weight_norm: WeightNormPair | None = None
    reshape_note: str | None = None
    #: Why the name was read the way it was, when a name decided (embeddings); else "".
    note: str = ""
    #: For one expert of a mixture-of-experts stack (``sncli.experts``): its index, and the key
    #: of the stored 3-D stack (``name`` is ``stack[expert]``, ``shape`` the expert's (out, in)).
    expert: int | None = None
    stack: str | None = None
    #: Gates stacked in the rows of a recurrent weight (4: LSTM, 3: GRU, 0: not known); 1 for
    #: every other layer. σ of a stack is that of the stacked matrix, not of one gate.
    gates: int = 1

    @property
    def matrix_shape(self) -> tuple[int, int]:
        rows = self.shape[self.reshape_dim]
        total = 1
        for d in self.shape:
            total *= d
        return rows, (total // rows if rows else 0)

    @property
    def matrix_description(self) -> str:
        """How the weight became a matrix, so a reshape norm is never taken for an operator norm."""
        if self.expert is not None:
            return f"expert {self.expert} of its stack, (out, in)"
        if not self.kind.is_conv:
            return "weight"
        if self.reshape_dim == 1:
            # ConvTranspose stores (in, out/groups, k…); spectral_norm(dim=1) moves dim 1 first.
            return "reshape(out, in*k) [transposed conv: dim 1 first]"
        return "reshape(out, in*k)"


@dataclass(frozen=True)
class Skipped:
    """A tensor not analysed, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class Classification:
    layers: list[Layer]
    skipped: list[Skipped]


@dataclass(frozen=True)
class _Naming:
    """What a key says about the module it belongs to."""

    prefix: str  # the module's prefix with its trailing dot ("layer1.0.conv1."), or ""
    module: str  # the module's own name ("conv1"), or "" at the top level
    leaf: str  # the parameter's name ("weight", "cls_token", "running_var")


def _naming(name: str, sn_raw: bool) -> _Naming:
    """Split a key (or a composed weight-norm name) into module prefix, module and parameter.

    ``conv.weight_orig`` (legacy spectral norm), ``conv.parametrizations.weight.original`` and the
    composed ``conv.parametrizations.weight`` all name the parameter ``weight`` of ``conv``.
    """
    parsed = parse_parametrized(name)
    if parsed is not None and parsed.is_original:
        prefix, leaf = parsed.owner, parsed.param
    elif name.rsplit(".", 2)[-2:-1] == ["parametrizations"]:
        owner, _, leaf = name.rpartition(".")
        prefix = owner[: -len("parametrizations")]
    else:
        owner, _, leaf = name.rpartition(".")
        prefix = f"{owner}." if owner else ""
        if leaf.endswith("_orig") and (sn_raw or leaf == "weight_orig"):
            leaf = leaf[: -len("_orig")]
    module = prefix[:-1].rpartition(".")[2] if prefix else ""
    return _Naming(prefix, module, leaf)


def batchnorm_running_var(key: str, names: Collection[str]) -> str | None:
    """The ``running_var`` key next to a 1-D BatchNorm ``weight`` key, if the file has one."""
    prefix, _, leaf = key.rpartition(".")
    var = f"{prefix}.running_var" if prefix else "running_var"
    return var if leaf == "weight" and var in names else None


def _embedding_decision(naming: _Naming, names: set[str]) -> tuple[bool, str]:
    """(is an embedding, why) for a 2-D weight, from its module's name and role."""
    module = naming.module
    words = module.lower().split("_")
    named = module.lower() in EMBEDDING_MODULES or any(w in _EMBEDDING_WORDS for w in words)
    if named and module.lower() not in EMBEDDING_MODULES and words[-1] in _PROJECTION_WORDS:
        return False, (f"linear, not an embedding: '{module}' ends in '{words[-1]}', a projection")
    if named and f"{naming.prefix}bias" in names:
        return False, (
            f"linear, not an embedding: '{module}' has a bias, which an embedding table has not"
        )
    if named:
        return True, f"embedding: '{module}' names an embedding table, and it has no bias"
    part = next((p for p in naming.prefix.split(".") if _EMBEDDING_HINT.search(p)), None)
    if part is not None:
        return False, (
            f"linear, not an embedding: '{part}' is in the name, but its module "
            f"'{module or naming.leaf}' is not an embedding table"
        )
    return False, ""


def _one_d_weight_reason(naming: _Naming, shape: tuple[int, ...], names: set[str]) -> str:
    """A 1-D ``weight``: a norm scale or a PReLU slope, decided by its companions and names."""
    stats = any(f"{naming.prefix}{s}" in names for s in ("running_var", "running_mean"))
    if stats:
        return "norm scale (1-D)"  # BatchNorm: the running statistics are next to it
    if _PRELU_MODULE.search(naming.module):
        return "PReLU slope"
    if NORM_MODULE.search(naming.module) or f"{naming.prefix}bias" in names:
        return "norm scale (1-D)"  # LayerNorm/GroupNorm (weight and bias) or a named norm
    if _ACTIVATION_MODULE.match(naming.module) or shape == (1,):
        return "PReLU slope"
    return "1-D weight, not a norm (no bias, no running statistics, no norm-like name)"


def _kind_for(info: TensorInfo, naming: _Naming, names: set[str]) -> tuple[LayerKind | None, str]:
    """(kind, note): a kind when the tensor is a layer weight of a fitting shape, else None."""
    if WEIGHT_LEAF.fullmatch(naming.leaf) is None:
        return None, ""
    ndim = len(info.shape)
    if ndim == 2:
        is_embedding, note = _embedding_decision(naming, names)
        return (LayerKind.EMBEDDING if is_embedding else LayerKind.LINEAR), note
    if ndim in (3, 4, 5) and not _MATRIX_ONLY_LEAF.fullmatch(naming.leaf):
        return (LayerKind.CONV1D, LayerKind.CONV2D, LayerKind.CONV3D)[ndim - 3], ""
    return None, ""


def _recurrent(
    naming: _Naming, info: TensorInfo, tensors: Mapping[str, TensorInfo]
) -> tuple[int, str]:
    """(gates, note) of a recurrent weight (``RECURRENT_LEAF``); (1, "") for any other.

    ``weight_hh`` is (G·H, H) and ``weight_ih`` (G·H, in), with ``weight_hr`` (P, H) when an
    LSTM projects (then ``weight_hh`` is (4H, P)): H is read from ``weight_hr`` or
    ``weight_hh``, G = rows / H.
    """
    match = RECURRENT_LEAF.fullmatch(naming.leaf)
    if match is None or len(info.shape) != 2:
        return 1, ""
    which, suffix = match.groups()
    if which == "hr":
        return 1, "recurrent: an LSTM's output projection (weight_hr), one matrix"
    hr, hh = (
        tensors.get(key) or tensors.get(f"{key}_orig")  # legacy spectral norm's raw weight
        for key in (f"{naming.prefix}weight_{w}{suffix}" for w in ("hr", "hh"))
    )
    hidden = hr.shape[1] if hr is not None and len(hr.shape) == 2 else None
    if hidden is None and hh is not None and len(hh.shape) == 2:
        hidden = hh.shape[1]
    rows = info.shape[0]
    gates = rows // hidden if hidden and rows % hidden == 0 else 0
    if gates == 1:
        return 1, "recurrent: a plain RNN's weight, one matrix (no gates)"
    if gates in GATE_CELLS:
        cell = f"{'an' if gates == 4 else 'a'} {GATE_CELLS[gates]}"
        return gates, (
            f"recurrent: the {gates} gates of {cell} stacked ({gates}×{hidden} rows); "
            "σ is the stack's, not one gate's"
        )
    return 0, (
        f"recurrent: {rows} rows of stacked gates, the gate count not known (no weight_hh "
        "to read the hidden size from); σ is the stack's"
    )


def _kind_for_role(role: str | None, shape: tuple[int, ...]) -> LayerKind | None:
    """The kind of a weight whose use the file's graph records (ONNX), when its shape fits."""
    ndim = len(shape)
    if role in ("Conv", "ConvTranspose") and ndim in (3, 4, 5):
        return (LayerKind.CONV1D, LayerKind.CONV2D, LayerKind.CONV3D)[ndim - 3]
    if role in ("Gemm", "MatMul") and ndim == 2:
        return LayerKind.LINEAR
    return None


def _skip_reason(info: TensorInfo, naming: _Naming, names: set[str]) -> str:
    ndim = len(info.shape)
    leaf = naming.leaf
    if ndim == 0:
        return "scalar"
    if leaf in ("running_mean", "running_var"):
        return "batch-norm statistic"
    if ndim == 1 and (leaf == "bias" or leaf.endswith("_bias") or leaf.startswith("bias_")):
        return "bias"
    if WEIGHT_LEAF.fullmatch(leaf) is None:
        if ndim == 1 and leaf in ("gamma", "g") and NORM_MODULE.search(naming.module):
            return "norm scale (1-D)"
        if ndim == 1 and leaf == "beta" and NORM_MODULE.search(naming.module):
            return "bias"
        return f"parameter, not a layer weight ({leaf})"
    if ndim == 1:
        return _one_d_weight_reason(naming, info.shape, names)
    return f"{ndim}-D weight: no linear or conv layer has this shape"


def _companion_roles(
    checkpoint: Checkpoint,
    sn: dict[str, SpectralNormInfo],
    weight_norms: dict[str, WeightNormPair],
) -> dict[str, str]:
    """Tensors that belong to another layer (spectral-norm vectors, weight-norm g, adapter
    factors), each with the reason it is skipped."""
    roles: dict[str, str] = {}
    for owner, group in sn.items():
        roles[group.u_key] = f"spectral-norm power-iteration vector u of {owner}"
        if group.v_key:
            roles[group.v_key] = f"spectral-norm power-iteration vector v of {owner}"
        if group.effective_key:
            roles[group.effective_key] = f"spectral-norm stored normalized weight of {owner}"
    if checkpoint.adapter is not None:  # factors are measured as updates (sncli.adapters)
        roles.update(checkpoint.adapter.roles)
    for composed, pair in weight_norms.items():
        roles[pair.g_key] = f"weight-norm magnitude g (of {composed})"
    return roles


def classify(
    checkpoint: Checkpoint,
    *,
    transposed: Iterable[str] = (),
) -> Classification:
    """Sort a checkpoint's tensors into layers to analyse and skipped tensors with reasons.

    ``transposed`` holds regexes naming ConvTranspose weights: their matrix is formed along dim 1,
    as PyTorch's spectral_norm does; shapes alone cannot tell them from ordinary convolutions
    (such layers carry a ``reshape_note`` saying so). Where the file's graph names the op that
    uses a tensor as its weight (``Checkpoint.roles``, ONNX), that decides, not the name: a
    Conv/ConvTranspose weight of 3–5 dims is a conv (ConvTranspose reshaped along dim 1), a
    2-D Gemm/MatMul weight linear. In spectral-norm checkpoints the stored
    u, v settle the question (see ``_sn_reshape``); only when in == out channels does that read
    the weight and the vectors (one layer at a time).
    """
    patterns = [re.compile(p) for p in transposed]
    names = set(checkpoint.tensors)
    weight_norms = {
        composed: pair
        for composed, pair in checkpoint.derived.items()
        if pair.g_key in names and pair.v_key in names
    }
    sn = spectral_norm_groups(names, set(weight_norms))
    roles = _companion_roles(checkpoint, sn, weight_norms)
    by_v = {pair.v_key: composed for composed, pair in weight_norms.items()}
    layers: list[Layer] = []
    skipped: list[Skipped] = []
    for key, info in checkpoint.tensors.items():
        if key in checkpoint.aliases:
            skipped.append(Skipped(key, f"shares storage with {checkpoint.aliases[key]}"))
            continue
        if key in roles:
            skipped.append(Skipped(key, roles[key]))
            continue
        if key in checkpoint.unsupported:
            skipped.append(Skipped(key, checkpoint.unsupported[key]))
            continue
        reason = _dtype_problem(info.dtype)
        if reason is not None:
            skipped.append(Skipped(key, reason))
            continue
        if key in checkpoint.experts.notes or key in checkpoint.experts.refused:
            _add_stack(checkpoint, key, info, layers, skipped)
            continue
        name = by_v.get(key, key)
        if name != key and checkpoint.tensors[weight_norms[name].g_key].dtype not in FLOAT_DTYPES:
            skipped.append(Skipped(key, "weight-norm g is not a float tensor"))
            continue
        short = checkpoint.short_name(name)
        naming = _naming(name, name in sn)
        role = checkpoint.roles.get(name)
        graph_kind = _kind_for_role(role, info.shape)
        kind, note = (graph_kind, "") if graph_kind else _kind_for(info, naming, names)
        gates = 1
        if kind is LayerKind.LINEAR and graph_kind is None:
            gates, recurrent_note = _recurrent(naming, info, checkpoint.tensors)
            note = recurrent_note or note
        if kind is None:
            skipped.append(Skipped(key, _skip_reason(info, naming, names)))
            continue
        if info.numel == 0:
            skipped.append(Skipped(key, "empty tensor"))
            continue
        is_transposed = kind.is_conv and any(p.search(name) for p in patterns)
        if graph_kind is not None:  # the graph says Conv or ConvTranspose
            is_transposed = role == "ConvTranspose"
        group = sn.get(name)
        reshape_note = None
        if kind.is_conv and group is not None:
            dim, reshape_note = _sn_reshape(checkpoint, name, info.shape, group, int(is_transposed))
            is_transposed = dim == 1
        elif (
            kind.is_conv
            and not is_transposed
            and graph_kind is None
            and not checkpoint.conv_layout_known
        ):
            reshape_note = UNTOLD_RESHAPE
        layers.append(
            Layer(
                name=name,
                short_name=short,
                kind=kind,
                shape=info.shape,
                dtype=info.dtype,
                reshape_dim=1 if is_transposed else 0,
                spectral_norm=group,
                transposed=is_transposed,
                weight_norm=weight_norms.get(name),
                reshape_note=reshape_note,
                note=note,
                gates=gates,
            )
        )
    for key in checkpoint.non_tensor_keys:
        skipped.append(Skipped(key, "not a tensor"))
    skipped.sort(key=lambda s: natural_key(s.name))
    return Classification(layers=layers, skipped=skipped)


def _add_stack(
    checkpoint: Checkpoint, key: str, info: TensorInfo, layers: list[Layer], skipped: list[Skipped]
) -> None:
    """One linear layer per expert of a stack, named ``KEY[e]`` (see ``sncli.experts``), or the
    stack skipped with its reason (an expert-named 3-D tensor of no known layout; empty)."""
    from sncli.experts import expert_shape

    if key in checkpoint.experts.refused or not info.numel:
        skipped.append(Skipped(key, checkpoint.experts.refused.get(key, "empty tensor")))
        return
    names = checkpoint.experts.experts_of(key)
    transposed = checkpoint.experts.slices[names[0]].transposed
    layers += [
        Layer(
            name=name,
            short_name=checkpoint.short_name(name),
            kind=LayerKind.LINEAR,
            shape=expert_shape(info.shape, transposed),
            dtype=info.dtype,
            note=checkpoint.experts.notes[key],
            expert=index,
            stack=key,
        )
        for index, name in enumerate(names)
    ]


#: A convolution without spectral-norm vectors: Conv (out, in, k…) and ConvTranspose
#: (in, out, k…) weights look alike.
UNTOLD_RESHAPE = (
    "Conv or ConvTranspose cannot be told from the shape: reshaped as a Conv (dim 0 first); "
    "name ConvTranspose weights with --transposed"
)
#: PyTorch's σ̂ = uᵀWv is at least this fraction of σ for the reshape its power iteration ran on
#: (measured ≥ 0.95 after one training step, ≤ 0.83 for the other reshape down to 2 channels).
SN_ESTIMATE_AGREEMENT = 0.9


def _sn_reshape(
    checkpoint: Checkpoint,
    name: str,
    shape: tuple[int, ...],
    group: SpectralNormInfo,
    flagged: int,
) -> tuple[int, str | None]:
    """(reshape dim, note) of a spectral-norm convolution, read from its stored u and v.

    PyTorch's u has one entry per row of the matrix it normalizes (``shape[0]`` for Conv,
    ``shape[1]`` for ConvTranspose), v one per column. When only one reshape fits, that is it.
    When both fit (in == out channels), the weight and vectors are read: the right reshape is
    the one where σ̂ = uᵀWv is close to σ (≥ ``SN_ESTIMATE_AGREEMENT``·σ), since PyTorch's
    power iteration converged there. Otherwise ``flagged`` (1 when ``--transposed`` names the
    layer) decides, and the note says the reshape is a guess. Vectors that decide override
    ``flagged`` (with a note when they contradict it).
    """
    numel = math.prod(shape)
    u_len = checkpoint.tensors[group.u_key].numel
    v_len = checkpoint.tensors[group.v_key].numel if group.v_key else None
    fits = [shape[d] == u_len and (v_len is None or u_len * v_len == numel) for d in (0, 1)]
    how = "as --transposed says" if flagged else "as a Conv"
    if fits[0] != fits[1]:
        dim = 0 if fits[0] else 1
        if flagged and dim == 0:
            return dim, (
                "the stored spectral-norm u, v fit only a Conv's reshape (dim 0 first); "
                "--transposed does not apply"
            )
        return dim, None
    if not fits[0]:
        return flagged, f"the stored u, v fit neither reshape: reshaped along dim {flagged} {how}"
    if group.v_key is None:
        return flagged, (
            "in == out channels and no stored v vector: Conv or ConvTranspose cannot be told; "
            f"reshaped along dim {flagged} {how}"
        )
    ratios = _sn_agreement(checkpoint, name, group)
    if ratios is not None:
        best = max((0, 1), key=lambda d: ratios[d])
        if ratios[best] >= SN_ESTIMATE_AGREEMENT > ratios[1 - best]:
            if flagged and best == 0:
                return best, (
                    "the stored spectral-norm u, v match a Conv's reshape (dim 0 first: "
                    f"uᵀWv/σ = {ratios[0]:.3g}, against {ratios[1]:.3g} along dim 1); "
                    "--transposed does not apply"
                )
            return best, None
        shown = f"uᵀWv/σ = {ratios[0]:.3g} along dim 0, {ratios[1]:.3g} along dim 1"
    else:
        shown = "the weight or vectors are not finite"
    return flagged, (
        f"in == out channels and the stored u, v do not tell Conv from ConvTranspose ({shown}): "
        f"reshaped along dim {flagged} {how}"
    )


def _sn_agreement(
    checkpoint: Checkpoint, name: str, group: SpectralNormInfo
) -> tuple[float, float] | None:
    """uᵀWv/σ(W) for the dim-0 and dim-1 reshapes (float64); None when not finite. On NumPy
    where the checkpoint is read without torch (``Checkpoint.numpy_native``)."""
    assert group.v_key is not None
    if checkpoint.numpy_native:
        import numpy as np

        from sncli.arrays import to_float64

        def load(key: str) -> Any:
            return to_float64(checkpoint.load_array(key))

        def finite(value: Any) -> bool:
            return bool(np.isfinite(value).all())
    else:
        import torch

        def load(key: str) -> Any:
            return checkpoint.load(key).to(torch.float64)

        def finite(value: Any) -> bool:
            return bool(torch.isfinite(value).all())

    weight = load(name)
    u = load(group.u_key).reshape(-1)
    v = load(group.v_key).reshape(-1)
    if not all(finite(t) for t in (weight, u, v)):
        return None
    ratios = []
    for dim in (0, 1):
        matrix = as_matrix(weight, dim)
        sigma = largest_singular_value(matrix, Method.AUTO, tol=1e-3, start=v).sigma
        ratios.append(float(u @ (matrix @ v)) / sigma if sigma > 0 else 0.0)
    return ratios[0], ratios[1]


def _dtype_problem(dtype: str) -> str | None:
    if dtype.startswith(("int", "uint", "bool")):
        return f"integer/bool tensor ({dtype})"
    if dtype.startswith("complex"):
        return f"complex tensor ({dtype}) not supported"
    if analysed_dtype(dtype) not in FLOAT_DTYPES:
        return f"dtype {dtype} not supported"
    return None


def matches(
    name: str,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    short_name: str | None = None,
) -> bool:
    """True when the key or its displayed ``short_name`` (``module.`` prefix omitted) matches any
    ``include`` regex (or there are none), and neither matches an ``exclude`` regex."""
    names = (name,) if short_name is None or short_name == name else (name, short_name)

    def found(pattern: str) -> bool:
        return any(re.search(pattern, n) for n in names)

    return (not include or any(found(p) for p in include)) and not any(found(p) for p in exclude)


def select(
    layers: list[Layer], include: Iterable[str] = (), exclude: Iterable[str] = ()
) -> list[Layer]:
    """Keep layers whose key or short name matches any ``include`` regex (all if none) and
    neither matches an ``exclude`` regex."""
    include, exclude = _patterns(include), _patterns(exclude)
    return [layer for layer in layers if matches(layer.name, include, exclude, layer.short_name)]


def _patterns(patterns: Iterable[str]) -> tuple[str, ...]:
    """One regex given as a string is one pattern, not one per character."""
    return (patterns,) if isinstance(patterns, str) else tuple(patterns)


def select_or_refuse(
    checkpoint: Checkpoint,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    transposed: Iterable[str] = (),
    kinds: Iterable[LayerKind] | None = None,
) -> tuple[list[Layer], Classification]:
    """Classify, then keep the layers the filters (and ``kinds``) select; with none left, raise
    ``NoLayersMatchedError`` saying whether the filters or the file's contents are why."""
    classification = classify(checkpoint, transposed=transposed)
    selected = select(classification.layers, include, exclude)
    if kinds is not None:
        wanted = {LayerKind(kind) for kind in ([kinds] if isinstance(kinds, str) else kinds)}
        selected = [layer for layer in selected if layer.kind in wanted]
    if not selected:
        found, others = len(classification.layers), len(classification.skipped)
        reason = (
            f"none of its {found} layers matched the filters"
            if found
            else "it holds no weight matrices"
            + (f" (only {others} other tensor{'s' if others != 1 else ''})" if others else "")
        )
        raise NoLayersMatchedError(f"nothing to analyse: {reason}", checkpoint.path)
    return selected, classification


def refuse_if_none_measured(measured: int, failed: list[Skipped], path: object) -> None:
    """With selected layers but none measured (all NaN/Inf), raise ``NumericalError``: "0 layers
    analysed" is not a result a CI gate should pass."""
    if measured:
        return
    count = len(failed)
    shown = ", ".join(f"{s.name} ({s.reason})" for s in failed[:2])
    more = f" and {count - 2} more" if count > 2 else ""
    raise NumericalError(
        f"no layer could be measured: all {count} selected layer{'s' if count != 1 else ''} "
        f"failed: {shown}{more}",
        path,
    )


def effective_weight(checkpoint: Checkpoint, layer: Layer) -> tuple[torch.Tensor, float | None]:
    """The weight a model really uses, and PyTorch's σ̂ = uᵀWv when spectral norm divides by it.

    Spectral-norm layers give W/σ̂ in float64 (legacy version-0 files: the stored normalized
    weight, σ̂ unknown); other layers give their weight as stored. Raises ``NumericalError`` when
    σ̂ is zero or not finite, where PyTorch itself would produce NaN.
    """
    import torch

    weight = checkpoint.load(layer.name)
    info = layer.spectral_norm
    if info is None:
        return weight, None
    if info.v_key is None:
        if info.effective_key is None:
            raise NumericalError("spectral-norm layer without a stored v vector")
        return checkpoint.load(info.effective_key), None
    matrix = as_matrix(weight, layer.reshape_dim).to(torch.float64)
    u = checkpoint.load(info.u_key).to(torch.float64).reshape(-1)
    v = checkpoint.load(info.v_key).to(torch.float64).reshape(-1)
    estimate = float(torch.dot(u, matrix @ v))
    if not math.isfinite(estimate) or estimate == 0.0:
        raise NumericalError(f"stored σ̂ = uᵀWv is {estimate}: the model's weight would be NaN")
    return weight.to(torch.float64) / estimate, estimate
