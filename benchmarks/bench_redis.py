"""RedisCache against raw redis-py on the same self-started redis-server (loopback, persistence off).

    .venv/bin/python benchmarks/bench_redis.py [--quick]

Targets (issue 7): RedisCache get-hit <= 1.2x a raw GET (1 KiB values); get_many of 100 keys >= 0.8x the
throughput of a raw MGET. Peers run side by side in one process, trials interleaved (order alternating),
and the medians of the per-trial figures are printed with their ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import redis

from llamahome.cache.redis import RedisCache


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(workdir: str) -> tuple[subprocess.Popen[bytes], int]:
    exe = shutil.which("redis-server")
    if exe is None:
        print("redis-server is not installed; install it (apt-get install redis-server) to run this benchmark.")
        sys.exit(0)
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(500):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.01)
    client.close()
    return proc, port


def per_op(fn: Callable[[], object], ops: int) -> float:
    """Seconds per call of ``fn`` over ``ops`` calls."""
    start = time.perf_counter()
    for _ in range(ops):
        fn()
    return (time.perf_counter() - start) / ops


def interleaved(peers: dict[str, Callable[[], float]], trials: int) -> dict[str, list[float]]:
    """Each peer's figure over ``trials`` short rounds, alternating the order every round.

    Short rounds keep the peers of one round under the same load on a shared box, so paired ratios
    (:func:`paired`) stay meaningful even when the load drifts during the run.
    """
    results: dict[str, list[float]] = {name: [] for name in peers}
    names = list(peers)
    for trial in range(trials):
        for name in names if trial % 2 == 0 else reversed(names):
            results[name].append(peers[name]())
    return results


def paired(a: list[float], b: list[float]) -> float:
    """Median over rounds of a/b (each round's peers ran back to back)."""
    return statistics.median(x / y for x, y in zip(a, b))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (fewer trials and calls)")
    args = parser.parse_args()
    trials, ops, batches = (9, 200, 20) if args.quick else (61, 500, 50)

    with tempfile.TemporaryDirectory() as workdir:
        proc, port = start_server(workdir)
        try:
            raw = redis.Redis(port=port)
            cache = RedisCache(f"redis://127.0.0.1:{port}/0", namespace="bench")  # default 50 ms timeout
            signed = RedisCache(f"redis://127.0.0.1:{port}/0", namespace="bench-signed", secret="bench-secret")
            value = os.urandom(1024)
            raw.set(b"raw:one", value)
            cache.set("one", value)
            keys = [f"k{i}" for i in range(100)]
            raw_keys = [f"raw:{k}".encode() for k in keys]
            raw.mset({k: value for k in raw_keys})
            cache.set_many({k: value for k in keys})
            signed.set("one", value)
            signed.set_many({k: value for k in keys})
            assert cache.get("one") == value and len(cache.get_many(keys)) == 100

            def raw_pipeline() -> None:
                pipe = raw.pipeline(transaction=False)
                for k in raw_keys:
                    pipe.get(k)
                pipe.execute()

            gets = interleaved(
                {
                    "raw GET": lambda: per_op(lambda: raw.get(b"raw:one"), ops),
                    "RedisCache.get": lambda: per_op(lambda: cache.get("one"), ops),
                    "RedisCache.get (signed)": lambda: per_op(lambda: signed.get("one"), ops),
                    "RedisCache.get_with_ttl": lambda: per_op(lambda: cache.get_with_ttl("one"), ops),
                },
                trials,
            )
            many = interleaved(
                {
                    "raw MGET x100": lambda: per_op(lambda: raw.mget(raw_keys), batches),
                    "raw pipeline GET x100": lambda: per_op(raw_pipeline, batches),
                    "RedisCache.get_many x100": lambda: per_op(lambda: cache.get_many(keys), batches),
                    "RedisCache.get_many (signed)": lambda: per_op(lambda: signed.get_many(keys), batches),
                    "RedisCache.get_many_with_ttl": lambda: per_op(lambda: cache.get_many_with_ttl(keys), batches),
                },
                trials,
            )
            sets = interleaved(
                {
                    "raw SET": lambda: per_op(lambda: raw.set(b"raw:one", value), ops),
                    "RedisCache.set": lambda: per_op(lambda: cache.set("one", value), ops),
                },
                trials,
            )
            errors = cache.stats.errors + signed.stats.errors
            cache.close()
            signed.close()
            raw.close()
        finally:
            proc.kill()
            proc.wait()

    print(f"redis-py {redis.__version__}, 1 KiB values, {trials} interleaved rounds; medians, and ratios as the "
          "median of per-round ratios; box shared with other work, so figures are noisy")
    med = {name: statistics.median(v) for name, v in {**gets, **sets, **many}.items()}
    print("\nsingle key, per call:")
    for name in {**gets, **sets}:
        print(f"  {name:28s} {med[name] * 1e6:8.1f} us")
    print("\n100 keys per call, keys/s:")
    for name in many:
        print(f"  {name:28s} {100 / med[name]:10,.0f} keys/s  ({med[name] * 1e6:.0f} us per call)")
    get_ratio = paired(gets["RedisCache.get"], gets["raw GET"])
    many_ratio = paired(many["raw MGET x100"], many["RedisCache.get_many x100"])
    set_ratio = paired(sets["RedisCache.set"], sets["raw SET"])
    print("\nratios:")
    print(f"  get-hit time / raw GET           {get_ratio:5.2f}x   target <= 1.20x  {'met' if get_ratio <= 1.2 else 'NOT met'}")
    print(f"  get_many throughput / raw MGET   {many_ratio:5.2f}x   target >= 0.80x  {'met' if many_ratio >= 0.8 else 'NOT met'}")
    print(f"  set time / raw SET               {set_ratio:5.2f}x   (no target)")
    print(f"  signed get / raw GET             {paired(gets['RedisCache.get (signed)'], gets['raw GET']):5.2f}x   "
          "(no target)")
    print(f"  signed get_many / raw MGET       "
          f"{paired(many['raw MGET x100'], many['RedisCache.get_many (signed)']):5.2f}x   "
          "(no target; HMAC-SHA256 per value)")
    print(f"  get_with_ttl / raw GET           {paired(gets['RedisCache.get_with_ttl'], gets['raw GET']):5.2f}x   "
          "(no target; TieredCache's path: value + remaining ttl)")
    print(f"  get_many_with_ttl / raw MGET     "
          f"{paired(many['raw MGET x100'], many['RedisCache.get_many_with_ttl']):5.2f}x   (no target; TieredCache's path)")
    print(f"  RedisCache errors during the run: {errors}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
