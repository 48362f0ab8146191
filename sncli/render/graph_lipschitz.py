"""Table, JSON and CSV for ``sncli lipschitz MODEL.onnx`` (the bound over the graph)."""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sncli.lipschitz import GraphLipschitzReport
from sncli.messages import clean_text
from sncli.render.common import finite_or_none, fmt_sigma


def graph_to_dict(report: GraphLipschitzReport) -> dict[str, Any]:
    """JSON: today's lipschitz keys plus ``lower``, ``outputs``, ``architecture`` (README)."""
    on_path = {step.node for step in report.path}
    lower = report.lower
    return {
        "checkpoint": report.checkpoint,
        "format": "onnx",
        "architecture": "graph",
        "log10_bound": finite_or_none(report.log10_bound),
        "bound": finite_or_none(report.bound),
        "certified": report.certified,
        "valid_architecture": report.bound is not None,
        "lower": None if lower is None else finite_or_none(lower.value),
        "lower_method": None if lower is None else lower.method,
        "lower_point": None
        if lower is None or lower.point is None
        else {
            "input_norm": finite_or_none(lower.point.input_norm),
            "step": finite_or_none(lower.point.step),
            "output": lower.point.output,
            "output_index": lower.point.output_index,
        },
        "statement": report.statement(),
        "assumptions": report.assumptions,
        "caveats": report.caveats,
        "outputs": [
            {"name": o.name, "bound": finite_or_none(o.bound), "certified": o.certified}
            for o in report.outputs
        ],
        "chains": [
            {
                "nodes": list(c.nodes),
                "bound": finite_or_none(c.bound),
                "product": finite_or_none(c.product),
                "method": c.method,
            }
            for c in report.chains
        ],
        "layers": [
            {
                "name": n.name,
                "op": n.op,
                "factor": finite_or_none(n.factor),
                "source": n.source,
                "proven": n.proven,
                "vacuous": n.vacuous,
                "factor_lower": finite_or_none(n.lower),
                "on_path": n.name in on_path,
                **({"why": n.why} if n.why else {}),
            }
            for n in report.nodes
        ],
    }


GRAPH_CSV_COLUMNS = ("name", "op", "factor", "proven", "vacuous", "on_path", "source", "why")


def graph_to_csv(report: GraphLipschitzReport) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, GRAPH_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    on_path = {step.node for step in report.path}
    for n in report.nodes:
        writer.writerow(
            {
                "name": n.name,
                "op": n.op,
                "factor": "" if n.factor is None else repr(n.factor),
                "proven": str(n.proven).lower(),
                "vacuous": str(n.vacuous).lower(),
                "on_path": str(n.name in on_path).lower(),
                "source": n.source,
                "why": n.why,
            }
        )
    return buffer.getvalue()


def _fmt(value: float | None) -> str:
    if value is None:
        return "--"
    if value == 0 or not math.isfinite(value) or 1e-4 <= abs(value) < 1e6:
        return fmt_sigma(value)
    return f"{value:.4e}"


def print_graph_table(report: GraphLipschitzReport, console: Console) -> None:
    """The path of the largest contribution (input → output), then outputs and the verdict."""
    factors = {n.name: n for n in report.nodes}
    table = Table(
        title=f"Lipschitz bound over the graph: {escape(report.checkpoint)} — path of the largest "
        "contribution",
        title_justify="left",
    )
    table.add_column("node", overflow="fold")
    table.add_column("op")
    table.add_column("factor", justify="right", style="bold")
    table.add_column("proven", justify="center")
    table.add_column("L after it", justify="right")
    table.add_column("source", overflow="fold")
    for step in report.path:
        node = factors.get(step.node)
        source = node.source if node is not None else ""
        if node is not None and node.why:
            source = node.why
        table.add_row(
            escape(clean_text(step.node)),
            step.op,
            _fmt(step.factor),
            "✓" if step.proven else "✗",
            _fmt(step.running),
            escape(clean_text(source, 120)),
        )
    console.print(table)
    if len(report.outputs) > 1:
        parts = ", ".join(
            f"{escape(clean_text(o.name))} ≤ {_fmt(o.bound)}{'' if o.certified else ' (✗)'}"
            for o in report.outputs
        )
        console.print(f"Per output: {parts}; joint √(Σ L²).")
    for chain in report.chains:
        console.print(
            f"Chain {escape(chain.nodes[0])} … {escape(chain.nodes[-1])} ({len(chain.nodes)} "
            f"nodes): {_fmt(chain.bound)} by {chain.method} (product {_fmt(chain.product)}).",
            style="dim",
        )
    lower = "" if report.lower is None else f"; lower bound found: {_fmt(report.lower.value)}"
    if report.bound is None:
        console.print(f"[bold]no Lipschitz bound[/] for this graph{lower}")
    elif report.certified:
        console.print(f"[bold]L ≤ {_fmt(report.bound)}[/] — certified upper bound{lower}")
    else:
        console.print(
            f"[bold]L ≤ {_fmt(report.bound)}[/] — an upper bound, NOT certified (vacuous "
            f"factor){lower}"
        )
    console.print(escape(report.statement()))
    console.print("Assumptions: " + escape("; ".join(report.assumptions)) + ".", style="dim")
