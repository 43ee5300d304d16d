"""The network tier: one cache shared by many machines through Redis (standalone or Cluster), sync and async.

Entries from the network are untrusted: values go through the safe codecs only (never pickle), wrapped in an
envelope that marks them as ours and, with a shared ``secret``, signs them with HMAC-SHA256 (see
:mod:`llamahome.cache.signing`). Foreign data, bad signatures and undecodable frames are misses counted in
``stats.corrupt``, never exceptions.

Redis failing must not fail the application: every call is bounded by ``timeout`` (socket and connect
timeouts, no client-side retries), a failed ``get`` is a miss and a failed ``set`` returns False, each failure
counts in ``stats.errors``, and a :class:`~llamahome.cache.circuit.CircuitBreaker` stops calling Redis after
``failure_threshold`` consecutive failures, probing it again every ``cooldown`` seconds, so the tier heals by
itself when Redis is back. ``raise_errors=True`` turns the failures into :class:`NetworkError` instead.

Keys live under ``<namespace>:`` followed by the type-tagged key (``s`` + UTF-8 for str keys, ``b`` + bytes
for bytes keys), locks under ``<namespace>:l`` + the tagged key. The size bound is Redis' own: the operator's
``maxmemory`` and ``maxmemory-policy`` (e.g. ``allkeys-lru``); see :meth:`RedisCache.cleanup` for what the
tier counts.

    cache = RedisCache("redis://:secret@cache-host:6379/0", namespace="myapp", ttl=3600, secret="k3y")
    cache.set("prompt:1", {"text": "hello"})
    cache.get("prompt:1")
    cache.get_or_set("embedding:1", compute)    # one machine computes, the others wait and read
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterError,
    ConnectionError as RedisConnectionError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TimeoutError as RedisTimeoutError,
)
from redis.retry import Retry

from llamahome.errors import CacheClosedError, CacheValueError, ConfigError, NetworkError, ValueTooLargeError

from .base import MISSING, Key, Store, key_to_bytes, validate_key
from .circuit import CircuitBreaker
from .codecs import ALIGN, HEADER_SIZE, K_BYTES, K_STR, decode, encode_parts
from .codecs import _HEADER as _FRAME_HEADER
from .codecs import MAGIC as FRAME_MAGIC
from .signing import UNSIGNED, Envelope, EnvelopeError
from .stats import CacheStats, CleanupReport

__all__ = ["RedisCache", "AsyncRedisCache", "DEFAULT_TIMEOUT", "MAX_VALUE_BYTES"]

log = logging.getLogger("llamahome.cache.network")

#: Default bound, in seconds, on one Redis call (socket connect and read/write).
DEFAULT_TIMEOUT = 0.05
#: Redis refuses strings over 512 MiB (proto-max-bulk-len); larger values are skipped by this tier.
MAX_VALUE_BYTES = 512 * 1024 * 1024

_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
# Errors that mean "Redis is unreachable or unhealthy": they feed the circuit breaker. Other RedisErrors
# (OOM under noeviction, NOPERM, ...) come from a reachable server, so they count as errors only.
_OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterError,
    RedisClusterException,
    OSError,
)
_CALL_ERRORS: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)

# Delete a lock only if it still holds our token: an expired lock may have passed to another machine.
_UNLOCK_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""

# Values and remaining ttls of several keys in one command: MGET, then one PTTL per key (no network hop).
# Reply: n values (nil for a miss), then the n PTTLs (-1: no expiry, -2: no key) as one comma-separated
# string, because parsing n integer replies costs the client more than the whole MGET.
_GET_TTL_SCRIPT = """
local n = #KEYS
local out = redis.call('mget', unpack(KEYS))
local ttls = {}
for i = 1, n do
    ttls[i] = redis.call('pttl', KEYS[i])
end
out[n + 1] = table.concat(ttls, ',')
return out
"""
_SCRIPT_CHUNK = 1000  # keys per script call (Lua's unpack has a stack limit near 8000)

_SCAN_BATCH = 500
_ENVELOPE_HEAD = len(UNSIGNED)
# Where the payload of a codec frame without metadata starts, after an unsigned envelope.
_FRAME_PAYLOAD = HEADER_SIZE + (-HEADER_SIZE % ALIGN)  # payload offset of a frame without metadata
_FAST_START = _ENVELOPE_HEAD + _FRAME_PAYLOAD
_FAST_RAW_LEN = struct.Struct("<Q")
_FAST_RAW_LEN_AT = _ENVELOPE_HEAD + 12  # raw_len's offset in the frame header (magic, kind, flags, u16, u32)
_FAST_HEAD_LEN = _FAST_RAW_LEN_AT + 8

_CacheT = TypeVar("_CacheT", bound="_RedisCore")
# get_or_set: the lock holder finished or died without leaving a value; try to take the lock over.
_TAKE_OVER: Any = object()


def _escape_glob(data: bytes) -> bytes:
    """Escape SCAN MATCH metacharacters so a namespace like ``app[1]`` matches only itself."""
    out = bytearray()
    for byte in data:
        if byte in b"*?[]\\":
            out += b"\\"
        out.append(byte)
    return bytes(out)


def _split_cluster_url(url: str, cluster: bool | None) -> tuple[str, bool]:
    """Map ``redis+cluster://`` / ``rediss+cluster://`` to the plain scheme and the cluster flag."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in _CLUSTER_SCHEMES:
        if cluster is False:
            raise ConfigError(f"The URL scheme {scheme}:// asks for Redis Cluster but cluster=False was passed.")
        return f"{_CLUSTER_SCHEMES[scheme.lower()]}://{rest}", True
    return url, bool(cluster)


def _block_value(block: Any, name: str, default: Any = None) -> Any:
    if isinstance(block, Mapping):
        value = block.get(name, default)
    else:
        value = getattr(block, name, default)
    if hasattr(value, "get_secret_value"):  # pydantic SecretStr
        value = value.get_secret_value()
    return default if value is None else value


class _RedisCore:
    """What the sync and async caches share: keys, envelopes, the breaker, stats and error policy (no I/O)."""

    name: str
    stats: CacheStats

    def __init__(
        self,
        namespace: str,
        ttl: float | None,
        compression: bool,
        secret: bytes | str | None,
        timeout: float,
        raise_errors: bool,
        name: str,
        failure_threshold: int,
        cooldown: float,
        clock: Callable[[], float],
        lock_timeout: float,
        allow_pickle: bool,
    ) -> None:
        if allow_pickle:
            raise ConfigError(
                "The Redis tier never unpickles: its entries come from the network and pickle can execute code. "
                "Store values the safe codecs accept (bytes, str, numbers, JSON-like data, arrays, tensors)."
            )
        if not isinstance(namespace, str) or not namespace:
            raise ConfigError("cache.network.namespace must be a non-empty string such as 'llamahome'.")
        if ttl is not None and ttl <= 0:
            raise ConfigError("cache.network.ttl must be a positive number of seconds, or null for no expiry.")
        if timeout <= 0:
            raise ConfigError("cache.network.timeout must be a positive number of seconds, e.g. 0.05.")
        if lock_timeout <= 0:
            raise ConfigError("lock_timeout must be a positive number of seconds.")
        self.namespace = namespace
        self.ttl = ttl
        self.compression = compression
        self.timeout = timeout
        self.raise_errors = raise_errors
        self.lock_timeout = lock_timeout
        self.name = name
        self.stats = CacheStats(name=name)
        self.breaker = CircuitBreaker(failure_threshold, cooldown, clock=clock)
        self._envelope = Envelope(secret)
        self._prefix = namespace.encode("utf-8") + b":"
        self._str_prefix = self._prefix + key_to_bytes("")
        # Every unsigned, uncompressed bytes entry starts with these 16 bytes (envelope + frame header up to
        # raw_len); None when entries are signed, since those must be verified first.
        self._fast_bytes_head: bytes | None = (
            None if self._envelope.signed else UNSIGNED + _FRAME_HEADER.pack(FRAME_MAGIC, K_BYTES, 0, 0, 0, 0)[:12]
        )
        self._fast_heads: dict[bytes, int] = {}
        self._lock_prefix = self._prefix + b"l"
        self._match = _escape_glob(self._prefix) + b"*"
        self._closed = False
        self._cluster = False
        self._owns_client = False
        self._client: Any = None
        self._last_log: dict[str, float] = {}
        self._scripts: dict[str, Any] = {}
        # False once the server refused a Lua script (ACLs, managed services): pipelines are used instead.
        self._scripts_allowed = True

    @classmethod
    def from_config(cls: type[_CacheT], network: Any, **overrides: Any) -> _CacheT:
        """Build from the ``cache.network`` block (``url, namespace, ttl, secret, timeout``; a model or a dict).

        ``overrides`` win over the block (``raise_errors=True``, ``clock=...``, ...).
        """
        if network is None:
            raise ConfigError("cache.network is not configured; add a network block with at least a url.")
        kwargs: dict[str, Any] = {
            "namespace": _block_value(network, "namespace", "llamahome"),
            "ttl": _block_value(network, "ttl"),
            "secret": _block_value(network, "secret"),
            "timeout": float(_block_value(network, "timeout", DEFAULT_TIMEOUT)),
            "cluster": _block_value(network, "cluster"),
        }
        kwargs.update(overrides)
        return cls(_block_value(network, "url", "redis://127.0.0.1:6379/0"), **kwargs)  # type: ignore[call-arg]

    # -------------------------------------------------------------------------------------------- keys

    def _rkey(self, key: Key) -> bytes:
        if type(key) is str and len(key) <= 4096:  # short str keys skip the generic checks (same bytes)
            return self._str_prefix + key.encode("utf-8", "surrogatepass")
        return self._prefix + key_to_bytes(validate_key(key))

    def _lkey(self, key: Key) -> bytes:
        return self._lock_prefix + key_to_bytes(validate_key(key))

    def _is_entry_key(self, rkey: bytes) -> bool:
        return rkey[len(self._prefix) : len(self._prefix) + 1] in (b"s", b"b")

    def _px(self, ttl: float | None) -> int | None:
        """Expiry in ms for SET PX: None for none, 0 for "already expired" (a ttl of zero or less)."""
        ttl = self.ttl if ttl is None else ttl
        if ttl is None:
            return None
        if not ttl > 0:
            return 0
        return max(1, int(ttl * 1000 + 0.5))

    # ------------------------------------------------------------------------------------ values

    def _pack(self, rkey: bytes, value: Any) -> tuple[bytes, int] | None:
        """The bytes to store for ``value`` and its raw size; None when it is too large for Redis (skipped)."""
        encoded = encode_parts(value, compress=self.compression, allow_pickle=False)
        if encoded.size > MAX_VALUE_BYTES:
            message = (
                f"A {encoded.size}-byte value is over Redis' 512 MiB string limit, so the Redis tier skips it; "
                "store it in the disk tier or split it."
            )
            if self.raise_errors:
                raise ValueTooLargeError(message)
            self._log_limited("too-large", logging.WARNING, "%s", message)
            return None
        return self._envelope.seal(rkey, encoded.parts), encoded.raw_size

    def _count_sets(self, packed: list[tuple[bytes, tuple[bytes, int]]]) -> None:
        with self.stats._lock:
            self.stats.sets += len(packed)
            for _, (payload, raw_size) in packed:
                self.stats.raw_bytes += raw_size
                self.stats.stored_bytes += len(payload)

    def _unpack(self, rkey: bytes, data: bytes) -> Any:
        """The value in ``data`` read from ``rkey``, or MISSING (counted in ``stats.corrupt``) if untrusted."""
        try:
            frame = self._envelope.open(rkey, data)
            # Fast path for the commonest entries (plain bytes/str, no metadata, not compressed): it halves
            # the decode cost next to a Redis round trip; anything else goes through the full decoder.
            try:
                magic, kind, flags, _, meta_len, raw_len = _FRAME_HEADER.unpack_from(frame)
            except struct.error:
                magic = None
            if magic == FRAME_MAGIC and flags == 0 and meta_len == 0 and len(frame) - _FRAME_PAYLOAD == raw_len:
                if kind == K_BYTES:
                    return bytes(frame[_FRAME_PAYLOAD:])
                if kind == K_STR:
                    return bytes(frame[_FRAME_PAYLOAD:]).decode("utf-8", "surrogatepass")
            return decode(frame, allow_pickle=False)
        except EnvelopeError as exc:
            reason = exc.reason
        except CacheValueError as exc:
            reason = str(exc)
        except UnicodeDecodeError:
            reason = "invalid UTF-8 in a str entry"
        self.stats.add("corrupt")
        self._log_limited(
            "corrupt", logging.WARNING, "Redis entry %r under namespace %r ignored: %s.", rkey, self.namespace, reason
        )
        return MISSING

    def _pack_items(self, items: Mapping[Key, Any]) -> list[tuple[bytes, tuple[bytes, int]]]:
        packed = []
        for key, value in items.items():
            rkey = self._rkey(key)
            entry = self._pack(rkey, value)
            if entry is not None:
                packed.append((rkey, entry))
        return packed

    def _rkeys(self, keys: list[Key]) -> list[bytes]:
        prefix, rkey = self._str_prefix, self._rkey
        return [prefix + k.encode("utf-8", "surrogatepass") if type(k) is str and len(k) <= 4096 else rkey(k) for k in keys]

    def _collect(self, keys: list[Key], rkeys: list[bytes], replies: list[bytes | None]) -> dict[Key, Any]:
        """Decode an MGET reply into the hits; counts hits and misses once for the batch."""
        found: dict[Key, Any] = {}
        hits = 0  # not len(found): a key asked twice counts twice, as two gets would
        fast, heads, unpack = self._fast_bytes_head, self._fast_heads, self._unpack
        for key, rkey, data in zip(keys, rkeys, replies):
            if data is None:
                continue
            # Plain bytes values, inlined: this loop is most of get_many's own cost. ``heads`` maps the first
            # 24 bytes of a valid entry (envelope, frame header up to raw_len) to the entry length they imply,
            # so one dict lookup replaces the header parse for values of sizes seen before.
            size = heads.get(data[:_FAST_HEAD_LEN])
            if size is None and fast is not None and data.startswith(fast):
                size = _FAST_RAW_LEN.unpack_from(data, _FAST_RAW_LEN_AT)[0] + _FAST_START
                if len(heads) < 4096:
                    heads[data[:_FAST_HEAD_LEN]] = size
            if size == len(data):
                found[key] = data[_FAST_START:]
                hits += 1
                continue
            value = unpack(rkey, data)
            if value is not MISSING:
                found[key] = value
                hits += 1
        self._count_gets(hits, len(keys) - hits)
        return found

    def _script(self, source: str) -> Any:
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.client.register_script(source)
        return script

    def _use_ttl_script(self, n_keys: int) -> bool:
        # On a cluster a multi-key script must stay in one slot, so only single keys go through it there.
        return self._scripts_allowed and (not self._cluster or n_keys == 1)

    def _scripts_refused(self, exc: ResponseError) -> None:
        if isinstance(exc, _OUTAGE_ERRORS):
            raise exc
        self._scripts_allowed = False
        log.warning("Redis refused a Lua script (%s); the Redis tier falls back to pipelines.", exc)

    @staticmethod
    def _split_ttl_replies(replies: list[Any], n: int, joined: bool) -> tuple[list[Any], list[int]]:
        """(values, pttls) from the script's n values plus one joined string, or a pipeline's 2n replies."""
        if joined:
            return replies[:n], [int(p) for p in replies[n].split(b",")]
        return replies[:n], [int(p) for p in replies[n:]]

    def _with_ttls(
        self, keys: list[Key], found: dict[Key, Any], pttls: list[int]
    ) -> dict[Key, tuple[Any, float | None]]:
        """Pair each hit with its remaining ttl in seconds (None: no expiry) from PTTL replies."""
        out: dict[Key, tuple[Any, float | None]] = {}
        for key, pttl in zip(keys, pttls):
            if key in found and pttl != -2:  # -2: expired between GET and PTTL; too late to promote
                out[key] = (found[key], None if pttl < 0 else pttl / 1000)
        return out

    def _count_gets(self, hits: int, misses: int) -> None:
        with self.stats._lock:
            self.stats.hits += hits
            self.stats.misses += misses

    # ------------------------------------------------------------------------------------ failures

    def _check_open(self) -> None:
        if self._closed:
            raise CacheClosedError(f"The Redis cache {self.name!r} is closed; create a new one to keep using Redis.")

    def _allow(self, op: str) -> bool:
        """Ask the breaker; an open breaker is a quiet no-op (or NetworkError with ``raise_errors``)."""
        self._check_open()
        if self.breaker.allow():
            return True
        if self.raise_errors:
            raise NetworkError(
                f"Redis {op} skipped: the circuit breaker is open after repeated failures; it retries Redis "
                f"every {self.breaker.cooldown:g} s. Check that the Redis server is up and reachable."
            )
        return False

    def _ok(self) -> None:
        if self.breaker.record_success():
            log.info("Redis tier %r reached Redis again; the circuit breaker is closed.", self.name)

    def _failed(self, exc: BaseException, op: str) -> None:
        """Count a failed call, feed the breaker, and raise NetworkError if the caller asked for errors."""
        self.stats.add("errors")
        if isinstance(exc, _OUTAGE_ERRORS):
            if self.breaker.record_failure():
                log.warning(
                    "Redis tier %r: %d consecutive failures (last: %s: %s); pausing Redis calls for %g s.",
                    self.name, self.breaker.failures, type(exc).__name__, exc, self.breaker.cooldown,
                )
            else:
                self._log_limited("error", logging.DEBUG, "Redis %s failed: %s: %s", op, type(exc).__name__, exc)
        else:
            self._ok()  # the server answered: it is reachable
            self._log_limited("error", logging.WARNING, "Redis %s failed: %s: %s", op, type(exc).__name__, exc)
        if self.raise_errors:
            raise NetworkError(
                f"Redis {op} failed ({type(exc).__name__}: {exc}); check the server, or leave raise_errors=False "
                "to treat Redis failures as cache misses."
            ) from exc

    def _log_limited(self, topic: str, level: int, message: str, *args: Any) -> None:
        """Log at most one message per topic every 10 s at ``level`` (the rest at DEBUG), so outages do not flood."""
        now = time.monotonic()
        if now - self._last_log.get(topic, -1e9) >= 10.0:
            self._last_log[topic] = now
            log.log(level, message, *args)
        else:
            log.debug(message, *args)

    # ------------------------------------------------------------------------------------ figures

    def _apply_scan(self, entries: int, nbytes: int) -> None:
        with self.stats._lock:
            self.stats.entries = entries
            self.stats.bytes = nbytes

    @staticmethod
    def _sum_info(info: Any, field: str) -> int:
        """One INFO field, summed over nodes when a cluster answers with one dict per node."""
        if isinstance(info, dict) and field in info:
            return int(info[field])
        if isinstance(info, dict):
            return sum(int(part.get(field, 0)) for part in info.values() if isinstance(part, dict))
        return 0

    def _server_details(self, memory: Any, stats: Any, maxmemory: int, policy: str) -> dict[str, Any]:
        self.stats.max_bytes = maxmemory
        return {
            "server_used_memory": self._sum_info(memory, "used_memory"),
            "server_maxmemory": maxmemory,
            "server_maxmemory_policy": policy,
            "server_evicted_keys": self._sum_info(stats, "evicted_keys"),
            "server_expired_keys": self._sum_info(stats, "expired_keys"),
        }

    @staticmethod
    def _parse_config(reply: Any) -> tuple[int, str]:
        """maxmemory (summed over cluster nodes) and maxmemory-policy from CONFIG GET maxmemory*."""
        if not isinstance(reply, dict):
            return 0, ""
        single = "maxmemory" in reply or b"maxmemory" in reply
        parts = [reply] if single else list(reply.values())
        total, policy = 0, ""
        for part in parts:
            if not isinstance(part, dict):
                continue
            norm = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                    for k, v in part.items()}
            total += int(norm.get("maxmemory", 0) or 0)
            policy = str(norm.get("maxmemory-policy", policy))
        return total, policy

    def __repr__(self) -> str:
        kind = "cluster" if self._cluster else "standalone"
        return f"{type(self).__name__}(namespace={self.namespace!r}, {kind}, breaker={self.breaker.state})"


def _client_kwargs(timeout: float) -> dict[str, Any]:
    # No client-side retries: the breaker decides when to try again, and each call stays within `timeout`.
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
    }


class RedisCache(_RedisCore, Store):
    """A :class:`Store` on Redis or Redis Cluster, shared by every process and machine using the same namespace.

    ``url_or_client`` is a URL (``redis://[:password@]host:port/db``, ``rediss://`` for TLS,
    ``redis+cluster://host:port`` or ``cluster=True`` for Redis Cluster) or a ready ``redis.Redis`` /
    ``redis.cluster.RedisCluster`` (left open by :meth:`close`; its own timeouts apply). ``ttl`` is the
    default expiry in seconds, ``secret`` turns on HMAC-SHA256 signatures, ``timeout`` bounds each call.

        cache = RedisCache("redis://localhost:6379/0", namespace="myapp", secret="shared-key")
        cache.set("k", b"v", ttl=60)
        assert cache.get("k") == b"v"
    """

    def __init__(
        self,
        url_or_client: str | redis.Redis | redis.cluster.RedisCluster = "redis://127.0.0.1:6379/0",
        namespace: str = "llamahome",
        ttl: float | None = None,
        compression: bool = False,
        *,
        secret: bytes | str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        raise_errors: bool = False,
        name: str = "redis",
        cluster: bool | None = None,
        failure_threshold: int = 5,
        cooldown: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        lock_timeout: float = 10.0,
        allow_pickle: bool = False,
    ) -> None:
        super().__init__(
            namespace, ttl, compression, secret, timeout, raise_errors, name, failure_threshold, cooldown, clock,
            lock_timeout, allow_pickle,
        )
        self._url: str | None = None
        if isinstance(url_or_client, str):
            self._url, self._cluster = _split_cluster_url(url_or_client, cluster)
            self._owns_client = True
            if not self._cluster:
                self._client = redis.Redis.from_url(self._url, **_client_kwargs(timeout))
        elif isinstance(url_or_client, redis.cluster.RedisCluster):
            self._client, self._cluster = url_or_client, True
        elif isinstance(url_or_client, redis.Redis):
            self._client = url_or_client
        else:
            raise ConfigError(
                f"RedisCache needs a redis:// URL or a redis.Redis / RedisCluster client, not "
                f"{type(url_or_client).__name__}; use AsyncRedisCache for redis.asyncio clients."
            )
        if self._client is not None and self._client.get_encoder().decode_responses:
            raise ConfigError("Pass a Redis client made with decode_responses=False; the cache stores raw bytes.")

    # ----------------------------------------------------------------------------------- client

    @property
    def client(self) -> Any:
        """The redis-py client (built on first use for a cluster, whose constructor already talks to the nodes)."""
        if self._client is None:
            assert self._url is not None
            self._client = redis.cluster.RedisCluster.from_url(self._url, **_client_kwargs(self.timeout))
        return self._client

    # ----------------------------------------------------------------------------------- Store

    def get(self, key: Key, default: Any = None) -> Any:
        rkey = self._rkey(key)
        if not self._allow("GET"):
            self.stats.add("misses")
            return default
        try:
            data = self.client.get(rkey)
        except _CALL_ERRORS as exc:
            self.stats.add("misses")
            self._failed(exc, "GET")
            return default
        self._ok()
        if data is not None:
            value = self._unpack(rkey, data)
            if value is not MISSING:
                self.stats.add("hits")
                return value
        self.stats.add("misses")
        return default

    def set(self, key: Key, value: Any, ttl: float | None = None) -> bool:  # type: ignore[override]
        """Store ``value``; True if Redis took it, False if Redis failed or the value is over 512 MiB."""
        rkey = self._rkey(key)
        px = self._px(ttl)
        if px == 0:  # as in every tier: a ttl of zero or less stores nothing and removes what was there
            self.delete(key)
            return True
        packed = self._pack(rkey, value)
        if packed is None or not self._allow("SET"):
            return False
        try:
            self.client.set(rkey, packed[0], px=px)
        except _CALL_ERRORS as exc:
            self._failed(exc, "SET")
            return False
        self._ok()
        self._count_sets([(rkey, packed)])
        return True

    def delete(self, key: Key) -> bool:
        rkey = self._rkey(key)
        if not self._allow("DEL"):
            return False
        try:
            removed = self.client.delete(rkey)
        except _CALL_ERRORS as exc:
            self._failed(exc, "DEL")
            return False
        self._ok()
        if removed:
            self.stats.add("deletes")
        return bool(removed)

    def __contains__(self, key: object) -> bool:
        """True if Redis has an entry under ``key`` (not checked for a valid signature; ``get`` does that)."""
        rkey = self._rkey(key)  # type: ignore[arg-type]
        if not self._allow("EXISTS"):
            return False
        try:
            found = self.client.exists(rkey)
        except _CALL_ERRORS as exc:
            self._failed(exc, "EXISTS")
            return False
        self._ok()
        return bool(found)

    def get_many(self, keys: Iterable[Key]) -> dict[Key, Any]:
        """The hits among ``keys``, fetched with one MGET (per-slot pipelined MGETs on a cluster)."""
        keys = list(keys)
        if not keys:
            self._check_open()
            return {}
        rkeys = self._rkeys(keys)
        if not self._allow("MGET"):
            self._count_gets(0, len(keys))
            return {}
        try:
            replies = self.client.mget_nonatomic(rkeys) if self._cluster else self.client.mget(rkeys)
        except _CALL_ERRORS as exc:
            self._count_gets(0, len(keys))
            self._failed(exc, "MGET")
            return {}
        self._ok()
        return self._collect(keys, rkeys, replies)

    def get_with_ttl(self, key: Key, default: Any = None) -> tuple[Any, float | None]:
        """``(value, remaining ttl in seconds or None)``, or ``(default, None)`` on a miss; one round trip.

        TieredCache calls it so that copies promoted into the local tiers expire with the shared entry.
        """
        rkey = self._rkey(key)
        if not self._allow("GET"):
            self.stats.add("misses")
            return default, None
        try:
            (data,), (pttl,) = self._fetch_with_ttls([rkey])
        except _CALL_ERRORS as exc:
            self.stats.add("misses")
            self._failed(exc, "GET")
            return default, None
        self._ok()
        found = self._collect([key], [rkey], [data])
        if key in found and pttl != -2:
            return found[key], None if pttl < 0 else pttl / 1000
        return default, None

    def get_many_with_ttl(self, keys: Iterable[Key]) -> dict[Key, tuple[Any, float | None]]:
        """The hits among ``keys`` with their remaining ttl (see :meth:`get_with_ttl`); one round trip."""
        keys = list(keys)
        if not keys:
            self._check_open()
            return {}
        rkeys = self._rkeys(keys)
        if not self._allow("MGET"):
            self._count_gets(0, len(keys))
            return {}
        try:
            values, pttls = self._fetch_with_ttls(rkeys)
        except _CALL_ERRORS as exc:
            self._count_gets(0, len(keys))
            self._failed(exc, "MGET")
            return {}
        self._ok()
        return self._with_ttls(keys, self._collect(keys, rkeys, values), pttls)

    def _fetch_with_ttls(self, rkeys: list[bytes]) -> tuple[list[Any], list[int]]:
        """Values and PTTLs of ``rkeys``: one script call per 1000 keys, or one pipeline (GETs, then PTTLs)."""
        if self._use_ttl_script(len(rkeys)):
            try:
                values: list[Any] = []
                pttls: list[int] = []
                for i in range(0, len(rkeys), _SCRIPT_CHUNK):
                    chunk = rkeys[i : i + _SCRIPT_CHUNK]
                    part_values, part_pttls = self._split_ttl_replies(
                        self._script(_GET_TTL_SCRIPT)(keys=chunk), len(chunk), joined=True
                    )
                    values += part_values
                    pttls += part_pttls
                return values, pttls
            except ResponseError as exc:
                self._scripts_refused(exc)
        pipe = self._pipeline()  # a cluster pipeline groups these per node
        for rkey in rkeys:
            pipe.get(rkey)
        for rkey in rkeys:
            pipe.pttl(rkey)
        return self._split_ttl_replies(pipe.execute(), len(rkeys), joined=False)

    def _pipeline(self) -> Any:
        return self.client.pipeline() if self._cluster else self.client.pipeline(transaction=False)

    def set_many(self, items: Mapping[Key, Any], ttl: float | None = None) -> bool:  # type: ignore[override]
        """Store every item in one pipeline (split per node on a cluster); True if Redis took them all."""
        px = self._px(ttl)
        if px == 0:
            for key in items:
                self.delete(key)
            return True
        packed = self._pack_items(items)
        if not packed:
            self._check_open()
            return not items
        if not self._allow("SET pipeline"):
            return False
        try:
            pipe = self._pipeline()
            for rkey, (payload, _) in packed:
                pipe.set(rkey, payload, px=px)
            pipe.execute()
        except _CALL_ERRORS as exc:
            self._failed(exc, "SET pipeline")
            return False
        self._ok()
        self._count_sets(packed)
        return len(packed) == len(items)

    def clear(self) -> None:
        """Remove every key under this namespace (SCAN + UNLINK; other namespaces and data are left alone)."""
        if not self._allow("SCAN"):
            return
        try:
            batch: list[bytes] = []
            for rkey in self.client.scan_iter(match=self._match, count=_SCAN_BATCH):
                batch.append(rkey)
                if len(batch) >= _SCAN_BATCH:
                    self.client.unlink(*batch)
                    batch.clear()
            if batch:
                self.client.unlink(*batch)
        except _CALL_ERRORS as exc:
            self._failed(exc, "clear")
            return
        self._ok()
        self._apply_scan(0, 0)

    def cleanup(self) -> CleanupReport:
        """Refresh the figures; Redis itself expires and evicts, so nothing is removed here.

        ``stats.entries`` and ``stats.bytes`` become the entries under this namespace and their stored value
        bytes (one SCAN + pipelined STRLEN: the payloads as written, before Redis' per-key overhead).
        ``stats.max_bytes`` is the server's ``maxmemory`` (0: unbounded, or CONFIG refused). The report's
        ``details`` add the server-wide used_memory, maxmemory-policy, evicted and expired key counts.
        """
        report = CleanupReport(cache=self.name)
        if not self._allow("cleanup"):
            report.details["skipped"] = "circuit breaker open"
            return report
        try:
            client = self.client
            entries = nbytes = 0
            batch: list[bytes] = []
            for rkey in client.scan_iter(match=self._match, count=_SCAN_BATCH):
                if self._is_entry_key(rkey):
                    batch.append(rkey)
                if len(batch) >= _SCAN_BATCH:
                    entries, nbytes = entries + len(batch), nbytes + self._strlen_sum(batch)
                    batch.clear()
            if batch:
                entries, nbytes = entries + len(batch), nbytes + self._strlen_sum(batch)
            self._apply_scan(entries, nbytes)
            targets = {"target_nodes": redis.cluster.RedisCluster.PRIMARIES} if self._cluster else {}
            memory = client.info("memory", **targets)
            server_stats = client.info("stats", **targets)
            try:
                maxmemory, policy = self._parse_config(client.config_get("maxmemory*", **targets))
            except RedisError:  # managed services often disable CONFIG
                maxmemory, policy = 0, ""
        except _CALL_ERRORS as exc:
            self._failed(exc, "cleanup")
            report.details["error"] = f"{type(exc).__name__}: {exc}"
            return report
        self._ok()
        report.details.update(self._server_details(memory, server_stats, maxmemory, policy))
        report.details["entries"], report.details["bytes"] = entries, nbytes
        return report

    def _strlen_sum(self, rkeys: list[bytes]) -> int:
        pipe = self._pipeline()
        for rkey in rkeys:
            pipe.strlen(rkey)
        return sum(int(n) for n in pipe.execute())

    def ping(self) -> bool:
        """True if Redis answers now (bypasses the breaker; a success closes it)."""
        self._check_open()
        try:
            self.client.ping()
        except _CALL_ERRORS as exc:
            self.stats.add("errors")
            log.debug("Redis PING failed: %s", exc)
            return False
        self._ok()
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns_client and self._client is not None:
            try:
                self._client.close()
            except _CALL_ERRORS:  # closing a dead connection is not worth an error
                pass

    # ----------------------------------------------------------------------------------- shared compute

    def get_or_set(
        self, key: Key, factory: Callable[[], Any], ttl: float | None = None, lock_timeout: float | None = None
    ) -> Any:
        """The cached value, or ``factory()`` computed by one machine while the others wait for it.

        A lock (``SET NX PX lock_timeout``) elects one caller across all machines; the others poll for the
        value for up to ``lock_timeout`` seconds. If the holder dies, its lock expires and a waiter takes
        over; if Redis is unreachable every caller computes locally. ``factory`` errors propagate.
        """
        value = self.get(key, MISSING)
        if value is not MISSING:
            return value
        rkey, lkey = self._rkey(key), self._lkey(key)
        wait = self.lock_timeout if lock_timeout is None else lock_timeout
        token = os.urandom(16)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            acquired = self._try_lock(lkey, token, wait)
            if acquired is None:
                break  # Redis is unavailable: compute here
            if acquired:
                try:
                    value = factory()
                    self.set(key, value, ttl)
                finally:
                    self._unlock(lkey, token)
                return value
            value = self._wait_for_value(rkey, lkey, deadline)
            if value is _TAKE_OVER:
                continue
            if value is not MISSING:
                self.stats.add("hits")
                return value
            break
        value = factory()  # waited long enough, or Redis failed: compute locally
        self.set(key, value, ttl)
        return value

    def _wait_for_value(self, rkey: bytes, lkey: bytes, deadline: float) -> Any:
        """Poll while another caller holds the lock: its value, _TAKE_OVER if the lock went, else MISSING."""
        delay = 0.002
        while time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
            state = self._peek(rkey, lkey)
            if state is None:
                return MISSING
            value, locked = state
            if value is not MISSING:
                return value
            if not locked:
                return _TAKE_OVER
        return MISSING

    def _try_lock(self, lkey: bytes, token: bytes, seconds: float) -> bool | None:
        if not self._allow("lock"):
            return None
        try:
            got = self.client.set(lkey, token, nx=True, px=max(1, int(seconds * 1000)))
        except _CALL_ERRORS as exc:
            self._failed(exc, "lock")
            return None
        self._ok()
        return bool(got)

    def _peek(self, rkey: bytes, lkey: bytes) -> tuple[Any, bool] | None:
        """(value or MISSING, lock still held) without touching hit/miss counters; None if Redis failed."""
        if not self._allow("GET"):
            return None
        try:
            data = self.client.get(rkey)
            locked = data is None and bool(self.client.exists(lkey))
        except _CALL_ERRORS as exc:
            self._failed(exc, "GET")
            return None
        self._ok()
        return (MISSING if data is None else self._unpack(rkey, data)), locked

    def _unlock(self, lkey: bytes, token: bytes) -> None:
        if self._closed or not self.breaker.allow():
            return  # the lock expires by itself
        try:
            if self._scripts_allowed:
                try:
                    self._script(_UNLOCK_SCRIPT)(keys=[lkey], args=[token])
                except ResponseError as exc:
                    self._scripts_refused(exc)
            if not self._scripts_allowed:
                # Check, then delete: should the lock expire and pass to another caller in between, that
                # caller merely loses exclusivity for the rest of its computation.
                if self.client.get(lkey) == token:
                    self.client.delete(lkey)
        except _CALL_ERRORS as exc:
            try:
                self._failed(exc, "unlock")
            except NetworkError:
                pass  # the lock expires by itself; never hide the factory's own outcome behind this
            return
        self._ok()

    def __enter__(self) -> RedisCache:
        return self


class AsyncRedisCache(_RedisCore):
    """The async twin of :class:`RedisCache` on ``redis.asyncio``: the same arguments, methods as coroutines.

    ``key in cache`` cannot await, so membership is ``await cache.contains(key)``; ``close`` is a coroutine
    (``aclose`` too), and the cache is an async context manager.

        async with AsyncRedisCache("redis://localhost:6379/0", namespace="myapp") as cache:
            await cache.set("k", b"v")
            await cache.get("k")
    """

    def __init__(
        self,
        url_or_client: str | redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster = "redis://127.0.0.1:6379/0",
        namespace: str = "llamahome",
        ttl: float | None = None,
        compression: bool = False,
        *,
        secret: bytes | str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        raise_errors: bool = False,
        name: str = "redis",
        cluster: bool | None = None,
        failure_threshold: int = 5,
        cooldown: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        lock_timeout: float = 10.0,
        allow_pickle: bool = False,
    ) -> None:
        super().__init__(
            namespace, ttl, compression, secret, timeout, raise_errors, name, failure_threshold, cooldown, clock,
            lock_timeout, allow_pickle,
        )
        self._url: str | None = None
        if isinstance(url_or_client, str):
            self._url, self._cluster = _split_cluster_url(url_or_client, cluster)
            self._owns_client = True
            if not self._cluster:
                self._client = redis.asyncio.Redis.from_url(self._url, **_client_kwargs(timeout))
        elif isinstance(url_or_client, redis.asyncio.cluster.RedisCluster):
            self._client, self._cluster = url_or_client, True
        elif isinstance(url_or_client, redis.asyncio.Redis):
            self._client = url_or_client
        else:
            raise ConfigError(
                f"AsyncRedisCache needs a redis:// URL or a redis.asyncio Redis / RedisCluster client, not "
                f"{type(url_or_client).__name__}; use RedisCache for synchronous clients."
            )
        if self._client is not None and self._client.get_encoder().decode_responses:
            raise ConfigError("Pass a Redis client made with decode_responses=False; the cache stores raw bytes.")

    @property
    def client(self) -> Any:
        """The redis.asyncio client (a cluster client is created lazily and initialised on its first command)."""
        if self._client is None:
            assert self._url is not None
            self._client = redis.asyncio.cluster.RedisCluster.from_url(self._url, **_client_kwargs(self.timeout))
        return self._client

    async def _call(self, op: str, make: Callable[[Any], Awaitable[Any]]) -> Any:
        """Run Redis work through the breaker and error policy; MISSING if it failed or was refused."""
        if not self._allow(op):
            return MISSING
        try:
            result = await make(self.client)  # each socket read and connect is bounded by `timeout`
        except _CALL_ERRORS as exc:
            self._failed(exc, op)
            return MISSING
        self._ok()
        return result

    async def get(self, key: Key, default: Any = None) -> Any:
        rkey = self._rkey(key)
        try:
            data = await self._call("GET", lambda c: c.get(rkey))
        except NetworkError:
            self.stats.add("misses")
            raise
        if data is not MISSING and data is not None:
            value = self._unpack(rkey, data)
            if value is not MISSING:
                self.stats.add("hits")
                return value
        self.stats.add("misses")
        return default

    async def set(self, key: Key, value: Any, ttl: float | None = None) -> bool:
        rkey = self._rkey(key)
        px = self._px(ttl)
        if px == 0:
            await self.delete(key)
            return True
        packed = self._pack(rkey, value)
        if packed is None:
            return False
        payload = packed[0]
        if await self._call("SET", lambda c: c.set(rkey, payload, px=px)) is MISSING:
            return False
        self._count_sets([(rkey, packed)])
        return True

    async def delete(self, key: Key) -> bool:
        rkey = self._rkey(key)
        removed = await self._call("DEL", lambda c: c.delete(rkey))
        if removed is MISSING or not removed:
            return False
        self.stats.add("deletes")
        return True

    async def contains(self, key: Key) -> bool:
        """True if Redis has an entry under ``key`` (its signature is checked by ``get`` only)."""
        rkey = self._rkey(key)
        found = await self._call("EXISTS", lambda c: c.exists(rkey))
        return found is not MISSING and bool(found)

    async def get_many(self, keys: Iterable[Key]) -> dict[Key, Any]:
        keys = list(keys)
        if not keys:
            self._check_open()
            return {}
        rkeys = self._rkeys(keys)
        try:
            replies = await self._call(
                "MGET", lambda c: c.mget_nonatomic(rkeys) if self._cluster else c.mget(rkeys)
            )
        except NetworkError:
            self._count_gets(0, len(keys))
            raise
        if replies is MISSING:
            self._count_gets(0, len(keys))
            return {}
        return self._collect(keys, rkeys, replies)

    async def get_with_ttl(self, key: Key, default: Any = None) -> tuple[Any, float | None]:
        """As :meth:`RedisCache.get_with_ttl`."""
        rkey = self._rkey(key)

        try:
            replies = await self._call("GET", lambda client: self._fetch_with_ttls(client, [rkey]))
        except NetworkError:
            self.stats.add("misses")
            raise
        if replies is MISSING:
            self.stats.add("misses")
            return default, None
        (data,), (pttl,) = replies
        found = self._collect([key], [rkey], [data])
        if key in found and pttl != -2:
            return found[key], None if pttl < 0 else pttl / 1000
        return default, None

    async def get_many_with_ttl(self, keys: Iterable[Key]) -> dict[Key, tuple[Any, float | None]]:
        """As :meth:`RedisCache.get_many_with_ttl`."""
        keys = list(keys)
        if not keys:
            self._check_open()
            return {}
        rkeys = self._rkeys(keys)

        try:
            replies = await self._call("MGET", lambda client: self._fetch_with_ttls(client, rkeys))
        except NetworkError:
            self._count_gets(0, len(keys))
            raise
        if replies is MISSING:
            self._count_gets(0, len(keys))
            return {}
        values, pttls = replies
        return self._with_ttls(keys, self._collect(keys, rkeys, values), pttls)

    async def _fetch_with_ttls(self, client: Any, rkeys: list[bytes]) -> tuple[list[Any], list[int]]:
        """As :meth:`RedisCache._fetch_with_ttls`."""
        if self._use_ttl_script(len(rkeys)):
            try:
                values: list[Any] = []
                pttls: list[int] = []
                for i in range(0, len(rkeys), _SCRIPT_CHUNK):
                    chunk = rkeys[i : i + _SCRIPT_CHUNK]
                    replies = await self._script(_GET_TTL_SCRIPT)(keys=chunk)
                    part_values, part_pttls = self._split_ttl_replies(replies, len(chunk), joined=True)
                    values += part_values
                    pttls += part_pttls
                return values, pttls
            except ResponseError as exc:
                self._scripts_refused(exc)
        pipe = client.pipeline() if self._cluster else client.pipeline(transaction=False)
        for rkey in rkeys:
            pipe.get(rkey)
        for rkey in rkeys:
            pipe.pttl(rkey)
        return self._split_ttl_replies(await pipe.execute(), len(rkeys), joined=False)

    async def set_many(self, items: Mapping[Key, Any], ttl: float | None = None) -> bool:
        px = self._px(ttl)
        if px == 0:
            for key in items:
                await self.delete(key)
            return True
        packed = self._pack_items(items)
        if not packed:
            self._check_open()
            return not items

        async def run(client: Any) -> Any:
            pipe = client.pipeline() if self._cluster else client.pipeline(transaction=False)
            for rkey, (payload, _) in packed:
                pipe.set(rkey, payload, px=px)
            return await pipe.execute()

        if await self._call("SET pipeline", run) is MISSING:
            return False
        self._count_sets(packed)
        return len(packed) == len(items)

    async def clear(self) -> None:
        """Remove every key under this namespace (SCAN + UNLINK)."""

        async def run(client: Any) -> None:
            batch: list[bytes] = []
            async for rkey in client.scan_iter(match=self._match, count=_SCAN_BATCH):
                batch.append(rkey)
                if len(batch) >= _SCAN_BATCH:
                    await client.unlink(*batch)
                    batch.clear()
            if batch:
                await client.unlink(*batch)

        if await self._call("clear", run) is not MISSING:
            self._apply_scan(0, 0)

    async def cleanup(self) -> CleanupReport:
        """Refresh the figures as :meth:`RedisCache.cleanup` does; nothing is removed."""
        report = CleanupReport(cache=self.name)

        async def run(client: Any) -> tuple[int, int, Any, Any, int, str]:
            entries = nbytes = 0
            batch: list[bytes] = []

            async def flush() -> int:
                pipe = client.pipeline() if self._cluster else client.pipeline(transaction=False)
                for rkey in batch:
                    pipe.strlen(rkey)
                return sum(int(n) for n in await pipe.execute())

            async for rkey in client.scan_iter(match=self._match, count=_SCAN_BATCH):
                if self._is_entry_key(rkey):
                    batch.append(rkey)
                if len(batch) >= _SCAN_BATCH:
                    entries, nbytes = entries + len(batch), nbytes + await flush()
                    batch.clear()
            if batch:
                entries, nbytes = entries + len(batch), nbytes + await flush()
            targets = {"target_nodes": redis.asyncio.cluster.RedisCluster.PRIMARIES} if self._cluster else {}
            memory = await client.info("memory", **targets)
            server_stats = await client.info("stats", **targets)
            try:
                maxmemory, policy = self._parse_config(await client.config_get("maxmemory*", **targets))
            except RedisError:
                maxmemory, policy = 0, ""
            return entries, nbytes, memory, server_stats, maxmemory, policy

        result = await self._call("cleanup", run)
        if result is MISSING:
            report.details["skipped"] = "Redis unavailable"
            return report
        entries, nbytes, memory, server_stats, maxmemory, policy = result
        self._apply_scan(entries, nbytes)
        report.details.update(self._server_details(memory, server_stats, maxmemory, policy))
        report.details["entries"], report.details["bytes"] = entries, nbytes
        return report

    async def ping(self) -> bool:
        """True if Redis answers now (bypasses the breaker; a success closes it)."""
        self._check_open()
        try:
            await self.client.ping()
        except _CALL_ERRORS as exc:
            self.stats.add("errors")
            log.debug("Redis PING failed: %s", exc)
            return False
        self._ok()
        return True

    async def get_or_set(
        self, key: Key, factory: Callable[[], Any], ttl: float | None = None, lock_timeout: float | None = None
    ) -> Any:
        """As :meth:`RedisCache.get_or_set`; ``factory`` may be a plain callable or return an awaitable."""
        value = await self.get(key, MISSING)
        if value is not MISSING:
            return value
        rkey, lkey = self._rkey(key), self._lkey(key)
        wait = self.lock_timeout if lock_timeout is None else lock_timeout
        token = os.urandom(16)
        deadline = time.monotonic() + wait
        px = max(1, int(wait * 1000))
        while time.monotonic() < deadline:
            acquired = await self._call("lock", lambda c: c.set(lkey, token, nx=True, px=px))
            if acquired is MISSING:
                break
            if acquired:
                try:
                    value = await self._produce(factory)
                    await self.set(key, value, ttl)
                finally:
                    await self._unlock(lkey, token)
                return value
            value = await self._wait_for_value(rkey, lkey, deadline)
            if value is _TAKE_OVER:
                continue
            if value is not MISSING:
                self.stats.add("hits")
                return value
            break
        value = await self._produce(factory)
        await self.set(key, value, ttl)
        return value

    async def _wait_for_value(self, rkey: bytes, lkey: bytes, deadline: float) -> Any:
        delay = 0.002
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
            data = await self._call("GET", lambda c: c.get(rkey))
            if data is MISSING:
                return MISSING
            if data is not None:
                value = self._unpack(rkey, data)
                return _TAKE_OVER if value is MISSING else value
            locked = await self._call("EXISTS", lambda c: c.exists(lkey))
            if locked is MISSING:
                return MISSING
            if not locked:
                return _TAKE_OVER
        return MISSING

    @staticmethod
    async def _produce(factory: Callable[[], Any]) -> Any:
        value = factory()
        if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
            value = await value
        return value

    async def _unlock(self, lkey: bytes, token: bytes) -> None:
        if self._closed:
            return

        async def run(client: Any) -> None:
            if self._scripts_allowed:
                try:
                    await self._script(_UNLOCK_SCRIPT)(keys=[lkey], args=[token])
                except ResponseError as exc:
                    self._scripts_refused(exc)
            if not self._scripts_allowed and await client.get(lkey) == token:
                await client.delete(lkey)  # check, then delete: see RedisCache._unlock

        try:
            await self._call("unlock", run)
        except NetworkError:
            pass  # the lock expires by itself; never hide the factory's own outcome behind this

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns_client and self._client is not None:
            try:
                await self._client.aclose()
            except _CALL_ERRORS:
                pass

    aclose = close

    async def __aenter__(self) -> AsyncRedisCache:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
