"""Decode workers streaming each file's planes to the build loop, in listing order, with a bound on the
prepared planes in flight across all files.

Why not a bounded ``map`` over files: a file may be a stack of up to :attr:`DecodeLimits.max_planes`
planes, each about 200 KB prepared (224 px, float32), so a window of 64 files could hold 64 x 1,000
prepared planes (about 13 GB) before the model saw one. Here a worker takes a slot of a
:class:`PlaneBudget` before it prepares each plane, and the build loop gives the slot back as it takes the
plane, so memory is bounded by the budget (plus one batch), not by the files' plane counts.

Why it cannot deadlock: the loop takes planes in listing order, so the file at the head of the order
must always be able to go on, even when later files, prepared ahead, hold every slot: the head may take
a slot over the budget while it has fewer than ``head_slack`` planes waiting. Workers wait for a slot
outside their decode turn (:class:`~indexer.ingest.turns.Turns`), so a forward never waits for a worker
that waits for the forward. Files start in listing order (a FIFO pool), so the head is always running or
done.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import Generic, TypeVar

T = TypeVar("T")
S = TypeVar("S")

_END = object()


class PlaneBudget:
    """Slots for prepared planes: at most ``limit`` taken at once, but for the head file's few over it."""

    def __init__(self, limit: int, head_slack: int) -> None:
        if limit < 1 or head_slack < 1:
            raise ValueError(f"a plane budget needs limit and head_slack >= 1, got {limit}, {head_slack}")
        self.limit = limit
        self.head_slack = head_slack
        self.cond = threading.Condition()
        self.used = 0
        #: The most slots taken at once (what a test or a benchmark reads back).
        self.peak = 0
        self.head: _Stream | None = None
        self.closed = False

    def acquire(self, stream: _Stream) -> bool:
        """Take one slot for a plane of ``stream``; False once the budget is closed (the build stopped)."""
        with self.cond:
            self.cond.wait_for(
                lambda: (
                    self.closed
                    or self.used < self.limit
                    or (stream is self.head and len(stream.items) < self.head_slack)
                )
            )
            if self.closed:
                return False
            self.used += 1
            self.peak = max(self.peak, self.used)
            return True

    def release(self) -> None:
        """Give one slot back."""
        with self.cond:
            self.used -= 1
            self.cond.notify_all()

    def close(self) -> None:
        """Stop every waiting worker (the build loop has stopped taking planes)."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class _Stream(Generic[T]):
    """One file's planes between its worker and the build loop."""

    def __init__(self, budget: PlaneBudget) -> None:
        self.budget = budget
        self.items: deque = deque()
        self.error: BaseException | None = None

    def put(self, item: object) -> None:
        with self.budget.cond:
            self.items.append(item)
            self.budget.cond.notify_all()

    def finish(self, error: BaseException | None) -> None:
        with self.budget.cond:
            self.error = error
            self.items.append(_END)
            self.budget.cond.notify_all()

    def __iter__(self) -> Iterator[T]:
        budget = self.budget
        with budget.cond:
            budget.head = self
            budget.cond.notify_all()  # a head waiting for a slot may now go over the budget
        while True:
            with budget.cond:
                budget.cond.wait_for(lambda: bool(self.items))
                item = self.items.popleft()
            if item is _END:
                if self.error is not None:
                    raise self.error
                return
            budget.release()
            yield item


def stream_planes(
    prepare: Callable[[S], Iterator[T]],
    items: Iterable[S],
    workers: int,
    window: int,
    budget: PlaneBudget,
    decode_turn: Callable[[], AbstractContextManager] = nullcontext,
    initializer: Callable[[], None] | None = None,
) -> Iterator[Iterator[T]]:
    """For each item, in order, an iterator over what ``prepare(item)`` yields, made by ``workers`` threads.

    At most ``window`` items are started ahead of the one being read; each result takes a ``budget`` slot
    until the caller takes it (so the caller must read each item's iterator to its end before the next).
    ``decode_turn`` is held around each step of ``prepare`` (one plane's decoding), never while waiting
    for a slot; ``initializer`` runs once in each worker thread. An exception ``prepare`` raises is raised
    from its item's iterator.
    """

    def produce(source: S, stream: _Stream) -> None:
        steps: Iterator[T] | None = None
        error: BaseException | None = None
        try:
            steps = prepare(source)
            while budget.acquire(stream):
                try:
                    with decode_turn():
                        result = next(steps, _END)
                except BaseException:
                    budget.release()
                    raise
                if result is _END:
                    budget.release()
                    break
                stream.put(result)
        except BaseException as e:  # handed to the build loop, which raises it in this item's place
            error = e
        finally:
            close = getattr(steps, "close", None)  # a generator left half-way frees its file now
            if close is not None:
                close()
            stream.finish(error)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mae-decode", initializer=initializer)
    pending: deque[_Stream] = deque()
    try:
        it = iter(items)
        for source in it:
            stream: _Stream = _Stream(budget)
            pool.submit(produce, source, stream)
            pending.append(stream)
            if len(pending) >= window:
                yield pending.popleft()
        while pending:
            yield pending.popleft()
    finally:
        budget.close()  # workers waiting for a slot stop; files not started are dropped
        pool.shutdown(wait=True, cancel_futures=True)
