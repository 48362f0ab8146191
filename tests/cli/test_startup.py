"""Start-up: ``sncli --help`` and ``sncli CMD --help`` import only what they show.

The top-level help (``--help``, ``-h``, no argument) and ``--version`` import no typer, click or
rich at all (``sncli.cli.fast_help``; tests/cli/test_fast_help.py checks its output is typer's).

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

from sncli._version import __version__
from sncli.cli import app, fast_help
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


def run_sncli(*args: str, **env: str) -> tuple[set[str], str]:
    """The modules a whole ``python -m sncli ARGS`` process has loaded when it exits, and what
    it wrote on stdout. The environment is this one without what makes the fast help step
    aside (CI's GITHUB_ACTIONS, FORCE_COLOR, ...), COLUMNS=100, then ``env``."""
    environ = {
        name: value
        for name, value in os.environ.items()
        if name not in fast_help.UNSAFE_ENV and not name.startswith(fast_help.UNSAFE_ENV_PREFIXES)
    }
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        env={**environ, "COLUMNS": "100", **env},
        timeout=600,
    )
    assert "Usage: sncli" in result.stdout, result.stderr[-2000:]
    line = next(line for line in result.stderr.splitlines() if line.startswith("MODULES "))
    code, modules = json.loads(line.removeprefix("MODULES "))
    assert code in ((0, None) if args else (2,))
    return set(modules), result.stdout


def heavy(modules: set[str]) -> set[str]:
    return {name for name in modules if name.split(".")[0] in HEAVY}


#: The fast path renders only for the typer/rich releases it was checked against.
RENDERERS = pytest.mark.skipif(
    not fast_help.renderers_match(),
    reason=f"fast_help is checked against {fast_help.RENDERED_WITH}; typer renders for others",
)


def test_other_typer_or_rich_releases_are_left_to_typer(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a typer or rich release the rendering was not checked against, typer renders."""
    matched = fast_help.renderers_match()
    help_plan = fast_help.plan(["--help"], {"COLUMNS": "80"})
    assert (help_plan is not None) == matched
    monkeypatch.setattr(fast_help, "RENDERED_WITH", (("typer", "0.0.1"), ("rich", "15.0.0")))
    assert not fast_help.renderers_match()
    assert fast_help.plan(["--help"], {"COLUMNS": "80"}) is None
    assert fast_help.plan(["--version"], {}) is not None  # no rendering involved


@RENDERERS
@pytest.mark.parametrize("args", [["--help"], ["-h"], []], ids=["--help", "-h", "(none)"])
def test_top_level_help_imports_no_typer(args: list[str]) -> None:
    """``fast_help`` writes the top-level help: not even typer, click or rich is imported."""
    modules, _ = run_sncli(*args)
    assert not heavy(modules)
    assert not {name for name in modules if name.split(".")[0] in ("typer", "click", "rich")}
    assert "sncli.cli.app" not in modules
    assert not {name for name, _ in COMMANDS.values()} & modules


def test_top_level_help_through_typer_imports_no_command() -> None:
    """Where the fast help steps aside (here TERMINAL_WIDTH), typer renders the lazy group:
    still no command module, no engine."""
    modules, _ = run_sncli("--help", TERMINAL_WIDTH="100")
    assert "sncli.cli.app" in modules
    assert not heavy(modules)
    assert not {name for name, _ in COMMANDS.values()} & modules
    assert not {"sncli.analysis", "sncli.checkpoint", *ENGINES.values()} & modules


def test_version_imports_no_typer() -> None:
    code = (
        "import sys\nsys.argv = ['sncli', '--version']\nfrom sncli.cli import main\nmain()\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'typer', 'click', 'rich'}))"
    )
    environ = {
        name: value
        for name, value in os.environ.items()
        if name not in fast_help.UNSAFE_ENV and not name.startswith(fast_help.UNSAFE_ENV_PREFIXES)
    }
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == f"sncli {__version__}\n[]\n"


@pytest.mark.parametrize(
    "first", ["import sncli.cli.inspect", "import sncli.cli.app", "from sncli.cli import app"]
)
def test_package_app_is_the_typer_application(first: str) -> None:
    """``sncli.cli`` imports ``app`` on first use; whichever import comes first (a command
    module imports the submodule ``sncli.cli.app``), ``from sncli.cli import app`` is the
    Typer application, as when the package imported it eagerly."""
    code = (
        f"{first}\nimport typer\nfrom sncli.cli import app\nimport sncli.cli\n"
        "assert isinstance(app, typer.Typer), type(app)\n"
        "assert sncli.cli.app is app and sys.modules['sncli.cli.app'].app is app\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", "import sys\n" + code], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("command", ["inspect", "report"])
def test_command_help_imports_no_heavy_library(command: str) -> None:
    modules, _ = run_sncli(command, "--help")
    assert "sncli.cli.app" in modules
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


def test_top_level_help_from_the_table_is_the_eager_help(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a fresh process the help is written from ``COMMANDS`` (``fast_help``, nothing
    imported): the same bytes as the group built from every imported command. Both without
    what forces colour or a width (run_sncli's environment; typer read it when imported)."""
    from typer import rich_utils

    monkeypatch.setattr(rich_utils, "FORCE_TERMINAL", None)
    monkeypatch.setattr(rich_utils, "MAX_WIDTH", None)
    _, lazy = run_sncli("--help")
    unset: dict[str, str | None] = {name: None for name in fast_help.UNSAFE_ENV}
    eager = CliRunner().invoke(eager_app(), ["--help"], env={**unset, "COLUMNS": "100"})
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
