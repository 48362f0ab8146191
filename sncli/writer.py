"""Atomic, crash-safe file writes (what goes into the file is the format modules' business).

Every output is written to a temporary file in the target's own folder, flushed and fsynced,
then moved over the target with ``os.replace``: a reader sees the old file or the new one, never
a mix. One small watchdog process per write (``Watchdog``, shared by every file of a
transaction) removes the temporary files if this process dies before they are committed, even
by SIGKILL or a kill of the whole process group, so a kill leaves no stray file behind.

A write of several files (shards and their index) is a ``sncli.transaction.Transaction``; a
single file goes through ``staged_write``.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sncli.errors import WriteError

TEMP_MARKER = ".sncli-tmp-"

#: The watchdog: reads "+<hex path>" (watch), "-<hex path>" (committed, leave it) and "done";
#: at end of input without "done" (its parent died) it removes every file still watched.
_WATCHDOG = (
    "import os,sys\n"
    "live={}\n"
    "for line in sys.stdin.buffer:\n"
    "    line=line.strip()\n"
    "    if line==b'done':\n"
    "        live.clear(); break\n"
    "    try: path=bytes.fromhex(line[1:].decode())\n"
    "    except ValueError: continue\n"
    "    if line[:1]==b'+': live[path]=None\n"
    "    else: live.pop(path,None)\n"
    "for path in live:\n"
    "    try: os.unlink(path)\n"
    "    except OSError: pass\n"
)


def temp_path_for(target: Path) -> Path:
    """A hidden temporary name beside ``target``; long names are shortened to fit NAME_MAX."""
    suffix = f"{TEMP_MARKER}{secrets.token_hex(4)}"
    name = os.fsencode(target.name)
    room = _name_max(target.parent) - len(suffix) - 1
    if len(name) > room:
        name = name[: max(room, 1)]
    return target.with_name(f".{os.fsdecode(name)}{suffix}")


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def fsync_dir(folder: Path) -> None:
    """Make renames and unlinks in ``folder`` durable (best effort: some file systems refuse)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Watchdog:
    """One helper process that removes watched files if this process dies before releasing them.

    Started once per write (not once per file: a 1,100-shard write is one process). Every
    method is safe after the watchdog died or was closed: a broken or closed pipe is ignored.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        try:
            self._process: subprocess.Popen[bytes] | None = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _WATCHDOG],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a kill of our process group does not reach it
            )
        except OSError:  # out of processes or file descriptors: write unwatched
            self._process = None

    def _send(self, line: bytes) -> None:
        with self._lock:
            process = self._process
            if process is None or process.stdin is None:
                return
            try:
                process.stdin.write(line + b"\n")
                process.stdin.flush()
            except (OSError, ValueError):  # the watchdog died, or its pipe is closed
                self._process = None

    def watch(self, path: Path) -> None:
        self._send(b"+" + os.fsencode(path).hex().encode())

    def release(self, path: Path) -> None:
        self._send(b"-" + os.fsencode(path).hex().encode())

    def close(self) -> None:
        """Stop watching (everything still watched is left alone) and wait for the process."""
        self._send(b"done")
        with self._lock:
            process, self._process = self._process, None
        if process is None:
            return
        with suppress(OSError, ValueError):
            if process.stdin is not None:
                process.stdin.close()
        with suppress(subprocess.TimeoutExpired, OSError):
            process.wait(timeout=5)


def copy_attributes(source: Path, temp: Path, *, owner: bool = True) -> None:
    """Give ``temp`` the mode of ``source`` and, where permitted, its xattrs and (``owner``)
    its owner and group."""
    try:
        info = source.stat()
    except FileNotFoundError:
        return
    try:
        os.chmod(temp, info.st_mode & 0o7777)
    except OSError as exc:
        raise WriteError(f"cannot set permissions: {exc.strerror or exc}", source) from exc
    if owner and hasattr(os, "chown") and (info.st_uid, info.st_gid) != _owner(temp):
        with suppress(OSError):
            os.chown(temp, info.st_uid, info.st_gid)
        with suppress(OSError):  # chown clears set-id bits: restore the mode
            os.chmod(temp, info.st_mode & 0o7777)
    if hasattr(os, "listxattr"):
        with suppress(OSError):
            for name in os.listxattr(source):
                with suppress(OSError):
                    os.setxattr(temp, name, os.getxattr(source, name))


def _owner(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_uid, info.st_gid


@dataclass
class PendingFile:
    """A fully written, fsynced temporary file waiting to replace its target."""

    temp: Path
    target: Path
    _watchdog: Watchdog | None

    def commit(self) -> None:
        """Move the temporary file over the target (atomic) and make the rename durable."""
        try:
            os.replace(self.temp, self.target)
        except OSError as exc:
            self.discard()
            raise WriteError(
                f"cannot replace file: {exc.strerror or exc}; nothing was changed", self.target
            ) from exc
        fsync_dir(self.target.parent)
        self._close()

    def discard(self) -> None:
        with suppress(OSError):
            self.temp.unlink()
        self._close()

    def _close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None


@contextmanager
def staged_file(target: Path, watchdog: Watchdog | None) -> Iterator[tuple[BinaryIO, Path]]:
    """Open a watched temporary file next to ``target``; yield it and its path.

    On leaving the block the data is flushed and fsynced. Any exception inside the block
    removes the temporary file and is re-raised (as ``WriteError`` for OS errors).
    """
    target = Path(target)
    folder = target.parent
    if not folder.is_dir():
        raise WriteError("output folder does not exist", folder)
    temp = temp_path_for(target)
    # Watched before the file exists, so no kill can leave the file unwatched.
    if watchdog is not None:
        watchdog.watch(temp)
    try:
        handle = open(temp, "xb")  # noqa: SIM115 - closed below on every path
    except OSError as exc:
        raise WriteError(f"cannot create a file here: {exc.strerror or exc}", folder) from exc
    try:
        copy_attributes(target, temp)  # a replaced file keeps its mode, owner, xattrs
        yield handle, temp
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
    except (OSError, RuntimeError) as exc:
        # torch.save reports failed writes as RuntimeError, sometimes without the OS reason.
        written = handle.tell() if not handle.closed else 0
        handle.close()
        with suppress(OSError):
            temp.unlink()
        if isinstance(exc, WriteError):
            raise
        reason = getattr(exc, "strerror", None) or _describe_write_failure(exc, folder, written)
        raise WriteError(f"write failed: {reason}; nothing was changed", target) from exc
    except BaseException:
        handle.close()
        with suppress(OSError):
            temp.unlink()
        raise


@contextmanager
def staged_write(target: Path) -> Iterator[tuple[BinaryIO, PendingFile]]:
    """Open a temporary file next to ``target`` for writing (one file, its own watchdog).

    Yields the open binary file and a ``PendingFile``. On leaving the block the data is flushed
    and fsynced; the caller then calls ``commit()`` (or ``discard()``). Any exception inside the
    block removes the temporary file and is re-raised as ``WriteError`` for OS errors.
    """
    target = Path(target)
    if not target.parent.is_dir():
        raise WriteError("output folder does not exist", target.parent)
    watchdog = Watchdog()
    pending = PendingFile(target, target, watchdog)
    try:
        with staged_file(target, watchdog) as (handle, temp):
            pending.temp = temp
            yield handle, pending
    except BaseException:
        watchdog.close()
        raise


def _describe_write_failure(exc: BaseException, folder: Path, written: int) -> str:
    """Name the likely cause when a library hides the OS error (disk full, size limit)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and written >= soft - 4096:
        return f"file-size limit reached ({soft} bytes)"
    try:
        stats = os.statvfs(folder)
        if stats.f_bavail * stats.f_frsize < 1024 * 1024:
            return "disk full"
    except OSError:
        pass
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
