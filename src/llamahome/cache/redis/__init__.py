"""The Redis tier: one cache shared by many machines through Redis (standalone or Cluster), sync and async.

Entries from the network are untrusted: values go through the safe codecs only (never pickle), wrapped in an
envelope that marks them as ours and, with a shared ``secret``, signs them with HMAC-SHA256 (``_signing``).
Foreign data, bad signatures and undecodable frames are misses counted in ``stats.corrupt``, never exceptions.

Redis failing must not fail the application: every call is bounded by ``timeout`` (socket and connect
timeouts, no client-side retries), a failed ``get`` is a miss and a failed ``set`` returns False, each failure
counts in ``stats.errors``, and a circuit breaker (``_circuit``) stops calling Redis after
``failure_threshold`` consecutive failures, probing it again every ``cooldown`` seconds, so the tier heals by
itself when Redis is back. ``raise_errors=True`` turns the failures into :class:`NetworkError` instead.

Keys live under ``<namespace>:`` followed by the type-tagged key (``s`` + UTF-8 for str keys, ``b`` + bytes
for bytes keys), locks under ``<namespace>:l`` + the tagged key. The size bound is Redis' own: the operator's
``maxmemory`` and ``maxmemory-policy`` (e.g. ``allkeys-lru``); see :meth:`RedisCache.cleanup` for what the
tier counts.

Layout: ``_core`` holds :class:`BaseRedisCache`, what both clients share (keys, envelope, breaker, stats,
error policy; no I/O); ``_sync`` (:class:`RedisCache`) and ``_async`` (:class:`AsyncRedisCache`) subclass it
and make the calls; ``_signing`` is the envelope, ``_circuit`` the breaker.

    cache = RedisCache("redis://:secret@cache-host:6379/0", namespace="myapp", ttl=3600, secret="k3y")
    cache.set("prompt:1", {"text": "hello"})
    cache.get("prompt:1")
    cache.get_or_set("embedding:1", compute)    # one machine computes, the others wait and read
"""

from __future__ import annotations

from ._async import AsyncRedisCache
from ._circuit import CircuitBreaker
from ._core import DEFAULT_TIMEOUT, MAX_VALUE_BYTES
from ._sync import RedisCache

__all__ = ["AsyncRedisCache", "CircuitBreaker", "DEFAULT_TIMEOUT", "MAX_VALUE_BYTES", "RedisCache"]
