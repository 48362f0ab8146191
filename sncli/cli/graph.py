"""``sncli lipschitz MODEL.onnx``: the bound over the model's graph (called by cli/lipschitz)."""

from __future__ import annotations

from sncli.cli.sink import Sink
from sncli.lipschitz import graph_lipschitz
from sncli.lipschitz.lower import LOWER_EFFORT
from sncli.render.common import OutputFormat, emit
from sncli.render.graph_lipschitz import graph_to_csv, graph_to_dict, print_graph_table


def run_graph_lipschitz(
    path: str,
    *,
    grid: int | None,
    seed: int,
    input_shapes: dict[str, tuple[int, ...]],
    lower: bool,
    certified: bool,
    lower_effort: int | None = None,
    chain_seconds: float | None = None,
    fail_above: float | None,
    output_format: OutputFormat,
    sink: Sink,
) -> None:
    """Bound the graph, render it, and apply the ``--fail-above`` gate (exit 3)."""
    report = graph_lipschitz(
        path,
        grid=grid,
        seed=seed,
        input_shapes=input_shapes,
        lower=lower,
        lower_effort=LOWER_EFFORT if lower_effort is None else lower_effort,
        chain_seconds=chain_seconds,
    )
    sink.notes(report.notes)
    emit(
        output_format,
        lambda: graph_to_dict(report),
        lambda: graph_to_csv(report),
        lambda console: print_graph_table(report, console),
    )
    if fail_above is not None:
        report.gate(fail_above, certified=certified, name=path)
