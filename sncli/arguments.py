"""How the library's public calls take their arguments: a checkpoint or its path, an enum or
its value.

Every entry point that reads a checkpoint (``spectral_norms``, ``spectra``,
``lipschitz_report``, ``plan_normalization``, ``normalize_checkpoint``, ``diff_checkpoints``,
``build_report``) takes an opened :class:`Checkpoint` or anything ``open_checkpoint`` takes (a
path, a folder, a Hugging Face id); one it opened itself it closes before returning. Every
options dataclass turns the string form of an enum field (``assume="sequential"``) into the
member in ``__post_init__``, and refuses a value that is not one with a ``ValueError`` naming
the field and the values it takes: comparing with ``is`` must not silently fail.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from collections.abc import Callable, Iterable, Iterator
from enum import Enum
from typing import Any, TypeVar

from sncli.checkpoint import Checkpoint, open_checkpoint

CheckpointSource = Checkpoint | str | os.PathLike[str]
"""An opened checkpoint, or what :func:`sncli.open_checkpoint` opens."""

F = TypeVar("F", bound=Callable[..., Any])
E = TypeVar("E", bound=Enum)


@contextlib.contextmanager
def opened(source: CheckpointSource) -> Iterator[Checkpoint]:
    """``source`` itself when it is an opened checkpoint (left open), else the checkpoint it
    names, closed on leaving."""
    if isinstance(source, Checkpoint):
        yield source
        return
    if not isinstance(source, str | os.PathLike):
        raise TypeError(
            f"expected a Checkpoint or a path, got {type(source).__name__} "
            "(open one with sncli.open_checkpoint)"
        )
    with open_checkpoint(source) as checkpoint:
        yield checkpoint


def takes_checkpoints(*names: str) -> Callable[[F], F]:
    """Let the parameters ``names`` of the decorated function be paths as well as opened
    checkpoints (:func:`opened`); None passes through."""

    def decorate(function: F) -> F:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            with contextlib.ExitStack() as stack:
                for name in names:
                    value = bound.arguments.get(name)
                    if value is not None:
                        bound.arguments[name] = stack.enter_context(opened(value))
                return function(*bound.args, **bound.kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def as_enum(value: Any, enum: type[E], what: str) -> E:
    """``value`` as a member of ``enum`` (a member, or its value); a ``ValueError`` naming
    ``what`` and the values it takes otherwise."""
    if isinstance(value, enum):
        return value
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(repr(member.value) for member in enum)
        raise ValueError(f"{what} must be one of {allowed}, got {value!r}") from None


def coerce_fields(options: Any, **enums: type[Enum]) -> None:
    """In a frozen dataclass's ``__post_init__``: each named field as its enum's member (None
    left as is); every ``include``/``exclude``/``transposed`` field given as one string made a
    one-pattern tuple (not one pattern per character)."""
    owner = type(options).__name__
    for name, enum in enums.items():
        value = getattr(options, name)
        if value is not None:
            object.__setattr__(options, name, as_enum(value, enum, f"{owner}.{name}"))
    for name in ("include", "exclude", "transposed"):
        value = getattr(options, name, None)
        if isinstance(value, str):
            object.__setattr__(options, name, (value,))
        elif value is not None and not isinstance(value, tuple):
            object.__setattr__(options, name, tuple(value))


def enum_set(values: Iterable[Any] | None, enum: type[E], what: str) -> set[E] | None:
    """Each of ``values`` as a member of ``enum`` (``kinds=["linear"]``); None stays None."""
    if values is None:
        return None
    if isinstance(values, str | Enum):
        values = [values]
    return {as_enum(value, enum, what) for value in values}
