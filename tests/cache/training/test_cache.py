"""TrainingCache: order, shuffle, resume, interrupted passes, invalidation, FIFO budget, shutdown, errors."""

from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llamahome.cache.prefetch import THREAD_PREFIX, live_pipelines, read_ahead
from llamahome.cache.training import TrainingCache, namespace_id
from llamahome.errors import CacheClosedError, ConfigError, TrainingCacheError, ValueTooLargeError

from ..store_contract import StoreContract

N = 12


def make_batch(i: int, rows: int = 2, cols: int = 32) -> dict[str, Any]:
    ids = (np.arange(rows * cols, dtype=np.int64).reshape(rows, cols) * 7 + i * 1000) % 32000
    return {"input_ids": ids, "index": i}


class Source:
    """A re-iterable source that counts how many batches it produced, optionally failing or pausing."""

    def __init__(self, n: int = N, *, fail_at: int | None = None, error: BaseException | None = None,
                 delay: float = 0.0, rows: int = 2, cols: int = 32) -> None:
        self.n = n
        self.fail_at = fail_at
        self.error = error or RuntimeError("source broke")
        self.delay = delay
        self.rows, self.cols = rows, cols
        self.produced = 0
        self.passes = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.passes += 1
        for i in range(self.n):
            if self.fail_at is not None and i == self.fail_at:
                raise self.error
            if self.delay:
                time.sleep(self.delay)
            self.produced += 1
            yield make_batch(i, self.rows, self.cols)


def indices(batches: Any) -> list[int]:
    return [b["index"] for b in batches]


def our_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]


def wait_no_threads(timeout: float = 5.0) -> list[threading.Thread]:
    deadline = time.monotonic() + timeout
    while our_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    return our_threads()


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[TrainingCache]:
    c = TrainingCache(tmp_path / "training", size=16, prefetch=3, batch_buffer=8)
    yield c
    c.close()
    assert wait_no_threads() == []


@pytest.fixture(autouse=True)
def no_leftover_threads() -> Iterator[None]:
    yield
    assert wait_no_threads() == []


# ------------------------------------------------------------------------------------------ order and passes


def test_every_pass_yields_the_source_order_and_later_passes_come_from_the_cache(cache: TrainingCache) -> None:
    src = Source()
    wrapped = cache.wrap(src, "ds")
    first = list(wrapped)
    assert indices(first) == list(range(N))
    assert wrapped.complete and wrapped.num_batches == N and len(wrapped) == N
    assert (cache.stats.misses, cache.stats.hits, cache.stats.sets) == (N, 0, N)
    for _ in range(2):
        again = list(wrapped)
        assert indices(again) == list(range(N))
        for a, b in zip(first, again):
            np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
    assert src.produced == N and src.passes == 1
    assert cache.stats.hits == 2 * N


def test_a_new_wrap_over_the_same_dataset_reads_the_cache_without_the_source(cache: TrainingCache) -> None:
    list(cache.wrap(Source(), "ds"))
    src = Source()
    assert indices(cache.wrap(src, "ds")) == list(range(N))
    assert src.produced == 0


def test_cache_survives_reopening(tmp_path: Path) -> None:
    with TrainingCache(tmp_path, size=4) as first:
        list(first.wrap(Source(), "ds"))
    src = Source()
    reopened = TrainingCache(tmp_path, size=4)
    try:
        assert indices(reopened.wrap(src, "ds")) == list(range(N))
        assert src.produced == 0 and reopened.stats.entries == N
    finally:
        reopened.close()


def test_without_read_ahead_passes_run_in_the_consumer_thread(tmp_path: Path) -> None:
    c = TrainingCache(tmp_path, size=4, prefetch=0)
    wrapped = c.wrap(Source(), "ds")
    it = iter(wrapped)
    assert next(it)["index"] == 0
    assert our_threads() == []
    assert indices(it) == list(range(1, N))
    assert indices(wrapped) == list(range(N)) and wrapped.complete
    c.close()


def test_shuffle_by_seed_is_a_reproducible_permutation_per_epoch(cache: TrainingCache) -> None:
    src = Source()
    wrapped = cache.wrap(src, "ds", shuffle_seed=7)
    assert indices(wrapped) == list(range(N))  # the first pass can only follow the source
    epoch1 = indices(wrapped)
    epoch2 = indices(wrapped)
    assert sorted(epoch1) == list(range(N)) and sorted(epoch2) == list(range(N))
    assert epoch1 != list(range(N)) and epoch1 != epoch2
    expected = np.random.default_rng([7, 1]).permutation(N).tolist()
    assert epoch1 == expected
    other = cache.wrap(Source(), "ds", shuffle_seed=7)
    other.set_epoch(1)
    assert indices(other) == epoch1
    assert indices(cache.wrap(Source(), "ds", shuffle_seed=8).iter(epoch=1)) != epoch1
    assert src.produced == N


# ------------------------------------------------------------------------------------------ resume and interruption


def test_resume_from_a_batch_index_on_a_cold_cache_still_completes_it(cache: TrainingCache) -> None:
    src = Source()
    wrapped = cache.wrap(src, "ds", start=5)
    assert indices(wrapped) == list(range(5, N))
    assert wrapped.complete  # batches 0..4 were stored while the source was skipped past them
    assert indices(wrapped) == list(range(N))  # later passes start at 0
    assert src.produced == N


def test_resume_on_a_cached_shuffled_pass_reproduces_the_tail_of_that_order(cache: TrainingCache) -> None:
    list(cache.wrap(Source(), "ds"))
    full = indices(cache.wrap(Source(), "ds", shuffle_seed=3).iter(epoch=4))
    resumed = cache.wrap(Source(), "ds", shuffle_seed=3, start=7)
    resumed.set_epoch(4)
    assert indices(resumed) == full[7:]


def test_a_pass_left_with_break_is_incomplete_and_the_next_pass_completes_it(cache: TrainingCache) -> None:
    src = Source()
    wrapped = cache.wrap(src, "ds")
    for batch in wrapped:
        if batch["index"] == 4:
            break
    assert wait_no_threads() == []
    assert not wrapped.complete
    stored = cache.namespaces()[0]["batches"]
    assert 5 <= stored <= N
    produced_before = src.produced
    assert indices(wrapped) == list(range(N))
    assert wrapped.complete
    assert cache.stats.hits >= 5  # the stored prefix came from the cache
    # The source was replayed only to skip the prefix and produce the rest: no batch is missing or doubled.
    assert src.produced - produced_before == N
    assert cache.namespaces()[0]["batches"] == N


def test_a_source_error_reaches_the_consumer_unchanged_and_leaves_the_pass_incomplete(cache: TrainingCache) -> None:
    error = ValueError("tokenizer exploded")
    src = Source(fail_at=6, error=error)
    wrapped = cache.wrap(src, "ds")
    seen: list[int] = []
    with pytest.raises(ValueError) as info:
        for batch in wrapped:
            seen.append(batch["index"])
    assert info.value is error
    assert seen == list(range(6))
    assert not wrapped.complete
    assert wait_no_threads() == []
    src.fail_at = None
    assert indices(wrapped) == list(range(N))
    assert wrapped.complete


def test_a_one_shot_iterator_is_never_re_read_at_the_wrong_position(cache: TrainingCache) -> None:
    once = cache.wrap(iter(Source()), "once")
    for batch in once:
        if batch["index"] == 3:
            break
    with pytest.raises(TrainingCacheError, match="re-iterable"):
        next(iter(once))
    complete = cache.wrap(iter(Source()), "complete")
    assert indices(complete) == list(range(N))
    assert indices(complete) == list(range(N))  # served from the cache: the spent iterator is not needed


def test_a_source_that_fails_immediately_raises_on_the_first_next(cache: TrainingCache) -> None:
    class Broken:
        def __iter__(self) -> Iterator[Any]:
            raise KeyError("no such shard")

    with pytest.raises(KeyError, match="no such shard"):
        next(iter(cache.wrap(Broken(), "broken")))


def test_a_crash_mid_pass_is_detected_after_reopening(tmp_path: Path) -> None:
    c = TrainingCache(tmp_path, size=4)
    it = iter(c.wrap(Source(), "ds"))
    for _ in range(4):
        next(it)
    it.close()  # type: ignore[attr-defined]
    c.close()
    # What a crash leaves: the manifest never marked complete, some batch files written.
    reopened = TrainingCache(tmp_path, size=4)
    src = Source()
    wrapped = reopened.wrap(src, "ds")
    assert not wrapped.complete
    assert indices(wrapped) == list(range(N)) and wrapped.complete
    reopened.close()


@pytest.mark.slow
def test_a_process_killed_mid_pass_leaves_an_incomplete_namespace_that_is_completed_later(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        import numpy as np
        from llamahome.cache.training import TrainingCache

        def batches():
            for i in range(200):
                time.sleep(0.002)
                yield {{"index": i, "input_ids": np.full((2, 32), i, dtype=np.int64)}}

        cache = TrainingCache({str(tmp_path)!r}, size=8)
        for batch in cache.wrap(batches(), "killed"):
            if batch["index"] == 20:
                print("ready", flush=True)
                time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait(timeout=20)
        if proc.stdout is not None:
            proc.stdout.close()
    c = TrainingCache(tmp_path, size=8)
    [ns] = c.namespaces()
    assert not ns["complete"] and 21 <= ns["batches"] < 200
    src = Source(n=200)
    wrapped = c.wrap(src, "killed")
    out = list(wrapped)
    assert indices(out) == list(range(200)) and wrapped.complete
    c.close()


def test_a_missing_or_damaged_batch_is_served_from_the_source(cache: TrainingCache) -> None:
    list(cache.wrap(Source(), "ds"))
    ns_dir = cache.path / namespace_id("ds")
    (ns_dir / "b000000003.lhb").unlink()
    damaged = ns_dir / "b000000005.lhb"
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF
    damaged.write_bytes(bytes(data))
    src = Source()
    out = list(cache.wrap(src, "ds"))
    assert indices(out) == list(range(N))
    np.testing.assert_array_equal(out[5]["input_ids"], make_batch(5)["input_ids"])
    assert cache.stats.corrupt == 2
    assert cache.wrap(Source(), "ds").complete  # repaired: both batches were stored again


def test_a_batch_file_moved_to_another_slot_is_a_miss_not_the_wrong_batch(cache: TrainingCache) -> None:
    # Batch files are bound to (namespace, index) by the value-file key (cache.files): a file copied over
    # another batch's name (a botched restore, a sync tool) must not be served as that batch.
    list(cache.wrap(Source(), "ds"))
    ns_dir = cache.path / namespace_id("ds")
    (ns_dir / "b000000004.lhb").write_bytes((ns_dir / "b000000002.lhb").read_bytes())
    out = list(cache.wrap(Source(), "ds"))
    np.testing.assert_array_equal(out[4]["input_ids"], make_batch(4)["input_ids"])
    assert cache.stats.corrupt == 1


def test_batch_files_of_the_blob_format_before_cache_files_still_read(cache: TrainingCache) -> None:
    import struct

    import xxhash

    from llamahome.cache import files

    list(cache.wrap(Source(), "ds"))
    path = cache.path / namespace_id("ds") / "b000000003.lhb"
    got = files.read_value_file(path, None)
    assert got is not None
    frame = bytes(got.frame)
    # LHB1, as blobfile.write_blob wrote batches: no key, checksum over key + frame.
    head = struct.pack("<4sBBHQQdQId", b"LHB1", 1, 0, 0, xxhash.xxh3_64_intdigest(frame), len(frame), 1.0, 3, 0, 0.0)
    path.write_bytes(head + b"\0" * (64 - len(head)) + frame)
    src = Source()
    out = list(cache.wrap(src, "ds"))
    np.testing.assert_array_equal(out[3]["input_ids"], make_batch(3)["input_ids"])
    assert cache.stats.corrupt == 0


def test_a_batch_mutated_by_the_consumer_is_stored_as_produced(cache: TrainingCache) -> None:
    for batch in cache.wrap(Source(), "ds"):
        batch["input_ids"][:] = -100  # a training step editing its batch in place
    for batch in cache.wrap(Source(), "ds"):
        np.testing.assert_array_equal(batch["input_ids"], make_batch(batch["index"])["input_ids"])


# ------------------------------------------------------------------------------------------ namespaces and budget


def test_a_changed_fingerprint_or_dataset_id_is_a_new_namespace(cache: TrainingCache) -> None:
    list(cache.wrap(Source(), "ds", fingerprint={"tokenizer": "a", "seq": 32}))
    src = Source()
    list(cache.wrap(src, "ds", fingerprint={"tokenizer": "b", "seq": 32}))
    assert src.produced == N
    src2 = Source()
    list(cache.wrap(src2, "other", fingerprint={"tokenizer": "a", "seq": 32}))
    assert src2.produced == N
    same = Source()
    list(cache.wrap(same, "ds", fingerprint={"seq": 32, "tokenizer": "a"}))  # key order does not matter
    assert same.produced == 0
    assert len(cache.namespaces()) == 3
    assert cache.invalidate("ds") == 2 * N
    assert [n["dataset_id"] for n in cache.namespaces()] == ["other"]


def test_namespaces_are_evicted_whole_oldest_first_and_the_budget_holds(tmp_path: Path) -> None:
    probe = TrainingCache(tmp_path / "probe", size=16, compression=False)
    list(probe.wrap(Source(), "probe"))
    per_dataset = probe.stats.bytes
    probe.close()
    budget_mb = (3.5 * per_dataset) / (1024 * 1024)
    c = TrainingCache(tmp_path / "c", size=budget_mb, compression=False, prefetch=2, batch_buffer=4)
    for name in ["a", "b", "c"]:
        list(c.wrap(Source(), name))
    assert [n["dataset_id"] for n in c.namespaces()] == ["a", "b", "c"]
    list(c.wrap(Source(), "a"))  # reading "a" again does not make it younger under FIFO
    for _ in c.wrap(Source(), "d"):
        assert c.stats.bytes <= c.max_bytes
    assert [n["dataset_id"] for n in c.namespaces()] == ["b", "c", "d"]
    assert all(n["complete"] for n in c.namespaces())
    assert c.stats.evictions == N
    on_disk = sum(f.stat().st_size for f in (tmp_path / "c").rglob("*.lhb"))
    assert on_disk == c.stats.bytes <= c.max_bytes
    c.close()


def test_lru_policy_evicts_the_least_recently_read_namespace(tmp_path: Path, clock: Any) -> None:
    probe = TrainingCache(tmp_path / "probe", size=16, compression=False)
    list(probe.wrap(Source(), "probe"))
    per_dataset = probe.stats.bytes
    probe.close()
    c = TrainingCache(tmp_path / "c", size=2.5 * per_dataset / 2**20, cleanup_policy="lru", compression=False, clock=clock)
    list(c.wrap(Source(), "a"))
    clock.advance(1)
    list(c.wrap(Source(), "b"))
    clock.advance(1)
    list(c.wrap(Source(), "a"))
    clock.advance(1)
    list(c.wrap(Source(), "c"))
    assert sorted(n["dataset_id"] for n in c.namespaces()) == ["a", "c"]
    c.close()


def test_a_dataset_larger_than_the_cache_passes_through_from_the_source(tmp_path: Path) -> None:
    probe = TrainingCache(tmp_path / "probe", size=16, compression=False)
    list(probe.wrap(Source(), "probe"))
    per_dataset = probe.stats.bytes
    probe.close()
    c = TrainingCache(tmp_path / "c", size=0.5 * per_dataset / 2**20, compression=False)
    src = Source()
    wrapped = c.wrap(src, "big")
    assert indices(wrapped) == list(range(N))
    assert c.stats.bytes <= c.max_bytes and not wrapped.complete
    assert indices(wrapped) == list(range(N))
    assert src.produced == 2 * N
    c.close()


def test_a_size_smaller_than_one_batch_is_a_clear_error_not_a_deadlock(tmp_path: Path) -> None:
    c = TrainingCache(tmp_path, size="1KB", compression=False)
    started = time.monotonic()
    with pytest.raises(TrainingCacheError, match="raise training_cache.size"):
        list(c.wrap(Source(rows=8, cols=64), "huge"))
    assert time.monotonic() - started < 5
    with pytest.raises(TrainingCacheError, match="raise training_cache.size"):
        c.put("k", make_batch(0, 8, 64))
    c.close()


def test_cleanup_enforces_the_budget_and_removes_crash_leftovers(cache: TrainingCache) -> None:
    list(cache.wrap(Source(), "ds"))
    ns_dir = cache.path / namespace_id("ds")
    dead = ns_dir / ".b000000099.lhb.999999999.1.tmp"  # a writer with a pid that cannot exist
    dead.write_bytes(b"partial")
    report = cache.cleanup()
    assert report.orphans == 1 and not dead.exists()
    assert report.evicted == 0 and cache.stats.entries == N


# ------------------------------------------------------------------------------------------ put / get


def test_put_get_round_trips_token_ids_and_compresses_them(cache: TrainingCache) -> None:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 32000, size=(16, 512), dtype=np.int64)
    cache.put("b1", {"input_ids": tokens, "attention_mask": np.ones_like(tokens)})
    cache.put(b"b2", [[1, 2, 3], [4, 5]])
    got = cache.get("b1")
    np.testing.assert_array_equal(got["input_ids"], tokens)
    assert cache.get(b"b2") == [[1, 2, 3], [4, 5]]
    assert cache.get("b2") is None and "b1" in cache and "zz" not in cache
    assert cache.stats.compression_ratio < 1 / 1.5
    assert cache.delete("b1") and not cache.delete("b1")
    assert cache.get("b1", "gone") == "gone"


def test_put_get_round_trips_torch_tensors(cache: TrainingCache) -> None:
    torch = pytest.importorskip("torch")
    batch = {"input_ids": torch.arange(64).reshape(2, 32), "labels": torch.full((2, 32), -100)}
    cache.put("t", batch)
    got = cache.get("t")
    assert torch.equal(got["input_ids"], batch["input_ids"]) and got["labels"].dtype == torch.int64


def test_closed_cache_refuses_use_and_bad_config_is_refused(tmp_path: Path) -> None:
    c = TrainingCache(tmp_path)
    c.close()
    c.close()
    with pytest.raises(CacheClosedError):
        c.put("k", b"v")
    with pytest.raises(ConfigError, match="prefetch"):
        TrainingCache(tmp_path, prefetch=8, batch_buffer=4)
    with pytest.raises(ConfigError, match="cleanup_policy"):
        TrainingCache(tmp_path, cleanup_policy="random")
    with pytest.raises(ConfigError, match="size"):
        TrainingCache(tmp_path, size=0)


def test_the_cache_pickles_as_its_configuration(tmp_path: Path) -> None:
    c = TrainingCache(tmp_path, size=3, batch_buffer=6, prefetch=2)
    list(c.wrap(Source(), "ds"))
    clone = pickle.loads(pickle.dumps(c))
    try:
        assert (clone.path, clone.size, clone.batch_buffer, clone.prefetch) == (c.path, 3, 6, 2)
        assert clone.wrap(Source(), "ds").complete
    finally:
        clone.close()
        c.close()


# ------------------------------------------------------------------------------------------ read-ahead and shutdown


def test_read_ahead_is_bounded_by_prefetch(tmp_path: Path) -> None:
    c = TrainingCache(tmp_path, size=4, prefetch=2, batch_buffer=4)
    src = Source(n=50)
    it = iter(c.wrap(src, "ds"))
    next(it)
    time.sleep(0.3)
    # one handed out, `prefetch` queued, one in the producer's hand waiting for room
    assert src.produced <= 1 + 2 + 1
    it.close()  # type: ignore[attr-defined]
    c.close()


def test_workers_stop_when_the_consumer_breaks_or_raises_or_drops_the_iterator(cache: TrainingCache) -> None:
    slow = Source(n=1000, delay=0.001)
    for batch in cache.wrap(slow, "a"):
        if batch["index"] == 2:
            break
    assert wait_no_threads() == []

    with pytest.raises(ZeroDivisionError):
        for batch in cache.wrap(Source(n=1000, delay=0.001), "b"):
            if batch["index"] == 2:
                1 / 0  # noqa: B018 - an exception in the training step
    assert wait_no_threads() == []

    it = iter(cache.wrap(Source(n=1000, delay=0.001), "c"))
    next(it)
    assert our_threads()
    del it
    gc.collect()
    assert wait_no_threads() == []
    assert live_pipelines() == 0


def test_close_stops_passes_that_are_still_reading_ahead(tmp_path: Path) -> None:
    c = TrainingCache(tmp_path, size=4)
    its = [iter(c.wrap(Source(n=1000, delay=0.001), name)) for name in ("a", "b")]
    for it in its:
        next(it)
    c.close()
    assert our_threads() == []
    for it in its:
        with pytest.raises(StopIteration):
            next(it)


def test_an_unfinished_pass_does_not_hold_up_interpreter_exit(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import itertools, time
        from llamahome.cache.training import TrainingCache

        def endless():
            for i in itertools.count():
                time.sleep(0.001)
                yield {{"i": i}}

        cache = TrainingCache({str(tmp_path)!r}, size=4)
        it = iter(cache.wrap(endless(), "endless"))
        next(it); next(it)
        print("ok", flush=True)
        """
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    assert time.monotonic() - started < 20


# ------------------------------------------------------------------------------------------ torch integration


def test_wraps_a_torch_dataloader_and_moves_batches_to_the_device(cache: TrainingCache) -> None:
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.arange(40 * 8).reshape(40, 8))
    loader = DataLoader(data, batch_size=4)
    wrapped = cache.wrap(loader, "tensors", device="cpu", pin_memory=True)  # pinning is skipped without CUDA
    first = [b[0] for b in wrapped]
    second = [b[0] for b in wrapped]
    assert len(first) == 10 and all(torch.equal(a, b) for a, b in zip(first, second))
    assert second[0].device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(TrainingCacheError, match="CUDA is not available"):
            cache.wrap(loader, "tensors", device="cuda")


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a CUDA GPU")
def test_batches_reach_cuda_from_pinned_memory(cache: TrainingCache) -> None:  # pragma: no cover - needs a GPU
    import torch

    src = [{"x": torch.arange(16).reshape(4, 4) + i} for i in range(6)]
    wrapped = cache.wrap(src, "gpu", device="cuda", pin_memory=True)
    for _ in range(2):
        out = list(wrapped)
        assert all(b["x"].is_cuda for b in out)
        assert torch.equal(out[3]["x"].cpu(), src[3]["x"])


class _ShardedDataset:
    """An IterableDataset whose workers each read their own shard through the (pickled) cache."""

    def __init__(self, cache: TrainingCache, n: int) -> None:
        self.cache = cache
        self.n = n

    def __iter__(self) -> Iterator[Any]:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        wid, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        shard = [{"i": np.array([i])} for i in range(wid, self.n, workers)]
        yield from self.cache.wrap(shard, f"sharded/{wid}of{workers}")


@pytest.mark.slow
def test_usable_inside_a_dataloader_with_workers(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, IterableDataset

    class Dataset(_ShardedDataset, IterableDataset):  # type: ignore[misc]
        pass

    c = TrainingCache(tmp_path, size=4)
    loader = DataLoader(Dataset(c, 20), batch_size=None, num_workers=2, multiprocessing_context="fork")
    first = sorted(int(b["i"][0]) for b in loader)
    second = sorted(int(b["i"][0]) for b in loader)
    assert first == second == list(range(20))
    c.cleanup()  # sees what the worker processes wrote
    assert sorted(n["dataset_id"] for n in c.namespaces()) == ["sharded/0of2", "sharded/1of2"]
    assert all(n["complete"] for n in c.namespaces())
    assert isinstance(torch.tensor(0), torch.Tensor)
    c.close()


def test_namespace_ids_are_stable_text(tmp_path: Path) -> None:
    assert namespace_id("ds", {"a": 1, "b": 2}) == namespace_id("ds", {"b": 2, "a": 1})
    assert namespace_id("ds", None) != namespace_id("ds", 0)
    assert os.sep not in namespace_id("a/b", "c/d")


class _PerProcessRepr:
    """An object whose only text form is its default repr, which names its address: different every run."""


@pytest.mark.parametrize(
    "fingerprint",
    [_PerProcessRepr(), {"tokenizer": object()}, [1, {"deep": {1, 2}}], {1: "int key"}, lambda: 0],
    ids=["object", "nested-object", "set", "int-key", "function"],
)
def test_fingerprints_without_a_stable_text_are_refused(cache: TrainingCache, fingerprint: object) -> None:
    with pytest.raises(TrainingCacheError, match="fingerprint"):
        cache.wrap([[1]], "ds", fingerprint=fingerprint)
    with pytest.raises(TrainingCacheError, match="fingerprint"):
        namespace_id("ds", fingerprint)
    assert cache.namespaces() == []


def test_a_self_containing_fingerprint_is_refused() -> None:
    loop: list = []
    loop.append(loop)
    with pytest.raises(TrainingCacheError, match="contains itself"):
        namespace_id("ds", loop)


def test_fingerprints_hit_across_processes(tmp_path: Path) -> None:
    """The same fingerprint names the same namespace in a fresh interpreter (paths and numpy scalars too)."""
    import subprocess
    import sys

    code = (
        "import numpy as np, pathlib, sys; from llamahome.cache.training import namespace_id; "
        "print(namespace_id('ds', {'tok': pathlib.Path('/m/tok'), 'seq': np.int64(2048), 'v': (1, 2.5, None)}))"
    )
    env = dict(os.environ, PYTHONHASHSEED="random")
    here = namespace_id("ds", {"v": [1, 2.5, None], "seq": 2048, "tok": "/m/tok"})
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        assert out.stdout.strip() == here


def test_the_training_modules_meet_at_public_names_only() -> None:
    """``_pass`` never imports ``_cache``; ``_cache`` imports only public names of ``_pass`` (issue 12, item 2)."""
    import ast

    import llamahome.cache.training as package

    root = Path(package.__file__).parent

    def imports(module: str) -> dict[str, list[str]]:
        tree = ast.parse((root / f"{module}.py").read_text(encoding="utf-8"))
        found: dict[str, list[str]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found.setdefault(node.module or "", []).extend(alias.name for alias in node.names)
        return found

    assert "_cache" not in imports("_pass")
    assert not [name for name in imports("_cache").get("_pass", []) if name.startswith("_")]
    assert not [name for name in imports("_cache").get("_prefetch", []) if name.startswith("_")]
    from llamahome.cache import TrainingCache as Public
    from llamahome.cache.prefetch import read_ahead as old_path

    assert Public is TrainingCache and old_path is read_ahead


# ------------------------------------------------------------------------------------------ store contract


class TestTrainingCacheContract(StoreContract):
    """put/get/set/delete of single batches keep the store contract: they are the disk tier inside ``path``.

    No opt-outs: ttl, eviction order, the bound and the counters are those of every store.
    """

    def make_store(self, tmp_path: Path, clock: Any, size_mb: float = 1.0, policy: str = "lru") -> TrainingCache:
        return TrainingCache(tmp_path, size=size_mb, cleanup_policy=policy, clock=clock)


def test_put_shares_the_budget_with_the_namespaces(tmp_path: Path) -> None:
    c = TrainingCache(tmp_path, size=1, compression=False, prefetch=0)
    list(c.wrap([np.full(30_000, i, dtype=np.int64) for i in range(3)], "ds"))  # ~720 KB in one namespace
    assert c.namespaces()[0]["batches"] == 3
    c.put("one", np.zeros(50_000, dtype=np.int64))  # 400 KB more: over the bound, so the namespace goes
    assert c.namespaces() == [] and c.stats.bytes <= c.max_bytes
    assert c.get("one") is not None
    with pytest.raises(TrainingCacheError, match="raise training_cache.size") as info:
        c.put("huge", np.zeros(200_000, dtype=np.int64))
    assert isinstance(info.value, ValueTooLargeError)
    c.close()


def test_values_of_the_old_layout_are_removed_by_cleanup(tmp_path: Path) -> None:
    old = tmp_path / "kv"
    old.mkdir()
    (old / ("ab" * 16 + ".lhb")).write_bytes(b"LHB1 old value")
    c = TrainingCache(tmp_path, size=1)
    assert c.cleanup().orphans == 1 and not old.exists()
    c.close()
