"""LRUMemoryCache: ``MemoryCache(policy="lru")``, a thin layer over cachebox's Rust LRU table.

Why cachebox: LRU get-hits and evicting sets are the hot path of an inference cache, and they must cost well
under cachetools' time while counting stats exactly. An exact LRU in Python pays ``OrderedDict.move_to_end``
on every hit, whose relinking misses the CPU cache on large tables; cachebox (a maintained Rust library made
for exactly this) updates the order inside one locked native call. Its table *is* this cache: it holds the
entries in LRU order (a write or a ``get`` makes a key most recently used; ``peek``, ``in`` and ``delete``
leave the order alone) and it keeps the byte bound itself, evicting the least recently used entries until a
new one fits. ``tests/cache/memory/test_cache.py`` checks this class against ``PolicyMemoryCache`` driving an
``LRUPolicy`` subclass (the same rules in Python) on random workloads: the same order, counts and charges.

What the hot paths cost, and why each piece is there:

- ``get`` (no compression, no deadline held): one native lookup-and-promote, which holds the table's own
  lock, and ``next()`` on an ``itertools.count`` for the hit (atomic under the GIL; folded into ``stats``
  when it is read). No lock of ours, no key validation (only validated keys ever get in).
- ``set``: under our lock (the charge hand-off below and the stats need it), one native insert that evicts
  for room. The charge reaches cachebox without a Python call: its ``getsizeof`` hook is ``dict.pop`` of a
  dict where ``set`` put ``{key: charge}`` just before, so cachebox calls a C function that returns the
  charge and forgets it. Evictions are not counted per insert: every key that enters the table is counted
  and every key this class takes out (``_gone``), so the table's evictions are ``entered - len(table) -
  _gone``, worked out when ``stats`` is read. The fast path counts its sets (``_fast_sets``) and, rarely, the
  ones that replaced a key (``_fast_old``); keys entered = ``_new`` (the general path's) + ``_fast_sets -
  _fast_old``. It runs only while no None value is held (insert's None then means "new key").

With deadlines held, a write makes room itself (expired entries first, each victim's deadline with it)
before it inserts, so then the table never evicts on its own.
"""

from __future__ import annotations

from typing import Any

import cachebox

from ..base import Key, validate_ttl
from ._cache import ABSENT, ENTRY_OVERHEAD, Closed, MemoryCache

__all__ = ["LRUMemoryCache"]


class LRUMemoryCache(MemoryCache, kind="lru"):
    """``MemoryCache`` with exactly the ``lru`` policy; build it through ``MemoryCache(policy="lru")``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # key -> the charge of the insert in flight (set under the lock, popped by cachebox's hook). The
        # hook is a method of this dict, not of `self`: cache and table must not keep each other alive.
        self._charges: Any = {}
        self._table: Any = cachebox.LRUCache(self.max_bytes, getsizeof=self._charges.pop)
        self._new = 0  # keys that entered the table on the general path (an overwrite is not one)
        self._sets = 0  # sets on the general path (folded into stats.sets)
        self._fast_sets = 0  # sets on the fast path (folded into stats.sets)
        self._fast_old = 0  # ... of which replaced a held key
        self._gone = 0  # keys this class took out of it (delete, expiry, its own evictions, clear)
        self._evicted = 0  # this class's own evictions (with deadlines held); the table's are derived
        self._none_held = False  # a None value may be held (then insert's return cannot tell new keys)
        self._fast = self._fast_set = False
        self._refresh_fast()

    def _refresh_fast(self) -> None:
        # The fast paths serve values kept as they are while no entry has a deadline; set's also needs no
        # None value held.
        self._fast = not self.compression and not self._expires
        self._fast_set = self._fast and not self._none_held

    _deadlines_changed = _refresh_fast

    # ----------------------------------------------------------------------------------------- reads

    def get(self, key: Key, default: Any = None) -> Any:
        """The value under ``key``, or ``default`` on a miss; an expired entry is a miss and is dropped."""
        # Only exact str/bytes keys take the lock-free path: their hashing and comparison run no Python code
        # while the table's lock is held (a str subclass may override __eq__, and code run there could call
        # this cache and wait on that lock forever). A miss or any other key takes the locked path, which
        # validates the key (an unhashable one raises TypeError here and lands there too).
        if self._fast and (type(key) is str or type(key) is bytes):
            try:
                value = self._table[key]  # cheaper than .get(key, default): no argument parsing
            except KeyError:
                return MemoryCache.get(self, key, default)  # a miss: counted and validated under the lock
            next(self._hits)
            return value
        return MemoryCache.get(self, key, default)  # the general path, under the lock

    def _touch(self, key: Key) -> None:
        self._table.get(key)  # a hit makes the key most recently used

    def _peek_raw(self, key: Key, default: Any) -> Any:
        return self._table.peek(key, default)

    def _fold_stats(self) -> None:
        st, table = self._stats, self._table
        self._fold_hits()
        st.entries = len(table)
        st.bytes = table.current_size()
        st.sets = self._sets + self._fast_sets
        entered = self._new + self._fast_sets - self._fast_old
        st.evictions = self._evicted + entered - st.entries - self._gone

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
        if ttl is None and type(value) is bytes and type(key) is str and key.isascii():
            # The fast path: bytes under an ASCII key, no ttl; while no compression and no deadline (checked
            # under the lock), LRU's rules are one native insert: the key becomes most recently used, then
            # victims come off the front until it fits (never the key itself, as need <= max_bytes).
            # One comparison checks both bounds (see MemoryCache._fast_limit).
            need = len(key) + len(value) + ENTRY_OVERHEAD
            if need <= self._fast_limit:
                try:
                    self._token.pop()  # acquire the lock (see _mutex.py)
                except IndexError:
                    self._lock.wait()
                try:
                    if self._fast_set:
                        self._charges[key] = need
                        if self._table.insert(key, value) is not None:
                            self._fast_old += 1
                        self._fast_sets += 1
                        return
                finally:
                    self._token.append(True)  # release the lock
                    if self._waiters:
                        self._lock.wake()
        MemoryCache.set(self, key, value, ttl)  # the general path

    def _insert_ambiguous(self, key: Key, value: Any) -> None:
        """Insert while a None value may be held (insert's None then means "new" or "was None"). Locked."""
        new = self._table.peek(key, ABSENT) is ABSENT
        self._table.insert(key, value)
        self._new += new

    def _set_locked(
        self, key: Key, value: Any, need: int, ttl: float | None, raw: int, vsize: int, ksize: int
    ) -> None:
        """Every other case of ``set``: ttl, compression, deadlines held, other values. Under the lock."""
        st, table = self._stats, self._table
        ttl = validate_ttl(ttl)
        self._sets += 1
        if ttl is not None and not ttl > 0:
            if table.peek(key, ABSENT) is not ABSENT:
                self._drop(key)
            return
        now = self._clock() if (ttl is not None or self._expires) else 0.0
        if self._expires:
            # Expired entries must leave before live ones, and a victim's deadline with it: room is made
            # here, so the table never evicts on its own. The old value leaves first; the new one comes in
            # as most recently used, where a write moves a key.
            if table.pop(key, ABSENT) is not ABSENT:
                self._gone += 1
                self._expires.pop(key, None)
            st.bytes = table.current_size()
            if st.bytes + need > self.max_bytes:
                self._make_room(need, now)
        # Nothing expired is left to honour first: the table evicts for room as on the fast path.
        self._charges[key] = need
        if self._none_held:
            self._insert_ambiguous(key, value)
        elif table.insert(key, value) is None:
            self._new += 1
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
            victim = table.popitem()[0]
            st.bytes = table.current_size()
            expires.pop(victim, None)
            self._gone += 1
            self._evicted += 1

    def _drop(self, key: Key) -> None:
        self._table.pop(key)
        self._gone += 1
        self._stats.bytes = self._table.current_size()  # the table forgets the entry's charge with it
        self._forget_deadline(key)

    def _clear_entries(self) -> None:
        self._gone += len(self._table)
        self._table.clear()
        self._none_held = False  # base clear() then calls _deadlines_changed, which refreshes the fast flags

    def _close_entries(self) -> None:
        self._gone += len(self._table)
        self._table = self._charges = Closed()

    def _is_closed(self) -> bool:
        return isinstance(self._table, Closed)
