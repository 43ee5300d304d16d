"""PolicyMemoryCache: ``MemoryCache`` driven by a policy object: ``lfu``, and any ``EvictionPolicy`` passed in.

Entries live in a dict; the policy object (:mod:`llamahome.cache.policies`) keeps the order and names the
victims, and this class drops expired entries before asking it. Charges are kept in a dict too, except for a
``bytes`` value under a ``bytes`` or ASCII key (both immutable), whose charge is recomputed when it leaves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from ..base import Key, validate_ttl
from ..policies import TimePolicy
from ._cache import ENTRY_OVERHEAD, Closed, MemoryCache, uncharge

__all__ = ["PolicyMemoryCache"]


class PolicyMemoryCache(MemoryCache, kind="policy"):
    """``MemoryCache`` driven by a policy object; build it through ``MemoryCache(policy=...)``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._data: Any = {}  # key -> value (a frame with compression)
        self._sizes: Any = {}  # key -> bytes charged, for entries whose charge cannot be recomputed
        self._needs_now = isinstance(self.policy, TimePolicy)
        # The policy's hooks, bound once (the hot paths call them directly). What a read hit does to the
        # order: nothing for fifo and time, so get skips the call.
        policy = self.policy
        self._access: Callable[[Key], None] | None = policy.access if policy.reads_matter else None
        # The policy only ever names keys this cache validated and inserted.
        self._victim = cast(Callable[[], Key], policy.victim)
        self._forget, self._track = policy.remove, policy.insert
        self._fast = False
        self._refresh_fast()

    def _refresh_fast(self) -> None:
        # set's fast path serves values kept as they are while no entry has a deadline.
        self._fast = not self.compression and not self._expires

    _deadlines_changed = _refresh_fast

    # ----------------------------------------------------------------------------------------- reads

    def get(self, key: Key, default: Any = None) -> Any:
        """The value under ``key``, or ``default`` on a miss; an expired entry is a miss and is dropped."""
        try:
            self._token.pop()  # acquire the lock (see _mutex.py)
        except IndexError:
            self._lock.wait()
        try:
            try:
                value = self._data[key]
            except (KeyError, TypeError):  # TypeError: unhashable; _miss says what a key must be
                return self._miss(key, default)
            if (self._expires or self._max_age is not None) and self._expired(key):
                self._drop(key)
                self._stats.expirations += 1
                self._stats.misses += 1
                return default
            if self._access is not None:
                self._access(key)
            self._stats.hits += 1
        finally:
            self._token.append(True)  # release the lock
            if self._waiters:
                self._lock.wake()
        if self.compression and type(value) is memoryview:  # an encoded frame; see MemoryCache._encode
            return self._decoded(value)
        return value

    def _touch(self, key: Key) -> None:
        if self._access is not None:
            self._access(key)

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
                    data = self._data
                    if self._fast and key not in data:
                        st = self._stats
                        now = self._clock() if self._needs_now else 0.0
                        limit = self.max_bytes - need
                        if st.bytes > limit:
                            sizes, victim, forget = self._sizes, self._victim, self._forget
                            while st.bytes > limit:
                                k = victim()
                                v = data.pop(k)
                                st.bytes -= sizes.pop(k) if sizes and k in sizes else len(k) + len(v) + ENTRY_OVERHEAD
                                forget(k)
                                st.evictions += 1
                        data[key] = value
                        self._track(key, now)
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
        now = self._clock() if (ttl is not None or self._expires or self._needs_now) else 0.0
        st.sets += 1
        if ttl is not None and not ttl > 0:
            if key in data:
                self._drop(key)
            return
        existing = key in data
        if existing:
            st.bytes -= uncharge(self._sizes, key, data[key])
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
        self._refresh_fast()  # the overwritten entry may have held the last deadline

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
        self._stats.bytes -= uncharge(self._sizes, key, self._data.pop(key))
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
