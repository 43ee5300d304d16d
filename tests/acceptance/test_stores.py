"""Acceptance: the store contract of ``MemoryCache``, ``DiskCache`` and ``TieredCache``, used as a user would.

``get``/``set``/``delete``/``in``/``stats``/``cleanup``/``clear``/``close`` with the documented
arguments (``size`` in MB or a unit string, ``policy`` lru/lfu/fifo/time, ``compression``, ``ttl``);
values of every documented type round-trip; the byte bound holds; bad keys, values too large and
unpicklable objects are ``CacheError`` exceptions; and the disk tier's safety promises: keys never escape its
directory, files are private (0700/0600), nothing is pickled, several processes share one directory, and
damage is a miss, never a wrong value (README "Memory tier", "Disk tier and tiered cache" and
"Safety"; issues 2, 3 and 11).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llamahome.cache import DiskCache, MemoryCache, TieredCache
from llamahome.errors import CacheError

from ._support import Custom, KiB, MiB, child_env


def make_store(kind: str, root: Path, **kwargs: Any) -> Any:
    """The two sync classes built with the contract's exact words."""
    kwargs.setdefault("size", 1)
    kwargs.setdefault("policy", "lru")
    kwargs.setdefault("compression", False)
    if kind == "memory":
        return MemoryCache(**kwargs)
    return DiskCache(root / "disk", **kwargs)


STORES = ["memory", "disk"]


@pytest.mark.parametrize("kind", STORES)
def test_store_basic_words(kind: str, tmp_path: Path) -> None:
    cache = make_store(kind, tmp_path)
    try:
        assert cache.get("missing") is None
        assert cache.get("missing", default="fallback") == "fallback"
        assert cache.get("missing", "positional") == "positional"
        cache.set("key", b"value", ttl=None)
        cache.set("other", "text")
        assert cache.get("key") == b"value"
        assert "key" in cache and "missing" not in cache
        assert cache.delete("key") is True
        assert cache.delete("key") is False
        assert "key" not in cache and cache.get("key") is None
        stats = cache.stats
        assert stats.sets == 2
        assert stats.hits == 1 and stats.misses == 4
        assert stats.hit_rate == pytest.approx(0.2)
        assert stats.entries == 1
        assert 0 < stats.bytes <= stats.max_bytes == 1 * MiB
        report = cache.cleanup()  # nothing has expired or overflowed: a pass that removes nothing
        assert (report.expired, report.evicted, report.corrupt) == (0, 0, 0)
        assert cache.stats.entries == 1 and cache.get("other") == "text"
        cache.clear()
        assert "other" not in cache and cache.stats.entries == 0 and cache.stats.bytes == 0
        # bytes keys are keys too
        cache.set(b"bkey", 1)
        assert cache.get(b"bkey") == 1
    finally:
        cache.close()
    with pytest.raises(CacheError):
        cache.get("key")


@pytest.mark.parametrize("kind", STORES)
@pytest.mark.parametrize("compression", [False, True])
def test_store_value_types_round_trip(kind: str, compression: bool, tmp_path: Path) -> None:
    import torch

    cache = make_store(kind, tmp_path, size=16, compression=compression)
    values: dict[str, Any] = {
        "bytes": b"\x00\x01raw" * 1000,
        "str": "héllo wörld " * 500,
        "int": 2**62,
        "negative": -17,
        "float": 3.25,
        "bool": True,
        "none_is_not_a_miss": None,
        "dict": {"text": "hi", "ids": [1, 2, 3], "nested": {"p": 0.5, "ok": False}},
        "list": [1, "two", 3.0, None, [4]],
        "empty": "",
        "tuple": (1, "a"),
        "np_f32_scalar": np.float32(1.5),  # numpy scalars come back as themselves, not 0-d arrays
        "np_f64_scalar": np.float64(2.25),
        "np_i64_scalar": np.int64(7),
        "np_bool_scalar": np.bool_(True),
        "zero_d": np.array(3.5),
    }
    arrays = {
        "f32": np.arange(4096, dtype=np.float32).reshape(64, 64) / 7,
        "i64": np.arange(10_000, dtype=np.int64),
        "u8": np.frombuffer(os.urandom(5000), dtype=np.uint8),
        "f16": np.linspace(-1, 1, 999, dtype=np.float16),
        "bool_arr": np.array([[True, False], [False, True]]),
    }
    tensor = torch.arange(1000, dtype=torch.float32).reshape(10, 100) / 3
    bf16 = torch.linspace(-2, 2, 512).to(torch.bfloat16)
    try:
        for k, v in values.items():
            cache.set(k, v)
        for k, v in arrays.items():
            cache.set(k, v)
        cache.set("tensor", tensor)
        cache.set("bf16", bf16)
        for k, v in values.items():
            got = cache.get(k, default="MISS")
            assert type(got) is type(v), (k, got)
            assert np.array_equal(got, v) if isinstance(v, np.ndarray) else got == v, k
        for k, v in arrays.items():
            got = cache.get(k)
            assert isinstance(got, np.ndarray), k
            assert got.dtype == v.dtype and got.shape == v.shape, k
            assert np.array_equal(got, v), k
        got_t = cache.get("tensor")
        assert isinstance(got_t, torch.Tensor) and got_t.dtype == torch.float32 and got_t.shape == (10, 100)
        assert torch.equal(got_t, tensor)
        got_b = cache.get("bf16")
        assert isinstance(got_b, torch.Tensor) and got_b.dtype == torch.bfloat16 and torch.equal(got_b, bf16)
    finally:
        cache.close()


@pytest.mark.parametrize("kind", STORES)
def test_store_sizes_accept_unit_strings(kind: str, tmp_path: Path) -> None:
    cache = make_store(kind, tmp_path, size="512KB")
    try:
        assert cache.stats.max_bytes == 512 * KiB
    finally:
        cache.close()
    cache = make_store(kind, tmp_path / "b", size=0.25)
    try:
        assert cache.stats.max_bytes == 256 * KiB
    finally:
        cache.close()


VALUE = 120_000


@pytest.mark.parametrize("kind", STORES)
@pytest.mark.parametrize(
    ("policy", "victims"),
    [("lru", {"k1"}), ("lfu", {"k1", "k2", "k3"}), ("fifo", {"k0"}), ("time", {"k0"})],
)
def test_store_policies_by_name_evict_in_their_order(kind: str, policy: str, victims: set[str], tmp_path: Path, clock: Any) -> None:
    cache = make_store(kind, tmp_path, size="512KB", policy=policy, clock=clock)
    try:
        for i in range(4):
            cache.set(f"k{i}", os.urandom(VALUE))
            clock.advance(1)
        assert cache.stats.evictions == 0
        assert all(f"k{i}" in cache for i in range(4))
        for _ in range(3):
            assert cache.get("k0") is not None
            clock.advance(1)
        cache.set("k4", os.urandom(VALUE))
        gone = {f"k{i}" for i in range(4) if f"k{i}" not in cache}
        assert len(gone) == 1 and gone <= victims, (policy, gone)
        assert "k4" in cache
        assert cache.stats.evictions == 1
        assert cache.stats.bytes <= 512 * KiB
    finally:
        cache.close()


@pytest.mark.parametrize("kind", STORES)
def test_time_policy_evicts_entries_past_their_ttl_before_the_oldest(kind: str, tmp_path: Path, clock: Any) -> None:
    cache = make_store(kind, tmp_path, size="512KB", policy="time", clock=clock)
    try:
        cache.set("oldest", os.urandom(VALUE))
        clock.advance(1)
        cache.set("dying", os.urandom(VALUE), ttl=5)
        clock.advance(1)
        cache.set("k2", os.urandom(VALUE))
        cache.set("k3", os.urandom(VALUE))
        clock.advance(10)  # "dying" is now past its ttl
        cache.set("k4", os.urandom(VALUE))
        assert "oldest" in cache and "k4" in cache
        assert cache.get("dying") is None
    finally:
        cache.close()


@pytest.mark.parametrize("kind", STORES)
def test_store_bound_holds_under_many_sets(kind: str, tmp_path: Path) -> None:
    cache = make_store(kind, tmp_path, size="256KB")
    try:
        for i in range(200):
            cache.set(f"key-{i}", os.urandom(1000 + (i * 37) % 9000))
            assert cache.stats.bytes <= 256 * KiB
        assert cache.stats.evictions > 0
        assert cache.get("key-199") is not None
    finally:
        cache.close()


@pytest.mark.parametrize("kind", STORES)
def test_store_ttl_expires_and_cleanup_removes_it(kind: str, tmp_path: Path, clock: Any) -> None:
    cache = make_store(kind, tmp_path, clock=clock)
    try:
        cache.set("short", b"x", ttl=10)
        cache.set("forever", b"y", ttl=None)
        clock.advance(5)
        assert cache.get("short") == b"x"
        clock.advance(6)
        report = cache.cleanup()
        assert report.expired == 1
        assert "short" not in cache and cache.get("short") is None
        assert cache.get("forever") == b"y"
        assert cache.stats.expirations == 1
    finally:
        cache.close()


@pytest.mark.parametrize("kind", STORES)
def test_store_value_larger_than_the_tier_is_a_clear_error(kind: str, tmp_path: Path) -> None:
    cache = make_store(kind, tmp_path, size="64KB")
    try:
        cache.set("small", b"ok")
        with pytest.raises(CacheError) as info:
            cache.set("huge", os.urandom(200 * KiB))
        message = str(info.value)
        assert message.endswith(".") and len(message) > 30
        assert "huge" not in cache and cache.get("small") == b"ok"
    finally:
        cache.close()


@pytest.mark.parametrize("kind", STORES)
def test_store_rejects_bad_keys_with_a_cache_error(kind: str, tmp_path: Path) -> None:
    cache = make_store(kind, tmp_path)
    try:
        for bad in (1, None, ("a", "b"), 2.5):
            with pytest.raises(CacheError):
                cache.set(bad, b"v")
            with pytest.raises(CacheError):
                cache.get(bad)
    finally:
        cache.close()


@pytest.mark.parametrize(("kind", "compression"), [("disk", False), ("disk", True), ("memory", True)])
def test_no_pickle_by_default_and_the_error_names_the_type_and_the_opt_in(kind: str, compression: bool, tmp_path: Path) -> None:
    cache = make_store(kind, tmp_path, compression=compression)
    try:
        with pytest.raises(CacheError) as info:
            cache.set("obj", Custom())
        assert "Custom" in str(info.value)
        assert "pickle" in str(info.value)
        assert "obj" not in cache
    finally:
        cache.close()
    opted = (
        MemoryCache(size=1, compression=True, allow_pickle=True)
        if kind == "memory"
        else DiskCache(tmp_path / "opted", size=1, compression=compression, allow_pickle=True)
    )
    try:
        opted.set("obj", Custom())
        assert opted.get("obj").x == 1
    finally:
        opted.close()


def test_memory_bound_counts_numpy_nbytes(tmp_path: Path) -> None:
    cache = MemoryCache(size=1, policy="lru", compression=False)
    try:
        cache.set("a", np.zeros(600 * KiB, dtype=np.uint8))
        assert 600 * KiB <= cache.stats.bytes <= 1 * MiB
        cache.set("b", np.zeros(600 * KiB, dtype=np.uint8))
        assert "a" not in cache and "b" in cache and cache.stats.evictions == 1
        with pytest.raises(CacheError):
            cache.set("c", np.zeros(2 * MiB, dtype=np.uint8))
    finally:
        cache.close()


HOSTILE_KEYS: list[Any] = [
    "../escape",
    "../../../../etc/passwd",
    "/absolute/path",
    "a/../../b",
    "..",
    ".",
    "nul\x00byte",
    "k" * 10_240,
    b"\xff\xfe\x00not-utf8/../",
    "CON",
    "new\nline",
    "",
]


def test_disk_hostile_keys_stay_inside_the_directory(tmp_path: Path) -> None:
    root = tmp_path / "jail"
    root.mkdir()
    cache = DiskCache(root / "disk", size=4)
    try:
        for i, key in enumerate(HOSTILE_KEYS):
            try:
                cache.set(key, f"value-{i}".encode() + os.urandom(70_000 if i % 2 else 10))
            except CacheError:
                pytest.fail(f"hostile key {key!r} was refused")
        for i, key in enumerate(HOSTILE_KEYS):
            got = cache.get(key)
            assert got is not None and got.startswith(f"value-{i}".encode()), key
    finally:
        cache.close()
    # Nothing was written outside the cache's directory.
    outside = [p for p in tmp_path.rglob("*") if root not in p.parents and p != root]
    assert outside == []
    assert [p.name for p in root.iterdir()] == ["disk"]
    reopened = DiskCache(root / "disk", size=4)
    try:
        assert all(key in reopened for key in HOSTILE_KEYS)
    finally:
        reopened.close()


def test_disk_is_private_by_default(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        cache = DiskCache(tmp_path / "private", size=4)
        try:
            cache.set("small", b"s")
            cache.set("large", os.urandom(2 * MiB))
            cache.set("array", np.zeros(300_000, dtype=np.float32))
            paths = [tmp_path / "private", *(tmp_path / "private").rglob("*")]
            for p in paths:
                mode = stat.S_IMODE(p.stat().st_mode)
                if p.is_dir():
                    assert mode == 0o700, (p, oct(mode))
                else:
                    assert mode == 0o600, (p, oct(mode))
        finally:
            cache.close()
    finally:
        os.umask(old)


def test_disk_values_survive_close_and_reopen_and_are_not_pickled(tmp_path: Path) -> None:
    path = tmp_path / "persist"
    cache = DiskCache(path, size=4)
    cache.set("dict", {"a": [1, 2]})
    cache.set("arr", np.arange(100_000, dtype=np.int32))
    cache.close()
    blob = b"".join(p.read_bytes() for p in path.rglob("*") if p.is_file())
    # pickle protocol 2+ frames start with PROTO (0x80) then a protocol number, and name their classes.
    assert b"numpy.core.multiarray" not in blob and b"_reconstruct" not in blob
    again = DiskCache(path, size=4)
    try:
        assert again.get("dict") == {"a": [1, 2]}
        assert np.array_equal(again.get("arr"), np.arange(100_000, dtype=np.int32))
    finally:
        again.close()


def test_disk_numpy_zero_copy_mmap_when_asked(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "d", size=16)
    arr = np.arange(1_000_000, dtype=np.float32)
    try:
        cache.set("arr", arr)
        view = cache.get("arr", mmap=True)
        assert np.array_equal(view, arr) and view.dtype == np.float32
        assert not view.flags.writeable
        assert not view.flags.owndata
    finally:
        cache.close()


def test_disk_bad_ttl_type_is_a_cache_error(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "d", size=1)
    try:
        with pytest.raises(CacheError):
            cache.set("k", 1, ttl="soon")  # type: ignore[arg-type]
    finally:
        cache.close()


CHILD = """
import sys, os
from llamahome.cache import DiskCache
cache = DiskCache(sys.argv[1], size="256KB")
for i in range(60):
    cache.set(f"child-{i}", os.urandom(10_000))
# The last write of all, so no later set evicts it: wait (at most 30 s) until the parent has written its share
# (the parent says so with a file beside the cache: an entry could itself be evicted).
import time
deadline = time.monotonic() + 30
while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:
    time.sleep(0.01)
cache.set("from-child", b"hello parent")
cache.close()
"""


def test_disk_two_processes_share_one_directory_and_the_bound_holds(tmp_path: Path) -> None:
    path = tmp_path / "shared"
    parent = DiskCache(path, size="256KB")
    try:
        done = tmp_path / "parent-done"
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(done)], env=child_env())
        for i in range(60):
            parent.set(f"parent-{i}", os.urandom(10_000))
        done.touch()
        assert child.wait(timeout=60) == 0
        assert parent.get("from-child") == b"hello parent"
        assert parent.stats.bytes <= 256 * KiB
    finally:
        parent.close()
    again = DiskCache(path, size="256KB")
    try:
        assert 0 < again.stats.bytes <= 256 * KiB
        assert again.get("from-child") == b"hello parent"
    finally:
        again.close()


def test_disk_damaged_value_file_is_a_miss_and_a_counter_never_a_wrong_value(tmp_path: Path) -> None:
    path = tmp_path / "d"
    cache = DiskCache(path, size=16)
    try:
        cache.set("big", os.urandom(1 * MiB))
        cache.set("other", b"fine")
        biggest = max((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        assert biggest.stat().st_size >= 1 * MiB
        with open(biggest, "r+b") as f:
            f.seek(512 * KiB)
            byte = f.read(1)
            f.seek(512 * KiB)
            f.write(bytes([byte[0] ^ 0xFF]))
        assert cache.get("big", default="MISS") == "MISS"
        assert cache.stats.corrupt == 1
        assert "big" not in cache
        assert cache.get("other") == b"fine"
    finally:
        cache.close()


def test_disk_garbage_index_opens_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "d"
    cache = DiskCache(path, size=16)
    cache.set("k", b"v")
    cache.close()
    damaged = []
    for p in path.rglob("*"):
        if p.is_file() and p.stat().st_size < 1 * MiB and ("index" in p.name or p.suffix in (".db", ".sqlite")):
            p.write_bytes(b"this is not a database" * 100)
            damaged.append(p)
    assert damaged, "no index file was found to damage; the test would check nothing"
    reopened = DiskCache(path, size=16)
    try:
        assert reopened.get("k") in (b"v", None)
        reopened.set("k2", b"v2")
        assert reopened.get("k2") == b"v2"
    finally:
        reopened.close()


def test_tiered_reads_down_promotes_up_and_deletes_everywhere(tmp_path: Path) -> None:
    memory = MemoryCache(size=1)
    disk = DiskCache(tmp_path / "d", size=4)
    tiered = TieredCache(memory, disk)
    try:
        tiered.set("k", b"v")
        assert "k" in memory and "k" in disk
        memory.clear()
        assert tiered.get("k") == b"v"
        assert "k" in memory  # promoted
        assert tiered.delete("k") is True
        assert "k" not in memory and "k" not in disk and tiered.get("k") is None
    finally:
        tiered.close()
        memory.close()
        disk.close()


def test_tiered_cache_stats_per_tier_and_combined(tmp_path: Path) -> None:
    memory = MemoryCache(size=1)
    disk = DiskCache(tmp_path / "d", size=4)
    tiered = TieredCache(memory, disk)
    try:
        tiered.set("a", b"1")
        tiered.set("b", b"2")
        memory.delete("b")
        assert tiered.get("a") == b"1"  # memory hit
        assert tiered.get("b") == b"2"  # disk hit, promoted
        assert tiered.get("c") is None  # miss everywhere
        assert memory.stats.hits == 1 and disk.stats.hits == 1
        combined = tiered.stats
        assert combined.hits == 2 and combined.misses == 1
        assert combined.hit_rate == pytest.approx(2 / 3)
    finally:
        tiered.close()
        memory.close()
        disk.close()
