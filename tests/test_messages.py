"""sncli.messages: ``Message`` (a str carrying a level), ``level_of`` and ``clean_text``."""

from __future__ import annotations

import copy
import json
import pickle
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sncli.messages import MAX_SHOWN, Level, Message, clean_text, level_of


def test_levels_are_ordered() -> None:
    assert Level.NOTE < Level.WARNING < Level.SECURITY
    assert min(Level) is Level.NOTE


@pytest.mark.parametrize("level", list(Level))
def test_message_is_a_str_equal_to_its_text(level: Level) -> None:
    message = Message("using key 'ema'", level)
    assert isinstance(message, str)
    assert message == "using key 'ema'"
    assert "using key 'ema'" == message  # noqa: SIM300 - str.__eq__ on the left, on purpose
    assert hash(message) == hash("using key 'ema'")
    assert str(message) == "using key 'ema'"
    assert type(str(message)) is str
    assert f"{message}" == "using key 'ema'"
    assert message.level is level
    assert level_of(message) is level
    assert json.dumps([message]) == json.dumps(["using key 'ema'"])
    assert message in {"using key 'ema'"}
    assert message.startswith("using")


def test_message_default_level_is_note() -> None:
    assert Message("x").level is Level.NOTE


def test_level_of_plain_str_is_note() -> None:
    assert level_of("a plain note") is Level.NOTE
    assert level_of("") is Level.NOTE


def test_derived_strings_are_plain_notes() -> None:
    # str methods return plain str: the level is not carried into new text by accident.
    message = Message("the file may be malicious", Level.SECURITY)
    for derived in (message + "!", message.upper(), message[:8], message.strip()):
        assert type(derived) is str
        assert level_of(derived) is Level.NOTE


def test_message_survives_copy_and_pickle() -> None:
    message = Message("refused", Level.SECURITY)
    for clone in (copy.copy(message), copy.deepcopy(message), pickle.loads(pickle.dumps(message))):
        assert clone == "refused"
        assert level_of(clone) is Level.SECURITY


def test_list_of_messages_stays_list_of_str() -> None:
    notes = [Message("a", Level.WARNING), "b", Message("c", Level.SECURITY)]
    assert notes == ["a", "b", "c"]
    assert [level_of(n) for n in notes] == [Level.WARNING, Level.NOTE, Level.SECURITY]
    assert "\n".join(notes) == "a\nb\nc"


# --- clean_text -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain name.weight", "plain name.weight"),
        ("ünïcode ✓ σ", "ünïcode ✓ σ"),
        ("a\nb", "a\\nb"),
        ("tab\there", "tab\\there"),
        ("cr\r", "cr\\r"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("nul\x00", "nul\\x00"),
        ("del\x7f", "del\\x7f"),
        ("line\u2028sep", "line\\u2028sep"),
        ("bidi\u202eevil", "bidi\\u202eevil"),
        ("zero\u200bwidth", "zero\\u200bwidth"),
        ("", ""),
    ],
)
def test_clean_text_escapes_control_characters(text: str, shown: str) -> None:
    assert clean_text(text) == shown


def test_clean_text_keeps_text_at_the_limit() -> None:
    assert clean_text("x" * MAX_SHOWN) == "x" * MAX_SHOWN
    assert clean_text("abcde", 5) == "abcde"


def test_clean_text_cuts_beyond_the_limit() -> None:
    assert clean_text("x" * (MAX_SHOWN + 1)) == "x" * MAX_SHOWN + "…"
    assert clean_text("abcdef", 5) == "abcde…"
    assert clean_text("y" * 10_000, 10) == "y" * 10 + "…"


def test_clean_text_counts_escapes_against_the_limit() -> None:
    # Four characters fit a limit of 5, but their escaped form does not.
    shown = clean_text("ab\n\n", 5)
    assert shown.endswith("…")
    assert len(shown) == 6
    assert shown.startswith("ab\\n")


@given(text=st.text(max_size=300), limit=st.integers(1, 200))
def test_clean_text_properties(text: str, limit: int) -> None:
    shown = clean_text(text, limit)
    assert len(shown) <= limit + 1
    assert all(c.isprintable() for c in shown)
    assert not any(unicodedata.category(c) in {"Cc", "Cf", "Zl", "Zp"} for c in shown)
    if shown.endswith("…") and not text.endswith("…"):
        assert len(shown) == limit + 1
    if all(c.isprintable() for c in text) and len(text) <= limit:
        assert shown == text
    if len(text) > limit:
        assert shown.endswith("…")
