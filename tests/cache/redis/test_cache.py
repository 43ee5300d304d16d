"""RedisCache and AsyncRedisCache: behaviour against real redis-server processes, faults included."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
import redis

from llamahome.cache.base import Key
from llamahome.cache.redis._circuit import CLOSED, OPEN
from llamahome.cache.redis._signing import UNSIGNED
from llamahome.cache.codecs import encode
from llamahome.cache.redis import AsyncRedisCache, RedisCache
from llamahome.errors import CacheClosedError, CacheKeyError, CacheValueError, ConfigError, NetworkError

from ..conftest import RedisServer, free_port

redis_mark = pytest.mark.redis


def _dead_url() -> str:
    """A loopback URL where nothing listens (the port was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def _raw(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5)


@pytest.fixture
def cache(redis_url: str, redis_namespace: str) -> Any:
    # A generous timeout: the test box is shared and busy; the fault tests below use the 50 ms default.
    store = RedisCache(redis_url, namespace=redis_namespace, timeout=2.0)
    yield store
    store.clear()
    store.close()


# ---------------------------------------------------------------------------------------------- construction


def test_construction_never_connects_and_validates_options() -> None:
    url = _dead_url()
    cache = RedisCache(url)  # nothing listens there: building must not fail
    assert cache.namespace == "llamahome" and cache.name == "redis" and cache.timeout == 0.05
    cache.close()
    with pytest.raises(ConfigError, match="never unpickles"):
        RedisCache(url, allow_pickle=True)
    with pytest.raises(ConfigError, match="namespace"):
        RedisCache(url, namespace="")
    with pytest.raises(ConfigError, match="ttl"):
        RedisCache(url, ttl=0)
    with pytest.raises(ConfigError, match="timeout"):
        RedisCache(url, timeout=0)
    with pytest.raises(ConfigError, match="redis.asyncio"):
        RedisCache(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="RedisCache for synchronous"):
        AsyncRedisCache(redis.Redis())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="decode_responses=False"):
        RedisCache(redis.Redis(decode_responses=True))
    with pytest.raises(ConfigError, match="rediss:// for TLS"):
        RedisCache("http://127.0.0.1:6379")
    with pytest.raises(ConfigError, match="rediss:// for TLS"):
        AsyncRedisCache("redis+cluster://127.0.0.1:bad-port")
    with pytest.raises(ConfigError, match="cluster=False"):
        RedisCache("redis+cluster://127.0.0.1:7000", cluster=False)


def test_from_config_reads_the_network_block() -> None:
    block = SimpleNamespace(url=_dead_url(), namespace="app1", ttl=60.0, secret="s3", timeout=0.2)
    cache = RedisCache.from_config(block)
    assert (cache.namespace, cache.ttl, cache.timeout, cache._envelope.signed) == ("app1", 60.0, 0.2, True)
    cache.close()
    cache = RedisCache.from_config({"url": _dead_url()}, raise_errors=True)
    assert (cache.namespace, cache.ttl, cache.raise_errors, cache._envelope.signed) == ("llamahome", None, True, False)
    cache.close()
    with pytest.raises(ConfigError, match="not configured"):
        RedisCache.from_config(None)


@pytest.mark.skipif(importlib.util.find_spec("llamahome.cache.config") is None, reason="config module not written yet")
def test_from_config_accepts_the_cache_config_model() -> None:
    from llamahome.cache.config import CacheConfig

    cfg = CacheConfig.from_dict(
        {"cache": {"network": {"url": _dead_url(), "namespace": "svc", "ttl": "1h", "secret": "k", "timeout": 0.1}}}
    )
    cache = RedisCache.from_config(cfg.cache.network)
    assert (cache.namespace, cache.ttl, cache.timeout, cache._envelope.signed) == ("svc", 3600.0, 0.1, True)
    cache.close()


# ---------------------------------------------------------------------------------------------- Redis down (no server needed)


def test_unreachable_redis_degrades_to_misses_and_opens_the_breaker(clock: Any) -> None:
    cache = RedisCache(_dead_url(), failure_threshold=3, cooldown=5.0, clock=clock)
    start = time.perf_counter()
    assert cache.get("k", "default") == "default"
    assert cache.set("k", b"v") is False
    assert cache.get_many(["a", "b"]) == {}
    assert cache.stats.errors == 3 and cache.breaker.state == OPEN
    # open: no more calls to Redis, and answers come at once; reads skipped are misses, while writes
    # skipped (delete, set_many, clear, get_or_set's set) are failures counted in stats.errors
    assert cache.delete("k") is False and ("k" in cache) is False and cache.set_many({"a": 1}) is False
    assert cache.stats.errors == 5
    cache.clear()
    assert cache.cleanup().details == {"skipped": "circuit breaker open"}
    assert cache.get_or_set("k", lambda: 7) == 7
    assert time.perf_counter() - start < 2.0
    assert cache.stats.errors == 7 and cache.breaker.rejected >= 7
    assert (cache.stats.hits, cache.stats.misses, cache.stats.sets) == (0, 4, 0)
    cache.close()


def test_unreachable_cluster_and_async_degrade_to_misses(clock: Any) -> None:
    cluster_url = _dead_url().replace("redis://", "redis+cluster://").removesuffix("/0")
    cache = RedisCache(cluster_url, failure_threshold=2, clock=clock)
    start = time.perf_counter()
    assert cache.get("k", "d") == "d" and cache.set("k", 1) is False and cache.get("k", "d") == "d"
    assert time.perf_counter() - start < 1.0
    assert cache.stats.errors == 2 and cache.breaker.state == OPEN
    cache.close()

    async def scenario(url: str) -> None:
        acache = AsyncRedisCache(url, failure_threshold=2, clock=clock)
        start = time.perf_counter()
        assert await acache.get("k", "d") == "d" and await acache.set("k", 1) is False
        assert acache.stats.errors == 2 and acache.breaker.state == OPEN
        assert await acache.get_or_set("k", lambda: 3) == 3  # its set is skipped: a counted failure
        assert await acache.delete("k") is False
        assert time.perf_counter() - start < 1.0
        assert acache.stats.errors == 4 and acache.breaker.state == OPEN
        await acache.close()

    asyncio.run(scenario(_dead_url()))
    asyncio.run(scenario(cluster_url))


def test_raise_errors_turns_failures_into_network_errors(clock: Any) -> None:
    cache = RedisCache(_dead_url(), raise_errors=True, failure_threshold=2, clock=clock)
    with pytest.raises(NetworkError, match="raise_errors=False"):
        cache.get("k")
    with pytest.raises(NetworkError):
        cache.set("k", 1)
    with pytest.raises(NetworkError, match="circuit breaker is open"):
        cache.get("k")
    assert cache.stats.errors == 2
    cache.close()


def test_closed_cache_refuses_use() -> None:
    cache = RedisCache(_dead_url())
    cache.close()
    cache.close()  # idempotent
    with pytest.raises(CacheClosedError, match="closed"):
        cache.get("k")


# ---------------------------------------------------------------------------------------------- basics


@redis_mark
@pytest.mark.parametrize(
    "value",
    [b"\x00bytes", "text \u00e9", 42, -(2**70), 2.5, True, None, {"a": [1, 2, {"b": None}]}, [1, "x"], ("t", b"b")],
    ids=repr,
)
def test_round_trip_values(cache: RedisCache, value: Any) -> None:
    assert cache.set("k", value) is True
    got = cache.get("k")
    assert got == value and type(got) is type(value)


@redis_mark
def test_round_trip_arrays_and_compression(redis_url: str, redis_namespace: str) -> None:
    cache = RedisCache(redis_url, namespace=redis_namespace, compression=True, timeout=2.0)
    arr = np.arange(100_000, dtype=np.float32).reshape(100, 1000)
    cache.set("arr", {"w": arr, "meta": [1, 2]})
    got = cache.get("arr")
    np.testing.assert_array_equal(got["w"], arr)
    assert got["w"].dtype == np.float32 and got["meta"] == [1, 2]
    assert cache.stats.stored_bytes < cache.stats.raw_bytes == arr.nbytes
    cache.set("text", "x" * 10_000)
    assert cache.get("text") == "x" * 10_000
    cache.clear()
    cache.close()


@redis_mark
def test_str_and_bytes_keys_are_distinct_and_namespaced(cache: RedisCache, redis_url: str) -> None:
    cache.set("a", 1)
    cache.set(b"a", 2)
    assert (cache.get("a"), cache.get(b"a")) == (1, 2)
    raw_keys = sorted(_raw(redis_url).keys(cache.namespace.encode() + b":*"))
    assert raw_keys == [cache.namespace.encode() + b":ba", cache.namespace.encode() + b":sa"]
    with pytest.raises(CacheKeyError):
        cache.get(1)  # type: ignore[arg-type]


@redis_mark
def test_get_set_delete_contains_and_exact_stats(cache: RedisCache) -> None:
    assert cache.get("missing", "d") == "d"
    assert cache.set("k", b"v") is True
    assert "k" in cache and "missing" not in cache
    assert cache.get("k") == b"v"
    assert cache.delete("k") is True and cache.delete("k") is False
    assert cache.get("k") is None
    s = cache.stats
    assert (s.hits, s.misses, s.sets, s.deletes, s.errors, s.corrupt) == (1, 2, 1, 1, 0, 0)


@redis_mark
def test_unsupported_values_raise_and_are_not_stored(cache: RedisCache) -> None:
    with pytest.raises(CacheValueError, match="safe"):
        cache.set("k", object())
    assert "k" not in cache and cache.stats.sets == 0


@redis_mark
def test_ttl_per_entry_and_default(redis_url: str, redis_namespace: str) -> None:
    cache = RedisCache(redis_url, namespace=redis_namespace, ttl=100, timeout=2.0)
    raw = _raw(redis_url)
    cache.set("default", 1)
    cache.set("own", 1, ttl=5)
    cache.set("short", 1, ttl=0.05)
    assert 99_000 < raw.pttl(cache._rkey("default")) <= 100_000
    assert 4_000 < raw.pttl(cache._rkey("own")) <= 5_000
    time.sleep(0.15)
    assert cache.get("short") is None and cache.get("own") == 1
    cache.set("own", 2, ttl=0)  # a ttl of zero or less stores nothing and removes what was there
    assert "own" not in cache
    cache.clear()
    cache.close()


@redis_mark
def test_get_many_set_many(cache: RedisCache) -> None:
    items: dict[Key, Any] = {f"k{i}": os.urandom(100) for i in range(50)}
    items[b"raw"] = {"x": 1}
    assert cache.set_many(items, ttl=60) is True
    wanted = [*items, "absent1", "absent2"]
    found = cache.get_many(wanted)
    assert found == items and list(found) == list(items)
    assert (cache.stats.hits, cache.stats.misses, cache.stats.sets) == (51, 2, 51)
    assert cache.get_many([]) == {}
    assert cache.get_many(["k1", "k1", "absent1"]) == {"k1": items["k1"]}
    assert (cache.stats.hits, cache.stats.misses) == (53, 3)


@redis_mark
def test_clear_touches_only_its_namespace(redis_url: str, redis_namespace: str) -> None:
    mine = RedisCache(redis_url, namespace=redis_namespace + "[*]", timeout=2.0)  # glob characters are escaped
    other = RedisCache(redis_url, namespace=redis_namespace + "x", timeout=2.0)
    raw = _raw(redis_url)
    raw.set(redis_namespace + "-unrelated", b"keep")
    for i in range(1200):  # more than one SCAN/UNLINK batch
        mine.set(f"k{i}", i)
    other.set("k1", "theirs")
    mine.clear()
    assert mine.get_many([f"k{i}" for i in range(1200)]) == {}
    assert other.get("k1") == "theirs" and raw.get(redis_namespace + "-unrelated") == b"keep"
    other.clear()
    raw.delete(redis_namespace + "-unrelated")
    mine.close()
    other.close()


@redis_mark
def test_cleanup_counts_namespace_entries_and_reads_maxmemory(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r", None, "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru").start()
    try:
        cache = RedisCache(server.url, namespace="app", timeout=2.0)
        raw = _raw(server.url)
        for i in range(10):
            cache.set(f"k{i}", os.urandom(1000))
        raw.set(b"app:foreign", b"x" * 50)  # under the namespace but not an entry key: not counted
        raw.set(b"elsewhere", b"y")
        report = cache.cleanup()
        expected = sum(raw.strlen(cache._rkey(f"k{i}")) for i in range(10))
        assert (cache.stats.entries, cache.stats.bytes, len(cache)) == (10, expected, 10)
        assert cache.stats.max_bytes == 64 * 1024 * 1024
        assert report.removed == 0
        assert report.details["server_maxmemory_policy"] == "allkeys-lru"
        assert report.details["server_used_memory"] > expected
        cache.clear()
        assert cache.stats.entries == 0 and raw.get(b"elsewhere") == b"y" and raw.get(b"app:foreign") is None
        cache.close()
        raw.close()
    finally:
        server.kill()


@redis_mark
def test_password_through_the_url(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r", None, "--requirepass", "s3cret").start()
    try:
        good = RedisCache(f"redis://:s3cret@127.0.0.1:{server.port}/0", timeout=2.0)
        assert good.set("k", b"v") is True and good.get("k") == b"v"
        bad = RedisCache(f"redis://:wrong@127.0.0.1:{server.port}/0", timeout=2.0)
        assert bad.get("k", "denied") == "denied" and bad.stats.errors == 1
        good.close()
        bad.close()
    finally:
        server.kill()


@redis_mark
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a test certificate")
def test_tls_through_the_url(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )
    tls_port = free_port()
    server = RedisServer(
        tmp_path / "r", None, "--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
    )
    try:
        server.start()
    except RuntimeError:
        pytest.skip("this redis-server was built without TLS support")
    try:
        cache = RedisCache(f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert}", timeout=2.0)
        assert cache.set("k", {"tls": True}) is True and cache.get("k") == {"tls": True}
        assert cache.stats.errors == 0
        cache.close()
        untrusting = RedisCache(f"rediss://127.0.0.1:{tls_port}/0", timeout=2.0)  # unknown CA: refused
        assert untrusting.get("k", "refused") == "refused" and untrusting.stats.errors == 1
        untrusting.close()
    finally:
        server.kill()


# ---------------------------------------------------------------------------------------------- untrusted data


@redis_mark
def test_signature_mismatch_is_a_counted_miss(redis_url: str, redis_namespace: str, caplog: Any) -> None:
    writer = RedisCache(redis_url, namespace=redis_namespace, secret="one", timeout=2.0)
    reader = RedisCache(redis_url, namespace=redis_namespace, secret="two", timeout=2.0)
    same = RedisCache(redis_url, namespace=redis_namespace, secret="one", timeout=2.0)
    writer.set("k", {"v": 1})
    writer.set_many({"a": b"1", "b": b"2"})
    with caplog.at_level(logging.WARNING, logger="llamahome.cache.redis"):
        assert reader.get("k", "miss") == "miss"
    assert "signature does not match" in caplog.text
    assert reader.get_many(["a", "b"]) == {}
    assert (reader.stats.corrupt, reader.stats.misses, reader.stats.hits) == (3, 3, 0)
    assert same.get("k") == {"v": 1} and same.get_many(["a", "b"]) == {"a": b"1", "b": b"2"}
    # tampering with a signed entry is caught too
    raw = _raw(redis_url)
    data = bytearray(cast(bytes, raw.get(writer._rkey("k"))))
    data[-1] ^= 1
    raw.set(writer._rkey("k"), bytes(data))
    assert same.get("k") is None and same.stats.corrupt == 1
    # an unsigned writer's entries are not trusted by a signing reader
    RedisCache(redis_url, namespace=redis_namespace, timeout=2.0).set("plain", b"x")
    assert same.get("plain") is None and same.stats.corrupt == 2
    writer.clear()
    for c in (writer, reader, same):
        c.close()


@redis_mark
@pytest.mark.parametrize(
    "payload",
    [
        b"some other application's value",
        b"",
        UNSIGNED + b"LHC1garbage",  # our envelope, a broken frame
        UNSIGNED + encode(b"x" * 100)[:-10],  # truncated
        UNSIGNED + encode(os.urandom(100))[:-1] + b"!!",  # raw length mismatch (fast path must notice)
        UNSIGNED + encode(SimpleNamespace(a=1), allow_pickle=True),  # pickle: never loaded from the network
    ],
    ids=["foreign", "empty", "bad-frame", "truncated", "length", "pickle"],
)
def test_foreign_or_damaged_data_is_a_counted_miss(cache: RedisCache, redis_url: str, payload: bytes) -> None:
    raw = _raw(redis_url)
    raw.set(cache._rkey("k"), payload)
    assert cache.get("k", "miss") == "miss"
    assert cache.get_many(["k"]) == {}
    assert (cache.stats.corrupt, cache.stats.misses, cache.stats.errors) == (2, 2, 0)


@redis_mark
def test_foreign_data_of_another_type_is_a_counted_miss(cache: RedisCache, redis_url: str) -> None:
    raw = _raw(redis_url)
    raw.rpush(cache._rkey("list"), b"x")  # WRONGTYPE on GET: a server-side error, not an outage
    assert cache.get("list", "miss") == "miss"
    assert cache.stats.errors == 1 and cache.breaker.state == CLOSED


# ---------------------------------------------------------------------------------------------- faults


@redis_mark
def test_server_killed_and_restarted_degrades_then_recovers(redis_restartable: RedisServer, clock: Any) -> None:
    server = redis_restartable
    cache = RedisCache(server.url, namespace="app", failure_threshold=3, cooldown=5.0, clock=clock)
    assert cache.set("k", b"v") is True and cache.get("k") == b"v"
    server.kill()
    for _ in range(3):
        start = time.perf_counter()
        assert cache.get("k", "down") == "down"
        assert time.perf_counter() - start < 0.5
    assert cache.breaker.state == OPEN and cache.stats.errors == 3
    start = time.perf_counter()
    for _ in range(100):  # the open breaker answers without touching the network
        assert cache.get("k", "down") == "down" and cache.set("k", b"v") is False
    # the skipped gets are misses; the 100 skipped sets are failures (issue 11, item 17)
    assert time.perf_counter() - start < 0.2 and cache.stats.errors == 103
    server.restart()  # same port, empty (no persistence)
    assert cache.get("k", "still open") == "still open"
    clock.advance(5.0)
    assert cache.set("k", b"again") is True  # the half-open trial succeeds and closes the breaker
    assert cache.breaker.state == CLOSED and cache.get("k") == b"again"
    assert cache.stats.errors == 103
    cache.close()


@redis_mark
def test_slow_server_is_a_miss_within_the_timeout(redis_restartable: RedisServer, clock: Any) -> None:
    server = redis_restartable
    cache = RedisCache(server.url, namespace="app", clock=clock)  # the 50 ms default
    cache.set("k", b"v")
    server.pause()
    try:
        start = time.perf_counter()
        assert cache.get("k", "slow") == "slow"
        assert cache.set("k2", b"v") is False
        assert cache.get_many(["k"]) == {}
        elapsed = time.perf_counter() - start
        assert elapsed < 1.0, elapsed  # 3 calls x 50 ms, with room for a busy box
        assert cache.stats.errors == 3
    finally:
        server.resume()
    clock.advance(10)
    assert cache.get("k") == b"v"
    assert cache.breaker.state == CLOSED
    cache.close()


@redis_mark
def test_async_server_killed_and_restarted(redis_restartable: RedisServer, clock: Any) -> None:
    server = redis_restartable

    async def scenario() -> None:
        cache = AsyncRedisCache(server.url, namespace="app", failure_threshold=2, cooldown=1.0, clock=clock)
        assert await cache.set("k", b"v") is True
        server.kill()
        start = time.perf_counter()
        assert await cache.get("k", "down") == "down"
        assert await cache.set("k", b"v") is False
        assert await cache.get_many(["k"]) == {}
        assert time.perf_counter() - start < 1.0
        assert cache.stats.errors == 2 and cache.breaker.state == OPEN
        server.restart()
        clock.advance(1.0)
        assert await cache.set("k", b"back") is True and await cache.get("k") == b"back"
        await cache.close()

    asyncio.run(scenario())


# ---------------------------------------------------------------------------------------------- get_or_set


@redis_mark
def test_get_or_set_computes_once_across_machines(redis_url: str, redis_namespace: str) -> None:
    # Each "machine" has its own RedisCache (own connections), as separate hosts would.
    machines = [RedisCache(redis_url, namespace=redis_namespace, timeout=2.0) for _ in range(4)]
    calls: list[int] = []
    results: list[Any] = []

    def factory() -> dict[str, int]:
        calls.append(1)
        time.sleep(0.2)
        return {"answer": 42}

    threads = [threading.Thread(target=lambda c=c: results.append(c.get_or_set("k", factory, ttl=60))) for c in machines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results == [{"answer": 42}] * 4
    assert machines[0].get_or_set("k", factory) == {"answer": 42} and len(calls) == 1
    assert not _raw(redis_url).exists(machines[0]._lkey("k"))  # the lock was released
    machines[0].clear()
    for c in machines:
        c.close()


@redis_mark
def test_get_or_set_takes_over_when_the_lock_holder_died(cache: RedisCache, redis_url: str) -> None:
    _raw(redis_url).set(cache._lkey("k"), b"dead-holder", px=300)  # a holder that will never write the value
    start = time.perf_counter()
    assert cache.get_or_set("k", lambda: "mine") == "mine"
    assert 0.25 < time.perf_counter() - start < 2.0
    assert cache.get("k") == "mine"


@redis_mark
def test_get_or_set_waits_only_lock_timeout_then_computes_locally(cache: RedisCache, redis_url: str) -> None:
    _raw(redis_url).set(cache._lkey("k"), b"stuck-holder", px=60_000)
    start = time.perf_counter()
    assert cache.get_or_set("k", lambda: 5, lock_timeout=0.2) == 5
    assert 0.15 < time.perf_counter() - start < 1.5


@redis_mark
def test_get_or_set_factory_error_propagates_and_releases_the_lock(cache: RedisCache, redis_url: str) -> None:
    def broken() -> Any:
        raise RuntimeError("factory failed")

    with pytest.raises(RuntimeError, match="factory failed"):
        cache.get_or_set("k", broken)
    assert not _raw(redis_url).exists(cache._lkey("k")) and "k" not in cache
    assert cache.get_or_set("k", lambda: 1) == 1


# ---------------------------------------------------------------------------------------------- async twin


@redis_mark
def test_async_cache_mirrors_the_sync_one(redis_url: str, redis_namespace: str) -> None:
    async def scenario() -> None:
        async with AsyncRedisCache(redis_url, namespace=redis_namespace, timeout=2.0, secret="s") as cache:
            assert await cache.set("k", {"a": 1}) is True
            assert await cache.get("k") == {"a": 1} and await cache.contains("k")
            assert await cache.set_many({"x": b"1", "y": b"2"}, ttl=30) is True
            assert await cache.get_many(["x", "y", "z"]) == {"x": b"1", "y": b"2"}
            report = await cache.cleanup()
            assert cache.stats.entries == 3 and report.details["entries"] == 3
            assert await cache.delete("k") is True and not await cache.contains("k")
            calls: list[int] = []

            async def factory() -> str:
                calls.append(1)
                await asyncio.sleep(0.1)
                return "computed"

            got = await asyncio.gather(*(cache.get_or_set("g", factory) for _ in range(5)))
            assert got == ["computed"] * 5 and len(calls) == 1
            await cache.clear()
            assert await cache.get_many(["x", "y", "g"]) == {}
            s = cache.stats
            assert (s.sets, s.deletes, s.corrupt, s.errors) == (4, 1, 0, 0)
        with pytest.raises(CacheClosedError):
            await cache.get("k")

    asyncio.run(scenario())


# ---------------------------------------------------------------------------------------------- cluster


@redis_mark
def test_cluster_multi_key_operations_span_slots(redis_cluster: Any, redis_namespace: str) -> None:
    cache = RedisCache(redis_cluster.url, namespace=redis_namespace, timeout=2.0, secret="s")
    items: dict[Key, Any] = {f"key-{i}": i for i in range(200)}  # spread over all three primaries
    assert cache.set_many(items) is True
    assert cache.get_many([*items, "absent"]) == items
    report = cache.cleanup()
    assert cache.stats.entries == 200 and report.details["server_used_memory"] > 0
    assert report.details["server_maxmemory_policy"] == "noeviction" and cache.stats.max_bytes == 0
    slots = {cache.client.keyslot(cache._rkey(k)) for k in items}
    assert len(slots) > 100
    assert cache.get_or_set("computed", lambda: "v") == "v" and cache.get("computed") == "v"
    assert cache.delete("key-1") is True and "key-1" not in cache
    cache.clear()
    assert cache.get_many(list(items)) == {} and cache.cleanup().details["entries"] == 0
    cache.close()
    flagged = RedisCache(redis_cluster.url.replace("redis+cluster", "redis"), cluster=True, namespace=redis_namespace,
                         timeout=2.0)
    assert flagged.set("x", 1) is True and flagged.get("x") == 1
    flagged.clear()
    flagged.close()


@redis_mark
def test_async_cluster(redis_cluster: Any, redis_namespace: str) -> None:
    async def scenario() -> None:
        cache = AsyncRedisCache(redis_cluster.url, namespace=redis_namespace, timeout=2.0)
        items: dict[Key, Any] = {f"key-{i}": str(i) for i in range(100)}
        assert await cache.set_many(items) is True
        assert await cache.get_many(items) == items
        await cache.cleanup()
        assert cache.stats.entries == 100
        await cache.clear()
        assert await cache.get_many(items) == {}
        await cache.close()

    asyncio.run(scenario())


# ---------------------------------------------------------------------------------------------- as a tier


@redis_mark
@pytest.mark.skipif(importlib.util.find_spec("llamahome.cache.tiered") is None, reason="TieredCache not written yet")
def test_plugs_into_tiered_cache_as_the_third_tier(tmp_path: Path, redis_url: str, redis_namespace: str) -> None:
    from llamahome.cache.disk import DiskCache
    from llamahome.cache.memory import MemoryCache
    from llamahome.cache.tiered import TieredCache

    host_a_redis = RedisCache(redis_url, namespace=redis_namespace, timeout=2.0)
    host_a = TieredCache(MemoryCache(size=1), DiskCache(tmp_path / "a", size=4), host_a_redis)
    host_b_redis = RedisCache(redis_url, namespace=redis_namespace, timeout=2.0)
    host_b_disk = DiskCache(tmp_path / "b", size=4)
    host_b = TieredCache(MemoryCache(size=1), host_b_disk, host_b_redis)
    host_a.set("k", {"v": 1}, ttl=60)
    host_a.set_many({"m1": b"1", "m2": b"2"})
    # host b hears of the three writes (a copy made before that would be dropped when it does)
    deadline = time.monotonic() + 5
    while host_b_redis.stats.invalidations < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert host_b_redis.stats.invalidations == 3
    assert host_b.get("k") == {"v": 1}  # found in Redis, promoted into host b's local tiers
    assert host_b.get_many(["m1", "m2", "none"]) == {"m1": b"1", "m2": b"2"}
    assert (host_b_redis.stats.hits, host_b_redis.stats.misses) == (3, 1)
    assert host_b.get("k") == {"v": 1} and host_b.get_many(["m1", "m2"]) == {"m1": b"1", "m2": b"2"}
    assert host_b_redis.stats.hits == 3  # now served locally
    # the promoted copy keeps the shared entry's remaining ttl; untimed entries stay untimed
    value, ttl = host_b_disk.get_with_ttl("k")
    assert value == {"v": 1} and ttl is not None and 55 < ttl <= 60
    assert host_b_disk.get_with_ttl("m1") == (b"1", None)
    host_a.clear()
    assert host_b_redis.get_many(["k", "m1", "m2"]) == {}
    host_a.close()
    host_b.close()


@redis_mark
def test_get_with_ttl_reports_the_remaining_ttl(cache: RedisCache) -> None:
    cache.set("timed", b"t", ttl=30)
    cache.set("forever", {"f": 1})
    value, ttl = cache.get_with_ttl("timed")
    assert value == b"t" and ttl is not None and 29 < ttl <= 30
    assert cache.get_with_ttl("forever") == ({"f": 1}, None)
    assert cache.get_with_ttl("absent", "d") == ("d", None)
    many = cache.get_many_with_ttl(["timed", "forever", "absent"])
    assert set(many) == {"timed", "forever"} and many["forever"] == ({"f": 1}, None)
    assert many["timed"][0] == b"t" and 29 < many["timed"][1] <= 30  # type: ignore[operator]
    assert (cache.stats.hits, cache.stats.misses) == (4, 2)


@redis_mark
def test_get_many_with_ttl_on_cluster_and_async(redis_cluster: Any, redis_url: str, redis_namespace: str) -> None:
    cluster = RedisCache(redis_cluster.url, namespace=redis_namespace, timeout=2.0)
    cluster.set_many({f"k{i}": i for i in range(50)}, ttl=40)
    got = cluster.get_many_with_ttl([f"k{i}" for i in range(60)])
    assert sorted(got) == sorted(f"k{i}" for i in range(50))
    assert all(v == int(k[1:]) and ttl is not None and 35 < ttl <= 40 for k, (v, ttl) in got.items())
    cluster.clear()
    cluster.close()

    async def scenario(url: str) -> None:
        cache = AsyncRedisCache(url, namespace=redis_namespace, timeout=2.0)
        await cache.set("a", "x", ttl=20)
        await cache.set("b", "y")
        value, ttl = await cache.get_with_ttl("a")
        assert value == "x" and ttl is not None and 15 < ttl <= 20
        assert await cache.get_many_with_ttl(["b", "c"]) == {"b": ("y", None)}
        await cache.clear()
        await cache.close()

    asyncio.run(scenario(redis_url))
    asyncio.run(scenario(redis_cluster.url))


@redis_mark
def test_falls_back_to_pipelines_where_scripts_are_refused(redis_restartable: RedisServer, caplog: Any) -> None:
    admin = _raw(redis_restartable.url)
    admin.acl_setuser("noscripts", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-@scripting"])
    url = f"redis://noscripts:pw@127.0.0.1:{redis_restartable.port}/0"
    cache = RedisCache(url, namespace="app", timeout=2.0)
    cache.set("a", b"1", ttl=30)
    cache.set("b", b"2")
    with caplog.at_level(logging.WARNING, logger="llamahome.cache.redis"):
        value, ttl = cache.get_with_ttl("a")
    assert "falls back to pipelines" in caplog.text
    assert value == b"1" and ttl is not None and 25 < ttl <= 30
    assert cache.get_many_with_ttl(["a", "b", "c"])["b"] == (b"2", None)
    assert cache.get_or_set("g", lambda: "v") == "v" and not admin.exists(cache._lkey("g"))  # unlocked anyway
    assert cache.stats.errors == 0

    async def scenario() -> None:
        acache = AsyncRedisCache(url, namespace="app", timeout=2.0)
        assert (await acache.get_with_ttl("b")) == (b"2", None)
        assert await acache.get_or_set("h", lambda: "w") == "w" and not admin.exists(acache._lkey("h"))
        assert acache.stats.errors == 0
        await acache.close()

    asyncio.run(scenario())
    cache.close()
    admin.close()


# ---------------------------------------------------------------------------------------------- layout


def test_the_redis_package_imports_no_private_names_from_other_modules() -> None:
    """Its modules share code through BaseRedisCache and public names, never another module's ``_name``."""
    import ast

    import llamahome.cache.redis as package

    root = Path(package.__file__).parent
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            # our own modules only: redis-py's _RESP3Parser (see _invalidation) is not ours to rename
            if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith("llamahome")):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from {node.module}"
