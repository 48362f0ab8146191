"""A lower bound on a graph's Lipschitz constant: the largest ‖f(x + δ) − f(x)‖/‖δ‖ found by a
short seeded search, every ratio measured on the model itself by onnxruntime. The search never
costs the upper bound: :func:`lower_bound_or_why` checks its memory before it allocates, stops at
a time budget, and turns any onnxruntime error into one line."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from sncli.formats.common import quote
from sncli.formats.onnx import OnnxGraph, OnnxNode
from sncli.lipschitz.graph_results import LowerBound, LowerPoint

#: The lower-bound search's wall-clock budget (seconds); what it found by then is kept.
LOWER_SECONDS = 30.0
#: Inputs up to this size get the whole finite-difference Jacobian (one run per coordinate).
FULL_JACOBIAN = 1024
#: The default effort of the multi-start ascent (starts and steps grow with it).
LOWER_EFFORT = 1
#: The ascent's time per unit of effort is at most the larger of this and the bound's time
#: (``graph_lipschitz``), so the search at most doubles a model's total time past a few seconds.
LOWER_ASCENT_SECONDS = 4.0
#: The share of the available memory the search may plan to use (checked before it allocates).
LOWER_MEMORY_SHARE = 0.5


def _available_memory() -> int:
    """MemAvailable from /proc/meminfo (bytes); 4 GiB where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 4 << 30


def _graph_values(graph: OnnxGraph) -> int:
    """How many values the graph's tensors hold at its static shapes (known ones only)."""
    total = 0
    for value in graph.values.values():
        if value.shape is not None and all(isinstance(d, int) for d in value.shape):
            total += math.prod(value.shape)
    return total


def ort_cause(exc: BaseException) -> str:
    """onnxruntime's message as one line without its status prefix (it names the node)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if text.startswith("[ONNXRuntimeError]"):
        text = text.split(" : ", 3)[-1]
    return text[:300]


def lower_bound_or_why(
    graph: OnnxGraph,
    *,
    seed: int = 0,
    budget: int = 192,
    order: Sequence[OnnxNode] | None = None,
    constants: dict[str, Any] | None = None,
    seconds: float = LOWER_SECONDS,
    effort: int = LOWER_EFFORT,
    ascent_seconds: float | None = None,
) -> tuple[LowerBound | None, str | None]:
    """:func:`lower_bound_search` that never fails: (lower bound, None) or (None, why not).

    The memory the search plans (the input vector and its few copies, the finite-difference
    basis, the NumPy rebuild's activations and tape) is checked against the available memory
    first; the search stops at ``seconds`` with the best ratio found; an onnxruntime error is
    one line.
    """
    inputs = sum(math.prod(v.shape or ()) for v in graph.inputs)
    allowed = _available_memory() * LOWER_MEMORY_SHARE
    planned = 8 * inputs * (min(16, inputs) + 8)
    if planned > allowed:
        return None, (
            f"the search would need about {planned / 2**30:.1f} GiB for the inputs' "
            f"{inputs:,} values (over half of the memory available)"
        )
    # the NumPy rebuild's tape holds each value, its derivative (or mask) and, in the ascent's
    # forward-over-reverse pass, its tangent: 3 float64 copies, and a cotangent in flight
    rebuild_fits = 8 * 4 * max(_graph_values(graph), inputs) <= allowed
    try:
        found = lower_bound_search(
            graph,
            seed=seed,
            budget=budget,
            order=order if rebuild_fits else None,
            constants=constants if rebuild_fits else None,
            seconds=seconds,
            effort=effort,
            ascent_seconds=ascent_seconds,
        )
    except MemoryError:
        return None, "out of memory during the search"
    except _NoProbe as exc:
        return None, str(exc)
    if found is None:
        return None, "no input direction changed the output (every ratio was 0 or not finite)"
    return found, None


def lower_bound_search(
    graph: OnnxGraph,
    *,
    seed: int = 0,
    budget: int = 192,
    order: Sequence[OnnxNode] | None = None,
    constants: dict[str, Any] | None = None,
    seconds: float = LOWER_SECONDS,
    effort: int = LOWER_EFFORT,
    ascent_seconds: float | None = None,
) -> LowerBound | None:
    """The largest ‖f(x) − f(y)‖/‖x − y‖ found by a short seeded search.

    With the graph rebuilt in float64 NumPy (:mod:`sncli.lipschitz.numpy_graph`, when every op
    is known there): a Jacobian power iteration at a seeded Gaussian x, then the multi-start,
    multi-scale ascent of :mod:`sncli.lipschitz.ascent` (``effort`` sets its starts and steps);
    its best pair is evaluated in float64 by the rebuild and reported only if the rebuild agrees
    with the model under onnxruntime at both points (float32 tolerance), so the float64 quotient
    is the model's. Otherwise (and for graphs the rebuild lacks) the finite-difference Jacobian
    under onnxruntime (whole, up to 1024 inputs; else sampled on random subspaces), whose ratios are
    two real float32 evaluations of the model. None when every ratio was 0; ``_NoProbe`` (with
    the reason) when the model cannot be run. Stops after ``seconds`` with the best found; the
    ascent's starts and steps stop after ``ascent_seconds`` (its final quotient is still taken).
    """
    probe = _Probe(graph, seed, seconds)
    best, method, point = 0.0, "", None
    if order is not None and constants is not None:
        try:
            found = probe.ascent(order, constants, max(0, effort), ascent_seconds)
        except _NoProbe:
            raise
        except Exception:  # an op the NumPy rebuild lacks, or it fails: onnxruntime alone
            found = None
        if found is not None and found[0] > 0.0:
            best, point = found[0], found[1]
            method = (
                "multi-start ascent (NumPy)" if effort > 0 else "Jacobian power iteration (NumPy)"
            ) + ", float64 quotient checked with onnxruntime"
        else:
            try:
                iterations = max(2, min(16, budget // 8)) if probe.total <= 20_000 else 6
                best = probe.power(order, constants, iterations)
                method = "Jacobian power iteration (NumPy) verified"
            except _NoProbe:
                raise
            except Exception:  # as above: the finite differences below
                best = max(0.0, probe.best)
    if (best == 0.0 or probe.total <= FULL_JACOBIAN) and point is None and not probe.out_of_time():
        try:
            found_fd = probe.finite_differences(budget)
        except _NoProbe:
            raise
        except _OutOfTime:
            found_fd = probe.best
        if found_fd > best:
            best, method = found_fd, "finite-difference Jacobian"
    if not math.isfinite(best) or best <= 0.0:
        return None
    stopped = "; stopped at the time budget" if probe.stopped else ""
    if point is not None:
        text = (
            f"largest ‖f(x) − f(y)‖/‖x − y‖ ({method}; "
            f"{probe.evaluations} onnxruntime runs{stopped})"
        )
    else:
        text = (
            f"largest ‖f(x+δ) − f(x)‖/‖δ‖ with onnxruntime ({method or 'best ratio found'}; "
            f"{probe.evaluations} evaluations, float32{stopped})"
        )
    return LowerBound(best, probe.evaluations, text, point)


class _NoProbe(Exception):
    """The model cannot be run for the search; the message says why (one line)."""


class _OutOfTime(Exception):
    pass


class _Probe:
    """The model under onnxruntime at a seeded point x, with the joint float input as a vector."""

    def __init__(self, graph: OnnxGraph, seed: int, seconds: float = LOWER_SECONDS) -> None:
        import time

        import numpy as np

        self.deadline = time.monotonic() + seconds
        self.stopped = False
        self.best = 0.0
        try:
            import onnxruntime as ort

            # The session's level does not cover run-time errors, which onnxruntime logs itself
            # (a red line on stderr before sncli's own one-line note): errors only, via the
            # process-wide logger.
            ort.set_default_logger_severity(4)
            options = ort.SessionOptions()
            options.log_severity_level = 3
            self.session = ort.InferenceSession(
                str(graph.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime refuses some valid graphs
            raise _NoProbe(f"onnxruntime cannot load the model: {ort_cause(exc)}") from exc
        self.graph = graph
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.feeds: dict[str, Any] = {}
        self.floats: list[str] = []
        static = {v.name: v.shape for v in graph.inputs}
        for value in self.session.get_inputs():
            shape = static.get(value.name)
            if shape is None or not all(isinstance(d, int) for d in shape):
                raise _NoProbe(f"input {quote(value.name)} has no static shape")
            if value.type in ("tensor(float)", "tensor(double)", "tensor(float16)"):
                dtype = {"tensor(double)": np.float64, "tensor(float16)": np.float16}.get(
                    value.type, np.float32
                )
                self.feeds[value.name] = self.rng.standard_normal(shape).astype(dtype)
                self.floats.append(value.name)
            elif "int" in value.type:
                self.feeds[value.name] = np.zeros(shape, dtype=np.int64)
            else:
                raise _NoProbe(f"input {quote(value.name)} is a {value.type}, not a tensor")
        if not self.floats:
            raise _NoProbe("the model has no float input")
        self.sizes = [self.feeds[n].size for n in self.floats]
        self.total = sum(self.sizes)
        self.x = np.concatenate([self.feeds[n].astype(np.float64).reshape(-1) for n in self.floats])
        self.evaluations = 0
        self.base = self.run(self.x, check_time=False)
        self.scale = max(1.0, float(np.linalg.norm(self.x)) / math.sqrt(self.total))

    def out_of_time(self) -> bool:
        import time

        return time.monotonic() > self.deadline

    def run(self, vector: Any, *, check_time: bool = True) -> Any:
        import numpy as np

        if check_time and self.out_of_time():
            self.stopped = True
            raise _OutOfTime
        local = dict(self.feeds)
        offset = 0
        for name, size in zip(self.floats, self.sizes, strict=True):
            part = vector[offset : offset + size].reshape(self.feeds[name].shape)
            local[name] = part.astype(self.feeds[name].dtype)
            offset += size
        self.evaluations += 1
        try:
            outputs = self._session_run(self.session, local)
        except MemoryError:
            raise
        except Exception as exc:  # onnxruntime's errors name the node
            raise _NoProbe(f"onnxruntime cannot run the model: {ort_cause(exc)}") from exc
        return np.concatenate([np.asarray(o, dtype=np.float64).reshape(-1) for o in outputs])

    @staticmethod
    def _session_run(session: Any, feeds: dict[str, Any]) -> list[Any]:
        return session.run(None, feeds)

    def ratio(self, direction: Any) -> float:
        """max over two step sizes of ‖f(x + δ) − f(x)‖/‖δ‖ along a unit direction, less an
        allowance of 16 float32 roundings of the two outputs (float32 evaluations)."""
        import numpy as np

        best = 0.0
        for step in (1e-2, 1e-3):
            delta = step * self.scale * direction
            norm = float(np.linalg.norm(delta))
            if norm > 0:
                moved = self.run(self.x + delta)
                allowance = 16 * 2.0**-24 * float(np.linalg.norm(moved) + np.linalg.norm(self.base))
                change = float(np.linalg.norm(moved - self.base)) - allowance
                best = max(best, change / norm)
                if math.isfinite(best):
                    self.best = max(self.best, best)
        return best

    def power(self, order: Sequence[OnnxNode], constants: dict[str, Any], iterations: int) -> float:
        """The onnxruntime ratio along the top right singular vector of J(x), found by power
        iteration on J(x)ᵀJ(x) with the float64 rebuild (random start: torch's for the seed)."""
        import numpy as np

        from sncli.arrays import TorchGenerator
        from sncli.lipschitz.ascent import _power

        f = self._flat(order, dict(constants))
        v = TorchGenerator(self.seed).randn(self.total)
        direction, _ = _power(f, self.x, v / np.linalg.norm(v), iterations)
        return self.ratio(direction)

    def _flat(self, order: Sequence[OnnxNode], constants: dict[str, Any]) -> Any:
        """The graph rebuilt in float64 NumPy as a function of the flat float input."""
        from sncli.lipschitz.numpy_graph import FlatGraph

        return FlatGraph(self.graph, order, constants, self.feeds, self.floats)

    def ascent(
        self,
        order: Sequence[OnnxNode],
        constants: dict[str, Any],
        effort: int,
        seconds: float | None = None,
    ) -> tuple[float, LowerPoint] | None:
        """The ascent's best float64 quotient, if the rebuild agrees with onnxruntime there."""
        import numpy as np

        from sncli.lipschitz.ascent import ascend

        exact = self._flat(order, dict(constants))
        deadline = self.deadline
        if seconds is not None:
            deadline = min(deadline, time.monotonic() + seconds)
        pair = ascend(
            exact,
            self.x,
            seed=self.seed,
            effort=effort,
            deadline=deadline,
        )
        if time.monotonic() > self.deadline:  # the search's own budget, not the ascent's share
            self.stopped = True
        if pair is None:
            return None
        fx, fy = exact(pair.x), exact(pair.y)
        rx, ry = self.run(pair.x, check_time=False), self.run(pair.y, check_time=False)
        for mine, theirs in ((fx, rx), (fy, ry)):  # float32 evaluation vs the float64 rebuild
            if np.linalg.norm(mine - theirs) > 1e-4 * np.linalg.norm(theirs) + 1e-6 * math.sqrt(
                theirs.size
            ):
                return None
        change = np.abs(fy - fx)
        index = int(np.argmax(change))
        output, offset = "", 0
        for value in self.graph.outputs:
            size = (
                math.prod(value.shape)
                if value.shape and all(isinstance(d, int) for d in value.shape)
                else 0
            )
            if offset <= index < offset + size:
                output = value.name
                index -= offset
                break
            offset += size
        point = LowerPoint(
            input_norm=float(np.linalg.norm(pair.x)),
            step=float(np.linalg.norm(pair.y - pair.x)),
            output=output,
            output_index=index,
        )
        return pair.ratio, point

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
