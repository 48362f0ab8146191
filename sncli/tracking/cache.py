"""A cache of per-checkpoint results on disk, keyed by the files' content and the options that
change the numbers, so re-running ``sncli track`` computes only what is new or changed.

Entries are JSON files (never pickles), written atomically (a temporary file in the same
folder, then ``os.replace``), so processes may share one cache. An entry is trusted only when
it parses, names the key it was looked up by, and has the expected shape; anything else is
ignored with a note and recomputed. The key covers each file's size, mtime and a hash of its
first and last 64 KiB, so a changed file is recomputed.

The filters (``--filter``/``--exclude``) choose layers, not numbers, so they are not part of a
key: one entry per checkpoint (and kind of result) holds a record per layer computed so far
under any filter, and :func:`cached_layers` computes only the layers a run needs that the
entry lacks, then writes the union back. Two processes adding different layers at once cannot
corrupt an entry (each write replaces it whole); the later write may drop the other's layers,
which are then recomputed next time, never wrong.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sncli._version import __version__

__all__ = [
    "CACHE_SCHEMA",
    "FILTER_OPTIONS",
    "TrackCache",
    "cache_key",
    "cached_layers",
    "content_stamp",
    "default_cache_dir",
    "exact_names",
]

#: Changes when the entries' layout or meaning changes; older entries are then not found.
CACHE_SCHEMA = 2
#: Options that choose layers rather than change their numbers: left out of every key.
FILTER_OPTIONS = ("include", "exclude")
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


def _missing(values: Any) -> bool:
    """Layers computed without a record (not finite, absent from the other checkpoint): name →
    the notes that say why."""
    return isinstance(values, dict) and all(
        isinstance(k, str) and _notes(v) for k, v in values.items()
    )


def _layers(values: Any) -> bool:
    """Every layer of a checkpoint, unfiltered, as [name, short name] pairs in model order."""
    return isinstance(values, list) and all(
        isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v) for v in values
    )


def valid_payload(payload: Any) -> bool:
    """What an entry's payload must look like to be used."""
    return (
        isinstance(payload, dict)
        and valid_records(payload.get("records"))
        and _notes(payload.get("notes", []))
        and isinstance(payload.get("format", ""), str)
        and _missing(payload.get("missing", {}))
        and _layers(payload.get("layers", []))
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
            or not valid_payload(data.get("payload"))
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


# ----------------------------------------------------------------------------- per layer


def exact_names(names: Sequence[str]) -> str:
    """One regex matching exactly these keys (for the engines' ``include``)."""
    return "^(?:" + "|".join(re.escape(name) for name in names) + ")$"


def _merge(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """One entry from two computations of the same checkpoint (new records win)."""
    records = {r["name"]: r for r in old["records"]}
    records.update({r["name"]: r for r in new["records"]})
    missing = {**old.get("missing", {}), **new.get("missing", {})}
    for name in records:
        missing.pop(name, None)
    notes = {tuple(n): None for n in [*old.get("notes", []), *new.get("notes", [])]}
    merged: dict[str, Any] = {
        "format": new.get("format") or old.get("format", ""),
        "records": list(records.values()),
        "notes": [list(n) for n in notes],
        "missing": missing,
    }
    layers = new.get("layers") or old.get("layers")
    if layers:
        merged["layers"] = layers
    return merged


def _restrict(payload: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The payload for these layers only, in their order, with their notes."""
    records = {r["name"]: r for r in payload["records"]}
    missing = payload.get("missing", {})
    return {
        "format": payload.get("format", ""),
        "records": [records[name] for name in names if name in records],
        "notes": list(payload.get("notes", []))
        + [n for name in names for n in missing.get(name, [])],
    }


def _done(payload: Mapping[str, Any]) -> set[str]:
    return {r["name"] for r in payload["records"]} | set(payload.get("missing", {}))


def cached_layers(
    cache: TrackCache | None,
    kind: str,
    stamps: list[Any] | None,
    key_options: Mapping[str, Any],
    wanted: Callable[[Mapping[str, Any] | None], Sequence[str] | None],
    compute: Callable[[Sequence[str] | None], dict[str, Any]],
) -> tuple[dict[str, Any], bool]:
    """One checkpoint's records of ``kind`` for the layers a run wants, computing only those the
    cache lacks. ``wanted(entry)``: the layers' names given the entry found (None: not known,
    compute under the run's own filters); ``compute(names)``: a payload for those layers (None:
    the run's filters). Returns the payload restricted to the wanted layers and whether nothing
    was computed. The key leaves :data:`FILTER_OPTIONS` out."""
    key = None
    entry: dict[str, Any] | None = None
    if cache is not None and stamps is not None:
        options = {k: v for k, v in key_options.items() if k not in FILTER_OPTIONS}
        key = cache_key(kind, stamps, options)
        entry = cache.get(key)
    names = wanted(entry)
    if entry is not None and names is not None:
        done = _done(entry)
        lacking = [name for name in names if name not in done]
        if not lacking:
            return _restrict(entry, names), True
    else:
        lacking = None if names is None else list(names)
    fresh = compute(lacking)
    merged = fresh if entry is None else _merge(entry, fresh)
    if key is not None and cache is not None:
        cache.put(key, merged)
    if names is None:
        names = wanted(merged)
    if names is None:  # pragma: no cover - a payload that names no layers: as computed
        return fresh, False
    return _restrict(merged, names), False
