"""Result objects as pandas DataFrames, for notebooks: one row per layer, one column per field.

pandas is optional and imported only when a ``to_pandas()`` is called. Enum fields become their
values, nested result dataclasses (``spectral_norm``) become ``<field>_<subfield>`` columns,
paths become strings; the report's own fields (checkpoint, method…) go in ``DataFrame.attrs``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from enum import Enum
from pathlib import Path
from typing import Any


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    return value


def _flatten(row: Any, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for spec in dataclasses.fields(row):
        value = getattr(row, spec.name)
        name = f"{prefix}{spec.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            flat.update(_flatten(value, f"{name}_"))
        else:
            flat[name] = _plain(value)
    return flat


def to_frame(rows: Iterable[Any], properties: Sequence[str] = (), **attrs: Any) -> Any:
    """A ``pandas.DataFrame`` of dataclass ``rows`` (plus the named ``properties`` as columns)."""
    try:
        import pandas as pd
    except ImportError as exc:
        raise ImportError("to_pandas() needs pandas: pip install pandas") from exc
    records = []
    for row in rows:
        record = _flatten(row)
        record.update({p: _plain(getattr(row, p)) for p in properties})
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    frame.attrs.update({k: _plain(v) for k, v in attrs.items()})
    return frame
