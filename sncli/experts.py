"""Mixture-of-experts stacks: 3-D tensors that hold E expert matrices, decided by name and shape.

An MoE model stores the experts of one feed-forward block as one tensor of shape (E, ·, ·); the
model applies expert e's matrix to the tokens routed to it, so each slice is a layer of its own
(named ``KEY[e]``), never a reshape of the whole stack. Layouts, and how each slice is oriented
as the model applies it, (out, in):

- GGUF ``blk.N.ffn_{gate,up,down,gate_up}_exps.weight`` (llama.cpp; Mixtral, Qwen-MoE, DeepSeek,
  gpt-oss…): ``ne = [in, out, E]``, read as (E, out, in); each slice as stored.
- Hugging Face fused experts (``mlp.experts.gate_up_proj``, ``down_proj``, ``up_proj``,
  ``gate_proj``, ``w1``/``w2``/``w3``: no ``.weight`` suffix) and JetMoE's
  ``input_linear``/``output_linear.weight``: most of transformers' MoE models apply
  ``F.linear(x, W[e])``, (E, out, in), each slice as stored; gpt-oss, Llama 4, Aria and Ergo
  apply ``x @ W[e]``, (E, in, out), each slice transposed. The shape decides which: the input of
  gate/up (w1, w3) and the output of down (w2) is the model's hidden width, read from
  ``config.json`` beside the file (``hidden_size``), else from the length of the 1-D norm
  scales; when the shape cannot tell (in = out), (E, out, in) is assumed and the note says so.

A 3-D tensor named as experts that fits no rule is skipped with its reason, never read as a
convolution. A stack whose expert count disagrees with the file's metadata (GGUF
``{arch}.expert_count``, ``config.json``'s ``num_local_experts``/``num_experts``/
``n_routed_experts``) is refused with one line saying what disagrees.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sncli.errors import CheckpointError
from sncli.formats.common import quote, strict_json_loads

#: GGUF expert stacks: ``blk.N.ffn_gate_exps.weight`` and the other ``*_exps`` weights.
GGUF_STACK = re.compile(r"(^|\.)[a-z0-9_]*_exps\.weight$")
#: Hugging Face fused expert parameters: ``...experts.gate_up_proj`` (no ``.weight``).
HF_STACK = re.compile(r"(^|\.)experts\.(gate_up_proj|gate_proj|up_proj|down_proj|w1|w2|w3)$")
#: JetMoE's ParallelExperts (``mlp.input_linear.weight``, (E, out, in)).
JETMOE_STACK = re.compile(r"(^|\.)(input_linear|output_linear)\.weight$")
#: A 3-D tensor whose name says experts: skipped with a reason when no rule reads it.
EXPERT_WORD = re.compile(r"(^|[._])(experts?|exps|moe)([._]|$)", re.IGNORECASE)
#: Parameters whose input is the model's hidden width (the rest output it).
_INPUT_SIDE = frozenset({"gate_up_proj", "gate_proj", "up_proj", "w1", "w3", "input_linear"})
#: config.json keys holding the number of routed experts, in the order tried.
COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
_MAX_CONFIG_BYTES = 4 << 20


@dataclass(frozen=True)
class ExpertSlice:
    """Expert ``index`` of the stack stored under ``stack``; ``transposed`` when the stack is
    stored (E, in, out), so the slice is transposed to the (out, in) the model applies."""

    stack: str
    index: int
    count: int
    transposed: bool


@dataclass(frozen=True)
class StackScan:
    """The expert stacks of a checkpoint: every expert's name → its slice, each stack's
    classification note, and the expert-named 3-D tensors not read as stacks (→ why)."""

    slices: dict[str, ExpertSlice] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def experts_of(self, stack: str) -> list[str]:
        """The expert names of one stack, in order."""
        return [expert_name(stack, e) for e in range(self.counts.get(stack, 0))]


def expert_name(stack: str, index: int) -> str:
    """The layer name of expert ``index`` of ``stack``: ``KEY[e]``."""
    return f"{stack}[{index}]"


def expert_shape(shape: tuple[int, ...], transposed: bool) -> tuple[int, int]:
    """The (out, in) shape of one expert of a stack of ``shape``."""
    return (shape[2], shape[1]) if transposed else (shape[1], shape[2])


def scan_stacks(
    path: Path,
    format: str,
    shapes: Mapping[str, tuple[int, ...]],
    metadata: Mapping[str, Any] | None = None,
) -> StackScan:
    """Find the expert stacks among ``shapes`` (names → shapes); see the module docstring.

    ``metadata`` is GGUF's key-value metadata; for safetensors and PyTorch files the
    ``config.json`` beside ``path`` is read when there is one. Raises ``CheckpointError`` when a
    stack's expert count disagrees with the metadata.
    """
    scan = StackScan()
    three_d = {name: shape for name, shape in shapes.items() if len(shape) == 3}
    if not three_d:
        return scan
    if format == "gguf":
        _scan_gguf(path, three_d, metadata or {}, scan)
    elif format in ("safetensors", "torch"):
        _scan_hf(path, shapes, three_d, scan)
    for name in three_d:
        if name not in scan.notes and name not in scan.refused and EXPERT_WORD.search(name):
            scan.refused[name] = (
                "3-D expert parameter: not a known expert-stack layout, so not read as a layer "
                "(and not a convolution)"
            )
    return scan


def _add(scan: StackScan, name: str, shape: tuple[int, ...], transposed: bool, note: str) -> None:
    scan.notes[name] = note
    scan.counts[name] = shape[0]
    for e in range(shape[0]):
        scan.slices[expert_name(name, e)] = ExpertSlice(name, e, shape[0], transposed)


def _scan_gguf(
    path: Path,
    three_d: Mapping[str, tuple[int, ...]],
    metadata: Mapping[str, Any],
    scan: StackScan,
) -> None:
    arch = metadata.get("general.architecture")
    key = f"{arch}.expert_count"
    count = metadata.get(key) if isinstance(arch, str) else None
    for name, shape in three_d.items():
        if not GGUF_STACK.search(name):
            continue
        if isinstance(count, int) and shape[0] != count:
            raise CheckpointError(
                f"expert stack {quote(name)} holds {shape[0]} experts (shape {shape}), but the "
                f"metadata says {key} = {count}",
                path,
            )
        _add(
            scan,
            name,
            shape,
            False,
            "expert stack: GGUF *_exps (E, out, in), each expert as stored",
        )


def _scan_hf(
    path: Path,
    shapes: Mapping[str, tuple[int, ...]],
    three_d: Mapping[str, tuple[int, ...]],
    scan: StackScan,
) -> None:
    stacks = {
        name: shape
        for name, shape in three_d.items()
        if HF_STACK.search(name) or JETMOE_STACK.search(name)
    }
    if not stacks:
        return
    config, config_path = _config(path)
    hidden = _config_int(config, ("hidden_size", "d_model", "n_embd"))
    count = _config_int(config, COUNT_KEYS)
    source = "config.json's hidden_size"
    if hidden is None:
        hidden, source = _norm_width(shapes), "the length of the 1-D norm scales"
    for name, shape in stacks.items():
        if count is not None and shape[0] != count:
            raise CheckpointError(
                f"expert stack {quote(name)} holds {shape[0]} experts (shape {shape}), but "
                f"{config_path.name} says {_count_key(config)} = {count}",
                path,
            )
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "weight":
            leaf = name.rsplit(".", 2)[-2]
        transposed, how = _orientation(leaf in _INPUT_SIDE, shape, hidden, source)
        _add(scan, name, shape, transposed, f"expert stack: fused experts {how}")


def _orientation(
    input_side: bool, shape: tuple[int, ...], hidden: int | None, source: str
) -> tuple[bool, str]:
    """(transposed, how it was decided) for a fused stack (E, a, b)."""
    _, a, b = shape
    if hidden is not None and a != b and hidden in (a, b):
        # F.linear layout (out, in): the input side reads hidden (b), down writes it (a).
        linear = (b == hidden) if input_side else (a == hidden)
        if linear:
            return (
                False,
                f"(E, out, in), each expert as stored (hidden width {hidden} from {source})",
            )
        return True, (
            f"stored (E, in, out) (x @ W[e], as gpt-oss and Llama 4), each expert transposed to "
            f"(out, in) (hidden width {hidden} from {source})"
        )
    return (
        False,
        "(E, out, in) assumed (F.linear, most transformers MoE models): the shape cannot tell",
    )


def _config(path: Path) -> tuple[dict[str, Any], Path]:
    """``config.json`` beside the checkpoint (a plain JSON object), or {} when there is none or it
    cannot be read: it only helps decide a layout, and the shapes decide without it."""
    folder = path if path.is_dir() else path.parent
    config_path = folder / "config.json"
    try:
        if not config_path.is_file() or config_path.stat().st_size > _MAX_CONFIG_BYTES:
            return {}, config_path
        value = strict_json_loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}, config_path
    return (value if isinstance(value, dict) else {}), config_path


def _config_int(config: Mapping[str, Any], keys: tuple[str, ...]) -> int | None:
    """The first of ``keys`` holding a positive int, at the top level or in ``text_config``."""
    for scope in (config, config.get("text_config")):
        if not isinstance(scope, dict):
            continue
        for key in keys:
            value = scope.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def _count_key(config: Mapping[str, Any]) -> str:
    for scope in (config, config.get("text_config")):
        if isinstance(scope, dict):
            for key in COUNT_KEYS:
                if isinstance(scope.get(key), int):
                    return key
    return "the expert count"


def _norm_width(shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    """The most common length of the 1-D ``*norm*.weight`` tensors: the model's hidden width."""
    widths = Counter(
        shape[0]
        for name, shape in shapes.items()
        if len(shape) == 1 and "norm" in name.lower() and name.endswith("weight")
    )
    return widths.most_common(1)[0][0] if widths else None


@dataclass(frozen=True)
class StackSummary:
    """One stack's experts in a report: how many were measured, and the largest of them."""

    stack: str
    experts: int
    largest_name: str
    largest_expert: int
    largest: float


def stack_summaries(layers: list[Any], value: str) -> list[StackSummary]:
    """The largest expert of each stack among ``layers`` (objects with ``stack``, ``expert``,
    ``name`` and the attribute ``value``), stacks in order of first appearance."""
    groups: dict[str, list[Any]] = {}
    for layer in layers:
        stack = getattr(layer, "stack", None)
        if stack is not None and getattr(layer, value) is not None:
            groups.setdefault(stack, []).append(layer)
    summaries = []
    for stack, members in groups.items():
        top = max(members, key=lambda layer: getattr(layer, value))
        summaries.append(
            StackSummary(stack, len(members), top.name, top.expert, getattr(top, value))
        )
    return summaries


def summaries_to_json(summaries: list[StackSummary], value: str) -> list[dict[str, Any]]:
    """``stack_summaries`` as JSON: ``{"stack", "experts", "largest": {name, expert, VALUE}}``."""
    return [
        {
            "stack": s.stack,
            "experts": s.experts,
            "largest": {"name": s.largest_name, "expert": s.largest_expert, value: s.largest},
        }
        for s in summaries
    ]
