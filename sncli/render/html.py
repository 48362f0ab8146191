"""The self-contained HTML report of ``sncli report``: inline CSS and SVG, no script, nothing
fetched from anywhere, so it opens offline and can be attached to a ticket.

Large checkpoints stay readable: figures are drawn per layer but their ticks thin out, and tables
beyond ``OPEN_ROWS`` rows are folded in ``<details>`` elements (which work without JavaScript).
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

from sncli._version import __version__
from sncli.messages import clean_text
from sncli.render.common import fmt_shape, fmt_sigma
from sncli.render.diff import fmt_bounded
from sncli.report import LayerTrend, ModelReport, RunReport

#: Tables longer than this start folded (a click on the summary line opens them).
OPEN_ROWS = 200

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1b1b1b;
       max-width: 1180px; margin: 2em auto; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.2em; margin-top: 2em; }
dl.summary { display: grid; grid-template-columns: max-content auto; gap: .25em 1.2em; }
dl.summary dt { font-weight: 600; color: #555; } dl.summary dd { margin: 0; }
table { border-collapse: collapse; font-size: 13px; width: 100%; }
th, td { padding: .25em .6em; border-bottom: 1px solid #e3e3e3; text-align: right; }
th:first-child, td:first-child { text-align: left; word-break: break-all; }
th { background: #f4f4f4; position: sticky; top: 0; }
tr.unchanged td { color: #888; } tr.flag td { color: #b00020; font-weight: 600; }
figure { margin: 1.2em 0; } figure svg { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 13px; }
.statement { background: #f6f8fa; border-left: 4px solid #1f77b4; padding: .6em 1em; }
.warn { border-left-color: #d62728; }
code, pre { font: 13px ui-monospace, SFMono-Regular, Menlo, monospace; }
pre { background: #f6f8fa; padding: .6em 1em; overflow-x: auto; }
footer { margin-top: 3em; color: #777; font-size: 12px; }
"""
#: Added to a run's page only (the page of one checkpoint keeps ``_CSS`` as it was).
_RUN_CSS = ".spark { font-family: ui-monospace, monospace; letter-spacing: -1px; }"


def _text(value: object) -> str:
    return escape(clean_text(str(value), 400))


def _prose(value: object) -> str:
    """A whole sentence or paragraph (the Lipschitz statement, a caption): never cut."""
    return escape(clean_text(str(value), 20_000))


def _figure(svg: str | None, caption: str) -> str:
    if svg is None:
        return ""
    return f"<figure>{svg}<figcaption>{_prose(caption)}</figcaption></figure>"


def _table(headers: list[str], rows: list[tuple[str, list[str]]], what: str) -> str:
    """An HTML table; ``rows`` are (css class, cells already escaped)."""
    head = "".join(f"<th>{_text(h)}</th>" for h in headers)
    body = "".join(
        f'<tr class="{css}">' + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"
        for css, cells in rows
    )
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if len(rows) > OPEN_ROWS:
        summary = f"<summary>{len(rows)} {_text(what)} (click to show)</summary>"
        return f"<details>{summary}{table}</details>"
    return table


def _summary(report: ModelReport) -> str:
    inspect = report.inspect
    largest = inspect.largest
    items: list[tuple[str, str]] = [
        ("checkpoint", f"<code>{_text(report.checkpoint)}</code>"),
        ("format", _text(report.format)),
        ("parameters", f"{report.parameters:,} in {report.tensors:,} tensors"),
        ("layers analysed", f"{len(inspect.layers):,} ({len(inspect.skipped):,} tensors skipped)"),
    ]
    if largest is not None:
        items.append(
            ("largest σ", f"{fmt_sigma(largest.sigma)} (<code>{_text(largest.short_name)}</code>)")
        )
    embedding = inspect.largest_embedding
    if embedding is not None:
        shown = f"{fmt_sigma(embedding.sigma)} (<code>{_text(embedding.short_name)}</code>)"
        items.append(("largest embedding σ", shown))
    if report.graph is not None:
        items.append(("Lipschitz", _text(_graph_line(report.graph))))
    elif report.lipschitz is not None:
        items.append(("Lipschitz", _text(_lipschitz_line(report.lipschitz))))
    elif report.lipschitz_error:
        items.append(("Lipschitz", f"not computed: {_prose(report.lipschitz_error)}"))
    if report.diff is not None:
        diff = report.diff
        items.append(
            (
                "compared with",
                f"<code>{_text(diff.b)}</code>: {len(diff.changed)} of {len(diff.layers)} "
                "layers changed",
            )
        )
    return (
        '<dl class="summary">'
        + "".join(f"<dt>{_text(k)}</dt><dd>{v}</dd>" for k, v in items)
        + "</dl>"
    )


def _lipschitz_line(lipschitz: Any) -> str:
    """The headline the lipschitz table prints, in words (what the report object says)."""
    log10 = lipschitz.log10_bound
    if not math.isfinite(log10):
        return "no finite product"
    value = 10.0**log10 if log10 < 300 else math.inf
    shown = fmt_sigma(value) if math.isfinite(value) else f"10^{log10:.1f}"
    if not lipschitz.valid_bound:
        return f"product of layer factors {shown}: NOT a Lipschitz bound (see the statement)"
    if lipschitz.certified:
        return f"L ≤ {shown}, certified"
    if lipschitz.upper_bound:
        return f"L ≤ {shown}, conditional on the assumptions in the statement (not certified)"
    return f"L ≈ {shown}, an estimate (not every factor is an upper bound)"


def _graph_line(graph: Any) -> str:
    """The graph bound's headline: L, certified or not, and the lower bound found."""
    lower = "" if graph.lower is None else f"; lower bound found {fmt_sigma(graph.lower.value)}"
    if graph.bound is None:
        return f"no Lipschitz bound for this graph{lower}"
    kind = "certified" if graph.certified else "not certified (some factor is not proven)"
    return f"L ≤ {fmt_sigma(graph.bound)} over the graph, {kind}{lower}"


def _graph_parts(graph: Any) -> list[str]:
    """The graph bound's section: statement, lower bound, per-output bounds, path, chains."""
    warn = "" if graph.certified else " warn"
    parts = [
        "<h2>Lipschitz bound over the graph</h2>",
        f'<p class="statement{warn}">{_text(graph.statement())}</p>',
    ]
    if graph.lower is not None:
        parts.append(
            f"<p>Lower bound found: {fmt_sigma(graph.lower.value)} — {_text(graph.lower.method)}"
            + (
                ""
                if graph.bound is None or graph.lower.value <= 0
                else f"; bound / lower = {graph.bound / graph.lower.value:.3g}"
            )
            + ".</p>"
        )
    outputs = [
        ("", [_text(o.name), _number(o.bound, 6), "yes" if o.certified else "no"])
        for o in graph.outputs
    ]
    parts.append(_table(["output", "bound", "certified"], outputs, "outputs"))
    factors = {n.name: n for n in graph.nodes}
    path = []
    for step in graph.path:
        node = factors.get(step.node)
        source = "" if node is None else (node.why or node.source)
        path.append(
            (
                "",
                [
                    _text(step.node),
                    _text(step.op),
                    _number(step.factor, 6),
                    "yes" if step.proven else "no",
                    _number(step.running, 6),
                    _text(source),
                ],
            )
        )
    parts.append("<h3>Path of the largest contribution (input → output)</h3>")
    parts.append(
        _table(["node", "op", "factor", "proven", "L after it", "source"], path, "path nodes")
    )
    if graph.chains:
        chains = [
            (
                "",
                [
                    _text(f"{c.nodes[0]} … {c.nodes[-1]}"),
                    str(len(c.nodes)),
                    _number(c.bound, 6),
                    _number(c.product, 6),
                    _text(c.method),
                ],
            )
            for c in graph.chains
        ]
        parts.append(
            _table(["chain", "nodes", "bound", "product of factors", "method"], chains, "chains")
        )
    return parts


def _inspect_rows(report: ModelReport) -> list[tuple[str, list[str]]]:
    return [
        (
            "",
            [
                _text(layer.short_name),
                _text(layer.kind.value),
                fmt_shape(layer.shape),
                _text(layer.dtype),
                fmt_bounded(layer.sigma, layer.bound),  # "≥ 1.13" as inspect and diff print it
                _text(layer.method.value),
            ],
        )
        for layer in report.inspect.layers
    ]


def _lipschitz_rows(lipschitz: Any) -> list[tuple[str, list[str]]]:
    rows = []
    for factor, running in zip(lipschitz.factors, lipschitz.running_log10(), strict=True):
        rows.append(
            (
                "",
                [
                    _text(factor.short_name),
                    _text(factor.kind),
                    fmt_sigma(factor.sigma),
                    "yes" if factor.certified else "no",
                    _text(factor.source),
                    f"{running:.4g}",
                ],
            )
        )
    return rows


def _number(value: float | int | None, digits: int = 4) -> str:
    return "--" if value is None else f"{value:.{digits}g}"


def _spectrum_rows(report: ModelReport) -> list[tuple[str, list[str]]]:
    assert report.spectrum is not None
    return [
        (
            "",
            [
                _text(layer.short_name),
                fmt_sigma(layer.sigma_max),
                _number(layer.stable_rank),
                _number(layer.effective_rank),
                _number(layer.alpha, 3),
                _number(layer.mp_spikes),
            ],
        )
        for layer in report.spectrum.layers
    ]


def _diff_rows(report: ModelReport) -> list[tuple[str, list[str]]]:
    assert report.diff is not None
    rows = []
    for layer in report.diff.layers:
        intruders = layer.intruder_dimensions
        rows.append(
            (
                "unchanged" if layer.unchanged else "",
                [
                    _text(layer.name),
                    fmt_bounded(layer.sigma_a, layer.bound_a),
                    fmt_bounded(layer.sigma_b, layer.bound_b),
                    "unchanged"
                    if layer.unchanged
                    else fmt_bounded(layer.delta_sigma, layer.delta_bound),
                    "--" if layer.relative is None else f"{layer.relative:.3g}",
                    "--" if not layer.subspace_cosines else f"{min(layer.subspace_cosines):.3f}",
                    "--" if intruders is None else str(intruders),
                ],
            )
        )
    return rows


def _head(title: str, css: str = _CSS) -> list[str]:
    return [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>sncli report: {_text(title)}</title>",
        f"<style>{css}</style></head><body>",
    ]


def _tail(command: str) -> list[str]:
    return [
        "<h2>Command</h2>",
        f"<pre>{_text(command)}</pre>",
        f"<footer>sncli {escape(__version__)}</footer>",
        "</body></html>",
    ]


def report_html(report: ModelReport, figures: dict[str, str]) -> str:
    """The whole page. ``figures`` maps a section ('inspect', 'heatmap', 'lipschitz', 'diff')
    to its inline SVG (see :mod:`sncli.render.plots`)."""
    parts = [
        *_head(report.checkpoint),
        f"<h1>Spectral report: <code>{_text(report.checkpoint)}</code></h1>",
        *_model_parts(report, figures),
        *_tail(report.command),
    ]
    return "\n".join(part for part in parts if part) + "\n"


def _model_parts(report: ModelReport, figures: dict[str, str]) -> list[str]:
    """A checkpoint's summary and sections (everything between the title and the command)."""
    parts = [
        _summary(report),
        "<h2>σ of every layer</h2>",
        _figure(
            figures.get("inspect"),
            "Largest singular value of each layer's weight matrix in model order (log scale); "
            "hollow markers are lower bounds from iterative methods; shading groups blocks.",
        ),
        _figure(figures.get("heatmap"), "σ_max by block (rows) and module (columns), log colour."),
        _table(
            ["layer", "kind", "shape", "dtype", "σ", "method"],
            _inspect_rows(report),
            "layers",
        ),
    ]
    if report.graph is not None:
        parts += _graph_parts(report.graph)
    if report.lipschitz is not None:
        lipschitz = report.lipschitz
        warn = "" if lipschitz.certified else " warn"
        reshaped = any(factor.reshape_sigma is not None for factor in lipschitz.factors)
        caption = (
            "log10 of each layer's factor (blue: proven upper bound) and of the running product"
            + (
                "; red ticks: σ of the reshaped conv kernel, shown, never multiplied."
                if reshaped
                else "."
            )
        )
        parts += [
            "<h2>Lipschitz bound</h2>",
            f'<p class="statement{warn}">{_prose(lipschitz.statement())}</p>',
            # a product that is no bound for this architecture is not drawn: the statement says
            # why, and the table keeps the factors (diagnostic)
            _figure(figures.get("lipschitz"), caption)
            if lipschitz.valid_bound
            else "<p>The chart of the running product is left out: it is not a bound for this "
            "model (the reason is above).</p>",
            _table(
                ["layer", "kind", "factor", "proven", "source", "log10 running product"],
                _lipschitz_rows(report.lipschitz),
                "factors",
            ),
        ]
    if report.spectrum is not None:
        parts += [
            "<h2>Spectra</h2>",
            _figure(
                figures.get("alpha"),
                "Power-law exponent α of each layer's eigenvalue tail (WeightWatcher's fit; "
                "α ≈ 2–4 is typical of well-trained layers, > 6 of under-trained ones).",
            ),
            _figure(figures.get("stable_rank"), "Stable rank ‖W‖_F²/σ_max² by block and module."),
            _table(
                ["layer", "σ_max", "stable rank", "effective rank", "α", "spikes above MP edge"],
                _spectrum_rows(report),
                "layers",
            ),
        ]
    elif report.spectrum_error:
        parts.append(f"<h2>Spectra</h2><p>not computed: {_text(report.spectrum_error)}</p>")
    if report.diff is not None:
        parts += [
            f"<h2>Compared with <code>{_text(report.diff.b)}</code></h2>",
            _figure(
                figures.get("diff"),
                "Relative change ‖B−A‖₂/‖A‖₂ per layer; in the table, ≥ marks a lower bound "
                "(an iterative estimate), intruders are B's singular vectors far from all of A's.",
            ),
            _table(
                [
                    "layer",
                    "σ(A)",
                    "σ(B)",
                    "‖B−A‖₂",
                    "relative",
                    f"top-{report.diff.top_k} min cos",
                    f"intruders (top-{report.diff.intruder_top_k})",
                ],
                _diff_rows(report),
                "layers",
            ),
        ]
    elif report.diff_error:
        parts.append(f"<h2>Comparison</h2><p>not computed: {_text(report.diff_error)}</p>")
    return parts


# ----------------------------------------------------------------------------- a run

#: What each metric of a run is called on the page, and the caption of its figure.
RUN_METRICS = {
    "sigma_max": ("σ_max", "Largest singular value of each layer"),
    "alpha": ("α", "Power-law exponent α of each layer's eigenvalue tail (WeightWatcher's fit)"),
    "stable_rank": ("stable rank", "Stable rank ‖W‖_F²/σ_max² of each layer"),
    "effective_rank": ("effective rank", "Effective rank (entropy of the normalized spectrum)"),
    "delta_relative": (
        "‖W_t − W_{t−1}‖₂ / σ_max(W_{t−1})",
        "Change of each layer since the previous checkpoint, relative to its σ_max there",
    ),
}


def _exact(value: float | None) -> str:
    """A number as shown, with its exact value (``repr``, as JSON writes it) on hover."""
    if value is None:
        return "--"
    return f'<span title="{value!r}">{fmt_sigma(value)}</span>'


def _change(value: float | None) -> str:
    if value is None:
        return "--"
    shown = "0" if value == 0 else f"{value:+.2%}"
    return f'<span title="{value!r}">{shown}</span>'


def _trend_rows(trends: list[LayerTrend]) -> list[tuple[str, list[str]]]:
    from sncli.render.track import sparkline

    return [
        (
            "unchanged" if trend.change == 0 else "",
            [
                _text(trend.name),
                _text(trend.kind),
                _exact(trend.first),
                _exact(trend.last),
                _exact(trend.minimum),
                _exact(trend.maximum),
                _change(trend.change),
                f'<span class="spark">{escape(sparkline(trend.values))}</span>',
            ],
        )
        for trend in trends
    ]


def _run_summary(report: RunReport) -> str:
    run = report.track
    steps = run.steps
    cached = sum(1 for c in run.checkpoints if c.cached)
    items: list[tuple[str, str]] = [
        ("checkpoints", f"{len(steps):,}, steps {steps[0]} … {steps[-1]}"),
        ("first", f"<code>{_text(run.checkpoints[0].path)}</code>"),
        ("last", f"<code>{_text(run.checkpoints[-1].path)}</code>"),
        ("format", _text(", ".join(sorted({c.format for c in run.checkpoints if c.format})))),
        ("layers tracked", f"{len(run.layers()):,}"),
        ("σ_max method", _text(run.method)),
        ("computed", f"{run.computed:,} checkpoint(s); {cached:,} from the cache"),
    ]
    moved = [t for t in report.trends.get("sigma_max", []) if t.change is not None]
    if moved:
        top = max(moved, key=lambda t: abs(t.change or 0.0))
        items.append(
            ("largest σ_max change", f"<code>{_text(top.name)}</code> {_change(top.change)}")
        )
        still = sum(1 for t in moved if t.change == 0 and t.minimum == t.maximum)
        items.append(("layers that never moved", f"{still:,} (σ_max equal at every step)"))
    return (
        '<dl class="summary">'
        + "".join(f"<dt>{_text(k)}</dt><dd>{v}</dd>" for k, v in items)
        + "</dl>"
    )


def run_report_html(
    report: RunReport, figures: dict[str, str], last_figures: dict[str, str] | None = None
) -> str:
    """The page of a run: summary, per metric its figure (``figures[metric]``, metric against
    step, the layers that moved most labelled) and the table of every layer's first, last, min,
    max, change and sparkline; then the last checkpoint's sections (``last_figures`` as
    :func:`report_html` takes them)."""
    run = report.track
    first, last = run.checkpoints[0], run.checkpoints[-1]
    title = f"{first.path} … {last.path}"
    parts = [
        *_head(title, _CSS + _RUN_CSS + "\n"),
        f"<h1>Spectral report of a run: <code>{_text(first.path)}</code> … "
        f"<code>{_text(last.path)}</code></h1>",
        _run_summary(report),
    ]
    for metric, trends in report.trends.items():
        name, caption = RUN_METRICS.get(metric, (metric, metric))
        parts += [
            f"<h2>{_text(name)} over the run</h2>",
            _figure(
                figures.get(metric),
                f"{caption} against the step; the layers that moved most (|last − first| / "
                "|first|) are labelled; with more than 30 layers, one line per module type (the "
                "median over blocks).",
            ),
            _table(
                ["layer", "kind", "first", "last", "min", "max", "change", "over the steps"],
                _trend_rows(trends),
                "layers",
            ),
        ]
    parts.append(
        "<p>Exact values show on hover; <code>sncli track … --format csv</code> gives every "
        "checkpoint × layer.</p>"
    )
    if run.notes:
        parts.append(
            "<h2>Notes</h2><ul>" + "".join(f"<li>{_prose(n)}</li>" for n in run.notes) + "</ul>"
        )
    if report.last is not None:
        parts += [
            f"<h2>Last checkpoint: step {last.step}, <code>{_text(last.path)}</code></h2>",
            *_model_parts(report.last, last_figures or {}),
        ]
    parts += _tail(report.command)
    return "\n".join(part for part in parts if part) + "\n"
