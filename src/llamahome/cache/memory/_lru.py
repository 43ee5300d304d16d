"""LRUMemoryCache: ``MemoryCache(policy="lru")``, a thin layer over cachebox's Rust LRU table.

Why cachebox: LRU get-hits and evicting sets are the hot path of an inference cache, and they must cost well
under cachetools' time while counting stats exactly. An exact LRU in Python pays ``OrderedDict.move_to_end``
on every hit, whose relinking misses the CPU cache on large tables; cachebox (a maintained Rust library made
for exactly this) updates the order inside one locked native call. Its table *is* this cache: it holds the
entries in LRU order (a write or a ``get`` makes a key most recently used; ``peek``, ``in`` and ``delete``
leave the order alone) and it keeps the byte bound itself. Every insert is charged what cachebox's
``getsizeof`` hook returns, which is the charge this cache computed just before (``self._next_charge[0]``,
set under the lock), and cachebox evicts the least recently used entries until the new one fits; evictions
are counted from the table's length before and after, and ``stats.bytes`` is the table's sum of charges. So
an evicting write is one native call, and a get-hit is one native call that takes no lock of ours.
``tests/cache/test_memory.py`` checks this class against ``PolicyMemoryCache`` driving an ``LRUPolicy``
subclass (the same rules in Python) on random workloads: the same order, counts and charges.

The fast paths (``get``/``set`` without compression while no entry has a deadline) skip everything else.
With deadlines held, a write makes room itself (expired entries first, each victim's deadline with it)
before it inserts, so then the table never evicts on its own.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable
from typing import Any

import cachebox

from ..base import Key, validate_ttl
from ..sizing import sizeof
from ._cache import ABSENT, ENTRY_OVERHEAD, FAST_KEY_CHARS, Closed, MemoryCache

__all__ = ["LRUMemoryCache"]


class LRUMemoryCache(MemoryCache, kind="lru"):
    """``MemoryCache`` with exactly the ``lru`` policy; build it through ``MemoryCache(policy="lru")``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # What the next insert is charged, set just before it under the lock. A one-item list, not an
        # attribute: the hook must not hold `self`, or cache and table would keep each other alive.
        self._next_charge = charge = [0]
        # cachebox's getsizeof hook returns that charge (a closure: cheaper to call than a bound method).
        self._table: Any = cachebox.LRUCache(self.max_bytes, getsizeof=lambda key, value: charge[0])
        # get's fast path calls the native lookup-and-promote directly (no Python frame in between).
        self._touch_get = self._table.get
        self._none_held = False  # a None value may be held (then insert's return cannot tell new keys)
        # Hits counted by get's lock-free path: next() on an itertools.count is atomic. Reading it also
        # advances it, so each fold subtracts its own read (see _fold_stats).
        self._hit_count = itertools.count()
        self._count_hit = self._hit_count.__next__
        self._last_count = -1
        self._fast = False
        self._refresh_fast()

    def _refresh_fast(self) -> None:
        # The fast paths serve values kept as they are while no entry has a deadline.
        self._fast = not self.compression and not self._expires

    _deadlines_changed = _refresh_fast

    # ----------------------------------------------------------------------------------------- reads

    def get(self, key: Key, default: Any = None) -> Any:
        """The value under ``key``, or ``default`` on a miss; an expired entry is a miss and is dropped."""
        # The hot path takes no lock of ours: the lookup and the LRU update are one native call that holds
        # the table's own lock, and the hit counter is atomic. Keys are not validated on a hit (only
        # validated keys ever get in); a miss validates the key on the locked path (an unhashable key
        # raises TypeError here and lands there too). Only exact str/bytes keys take it: their hashing and
        # comparison run no Python code while the table's lock is held (a str subclass may override
        # __eq__, and code run there could call this cache and wait on that lock forever).
        if self._fast and (type(key) is str or type(key) is bytes):
            value = self._touch_get(key, ABSENT)
            if value is not ABSENT:
                self._count_hit()
                return value
        return MemoryCache.get(self, key, default)  # the general path, under the lock

    def _touch(self, key: Key) -> None:
        self._table.get(key)  # a hit makes the key most recently used

    def _peek_raw(self, key: Key, default: Any) -> Any:
        return self._table.peek(key, default)

    def _fold_stats(self) -> None:
        st = self._stats
        # Every next() returns the hits counted so far plus the folds before this one, one each.
        count = self._count_hit()
        st.hits += count - self._last_count - 1
        self._last_count = count
        st.entries = len(self._table)
        st.bytes = self._table.current_size()  # the fast path leaves the count to the table

    def _keys(self) -> list[Key]:
        return list(self._table.keys())  # least recently used first

    _order = _keys

    def __len__(self) -> int:
        return len(self._table)

    # ----------------------------------------------------------------------------------------- writes

    def set(self, key: Key, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (None: until evicted), evicting to stay in bounds.

        A ``ttl`` of zero or less stores nothing and removes any value already there (it would be expired).
        """
        if ttl is None and self._fast and type(key) is str and len(key) <= FAST_KEY_CHARS and key.isascii():
            # The fast path: an ASCII key, no ttl, no compression, no deadline held. LRU's rules inside one
            # native insert (a write moves the key to the back, then victims come off the front until
            # `need` fits; never the key itself, as need <= max_bytes).
            need = len(key) + (len(value) if type(value) is bytes else sizeof(value)) + ENTRY_OVERHEAD
            if need <= self.max_bytes:
                self._lock.acquire()
                try:
                    if self._fast:  # another thread may have set a deadline meanwhile
                        self._insert(key, value, need)
                        self._stats.sets += 1
                        return
                finally:
                    self._lock.release()
        MemoryCache.set(self, key, value, ttl)  # the general path

    def _insert(self, key: Key, value: Any, need: int) -> None:
        """Insert with the table evicting for room, counting its evictions. Under the lock, no deadline held."""
        table = self._table
        held = len(table)
        self._next_charge[0] = need
        if self._none_held:  # a held None makes insert's "no old value" ambiguous
            new = table.peek(key, ABSENT) is ABSENT
            table.insert(key, value)
        else:
            new = table.insert(key, value) is None
        if value is None:
            self._none_held = True
        self._stats.evictions += held + new - len(table)

    def _set_locked(
        self, key: Key, value: Any, need: int, ttl: float | None, raw: int, vsize: int, ksize: int
    ) -> None:
        """Every other case of ``set``: ttl, compression, deadlines held. Under the lock."""
        st, table = self._stats, self._table
        ttl = validate_ttl(ttl)
        st.sets += 1
        if ttl is not None and not ttl > 0:
            if table.peek(key, ABSENT) is not ABSENT:
                self._drop(key)
            return
        now = self._clock() if (ttl is not None or self._expires) else 0.0
        if not self._expires:
            self._insert(key, value, need)  # nothing is expired: the table evicts as on the fast path
        else:
            # Expired entries must leave before live ones, and a victim's deadline with it: room is made
            # here, so the table never evicts on its own. The old value leaves first; the new one comes in
            # as most recently used, where a write moves a key.
            if table.pop(key, ABSENT) is not ABSENT:
                self._expires.pop(key, None)
            st.bytes = table.current_size()
            if st.bytes + need > self.max_bytes:
                self._make_room(need, now)
            self._next_charge[0] = need
            table.insert(key, value)
            if value is None:
                self._none_held = True
        st.bytes = table.current_size()
        if raw:
            st.raw_bytes += raw
            st.stored_bytes += vsize
        if ttl is not None:
            self._add_deadline(key, now + ttl)
        self._refresh_fast()

    def _make_room(self, need: int, now: float) -> None:
        """Drop expired entries, then the least recently used, until ``need`` more bytes fit. Under the lock."""
        st, table, expires = self._stats, self._table, self._expires
        limit = self.max_bytes - need
        st.expirations += self._drop_expired(now, limit)
        while st.bytes > limit:
            victim: Hashable = table.popitem()[0]
            st.bytes = table.current_size()
            expires.pop(victim, None)  # type: ignore[call-overload]
            st.evictions += 1

    def _drop(self, key: Key) -> None:
        self._table.pop(key)
        self._stats.bytes = self._table.current_size()  # the table forgets the entry's charge with it
        self._forget_deadline(key)

    def _clear_entries(self) -> None:
        self._table.clear()
        self._none_held = False

    def _close_entries(self) -> None:
        self._table = Closed()
        self._touch_get = self._table.get  # the fast path now raises CacheClosedError too

    def _is_closed(self) -> bool:
        return isinstance(self._table, Closed)
