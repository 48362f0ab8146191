"""The read-ahead pipeline: order, errors from either side, the byte budget, progress."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from sncli.checkpoint import open_checkpoint
from sncli.run import budget_bytes
from sncli.run.local import Budget, read_ahead_map


@pytest.fixture
def mlp(mlp_path: Path):
    with open_checkpoint(mlp_path) as ckpt:
        yield ckpt


def test_results_keep_the_items_order_whatever_finishes_first(mlp) -> None:
    items = list(range(12))

    def slow_for_small(item: int) -> int:
        time.sleep(0.002 * (12 - item))  # early items finish last
        return item * item

    results = read_ahead_map(
        mlp,
        items,
        nbytes=lambda _: 1,
        load=lambda item, _reader: item,
        compute=slow_for_small,
        budget=4,
        workers=3,
        label=str,
    )
    assert results == [i * i for i in items]


@pytest.mark.parametrize("side", ["load", "compute"])
def test_the_first_error_is_raised_after_the_threads_stop(mlp, side: str) -> None:
    def fail_at_five(item: int) -> int:
        if item == 5:
            raise ValueError(f"{side} failed at 5")
        return item

    before = threading.active_count()
    with pytest.raises(ValueError, match=f"{side} failed at 5"):
        read_ahead_map(
            mlp,
            list(range(40)),
            nbytes=lambda _: 1,
            load=lambda item, _reader: fail_at_five(item) if side == "load" else item,
            compute=fail_at_five if side == "compute" else (lambda item: item),
            budget=8,
            workers=2,
            label=str,
        )
    time.sleep(0.2)
    assert threading.active_count() <= before


def test_bytes_in_flight_stay_within_the_budget(mlp) -> None:
    held = {"now": 0, "most": 0}
    lock = threading.Lock()

    def load(item: int, _reader: object) -> int:
        with lock:
            held["now"] += 30
            held["most"] = max(held["most"], held["now"])
        return item

    def compute(item: int) -> int:
        time.sleep(0.005)
        with lock:
            held["now"] -= 30
        return item

    read_ahead_map(
        mlp,
        list(range(20)),
        nbytes=lambda _: 30,
        load=load,
        compute=compute,
        budget=100,
        workers=2,
        label=str,
    )
    assert 30 <= held["most"] <= 90  # three items of 30 fit in 100, a fourth does not


def test_an_item_larger_than_the_budget_still_runs_alone() -> None:
    budget = Budget(10)
    stop = threading.Event()
    assert budget.acquire(50, stop)  # nothing else held: it may exceed the limit
    budget.release(50)
    assert budget.used == 0
    assert budget_bytes(largest_item=10, widest_matrix=1) == 64 << 20
    assert budget_bytes(largest_item=1 << 30, widest_matrix=1) == 1 << 30
    assert budget_bytes(largest_item=0, widest_matrix=100 << 20) == 800 << 20


def test_progress_names_the_next_item(mlp) -> None:
    calls: list[tuple[int, int, str]] = []
    read_ahead_map(
        mlp,
        ["a", "b", "c"],
        nbytes=lambda _: 1,
        load=lambda item, _reader: item,
        compute=str.upper,
        budget=10,
        workers=1,
        label=lambda item: f"<{item}>",
        progress=lambda done, total, following: calls.append((done, total, following)),
    )
    assert calls == [(0, 3, "<a>"), (1, 3, "<b>"), (2, 3, "<c>"), (3, 3, "")]
