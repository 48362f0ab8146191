"""sncli.hub: Hugging Face model ids resolved from a local hub cache built here in
huggingface_hub's layout (``models--org--name/{blobs,snapshots/<commit>,refs/main}``), with the
network made unreachable: nothing is ever downloaded."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sncli import open_checkpoint
from sncli.errors import CheckpointError

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("sncli tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _state(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"fc.weight": torch.randn(6, 4, generator=generator), "fc.bias": torch.zeros(6)}


def _add_file(repo: Path, commit: str, name: str, data: bytes) -> None:
    """A snapshot file, as huggingface_hub stores it: a relative symlink to its blob."""
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = repo / "snapshots" / commit / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))


def _safetensors_bytes(state: dict[str, torch.Tensor], tmp: Path) -> bytes:
    path = tmp / "scratch.safetensors"
    save_file(state, str(path))
    data = path.read_bytes()
    path.unlink()
    return data


def _cache(tmp_path: Path, repo_id: str = "org/name") -> tuple[Path, Path]:
    cache = tmp_path / "hub"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    _add_file(repo, COMMIT, "config.json", b"{}")
    _add_file(repo, COMMIT, "model.safetensors", _safetensors_bytes(_state(0), tmp_path))
    _add_file(repo, OTHER, "model.safetensors", _safetensors_bytes(_state(1), tmp_path))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "refs" / "v1").write_text(OTHER)
    return cache, repo


@pytest.mark.parametrize(
    ("text", "seed"),
    [("org/name", 0), ("org/name@main", 0), ("org/name@v1", 1), (f"org/name@{OTHER}", 1)],
)
def test_ids_and_revisions_resolve_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, seed: int
) -> None:
    cache, _ = _cache(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    with open_checkpoint(text) as ckpt:
        assert torch.equal(ckpt.load("fc.weight"), _state(seed)["fc.weight"])
        assert "from the Hugging Face cache" in ckpt.notes[0]


def test_hf_home_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, _ = _cache(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    cache.rename(home / "hub")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    with open_checkpoint("org/name") as ckpt:
        assert torch.equal(ckpt.load("fc.weight"), _state(0)["fc.weight"])


def test_sharded_and_pytorch_bin_snapshots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "hub"
    sharded = cache / "models--org--sharded"
    state = _state(2)
    shards = {"model-00001-of-00002.safetensors": {"fc.weight": state["fc.weight"]}}
    shards["model-00002-of-00002.safetensors"] = {"fc.bias": state["fc.bias"]}
    weight_map = {}
    for shard, part in shards.items():
        _add_file(sharded, COMMIT, shard, _safetensors_bytes(part, tmp_path))
        weight_map.update(dict.fromkeys(part, shard))
    index = json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}).encode()
    _add_file(sharded, COMMIT, "model.safetensors.index.json", index)
    (sharded / "refs").mkdir()
    (sharded / "refs" / "main").write_text(COMMIT)
    binary = cache / "models--org--bin"
    scratch = tmp_path / "scratch.bin"
    torch.save(_state(3), scratch)
    _add_file(binary, COMMIT, "pytorch_model.bin", scratch.read_bytes())
    (binary / "refs").mkdir()
    (binary / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    with open_checkpoint("org/sharded") as ckpt:
        assert ckpt.index_path is not None and len(ckpt.files) == 2
        assert torch.equal(ckpt.load("fc.weight"), state["fc.weight"])
    with open_checkpoint("org/bin") as ckpt:
        assert ckpt.format == "torch"
        assert torch.equal(ckpt.load("fc.weight"), _state(3)["fc.weight"])


def test_uncached_id_says_how_to_fetch_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, _ = _cache(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError) as caught:
        open_checkpoint("meta-llama/Llama-3-8B")
    message = str(caught.value)
    assert message.startswith("meta-llama/Llama-3-8B: not a file or folder")
    assert "is not in the Hugging Face cache" in message and str(cache) in message
    assert "hf download meta-llama/Llama-3-8B" in message
    with pytest.raises(CheckpointError, match="--revision nope"):
        open_checkpoint("org/name@nope")


def test_an_existing_path_wins_over_an_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, _ = _cache(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    local = tmp_path / "org" / "name"
    local.mkdir(parents=True)
    save_file(_state(7), str(local / "model.safetensors"))
    monkeypatch.chdir(tmp_path)
    with open_checkpoint("org/name") as ckpt:
        assert torch.equal(ckpt.load("fc.weight"), _state(7)["fc.weight"])
        assert not any("Hugging Face cache" in n for n in ckpt.notes)


def test_snapshot_links_outside_the_cache_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, repo = _cache(tmp_path)
    secret = tmp_path / "secret.safetensors"
    save_file(_state(9), str(secret))
    link = repo / "snapshots" / COMMIT / "model.safetensors"
    link.unlink()
    link.symlink_to(secret)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="links outside the model's cache folder"):
        open_checkpoint("org/name")


def test_snapshot_without_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "hub"
    repo = cache / "models--org--configonly"
    _add_file(repo, COMMIT, "config.json", b"{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="holds no weights file"):
        open_checkpoint("org/configonly")


def test_cli_inspects_an_id_offline(tmp_path: Path) -> None:
    cache, _ = _cache(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", NO_COLOR="1")
    result = subprocess.run(
        [sys.executable, "-m", "sncli", "inspect", "org/name", "--format", "json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert [layer["name"] for layer in json.loads(result.stdout)["layers"]] == ["fc.weight"]
    missing = subprocess.run(
        [sys.executable, "-m", "sncli", "inspect", "org/absent"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert missing.returncode == 1
    assert missing.stderr.startswith("sncli: error: org/absent: not a file or folder")
    assert len(missing.stderr.splitlines()) == 1


def test_missing_paths_are_not_taken_for_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    for text in ("models/model.safetensors", "out/pytorch_model.bin", "a/b/c", "../x/y"):
        with pytest.raises(CheckpointError, match="no such file or directory"):
            open_checkpoint(text)


@pytest.mark.parametrize("how", ["id", "snapshot path"])
def test_normalize_in_place_refuses_cache_blobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A snapshot file links to a blob named by its hash and shared by revisions: rewriting it
    in place would corrupt the cache. ``-o`` still works."""
    from typer.testing import CliRunner

    from sncli.cli import app

    cache, repo = _cache(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    blobs = {blob: blob.read_bytes() for blob in (repo / "blobs").iterdir()}
    target = "org/name" if how == "id" else str(repo / "snapshots" / COMMIT / "model.safetensors")
    refused = CliRunner().invoke(app, ["normalize", target, "--in-place", "--quiet"])
    assert refused.exit_code == 1
    assert "refusing --in-place" in refused.stderr and "Hugging Face cache" in refused.stderr
    assert {blob: blob.read_bytes() for blob in (repo / "blobs").iterdir()} == blobs
    copied = CliRunner().invoke(app, ["normalize", target, "-o", str(tmp_path / "out.safetensors")])
    assert copied.exit_code == 0, copied.output
    assert {blob: blob.read_bytes() for blob in (repo / "blobs").iterdir()} == blobs
