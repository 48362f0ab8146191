"""``sncli track``: a training run's checkpoints as a series (:mod:`.engine`), found by
:mod:`.series`, cached by :mod:`.cache`, as long-form rows by :mod:`.rows`.

``sncli.track(paths, …)`` is :func:`track` (this module is callable) and returns a
:class:`TrackReport`; :class:`Tracker` measures state dicts from a training loop.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from sncli.track.cache import TrackCache, default_cache_dir
from sncli.track.engine import (
    SPECTRUM_COLUMNS,
    TrackCheckpoint,
    Tracker,
    TrackOptions,
    TrackPoint,
    TrackReport,
    track,
)
from sncli.track.series import SeriesItem, discover, step_of

__all__ = [
    "SPECTRUM_COLUMNS",
    "SeriesItem",
    "TrackCache",
    "TrackCheckpoint",
    "TrackOptions",
    "TrackPoint",
    "TrackReport",
    "Tracker",
    "default_cache_dir",
    "discover",
    "step_of",
    "track",
]


class _CallableModule(types.ModuleType):
    """``sncli.track`` is this package, and calling it calls :func:`track` (the issue's
    ``sncli.track(paths, …)``), so the package name and the function do not clash."""

    def __call__(self, *args: Any, **kwargs: Any) -> TrackReport:
        return track(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
