"""Messages that the engines hand to the user interface, each with a level.

The CLI decides what to show by level (``--quiet`` hides notes, never security warnings), not by
matching text. A ``Message`` is a ``str``, so lists of notes stay lists of strings.
"""

from __future__ import annotations

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
