"""Coherence across machines (issue 13): how stale a reader gets, what invalidation costs, and why tracking.

    .venv/bin/python benchmarks/bench_coherence.py [--quick] [--cluster]

On a self-started redis-server (loopback, persistence off):

1. **Mechanisms, raw redis-py.** The time of one 1 KiB write when other machines are told about it by: nothing
   (plain SET, today's tier), a PUBLISH pipelined with the SET, a sharded SPUBLISH pipelined with it, one
   EVALSHA doing SET + PUBLISH, or RESP3 client tracking in broadcast mode (plain SET; Redis pushes the
   invalidation itself). Four other machines listen in each scheme. Then the write as the listener's writer
   makes it (a client on one connection of its own, tracking with NOLOOP: its own writes are not reported
   back), next to the same client without tracking: that ratio is what listening costs the write itself.
2. **Staleness.** Two processes play two machines (TieredCache of memory, disk and Redis each, own disk
   directories). B sets ``k`` to a new value; A, which holds the previous value in its memory tier, polls
   ``get(k)`` (every ~0.1 ms) and notes when it first sees the new value. Staleness = that time minus the
   moment B's ``set`` returned (CLOCK_MONOTONIC is shared by the processes); p50/p99/max are printed.
   Target: p99 <= 10 ms.
3. **Cost.** RedisCache.set and TieredCache.set with the invalidation listener on vs off (target: set
   throughput >= 0.9x), and a TieredCache memory hit on vs off (no Redis call either way). A listening set
   goes through the writer, which skips redis-py's pool, so it can come out faster than today's; when the
   writer is busy (another thread's set) a set takes the pool, and its echo is read and checked: that case
   is timed too ("writer busy").

``--cluster`` runs 2. and 3. on a self-started 3-primary Redis Cluster on loopback instead (the tests' own
``RedisClusterNodes``, from tests/cache/conftest.py; needs redis-cli; its servers are killed at the end).
There the listener has a writer per primary, and a listening set goes through the key's primary's writer.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from llamahome.cache import DiskCache, MemoryCache, RedisCache, TieredCache

# The server and timing helpers are bench_redis.py's (this script's folder is on sys.path when it runs).
from bench_redis import interleaved, paired, per_op, start_server


def start_cluster(workdir: str) -> Any:
    """A 3-primary Redis Cluster on loopback, started by the tests' own helper (stop() kills its servers)."""
    path = Path(__file__).resolve().parents[1] / "tests" / "cache" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_llamahome_redis_fixtures", path)
    assert spec is not None and spec.loader is not None
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    if fixtures.REDIS_SERVER is None or fixtures.REDIS_CLI is None:
        print("redis-server and redis-cli are needed for --cluster (apt-get install redis-server redis-tools).")
        sys.exit(0)
    return fixtures.RedisClusterNodes(Path(workdir) / "cluster").start()


def tiered(url: str, namespace: str, disk: Path, listen: bool = True) -> TieredCache:
    return TieredCache(MemoryCache(size=64), DiskCache(disk, size=64), RedisCache(url, namespace=namespace),
                       listen=listen)


# ------------------------------------------------------------------------------------------------ 1. mechanisms


def mechanisms(port: int, trials: int, ops: int) -> dict[str, list[float]]:
    raw = redis.Redis(port=port)
    value = os.urandom(1024)
    key, message = b"mech:sk", os.urandom(16) + b"mech:sk"
    script = raw.register_script(
        "redis.call('set', KEYS[1], ARGV[1]) redis.call('publish', ARGV[2], ARGV[3]) return 1"
    )
    # Four other machines hear of each write in every scheme, so the server's fan-out is the same.
    subscribers = [redis.Redis(port=port).pubsub() for _ in range(4)]
    for sub in subscribers:
        sub.subscribe("mech")
    shard_subscribers = [redis.Redis(port=port).pubsub() for _ in range(4)]
    for sub in shard_subscribers:
        sub.ssubscribe("mech-sharded")
    trackers = []
    for _ in range(4):
        conn = redis.connection.Connection(port=port, protocol=3)
        conn.connect()
        conn.send_command("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "track:")
        conn.read_response()
        trackers.append(conn)
    # The listener's writer (what RedisCache.set uses while listening): one connection of its own, used the way
    # InvalidationListener.try_set does (send, wait, read: no pool, no command layer), whose tracking reports
    # to this machine's listener connection but leaves out its own writes (NOLOOP). Its peer without tracking
    # shows what that path saves by itself (redis-py's pool and command layers cost tens of us a call).
    single = redis.Redis(port=port, single_connection_client=True)
    writer = redis.Redis(port=port, single_connection_client=True)
    own = redis.connection.Connection(port=port, protocol=3)  # the writer's listener: hears nothing of it
    own.connect()
    own.send_command("CLIENT", "ID")
    writer.execute_command("CLIENT", "TRACKING", "ON", "REDIRECT", own.read_response(), "BCAST", "PREFIX", "track:",
                           "NOLOOP")
    trackers.append(own)

    def direct(client: redis.Redis) -> Callable[[], object]:
        conn = client.connection
        assert conn is not None

        def write() -> None:
            conn.send_command("SET", b"track:sk", value)
            conn.can_read(timeout=1.0)
            conn.read_response()
        return write

    def drain() -> None:  # keep the receivers' buffers from growing without bound
        for sub in subscribers:
            while sub.get_message(timeout=0) is not None:
                pass
        for sub in shard_subscribers:
            while sub.get_sharded_message(timeout=0) is not None:
                pass
        for conn in trackers:
            while conn.can_read(timeout=0):
                conn.read_response(push_request=True)

    def pipelined(command: str, channel: str) -> None:
        pipe = raw.pipeline(transaction=False)
        pipe.set(key, value)
        pipe.execute_command(command, channel, message)
        pipe.execute()

    def timed(fn: Callable[[], object]) -> Callable[[], float]:
        def run() -> float:
            figure = per_op(fn, ops)
            drain()
            return figure
        return run

    results = interleaved(
        {
            "SET (no invalidation)": timed(lambda: raw.set(key, value)),
            "SET + PUBLISH, pipelined": timed(lambda: pipelined("PUBLISH", "mech")),
            "SET + SPUBLISH, pipelined": timed(lambda: pipelined("SPUBLISH", "mech-sharded")),
            "EVALSHA SET + PUBLISH": timed(lambda: script(keys=[key], args=[value, "mech", message])),
            "SET under BCAST tracking": timed(lambda: raw.set(b"track:sk", value)),
            "  the writer's path, no tracking": timed(direct(single)),
            "  the writer's path, NOLOOP tracking": timed(direct(writer)),
        },
        trials,
    )
    for conn in trackers:
        conn.disconnect()
    for sub in subscribers + shard_subscribers:
        sub.close()
    for client in (raw, single, writer):
        client.close()
    return results


# ------------------------------------------------------------------------------------------------ 2. staleness


def reader(url: str, namespace: str, disk: str, seen: mp.Array, ready: mp.Event, stop: mp.Event) -> None:
    """Machine A: poll k; note (CLOCK_MONOTONIC) when each new value first shows up."""
    cache = tiered(url, namespace, Path(disk))
    ready.set()
    last = -1
    while not stop.is_set():
        value = cache.get("k")
        if value is not None and value != last:
            now = time.monotonic()
            if 0 <= value < len(seen) and seen[value] == 0.0:
                seen[value] = now
            last = value
        time.sleep(0.0001)
    cache.close()


def staleness(url: str, workdir: str, rounds: int) -> list[float]:
    ctx = mp.get_context("spawn")
    seen = ctx.Array("d", rounds + 1, lock=False)
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=reader, args=(url, "stale", os.path.join(workdir, "a"), seen, ready, stop))
    proc.start()
    writer = tiered(url, "stale", Path(workdir) / "b")
    ready.wait(30)
    returned = [0.0] * (rounds + 1)
    writer.set("k", 0)
    out: list[float] = []
    try:
        deadline = time.monotonic() + 10
        while seen[0] == 0.0 and time.monotonic() < deadline:
            time.sleep(0.001)
        for i in range(1, rounds + 1):
            time.sleep(random.uniform(0.002, 0.006))  # A holds value i-1 in memory by now
            writer.set("k", i)
            returned[i] = time.monotonic()
            deadline = returned[i] + 2.0
            while seen[i] == 0.0 and time.monotonic() < deadline:
                time.sleep(0.0001)
            out.append(max(0.0, seen[i] - returned[i]) if seen[i] else float("inf"))
    finally:
        stop.set()
        proc.join(30)
        writer.close()
    return out


# ------------------------------------------------------------------------------------------------ 3. cost


def cost(url: str, workdir: str, trials: int, ops: int, cluster: bool = False) -> dict[str, list[float]]:
    value = os.urandom(1024)
    plain = RedisCache(url, namespace="cost-off")
    listening = RedisCache(url, namespace="cost-on")
    listening.listen(lambda keys: None, lambda: None)
    listening.listener.wait_subscribed(5)  # type: ignore[union-attr]
    off = tiered(url, "tiered-off", Path(workdir) / "off", listen=False)
    on = tiered(url, "tiered-on", Path(workdir) / "on", listen=True)
    for cache in (off, on):
        cache.set("hot", value)
    keys = itertools.cycle([f"k{i}" for i in range(1000)])  # distinct keys: each write's report is checked

    def quiet(fn: Callable[[], float]) -> Callable[[], float]:
        def run() -> float:
            time.sleep(0.05)  # the reports of the previous peer's writes are read by now
            return fn()
        return run

    def through_the_pool() -> float:  # the writer is taken (by another thread, say): pool, echo, check
        lock = listening.listener._writer_lock  # type: ignore[union-attr]
        with lock:
            return per_op(lambda: listening.set(next(keys), value), ops)

    peers = {
        "RedisCache.set, no listener": quiet(lambda: per_op(lambda: plain.set(next(keys), value), ops)),
        "RedisCache.set, listening": quiet(lambda: per_op(lambda: listening.set(next(keys), value), ops)),
        "RedisCache.set, listening, writer busy": quiet(through_the_pool),
        "TieredCache.set, listen=False": quiet(lambda: per_op(lambda: off.set(next(keys), value), ops)),
        "TieredCache.set, listen=True": quiet(lambda: per_op(lambda: on.set(next(keys), value), ops)),
    }
    if cluster and not listening.listener.has_writers:  # type: ignore[union-attr]
        del peers["RedisCache.set, listening, writer busy"]  # no writer to be busy: every set is checked
    results = interleaved(peers, trials)
    results.update(interleaved(
        {
            "TieredCache memory hit, listen=False": quiet(lambda: per_op(lambda: off.get("hot"), ops * 20)),
            "TieredCache memory hit, listen=True": quiet(lambda: per_op(lambda: on.get("hot"), ops * 20)),
        },
        trials,
    ))
    for cache in (plain, listening, off, on):
        cache.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--cluster", action="store_true", help="2. and 3. on a 3-primary Redis Cluster")
    args = parser.parse_args()
    trials, ops, rounds = (7, 200, 200) if args.quick else (31, 500, 1000)

    mech: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        if args.cluster:
            nodes = start_cluster(workdir)
            url, stop = nodes.url, nodes.stop
        else:
            proc, port = start_server(workdir)
            url = f"redis://127.0.0.1:{port}/0"

            def stop() -> None:
                proc.kill()
                proc.wait()
        try:
            if not args.cluster:
                mech = mechanisms(port, trials, ops)
            stale = staleness(url, workdir, rounds)
            costs = cost(url, workdir, trials, ops, cluster=args.cluster)
        finally:
            stop()

    where = "a 3-primary Redis Cluster" if args.cluster else "redis-server"
    print(f"redis-py {redis.__version__}, loopback {where}, 1 KiB values; medians of {trials} interleaved rounds "
          "(ratios: median of per-round ratios); the box is shared, so figures are noisy")
    if mech:
        print("\n1. one write, telling the other machines by:")
        base = mech["SET (no invalidation)"]
        for name, figures in mech.items():
            print(f"  {name:38s} {statistics.median(figures) * 1e6:7.1f} us   {paired(figures, base):5.2f}x SET")
        nolooped = paired(mech["  the writer's path, no tracking"], mech["  the writer's path, NOLOOP tracking"])
        print(f"  the writer's set throughput, NOLOOP tracking / none (like for like)  {nolooped:5.2f}x")
    print(f"\n2. staleness over {len(stale)} writes (B's set returned -> A's get returns the new value):")
    ordered = sorted(stale)
    lost = sum(1 for s in stale if s == float("inf"))
    p50, p99 = ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(f"  p50 {p50 * 1e3:6.2f} ms   p99 {p99 * 1e3:6.2f} ms   max {ordered[-1] * 1e3:6.2f} ms   "
          f"not seen within 2 s: {lost}   target p99 <= 10 ms  {'met' if p99 <= 0.010 else 'NOT met'}")
    print("\n3. cost of listening:")
    for name, figures in costs.items():
        print(f"  {name:38s} {statistics.median(figures) * 1e6:8.2f} us")
    redis_ratio = paired(costs["RedisCache.set, no listener"], costs["RedisCache.set, listening"])
    busy = costs.get("RedisCache.set, listening, writer busy")
    tiered_ratio = paired(costs["TieredCache.set, listen=False"], costs["TieredCache.set, listen=True"])
    hit_ratio = paired(costs["TieredCache memory hit, listen=True"], costs["TieredCache memory hit, listen=False"])
    print(f"  RedisCache set throughput, listening / not    {redis_ratio:5.2f}x   target >= 0.90x  "
          f"{'met' if redis_ratio >= 0.9 else 'NOT met'}  "
          + ("(no writer: own sets are echoed and checked)" if busy is None else "(the writer's path skips redis-py's pool: see 1.)"))
    print(f"  TieredCache set throughput, listen / not      {tiered_ratio:5.2f}x   target >= 0.90x  "
          f"{'met' if tiered_ratio >= 0.9 else 'NOT met'}")
    if busy is not None:
        busy_ratio = paired(costs["RedisCache.set, no listener"], busy)
        print(f"  RedisCache set throughput, writer busy / not  {busy_ratio:5.2f}x   (concurrent sets: pool, echo, check)")
    print(f"  TieredCache memory-hit time, listen / not     {hit_ratio:5.2f}x   (no Redis call either way)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
