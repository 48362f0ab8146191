"""Issue 2: every checkpoint format opens, unwraps and reads its tensors correctly.

Checkpoints are built in tmp_path from real torch modules, saved the way each ecosystem saves
them (safetensors single/sharded/folder, HF ``pytorch_model.bin.index.json``, zip and legacy
``torch.save``, Lightning/timm/DeepSpeed wrappers, DataParallel/torch.compile prefixes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from sncli.checkpoint import Checkpoint, TensorInfo, natural_key, open_checkpoint
from sncli.errors import CheckpointError, UnsafePickleError
from sncli.formats import sniff_format
from sncli.formats.safetensors import read_safetensors_header
from sncli.formats.torch_file import load_torch_file
from sncli.formats.torch_wrappers import STRIPPABLE_PREFIXES, WRAPPER_KEYS


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3)
    )


def state_of(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def assert_same_tensors(ckpt: Checkpoint, expected: dict[str, torch.Tensor]) -> None:
    assert set(ckpt.tensors) == set(expected)
    for name, tensor in expected.items():
        info = ckpt.tensors[name]
        assert info.shape == tuple(tensor.shape)
        assert info.dtype == str(tensor.dtype).removeprefix("torch.")
        loaded = ckpt.load(name)
        assert loaded.dtype == tensor.dtype
        assert torch.equal(loaded, tensor), name


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SNCLI_DEBUG"}
    return subprocess.run(
        [sys.executable, "-m", "sncli", "inspect", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**env, "COLUMNS": "200"},
    )


# --------------------------------------------------------------------------- safetensors


def test_safetensors_single_file(tmp_path: Path) -> None:
    state = state_of(mlp())
    path = tmp_path / "model.safetensors"
    save_file(state, str(path), metadata={"format": "pt", "note": "hello"})
    with open_checkpoint(path) as ckpt:
        assert ckpt.format == "safetensors"
        assert ckpt.files == [path]
        assert ckpt.index_path is None
        assert ckpt.metadata[path] == {"format": "pt", "note": "hello"}
        assert ckpt.wrapper_key is None and ckpt.prefix == "" and ckpt.notes == []
        assert_same_tensors(ckpt, state)
        assert all(
            isinstance(info, TensorInfo) and info.file == path for info in ckpt.tensors.values()
        )


def test_safetensors_header_is_read_without_data(tmp_path: Path) -> None:
    state = state_of(mlp())
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    header = read_safetensors_header(path)
    assert set(header.tensors) == set(state)
    assert header.tensors["0.weight"][:2] == ("F32", (12, 6))
    assert header.data_start % 8 == 0
    begin, end = header.tensors["0.weight"][2]
    assert end - begin == 12 * 6 * 4


def _save_sharded(state: dict[str, torch.Tensor], folder: Path, shards: int = 3) -> Path:
    names = sorted(state)
    weight_map: dict[str, str] = {}
    for index in range(shards):
        file = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n] for n in names[index::shards]}
        save_file(part, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    index_path = folder / "model.safetensors.index.json"
    index_path.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index_path


def test_safetensors_sharded_index(tmp_path: Path) -> None:
    state = state_of(mlp())
    index_path = _save_sharded(state, tmp_path)
    with open_checkpoint(index_path) as ckpt:
        assert ckpt.format == "safetensors"
        assert ckpt.index_path == index_path
        assert len(ckpt.files) == 3
        assert_same_tensors(ckpt, state)
        assert {ckpt.tensors[n].file.name for n in state} == {f.name for f in ckpt.files}


def test_folder_with_index(tmp_path: Path) -> None:
    state = state_of(mlp())
    index_path = _save_sharded(state, tmp_path)
    with open_checkpoint(tmp_path) as ckpt:
        assert ckpt.index_path == index_path
        assert_same_tensors(ckpt, state)


def test_folder_with_single_safetensors(tmp_path: Path) -> None:
    state = state_of(mlp())
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text("{}")
    with open_checkpoint(tmp_path) as ckpt:
        assert ckpt.path == tmp_path / "model.safetensors"
        assert_same_tensors(ckpt, state)


def test_folder_with_single_pt(tmp_path: Path) -> None:
    state = state_of(mlp())
    torch.save(state, tmp_path / "weights.pth")
    with open_checkpoint(tmp_path) as ckpt:
        assert ckpt.format == "torch"
        assert_same_tensors(ckpt, state)


def test_folder_with_two_weight_files_is_ambiguous(tmp_path: Path) -> None:
    save_file(state_of(mlp()), str(tmp_path / "a.safetensors"))
    save_file(state_of(mlp()), str(tmp_path / "b.safetensors"))
    with pytest.raises(CheckpointError, match="2 weight files"):
        open_checkpoint(tmp_path)


def test_hugging_face_cache_symlinks(tmp_path: Path) -> None:
    """Snapshots link to blobs outside the snapshot folder: that is not 'outside the index'."""
    state = state_of(mlp())
    build = tmp_path / "build"
    build.mkdir()
    index_path = _save_sharded(state, build)
    blobs = tmp_path / "blobs"
    snapshot = tmp_path / "snapshots" / "abc123"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    for file in sorted(build.iterdir()):
        blob = blobs / f"sha-{file.name}"
        file.rename(blob)
        (snapshot / file.name).symlink_to(blob)
    with open_checkpoint(snapshot) as ckpt:
        assert ckpt.index_path == snapshot / index_path.name
        assert_same_tensors(ckpt, state)


def test_bin_index_with_bin_shards(tmp_path: Path) -> None:
    state = state_of(mlp())
    names = sorted(state)
    weight_map = {}
    for index, part_names in enumerate((names[:3], names[3:])):
        file = f"pytorch_model-{index + 1:05d}-of-00002.bin"
        torch.save({n: state[n] for n in part_names}, tmp_path / file)
        weight_map.update(dict.fromkeys(part_names, file))
    index_path = tmp_path / "pytorch_model.bin.index.json"
    index_path.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for target in (index_path, tmp_path):
        with open_checkpoint(target) as ckpt:
            assert ckpt.format == "torch"
            assert ckpt.index_path == index_path
            assert len(ckpt.files) == 2
            assert_same_tensors(ckpt, state)


def test_index_mixing_formats_is_refused(tmp_path: Path) -> None:
    state = state_of(mlp())
    save_file({"0.weight": state["0.weight"]}, str(tmp_path / "a.safetensors"))
    torch.save({"0.bias": state["0.bias"]}, tmp_path / "b.bin")
    weight_map = {"0.weight": "a.safetensors", "0.bias": "b.bin"}
    (tmp_path / "x.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="mixes"):
        open_checkpoint(tmp_path / "x.index.json")


def test_index_same_shard_spelled_two_ways(tmp_path: Path) -> None:
    state = state_of(mlp())
    save_file(state, str(tmp_path / "model.safetensors"))
    weight_map = {n: ("./" if i % 2 else "") + "model.safetensors" for i, n in enumerate(state)}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with open_checkpoint(tmp_path / "model.safetensors.index.json") as ckpt:
        assert ckpt.files == [tmp_path / "model.safetensors"]
        assert_same_tensors(ckpt, state)


# --------------------------------------------------------------------------- torch.save files


def test_zip_pt_loads_with_mmap(tmp_path: Path) -> None:
    state = state_of(mlp())
    path = tmp_path / "model.pt"
    torch.save(state, path)
    assert sniff_format(path) == "torch-zip"
    with open_checkpoint(path) as ckpt:
        assert ckpt.format == "torch"
        assert not any("legacy" in note for note in ckpt.notes)
        assert_same_tensors(ckpt, state)
    with mock.patch("torch.load", wraps=torch.load) as spy:
        load_torch_file(path)
    assert spy.call_args.kwargs == {"map_location": "cpu", "weights_only": True, "mmap": True}


def test_legacy_pt_loads_with_note(tmp_path: Path) -> None:
    state = state_of(mlp())
    path = tmp_path / "model.pt"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    assert sniff_format(path) == "torch-legacy"
    with mock.patch("torch.load", wraps=torch.load) as spy:
        load_torch_file(path)
    assert spy.call_args.kwargs == {"map_location": "cpu", "weights_only": True, "mmap": False}
    with open_checkpoint(path) as ckpt:
        assert any("legacy (non-zip)" in note for note in ckpt.notes)
        assert_same_tensors(ckpt, state)
    result = run_cli(str(path), "--format", "csv")
    assert result.returncode == 0, result.stderr
    assert "sncli: legacy (non-zip) PyTorch file: loaded fully into memory" in result.stderr
    assert "Traceback" not in result.stderr


def test_pt_saved_without_crc(tmp_path: Path) -> None:
    """torch can skip CRCs (compute_crc32=False): they are 0 then, and not a sign of damage."""
    from torch.utils import serialization

    state = state_of(mlp())
    path = tmp_path / "model.pt"
    previous = serialization.config.save.compute_crc32
    serialization.config.save.compute_crc32 = False
    try:
        torch.save(state, path)
    finally:
        serialization.config.save.compute_crc32 = previous
    assert all(info.CRC == 0 for info in zipfile.ZipFile(path).infolist())
    with open_checkpoint(path) as ckpt:
        assert_same_tensors(ckpt, state)


def test_recompressed_pt_is_not_misread(tmp_path: Path) -> None:
    """torch's mmap path reads deflated records as raw bytes (garbage); sncli avoids mmap there."""
    state = state_of(mlp())
    original = tmp_path / "model.pt"
    torch.save(state, original)
    path = tmp_path / "deflated.pt"
    with (
        zipfile.ZipFile(original) as source,
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out,
    ):
        for info in source.infolist():
            out.writestr(info.filename, source.read(info.filename))
    with open_checkpoint(path) as ckpt:
        assert_same_tensors(ckpt, state)


def test_torchscript_goes_to_its_own_reader(tmp_path: Path) -> None:
    """open_checkpoint reads TorchScript archives (formats/torchscript.py); the torch.save
    loader itself still refuses them, so torch.load never hands one to torch.jit.load."""
    from sncli.formats.torch_file import load_torch_file

    path = tmp_path / "scripted.pt"
    with pytest.warns(DeprecationWarning):
        torch.jit.save(torch.jit.script(mlp()), str(path))
    with open_checkpoint(path) as ckpt:
        assert ckpt.format == "torchscript"
    with pytest.raises(CheckpointError, match="TorchScript archive, not a state dict"):
        load_torch_file(path)


def test_tensor_only_file_is_not_a_state_dict(tmp_path: Path) -> None:
    torch.save(torch.ones(2, 2), tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match="not a state dict"):
        open_checkpoint(tmp_path / "t.pt")


# --------------------------------------------------------------------------- wrappers


@pytest.mark.parametrize(
    "key", ["state_dict", "model", "module", "state_dict_ema", "model_ema", "ema"]
)
def test_single_wrapper_key(tmp_path: Path, key: str) -> None:
    state = state_of(mlp())
    path = tmp_path / "model.ckpt"
    torch.save({key: state, "epoch": 7, "optimizer": {"lr": 0.1}}, path)
    with open_checkpoint(path) as ckpt:
        assert ckpt.wrapper_key == key
        assert ckpt.notes[0] == f"using the state dict under key '{key}'"
        assert_same_tensors(ckpt, state)
        assert ckpt.container(path)["epoch"] == 7


def test_wrapper_precedence_follows_wrapper_keys(tmp_path: Path) -> None:
    assert WRAPPER_KEYS.index("state_dict") < WRAPPER_KEYS.index("model")
    assert WRAPPER_KEYS.index("model") < WRAPPER_KEYS.index("model_ema")
    states = {key: state_of(mlp(seed)) for seed, key in enumerate(WRAPPER_KEYS)}
    path = tmp_path / "all.pt"
    for first in range(len(WRAPPER_KEYS)):
        present = {k: states[k] for k in WRAPPER_KEYS[first:]}
        torch.save(dict(reversed(list(present.items()))), path)  # file order must not matter
        expected = WRAPPER_KEYS[first]
        with open_checkpoint(path) as ckpt:
            assert ckpt.wrapper_key == expected
            assert_same_tensors(ckpt, states[expected])
            if first < len(WRAPPER_KEYS) - 1:
                assert "also present: " + ", ".join(WRAPPER_KEYS[first + 1 :][:6]) in ckpt.notes[0]


def test_key_override(tmp_path: Path) -> None:
    raw, ema = state_of(mlp(0)), state_of(mlp(1))
    path = tmp_path / "timm.pth.tar"
    torch.save({"state_dict": raw, "state_dict_ema": ema, "epoch": 3}, path)
    with open_checkpoint(path) as ckpt:
        assert ckpt.wrapper_key == "state_dict"
        assert "also present: state_dict_ema" in ckpt.notes[0]
    with open_checkpoint(path, key="state_dict_ema") as ckpt:
        assert ckpt.wrapper_key == "state_dict_ema"
        assert ckpt.notes[0] == "using the state dict under key 'state_dict_ema'"
        assert_same_tensors(ckpt, ema)
    with pytest.raises(
        CheckpointError, match=r"has no key 'ema'.*state_dict, state_dict_ema, epoch"
    ):
        open_checkpoint(path, key="ema")
    with pytest.raises(CheckpointError, match="does not hold a dict of tensors"):
        open_checkpoint(path, key="epoch")


def test_nested_key_path(tmp_path: Path) -> None:
    state = state_of(mlp())
    path = tmp_path / "nested.pt"
    torch.save({"checkpoint": {"weights": state}}, path)
    with open_checkpoint(path) as ckpt:  # found without --key: the only dict of tensors
        assert ckpt.wrapper_key == "checkpoint/weights"
        assert_same_tensors(ckpt, state)
    with open_checkpoint(path, key="checkpoint/weights") as ckpt:
        assert_same_tensors(ckpt, state)


def test_several_unknown_wrappers_need_key(tmp_path: Path) -> None:
    path = tmp_path / "two.pt"
    torch.save({"generator": state_of(mlp(0)), "discriminator": state_of(mlp(1))}, path)
    with pytest.raises(CheckpointError, match="choose one with --key"):
        open_checkpoint(path)
    with open_checkpoint(path, key="discriminator") as ckpt:
        assert_same_tensors(ckpt, state_of(mlp(1)))


# --------------------------------------------------------------------------- prefixes


@pytest.mark.parametrize(
    "prefix", ["module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module."]
)
def test_prefix_stripped_for_display_only(tmp_path: Path, prefix: str) -> None:
    state = {prefix + k: v for k, v in state_of(mlp()).items()}
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    with open_checkpoint(path) as ckpt:
        assert all(f"{part}." in STRIPPABLE_PREFIXES for part in prefix.split(".")[:-1])
        assert ckpt.prefix == prefix
        assert set(ckpt.tensors) == set(state)  # keys keep the prefix
        assert ckpt.short_name(prefix + "0.weight") == "0.weight"
        assert any(f"prefix '{prefix}'" in note for note in ckpt.notes)
        assert_same_tensors(ckpt, state)


def test_prefix_kept_when_not_on_every_key(tmp_path: Path) -> None:
    state = {"module." + k: v for k, v in state_of(mlp()).items()}
    state["head.weight"] = torch.ones(2, 2)
    path = tmp_path / "model.pt"
    torch.save(state, path)
    with open_checkpoint(path) as ckpt:
        assert ckpt.prefix == ""
        assert ckpt.short_name("module.0.weight") == "module.0.weight"


def test_prefix_in_wrapped_torch_file(tmp_path: Path) -> None:
    state = {"module." + k: v for k, v in state_of(mlp()).items()}
    path = tmp_path / "ddp.pt"
    torch.save({"model": state}, path)
    with open_checkpoint(path) as ckpt:
        assert ckpt.wrapper_key == "model"
        assert ckpt.prefix == "module."


# --------------------------------------------------------------------------- dtypes, ties, order


@pytest.mark.parametrize("save", ["safetensors", "pt"])
def test_low_precision_dtypes_load(tmp_path: Path, save: str) -> None:
    base = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    state = {
        "bf16.weight": base.bfloat16(),
        "fp16.weight": base.half(),
        "fp8e4.weight": base.to(torch.float8_e4m3fn),
        "fp8e5.weight": base.to(torch.float8_e5m2),
        "fp64.weight": base.double(),
        "ids": torch.arange(6, dtype=torch.int64),
        "mask": torch.tensor([True, False]),
    }
    path = tmp_path / ("model.safetensors" if save == "safetensors" else "model.pt")
    if save == "safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    with open_checkpoint(path) as ckpt:
        assert ckpt.tensors["fp8e4.weight"].dtype == "float8_e4m3fn"
        assert ckpt.tensors["bf16.weight"].dtype == "bfloat16"
        for name, tensor in state.items():
            loaded = ckpt.load(name)
            assert loaded.dtype == tensor.dtype
            assert torch.equal(loaded.view(torch.uint8), tensor.view(torch.uint8)), name


def test_tied_weights_share_storage(tmp_path: Path) -> None:
    class TinyLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(50, 8)
            self.body = nn.Linear(8, 8)
            self.lm_head = nn.Linear(8, 50, bias=False)
            self.lm_head.weight = self.embed.weight

    path = tmp_path / "lm.pt"
    torch.save(TinyLM().state_dict(), path)
    with open_checkpoint(path) as ckpt:
        assert set(ckpt.tensors) == {"embed.weight", "body.weight", "body.bias", "lm_head.weight"}
        assert ckpt.aliases == {"lm_head.weight": "embed.weight"}


def test_distinct_views_of_one_storage_are_not_aliases(tmp_path: Path) -> None:
    qkv = torch.randn(12, 4)
    path = tmp_path / "views.pt"
    torch.save({"q.weight": qkv[:4], "k.weight": qkv[4:8], "v.weight": qkv[8:]}, path)
    with open_checkpoint(path) as ckpt:
        assert ckpt.aliases == {}
        assert torch.equal(ckpt.load("k.weight"), qkv[4:8])


def test_natural_order(tmp_path: Path) -> None:
    state = {f"layers.{i}.weight": torch.ones(2, 2) * i for i in (10, 2, 1, 0, 21, 3)}
    state["embed.weight"] = torch.ones(3, 2)
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    with open_checkpoint(path) as ckpt:
        assert list(ckpt.tensors) == [
            "embed.weight",
            "layers.0.weight",
            "layers.1.weight",
            "layers.2.weight",
            "layers.3.weight",
            "layers.10.weight",
            "layers.21.weight",
        ]
    assert sorted(["b10", "b9", "a"], key=natural_key) == ["a", "b9", "b10"]


# --------------------------------------------------------------------------- unsafe pickles


def _lightning(path: Path, hparams: Any) -> dict[str, torch.Tensor]:
    state = {f"model.{k}": v for k, v in state_of(mlp()).items()}
    torch.save(
        {
            "epoch": 3,
            "global_step": 90,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": state,
            "optimizer_states": [],
            "hyper_parameters": hparams,
        },
        path,
    )
    return state


def test_lightning_namespace_refused_then_skipped(tmp_path: Path) -> None:
    path = tmp_path / "epoch=3.ckpt"
    state = _lightning(path, {"args": argparse.Namespace(lr=0.1, layers=[1, 2])})
    with pytest.raises(UnsafePickleError) as caught:
        open_checkpoint(path)
    message = str(caught.value)
    assert "argparse.Namespace" in message
    assert "--skip-objects" in message and "Nothing from the file was run" in message
    with open_checkpoint(path, skip_objects=True) as ckpt:
        assert ckpt.wrapper_key == "state_dict"
        assert_same_tensors(ckpt, state)
        assert any("argparse.Namespace" in note and "placeholders" in note for note in ckpt.notes)
        args = ckpt.container(path)["hyper_parameters"]["args"]
        assert isinstance(args, OrderedDict) and vars(args)["lr"] == 0.1  # inert, data kept


def test_lightning_attribute_dict_hparams(tmp_path: Path) -> None:
    """Lightning's AttributeDict is a dict subclass: its items are set on the placeholder."""

    path = tmp_path / "attr.ckpt"
    state = _lightning(path, _AttributeDict(lr=0.1, channels=[16, 32]))
    with open_checkpoint(path, skip_objects=True) as ckpt:
        assert_same_tensors(ckpt, state)
        assert ckpt.container(path)["hyper_parameters"]["lr"] == 0.1


class _AttributeDict(dict):  # type: ignore[type-arg]
    """Stands in for lightning.fabric.utilities.data.AttributeDict."""


def test_pickled_module_read_with_skip_objects(tmp_path: Path) -> None:
    """torch.save(model) pickles classes; with --skip-objects sncli reads its parameters."""
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))
    path = tmp_path / "whole_model.pt"
    torch.save(model, path)
    with pytest.raises(UnsafePickleError, match=r"torch\.nn\.modules"):
        open_checkpoint(path)
    with open_checkpoint(path, skip_objects=True) as ckpt:
        assert any("pickled nn.Module" in note for note in ckpt.notes)
        assert_same_tensors(ckpt, state_of(model))


def test_skip_objects_note_only_when_used(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save(state_of(mlp()), path)
    with open_checkpoint(path, skip_objects=True) as ckpt:
        assert not any("placeholder" in note for note in ckpt.notes)


def test_cli_lightning_error_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    _lightning(path, {"args": argparse.Namespace(lr=0.1)})
    result = run_cli(str(path))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sncli: error: {path}: refused to unpickle")
    ok = run_cli(str(path), "--skip-objects", "--format", "csv")
    assert ok.returncode == 0, ok.stderr
    assert "sncli: using the state dict under key 'state_dict'" in ok.stderr
    assert "model.0.weight" in ok.stdout


def test_cli_key_override_and_note(tmp_path: Path) -> None:
    path = tmp_path / "timm.pth"
    torch.save({"state_dict": state_of(mlp(0)), "state_dict_ema": state_of(mlp(1))}, path)
    default = run_cli(str(path), "--format", "json")
    assert default.returncode == 0, default.stderr
    assert (
        "sncli: using the state dict under key 'state_dict' (also present: state_dict_ema; "
        "pick with --key)" in default.stderr
    )
    chosen = run_cli(str(path), "--format", "json", "--key", "state_dict_ema")
    assert chosen.returncode == 0, chosen.stderr
    assert "sncli: using the state dict under key 'state_dict_ema'" in chosen.stderr
    sigmas = [json.loads(r.stdout)["layers"][0]["sigma"] for r in (default, chosen)]
    expected = [float(torch.linalg.svdvals(mlp(s)[0].weight.double())[0]) for s in (0, 1)]
    assert sigmas == pytest.approx(expected, rel=1e-9)
    missing = run_cli(str(path), "--key", "ema")
    assert missing.returncode == 1
    assert missing.stderr.splitlines() == [
        f"sncli: error: {path}: has no key 'ema' (top-level keys: state_dict, state_dict_ema)"
    ]


def test_a_format_reader_plugs_into_open_checkpoint(tmp_path, monkeypatch):
    """FORMAT_READERS: a reader returning FormatContents gives a Checkpoint like any other."""
    import sys
    import types

    import torch

    from sncli import checkpoint as checkpoint_module
    from sncli.formats.common import FormatContents

    data = {"fc.weight": torch.arange(6.0).reshape(2, 3), "fc.bias": torch.zeros(2)}
    closed = []
    source = tmp_path / "model.fake"
    source.write_bytes(b"FAKE")

    def read(path):
        return FormatContents(
            format="fake",
            files=[path],
            tensors={n: (tuple(t.shape), "float32") for n, t in data.items()},
            load=lambda name: data[name],
            notes=["read by the fake reader"],
            close=lambda: closed.append(True),
        )

    module = types.ModuleType("sncli_fake_reader")
    module.read = read
    monkeypatch.setitem(sys.modules, "sncli_fake_reader", module)
    monkeypatch.setitem(checkpoint_module.FORMAT_READERS, "fake", "sncli_fake_reader:read")
    monkeypatch.setattr(checkpoint_module, "sniff_format", lambda _path: "fake")
    with checkpoint_module.open_checkpoint(source) as ckpt:
        assert ckpt.format == "fake"
        assert list(ckpt.tensors) == ["fc.bias", "fc.weight"]
        assert ckpt.tensors["fc.weight"].shape == (2, 3)
        assert torch.equal(ckpt.load("fc.weight"), data["fc.weight"])
        assert "read by the fake reader" in ckpt.notes
    assert closed == [True]
    with pytest.raises(CheckpointError, match="fake files hold a plain state dict"):
        checkpoint_module.open_checkpoint(source, key="state_dict")
