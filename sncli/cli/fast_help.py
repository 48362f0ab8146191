"""``sncli --help``, ``-h``, bare ``sncli`` and ``sncli --version`` without typer, click or rich.

Importing typer + click + rich takes the whole 0.15 s budget of issue #26 (0.15-0.17 s with the
interpreter's start, on a quiet machine), so for exactly these argument lists ``sncli.cli.main``
writes what typer would have written, rendered here from ``commands.py``'s tables. The layout
mirrors what typer 0.x's ``rich_utils.rich_format_help`` asks rich to draw: the usage in a bold
``Padding``, the group's help (first paragraph plain, the rest dim), then an "Options" and a
"Commands" panel of borderless tables. Line breaks follow rich's ``_wrap.divide_line``, column
widths rich's ``Table._calculate_column_widths`` for these two tables, and on a terminal every
styled run is its own ``ESC[..m…ESC[0m`` as rich's ``Console._render_buffer`` writes it.

``plan`` returns None, and typer renders, wherever its output could differ from this rendering:
an environment variable that rich, typer or click read (colour forcing, ``NO_COLOR``,
``TERMINAL_WIDTH``, completion, ...), a width outside ``MIN_WIDTH..MAX_WIDTH``, a non-UTF-8 stdout
(rich draws ASCII boxes), Windows, Jupyter/IDLE, or a help text with markup, highlights or
characters that are not one cell wide, or typer and rich releases other than the ones this
rendering was checked against (``RENDERED_WITH``). tests/cli/test_fast_help.py checks byte
equality with typer at every width in that range, plain and on a terminal.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from sncli.cli.commands import COMMANDS, HELP, VERSION_HELP

if TYPE_CHECKING:
    from collections.abc import Mapping

#: Widths (terminal columns) rendered here; tests/cli/test_fast_help.py compares each with typer.
#: Below 34 rich narrows more than the options' help column (not modelled: ``_options_table``
#: declines); 40 leaves a margin. Above 500, typer renders.
MIN_WIDTH = 40
MAX_WIDTH = 500

USAGE = "Usage: sncli [OPTIONS] COMMAND [ARGS]..."
#: The top-level options as ``sncli --help`` lists them: long form, short form, help.
#: "--help"'s text is click's; app.py defines "--version".
OPTIONS = (("--version", "", VERSION_HELP), ("--help", "-h", "Show this message and exit."))

#: Environment variables that change what rich, typer or click print for ``--help``: typer's
#: rich_utils (TERMINAL_WIDTH, FORCE_COLOR, PY_COLORS, GITHUB_ACTIONS, _TYPER_*), rich's Console
#: (NO_COLOR, TTY_COMPATIBLE, TTY_INTERACTIVE, JUPYTER_*, DATABRICKS_RUNTIME_VERSION), click's
#: shell completion (_SNCLI_COMPLETE). Any of them set: typer renders.
UNSAFE_ENV = (
    "NO_COLOR",
    "FORCE_COLOR",
    "PY_COLORS",
    "GITHUB_ACTIONS",
    "TTY_COMPATIBLE",
    "TTY_INTERACTIVE",
    "TERMINAL_WIDTH",
    "JUPYTER_COLUMNS",
    "JUPYTER_LINES",
    "DATABRICKS_RUNTIME_VERSION",
    "_SNCLI_COMPLETE",
)
UNSAFE_ENV_PREFIXES = ("_TYPER", "TYPER_")

# rich's styles for these parts, as SGR parameters: typer's STYLE_USAGE_COMMAND "bold", its
# theme's "usage" "yellow", STYLE_HELPTEXT "dim", the panels' border "dim", the "option" style
# "bold cyan", "switch" "bold green", STYLE_COMMANDS_TABLE_FIRST_COLUMN "bold cyan". Named
# colours are standard colours: the same codes in rich's standard, 256 and truecolor systems.
BOLD, USAGE_STYLE, DIM, OPTION_STYLE, SWITCH_STYLE = "1", "1;33", "2", "1;36", "1;32"

_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")

Segment = tuple[str, str]  # (text, SGR parameters; "" unstyled)
Line = list[Segment]


#: Code points drawn here, each one cell wide in rich's table (tests/cli/test_fast_help.py
#: checks every one against ``rich.cells.cell_len``): ASCII, Latin-1 to the spacing modifiers,
#: Greek, Cyrillic letters, general punctuation, super/subscripts and currency, letterlike
#: symbols, number forms, arrows and mathematical operators.
NARROW = (
    (0x20, 0x7E),
    (0xA1, 0xAC),
    (0xAE, 0x2FF),
    (0x370, 0x377),
    (0x37A, 0x37F),
    (0x384, 0x38A),
    (0x38C, 0x38C),
    (0x38E, 0x3A1),
    (0x3A3, 0x3FF),
    (0x400, 0x482),
    (0x48A, 0x4FF),
    (0x2010, 0x2027),
    (0x2030, 0x205E),
    (0x2070, 0x2071),
    (0x2074, 0x208E),
    (0x2090, 0x209C),
    (0x20A0, 0x20C0),
    (0x2100, 0x218B),
    (0x2190, 0x22FF),
)


def _narrow(char: str) -> bool:
    code = ord(char)
    return any(low <= code <= high for low, high in NARROW)


def _single_cell_text(text: str) -> bool:
    """True when rich would show ``text`` unchanged, one cell per character, with no highlight:
    only ``NARROW`` characters (no tab, no other whitespace than spaces), no markup ([, \\), no
    emoji code (:name:), no option-like word (typer's OptionHighlighter: "-x" after a non-word
    character, "<...>", "Usage: ")."""
    if any(mark in text for mark in ("[", "\\", "<", "Usage: ")):
        return False
    if not all(" " <= char <= "~" or _narrow(char) for char in set(text)):
        return False
    index = text.find("-")
    while index >= 0:  # r"(^|\W)-\w+": typer's switch/option style
        if index == 0 or not (text[index - 1].isalnum() or text[index - 1] == "_"):
            return False
        index = text.find("-", index + 1)
    index = text.find(":")
    while index >= 0:
        if ":" in text[index + 1 :].split(" ", 1)[0]:  # a possible :emoji: code
            return False
        index = text.find(":", index + 1)
    return True


def _wrap(text: str, width: int, *, pad: bool = False) -> list[str]:
    """The lines rich's ``Text.wrap`` makes of one line of ``text`` at ``width`` cells (every
    character one cell, whitespace only spaces): words are runs of spaces, non-spaces, spaces
    (``_wrap.words``); a word goes on the next line when its non-space part does not fit
    (``divide_line``); a word longer than a line is folded; then each line loses trailing spaces
    beyond ``width`` (``rstrip_end``) and is cropped to it. ``pad``: justify "left" (spaces up to
    ``width``), as table columns do."""
    words: list[tuple[int, str]] = []
    position, size = 0, len(text)
    while position < size:
        start = position
        while position < size and text[position] == " ":
            position += 1
        if position == size:  # only spaces left: no word (re_word needs a non-space)
            break
        while position < size and text[position] != " ":
            position += 1
        while position < size and text[position] == " ":
            position += 1
        words.append((start, text[start:position]))
    breaks: list[int] = []
    offset = 0
    for start, word in words:
        length = len(word.rstrip(" "))
        if width - offset >= length:
            offset += len(word)
        elif length > width:  # fold the word over several lines
            chunks = [word[index : index + width] for index in range(0, len(word), width)]
            for number, chunk in enumerate(chunks):
                if start:
                    breaks.append(start)
                if number == len(chunks) - 1:
                    offset = len(chunk)
                else:
                    start += len(chunk)
        elif offset and start:
            breaks.append(start)
            offset = len(word)
    lines = [text[a:b] for a, b in zip([0, *breaks], [*breaks, len(text)], strict=True)]
    wrapped = []
    for line in lines:
        if len(line) > width:
            excess = len(line) - width
            trailing = len(line) - len(line.rstrip(" "))
            line = line[: len(line) - min(trailing, excess)]
        line = line[:width]
        wrapped.append(line.ljust(width) if pad else line)
    return wrapped


def _styled(text: str, runs: list[tuple[int, int, str]], start: int) -> Line:
    """The segments of ``text`` (which starts at ``start`` in the whole string) cut at the
    boundaries of ``runs`` (half-open ranges of the whole string and their style)."""
    segments: Line = []
    end = start + len(text)
    for run_start, run_end, style in runs:
        left, right = max(run_start, start), min(run_end, end)
        if left < right:
            segments.append((text[left - start : right - start], style))
    return segments


def _panel(title: str, body: list[Line], width: int) -> list[Line]:
    """A rich ``Panel`` (rounded box, dim border, title left, padding (0, 1)) around ``body``,
    lines of ``width - 4`` cells."""
    rule = "─" * (width - 4 - len(title) - 2)
    top: Line = [("╭─", DIM), (f" {title} ", DIM)]
    if rule:
        top.append((rule, DIM))
    top.append(("─╮", DIM))
    lines = [top]
    lines += [[("│", DIM), (" ", ""), *line, (" ", ""), ("│", DIM)] for line in body]
    lines.append([("╰" + "─" * (width - 2) + "╯", DIM)])
    return lines


def _options_table(inner: int) -> list[Line] | None:
    """The "Options" table at ``inner`` cells: six columns (long, short, negative long,
    negative short, type, help) padded (0, 1) without edge padding. The help column is a
    ``Columns`` (rich measures it as wide as the table), so rich's collapse takes the excess
    from it alone while it stays the widest; None when it would not (typer renders)."""
    long_width = max(len(long) for long, _, _ in OPTIONS)
    short_width = max(len(short) for _, short, _ in OPTIONS)
    fixed = [long_width + 1, short_width + 2, 2, 2, 2]  # content + padding (first: right only)
    help_width = inner - sum(fixed)
    if help_width - max(fixed) < 0 or help_width < 2:
        return None
    lines: list[Line] = []
    for long, short, text in OPTIONS:
        help_lines = _wrap(text, help_width - 1, pad=True)
        for number, help_line in enumerate(help_lines):
            line: Line = []
            if number == 0 and long:  # "--name": "-" as "option", "-name" as "switch"+"option"
                line += [("-", OPTION_STYLE), (long[1:], OPTION_STYLE)]
            line.append((" " * (fixed[0] - (len(long) if number == 0 else 0)), ""))
            line.append((" ", ""))
            if number == 0 and short:
                line.append((short, SWITCH_STYLE))
            line.append((" " * (short_width - (len(short) if number == 0 else 0)), ""))
            line.append((" " * (1 + sum(fixed[2:]) + 1), ""))
            line.append((help_line, ""))
            lines.append(line)
    return lines


def _commands_table(inner: int) -> list[Line] | None:
    """The "Commands" table at ``inner`` cells: the names' column (bold cyan, as wide as the
    longest name, plus one cell of padding) and the help column taking the rest (ratio 10)."""
    name_width = max(len(name) for name in COMMANDS)
    help_width = inner - name_width - 1
    if help_width < 2:
        return None
    lines: list[Line] = []
    for name, (_, text) in COMMANDS.items():
        for number, help_line in enumerate(_wrap(text, help_width - 1, pad=True)):
            if number == 0:
                line: Line = [(name.ljust(name_width), OPTION_STYLE), (" ", OPTION_STYLE)]
            else:
                line = [(" " * (name_width + 1), OPTION_STYLE)]
            lines.append([*line, (" ", ""), (help_line, "")])
    return lines


def render_lines(width: int) -> list[Line] | None:
    """The help as typer + rich draw it ``width`` cells wide, as lines of styled segments; None
    where this module does not reproduce it."""
    texts = [*HELP.split("\n"), *(text for _, text in COMMANDS.values()), *(o[2] for o in OPTIONS)]
    if not all(_single_cell_text(text) for text in texts) or not MIN_WIDTH <= width <= MAX_WIDTH:
        return None
    first, *rest = HELP.split("\n\n")
    if "\n" in first:  # typer joins the first paragraph's lines; not modelled
        return None
    if any(line != line.strip() for line in HELP.split("\n")) or not all([first, *rest]):
        return None  # typer's cleandoc and strip would change it
    for long, short, _ in OPTIONS:  # highlighted as "--name" and "-x" are (_options_table)
        name = long[2:] if long.startswith("--") else ""
        if long and not (name.isascii() and name.isalnum()):
            return None
        if short and not (len(short) == 2 and short[0] == "-" and short[1] in _ALNUM):
            return None
    lines: list[Line] = []
    # usage: Padding(highlighted usage, 1) printed bold; "Usage: " in the theme's yellow
    blank_bold: Line = [(" " * width, BOLD)]
    lines.append(blank_bold)
    runs = [(0, 7, USAGE_STYLE), (7, len(USAGE), BOLD)]
    offset = 0
    for text in _wrap(USAGE, width - 2):
        start = USAGE.index(text, offset)
        offset = start + len(text)
        line = [(" ", BOLD), *_styled(text, runs, start)]
        if len(text) < width - 2:
            line.append((" " * (width - 2 - len(text)), BOLD))
        lines.append([*line, (" ", BOLD)])
    lines.append(blank_bold)
    # the group's help: Padding(Align(first paragraph, "", rest in dim), (0, 1, 1, 1))
    body: list[tuple[str, str]] = [(line, "") for line in _wrap(first, width - 2)]
    if rest:  # typer: an empty Text, then the other paragraphs as one dim Text
        body.append(("", ""))
        for paragraph_line in "\n\n".join(rest).split("\n"):
            body += [(line, DIM) for line in _wrap(paragraph_line, width - 2)]
    for text, style in body:
        line = [(" ", "")]
        if text:
            line.append((text, style))
        lines.append([*line, (" " * (width - 1 - len(text)), "")])
    lines.append([(" " * width, "")])
    options = _options_table(width - 4)
    commands = _commands_table(width - 4)
    if options is None or commands is None:
        return None
    lines += _panel("Options", options, width)
    lines += _panel("Commands", commands, width)
    return lines


def render(width: int, terminal: bool) -> str | None:
    """What typer's ``rich_format_help`` writes for the group (without click's final empty
    line); on a ``terminal`` with rich's escape codes. None where typer must render."""
    lines = render_lines(width)
    if lines is None:
        return None
    out = []
    for line in lines:
        for text, style in line:
            out.append(f"\x1b[{style}m{text}\x1b[0m" if terminal and style and text else text)
        out.append("\n")
    return "".join(out)


def console_width(environ: Mapping[str, str]) -> int | None:
    """The width rich's ``Console`` takes: COLUMNS when all digits, else the first of stdin,
    stdout, stderr that is a terminal, else 80 (None: COLUMNS of non-ASCII digits)."""
    columns = environ.get("COLUMNS")
    if columns is not None and columns.isdigit():
        return int(columns) if columns.isascii() else None
    width = None
    for stream, default in ((sys.__stdin__, 0), (sys.__stdout__, 1), (sys.__stderr__, 2)):
        try:
            descriptor = stream.fileno()  # type: ignore[union-attr]
        except Exception:
            descriptor = default
        try:
            width = os.get_terminal_size(descriptor).columns
        except (AttributeError, ValueError, OSError):
            continue
        break
    return width or 80


def _is_terminal(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return False if isatty is None else bool(isatty())
    except ValueError:
        return False


#: The typer and rich releases this rendering was checked against (tests/cli/test_fast_help.py):
#: with others installed, typer renders (``renderers_match``).
RENDERED_WITH = (("typer", "0.29.3"), ("rich", "15.0.0"))


def renderers_match() -> bool:
    """Whether the installed typer and rich are :data:`RENDERED_WITH`'s releases, by their
    ``.dist-info`` folders beside the packages (found without importing them: ~1 ms)."""
    from importlib.util import find_spec
    from pathlib import Path

    for name, version in RENDERED_WITH:
        spec = find_spec(name)
        if spec is None or spec.origin is None:
            return False
        site = Path(spec.origin).parent.parent
        if not (site / f"{name}-{version}.dist-info").is_dir():
            return False
    return True


def plan(args: list[str], environ: Mapping[str, str]) -> tuple[str, int] | None:
    """What to write on stdout and the exit code for ``sncli ARGS``, or None when typer must
    run: ``--help``/``-h`` (help, then click's empty line; 0), no argument (help; click's
    no_args_is_help exit 2), ``--version`` (0)."""
    if args not in (["--help"], ["-h"], [], ["--version"]) or sys.platform == "win32":
        return None
    if any(name in environ for name in UNSAFE_ENV) or any(
        name.startswith(UNSAFE_ENV_PREFIXES) for name in environ
    ):
        return None
    if args == ["--version"]:
        from sncli._version import __version__

        return f"sncli {__version__}\n", 0
    if not renderers_match():  # another typer or rich may draw the help differently
        return None
    stdout = sys.stdout
    encoding = (getattr(stdout, "encoding", "utf-8") or "utf-8").lower()
    if not encoding.startswith("utf"):  # rich would draw ASCII boxes
        return None
    import builtins

    if hasattr(builtins, "get_ipython"):  # rich's Jupyter detection
        return None
    if str(getattr(sys.stdin, "__module__", "")).startswith("idlelib"):  # rich's IDLE fudge
        return None
    terminal = _is_terminal(stdout)
    if terminal and environ.get("TERM", "").lower() in ("dumb", "unknown"):
        return None
    width = console_width(environ)
    text = None if width is None else render(width, terminal)
    if text is None:
        return None
    return (text + "\n", 0) if args else (text, 2)


def run(args: list[str]) -> int | None:
    """Write ``sncli ARGS``'s output when ``plan`` knows it and return the exit code; None when
    typer must run (nothing written). A closed pipe (``sncli --help | head -1``) ends quietly
    with status 1, as rich does (typer writes in several pieces, so it sees the pipe closed
    more often than one write does)."""
    planned = plan(args, os.environ)
    if planned is None:
        return None
    text, code = planned
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # as rich's Console.on_broken_pipe: quiet, exit status 1
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return code
