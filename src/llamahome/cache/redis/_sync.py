"""RedisCache: the Redis tier on the synchronous redis-py client (see the package docstring for the rules)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import redis
import redis.cluster
import redis.connection
from redis.exceptions import RedisError, ResponseError

from llamahome.errors import ConfigError, NetworkError

from ..base import MISSING, Key, Store
from ..stats import CleanupReport
from ._core import CALL_ERRORS, DEFAULT_TIMEOUT, TAKE_OVER, BaseRedisCache
from ._invalidation import ConnectionRecipe, InvalidationListener
from ._signing import STAMP_SIZE

_log = logging.getLogger("llamahome.cache.redis")

__all__ = ["RedisCache"]


class RedisCache(BaseRedisCache, Store):
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
        if isinstance(url_or_client, str):
            url = self._parse_url(url_or_client, cluster)
            if not self._cluster:
                self._client = redis.Redis.from_url(url, **self._client_options())
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
        self._listener: InvalidationListener | None = None

    # ----------------------------------------------------------------------------------- client

    @property
    def client(self) -> Any:
        """The redis-py client (built on first use for a cluster, whose constructor already talks to the nodes)."""
        if self._client is None:
            with self._client_lock:  # two threads must not both build (and one leak) a cluster client
                if self._client is None:
                    assert self._url is not None
                    self._client = redis.cluster.RedisCluster.from_url(self._url, **self._client_options())
        return self._client

    # ----------------------------------------------------------------------------------- invalidation

    def listen(self, on_keys: Callable[[list[Key]], None], on_reset: Callable[[], None]) -> InvalidationListener:
        """Start a background listener for changes other clients make under this namespace.

        ``on_keys(keys)`` gets the keys another client set, deleted, or that expired or were evicted;
        ``on_reset()`` is called when reports may have been lost (the connection dropped, or came back) or
        Redis was flushed. Own writes are not reported. One listener per cache; :meth:`close` stops it. See
        ``_invalidation`` for the mechanism (RESP3 client tracking) and its guarantees.
        """
        self._check_open()
        if self._listener is not None:
            raise ConfigError(
                "This RedisCache already reports changes to another owner (a TieredCache); writes through one "
                "RedisCache look like our own to both, so give each TieredCache its own RedisCache, or pass "
                "listen=False to the TieredCache that needs none."
            )
        self._listener = InvalidationListener(self._recipe(), self._prefix, on_keys, on_reset, self.stats, self.name)
        return self._listener

    @property
    def listener(self) -> InvalidationListener | None:
        """The invalidation listener started by :meth:`listen`, if any."""
        return self._listener

    def _recipe(self) -> ConnectionRecipe:
        """How to open tracking connections: from the URL, or from the given client's pool(s)."""
        if self._url is not None:
            options = redis.connection.parse_url(self._url)
            connection_class = options.pop("connection_class", redis.connection.Connection)
            seeds = [(options.get("host", "127.0.0.1"), int(options.get("port", 6379)))] if self._cluster else None
            return ConnectionRecipe(connection_class, options, self.timeout, seeds)
        if self._cluster:
            nodes = self.client.get_nodes()
            pool = self.client.get_default_node().redis_connection.connection_pool
            return ConnectionRecipe.from_pool(pool, self.timeout, [(n.host, int(n.port)) for n in nodes])
        return ConnectionRecipe.from_pool(self.client.connection_pool, self.timeout)

    # ----------------------------------------------------------------------------------- Store

    def get(self, key: Key, default: Any = None) -> Any:
        rkey = self._rkey(key)
        if not self._allow("GET"):
            self.stats.add("misses")
            return default
        try:
            data = self.client.get(rkey)
        except CALL_ERRORS as exc:
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
        if packed is None or not self._allow("SET", write=True):
            return False
        listener = self._listener
        if listener is not None and listener.has_writers:
            try:
                written = listener.try_set(rkey, packed[0], px, self._primary_of(rkey) if self._cluster else None)
            except CALL_ERRORS as exc:
                self._failed(exc, "SET")
                return False
            if written:
                self._ok()
                self._count_sets([(rkey, packed)])
                return True
        expected = listener is not None and listener.expect_one(rkey, packed[0][-STAMP_SIZE:])
        try:
            self.client.set(rkey, packed[0], px=px)
        except CALL_ERRORS as exc:
            if expected:
                listener.withdraw((rkey,))  # type: ignore[union-attr]
            self._failed(exc, "SET")
            return False
        self._ok()
        self._count_sets([(rkey, packed)])
        return True

    def _primary_of(self, rkey: bytes) -> tuple[str, int] | None:
        """Where the cluster client would send a write of ``rkey`` (None if it does not know): the listener's
        writer for that primary takes the set (no echo to expect; see InvalidationListener.try_set)."""
        try:
            node = self.client.get_node_from_key(rkey)  # type: ignore[union-attr]
        except CALL_ERRORS:
            return None
        return (node.host, int(node.port))

    def delete(self, key: Key) -> bool:
        rkey = self._rkey(key)
        if not self._allow("DEL", write=True):
            return False
        listener = self._listener
        expected = listener is not None and listener.expect_one(rkey, b"")  # deleted: no stamp left
        removed = 0
        try:
            removed = self.client.delete(rkey)
        except CALL_ERRORS as exc:
            self._failed(exc, "DEL")
            return False
        finally:
            if expected and not removed:  # nothing changed in Redis, so no report of it will come
                listener.withdraw((rkey,))  # type: ignore[union-attr]
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
        except CALL_ERRORS as exc:
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
        except CALL_ERRORS as exc:
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
        except CALL_ERRORS as exc:
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
        except CALL_ERRORS as exc:
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
                for i in range(0, len(rkeys), self._SCRIPT_CHUNK):
                    chunk = rkeys[i : i + self._SCRIPT_CHUNK]
                    part_values, part_pttls = self._split_ttl_replies(
                        self._script(self._GET_TTL_SCRIPT)(keys=chunk), len(chunk), joined=True
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
        if not self._allow("SET pipeline", write=True):
            return False
        listener = self._listener
        rkeys = [rkey for rkey, _ in packed]
        stamps = [(rkey, payload[-STAMP_SIZE:]) for rkey, (payload, _) in packed]
        expected = listener is not None and listener.expect(stamps)
        try:
            pipe = self._pipeline()
            for rkey, (payload, _) in packed:
                pipe.set(rkey, payload, px=px)
            pipe.execute()
        except CALL_ERRORS as exc:
            if expected:
                listener.withdraw(rkeys)  # type: ignore[union-attr]
            self._failed(exc, "SET pipeline")
            return False
        self._ok()
        self._count_sets(packed)
        return len(packed) == len(items)

    def clear(self) -> None:
        """Remove every key under this namespace (SCAN + UNLINK; other namespaces and data are left alone)."""
        if not self._allow("SCAN", write=True):
            return
        try:
            batch: list[bytes] = []
            for rkey in self.client.scan_iter(match=self._match, count=self._SCAN_BATCH):
                batch.append(rkey)
                if len(batch) >= self._SCAN_BATCH:
                    self.client.unlink(*batch)
                    batch.clear()
            if batch:
                self.client.unlink(*batch)
        except CALL_ERRORS as exc:
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
            for rkey in client.scan_iter(match=self._match, count=self._SCAN_BATCH):
                if self._is_entry_key(rkey):
                    batch.append(rkey)
                if len(batch) >= self._SCAN_BATCH:
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
        except CALL_ERRORS as exc:
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
        except CALL_ERRORS as exc:
            self.stats.add("errors")
            _log.debug("Redis PING failed: %s", exc)
            return False
        self._ok()
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._listener is not None:
            self._listener.stop()
        if self._owns_client and self._client is not None:
            try:
                self._client.close()
            except CALL_ERRORS:  # closing a dead connection is not worth an error
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
            if value is TAKE_OVER:
                continue
            if value is not MISSING:
                self.stats.add("hits")
                return value
            break
        value = factory()  # waited long enough, or Redis failed: compute locally
        self.set(key, value, ttl)
        return value

    def _wait_for_value(self, rkey: bytes, lkey: bytes, deadline: float) -> Any:
        """Poll while another caller holds the lock: its value, TAKE_OVER if the lock went, else MISSING."""
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
                return TAKE_OVER
        return MISSING

    def _try_lock(self, lkey: bytes, token: bytes, seconds: float) -> bool | None:
        if not self._allow("lock"):
            return None
        try:
            got = self.client.set(lkey, token, nx=True, px=max(1, int(seconds * 1000)))
        except CALL_ERRORS as exc:
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
        except CALL_ERRORS as exc:
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
                    self._script(self._UNLOCK_SCRIPT)(keys=[lkey], args=[token])
                except ResponseError as exc:
                    self._scripts_refused(exc)
            if not self._scripts_allowed:
                # Check, then delete: should the lock expire and pass to another caller in between, that
                # caller merely loses exclusivity for the rest of its computation.
                if self.client.get(lkey) == token:
                    self.client.delete(lkey)
        except CALL_ERRORS as exc:
            try:
                self._failed(exc, "unlock")
            except NetworkError:
                pass  # the lock expires by itself; never hide the factory's own outcome behind this
            return
        self._ok()

    def __enter__(self) -> RedisCache:
        return self
