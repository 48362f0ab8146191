"""Everything ``sncli report`` puts in one HTML file: inspect, lipschitz, spectrum and (with B)
diff.

The engines run as their commands would with default options; a failing part (no Lipschitz
bound for a checkpoint without linear/conv layers, say) is recorded with its one-line reason
instead of stopping the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sncli.analysis import InspectReport, spectral_norms
from sncli.checkpoint import Checkpoint
from sncli.diff import DiffReport, diff_checkpoints
from sncli.errors import SncliError
from sncli.lipschitz import GraphLipschitzReport, LipschitzReport, lipschitz_report
from sncli.messages import ProgressCallback
from sncli.spectrum import SpectrumReport, spectra


@dataclass(frozen=True)
class ModelReport:
    """What the HTML report shows; ``command`` is the command line that produced it."""

    checkpoint: str
    format: str
    parameters: int
    tensors: int
    inspect: InspectReport
    lipschitz: LipschitzReport | None
    lipschitz_error: str | None
    spectrum: SpectrumReport | None
    spectrum_error: str | None
    diff: DiffReport | None
    diff_error: str | None
    command: str
    #: An ONNX model's bound over its graph (``sncli lipschitz MODEL.onnx``), shown instead of
    #: the product of its layers' σ, which is not the model's bound.
    graph: GraphLipschitzReport | None = None


def build_report(
    checkpoint: Checkpoint,
    other: Checkpoint | None = None,
    *,
    command: str = "",
    progress: ProgressCallback | None = None,
) -> ModelReport:
    """Run inspect and lipschitz on ``checkpoint`` (and diff against ``other``) for the report;
    for an ONNX model, lipschitz is the bound over its graph (with the lower-bound search)."""
    inspect = spectral_norms(checkpoint, progress=progress)
    lipschitz: LipschitzReport | None = None
    graph: GraphLipschitzReport | None = None
    lipschitz_error = None
    try:
        if checkpoint.format == "onnx":
            from sncli.lipschitz import graph_lipschitz

            graph = graph_lipschitz(checkpoint.path)
        else:
            lipschitz = lipschitz_report(checkpoint)
    except SncliError as exc:
        lipschitz_error = exc.message
    spectrum: SpectrumReport | None = None
    spectrum_error = None
    try:
        spectrum = spectra(checkpoint)
    except SncliError as exc:
        spectrum_error = exc.message
    diff: DiffReport | None = None
    diff_error = None
    if other is not None:
        try:
            diff = diff_checkpoints(checkpoint, other)
        except SncliError as exc:
            diff_error = exc.message
    return ModelReport(
        checkpoint=str(checkpoint.path),
        format=checkpoint.format,
        parameters=sum(math.prod(info.shape) for info in checkpoint.tensors.values()),
        tensors=len(checkpoint.tensors),
        inspect=inspect,
        lipschitz=lipschitz,
        lipschitz_error=lipschitz_error,
        spectrum=spectrum,
        spectrum_error=spectrum_error,
        diff=diff,
        diff_error=diff_error,
        command=command,
        graph=graph,
    )
