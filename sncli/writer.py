"""Atomic, crash-safe file writes (what goes into the file is the format modules' business).

Every output is written to a temporary file in the target's own folder, flushed and fsynced,
then moved over the target with ``os.replace``: a reader sees the old file or the new one, never
a mix. A small watchdog process removes the temporary file if this process dies before the
rename, even by SIGKILL, so a kill leaves no stray file behind.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sncli.errors import WriteError

TEMP_MARKER = ".sncli-tmp-"

_WATCHDOG = (
    "import os,sys\n"
    "data=sys.stdin.buffer.read()\n"
    "if b'done' not in data:\n"
    "    try: os.unlink(sys.argv[1])\n"
    "    except OSError: pass\n"
)


def temp_path_for(target: Path) -> Path:
    return target.with_name(f".{target.name}{TEMP_MARKER}{secrets.token_hex(4)}")


def _fsync_dir(folder: Path) -> None:
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


@dataclass
class PendingFile:
    """A fully written, fsynced temporary file waiting to replace its target."""

    temp: Path
    target: Path
    _watchdog: subprocess.Popen[bytes] | None

    def commit(self) -> None:
        """Move the temporary file over the target (atomic) and make the rename durable."""
        try:
            os.replace(self.temp, self.target)
        except OSError as exc:
            self.discard()
            raise WriteError(f"cannot replace file: {exc.strerror or exc}", self.target) from exc
        _fsync_dir(self.target.parent)
        self._release(done=True)

    def discard(self) -> None:
        with suppress(OSError):
            self.temp.unlink()
        self._release(done=True)

    def _release(self, *, done: bool) -> None:
        if self._watchdog is None:
            return
        try:
            if self._watchdog.stdin is not None:
                if done:
                    self._watchdog.stdin.write(b"done")
                self._watchdog.stdin.close()
            self._watchdog.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self._watchdog = None


def _start_watchdog(temp: Path) -> subprocess.Popen[bytes] | None:
    try:
        return subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(temp)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:
        return None


@contextmanager
def staged_write(target: Path) -> Iterator[tuple[BinaryIO, PendingFile]]:
    """Open a temporary file next to ``target`` for writing.

    Yields the open binary file and a ``PendingFile``. On leaving the block the data is flushed
    and fsynced; the caller then calls ``commit()`` (or ``discard()``). Any exception inside the
    block removes the temporary file and is re-raised as ``WriteError`` for OS errors.
    """
    target = Path(target)
    folder = target.parent
    if not folder.is_dir():
        raise WriteError("output folder does not exist", folder)
    temp = temp_path_for(target)
    # The watchdog runs before the file exists, so no kill can leave the file unwatched.
    pending = PendingFile(temp, target, _start_watchdog(temp))
    try:
        handle = open(temp, "xb")  # noqa: SIM115 - closed below on every path
    except OSError as exc:
        pending.discard()
        raise WriteError(f"cannot create a file here: {exc.strerror or exc}", folder) from exc
    try:
        os.chmod(temp, target.stat().st_mode & 0o7777)
    except FileNotFoundError:
        pass
    except OSError as exc:
        handle.close()
        pending.discard()
        raise WriteError(f"cannot set permissions: {exc.strerror or exc}", target) from exc
    try:
        yield handle, pending
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
    except (OSError, RuntimeError) as exc:
        # torch.save reports failed writes as RuntimeError, sometimes without the OS reason.
        written = handle.tell() if not handle.closed else 0
        handle.close()
        pending.discard()
        reason = getattr(exc, "strerror", None) or _describe_write_failure(exc, folder, written)
        raise WriteError(f"write failed: {reason}; nothing was changed", target) from exc
    except BaseException:
        handle.close()
        pending.discard()
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
