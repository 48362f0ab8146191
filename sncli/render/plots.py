"""Figures of the result objects, drawn with matplotlib's non-interactive Agg backend.

matplotlib is imported only when a figure is asked for (``--plot``, ``sncli report``), never at
start-up. Figures show what the reports hold: σ per layer in model order grouped by block, a
blocks × module-kind heat map for transformer checkpoints, the Lipschitz factors with their
running product, and the relative change per layer of a diff. Axes are labelled with units and
scales; titles name the checkpoint.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from sncli.analysis import InspectReport
    from sncli.diff import DiffReport
    from sncli.lipschitz import LipschitzReport
    from sncli.spectrum import LayerSpectrum, SpectrumReport

#: File formats ``--plot`` writes, from the file's extension.
PLOT_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
#: ``blocks.3.``, ``layers.12.``, ``h.0.``, ``layer.5.``, ``blk.7.``: a repeated block's index.
_BLOCK = re.compile(r"(?:^|\.)(?:blocks?|layers?|h|blk|stages?|features|encoder\.layer)\.(\d+)\.")
_KIND_COLOURS = {
    "linear": "#1f77b4",
    "embedding": "#9467bd",
    "conv1d": "#2ca02c",
    "conv2d": "#2ca02c",
    "conv3d": "#2ca02c",
}
#: Tick labels with layer names up to this many layers; beyond, block numbers or indices.
_NAMED_TICKS = 40
#: Above this many layers, bars are drawn as vertical lines.
_MANY = 500
#: Blocks are shaded alternately up to this many blocks.
_SHADED_BLOCKS = 100


@dataclass(frozen=True)
class BlockName:
    """A layer name split into its repeated block's index and the module within the block."""

    block: int | None
    module: str


def split_block(name: str) -> BlockName:
    """``model.layers.3.self_attn.q_proj.weight`` → block 3, module ``self_attn.q_proj``."""
    matches = list(_BLOCK.finditer(name))
    match = matches[-1] if matches else None
    module = name.removesuffix(".weight")
    if match is None:
        return BlockName(None, module)
    return BlockName(int(match.group(1)), module[match.end() :] or module)


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return figure


def _label(text: str) -> str:
    """A name from a file as literal text: ``$`` would start matplotlib's mathtext (a crash on
    a name holding ``$\\frac$``, italics for ``$x$``)."""
    return text.replace("$", "\\$")


def _short(path: str) -> str:
    return _label(_file_name(path))


def _file_name(path: str) -> str:
    """The file name, and the folder of a sharded index (``tiny/x.safetensors.index.json``)."""
    name = Path(path)
    if name.name.endswith(".index.json") and name.parent.name:
        return f"{name.parent.name}/{name.name}"
    return name.name or path


def _ticks(axes: Any, names: Sequence[str]) -> None:
    """Layer names as x ticks when few; else block numbers at each block's first layer."""
    if len(names) <= _NAMED_TICKS:
        axes.set_xticks(range(len(names)))
        axes.set_xticklabels([_label(n) for n in names], rotation=60, ha="right", fontsize=7)
        return
    blocks = [split_block(name).block for name in names]
    positions = [
        i for i, b in enumerate(blocks) if b is not None and (i == 0 or blocks[i - 1] != b)
    ]
    if positions:
        step = max(1, len(positions) // 24)
        shown = positions[::step]
        axes.set_xticks(shown)
        axes.set_xticklabels([str(blocks[i]) for i in shown], fontsize=7)
        axes.set_xlabel("block (layers in model order)")
    else:
        axes.set_xlabel("layer index (model order)")


def _shade_blocks(axes: Any, names: Sequence[str]) -> None:
    """Alternate a light background per block so groups read at a glance."""
    blocks = [split_block(name).block for name in names]
    if len(set(blocks)) > _SHADED_BLOCKS:  # stripes too thin to read, and costly to draw
        return
    start = 0
    for i in range(1, len(names) + 1):
        if i == len(names) or blocks[i] != blocks[start]:
            if blocks[start] is not None and blocks[start] % 2 == 1:
                axes.axvspan(start - 0.5, i - 0.5, color="#000000", alpha=0.05, linewidth=0)
            start = i


def inspect_figure(report: InspectReport) -> Figure:
    """σ_max of every layer in model order, log scale; hollow markers are lower bounds."""
    layers = report.layers
    names = [layer.short_name for layer in layers]
    # + 1.6 in for the legend beside the axes
    figure = _figure(max(6.4, min(16.0, 0.18 * len(layers) + 4)) + 1.6, 4.2)
    axes = figure.add_subplot()
    _shade_blocks(axes, names)
    kinds = sorted({layer.kind.value for layer in layers})
    for kind in kinds:
        for exact in (True, False):
            points = [
                (i, layer.sigma)
                for i, layer in enumerate(layers)
                if layer.kind.value == kind
                and (layer.bound.value == "exact") == exact
                and layer.sigma > 0  # σ = 0 has no place on a log axis: said in the title
            ]
            if not points:
                continue
            colour = _KIND_COLOURS.get(kind, "#7f7f7f")
            axes.scatter(
                [p[0] for p in points],
                [p[1] for p in points],
                s=18,
                marker="o",
                facecolors=colour if exact else "none",
                edgecolors=colour,
                label=kind + ("" if exact else " (lower bound)"),
            )
    axes.set_yscale("log")
    axes.set_ylabel("σ_max, log scale")
    zeros = sum(1 for layer in layers if layer.sigma <= 0)
    title = f"σ_max per layer — {_short(report.checkpoint)}"
    if zeros:
        title += f" ({zeros} zero layer{'s' if zeros > 1 else ''} not drawn)"
    axes.set_title(title, fontsize=11)
    axes.grid(True, which="major", axis="y", alpha=0.3)
    axes.set_xlim(-0.5, len(layers) - 0.5)
    _ticks(axes, names)
    if kinds:  # outside the axes: a legend inside covers markers
        axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return figure


#: What ``spectrum --metric`` can show per layer, with its axis label and whether a log scale fits.
SPECTRUM_METRICS = {
    "sigma_max": ("σ_max", True),
    "stable_rank": ("stable rank ‖W‖_F²/σ_max²", True),
    "alpha": ("α (ESD tail exponent)", False),
    "effective_rank": ("effective rank (Roy & Vetterli)", True),
    "condition_number": ("condition number σ_max/σ_min", True),
    "alpha_weighted": ("α·log10 λ_max", False),
}


def spectrum_figure(report: SpectrumReport, metric: str = "sigma_max") -> Figure:
    """One metric of every layer's spectrum in model order (α on a linear axis, the rest log)."""
    label, log_scale = SPECTRUM_METRICS[metric]
    layers = report.layers
    names = [layer.short_name for layer in layers]
    figure = _figure(max(6.4, min(16.0, 0.18 * len(layers) + 4)), 4.2)
    axes = figure.add_subplot()
    _shade_blocks(axes, names)
    points = [
        (i, float(value))
        for i, layer in enumerate(layers)
        if (value := getattr(layer, metric)) is not None
        and math.isfinite(value)
        and (value > 0 or not log_scale)
    ]
    axes.scatter([p[0] for p in points], [p[1] for p in points], s=18, color="#1f77b4")
    if log_scale:
        axes.set_yscale("log")
    missing = len(layers) - len(points)
    title = f"{metric} per layer — {_short(report.checkpoint)}"
    if missing:
        title += f" ({missing} without a value)"
    axes.set_title(title, fontsize=11)
    axes.set_ylabel(label + (", log scale" if log_scale else ""))
    axes.grid(True, axis="y", alpha=0.3)
    axes.set_xlim(-0.5, len(layers) - 0.5)
    _ticks(axes, names)
    return figure


def esd_figure(layer: LayerSpectrum, checkpoint: str = "") -> Figure:
    """One layer's empirical spectral density of λ = σ² on log-log axes, with the fitted power
    law from xmin (WeightWatcher's fit, drawn as the tail's density) and the MP bulk edge."""
    import numpy as np

    lam = np.asarray(layer.values, dtype=np.float64) ** 2
    lam = lam[lam > 1e-5 * max(float(lam.max()), 1e-300)] if lam.size else lam
    figure = _figure(6.4, 4.4)
    axes = figure.add_subplot()
    if lam.size >= 2:
        bins = np.logspace(np.log10(lam.min()), np.log10(lam.max()), min(60, max(8, lam.size // 4)))
        axes.hist(
            lam,
            bins=bins,
            density=True,
            color="#9ecae1",
            edgecolor="#3182bd",
            label=f"ESD ({lam.size} eigenvalues)",
        )
        if layer.alpha is not None and layer.xmin is not None and layer.xmin > 0:
            tail = lam[lam >= layer.xmin]
            grid = np.logspace(np.log10(layer.xmin), np.log10(lam.max()), 50)
            scale = tail.size / lam.size * (layer.alpha - 1) / layer.xmin
            axes.plot(
                grid,
                scale * (grid / layer.xmin) ** (-layer.alpha),
                color="#d62728",
                label=f"power law α = {layer.alpha:.2f} from xmin = {layer.xmin:.3g}",
            )
            axes.axvline(layer.xmin, color="#d62728", linestyle=":", linewidth=1)
        if layer.mp_edge is not None and layer.mp_edge > 0:
            axes.axvline(
                layer.mp_edge,
                color="#2ca02c",
                linestyle="--",
                label=f"Marchenko–Pastur bulk edge {layer.mp_edge:.3g}",
            )
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.legend(fontsize=8, loc="lower left")
    axes.set_xlabel("eigenvalue λ = σ² of WᵀW, log scale")
    axes.set_ylabel("density, log scale")
    where = f" — {_short(checkpoint)}" if checkpoint else ""
    axes.set_title(f"ESD of {_label(layer.short_name)}{where}", fontsize=11)
    return figure


def heatmap_figure(report: Any, metric: str = "sigma_max") -> Figure | None:
    """Blocks × module kind of a per-layer value (log colour; σ_max from an inspect report, or
    any ``SPECTRUM_METRICS`` entry of a spectrum report), for checkpoints with repeated blocks
    whose modules recur (transformers); None otherwise."""
    cells: dict[tuple[int, str], float] = {}
    for layer in report.layers:
        parts = split_block(layer.short_name)
        value = (
            layer.sigma
            if metric == "sigma_max" and hasattr(layer, "sigma")
            else getattr(layer, metric, None)
        )
        if parts.block is not None and value is not None and math.isfinite(value):
            cells[(parts.block, parts.module)] = float(value)
    blocks = sorted({b for b, _ in cells})
    modules = [m for m in dict.fromkeys(m for _, m in cells) if sum(k[1] == m for k in cells) > 1]
    if len(blocks) < 2 or len(modules) < 2:
        return None
    import numpy as np
    from matplotlib.colors import LogNorm

    grid = np.full((len(blocks), len(modules)), np.nan)
    for (block, module), sigma in cells.items():
        if module in modules and sigma > 0:
            grid[blocks.index(block), modules.index(module)] = sigma
    figure = _figure(max(5.0, 0.55 * len(modules) + 3), max(3.0, 0.22 * len(blocks) + 1.5))
    axes = figure.add_subplot()
    finite = grid[np.isfinite(grid)]
    norm = LogNorm(vmin=float(finite.min()), vmax=float(finite.max())) if finite.size else None
    image = axes.imshow(grid, aspect="auto", cmap="viridis", norm=norm, interpolation="nearest")
    axes.set_xticks(range(len(modules)))
    axes.set_xticklabels([_label(m) for m in modules], rotation=45, ha="right", fontsize=7)
    step = max(1, len(blocks) // 32)
    axes.set_yticks(range(0, len(blocks), step))
    axes.set_yticklabels([str(b) for b in blocks[::step]], fontsize=7)
    axes.set_xlabel("module within the block")
    axes.set_ylabel("block")
    # two lines: a title wider than a narrow heat map is clipped at both ends
    axes.set_title(f"{metric} by block and module\n{_short(report.checkpoint)}", fontsize=11)
    colourbar = figure.colorbar(image, ax=axes)
    colourbar.set_label(f"{metric} (log scale)")
    return figure


def lipschitz_figure(report: LipschitzReport) -> Figure:
    """Per-layer factors (log10) and the running product (log10 of the partial products)."""
    factors = report.factors
    names = [factor.short_name for factor in factors]
    # + 2.8 in for the legend beside the axes
    figure = _figure(max(6.4, min(16.0, 0.2 * len(factors) + 4)) + 2.8, 4.4)
    axes = figure.add_subplot()
    positions = range(len(factors))
    logs = [factor.log10 if math.isfinite(factor.log10) else math.nan for factor in factors]
    colours = ["#1f77b4" if factor.certified else "#ff7f0e" for factor in factors]
    _bars(axes, logs, colours, "log10 factor (blue: proven; σ = 0 not drawn)")
    reshaped = [
        (i, math.log10(factor.reshape_sigma))
        for i, factor in enumerate(factors)
        if factor.reshape_sigma is not None and factor.reshape_sigma > 0
    ]
    if reshaped:
        axes.scatter(
            [p[0] for p in reshaped],
            [p[1] for p in reshaped],
            marker="_",
            s=120,
            color="#d62728",
            label="log10 σ of the reshaped kernel (not a bound)",
        )
    running = [value if math.isfinite(value) else float("nan") for value in report.running_log10()]
    axes.plot(positions, running, color="#2ca02c", marker=".", label="log10 running product")
    axes.axhline(0.0, color="#000000", linewidth=0.6)
    axes.set_ylabel("log10 (factor, running product)")
    total = report.log10_bound
    axes.set_title(
        f"Lipschitz factors — {_short(report.checkpoint)}: log10 L = {total:.3g}", fontsize=11
    )
    axes.grid(True, axis="y", alpha=0.3)
    axes.set_xlim(-0.5, len(factors) - 0.5)
    _ticks(axes, names)
    # outside the axes: inside, it covers the running product's first points
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return figure


def _bars(axes: Any, values: Sequence[float], colours: Sequence[str], label: str | None) -> None:
    """One bar per layer; beyond ``_MANY`` layers thin vertical lines (one collection, not
    thousands of rectangles: 3,000 bars took half of a report's time)."""
    if len(values) <= _MANY:
        axes.bar(range(len(values)), values, color=colours, width=0.8, label=label)
    else:
        axes.vlines(range(len(values)), 0.0, values, colors=colours, linewidth=1.0, label=label)


def diff_figure(report: DiffReport, fail_above: float | None = None) -> Figure:
    """Relative change ‖B−A‖₂/‖A‖₂ per layer in model order, with the --fail-above line."""
    layers = report.layers
    names = [layer.name for layer in layers]
    figure = _figure(max(6.4, min(16.0, 0.18 * len(layers) + 4)), 4.2)
    axes = figure.add_subplot()
    _shade_blocks(axes, names)
    finite = [layer.relative for layer in layers if layer.relative is not None]
    top = max([*finite, fail_above or 0.0, 1e-12]) * 1.15
    # A layer that moved from ‖A‖₂ = 0 has no finite relative change: drawn to the top, red.
    values = [
        layer.relative if layer.relative is not None else (top if layer.delta_sigma > 0 else 0.0)
        for layer in layers
    ]
    colours = [
        "#c7c7c7"
        if layer.unchanged
        else (
            "#d62728"
            if layer.relative is None or (fail_above is not None and layer.relative > fail_above)
            else "#1f77b4"
        )
        for layer in layers
    ]
    _bars(axes, values, colours, None)
    if fail_above is not None:
        label = f"--fail-above {fail_above:g}"
        axes.axhline(fail_above, color="#d62728", linestyle="--", label=label)
        axes.legend(fontsize=8, loc="upper right")
    axes.set_ylabel("relative change ‖B−A‖₂ / ‖A‖₂")
    axes.set_title(f"{_short(report.a)} → {_short(report.b)}: change per layer", fontsize=11)
    axes.grid(True, axis="y", alpha=0.3)
    axes.set_xlim(-0.5, len(layers) - 0.5)
    _ticks(axes, names)
    return figure


def plot_format(path: str | Path) -> str:
    """The format ``--plot`` writes for a file name; ValueError for another extension."""
    suffix = Path(path).suffix.lower()
    if suffix not in PLOT_FORMATS:
        raise ValueError(
            f"cannot tell the plot format from {str(path)!r}: use a .png, .svg or .pdf name"
        )
    return PLOT_FORMATS[suffix]


def figure_bytes(figure: Figure, fmt: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    metadata = {"Date": None} if fmt in ("svg", "pdf") else {}
    figure.savefig(buffer, format=fmt, metadata=metadata or None)
    return buffer.getvalue()


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write the figure atomically (temp file next to it, fsync, rename)."""
    from sncli.writer import staged_write

    target = Path(path)
    data = figure_bytes(figure, plot_format(target))
    with staged_write(target) as (handle, staged):
        handle.write(data)
    staged.commit()
    return target


def figure_svg(figure: Figure) -> str:
    """The figure as an inline ``<svg>`` element (no XML prolog), for the HTML report."""
    text = figure_bytes(figure, "svg").decode("utf-8")
    start = text.find("<svg")
    return text[start:] if start >= 0 else text
