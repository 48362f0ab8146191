"""Writes of several files (shards and their index) as one transaction, one writer at a time.

A ``Transaction`` stages every new file beside its target (fsynced, watched by one watchdog
process), then commits:

1. hash every staged file and write a journal beside the anchor (the index, or the single
   file): what will be renamed over what, with SHA-256s; fsync it and its folder;
2. keep every original as a hard link (``.NAME.sncli-orig-…``, a copy where links are
   refused) inside the transaction;
3. rename each staged file over its target, fsync the folders;
4. delete the originals' links, then the journal.

A kill at any point leaves either no journal (nothing changed: the watchdog removes the staged
files) or a journal: every sncli command refuses that checkpoint with one line, and
``recover`` rolls the write forward when every staged file is complete and matches its hash,
else back from the kept originals. SIGINT, SIGTERM and SIGHUP arriving during steps 2–4 are
held until the renames are done. One file alone needs no journal: its rename is atomic.

A journal is input like any other file (a downloaded folder may ship one), so ``recover`` acts
on it only when this account's sncli wrote it: the journal carries a random token, and the
commit first creates ``STATE/journals/TOKEN`` (``state_dir()``, a 0700 folder of this user
outside the checkpoint, O_EXCL, fsynced) holding the journal's real path. Before anything is
renamed, linked or deleted, every path the journal names must resolve, with no symlink, to a
file inside the journal's folder; staged files and kept originals must bear the names sncli
gives them beside their target and be plain files with no other hard link (a kept original may
share its target's inode); a roll-forward needs every staged file's size and SHA-256 to match.
A journal failing any check is refused with one line and nothing is touched.

``writer_lock`` is an exclusive ``flock`` on ``.NAME.sncli-lock`` beside the anchor: a second
writer waits (or fails at once), so no write is silently lost.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from sncli.errors import CheckpointError, SncliError, WriteError
from sncli.journal import (
    JOURNAL_SUFFIX,
    JOURNAL_VERSION,
    ORIG_MARKER,
    Journal,
    JournalEntry,
    checked_journal,
    drop_record,
    read_journal,
    record_journal,
    relative_path,
    shown_path,
    untrusted_message,
    untrusted_reason,
)
from sncli.messages import clean_text
from sncli.writer import Watchdog, copy_attributes, fsync_dir, staged_file, temp_path_for

LOCK_SUFFIX = ".sncli-lock"
#: Test hook: "POINT:ACTION", POINT one of journal, linked, after-rename-K (1-based), done;
#: ACTION a signal name (SIGKILL, SIGTERM, SIGINT) sent to this process, or "pause" (create
#: the file named by HOOK_FILE_ENV and wait until it is removed).
HOOK_ENV = "SNCLI_TEST_HOOK"
HOOK_FILE_ENV = "SNCLI_TEST_HOOK_FILE"
_DEFERRED = ("SIGINT", "SIGTERM", "SIGHUP")


def _hidden(anchor: Path, suffix: str) -> Path:
    name = os.fsencode(anchor.name)
    room = 254 - len(suffix)
    return anchor.with_name(f".{os.fsdecode(name[:room])}{suffix}")


def journal_path(anchor: Path) -> Path:
    return _hidden(anchor, JOURNAL_SUFFIX)


def lock_path(anchor: Path) -> Path:
    return _hidden(anchor, LOCK_SUFFIX)


# ------------------------------------------------------------------------------------ locking

_held: dict[str, int] = {}
_held_guard = threading.Lock()


def _holder(path: Path) -> str:
    with suppress(OSError, ValueError):
        pid = int(path.read_text(encoding="ascii").strip() or "0")
        if pid > 0:
            return f" (pid {pid})"
    return ""


@contextmanager
def writer_lock(
    anchor: Path, *, wait: bool = True, on_wait: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold the exclusive writer lock of ``anchor`` (re-entrant within this process).

    Another holder makes this wait (telling ``on_wait`` once) or, with ``wait=False``, fail
    at once with a ``WriteError``. The lock file is removed on release.
    """
    anchor = Path(anchor)
    lock = lock_path(anchor)
    key = os.fsdecode(os.path.abspath(lock))
    with _held_guard:
        reentrant = key in _held
    if reentrant:
        yield
        return
    told = False
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise WriteError(
                f"cannot create the lock file {lock.name!r}: {exc.strerror or exc}; "
                "nothing was changed",
                anchor.parent,
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(lock)
            if not wait:
                os.close(fd)
                raise WriteError(
                    f"another sncli process{holder} is writing this checkpoint; nothing was "
                    "changed (run again without --no-wait to wait for it)",
                    anchor,
                ) from None
            if on_wait is not None and not told:
                on_wait(f"waiting for another sncli process{holder} writing {shown_path(anchor)}")
                told = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        # The previous holder may have removed the file while we waited: lock the live one.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass
    with _held_guard:
        _held[key] = fd
    try:
        yield
    finally:
        with _held_guard:
            _held.pop(key, None)
        with suppress(OSError):
            lock.unlink()
        os.close(fd)


def writer_alive(anchor: Path) -> str | None:
    """ " (pid N)" (or "") when another process holds ``anchor``'s writer lock, else None."""
    lock = lock_path(anchor)
    key = os.fsdecode(os.path.abspath(lock))
    with _held_guard:
        if key in _held:
            return None  # this process: its own journal is not "someone else's write"
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(lock)
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


def find_journals(path: Path) -> list[Path]:
    """Journals of unfinished writes that concern ``path`` (a file, an index or a folder)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    try:
        names = [
            entry.name
            for entry in os.scandir(folder)
            if entry.name.startswith(".") and entry.name.endswith(JOURNAL_SUFFIX)
        ]
    except OSError:
        return []
    if path.is_dir():
        return sorted(folder / n for n in names)
    found = []
    for name in sorted(names):
        journal = folder / name
        if journal == journal_path(path):
            found.append(journal)
            continue
        try:
            targets = {journal.parent / e.target for e in read_journal(journal).entries}
        except CheckpointError:
            found.append(journal)  # a damaged journal in the folder: say so, do not guess
            continue
        if path in targets:
            found.append(journal)
    return found


def refuse_unfinished(path: Path) -> None:
    """Raise a one-line ``CheckpointError`` when a write of ``path`` is unfinished."""
    journals = find_journals(path)
    if not journals:
        return
    journal = journals[0]
    anchor = journal.with_name(journal.name[1 : -len(JOURNAL_SUFFIX)])
    holder = writer_alive(anchor)
    if holder is not None:
        raise CheckpointError(
            f"is being rewritten by another sncli process{holder}; try again when it finishes",
            path,
        )
    try:
        what = read_journal(journal)
        detail = f"{clean_text(what.command, 120)}, started {what.started}, "
        detail += f"{len(what.entries)} files"
    except CheckpointError:
        detail = "journal damaged"
    else:
        why = untrusted_reason(what)
        if why:
            raise CheckpointError(untrusted_message(journal, why), path)
    raise CheckpointError(
        f"an interrupted sncli write left this checkpoint unfinished ({journal.name}: {detail}); "
        f"run `sncli recover {shown_path(anchor)}` to complete or undo it",
        path,
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------ hooks


def _hook(point: str) -> None:
    """The test hook (``HOOK_ENV``): die by a signal or pause at a named point."""
    spec = os.environ.get(HOOK_ENV)
    if not spec:
        return
    where, _, action = spec.rpartition(":")
    if where != point:
        return
    if action == "pause":
        marker = os.environ.get(HOOK_FILE_ENV)
        if not marker:
            return
        Path(marker).touch()
        deadline = time.monotonic() + 60
        while Path(marker).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return
    os.kill(os.getpid(), getattr(signal, action))


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP until the block ends, then deliver them (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous: dict[int, Any] = {}

    def record(signum: int, _frame: object) -> None:
        pending.append(signum)

    for name in _DEFERRED:
        number = getattr(signal, name, None)
        if number is None:
            continue
        with suppress(OSError, ValueError):
            previous[number] = signal.signal(number, record)
    try:
        yield
    finally:
        for number, handler in previous.items():
            with suppress(OSError, ValueError, TypeError):
                signal.signal(number, handler)
        for number in dict.fromkeys(pending):
            handler = previous.get(number)
            if callable(handler):
                handler(number, None)  # SIGINT's default raises KeyboardInterrupt
            elif handler != signal.SIG_IGN:
                # Default action "terminate": unwind (locks released, temps gone), same status
                # a shell shows for a signal death.
                raise SystemExit(128 + number)


# ------------------------------------------------------------------------------------ writing


@dataclass
class StagedFile:
    """A staged (written, fsynced) file and the target it will replace."""

    temp: Path
    target: Path


@dataclass
class Transaction:
    """Stage several files, then replace their targets all together (see the module text)."""

    anchor: Path
    command: str = "sncli"
    staged: list[StagedFile] = field(default_factory=list)
    _watchdog: Watchdog | None = None
    _done: bool = False

    def __post_init__(self) -> None:
        self.anchor = Path(self.anchor)
        self._watchdog = Watchdog()

    @contextmanager
    def stage(self, target: Path) -> Iterator[tuple[BinaryIO, StagedFile]]:
        """Write a new version of ``target``; it replaces the target on ``commit``."""
        with staged_file(Path(target), self._watchdog) as (handle, temp):
            staged = StagedFile(temp, Path(target))
            yield handle, staged
        self.staged.append(staged)

    def abort(self) -> None:
        """Remove every staged file; nothing is changed."""
        for staged in self.staged:
            with suppress(OSError):
                staged.temp.unlink()
        self._close()

    def _close(self) -> None:
        self._done = True
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if not self._done:
            self.abort()

    def commit(self) -> None:
        """Replace every target by its staged file, all or none (a journal guards the renames)."""
        if not self.staged:
            self._close()
            return
        if len(self.staged) == 1:
            self._commit_one(self.staged[0])
            return
        journal = self._write_journal()
        try:
            with _signals_held():
                _hook("journal")
                self._keep_originals(journal)
                _hook("linked")
                renamed = 0
                try:
                    for staged in self.staged:
                        os.replace(staged.temp, staged.target)
                        renamed += 1
                        _hook(f"after-rename-{renamed}")
                except OSError as exc:
                    self._roll_back_now(journal, exc)
                for folder in self._folders():
                    fsync_dir(folder)
                _finish(journal)
                _hook("done")
        finally:
            self._close()

    def _commit_one(self, staged: StagedFile) -> None:
        try:
            os.replace(staged.temp, staged.target)
        except OSError as exc:
            self.abort()
            raise WriteError(
                f"cannot replace file: {exc.strerror or exc}; nothing was changed", staged.target
            ) from exc
        fsync_dir(staged.target.parent)
        self._close()

    def _folders(self) -> list[Path]:
        return list(dict.fromkeys(s.target.parent for s in self.staged))

    def _write_journal(self) -> Journal:
        path = journal_path(self.anchor)
        folder = path.parent
        entries = []
        for staged in self.staged:
            original = None
            if staged.target.exists():
                original = relative_path(_kept_name(staged.target), folder)
            entries.append(
                JournalEntry(
                    relative_path(staged.target, folder),
                    relative_path(staged.temp, folder),
                    _sha256(staged.temp),
                    staged.temp.stat().st_size,
                    original,
                )
            )
        journal = Journal(
            path,
            self.command,
            time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            os.getpid(),
            tuple(entries),
            secrets.token_hex(16),
        )
        body = {
            "sncli_journal": JOURNAL_VERSION,
            "about": "an unfinished sncli write; `sncli recover` completes or undoes it",
            "command": journal.command,
            "started": journal.started,
            "pid": journal.pid,
            "token": journal.token,
            "entries": [entry.__dict__ for entry in entries],
        }
        # The record exists (durably) before the journal does: a journal without one is foreign.
        record = record_journal(Path(os.path.realpath(folder)) / path.name, journal.token)
        with staged_file(path, self._watchdog) as (handle, temp):
            handle.write(json.dumps(body, indent=1).encode("ascii"))
        try:
            os.replace(temp, path)
        except OSError as exc:
            with suppress(OSError):
                temp.unlink()
            with suppress(OSError):
                record.unlink()
            raise WriteError(
                f"cannot write the journal: {exc.strerror or exc}; nothing was changed", path
            ) from exc
        for folder_ in {folder, *self._folders()}:
            fsync_dir(folder_)
        # The journal is durable: the staged files now belong to it, not to the watchdog.
        if self._watchdog is not None:
            for staged in self.staged:
                self._watchdog.release(staged.temp)
        return journal

    def _keep_originals(self, journal: Journal) -> None:
        try:
            for entry in journal.entries:
                if entry.original is not None:
                    _keep(journal.resolve(entry.target), journal.resolve(entry.original))
        except OSError as exc:
            self._roll_back_now(journal, exc)
        for folder in self._folders():
            fsync_dir(folder)

    def _roll_back_now(self, journal: Journal, exc: OSError) -> None:
        """A rename or link failed (an immutable file, a full disk): undo, then raise."""
        try:
            _roll_back(journal)
        except OSError as again:
            raise WriteError(
                f"cannot replace file: {exc.strerror or exc}; undoing failed too "
                f"({again.strerror or again}): run `sncli recover {shown_path(self.anchor)}`",
                getattr(exc, "filename", None) or self.anchor,
            ) from exc
        raise WriteError(
            f"cannot replace file: {exc.strerror or exc}; nothing was changed "
            "(files already replaced were restored)",
            getattr(exc, "filename", None) or self.anchor,
        ) from exc


def _kept_name(target: Path) -> Path:
    name = temp_path_for(target).name
    return target.with_name(name.replace(".sncli-tmp-", ORIG_MARKER))


def _keep(target: Path, kept: Path) -> None:
    """Keep the original of ``target`` as ``kept``: a hard link, or a copy where refused."""
    if kept.exists():
        return
    try:
        os.link(target, kept)
    except OSError:
        with target.open("rb") as source, open(kept, "xb") as copy:
            shutil.copyfileobj(source, copy, 1 << 20)
            copy.flush()
            os.fsync(copy.fileno())
        copy_attributes(target, kept)


def _finish(journal: Journal) -> None:
    """Drop the kept originals, then the journal: the transaction is over."""
    for entry in journal.entries:
        if entry.original is not None:
            with suppress(FileNotFoundError):
                journal.resolve(entry.original).unlink()
        with suppress(FileNotFoundError):
            journal.resolve(entry.staged).unlink()
    for folder in {journal.resolve(e.target).parent for e in journal.entries}:
        fsync_dir(folder)
    journal.path.unlink()
    fsync_dir(journal.path.parent)
    drop_record(journal.token)


def _roll_back(journal: Journal) -> None:
    """Put every original back, remove new files and staged files, then the journal."""
    for entry in journal.entries:
        target = journal.resolve(entry.target)
        staged = journal.resolve(entry.staged)
        if entry.original is not None:
            kept = journal.resolve(entry.original)
            if kept.exists():
                if target.exists() and os.path.samefile(kept, target):
                    kept.unlink()  # never replaced (rename of a hard link onto itself is a no-op)
                else:
                    os.replace(kept, target)
            # No kept original: renames start only after every original is kept, so the
            # target was never replaced.
        elif not staged.exists() and target.exists() and _sha256(target) == entry.sha256:
            target.unlink()  # a new file this write had already put in place
        with suppress(FileNotFoundError):
            staged.unlink()
    for folder in {journal.resolve(e.target).parent for e in journal.entries}:
        fsync_dir(folder)
    journal.path.unlink()
    fsync_dir(journal.path.parent)
    drop_record(journal.token)


# ------------------------------------------------------------------------------------ recovery


@dataclass(frozen=True)
class Recovery:
    """What ``recover`` did with one journal."""

    journal: Path
    command: str
    rolled_forward: bool
    files: tuple[Path, ...]
    #: Why it rolled back (a staged file missing or not matching its hash); "" when forward.
    reason: str = ""


def _forward_problem(journal: Journal) -> str:
    """Why the write cannot be completed, or "" when every staged file is there and verified."""
    for entry in journal.entries:
        staged = journal.resolve(entry.staged)
        target = journal.resolve(entry.target)
        candidate = staged if staged.exists() else target
        if not candidate.exists():
            return f"{shown_path(candidate)} is missing"
        if candidate.stat().st_size != entry.size or _sha256(candidate) != entry.sha256:
            which = "staged file" if candidate == staged else "file"
            return f"{which} {shown_path(candidate)} does not match its hash"
    return ""


def recover_journal(path: Path) -> Recovery:
    """Complete (when every staged file verifies) or undo the write a journal describes.

    The caller holds the writer lock. A journal failing a check (``checked_journal``) is
    refused with a ``CheckpointError`` before anything is touched.
    """
    journal = checked_journal(path)
    problem = _forward_problem(journal)
    files = tuple(journal.resolve(e.target) for e in journal.entries)
    try:
        if not problem:
            for entry in journal.entries:
                staged = journal.resolve(entry.staged)
                if staged.exists():
                    os.replace(staged, journal.resolve(entry.target))
            for folder in {f.parent for f in files}:
                fsync_dir(folder)
            _finish(journal)
        else:
            _roll_back(journal)
    except OSError as exc:
        raise WriteError(
            f"recovery failed: {exc.strerror or exc}; the journal is kept, fix the cause and "
            "run `sncli recover` again",
            path,
        ) from exc
    return Recovery(path, journal.command, not problem, files, problem)


def recover(
    path: str | os.PathLike[str], *, wait: bool = True, on_wait: Callable[[str], None] | None = None
) -> list[Recovery]:
    """Finish every unfinished write of ``path`` (file, index or folder); [] when none."""
    path = Path(path)
    if not path.exists() and not path.is_symlink() and not journal_path(path).exists():
        raise SncliError("no such file or directory", path)
    results = []
    for journal in find_journals(path):
        anchor = journal.with_name(journal.name[1 : -len(JOURNAL_SUFFIX)])
        with writer_lock(anchor, wait=wait, on_wait=on_wait):
            if journal.exists():  # another recover may have finished it while we waited
                results.append(recover_journal(journal))
    return results


@contextlib.contextmanager
def no_hook() -> Iterator[None]:
    """Run without the test hook (recovery inside a test that set it)."""
    saved = os.environ.pop(HOOK_ENV, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[HOOK_ENV] = saved
