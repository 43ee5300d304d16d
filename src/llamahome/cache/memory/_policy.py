"""PolicyMemoryCache: ``MemoryCache`` for every policy but plain ``lru`` (``lfu``, ``fifo``, ``time``, objects).

Entries live in a dict; the policy object (:mod:`llamahome.cache.policies`) keeps the order and names the
victims, and this class drops expired entries before asking it. Charges are kept in a dict too, except for a
``bytes`` value under a ``bytes`` or ASCII key (both immutable), whose charge is recomputed when it leaves.
"""

from __future__ import annotations

from typing import Any, cast

from ..base import Key, validate_ttl
from ..policies import TimePolicy
from ._cache import ENTRY_OVERHEAD, Closed, MemoryCache

__all__ = ["PolicyMemoryCache"]


class PolicyMemoryCache(MemoryCache, kind="policy"):
    """``MemoryCache`` driven by a policy object; build it through ``MemoryCache(policy=...)``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._data: Any = {}  # key -> value (a frame with compression)
        self._sizes: Any = {}  # key -> bytes charged, for entries whose charge cannot be recomputed
        self._needs_now = isinstance(self.policy, TimePolicy)
        self._reads_matter = self.policy.reads_matter

    # ----------------------------------------------------------------------------------------- reads

    def _touch(self, key: Key) -> None:
        if self._reads_matter:  # a read changes nothing for fifo and time
            self.policy.access(key)

    def _peek_raw(self, key: Key, default: Any) -> Any:
        return self._data.get(key, default)

    def _fold_stats(self) -> None:
        self._stats.entries = len(self._data)

    def _keys(self) -> list[Key]:
        return list(self._data)

    def _order(self) -> list[Key]:
        return list(self.policy)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._data)

    # ----------------------------------------------------------------------------------------- writes

    def _set_locked(
        self, key: Key, value: Any, need: int, ttl: float | None, raw: int, vsize: int, ksize: int
    ) -> None:
        st, data = self._stats, self._data
        ttl = validate_ttl(ttl)
        now = self._clock() if (ttl is not None or self._expires or self._needs_now) else 0.0
        st.sets += 1
        if ttl is not None and not ttl > 0:
            if key in data:
                self._drop(key)
            return
        existing = key in data
        if existing:
            st.bytes -= self._uncharge(key, data[key])
            if self._expires:
                self._expires.pop(key, None)
            self.policy.update(key, now)
        if st.bytes + need > self.max_bytes and self._make_room(need, now, key if existing else None):
            existing = False  # the entry being overwritten was the policy's victim and is gone
        data[key] = value
        if type(value) is not bytes or ksize != len(key):
            self._sizes[key] = need
        if not existing:
            self.policy.insert(key, now)
        st.bytes += need
        if raw:
            st.raw_bytes += raw
            st.stored_bytes += vsize
        if ttl is not None:
            self._add_deadline(key, now + ttl)

    def _uncharge(self, key: Key, value: Any) -> int:
        """The bytes an entry was charged, forgetting its record. Under the lock.

        A ``bytes`` value under a ``bytes`` or ASCII key (both immutable) was charged exactly
        ``len(key) + len(value) + ENTRY_OVERHEAD`` and has no record; every other entry has one.
        """
        if self._sizes:
            n = self._sizes.pop(key, None)
            if n is not None:
                return int(n)
        return len(key) + len(value) + ENTRY_OVERHEAD

    def _make_room(self, need: int, now: float, writing: Key | None) -> bool:
        """Drop expired entries, then victims, until ``need`` more bytes fit. Under the lock.

        Returns True if ``writing`` (the key being overwritten, already uncharged) was the policy's victim
        and left.
        """
        st = self._stats
        limit = self.max_bytes - need
        # Expired entries are worth nothing: they go before any live entry, soonest deadline first.
        st.expirations += self._drop_expired(now, limit)
        removed_writing = False
        while st.bytes > limit:
            # The policy only ever holds keys this cache validated and inserted.
            k = cast(Key, self.policy.victim())
            if k == writing and not removed_writing:
                # Overwriting the next victim: its old value is already uncharged, so the old entry just
                # leaves (not an eviction) and the new value comes in as a fresh insert.
                del self._data[k]
                self.policy.remove(k)
                removed_writing = True
                continue
            self._drop(k)
            st.evictions += 1
        return removed_writing

    def _drop(self, key: Key) -> None:
        self._stats.bytes -= self._uncharge(key, self._data.pop(key))
        self.policy.remove(key)
        self._forget_deadline(key)

    def _cleanup_expired(self, now: float) -> int:
        dropped = self._drop_expired(now)
        if isinstance(self.policy, TimePolicy):
            for k in cast("list[Key]", self.policy.stale(now)):
                self._drop(k)
                dropped += 1
        return dropped

    def _clear_entries(self) -> None:
        self._data.clear()
        self._sizes.clear()

    def _close_entries(self) -> None:
        self._data = self._sizes = Closed()

    def _is_closed(self) -> bool:
        return isinstance(self._data, Closed)
