"""Per-layer metrics as allocation inputs: grouped per transformer block or per module type
(``--group``), and exported as one number per matrix (``--export``) for pruning and
learning-rate scripts.

* A layer's **block** is the prefix of its name up to the first block index: ``layers.N``,
  ``layer.N``, ``h.N``, ``blocks.N`` or ``block.N`` (``model.layers.3``, ``transformer.h.3``,
  ``encoder.layer.3``, ``decoder.block.3``: encoder and decoder stacks stay apart). Its **module
  type** is the rest of the name without ``.weight`` (``self_attn.q_proj``, ``mlp.fc1``,
  ``attention.output.dense``): the path inside the block rather than its last component, which
  BERT's ``attention.output.dense``, ``intermediate.dense`` and ``output.dense`` share. A layer
  outside any block (embeddings, ``lm_head``) is a group of its own under both.
* A group's value of a metric is the **mean** over its layers where the metric is defined, as
  AlphaPruning's ``ww_sparsity`` (``lib/prune.py``, ``mapping_type='block_wise'``:
  ``np.mean(metrics[i:i+layer_num_in_block])``) averages per block.
* The export holds one value per matrix in model (natural key) order, NaN/null where undefined;
  with a grouping, each matrix carries its group's mean (AlphaPruning's block-wise mapping
  broadcasts the block mean back to the block's matrices). ``.npy``: a float64 vector (or, for a
  run, steps × matrices), what ``np.load`` in AlphaPruning's ``ww_sparsity`` reads; ``.json``:
  the values with the layer names (and groups, steps). Written atomically.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from sncli.errors import WriteError

__all__ = [
    "EXPORT_SUFFIXES",
    "Group",
    "GroupBy",
    "block_of",
    "check_export_target",
    "group_key",
    "group_means",
    "module_of",
    "write_export",
]

#: The block index in a name: the first ``layers.N``/``layer.N``/``h.N``/``blocks.N``/``block.N``.
BLOCK_PATTERN = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?=\.|$)")
#: What ``--export`` writes, by suffix.
EXPORT_SUFFIXES = (".json", ".npy")


class GroupBy(str, Enum):
    BLOCK = "block"
    MODULE = "module"


def _stem(name: str) -> str:
    return name[: -len(".weight")] if name.endswith(".weight") else name


def block_of(name: str) -> tuple[str, int] | None:
    """The block prefix (``model.layers.3``) and index (3) of a tensor name, None outside one."""
    found = BLOCK_PATTERN.search(name)
    if found is None:
        return None
    return name[: found.end()].lstrip("."), int(found.group(1))


def module_of(name: str) -> str:
    """The module type: the name after its block prefix, without ``.weight``; the whole stem
    for a layer outside any block."""
    stem = _stem(name)
    block = block_of(name)
    if block is None:
        return stem
    rest = stem[len(block[0]) :].lstrip(".")
    return rest or stem


def group_key(name: str, by: GroupBy | str) -> str:
    """The group a tensor name falls in under ``by``."""
    if GroupBy(by) is GroupBy.MODULE:
        return module_of(name)
    block = block_of(name)
    return _stem(name) if block is None else block[0]


@dataclass(frozen=True)
class Group:
    """One group: its key, its layers (model order) and per metric the mean over the layers
    where the metric is defined (None where it is defined on none); ``defined`` counts those."""

    key: str
    layers: tuple[str, ...]
    means: dict[str, float | None] = field(default_factory=dict)
    defined: dict[str, int] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.layers)


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def group_means(
    rows: Sequence[tuple[str, dict[str, Any]]], by: GroupBy | str, metrics: Sequence[str]
) -> list[Group]:
    """Group ``(name, {metric: value})`` rows (in model order) and average each metric.

    Groups come in the order of their first layer; means skip None and non-finite values.
    """
    order: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for name, values in rows:
        order.setdefault(group_key(name, by), []).append((name, values))
    groups = []
    for key, members in order.items():
        means: dict[str, float | None] = {}
        defined: dict[str, int] = {}
        for metric in metrics:
            present = [v for _, row in members if (v := _number(row.get(metric))) is not None]
            means[metric] = math.fsum(present) / len(present) if present else None
            defined[metric] = len(present)
        groups.append(Group(key, tuple(name for name, _ in members), means, defined))
    return groups


def check_export_target(path: str | Path) -> Path:
    """Refuse an ``--export`` target before any work: an unknown suffix (ValueError), a folder or
    a missing parent folder (WriteError)."""
    target = Path(path)
    if target.suffix.lower() not in EXPORT_SUFFIXES:
        raise ValueError(
            f"{target}: unknown export format {target.suffix or '(no suffix)'!r}; "
            "use FILE.json or FILE.npy"
        )
    if target.is_dir():
        raise WriteError("is a folder, not a file to export to", target)
    if not target.resolve().parent.is_dir():
        raise WriteError("output folder does not exist", target.parent)
    return target


def export_values(
    rows: Sequence[tuple[str, dict[str, Any]]], metric: str, by: GroupBy | str | None = None
) -> tuple[list[str], list[float | None], list[str] | None]:
    """Names, one value per matrix (its group's mean with ``by``) and the groups (or None)."""
    names = [name for name, _ in rows]
    if by is None:
        return names, [_number(row.get(metric)) for _, row in rows], None
    means = {g.key: g.means[metric] for g in group_means(rows, by, [metric])}
    keys = [group_key(name, by) for name in names]
    return names, [means[key] for key in keys], keys


def write_export(
    path: str | Path,
    metric: str,
    names: Sequence[str],
    values: Sequence[float | None] | Sequence[Sequence[float | None]],
    *,
    groups: Sequence[str] | None = None,
    by: GroupBy | str | None = None,
    steps: Sequence[int] | None = None,
    source: str | None = None,
) -> Path:
    """Write the export atomically: ``.npy`` float64 (NaN where undefined), a vector or, with
    ``steps``, one row per step; ``.json`` {metric, layers, values[, groups, steps]}."""
    import numpy as np

    from sncli.writer import staged_write

    target = check_export_target(path)
    if target.suffix.lower() == ".npy":
        array = np.array(
            [[math.nan if v is None else v for v in row] for row in values]  # type: ignore[union-attr]
            if steps is not None
            else [math.nan if v is None else v for v in values],  # type: ignore[misc]
            dtype=np.float64,
        )
        with staged_write(target) as (handle, pending):
            np.lib.format.write_array(handle, array, allow_pickle=False)
        pending.commit()
        return target
    data: dict[str, Any] = {"metric": metric}
    if source is not None:
        data["source"] = source
    if by is not None:
        data["group_by"] = GroupBy(by).value
        data["aggregate"] = "mean"
    data["layers"] = list(names)
    if groups is not None:
        data["groups"] = list(groups)
    if steps is not None:
        data["steps"] = list(steps)
    data["values"] = [list(row) for row in values] if steps is not None else list(values)  # type: ignore[arg-type]
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    with staged_write(target) as (handle, pending):
        handle.write(text.encode())
    pending.commit()
    return target
