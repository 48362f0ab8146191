"""A training run's checkpoints as a series: σ_max per checkpoint × layer (inspect's
measurement), drift against the first and the previous checkpoint, and optionally the spectrum
metrics (``sncli spectrum``'s) and ‖W_t − W_{t−1}‖₂ (``sncli diff``'s), each checkpoint's
results cached (:mod:`sncli.tracking.cache`) so a rerun computes only what is new or changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sncli.analysis import MethodOptions
from sncli.arguments import coerce_fields
from sncli.checkpoint import Checkpoint, natural_key, open_checkpoint
from sncli.errors import NoLayersMatchedError
from sncli.messages import Level, Message, ProgressCallback, level_of
from sncli.tracking.cache import TrackCache, cached_layers, content_stamp, exact_names
from sncli.tracking.rows import COLUMNS, EXTRA_COLUMNS, SPECTRUM_COLUMNS, point_row
from sncli.tracking.series import SeriesItem, discover

__all__ = [
    "SPECTRUM_COLUMNS",
    "TrackCheckpoint",
    "TrackOptions",
    "TrackPoint",
    "TrackReport",
    "Tracker",
    "track",
]


@dataclass(frozen=True)
class TrackOptions:
    """What a track run computes. ``method``: inspect's σ settings; ``spectrum``: add the
    spectrum metrics (full float64 spectra); ``delta``: add ‖W_t − W_{t−1}‖₂ (diff's
    measurement, no subspaces); ``key``/``skip_objects``: as for opening any checkpoint.
    ``hill``/``snr``/``mp_fit``/``randomize`` (with ``spectrum``): add ``sncli spectrum``'s
    extra metrics (alpha_hill; Spectrum's SNR; WeightWatcher's MP fit; its randomized ESD,
    seeded by ``method.seed``)."""

    method: MethodOptions = field(default_factory=MethodOptions)
    spectrum: bool = False
    delta: bool = False
    hill: bool = False
    snr: bool = False
    mp_fit: bool = False
    randomize: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    transposed: tuple[str, ...] = ()
    key: str | None = None
    skip_objects: bool = False

    def __post_init__(self) -> None:
        coerce_fields(self)

    def selection(self) -> dict[str, tuple[str, ...]]:
        return {"include": self.include, "exclude": self.exclude, "transposed": self.transposed}

    def sigma_key_options(self) -> dict[str, Any]:
        """What changes σ: the method's settings (not where or how parallel it runs)."""
        method = self.method
        return {
            "method": str(
                method.method.value if hasattr(method.method, "value") else method.method
            ),
            "iters": method.iters,
            "tol": method.tol,
            "seed": method.seed,
            "certify": method.certify,
            "warm_start": method.warm_start,
            "device": method.device,
            **self._common(),
        }

    def _common(self) -> dict[str, Any]:
        return {
            "include": list(self.include),
            "exclude": list(self.exclude),
            "transposed": list(self.transposed),
            "key": self.key,
        }

    def spectrum_key_options(self) -> dict[str, Any]:
        """What changes the spectrum records: the selection, and each extra metric asked for
        (only when asked, so the plain ``--spectrum`` entries of earlier runs stay valid)."""
        options = self._common()
        if self.hill:
            options["hill"] = True
        if self.snr:
            options["snr"] = True
        if self.mp_fit:
            options["mp_fit"] = True
        if self.randomize:
            options["randomize"] = True
            options["seed"] = self.method.seed
        return options

    @property
    def extras(self) -> tuple[str, ...]:
        """The extra columns these options add (``sncli.spectrum.EXTRA_METRICS`` order)."""
        return self._spectrum_options().extras if self.spectrum else ()

    def _spectrum_options(self) -> Any:
        from sncli.spectrum import SpectrumOptions

        return SpectrumOptions(
            seed=self.method.seed,
            workers=self.method.workers,
            scheduler=self.method.scheduler,
            hill=self.hill,
            snr=self.snr,
            mp_fit=self.mp_fit,
            randomize=self.randomize,
        )


@dataclass(frozen=True)
class TrackPoint:
    """One checkpoint × layer. ``drift_first``/``drift_prev``: relative change of σ_max,
    (σ_t − σ_ref)/σ_ref, against the first checkpoint and the previous one (None where the
    layer is absent there, or σ_ref = 0 while σ_t ≠ 0; exactly 0 for a layer that did not
    move). ``delta``: ‖W_t − W_{t−1}‖₂ and ``delta_relative`` = delta/σ_{t−1} (``--delta``).
    ``metrics``: the spectrum metrics (``--spectrum``), keyed as ``SPECTRUM_COLUMNS``."""

    step: int
    checkpoint: str
    name: str
    short_name: str
    kind: str
    rows: int
    cols: int
    sigma_max: float
    bound: str
    drift_first: float | None = None
    drift_prev: float | None = None
    delta: float | None = None
    delta_relative: float | None = None
    metrics: Mapping[str, float | int | None] = field(default_factory=dict, compare=False)

    def value(self, metric: str) -> float | int | None:
        """A metric by name: a field (sigma_max, drift_first, delta…) or a spectrum metric."""
        if metric in SPECTRUM_COLUMNS or metric in EXTRA_COLUMNS:
            return self.metrics.get(metric)
        return getattr(self, metric)


@dataclass(frozen=True)
class TrackCheckpoint:
    """One checkpoint of the run; ``cached``: its results came from the cache."""

    step: int
    path: str
    format: str
    cached: bool


@dataclass(frozen=True)
class TrackReport:
    """The run: its checkpoints in step order and one point per checkpoint × layer (in step,
    then model order). ``computed`` counts the checkpoints measured in this call (the rest came
    from the cache)."""

    checkpoints: list[TrackCheckpoint]
    points: list[TrackPoint]
    method: str
    spectrum: bool
    delta: bool
    notes: list[str] = field(default_factory=list)
    computed: int = 0
    seconds: float | None = None
    #: The extra spectrum columns asked for (``TrackOptions.extras``), after ``COLUMNS``.
    extras: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        """The output's columns: ``COLUMNS`` then ``extras``."""
        return (*COLUMNS, *self.extras)

    @property
    def steps(self) -> list[int]:
        return [c.step for c in self.checkpoints]

    def layers(self) -> list[str]:
        """Every layer name seen, in model (natural key) order."""
        names = {p.name: None for p in self.points}
        return sorted(names, key=natural_key)

    def series(self, metric: str = "sigma_max") -> dict[str, list[tuple[int, Any]]]:
        """Per layer, (step, value) over the run (steps where the layer exists)."""
        out: dict[str, list[tuple[int, Any]]] = {name: [] for name in self.layers()}
        for point in self.points:
            out[point.name].append((point.step, point.value(metric)))
        return out

    def to_pandas(self) -> Any:
        """The points as a long-form DataFrame (one row per checkpoint × layer; the columns of
        the CSV output). Needs pandas."""
        try:
            import pandas
        except ImportError as exc:  # pragma: no cover - pandas is installed in the test env
            raise ImportError("to_pandas() needs pandas: pip install pandas") from exc
        frame = pandas.DataFrame(
            [point_row(p, self.extras) for p in self.points], columns=list(self.columns)
        )
        frame.attrs.update({"method": self.method, "steps": self.steps})
        return frame


# ----------------------------------------------------------------------------- computing


def _note_pairs(notes: Iterable[str]) -> list[list[Any]]:
    return [[int(level_of(note)), str(note)] for note in notes]


def _notes_of(pairs: Iterable[list[Any]]) -> list[str]:
    return [Message(text, Level(level)) for level, text in pairs]


def _only(options: TrackOptions, names: Sequence[str] | None) -> TrackOptions:
    """The options narrowed to exactly these layers (None: as they are)."""
    if names is None:
        return options
    return dataclasses.replace(options, include=(exact_names(names),), exclude=())


def _chosen(layers: Sequence[Sequence[str]] | None, options: TrackOptions) -> list[str] | None:
    """The layers (of a cached list of every layer) the run's filters select; None when not
    known or none (then the engine runs and says why)."""
    from sncli.layers import matches

    if not layers:
        return None
    chosen = [n for n, short in layers if matches(n, options.include, options.exclude, short)]
    return chosen or None


def _sigma_payload(ckpt: Checkpoint, options: TrackOptions) -> dict[str, Any]:
    from sncli.analysis import spectral_norms
    from sncli.layers import classify

    report = spectral_norms(ckpt, options=options.method, **options.selection())
    every = classify(ckpt, transposed=options.transposed).layers
    layer_names = {layer.name for layer in every}
    records = [
        {
            "name": layer.name,
            "short_name": layer.short_name,
            "kind": layer.kind.value,
            "rows": layer.matrix_shape[0],
            "cols": layer.matrix_shape[1],
            "sigma_max": layer.sigma,
            "bound": layer.bound.value,
        }
        for layer in report.layers
    ]
    missing = {  # selected layers that failed (not finite): not recomputed while cached
        s.name: _note_pairs(
            [f"{s.name} not measured: {s.reason}"] if s.reason.startswith("non-") else []
        )
        for s in report.skipped
        if s.name in layer_names
    }
    return {
        "format": ckpt.format,
        "records": records,
        "notes": _note_pairs(report.notes),
        "missing": missing,
        "layers": [[layer.name, layer.short_name] for layer in every],
    }


def _spectrum_payload(ckpt: Checkpoint, options: TrackOptions) -> dict[str, Any]:
    from sncli.spectrum import spectra

    spectrum_options = options._spectrum_options()
    try:
        report = spectra(ckpt, options=spectrum_options, **options.selection())
    except NoLayersMatchedError:
        return {"format": ckpt.format, "records": [], "notes": []}
    records = []
    for layer in report.layers:
        record: dict[str, Any] = {"name": layer.name}
        record.update({column: getattr(layer, column) for column in SPECTRUM_COLUMNS})
        record.update({column: getattr(layer, column) for column in spectrum_options.extras})
        records.append(record)
    return {"format": ckpt.format, "records": records, "notes": []}


def _delta_payload(before: Checkpoint, after: Checkpoint, options: TrackOptions) -> dict[str, Any]:
    from sncli.diff import diff_checkpoints

    try:
        report = diff_checkpoints(
            before, after, options=options.method, top_k=0, **options.selection()
        )
    except NoLayersMatchedError:  # none of these layers is in the previous checkpoint
        return {"format": after.format, "records": [], "notes": []}
    records = [
        {"name": layer.key_b, "delta": layer.delta_sigma, "delta_relative": layer.relative}
        for layer in report.layers
    ]
    return {"format": after.format, "records": records, "notes": []}


@dataclass
class _Source:
    """One checkpoint of the series as the engine sees it: how to open it, and its stamp."""

    step: int
    label: str
    opener: Callable[[], Checkpoint]
    stamp: list[Any] | None
    format: str = ""
    cached: bool = True


@dataclass
class _Run:
    options: TrackOptions
    cache: TrackCache | None
    notes: dict[str, None] = field(default_factory=dict)

    def _cached(
        self,
        kind: str,
        stamps: list[Any] | None,
        key_options: dict[str, Any],
        wanted: Callable[[Mapping[str, Any] | None], Sequence[str] | None],
        compute: Callable[[TrackOptions], dict[str, Any]],
    ) -> tuple[dict[str, Any], bool]:
        """Per layer through the cache (:func:`~sncli.tracking.cache.cached_layers`):
        ``compute`` gets the options narrowed to the layers the entry lacks."""

        def computed(names: Sequence[str] | None) -> dict[str, Any]:
            payload = compute(_only(self.options, names))
            if names is not None:  # asked for, but no record: not asked again
                done = {r["name"] for r in payload["records"]} | set(payload.get("missing", {}))
                payload.setdefault("missing", {}).update({n: [] for n in names if n not in done})
            return payload

        return cached_layers(self.cache, kind, stamps, key_options, wanted, computed)

    def measure(
        self, source: _Source, previous: _Source | None
    ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """The sigma, spectrum and delta records of one checkpoint (from the cache or not)."""
        opened: dict[int, Checkpoint] = {}

        def get(which: _Source) -> Checkpoint:
            if id(which) not in opened:
                opened[id(which)] = which.opener()
            return opened[id(which)]

        options = self.options
        try:
            sigma, hit = self._cached(
                "sigma",
                source.stamp,
                options.sigma_key_options(),
                lambda entry: _chosen(entry.get("layers") if entry else None, options),
                lambda narrowed: _sigma_payload(get(source), narrowed),
            )
            all_hit = hit
            source.format = sigma.get("format", "")
            for note in _notes_of(sigma.get("notes", [])):
                self.notes[note] = None
            names = [r["name"] for r in sigma["records"]]
            spectrum: dict[str, dict[str, Any]] = {}
            if options.spectrum:
                payload, hit = self._cached(
                    "spectrum",
                    source.stamp,
                    options.spectrum_key_options(),
                    lambda _: names,
                    lambda narrowed: _spectrum_payload(get(source), narrowed),
                )
                all_hit &= hit
                spectrum = {r["name"]: r for r in payload["records"]}
            delta: dict[str, dict[str, Any]] = {}
            if options.delta and previous is not None:
                stamps = (
                    None
                    if previous.stamp is None or source.stamp is None
                    else [previous.stamp, source.stamp]
                )
                payload, hit = self._cached(
                    "delta",
                    stamps,
                    options.sigma_key_options(),
                    lambda _: names,
                    lambda narrowed: _delta_payload(get(previous), get(source), narrowed),
                )
                all_hit &= hit
                delta = {r["name"]: r for r in payload["records"]}
            source.cached = all_hit
        finally:
            for ckpt in opened.values():
                ckpt.close()
        return sigma["records"], spectrum, delta


def _drift(value: float, reference: float | None) -> float | None:
    if reference is None:
        return None
    if value == reference:
        return 0.0
    if reference == 0:
        return None
    return (value - reference) / reference


def _assemble(
    sources: Sequence[_Source],
    measured: Sequence[tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]],
) -> list[TrackPoint]:
    points: list[TrackPoint] = []
    first: dict[str, float] = {}
    previous: dict[str, float] = {}
    for index, (source, (sigma, spectrum, delta)) in enumerate(zip(sources, measured, strict=True)):
        current: dict[str, float] = {}
        for record in sigma:
            name = record["name"]
            value = float(record["sigma_max"])
            if index == 0:
                first[name] = value
            moved = delta.get(name, {})
            metrics = spectrum.get(name)
            points.append(
                TrackPoint(
                    step=source.step,
                    checkpoint=source.label,
                    name=name,
                    short_name=record["short_name"],
                    kind=record["kind"],
                    rows=int(record["rows"]),
                    cols=int(record["cols"]),
                    sigma_max=value,
                    bound=record["bound"],
                    drift_first=_drift(value, first.get(name)),
                    drift_prev=_drift(value, previous.get(name)) if index else None,
                    delta=moved.get("delta"),
                    delta_relative=moved.get("delta_relative"),
                    metrics={c: v for c, v in metrics.items() if c != "name"} if metrics else {},
                )
            )
            current[name] = value
        previous = current
    return points


def _run(
    sources: list[_Source],
    options: TrackOptions,
    cache: TrackCache | None,
    progress: ProgressCallback | None,
) -> TrackReport:
    began = time.perf_counter()
    run = _Run(options, cache)
    measured = []
    for index, source in enumerate(sources):
        if progress is not None:
            progress(index, len(sources), source.label)
        measured.append(run.measure(source, sources[index - 1] if index else None))
    if progress is not None:
        progress(len(sources), len(sources), "")
    notes = list(run.notes)
    if cache is not None:
        notes += cache.notes
    return TrackReport(
        checkpoints=[TrackCheckpoint(s.step, s.label, s.format, s.cached) for s in sources],
        points=_assemble(sources, measured),
        method=str(getattr(options.method.method, "value", options.method.method)),
        spectrum=options.spectrum,
        delta=options.delta,
        notes=notes,
        computed=sum(1 for s in sources if not s.cached),
        seconds=time.perf_counter() - began,
        extras=options.extras,
    )


def track(
    paths: Sequence[str | Path] | str | Path,
    *,
    steps: Sequence[int] | None = None,
    options: TrackOptions | None = None,
    cache: TrackCache | str | Path | None = None,
    progress: ProgressCallback | None = None,
) -> TrackReport:
    """Measure every checkpoint of a run (paths, a run folder, or a glob; see
    :func:`sncli.tracking.series.discover`) in step order. ``cache``: a :class:`TrackCache` or its
    folder; None computes everything. ``progress(done, total, checkpoint)`` per checkpoint."""
    options = options or TrackOptions()
    if isinstance(paths, str | Path):
        paths = [paths]
    if cache is not None and not isinstance(cache, TrackCache):
        cache = TrackCache(cache)
    items: list[SeriesItem] = discover([str(p) for p in paths], steps)

    def opener(path: str) -> Callable[[], Checkpoint]:
        return lambda: open_checkpoint(path, key=options.key, skip_objects=options.skip_objects)

    sources = [
        _Source(
            item.step, item.path, opener(item.path), content_stamp(item.path) if cache else None
        )
        for item in items
    ]
    return _run(sources, options, cache, progress)


# ----------------------------------------------------------------------------- in memory


def memory_checkpoint(state_dict: Mapping[str, Any], label: str) -> Checkpoint:
    """A state dict in memory as a :class:`Checkpoint` (tensors moved to the CPU, detached),
    so the engines read it as they read a file."""
    from sncli.checkpoint import _assemble as assemble_checkpoint
    from sncli.checkpoint import _torch_infos

    path = Path(label)
    state = {
        key: value.detach().to("cpu") if hasattr(value, "detach") else value
        for key, value in state_dict.items()
    }
    infos, aliases, non_tensors, unsupported = _torch_infos(state, path)
    return assemble_checkpoint(
        path,
        "memory",
        [path],
        infos,
        [],
        None,
        aliases=aliases,
        non_tensor_keys=non_tensors,
        unsupported=unsupported,
        _state_dicts={path: state},
    )


def state_dict_stamp(state_dict: Mapping[str, Any]) -> list[Any]:
    """A content stamp of a state dict: a hash of every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for key in sorted(k for k in state_dict if isinstance(k, str)):
        value = state_dict[key]
        if not hasattr(value, "detach"):
            continue
        tensor = value.detach().to("cpu").contiguous()
        digest.update(f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(dtype=_byte_dtype()).numpy().tobytes())
    return [["memory", digest.hexdigest()]]


def _byte_dtype() -> Any:
    import torch

    return torch.uint8


class Tracker:
    """The track measurements from a training loop: ``Tracker(cache).add(model.state_dict(),
    step)`` measures that state dict as ``track`` measures a saved checkpoint (same numbers),
    without writing files; ``report()`` gives the run so far. With ``options.delta`` the
    previous state dict is kept (a CPU copy) for ‖W_t − W_{t−1}‖₂."""

    def __init__(
        self, cache: TrackCache | str | Path | None = None, options: TrackOptions | None = None
    ) -> None:
        self.options = options or TrackOptions()
        self.cache = cache if cache is None or isinstance(cache, TrackCache) else TrackCache(cache)
        self._sources: list[_Source] = []
        self._measured: list[tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]] = []
        self._run = _Run(self.options, self.cache)
        self._computed = 0

    def add(self, state_dict: Mapping[str, Any], step: int) -> list[TrackPoint]:
        """Measure one state dict at ``step`` (after every step added before); returns its
        points."""
        if self._sources and step <= self._sources[-1].step:
            raise ValueError(f"step {step} is not after the last step {self._sources[-1].step}")
        label = f"<memory step {step}>"
        keep = self.options.delta  # the next step's delta reads this state: a copy
        state = {key: _cpu(value, copy=keep) for key, value in state_dict.items()}
        stamp = state_dict_stamp(state) if self.cache is not None else None
        source = _Source(step, label, lambda: memory_checkpoint(state, label), stamp)
        previous = self._sources[-1] if self._sources else None
        self._measured.append(self._run.measure(source, previous))
        if not source.cached:
            self._computed += 1
        if previous is not None:
            previous.opener = _gone
        if not keep:
            source.opener = _gone
        self._sources.append(source)
        points = _assemble(self._sources, self._measured)
        return [p for p in points if p.step == step]

    def report(self) -> TrackReport:
        return TrackReport(
            checkpoints=[
                TrackCheckpoint(s.step, s.label, s.format, s.cached) for s in self._sources
            ],
            points=_assemble(self._sources, self._measured),
            method=str(getattr(self.options.method.method, "value", self.options.method.method)),
            spectrum=self.options.spectrum,
            delta=self.options.delta,
            notes=list(self._run.notes) + (self.cache.notes if self.cache else []),
            computed=self._computed,
            extras=self.options.extras,
        )


def _cpu(value: Any, *, copy: bool) -> Any:
    if not hasattr(value, "detach"):
        return value
    tensor = value.detach().to("cpu")
    return tensor.clone() if copy else tensor


def _gone() -> Checkpoint:  # pragma: no cover - only reached by a bug
    raise RuntimeError("the previous state dict was not kept")
