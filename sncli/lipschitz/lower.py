"""A lower bound on a graph's Lipschitz constant: the largest ‖f(x + δ) − f(x)‖/‖δ‖ found by a
short seeded search, every ratio measured on the model itself by onnxruntime."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sncli.formats.onnx import OnnxGraph, OnnxNode
from sncli.lipschitz.graph_results import LowerBound

#: Inputs up to this size get the whole finite-difference Jacobian (one run per coordinate).
FULL_JACOBIAN = 1024


def lower_bound_search(
    graph: OnnxGraph,
    *,
    seed: int = 0,
    budget: int = 192,
    order: Sequence[OnnxNode] | None = None,
    constants: dict[str, Any] | None = None,
) -> LowerBound | None:
    """The largest ‖f(x + δ) − f(x)‖/‖δ‖ found by a short seeded search, evaluated by onnxruntime.

    Directions: a Jacobian power iteration at a seeded Gaussian x with the graph rebuilt in torch
    (:mod:`sncli.lipschitz.torch_graph`, when every op is known there), else the finite-difference
    Jacobian (whole, up to 1024 inputs; else sampled on random subspaces). Whatever found the
    direction, the reported ratio is that of two real evaluations of the model by onnxruntime,
    so it is a lower bound on its Lipschitz constant (up to the evaluations' float32 rounding).
    None when the model cannot be run (no float input, onnxruntime refuses it).
    """
    import numpy as np

    try:
        probe = _Probe(graph, seed)
    except _NoProbe:
        return None
    best, method = 0.0, ""
    if order is not None and constants is not None:
        try:
            iterations = max(2, min(16, budget // 8)) if probe.total <= 20_000 else 6
            best = probe.power(order, constants, iterations)
            method = "Jacobian power iteration (torch) verified"
        except Exception:  # an op the torch evaluator lacks, or AD fails: fall back
            best = 0.0
    if best == 0.0 or probe.total <= FULL_JACOBIAN:
        try:
            found = probe.finite_differences(budget)
        except Exception:
            found = 0.0
        if found > best:
            best, method = found, "finite-difference Jacobian"
    if not math.isfinite(best) or best <= 0.0:
        return None
    del np
    return LowerBound(
        best,
        probe.evaluations,
        f"largest ‖f(x+δ) − f(x)‖/‖δ‖ with onnxruntime ({method}; {probe.evaluations} "
        "evaluations, float32)",
    )


class _NoProbe(Exception):
    pass


class _Probe:
    """The model under onnxruntime at a seeded point x, with the joint float input as a vector."""

    def __init__(self, graph: OnnxGraph, seed: int) -> None:
        import numpy as np

        try:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3
            self.session = ort.InferenceSession(
                str(graph.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime refuses some valid graphs
            raise _NoProbe from exc
        self.graph = graph
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.feeds: dict[str, Any] = {}
        self.floats: list[str] = []
        for value in self.session.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in value.shape]
            if value.type in ("tensor(float)", "tensor(double)", "tensor(float16)"):
                dtype = {"tensor(double)": np.float64, "tensor(float16)": np.float16}.get(
                    value.type, np.float32
                )
                self.feeds[value.name] = self.rng.standard_normal(shape).astype(dtype)
                self.floats.append(value.name)
            elif "int" in value.type:
                self.feeds[value.name] = np.zeros(shape, dtype=np.int64)
            else:
                raise _NoProbe
        if not self.floats:
            raise _NoProbe
        self.sizes = [self.feeds[n].size for n in self.floats]
        self.total = sum(self.sizes)
        self.x = np.concatenate([self.feeds[n].astype(np.float64).reshape(-1) for n in self.floats])
        self.evaluations = 0
        self.base = self.run(self.x)
        self.scale = max(1.0, float(np.linalg.norm(self.x)) / math.sqrt(self.total))

    def run(self, vector: Any) -> Any:
        import numpy as np

        local = dict(self.feeds)
        offset = 0
        for name, size in zip(self.floats, self.sizes, strict=True):
            part = vector[offset : offset + size].reshape(self.feeds[name].shape)
            local[name] = part.astype(self.feeds[name].dtype)
            offset += size
        self.evaluations += 1
        outputs = self.session.run(None, local)
        return np.concatenate([np.asarray(o, dtype=np.float64).reshape(-1) for o in outputs])

    def ratio(self, direction: Any) -> float:
        """max over two step sizes of ‖f(x + δ) − f(x)‖/‖δ‖ along a unit direction."""
        import numpy as np

        best = 0.0
        for step in (1e-2, 1e-3):
            delta = step * self.scale * direction
            norm = float(np.linalg.norm(delta))
            if norm > 0:
                best = max(best, float(np.linalg.norm(self.run(self.x + delta) - self.base)) / norm)
        return best

    def power(self, order: Sequence[OnnxNode], constants: dict[str, Any], iterations: int) -> float:
        import torch

        from sncli.lipschitz.torch_graph import power_direction, torch_function

        dtype = torch.float64 if self.total <= 20_000 else torch.float32
        f = torch_function(self.graph, order, dict(constants), dtype)
        names = [v.name for v in self.graph.inputs]
        fixed = {n: torch.as_tensor(v) for n, v in self.feeds.items() if n not in self.floats}

        def split(z: Any) -> list[Any]:
            parts, offset = {}, 0
            for name, size in zip(self.floats, self.sizes, strict=True):
                parts[name] = z[offset : offset + size].reshape(self.feeds[name].shape)
                offset += size
            return [parts.get(n, fixed.get(n)) for n in names]

        x = torch.as_tensor(self.x, dtype=dtype)
        direction, _ = power_direction(f, x, split, iterations, self.seed)
        return self.ratio(direction.to(torch.float64).numpy())

    def finite_differences(self, budget: int) -> float:
        import numpy as np

        full = self.total <= FULL_JACOBIAN
        k = self.total if full else min(16, self.total)
        step = 1e-2 * self.scale
        best, direction = 0.0, None
        used = 0
        while used + k + 2 <= max(budget, k + 2):
            if full:
                basis = np.eye(self.total)
            else:
                basis = self.rng.standard_normal((self.total, k))
                if direction is not None:
                    basis[:, 0] = direction
                basis, _ = np.linalg.qr(basis)
            diffs = np.stack(
                [(self.run(self.x + step * basis[:, i]) - self.base) / step for i in range(k)], 1
            )
            _, _, vt = np.linalg.svd(diffs, full_matrices=False)
            direction = basis @ vt[0]
            direction /= np.linalg.norm(direction)
            best = max(best, self.ratio(direction))
            used += k + 2
            if full:
                break
        return best
