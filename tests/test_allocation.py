"""Grouping per block / module type and the export (sncli.allocation): names of the common
architectures, the mean against a hand computation, the .npy/.json round trip, atomic writes
and the refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from sncli.allocation import (
    GroupBy,
    block_of,
    check_export_target,
    export_values,
    group_key,
    group_means,
    module_of,
    write_export,
)
from sncli.errors import WriteError


@pytest.mark.parametrize(
    ("name", "block", "module"),
    [
        ("model.layers.3.self_attn.q_proj.weight", "model.layers.3", "self_attn.q_proj"),
        ("model.layers.12.mlp.down_proj.weight", "model.layers.12", "mlp.down_proj"),
        ("transformer.h.3.attn.c_attn.weight", "transformer.h.3", "attn.c_attn"),
        ("blocks.0.mlp.fc1.weight", "blocks.0", "mlp.fc1"),
        (
            "bert.encoder.layer.5.attention.output.dense.weight",
            "bert.encoder.layer.5",
            "attention.output.dense",
        ),
        ("bert.encoder.layer.5.output.dense.weight", "bert.encoder.layer.5", "output.dense"),
        (
            "decoder.block.2.layer.0.SelfAttention.q.weight",
            "decoder.block.2",
            "layer.0.SelfAttention.q",
        ),
        ("model.decoder.layers.1.fc1.weight", "model.decoder.layers.1", "fc1"),
        ("layers.7.w", "layers.7", "w"),
    ],
)
def test_block_and_module(name: str, block: str, module: str) -> None:
    found = block_of(name)
    assert found is not None and found[0] == block
    assert module_of(name) == module
    assert group_key(name, "block") == block
    assert group_key(name, GroupBy.MODULE) == module


@pytest.mark.parametrize(
    "name", ["lm_head.weight", "model.embed_tokens.weight", "0.weight", "hidden.weight"]
)
def test_outside_blocks_each_layer_is_its_own_group(name: str) -> None:
    assert block_of(name) is None
    stem = name.removesuffix(".weight")
    assert group_key(name, "block") == stem == group_key(name, "module")


def test_group_means_by_hand() -> None:
    rows = [
        ("model.embed_tokens.weight", {"alpha_hill": 9.0}),
        ("model.layers.0.self_attn.q_proj.weight", {"alpha_hill": 2.0, "x": 1}),
        ("model.layers.0.mlp.up_proj.weight", {"alpha_hill": 4.0, "x": None}),
        ("model.layers.1.self_attn.q_proj.weight", {"alpha_hill": None, "x": float("nan")}),
        ("model.layers.1.mlp.up_proj.weight", {"alpha_hill": 5.0, "x": 3}),
    ]
    blocks = group_means(rows, "block", ["alpha_hill", "x"])
    assert [g.key for g in blocks] == ["model.embed_tokens", "model.layers.0", "model.layers.1"]
    assert blocks[1].means == {"alpha_hill": 3.0, "x": 1.0}
    assert blocks[1].count == 2
    assert blocks[2].means == {"alpha_hill": 5.0, "x": 3.0}  # None and NaN skipped
    assert blocks[2].defined == {"alpha_hill": 1, "x": 1}
    modules = group_means(rows, "module", ["alpha_hill"])
    assert {g.key: g.means["alpha_hill"] for g in modules} == {
        "model.embed_tokens": 9.0,
        "self_attn.q_proj": 2.0,
        "mlp.up_proj": 4.5,
    }
    names, values, keys = export_values(rows, "alpha_hill", "block")
    assert values == [9.0, 3.0, 3.0, 5.0, 5.0]  # each matrix carries its block's mean
    assert keys == [
        "model.embed_tokens",
        "model.layers.0",
        "model.layers.0",
        "model.layers.1",
        "model.layers.1",
    ]
    assert export_values(rows, "alpha_hill")[1] == [9.0, 2.0, 4.0, None, 5.0]
    assert names == [name for name, _ in rows]


def test_export_round_trip(tmp_path: Path) -> None:
    names = ["a.weight", "b.weight", "c.weight"]
    values = [1.5, None, 3.25]
    write_export(tmp_path / "x.npy", "alpha_hill", names, values)
    loaded = np.load(tmp_path / "x.npy")
    assert loaded.dtype == np.float64 and loaded.shape == (3,)
    assert loaded[0] == 1.5 and math.isnan(loaded[1]) and loaded[2] == 3.25
    write_export(tmp_path / "x.json", "alpha_hill", names, values, source="m.safetensors")
    data = json.loads((tmp_path / "x.json").read_text())
    assert data == {
        "metric": "alpha_hill",
        "source": "m.safetensors",
        "layers": names,
        "values": [1.5, None, 3.25],
    }
    table = [[1.0, 2.0, None], [4.0, 5.0, 6.0]]
    write_export(tmp_path / "run.npy", "alpha", names, table, steps=[0, 100])
    assert np.load(tmp_path / "run.npy").shape == (2, 3)
    write_export(
        tmp_path / "run.json",
        "alpha",
        names,
        table,
        steps=[0, 100],
        by="block",
        groups=["a", "b", "c"],
    )
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["steps"] == [0, 100] and data["values"] == table
    assert data["group_by"] == "block" and data["aggregate"] == "mean"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "run.json",
        "run.npy",
        "x.json",
        "x.npy",
    ]  # no temporary file left


def test_refusals(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown export format '\.txt'"):
        check_export_target(tmp_path / "x.txt")
    with pytest.raises(ValueError, match="no suffix"):
        check_export_target(tmp_path / "x")
    (tmp_path / "d.json").mkdir()
    with pytest.raises(WriteError):
        check_export_target(tmp_path / "d.json")
    with pytest.raises(WriteError):
        check_export_target(tmp_path / "missing" / "x.npy")
    assert check_export_target(tmp_path / "X.NPY") == tmp_path / "X.NPY"
