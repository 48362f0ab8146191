"""Start-up: ``sncli --help`` and ``sncli CMD --help`` import only what they show.

The commands are listed from ``sncli.cli.commands.COMMANDS`` and each command's module is imported
when it runs; these tests check the modules a real process has loaded (``sys.modules``), and
that the lazy group's help is the help the eagerly built application gives, byte for byte.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from sncli.cli import app
from sncli.cli.app import LazyGroup, load_command
from sncli.cli.commands import COMMANDS

HEAVY = (
    "numpy",
    "torch",
    "scipy",
    "onnx",
    "onnxruntime",
    "dask",
    "distributed",
    "matplotlib",
    "safetensors",
    "asyncio",
)
#: Each command's own engine; another command's --help must not load it.
ENGINES = {
    "diff": "sncli.diff",
    "lipschitz": "sncli.lipschitz",
    "normalize": "sncli.normalize",
    "report": "sncli.report",
    "spectrum": "sncli.spectrum",
    "track": "sncli.tracking",
}


PROBE = """
import json, runpy, sys
sys.argv = ["sncli", *sys.argv[1:]]
try:
    runpy.run_module("sncli", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print("MODULES " + json.dumps([code, sorted(sys.modules)]), file=sys.stderr)
"""


def run_sncli(*args: str) -> tuple[set[str], str]:
    """The modules a whole ``python -m sncli ARGS`` process has loaded when it exits, and what
    it wrote on stdout."""
    env = {**os.environ, "COLUMNS": "100"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert "Usage: sncli" in result.stdout, result.stderr[-2000:]
    line = next(line for line in result.stderr.splitlines() if line.startswith("MODULES "))
    code, modules = json.loads(line.removeprefix("MODULES "))
    assert code in (0, None)
    assert "sncli.cli.app" in modules
    return set(modules), result.stdout


def heavy(modules: set[str]) -> set[str]:
    return {name for name in modules if name.split(".")[0] in HEAVY}


def test_top_level_help_imports_no_command() -> None:
    modules, _ = run_sncli("--help")
    assert not heavy(modules)
    assert not {name for name, _ in COMMANDS.values()} & modules
    assert not {"sncli.analysis", "sncli.checkpoint", *ENGINES.values()} & modules


@pytest.mark.parametrize("command", ["inspect", "report"])
def test_command_help_imports_no_heavy_library(command: str) -> None:
    modules, _ = run_sncli(command, "--help")
    assert COMMANDS[command][0] in modules  # the test sees the command's own module load
    assert not heavy(modules)
    others = {module for name, (module, _) in COMMANDS.items() if name != command}
    assert not others & modules, "another command's module was imported"
    if command == "inspect":
        assert not set(ENGINES.values()) & modules, "another command's engine was imported"


def test_listed_help_is_each_commands_docstring() -> None:
    for name, (module, help_text) in COMMANDS.items():
        command = load_command(name)
        assert command.name == name, module
        assert inspect.cleandoc(command.help or "").split("\n\n")[0] == help_text, name


def eager_app() -> typer.Typer:
    """The application as it was built before lazy loading: every command imported, a plain
    group (same options, same callback)."""
    for name in COMMANDS:
        load_command(name)
    eager = typer.Typer(
        name=app.info.name,
        help=app.info.help,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    eager.registered_callback = app.registered_callback
    # registered in the order the old sncli/cli/__init__ imported the modules (COMMANDS' order)
    order = list(COMMANDS)
    eager.registered_commands = sorted(
        app.registered_commands,
        key=lambda info: order.index(info.name or info.callback.__name__),  # type: ignore[union-attr]
    )
    return eager


def test_top_level_help_from_the_table_is_the_eager_help() -> None:
    """In a fresh process the commands are listed from ``COMMANDS`` (nothing imported): the
    same bytes as the group built from every imported command."""
    _, lazy = run_sncli("--help")
    eager = CliRunner().invoke(eager_app(), ["--help"], env={"COLUMNS": "100"})
    assert eager.exit_code == 0
    assert lazy == eager.output


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        [],
        ["inspec", "x"],
        *[[name, "--help"] for name in COMMANDS],
        *[[name] for name in COMMANDS],
    ],
    ids=lambda args: " ".join(args) or "(none)",
)
def test_lazy_help_is_the_eager_help(args: list[str]) -> None:
    runner = CliRunner()
    lazy = runner.invoke(app, args, env={"COLUMNS": "100"})
    eager = runner.invoke(eager_app(), args, env={"COLUMNS": "100"})
    assert isinstance(typer.main.get_command(app), LazyGroup)
    assert not isinstance(typer.main.get_command(eager_app()), LazyGroup)
    assert lazy.exit_code == eager.exit_code
    assert lazy.output == eager.output
    assert "Usage: sncli" in lazy.output
