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

from sncli._version import __version__
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
    "UnsafePickleError",
    "__version__",
    "classify",
    "largest_singular_value",
    "open_checkpoint",
    "spectral_norms",
]
