"""``sncli track``: a training run's checkpoints as a series (:mod:`.engine`), found by
:mod:`.series`, cached by :mod:`.cache`, as long-form rows by :mod:`.rows`.

``sncli.track(paths, …)`` (exported by ``sncli``) is :func:`track` and returns a
:class:`TrackReport`; :class:`Tracker` measures state dicts from a training loop.
"""

from __future__ import annotations

from sncli.tracking.cache import TrackCache, default_cache_dir
from sncli.tracking.engine import (
    SPECTRUM_COLUMNS,
    TrackCheckpoint,
    Tracker,
    TrackOptions,
    TrackPoint,
    TrackReport,
    track,
)
from sncli.tracking.series import SeriesItem, discover, step_of

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
