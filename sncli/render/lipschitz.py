"""Tables, JSON and CSV for ``sncli lipschitz``."""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sncli.lipschitz import LipschitzReport
from sncli.messages import clean_text
from sncli.render.common import finite_or_none, fmt_sigma, reason_group


def lipschitz_to_dict(report: LipschitzReport) -> dict[str, Any]:
    """JSON for ``lipschitz`` (a stable contract; see README)."""
    shares = report.shares()
    running = report.running_log10()
    log = report.best_log10
    valid = report.valid_bound
    chain = report.chain
    mlp: dict[str, Any] = {}
    if report.options.mlp:
        mlp["mlp"] = (
            {
                "bound": finite_or_none(chain.value),
                "method": chain.method,
                "slopes": list(chain.slopes),
                "product_log10": finite_or_none(report.log10_bound),
            }
            if chain is not None
            else {"bound": None, "note": report.chain_note}
        )
    return {
        "checkpoint": report.checkpoint,
        "method": "certified" if report.options.certified else report.options.method.value,
        "conv": report.options.conv.value,
        "log10_bound": finite_or_none(log) if valid else None,
        "bound": finite_or_none(report.best_bound) if valid else None,
        "certified": report.certified,
        "lower": None,
        "architecture": report.architecture,
        "valid_architecture": report.valid_architecture,
        "statement": report.statement(),
        "assumptions": report.assumptions,
        "caveats": report.caveats,
        "layers": [
            {
                "name": f.name,
                "kind": f.kind,
                "sigma": f.sigma,
                "sigma_lower": finite_or_none(f.sigma_lower),
                "sigma_upper": finite_or_none(f.sigma_upper),
                "certified": f.certified,
                "source": f.source,
                "reshape_sigma": finite_or_none(f.reshape_sigma),
                "log10_sigma": finite_or_none(f.log10),
                "share": finite_or_none(share),
                "running_log10": finite_or_none(run),
                **({"note": f.note} if f.note else {}),
            }
            for f, share, run in zip(report.factors, shares, running, strict=True)
        ],
        "outputs": [],
        **mlp,
        "excluded": [{"name": s.name, "reason": s.reason} for s in report.excluded],
    }


LIPSCHITZ_CSV_COLUMNS = (
    "name",
    "kind",
    "sigma",
    "sigma_lower",
    "sigma_upper",
    "certified",
    "reshape_sigma",
    "share",
    "running_log10",
    "source",
)


def lipschitz_to_csv(report: LipschitzReport) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, LIPSCHITZ_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for f, share, run in zip(report.factors, report.shares(), report.running_log10(), strict=True):
        writer.writerow(
            {
                "name": f.name,
                "kind": f.kind,
                "sigma": repr(f.sigma),
                "sigma_lower": "" if f.sigma_lower is None else repr(f.sigma_lower),
                "sigma_upper": "" if f.sigma_upper is None else repr(f.sigma_upper),
                "certified": str(f.certified).lower(),
                "reshape_sigma": "" if f.reshape_sigma is None else repr(f.reshape_sigma),
                "share": "" if share is None else repr(share),
                "running_log10": repr(run),
                "source": f.source,
            }
        )
    return buffer.getvalue()


def fmt_bound(log10: float) -> str:
    if log10 == -math.inf:
        return "0"
    if abs(log10) < 5:
        return fmt_sigma(10.0**log10)
    mantissa = 10.0 ** (log10 - math.floor(log10))
    return f"{mantissa:.4f}e{math.floor(log10):+d}"


def print_lipschitz_table(report: LipschitzReport, console: Console) -> None:
    has_reshape = any(f.reshape_sigma is not None for f in report.factors)
    table = Table(title=f"Lipschitz bound: {escape(report.checkpoint)}", title_justify="left")
    table.add_column("layer", overflow="fold")
    table.add_column("kind")
    if has_reshape:
        table.add_column("σ reshape", justify="right")
    table.add_column("σ factor", justify="right", style="bold")
    table.add_column("interval [lower, upper]", justify="right")
    table.add_column("cert.", justify="center")
    table.add_column("share of log L", justify="right")
    table.add_column("running product", justify="right")
    for f, share, run in zip(report.factors, report.shares(), report.running_log10(), strict=True):
        interval = f"[{fmt_sigma(f.sigma_lower)}, {fmt_sigma(f.sigma_upper)}]"
        row = [escape(clean_text(f.short_name)), f.kind]
        if has_reshape:
            row.append(fmt_sigma(f.reshape_sigma) if f.reshape_sigma is not None else "")
        row += [
            fmt_sigma(f.sigma),
            interval,
            "✓" if f.certified else "✗",
            "--" if share is None else f"{100 * share:.1f}%",
            fmt_bound(run),
        ]
        table.add_row(*row)
    console.print(table)
    log = report.log10_bound
    if report.chain is not None and report.valid_bound:
        console.print(
            f"product of layer σ = {fmt_bound(log)}; ECLipsE-Fast over the chain (--mlp, "
            f"activations slope-restricted to [0, 1]) = {fmt_bound(report.best_log10)}"
        )
        log = report.best_log10
    log_text = "-inf" if log == -math.inf else f"{log:.4f}"
    if not report.valid_architecture:
        console.print(
            f"[bold]product of layer σ = {fmt_bound(log)}[/]  (log10 = {log_text}) — "
            "diagnostic only, NOT a Lipschitz bound for this architecture"
            + ("; --assume sequential refused" if report.refused else "")
        )
    elif report.partial:
        console.print(
            f"[bold]product over the selected layers = {fmt_bound(log)}[/]  (log10 = {log_text})"
            f" — NOT a bound on the model: {len(report.unselected)} of its layers left out by "
            "--filter/--exclude"
        )
    elif report.certified:
        console.print(
            f"[bold]L ≤ {fmt_bound(log)}[/]  (log10 = {log_text}) — certified upper bound, for "
            "the sequential chain asserted by --assume sequential"
        )
    elif report.upper_bound and not report.assumed:
        console.print(
            f"[bold]L ≤ {fmt_bound(log)}[/]  (log10 = {log_text}) — conditional on a plain "
            "sequential chain, not certified (a state dict does not record the architecture)"
        )
    elif report.upper_bound:
        console.print(
            f"[bold]L ≤ {fmt_bound(log)}[/]  (log10 = {log_text}) — an upper bound under the "
            "assumptions below, not certified"
        )
    else:
        console.print(
            f"[bold]L ≈ {fmt_bound(log)}[/]  (log10 = {log_text}) — an estimate, not a bound: "
            "not every factor is a proven upper bound"
        )
    console.print(escape(report.statement()))
    console.print("Assumptions: " + escape("; ".join(report.assumptions)) + ".", style="dim")
    counts = Counter(reason_group(s.reason.split(":")[0]) for s in report.excluded)
    if counts:
        parts = ", ".join(f"{n} {reason}" for reason, n in counts.most_common())
        console.print(f"Excluded from the product: {escape(parts)}.", style="dim")
