"""FIFOMemoryCache and TimeMemoryCache: ``fifo`` and ``time`` on one ``OrderedDict`` whose order is the
eviction order.

Neither policy changes the order on a read, so a get-hit needs no lock of ours: one ``OrderedDict.get`` (a C
call, atomic under the GIL) and ``next()`` on the hit counter. A write appends a new key at the back and
evicts from the front; the two policies differ only on an overwrite: ``fifo`` keeps the key's place, ``time``
(oldest write first) moves it to the back. ``TimePolicy(max_age=...)`` needs write times, so it takes the
general ``PolicyMemoryCache``. ``tests/cache/memory/test_cache.py`` checks both classes against
``PolicyMemoryCache`` driving the policy objects of :mod:`llamahome.cache.policies` (the one statement of the
rules): the same order, counts and charges on random workloads.

Charges: a ``bytes`` value under an ASCII ``str`` key (or a ``bytes`` key) was charged exactly
``len(key) + len(value) + ENTRY_OVERHEAD``, recomputed when it leaves; every other entry's charge is kept in
``_sizes``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, ClassVar

from ..base import Key, validate_ttl
from ._cache import ENTRY_OVERHEAD, Closed, MemoryCache, uncharge

__all__ = ["FIFOMemoryCache", "TimeMemoryCache"]


class _OrderedMemoryCache(MemoryCache):
    """Entries in an ``OrderedDict``, next victim first; subclasses say whether an overwrite moves a key."""

    #: True when overwriting a key makes it the last to go (``time``); False keeps its place (``fifo``).
    overwrite_moves: ClassVar[bool] = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._data: Any = OrderedDict()  # key -> value (a frame with compression), next victim first
        self._sizes: Any = {}  # key -> bytes charged, for entries whose charge cannot be recomputed
        self._fast = False
        self._refresh_fast()

    def _refresh_fast(self) -> None:
        # The fast paths serve values kept as they are while no entry has a deadline.
        self._fast = not self.compression and not self._expires

    _deadlines_changed = _refresh_fast

    # ----------------------------------------------------------------------------------------- reads

    def get(self, key: Key, default: Any = None) -> Any:
        """The value under ``key``, or ``default`` on a miss; an expired entry is a miss and is dropped."""
        # A dict lookup is safe without our lock whatever the key (CPython's dict survives a key whose __eq__
        # runs Python code); a subscript is cheaper than .get(key, default). A miss or an unhashable key
        # takes the locked path, which counts and validates it.
        try:
            value = self._data[key]
        except (KeyError, TypeError):
            return MemoryCache.get(self, key, default)
        if self._fast:
            next(self._hits)
            return value
        return MemoryCache.get(self, key, default)  # deadlines or frames: the general path, under the lock

    def _touch(self, key: Key) -> None:
        pass  # a read changes neither order

    def _peek_raw(self, key: Key, default: Any) -> Any:
        return self._data.get(key, default)

    def _fold_stats(self) -> None:
        self._fold_hits()
        self._stats.entries = len(self._data)

    def _keys(self) -> list[Key]:
        return list(self._data)

    _order = _keys

    def __len__(self) -> int:
        return len(self._data)

    # ----------------------------------------------------------------------------------------- writes

    def set(self, key: Key, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (None: until evicted), evicting to stay in bounds.

        A ``ttl`` of zero or less stores nothing and removes any value already there (it would be expired).
        """
        if ttl is None and type(value) is bytes and type(key) is str and key.isascii():
            # The fast path: a new key, bytes under an ASCII key (its charge is recomputed when it leaves, so
            # no record is kept), no ttl, no deadline held, no compression.
            need = len(key) + len(value) + ENTRY_OVERHEAD
            if need <= self._fast_limit:  # both bounds: see MemoryCache._fast_limit
                try:
                    self._token.pop()  # acquire the lock (see _mutex.py)
                except IndexError:
                    self._lock.wait()
                try:
                    data = self._data
                    if self._fast and key not in data:
                        st = self._stats
                        limit = self.max_bytes - need
                        if st.bytes > limit:
                            sizes = self._sizes
                            while st.bytes > limit:
                                k, v = data.popitem(False)
                                st.bytes -= sizes.pop(k) if sizes and k in sizes else len(k) + len(v) + ENTRY_OVERHEAD
                                st.evictions += 1
                        data[key] = value
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
        st, data = self._stats, self._data
        ttl = validate_ttl(ttl)
        st.sets += 1
        if ttl is not None and not ttl > 0:
            if key in data:
                self._drop(key)
            return
        now = self._clock() if (ttl is not None or self._expires) else 0.0
        existing = key in data
        if existing:
            st.bytes -= uncharge(self._sizes, key, data[key])
            if self._expires:
                self._expires.pop(key, None)  # its heap item goes stale: _drop_expired will not pick it
            if self.overwrite_moves:
                data.move_to_end(key)
        limit = self.max_bytes - need
        if st.bytes > limit:
            # Expired entries are worth nothing: they go before any live entry, soonest deadline first.
            st.expirations += self._drop_expired(now, limit)
            while st.bytes > limit:
                k, v = data.popitem(False)
                if k == key:
                    # Overwriting the next victim (fifo): its old value is already uncharged, so the old
                    # entry just leaves (not an eviction) and the new value comes in as a fresh insert.
                    continue
                st.bytes -= uncharge(self._sizes, k, v)
                self._forget_deadline(k)
                st.evictions += 1
        data[key] = value
        if type(value) is not bytes or ksize != len(key):
            self._sizes[key] = need
        st.bytes += need
        if raw:
            st.raw_bytes += raw
            st.stored_bytes += vsize
        if ttl is not None:
            self._add_deadline(key, now + ttl)
        self._refresh_fast()

    def _drop(self, key: Key) -> None:
        self._stats.bytes -= uncharge(self._sizes, key, self._data.pop(key))
        self._forget_deadline(key)

    def _clear_entries(self) -> None:
        self._data.clear()
        self._sizes.clear()

    def _close_entries(self) -> None:
        self._data = self._sizes = Closed()

    def _is_closed(self) -> bool:
        return isinstance(self._data, Closed)


class FIFOMemoryCache(_OrderedMemoryCache, kind="fifo"):
    """``MemoryCache(policy="fifo")``: first inserted, first evicted; reads and overwrites keep the order."""

    overwrite_moves = False


class TimeMemoryCache(_OrderedMemoryCache, kind="time"):
    """``MemoryCache(policy="time")``: oldest write first; an overwrite makes the entry the youngest."""

    overwrite_moves = True
