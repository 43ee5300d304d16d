"""What the sync and async Redis tiers share: :class:`BaseRedisCache` (keys, the value envelope, the breaker,
stats and error policy), the way httpx's ``BaseClient`` serves ``Client`` and ``AsyncClient``.

No I/O happens here; ``_sync.RedisCache`` and ``_async.AsyncRedisCache`` subclass it and do the Redis calls. Keys live under ``<namespace>:`` followed by the type-tagged key
(``s`` + UTF-8 for str keys, ``b`` + bytes for bytes keys), locks under ``<namespace>:l`` + the tagged key.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import redis.connection
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

from ..base import MISSING, Key, key_to_bytes, validate_key
from ..codecs import HEADER_SIZE, decode, encode_parts, plain_bytes_header
from ..stats import CacheStats
from ._circuit import CircuitBreaker
from ._signing import STAMP_SIZE, UNSIGNED, Envelope, EnvelopeError

__all__ = ["BaseRedisCache", "CALL_ERRORS", "DEFAULT_TIMEOUT", "MAX_VALUE_BYTES", "TAKE_OVER"]

log = logging.getLogger("llamahome.cache.redis")

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
#: What a Redis call may raise that the tier turns into a miss, False, or NetworkError.
CALL_ERRORS: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)

# Delete a lock only if it still holds our token: an expired lock may have passed to another machine.
UNLOCK_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""

# Values and remaining ttls of several keys in one command: MGET, then one PTTL per key (no network hop).
# Reply: n values (nil for a miss), then the n PTTLs (-1: no expiry, -2: no key) as one comma-separated
# string, because parsing n integer replies costs the client more than the whole MGET.
GET_TTL_SCRIPT = """
local n = #KEYS
local out = redis.call('mget', unpack(KEYS))
local ttls = {}
for i = 1, n do
    ttls[i] = redis.call('pttl', KEYS[i])
end
out[n + 1] = table.concat(ttls, ',')
return out
"""

_CacheT = TypeVar("_CacheT", bound="BaseRedisCache")
#: get_or_set: the lock holder finished or died without leaving a value; try to take the lock over.
TAKE_OVER: Any = object()
_HEADS_MAX = 4096  # entry lengths whose plain-bytes prefix is remembered
_SMALL_FRAME = 64 * 1024  # frames up to this size are copied out of the envelope (cheap) before decoding


def _escape_glob(data: bytes) -> bytes:
    """Escape SCAN MATCH metacharacters so a namespace like ``app[1]`` matches only itself."""
    out = bytearray()
    for byte in data:
        if byte in b"*?[]\\":
            out += b"\\"
        out.append(byte)
    return bytes(out)


def _split_cluster_url(url: str, cluster: bool | None) -> tuple[str, bool]:
    """Map ``redis+cluster://`` / ``rediss+cluster://`` to the plain scheme and the cluster flag; check the URL."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in _CLUSTER_SCHEMES:
        if cluster is False:
            raise ConfigError(f"The URL scheme {scheme}:// asks for Redis Cluster but cluster=False was passed.")
        url, cluster = f"{_CLUSTER_SCHEMES[scheme.lower()]}://{rest}", True
    try:
        redis.connection.parse_url(url)
    except ValueError as exc:
        raise ConfigError(
            f"cache.network.url: {str(exc).rstrip('.')}. Use redis://[:password@]host:port/db, rediss:// for TLS, unix:///path, "
            "or redis+cluster://host:port for Redis Cluster."
        ) from None
    return url, bool(cluster)


def _block_value(block: Any, name: str, default: Any = None) -> Any:
    if isinstance(block, Mapping):
        value = block.get(name, default)
    else:
        value = getattr(block, name, default)
    if hasattr(value, "get_secret_value"):  # pydantic SecretStr
        value = value.get_secret_value()
    return default if value is None else value

class BaseRedisCache:
    """What :class:`RedisCache` and :class:`AsyncRedisCache` share: keys, envelopes, the breaker, stats and
    error policy, and the scripts both send (no I/O here; the subclasses make the calls)."""

    name: str
    stats: CacheStats

    # Delete a lock only if it still holds our token: an expired lock may have passed to another machine.
    _UNLOCK_SCRIPT = UNLOCK_SCRIPT
    # Values and remaining ttls of several keys in one command (see GET_TTL_SCRIPT).
    _GET_TTL_SCRIPT = GET_TTL_SCRIPT
    _SCRIPT_CHUNK = 1000  # keys per script call (Lua's unpack has a stack limit near 8000)
    _SCAN_BATCH = 500

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
        # Every write is stamped (see _signing): this cache's id and a counter.
        self._origin = os.urandom(STAMP_SIZE - 8)
        self._writes = itertools.count()
        # Plain bytes values (unsigned, uncompressed: the commonest entries) are sliced out of the reply
        # without a decode call: such an entry is the envelope marker, the codec's header for its size
        # (codecs.plain_bytes_header), the value, then the stamp. The heads seen so far map to the entry length they
        # imply, so one dict lookup on the first bytes of a reply recognises it: the marker and the header's
        # HEADER_SIZE bytes, where the size is (the rest of the head is padding, checked when a head is first
        # seen). Signed entries must be verified first, so they always take the full path.
        self._plain_start = len(UNSIGNED) + len(plain_bytes_header(0))
        self._plain_key = len(UNSIGNED) + HEADER_SIZE
        self._plain_heads: dict[bytes, int] | None = None if self._envelope.signed else {}
        self._lock_prefix = self._prefix + b"l"
        self._match = _escape_glob(self._prefix) + b"*"
        self._closed = False
        self._url: str | None = None
        self._cluster = False
        self._owns_client = False
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._last_log: dict[str, float] = {}
        self._scripts: dict[str, Any] = {}
        # False once the server refused a Lua script (ACLs, managed services): pipelines are used instead.
        self._scripts_allowed = True

    def _parse_url(self, url: str, cluster: bool | None) -> str:
        """Take a URL: map ``redis+cluster://`` to the plain scheme and the cluster flag, check it, return it."""
        self._url, self._cluster = _split_cluster_url(url, cluster)
        self._owns_client = True
        return self._url

    def _client_options(self) -> dict[str, Any]:
        """Keyword arguments for the clients this cache builds from a URL."""
        # No client-side retries: the breaker decides when to try again, and each call stays within `timeout`.
        return {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            "retry": Retry(NoBackoff(), 0),
        }

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
        return cls(_block_value(network, "url", "redis://127.0.0.1:6379/0"), **kwargs)

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
        stamp = self._origin + next(self._writes).to_bytes(8, "big")
        return self._envelope.seal(rkey, encoded.parts, stamp), encoded.raw_size

    def _count_sets(self, packed: list[tuple[bytes, tuple[bytes, int]]]) -> None:
        with self.stats._lock:
            self.stats.sets += len(packed)
            for _, (payload, raw_size) in packed:
                self.stats.raw_bytes += raw_size
                self.stats.stored_bytes += len(payload)

    def _plain_bytes(self, data: bytes) -> bytes | None:
        """The value of an unsigned, uncompressed bytes entry, or None for any other entry (see __init__)."""
        heads, start = self._plain_heads, self._plain_start
        if heads is None or len(data) < start:
            return None
        head = data[: self._plain_key]
        size = heads.get(head)
        if size is None:
            if len(data) < start + STAMP_SIZE:
                return None
            if not data.startswith(UNSIGNED + plain_bytes_header(len(data) - start - STAMP_SIZE)):
                return None
            size = len(data)
            if len(heads) < _HEADS_MAX:
                heads[head] = size
        return data[start:-STAMP_SIZE] if size == len(data) else None

    def _unpack(self, rkey: bytes, data: bytes) -> Any:
        """The value in ``data`` read from ``rkey``, or MISSING (counted in ``stats.corrupt``) if untrusted."""
        plain = self._plain_bytes(data)
        if plain is not None:
            return plain
        try:
            frame: Any = self._envelope.open(rkey, data)
            if len(frame) <= _SMALL_FRAME:
                frame = bytes(frame)  # codecs.decode has a fast path for small str/bytes frames given as bytes
            return decode(frame, allow_pickle=False)
        except EnvelopeError as exc:
            reason = exc.reason
        except CacheValueError as exc:
            reason = str(exc)
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
        heads, start, cut, unpack = self._plain_heads, self._plain_start, self._plain_key, self._unpack
        lookup = (heads if heads is not None else {}).get
        end = -STAMP_SIZE
        for key, rkey, data in zip(keys, rkeys, replies):
            if data is None:
                continue
            # Plain bytes values, inlined (see _plain_bytes): this loop is most of get_many's own cost.
            if lookup(data[:cut]) == len(data):
                found[key] = data[start:end]
                hits += 1
                continue
            value = unpack(rkey, data)
            if value is not MISSING:
                found[key] = value
                hits += 1
        self._count_gets(hits, len(keys) - hits)
        return found

    @property
    def client(self) -> Any:
        raise NotImplementedError("BaseRedisCache.client")

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

    def _allow(self, op: str, write: bool = False) -> bool:
        """Ask the breaker; an open breaker is a quiet no-op (or NetworkError with ``raise_errors``).

        A skipped read is a miss; a skipped ``write`` (set, delete, clear) is a failure and counts in
        ``stats.errors``, as a write Redis refused would.
        """
        self._check_open()
        if self.breaker.allow():
            return True
        if write:
            self.stats.add("errors")
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
