"""What ``sncli recover`` (and ``normalize`` finishing an interrupted write) says: one line per
journal it handled."""

from __future__ import annotations

import os

from sncli.messages import clean_text
from sncli.transaction import Recovery


def recovery_line(recovery: Recovery) -> str:
    """One line: rolled forward or back, how many files, and why it went back."""
    where = clean_text(os.fsdecode(recovery.journal.parent), 300)
    files = len(recovery.files)
    command = clean_text(recovery.command, 120)
    if recovery.rolled_forward:
        return (
            f"{where}: completed the interrupted write ({command}): {files} files now hold "
            "the new version"
        )
    return (
        f"{where}: undid the interrupted write ({command}): {files} files restored to the "
        f"original, because {clean_text(recovery.reason, 300)}"
    )


def nothing_line(path: str) -> str:
    return f"{clean_text(path, 300)}: nothing to recover (no unfinished sncli write)"
