"""Multi-file writes as one transaction (issue 16 §1–2): journal, recovery, one writer at a time.

The kill tests drive ``sncli.transaction`` in a small subprocess (no torch: a tenth of a second
each) on a 4-shard checkpoint plus its index, killed by SIGKILL/SIGTERM/SIGINT at every
"after rename k" point through the test hook; one test kills the real ``sncli normalize``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import scipy.linalg
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from sncli.cli import app
from sncli.errors import CheckpointError, WriteError
from sncli.transaction import (
    HOOK_ENV,
    HOOK_FILE_ENV,
    JOURNAL_SUFFIX,
    LOCK_SUFFIX,
    ORIG_MARKER,
    Transaction,
    find_journals,
    journal_path,
    lock_path,
    recover,
    refuse_unfinished,
    writer_lock,
)
from sncli.writer import TEMP_MARKER

ROOT = Path(__file__).resolve().parent.parent
SHARDS = [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]
INDEX = "model.safetensors.index.json"

#: Rewrites every shard and the index of FOLDER with "new" contents in one transaction.
_WRITER = """
import sys
from pathlib import Path
from sncli.transaction import Transaction, writer_lock
folder = Path(sys.argv[1])
names = sys.argv[2:]
anchor = folder / names[-1]
with writer_lock(anchor), Transaction(anchor, command="test writer") as tx:
    for name in names:
        with tx.stage(folder / name) as (handle, _):
            handle.write(b"new " + name.encode() * 1000)
    tx.commit()
"""


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def svd_sigma(tensor: torch.Tensor) -> float:
    return float(scipy.linalg.svdvals(tensor.double().numpy())[0])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (HOOK_ENV, "SNCLI_DEBUG")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def write_old(folder: Path, names: list[str]) -> None:
    for name in names:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"old " + name.encode() * 1000)


def state(folder: Path, names: list[str]) -> set[str]:
    """Which versions the files hold: {"old"}, {"new"} or a mix."""
    return {(folder / n).read_bytes()[:3].decode() for n in names}


def strays(folder: Path) -> list[str]:
    return sorted(
        p.name
        for p in folder.rglob("*")
        if any(m in p.name for m in (TEMP_MARKER, ORIG_MARKER, JOURNAL_SUFFIX, LOCK_SUFFIX))
    )


def run_writer(folder: Path, names: list[str], hook: str | None, **extra: str):
    env = _env(**extra) if hook is None else _env(**{HOOK_ENV: hook}, **extra)
    return subprocess.run(
        [sys.executable, "-c", _WRITER, str(folder), *names],
        env=env,
        capture_output=True,
        timeout=600,
    )


def wait_until(predicate, timeout: float = 300.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


NAMES = [*SHARDS, INDEX]
POINTS = ["journal", "linked", *(f"after-rename-{k}" for k in range(1, len(NAMES) + 1))]


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM", "SIGINT"])
@pytest.mark.parametrize("point", POINTS)
def test_kill_at_every_rename_point_is_all_or_nothing(tmp_path: Path, point: str, sig: str) -> None:
    write_old(tmp_path, NAMES)
    result = run_writer(tmp_path, NAMES, f"{point}:{sig}")
    assert result.returncode != 0
    if sig == "SIGKILL":
        # Died mid-commit: a journal remains, and every reader refuses the checkpoint.
        assert find_journals(tmp_path / INDEX) == [journal_path(tmp_path / INDEX)]
        for name in (INDEX, SHARDS[0]):
            with pytest.raises(CheckpointError, match="sncli recover") as refused:
                refuse_unfinished(tmp_path / name)
            assert "\n" not in str(refused.value)
        (done,) = recover(tmp_path / INDEX)
        assert done.rolled_forward, done.reason
    else:
        # SIGTERM/SIGINT are held until the renames are done, then delivered.
        assert find_journals(tmp_path) == []
    assert state(tmp_path, NAMES) == {"new"}
    assert strays(tmp_path) == []
    refuse_unfinished(tmp_path / INDEX)  # consistent again: no error


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM", "SIGINT"])
def test_kill_while_staging_changes_nothing(tmp_path: Path, sig: str) -> None:
    """Before the journal exists a kill leaves the originals; the one watchdog removes temps."""
    write_old(tmp_path, NAMES)
    slow = _WRITER.replace(
        'handle.write(b"new "',
        "import os, signal; (len(tx.staged) == 2 and os.kill(os.getpid(), signal." + sig + "))\n"
        '            handle.write(b"new "',
    )
    result = subprocess.run(
        [sys.executable, "-c", slow, str(tmp_path), *NAMES],
        env=_env(),
        capture_output=True,
        timeout=600,
    )
    assert result.returncode != 0
    assert b"write to closed file" not in result.stderr
    assert state(tmp_path, NAMES) == {"old"}
    # SIGKILL may leave the empty lock file: it holds no lock, the next writer removes it.
    lock = lock_path(tmp_path / INDEX).name
    assert wait_until(lambda: set(strays(tmp_path)) <= {lock}), strays(tmp_path)
    with writer_lock(tmp_path / INDEX, wait=False):
        pass
    assert strays(tmp_path) == []


def test_recover_rolls_back_when_a_staged_file_is_damaged(tmp_path: Path) -> None:
    write_old(tmp_path, NAMES)
    result = run_writer(tmp_path, NAMES, "after-rename-2:SIGKILL")
    assert result.returncode == -signal.SIGKILL
    journal = json.loads(journal_path(tmp_path / INDEX).read_text())
    staged = tmp_path / journal["entries"][3]["staged"]
    staged.write_bytes(b"damaged")
    (done,) = recover(tmp_path)
    assert not done.rolled_forward and "does not match its hash" in done.reason
    assert state(tmp_path, NAMES) == {"old"}
    assert strays(tmp_path) == []


def test_hostile_journal_cannot_point_outside(tmp_path: Path) -> None:
    write_old(tmp_path, NAMES)
    victim = tmp_path.parent / f"{tmp_path.name}-victim"
    victim.write_bytes(b"keep")
    entry = {"target": f"../{victim.name}", "staged": SHARDS[0], "sha256": "0" * 64, "size": 1}
    body = {"sncli_journal": 1, "entries": [{**entry, "original": None}]}
    journal_path(tmp_path / INDEX).write_text(json.dumps(body))
    with pytest.raises(CheckpointError, match="leaves its folder"):
        recover(tmp_path)
    assert victim.read_bytes() == b"keep"


def test_failed_rename_restores_the_files_already_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unreplaceable shard (chattr +i, a full disk) mid-commit: nothing changed, truly."""
    write_old(tmp_path, NAMES)
    real_replace = os.replace
    calls = []

    def replace(source: str | Path, target: str | Path) -> None:
        calls.append(target)
        if Path(target).name == SHARDS[2] and TEMP_MARKER in Path(source).name:
            raise PermissionError(1, "Operation not permitted", str(target))
        real_replace(source, target)

    anchor = tmp_path / INDEX
    monkeypatch.setattr(os, "replace", replace)
    with (
        pytest.raises(WriteError, match="nothing was changed") as failed,
        Transaction(anchor) as tx,
    ):
        for name in NAMES:
            with tx.stage(tmp_path / name) as (handle, _):
                handle.write(b"new")
        tx.commit()
    assert SHARDS[2] in str(failed.value)
    assert state(tmp_path, NAMES) == {"old"}
    assert strays(tmp_path) == []


def test_subfolder_shards_and_new_targets(tmp_path: Path) -> None:
    """Targets in subfolders, and targets that did not exist (a fresh -o folder)."""
    names = ["sub/a.safetensors", "other/a.safetensors", INDEX]
    for sub in ("sub", "other"):
        (tmp_path / sub).mkdir()
    result = run_writer(tmp_path, names, "after-rename-1:SIGKILL")
    assert result.returncode == -signal.SIGKILL
    (done,) = recover(tmp_path / INDEX)
    assert done.rolled_forward
    assert state(tmp_path, names) == {"new"}
    assert strays(tmp_path) == []


def test_one_file_needs_no_journal(tmp_path: Path) -> None:
    write_old(tmp_path, ["m.safetensors"])
    result = run_writer(tmp_path, ["m.safetensors"], "journal:SIGKILL")
    assert result.returncode == 0  # no journal point for one file: a single atomic rename
    assert state(tmp_path, ["m.safetensors"]) == {"new"}
    assert strays(tmp_path) == []


# ------------------------------------------------------------------------------ one writer


def test_second_writer_waits_or_fails_at_once(tmp_path: Path) -> None:
    write_old(tmp_path, NAMES)
    marker = tmp_path.parent / f"{tmp_path.name}.paused"
    first = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path), *NAMES],
        env=_env(**{HOOK_ENV: "after-rename-1:pause", HOOK_FILE_ENV: str(marker)}),
        stderr=subprocess.PIPE,
    )
    try:
        assert wait_until(marker.exists), first.stderr.read() if first.poll() else "timeout"
        # Paused after its first rename: readers are told a write is under way.
        with pytest.raises(CheckpointError, match="being rewritten by another sncli process"):
            refuse_unfinished(tmp_path / INDEX)
        with (
            pytest.raises(WriteError, match=r"another sncli process \(pid"),
            writer_lock(tmp_path / INDEX, wait=False),
        ):
            pass
        told: list[str] = []
        acquired = threading.Event()

        def second() -> None:
            with writer_lock(tmp_path / INDEX, on_wait=told.append):
                acquired.set()

        waiter = threading.Thread(target=second)
        waiter.start()
        assert wait_until(lambda: bool(told))
        assert "waiting for another sncli process" in told[0]
        assert not acquired.is_set()
        marker.unlink()
        waiter.join(timeout=600)
        assert acquired.is_set()
    finally:
        marker.unlink(missing_ok=True)
        first.wait(timeout=600)
    assert first.returncode == 0
    assert state(tmp_path, NAMES) == {"new"}
    assert strays(tmp_path) == []


# ------------------------------------------------------------------------------ the real CLI


@pytest.fixture
def four_shards(tmp_path: Path) -> Path:
    """A 4-shard safetensors checkpoint whose layers have σ ≈ 20–30."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    generator = torch.Generator().manual_seed(3)
    weight_map = {}
    for i, shard in enumerate(SHARDS):
        name = f"layers.{i}.weight"
        save_file({name: torch.randn(24, 16, generator=generator) * 5}, str(folder / shard))
        weight_map[name] = shard
    (folder / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def sigmas(folder: Path) -> list[float]:
    return [svd_sigma(t) for shard in SHARDS for t in load_file(str(folder / shard)).values()]


def test_cli_killed_after_rename_2_then_refused_recovered_and_rerun(four_shards: Path) -> None:
    killed = subprocess.run(
        [sys.executable, "-m", "sncli", "normalize", str(four_shards), "--in-place", "-q"],
        env=_env(**{HOOK_ENV: "after-rename-2:SIGKILL"}),
        capture_output=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL
    mixed = sigmas(four_shards)
    assert min(mixed) < 1 + 1e-6 < max(mixed)  # what used to be left for readers to trip on
    code, out, err = invoke("inspect", str(four_shards), "-q")
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "interrupted sncli write" in err and "sncli recover" in err

    # Re-running the interrupted command completes it first (then normalizes, idempotently).
    code, _, err = invoke("normalize", str(four_shards), "--in-place")
    assert code == 0, err
    assert "completed the interrupted write" in err
    assert all(1 - 1e-5 <= s <= 1 + 1e-12 for s in sigmas(four_shards))
    assert strays(four_shards) == []
    code, out, _ = invoke("recover", str(four_shards))
    assert code == 0 and "nothing to recover" in out


def test_cli_recover_command(four_shards: Path) -> None:
    result = run_writer(four_shards, NAMES, "after-rename-3:SIGKILL")
    assert result.returncode == -signal.SIGKILL
    code, out, err = invoke("recover", str(four_shards / INDEX))
    assert code == 0, err
    assert "completed the interrupted write (test writer): 5 files" in out
    assert state(four_shards, NAMES) == {"new"}


def test_cli_no_wait_fails_at_once_while_another_writer_holds_the_lock(four_shards: Path) -> None:
    before = sigmas(four_shards)
    with open(lock_path(four_shards / INDEX), "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242\n")
        held.flush()
        start = time.monotonic()
        code, _, err = invoke("normalize", str(four_shards), "--in-place", "--no-wait", "-q")
    assert time.monotonic() - start < 10
    assert code == 1
    assert "another sncli process (pid 4242) is writing this checkpoint" in err
    assert sigmas(four_shards) == before


def test_two_cli_writers_serialize_and_none_is_lost(four_shards: Path, tmp_path: Path) -> None:
    """A (target 2) pauses after its first rename; B (clip at 3) waits, then sees A's result."""
    marker = tmp_path / "paused"
    command = [sys.executable, "-m", "sncli", "normalize", str(four_shards), "--in-place"]
    first = subprocess.Popen(
        [*command, "--target", "2", "-q"],
        env=_env(**{HOOK_ENV: "after-rename-1:pause", HOOK_FILE_ENV: str(marker)}),
        stderr=subprocess.PIPE,
    )
    second = None
    try:
        assert wait_until(marker.exists, timeout=600)
        log = tmp_path / "second.err"
        with log.open("wb") as err:
            second = subprocess.Popen(
                [*command, "--target", "3", "--mode", "clip"],
                env=_env(),
                stderr=err,
                stdout=subprocess.DEVNULL,
            )
        # B blocks on A's lock (it would otherwise plan from A's half-written checkpoint).
        assert wait_until(lambda: b"waiting for another sncli process" in log.read_bytes(), 600)
        assert second.poll() is None
        marker.unlink()
        assert first.wait(timeout=600) == 0
        assert second.wait(timeout=600) == 0, log.read_text()
    finally:
        marker.unlink(missing_ok=True)
        first.kill()
        if second is not None:
            second.kill()
    # B clipped at 3 what A had left at 2: every layer keeps σ = 2 (no write was lost).
    assert all(abs(s - 2) <= 2e-5 for s in sigmas(four_shards)), sigmas(four_shards)
    assert strays(four_shards) == []


# ------------------------------------------------------------------------------ hostile journals
# A journal is input: a downloaded folder may ship one. Every test below starts from a real
# interrupted write (killed after its 2nd rename, so entries 3-5 still have staged files), then
# edits one path field of its journal; recover must refuse with one line and touch nothing,
# neither in the folder nor outside it.


def snapshot(root: Path) -> dict[str, tuple[str, bytes]]:
    """Every name under ``root``: its kind and (for files and links) contents or target (the
    writer lock's file aside: taking the lock rewrites it)."""
    seen = {}
    for path in sorted(root.rglob("*")):
        if path.name.endswith(LOCK_SUFFIX):
            continue
        if path.is_symlink():
            seen[str(path)] = ("link", os.readlink(path).encode())
        elif path.is_file():
            seen[str(path)] = ("file", path.read_bytes())
        else:
            seen[str(path)] = ("dir", b"")
    return seen


@pytest.fixture
def interrupted(tmp_path: Path) -> Path:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "victim").write_bytes(b"someone else's file")
    (outside / "sub" / SHARDS[3]).write_bytes(b"someone else's shard")
    write_old(folder, NAMES)
    result = run_writer(folder, NAMES, "after-rename-2:SIGKILL")
    assert result.returncode == -signal.SIGKILL
    return folder


def edit_journal(folder: Path, index: int, field: str, value: str) -> None:
    journal = journal_path(folder / INDEX)
    body = json.loads(journal.read_text())
    body["entries"][index][field] = value
    journal.write_text(json.dumps(body))  # same file, same path: its record still matches


def assert_refused(folder: Path, match: str = "refused sncli journal") -> None:
    before = snapshot(folder.parent)
    with pytest.raises(CheckpointError, match=match) as refused:
        recover(folder)
    assert "\n" not in str(refused.value)
    assert snapshot(folder.parent) == before
    code, out, err = invoke("recover", str(folder))
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1, err
    assert snapshot(folder.parent) == before


def _sibling(field: str) -> str:
    marker = "sncli-tmp" if field == "staged" else "sncli-orig"
    return f".{SHARDS[3]}.{marker}-deadbeef"


@pytest.mark.parametrize("field", ["target", "staged", "original"])
@pytest.mark.parametrize(
    "attack", ["dotdot", "absolute", "symlink_file", "symlink_folder", "symlink_folder_inside"]
)
def test_hostile_journal_paths_are_refused(interrupted: Path, field: str, attack: str) -> None:
    folder, outside = interrupted, interrupted.parent / "outside"
    if attack == "dotdot":
        value = "../outside/victim"
    elif attack == "absolute":
        value = str(outside / "victim")
    elif attack == "symlink_file":
        value = SHARDS[3] if field == "target" else _sibling(field)
        link = folder / value
        link.unlink(missing_ok=True)
        link.symlink_to(outside / "victim")
    elif attack == "symlink_folder":
        (folder / "link").symlink_to(outside / "sub")
        value = f"link/{SHARDS[3]}"
    else:  # a symlinked subfolder pointing back inside: no symlink is followed at all
        (folder / "again").symlink_to(folder)
        value = f"again/{SHARDS[3]}"
    edit_journal(folder, 3, field, value)
    assert_refused(folder)


@pytest.mark.parametrize("field", ["staged", "original"])
def test_hostile_journal_hard_links_are_refused(interrupted: Path, field: str) -> None:
    """A staged file or kept original hard-linked to a file outside (named as sncli names it)."""
    folder = interrupted
    victim = folder.parent / "outside" / "victim"
    name = _sibling(field)
    os.link(victim, folder / name)
    edit_journal(folder, 3, field, name)
    if field == "staged":
        body = json.loads(journal_path(folder / INDEX).read_text())
        body["entries"][3]["sha256"] = hashlib.sha256(victim.read_bytes()).hexdigest()
        body["entries"][3]["size"] = victim.stat().st_size
        journal_path(folder / INDEX).write_text(json.dumps(body))
    assert_refused(folder, "hard links")


@pytest.mark.parametrize("field", ["staged", "original"])
def test_hostile_journal_names_only_sncli_siblings(interrupted: Path, field: str) -> None:
    """A staged file or original must carry sncli's name beside its target (not a shard)."""
    edit_journal(interrupted, 3, field, SHARDS[0])
    assert_refused(interrupted, "not a name sncli gives")


def test_hard_linked_target_is_written_but_the_other_name_keeps_its_bytes(
    interrupted: Path,
) -> None:
    """A target with another hard link outside: the rename gives it a new inode."""
    victim = interrupted.parent / "outside" / "victim"
    (interrupted / SHARDS[3]).unlink()
    os.link(victim, interrupted / SHARDS[3])
    body = json.loads(journal_path(interrupted / INDEX).read_text())
    body["entries"][3]["original"] = None  # the kept original would not match the new inode
    journal_path(interrupted / INDEX).write_text(json.dumps(body))
    (done,) = recover(interrupted)
    assert done.rolled_forward
    assert victim.read_bytes() == b"someone else's file"
    assert state(interrupted, NAMES) == {"new"}


def test_journal_without_this_accounts_record_is_refused(interrupted: Path) -> None:
    """A shipped journal (no token, or a token with no record here) is not acted on."""
    journal = journal_path(interrupted / INDEX)
    body = json.loads(journal.read_text())
    body["token"] = "0" * 32
    journal.write_text(json.dumps(body))
    assert_refused(interrupted, "this account's sncli did not write it")
    code, _, err = invoke("inspect", str(interrupted), "-q")
    assert code == 1 and "did not write it" in err and "sncli recover" not in err
    del body["token"]
    journal.write_text(json.dumps(body))
    assert_refused(interrupted, "this account's sncli did not write it")


def test_journal_copied_to_another_folder_is_refused(interrupted: Path, tmp_path: Path) -> None:
    """The record names the journal's real path: the same journal elsewhere is foreign."""
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in interrupted.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    assert_refused(copy, "did not write it here")
    (done,) = recover(interrupted)  # the original still recovers
    assert done.rolled_forward


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_journal_that_is_a_link_is_refused(interrupted: Path, kind: str) -> None:
    journal = journal_path(interrupted / INDEX)
    if kind == "hardlink":
        os.link(journal, interrupted.parent / "journal-copy")
    else:
        real = interrupted / "elsewhere.json"
        journal.rename(real)
        journal.symlink_to(real.name)
    assert_refused(interrupted, "refused sncli journal")


def test_record_is_removed_after_recovery(interrupted: Path) -> None:
    token = json.loads(journal_path(interrupted / INDEX).read_text())["token"]
    from sncli.journal import state_dir

    assert (state_dir() / "journals" / token).exists()
    recover(interrupted)
    assert not (state_dir() / "journals" / token).exists()
