"""What ``sncli lipschitz`` reports about an ONNX graph: per-node factors, per-output bounds, the
path of the largest contribution, chains and the searched lower bound (:mod:`sncli.lipschitz.graph`
fills them; ``render/graph_lipschitz.py`` shows them)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sncli.errors import BoundExceededError
from sncli.lipschitz.caveats import graph_statement


@dataclass(frozen=True)
class NodeFactor:
    """One node's factor: how much it can stretch its variable input(s), and on what grounds.

    ``factor`` is None when no bound is known (``why`` says why); ``proven`` when it is a proof
    (a vacuous LayerNorm factor is shown but not proven, ``vacuous`` marks it).
    """

    name: str
    op: str
    factor: float | None
    source: str
    proven: bool
    why: str = ""
    vacuous: bool = False
    lower: float | None = None


@dataclass(frozen=True)
class OutputBound:
    name: str
    bound: float | None
    certified: bool


@dataclass(frozen=True)
class PathStep:
    """A node on the path of the largest contribution, with the bound reached after it."""

    node: str
    op: str
    factor: float | None
    running: float | None
    proven: bool


@dataclass(frozen=True)
class LowerPoint:
    """Where the lower bound was found: ‖x‖, ‖y − x‖, and the output (graph output's name, flat
    index in it) that changed most between x and y."""

    input_norm: float
    step: float
    output: str
    output_index: int


@dataclass(frozen=True)
class LowerBound:
    """max ‖f(x) − f(y)‖/‖x − y‖ found by a seeded search: a true lower bound on Lip(f)."""

    value: float
    evaluations: int
    method: str
    point: LowerPoint | None = None


@dataclass(frozen=True)
class ChainInfo:
    """A maximal chain W_1 → act → … → W_l and what bounds it."""

    nodes: tuple[str, ...]
    bound: float
    product: float
    method: str
    proven: bool


@dataclass(frozen=True)
class GraphLipschitzReport:
    checkpoint: str
    nodes: list[NodeFactor]
    outputs: list[OutputBound]
    path: list[PathStep]
    chains: list[ChainInfo]
    lower: LowerBound | None
    assumptions: list[str]
    caveats: list[str]
    notes: list[str] = field(default_factory=list)
    #: ∏ of the proven factors on every node (the "product of layer σ" of a state dict).
    product: float | None = None
    #: Wall seconds of the bound ("bound") and of the lower-bound search ("lower").
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def bound(self) -> float | None:
        """The joint bound √(Σ L_j²) over the outputs; None when some output has none."""
        values = [o.bound for o in self.outputs]
        if not values or any(v is None for v in values):
            return None
        return math.sqrt(sum(v * v for v in values if v is not None))

    @property
    def log10_bound(self) -> float | None:
        bound = self.bound
        if bound is None:
            return None
        return -math.inf if bound == 0 else math.log10(bound)

    @property
    def certified(self) -> bool:
        return self.bound is not None and all(o.certified for o in self.outputs)

    @property
    def problems(self) -> list[NodeFactor]:
        """Nodes on the way to an output whose factor is not proven."""
        return [n for n in self.nodes if not n.proven]

    def statement(self) -> str:
        """One plain sentence on what the bound means and whether it is certified."""
        return graph_statement(self)

    def gate(self, threshold: float, *, certified: bool = False, name: str | None = None) -> None:
        """The ``--fail-above`` gate: raise :class:`BoundExceededError` unless there is a bound,
        certified when ``certified``, at most ``threshold``; ``name`` is the model as the user
        named it (default: the report's path)."""
        where = self.checkpoint if name is None else name
        if self.bound is None:
            raise BoundExceededError(
                "--fail-above cannot pass: the graph has no Lipschitz bound", where
            )
        if certified and not self.certified:
            raise BoundExceededError(
                "--fail-above with --certified: the bound is not certified", where
            )
        if self.bound > threshold or not math.isfinite(self.bound):
            raise BoundExceededError(
                f"Lipschitz bound {self.bound:.6g} exceeds --fail-above {threshold:g}", where
            )
