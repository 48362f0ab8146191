"""Shared by the render tests: a plain-text console to print tables into."""

from __future__ import annotations

import io
from collections.abc import Callable

from rich.console import Console


def printed(draw: Callable[[Console], None], width: int = 400) -> str:
    """What ``draw(console)`` prints, as plain text (no colour, no styles)."""
    buffer = io.StringIO()
    draw(Console(file=buffer, width=width, highlight=False, soft_wrap=False, color_system=None))
    return buffer.getvalue()
