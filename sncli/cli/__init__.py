"""The ``sncli`` command line: parse options, call the library, render. No numerics here.

``app`` is the Typer application (``sncli.cli.app``); each command lives in its own module
(``inspect``, ``lipschitz``, ``normalize``) and registers on it when imported. Shared options are
in ``options``, everything written to stderr goes through ``sink``.
"""

from __future__ import annotations

# Importing the command modules registers the commands, in this order.
from sncli.cli import diff, inspect, lipschitz, normalize, report  # noqa: F401
from sncli.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app(prog_name="sncli")
