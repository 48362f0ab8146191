"""The stderr sink decides by level: --quiet hides notes, never warnings or security warnings."""

from __future__ import annotations

import pytest
import typer

from sncli.cli.sink import DEBUG_ENV, Sink, handle_errors
from sncli.errors import EXIT_NO_LAYERS, NoLayersMatchedError
from sncli.messages import Level, Message, level_of

SECURITY = Message(
    "objects outside PyTorch's allowlist (builtins.exec) were loaded as inert placeholders",
    Level.SECURITY,
)


def stderr_of(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


def test_quiet_hides_notes_and_shows_security_and_warnings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    sink = Sink(quiet=True)
    sink.show("using the state dict under key 'state_dict'")
    sink.note("--input-size is ignored with zero padding")
    sink.show(SECURITY)
    sink.warning("z.weight: not normalized: zero weight (σ = 0)")
    sink.show(Message("a result may surprise", Level.WARNING))
    sink.error("m.pt: no such file or directory")
    assert stderr_of(capsys) == (
        f"sncli: {SECURITY}\n"
        "sncli: warning: z.weight: not normalized: zero weight (σ = 0)\n"
        "sncli: warning: a result may surprise\n"
        "sncli: error: m.pt: no such file or directory\n"
    )


def test_without_quiet_every_level_is_shown(capsys: pytest.CaptureFixture[str]) -> None:
    sink = Sink()
    sink.show("using the state dict under key 'state_dict'")
    sink.show(SECURITY)
    sink.warning("optimizer state was kept")
    assert stderr_of(capsys) == (
        "sncli: using the state dict under key 'state_dict'\n"
        f"sncli: {SECURITY}\n"
        "sncli: warning: optimizer state was kept\n"
    )


def test_the_level_decides_not_the_text(capsys: pytest.CaptureFixture[str]) -> None:
    Sink(quiet=True).show(Message("Warning: only a note, whatever the text says", Level.NOTE))
    assert stderr_of(capsys) == ""
    assert level_of(Message("Warning: x", Level.NOTE)) is Level.NOTE
    assert level_of("a plain note") is Level.NOTE
    assert level_of(SECURITY) is Level.SECURITY


def test_notes_skips_those_already_shown(capsys: pytest.CaptureFixture[str]) -> None:
    shown = ["using the state dict under key 'state_dict'"]
    Sink().notes([*shown, "device 'cuda' requested but CUDA is not available"], besides=shown)
    assert stderr_of(capsys) == "sncli: device 'cuda' requested but CUDA is not available\n"


def test_handle_errors_turns_errors_into_one_line_and_an_exit_code(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)

    @handle_errors
    def no_layers() -> None:
        raise NoLayersMatchedError("nothing to analyse", "m.pt")

    @handle_errors
    def bug() -> None:
        raise ValueError("first line\nsecond line")

    @handle_errors
    def interrupted() -> None:
        raise KeyboardInterrupt

    for command, code, line in (
        (no_layers, EXIT_NO_LAYERS, "sncli: error: m.pt: nothing to analyse\n"),
        (
            bug,
            1,
            "sncli: error: unexpected ValueError: first line "
            f"(set {DEBUG_ENV}=1 for a traceback; please report it)\n",
        ),
        (interrupted, 130, "sncli: error: interrupted\n"),
    ):
        with pytest.raises(typer.Exit) as exit_info:
            command()
        assert exit_info.value.exit_code == code
        assert stderr_of(capsys) == line


def test_handle_errors_passes_usage_errors_and_debug_tracebacks(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    @handle_errors
    def usage() -> None:
        raise typer.BadParameter("bad")

    @handle_errors
    def bug() -> None:
        raise ValueError("boom")

    with pytest.raises(typer.BadParameter):
        usage()
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(ValueError, match="boom"):
        bug()
    assert stderr_of(capsys) == ""
