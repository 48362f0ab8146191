"""What the renderers share: output formats, consoles, number formatting, JSON, progress bar."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from typing import Any

from rich.console import Console
from rich.markup import escape

from sncli.messages import ProgressCallback, clean_text


class OutputFormat(str, Enum):
    TABLE = "table"
    JSON = "json"
    CSV = "csv"


def stdout_console() -> Console:
    """Rich console for tables; when piped, wide enough not to fold names (not 80 columns)."""
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
    return Console(file=sys.stdout, highlight=False, soft_wrap=False, width=width)


def stderr_console() -> Console:
    return Console(file=sys.stderr, highlight=False, stderr=True)


def fmt_sigma(value: float | None, digits: int = 6) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "--"
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e5:
        return f"{value:.{digits}g}"
    return f"{value:.{digits - 2}e}"


def fmt_shape(shape: tuple[int, ...]) -> str:
    return "×".join(str(d) for d in shape)


def finite_or_none(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return value


def plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def write_json(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data, indent=2, allow_nan=False) + "\n")


def emit(
    output_format: OutputFormat,
    as_dict: Callable[[], dict[str, Any]],
    as_csv: Callable[[], str],
    table: Callable[[Console], None],
) -> None:
    """A report on stdout in the chosen format: JSON (``as_dict``), CSV text (``as_csv``) or a
    Rich table (``table`` prints on the stdout console); only the chosen one is built."""
    if output_format is OutputFormat.JSON:
        write_json(as_dict())
    elif output_format is OutputFormat.CSV:
        sys.stdout.write(as_csv())
    else:
        table(stdout_console())


def reason_group(reason: str) -> str:
    if reason.startswith("spectral-norm"):
        return "spectral-norm buffers"
    if reason.startswith("shares storage"):
        return "tied"
    if reason.startswith("non-finite"):
        return "NON-FINITE"
    return reason.split(" (")[0]


def print_name_decisions(notes: list[str], console: Console) -> None:
    """ "Read from names: …" — each classification decision once, with how often it was made."""
    from collections import Counter

    decisions = Counter(note for note in notes if note)
    if decisions:
        console.print(
            escape(
                "Read from names: "
                + "; ".join(
                    note + (f" (×{count})" if count > 1 else "")
                    for note, count in decisions.items()
                )
            ),
            style="dim",
        )


def print_stacks(summaries: list[Any], console: Console, what: str = "σ") -> None:
    """Mixture-of-experts stacks (``sncli.experts.StackSummary``): the largest expert of each."""
    if not summaries:
        return
    parts = [
        f"{clean_text(s.stack)}: {s.experts} experts, largest {what} = "
        f"{fmt_sigma(s.largest)} (expert {s.largest_expert})"
        for s in summaries[:8]
    ]
    more = f"; and {len(summaries) - 8} more stacks" if len(summaries) > 8 else ""
    console.print(
        escape("Expert stacks (each expert is a layer KEY[e]): " + "; ".join(parts) + more),
        style="dim",
    )


def print_non_finite(skipped: list[Any], console: Console) -> None:
    """The layers skipped for NaN/Inf weights, in red (names from the file escaped)."""
    bad = [s.name for s in skipped if s.reason.startswith("non-finite")]
    if bad:
        console.print(f"[bold red]Non-finite weights[/] in: {escape(', '.join(bad))}")


def _bars() -> Any:
    """Rich's transient progress lines on stderr: stage, bar, done/total, time, current layer."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[layer]}"),
        console=stderr_console(),
        transient=True,
    )


@contextmanager
def progress_bar(enabled: bool, description: str = "σ") -> Iterator[ProgressCallback | None]:
    """A transient progress bar on stderr; yields None when disabled or not a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    with _bars() as bar:
        task = bar.add_task(description, total=None, layer="")

        def update(done: int, total: int, name: str) -> None:
            bar.update(task, completed=done, total=total, layer=name)

        yield update


@contextmanager
def stage_bars(enabled: bool) -> Iterator[Callable[[str], ProgressCallback | None] | None]:
    """Progress bars on stderr, one line per stage of a long run (``sncli report``): the
    yielded ``start(stage)`` adds a line named ``stage`` and returns its callback; the lines of
    finished stages stay until the run ends (transient). None when disabled or not a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    with _bars() as bar:
        tasks: list[Any] = []

        def start(stage: str) -> ProgressCallback:
            for earlier in tasks:  # a stage that reported no total still ends as done
                bar.stop_task(earlier)
            task = bar.add_task(stage, total=None, layer="")
            tasks.append(task)

            def update(done: int, total: int, name: str) -> None:
                bar.update(task, completed=done, total=total, layer=name)

            return update

        yield start
