"""MemoryCache: the public class, the factory that picks a strategy, and what every strategy shares.

``MemoryCache(size, policy, ...)`` builds one strategy subclass per policy, as cachetools has one class per
policy: ``LRUMemoryCache`` (``_lru.py``, a thin layer over cachebox's Rust LRU table), ``FIFOMemoryCache``
and ``TimeMemoryCache`` (``_ordered.py``, one ``OrderedDict``), ``LFUMemoryCache`` (``_lfu.py``) and, for a
policy object passed in (a subclass, ``TimePolicy(max_age=...)``), ``PolicyMemoryCache`` (``_policy.py``),
which asks the object for victims. Each strategy registers itself (``class X(MemoryCache, kind="lru")``).
This base class holds what they share: argument checks, charging a value, ttl deadlines, compression, the
general (locked) ``get`` and ``set``, and the methods that only look entries up (``peek``, ``in``,
``delete``, ``cleanup``, ``close``); the strategies add their fast paths and their order.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from llamahome.errors import CacheClosedError, ConfigError, ValueTooLargeError

from .. import codecs
from ..base import MAX_KEY_BYTES, Key, Store, validate_key
from ..compression import MIN_COMPRESS_BYTES
from ..policies import EvictionPolicy, FIFOPolicy, LFUPolicy, LRUPolicy, TimePolicy, make_policy
from ..sizing import key_size, sizeof
from ..stats import CacheStats, CleanupReport
from ..units import size_to_bytes
from ._mutex import Mutex

__all__ = ["MemoryCache", "ENTRY_OVERHEAD"]

#: Bytes charged per entry on top of key and value, for the bookkeeping: the table slots, the order links
#: (cachebox's native lru table, or the policy tables) and the key and value object headers. Measured 150-275
#: bytes per entry (tracemalloc for Python structures, RSS for the native lru table) for short keys and bytes
#: values; ``tests/cache/memory/test_cache.py`` keeps this figure within that range.
ENTRY_OVERHEAD = 256

ABSENT: Any = object()  # "no entry", distinct from a cached None

# Longest str key the fast paths accept without the full check (4 UTF-8 bytes per char at most).
FAST_KEY_CHARS = 64 * 1024 // 4
# With compression, bytes/str values shorter than this are stored as they are (never compressed anyway).
_RAW_BYTES = MIN_COMPRESS_BYTES
_RAW_CHARS = MIN_COMPRESS_BYTES // 4


def _parse_size(size: object) -> int:
    try:
        return size_to_bytes(size)
    except ValueError as exc:
        raise ConfigError(f"MemoryCache size: {exc}") from None


def _strategy(policy: object) -> str:
    """Which strategy class serves ``policy``: its name for the built-in policies (given by name, or as a
    fresh object of exactly that class: a subclass may change the rules), else ``"policy"``."""
    if isinstance(policy, str):
        name = policy.strip().lower()
        return name if name in MemoryCache._strategies else "policy"
    kind = type(policy)
    if kind is LRUPolicy:
        return "lru"
    if kind is FIFOPolicy:
        return "fifo"
    if kind is LFUPolicy:
        return "lfu"
    if kind is TimePolicy and policy.max_age is None:  # type: ignore[attr-defined]
        return "time"  # with max_age, entries need their write times: the general strategy keeps them
    return "policy"


def uncharge(sizes: dict[Key, int], key: Key, value: Any) -> int:
    """The bytes an entry of a dict-based strategy was charged, forgetting its record in ``sizes``.

    A ``bytes`` value under a ``bytes`` or ASCII key (both immutable) was charged exactly
    ``len(key) + len(value) + ENTRY_OVERHEAD`` and has no record; every other entry has one.
    """
    if sizes:
        n = sizes.pop(key, None)
        if n is not None:
            return n
    return len(key) + len(value) + ENTRY_OVERHEAD


class Closed:
    """Stands in for the tables after ``close()``, so the hot paths need no "closed?" check of their own."""

    def _fail(self, *args: object) -> Any:
        raise CacheClosedError("This MemoryCache was closed; create a new one to cache again.")

    __getitem__ = __setitem__ = __delitem__ = get = pop = popitem = peek = insert = _fail
    __contains__ = __iter__ = clear = keys = _fail

    def __len__(self) -> int:
        return 0

    def current_size(self) -> int:
        return 0

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
    ``close()``. The object built is an instance of a strategy subclass chosen by ``policy``.
    """

    #: The strategy classes, by kind ("lru", "fifo", ..., "policy"); each registers itself (see the module doc).
    _strategies: ClassVar[dict[str, type[MemoryCache]]] = {}

    def __init_subclass__(cls, kind: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if kind:
            MemoryCache._strategies[kind] = cls

    def __new__(cls, size: float | str = 1000, policy: str | EvictionPolicy = "lru", *args: Any, **kwargs: Any) -> Any:
        if cls is MemoryCache:
            strategies = MemoryCache._strategies
            cls = strategies.get(_strategy(policy), strategies["policy"])
        return object.__new__(cls)

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
        self._lock = Mutex()
        self._token, self._waiters = self._lock.token, self._lock.waiters  # its inlined halves (hot paths)
        self._stats = CacheStats(name=name, max_bytes=self.max_bytes)
        self._expires: dict[Key, float] = {}  # deadlines on self._clock, for keys set with a ttl only
        self._heap: list[tuple[float, int, Key]] = []  # (deadline, seq, key); stale items skipped lazily
        self._seq = itertools.count()
        self._max_age = self.policy.max_age if isinstance(self.policy, TimePolicy) else None
        # The largest charge the strategies' fast sets take: one comparison then checks both bounds, the entry
        # fits the tier and (as len(key) < charge) the key is within MAX_KEY_BYTES; a larger entry takes the
        # general path, which checks each. On that path every check costs: together they were a fifth of an
        # evicting lru set.
        self._fast_limit = min(self.max_bytes, MAX_KEY_BYTES)
        # Hits counted without our lock (the strategies' fast gets): next() on an itertools.count is atomic.
        self._hits = itertools.count()
        self._last_count = -1  # what the last fold read from it

    # ------------------------------------------------------------------------------ what strategies provide

    def _peek_raw(self, key: Key, default: Any) -> Any:
        """The stored value (a frame with compression) or ``default``; no order change. Under the lock."""
        raise NotImplementedError

    def _drop(self, key: Key) -> None:
        """Remove a held ``key`` with its bytes, order and deadline. Under the lock."""
        raise NotImplementedError

    def _fold_stats(self) -> None:
        """Bring ``self._stats`` up to date before it is read. Under the lock."""
        raise NotImplementedError

    def _clear_entries(self) -> None:
        """Forget every entry, its order and its charge. Under the lock."""
        raise NotImplementedError

    def _close_entries(self) -> None:
        """Put :class:`Closed` stand-ins where the entries were. Under the lock."""
        raise NotImplementedError

    def _is_closed(self) -> bool:
        raise NotImplementedError

    def _keys(self) -> list[Key]:
        """The keys held (expired ones not yet dropped included). Under the lock."""
        raise NotImplementedError

    def _order(self) -> list[Key]:
        """The keys held in eviction order, next victim first. Under the lock."""
        raise NotImplementedError

    def _touch(self, key: Key) -> None:
        """A read hit on a held ``key``: what it does to the order. Under the lock."""
        raise NotImplementedError

    def _set_locked(
        self, key: Key, value: Any, need: int, ttl: float | None, raw: int, vsize: int, ksize: int
    ) -> None:
        """Store a charged entry (see :meth:`_charge`), evicting for room. Under the lock."""
        raise NotImplementedError

    def _deadlines_changed(self) -> None:
        """Called when the first deadline came or the last one left (strategies switch their fast paths on
        or off). Under the lock."""

    # ----------------------------------------------------------------------------------------- reads

    @property
    def stats(self) -> CacheStats:  # type: ignore[override]
        """Live counters and holdings (counts kept outside the lock are folded in on every read)."""
        with self._lock:
            self._fold_stats()
        return self._stats

    def get(self, key: Key, default: Any = None) -> Any:
        """The value under ``key``, or ``default`` on a miss; an expired entry is a miss and is dropped."""
        try:
            self._token.pop()  # acquire the lock (see _mutex.py)
        except IndexError:
            self._lock.wait()
        try:
            try:
                value = self._peek_raw(key, ABSENT)
            except TypeError:  # unhashable: _miss says what a key must be
                value = ABSENT
            if value is ABSENT:
                return self._miss(key, default)
            if (self._expires or self._max_age is not None) and self._expired(key):
                self._drop(key)
                self._stats.expirations += 1
                self._stats.misses += 1
                return default
            self._touch(key)
            self._stats.hits += 1
        finally:
            self._token.append(True)  # release the lock
            if self._waiters:
                self._lock.wake()
        if self.compression and type(value) is memoryview:  # an encoded frame; see _encode
            return codecs.decode(value, allow_pickle=self.allow_pickle)
        return value

    def _fold_hits(self) -> None:
        """Add the hits counted without the lock to ``stats.hits``. Under the lock."""
        # Reading the count advances it: every next() returns the hits so far plus one per earlier fold.
        count = next(self._hits)
        self._stats.hits += count - self._last_count - 1
        self._last_count = count

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
        return bool(age >= self._max_age)  # type: ignore[operator]

    def _decoded(self, value: Any) -> Any:
        if self.compression and type(value) is memoryview:  # an encoded frame; see _encode
            return codecs.decode(value, allow_pickle=self.allow_pickle)
        return value

    def peek(self, key: Key, default: Any = None) -> Any:
        """Like ``get`` but counts nothing and is not a use for the policy."""
        with self._lock:
            try:
                value = self._peek_raw(key, ABSENT)
            except TypeError:
                value = ABSENT
            if value is ABSENT:
                validate_key(key)
                return default
            if self._expired(key):
                return default
        return self._decoded(value)

    def __contains__(self, key: object) -> bool:
        """True if ``key`` holds a live value. Counts no hit or miss and is not a use; drops it if expired."""
        with self._lock:
            try:
                if self._peek_raw(key, ABSENT) is ABSENT:  # type: ignore[arg-type]
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
            return self._keys()

    def __iter__(self) -> Iterator[Key]:
        return iter(self.keys())

    def eviction_order(self) -> list[Key]:
        """Keys in the order the policy would evict them, next victim first (expired ones go before all)."""
        with self._lock:
            return self._order()

    # ----------------------------------------------------------------------------------------- writes

    def set(self, key: Key, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (None: until evicted), evicting to stay in bounds.

        A ``ttl`` of zero or less stores nothing and removes any value already there (it would be expired).
        """
        key, value, need, raw, vsize, ksize = self._charge(key, value)
        try:
            self._token.pop()  # acquire the lock (see _mutex.py)
        except IndexError:
            self._lock.wait()
        try:
            self._set_locked(key, value, need, ttl, raw, vsize, ksize)
        finally:
            self._token.append(True)  # release the lock
            if self._waiters:
                self._lock.wake()

    def _charge(self, key: Key, value: Any) -> tuple[Key, Any, int, int, int, int]:
        """``(key, what to store, bytes charged, raw size, stored value size, key size)`` for a write.

        Validates the key (a subclass becomes a plain ``str``/``bytes``), encodes with compression, and
        raises :class:`ValueTooLargeError` for an entry larger than the tier. Needs no lock.
        """
        if type(key) is str and len(key) <= FAST_KEY_CHARS and key.isascii():
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
        return key, value, need, raw, vsize, ksize

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

    def _add_deadline(self, key: Key, deadline: float) -> None:
        first = not self._expires
        self._expires[key] = deadline
        if first:
            self._deadlines_changed()
        heapq.heappush(self._heap, (deadline, next(self._seq), key))
        if len(self._heap) > 64 and len(self._heap) > 2 * len(self._expires):
            # Rewritten, deleted and evicted keys leave stale heap items; rebuild before they pile up.
            self._heap = [item for item in self._heap if self._expires.get(item[2]) == item[0]]
            heapq.heapify(self._heap)

    def _forget_deadline(self, key: Key) -> None:
        """``key`` left: drop its deadline (its heap item goes stale). Under the lock."""
        if self._expires:
            self._expires.pop(key, None)
            if not self._expires:
                self._deadlines_changed()

    def _drop_expired(self, now: float, limit: int | None = None) -> int:
        """Drop entries whose deadline is at or before ``now``, soonest first, while ``stats.bytes`` is over
        ``limit`` (None: all of them); how many left. Under the lock."""
        heap, expires, st = self._heap, self._expires, self._stats
        dropped = 0
        while heap and heap[0][0] <= now and (limit is None or st.bytes > limit):
            deadline, _, k = heapq.heappop(heap)
            if expires.get(k) == deadline:
                self._drop(k)
                dropped += 1
        return dropped

    def delete(self, key: Key) -> bool:
        """Remove ``key``; True if a live value was there (an expired one counts as an expiration instead)."""
        with self._lock:
            try:
                present = self._peek_raw(key, ABSENT) is not ABSENT
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
            self._clear_entries()
            self._expires.clear()
            self._heap.clear()
            self.policy.clear()
            self._stats.bytes = 0
            self._deadlines_changed()

    def cleanup(self) -> CleanupReport:
        """Drop every expired entry (and, with ``TimePolicy(max_age=...)``, every stale one); report them."""
        report = CleanupReport(cache=self.name)
        with self._lock:
            if self._is_closed():
                return report
            self._fold_stats()
            before = self._stats.bytes
            report.expired = self._cleanup_expired(self._clock())
            self._stats.expirations += report.expired
            report.bytes_freed = before - self._stats.bytes
        return report

    def _cleanup_expired(self, now: float) -> int:
        """Drop what ``cleanup`` drops; how many. Under the lock."""
        return self._drop_expired(now)

    def close(self) -> None:
        """Drop every entry and refuse further use (``CacheClosedError``). Idempotent; stats stay readable."""
        with self._lock:
            if self._is_closed():
                return
            self._fold_stats()
            self._close_entries()
            self._expires, self._heap = {}, []
            self.policy.clear()
            self._stats.bytes = 0
            self._stats.entries = 0

    def __repr__(self) -> str:
        with self._lock:
            self._fold_stats()
            entries, held = self._stats.entries, self._stats.bytes
        return f"<MemoryCache {self.name!r} {self.policy.name} {entries} entries, {held:,}/{self.max_bytes:,} bytes>"
