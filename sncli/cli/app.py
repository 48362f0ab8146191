"""The Typer application and its top-level ``--version`` option; commands register on ``app``."""

from __future__ import annotations

import importlib
from typing import Annotated, Any

import click
import typer
from typer.core import TyperCommand, TyperGroup

from sncli._version import __version__
from sncli.cli.commands import COMMANDS, HELP, VERSION_HELP


def _hide_flag_types() -> None:
    """typer shows ``<bool>`` beside every on/off flag in ``--help``; a flag takes no value, so
    show no type for flags (values of other options keep theirs)."""
    from typer import core

    option = getattr(core, "TyperOption", None)
    original = getattr(option, "display_type_rich", None)
    if option is None or original is None:  # another typer: leave its help as it is
        return

    def display_type_rich(self: typer.core.TyperOption, ctx: object) -> str | None:
        if getattr(self, "is_flag", False) and getattr(self, "metavar", None) is None:
            return None
        return original(self, ctx)

    option.display_type_rich = display_type_rich


_hide_flag_types()


class LazyCommand(TyperCommand):
    """A command not imported yet: its name and one-line help, enough for the group's help."""


class LazyGroup(TyperGroup):
    """The ``sncli`` group: every command listed from ``COMMANDS``, each one's module imported
    when the command is resolved to run (``sncli CMD ...`` or ``sncli CMD --help``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        loaded = dict(self.commands)
        self.commands = {
            name: loaded.get(name) or LazyCommand(name=name, help=help_text)
            for name, (_, help_text) in COMMANDS.items()
        }
        self.commands.update(loaded)  # a command registered outside COMMANDS stays, last

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if name is not None and isinstance(command, LazyCommand):
            command = self.commands[name] = load_command(name, self.rich_markup_mode)
        return name, command, rest


def load_command(name: str, rich_markup_mode: Any = None) -> click.Command:
    """Import the module of command ``name`` (it registers on ``app``) and build its command."""
    from typer.main import get_command_from_info

    importlib.import_module(COMMANDS[name][0])
    for info in app.registered_commands:
        registered = info.name or (info.callback.__name__ if info.callback else "")
        if registered.lower().replace("_", "-") == name:
            return get_command_from_info(
                info,
                pretty_exceptions_short=app.pretty_exceptions_short,
                rich_markup_mode=rich_markup_mode,
            )
    raise LookupError(f"{COMMANDS[name][0]} registers no command {name!r}")


app = typer.Typer(
    name="sncli",
    cls=LazyGroup,  # each command's module is imported when the command runs
    help=HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sncli {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help=VERSION_HELP),
    ] = False,
) -> None:
    """Spectral analysis of checkpoints."""
