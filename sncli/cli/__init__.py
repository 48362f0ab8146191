"""The ``sncli`` command line: parse options, call the library, render. No numerics here.

``app`` is the Typer application (``sncli.cli.app``); each command lives in its own module
(``inspect``, ``lipschitz``, ``normalize``, ``recover``, ``spectrum``, ...) and registers on it when
imported, which happens only when that command runs (``commands.LazyGroup``): ``sncli --help``
loads no engine.
Shared options are in ``options``, everything written to stderr goes through ``sink``.
"""

from __future__ import annotations

from sncli.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    import sys

    from sncli.cli.sink import silence_stdout

    if sys.stdout is None:  # started with stdout closed (`>&-`)
        silence_stdout()
    for stream in (sys.stdout, sys.stderr):
        # A file name that is not UTF-8 (surrogate escapes) is shown escaped, never an error.
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    app(prog_name="sncli")
