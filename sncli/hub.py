"""Hugging Face model ids (``org/name`` or ``org/name@revision``), resolved from the local hub
cache that ``from_pretrained`` and ``hf download`` fill. Nothing is downloaded.

The cache is ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else huggingface_hub's default
(``~/.cache/huggingface/hub``), read when an id is opened. A revision is a branch or tag name
(looked up in ``refs/``) or a commit hash; without one, ``main``. Snapshot files are symlinks
into the repository's ``blobs/``; one that resolves outside the repository's cache folder is
refused, like a shard path outside its index's folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from sncli.errors import CheckpointError
from sncli.messages import clean_text

#: ``org/name`` with an optional ``@revision``: Hugging Face's repo id characters.
_REPO_ID = re.compile(
    r"(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(@(?P<rev>[\w./-]{1,200}))?"
)
_MAX_ENTRIES = 100_000


@dataclass(frozen=True)
class HubModel:
    repo_id: str
    revision: str
    snapshot: Path


#: A missing ``dir/model.safetensors`` is a mistyped path, not a model id.
_FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".json", ".gguf", ".npy", ".npz")
_FILE_SUFFIXES += (".h5", ".keras", ".onnx", ".jit")


def looks_like_repo_id(text: str) -> bool:
    """``org/name[@revision]`` (a path that exists is never taken for one: the caller checks)."""
    match = _REPO_ID.fullmatch(text)
    return (
        match is not None
        and ".." not in text
        and not match["repo"].lower().endswith(_FILE_SUFFIXES)
    )


def hub_cache() -> Path:
    """The hub cache folder, from the environment at call time."""
    explicit = os.environ.get("HF_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def is_cache_blob(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` resolves to a blob of a hub cache (``models--org--name/blobs/<hash>``,
    beside ``snapshots/``): content-addressed, and shared by every revision that holds it."""
    real = Path(os.path.realpath(path))
    return real.parent.name == "blobs" and (real.parent.parent / "snapshots").is_dir()


def resolve_repo_id(text: str) -> HubModel:
    """The cached snapshot folder of a model id; a ``CheckpointError`` saying how to fetch it."""
    match = _REPO_ID.fullmatch(text)
    if match is None:
        raise CheckpointError("no such file or directory", text)
    repo_id, revision = match["repo"], match["rev"] or "main"
    cache = hub_cache()
    fetch = f"hf download {repo_id}" + (f" --revision {revision}" if match["rev"] else "")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as exc:  # pragma: no cover - a dependency
        raise CheckpointError("huggingface_hub is not installed; cannot resolve ids", text) from exc
    try:
        folder = snapshot_download(
            repo_id, revision=revision, cache_dir=str(cache), local_files_only=True
        )
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"not a file or folder, and model '{clean_text(repo_id)}' (revision "
            f"'{clean_text(revision)}') is not in the Hugging Face cache {cache}; sncli never "
            f"downloads: fetch it with `{fetch}` (or set HF_HUB_CACHE / HF_HOME)",
            text,
        ) from exc
    snapshot = Path(str(folder))
    _check_links(snapshot, cache / ("models--" + repo_id.replace("/", "--")), text)
    return HubModel(repo_id, revision, snapshot)


def _check_links(snapshot: Path, repo_folder: Path, text: str) -> None:
    """Every file of the snapshot must resolve inside the repository's cache folder."""
    root = repo_folder.resolve()
    count = 0
    for folder, dirs, files in os.walk(snapshot):
        for name in [*files, *dirs]:
            count += 1
            if count > _MAX_ENTRIES:
                raise CheckpointError("cached snapshot holds too many files", text)
            target = Path(folder, name).resolve()
            if target != root and root not in target.parents:
                raise CheckpointError(
                    f"cached snapshot file '{clean_text(name)}' links outside the model's cache "
                    f"folder (to {clean_text(str(target))}); refused",
                    text,
                )
