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
from sncli.arguments import CheckpointSource, takes_checkpoints
from sncli.diff import DiffReport, diff_checkpoints
from sncli.errors import SncliError
from sncli.lipschitz import LipschitzReport, lipschitz_report
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


@takes_checkpoints("checkpoint", "other")
def build_report(
    checkpoint: CheckpointSource,
    other: CheckpointSource | None = None,
    *,
    command: str = "",
    progress: ProgressCallback | None = None,
) -> ModelReport:
    """Run inspect and lipschitz on ``checkpoint`` (and diff against ``other``) for the report."""
    inspect = spectral_norms(checkpoint, progress=progress)
    lipschitz: LipschitzReport | None = None
    lipschitz_error = None
    try:
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
    )
