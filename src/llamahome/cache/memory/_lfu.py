"""LFUMemoryCache: ``MemoryCache(policy="lfu")``, least frequently used first, with the order kept inline.

The rules are :class:`~llamahome.cache.policies.LFUPolicy`'s: an insert counts as one use, every read or
overwrite as one more, and ties go to the entry that reached its count first. Each entry is one
``_Entry`` (value, uses, key); ``_buckets`` holds, per use count, a ``deque`` of the entries in the order they
reached that count. ``tests/cache/memory/test_cache.py`` checks this class against ``PolicyMemoryCache``
driving an ``LFUPolicy`` subclass on random workloads: the same order, counts and charges.

Why lazy buckets: a use only appends the entry to the next count's deque (its tail is in the CPU cache) and
leaves a stale item behind in the old one, instead of unlinking the key from an ``OrderedDict`` (which
touches its two neighbours, two cache misses on a large table: that unlink was half the cost of a get-hit,
and made it slower than cachetools' ``LFUCache``). An item is live when its entry's count is its deque's
count (an entry reaches each count once; a removed entry's count is set to 0). The victim search pops stale
items off the front of the lowest deques, so each is dropped once; and when stale items outnumber the live
entries (plus a slack), the deques are rebuilt without them, so memory stays bounded on read-only workloads
(amortised O(1) per use; the same trick as the ttl heap in ``_cache.py``).

cachebox's native ``LFUCache`` was measured too (one native call per get): its ties go by first insertion
instead (insert a, b, c; read c, then a: it evicts b, a, c where the contract says b, c, a), so it cannot
serve this policy without changing the contract every tier shares (``policies.ORDER_KEYS``).

A get-hit takes the lock: a use is two steps (count, then deque), and a lost use would bend the order.

Charges: a ``bytes`` value under an ASCII ``str`` key (or a ``bytes`` key) was charged exactly
``len(key) + len(value) + ENTRY_OVERHEAD``, recomputed when it leaves; every other entry's charge is kept in
``_sizes``.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from .. import codecs
from ..base import Key, validate_ttl
from ._cache import ENTRY_OVERHEAD, Closed, MemoryCache, uncharge

__all__ = ["LFUMemoryCache"]

# Stale items allowed beyond one per live entry before the deques are rebuilt.
_SLACK = 1024


class _Entry:
    """One held key: its value, its uses (0 once removed) and the key. Slots keep all three in the object
    itself (a list would keep them in a second allocation: one more cache miss per get-hit)."""

    __slots__ = ("value", "uses", "key")

    value: Any
    uses: int
    key: Key


class LFUMemoryCache(MemoryCache, kind="lfu"):
    """``MemoryCache`` with exactly the ``lfu`` policy; build it through ``MemoryCache(policy="lfu")``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._entries: Any = {}  # key -> _Entry (its value is a frame with compression)
        self._sizes: Any = {}  # key -> bytes charged, for entries whose charge cannot be recomputed
        self._buckets: dict[int, deque[_Entry]] = {}  # uses -> entries in the order they reached it (+ stale)
        self._min = 0  # no live entry has fewer uses than this; 0: work it out when a victim is needed
        self._items = 0  # items in all the deques, live and stale
        self._compact_at = _SLACK  # check for stale items once _items passes this
        self._fast = False
        self._refresh_fast()

    def _refresh_fast(self) -> None:
        # set's fast path serves values kept as they are while no entry has a deadline.
        self._fast = not self.compression and not self._expires

    _deadlines_changed = _refresh_fast

    # ------------------------------------------------------------------------------------------ order

    def _use(self, entry: _Entry) -> None:
        """A read or an overwrite of a held entry: one more use. Under the lock (get inlines this)."""
        up = entry.uses + 1
        entry.uses = up
        bucket = self._buckets.get(up)
        if bucket is None:
            bucket = self._buckets[up] = deque()
        bucket.append(entry)
        self._items += 1
        if self._items > self._compact_at:
            self._compact()

    def _track(self, entry: _Entry) -> None:
        """A new entry (it holds one use). Under the lock."""
        bucket = self._buckets.get(1)
        if bucket is None:
            bucket = self._buckets[1] = deque()
        bucket.append(entry)
        self._min = 1
        self._items += 1
        if self._items > self._compact_at:
            self._compact()

    def _first_live(self) -> _Entry:
        """The next victim's entry, left in place; stale items before it are dropped. Under the lock; the
        cache holds something."""
        buckets = self._buckets
        low = self._min
        while True:
            bucket = buckets.get(low) if low else None
            while bucket:
                entry = bucket[0]
                if entry.uses == low:
                    self._min = low
                    return entry
                bucket.popleft()
                self._items -= 1
            if bucket is not None:
                del buckets[low]
            low = min(buckets)

    def _victim(self) -> Key:
        """The next key to evict (not removed). Under the lock; the cache holds something."""
        key: Key = self._first_live().key
        return key

    def _compact(self) -> None:
        """Rebuild the deques without their stale items if those outnumber the live entries. Under the lock."""
        live = len(self._entries)
        if self._items - live > live + _SLACK:
            buckets: dict[int, deque[_Entry]] = {}
            for count in sorted(self._buckets):
                kept = deque(entry for entry in self._buckets[count] if entry.uses == count)
                if kept:
                    buckets[count] = kept
            self._buckets = buckets
            self._items = live
            self._min = min(buckets, default=0)
        self._compact_at = self._items + live + _SLACK

    def _order(self) -> list[Key]:
        buckets = self._buckets
        return [entry.key for count in sorted(buckets) for entry in buckets[count] if entry.uses == count]

    # ----------------------------------------------------------------------------------------- reads

    def get(self, key: Key, default: Any = None) -> Any:
        """The value under ``key``, or ``default`` on a miss; an expired entry is a miss and is dropped."""
        try:
            self._token.pop()  # acquire the lock (see _mutex.py)
        except IndexError:
            self._lock.wait()
        try:
            try:
                entry = self._entries[key]
            except (KeyError, TypeError):  # TypeError: unhashable; _miss says what a key must be
                return self._miss(key, default)
            if self._expires and self._expired(key):
                self._drop(key)
                self._stats.expirations += 1
                self._stats.misses += 1
                return default
            # One more use: _use, inlined (this is the hot path).
            up = entry.uses + 1
            entry.uses = up
            bucket = self._buckets.get(up)
            if bucket is None:
                bucket = self._buckets[up] = deque()
            bucket.append(entry)
            self._items += 1
            if self._items > self._compact_at:
                self._compact()
            self._stats.hits += 1
            value = entry.value
        finally:
            self._token.append(True)  # release the lock
            if self._waiters:
                self._lock.wake()
        if self.compression and type(value) is memoryview:  # an encoded frame; see MemoryCache._encode
            return codecs.decode(value, allow_pickle=self.allow_pickle)
        return value

    def _touch(self, key: Key) -> None:
        self._use(self._entries[key])

    def _peek_raw(self, key: Key, default: Any) -> Any:
        entry = self._entries.get(key)
        return default if entry is None else entry.value

    def _fold_stats(self) -> None:
        self._stats.entries = len(self._entries)

    def _keys(self) -> list[Key]:
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    # ----------------------------------------------------------------------------------------- writes

    def set(self, key: Key, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (None: until evicted), evicting to stay in bounds.

        A ``ttl`` of zero or less stores nothing and removes any value already there (it would be expired).
        """
        if ttl is None and type(value) is bytes and type(key) is str and key.isascii():
            # The fast path: a new key, bytes under an ASCII key (its charge is recomputed when it leaves, so
            # no record is kept), no ttl, no deadline held (so nothing is expired), no compression.
            need = len(key) + len(value) + ENTRY_OVERHEAD
            if need <= self._fast_limit:  # both bounds: see MemoryCache._fast_limit
                try:
                    self._token.pop()  # acquire the lock (see _mutex.py)
                except IndexError:
                    self._lock.wait()
                try:
                    entries = self._entries
                    if self._fast and key not in entries:
                        st = self._stats
                        limit = self.max_bytes - need
                        if st.bytes > limit:
                            sizes, buckets = self._sizes, self._buckets
                            while st.bytes > limit:
                                # The victim: the front of the lowest deque when it is live (the common
                                # case, inlined), else _first_live drops the stale items before it.
                                low = self._min
                                bucket = buckets.get(low)
                                if bucket and bucket[0].uses == low:
                                    victim = bucket.popleft()
                                else:
                                    victim = self._first_live()
                                    buckets[victim.uses].popleft()
                                self._items -= 1
                                victim.uses = 0
                                k = victim.key
                                del entries[k]
                                st.bytes -= sizes.pop(k) if sizes and k in sizes else len(k) + len(victim.value) + ENTRY_OVERHEAD
                                st.evictions += 1
                        entry = entries[key] = _Entry()
                        entry.value, entry.uses, entry.key = value, 1, key
                        # _track, inlined.
                        ones = self._buckets.get(1)
                        if ones is None:
                            ones = self._buckets[1] = deque()
                        ones.append(entry)
                        self._min = 1
                        self._items += 1
                        if self._items > self._compact_at:
                            self._compact()
                        st.bytes += need
                        st.sets += 1
                        return
                finally:
                    self._token.append(True)  # release the lock
                    if self._waiters:
                        self._lock.wake()
        MemoryCache.set(self, key, value, ttl)  # the general path

    def _set_locked(
        self, key: Key, value: Any, need: int, ttl: float | None, raw: int, vsize: int, ksize: int
    ) -> None:
        st, entries = self._stats, self._entries
        ttl = validate_ttl(ttl)
        st.sets += 1
        if ttl is not None and not ttl > 0:
            if key in entries:
                self._drop(key)
            return
        now = self._clock() if (ttl is not None or self._expires) else 0.0
        entry = entries.get(key)
        if entry is not None:
            st.bytes -= uncharge(self._sizes, key, entry.value)
            if self._expires:
                self._expires.pop(key, None)  # its heap item goes stale: _drop_expired will not pick it
            self._use(entry)  # an overwrite is a use
        if st.bytes + need > self.max_bytes and self._make_room(need, now, key if entry is not None else None):
            entry = None  # the entry being overwritten was the next victim and is gone
        if entry is not None:
            entry.value = value
        else:
            entry = entries[key] = _Entry()
            entry.value, entry.uses, entry.key = value, 1, key
            self._track(entry)
        if type(value) is not bytes or ksize != len(key):
            self._sizes[key] = need
        st.bytes += need
        if raw:
            st.raw_bytes += raw
            st.stored_bytes += vsize
        if ttl is not None:
            self._add_deadline(key, now + ttl)
        self._refresh_fast()

    def _make_room(self, need: int, now: float, writing: Key | None) -> bool:
        """Drop expired entries, then victims, until ``need`` more bytes fit. Under the lock.

        Returns True if ``writing`` (the key being overwritten, already uncharged) was the next victim and
        left.
        """
        st = self._stats
        limit = self.max_bytes - need
        # Expired entries are worth nothing: they go before any live entry, soonest deadline first.
        st.expirations += self._drop_expired(now, limit)
        removed_writing = False
        while st.bytes > limit:
            k = self._victim()
            if k == writing and not removed_writing:
                # Overwriting the next victim: its old value is already uncharged, so the old entry just
                # leaves (not an eviction) and the new value comes in as a fresh insert.
                self._entries.pop(k).uses = 0
                removed_writing = True
                continue
            self._drop(k)
            st.evictions += 1
        return removed_writing

    def _drop(self, key: Key) -> None:
        entry = self._entries.pop(key)
        entry.uses = 0  # its deque item goes stale
        self._stats.bytes -= uncharge(self._sizes, key, entry.value)
        self._forget_deadline(key)

    def _clear_entries(self) -> None:
        self._entries.clear()
        self._sizes.clear()
        self._buckets.clear()
        self._min = self._items = 0
        self._compact_at = _SLACK

    def _close_entries(self) -> None:
        self._entries = self._sizes = Closed()
        self._buckets.clear()
        self._min = self._items = 0

    def _is_closed(self) -> bool:
        return isinstance(self._entries, Closed)
