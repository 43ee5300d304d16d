"""Eviction policies: which entry a full store gives up first.

Each policy is a small, pure, synchronous object that tracks keys only (no values, no sizes, no locks): the
store tells it what happened (``insert``, ``access``, ``update``, ``remove``) and asks it for the next
``victim()``. They are the one statement of what each name means: an in-memory store uses them directly, and
a store that keeps its order elsewhere (SQL, say) implements the same rules, which the shared store contract
(``tests/cache/store_contract.py``) checks. They are not thread-safe; the store calls them under its lock.

============  ===========================================================================================
``lru``       least recently used: the entry read or written longest ago goes first.
``lfu``       least frequently used: the fewest uses (insert counts as one use, every read or overwrite as
              one more); ties go to the entry that reached its count first (oldest use among equals).
``fifo``      first in, first out: insertion order; reads and overwrites do not change it.
``time``      oldest by age first: age counts from the last write, so reads do not help and an overwrite
              makes the entry the youngest. With ``max_age``, :meth:`TimePolicy.stale` names entries past it.
============  ===========================================================================================

Expired entries (past their ``ttl``) are not the policy's business: stores drop them before asking for a
victim, whatever the policy.

    >>> p = make_policy("lru")
    >>> for k in ("a", "b", "c"):
    ...     p.insert(k)
    >>> p.access("a")
    >>> p.victim()
    'b'
"""

from __future__ import annotations

import difflib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from llamahome.errors import ConfigError

__all__ = [
    "EvictionPolicy",
    "LRUPolicy",
    "LFUPolicy",
    "FIFOPolicy",
    "TimePolicy",
    "POLICIES",
    "POLICY_NAMES",
    "policy_names",
    "make_policy",
    "Usage",
    "ORDER_KEYS",
    "ORDER_SQL",
    "eviction_order",
    "check_policy_name",
]


class EvictionPolicy:
    """Base class: tracks keys and names the next victim. Subclasses override every method below.

    Hooks, each O(1) (``LFUPolicy.remove`` may be O(distinct counts) when it empties the lowest count):

    - ``insert(key, now)``: a new key was stored (the key must not be tracked yet).
    - ``access(key, now)``: a tracked key was read (a hit).
    - ``update(key, now)``: a tracked key was overwritten.
    - ``remove(key)``: a tracked key left the store (deleted, expired or evicted).
    - ``victim()``: the key to evict next (not removed: the store calls ``remove`` once it is gone).
    - ``__iter__``: tracked keys in eviction order, next victim first.

    ``now`` is the store's clock reading; only :class:`TimePolicy` uses it.
    """

    name: str = ""

    def insert(self, key: Hashable, now: float = 0.0) -> None:
        raise NotImplementedError(f"{type(self).__name__}.insert")

    def access(self, key: Hashable, now: float = 0.0) -> None:
        raise NotImplementedError(f"{type(self).__name__}.access")

    def update(self, key: Hashable, now: float = 0.0) -> None:
        raise NotImplementedError(f"{type(self).__name__}.update")

    def remove(self, key: Hashable) -> None:
        raise NotImplementedError(f"{type(self).__name__}.remove")

    def victim(self) -> Hashable:
        """The next key to evict; raises ``KeyError`` when nothing is tracked."""
        raise NotImplementedError(f"{type(self).__name__}.victim")

    def clear(self) -> None:
        raise NotImplementedError(f"{type(self).__name__}.clear")

    def __iter__(self) -> Iterator[Hashable]:
        raise NotImplementedError(f"{type(self).__name__}.__iter__")

    def __len__(self) -> int:
        raise NotImplementedError(f"{type(self).__name__}.__len__")

    def __contains__(self, key: object) -> bool:
        raise NotImplementedError(f"{type(self).__name__}.__contains__")

    #: True when ``access`` changes the order; stores may skip calling it on reads otherwise.
    reads_matter: bool = True

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {len(self)} keys>"


class _OrderedPolicy(EvictionPolicy):
    """Keys kept in one OrderedDict, next victim first; subclasses choose which events move a key."""

    def __init__(self) -> None:
        self._order: OrderedDict[Hashable, None] = OrderedDict()

    def insert(self, key: Hashable, now: float = 0.0) -> None:
        self._order[key] = None

    def remove(self, key: Hashable) -> None:
        del self._order[key]

    def victim(self) -> Hashable:
        try:
            return next(iter(self._order))
        except StopIteration:
            raise KeyError("the policy tracks no keys, so there is nothing to evict") from None

    def clear(self) -> None:
        self._order.clear()

    def __iter__(self) -> Iterator[Hashable]:
        return iter(list(self._order))

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, key: object) -> bool:
        return key in self._order


class LRUPolicy(_OrderedPolicy):
    """Least recently used first: reads and writes move a key to the back of the line."""

    name = "lru"

    def access(self, key: Hashable, now: float = 0.0) -> None:
        self._order.move_to_end(key)

    def update(self, key: Hashable, now: float = 0.0) -> None:
        self._order.move_to_end(key)


class FIFOPolicy(_OrderedPolicy):
    """First inserted first: nothing but insertion order counts."""

    name = "fifo"
    reads_matter = False

    def access(self, key: Hashable, now: float = 0.0) -> None:
        pass

    def update(self, key: Hashable, now: float = 0.0) -> None:
        pass


class TimePolicy(_OrderedPolicy):
    """Oldest by write time first; ``max_age`` (seconds) marks entries that should go even when there is room.

    Writes arrive in clock order, so write order is age order and one OrderedDict suffices; the write times
    are kept for :meth:`stale` and :meth:`age`.
    """

    name = "time"
    reads_matter = False

    def __init__(self, max_age: float | None = None) -> None:
        super().__init__()
        if max_age is not None and not max_age > 0:
            raise ConfigError(f"max_age must be a positive number of seconds or None, not {max_age!r}.")
        self.max_age = max_age
        self._written: dict[Hashable, float] = {}

    def insert(self, key: Hashable, now: float = 0.0) -> None:
        self._order[key] = None
        self._written[key] = now

    def access(self, key: Hashable, now: float = 0.0) -> None:
        pass

    def update(self, key: Hashable, now: float = 0.0) -> None:
        self._order.move_to_end(key)
        self._written[key] = now

    def remove(self, key: Hashable) -> None:
        del self._order[key]
        del self._written[key]

    def clear(self) -> None:
        self._order.clear()
        self._written.clear()

    def age(self, key: Hashable, now: float) -> float:
        """Seconds since ``key`` was last written."""
        return now - self._written[key]

    def stale(self, now: float) -> list[Hashable]:
        """Keys older than ``max_age`` at ``now``, oldest first (empty without ``max_age``)."""
        if self.max_age is None:
            return []
        limit = now - self.max_age
        out: list[Hashable] = []
        for key in self._order:
            if self._written[key] > limit:
                break
            out.append(key)
        return out


class LFUPolicy(EvictionPolicy):
    """Fewest uses first, O(1) per event: keys sit in one bucket per use count, each bucket in arrival order."""

    name = "lfu"

    def __init__(self) -> None:
        self._count: dict[Hashable, int] = {}
        self._buckets: dict[int, OrderedDict[Hashable, None]] = {}
        self._min = 0  # lowest count with a bucket; 0 means "recompute"

    def insert(self, key: Hashable, now: float = 0.0) -> None:
        self._count[key] = 1
        bucket = self._buckets.get(1)
        if bucket is None:
            bucket = self._buckets[1] = OrderedDict()
        bucket[key] = None
        self._min = 1

    def access(self, key: Hashable, now: float = 0.0) -> None:
        count = self._count[key]
        bucket = self._buckets[count]
        del bucket[key]
        if not bucket:
            del self._buckets[count]
            if self._min == count:
                self._min = count + 1
        self._count[key] = count + 1
        nxt = self._buckets.get(count + 1)
        if nxt is None:
            nxt = self._buckets[count + 1] = OrderedDict()
        nxt[key] = None

    update = access

    def remove(self, key: Hashable) -> None:
        count = self._count.pop(key)
        bucket = self._buckets[count]
        del bucket[key]
        if not bucket:
            del self._buckets[count]
            if self._min == count:
                self._min = 0

    def victim(self) -> Hashable:
        if not self._count:
            raise KeyError("the policy tracks no keys, so there is nothing to evict")
        if self._min == 0:
            self._min = min(self._buckets)
        return next(iter(self._buckets[self._min]))

    def count(self, key: Hashable) -> int:
        """How many uses ``key`` has had."""
        return self._count[key]

    def clear(self) -> None:
        self._count.clear()
        self._buckets.clear()
        self._min = 0

    def __iter__(self) -> Iterator[Hashable]:
        return iter([k for c in sorted(self._buckets) for k in self._buckets[c]])

    def __len__(self) -> int:
        return len(self._count)

    def __contains__(self, key: object) -> bool:
        return key in self._count


#: Policy names (as in the YAML's ``type`` and ``cleanup_policy``) and their classes.
POLICIES: dict[str, Callable[[], EvictionPolicy]] = {
    "lru": LRUPolicy,
    "lfu": LFUPolicy,
    "fifo": FIFOPolicy,
    "time": TimePolicy,
}


def policy_names() -> list[str]:
    return list(POLICIES)


def make_policy(policy: str | EvictionPolicy) -> EvictionPolicy:
    """A fresh policy for a name (case-insensitive), or ``policy`` itself if it already is one.

    Unknown names raise :class:`~llamahome.errors.ConfigError` listing the accepted ones.
    """
    if isinstance(policy, EvictionPolicy):
        return policy
    if isinstance(policy, str):
        factory = POLICIES.get(policy.strip().lower())
        if factory is not None:
            return factory()
        close = difflib.get_close_matches(policy.strip().lower(), POLICIES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"Unknown eviction policy {policy!r}; use one of {', '.join(POLICIES)}.{hint}")
    raise ConfigError(
        f"An eviction policy must be a name ({', '.join(POLICIES)}) or an EvictionPolicy, "
        f"not {type(policy).__name__}."
    )


# --- Order keys: the same rules for caches that keep a usage record per entry instead of a live policy ------
#
# The model, training, system and KV caches (and the disk tier, in SQL) do not track keys in memory: each entry
# carries a usage record, and they sort records when they must evict. ORDER_KEYS is the one statement of that
# order, written to agree with the live policies above; ORDER_SQL is the disk tier's translation of it, kept
# beside it so the two cannot drift (tests/cache/test_policies.py replays one history through both).


@dataclass(frozen=True)
class Usage:
    """What a cache remembers about one entry, enough to order any policy.

    ``seq`` grows with each *new* entry (an overwrite keeps it: first-insertion order); ``written`` is the time
    of the last write; ``last_used`` of the last read or write; ``uses`` counts the write that created the
    entry plus every read and overwrite since.
    """

    seq: int
    written: float
    last_used: float
    uses: int = 1


#: Sort key per policy: the record with the smallest key is evicted first. ``seq`` breaks every tie, so the
#: order is total and the same on every run.
ORDER_KEYS: dict[str, Callable[[Usage], tuple[float, ...]]] = {
    "lru": lambda u: (u.last_used, u.seq),
    "lfu": lambda u: (u.uses, u.last_used, u.seq),
    "fifo": lambda u: (u.seq,),
    "time": lambda u: (u.written, u.seq),
}

#: ORDER_KEYS as SQL ``ORDER BY`` terms over the columns ``id`` (seq), ``created`` (written), ``accessed``
#: (last_used) and ``hits`` (uses).
ORDER_SQL: dict[str, str] = {
    "lru": "accessed, id",
    "lfu": "hits, accessed, id",
    "fifo": "id",
    "time": "created, id",
}

#: Every policy name, in the order error messages list them.
POLICY_NAMES: tuple[str, ...] = tuple(POLICIES)

UsageT = TypeVar("UsageT")


def eviction_order(items: Iterable[UsageT], policy: str, usage: Callable[[UsageT], Usage]) -> list[UsageT]:
    """``items`` sorted so that the first is evicted first under ``policy`` (a name from POLICY_NAMES)."""
    order_key = ORDER_KEYS[check_policy_name(policy)]
    return sorted(items, key=lambda item: order_key(usage(item)))


def check_policy_name(policy: object, setting: str = "policy") -> str:
    """``policy`` normalised (``" LRU "`` -> ``"lru"``), or a ConfigError naming ``setting`` and the choices."""
    name = policy.strip().lower() if isinstance(policy, str) else None
    if name in ORDER_KEYS:
        return name
    close = difflib.get_close_matches(name, POLICY_NAMES, n=1) if name else []
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"{setting}: unknown policy {policy!r}; use one of {', '.join(POLICY_NAMES)}.{hint}")
