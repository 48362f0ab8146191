"""Read ahead, compute in parallel: how per-layer work runs on this machine.

One reader thread streams each item's tensors ahead of the compute, within a byte budget, while
``workers`` threads compute, each with single-threaded torch (threads × BLAS threads never exceed
the cores: oversubscribed LAPACK ran 10–250× slower here, torch's 2 OpenMP threads on block
Lanczos' small GEMMs 26× slower than 2 single-threaded workers under load). Tensors in flight are
capped by the budget, so peak memory depends on the largest tensor, not on the number of layers.
Results come back in the items' order, whatever order the workers finish in.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from sncli.checkpoint import Checkpoint
from sncli.formats.safetensors import SafetensorsStreamReader
from sncli.messages import ProgressCallback

if TYPE_CHECKING:
    pass


Item = TypeVar("Item")
Loaded = TypeVar("Loaded")
Result = TypeVar("Result")


class Budget:
    """Bytes of tensors in flight; a request waits until it fits (or nothing else is held)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._condition = threading.Condition()

    def acquire(self, amount: int, stop: threading.Event) -> bool:
        with self._condition:
            while self.used and self.used + amount > self.limit and not stop.is_set():
                self._condition.wait(0.1)
            self.used += amount
            return not stop.is_set()

    def release(self, amount: int) -> None:
        with self._condition:
            self.used -= amount
            self._condition.notify_all()


class _Read:
    """What the reader thread hands over: the loaded item, or the error that stopped it."""

    def __init__(self, loaded: Any, nbytes: int, error: BaseException | None = None) -> None:
        self.loaded = loaded
        self.nbytes = nbytes
        self.error = error


def read_ahead_map(
    checkpoint: Checkpoint,
    items: Sequence[Item],
    *,
    nbytes: Callable[[Item], int],
    load: Callable[[Item, SafetensorsStreamReader | None], Loaded],
    compute: Callable[[Loaded], Result],
    budget: int,
    workers: int,
    label: Callable[[Item], str],
    progress: ProgressCallback | None = None,
    thread_name: str = "sncli",
) -> list[Result]:
    """``[compute(load(item)) for item in items]``, loading ahead of ``workers`` compute threads.

    ``load`` runs on the reader thread (safetensors data through one ``SafetensorsStreamReader``),
    ``compute`` on the workers; the first error of either is raised here, after the threads stop.
    ``load``'s result is dropped once computed, so its tensors leave the budget.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    limit = Budget(budget)
    stop = threading.Event()
    loads: queue.Queue[_Read | None] = queue.Queue(maxsize=max(2, workers))

    def read_all() -> None:
        reader = SafetensorsStreamReader() if checkpoint.format == "safetensors" else None
        try:
            for item in items:
                size = nbytes(item)
                if not limit.acquire(size, stop):
                    limit.release(size)
                    break
                try:
                    read = _Read(load(item, reader), size)
                except BaseException as exc:  # handed to the main thread, which re-raises it
                    read = _Read(None, size, exc)
                loads.put(read)
                if read.error is not None:
                    break
        finally:
            if reader is not None:
                reader.close()
            loads.put(None)

    def task(read: _Read) -> Result:
        try:
            return compute(read.loaded)
        finally:
            read.loaded = None
            limit.release(read.nbytes)

    results: list[Result] = []
    pending: deque[Future[Result]] = deque()

    def collect(future: Future[Result]) -> None:
        results.append(future.result())
        if progress is not None:
            following = label(items[len(results)]) if len(results) < len(items) else ""
            progress(len(results), len(items), following)

    thread = threading.Thread(target=read_all, daemon=True)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_name)
    thread.start()
    try:
        if progress is not None and items:
            progress(0, len(items), label(items[0]))
        while True:
            read = loads.get()
            if read is None:
                break
            if read.error is not None:
                raise read.error
            pending.append(pool.submit(task, read))
            while pending and (pending[0].done() or len(pending) > workers):
                collect(pending.popleft())
        while pending:
            collect(pending.popleft())
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        with contextlib.suppress(queue.Empty):
            while True:
                loads.get_nowait()
        thread.join(timeout=5)
    return results
