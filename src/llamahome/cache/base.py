"""The one store interface every tier and typed cache implements, and key handling shared by all of them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from llamahome.errors import CacheKeyError, CacheValueError

from .stats import CacheStats, CleanupReport
from .units import shown as _shown

__all__ = ["Key", "Store", "MaintainedCache", "MISSING", "key_to_bytes", "validate_key", "validate_ttl", "MAX_KEY_BYTES"]

Key = str | bytes

#: Longest key accepted, in bytes after UTF-8 encoding. Longer keys are refused with CacheKeyError.
MAX_KEY_BYTES = 64 * 1024


class _Missing:
    """Sentinel for "no value" that cannot collide with a cached ``None``."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()


def validate_key(key: object) -> Key:
    """Return ``key`` if it is a usable key, else raise :class:`CacheKeyError` saying what is accepted."""
    if isinstance(key, str):
        if len(key) > MAX_KEY_BYTES // 4 and len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
            raise CacheKeyError(f"Cache keys are limited to {MAX_KEY_BYTES} bytes; hash long keys before caching.")
        # A subclass (an enum member, say) is stored as a plain str: its own __eq__/__hash__ never run later.
        return key if type(key) is str else str.__str__(key)
    if isinstance(key, bytes):
        if len(key) > MAX_KEY_BYTES:
            raise CacheKeyError(f"Cache keys are limited to {MAX_KEY_BYTES} bytes; hash long keys before caching.")
        return key if type(key) is bytes else bytes(memoryview(key))
    raise CacheKeyError(
        f"Cache keys must be str or bytes, not {type(key).__name__}; convert the key with str() or use "
        "llamahome.cache.memoize, which builds keys from arguments."
    )


def validate_ttl(ttl: object) -> float | None:
    """``ttl`` as float seconds (None: no expiry), else :class:`CacheValueError` saying what is accepted.

    The one ttl rule of every store: a number of seconds (int, float, or anything with ``__float__``); zero
    or less is returned as is, and stores treat it as "already expired" (nothing stored, old value gone).
    ``inf`` never expires. NaN, booleans, strings ("1h": stores take seconds; configs take "1h") and numbers
    too large for a float are refused.
    """
    if ttl is None:
        return None
    if isinstance(ttl, (bool, str, bytes)):
        raise CacheValueError(f"ttl must be a number of seconds or None, not {_shown(ttl)}.")
    try:
        seconds = float(ttl)  # type: ignore[arg-type]
    except OverflowError:
        raise CacheValueError(
            "ttl is too large to be a number of seconds; pass None for no expiry, or float('inf')."
        ) from None
    except (TypeError, ValueError):
        raise CacheValueError(f"ttl must be a number of seconds or None, not {_shown(ttl)}.") from None
    if seconds != seconds:
        raise CacheValueError("ttl must be a number of seconds or None, not nan; check how the ttl was computed.")
    return seconds


def key_to_bytes(key: Key) -> bytes:
    """A stable, type-tagged byte form of a key (``"a"`` and ``b"a"`` stay distinct), for persistent tiers."""
    if isinstance(key, str):
        return b"s" + key.encode("utf-8", "surrogatepass")
    return b"b" + key


def key_from_bytes(data: bytes) -> Key:
    """Inverse of :func:`key_to_bytes`."""
    if data[:1] == b"s":
        return data[1:].decode("utf-8", "surrogatepass")
    return bytes(data[1:])


class MaintainedCache(Protocol):
    """What the manager and the monitor use of every cache they own: a :class:`Store`, or the model cache,
    which is keyed by model name and has no get/set."""

    @property
    def name(self) -> str: ...

    @property
    def stats(self) -> CacheStats: ...

    def cleanup(self) -> CleanupReport: ...

    def close(self) -> None: ...


class Store(ABC):
    """A synchronous key-value store with a size bound, eviction, TTL and stats.

    Subclasses implement the abstract methods; the multi-key and context-manager helpers come for free
    and may be overridden where a store can do better (Redis pipelines, one SQLite transaction).
    """

    #: Short name used in stats, metrics labels and reports ("memory", "disk", "redis", ...).
    name: str = "store"
    stats: CacheStats

    @abstractmethod
    def get(self, key: Key, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default`` on a miss (expired and damaged entries are misses)."""
        raise NotImplementedError("Store.get")

    @abstractmethod
    def set(self, key: Key, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``; ``ttl`` in seconds (None: no expiry). Evicts to keep the bound."""
        raise NotImplementedError("Store.set")

    @abstractmethod
    def delete(self, key: Key) -> bool:
        """Remove ``key``; True if it was there."""
        raise NotImplementedError("Store.delete")

    @abstractmethod
    def __contains__(self, key: object) -> bool:
        raise NotImplementedError("Store.__contains__")

    @abstractmethod
    def clear(self) -> None:
        """Remove every entry."""
        raise NotImplementedError("Store.clear")

    @abstractmethod
    def cleanup(self) -> CleanupReport:
        """One maintenance pass: drop expired entries, enforce the bound, repair; report what was done."""
        raise NotImplementedError("Store.cleanup")

    def close(self) -> None:  # noqa: B027 - a no-op default on purpose: stores holding nothing need not override it
        """Release files, connections and threads. Idempotent."""

    def get_many(self, keys: Iterable[Key]) -> dict[Key, Any]:
        """The hits among ``keys`` (misses are left out)."""
        found: dict[Key, Any] = {}
        for key in keys:
            value = self.get(key, MISSING)
            if value is not MISSING:
                found[key] = value
        return found

    def set_many(self, items: Mapping[Key, Any], ttl: float | None = None) -> None:
        """Store every item of ``items`` with the same ``ttl``."""
        for key, value in items.items():
            self.set(key, value, ttl=ttl)

    def __len__(self) -> int:
        return self.stats.entries

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
