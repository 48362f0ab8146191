"""sncli.formats.sharded on its own: ``read_index`` (strict JSON, shards kept inside the index's
folder), ``check_shards_hold`` and ``resolve_directory``."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sncli.errors import CheckpointError
from sncli.formats.safetensors import read_safetensors_header
from sncli.formats.sharded import check_shards_hold, read_index, resolve_directory

SHARDS = {
    "model-00001-of-00002.safetensors": {"embed.weight": (4, 3), "layers.0.weight": (3, 3)},
    "model-00002-of-00002.safetensors": {"layers.1.weight": (3, 3), "head.weight": (2, 3)},
}


@pytest.fixture
def sharded(tmp_path: Path) -> Path:
    """A Hugging Face style sharded checkpoint; returns its index."""
    weight_map = {}
    for shard, shapes in SHARDS.items():
        save_file({k: torch.zeros(s) for k, s in shapes.items()}, str(tmp_path / shard))
        weight_map.update(dict.fromkeys(shapes, shard))
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index


def write_index(folder: Path, weight_map: object, **extra: object) -> Path:
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map, **extra}))
    return index


def keys_by_file(index_files: list[Path]) -> dict[Path, set[str]]:
    return {f: set(read_safetensors_header(f).tensors) for f in index_files}


def test_read_index_good(sharded: Path) -> None:
    index = read_index(sharded)
    assert index.path == sharded
    expected_map = {k: shard for shard, shapes in SHARDS.items() for k in shapes}
    assert index.weight_map == expected_map
    assert index.shards == {shard: sharded.parent / shard for shard in SHARDS}
    assert index.files == [sharded.parent / shard for shard in SHARDS]  # first-seen order
    check_shards_hold(index, keys_by_file(index.files))  # consistent: no error


def test_read_index_in_subfolders_and_symlinks(tmp_path: Path) -> None:
    (tmp_path / "shards").mkdir()
    save_file({"a": torch.zeros(1)}, str(tmp_path / "shards" / "a.safetensors"))
    blob = tmp_path / "blob"
    save_file({"b": torch.zeros(1)}, str(blob))
    os.symlink(blob, tmp_path / "b.safetensors")  # how the Hugging Face cache links blobs
    index = read_index(write_index(tmp_path, {"a": "shards/a.safetensors", "b": "./b.safetensors"}))
    assert index.files == [tmp_path / "shards" / "a.safetensors", tmp_path / "b.safetensors"]


@pytest.mark.parametrize(
    "shard",
    [
        "../x.safetensors",
        "..",
        "sub/../../x.safetensors",
        "..\\x.safetensors",
        "/etc/passwd",
        "//server/share/x.safetensors",
        "\\\\server\\share\\x.safetensors",
        "C:x.safetensors",
        "C:\\Windows\\x.safetensors",
        "c:/x.safetensors",
        "x.safetensors\0.txt",
    ],
)
def test_read_index_refuses_paths_outside_its_folder(tmp_path: Path, shard: str) -> None:
    inner = tmp_path / "inner"
    inner.mkdir()
    save_file({"a": torch.zeros(1)}, str(tmp_path / "x.safetensors"))  # a real file outside
    with pytest.raises(CheckpointError, match="outside its folder"):
        read_index(write_index(inner, {"a": shard}))


def test_read_index_refuses_a_missing_shard(sharded: Path) -> None:
    (sharded.parent / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing shard 'model-00002-of-00002"):
        read_index(sharded)


def test_read_index_refuses_a_folder_as_shard(tmp_path: Path) -> None:
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(CheckpointError, match="missing shard"):
        read_index(write_index(tmp_path, {"a": "dir.safetensors"}))


@pytest.mark.parametrize(
    "text",
    [
        '{"weight_map": {"a": "x.safetensors", "a": "x.safetensors"}}',
        '{"weight_map": {"a": "x.safetensors"}, "weight_map": {"b": "x.safetensors"}}',
    ],
    ids=["tensor", "weight_map"],
)
def test_read_index_refuses_duplicate_keys(tmp_path: Path, text: str) -> None:
    save_file({"a": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    json.loads(text)  # plain json accepts it, silently keeping the last value
    index = tmp_path / "m.index.json"
    index.write_text(text)
    with pytest.raises(CheckpointError, match="duplicate key"):
        read_index(index)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_read_index_refuses_non_finite_constants(tmp_path: Path, constant: str) -> None:
    save_file({"a": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    text = '{"metadata": {"total_size": ' + constant + '}, "weight_map": {"a": "x.safetensors"}}'
    json.loads(text)  # plain json accepts it
    index = tmp_path / "m.index.json"
    index.write_text(text)
    with pytest.raises(CheckpointError, match="invalid JSON constant"):
        read_index(index)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "no 'weight_map'"),
        ('{"weight_map": {}}', "no 'weight_map'"),
        ('{"weight_map": ["x.safetensors"]}', "no 'weight_map'"),
        ('{"weight_map": {"a": 3}}', "non-path"),
        ('{"weight_map": {"a": ""}}', "non-path"),
        ('{"weight_map": ', "malformed index json"),
        ("[" * 100_000, "malformed index json"),
    ],
)
def test_read_index_refuses_malformed(tmp_path: Path, text: str, message: str) -> None:
    index = tmp_path / "m.index.json"
    index.write_text(text)
    with pytest.raises(CheckpointError, match=message):
        read_index(index)


def test_read_index_refuses_non_utf8(tmp_path: Path) -> None:
    index = tmp_path / "m.index.json"
    index.write_bytes(b'{"weight_map": {"\xff": "x"}}')
    with pytest.raises(CheckpointError, match="malformed index json"):
        read_index(index)


def test_check_shards_hold_raises_for_a_tensor_in_the_wrong_shard(sharded: Path) -> None:
    data = json.loads(sharded.read_text())
    # head.weight really lives in shard 2; the index now claims shard 1.
    data["weight_map"]["head.weight"] = "model-00001-of-00002.safetensors"
    sharded.write_text(json.dumps(data))
    index = read_index(sharded)
    with pytest.raises(
        CheckpointError, match=re.escape("lists 'head.weight' in 'model-00001-of-00002")
    ):
        check_shards_hold(index, keys_by_file(index.files))


def test_check_shards_hold_raises_for_a_tensor_no_shard_holds(sharded: Path) -> None:
    data = json.loads(sharded.read_text())
    data["weight_map"]["ghost.weight"] = "model-00002-of-00002.safetensors"
    sharded.write_text(json.dumps(data))
    index = read_index(sharded)
    with pytest.raises(CheckpointError, match=re.escape("'ghost.weight'")):
        check_shards_hold(index, keys_by_file(index.files))


def test_resolve_directory(tmp_path: Path, sharded: Path) -> None:
    assert resolve_directory(sharded.parent) == sharded
    single = tmp_path / "single"
    single.mkdir()
    save_file({"a": torch.zeros(1)}, str(single / "weights.safetensors"))
    torch.save({"a": torch.zeros(1)}, single / "weights.pt")
    assert resolve_directory(single) == single / "weights.safetensors"  # safetensors first
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.pt", "b.pt"):
        torch.save({}, two / name)
    with pytest.raises(CheckpointError, match="2 weight files"):
        resolve_directory(two)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        resolve_directory(empty)
