"""How per-layer work runs: here, reading ahead of single-threaded workers (:mod:`.local`), or as
tasks on a Dask cluster (:mod:`.dask`); the byte budget, torch's threads and the weight reader
both share.

The engines (inspect, spectrum, diff, state-dict lipschitz) call :func:`map_layers` with the same
``load`` and ``compute`` functions either way, so a cluster run gives the local run's numbers.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from sncli.checkpoint import Checkpoint
from sncli.errors import CheckpointError
from sncli.formats.safetensors import SafetensorsStreamReader
from sncli.messages import ProgressCallback
from sncli.run.dask import ClusterRun, cluster_map
from sncli.run.local import read_ahead_map

Item = TypeVar("Item")
Loaded = TypeVar("Loaded")
Result = TypeVar("Result")

#: Bytes of tensors that may be in flight (read ahead or being measured), as a multiple of the
#: largest selected matrix's float32 size: the memory target is 2× that + 500 MB (bench/README.md).
MEMORY_BUDGET_FP32_MULTIPLE = 2
#: ... but never less than this, so small layers are always read ahead.
MIN_MEMORY_BUDGET = 64 << 20


def budget_bytes(largest_item: int, widest_matrix: int) -> int:
    """The in-flight budget: 2 × the widest matrix in float32, at least 64 MB and one item."""
    return max(MEMORY_BUDGET_FP32_MULTIPLE * 4 * widest_matrix, MIN_MEMORY_BUDGET, largest_item)


def load_weight(
    checkpoint: Checkpoint,
    name: str,
    reader: SafetensorsStreamReader | None,
    *,
    arrays: bool = False,
) -> Any:
    """One tensor, read without keeping mmap'd pages when the format allows it.

    A weight-norm layer's name is not a stored tensor: it is composed from its g and v, each
    read the same way (as ``Checkpoint.load`` composes it). ``arrays``: a NumPy array
    (``Checkpoint.load_array``: no torch for safetensors, GGUF, NumPy, Keras, ONNX), else a
    torch tensor.
    """
    pair = checkpoint.derived.get(name)
    if pair is not None:
        compose = pair.compose_array if arrays else pair.compose
        return compose(
            load_weight(checkpoint, pair.g_key, reader, arrays=arrays),
            load_weight(checkpoint, pair.v_key, reader, arrays=arrays),
        )
    part = checkpoint.experts.slices.get(name)
    info = checkpoint.tensors[part.stack if part is not None else name]
    if reader is None or checkpoint.format != "safetensors" or sys.byteorder != "little":
        return checkpoint.load_array(name) if arrays else checkpoint.load(name)
    try:
        if arrays:
            if part is not None:
                matrix = reader.read_slice_array(info.file, info.key, part.index)
            else:
                matrix = reader.read_array(info.file, info.key)
            if matrix is None:  # a dtype only torch holds (float8…): converted from torch
                return checkpoint.load_array(name)
            return matrix.T if part is not None and part.transposed else matrix
        if part is not None:  # one expert of a stack, (out, in) as the model applies it
            matrix = reader.read_slice(info.file, info.key, part.index)
            return matrix.t() if part.transposed else matrix
        return reader.read(info.file, info.key)
    except CheckpointError:
        raise
    except Exception as exc:  # same contract as Checkpoint.load: unreadable data is an error
        raise CheckpointError(f"cannot read tensor {name!r}: {exc}", info.file) from exc


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Temporarily set the BLAS threads (process-wide) of torch and of NumPy's OpenBLAS,
    restoring them afterwards. torch is only touched when it is already imported: a run on
    NumPy arrays never loads it (its threads matter only once something imported it)."""
    if count is None:
        yield
        return
    from sncli.run.blas import numpy_blas_threads

    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(count)
    try:
        with numpy_blas_threads(count):
            yield
    finally:
        if torch is not None and before is not None:
            torch.set_num_threads(before)


def available_cores() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def map_layers(
    checkpoints: tuple[Checkpoint, ...],
    items: Sequence[Item],
    *,
    nbytes: Callable[[Item], int],
    load: Callable[[tuple[Checkpoint, ...], Item, SafetensorsStreamReader | None], Loaded],
    compute: Callable[[Loaded], Result],
    budget: int,
    workers: int,
    label: Callable[[Item], str],
    progress: ProgressCallback | None,
    thread_name: str,
    scheduler: str | None = None,
) -> tuple[list[Result], ClusterRun | None]:
    """``[compute(load(checkpoints, item, reader)) for item in items]``, here
    (:func:`read_ahead_map`, reading ``checkpoints[0]``'s safetensors data through its stream
    reader) or, with ``scheduler``, as tasks on that Dask cluster (:func:`sncli.run.dask.
    cluster_map`; ``load`` and ``compute`` must then be picklable). Returns the results in
    ``items``' order and, for a cluster run, where it ran."""
    if scheduler is not None:
        return cluster_map(
            scheduler,
            checkpoints,
            items,
            nbytes=nbytes,
            load=load,
            compute=compute,
            budget=budget,
            label=label,
            progress=progress,
        )
    outcomes = read_ahead_map(
        checkpoints[0],
        items,
        nbytes=nbytes,
        load=lambda item, reader: load(checkpoints, item, reader),
        compute=compute,
        budget=budget,
        workers=workers,
        label=label,
        progress=progress,
        thread_name=thread_name,
    )
    return outcomes, None


def measure_layers(
    checkpoints: tuple[Checkpoint, ...],
    items: Sequence[Item],
    *,
    measured: type,
    nbytes: Callable[[Item], int],
    width: Callable[[Item], int],
    load: Callable[[tuple[Checkpoint, ...], Item, SafetensorsStreamReader | None], Loaded],
    compute: Callable[[Loaded], Any],
    workers: int,
    label: Callable[[Item], str],
    progress: ProgressCallback | None,
    thread_name: str,
    scheduler: str | None,
    threads: int | None = 1,
) -> tuple[list[Any], list[Any], int, list[str]]:
    """The engines' common run: :func:`map_layers` over ``items`` within the budget of the
    largest item and the widest matrix (``width``: its entries), with ``threads`` torch threads
    (one: parallel across layers, not within them); then the outcomes split into those of type
    ``measured`` and the others (layers skipped for bad values), each in ``items``' order.
    Returns (measured, skipped, workers used: the cluster's threads on a cluster, the run's notes).
    """
    largest = max((nbytes(item) for item in items), default=0)
    widest = max((width(item) for item in items), default=0)
    with torch_threads(threads):
        outcomes, run = map_layers(
            checkpoints,
            items,
            nbytes=nbytes,
            load=load,
            compute=compute,
            budget=budget_bytes(largest, widest),
            workers=workers,
            label=label,
            progress=progress,
            thread_name=thread_name,
            scheduler=scheduler,
        )
    results = [item for item in outcomes if isinstance(item, measured)]
    failed = [item for item in outcomes if not isinstance(item, measured)]
    if run is None:
        return results, failed, workers, []
    return results, failed, run.threads, [run.note]
