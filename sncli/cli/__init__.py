"""The ``sncli`` command line: parse options, call the library, render. No numerics here.

``app`` is the Typer application (``sncli.cli.app``); each command lives in its own module
(``inspect``, ``lipschitz``, ``normalize``, ``recover``, ``spectrum``, ...) and registers on it when
imported, which happens only when that command runs (``commands.LazyGroup``): ``sncli --help``
loads no engine. ``sncli --help``, ``-h``, bare ``sncli`` and ``--version`` do not even import
typer: ``fast_help`` writes typer's output itself (issue #26: typer + rich take 0.15 s to import).
Shared options are in ``options``, everything written to stderr goes through ``sink``.

``app`` is imported on first use (``from sncli.cli import app``), not with the package.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sncli.cli.app import app

__all__ = ["app", "main"]


class _Package(types.ModuleType):
    """``sncli.cli`` whose ``app`` attribute is always the Typer application: imported on
    first access, and kept when the import system sets the submodule ``sncli.cli.app`` on its
    package (as ``from sncli.cli.app import ...`` does before anyone asked for ``app``)."""

    def __getattr__(self, name: str) -> Any:
        if name != "app":
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        from sncli.cli.app import app

        self.__dict__["app"] = app
        return app

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "app" and isinstance(value, types.ModuleType):
            value = value.app  # the submodule finished importing: keep its Typer object
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def main() -> None:
    """Console-script entry point."""
    from sncli.cli import fast_help

    if sys.stdout is not None:
        code = fast_help.run(sys.argv[1:])
        if code is not None:
            if code:
                raise SystemExit(code)
            return

    from sncli.cli.sink import silence_stdout

    if sys.stdout is None:  # started with stdout closed (`>&-`)
        silence_stdout()
    for stream in (sys.stdout, sys.stderr):
        # A file name that is not UTF-8 (surrogate escapes) is shown escaped, never an error.
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    from sncli.cli.app import app

    app(prog_name="sncli")
