"""Messages that the engines hand to the user interface, each with a level.

The CLI decides what to show by level (``--quiet`` hides notes, never security warnings), not by
matching text. A ``Message`` is a ``str``, so lists of notes stay lists of strings.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum


class Level(IntEnum):
    NOTE = 0  # what sncli did or assumed (wrapper key used, prefix omitted, device fallback)
    WARNING = 1  # a result may not mean what the user expects
    SECURITY = 2  # the file may be malicious; shown even with --quiet


class Message(str):
    """Text with a level; plain ``str`` notes are ``Level.NOTE``."""

    level: Level

    def __new__(cls, text: str, level: Level = Level.NOTE) -> Message:
        message = super().__new__(cls, text)
        message.level = level
        return message


def level_of(message: str) -> Level:
    return message.level if isinstance(message, Message) else Level.NOTE


#: Longest text taken from a file into an error message or note.
MAX_SHOWN = 120


def clean_text(text: str, limit: int = MAX_SHOWN) -> str:
    """Text from a file made safe for a one-line message: escapes, no control characters."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit + 1])
    return shown if len(text) <= limit and len(shown) <= limit else shown[:limit] + "…"


#: Progress hand-off from an engine to the UI: (done, total, what is being worked on).
ProgressCallback = Callable[[int, int, str], None]
