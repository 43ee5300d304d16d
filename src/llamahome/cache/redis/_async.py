"""AsyncRedisCache: the Redis tier on ``redis.asyncio``, the twin of :class:`RedisCache`.

The same arguments and behaviour (see the package docstring), with the methods as coroutines.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import redis.asyncio
import redis.asyncio.cluster
from redis.exceptions import RedisError, ResponseError

from llamahome.errors import ConfigError, NetworkError

from ..base import MISSING, Key
from ..stats import CleanupReport
from ._core import CALL_ERRORS, DEFAULT_TIMEOUT, TAKE_OVER, BaseRedisCache

_log = logging.getLogger("llamahome.cache.redis")

__all__ = ["AsyncRedisCache"]


class AsyncRedisCache(BaseRedisCache):
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
        if isinstance(url_or_client, str):
            url = self._parse_url(url_or_client, cluster)
            if not self._cluster:
                self._client = redis.asyncio.Redis.from_url(url, **self._client_options())
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
            self._client = redis.asyncio.cluster.RedisCluster.from_url(self._url, **self._client_options())
        return self._client

    async def _call(self, op: str, make: Callable[[Any], Awaitable[Any]], write: bool = False) -> Any:
        """Run Redis work through the breaker and error policy; MISSING if it failed or was refused."""
        if not self._allow(op, write):
            return MISSING
        try:
            result = await make(self.client)  # each socket read and connect is bounded by `timeout`
        except CALL_ERRORS as exc:
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
        if await self._call("SET", lambda c: c.set(rkey, payload, px=px), write=True) is MISSING:
            return False
        self._count_sets([(rkey, packed)])
        return True

    async def delete(self, key: Key) -> bool:
        rkey = self._rkey(key)
        removed = await self._call("DEL", lambda c: c.delete(rkey), write=True)
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
                for i in range(0, len(rkeys), self._SCRIPT_CHUNK):
                    chunk = rkeys[i : i + self._SCRIPT_CHUNK]
                    replies = await self._script(self._GET_TTL_SCRIPT)(keys=chunk)
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

        if await self._call("SET pipeline", run, write=True) is MISSING:
            return False
        self._count_sets(packed)
        return len(packed) == len(items)

    async def clear(self) -> None:
        """Remove every key under this namespace (SCAN + UNLINK)."""

        async def run(client: Any) -> None:
            batch: list[bytes] = []
            async for rkey in client.scan_iter(match=self._match, count=self._SCAN_BATCH):
                batch.append(rkey)
                if len(batch) >= self._SCAN_BATCH:
                    await client.unlink(*batch)
                    batch.clear()
            if batch:
                await client.unlink(*batch)

        if await self._call("clear", run, write=True) is not MISSING:
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

            async for rkey in client.scan_iter(match=self._match, count=self._SCAN_BATCH):
                if self._is_entry_key(rkey):
                    batch.append(rkey)
                if len(batch) >= self._SCAN_BATCH:
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
        except CALL_ERRORS as exc:
            self.stats.add("errors")
            _log.debug("Redis PING failed: %s", exc)
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
            if value is TAKE_OVER:
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
                return TAKE_OVER if value is MISSING else value
            locked = await self._call("EXISTS", lambda c: c.exists(lkey))
            if locked is MISSING:
                return MISSING
            if not locked:
                return TAKE_OVER
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
                    await self._script(self._UNLOCK_SCRIPT)(keys=[lkey], args=[token])
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
            except CALL_ERRORS:
                pass

    aclose = close

    async def __aenter__(self) -> AsyncRedisCache:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
