"""Read-ahead (``llamahome.cache.training._prefetch``, public as ``llamahome.cache.prefetch``): items in order,
errors unchanged, at most ``prefetch`` ahead, and the producer thread stops on close, garbage collection or
an exhausted source. (The training cache's own use of it is tested in ``test_training.py``.)
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from llamahome.cache.prefetch import THREAD_PREFIX, ReadAhead, live_pipelines, read_ahead


def producer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]


def test_read_ahead_helper_forwards_items_and_errors() -> None:
    assert list(read_ahead(range(100), prefetch=3)) == list(range(100))

    def broken() -> Iterator[int]:
        yield 1
        raise OSError("disk gone")

    it = read_ahead(broken(), prefetch=2)
    assert next(it) == 1
    with pytest.raises(OSError, match="disk gone"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def test_at_most_prefetch_items_are_produced_ahead() -> None:
    produced: list[int] = []
    ahead = threading.Semaphore(0)

    def source() -> Iterator[int]:
        for i in range(50):
            produced.append(i)
            ahead.release()
            yield i

    it = read_ahead(source(), prefetch=3)
    for _ in range(4):  # three queued, and a fourth produced and waiting to be queued
        assert ahead.acquire(timeout=10)
    assert not ahead.acquire(timeout=0.05)
    assert len(produced) == 4
    assert next(it) == 0
    assert ahead.acquire(timeout=10)  # taking one lets exactly one more in
    assert len(produced) == 5
    it.close()


def test_close_stops_the_producer_and_is_idempotent() -> None:
    def endless() -> Iterator[int]:
        i = 0
        while True:
            yield i
            i += 1

    with read_ahead(endless(), prefetch=2) as it:
        assert [next(it) for _ in range(5)] == list(range(5))
    assert not it.alive and it.close() is True
    with pytest.raises(StopIteration):
        next(it)


def test_a_dropped_iterator_stops_its_producer() -> None:
    before = live_pipelines()

    def endless() -> Iterator[int]:
        while True:
            yield 1

    it = read_ahead(endless(), prefetch=2)
    next(it)
    threads = [t for t in producer_threads() if t.is_alive()]
    del it
    gc.collect()
    for thread in threads:
        thread.join(10)
    assert live_pipelines() <= before


def test_a_producer_that_polls_stopping_ends_promptly() -> None:
    polled = threading.Event()

    def make(stop: Any) -> Iterator[int]:
        while not stop.stopping:
            polled.set()
            yield 0

    it: ReadAhead[int] = ReadAhead(make, prefetch=1, name="poller")
    assert polled.wait(10) and next(it) == 0
    assert it.close(timeout=10) is True


def test_transform_runs_in_the_consumer_thread() -> None:
    seen: list[int] = []

    def produce(_: object) -> Iterator[int]:
        yield from range(3)

    def transform(item: int) -> int:
        seen.append(threading.get_ident())
        return item * 10

    assert list(ReadAhead(produce, prefetch=2, transform=transform)) == [0, 10, 20]
    assert set(seen) == {threading.get_ident()}
