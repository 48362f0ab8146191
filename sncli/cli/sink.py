"""Everything the CLI writes to stderr: one message sink, and the wrapper that turns errors into
one line and an exit code.

Lines are ``sncli: <text>`` for notes and security warnings (whose text says "Warning: …"),
``sncli: warning: <text>`` for warnings and ``sncli: error: <text>`` for errors. With ``--quiet``
the sink hides NOTE-level messages only; warnings, security warnings and errors are always shown.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable, Collection, Iterable
from contextlib import suppress
from typing import Any, TypeVar

import typer

from sncli.errors import EXIT_ERROR, SncliError, printable_path
from sncli.messages import Level, Message, level_of

F = TypeVar("F", bound=Callable[..., Any])

DEBUG_ENV = "SNCLI_DEBUG"

_PREFIX = {Level.NOTE: "sncli: ", Level.WARNING: "sncli: warning: ", Level.SECURITY: "sncli: "}


class Sink:
    """One line on stderr per message; ``quiet`` hides the NOTE-level ones."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    def show(self, message: str) -> None:
        level = level_of(message)
        if self.quiet and level is Level.NOTE:
            return
        _write(_PREFIX[level] + message)

    def notes(self, messages: Iterable[str], *, besides: Collection[str] = ()) -> None:
        """Show each of ``messages`` not in ``besides`` (those already shown), at its level."""
        for message in messages:
            if message not in besides:
                self.show(message)

    def note(self, text: str) -> None:
        self.show(Message(text, Level.NOTE))

    def warning(self, text: str) -> None:
        self.show(Message(text, Level.WARNING))

    def error(self, text: str) -> None:
        _write(f"sncli: error: {text}")


def _write(line: str) -> None:
    with suppress(OSError, ValueError, AttributeError):  # stderr closed: nowhere to say it
        sys.stderr.write(f"{line}\n")


#: Exit status when stdout's reader went away (128 + SIGPIPE, what a shell reports).
EXIT_BROKEN_PIPE = 141


def silence_stdout() -> None:
    """Point stdout at /dev/null (a closed or broken stdout), so exit's flush cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        if sys.stdout is not None:
            os.dup2(devnull, sys.stdout.fileno())
        else:
            sys.stdout = open(devnull, "w")  # noqa: SIM115 - lives until exit
    except (OSError, ValueError):
        pass


_SIGBUS_HANDLER: Any = None


def catch_sigbus(path: str) -> None:
    """Turn SIGBUS (a memory-mapped file truncated or changed while being read: torch.load's
    mmap) into one line naming ``path`` and exit 1, instead of a silent death (exit -7).

    The handler is a C callback (ctypes): a Python-level ``signal.signal`` handler would run
    only after the faulting instruction, which is retried forever. Staged temporary files are
    removed by the write's watchdog once this process is gone.
    """
    global _SIGBUS_HANDLER
    import ctypes
    import signal

    message = (
        f"sncli: error: {printable_path(path)}: the file was truncated or changed while sncli "
        "was reading it (SIGBUS); nothing was written\n"
    ).encode("utf-8", "replace")

    fired: list[bool] = []

    def on_sigbus(_signum: int) -> None:
        # Several threads can fault on the same pages (torch's intra-op threads); the first one
        # reports (os.write releases the GIL), the others wait for its _exit.
        if fired:
            while True:
                time.sleep(1.0)
        fired.append(True)
        os.write(2, message)
        os._exit(EXIT_ERROR)

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        handler_type = ctypes.CFUNCTYPE(None, ctypes.c_int)
        handler = handler_type(on_sigbus)
        libc.signal.argtypes = [ctypes.c_int, handler_type]
        libc.signal.restype = ctypes.c_void_p
        libc.signal(signal.SIGBUS, handler)
        _SIGBUS_HANDLER = handler  # keep the callback alive
    except (OSError, AttributeError, TypeError):
        pass


def handle_errors(command: F) -> F:
    """Turn expected errors into one line on stderr and an exit code; no traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if isinstance(kwargs.get("checkpoint"), str):
            catch_sigbus(kwargs["checkpoint"])
        try:
            return command(*args, **kwargs)
        except SncliError as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            Sink().error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            Sink().error("interrupted")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            # Whoever read stdout stopped (`| head`): end quietly, as Unix tools do. Anything
            # written to disk was complete before the report was printed.
            silence_stdout()
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except (typer.Exit, typer.Abort, typer.BadParameter):
            raise
        except Exception as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            text = str(exc).strip().splitlines()
            detail = text[0] if text else ""
            Sink().error(
                f"unexpected {type(exc).__name__}: {detail} "
                f"(set {DEBUG_ENV}=1 for a traceback; please report it)"
            )
            raise typer.Exit(EXIT_ERROR) from None

    return wrapper  # type: ignore[return-value]
