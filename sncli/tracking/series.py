"""Which checkpoints make a run, and the step of each: from the arguments, a run folder or a
glob, with the step read from the last integer in each checkpoint's name (or given)."""

from __future__ import annotations

import glob
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sncli.errors import CheckpointError, SncliError

__all__ = ["SeriesItem", "discover", "parse_steps", "step_of"]

#: File extensions of a checkpoint inside a run folder (a folder entry counts too).
CHECKPOINT_SUFFIXES = (
    ".safetensors",
    ".pt",
    ".pth",
    ".bin",
    ".ckpt",
    ".gguf",
    ".npz",
    ".npy",
    ".keras",
    ".h5",
    ".onnx",
    ".tflite",
)
_INTEGER = re.compile(r"\d+")
_GLOB = re.compile(r"[*?\[]")
#: A folder named like a training checkpoint (``checkpoint-1200``, ``step_50``, ``global_step7``).
_STEP_FOLDER = re.compile(r"(?i)(?:checkpoint|ckpt|step|global_step|iter|iteration|epoch)[-_]?\d+")
#: One shard of a sharded checkpoint (``model-00001-of-00002.safetensors``): never a step.
_SHARD = re.compile(r"-\d+-of-\d+$")


@dataclass(frozen=True)
class SeriesItem:
    """One checkpoint of the run: its path as given (or as found) and its step."""

    path: str
    step: int


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".index.json", *CHECKPOINT_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def step_of(path: str | Path) -> int | None:
    """The last integer in the checkpoint's name (``checkpoint-1200``, ``step_1200.pt`` →
    1200); for a file whose name has none (``checkpoint-1200/model.safetensors``), its
    folder's when the folder is named like a checkpoint (``checkpoint-N``, ``step_N``…; not
    any folder with a digit). None otherwise."""
    path = Path(path)
    found = _INTEGER.findall(_stem(path))
    if found:
        return int(found[-1])
    if _STEP_FOLDER.search(path.parent.name):
        return int(_INTEGER.findall(path.parent.name)[-1])
    return None


def _run_folder_entries(folder: Path) -> list[Path]:
    """The checkpoints a run folder holds: entries with an integer in their name that are
    checkpoint files or folders holding one, shards of one sharded checkpoint apart. Empty when
    the folder is a checkpoint itself (a sharded Hugging Face folder, say)."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise CheckpointError(f"cannot list the folder: {exc.strerror or 'error'}", folder) from exc
    found = []
    for entry in entries:
        if entry.name.startswith(".") or not _INTEGER.search(_stem(entry)):
            continue
        if _SHARD.search(_stem(entry)):
            continue
        if _holds_checkpoint(entry) or (
            entry.is_file() and entry.name.lower().endswith(CHECKPOINT_SUFFIXES)
        ):
            found.append(entry)
    return found


def _holds_checkpoint(folder: Path) -> bool:
    """A folder with a checkpoint file (or a sharded index) directly inside: ``checkpoint-N/``,
    not a cache or log folder that happens to have a digit in its name."""
    if not folder.is_dir():
        return False
    try:
        return any(
            p.is_file() and p.name.lower().endswith((*CHECKPOINT_SUFFIXES, ".index.json"))
            for p in folder.iterdir()
        )
    except OSError:
        return False


def _expand(argument: str) -> list[Path]:
    path = Path(argument)
    if path.exists():
        if path.is_dir():
            entries = _run_folder_entries(path)
            if entries:
                return entries
        return [path]
    if _GLOB.search(argument):
        matches = sorted(glob.glob(argument))
        if not matches:
            raise CheckpointError("the pattern matches no file or folder", argument)
        return [Path(m) for m in matches]
    raise CheckpointError("no such file or directory", argument)


def parse_steps(text: str) -> list[int]:
    """``--steps 0,200,400`` as integers (ValueError for anything else)."""
    parts = [part.strip() for part in text.split(",")]
    if not parts or any(not re.fullmatch(r"-?\d+", part) for part in parts):
        raise ValueError(f"{text!r} is not a comma-separated list of integers like 0,200,400")
    return [int(part) for part in parts]


def discover(arguments: Sequence[str], steps: Sequence[int] | None = None) -> list[SeriesItem]:
    """The run's checkpoints in step order. A single run folder stands for its checkpoint
    entries, a pattern for its matches. ``steps`` gives the steps in the order the checkpoints
    are found (then their names need no integer). Raises ``SncliError`` for a checkpoint
    without a step, two checkpoints at one step, or a ``steps`` of the wrong length."""
    paths: list[Path] = []
    for argument in arguments:
        paths += _expand(argument)
    if not paths:
        raise SncliError("no checkpoint given")
    if steps is not None:
        if len(steps) != len(paths):
            raise SncliError(f"--steps gives {len(steps)} step(s) for {len(paths)} checkpoint(s)")
        found = list(steps)
    else:
        found = []
        for path in paths:
            step = step_of(path)
            if step is None:
                raise CheckpointError(
                    "no step in the checkpoint's name (no integer in it); give --steps", path
                )
            found.append(step)
    seen: dict[int, Path] = {}
    for path, step in zip(paths, found, strict=True):
        if step in seen:
            raise CheckpointError(
                f"step {step} again (also {seen[step]}); each checkpoint needs its own step",
                path,
            )
        seen[step] = path
    items = [SeriesItem(str(path), step) for path, step in zip(paths, found, strict=True)]
    return sorted(items, key=lambda item: item.step)
