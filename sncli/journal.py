"""The journal of a multi-file write (``sncli.transaction``) as data that may be hostile: its
format, the records that prove this account's sncli wrote it (README "Writes"), and the checks
every path and staged file must pass before recovery touches anything.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sncli.errors import CheckpointError, WriteError
from sncli.messages import clean_text
from sncli.writer import fsync_dir

JOURNAL_SUFFIX = ".sncli-journal"
ORIG_MARKER = ".sncli-orig-"
JOURNAL_VERSION = 1
#: Where the records proving "this account's sncli wrote that journal" live (see state_dir).
STATE_ENV = "SNCLI_STATE_DIR"


def shown_path(path: Path) -> str:
    return clean_text(os.fsdecode(path), 300)


# ------------------------------------------------------------------------------------ journal


@dataclass(frozen=True)
class JournalEntry:
    """One file of a transaction, paths relative to the journal's folder."""

    target: str
    staged: str
    sha256: str
    size: int
    original: str | None  # where the original is kept; None when the target is new


@dataclass(frozen=True)
class Journal:
    path: Path
    command: str
    started: str
    pid: int
    entries: tuple[JournalEntry, ...]
    token: str = ""

    def resolve(self, relative: str) -> Path:
        return self.path.parent / relative


def relative_path(path: Path, folder: Path) -> str:
    return os.path.relpath(path, folder)


def _inside(relative: Any, journal: Path) -> str:
    """A journal path, refused when it leaves the journal's folder (a hostile journal)."""
    if not isinstance(relative, str) or not relative or "\0" in relative:
        raise CheckpointError("damaged sncli journal: a path is not a string", journal)
    normal = os.path.normpath(relative)
    if os.path.isabs(normal) or normal == ".." or normal.startswith("../"):
        raise CheckpointError(
            f"refused sncli journal: path {clean_text(relative)!r} leaves its folder; nothing "
            "was changed",
            journal,
        )
    return normal


def read_journal(path: Path) -> Journal:
    """Parse a journal, checking every field (it may be damaged or crafted)."""
    try:
        if path.stat().st_size > 64 * 1024 * 1024:
            raise CheckpointError("damaged sncli journal: implausibly large", path)
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise CheckpointError(f"cannot read sncli journal: {exc.strerror or exc}", path) from exc
    except (ValueError, RecursionError) as exc:
        raise CheckpointError("damaged sncli journal: not valid JSON", path) from exc
    if not isinstance(data, dict) or data.get("sncli_journal") != JOURNAL_VERSION:
        raise CheckpointError("damaged sncli journal: unknown version", path)
    raw = data.get("entries")
    if not isinstance(raw, list) or not raw:
        raise CheckpointError("damaged sncli journal: no entries", path)
    entries = []
    for item in raw:
        if not isinstance(item, dict):
            raise CheckpointError("damaged sncli journal: an entry is not an object", path)
        digest, size = item.get("sha256"), item.get("size")
        if not isinstance(digest, str) or len(digest) != 64 or not isinstance(size, int):
            raise CheckpointError("damaged sncli journal: bad hash or size", path)
        original = item.get("original")
        entries.append(
            JournalEntry(
                _inside(item.get("target"), path),
                _inside(item.get("staged"), path),
                digest,
                size,
                None if original is None else _inside(original, path),
            )
        )
    command = data.get("command")
    started = data.get("started")
    pid = data.get("pid")
    token = data.get("token")
    return Journal(
        path,
        command if isinstance(command, str) else "sncli",
        started if isinstance(started, str) else "",
        pid if isinstance(pid, int) else 0,
        tuple(entries),
        token if isinstance(token, str) and _TOKEN.fullmatch(token) else "",
    )


# ------------------------------------------------------------------------------------ trust

_TOKEN = re.compile(r"[0-9a-f]{32}")
_SIBLING = re.compile(rb"\.(.*)\.sncli-(tmp|orig)-[0-9a-f]{8}", re.DOTALL)


def state_dir() -> Path:
    """This user's sncli state folder: ``$SNCLI_STATE_DIR``, else ``$XDG_STATE_HOME/sncli``,
    else ``~/.local/state/sncli``."""
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV])
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "sncli"


def _records(create: bool) -> Path | None:
    """The records folder, private to this user (None when missing or not private)."""
    folder = state_dir() / "journals"
    if create:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    try:
        info = os.lstat(folder)
    except OSError:
        return None
    private = stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077
    return folder if private else None


def record_journal(journal_real: Path, token: str) -> Path:
    """Create the record that this account's sncli writes ``journal_real`` (before it exists)."""
    try:
        folder = _records(create=True)
        if folder is None:
            raise OSError(0, "the folder is not private to this user (mode 0700, yours)")
        record = folder / token
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(record, flags, 0o600)
        try:
            os.write(fd, os.fsencode(journal_real) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(folder)
    except OSError as exc:
        raise WriteError(
            f"cannot record this write in {shown_path(state_dir())}: {exc.strerror or exc}; "
            f"nothing was changed (set {STATE_ENV} to a private folder of yours)",
            journal_real,
        ) from exc
    return record


def drop_record(token: str) -> None:
    folder = _records(create=False)
    if token and folder is not None:
        with suppress(OSError):
            (folder / token).unlink()


def untrusted_reason(journal: Journal) -> str:
    """Why this account's sncli did not write ``journal``, or "" when it did."""
    folder = _records(create=False)
    if not journal.token or folder is None:
        return "this account's sncli did not write it"
    try:
        fd = os.open(folder / journal.token, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return "this account's sncli did not write it"
    try:
        info = os.fstat(fd)
        recorded = os.read(fd, 8192) if info.st_uid == os.getuid() else b""
    finally:
        os.close(fd)
    if recorded.rstrip(b"\n") != os.fsencode(os.path.realpath(journal.path)):
        return "this account's sncli did not write it here"
    return ""


def untrusted_message(journal: Path | None, why: str) -> str:
    named = "" if journal is None else f" {clean_text(journal.name, 200)}"
    return (
        f"refused sncli journal{named}: {why} (no matching record in "
        f"{shown_path(state_dir() / 'journals')}); nothing was changed. If the folder came from "
        "elsewhere, delete the journal and the .sncli-tmp-/.sncli-orig- files beside it"
    )


def _confined(journal: Journal, relative: str, what: str) -> Path:
    """``relative`` joined to the journal's real folder, refused unless every component is a
    real (non-symlink) name inside it."""
    folder = os.path.realpath(journal.path.parent)
    joined = os.path.join(folder, relative)
    if os.path.realpath(joined) != joined or os.path.commonpath([folder, joined]) != folder:
        raise CheckpointError(
            f"refused sncli journal: {what} {clean_text(relative)!r} goes through a symbolic "
            "link or leaves its folder; nothing was changed",
            journal.path,
        )
    return Path(joined)


def _plain_file(path: Path, journal: Journal, what: str, *, may_share: Path | None = None) -> None:
    """A staged file or kept original must be a regular file with no other hard link (a kept
    original may share the inode of its target, ``may_share``)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CheckpointError(
            f"refused sncli journal: cannot examine {what} {shown_path(path.name)}: "
            f"{exc.strerror or exc}; nothing was changed",
            journal.path,
        ) from exc
    if not stat.S_ISREG(info.st_mode):
        problem = "is not a regular file"
    elif info.st_nlink == 1 or (
        info.st_nlink == 2
        and may_share is not None
        and may_share.exists()
        and os.path.samestat(info, os.lstat(may_share))
    ):
        return
    else:
        problem = f"has {info.st_nlink} hard links"
    raise CheckpointError(
        f"refused sncli journal: {what} {shown_path(path.name)} {problem}; nothing was changed",
        journal.path,
    )


def _sibling_name(path: Path, target: Path, marker: str, journal: Journal, what: str) -> None:
    """Staged files and kept originals carry the names sncli gives them, beside their target."""
    match = _SIBLING.fullmatch(os.fsencode(path.name))
    good = (
        match is not None
        and path.parent == target.parent
        and match.group(2) == marker.encode()
        and os.fsencode(target.name).startswith(match.group(1))
        and match.group(1) != b""
    )
    if not good:
        raise CheckpointError(
            f"refused sncli journal: {what} {shown_path(path.name)} is not a name sncli gives "
            f"beside {shown_path(target.name)}; nothing was changed",
            journal.path,
        )


def checked_journal(path: Path) -> Journal:
    """Read a journal and check it may be acted on (see the module text); one-line
    ``CheckpointError`` otherwise. Reads and hashes nothing but the journal."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise CheckpointError(f"cannot read sncli journal: {exc.strerror or exc}", path) from exc
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        raise CheckpointError(
            "refused sncli journal: not a regular file with one name (a link); nothing was changed",
            path,
        )
    journal = read_journal(path)
    why = untrusted_reason(journal)
    if why:
        raise CheckpointError(untrusted_message(None, why), path)
    targets: set[Path] = set()
    staged_names: set[Path] = set()
    for entry in journal.entries:
        target = _confined(journal, entry.target, "target")
        staged = _confined(journal, entry.staged, "staged file")
        if target in targets or staged in staged_names or entry.size < 0:
            raise CheckpointError(
                "refused sncli journal: a file is named twice; nothing was changed", path
            )
        targets.add(target)
        staged_names.add(staged)
        _sibling_name(staged, target, "tmp", journal, "staged file")
        _plain_file(staged, journal, "staged file")
        if entry.original is not None:
            original = _confined(journal, entry.original, "kept original")
            _sibling_name(original, target, "orig", journal, "kept original")
            _plain_file(original, journal, "kept original", may_share=target)
    if targets & staged_names:
        raise CheckpointError(
            "refused sncli journal: a file is named twice; nothing was changed", path
        )
    # Act through the real folder, the one every path was checked against.
    return dataclasses.replace(journal, path=Path(os.path.realpath(path.parent)) / path.name)
