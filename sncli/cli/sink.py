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
from collections.abc import Callable, Collection, Iterable
from typing import Any, TypeVar

import typer

from sncli.errors import EXIT_ERROR, SncliError
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
    sys.stderr.write(f"{line}\n")


def handle_errors(command: F) -> F:
    """Turn expected errors into one line on stderr and an exit code; no traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
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
