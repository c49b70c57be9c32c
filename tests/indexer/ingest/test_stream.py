"""The decode workers' streams: every file's planes in listing order, at most a budget of planes in flight
across files (the head file may go over by a few, so that the loop never waits on itself), and a build
loop that stops early leaves no worker waiting."""

from __future__ import annotations

import threading
import time

import pytest

from indexer.ingest.stream import PlaneBudget, stream_planes
from indexer.ingest.turns import Turns


def _planes(counts: list[int], delay: float = 0.0):
    """A prepare function: file ``i`` yields ``counts[i]`` planes ``(i, j)``; the number alive is tracked."""
    alive = {"now": 0, "peak": 0}
    lock = threading.Lock()

    def prepare(i: int):
        for j in range(counts[i]):
            if delay:
                time.sleep(delay)
            with lock:
                alive["now"] += 1
                alive["peak"] = max(alive["peak"], alive["now"])
            yield (i, j)

    def taken() -> None:
        with lock:
            alive["now"] -= 1

    return prepare, alive, taken


def test_planes_come_in_listing_order_with_at_most_the_budget_in_flight():
    counts = [1, 300, 2, 250, 1, 1, 400, 3]
    prepare, alive, taken = _planes(counts)
    budget = PlaneBudget(8, head_slack=4)
    got = []
    for planes in stream_planes(prepare, range(len(counts)), workers=4, window=6, budget=budget):
        for plane in planes:
            got.append(plane)
            taken()
            time.sleep(0.0002)  # a model slower than the workers: they run ahead until the budget stops them
    assert got == [(i, j) for i, n in enumerate(counts) for j in range(n)]
    # Every plane made is counted until the loop takes it: a file-counting window would allow 6 x 400.
    assert alive["peak"] <= 8 + 4 and budget.peak <= 8 + 4, (alive, budget.peak)
    assert budget.used == 0


@pytest.mark.timeout(60)
def test_the_head_file_goes_on_when_later_files_hold_every_slot():
    # Files 1-3 fill the budget while file 0 is slow: its planes must still come (no deadlock).
    counts = [50, 40, 40, 40]

    def prepare(i: int):
        for j in range(counts[i]):
            if i == 0:
                time.sleep(0.002)
            yield (i, j)

    budget = PlaneBudget(2, head_slack=1)
    got = [
        p for planes in stream_planes(prepare, range(4), workers=4, window=4, budget=budget) for p in planes
    ]
    assert len(got) == 170 and got[:50] == [(0, j) for j in range(50)]
    assert budget.peak <= 3


@pytest.mark.timeout(60)
def test_turns_and_the_budget_do_not_wait_on_each_other():
    """A forward between planes waits for the decodes in progress; a worker waiting for a slot holds no
    decode turn, so the forward starts (before, a worker held its turn for a whole file)."""
    turns = Turns(enabled=True)
    counts = [30] * 6
    prepare, _, taken = _planes(counts, delay=0.0005)
    budget = PlaneBudget(4, head_slack=2)
    n = 0
    for planes in stream_planes(prepare, range(6), 3, 6, budget, turns.decode):
        for _ in planes:
            taken()
            n += 1
            if n % 5 == 0:
                with turns.forward():
                    time.sleep(0.001)
    assert n == 180


@pytest.mark.timeout(60)
def test_a_loop_that_stops_early_stops_the_workers():
    started = threading.Event()

    def prepare(i: int):
        started.set()
        yield from ((i, j) for j in range(1000))

    budget = PlaneBudget(3, head_slack=1)
    streams = stream_planes(prepare, range(100), workers=2, window=10, budget=budget)
    first = next(iter(next(streams)))
    assert first == (0, 0) and started.is_set()
    t0 = time.perf_counter()
    streams.close()  # what a strict build's error or Ctrl-C does to the loop
    assert time.perf_counter() - t0 < 5
    assert budget.closed and not [t for t in threading.enumerate() if t.name.startswith("mae-decode")]


def test_an_error_in_one_file_is_raised_in_its_place():
    def prepare(i: int):
        yield (i, 0)
        if i == 2:
            raise RuntimeError("bug in file 2")
        yield (i, 1)

    got = []
    with pytest.raises(RuntimeError, match="bug in file 2"):
        for planes in stream_planes(prepare, range(5), 2, 5, PlaneBudget(4, 2)):
            for plane in planes:
                got.append(plane)
    assert got == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]


def test_the_budget_refuses_nonsense():
    with pytest.raises(ValueError, match=">= 1"):
        PlaneBudget(0, 1)
