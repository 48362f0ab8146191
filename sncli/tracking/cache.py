"""A cache of per-checkpoint results on disk, keyed by the files' content and the options that
change the numbers, so re-running ``sncli track`` computes only what is new or changed.

Entries are JSON files (never pickles), written atomically (a temporary file in the same
folder, then ``os.replace``), so processes may share one cache. An entry is trusted only when
it parses, names the key it was looked up by, and has the expected shape; anything else is
ignored with a note and recomputed. The key covers each file's size, mtime and a hash of its
first and last 64 KiB, so a changed file is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sncli._version import __version__

__all__ = ["CACHE_SCHEMA", "TrackCache", "cache_key", "content_stamp", "default_cache_dir"]

#: Changes when the entries' layout or meaning changes; older entries are then not found.
CACHE_SCHEMA = 1
#: Bytes hashed at each end of every file of a checkpoint.
_EDGE = 64 << 10
#: Entries larger than this are not read (a cache is no reason to allocate without bound).
MAX_ENTRY_BYTES = 256 << 20


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/sncli/track``, or ``~/.cache/sncli/track``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sncli" / "track"


def _file_stamp(path: Path, name: str) -> list[Any]:
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(_EDGE))
        if stat.st_size > 2 * _EDGE:
            handle.seek(stat.st_size - _EDGE)
        digest.update(handle.read(_EDGE))
    return [name, stat.st_size, stat.st_mtime_ns, digest.hexdigest()]


def content_stamp(path: str | Path) -> list[Any] | None:
    """What identifies a checkpoint's content without reading it all: per file, its name
    (relative to the checkpoint's folder; the checkpoint's own file name is left out, so a
    renamed copy still hits), size, mtime and a hash of its ends. A folder or a sharded index
    covers every regular file beside it. None when a file cannot be read (then no caching)."""
    path = Path(path)
    try:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file())
            return [_file_stamp(p, p.name) for p in files]
        stamps = [_file_stamp(path, "")]
        if path.name.endswith(".json"):
            siblings = sorted(p for p in path.parent.iterdir() if p.is_file() and p != path)
            stamps += [_file_stamp(p, p.name) for p in siblings]
        return stamps
    except OSError:
        return None


def cache_key(kind: str, stamps: list[Any], options: Mapping[str, Any]) -> str:
    """The key of one entry: a hash of what it is, the inputs' stamps, the options that change
    its numbers, sncli's version and the cache schema."""
    text = json.dumps(
        {
            "schema": CACHE_SCHEMA,
            "sncli": __version__,
            "kind": kind,
            "inputs": stamps,
            "options": dict(options),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _valid_value(value: Any) -> bool:
    if value is None or isinstance(value, bool | str | int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def valid_records(records: Any) -> bool:
    """A list of flat dicts of JSON scalars (finite numbers), each with a string ``name``."""
    if not isinstance(records, list):
        return False
    for record in records:
        if not isinstance(record, dict) or not isinstance(record.get("name"), str):
            return False
        if not all(isinstance(k, str) and _valid_value(v) for k, v in record.items()):
            return False
    return True


def _notes(values: Any) -> bool:
    """Notes as [level, text] pairs (a level of :class:`sncli.messages.Level`)."""
    return isinstance(values, list) and all(
        isinstance(v, list)
        and len(v) == 2
        and type(v[0]) is int
        and v[0] in (0, 1, 2)
        and isinstance(v[1], str)
        for v in values
    )


class TrackCache:
    """Entries ``<folder>/<key[:2]>/<key>.json``. ``notes`` collects what went wrong (an
    unreadable entry, a folder that cannot be written): the cache never fails a run."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_cache_dir()
        self.notes: list[str] = []
        self._write_failed = False

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The entry's payload, or None when absent or not valid (with a note)."""
        path = self._path(key)
        try:
            if path.stat().st_size > MAX_ENTRY_BYTES:
                raise ValueError("too large")
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError):
            self.notes.append(f"cache entry {path} is unreadable; recomputed")
            return None
        if (
            not isinstance(data, dict)
            or data.get("schema") != CACHE_SCHEMA
            or data.get("key") != key
            or not isinstance(data.get("payload"), dict)
            or not valid_records(data["payload"].get("records"))
            or not _notes(data["payload"].get("notes", []))
            or not isinstance(data["payload"].get("format", ""), str)
        ):
            self.notes.append(f"cache entry {path} is not a valid entry; recomputed")
            return None
        return data["payload"]

    def put(self, key: str, payload: dict[str, Any]) -> None:
        """Write the entry atomically; a failure is a note, not an error."""
        if self._write_failed:
            return
        path = self._path(key)
        try:
            text = json.dumps(
                {"schema": CACHE_SCHEMA, "key": key, "payload": payload}, allow_nan=False
            )
        except ValueError:  # a non-finite number: not cached
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
            try:
                with os.fdopen(handle, "w", encoding="utf-8") as out:
                    out.write(text)
                os.replace(temp, path)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            self._write_failed = True
            self.notes.append(
                f"cannot write the cache in {self.folder} ({exc.strerror or 'error'}); "
                "results not cached"
            )
