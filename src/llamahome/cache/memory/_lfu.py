"""LFUMemoryCache: ``MemoryCache(policy="lfu")``, least frequently used first, with the order kept inline.

The rules are :class:`~llamahome.cache.policies.LFUPolicy`'s: an insert counts as one use, every read or
overwrite as one more, and ties go to the entry that reached its count first. The structure is the same too
(one ``OrderedDict`` of keys per use count, in the order they reached it), but it lives in this class so that
a get-hit or an evicting set runs in one Python frame instead of calling the policy object's hooks (that
frame per hook is what made the policy-object strategy slower than cachetools' ``LFUCache``). Each entry is
one ``[value, uses]`` list, so a hit looks the key up once.
``tests/cache/memory/test_cache.py`` checks this class against ``PolicyMemoryCache`` driving an ``LFUPolicy``
subclass on random workloads: the same order, counts and charges.

A get-hit takes the lock and applies the use at once. Buffering reads to apply them later without the lock
was tried: it is cheaper with every table in the CPU cache, but slower on a large one (100k keys), where the
deferred update finds the key's entries evicted from the CPU cache again, and it loosens the order under
threads.

Charges: a ``bytes`` value under an ASCII ``str`` key (or a ``bytes`` key) was charged exactly
``len(key) + len(value) + ENTRY_OVERHEAD``, recomputed when it leaves; every other entry's charge is kept in
``_sizes``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from .. import codecs
from ..base import MAX_KEY_BYTES, Key, validate_ttl
from ._cache import ENTRY_OVERHEAD, Closed, MemoryCache, uncharge

__all__ = ["LFUMemoryCache"]


class LFUMemoryCache(MemoryCache, kind="lfu"):
    """``MemoryCache`` with exactly the ``lfu`` policy; build it through ``MemoryCache(policy="lfu")``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._entries: Any = {}  # key -> [value (a frame with compression), how many uses]
        self._sizes: Any = {}  # key -> bytes charged, for entries whose charge cannot be recomputed
        self._buckets: dict[int, OrderedDict[Key, None]] = {}  # uses -> keys in the order they reached it
        self._min = 0  # the lowest count with a bucket; 0: work it out when a victim is needed
        self._fast = False
        self._refresh_fast()

    def _refresh_fast(self) -> None:
        # set's fast path serves values kept as they are while no entry has a deadline.
        self._fast = not self.compression and not self._expires

    _deadlines_changed = _refresh_fast

    # ------------------------------------------------------------------------------------------ order

    def _use(self, entry: list[Any], key: Key) -> None:
        """A read or an overwrite of a held key: one more use. Under the lock (get inlines this)."""
        buckets = self._buckets
        count = entry[1]
        up = count + 1
        bucket = buckets[count]
        higher = buckets.get(up)
        if higher is None and len(bucket) == 1:
            buckets[up] = buckets.pop(count)  # alone at its count, none above: the bucket moves up with it
        else:
            del bucket[key]
            if not bucket:
                del buckets[count]
            if higher is None:
                higher = buckets[up] = OrderedDict()
            higher[key] = None
        entry[1] = up
        if self._min == count and count not in buckets:
            self._min = up

    def _track(self, key: Key) -> None:
        """A new key (its entry holds one use). Under the lock."""
        bucket = self._buckets.get(1)
        if bucket is None:
            bucket = self._buckets[1] = OrderedDict()
        bucket[key] = None
        self._min = 1

    def _untrack(self, key: Key, count: int) -> None:
        """``key``, which had ``count`` uses, left. Under the lock."""
        bucket = self._buckets[count]
        del bucket[key]
        if not bucket:
            del self._buckets[count]
            if self._min == count:
                self._min = 0

    def _victim(self) -> Key:
        """The next key to evict (not removed). Under the lock; the cache holds something."""
        if not self._min:
            self._min = min(self._buckets)
        return next(iter(self._buckets[self._min]))

    def _order(self) -> list[Key]:
        return [key for count in sorted(self._buckets) for key in self._buckets[count]]

    # ----------------------------------------------------------------------------------------- reads

    def get(self, key: Key, default: Any = None) -> Any:
        """The value under ``key``, or ``default`` on a miss; an expired entry is a miss and is dropped."""
        self._lock.acquire()
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
            buckets = self._buckets
            count = entry[1]
            up = count + 1
            bucket = buckets[count]
            higher = buckets.get(up)
            if higher is None and len(bucket) == 1:
                buckets[up] = buckets.pop(count)
            else:
                del bucket[key]
                if not bucket:
                    del buckets[count]
                if higher is None:
                    higher = buckets[up] = OrderedDict()
                higher[key] = None
            entry[1] = up
            if self._min == count and count not in buckets:
                self._min = up
            self._stats.hits += 1
            value = entry[0]
        finally:
            self._lock.release()
        if self.compression and type(value) is memoryview:  # an encoded frame; see MemoryCache._encode
            return codecs.decode(value, allow_pickle=self.allow_pickle)
        return value

    def _touch(self, key: Key) -> None:
        self._use(self._entries[key], key)

    def _peek_raw(self, key: Key, default: Any) -> Any:
        entry = self._entries.get(key)
        return default if entry is None else entry[0]

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
        if type(key) is str and type(value) is bytes and ttl is None and (n := len(key)) <= MAX_KEY_BYTES and key.isascii():
            # The fast path: a new key, bytes under an ASCII key (its charge is recomputed when it leaves, so
            # no record is kept), no ttl, no deadline held (so nothing is expired), no compression.
            need = n + len(value) + ENTRY_OVERHEAD
            if need <= self.max_bytes:
                self._lock.acquire()  # not `with`: on 3.11 that costs twice as much
                try:
                    entries = self._entries
                    if self._fast and key not in entries:
                        st, buckets = self._stats, self._buckets
                        limit = self.max_bytes - need
                        if st.bytes > limit:
                            sizes = self._sizes
                            while st.bytes > limit:
                                # The victim: the first key to reach the lowest count (_victim and
                                # _untrack, inlined).
                                low = self._min or min(buckets)
                                bucket = buckets[low]
                                k = bucket.popitem(last=False)[0]
                                if bucket:
                                    self._min = low
                                else:
                                    del buckets[low]
                                    self._min = 0
                                v = entries.pop(k)[0]
                                st.bytes -= sizes.pop(k) if sizes and k in sizes else len(k) + len(v) + ENTRY_OVERHEAD
                                st.evictions += 1
                        entries[key] = [value, 1]
                        ones = buckets.get(1)
                        if ones is None:
                            ones = buckets[1] = OrderedDict()
                        ones[key] = None
                        self._min = 1
                        st.bytes += need
                        st.sets += 1
                        return
                finally:
                    self._lock.release()
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
            st.bytes -= uncharge(self._sizes, key, entry[0])
            if self._expires:
                self._expires.pop(key, None)  # its heap item goes stale: _drop_expired will not pick it
            self._use(entry, key)  # an overwrite is a use
        if st.bytes + need > self.max_bytes and self._make_room(need, now, key if entry is not None else None):
            entry = None  # the entry being overwritten was the next victim and is gone
        if entry is not None:
            entry[0] = value
        else:
            entries[key] = [value, 1]
            self._track(key)
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
                self._untrack(k, self._entries.pop(k)[1])
                removed_writing = True
                continue
            self._drop(k)
            st.evictions += 1
        return removed_writing

    def _drop(self, key: Key) -> None:
        value, count = self._entries.pop(key)
        self._stats.bytes -= uncharge(self._sizes, key, value)
        self._untrack(key, count)
        self._forget_deadline(key)

    def _clear_entries(self) -> None:
        self._entries.clear()
        self._sizes.clear()
        self._buckets.clear()
        self._min = 0

    def _close_entries(self) -> None:
        self._entries = self._sizes = Closed()
        self._buckets.clear()
        self._min = 0

    def _is_closed(self) -> bool:
        return isinstance(self._entries, Closed)
