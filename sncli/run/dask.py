"""Per-layer work as tasks on an existing Dask distributed cluster (``--scheduler ADDRESS``).

The engines (inspect, spectrum, diff, state-dict lipschitz) hand :func:`cluster_map` the same
``load`` and ``compute`` functions they run locally in :func:`sncli.run.local.read_ahead_map`.
A task carries a :class:`CheckpointRef` per checkpoint (path, options, each file's size and
mtime), a group of items (layer descriptions: names, shapes, dtypes; never tensors) and the
functions; the worker opens the checkpoint from the shared path itself (once per worker
process), checks that it sees the same files, reads the group's tensors and computes them with
single-threaded torch. Results are therefore the same numbers as a local run (same code, seeds
and methods), returned in the items' order.

Scheduling: items of at least a task's size (:func:`task_size`: about four tasks per worker
thread, 8–64 MB) are one task each, smaller ones are grouped in key order up to that size; at
most two tasks per worker thread, and stored bytes up to :func:`in_flight_allowance` (per
worker the local byte budget or a quarter of its memory limit), are in flight; the rest wait
on the client, so the cluster's memory is bounded by the layers in flight, not the checkpoint.

Faults: before any task, the workers' sncli sources are compared with this machine's
(:func:`check_workers`); a worker that dies is replaced by Dask, which reruns its tasks (at most
``distributed.scheduler.allowed-failures`` times, default 3); a task that fails on bad data
returns its :class:`SncliError`, which is raised here as the same one-line error a local run
gives; a cluster without workers for ``WORKERLESS_TIMEOUT_S``, or a lost scheduler, is a
one-line :class:`SchedulerError`. Ctrl-C cancels the submitted tasks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from sncli.checkpoint import Checkpoint, open_checkpoint
from sncli.errors import CheckpointError, SncliError
from sncli.formats.safetensors import SafetensorsStreamReader
from sncli.messages import ProgressCallback

if TYPE_CHECKING:
    from distributed import Client

Item = TypeVar("Item")
Loaded = TypeVar("Loaded")
Result = TypeVar("Result")

#: Items smaller than a task's size are grouped in key order up to it. The size is the checkpoint
#: split into ``TASKS_PER_THREAD_TARGET`` tasks per worker thread (load balance), but at least
#: ``MIN_TASK_BYTES`` (a task's round trip is 13–16 ms on a local cluster, bench/cluster.py: the
#: compute of ~2 MB at inspect's ~200 MB/s per thread) and at most ``DEFAULT_TASK_BYTES``.
DEFAULT_TASK_BYTES = 64 << 20
MIN_TASK_BYTES = 8 << 20
TASKS_PER_THREAD_TARGET = 4
#: Tasks in flight per worker thread: one running, one queued on the worker.
TASKS_PER_THREAD = 2
#: Seconds to wait for the scheduler before giving up.
CONNECT_TIMEOUT_S = 10
#: dask/distributed#8559: on a machine without a route to the internet, Dask warns that it cannot
#: find a public address; it is not an error for a cluster on a private network.
_NO_ROUTE_WARNING = r"Couldn't detect a suitable IP address"


class SchedulerError(SncliError):
    """The Dask scheduler cannot be reached, or ``distributed`` is not installed."""


@dataclass(frozen=True)
class FileStamp:
    """A file as the client saw it: a worker that sees another size or mtime (whole seconds:
    file systems keep different sub-second precision) refuses the task."""

    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class CheckpointRef:
    """What a worker needs to open the same checkpoint from the shared path."""

    path: str
    key: str | None
    skip_objects: bool
    stamps: tuple[FileStamp, ...]


def checkpoint_ref(checkpoint: Checkpoint) -> CheckpointRef:
    """The reference a task carries for ``checkpoint``: its absolute path (symlinks kept, as in
    the Hugging Face cache: the worker opens what this machine opened) and each file's size
    and mtime when it was opened (``Checkpoint.stamps``)."""
    stamps = []
    for file in checkpoint.files:
        stamp = checkpoint.stamps.get(file)
        if stamp is None:
            stat = os.stat(file)
            stamp = (stat.st_size, stat.st_mtime_ns)
        stamps.append(FileStamp(os.path.abspath(file), *stamp))
    return CheckpointRef(
        os.path.abspath(checkpoint.path),
        checkpoint.wrapper_key,
        checkpoint._skip_objects,
        tuple(stamps),
    )


# Per worker process: opened checkpoints, kept while the ref is the same (a few at a time).
_OPENED: dict[CheckpointRef, Checkpoint] = {}
_OPENED_LOCK = threading.Lock()
_OPENED_MAX = 4
_THREADS_SET = False


def _open_on_worker(ref: CheckpointRef) -> Checkpoint:
    with _OPENED_LOCK:
        found = _OPENED.get(ref)
        if found is not None:
            return found
        for stamp in ref.stamps:
            try:
                stat = os.stat(stamp.path)
            except OSError as exc:
                raise CheckpointError(
                    f"a Dask worker cannot read it ({exc.strerror or exc}); is the path shared "
                    "with the workers?",
                    stamp.path,
                ) from exc
            if stat.st_size != stamp.size or stat.st_mtime_ns // 10**9 != stamp.mtime_ns // 10**9:
                raise CheckpointError(
                    "a Dask worker sees another file here (size or modification time differ); "
                    "the workers must read the same files as this machine",
                    stamp.path,
                )
        opened = open_checkpoint(ref.path, key=ref.key, skip_objects=ref.skip_objects)
        while len(_OPENED) >= _OPENED_MAX:
            _OPENED.pop(next(iter(_OPENED))).close()
        _OPENED[ref] = opened
        return opened


#: glibc's mallopt parameters, and what a worker gets: Dask's nanny starts workers with
#: MALLOC_TRIM_THRESHOLD_=65536, which also freezes glibc's mmap threshold at 128 KiB, so every
#: mid-sized buffer is a fresh mmap and page faults: inspect ran 2.0× slower in a worker than
#: in a plain process (d=1024 checkpoint, one thread); with these two values a one-worker
#: cluster run took 1.34 s against 1.31 s locally (bench/README.md, "Dask").
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_WORKER_TRIM_BYTES, _WORKER_MMAP_BYTES = 128 << 20, 32 << 20


def _prepare_worker() -> None:
    """Once per worker process: one BLAS thread per task, as locally (:mod:`sncli.run`),
    and glibc's allocator thresholds back near their dynamic defaults (see above)."""
    global _THREADS_SET
    if _THREADS_SET:
        return
    import torch

    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(_M_TRIM_THRESHOLD, _WORKER_TRIM_BYTES)
            libc.mallopt(_M_MMAP_THRESHOLD, _WORKER_MMAP_BYTES)
    _THREADS_SET = True


def run_task(
    refs: tuple[CheckpointRef, ...],
    items: Sequence[Any],
    load: Callable[[tuple[Checkpoint, ...], Any, SafetensorsStreamReader | None], Any],
    compute: Callable[[Any], Any],
    version: str,
) -> tuple[list[Any] | None, SncliError | None]:
    """The worker's side: open the checkpoints, then ``compute(load(item))`` for each item.

    Returns the results, or the first ``SncliError`` (bad data, unreadable file) as a value, so
    Dask neither logs a traceback nor retries what would fail again.
    """
    from sncli._version import __version__

    if version != __version__:
        return None, SchedulerError(
            f"a Dask worker runs sncli {__version__}, this machine {version}: install the "
            "same version on the workers"
        )
    _prepare_worker()
    try:
        checkpoints = tuple(_open_on_worker(ref) for ref in refs)
        primary = checkpoints[0]
        reader = SafetensorsStreamReader() if primary.format == "safetensors" else None
        try:
            return [compute(load(checkpoints, item, reader)) for item in items], None
        finally:
            if reader is not None:
                reader.close()
    except SncliError as exc:
        return None, exc


def group_items(
    items: Sequence[Item], nbytes: Callable[[Item], int], task_bytes: int
) -> list[list[int]]:
    """Indices of ``items`` per task: consecutive items up to ``task_bytes`` together, one task
    for each item of at least that size."""
    groups: list[list[int]] = []
    current: list[int] = []
    size = 0
    for index, item in enumerate(items):
        weight = nbytes(item)
        if current and (weight >= task_bytes or size + weight > task_bytes):
            groups.append(current)
            current, size = [], 0
        current.append(index)
        size += weight
        if size >= task_bytes:
            groups.append(current)
            current, size = [], 0
    if current:
        groups.append(current)
    return groups


#: Stored bytes in flight per worker, as a fraction of its memory limit: a bf16 layer is held
#: as float32 (2×) plus the method's work space (≈ 2× more), so ¼ keeps a worker within it.
MEMORY_LIMIT_FRACTION = 0.25


def in_flight_allowance(workers: Iterable[dict[str, Any]], budget: int) -> int:
    """Stored bytes of submitted tasks, at most: per worker the local byte budget or a quarter
    of its memory limit, whichever is larger (a limit of 0 means none was set)."""
    total = 0
    for worker in workers:
        limit = int(worker.get("memory_limit") or 0)
        total += max(budget, int(limit * MEMORY_LIMIT_FRACTION), 1)
    return total


def task_size(total_bytes: int, threads: int) -> int:
    """Bytes per task: ``TASKS_PER_THREAD_TARGET`` tasks per thread, clamped to
    [``MIN_TASK_BYTES``, ``DEFAULT_TASK_BYTES``] (read at call time, so tests can shrink it)."""
    share = -(-total_bytes // (TASKS_PER_THREAD_TARGET * max(1, threads)))
    return max(1, min(DEFAULT_TASK_BYTES, max(min(MIN_TASK_BYTES, DEFAULT_TASK_BYTES), share)))


def _probe(address: str, timeout: float) -> None:
    """Ask ``address`` who it is, within ``timeout`` seconds for the whole exchange (``Client``'s
    own timeout covers the TCP connect only: a dashboard or web port would hang it)."""
    import asyncio  # here, not at import: `sncli CMD --help` loads no event loop

    from distributed.core import rpc
    from distributed.security import Security

    async def identity() -> dict[str, Any]:
        async with rpc(address, connection_args=Security().get_connection_args("client")) as r:
            return await r.identity()

    outcome: dict[str, Any] = {}

    def ask() -> None:
        try:
            outcome["answer"] = asyncio.run(asyncio.wait_for(identity(), timeout))
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc

    # On a thread of its own, so that Ctrl-C interrupts the wait at once (asyncio.run in the
    # main thread held SIGINT until its timeout).
    asker = threading.Thread(target=ask, name="sncli-probe", daemon=True)
    asker.start()
    asker.join(timeout + 5)
    try:
        if "error" in outcome:
            raise outcome["error"]
        if "answer" not in outcome:
            raise TimeoutError
        answer = outcome["answer"]
    except (asyncio.TimeoutError, TimeoutError) as exc:
        raise SchedulerError(
            f"cannot reach the Dask scheduler at {address}: no answer as a Dask scheduler within "
            f"{timeout:g} s (the dashboard port, 8787, is not the scheduler's, 8786)"
        ) from exc
    except Exception as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SchedulerError(f"cannot reach the Dask scheduler at {address}: {detail}") from exc
    if not isinstance(answer, dict) or answer.get("type") != "Scheduler":
        kind = answer.get("type") if isinstance(answer, dict) else type(answer).__name__
        raise SchedulerError(f"{address} is a Dask {kind}, not a scheduler")


@contextlib.contextmanager
def connect(address: str) -> Iterator[Client]:
    """A client of the scheduler at ``address``, closed afterwards; one-line errors when
    ``distributed`` is missing or ``address`` is not a scheduler that answers."""
    try:
        from distributed import Client
        from distributed.comm import get_address_host_port
    except ImportError as exc:
        raise SchedulerError(
            "--scheduler needs Dask: pip install 'sncli[dask]' (dask[distributed])"
        ) from exc
    if address.startswith("inproc://"):
        raise SchedulerError(
            f"not a network address: {address!r}; --scheduler needs the address of a Dask "
            "scheduler the workers share, e.g. tcp://10.0.0.5:8786"
        )
    try:  # before Client(): a half-built client hangs 20 s at exit when the address is bad
        get_address_host_port(address)
    except ValueError as exc:
        raise SchedulerError(f"not a Dask scheduler address: {address!r} ({exc})") from exc
    quiet = logging.getLogger("distributed.client")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # its reconnect errors become our one-line error
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_NO_ROUTE_WARNING)
            _probe(address, CONNECT_TIMEOUT_S)
            try:
                client = Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
            except (OSError, TimeoutError, ValueError, TypeError) as exc:
                detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise SchedulerError(
                    f"cannot reach the Dask scheduler at {address}: {detail}"
                ) from exc
        try:
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.close(timeout=5)
    finally:
        quiet.setLevel(level)


#: An expression the workers evaluate with the standard library only (an older sncli there
#: could not unpickle a new function): a hash of the installed sncli's source files, or None.
_SOURCE_HASH = (
    "(lambda spec: None if spec is None or not spec.origin else __import__('hashlib').sha256("
    "b''.join(path.relative_to(__import__('pathlib').Path(spec.origin).parent).as_posix()"
    ".encode() + b'\\0' + path.read_bytes() for path in sorted(__import__('pathlib')"
    ".Path(spec.origin).parent.rglob('*.py')))).hexdigest())"
    "(__import__('importlib.util').util.find_spec('sncli'))"
)


def source_hash() -> str | None:
    """The hash of this machine's sncli sources (what :func:`check_workers` compares)."""
    return eval(_SOURCE_HASH)


def check_workers(client: Client) -> None:
    """Refuse a cluster whose workers run another sncli (or none): such a worker could not even
    unpickle a task, and Dask would retire it and wait for ever."""
    mine = source_hash()
    theirs = client.run(eval, _SOURCE_HASH, on_error="return")
    for worker, value in sorted(theirs.items()):
        if value is None or isinstance(value, BaseException):
            raise SchedulerError(
                f"the Dask worker {worker} has no sncli installed: install the same sncli on "
                "the workers (pip install 'sncli[dask]')"
            )
        if value != mine:
            raise SchedulerError(
                f"the Dask worker {worker} runs another sncli than this machine (its source "
                "files differ): install the same sncli version on the workers"
            )


@dataclass(frozen=True)
class ClusterRun:
    """Where a run went: the workers the scheduler reported when it began, and the tasks."""

    address: str
    workers: int
    threads: int
    tasks: int

    @property
    def note(self) -> str:
        """The line a report's notes carry about where it ran."""
        return (
            f"computed on the Dask cluster at {self.address}: {_count(self.tasks, 'task')} on "
            f"{_count(self.workers, 'worker')} ({_count(self.threads, 'thread')})"
        )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def cluster_map(
    address: str,
    checkpoints: Sequence[Checkpoint],
    items: Sequence[Item],
    *,
    nbytes: Callable[[Item], int],
    load: Callable[[tuple[Checkpoint, ...], Item, SafetensorsStreamReader | None], Loaded],
    compute: Callable[[Loaded], Result],
    budget: int,
    label: Callable[[Item], str],
    progress: ProgressCallback | None = None,
    task_bytes: int | None = None,
) -> tuple[list[Result], ClusterRun]:
    """``[compute(load(checkpoints, item, reader)) for item in items]`` on the cluster at
    ``address``; ``load`` and ``compute`` must be picklable (module-level functions or
    ``functools.partial`` of them); ``task_bytes`` defaults to :func:`task_size`.
    Raises the first ``SncliError`` a task returns."""
    from sncli._version import __version__

    refs = tuple(checkpoint_ref(checkpoint) for checkpoint in checkpoints)
    results: list[Any] = [None] * len(items)
    with connect(address) as client:
        from distributed import as_completed

        workers = client.scheduler_info(n_workers=-1)["workers"]
        if not workers:
            raise SchedulerError(f"the Dask scheduler at {address} has no workers")
        check_workers(client)
        threads = sum(int(worker.get("nthreads", 1)) for worker in workers.values())
        if task_bytes is None:
            task_bytes = task_size(sum(nbytes(item) for item in items), threads)
        groups = group_items(items, nbytes, task_bytes)
        group_bytes = [sum(nbytes(items[i]) for i in group) for group in groups]
        run = ClusterRun(address, len(workers), threads, len(groups))
        max_tasks = TASKS_PER_THREAD * max(1, threads)
        max_bytes = in_flight_allowance(workers.values(), budget)
        if progress is not None and items:
            progress(0, len(items), label(items[0]))
        prefix = f"sncli-{uuid.uuid4().hex[:12]}"
        # with_results: a future counts as finished once its result is here (fetching it later
        # from a worker that has left in the meantime would wait for ever).
        pending = as_completed(loop=client.loop, with_results=True, raise_errors=False)
        submitted: dict[Any, int] = {}
        in_flight_bytes = 0
        next_group = 0
        done = 0
        try:
            while next_group < len(groups) or submitted:
                while next_group < len(groups) and (
                    not submitted
                    or (
                        len(submitted) < max_tasks
                        and in_flight_bytes + group_bytes[next_group] <= max_bytes
                    )
                ):
                    group = groups[next_group]
                    future = client.submit(
                        run_task,
                        refs,
                        [items[i] for i in group],
                        load,
                        compute,
                        __version__,
                        key=f"{prefix}-{next_group}",
                        pure=False,
                    )
                    submitted[future] = next_group
                    in_flight_bytes += group_bytes[next_group]
                    pending.add(future)
                    next_group += 1
                future, outcome = _next_finished(pending, client, address)
                index = submitted.pop(future)
                in_flight_bytes -= group_bytes[index]
                values, error = _result(outcome)
                if error is not None:
                    raise error
                assert values is not None
                for i, value in zip(groups[index], values, strict=True):
                    results[i] = value
                done += len(values)
                if progress is not None:
                    following = next_group < len(groups) and label(items[groups[next_group][0]])
                    progress(done, len(items), following or "")
        except BaseException:
            with contextlib.suppress(Exception):
                client.cancel(list(submitted))
            raise
    return results, run


#: Seconds a run waits while the cluster has no worker at all (a nanny restarts a killed worker
#: within seconds; a cluster scaled to zero, or workers shut down, would wait for ever).
WORKERLESS_TIMEOUT_S = 60.0
_POLL_S = 0.01


def _next_finished(pending: Any, client: Client, address: str) -> Any:
    """The next finished future of ``pending`` (``as_completed``), polling so that a cluster left
    without workers for ``WORKERLESS_TIMEOUT_S`` fails the run instead of hanging it."""
    checked = time.monotonic()
    workerless_since: float | None = None
    while not pending.has_ready():
        time.sleep(_POLL_S)
        now = time.monotonic()
        if now - checked < 1.0:
            continue
        checked = now
        with contextlib.suppress(Exception):
            if client.scheduler_info(n_workers=-1)["workers"]:
                workerless_since = None
            elif workerless_since is None:
                workerless_since = now
        if workerless_since is not None and now - workerless_since >= WORKERLESS_TIMEOUT_S:
            raise SchedulerError(
                f"the Dask cluster at {address} has had no workers for "
                f"{WORKERLESS_TIMEOUT_S:g} s; start workers (dask worker {address}) and run again"
            )
    return next(pending)


def refuse_device_with_scheduler(scheduler: str | None, device: str) -> None:
    """Tasks run on the workers' CPUs: a GPU request with ``--scheduler`` is refused."""
    if scheduler is not None and device != "cpu":
        raise SchedulerError(
            f"--scheduler runs the layers on the Dask workers' CPUs; --device {device} is for "
            "local runs"
        )


def _result(outcome: Any) -> tuple[list[Any] | None, SncliError | None]:
    """A task's ``run_task`` value, or its failure as a one-line error."""
    if not isinstance(outcome, BaseException):
        return outcome
    if isinstance(outcome, SncliError):
        raise outcome
    import asyncio
    from concurrent.futures import CancelledError

    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    if isinstance(outcome, KilledWorker):
        raise SchedulerError(
            "Dask workers died running the same task repeatedly (out of memory?): "
            f"{str(outcome).splitlines()[0]}"
        ) from outcome
    if isinstance(outcome, CommClosedError | CancelledError | asyncio.CancelledError):
        raise SchedulerError(
            "lost the connection to the Dask scheduler (it stopped, or the network failed); "
            "nothing was written, run again"
        ) from outcome
    raise outcome
