"""SnapshotRing: bounded, ordered, thread-safe history."""

from __future__ import annotations

import threading

import pytest

from llamahome.monitoring import SnapshotRing


def test_keeps_the_last_maxlen_in_order(clock) -> None:  # type: ignore[no-untyped-def]
    ring = SnapshotRing(3, clock=clock)
    for i in range(5):
        ring.append({"i": i})
        clock.advance(10)
    assert len(ring) == 3 and ring.maxlen == 3
    assert [s.data["i"] for s in ring] == [2, 3, 4]
    assert ring.latest() is not None and ring.latest().data == {"i": 4}  # type: ignore[union-attr]
    assert [s.data["i"] for s in ring.since(clock() - 25)] == [3, 4]
    ring.clear()
    assert ring.latest() is None and ring.to_list() == []


def test_explicit_time_and_bad_size() -> None:
    ring = SnapshotRing(2)
    assert ring.append({}, at=5.0).time == 5.0
    with pytest.raises(ValueError, match="at least one"):
        SnapshotRing(0)


def test_concurrent_appends_and_reads() -> None:
    ring = SnapshotRing(100)
    errors: list[BaseException] = []

    def writer() -> None:
        for i in range(2000):
            ring.append({"i": i})

    def reader() -> None:
        try:
            for _ in range(200):
                items = ring.to_list()
                assert len(items) <= 100
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(2)] + [threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(ring) == 100
