"""``sncli.cli.fast_help``: the top-level help written without typer is typer's, byte for byte.

typer's own rendering is the reference: in fresh subprocesses (typer and rich read the
environment when imported), at every width the fast path takes, plain and on a terminal (rich's
escape codes), whole ``sncli`` processes on a pipe and on a pseudo-terminal, and the conditions
under which the fast path must step aside (then typer renders, whatever the environment says).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import random
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from sncli.cli import fast_help

if not fast_help.renderers_match():  # then sncli never takes the fast path (test_startup.py)
    pytest.skip(
        f"fast_help is checked against {fast_help.RENDERED_WITH}; other releases are installed",
        allow_module_level=True,
    )

ROOT = Path(__file__).resolve().parents[2]

#: In-process sweep: for each (width, terminal) the fast rendering and typer's, as JSON.
SWEEP = """
import contextlib, io, json, os, sys
import typer.rich_utils as rich_utils
from sncli.cli import fast_help
from sncli.cli.app import app

def typer_help(width, terminal):
    os.environ["COLUMNS"] = str(width)
    rich_utils.FORCE_TERMINAL = True if terminal else None  # what a terminal on stdout gives
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            app(prog_name="sncli", args=["--help"])
        except SystemExit as exc:
            assert exc.code in (0, None)
    return out.getvalue()

exec(sys.argv[2])  # the help texts as a test edits them
cases = json.loads(sys.argv[1])
bad = []
for width, terminal in cases:
    fast = fast_help.render(width, terminal)
    reference = typer_help(width, terminal)
    if fast is None or fast + "\\n" != reference:
        bad.append([width, terminal, reference, fast])
print(json.dumps(bad))
"""

#: The real typer path for ``sncli ARGS`` (what ``main`` does without the fast path).
TYPER = "import sys; from sncli.cli.app import app; app(prog_name='sncli')"
#: ``main`` with the fast path; reports on stderr whether typer, click or rich was imported.
FAST = """
import sys
from sncli.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
loaded = sorted({m.split(".")[0] for m in sys.modules} & {"typer", "click", "rich"})
print("LOADED " + ",".join(loaded), file=sys.stderr)
sys.exit(code)
"""


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what makes rich/typer render differently (so the
    tests run the same in CI, where GITHUB_ACTIONS or FORCE_COLOR may be set), plus ``extra``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in (*fast_help.UNSAFE_ENV, "COLUMNS", "LINES", "COLORTERM")
        and not name.startswith(fast_help.UNSAFE_ENV_PREFIXES)
    }
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["TERM"] = "xterm-256color"
    env["PYTHONIOENCODING"] = "utf-8"
    return {**env, **extra}


def sweep(cases: list[tuple[int, bool]], edit: str = "", **env: str) -> list[list[object]]:
    """The (width, terminal) cases where fast_help's rendering is not typer's, after running
    ``edit`` (Python) in the sweeping process."""
    result = subprocess.run(
        [sys.executable, "-c", SWEEP, json.dumps(cases), edit],
        capture_output=True,
        text=True,
        env=clean_env(**env),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_every_width_plain_is_typers() -> None:
    cases = [(width, False) for width in range(fast_help.MIN_WIDTH, fast_help.MAX_WIDTH + 1)]
    bad = sweep(cases)
    assert not bad, f"{len(bad)} widths differ, first {bad[0][0]}:\n{bad[0][2]}\n{bad[0][3]}"


@pytest.mark.parametrize(
    "env",
    [
        {"TERM": "xterm-256color"},  # rich's 256-colour system
        {"TERM": "xterm"},  # standard
        {"TERM": "xterm-256color", "COLORTERM": "truecolor"},  # truecolor
    ],
    ids=lambda env: "+".join(env.values()),
)
def test_terminal_widths_are_typers(env: dict[str, str]) -> None:
    """Every width to 250 (the layouts beyond differ only in longer lines), then every 7th; the
    other colour systems every 7th (named colours: the same codes in each)."""
    step = 1 if env == {"TERM": "xterm-256color"} else 7
    widths = [*range(fast_help.MIN_WIDTH, 251, step), *range(251, fast_help.MAX_WIDTH + 1, 7)]
    bad = sweep([(width, True) for width in widths], **env)
    assert not bad, f"{len(bad)} widths differ, first {bad[0][0]}:\n{bad[0][2]!r}\n{bad[0][3]!r}"


#: Help texts edited the way later changes might: one paragraph, three with a line break,
#: a longer command help and a new command name longer than the others.
EDITS = {
    "one paragraph": "fast_help.HELP = app.info.help = 'Spectral analysis: σ of every layer.'",
    "three paragraphs": (
        "fast_help.HELP = app.info.help = 'First: σ.\\n\\nSecond line one\\nline two, '"
        "'a-b.\\n\\nThird, with weights_only=True and a rather long word: '"
        "'supercalifragilisticexpialidocious_and_more_of_it_to_fold.'"
    ),
    "commands": (
        "from sncli.cli.commands import COMMANDS\n"
        "COMMANDS['inspect'] = ('sncli.cli.inspect', 'Short.')\n"
        "COMMANDS['a-much-longer-name'] = ('sncli.cli.inspect', 'Σ ∏ ← · α, and ' * 9)"
    ),
}


@pytest.mark.parametrize("edit", EDITS, ids=list(EDITS))
def test_edited_help_texts_are_typers(edit: str) -> None:
    """The renderer follows the tables, not this help: edited texts still give typer's bytes."""
    cases = [(width, terminal) for width in range(40, 131, 3) for terminal in (False, True)]
    bad = sweep(cases, EDITS[edit])
    assert not bad, f"{len(bad)} cases differ, first {bad[0][:2]}:\n{bad[0][2]}\n{bad[0][3]}"


def test_terminal_rendering_is_styled() -> None:
    """The terminal sweep compares escape codes: there are some (bold cyan names, dim rest)."""
    text = fast_help.render(80, terminal=True)
    assert text is not None
    assert "\x1b[1;36mlipschitz\x1b[0m" in text and "\x1b[2mReads safetensors" in text
    assert fast_help.render(80, terminal=False) == re.sub("\x1b\\[[0-9;]*m", "", text)


def run_both(args: list[str], **env: str) -> tuple[subprocess.CompletedProcess[bytes], ...]:
    """``sncli ARGS`` through ``main`` (fast path where it applies) and through typer."""
    environ = clean_env(**env)
    fast = subprocess.run(
        [sys.executable, "-c", FAST, *args], capture_output=True, env=environ, timeout=600
    )
    slow = subprocess.run(
        [sys.executable, "-c", TYPER, *args], capture_output=True, env=environ, timeout=600
    )
    return fast, slow


@pytest.mark.parametrize(
    ("args", "columns"),
    [
        (["--help"], None),
        (["--help"], "40"),
        (["--help"], "57"),
        (["--help"], "123"),
        (["--help"], "200"),
        (["-h"], "80"),
        ([], None),
        ([], "66"),
        (["--version"], None),
    ],
)
def test_whole_process_on_a_pipe_is_typers(args: list[str], columns: str | None) -> None:
    fast, slow = run_both(args, **({"COLUMNS": columns} if columns else {}))
    assert fast.stderr.decode().endswith("LOADED \n"), fast.stderr[-2000:]  # fast path taken
    assert fast.stdout == slow.stdout
    assert fast.returncode == slow.returncode == (2 if not args else 0)
    assert slow.stderr == b""


def run_on_pty(code: str, args: list[str], env: dict[str, str]) -> tuple[bytes, bytes, int]:
    """Run ``python -c CODE ARGS`` with stdin and stdout on a 100×40 pseudo-terminal; what it
    wrote there (the tty turns \\n into \\r\\n), its stderr and exit status."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    with subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=slave,
        stdout=slave,
        stderr=subprocess.PIPE,
        env=env,
    ) as process:
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        stderr = process.stderr.read() if process.stderr else b""
        code_ = process.wait(timeout=600)
    os.close(master)
    return b"".join(chunks), stderr, code_


@pytest.mark.parametrize(
    "env",
    [{}, {"COLORTERM": "truecolor"}, {"TERM": "xterm"}, {"COLUMNS": "77"}],
    ids=lambda env: "+".join(f"{k}={v}" for k, v in env.items()) or "xterm-256color",
)
@pytest.mark.parametrize("args", [["--help"], []], ids=["--help", "(none)"])
def test_whole_process_on_a_terminal_is_typers(env: dict[str, str], args: list[str]) -> None:
    environ = clean_env(**env)
    fast, fast_err, fast_code = run_on_pty(FAST, args, environ)
    slow, slow_err, slow_code = run_on_pty(TYPER, args, environ)
    assert fast_err.decode().endswith("LOADED \n"), fast_err[-2000:]
    assert b"\x1b[1;36m" in slow  # typer saw a terminal: the comparison covers escape codes
    usage = re.sub("\x1b\\[[0-9;]*m", "", slow.decode().split("\r\n")[1])
    assert len(usage) == int(env.get("COLUMNS", "100"))  # the pty's width (or COLUMNS)
    assert fast == slow
    assert fast_code == slow_code and slow_err == b""


@pytest.mark.parametrize(
    "env",
    [
        {"FORCE_COLOR": "1"},
        {"NO_COLOR": "1", "FORCE_COLOR": "1"},
        {"TERMINAL_WIDTH": "70"},
        {"COLUMNS": "30"},
        {"TYPER_USE_RICH": "0"},
    ],
    ids=lambda env: "+".join(f"{k}={v}" for k, v in env.items()),
)
def test_fallback_whole_process_is_typers(env: dict[str, str]) -> None:
    """Where the fast path steps aside, ``sncli --help`` is typer's (styled, narrow, plain)."""
    fast, slow = run_both(["--help"], **env)
    assert "typer" in fast.stderr.decode().rsplit("LOADED ", 1)[1]  # typer rendered
    assert fast.stdout == slow.stdout
    assert fast.returncode == slow.returncode == 0


def test_plan_declines_what_it_does_not_reproduce() -> None:
    assert fast_help.plan(["--help"], {"COLUMNS": "80"}) is not None
    assert fast_help.plan(["-h"], {"COLUMNS": "80"}) is not None
    assert fast_help.plan([], {"COLUMNS": "80"}) is not None
    for name in (*fast_help.UNSAFE_ENV, "_TYPER_COMPLETE_ARGS", "TYPER_USE_RICH"):
        assert fast_help.plan(["--help"], {"COLUMNS": "80", name: ""}) is None, name
    for columns in ("39", "501", "0", "٨٠"):  # too narrow, too wide, Arabic-Indic digits
        assert fast_help.plan(["--help"], {"COLUMNS": columns}) is None, columns
    for args in (["--help", "inspect"], ["inspect", "--help"], ["--verbose"], ["-h", "-h"]):
        assert fast_help.plan(args, {"COLUMNS": "80"}) is None, args


def test_help_texts_are_drawn_as_typer_draws_them() -> None:
    """The texts render_lines checks: a markup bracket, an option-like word or a wide
    character makes it decline (typer would style or measure them otherwise)."""
    assert fast_help._single_cell_text("Report σ of every layer's weight: W ← target·W/σ(W).")
    for text in ("see [bold]", "use --fast", "-x", "a <b>", "tab\there", "wide 表", ":smile:"):
        assert not fast_help._single_cell_text(text), text


def test_narrow_code_points_are_one_cell_in_rich() -> None:
    from rich.cells import cell_len

    accepted = [chr(code) for code in range(0x2400) if fast_help._narrow(chr(code))]
    assert len(accepted) > 1000
    assert [char for char in accepted if cell_len(char) != 1 or not char.isprintable()] == []


def test_wrap_is_richs() -> None:
    """``_wrap`` against rich's ``Text.wrap`` on random words of narrow characters, spaces
    included (runs of them, leading and trailing), long words folded, widths 1 to 60."""
    from rich.console import Console
    from rich.text import Text

    console = Console(width=200)
    rng = random.Random(26)
    alphabet = "abcdefσ∏←·α-_.,:()'" + "   "
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 90)))
        width = rng.randrange(1, 61)
        for pad in (False, True):
            lines = Text(text).wrap(console, width, justify="left" if pad else "default")
            assert fast_help._wrap(text, width, pad=pad) == [line.plain for line in lines], (
                text,
                width,
            )


def test_closed_pipe_ends_quietly_with_status_1() -> None:
    """``sncli --help | head -1``: as rich does (Console.on_broken_pipe), no traceback, exit 1."""
    process = subprocess.Popen(
        [sys.executable, "-c", FAST, "--help"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(COLUMNS="80"),
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # before the child writes: its write meets a closed pipe
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=600) == 1
    assert stderr == "LOADED \n"  # the fast path, and nothing else on stderr
