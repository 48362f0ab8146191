"""The per-format writes of ``sncli normalize``: each file staged in the transaction
(``sncli.transaction``: temp file, fsync, journal, ``os.replace``), then re-opened and verified.

Replacement tensors are torch tensors (PyTorch files) or NumPy arrays (safetensors and GGUF,
normalized without torch: bfloat16 as :class:`sncli.arrays.BFloat16Array`); both are written as
their raw little-endian bytes, so the files are the same either way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sncli.checkpoint import Checkpoint, open_checkpoint
from sncli.dtypes import bits_per_element
from sncli.errors import CheckpointError, WriteError
from sncli.formats.common import copy_range
from sncli.formats.safetensors import write_edited_safetensors
from sncli.formats.sharded import write_index
from sncli.formats.torch_file import write_edited_torch
from sncli.messages import clean_text
from sncli.numerics.floating import DENSE_ROUNDING
from sncli.scaling import measure
from sncli.transaction import StagedFile, Transaction

if TYPE_CHECKING:
    from sncli.normalize import LayerOutcome, LayerPlan, NormalizePlan


@dataclass
class Edits:
    """What changes in the output: replaced tensors, renamed keys, dropped keys."""

    replaced: set[str]
    renames: dict[str, str]
    dropped: set[str]


class LazyTensors(Mapping[str, Any]):
    """The replacement tensors (or arrays) of one safetensors file, computed when the writer
    reaches them (one layer at a time: memory of one layer, not of the file), then forgotten.
    ``bake``: spectral-norm u, v are dropped, not rewritten."""

    def __init__(
        self,
        layers: list[LayerPlan],
        compute: Callable[[LayerPlan], dict[str, Any]],
        bake: bool,
    ) -> None:
        self._compute = compute
        self._owner: dict[str, LayerPlan] = {}
        for layer in layers:
            self._owner[layer.name] = layer
            if layer.spectral_norm is not None and not bake:
                for key in (layer.u_key, layer.v_key):
                    if key:
                        self._owner[key] = layer
        self._ready: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._ready:
            self._ready.update(self._compute(self._owner[name]))
        return self._ready.pop(name)

    def __contains__(self, name: object) -> bool:
        return name in self._owner

    def __iter__(self) -> Iterator[str]:
        return iter(self._owner)

    def __len__(self) -> int:
        return len(self._owner)


def write_safetensors(
    tx: Transaction,
    source: Path,
    target: Path,
    new: Mapping[str, Any],
    edits: Edits,
    provenance: str,
) -> StagedFile:
    """``source`` with tensors replaced, renamed or dropped, and a ``sncli`` metadata entry
    (``provenance``) where anything changed."""
    extra = {"sncli": provenance} if len(new) or edits.dropped else {}
    with tx.stage(target) as (handle, staged):
        write_edited_safetensors(
            source,
            handle,
            new,
            renames=edits.renames,
            dropped=edits.dropped,
            metadata=extra,
            same_layout=True,  # scaling keeps dtypes and shapes
        )
    return staged


def write_gguf(tx: Transaction, source: Path, target: Path, new: dict[str, Any]) -> StagedFile:
    """A byte-for-byte copy with the scaled tensors' data replaced (same types and offsets)."""
    from sncli.formats.gguf import gguf_write_refusal, write_edited_gguf

    why = gguf_write_refusal(source, list(new))
    if why is not None:
        raise CheckpointError(f"cannot write a normalized copy: {why}; nothing written", source)
    with tx.stage(target) as (handle, staged):
        write_edited_gguf(source, handle, new)
    return staged


def write_torch(
    tx: Transaction,
    checkpoint: Checkpoint,
    source: Path,
    target: Path,
    new: dict[str, Any],
    edits: Edits,
    warnings: list[str],
) -> StagedFile:
    container = checkpoint.container(source)
    key = checkpoint.wrapper_key
    if key is not None and any(
        k in container for k in ("optimizer_states", "optimizer", "optimizer_state_dict")
    ):
        warnings.append(
            f"{clean_text(os.fsdecode(target), 300)}: optimizer state was kept but no longer "
            "matches the rescaled weights"
        )
    with tx.stage(target) as (handle, staged):
        write_edited_torch(
            source,
            handle,
            container,
            new,
            key=key,
            aliases=checkpoint.aliases,
            renames=edits.renames,
            dropped=edits.dropped,
        )
    return staged


def copy_file(tx: Transaction, source: Path, target: Path) -> StagedFile:
    stage = tx.stage(target)
    with stage as (handle, staged), source.open("rb") as original:
        copy_range(original, 0, source.stat().st_size, handle)
    return staged


def write_index_file(
    tx: Transaction, checkpoint: Checkpoint, target: Path, edits: Edits, total: int
) -> StagedFile:
    """The index json with renamed/dropped keys and ``total_size`` recomputed."""
    assert checkpoint.index_path is not None
    with tx.stage(target) as (handle, staged):
        write_index(
            checkpoint.index_path,
            handle,
            renames=edits.renames,
            dropped=edits.dropped,
            total_size=total,
        )
    return staged


def data_bytes(checkpoint: Checkpoint, source: Path, dropped: set[str]) -> int:
    """Tensor bytes a written file holds (HF's ``total_size``): scaling keeps dtypes and shapes."""
    total_bits = 0
    for name, info in checkpoint.tensors.items():
        if info.file != source or name in dropped or name in checkpoint.aliases:
            continue
        total_bits += info.numel * bits_per_element(info.dtype)
    return total_bits // 8


def verify_file(
    checkpoint: Checkpoint,
    written: Path,
    source: Path,
    edits: Edits,
    outcomes: list[LayerOutcome],
    layer_plans: dict[str, LayerPlan],
    plan: NormalizePlan,
    arrays: bool = False,
) -> None:
    """Re-open a written file: same keys (after renames), shapes, dtypes; σ ≤ target (measured
    on NumPy with ``arrays``, as the file was written)."""
    expected = {
        edits.renames.get(name, name): (info.shape, info.dtype)
        for name, info in checkpoint.tensors.items()
        if info.file == source and name not in edits.dropped
    }
    with open_checkpoint(written, key=checkpoint.wrapper_key) as reopened:
        found = {name: (info.shape, info.dtype) for name, info in reopened.tensors.items()}
        if found != expected:
            missing = sorted(set(expected) - set(found))[:3]
            raise WriteError(f"verification failed: tensors differ from the input ({missing})")
        limit = plan.options.target * (1 + DENSE_ROUNDING)
        for outcome in outcomes:
            if (
                outcome.output_name not in found
                and outcome.output_name not in reopened.experts.slices
            ):
                continue
            layer = layer_plans[outcome.name]
            load = reopened.load_array if arrays else reopened.load
            running_var = load(layer.running_var) if layer.running_var else None
            sigma = measure(load(outcome.output_name), layer.reshape_dim, running_var)
            if not sigma <= limit:
                raise WriteError(
                    f"verification failed: {outcome.output_name} has σ {sigma} > {limit}"
                )
