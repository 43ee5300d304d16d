"""MemoryCache: the in-process tier, byte-bounded, with eviction policies, per-key ttl and honest stats.

    from llamahome.cache import MemoryCache

    cache = MemoryCache(size=512, policy="lru")      # 512 MB (MiB); "512MB", "1.5GiB" work too
    cache.set("prompt:1", {"text": "hello"}, ttl=60)
    cache.get("prompt:1")                            # {'text': 'hello'}
    cache.stats.hit_rate, cache.stats.bytes, cache.stats.evictions

What the bound counts (``stats.bytes``, never above ``stats.max_bytes``): for every entry, the key's size
(UTF-8 length), the value's size (see :mod:`llamahome.cache.sizing`: bytes length, numpy/torch ``nbytes``,
containers recursively) and :data:`ENTRY_OVERHEAD` bytes for the bookkeeping (hash-table slots, order links,
object headers). A value that cannot fit in the whole tier raises :class:`~llamahome.errors.ValueTooLargeError`
and leaves the cache untouched.

Values are kept by reference, as in ``cachetools`` and ``functools.lru_cache``: mutate an object you stored or
got back and the cached one changes too. With ``compression=True`` values are kept as encoded frames
(:func:`llamahome.cache.codecs.encode`, zstd where it pays) and decoded on every ``get``, so the cache holds
its own copy and charges the encoded size; only the safe codec types are accepted then (or pickle with
``allow_pickle=True``), and uncompressed arrays come back as read-only zero-copy views of the frame. Short
``bytes``/``str`` values (under the codecs' compression threshold) are kept as they are: they are immutable,
so they need no copy, and a frame would only add 64 bytes and an encode/decode per use.

Why there is a fast path: LRU get-hits and evicting sets are the hot path of an inference cache, and here
they must cost well under cachetools' time while counting stats exactly. So with ``policy="lru"``, no ttl
deadline held and no compression, ``get`` and ``set`` run a short path: the values live in an
:class:`~llamahome.cache.lru_map.LRUMap` (cachebox's Rust LRU table) whose order *is* the LRU order (a hit
promotes inside one native call, so ``get`` takes no lock of ours; evictions pop the least recently used),
implementing exactly :class:`~llamahome.cache.policies.LRUPolicy`'s rules (``tests/cache/test_memory.py``
checks the two agree on random workloads). Everything else (ttl, other
policies, an ``LRUPolicy`` subclass passed in, compression) takes the general path through the policy object.
Second trick: for lru the native table also keeps the byte bound. Each insert hands it the entry's charge
(``self._charge[0]``, set just before the insert and read by cachebox's ``getsizeof`` hook, which remembers it
per entry), so an evicting write is one native call that drops least recently used entries until the new
one fits; evictions are counted from the table's length before and after, and ``stats.bytes`` is the
table's sum of charges (``LRUMap.size()``, folded in whenever ``stats`` is read), so no size records are
kept for lru. The general path (compression, ttl) lets the table evict too while no deadline is held; with
deadlines held it makes room itself (expired entries first, each victim's deadline with it) before it
inserts, so then the table never evicts on its own. Other policies keep the charges in a dict, except for
a ``bytes`` value under a ``bytes`` or ASCII key (both immutable), whose charge is recomputed when it leaves.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

from llamahome.errors import CacheClosedError, ConfigError, ValueTooLargeError

from . import codecs
from .base import Key, Store, validate_key, validate_ttl
from .lru_map import LRUMap
from .compression import MIN_COMPRESS_BYTES
from .policies import EvictionPolicy, LRUPolicy, TimePolicy, make_policy
from .sizing import key_size, sizeof
from .stats import CacheStats, CleanupReport
from .units import size_to_bytes

__all__ = ["MemoryCache", "ENTRY_OVERHEAD"]

#: Bytes charged per entry on top of key and value, for the bookkeeping: the table slots, the order links
#: (the LRUMap's native table, or the policy tables) and the key and value object headers. Measured 150-275
#: bytes per entry (tracemalloc for Python structures, RSS for the native lru table) for short keys and bytes
#: values; ``tests/cache/test_memory.py`` keeps this figure within that range.
ENTRY_OVERHEAD = 256

_ABSENT: Any = object()  # "no entry", distinct from a cached None

# Longest str key the fast path accepts without the full check (4 UTF-8 bytes per char at most).
_FAST_KEY_CHARS = 64 * 1024 // 4
# With compression, bytes/str values shorter than this are stored as they are (never compressed anyway).
_RAW_BYTES = MIN_COMPRESS_BYTES
_RAW_CHARS = MIN_COMPRESS_BYTES // 4


def _parse_size(size: object) -> int:
    try:
        return size_to_bytes(size)
    except ValueError as exc:
        raise ConfigError(f"MemoryCache size: {exc}") from None


def _keeps_no_order(key: Key, default: Any = None) -> Any:
    """Stand-in for ``LRUMap.touch_get`` where the entries keep no lru order (never called)."""
    raise TypeError("This store keeps no lru order.")


class _Closed:
    """Stands in for the tables after ``close()``, so the hot paths need no "closed?" check of their own."""

    def _fail(self, *args: object) -> Any:
        raise CacheClosedError("This MemoryCache was closed; create a new one to cache again.")

    __getitem__ = __setitem__ = __delitem__ = get = pop = popitem = move_to_end = _fail
    touch_get = peek = insert = pop_lru = first = _fail
    __contains__ = __iter__ = clear = _fail

    def __len__(self) -> int:
        return 0

    def size(self) -> int:
        return 0

    current_size = size

    def __bool__(self) -> bool:
        return False


class MemoryCache(Store):
    """A thread-safe, byte-bounded in-memory store.

    Args:
        size: the bound in megabytes (1 MB = 1 MiB), or a string with a unit (``"512KB"``, ``"4GB"``).
        policy: ``"lru"``, ``"lfu"``, ``"fifo"``, ``"time"`` or an :class:`EvictionPolicy` instance
            (e.g. ``TimePolicy(max_age=3600)``: entries older than that are misses, and ``cleanup()`` drops them).
        compression: keep values as encoded, zstd-compressed-where-it-pays frames (a private copy).
        clock: seconds as a float; ``ttl`` deadlines and the ``time`` policy read it (inject one in tests).
        allow_pickle: with ``compression``, let values the safe codecs cannot express fall back to pickle.
        name: the name used in stats and metrics.

    ``set`` raises :class:`ValueTooLargeError` for a value larger than the whole tier; every method raises
    :class:`CacheKeyError` for keys that are not ``str``/``bytes`` and :class:`CacheClosedError` after
    ``close()``.
    """

    def __init__(
        self,
        size: float | str = 1000,
        policy: str | EvictionPolicy = "lru",
        compression: bool = False,
        *,
        clock: Callable[[], float] = time.monotonic,
        allow_pickle: bool = False,
        name: str = "memory",
    ) -> None:
        self.name = name
        self.max_bytes = _parse_size(size)
        self.policy = make_policy(policy)
        if len(self.policy):
            raise ConfigError("Pass MemoryCache a fresh policy object; this one already tracks keys.")
        self.compression = bool(compression)
        self.allow_pickle = bool(allow_pickle)
        self._clock = clock
        self._lock = threading.Lock()
        self._stats = CacheStats(name=name, max_bytes=self.max_bytes)
        # Exactly LRUPolicy (not a subclass, which may change the rules) keeps its order in self._data.
        self._lru = type(self.policy) is LRUPolicy
        # lru: what the next insert is charged, set just before it under the lock. A one-item list, not an
        # attribute: the hook must not hold `self`, or cache and table would keep each other alive.
        self._charge = charge = [0]
        # cachebox's getsizeof hook returns that charge (a closure: cheaper to call than a bound method).
        lru_map = LRUMap(self.max_bytes, lambda key, value: charge[0]) if self._lru else None
        # key -> value; for lru in LRU order, and the native table there also holds the charges and the bound.
        self._data: Any = lru_map if lru_map is not None else {}
        self._table: Any = lru_map.table if lru_map is not None else None  # lru's native table (the fast path's)
        self._none_held = False  # lru: a None value may be held (then insert's return cannot tell new keys)
        self._sizes: Any = {}  # not lru: key -> bytes charged, for entries whose charge cannot be recomputed
        self._expires: dict[Key, float] = {}  # deadlines on self._clock, for keys set with a ttl only
        self._heap: list[tuple[float, int, Key]] = []  # (deadline, seq, key); stale items skipped lazily
        self._seq = itertools.count()
        self._needs_now = isinstance(self.policy, TimePolicy)
        self._max_age = self.policy.max_age if isinstance(self.policy, TimePolicy) else None
        # What a read hit does to a non-lru order: nothing for fifo/time, so get skips the call.
        self._touch: Callable[[Key], None] | None = (
            self.policy.access if (not self._lru and self.policy.reads_matter) else None
        )
        self._lockfree_hits = itertools.count()  # hits counted by get's lock-free path
        self._count_lockfree_hit = self._lockfree_hits.__next__
        # Only the lru fast path calls it; other orders get a stand-in that is never reached.
        self._touch_get: Callable[[Key, Any], Any] = (
            self._data.touch_get if isinstance(self._data, LRUMap) else _keeps_no_order
        )
        self._lockfree_hits_folded = 0  # how many of those are already in self._stats.hits
        self._fast = False
        self._refresh_fast()

    def _refresh_fast(self) -> None:
        # The fast paths serve lru without compression while no entry has a deadline.
        self._fast = self._lru and not self.compression and not self._expires

    # ------------------------------------------------------------------------------------------ reads

    @property
    def stats(self) -> CacheStats:  # type: ignore[override]
        """Live counters and holdings (``entries``, lru's ``bytes`` and lock-free hits are folded in on every read)."""
        with self._lock:
            # repr(count) is "count(N)": the only way to read an itertools.count without advancing it.
            counted = int(repr(self._lockfree_hits)[6:-1])
            self._stats.hits += counted - self._lockfree_hits_folded
            self._lockfree_hits_folded = counted
            self._stats.entries = len(self._data)
            if self._lru:
                self._stats.bytes = self._data.size()  # the fast path leaves the count to the table
        return self._stats

    def get(self, key: Key, default: Any = None) -> Any:
        """The value under ``key``, or ``default`` on a miss; an expired entry is a miss and is dropped."""
        # The hot path (lru, no compression, no deadline held) takes no lock of ours: the lookup and the LRU
        # update are one native call that holds the table's own lock (LRUMap.touch_get), and the hit counter
        # is an itertools.count (atomic; folded into stats under our lock whenever stats are read). Keys are
        # not validated on a hit: only validated keys ever get in; a miss validates the key on the locked
        # path (an unhashable key raises TypeError here and lands there too).
        # Only exact str/bytes keys take it: their hashing and comparison run no Python code while the
        # table's lock is held (a str subclass may override __eq__; that key takes the locked path).
        if self._fast and (type(key) is str or type(key) is bytes):
            value = self._touch_get(key, _ABSENT)
            if value is not _ABSENT:
                self._count_lockfree_hit()
                return value
        self._lock.acquire()
        try:
            try:
                value = self._data[key]
            except (KeyError, TypeError):
                return self._miss(key, default)
            if not self._hit(key):
                return default
        finally:
            self._lock.release()
        if self.compression and type(value) is memoryview:  # an encoded frame; see _encode
            return codecs.decode(value, allow_pickle=self.allow_pickle)
        return value

    def _hit(self, key: Key) -> bool:
        """Account a found key on the general path: False (and dropped) if it expired. Under the lock."""
        deadline = self._expires.get(key) if self._expires else None
        if (deadline is not None and deadline <= self._clock()) or (self._max_age is not None and self._too_old(key)):
            self._drop(key)
            self._stats.expirations += 1
            self._stats.misses += 1
            return False
        if self._lru:
            self._data.move_to_end(key)
        elif self._touch is not None:
            self._touch(key)
        self._stats.hits += 1
        return True

    def _miss(self, key: object, default: Any) -> Any:
        validate_key(key)  # a bad key is an error, not a miss
        self._stats.misses += 1
        return default

    def _expired(self, key: Key) -> bool:
        """Past its ttl, or older than ``TimePolicy(max_age=...)``. Under the lock."""
        deadline = self._expires.get(key) if self._expires else None
        if deadline is not None and deadline <= self._clock():
            return True
        return self._max_age is not None and self._too_old(key)

    def _too_old(self, key: Key) -> bool:
        age = self.policy.age(key, self._clock())  # type: ignore[attr-defined]
        return bool(age >= self._max_age)

    def peek(self, key: Key, default: Any = None) -> Any:
        """Like ``get`` but counts nothing and is not a use for the policy."""
        with self._lock:
            try:
                value = self._data[key]
            except (KeyError, TypeError):
                validate_key(key)
                return default
            if self._expired(key):
                return default
        if self.compression and type(value) is memoryview:
            return codecs.decode(value, allow_pickle=self.allow_pickle)
        return value

    def __contains__(self, key: object) -> bool:
        """True if ``key`` holds a live value. Counts no hit or miss and is not a use; drops it if expired."""
        with self._lock:
            try:
                if key not in self._data:
                    return False
            except TypeError:
                return False
            if self._expired(key):  # type: ignore[arg-type]
                self._drop(key)  # type: ignore[arg-type]
                self._stats.expirations += 1
                return False
            return True

    def keys(self) -> list[Key]:
        """A snapshot of the keys held (expired ones not yet dropped included), in no promised order."""
        with self._lock:
            return list(self._data)

    def __iter__(self) -> Iterator[Key]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._data)

    def eviction_order(self) -> list[Key]:
        """Keys in the order the policy would evict them, next victim first (expired ones go before all)."""
        with self._lock:
            return list(self._data) if self._lru else list(self.policy)  # type: ignore[arg-type]

    # ----------------------------------------------------------------------------------------- writes

    def set(self, key: Key, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (None: until evicted), evicting to stay in bounds.

        A ``ttl`` of zero or less stores nothing and removes any value already there (it would be expired).
        """
        if type(key) is str and len(key) <= _FAST_KEY_CHARS and key.isascii():
            ksize = len(key)
        else:
            key = validate_key(key)
            ksize = key_size(key)
        raw = 0
        if self.compression:
            value, vsize, raw = self._encode(value)
        elif type(value) is bytes:
            vsize = len(value)
        else:
            vsize = sizeof(value)
        need = vsize + ksize + ENTRY_OVERHEAD
        if need > self.max_bytes:
            raise ValueTooLargeError(
                f"A value of {vsize:,} bytes (plus key and {ENTRY_OVERHEAD} bytes of bookkeeping) cannot fit in "
                f"the {self.name!r} memory tier of {self.max_bytes:,} bytes; raise its size or keep the value "
                "on disk."
            )
        self._lock.acquire()
        try:
            if ttl is not None or not self._fast:
                self._set_general(key, value, need, ttl, raw, vsize, ksize)
                return
            # LRU fast path: LRUPolicy's rules inside one native insert (a write moves the key to the
            # back, then victims come off the front until `need` fits; never the key itself, as need <=
            # max_bytes) and no deadline anywhere to honour first. stats.bytes is read from the table.
            table = self._table
            held = len(table)
            self._charge[0] = need
            if self._none_held:  # a held None makes insert's "no old value" ambiguous
                new = table.peek(key, _ABSENT) is _ABSENT
                table.insert(key, value)
            else:
                new = table.insert(key, value) is None
            if value is None:
                self._none_held = True
            st = self._stats
            st.evictions += held + new - len(table)
            st.sets += 1
        finally:
            self._lock.release()

    def _encode(self, value: Any) -> tuple[Any, int, int]:
        """With compression: (what to store, its size, the raw size). Frames are stored as memoryviews, so
        ``get`` tells them from short ``bytes``/``str`` values kept as they are."""
        kind = type(value)
        if (kind is bytes and len(value) < _RAW_BYTES) or (kind is str and len(value) < _RAW_CHARS):
            size = sizeof(value)
            return value, size, size
        encoded = codecs.encode_parts(value, compress=True, allow_pickle=self.allow_pickle)
        frame = encoded.to_bytes()
        return memoryview(frame), len(frame), encoded.raw_size

    def _uncharge(self, key: Key, value: Any) -> int:
        """The bytes an entry was charged, forgetting its record. Under the lock.

        Policies other than lru only (lru's table keeps the charges). A ``bytes`` value under a ``bytes`` or
        ASCII key (both immutable) was charged exactly ``len(key) + len(value) + ENTRY_OVERHEAD`` and has no
        record; every other entry has one.
        """
        if self._sizes:
            n = self._sizes.pop(key, None)
            if n is not None:
                return int(n)
        return len(key) + len(value) + ENTRY_OVERHEAD

    def _set_general(
        self, key: Key, value: Any, need: int, ttl: float | None, raw: int, vsize: int, ksize: int
    ) -> None:
        """Every other case of ``set``: ttl deadlines, expired-first eviction, policy objects. Under the lock."""
        st = self._stats
        data = self._data
        ttl = validate_ttl(ttl)
        now = self._clock() if (ttl is not None or self._expires or self._needs_now) else 0.0
        st.sets += 1
        if ttl is not None and not ttl > 0:
            if key in data:
                self._drop(key)
            return
        if self._lru:
            self._set_lru(key, value, need, now)
        else:
            self._set_policy(key, value, need, now, ksize)
        if raw:
            st.raw_bytes += raw
            st.stored_bytes += vsize
        if ttl is not None:
            self._add_deadline(key, now + ttl)
        self._refresh_fast()

    def _set_lru(self, key: Key, value: Any, need: int, now: float) -> None:
        """The general path's write for lru (compression, ttl). Under the lock."""
        table, st = self._table, self._stats
        if not self._expires:
            # No deadline held, so nothing is expired: the table evicts as on the fast path.
            held = len(table)
            self._charge[0] = need
            if self._none_held:
                new = table.peek(key, _ABSENT) is _ABSENT
                table.insert(key, value)
            else:
                new = table.insert(key, value) is None
            st.evictions += held + new - len(table)
        else:
            # Expired entries must leave before live ones, and a victim's deadline with it: room is made
            # here, so the table never evicts on its own. The old value leaves first; the new one comes in
            # as most recently used, where a write moves a key.
            if table.pop(key, _ABSENT) is not _ABSENT:
                self._expires.pop(key, None)
            st.bytes = table.current_size()
            if st.bytes + need > self.max_bytes:
                self._make_room(need, now, None)
            self._charge[0] = need
            table.insert(key, value)
        if value is None:
            self._none_held = True
        st.bytes = table.current_size()

    def _set_policy(self, key: Key, value: Any, need: int, now: float, ksize: int) -> None:
        """The general path's write for the policy objects (lfu, fifo, time, ...). Under the lock."""
        data, st = self._data, self._stats
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

    def _make_room(self, need: int, now: float, writing: Key | None) -> bool:
        """Drop expired entries, then victims, until ``need`` more bytes fit. Under the lock.

        Returns True if ``writing`` (the key being overwritten, already uncharged) was the policy's victim
        and left.
        """
        st = self._stats
        limit = self.max_bytes - need
        heap = self._heap
        # Expired entries are worth nothing: they go before any live entry, soonest deadline first.
        while st.bytes > limit and heap and heap[0][0] <= now:
            deadline, _, k = heapq.heappop(heap)
            if self._expires.get(k) == deadline:
                self._drop(k)
                st.expirations += 1
        if self._lru:
            table, expires = self._table, self._expires
            while st.bytes > limit:
                victim = table.popitem()[0]  # the least recently used
                st.bytes = table.current_size()
                expires.pop(victim, None)
                st.evictions += 1
            return False
        removed_writing = False
        while st.bytes > limit:
            # The policy only ever holds keys this cache validated and inserted.
            k = cast(Key, self._data.first() if self._lru else self.policy.victim())
            if k == writing and not removed_writing:
                # Overwriting the next victim: its old value is already uncharged, so the old entry just
                # leaves (not an eviction) and the new value comes in as a fresh insert.
                del self._data[k]
                if not self._lru:
                    self.policy.remove(k)
                removed_writing = True
                continue
            self._drop(k)
            st.evictions += 1
        return removed_writing

    def _drop(self, key: Key) -> None:
        """Remove ``key`` with its bytes, order and deadline. Under the lock."""
        if self._lru:
            self._table.pop(key)
            self._stats.bytes = self._table.current_size()  # the table forgets the entry's charge with it
        else:
            self._stats.bytes -= self._uncharge(key, self._data.pop(key))
            self.policy.remove(key)
        if self._expires:
            self._expires.pop(key, None)
            if not self._expires:
                self._refresh_fast()

    def _add_deadline(self, key: Key, deadline: float) -> None:
        self._expires[key] = deadline
        heapq.heappush(self._heap, (deadline, next(self._seq), key))
        if len(self._heap) > 64 and len(self._heap) > 2 * len(self._expires):
            # Rewritten, deleted and evicted keys leave stale heap items; rebuild before they pile up.
            self._heap = [item for item in self._heap if self._expires.get(item[2]) == item[0]]
            heapq.heapify(self._heap)

    def delete(self, key: Key) -> bool:
        """Remove ``key``; True if a live value was there (an expired one counts as an expiration instead)."""
        with self._lock:
            try:
                present = key in self._data
            except TypeError:
                present = False
            if not present:
                validate_key(key)
                return False
            expired = self._expired(key)
            self._drop(key)
            if expired:
                self._stats.expirations += 1
                return False
            self._stats.deletes += 1
            return True

    def clear(self) -> None:
        """Remove every entry (counters are kept; ``stats.bytes`` and ``entries`` drop to zero)."""
        with self._lock:
            self._data.clear()
            self._sizes.clear()
            self._none_held = False
            self._expires.clear()
            self._heap.clear()
            self.policy.clear()
            self._stats.bytes = 0
            self._refresh_fast()

    def cleanup(self) -> CleanupReport:
        """Drop every expired entry (and, with ``TimePolicy(max_age=...)``, every stale one); report them."""
        report = CleanupReport(cache=self.name)
        with self._lock:
            if isinstance(self._data, _Closed):
                return report
            now = self._clock()
            if self._lru:
                self._stats.bytes = self._data.size()  # the fast path leaves the count to the table
            before = self._stats.bytes
            heap = self._heap
            while heap and heap[0][0] <= now:
                deadline, _, k = heapq.heappop(heap)
                if self._expires.get(k) == deadline:
                    self._drop(k)
                    report.expired += 1
            if isinstance(self.policy, TimePolicy):
                for k in cast("list[Key]", self.policy.stale(now)):
                    self._drop(k)
                    report.expired += 1
            self._stats.expirations += report.expired
            report.bytes_freed = before - self._stats.bytes
        return report

    def close(self) -> None:
        """Drop every entry and refuse further use (``CacheClosedError``). Idempotent; stats stay readable."""
        with self._lock:
            if isinstance(self._data, _Closed):
                return
            self._data = self._sizes = _Closed()
            if self._lru:
                self._table = self._data
            self._touch_get = self._data.get
            self._expires, self._heap = {}, []
            self.policy.clear()
            self._stats.bytes = 0

    def __repr__(self) -> str:
        held = self._data.size() if self._lru else self._stats.bytes
        return (
            f"<MemoryCache {self.name!r} {self.policy.name} {len(self._data)} entries, "
            f"{held:,}/{self.max_bytes:,} bytes>"
        )
