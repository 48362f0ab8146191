"""Everything ``sncli report`` puts in one HTML file: inspect, lipschitz, spectrum and (with B)
diff; for a training run (several checkpoints, a run folder, a pattern: :func:`run_items`), the
``sncli track`` series through its cache, per layer its trend, and the last checkpoint's parts
(:func:`build_run_report`).

The engines run as their commands would, with the options of :class:`ReportOptions`; a failing
part (no Lipschitz bound for a checkpoint without linear/conv layers, say) is recorded with its
one-line reason instead of stopping the report. Each number is computed once: when the spectra
are full (no ``top_k``) and the σ method is auto, dense or exact, σ of every layer is the
largest of its float64 singular values (:func:`sigmas_from_spectra`) instead of a second pass.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sncli.analysis import InspectReport, LayerSigma, MethodOptions, spectral_norms
from sncli.arguments import CheckpointSource, takes_checkpoints
from sncli.diff import DiffReport, diff_checkpoints
from sncli.errors import SncliError
from sncli.lipschitz import (
    GraphLipschitzReport,
    LipschitzOptions,
    LipschitzReport,
    lipschitz_report,
)
from sncli.messages import ProgressCallback
from sncli.numerics.spectral import BoundKind, Method
from sncli.spectrum import SpectrumOptions, SpectrumReport, spectra

if TYPE_CHECKING:
    from sncli.tracking import TrackCache, TrackReport

#: The parts a report may leave out (σ of every layer is always there).
SECTIONS = ("lipschitz", "spectrum", "diff")
#: The stages a report goes through, in order, as :data:`StageProgress` names them.
STAGES = ("spectra", "σ", "Lipschitz factors", "diff")
#: A run report's stages: the track over every checkpoint, then the last checkpoint's.
RUN_STAGES = ("track", *STAGES)
#: The last checkpoint's parts a run report computes unless told: none, so that a report after
#: a track run computes nothing (its σ, and with --spectrum its α and ranks, are the run's last
#: values already); each part costs what it costs in the report of one checkpoint (on 22M
#: parameters, Lipschitz and its σ pass took longer than tracking 5 checkpoints from scratch).
RUN_SECTIONS: frozenset[str] = frozenset()
#: A progress callback per stage: called once with the stage's name when the stage starts.
StageProgress = Callable[[str], ProgressCallback | None]
#: σ methods whose answer the float64 dense spectra already give (to float64 rounding).
_FROM_SPECTRA = (Method.AUTO, Method.DENSE, Method.EXACT)


@dataclass(frozen=True)
class ReportOptions:
    """What the report runs. ``method``/``tol``: σ of every layer (as ``inspect``); ``top_k``:
    only the K largest singular values per layer in the spectra (``spectrum --top-k``);
    ``include``/``exclude``: regexes on keys for every part; ``workers``/``scheduler``: where
    the per-layer work runs; ``sections``: the parts of :data:`SECTIONS` to compute."""

    method: Method = Method.AUTO
    tol: float | None = None
    top_k: int | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    workers: int | None = None
    scheduler: str | None = None
    sections: frozenset[str] = field(default_factory=lambda: frozenset(SECTIONS))
    #: An ONNX model's static input shapes for its graph bound (``--input-shape``), as
    #: (input name, shape) pairs; "" names the only input.
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def __post_init__(self) -> None:
        unknown = set(self.sections) - set(SECTIONS)
        if unknown:
            raise ValueError(f"unknown report sections {sorted(unknown)}; known: {SECTIONS}")


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


def sigmas_from_spectra(spectrum: SpectrumReport, method: Method = Method.AUTO) -> InspectReport:
    """σ of every layer as the largest of its full float64 spectrum (dense LAPACK values, exact
    to float64 rounding): what ``inspect --method dense`` computes, without a second pass."""
    if spectrum.top_k is not None:
        raise ValueError("σ comes from full spectra only (top_k is None)")
    layers = [
        LayerSigma(
            name=layer.name,
            short_name=layer.short_name,
            kind=layer.kind,
            shape=layer.shape,
            dtype=layer.dtype,
            matrix_shape=layer.matrix_shape,
            matrix=layer.matrix,
            sigma=float(layer.values[0]) if layer.count else 0.0,
            method=Method.DENSE,
            bound=BoundKind.EXACT if layer.bound == "exact" else BoundKind.LOWER,
            converged=layer.converged,
            transposed=layer.transposed,
            algorithm=layer.algorithm,
            reshape_note=layer.reshape_note,
            note=layer.note,
            rank=layer.rank,
            scale=layer.scale,
            expert=layer.expert,
            stack=layer.stack,
        )
        for layer in spectrum.layers
    ]
    return InspectReport(
        checkpoint=spectrum.checkpoint,
        format=spectrum.format,
        method=method,
        layers=layers,
        skipped=list(spectrum.skipped),
        notes=list(spectrum.notes),
        workers=spectrum.workers,
        seconds=spectrum.seconds,
    )


def _dense_sigmas(spectrum: SpectrumReport | None) -> dict[str, float]:
    """σ of each plain layer from its full float64 spectrum, for the Lipschitz factors (one
    dense pass, not two); none from top-K spectra or expert slices."""
    if spectrum is None or spectrum.top_k is not None:
        return {}
    return {
        layer.name: float(layer.values[0])
        for layer in spectrum.layers
        if layer.count
        and layer.bound == "exact"
        and layer.expert is None
        and layer.stack is None
        and layer.scale is None
    }


@takes_checkpoints("checkpoint", "other")
def build_report(
    checkpoint: CheckpointSource,
    other: CheckpointSource | None = None,
    *,
    options: ReportOptions | None = None,
    command: str = "",
    progress: ProgressCallback | None = None,
    stages: StageProgress | None = None,
) -> ModelReport:
    """Run spectrum, inspect and lipschitz on ``checkpoint`` (and diff against ``other``).

    ``stages(name)`` is called as each stage of :data:`STAGES` starts and returns its progress
    callback; without it ``progress`` follows the σ stage only."""
    options = options or ReportOptions()

    def stage(name: str) -> ProgressCallback | None:
        if stages is not None:
            return stages(name)
        return progress if name == "σ" else None

    chosen = {"include": options.include, "exclude": options.exclude}
    spectrum: SpectrumReport | None = None
    spectrum_error = None
    if "spectrum" in options.sections:
        tol = {} if options.tol is None else {"tol": options.tol}  # the top-k values' target
        spectrum_options = SpectrumOptions(
            top_k=options.top_k, workers=options.workers, scheduler=options.scheduler, **tol
        )
        try:
            spectrum = spectra(
                checkpoint, options=spectrum_options, **chosen, progress=stage("spectra")
            )
        except SncliError as exc:
            spectrum_error = exc.message
    if spectrum is not None and spectrum.top_k is None and options.method in _FROM_SPECTRA:
        inspect = sigmas_from_spectra(spectrum, options.method)
    else:
        method_options = MethodOptions(
            method=options.method,
            tol=options.tol,
            workers=options.workers,
            scheduler=options.scheduler,
        )
        inspect = spectral_norms(checkpoint, options=method_options, **chosen, progress=stage("σ"))
    lipschitz: LipschitzReport | None = None
    graph: GraphLipschitzReport | None = None
    lipschitz_error = None
    if "lipschitz" in options.sections:
        lipschitz_options = LipschitzOptions(
            **chosen, workers=options.workers, scheduler=options.scheduler
        )
        try:
            if checkpoint.format == "onnx":  # the bound over its graph, with a lower bound
                from sncli.lipschitz import graph_lipschitz

                stage("Lipschitz factors")
                graph = graph_lipschitz(checkpoint.path, input_shapes=dict(options.input_shapes))
            else:
                lipschitz = lipschitz_report(
                    checkpoint,
                    lipschitz_options,
                    progress=stage("Lipschitz factors"),
                    known_sigmas=_dense_sigmas(spectrum),
                )
        except SncliError as exc:
            lipschitz_error = exc.message
    diff: DiffReport | None = None
    diff_error = None
    if other is not None and "diff" in options.sections:
        method_options = MethodOptions(workers=options.workers, scheduler=options.scheduler)
        try:
            diff = diff_checkpoints(
                checkpoint, other, options=method_options, **chosen, progress=stage("diff")
            )
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


# ----------------------------------------------------------------------------- a run

_PATTERN = re.compile(r"[*?\[]")


def run_items(
    arguments: Sequence[str], steps: Sequence[int] | None = None, *, run: bool = False
) -> list[str] | None:
    """The checkpoints of a run, in step order, when ``arguments`` name one; None when they name
    one checkpoint or the A and B of a diff. A run: three or more checkpoints, two with
    ``run``, any with ``steps``, a pattern, or a folder that is not itself a checkpoint (one
    with no index and several weight files, or ``checkpoint-N/`` folders). Found and ordered
    as ``sncli track`` finds them (:func:`sncli.tracking.series.discover`, whose errors name
    the checkpoint without a step)."""
    from sncli.errors import CheckpointError
    from sncli.formats.sharded import resolve_directory
    from sncli.tracking.series import discover

    arguments = list(arguments)
    if len(arguments) == 2 and not run and steps is None:
        return None
    if len(arguments) == 1 and not run and steps is None:
        path = Path(arguments[0])
        if path.is_dir():
            try:
                resolve_directory(path)
                return None  # a checkpoint folder (an index, a model file): one checkpoint
            except CheckpointError:
                pass
        elif path.exists() or not _PATTERN.search(arguments[0]):
            return None
    return [item.path for item in discover(arguments, steps)]


def folder_run_note(arguments: Sequence[str]) -> str | None:
    """When a single folder argument is one checkpoint (an index, ``model.safetensors``…) but
    also holds a run (``checkpoint-N/`` entries, as a Trainer's output folder does): a note
    saying so (``--run`` reports the run)."""
    from sncli.errors import SncliError
    from sncli.tracking.series import discover

    if len(arguments) != 1 or not Path(arguments[0]).is_dir():
        return None
    try:
        found = discover(arguments)
    except SncliError:
        return None
    if len(found) < 2:
        return None
    return (
        f"{arguments[0]}: reporting the checkpoint in it; it also holds a run of {len(found)} "
        "checkpoints (--run reports the run)"
    )


@dataclass(frozen=True)
class LayerTrend:
    """One layer's metric over a run: ``values`` per step of the run (None where the layer is
    absent or the value undefined), the first value present, the value at the last step, the
    least and the largest, and ``change`` = (last − first)/|first| (None when undefined)."""

    name: str
    kind: str
    values: tuple[float | None, ...]
    first: float | None
    last: float | None
    minimum: float | None
    maximum: float | None
    change: float | None


def layer_trends(run: TrackReport, metric: str = "sigma_max") -> list[LayerTrend]:
    """Per layer (model order), the trend of ``metric`` over the run's steps (what ``sncli
    track``'s table shows: first, last, min, max, change)."""
    kinds = {p.name: p.kind for p in run.points}
    trends = []
    for name, series in run.series(metric).items():
        by_step = dict(series)
        values = tuple(
            None if v is None or not math.isfinite(v) else float(v)
            for v in (by_step.get(step) for step in run.steps)
        )
        present = [v for v in values if v is not None]
        first = present[0] if present else None
        last = values[-1]
        change = None
        if first not in (None, 0) and last is not None:
            change = 0.0 if last == first else (last - first) / abs(first)
        trends.append(
            LayerTrend(
                name=name,
                kind=kinds[name],
                values=values,
                first=first,
                last=last,
                minimum=min(present) if present else None,
                maximum=max(present) if present else None,
                change=change,
            )
        )
    return trends


def run_metrics(run: TrackReport) -> tuple[str, ...]:
    """The metrics a run report shows: σ_max; α, stable and effective rank with the spectrum
    metrics; ‖W_t − W_{t−1}‖₂/σ_max(W_{t−1}) with the deltas."""
    metrics = ("sigma_max",)
    if run.spectrum:
        metrics += ("alpha", "stable_rank", "effective_rank")
    if run.delta:
        metrics += ("delta_relative",)
    return metrics


@dataclass(frozen=True)
class RunReport:
    """What the HTML report of a run shows: the track series (``track``), per metric of
    :func:`run_metrics` the trend of every layer, and the last checkpoint's report (None when
    no part of it was asked for)."""

    track: TrackReport
    trends: dict[str, list[LayerTrend]]
    last: ModelReport | None
    command: str


def build_run_report(
    checkpoints: Sequence[str],
    *,
    steps: Sequence[int] | None = None,
    options: ReportOptions | None = None,
    spectrum: bool = False,
    delta: bool = False,
    key: str | None = None,
    skip_objects: bool = False,
    cache: TrackCache | str | Path | None = None,
    command: str = "",
    stages: StageProgress | None = None,
) -> RunReport:
    """Track every checkpoint of a run (``sncli track``'s engine and cache, with ``spectrum``
        and ``delta`` as its options, σ by ``options.method``), then report the last checkpoint's
        ``options.sections`` (diff: the first checkpoint against the last) as :func:`build_report`
        does, with the first checkpoint as its B (diff: the change from the last back to the first).
    ``checkpoints``/``steps``: as ``sncli track`` takes them."""
    from sncli.checkpoint import open_checkpoint
    from sncli.tracking import TrackOptions, track

    options = options or ReportOptions(sections=RUN_SECTIONS)
    method = MethodOptions(
        method=options.method, tol=options.tol, workers=options.workers, scheduler=options.scheduler
    )
    track_options = TrackOptions(
        method=method,
        spectrum=spectrum,
        delta=delta,
        include=options.include,
        exclude=options.exclude,
        key=key,
        skip_objects=skip_objects,
    )
    series = track(
        checkpoints,
        steps=steps,
        options=track_options,
        cache=cache,
        progress=stages("track") if stages is not None else None,
    )
    last = None
    if options.sections:
        first_path, last_path = series.checkpoints[0].path, series.checkpoints[-1].path
        with open_checkpoint(last_path, key=key, skip_objects=skip_objects) as ckpt:
            if "diff" in options.sections and first_path != last_path:
                with open_checkpoint(first_path, key=key, skip_objects=skip_objects) as first:
                    last = build_report(
                        ckpt, first, options=options, command=command, stages=stages
                    )
            else:
                last = build_report(ckpt, options=options, command=command, stages=stages)
    trends = {metric: layer_trends(series, metric) for metric in run_metrics(series)}
    return RunReport(track=series, trends=trends, last=last, command=command)
