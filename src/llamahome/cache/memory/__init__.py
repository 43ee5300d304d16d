"""The in-process tier: byte-bounded, with eviction policies, per-key ttl and honest stats.

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

Inside: ``MemoryCache(...)`` builds one class per strategy, as cachetools has one class per policy.

- ``_cache.py``: ``MemoryCache`` itself (the factory, and what every strategy shares: argument checks,
  charging a value, ttl deadlines, compression, ``peek``/``in``/``delete``/``cleanup``/``close``).
- ``_lru.py``: exactly ``lru``, a thin layer over cachebox's Rust LRU table, which keeps the order and the
  byte bound itself (a get-hit and an evicting set are one native call each).
- ``_ordered.py``: ``fifo`` and ``time``, one ``OrderedDict`` in eviction order (get-hits take no lock).
- ``_lfu.py``: ``lfu``, its use counts kept inline in lazy per-count deques (a use is one append).
- ``_policy.py``: a policy object passed in: a dict of entries and the policy object from
  :mod:`llamahome.cache.policies` naming the victims.
- ``_mutex.py``: the lock every strategy takes, whose uncontended acquire/release is one ``list.pop()`` and
  one ``list.append()`` (a fifth of ``threading.Lock``'s cost on CPython 3.11).
"""

from __future__ import annotations

from ._cache import ENTRY_OVERHEAD, MemoryCache
from ._lfu import LFUMemoryCache
from ._lru import LRUMemoryCache
from ._ordered import FIFOMemoryCache, TimeMemoryCache
from ._policy import PolicyMemoryCache

__all__ = [
    "MemoryCache",
    "ENTRY_OVERHEAD",
    "LRUMemoryCache",
    "LFUMemoryCache",
    "FIFOMemoryCache",
    "TimeMemoryCache",
    "PolicyMemoryCache",
]
