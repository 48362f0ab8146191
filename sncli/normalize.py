"""Spectral normalization of checkpoints: W ← target · W / σ(W), written safely.

The plan (which layers, σ before, scale factor) is computed first and written nowhere. Writing
streams one tensor at a time: every tensor that is not normalized is copied byte for byte, key
order and safetensors ``__metadata__`` are kept (plus one ``sncli`` provenance entry). Scaled
weights are cast back to their stored dtype and measured again with float64 LAPACK; rounding to
bf16/fp16 can push σ above the target, so such weights are shaved by a few ulps until σ ≤ target.
The written files are re-opened and verified before they replace anything.

Safetensors and GGUF files are read, measured, scaled and written as NumPy arrays, without
importing torch (:func:`on_numpy`); PyTorch files keep torch. Both give the same files: the
scaling arithmetic and the casts are torch's (``sncli.scaling``), and only σ comes from another
LAPACK (NumPy's), to ~1e-15 relative. The per-format writes are in ``sncli.normalize_files``.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from pathlib import Path
from typing import Any

from sncli._version import __version__
from sncli.arguments import CheckpointSource, coerce_fields, takes_checkpoints
from sncli.arrays import dtype_name, float64_copy, is_array, to_float64
from sncli.checkpoint import Checkpoint, natural_key
from sncli.errors import (
    CheckpointError,
    NoLayersMatchedError,
    NumericalError,
    SncliError,
    WriteError,
)
from sncli.formats.common import shown_names
from sncli.formats.safetensors import NUMPY_DTYPES
from sncli.formats.sharded import resolve_directory
from sncli.hub import is_cache_blob
from sncli.layers import (
    Layer,
    LayerKind,
    Skipped,
    batchnorm_running_var,
    classify,
    effective_weight,
    matches,
    select,
)
from sncli.messages import ProgressCallback, clean_text
from sncli.normalize_files import (
    Edits,
    LazyTensors,
    copy_file,
    data_bytes,
    verify_file,
    write_gguf,
    write_index_file,
    write_safetensors,
    write_torch,
)
from sncli.numerics.spectral import (
    DEFAULT_POWER_ITERS,
    DEFAULT_SEED,
    Method,
    as_matrix,
    largest_singular_value,
)
from sncli.parametrizations import SpectralNormStyle, baked_name
from sncli.run.blas import numpy_blas_threads
from sncli.scaling import cast_float64, scaled_stack, scaled_weight, stack_plans, top_vectors
from sncli.scaling import diagonal_norm as _diagonal_norm
from sncli.transaction import Transaction, writer_lock


class NormalizeMode(str, Enum):
    SCALE = "scale"  # every selected layer to exactly the target
    CLIP = "clip"  # only layers above the target are scaled down


class Action(str, Enum):
    SCALE = "scale"
    KEEP = "keep"  # clip mode, already at or below target: untouched byte for byte
    SKIP = "skip"  # zero or non-finite weight: never divided, left untouched


@dataclass(frozen=True)
class NormalizeOptions:
    target: float = 1.0
    mode: NormalizeMode = NormalizeMode.SCALE
    method: Method = Method.EXACT
    iters: int = DEFAULT_POWER_ITERS
    tol: float | None = None
    seed: int = DEFAULT_SEED
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    transposed: tuple[str, ...] = ()
    embeddings: bool = False
    norms: bool = False
    bake: bool = False

    def __post_init__(self) -> None:
        coerce_fields(self, mode=NormalizeMode, method=Method)


@dataclass(frozen=True)
class LayerPlan:
    """What will happen to one selected tensor."""

    name: str
    short_name: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    reshape_dim: int
    sigma_before: float | None
    scale: float
    action: Action
    reason: str = ""
    output_name: str = ""
    spectral_norm: SpectralNormStyle | None = None
    #: For spectral-norm layers: keys that accompany the weight (u, v, stored weight).
    companions: tuple[str, ...] = ()
    u_key: str | None = None
    v_key: str | None = None
    sigma_stored_estimate: float | None = None
    #: BatchNorm scales (--norms): the running_var key; the factor is max|γ|/√(running_var + ε).
    running_var: str | None = None
    #: An expert of a mixture-of-experts stack (``sncli.experts``): its index, the stack's key;
    #: ``experts``: on the plan that writes a stack, the plans of its experts.
    expert: int | None = None
    stack: str | None = None
    experts: tuple[LayerPlan, ...] = ()

    @property
    def expected_after(self) -> float | None:
        return None if self.sigma_before is None else self.sigma_before * self.scale


@dataclass(frozen=True)
class NormalizePlan:
    checkpoint: str
    options: NormalizeOptions
    layers: list[LayerPlan]
    skipped: list[Skipped]
    notes: list[str] = field(default_factory=list)

    @cached_property
    def changed(self) -> list[LayerPlan]:
        """Layers whose tensors are rewritten: scaled ones, and with --bake every baked one."""
        return [
            p
            for p in self.layers
            if p.action is Action.SCALE
            or (self.options.bake and p.spectral_norm is not None and p.action is Action.KEEP)
        ]

    def tensor_counts(self) -> tuple[int, int, int]:
        """Other tensors (not selected layers) by what writing does to them:
        (copied byte for byte, rewritten — spectral-norm u, v set to the new singular vectors —,
        dropped — spectral-norm buffers with --bake)."""
        edits = _edits(self)
        others = [s.name for s in self.skipped]
        rewritten = sum(1 for n in others if n in edits.replaced)
        dropped = sum(1 for n in others if n in edits.dropped)
        return len(others) - rewritten - dropped, rewritten, dropped

    def to_pandas(self) -> Any:
        """The planned layers as a pandas DataFrame (pandas optional)."""
        from sncli.tables import to_frame

        return to_frame(self.layers, ("expected_after",), checkpoint=self.checkpoint)

    def nothing_to_normalize(self) -> str | None:
        """Why writing would be pointless — every selected layer is skipped (non-finite, zero,
        not supported), so the output would be a copy — or None when there is work to do."""
        if any(p.action is not Action.SKIP for p in self.layers):
            return None
        reasons = sorted({p.reason for p in self.layers})
        return (
            f"nothing to normalize: all {len(self.layers)} selected layer"
            + ("s were" if len(self.layers) != 1 else " was")
            + f" skipped ({'; '.join(reasons[:3])}); nothing written"
        )


@dataclass(frozen=True)
class LayerOutcome:
    """A written layer: σ measured again on the stored values (float64 LAPACK)."""

    name: str
    output_name: str
    dtype: str
    sigma_before: float | None
    sigma_after: float
    scale: float
    shaves: int


@dataclass(frozen=True)
class NormalizeResult:
    plan: NormalizePlan
    outputs: list[Path]
    layers: list[LayerOutcome]
    warnings: list[str]
    verified: bool

    @property
    def worst_sigma(self) -> float | None:
        return max((o.sigma_after for o in self.layers), default=None)

    def to_pandas(self) -> Any:
        """The written layers (σ measured again) as a pandas DataFrame (pandas optional)."""
        from sncli.tables import to_frame

        return to_frame(self.layers, checkpoint=self.plan.checkpoint, outputs=self.outputs)


def on_numpy(checkpoint: Checkpoint) -> bool:
    """Whether normalize reads, scales and writes ``checkpoint`` as NumPy arrays (no torch):
    where the engines measure it on NumPy (``Checkpoint.numpy_native``: safetensors, GGUF,
    NumPy, Keras, ONNX; not a state dict in memory) and NumPy holds every dtype it stores
    (float8 safetensors tensors load through torch)."""
    if checkpoint.format == "memory" or not checkpoint.numpy_native:
        return False
    return checkpoint.format != "safetensors" or all(
        info.dtype in NUMPY_DTYPES for info in checkpoint.tensors.values()
    )


def _baked_weight(checkpoint: Checkpoint, layer: Layer, arrays: bool) -> tuple[Any, float | None]:
    """W/σ̂ in the raw weight's stored dtype, as ``--bake`` writes it (NumPy with ``arrays``)."""
    if arrays:
        from sncli.lipschitz.weights import effective_weight_array

        array, estimate = effective_weight_array(checkpoint, layer)
        return cast_float64(to_float64(array), layer.dtype), estimate
    import torch

    weight, estimate = effective_weight(checkpoint, layer)
    return weight.to(getattr(torch, layer.dtype)), estimate


@takes_checkpoints("checkpoint")
def plan_normalization(
    checkpoint: CheckpointSource,
    options: NormalizeOptions,
    progress: ProgressCallback | None = None,
) -> NormalizePlan:
    """Measure σ of every selected layer and decide its scale factor. Writes nothing."""

    if not (math.isfinite(options.target) and options.target > 0):
        raise SncliError(f"--target must be a positive finite number, got {options.target}")
    classification = classify(checkpoint, transposed=options.transposed)
    kinds = {LayerKind.LINEAR, LayerKind.CONV1D, LayerKind.CONV2D, LayerKind.CONV3D}
    if options.embeddings:
        kinds.add(LayerKind.EMBEDDING)
    layers = [
        layer
        for layer in select(classification.layers, options.include, options.exclude)
        if layer.kind in kinds and layer.gates == 1  # a gate stack is refused (GATE_STACK)
    ]
    norm_scales: list[str] = []
    if options.norms:
        norm_scales = [
            s.name
            for s in classification.skipped
            if s.reason.startswith("norm scale")
            and matches(s.name, options.include, options.exclude, checkpoint.short_name(s.name))
        ]
    skipped = [s for s in classification.skipped if s.name not in set(norm_scales)]
    chosen = {layer.name for layer in layers}
    skipped += [
        Skipped(layer.name, _unselected_reason(layer))
        for layer in classification.layers
        if layer.name not in chosen
    ]
    total = len(layers) + len(norm_scales)
    stacks = [
        layer
        for layer in select(classification.layers, options.include, options.exclude)
        if layer.gates != 1
    ]
    if total == 0:
        why = f": {_unselected_reason(stacks[0])}" if stacks else ""
        raise NoLayersMatchedError(f"nothing to normalize: no layer matched{why}", checkpoint.path)

    arrays = on_numpy(checkpoint)
    plans: list[LayerPlan] = []
    # One BLAS thread, as inspect's workers: OpenBLAS's sums split over threads round
    # differently, and a plan (and the files it writes) must not depend on the core count.
    with numpy_blas_threads(1):
        for index, layer in enumerate(layers):
            if progress is not None:
                progress(index, total, layer.short_name)
            plans.append(_plan_layer(checkpoint, layer, options, arrays))
        for offset, name in enumerate(norm_scales):
            if progress is not None:
                progress(len(layers) + offset, total, name)
            plans.append(_plan_norm_scale(checkpoint, name, options, arrays))
    if progress is not None:
        progress(total, total, "")
    plans.sort(key=lambda p: natural_key(p.name))
    skipped.sort(key=lambda s: natural_key(s.name))
    notes = list(checkpoint.notes)
    if stacks:
        notes.append(
            f"{len(stacks)} recurrent gate stack{'s' if len(stacks) != 1 else ''} left as "
            f"they are ({', '.join(s.short_name for s in stacks[:4])}"
            + ("…" if len(stacks) > 4 else "")
            + "): scaling a stack would scale all its gates at once"
        )
    if any(p.spectral_norm for p in plans) and not options.bake:
        notes.append(
            "spectral-norm layers: the raw weight is normalized and u, v are set to its exact "
            "singular vectors, so the model's W/σ̂ has σ = 1; use --bake to write plain weights"
        )
    return NormalizePlan(str(checkpoint.path), options, plans, skipped, notes)


#: Why a recurrent weight stacking gates is never normalized (``Layer.gates``).
GATE_STACK = (
    "recurrent gate stack ({what}): not normalized, since scaling the stacked matrix to σ = "
    "target would scale every gate at once by one factor, and σ of the stack is not a gate's"
)


def _unselected_reason(layer: Layer) -> str:
    if layer.gates != 1:
        what = layer.note.removeprefix("recurrent: ").split(";")[0]
        return GATE_STACK.format(what=what)
    if layer.kind is LayerKind.EMBEDDING:
        why = layer.note.removeprefix("embedding: ")
        return f"embedding ({why}): not normalized without --embeddings"
    return "not selected"


def _plan_norm_scale(
    checkpoint: Checkpoint, name: str, options: NormalizeOptions, arrays: bool
) -> LayerPlan:
    """A 1-D norm scale γ as a diagonal map. BatchNorm (running_var next to γ) in eval mode is
    γ/√(running_var + ε), so its factor max|γ|/√(running_var + ε) is brought to the target by
    scaling γ alone; other norms (LayerNorm, RMSNorm, GroupNorm) have max|γ| brought to it."""
    load = checkpoint.load_array if arrays else checkpoint.load
    gamma = load(name)
    var_key = batchnorm_running_var(name, checkpoint.tensors)
    if var_key is None:
        sigma = _diagonal_norm(gamma, None)
        return _decide(name, checkpoint, "norm", tuple(gamma.shape), gamma, sigma, options)
    var = load(var_key)
    base = {"name": name, "short_name": checkpoint.short_name(name), "kind": "batchnorm"}
    if var.shape != gamma.shape or not _finite(var) or bool((float64_copy(var) < 0).any()):
        return LayerPlan(
            **base,
            shape=tuple(gamma.shape),
            dtype=_dtype(gamma),
            reshape_dim=0,
            sigma_before=None,
            scale=1.0,
            action=Action.SKIP,
            reason=f"{var_key} is negative, non-finite or of another shape",
            output_name=name,
        )
    sigma = _diagonal_norm(gamma, var)
    return _decide(
        name,
        checkpoint,
        "batchnorm",
        tuple(gamma.shape),
        gamma,
        sigma,
        options,
        running_var=var_key,
    )


def _decide(
    name: str,
    checkpoint: Checkpoint,
    kind: str,
    shape: tuple[int, ...],
    weight: Any,
    sigma: float,
    options: NormalizeOptions,
    **extra: Any,
) -> LayerPlan:
    base = {
        "name": name,
        "short_name": checkpoint.short_name(name),
        "kind": kind,
        "shape": shape,
        "dtype": _dtype(weight),
        "reshape_dim": extra.pop("reshape_dim", 0),
        "output_name": extra.pop("output_name", name),
    }
    base.update(extra)
    if not _finite(weight):
        return LayerPlan(
            **base, sigma_before=None, scale=1.0, action=Action.SKIP, reason="non-finite values"
        )
    if sigma == 0.0:
        return LayerPlan(
            **base, sigma_before=0.0, scale=1.0, action=Action.SKIP, reason="zero weight (σ = 0)"
        )
    if options.mode is NormalizeMode.CLIP and sigma <= options.target:
        return LayerPlan(
            **base, sigma_before=sigma, scale=1.0, action=Action.KEEP, reason="σ ≤ target"
        )
    return LayerPlan(**base, sigma_before=sigma, scale=options.target / sigma, action=Action.SCALE)


def _skipped_plan(layer: Layer, reason: str) -> LayerPlan:
    return LayerPlan(
        name=layer.name,
        short_name=layer.short_name,
        kind=layer.kind.value,
        shape=layer.shape,
        dtype=layer.dtype,
        reshape_dim=layer.reshape_dim,
        sigma_before=None,
        scale=1.0,
        action=Action.SKIP,
        reason=reason,
    )


def _plan_layer(
    checkpoint: Checkpoint, layer: Layer, options: NormalizeOptions, arrays: bool
) -> LayerPlan:
    if layer.weight_norm is not None:
        return _skipped_plan(
            layer, "weight-norm layer (W = g·v/‖v‖ is stored in parts): not supported yet"
        )
    info = layer.spectral_norm
    extra: dict[str, Any] = {"reshape_dim": layer.reshape_dim}
    if layer.stack is not None:
        extra["expert"], extra["stack"] = layer.expert, layer.stack
    if info is not None:
        extra["spectral_norm"] = info.style
        extra["companions"] = tuple(k for k in (info.u_key, info.v_key, info.effective_key) if k)
        extra["u_key"], extra["v_key"] = info.u_key, info.v_key
    try:
        if info is not None and options.bake:
            weight, estimate = _baked_weight(checkpoint, layer, arrays)
            extra["output_name"] = baked_name(layer.name)
            extra["sigma_stored_estimate"] = estimate
        else:
            weight = checkpoint.load_array(layer.name) if arrays else checkpoint.load(layer.name)
    except NumericalError as exc:
        return _skipped_plan(layer, exc.message)
    matrix = as_matrix(weight, layer.reshape_dim)
    try:
        sigma = largest_singular_value(
            matrix, options.method, iters=options.iters, tol=options.tol, seed=options.seed
        ).sigma
    except NumericalError:
        sigma = math.nan
    return _decide(
        layer.name, checkpoint, layer.kind.value, layer.shape, weight, sigma, options, **extra
    )


def _new_tensors(
    checkpoint: Checkpoint,
    plan: LayerPlan,
    options: NormalizeOptions,
    layer: Layer | None,
    arrays: bool,
) -> tuple[dict[str, Any], list[LayerOutcome]]:
    """Replacement tensors for one scaled layer, keyed by input key (u, v refreshed too); NumPy
    arrays with ``arrays`` (:func:`on_numpy`), else torch tensors.

    ``layer`` is given for spectral-norm layers being baked: their effective weight is written.
    A plan with ``experts`` writes their stack, each expert scaled by its own factor.
    """
    if plan.experts:
        return scaled_stack(checkpoint, plan, options.target, LayerOutcome, arrays)
    load = checkpoint.load_array if arrays else checkpoint.load
    weight = load(plan.name) if layer is None else _baked_weight(checkpoint, layer, arrays)[0]
    running_var = load(plan.running_var) if plan.running_var else None
    new, sigma_after, shaves = scaled_weight(weight, plan, options.target, running_var)
    tensors = {plan.name: new}
    if plan.spectral_norm is not None and not options.bake and plan.u_key:
        u, v = top_vectors(as_matrix(new, plan.reshape_dim))
        for key, vector in ((plan.u_key, u), (plan.v_key, v)):
            if key:
                old = load(key)
                tensors[key] = _cast_like(vector, old).reshape(old.shape)
    outcome = LayerOutcome(
        plan.name, plan.output_name, plan.dtype, plan.sigma_before, sigma_after, plan.scale, shaves
    )
    return tensors, [outcome]


def _dtype(value: Any) -> str:
    """A tensor's or array's dtype as sncli names it (torch's names)."""
    return dtype_name(value) if is_array(value) else str(value.dtype).removeprefix("torch.")


def _finite(value: Any) -> bool:
    """Whether every element is finite (bfloat16 bits upcast first)."""
    if is_array(value):
        from sncli.numerics.floating import check_finite_array

        try:
            check_finite_array(value)  # chunk by chunk: no float64 copy of the weight
        except NumericalError:
            return False
        return True
    import torch

    return bool(torch.isfinite(value).all())


def _cast_like(vector: Any, old: Any) -> Any:
    """A float64 singular vector in the stored dtype of the vector it replaces."""
    if is_array(vector):
        return cast_float64(vector, dtype_name(old))
    return vector.to(old.dtype)


def _edits(plan: NormalizePlan) -> Edits:
    replaced: set[str] = set()
    renames: dict[str, str] = {}
    dropped: set[str] = set()
    for layer in plan.changed:
        replaced.add(layer.name)
        if plan.options.bake and layer.spectral_norm is not None:
            renames[layer.name] = layer.output_name
            dropped.update(layer.companions)
        elif layer.spectral_norm is not None:
            replaced.update(k for k in (layer.u_key, layer.v_key) if k)
    return Edits(replaced, renames, dropped)


def _provenance(plan: NormalizePlan) -> str:
    options = plan.options
    return json.dumps(
        {
            "tool": f"sncli {__version__}",
            "operation": "spectral normalization",
            "target": options.target,
            "mode": options.mode.value,
            "method": options.method.value,
            "bake": options.bake,
            "layers": [p.output_name for p in plan.changed],
        },
        separators=(",", ":"),
    )


def resolve_outputs(
    checkpoint: Checkpoint, output: Path | None, *, in_place: bool, force: bool
) -> dict[Path, Path]:
    """Map each input file (and index) to the path it will be written to; refuse unsafe targets.

    ``--in-place`` writes through symlinks to their targets, which must stay inside the
    checkpoint's folder for a sharded checkpoint (an index entry linking elsewhere would rewrite
    another folder's file). A sharded ``-o`` keeps the index's relative layout of shards.
    """
    sources = list(checkpoint.files)
    if checkpoint.index_path is not None:
        sources.append(checkpoint.index_path)
    if in_place:
        if output is not None:
            raise SncliError("give either -o/--output or --in-place, not both")
        return {s: _in_place_target(checkpoint, s) for s in sources}
    if output is None:
        raise SncliError("say where to write: -o/--output PATH, or --in-place to overwrite")
    output = Path(output)
    sharded = checkpoint.index_path is not None
    if sharded:
        assert checkpoint.index_path is not None
        if output.exists() and not output.is_dir():
            raise SncliError("a sharded checkpoint needs an output folder", output)
        home = checkpoint.index_path.parent
        mapping = {s: output / os.path.relpath(s, home) for s in sources}
    else:
        target = output / sources[0].name if output.is_dir() else output
        mapping = {sources[0]: target}
    for source, target in mapping.items():
        if target.exists() and source.resolve() == target.resolve():
            raise SncliError(
                "output is the input file; use --in-place to overwrite it deliberately", target
            )
        if target.exists() and not force:
            raise SncliError("output exists; pass --force to replace it", target)
    return mapping


def _in_place_target(checkpoint: Checkpoint, source: Path) -> Path:
    """The file ``--in-place`` rewrites for ``source``: the symlink's target, kept inside the
    checkpoint's folder when the checkpoint has an index."""
    resolved = Path(os.path.realpath(source))
    if is_cache_blob(source):
        raise WriteError(
            f"refusing --in-place: {clean_text(os.fsdecode(source.name))!r} is a file of the "
            "Hugging Face cache (a content-addressed blob that other revisions may share, and "
            "whose name is its hash); nothing was changed (write a copy with -o instead)",
            source,
        )
    if checkpoint.index_path is None or source == checkpoint.index_path:
        return resolved
    home = Path(os.path.realpath(checkpoint.index_path.parent))
    if not resolved.is_relative_to(home):
        raise WriteError(
            f"refusing --in-place: shard {clean_text(os.fsdecode(source.name))!r} is a link to "
            f"{clean_text(os.fsdecode(resolved), 200)!r}, outside the checkpoint's folder; "
            "nothing was changed (write a copy with -o instead)",
            checkpoint.index_path,
        )
    return resolved


def write_anchor(path: Path) -> Path | None:
    """The file whose writer lock and journal guard an in-place write of ``path`` (the index or
    the single file, symlinks resolved); None when ``path`` is not there (opening will say)."""
    try:
        if path.is_dir():
            path = resolve_directory(path)
        if not path.exists():
            return None
    except (OSError, ValueError, CheckpointError):
        return None
    return Path(os.path.realpath(path))


#: The formats ``normalize`` can write back (``Checkpoint.format``).
WRITABLE_FORMATS = frozenset({"safetensors", "torch", "gguf"})


def ensure_writable(checkpoint: Checkpoint) -> None:
    """Refuse to write a format normalize has no writer for, or a file read with --skip-objects
    placeholders.

    A placeholder keeps no contents (an ``argparse.Namespace(lr=…, arch=…)`` in Lightning's
    ``hyper_parameters`` comes back empty) and cannot be pickled back as the original class
    without importing it, which ``weights_only`` forbids; writing would silently lose those
    objects. Keeping their original bytes would mean rewriting tensor records inside the zip
    archive and leaving the pickle untouched, which sncli does not do (yet).
    """
    if checkpoint.format not in WRITABLE_FORMATS:
        raise CheckpointError(
            f"cannot write a normalized copy: normalize writes safetensors, PyTorch and GGUF "
            f"files, not {checkpoint.format}; nothing written",
            checkpoint.path,
        )
    if checkpoint.placeholders:
        objects = shown_names(checkpoint.placeholders)
        raise CheckpointError(
            f"cannot write a normalized copy: --skip-objects read {objects} "
            "as placeholders, whose contents would be lost (e.g. Lightning hyper_parameters); "
            "nothing written. Save the state dict alone (or as safetensors) and normalize that",
            checkpoint.path,
        )


@takes_checkpoints("checkpoint")
def normalize_checkpoint(
    checkpoint: CheckpointSource,
    plan: NormalizePlan,
    output: str | os.PathLike[str] | None,
    *,
    in_place: bool = False,
    force: bool = False,
    progress: ProgressCallback | None = None,
    wait: bool = True,
    on_wait: Callable[[str], None] | None = None,
) -> NormalizeResult:
    """Write the normalized checkpoint: every file staged and verified, then all of them
    replaced in one transaction (``sncli.transaction``) under the output's writer lock.

    Raises ``NoLayersMatchedError`` (exit 4), writing nothing, when every selected layer was
    skipped (``NormalizePlan.nothing_to_normalize``).
    """
    ensure_writable(checkpoint)
    why = plan.nothing_to_normalize()
    if why is not None:
        raise NoLayersMatchedError(why, checkpoint.path)
    mapping = resolve_outputs(checkpoint, output, in_place=in_place, force=force)
    targets = set(mapping.values())
    if any(not t.parent.exists() for t in targets):
        parent = next(t.parent for t in targets if not t.parent.exists())
        if checkpoint.index_path is not None and not in_place:
            for target in targets:
                target.parent.mkdir(parents=True, exist_ok=True)
        else:
            raise WriteError("output folder does not exist", parent)
    anchor = mapping[checkpoint.index_path or checkpoint.files[0]]
    with writer_lock(anchor, wait=wait, on_wait=on_wait), numpy_blas_threads(1):
        return _write_all(checkpoint, plan, mapping, anchor, progress)


def _write_all(
    checkpoint: Checkpoint,
    plan: NormalizePlan,
    mapping: dict[Path, Path],
    anchor: Path,
    progress: ProgressCallback | None,
) -> NormalizeResult:
    edits = _edits(plan)
    by_file: dict[Path, list[LayerPlan]] = {}
    for layer in stack_plans(plan.changed):  # the experts of a stack are written as one tensor
        by_file.setdefault(checkpoint.tensors[layer.name].file, []).append(layer)
    layer_plans = {p.name: p for p in plan.layers}
    baked: dict[str, Layer] = {}
    if plan.options.bake:
        baked = {
            layer.name: layer
            for layer in classify(checkpoint, transposed=plan.options.transposed).layers
            if layer.spectral_norm is not None
        }
    touched_files = {checkpoint.tensors[n].file for n in (*edits.dropped, *edits.renames)}
    warnings: list[str] = []
    outcomes: list[LayerOutcome] = []
    data_sizes: dict[Path, int] = {}
    total_changed = len(plan.changed)
    done = 0
    arrays = on_numpy(checkpoint)
    command = " ".join(["sncli", *sys.argv[1:]]) if sys.argv else "sncli"
    with Transaction(anchor, command=clean_text(command, 500)) as tx:
        for source in checkpoint.files:
            target = mapping[source]
            layers = by_file.get(source, [])
            touched = bool(layers) or source in touched_files
            data_sizes[source] = data_bytes(checkpoint, source, edits.dropped)
            if not touched:
                if source.resolve() != target.resolve():
                    copy_file(tx, source, target)
                continue
            file_outcomes: list[LayerOutcome] = []

            def compute(
                layer: LayerPlan, file_outcomes: list[LayerOutcome] = file_outcomes
            ) -> dict[str, Any]:
                nonlocal done
                if progress is not None:
                    progress(done, total_changed, layer.short_name)
                tensors, outcomes = _new_tensors(
                    checkpoint, layer, plan.options, baked.get(layer.name), arrays
                )
                file_outcomes.extend(outcomes)
                done += 1
                return tensors

            if checkpoint.format == "safetensors":
                lazy = LazyTensors(layers, compute, plan.options.bake)
                staged = write_safetensors(tx, source, target, lazy, edits, _provenance(plan))
            elif checkpoint.format == "gguf":
                new_gguf: dict[str, Any] = {}
                for layer in layers:
                    new_gguf.update(compute(layer))
                staged = write_gguf(tx, source, target, new_gguf)
                del new_gguf
            else:
                new: dict[str, Any] = {}
                for layer in layers:
                    new.update(compute(layer))
                staged = write_torch(tx, checkpoint, source, target, new, edits, warnings)
                del new
            outcomes.extend(file_outcomes)
            verify_file(
                checkpoint, staged.temp, source, edits, file_outcomes, layer_plans, plan, arrays
            )
        if checkpoint.index_path is not None:
            index_target = mapping[checkpoint.index_path]
            write_index_file(tx, checkpoint, index_target, edits, sum(data_sizes.values()))
        tx.commit()
        outputs = sorted({s.target for s in tx.staged}, key=lambda p: natural_key(str(p)))
    if progress is not None:
        progress(total_changed, total_changed, "")
    return NormalizeResult(plan, outputs, outcomes, warnings, verified=True)
