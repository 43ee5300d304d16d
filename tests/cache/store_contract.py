"""The contract every store keeps, as a reusable test mixin.

Subclass :class:`StoreContract` in a ``test_*.py`` module, implement :meth:`StoreContract.make_store`, and
pytest runs every test below over your store::

    from tests.cache.store_contract import StoreContract   # or: from .store_contract import StoreContract

    class TestDiskContract(StoreContract):
        def make_store(self, tmp_path, clock, size_mb=1.0, policy="lru"):
            return DiskCache(tmp_path / "c", size=size_mb, policy=policy, clock=clock)

``tmp_path`` is a fresh directory for that one store (tests that build several stores pass several
directories); ``clock`` is the ``FakeClock`` from ``tests/conftest.py`` (``clock()``, ``clock.advance(s)``).
Stores that cannot honour some part of the contract switch it off with the class attributes below and say why
in a comment; everything else must pass unchanged.

What the contract fixes (the shared semantics of every tier):

- Keys are ``str`` or ``bytes``; ``"a"`` and ``b"a"`` are different keys; anything else raises
  ``CacheKeyError`` (a ``TypeError``).
- ``get`` counts one hit or one miss; ``in``, ``len`` and ``cleanup`` count neither and do not count as a use
  for the eviction policy. ``set`` counts ``sets``; a ``delete`` that removed something counts ``deletes``.
- ``stats.bytes`` and ``stats.entries`` are what the store holds now; ``stats.bytes <= stats.max_bytes`` after
  every operation; ``stats.max_bytes`` is ``size_mb`` MiB in bytes (``units.size_to_bytes``).
- A value larger than the whole store raises ``ValueTooLargeError`` and leaves the store as it was (nothing is
  evicted to make room for a value that cannot fit).
- ``close()`` is idempotent, and a closed store (also after ``with store:``) raises ``CacheClosedError``.
- ``ttl`` is in seconds on the store's clock; an expired entry is a miss counted in ``stats.expirations``;
  ``cleanup()`` removes expired entries and reports them in ``CleanupReport.expired``.
- Eviction: expired entries go before any live entry. Then, by policy: ``lru`` the least recently read or
  written; ``lfu`` the fewest uses (a write counts as a use; ties go to the one that reached its count
  first); ``fifo`` the first inserted (reads do not matter); ``time`` the oldest by write time.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llamahome.cache.base import MISSING, Store
from llamahome.cache.stats import CleanupReport
from llamahome.errors import CacheClosedError, CacheError, CacheKeyError, ValueTooLargeError

__all__ = ["StoreContract", "ALL_POLICIES", "MIB"]

MIB = 1024 * 1024
ALL_POLICIES = ("lru", "lfu", "fifo", "time")


class StoreContract:
    """Mixin of contract tests; subclasses implement :meth:`make_store` (and may switch parts off)."""

    #: Policies the store accepts; order tests run for each of these.
    policies: tuple[str, ...] = ALL_POLICIES
    #: False for stores whose eviction order is approximate (e.g. batched access times).
    exact_eviction_order: bool = True
    #: False for stores whose ``ttl`` does not follow the injected clock (override :meth:`advance` instead if
    #: the store's time can be moved some other way).
    supports_ttl: bool = True
    #: Budget of the default ``store`` fixture, in MB (1 MB = 1 MiB).
    size_mb: float = 1.0

    # ------------------------------------------------------------------------------------------ hooks

    def make_store(self, tmp_path: Path, clock: Any, size_mb: float = 1.0, policy: str = "lru") -> Store:
        """Build a fresh, empty store bounded to ``size_mb`` with eviction ``policy`` and time from ``clock``."""
        raise NotImplementedError("StoreContract.make_store")

    def advance(self, store: Store, clock: Any, seconds: float) -> None:
        """Move the store's time forward (override for stores with their own clock)."""
        clock.advance(seconds)

    def value_of_size(self, n: int, seed: int = 0) -> bytes:
        """A bytes value of exactly ``n`` bytes (incompressible, so compressing stores account it fully)."""
        return random.Random(seed).randbytes(n)

    # ---------------------------------------------------------------------------------------- helpers

    @pytest.fixture
    def store(self, tmp_path: Path, clock: Any) -> Any:
        s = self.make_store(tmp_path / "store", clock, size_mb=self.size_mb, policy="lru")
        yield s
        s.close()

    def _new(self, tmp_path: Path, clock: Any, name: str, size_mb: float = 1.0, policy: str = "lru") -> Store:
        return self.make_store(tmp_path / name, clock, size_mb=size_mb, policy=policy)

    @staticmethod
    def _check_bound(store: Store) -> None:
        st = store.stats
        assert 0 <= st.bytes <= st.max_bytes, (st.bytes, st.max_bytes)
        assert st.entries >= 0

    def _fill_until_first_eviction(self, store: Store, clock: Any, value_size: int) -> list[str]:
        """Insert fixed-width keys of equal-sized values, one clock second apart, until one is evicted."""
        keys: list[str] = []
        for i in range(10_000):
            key = f"k{i:04d}"
            store.set(key, self.value_of_size(value_size, i))
            keys.append(key)
            self._check_bound(store)
            if store.stats.evictions:
                return keys
            self.advance(store, clock, 1.0)
        raise AssertionError("the store never evicted anything; is the size bound enforced?")

    def _policy_store(self, tmp_path: Path, clock: Any, policy: str) -> tuple[Store, list[str], int]:
        if policy not in self.policies:
            pytest.skip(f"{type(self).__name__} does not offer policy {policy!r}")
        if not self.exact_eviction_order:
            pytest.skip(f"{type(self).__name__} evicts in approximate order only")
        store = self._new(tmp_path, clock, policy, size_mb=1.0, policy=policy)
        size = MIB // 10 - 4096  # about nine entries fit, whatever the per-entry overhead
        keys = self._fill_until_first_eviction(store, clock, size)
        # With no reads, every policy evicts the first key first.
        assert keys[0] not in store
        assert all(k in store for k in keys[1:])
        assert store.stats.evictions == 1
        assert store.stats.entries == len(keys) - 1
        return store, keys, size

    # ------------------------------------------------------------------------------------ basic API

    def test_set_get_delete(self, store: Store) -> None:
        store.set("a", b"alpha")
        assert store.get("a") == b"alpha"
        assert "a" in store
        assert store.delete("a") is True
        assert "a" not in store
        assert store.get("a") is None
        assert store.get("a", "fallback") == "fallback"
        assert store.delete("a") is False

    def test_overwrite_replaces_value_and_bytes(self, store: Store) -> None:
        store.set("a", self.value_of_size(1000))
        small = store.stats.bytes
        store.set("a", self.value_of_size(50_000, 1))
        assert store.get("a") == self.value_of_size(50_000, 1)
        assert store.stats.entries == 1
        assert store.stats.bytes >= small + 49_000
        store.set("a", b"x")
        assert store.stats.bytes < small
        assert store.stats.sets == 3

    def test_str_and_bytes_keys_are_distinct(self, store: Store) -> None:
        store.set("a", b"from str")
        store.set(b"a", b"from bytes")
        assert store.get("a") == b"from str"
        assert store.get(b"a") == b"from bytes"
        assert store.stats.entries == 2

    def test_unicode_and_binary_keys(self, store: Store) -> None:
        store.set("ключ 🔑", b"1")
        store.set(b"\x00\xff\x80", b"2")
        assert store.get("ключ 🔑") == b"1"
        assert store.get(b"\x00\xff\x80") == b"2"

    @pytest.mark.parametrize("bad", [1, 2.5, None, ("a",), object()])
    def test_bad_keys_raise_cache_key_error(self, store: Store, bad: Any) -> None:
        with pytest.raises(CacheKeyError):
            store.set(bad, b"v")
        with pytest.raises(CacheKeyError):
            store.get(bad)
        with pytest.raises(TypeError):  # CacheKeyError is also a TypeError
            store.delete(bad)
        assert store.stats.entries == 0

    def test_none_is_a_value_not_a_miss(self, store: Store) -> None:
        store.set("n", None)
        assert "n" in store
        assert store.get("n", "default") is None
        assert store.get("n", MISSING) is None
        assert store.stats.hits == 2

    @pytest.mark.parametrize(
        "value",
        [
            b"bytes",
            b"",
            "text ✓",
            0,
            -12345678901234567890,
            3.25,
            True,
            False,
            {"prompt": "hi", "tokens": [1, 2, 3], "nested": {"ok": None}},
            [1, "two", 3.0, None],
        ],
        ids=repr,
    )
    def test_value_round_trip(self, store: Store, value: Any) -> None:
        store.set("v", value)
        got = store.get("v")
        assert got == value
        assert type(got) is type(value)

    def test_numpy_round_trip(self, store: Store) -> None:
        arr = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
        store.set("arr", arr)
        got = store.get("arr")
        assert isinstance(got, np.ndarray)
        assert got.dtype == np.float32 and got.shape == (2, 3, 5)
        np.testing.assert_array_equal(got, arr)
        assert store.stats.bytes >= arr.nbytes

    def test_get_many_and_set_many(self, store: Store) -> None:
        store.set_many({"a": b"1", "b": b"2", b"c": b"3"})
        assert store.stats.sets == 3
        assert store.get_many(["a", b"c", "zz"]) == {"a": b"1", b"c": b"3"}
        assert store.stats.hits == 2 and store.stats.misses == 1

    def test_len_and_entries(self, store: Store) -> None:
        for i in range(5):
            store.set(f"k{i}", b"v")
        assert len(store) == 5 == store.stats.entries
        store.delete("k0")
        assert len(store) == 4 == store.stats.entries

    def test_clear_empties_everything(self, store: Store) -> None:
        for i in range(5):
            store.set(f"k{i}", self.value_of_size(1000, i))
        store.clear()
        assert store.stats.entries == 0 and store.stats.bytes == 0 and len(store) == 0
        assert "k1" not in store
        store.set("again", b"ok")
        assert store.get("again") == b"ok"

    def test_close_is_idempotent(self, tmp_path: Path, clock: Any) -> None:
        s = self._new(tmp_path, clock, "closing")
        s.set("a", b"1")
        s.close()
        s.close()

    def test_context_manager_closes(self, tmp_path: Path, clock: Any) -> None:
        with self._new(tmp_path, clock, "ctx") as s:
            s.set("a", b"1")
            assert s.get("a") == b"1"
        # Closed on exit: using the store now is a CacheClosedError, not a value and not a bare error.
        with pytest.raises(CacheClosedError):
            s.get("a")
        with pytest.raises(CacheClosedError):
            s.set("b", b"2")
        s.close()  # and closing again is harmless

    def test_name_is_a_string(self, store: Store) -> None:
        assert isinstance(store.name, str) and store.name

    # ------------------------------------------------------------------------------------------ stats

    def test_stats_counters(self, store: Store) -> None:
        store.set("a", b"1")
        store.set("b", b"2")
        store.get("a")
        store.get("a")
        store.get("missing")
        assert "b" in store and "zz" not in store  # membership tests count neither hits nor misses
        store.delete("b")
        store.delete("b")
        st = store.stats
        assert (st.sets, st.hits, st.misses, st.deletes) == (2, 2, 1, 1)
        assert st.entries == 1
        assert st.hit_rate == pytest.approx(2 / 3)

    def test_max_bytes_is_size_in_mib(self, tmp_path: Path, clock: Any) -> None:
        s = self._new(tmp_path, clock, "sized", size_mb=2.5)
        try:
            assert s.stats.max_bytes == int(2.5 * MIB)
        finally:
            s.close()

    def test_bytes_count_keys_and_values(self, store: Store) -> None:
        assert store.stats.bytes == 0
        store.set("key", self.value_of_size(10_000))
        one = store.stats.bytes
        assert one >= 10_000 + 3
        store.set("key2", self.value_of_size(10_000, 1))
        assert store.stats.bytes >= one + 10_000
        store.delete("key")
        store.delete("key2")
        assert store.stats.bytes == 0 and store.stats.entries == 0

    # ------------------------------------------------------------------------------ bound and eviction

    def test_bound_holds_while_filling(self, store: Store) -> None:
        size = MIB // 20
        for i in range(60):
            store.set(f"k{i:03d}", self.value_of_size(size, i))
            self._check_bound(store)
        st = store.stats
        assert st.evictions == 60 - st.entries
        assert 10 <= st.entries < 20
        assert st.bytes >= st.entries * size

    def test_value_larger_than_store_is_refused(self, store: Store) -> None:
        store.set("keep", b"kept")
        before = store.stats.bytes
        too_big = self.value_of_size(store.stats.max_bytes + 1)
        with pytest.raises(ValueTooLargeError) as info:
            store.set("huge", too_big)
        assert isinstance(info.value, CacheError) and isinstance(info.value, ValueError)
        assert "huge" not in store
        assert store.get("keep") == b"kept"  # nothing was evicted to make room for it
        assert store.stats.bytes == before
        assert store.stats.evictions == 0

    def test_random_workload_never_returns_a_wrong_value(self, store: Store) -> None:
        rng = random.Random(1234)
        latest: dict[str, bytes] = {}
        gets = 0
        for step in range(400):
            key = f"k{rng.randrange(40):02d}"
            op = rng.random()
            if op < 0.5:
                value = self.value_of_size(rng.choice([10, 1000, 30_000, 120_000]), step)
                store.set(key, value)
                latest[key] = value
            elif op < 0.9:
                gets += 1
                got = store.get(key, MISSING)
                assert got is MISSING or got == latest.get(key), f"stale value for {key} at step {step}"
            else:
                store.delete(key)
                latest.pop(key, None)
            self._check_bound(store)
        st = store.stats
        assert len(store) == st.entries
        assert st.hits + st.misses == gets

    # --------------------------------------------------------------------------------- policy orders

    @pytest.mark.parametrize("policy", ALL_POLICIES)
    def test_first_eviction_takes_the_first_key(self, tmp_path: Path, clock: Any, policy: str) -> None:
        store, _, _ = self._policy_store(tmp_path, clock, policy)
        store.close()

    def test_lru_order(self, tmp_path: Path, clock: Any) -> None:
        store, keys, size = self._policy_store(tmp_path, clock, "lru")
        with store:
            store.get(keys[1])  # k1 becomes most recently used; k2 is now the least
            store.set("new1", self.value_of_size(size, 101))
            assert keys[1] in store and keys[2] not in store
            store.set(keys[3], self.value_of_size(size, 102))  # a write is a use too
            store.set("new2", self.value_of_size(size, 103))
            assert keys[3] in store and keys[4] not in store

    def test_fifo_order(self, tmp_path: Path, clock: Any) -> None:
        store, keys, size = self._policy_store(tmp_path, clock, "fifo")
        with store:
            store.get(keys[1])  # reads do not matter to fifo
            store.set("new1", self.value_of_size(size, 101))
            assert keys[1] not in store and keys[2] in store
            store.set("new2", self.value_of_size(size, 102))
            assert keys[2] not in store and keys[3] in store and "new1" in store

    def test_lfu_order(self, tmp_path: Path, clock: Any) -> None:
        store, keys, size = self._policy_store(tmp_path, clock, "lfu")
        with store:
            held = keys[1:]
            for key in held:
                if key != keys[3]:
                    store.get(key)
            store.get(keys[1])
            # Counts: keys[1] 3, keys[3] 1, the rest 2 -> keys[3] goes.
            store.set("new1", self.value_of_size(size, 101))
            assert keys[3] not in store and all(k in store for k in held if k != keys[3])
            # new1 has one use, fewer than anyone else: the next insert evicts it.
            store.set("new2", self.value_of_size(size, 102))
            assert "new1" not in store and "new2" in store
            # Ties go to the entry that reached its count first: keys[2] reached 2 before the others.
            store.get("new2")
            store.set("new3", self.value_of_size(size, 103))
            assert keys[2] not in store
            assert "new2" in store and "new3" in store

    def test_time_order(self, tmp_path: Path, clock: Any) -> None:
        store, keys, size = self._policy_store(tmp_path, clock, "time")
        with store:
            store.get(keys[1])  # reads do not make an entry younger
            self.advance(store, clock, 1.0)
            store.set("new1", self.value_of_size(size, 101))
            assert keys[1] not in store and keys[2] in store
            self.advance(store, clock, 1.0)
            store.set(keys[2], self.value_of_size(size, 102))  # a rewrite makes it the youngest
            self.advance(store, clock, 1.0)
            store.set("new2", self.value_of_size(size, 103))
            assert keys[2] in store and keys[3] not in store

    @pytest.mark.parametrize("policy", ALL_POLICIES)
    def test_expired_entries_are_evicted_first(self, tmp_path: Path, clock: Any, policy: str) -> None:
        if not self.supports_ttl:
            pytest.skip("store has no injectable time")
        store, keys, size = self._policy_store(tmp_path, clock, policy)
        with store:
            # Make "short" the last entry any policy would pick: newest, most recent, most used.
            for key in store_keys_alive(store, keys):
                store.get(key)
            store.set("short", self.value_of_size(size, 201), ttl=5)
            for _ in range(5):
                store.get("short")
            self.advance(store, clock, 10)
            evictions_before = store.stats.evictions
            alive_before = store_keys_alive(store, keys)
            store.set("new", self.value_of_size(size, 202))
            assert "short" not in store
            assert store_keys_alive(store, keys) == alive_before  # no live entry had to go
            assert store.stats.evictions == evictions_before
            self._check_bound(store)

    # ------------------------------------------------------------------------------------------- ttl

    def test_ttl_expires_on_the_clock(self, store: Store, clock: Any) -> None:
        if not self.supports_ttl:
            pytest.skip("store has no injectable time")
        store.set("t", b"v", ttl=10)
        store.set("forever", b"v")
        self.advance(store, clock, 9)
        assert store.get("t") == b"v"
        self.advance(store, clock, 2)
        assert store.get("t") is None
        assert "t" not in store
        assert store.get("forever") == b"v"
        st = store.stats
        assert st.expirations == 1
        assert (st.hits, st.misses) == (2, 1)
        assert st.entries == 1

    def test_set_without_ttl_clears_an_earlier_ttl(self, store: Store, clock: Any) -> None:
        if not self.supports_ttl:
            pytest.skip("store has no injectable time")
        store.set("k", b"1", ttl=5)
        store.set("k", b"2")
        self.advance(store, clock, 100)
        assert store.get("k") == b"2"

    def test_cleanup_removes_expired(self, store: Store, clock: Any) -> None:
        if not self.supports_ttl:
            pytest.skip("store has no injectable time")
        for i in range(4):
            store.set(f"short{i}", self.value_of_size(1000, i), ttl=5)
        store.set("long", b"v", ttl=100)
        store.set("forever", b"v")
        assert store.cleanup().expired == 0
        self.advance(store, clock, 6)
        report = store.cleanup()
        assert isinstance(report, CleanupReport)
        assert report.expired == 4
        assert report.bytes_freed >= 4000
        assert store.stats.entries == 2
        assert store.stats.expirations == 4
        assert store.get("long") == b"v" and store.get("forever") == b"v"
        assert store.cleanup().expired == 0

    # ---------------------------------------------------------------------------------------- threads

    def test_threads_keep_bound_and_counters(self, store: Store) -> None:
        n_threads, n_ops = 4, 300
        errors: list[BaseException] = []
        barrier = threading.Barrier(n_threads)

        def work(seed: int) -> None:
            rng = random.Random(seed)
            try:
                barrier.wait()
                for i in range(n_ops):
                    key = f"k{rng.randrange(64):02d}"
                    if i % 2:
                        store.set(key, self.value_of_size(rng.choice([100, 20_000, 60_000]), seed * n_ops + i))
                    else:
                        store.get(key)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        st = store.stats
        self._check_bound(store)
        assert st.sets == n_threads * n_ops // 2
        assert st.hits + st.misses == n_threads * n_ops // 2
        assert len(store) == st.entries


def store_keys_alive(store: Store, keys: list[str]) -> list[str]:
    """The keys of ``keys`` the store still holds (membership tests do not touch the policy)."""
    return [k for k in keys if k in store]
