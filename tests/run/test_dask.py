"""sncli.run.dask: inspect, spectrum, diff and lipschitz as tasks on a real local Dask cluster
(a scheduler and two worker processes on 127.0.0.1) give the local run's numbers."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file
from typer.testing import CliRunner

import sncli.run.dask as cluster
from sncli.analysis import MethodOptions, spectral_norms
from sncli.checkpoint import open_checkpoint
from sncli.cli import app
from sncli.diff import diff_checkpoints
from sncli.errors import CheckpointError, NumericalError, SncliError
from sncli.lipschitz import LipschitzOptions, lipschitz_report
from sncli.spectrum import SpectrumOptions, spectra

pytest.importorskip("distributed")

# dask/distributed#8559: no route to a public address on this machine is not an error here.
pytestmark = pytest.mark.filterwarnings("ignore:Couldn't detect a suitable IP address")


def _local_cluster():
    from distributed import LocalCluster

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Couldn't detect a suitable IP address")
        return LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.CRITICAL,
        )


@pytest.fixture(scope="module", autouse=True)
def hang_guard():
    """A hung cluster test fails the run (traceback of every thread) instead of hanging CI."""
    import faulthandler

    faulthandler.dump_traceback_later(int(os.environ.get("SNCLI_TEST_HANG_S", "300")), exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module")
def scheduler():
    local = _local_cluster()
    try:
        yield local.scheduler_address
    finally:
        local.close()


def _sharded(folder: Path, seed: int = 0, scale: float = 1.0, shards: int = 3) -> Path:
    """A sharded safetensors checkpoint: linear layers of several sizes and a 3×3 conv."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for i, (rows, cols) in enumerate([(64, 32), (96, 64), (128, 96), (40, 128), (200, 40)]):
        tensors[f"blocks.{i}.fc.weight"] = torch.randn(rows, cols, generator=gen) * scale
        tensors[f"blocks.{i}.fc.bias"] = torch.randn(rows, generator=gen)
    tensors["stem.conv.weight"] = torch.randn(16, 3, 3, 3, generator=gen) * scale
    names = sorted(tensors)
    folder.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for shard in range(shards):
        part = names[shard::shards]
        file = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        save_file({name: tensors[name].contiguous() for name in part}, str(folder / file))
        weight_map.update(dict.fromkeys(part, file))
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


def _assert_same_spectra(remote, local) -> None:
    """Every field equal, the singular values bit for bit."""
    import numpy as np

    assert len(remote) == len(local) > 0
    for mine, theirs in zip(remote, local, strict=True):
        for field in dataclasses.fields(mine):
            a, b = getattr(mine, field.name), getattr(theirs, field.name)
            if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                assert np.array_equal(np.asarray(a), np.asarray(b)), field.name
            else:
                assert a == b or (a != a and b != b), field.name


@pytest.fixture
def one_task_per_layer(monkeypatch):
    monkeypatch.setattr(cluster, "DEFAULT_TASK_BYTES", 1)


@pytest.mark.usefixtures("one_task_per_layer")
def test_inspect_on_the_cluster_matches_the_local_run(tmp_path, scheduler):
    checkpoint = open_checkpoint(_sharded(tmp_path / "m"))
    local = spectral_norms(checkpoint)
    remote = spectral_norms(checkpoint, options=MethodOptions(scheduler=scheduler))
    assert remote.layers == local.layers  # every field: σ, method, iterations, certificate
    assert any("6 tasks on 2 workers" in note for note in remote.notes)
    assert remote.workers == 2


def test_grouped_small_layers_give_the_same_numbers(tmp_path, scheduler):
    checkpoint = open_checkpoint(_sharded(tmp_path / "m"))
    options = MethodOptions(scheduler=scheduler, certify=True)
    remote = spectral_norms(checkpoint, options=options)
    assert remote.layers == spectral_norms(checkpoint, options=MethodOptions(certify=True)).layers
    assert any("1 task on 2 workers" in note for note in remote.notes)


@pytest.mark.usefixtures("one_task_per_layer")
def test_spectrum_on_the_cluster_matches_the_local_run(tmp_path, scheduler):
    checkpoint = open_checkpoint(_sharded(tmp_path / "m"))
    local = spectra(checkpoint)
    remote = spectra(checkpoint, options=SpectrumOptions(scheduler=scheduler))
    _assert_same_spectra(remote.layers, local.layers)
    top = spectra(checkpoint, options=SpectrumOptions(top_k=3, scheduler=scheduler))
    _assert_same_spectra(top.layers, spectra(checkpoint, options=SpectrumOptions(top_k=3)).layers)


@pytest.mark.usefixtures("one_task_per_layer")
def test_diff_on_the_cluster_matches_the_local_run(tmp_path, scheduler):
    a = open_checkpoint(_sharded(tmp_path / "a", seed=0))
    b = open_checkpoint(_sharded(tmp_path / "b", seed=0, scale=1.01, shards=2))
    local = diff_checkpoints(a, b)
    remote = diff_checkpoints(a, b, options=MethodOptions(scheduler=scheduler))
    assert remote.layers == local.layers
    assert remote.layers and all(layer.delta_sigma > 0 for layer in remote.layers)


@pytest.mark.usefixtures("one_task_per_layer")
def test_lipschitz_on_the_cluster_matches_the_local_run(tmp_path, scheduler):
    checkpoint = open_checkpoint(_sharded(tmp_path / "m"))
    local = lipschitz_report(checkpoint, LipschitzOptions())
    remote = lipschitz_report(checkpoint, LipschitzOptions(scheduler=scheduler))
    assert remote.factors == local.factors
    assert remote.bound == local.bound
    assert any("Dask cluster" in note for note in remote.notes)


def _damaged_torch_file(path: Path) -> Path:
    """A PyTorch zip file whose second tensor has one flipped byte (its CRC-32 no longer
    matches): opening works, reading that tensor fails."""
    first = torch.full((8, 8), 0.5)
    second = torch.arange(64, dtype=torch.float32).reshape(8, 8) + 1000.0
    torch.save({"a.weight": first, "b.weight": second}, path)
    data = bytearray(path.read_bytes())
    at = data.find(second.numpy().tobytes())
    assert at > 0
    data[at + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def test_bad_data_on_a_worker_is_the_local_one_line_error(tmp_path, scheduler):
    checkpoint = open_checkpoint(_damaged_torch_file(tmp_path / "bad.pt"))
    with pytest.raises(CheckpointError) as local:
        spectral_norms(checkpoint)
    with pytest.raises(CheckpointError) as remote:
        spectral_norms(checkpoint, options=MethodOptions(scheduler=scheduler))
    assert str(remote.value) == str(local.value)
    assert remote.value.path == local.value.path
    assert "\n" not in str(remote.value)


def test_a_file_changed_after_opening_is_refused_by_the_worker(tmp_path, scheduler):
    index = _sharded(tmp_path / "m")
    checkpoint = open_checkpoint(index)
    shard = sorted(index.parent.glob("*.safetensors"))[0]
    before = shard.stat()
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns + 5 * 10**9))
    with pytest.raises(CheckpointError, match="a Dask worker sees another file") as caught:
        spectral_norms(checkpoint, options=MethodOptions(scheduler=scheduler))
    assert caught.value.path == str(shard.resolve())


def test_an_unreachable_scheduler_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 1)
    checkpoint = open_checkpoint(_sharded(tmp_path / "m"))
    began = time.monotonic()
    with pytest.raises(cluster.SchedulerError, match="cannot reach the Dask scheduler at"):
        spectral_norms(checkpoint, options=MethodOptions(scheduler="tcp://127.0.0.1:9"))
    assert time.monotonic() - began < 30


def test_a_gpu_device_with_a_scheduler_is_refused(tmp_path):
    checkpoint = open_checkpoint(_sharded(tmp_path / "m"))
    with pytest.raises(cluster.SchedulerError, match="--device cuda is for local runs"):
        spectral_norms(checkpoint, options=MethodOptions(scheduler="tcp://x:1", device="cuda"))


@pytest.mark.usefixtures("one_task_per_layer")
def test_ctrl_c_cancels_the_submitted_tasks(tmp_path, scheduler, monkeypatch):
    """With the run's own client kept open, no sncli task is left on the scheduler (cancelled;
    a mutation without the cancel passes too: the run's futures are released as it unwinds)."""
    from distributed import Client

    checkpoint = open_checkpoint(_sharded(tmp_path / "m"))
    kept: list[Client] = []
    real_close = Client.close
    monkeypatch.setattr(Client, "close", lambda self, *_a, **_k: kept.append(self))

    def interrupt(done: int, *_: object) -> None:
        if done >= 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        spectra(checkpoint, options=SpectrumOptions(scheduler=scheduler), progress=interrupt)
    monkeypatch.setattr(Client, "close", real_close)
    assert kept
    try:
        with Client(scheduler, set_as_default=False) as client:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                left = client.run_on_scheduler(
                    lambda dask_scheduler: [k for k in dask_scheduler.tasks if "sncli-" in str(k)]
                )
                if not left:
                    break
                time.sleep(0.1)
            assert left == []
    finally:
        for client in kept:
            client.close()


def test_a_cluster_left_without_workers_fails_instead_of_hanging(tmp_path, monkeypatch):
    """The only worker is closed mid-run (no nanny to replace it: an in-process worker on TCP;
    ``scale(0)`` would wait for ever for a place to move its results to)."""
    from distributed import LocalCluster

    monkeypatch.setattr(cluster, "DEFAULT_TASK_BYTES", 1)
    monkeypatch.setattr(cluster, "WORKERLESS_TIMEOUT_S", 2.0)
    checkpoint = open_checkpoint(_sharded(tmp_path / "m"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Couldn't detect a suitable IP address")
        local_cluster = LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=False,
            protocol="tcp://",
            dashboard_address=":0",
            silence_logs=logging.CRITICAL,
        )
    try:
        worker = next(iter(local_cluster.workers.values()))

        def close_the_worker(done: int, *_: object) -> None:
            if done == 1:
                local_cluster.sync(worker.close)

        began = time.monotonic()
        with pytest.raises(cluster.SchedulerError, match="has had no workers for 2 s"):
            spectra(
                checkpoint,
                options=SpectrumOptions(scheduler=local_cluster.scheduler_address),
                progress=close_the_worker,
            )
        assert time.monotonic() - began < 60
    finally:
        local_cluster.close()


def test_a_service_that_is_not_a_scheduler_is_refused_in_time(tmp_path, monkeypatch):
    """The dashboard or any web port: Client's own timeout covers only the TCP connect."""
    import http.server
    import threading

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 1)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    checkpoint = open_checkpoint(_sharded(tmp_path / "m"))
    began = time.monotonic()
    try:
        with pytest.raises(cluster.SchedulerError, match="no answer as a Dask scheduler"):
            spectral_norms(
                checkpoint,
                options=MethodOptions(scheduler=f"tcp://127.0.0.1:{server.server_port}"),
            )
    finally:
        server.shutdown()
    assert time.monotonic() - began < 20


def test_workers_with_another_sncli_are_refused_before_any_task(tmp_path, scheduler, monkeypatch):
    monkeypatch.setattr(cluster, "source_hash", lambda: "another build")
    checkpoint = open_checkpoint(_sharded(tmp_path / "m"))
    with pytest.raises(cluster.SchedulerError, match="runs another sncli than this machine"):
        spectral_norms(checkpoint, options=MethodOptions(scheduler=scheduler))


def test_the_source_hash_is_the_workers_view_of_the_same_files(scheduler):
    from distributed import Client

    with Client(scheduler, set_as_default=False) as client:
        theirs = set(client.run(eval, cluster._SOURCE_HASH).values())
    assert theirs == {cluster.source_hash()}
    assert len(cluster.source_hash()) == 64


def test_inproc_addresses_are_refused(tmp_path):
    checkpoint = open_checkpoint(_sharded(tmp_path / "m"))
    with pytest.raises(cluster.SchedulerError, match="not a network address"):
        spectral_norms(checkpoint, options=MethodOptions(scheduler="inproc://x"))


def test_a_worker_killed_mid_run_loses_nothing(tmp_path, monkeypatch):
    """SIGKILL one worker process after the first result: Dask reruns its tasks elsewhere
    (or on the nanny's replacement), and the answer is the local one."""
    from distributed import Client

    monkeypatch.setattr(cluster, "DEFAULT_TASK_BYTES", 1)
    gen = torch.Generator().manual_seed(3)
    folder = tmp_path / "big"
    folder.mkdir()
    tensors = {f"layers.{i}.weight": torch.randn(384, 320, generator=gen) for i in range(16)}
    save_file(dict(list(tensors.items())[:8]), str(folder / "model-00001-of-00002.safetensors"))
    save_file(dict(list(tensors.items())[8:]), str(folder / "model-00002-of-00002.safetensors"))
    weight_map = {n: f"model-0000{1 + i // 8}-of-00002.safetensors" for i, n in enumerate(tensors)}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    checkpoint = open_checkpoint(folder)
    local = spectra(checkpoint)
    killed: list[int] = []
    local_cluster = _local_cluster()
    try:
        with Client(local_cluster.scheduler_address, set_as_default=False) as client:
            pids = sorted(client.run(os.getpid).values())

        def kill_one(done: int, *_: object) -> None:
            if done >= 1 and not killed:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])

        remote = spectra(
            checkpoint,
            options=SpectrumOptions(scheduler=local_cluster.scheduler_address),
            progress=kill_one,
        )
    finally:
        local_cluster.close()
    assert killed
    _assert_same_spectra(remote.layers, local.layers)


def test_run_task_refuses_another_sncli_version():
    values, error = cluster.run_task((), [], lambda *_: None, lambda x: x, "0.0.0-other")
    assert values is None
    assert isinstance(error, cluster.SchedulerError)
    assert "install the same version on the workers" in str(error)


@pytest.mark.parametrize("error_type", [CheckpointError, NumericalError, cluster.SchedulerError])
def test_errors_survive_pickling_with_message_and_path(error_type):
    error = error_type("cannot read tensor 'w'", "/models/a b.safetensors")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is error_type
    assert (str(copy), copy.message, copy.path) == (str(error), error.message, error.path)
    assert copy.exit_code == error.exit_code
    assert isinstance(copy, SncliError)


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=300), max_size=40),
    task_bytes=st.integers(min_value=1, max_value=400),
)
def test_group_items_partitions_in_order_within_the_budget(sizes, task_bytes):
    groups = cluster.group_items(sizes, lambda size: size, task_bytes)
    assert [i for group in groups for i in group] == list(range(len(sizes)))
    for group in groups:
        if len(group) > 1:
            assert sum(sizes[i] for i in group) <= task_bytes
            assert all(sizes[i] < task_bytes for i in group)


def test_cli_inspect_with_scheduler_matches_local_json(tmp_path, scheduler):
    index = _sharded(tmp_path / "m")
    runner = CliRunner()
    local = runner.invoke(app, ["inspect", str(index), "--format", "json", "--quiet"])
    remote = runner.invoke(
        app, ["inspect", str(index), "--format", "json", "--scheduler", scheduler]
    )
    assert local.exit_code == 0, local.output
    assert remote.exit_code == 0, remote.output
    assert json.loads(remote.stdout)["layers"] == json.loads(local.stdout)["layers"]
    assert "computed on the Dask cluster at" in remote.stderr


def test_cli_unreachable_scheduler_exit_code_and_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 1)
    index = _sharded(tmp_path / "m")
    result = CliRunner().invoke(
        app,
        ["spectrum", str(index), "--quiet"],
        env={"DASK_SCHEDULER_ADDRESS": "tcp://127.0.0.1:9"},
    )
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in lines[0]
    assert "Traceback" not in result.output


def test_installed_sncli_reads_the_scheduler_from_the_environment(tmp_path, scheduler):
    index = _sharded(tmp_path / "m")
    env = {**os.environ, "DASK_SCHEDULER_ADDRESS": scheduler}
    done = subprocess.run(
        [sys.executable, "-m", "sncli", "spectrum", str(index), "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "computed on the Dask cluster at " + scheduler in done.stderr
    assert "Traceback" not in done.stderr
    layers = json.loads(done.stdout)["layers"]
    local = spectra(open_checkpoint(index))
    assert [layer["sigma_max"] for layer in layers] == [layer.sigma_max for layer in local.layers]


def test_task_size_aims_at_four_tasks_per_thread_within_8_to_64_mb():
    mb = 1 << 20
    assert cluster.task_size(800 * mb, threads=4) == 50 * mb  # 800 MB / (4 × 4)
    assert cluster.task_size(10 * mb, threads=4) == 8 * mb  # never below 8 MB
    assert cluster.task_size(10**12, threads=4) == 64 * mb  # never above 64 MB


def test_in_flight_allowance_is_the_budget_or_a_quarter_of_each_memory_limit():
    gb = 1 << 30
    workers = [{"memory_limit": 128 * gb}, {"memory_limit": 0}, {}]
    assert cluster.in_flight_allowance(workers, budget=4 * gb) == 32 * gb + 4 * gb + 4 * gb


def test_a_malformed_address_is_refused_before_connecting(tmp_path):
    checkpoint = open_checkpoint(_sharded(tmp_path / "m"))
    began = time.monotonic()
    with pytest.raises(cluster.SchedulerError, match="not a Dask scheduler address: 'nonsense'"):
        spectral_norms(checkpoint, options=MethodOptions(scheduler="nonsense"))
    assert time.monotonic() - began < 10


def test_symlinked_files_like_the_hub_cache_are_opened_by_their_link(tmp_path, scheduler):
    """The Hugging Face cache links snapshot/<name> → blobs/<hash>: a worker must open the link
    (an index resolved to its blob would no longer be recognised as an index)."""
    real = _sharded(tmp_path / "real")
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshot"
    blobs.mkdir()
    snapshot.mkdir()
    for number, file in enumerate(sorted(real.parent.iterdir())):
        blob = blobs / f"{number:040x}"
        file.rename(blob)
        (snapshot / file.name).symlink_to(blob)
    checkpoint = open_checkpoint(snapshot)
    remote = spectral_norms(checkpoint, options=MethodOptions(scheduler=scheduler))
    assert remote.layers == spectral_norms(checkpoint).layers
