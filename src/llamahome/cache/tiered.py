"""TieredCache: several stores composed fastest first (memory -> disk -> network), read-through with promotion.

    from llamahome.cache import MemoryCache, DiskCache, TieredCache

    cache = TieredCache(MemoryCache(size=256), DiskCache("./cache", size=4096))
    cache.set("emb:42", vector, ttl=3600)   # written to every tier
    cache.get("emb:42")                     # memory first; a disk hit is copied up into memory
    cache.stats.hit_rate, cache.stats_by_tier()["disk"].bytes

Rules:

- **Reads** go down the tiers; a hit in a lower tier is written into every faster tier with the entry's
  remaining ttl (a store that offers ``get_with_ttl`` / ``get_many_with_ttl`` reports it; from one that does
  not, the copy gets no ttl). A copy a faster tier cannot take (too large, a write error) is skipped.
- **Writes** go through every tier, slowest first, so a failure never leaves a faster tier newer than a
  slower one. A tier too small for the value drops its old copy instead; if every tier refuses,
  :class:`ValueTooLargeError` is raised. Any other error propagates; if slower tiers already took the new
  value, the key is first removed from the failed tier and every faster one, so no tier is left serving a
  value older than a slower tier's.
- **Deletes** reach every tier. ``clear``, ``cleanup`` and ``close`` too (the tiered cache owns its tiers).
- Multi-key calls use each tier's ``get_many``/``set_many`` (one round trip or transaction per tier).
- Any :class:`Store` plugs in as a tier, a Redis store included, without changes here.

- **Several machines.** When a tier after the first can report changes made by other clients (a
  :class:`RedisCache`: its ``listen`` method), the tiers before it are this machine's local copies of it.
  A background listener drops the local copies of every key another machine sets or deletes, and drops all
  of them whenever reports may have been lost (the connection to Redis dropped or came back, at start
  included). Each key's stripe counter is bumped by such a drop as by a local write, so a read that found
  the old value in Redis just before the change does not copy it up afterwards. ``listen=False`` turns
  this off (one machine only). ``stats.invalidations`` counts the keys dropped on another machine's word.

Stats: ``stats`` counts the tiered cache's own lookups (a hit is a key found in any tier, a miss one found in
none) and writes, and sums the tiers' holdings and eviction counters; ``stats_by_tier()`` has each tier's own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from llamahome.errors import CacheError, ConfigError, ValueTooLargeError

from .base import MISSING, Key, Store, validate_key
from .stats import CacheStats, CleanupReport

__all__ = ["TieredCache"]

log = logging.getLogger("llamahome.cache.tiered")

_STRIPES = 64

_SUMMED = ("evictions", "expirations", "corrupt", "errors", "bytes", "entries", "max_bytes", "raw_bytes",
           "stored_bytes", "invalidations")
#: Longest wait, in seconds, for the invalidation listener's first subscription when the cache is built.
SUBSCRIBE_WAIT = 2.0


_live: weakref.WeakSet[TieredCache] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A stripe lock held by another thread at fork() would stay held for good in the child.
    for cache in list(_live):
        cache._stripes = [threading.Lock() for _ in range(_STRIPES)]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class TieredCache(Store):
    """Stores composed fastest first; see the module docstring for the rules."""

    def __init__(self, *stores: Store, name: str = "tiered", listen: bool = True) -> None:
        if not stores:
            raise ConfigError("TieredCache needs at least one store, fastest first: TieredCache(memory, disk).")
        for store in stores:
            if not isinstance(store, Store):
                raise ConfigError(
                    f"TieredCache tiers must be Store instances (MemoryCache, DiskCache, RedisCache, ...), "
                    f"not {type(store).__name__}."
                )
        self.tiers: tuple[Store, ...] = tuple(stores)
        self.name = name
        self._own = CacheStats(name=name)
        self._closed = False
        # Per-key-stripe locks and write counters: a read that raced with a write of the same key in this
        # process does not copy its (older) value up over the newer one.
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]
        self._versions = [0] * _STRIPES
        _live.add(self)
        # Local copies of a shared tier: dropped when another machine changes the key (see the module doc).
        self._shared = next((i for i in range(len(stores) - 1, 0, -1) if callable(getattr(stores[i], "listen", None))), 0)
        self.listener: Any = None
        if listen and self._shared:
            self.listener = stores[self._shared].listen(self._drop_local, self._drop_all_local)  # type: ignore[attr-defined]
            # Start coherent: the first subscription drops copies left from before (a disk tier from an earlier
            # run may hold values other machines have changed since). Redis down: go on without waiting long.
            self.listener.wait_subscribed(SUBSCRIBE_WAIT)

    # ------------------------------------------------------------------------------------------ reads

    def get(self, key: Key, default: Any = None) -> Any:
        validate_key(key)
        value = self._lookup(key, 0)
        return default if value is MISSING else value

    def get_below(self, key: Key, index: int, default: Any = None) -> Any:
        """Look ``key`` up in the tiers after ``tiers[index]`` only (the caller already missed the tiers up to
        it); a hit is promoted into every faster tier, ``tiers[0]`` included."""
        validate_key(key)
        value = self._lookup(key, index + 1)
        return default if value is MISSING else value

    def _lookup(self, key: Key, start: int) -> Any:
        seen: dict[int, int] = {}
        for i in range(start, len(self.tiers)):
            if i and not seen:  # taken before reading a tier whose hit would be copied up
                seen = self._versions_of([key])
            value, ttl = _get_with_ttl(self.tiers[i], key)
            if value is not MISSING:
                self._promote({key: (value, ttl)}, i, seen)
                self._own.add("hits")
                return value
        self._own.add("misses")
        return MISSING

    def get_many(self, keys: Iterable[Key]) -> dict[Key, Any]:
        """The hits among ``keys``: each tier is asked once (its multi-key call) for the keys still missing."""
        remaining = list(dict.fromkeys(validate_key(key) for key in keys))  # deduplicated, in order
        found: dict[Key, Any] = {}
        seen = self._versions_of(remaining)
        for i, tier in enumerate(self.tiers):
            if not remaining:
                break
            hits = _get_many_with_ttl(tier, remaining)
            if not hits:
                continue
            for key, (value, _) in hits.items():
                found[key] = value
            if i:
                self._promote(hits, i, seen)
            remaining = [k for k in remaining if k not in hits]
        with self._own._lock:
            self._own.hits += len(found)
            self._own.misses += len(remaining)
        return found

    def _stripe(self, key: Key | int) -> int:
        return hash(key) % _STRIPES

    def _versions_of(self, keys: Iterable[Key]) -> dict[int, int]:
        return {i: self._versions[i] for i in {self._stripe(k) for k in keys}}

    @contextlib.contextmanager
    def _writing(self, keys: Iterable[Key | int]) -> Iterator[None]:
        """Hold the stripes of ``keys`` (in a fixed order, so two writers cannot deadlock) and bump them.

        Bumped on entry and again on exit: a read that took its snapshot while the write was under way (and
        may have read a lower tier the write had not reached yet) must not copy its value up afterwards.
        """
        stripes = sorted({self._stripe(k) for k in keys})
        for i in stripes:
            self._stripes[i].acquire()
        try:
            for i in stripes:
                self._versions[i] += 1
            yield
        finally:
            for i in reversed(stripes):
                self._versions[i] += 1
                self._stripes[i].release()

    def _drop_local(self, keys: list[Key]) -> None:
        """Another machine changed ``keys``: drop this machine's copies (the listener thread calls this)."""
        with self._writing(keys):
            for tier in self.tiers[: self._shared]:
                for key in keys:
                    try:
                        tier.delete(key)
                    except CacheError as exc:
                        self._own.add("errors")
                        log.warning("Could not drop the invalidated %r from tier %r: %s", key, tier.name, exc)

    def _drop_all_local(self) -> None:
        """Reports may have been lost: drop every local copy of the shared tier's entries."""
        with self._writing(range(_STRIPES)):
            for tier in self.tiers[: self._shared]:
                try:
                    tier.clear()
                except CacheError as exc:
                    self._own.add("errors")
                    log.warning("Could not drop the local copies in tier %r: %s", tier.name, exc)

    def _promote(self, entries: Mapping[Key, tuple[Any, float | None]], found_in: int, seen: dict[int, int]) -> None:
        """Copy hits from ``tiers[found_in]`` into every faster tier, keeping each entry's remaining ttl."""
        if not found_in:
            return
        stripes = sorted({self._stripe(k) for k in entries})
        for i in stripes:
            self._stripes[i].acquire()
        try:
            # A key written since our read may have a newer value than the one we found: leave it alone.
            fresh = {k: e for k, e in entries.items() if self._versions[self._stripe(k)] == seen.get(self._stripe(k))}
            if fresh:
                self._copy_up(fresh, found_in)
        finally:
            for i in reversed(stripes):
                self._stripes[i].release()

    def _copy_up(self, entries: Mapping[Key, tuple[Any, float | None]], found_in: int) -> None:
        plain = {k: v for k, (v, ttl) in entries.items() if ttl is None}
        timed = [(k, v, ttl) for k, (v, ttl) in entries.items() if ttl is not None and ttl > 0]
        for tier in self.tiers[:found_in]:
            try:
                if len(plain) == 1:
                    ((k, v),) = plain.items()
                    tier.set(k, v)
                elif plain:
                    tier.set_many(plain)
                for k, v, ttl in timed:
                    tier.set(k, v, ttl=ttl)
            except ValueTooLargeError:
                continue  # a faster tier too small for it: it is served from below
            except CacheError as exc:
                self._own.add("errors")
                log.warning("Could not copy %d entries up into tier %r: %s", len(entries), tier.name, exc)

    def __contains__(self, key: object) -> bool:
        return any(key in tier for tier in self.tiers)

    # ------------------------------------------------------------------------------------------ writes

    def set(self, key: Key, value: Any, ttl: float | None = None) -> None:
        validate_key(key)
        with self._writing((key,)):
            self._write_through({key: value}, ttl)
        self._own.add("sets")

    def set_many(self, items: Mapping[Key, Any], ttl: float | None = None) -> None:
        for key in items:
            validate_key(key)
        if not items:
            return
        with self._writing(items):
            self._write_through(items, ttl)
        self._own.add("sets", len(items))

    def _write_through(self, items: Mapping[Key, Any], ttl: float | None) -> None:
        taken = {key: False for key in items}
        n = len(self.tiers)
        for i in range(n - 1, -1, -1):  # slowest first: a failure never leaves a faster tier newer
            tier = self.tiers[i]
            try:
                self._set_in(tier, items, ttl, taken)
            except BaseException:
                if i == n - 1:
                    raise  # nothing was written yet: every tier still agrees on the old value
                # The tiers below now hold the new value: the failed tier and the faster ones must not keep
                # serving the old one.
                for upper in self.tiers[: i + 1]:
                    for key in items:
                        try:
                            upper.delete(key)
                        except CacheError as exc:
                            log.warning("Could not remove %r from tier %r after a failed write: %s", key,
                                        upper.name, exc)
                raise
        refused = [k for k, ok in taken.items() if not ok]
        if refused:
            raise ValueTooLargeError(
                f"The value for {refused[0]!r} is larger than every tier of {self.name!r}; raise a tier's size "
                "to cache it."
            )

    @staticmethod
    def _set_in(tier: Store, items: Mapping[Key, Any], ttl: float | None, taken: dict[Key, bool]) -> None:
        try:
            if len(items) == 1:
                ((key, value),) = items.items()
                tier.set(key, value, ttl=ttl)
            else:
                tier.set_many(items, ttl=ttl)
            for key in items:
                taken[key] = True
            return
        except ValueTooLargeError:
            if len(items) == 1:
                tier.delete(next(iter(items)))  # it must not keep serving an older value
                return
        for key, value in items.items():  # find which values this tier cannot hold
            try:
                tier.set(key, value, ttl=ttl)
                taken[key] = True
            except ValueTooLargeError:
                tier.delete(key)

    def delete(self, key: Key) -> bool:
        validate_key(key)
        found = False
        first_error: BaseException | None = None
        with self._writing((key,)):
            for tier in self.tiers:
                try:
                    found = tier.delete(key) or found
                except CacheError as exc:
                    first_error = first_error or exc
        if first_error is not None:
            raise first_error
        if found:
            self._own.add("deletes")
        return found

    def clear(self) -> None:
        # Holding every stripe: a read in flight must not copy a cleared entry back up.
        with self._writing(range(_STRIPES)):
            for tier in self.tiers:
                tier.clear()

    # ------------------------------------------------------------------------------------------ upkeep

    def cleanup(self) -> CleanupReport:
        """Run every tier's cleanup; the report has one part per tier (a failing tier reports its error)."""
        parts: list[CleanupReport] = []
        for tier in self.tiers:
            try:
                parts.append(tier.cleanup())
            except CacheError as exc:
                self._own.add("errors")
                parts.append(CleanupReport(cache=tier.name, details={"error": f"{type(exc).__name__}: {exc}"}))
        return CleanupReport.combine(self.name, parts)

    @property
    def stats(self) -> CacheStats:  # type: ignore[override]
        """Own lookups and writes; holdings and eviction counters summed over the tiers."""
        parts = [tier.stats for tier in self.tiers]
        combined = CacheStats(name=self.name)
        with self._own._lock:
            for field in ("hits", "misses", "sets", "deletes"):
                setattr(combined, field, getattr(self._own, field))
            own_errors = self._own.errors
        for field in _SUMMED:
            setattr(combined, field, sum(getattr(p, field) for p in parts))
        combined.errors += own_errors
        return combined

    def stats_by_tier(self) -> dict[str, CacheStats]:
        """Each tier's own stats by tier name (a repeated name gets ``#2``, ``#3``...)."""
        out: dict[str, CacheStats] = {}
        for tier in self.tiers:
            label = tier.name
            n = 2
            while label in out:
                label = f"{tier.name}#{n}"
                n += 1
            out[label] = tier.stats
        return out

    def __len__(self) -> int:
        """Entries in the largest tier (each entry of a faster tier normally has a copy below)."""
        return max(tier.stats.entries for tier in self.tiers)

    def close(self) -> None:
        """Close every tier. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.listener is not None:
            self.listener.stop()  # before the local tiers close under it
        for tier in self.tiers:
            tier.close()

    def __repr__(self) -> str:
        return f"TieredCache({', '.join(type(t).__name__ for t in self.tiers)}, name={self.name!r})"


def _get_with_ttl(tier: Store, key: Key) -> tuple[Any, float | None]:
    method = getattr(tier, "get_with_ttl", None)
    if method is not None:
        value, ttl = method(key, MISSING)
        return value, ttl
    return tier.get(key, MISSING), None


def _get_many_with_ttl(tier: Store, keys: list[Key]) -> dict[Key, tuple[Any, float | None]]:
    method = getattr(tier, "get_many_with_ttl", None)
    if method is not None:
        return dict(method(keys))
    return {k: (v, None) for k, v in tier.get_many(keys).items()}
