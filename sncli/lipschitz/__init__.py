"""``sncli lipschitz``: how much a model can stretch a change of its input, and when that is proven.

A state dict gets the product of its layers' factors (:mod:`.product`), conditional on an
architecture the file does not record (:mod:`.caveats` says which); an ONNX model gets the bound
over its real graph (:mod:`.graph`, with the per-op rules in :mod:`.ops`, the report types in
:mod:`.graph_results`, the lower-bound search in :mod:`.lower` and the graph rebuilt in float64
NumPy in :mod:`.numpy_graph`). The names below are the package's public ones.
"""

from __future__ import annotations

from sncli.lipschitz.caveats import (
    ACTIVATION_ASSUMPTION,
    ATTENTION_NAME,
    CHAIN_ASSUMPTION,
    HEAD_NAME,
    HEADS_LIST,
    LAYERNORM_NAME,
    ONNX_HINT,
    RECURRENT_NAME,
    RESIDUAL_NAME,
    architecture_caveats,
    chain_caveats,
)
from sncli.lipschitz.graph import graph_lipschitz, is_graph_model
from sncli.lipschitz.graph_results import (
    ChainInfo,
    GraphLipschitzReport,
    LowerBound,
    NodeFactor,
    OutputBound,
    PathStep,
)
from sncli.lipschitz.lower import lower_bound_search
from sncli.lipschitz.ops import chain_bound
from sncli.lipschitz.product import (
    MLP_SLOPES,
    Assumption,
    ChainBound,
    ConvPolicy,
    Factor,
    LipschitzOptions,
    LipschitzReport,
    Padding,
    lipschitz_report,
)

__all__ = [
    "ACTIVATION_ASSUMPTION",
    "ATTENTION_NAME",
    "CHAIN_ASSUMPTION",
    "HEADS_LIST",
    "HEAD_NAME",
    "LAYERNORM_NAME",
    "MLP_SLOPES",
    "ONNX_HINT",
    "RECURRENT_NAME",
    "RESIDUAL_NAME",
    "Assumption",
    "ChainBound",
    "ChainInfo",
    "ConvPolicy",
    "Factor",
    "GraphLipschitzReport",
    "LipschitzOptions",
    "LipschitzReport",
    "LowerBound",
    "NodeFactor",
    "OutputBound",
    "Padding",
    "PathStep",
    "architecture_caveats",
    "chain_bound",
    "chain_caveats",
    "graph_lipschitz",
    "is_graph_model",
    "lipschitz_report",
    "lower_bound_search",
]
