"""LRUMap: the ordered map behind MemoryCache's ``lru`` policy, on cachebox's Rust LRU table.

Why not ``OrderedDict``: an exact LRU in Python pays ``move_to_end`` on every hit, whose linked-list relinking
misses the CPU cache on large tables; with 100k keys that alone kept MemoryCache's get-hit near 0.8x of
cachetools. cachebox (a maintained Rust library made for exactly this) updates the order inside one locked
native call, so a hit is one call and needs no lock of ours.

Only the slice of ``OrderedDict`` that MemoryCache uses is offered, with its semantics: ``map[key]``, ``in`` and
``get`` never change the order (cachebox's ``peek``); ``touch_get`` reads *and* makes the key most recently used;
``popitem(last=False)`` removes the least recently used; iteration runs least to most recently used.

The table can also enforce a byte bound itself (``LRUMap(max_bytes, getsizeof)``): every insert is charged
``getsizeof(key, value)`` (cachebox calls it once per insert and remembers the charge per entry), the least
recently used entries are evicted until the new one fits, and ``size()`` is the sum of the charges held.
That lets MemoryCache's lru fast path evict inside one native call instead of a Python loop.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Any

import cachebox

__all__ = ["LRUMap"]

_ABSENT: Any = object()


class LRUMap:
    """An LRU-ordered map: reads through ``touch_get`` promote, everything else leaves the order alone."""

    __slots__ = ("_table", "touch_get", "peek", "insert", "pop_lru", "size")

    def __init__(self, max_bytes: int = 0, getsizeof: Callable[[Any, Any], int] | None = None) -> None:
        # max_bytes 0: no bound; getsizeof None: every entry is charged 1.
        self._table: cachebox.LRUCache[Hashable, Any] = cachebox.LRUCache(max_bytes, getsizeof=getsizeof)
        # The hot paths call these native methods directly (no Python frame in between):
        #: ``touch_get(key, default)``: the value (now most recently used) or ``default``.
        self.touch_get = self._table.get
        #: ``peek(key, default)``: the value or ``default``, order unchanged.
        self.peek = self._table.peek
        #: ``insert(key, value)``: store; the key becomes most recently used.
        self.insert = self._table.insert
        #: ``pop_lru()``: remove and return the least recently used ``(key, value)``; KeyError when empty.
        self.pop_lru = self._table.popitem
        #: ``size()``: the charges of the entries held, in bytes.
        self.size = self._table.current_size

    @property
    def table(self) -> cachebox.LRUCache[Hashable, Any]:
        """The native table, for hot paths that call ``len`` and ``insert`` on it directly."""
        return self._table

    def __getitem__(self, key: Hashable) -> Any:
        value = self._table.peek(key, _ABSENT)
        if value is _ABSENT:
            raise KeyError(key)
        return value

    def get(self, key: Hashable, default: Any = None) -> Any:
        return self._table.peek(key, default)

    def __setitem__(self, key: Hashable, value: Any) -> None:
        self._table.insert(key, value)  # new or overwritten keys become most recently used

    def __delitem__(self, key: Hashable) -> None:
        self._table.pop(key)

    def pop(self, key: Hashable, *default: Any) -> Any:
        return self._table.pop(key, *default)

    def __contains__(self, key: object) -> bool:
        return self._table.peek(key, _ABSENT) is not _ABSENT  # cachebox's own `contains` promotes

    def __len__(self) -> int:
        return len(self._table)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(list(self._table.keys()))

    def first(self) -> Hashable:
        """The least recently used key (KeyError when empty), without changing the order."""
        if not len(self._table):
            raise KeyError("first(): the map is empty")
        return self._table.least_recently_used()

    def move_to_end(self, key: Hashable) -> None:
        """Make ``key`` the most recently used; KeyError if it is not there."""
        if self._table.get(key, _ABSENT) is _ABSENT:
            raise KeyError(key)

    def popitem(self, last: bool = True) -> tuple[Hashable, Any]:
        """Remove and return the least recently used item (``last=False``, as OrderedDict spells it)."""
        if last:
            raise NotImplementedError("LRUMap only pops the least recently used item: popitem(last=False).")
        return self._table.popitem()

    def clear(self) -> None:
        self._table.clear()
