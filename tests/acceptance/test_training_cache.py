"""Acceptance: ``TrainingCache`` stores training batches once and serves later epochs.

``wrap(source, dataset_id)`` runs the source once and serves every later pass from the cache, in order or
shuffled by seed, resumes from ``start``, completes an interrupted pass, passes a source's error through
unchanged, stops its read-ahead threads when the consumer stops, and evicts whole datasets oldest first
(README "Training cache"; issue 5).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llamahome.cache import TrainingCache

from ._support import MiB


class list_of:
    """A re-iterable source made from a generator function."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __iter__(self) -> Any:
        return iter(self.fn())


def test_training_cache_issue_api(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    cache = TrainingCache(tmp_path / "train", size=16, batch_buffer=32, prefetch=4, cleanup_policy="fifo")
    produced: list[int] = []

    class Source:
        def __iter__(self) -> Any:
            for i in range(10):
                produced.append(i)
                yield {"input_ids": np.full((4, 16), i, dtype=np.int64), "step": [i]}

    try:
        cache.put("one", {"ids": [1, 2, 3]})
        assert cache.get("one") == {"ids": [1, 2, 3]}
        batches = cache.wrap(Source(), "ds-train")
        first = [int(b["input_ids"][0, 0]) for b in batches]
        assert first == list(range(10)) and produced == list(range(10))
        second = [int(b["input_ids"][0, 0]) for b in batches]
        assert second == list(range(10))
        assert produced == list(range(10))  # served from the cache, the source is not run again
        shuffled = cache.wrap(Source(), "ds-train", shuffle_seed=7)
        s1 = [int(b["input_ids"][0, 0]) for b in shuffled]
        s2 = [int(b["input_ids"][0, 0]) for b in cache.wrap(Source(), "ds-train", shuffle_seed=7)]
        assert sorted(s1) == list(range(10)) and s1 == s2 and s1 != list(range(10))
        assert produced == list(range(10))
    finally:
        cache.close()
    # close() stops every thread the cache started (its read-ahead threads are daemons, so look at all of them).
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and set(threading.enumerate()) - before:
        time.sleep(0.02)
    assert set(threading.enumerate()) - before == set()


def test_training_cache_source_errors_reach_the_consumer_unchanged(tmp_path: Path) -> None:
    class SourceBroke(RuntimeError):
        pass

    boom = SourceBroke("batch 3 is broken")

    def source() -> Any:
        for i in range(5):
            if i == 3:
                raise boom
            yield [i, i + 1]

    cache = TrainingCache(tmp_path / "train", size=4)
    try:
        seen = []
        with pytest.raises(SourceBroke) as info:
            for batch in cache.wrap(list_of(source), "broken"):
                seen.append(batch)
        assert info.value is boom
        assert seen == [[0, 1], [1, 2], [2, 3]]
    finally:
        cache.close()


def test_training_cache_interrupted_pass_is_completed_later_never_served_as_complete(tmp_path: Path) -> None:
    produced: list[int] = []

    class Source:
        def __iter__(self) -> Any:
            for i in range(8):
                produced.append(i)
                yield [i]

    cache = TrainingCache(tmp_path / "train", size=4, prefetch=2)
    try:
        batches = cache.wrap(Source(), "interrupted")
        for batch in batches:
            if batch == [2]:
                break
        assert [b[0] for b in batches] == list(range(8))  # completed, from the start, in order
        before = len(produced)
        assert [b[0] for b in batches] == list(range(8))
        assert len(produced) == before  # the third pass is served from the cache
        resumed = cache.wrap(Source(), "interrupted", start=5)
        assert [b[0] for b in resumed] == [5, 6, 7]
    finally:
        cache.close()


def test_training_cache_workers_stop_when_the_consumer_raises(tmp_path: Path) -> None:
    import gc
    import time

    class ConsumerBroke(Exception):
        pass

    before = set(threading.enumerate())
    cache = TrainingCache(tmp_path / "train", size=8, prefetch=4)
    source = [[i] * 100 for i in range(50)]
    try:
        with pytest.raises(ConsumerBroke):
            for batch in cache.wrap(source, "consumer-raises"):
                if batch[0] == 3:
                    raise ConsumerBroke()
        gc.collect()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and set(threading.enumerate()) - before:
            time.sleep(0.02)
        assert set(threading.enumerate()) - before == set()
        # The interrupted pass is not complete: the next one serves all 50 batches in order.
        assert [b[0] for b in cache.wrap(source, "consumer-raises")] == list(range(50))
    finally:
        cache.close()


def test_training_cache_new_fingerprint_is_a_new_namespace_and_old_ones_go_first(tmp_path: Path) -> None:
    runs: list[str] = []

    def source(tag: str) -> Any:
        class Source:
            def __iter__(self) -> Any:
                runs.append(tag)
                for i in range(4):
                    yield {"x": np.frombuffer(os.urandom(100_000), dtype=np.uint8), "i": [i]}

        return Source()

    cache = TrainingCache(tmp_path / "train", size=1, prefetch=2)  # 1 MB: room for two datasets of ~400 KB
    try:
        for _ in range(2):
            assert [b["i"][0] for b in cache.wrap(source("a"), "ds", fingerprint={"tok": "v1"})] == [0, 1, 2, 3]
        assert runs == ["a"]  # the second pass came from the cache
        for _ in range(2):
            assert [b["i"][0] for b in cache.wrap(source("b"), "ds", fingerprint={"tok": "v2"})] == [0, 1, 2, 3]
        assert runs == ["a", "b"]  # a changed fingerprint starts over, once
        for _ in range(2):
            assert [b["i"][0] for b in cache.wrap(source("c"), "other")] == [0, 1, 2, 3]
        assert runs == ["a", "b", "c"]
        assert cache.stats.bytes <= 1 * MiB
        # Over budget, the oldest namespace ("a") was evicted whole; the newest is intact.
        list(cache.wrap(source("c2"), "other"))
        assert runs == ["a", "b", "c"]
        list(cache.wrap(source("a2"), "ds", fingerprint={"tok": "v1"}))
        assert runs[-1] == "a2"
    finally:
        cache.close()
