"""Figures: structure, not pixels — how many axes, their labels and scales, the layer names on
the ticks, the values drawn equal to the report's, and the files written."""

from __future__ import annotations

from pathlib import Path

import pytest

from sncli.analysis import spectral_norms
from sncli.checkpoint import open_checkpoint
from sncli.diff import diff_checkpoints
from sncli.lipschitz import lipschitz_report
from sncli.render import plots

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def transformer_report(transformer_index_path: Path):
    with open_checkpoint(transformer_index_path) as ckpt:
        return spectral_norms(ckpt)


def test_split_block_reads_the_repeated_index() -> None:
    assert plots.split_block("model.layers.3.self_attn.q_proj.weight") == plots.BlockName(
        3, "self_attn.q_proj"
    )
    assert plots.split_block("blk.12.attn_q.weight") == plots.BlockName(12, "attn_q")
    assert plots.split_block("lm_head.weight") == plots.BlockName(None, "lm_head")


def test_inspect_figure_draws_every_sigma_on_a_log_axis(transformer_report) -> None:
    figure = plots.inspect_figure(transformer_report)
    (axes,) = figure.axes
    assert axes.get_yscale() == "log"
    assert "σ_max" in axes.get_ylabel()
    assert "model.safetensors.index.json" in axes.get_title()
    labels = [tick.get_text() for tick in axes.get_xticklabels()]
    assert labels == [layer.short_name for layer in transformer_report.layers]
    drawn = sorted(float(y) for collection in axes.collections for _, y in collection.get_offsets())
    assert drawn == pytest.approx(sorted(layer.sigma for layer in transformer_report.layers))


def test_heatmap_only_for_repeated_blocks(transformer_report, mlp_path: Path) -> None:
    figure = plots.heatmap_figure(transformer_report)
    assert figure is not None
    axes = figure.axes[0]
    modules = [tick.get_text() for tick in axes.get_xticklabels()]
    assert "self_attn.q_proj" in modules and "mlp.down_proj" in modules
    assert axes.get_ylabel() == "block"
    with open_checkpoint(mlp_path) as ckpt:
        assert plots.heatmap_figure(spectral_norms(ckpt)) is None


def test_lipschitz_figure_has_factors_and_running_product(lightning_path: Path) -> None:
    with open_checkpoint(lightning_path) as ckpt:
        report = lipschitz_report(ckpt)
    axes = plots.lipschitz_figure(report).axes[0]
    bars = [patch.get_height() for patch in axes.patches]
    assert bars == pytest.approx([factor.log10 for factor in report.factors])
    (line,) = [line for line in axes.get_lines() if len(line.get_xdata()) == len(report.factors)]
    assert list(line.get_ydata()) == pytest.approx(report.running_log10())
    assert "log10" in axes.get_ylabel()


def test_diff_figure_marks_the_threshold(mlp_path: Path, samples: Path) -> None:
    with (
        open_checkpoint(mlp_path) as a,
        open_checkpoint(samples / "mlp_finetuned.safetensors") as b,
    ):
        report = diff_checkpoints(a, b)
    axes = plots.diff_figure(report, fail_above=0.1).axes[0]
    assert [patch.get_height() for patch in axes.patches] == pytest.approx(
        [layer.relative for layer in report.layers]
    )
    assert any(list(line.get_ydata()) == [0.1, 0.1] for line in axes.get_lines())


@pytest.mark.parametrize("suffix", [".png", ".svg", ".pdf"])
def test_save_figure_writes_the_format_of_the_extension(
    transformer_report, tmp_path: Path, suffix: str
) -> None:
    path = plots.save_figure(plots.inspect_figure(transformer_report), tmp_path / f"f{suffix}")
    head = path.read_bytes()[:8]
    expected = {".png": b"\x89PNG", ".svg": b"<?xml", ".pdf": b"%PDF"}[suffix]
    assert head.startswith(expected)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_unknown_extension_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.png, \.svg or \.pdf"):
        plots.plot_format(tmp_path / "figure.gif")


def test_names_with_dollar_signs_are_literal(tmp_path: Path) -> None:
    """``$`` in a tensor or file name must not start mathtext (a crash on ``$\\frac$``)."""
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "odd$name.safetensors"
    save_file({"a$\\frac$.weight": torch.randn(3, 4), "b$x$.weight": torch.randn(4, 4)}, str(path))
    with open_checkpoint(path) as ckpt:
        report = spectral_norms(ckpt)
    figure = plots.inspect_figure(report)
    plots.save_figure(figure, tmp_path / "f.png")
    labels = [tick.get_text() for tick in figure.axes[0].get_xticklabels()]
    assert labels == ["a\\$\\frac\\$.weight", "b\\$x\\$.weight"]  # escaped: drawn as written


def test_many_layers_are_lines_not_bars(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    tensors = {f"blocks.{i}.fc.weight": torch.randn(4, 4, generator=generator) for i in range(600)}
    save_file(tensors, str(tmp_path / "a.safetensors"))
    scaled = {name: t * 1.01 for name, t in tensors.items()}
    scaled["blocks.0.fc.weight"] = torch.zeros(4, 4)
    zero = dict(tensors)
    zero["blocks.0.fc.weight"] = torch.zeros(4, 4)
    save_file(zero, str(tmp_path / "z.safetensors"))
    save_file(scaled, str(tmp_path / "b.safetensors"))
    with (
        open_checkpoint(tmp_path / "z.safetensors") as a,
        open_checkpoint(tmp_path / "b.safetensors") as b,
    ):
        report = diff_checkpoints(a, b, top_k=0)
    axes = plots.diff_figure(report, fail_above=0.5).axes[0]
    assert not axes.patches  # one LineCollection instead of 600 rectangles
    (lines,) = [c for c in axes.collections if len(c.get_segments()) == 600]
    heights = [segment[1][1] for segment in lines.get_segments()]
    # blocks.0 is unchanged (zero in both); the others moved by 1 %
    assert heights[0] == 0 and heights[1:] == pytest.approx([0.01] * 599, rel=1e-4)


def test_spectrum_figures_show_the_report_values(
    transformer_index_path: Path, mlp_path: Path
) -> None:
    from sncli.spectrum import spectra

    with open_checkpoint(transformer_index_path) as ckpt:
        report = spectra(ckpt)
    axes = plots.spectrum_figure(report, "stable_rank").axes[0]
    assert axes.get_yscale() == "log" and "stable rank" in axes.get_ylabel()
    drawn = sorted(float(y) for _, y in axes.collections[0].get_offsets())
    assert drawn == pytest.approx(sorted(layer.stable_rank for layer in report.layers))
    alpha = plots.spectrum_figure(report, "alpha").axes[0]
    assert alpha.get_yscale() == "linear"
    heat = plots.heatmap_figure(report, "stable_rank")
    assert heat is not None and "stable_rank" in heat.axes[0].get_title()
    with open_checkpoint(mlp_path) as ckpt:
        layer = spectra(ckpt).layers[1]
    esd = plots.esd_figure(layer, str(mlp_path)).axes[0]
    assert esd.get_xscale() == "log" and esd.get_yscale() == "log"
    counts = sum(patch.get_height() * patch.get_width() for patch in esd.patches)
    assert counts == pytest.approx(1.0, rel=1e-9)  # a density over the drawn eigenvalues
    lines = esd.get_lines()
    assert any(list(line.get_xdata()) == [layer.mp_edge] * 2 for line in lines)
    assert any(list(line.get_xdata()) == [layer.xmin] * 2 for line in lines)
    legend = [text.get_text() for text in esd.get_legend().get_texts()]
    assert any(f"α = {layer.alpha:.2f}" in text for text in legend)
