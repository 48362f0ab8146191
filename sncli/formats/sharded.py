"""Sharded checkpoints: folders and ``*.index.json`` files, with every shard kept inside the
index's folder."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sncli.errors import CheckpointError
from sncli.formats.common import (
    READABLE,
    describe,
    quote,
    regular_file_size,
    show_value,
    strict_json_loads,
)
from sncli.formats.safetensors import SAFETENSORS_MAX_HEADER
from sncli.formats.torch_file import TORCH_SUFFIXES


def resolve_directory(folder: Path) -> Path:
    try:
        entries = sorted(p for p in folder.iterdir() if p.is_file())
    except OSError as exc:
        raise CheckpointError(f"cannot list folder: {exc.strerror or exc}", folder) from exc
    for pattern in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / pattern).is_file():
            return folder / pattern
    indexes = [p for p in entries if p.name.endswith(".index.json")]
    if len(indexes) == 1:
        return indexes[0]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    weights = [p for p in entries if p.suffix == ".safetensors"] or [
        p for p in entries if p.suffix in TORCH_SUFFIXES
    ]
    if len(weights) == 1:
        return weights[0]
    if not weights:
        raise CheckpointError(
            "folder holds no checkpoint (looked for *.index.json, *.safetensors, "
            f"*.pt, *.pth, *.bin, *.ckpt); name the file of another format ({READABLE})",
            folder,
        )
    raise CheckpointError(
        f"folder holds {len(weights)} weight files and no index json; name one file", folder
    )


def _shard_path(folder: Path, shard: Any, tensor_name: str, index: Path) -> Path:
    """Where an index's shard entry points, refusing absolute paths and '..' (lexically).

    Symlinked shards are fine (the Hugging Face cache links snapshots to blobs); only the
    name written in the index must stay inside the index's folder.
    """
    if not isinstance(shard, str) or not shard:
        raise CheckpointError(
            f"index maps {quote(tensor_name)} to a non-path {show_value(shard)}", index
        )
    normal = os.path.normpath(shard)
    if (
        os.path.isabs(shard)
        or shard.startswith(("/", "\\"))
        or re.match(r"^[A-Za-z]:", shard)
        or normal == ".."
        or normal.startswith(("../", "..\\"))
        or "\0" in shard
    ):
        raise CheckpointError(f"index points outside its folder: {quote(shard)}", index)
    return folder / normal


@dataclass(frozen=True)
class ShardIndex:
    """An index json's weight map, with each shard name resolved to a file inside its folder."""

    path: Path
    weight_map: dict[str, str]
    shards: dict[str, Path]

    @property
    def files(self) -> list[Path]:
        return list(dict.fromkeys(self.shards.values()))


def read_index(index: Path) -> ShardIndex:
    """Parse ``*.index.json``; every shard it names must exist inside the index's folder."""
    try:
        size = regular_file_size(index)
        if size > SAFETENSORS_MAX_HEADER:
            raise CheckpointError(f"index json is implausibly large ({size} bytes)", index)
        data = strict_json_loads(index.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise CheckpointError(f"cannot read index: {exc.strerror or exc}", index) from exc
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"malformed index json: {describe(exc)}", index) from exc
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError("index json has no 'weight_map' object", index)
    folder = index.parent
    shards: dict[str, Path] = {}
    for tensor_name, shard in weight_map.items():
        if not isinstance(shard, str) or shard not in shards:
            candidate = _shard_path(folder, shard, tensor_name, index)
            if not candidate.is_file():
                raise CheckpointError(f"index points to a missing shard {quote(shard)}", index)
            shards[shard] = candidate
    return ShardIndex(index, weight_map, shards)


def check_shards_hold(index: ShardIndex, keys_by_file: dict[Path, set[str]]) -> None:
    """Every tensor the index lists must be in the shard it names."""
    for tensor_name, shard in index.weight_map.items():
        if tensor_name not in keys_by_file[index.shards[shard]]:
            raise CheckpointError(
                f"index lists {quote(tensor_name)} in {quote(shard)}, "
                "but that shard does not hold it",
                index.path,
            )


def write_index(
    index: Path,
    handle: BinaryIO,
    *,
    renames: Mapping[str, str],
    dropped: Collection[str],
    total_size: int,
) -> None:
    """``index`` written to ``handle`` with renamed/dropped keys and ``total_size`` set."""
    data = json.loads(index.read_text(encoding="utf-8"))
    weight_map: dict[str, str] = {}
    for name, shard in data["weight_map"].items():
        if name in dropped:
            continue
        weight_map[renames.get(name, name)] = shard
    data["weight_map"] = weight_map
    data.setdefault("metadata", {})
    if isinstance(data["metadata"], dict):
        data["metadata"]["total_size"] = total_size
    handle.write((json.dumps(data, indent=2) + "\n").encode("utf-8"))
