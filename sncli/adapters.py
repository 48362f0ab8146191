"""LoRA adapters as input: σ and spectra of each update s·B·A from its factors, the merged
W + ΔW over a base checkpoint, and two adapters' update subspaces compared.

An opened checkpoint that is an adapter carries ``checkpoint.adapter``
(:mod:`sncli.formats.peft` recognised it). One layer per adapted module, named by its module
path, kind ``lora``. Its singular values come from the factors (:mod:`sncli.numerics.lowrank`:
QR of B and Aᵀ, SVD of the r×r core), never from the m×n product. With a base checkpoint,
:func:`merged_checkpoint` presents W + ΔW (DoRA: the magnitude-rescaled rows, as PEFT merges)
as an ordinary checkpoint, so ``inspect``, ``spectrum`` and ``diff`` run on it unchanged.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sncli.analysis import InspectReport, LayerSigma
from sncli.checkpoint import Checkpoint, TensorInfo, natural_key
from sncli.errors import CheckpointError, NoLayersMatchedError, NumericalError
from sncli.formats.common import FormatContents, quote
from sncli.layers import LayerKind, Skipped, matches
from sncli.messages import ProgressCallback
from sncli.numerics.spectral import BoundKind, Method
from sncli.spectrum import LayerSpectrum, SpectrumReport, dtype_eps

if TYPE_CHECKING:
    import numpy as np
    import torch

    from sncli.formats.peft import AdaptedModule, Adapter

#: How the matrix of a ``lora`` layer is described in reports.
LORA_MATRIX = "s·B·A (from the factors)"
#: What every adapter report says about how its numbers were found.
FACTOR_NOTE = (
    "σ of each LoRA update s·B·A from its factors: QR of B and Aᵀ, SVD of the r×r core "
    "(float64); the m×n product is never formed"
)
#: The algorithm reported for spectra from factors.
LORA_ALGORITHM = "lowrank-qr-svd"


def adapter_of(checkpoint: Checkpoint) -> Adapter:
    if checkpoint.adapter is None:
        raise CheckpointError("is not a LoRA adapter", checkpoint.path)
    return checkpoint.adapter


def refuse_adapter(checkpoint: Checkpoint, command: str) -> None:
    """``lipschitz`` (and other whole-network commands) on an adapter: a clear refusal."""
    if checkpoint.adapter is not None:
        raise CheckpointError(
            f"is a LoRA adapter, not a network: {command} needs the model itself. An adapter "
            "only changes weights (σ of each update: sncli inspect ADAPTER); merge it into its "
            "base (PEFT's merge_and_unload) and run sncli "
            f"{command} on the merged model",
            checkpoint.path,
        )


def _selected(
    adapter: Adapter, include: Iterable[str], exclude: Iterable[str], path: object
) -> list[AdaptedModule]:
    include, exclude = tuple(include), tuple(exclude)
    chosen = [m for m in adapter.modules if matches(m.name, include, exclude)]
    if not chosen:
        reason = (
            f"none of its {len(adapter.modules)} adapted modules matched the filters"
            if adapter.modules
            else "it holds no LoRA factors"
        )
        raise NoLayersMatchedError(f"nothing to analyse: {reason}", path)
    return chosen


def factors(checkpoint: Checkpoint, module: AdaptedModule) -> tuple[torch.Tensor, torch.Tensor]:
    """(B as m × r, A as r × n), as stored (dtype kept)."""
    b = checkpoint.load(module.b_key)
    a = checkpoint.load(module.a_key)
    return b.reshape(b.shape[0], -1), a.reshape(a.shape[0], -1)


def update_svd(checkpoint: Checkpoint, module: AdaptedModule) -> Any:
    """The SVD of the module's ΔW = s·B·A (a ``LowRankSVD``), from its factors."""
    from sncli.numerics.lowrank import lowrank_svd

    b, a = factors(checkpoint, module)
    return lowrank_svd(b, a, module.scale)


def _skipped(adapter: Adapter, failed: list[Skipped]) -> list[Skipped]:
    items = [Skipped(name, reason) for name, reason in adapter.others.items()] + failed
    return sorted(items, key=lambda s: natural_key(s.name))


def adapter_sigmas(
    checkpoint: Checkpoint,
    *,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    progress: ProgressCallback | None = None,
) -> InspectReport:
    """σ_max of every adapted module's update s·B·A (kind ``lora``), from its factors."""
    adapter = adapter_of(checkpoint)
    began = time.perf_counter()
    layers, failed = _each_module(
        checkpoint, _selected(adapter, include, exclude, checkpoint.path), _module_sigma, progress
    )
    return InspectReport(
        checkpoint=str(checkpoint.path),
        format=f"{checkpoint.format} ({adapter.format} LoRA adapter)",
        method=Method.EXACT,
        layers=layers,
        skipped=_skipped(adapter, failed),
        notes=[*checkpoint.notes, FACTOR_NOTE],
        seconds=time.perf_counter() - began,
    )


#: What :func:`_each_module` measures per module (a LayerSigma or a LayerSpectrum).
Measured = TypeVar("Measured")


def _each_module(
    checkpoint: Checkpoint,
    modules: list[AdaptedModule],
    measure: Callable[[AdaptedModule, np.ndarray], Measured],
    progress: ProgressCallback | None,
) -> tuple[list[Measured], list[Skipped]]:
    """``measure(module, singular values of its update)`` for each module, in order; a module
    whose update cannot be measured is skipped with the reason, and none measured is an error."""
    results: list[Measured] = []
    failed: list[Skipped] = []
    for done, module in enumerate(modules):
        if progress is not None:
            progress(done, len(modules), module.name)
        try:
            results.append(measure(module, update_svd(checkpoint, module).values))
        except NumericalError as exc:
            failed.append(Skipped(module.name, exc.message))
    if progress is not None:
        progress(len(modules), len(modules), "")
    if not results:
        raise NumericalError(
            f"no adapted module could be measured: {failed[0].name}: {failed[0].reason}",
            checkpoint.path,
        )
    return results, failed


def _module_sigma(module: AdaptedModule, values: np.ndarray) -> LayerSigma:
    return LayerSigma(
        name=module.name,
        short_name=module.name,
        kind=LayerKind.LORA,
        shape=module.weight_shape,
        dtype=module.dtype,
        matrix_shape=module.matrix_shape,
        matrix=LORA_MATRIX,
        sigma=float(values[0]) if values.size else 0.0,
        method=Method.EXACT,
        bound=BoundKind.EXACT,
        algorithm=LORA_ALGORITHM,
        rank=module.rank,
        scale=module.scale,
    )


def _module_spectrum(module: AdaptedModule, values: np.ndarray) -> LayerSpectrum:
    import numpy as np

    from sncli.numerics.esd import spectrum_metrics

    shape = module.matrix_shape
    full = np.zeros(min(shape))
    full[: values.size] = values[: full.size]
    eps = dtype_eps(module.dtype)
    metrics = spectrum_metrics(full, shape, eps)
    numbers = {}
    for item in fields(metrics):
        if item.name == "small_n_fit":
            continue
        value = getattr(metrics, item.name)
        finite = value is None or isinstance(value, int) or math.isfinite(value)
        numbers[item.name] = value if finite else None
    values = np.array(values, dtype=np.float64)
    values.setflags(write=False)
    return LayerSpectrum(
        name=module.name,
        short_name=module.name,
        kind=LayerKind.LORA,
        shape=module.weight_shape,
        dtype=module.dtype,
        matrix_shape=shape,
        matrix=LORA_MATRIX,
        algorithm=LORA_ALGORITHM,
        bound="exact",
        complete=True,
        eps=eps,
        values=values,
        small_n_fit=metrics.small_n_fit,
        rank=module.rank,
        scale=module.scale,
        **numbers,
    )


def adapter_spectra(
    checkpoint: Checkpoint,
    *,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    progress: ProgressCallback | None = None,
) -> SpectrumReport:
    """The r singular values of every adapted module's update, with the metrics of its whole
    spectrum (the other min(m, n) − r singular values are zero and counted as such)."""
    adapter = adapter_of(checkpoint)
    began = time.perf_counter()
    layers, failed = _each_module(
        checkpoint,
        _selected(adapter, include, exclude, checkpoint.path),
        _module_spectrum,
        progress,
    )
    notes = [*checkpoint.notes, FACTOR_NOTE]
    notes.append(
        "LoRA updates: each layer lists its r singular values; the metrics count the other "
        "min(m, n) − r singular values, which are zero"
    )
    return SpectrumReport(
        checkpoint=str(checkpoint.path),
        format=f"{checkpoint.format} ({adapter.format} LoRA adapter)",
        layers=layers,
        skipped=_skipped(adapter, failed),
        notes=notes,
        seconds=time.perf_counter() - began,
    )


# --- the merged W + ΔW over a base checkpoint -------------------------------------------------

#: Prefixes kohya puts before a module's flattened path (text encoders, UNet, DiT).
_KOHYA_PREFIX = re.compile(r"^lora_(unet|te\d*|transformer|text_encoder\d*)_|^lora_")


def _base_weight_key(module: AdaptedModule, adapter: Adapter, base: Checkpoint) -> str | None:
    """The base key of the weight a module adapts: the same module path (PEFT) or the same
    path with dots flattened to ``_`` (kohya), matched whole or as a suffix on a separator
    boundary when one side carries an extra prefix; None when no single key fits."""
    weights = [k for k in base.tensors if k.endswith(".weight")]
    if adapter.format == "peft":
        wanted, sep = module.name, "."
        flat = {k[: -len(".weight")]: k for k in weights}
    else:
        wanted, sep = _KOHYA_PREFIX.sub("", module.name), "_"
        flat = {k[: -len(".weight")].replace(".", "_"): k for k in weights}
    if wanted in flat:
        return flat[wanted]
    found = [
        key
        for path, key in flat.items()
        if path.endswith(sep + wanted) or wanted.endswith(sep + path)
    ]
    return found[0] if len(found) == 1 else None


def merged_weight(
    base_weight: torch.Tensor,
    b: torch.Tensor,
    a: torch.Tensor,
    module: AdaptedModule,
    magnitude: torch.Tensor | None,
) -> torch.Tensor:
    """W + s·B·A in float64, shaped as W (PEFT's merge: transposed for embeddings and
    ``fan_in_fan_out``; DoRA: each output row of W + ΔW rescaled to its magnitude m_i)."""
    import torch

    delta = module.scale * (b.to(torch.float64) @ a.to(torch.float64))  # (m, n)
    weight = base_weight.to(torch.float64)
    rows = weight.T if module.transposed else weight.reshape(module.out_features, -1)
    merged = rows + delta
    if magnitude is not None:
        norms = torch.linalg.vector_norm(merged, dim=1)
        merged = merged * (magnitude.to(torch.float64).reshape(-1) / norms).reshape(-1, 1)
    return merged.T.contiguous() if module.transposed else merged.reshape(weight.shape)


def merged_checkpoint(adapter_ckpt: Checkpoint, base: Checkpoint) -> Checkpoint:
    """The base's adapted weights with the adapter merged (W + ΔW, float64 values under the
    base's names, shapes and dtypes), as a checkpoint every engine reads. Raises
    ``CheckpointError`` naming the module when the base lacks a weight or its shape disagrees."""
    adapter = adapter_of(adapter_ckpt)
    if base.adapter is not None:
        raise CheckpointError("is a LoRA adapter, not a base model for --base", base.path)
    keys: dict[str, AdaptedModule] = {}
    for module in adapter.modules:
        key = _base_weight_key(module, adapter, base)
        if key is None:
            raise CheckpointError(
                f"holds no weight for the adapted module {quote(module.name)} of "
                f"{adapter_ckpt.path}: is it the adapter's base model?",
                base.path,
            )
        if base.tensors[key].shape != module.weight_shape:
            raise CheckpointError(
                f"weight {quote(key)} has shape {list(base.tensors[key].shape)}, but the "
                f"adapter's module {quote(module.name)} updates a "
                f"{list(module.weight_shape)} weight",
                base.path,
            )
        if module.magnitude_key is not None and module.transposed:
            raise CheckpointError(
                f"DoRA on the embedding or fan_in_fan_out module {quote(module.name)}: "
                "merging it is not supported",
                adapter_ckpt.path,
            )
        keys[key] = module

    def load(key: str) -> torch.Tensor:
        module = keys[key]
        b, a = factors(adapter_ckpt, module)
        magnitude = (
            None if module.magnitude_key is None else adapter_ckpt.load(module.magnitude_key)
        )
        return merged_weight(base.load(key), b, a, module, magnitude)

    tensors = {
        key: TensorInfo(key, base.tensors[key].shape, base.tensors[key].dtype, base.files[0], key)
        for key in sorted(keys, key=natural_key)
    }
    contents = FormatContents(
        format=f"{base.format}+{adapter.format} adapter",
        files=[*base.files, adapter.weights],
        tensors={k: (i.shape, i.dtype) for k, i in tensors.items()},
        load=load,
    )
    note = (
        f"{len(keys)} weights of {base.path} with the adapter merged (W + s·B·A"
        + (", DoRA rows rescaled" if adapter.dora else "")
        + ", in float64)"
    )
    return Checkpoint(
        path=adapter_ckpt.path,
        format=contents.format,
        files=contents.files,
        tensors=tensors,
        notes=[*adapter_ckpt.notes, *base.notes, note],
        prefix=base.prefix,
        _contents=contents,
    )


def diff_with_base(base: Checkpoint, adapter_ckpt: Checkpoint, **options: Any) -> Any:
    """``diff BASE ADAPTER``: every adapted weight W against W + ΔW (``diff_checkpoints`` on
    the merged view); the base's other tensors, which the adapter leaves alone, are not listed."""
    from sncli.diff import diff_checkpoints

    merged = merged_checkpoint(adapter_ckpt, base)
    report = diff_checkpoints(base, merged, **options)
    untouched = len(report.only_in_a)
    return replace(
        report,
        only_in_a=[],
        notes=[
            *report.notes,
            f"{untouched} tensors of A that the adapter does not change are not listed",
        ],
    )


# --- two adapters -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdapterLayerDiff:
    """One module both adapters update: σ of each update, ‖ΔW_B − ΔW_A‖₂ (from the factors,
    rank ≤ r_A + r_B) relative to σ(ΔW_A), and the cosines of the principal angles between
    the two updates' column spaces (``cosines_left``, output side) and row spaces
    (``cosines_right``, input side), largest first."""

    name: str
    matrix_shape: tuple[int, int]
    rank_a: int
    rank_b: int
    scale_a: float
    scale_b: float
    sigma_a: float
    sigma_b: float
    delta_sigma: float
    relative: float | None
    cosines_left: tuple[float, ...]
    cosines_right: tuple[float, ...]

    @property
    def angles_degrees(self) -> tuple[float, ...]:
        return tuple(math.degrees(math.acos(min(1.0, c))) for c in self.cosines_left)


@dataclass(frozen=True)
class AdapterDiffReport:
    a: str
    b: str
    layers: list[AdapterLayerDiff]
    only_in_a: list[str]
    only_in_b: list[str]
    mismatched: list[str]
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def diff_adapters(
    a: Checkpoint,
    b: Checkpoint,
    *,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    progress: ProgressCallback | None = None,
) -> AdapterDiffReport:
    """Compare two adapters module by module (matched by module path): σ of both updates, of
    their difference, and the principal angles between their update subspaces."""
    from sncli.numerics.lowrank import (
        difference_factors,
        lowrank_svd,
        numerical_basis,
        principal_cosines,
    )

    mods_a = {m.name: m for m in adapter_of(a).modules}
    mods_b = {m.name: m for m in adapter_of(b).modules}
    shared = [n for n in mods_a if n in mods_b and matches(n, tuple(include), tuple(exclude))]
    mismatched = [n for n in shared if mods_a[n].matrix_shape != mods_b[n].matrix_shape]
    names = [n for n in shared if n not in mismatched]
    if not names:
        raise NoLayersMatchedError(
            "nothing to compare: no adapted module with the same path and shape is in both "
            "adapters",
            b.path,
        )
    layers, failed = [], []
    for done, name in enumerate(names):
        if progress is not None:
            progress(done, len(names), name)
        ma, mb = mods_a[name], mods_b[name]
        try:
            (ba, aa), (bb, ab) = factors(a, ma), factors(b, mb)
            svd_a, svd_b = lowrank_svd(ba, aa, ma.scale), lowrank_svd(bb, ab, mb.scale)
            delta = lowrank_svd(*difference_factors(ba, aa, ma.scale, bb, ab, mb.scale)).values
        except NumericalError as exc:
            failed.append(Skipped(name, exc.message))
            continue
        sigma_a = float(svd_a.values[0])
        left = principal_cosines(numerical_basis(svd_a), numerical_basis(svd_b))
        right = principal_cosines(numerical_basis(svd_a, "right"), numerical_basis(svd_b, "right"))
        layers.append(
            AdapterLayerDiff(
                name=name,
                matrix_shape=ma.matrix_shape,
                rank_a=ma.rank,
                rank_b=mb.rank,
                scale_a=ma.scale,
                scale_b=mb.scale,
                sigma_a=sigma_a,
                sigma_b=float(svd_b.values[0]),
                delta_sigma=float(delta[0]) if delta.size else 0.0,
                relative=float(delta[0]) / sigma_a if sigma_a > 0 and delta.size else None,
                cosines_left=tuple(float(c) for c in left),
                cosines_right=tuple(float(c) for c in right),
            )
        )
    if progress is not None:
        progress(len(names), len(names), "")
    return AdapterDiffReport(
        a=str(a.path),
        b=str(b.path),
        layers=layers,
        only_in_a=sorted(set(mods_a) - set(mods_b), key=natural_key),
        only_in_b=sorted(set(mods_b) - set(mods_a), key=natural_key),
        mismatched=mismatched,
        skipped=failed,
        notes=[f"A: {n}" for n in a.notes] + [f"B: {n}" for n in b.notes],
    )


# --- normalize: σ(ΔW) ≤ target per module -------------------------------------------------------

#: Shaves after rounding to the stored dtype, each by the measured excess (as ``normalize``).
_MAX_SHAVES = 24


@dataclass(frozen=True)
class AdapterLayerNormalized:
    """One module: σ of its update before and after, and the factor c applied to ΔW (both A
    and B were multiplied by √c). ``action``: scale, keep (clip, already ≤ target) or skip."""

    name: str
    rank: int
    scale: float
    sigma_before: float
    sigma_after: float
    factor: float
    action: str
    reason: str = ""


@dataclass(frozen=True)
class AdapterNormalizeResult:
    source: str
    output: str | None
    target: float
    mode: str
    layers: list[AdapterLayerNormalized]
    files: list[str]


def _outputs(adapter: Adapter, output: Path, force: bool) -> list[tuple[Path, Path | None]]:
    """(target, source to copy or None for the weights) for each file to write."""
    from sncli.errors import WriteError

    if adapter.format == "peft":
        folder = output
        if folder.exists() and not folder.is_dir():
            raise WriteError("is a file; a PEFT adapter is written to a folder", folder)
        if not folder.resolve().parent.is_dir():
            raise WriteError("output folder's parent does not exist", folder)
        if folder.resolve() == adapter.weights.resolve().parent:
            raise WriteError("is the adapter's own folder; choose another -o", folder)
        assert adapter.config_path is not None
        plan = [
            (folder / adapter.config_path.name, adapter.config_path),
            (folder / adapter.weights.name, None),
        ]
    else:
        if output.resolve() == adapter.weights.resolve():
            raise WriteError("is the adapter itself; choose another -o", output)
        if output.is_dir():
            raise WriteError("is a folder; a kohya LoRA is one file", output)
        plan = [(output, None)]
    existing = [str(target) for target, _ in plan if target.exists()]
    if existing and not force:
        raise WriteError(f"exists: {', '.join(existing)} (--force replaces it)", output)
    return plan


def _scaled(
    b: torch.Tensor, a: torch.Tensor, module: AdaptedModule, target: float, sigma: float
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(B·√c, A·√c in the stored dtype, σ after, c) with σ(s·B'·A') ≤ target measured on
    the rounded factors."""
    import torch

    from sncli.numerics.lowrank import lowrank_singular_values

    root = math.sqrt(target / sigma)
    b64, a64 = b.to(torch.float64), a.to(torch.float64)
    for _ in range(_MAX_SHAVES):
        new_b, new_a = (b64 * root).to(b.dtype), (a64 * root).to(a.dtype)
        after = float(lowrank_singular_values(new_b, new_a, module.scale)[0])
        if after <= target:
            return new_b, new_a, after, root * root
        root *= math.sqrt(target / after) * (1 - torch.finfo(b.dtype).eps)
    raise NumericalError(f"{module.name}: σ stays above the target after rounding")


def normalize_adapter(
    checkpoint: Checkpoint,
    output: Path | None,
    *,
    target: float = 1.0,
    mode: str = "scale",
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    force: bool = False,
) -> AdapterNormalizeResult:
    """Write the adapter (same format, same config, same key order) with every selected
    module's σ(s·B·A) = target (``mode`` scale) or ≤ target (clip), by multiplying both A and
    B by √(target/σ): the balance of the two factors is kept, and the config's r and α (so s)
    are untouched. ``output`` None plans only. DoRA adapters are refused: their update also
    depends on the base weight and the magnitude vector."""
    import torch

    adapter = adapter_of(checkpoint)
    if adapter.dora:
        raise CheckpointError(
            "is a DoRA adapter: its weight change depends on the base weight and the magnitude "
            "vector, so scaling s·B·A does not bound it; normalize refuses DoRA",
            checkpoint.path,
        )
    if not (math.isfinite(target) and target > 0):
        raise ValueError(f"target must be positive, got {target}")
    chosen = _selected(adapter, include, exclude, checkpoint.path)
    plan = None if output is None else _outputs(adapter, Path(output), force)
    tensors = {name: checkpoint.load(name) for name in checkpoint.tensors}
    layers = []
    for module in chosen:
        b, a = factors(checkpoint, module)
        try:
            sigma = float(update_svd(checkpoint, module).values[0])
        except NumericalError as exc:
            layers.append(
                AdapterLayerNormalized(
                    module.name,
                    module.rank,
                    module.scale,
                    math.nan,
                    math.nan,
                    1.0,
                    "skip",
                    exc.message,
                )
            )
            continue
        if sigma == 0 or (mode == "clip" and sigma <= target):
            reason = "zero update" if sigma == 0 else ""
            layers.append(
                AdapterLayerNormalized(
                    module.name,
                    module.rank,
                    module.scale,
                    sigma,
                    sigma,
                    1.0,
                    "skip" if sigma == 0 else "keep",
                    reason,
                )
            )
            continue
        new_b, new_a, after, factor = _scaled(b, a, module, target, sigma)
        tensors[module.b_key] = new_b.reshape(tensors[module.b_key].shape).contiguous()
        tensors[module.a_key] = new_a.reshape(tensors[module.a_key].shape).contiguous()
        layers.append(
            AdapterLayerNormalized(
                module.name, module.rank, module.scale, sigma, after, factor, "scale"
            )
        )
    written: list[str] = []
    if plan is not None:
        from sncli.writer import staged_write

        if adapter.format == "peft":
            Path(output).mkdir(exist_ok=True)  # type: ignore[arg-type]
        for target_path, source in plan:
            with staged_write(target_path) as (handle, pending):
                if source is not None:
                    handle.write(source.read_bytes())
                elif checkpoint.format == "safetensors":
                    from safetensors.torch import save

                    metadata = checkpoint.metadata.get(adapter.weights) or {"format": "pt"}
                    handle.write(save(tensors, metadata=dict(metadata)))
                else:
                    torch.save(tensors, handle)
            pending.commit()
            written.append(str(target_path))
    return AdapterNormalizeResult(
        source=str(checkpoint.path),
        output=None if output is None else str(output),
        target=target,
        mode=mode,
        layers=layers,
        files=written,
    )
