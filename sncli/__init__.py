"""sncli: spectral analysis of saved neural-network checkpoints.

Library use (the CLI is built on the same calls)::

    import sncli
    with sncli.open_checkpoint("model.safetensors") as ckpt:
        report = sncli.spectral_norms(ckpt)
    for layer in report.layers:
        print(layer.name, layer.sigma)

Importing sncli does not import torch; it is loaded when a checkpoint is opened.
"""

from __future__ import annotations

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

#: Where each public name lives; imported on first use, so that ``import sncli`` (and with it
#: every ``sncli.x`` import, the CLI's included) loads no engine it does not use.
_HOME = {
    "InspectReport": "sncli.analysis",
    "LayerSigma": "sncli.analysis",
    "MethodOptions": "sncli.analysis",
    "spectral_norms": "sncli.analysis",
    "Checkpoint": "sncli.checkpoint",
    "open_checkpoint": "sncli.checkpoint",
    "CheckpointError": "sncli.errors",
    "NoLayersMatchedError": "sncli.errors",
    "NumericalError": "sncli.errors",
    "SncliError": "sncli.errors",
    "UnsafePickleError": "sncli.errors",
    "Layer": "sncli.layers",
    "LayerKind": "sncli.layers",
    "classify": "sncli.layers",
    "Method": "sncli.numerics.spectral",
    "SigmaEstimate": "sncli.numerics.spectral",
    "largest_singular_value": "sncli.numerics.spectral",
    "Tracker": "sncli.tracking",
    "TrackOptions": "sncli.tracking",
    "TrackReport": "sncli.tracking",
    "track": "sncli.tracking",
}


def __getattr__(name: str) -> Any:
    """The public names, imported from their modules on first use (PEP 562)."""
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'sncli' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "Checkpoint",
    "CheckpointError",
    "InspectReport",
    "Layer",
    "LayerKind",
    "LayerSigma",
    "Method",
    "MethodOptions",
    "NoLayersMatchedError",
    "NumericalError",
    "SigmaEstimate",
    "SncliError",
    "TrackOptions",
    "TrackReport",
    "Tracker",
    "UnsafePickleError",
    "__version__",
    "classify",
    "largest_singular_value",
    "open_checkpoint",
    "spectral_norms",
    "track",
]
