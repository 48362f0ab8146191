"""The project's exception hierarchy and the exit code each error maps to."""

from __future__ import annotations

from pathlib import Path

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_BOUND_EXCEEDED = 3
EXIT_NO_LAYERS = 4


class SncliError(Exception):
    """An expected failure with a one-line message for the user."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        self.message = message
        shown = None if self.path is None else printable_path(self.path)
        super().__init__(f"{shown}: {message}" if shown else message)

    def __reduce__(self) -> tuple[type[SncliError], tuple[str, str | None]]:
        # Pickled as (message, path), not the formatted text: an error raised on a Dask worker
        # (sncli.run.dask) reaches the client as the same one-line error.
        return type(self), (self.message, self.path)


def printable_path(path: str | Path) -> str:
    """A path made safe for one line on a terminal: control characters (escapes, newlines) and
    undecodable bytes (non-UTF-8 names) written as Python escapes, nothing dropped."""
    text = str(path)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


class CheckpointError(SncliError):
    """The file is missing, unreadable, malformed or not a checkpoint."""


class UnsafePickleError(CheckpointError):
    """A pickle needs globals outside PyTorch's weights-only allowlist."""


class NoLayersMatchedError(SncliError):
    """Filters or the checkpoint's contents left nothing to analyse."""

    exit_code = EXIT_NO_LAYERS


class NumericalError(SncliError):
    """A weight cannot give a meaningful number (NaN, Inf, zero where it matters)."""


class BoundExceededError(SncliError):
    """A ``--fail-above`` gate did not pass: the bound is above the threshold, or is no bound
    (``gate()`` on the reports raises it)."""

    exit_code = EXIT_BOUND_EXCEEDED


class WriteError(SncliError):
    """Writing an output failed; the original files are untouched."""


class InputShapeError(SncliError):
    """A graph bound needs static input shapes the model does not fix (``--input-shape``)."""

    exit_code = EXIT_USAGE
