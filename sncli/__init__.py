"""sncli: spectral analysis of saved neural-network checkpoints.

Library use (the CLI is built on the same calls; every entry point takes a path, a folder, a
Hugging Face id or an opened checkpoint)::

    import sncli
    report = sncli.spectral_norms("model.safetensors")
    for layer in report.layers:
        print(layer.name, layer.sigma)

Importing sncli does not import torch; inspect and spectrum on safetensors, GGUF, NumPy, Keras
and ONNX files never load it (NumPy readers and kernels); PyTorch files and the other engines
load it when they need it. The engines
beyond inspect and track are imported when their name is first used (``sncli.spectra``…), so
``import sncli`` stays quick.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sncli._version import __version__

if TYPE_CHECKING:
    from sncli.analysis import InspectReport, LayerSigma, MethodOptions, spectral_norms
    from sncli.checkpoint import Checkpoint, open_checkpoint
    from sncli.errors import (
        CheckpointError,
        NoLayersMatchedError,
        NumericalError,
        SncliError,
        UnsafePickleError,
    )
    from sncli.layers import Layer, LayerKind, classify
    from sncli.numerics.spectral import Method, SigmaEstimate, largest_singular_value
    from sncli.tracking import Tracker, TrackOptions, TrackReport, track

if TYPE_CHECKING:
    from sncli.analysis import SortKey, sort_layers
    from sncli.arguments import CheckpointSource
    from sncli.checkpoint import TensorInfo
    from sncli.diff import DiffReport, LayerDiff, diff_checkpoints
    from sncli.errors import BoundExceededError, InputShapeError, WriteError
    from sncli.lipschitz import (
        Assumption,
        ChainBound,
        ConvPolicy,
        Factor,
        GraphLipschitzReport,
        LipschitzOptions,
        LipschitzReport,
        Padding,
        graph_lipschitz,
        is_graph_model,
        lipschitz_report,
    )
    from sncli.normalize import (
        Action,
        LayerPlan,
        NormalizeMode,
        NormalizeOptions,
        NormalizePlan,
        NormalizeResult,
        normalize_checkpoint,
        plan_normalization,
    )
    from sncli.numerics.spectral import BoundKind
    from sncli.report import ModelReport, build_report
    from sncli.spectrum import (
        LayerSpectrum,
        SpectrumOptions,
        SpectrumReport,
        SpectrumSortKey,
        save_spectra,
        sort_spectra,
        spectra,
    )
    from sncli.transaction import Recovery, recover

#: Every public name, imported from its module on first use (PEP 562), so that ``import sncli``
#: (and with it every ``sncli.x`` import, the CLI's included) loads no engine it does not use.
_LAZY = {
    "sncli.analysis": (
        "InspectReport",
        "LayerSigma",
        "MethodOptions",
        "SortKey",
        "sort_layers",
        "spectral_norms",
    ),
    "sncli.arguments": ("CheckpointSource",),
    "sncli.checkpoint": ("Checkpoint", "TensorInfo", "open_checkpoint"),
    "sncli.diff": ("DiffReport", "LayerDiff", "diff_checkpoints"),
    "sncli.errors": (
        "BoundExceededError",
        "CheckpointError",
        "InputShapeError",
        "NoLayersMatchedError",
        "NumericalError",
        "SncliError",
        "UnsafePickleError",
        "WriteError",
    ),
    "sncli.layers": ("Layer", "LayerKind", "classify"),
    "sncli.lipschitz": (
        "Assumption",
        "ChainBound",
        "ConvPolicy",
        "Factor",
        "GraphLipschitzReport",
        "LipschitzOptions",
        "LipschitzReport",
        "Padding",
        "graph_lipschitz",
        "is_graph_model",
        "lipschitz_report",
    ),
    "sncli.normalize": (
        "Action",
        "LayerPlan",
        "NormalizeMode",
        "NormalizeOptions",
        "NormalizePlan",
        "NormalizeResult",
        "normalize_checkpoint",
        "plan_normalization",
    ),
    "sncli.numerics.spectral": ("BoundKind", "Method", "SigmaEstimate", "largest_singular_value"),
    "sncli.report": ("ModelReport", "build_report"),
    "sncli.spectrum": (
        "LayerSpectrum",
        "SpectrumOptions",
        "SpectrumReport",
        "SpectrumSortKey",
        "save_spectra",
        "sort_spectra",
        "spectra",
    ),
    "sncli.tracking": ("TrackOptions", "TrackReport", "Tracker", "track"),
    "sncli.transaction": ("Recovery", "recover"),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'sncli' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


__all__ = [
    "Action",
    "Assumption",
    "BoundExceededError",
    "BoundKind",
    "ChainBound",
    "Checkpoint",
    "CheckpointError",
    "CheckpointSource",
    "ConvPolicy",
    "DiffReport",
    "Factor",
    "GraphLipschitzReport",
    "InputShapeError",
    "InspectReport",
    "Layer",
    "LayerDiff",
    "LayerKind",
    "LayerPlan",
    "LayerSigma",
    "LayerSpectrum",
    "LipschitzOptions",
    "LipschitzReport",
    "Method",
    "MethodOptions",
    "ModelReport",
    "NoLayersMatchedError",
    "NormalizeMode",
    "NormalizeOptions",
    "NormalizePlan",
    "NormalizeResult",
    "NumericalError",
    "Padding",
    "Recovery",
    "SigmaEstimate",
    "SncliError",
    "SortKey",
    "SpectrumOptions",
    "SpectrumReport",
    "SpectrumSortKey",
    "TensorInfo",
    "TrackOptions",
    "TrackReport",
    "Tracker",
    "UnsafePickleError",
    "WriteError",
    "__version__",
    "build_report",
    "classify",
    "diff_checkpoints",
    "graph_lipschitz",
    "is_graph_model",
    "largest_singular_value",
    "lipschitz_report",
    "normalize_checkpoint",
    "open_checkpoint",
    "plan_normalization",
    "recover",
    "save_spectra",
    "sort_layers",
    "sort_spectra",
    "spectra",
    "spectral_norms",
    "track",
]
