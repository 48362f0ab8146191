"""The options spectrum and track share for allocation metrics: ``--hill``, ``--mp-fit``,
``--randomize``, ``--group`` and ``--export``/``--export-metric`` (see :mod:`sncli.allocation`).
Kept free of numpy imports: ``sncli CMD --help`` must stay light."""

from __future__ import annotations

from typing import Annotated

import typer

from sncli.allocation import GroupBy

HillOpt = Annotated[
    bool,
    typer.Option(
        "--hill",
        help="Add alpha_hill: AlphaPruning's PL_Alpha_Hill (Hill estimate of the tail exponent "
        "with xmin at the median eigenvalue).",
    ),
]
SNROpt = Annotated[
    bool,
    typer.Option(
        "--snr",
        help="Add snr: the Spectrum paper's layer signal-to-noise ratio (σ above / at or below "
        "an MP threshold from the σ's interquartile range, divided by σ_max).",
    ),
]
MPFitOpt = Annotated[
    bool,
    typer.Option(
        "--mp-fit",
        help="Add WeightWatcher's fitted Marchenko–Pastur bulk: mp_softrank, num_spikes, bulk_max.",
    ),
]
RandomizeOpt = Annotated[
    bool,
    typer.Option(
        "--randomize",
        help="Add WeightWatcher's randomized-ESD metrics: rand_distance, num_traps, "
        "max_rand_eval (W's elements permuted; one more SVD per layer, five below 100 "
        "singular values). Reproducible: drawn from --seed and the layer's name.",
    ),
]
GroupOpt = Annotated[
    GroupBy | None,
    typer.Option(
        "--group",
        help="Show the mean of each metric per transformer block (layers.N, h.N, blocks.N…) "
        "or per module type (the name inside the block: self_attn.q_proj, mlp.fc1…) instead "
        "of per layer; with --export, each matrix gets its group's mean.",
        case_sensitive=False,
    ),
]
ExportOpt = Annotated[
    str | None,
    typer.Option(
        "--export",
        metavar="FILE.json|FILE.npy",
        help="Also write one number per matrix, in model order (--export-metric): .npy a "
        "float64 array (NaN where undefined), .json with the layer names. Atomic.",
    ),
]
ExportMetricOpt = Annotated[
    str,
    typer.Option("--export-metric", help="What --export writes per matrix (default alpha_hill)."),
]
SEED_HELP = (
    "Seed of the random start vector (--top-k) and of --randomize's permutations "
    "(each layer's drawn from the seed and its name)."
)


def check_export(export: str | None) -> None:
    """Refuse an unknown --export suffix or an impossible target before any work."""
    if export is None:
        return
    from sncli.allocation import check_export_target

    try:
        check_export_target(export)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--export") from None
