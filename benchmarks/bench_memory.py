"""MemoryCache against its peers: get-hit and set-with-eviction, 100-byte values, 100k keys, byte-bounded.

    .venv/bin/python benchmarks/bench_memory.py            # 30 trials, plus MemoryCache's other policies
    .venv/bin/python benchmarks/bench_memory.py --quick    # 8 trials, the targets' peers only

Every peer runs in this one process on the same keys; each trial times every peer once, in a rotated order
(interleaved, so a busy moment on the machine hits all peers alike), and the table shows medians over trials
in ns per operation, loop and call overhead included, and the median of per-trial ratios to cachetools.

- get-hit: a full cache of 100k entries read in a shuffled order (every read a hit), 10k reads a sample.
- set-with-eviction: another full cache of the same peer written with new keys (every write evicts one).

Peers: ``MemoryCache`` (stats always on, lock, byte bound with key + value + per-entry overhead);
``cachetools.LRUCache(getsizeof=len)``; ``cachebox.LRUCache`` with a ``getsizeof`` (Rust); cachebox behind a
lock with exact counters and MemoryCache's charges (what using it as MemoryCache's engine would cost);
``functools.lru_cache`` (count-bound, no byte bound); a plain ``dict`` (the floor: ``dict.get``, and an
``OrderedDict`` FIFO insert-and-pop on set). The full run adds MemoryCache's general path (lfu, fifo, time,
lru with a ttl on every entry, compression).
The issue's targets: MemoryCache get-hit <= 0.6x and set-with-eviction <= 0.5x of cachetools.
"""

from __future__ import annotations

import argparse
import functools
import gc
import random
import statistics
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from llamahome.cache.memory import ENTRY_OVERHEAD, MemoryCache  # noqa: E402

try:
    import cachetools
except ImportError:  # pragma: no cover - dev extra
    cachetools = None
try:
    import cachebox
except ImportError:  # pragma: no cover - dev extra
    cachebox = None

N = 100_000
VALUE_SIZE = 100
KEY_LEN = 14  # every key has the same length, so every entry costs the same
BATCH = 10_000  # operations per timed sample


def key(prefix: str, i: int) -> str:
    return f"{prefix}:{i:0{KEY_LEN - len(prefix) - 1}d}"


class CacheboxWithStats:
    """cachebox as MemoryCache's engine would have to be used: one lock, exact counters, honest charges.

    The charge (key + value + ENTRY_OVERHEAD) is computed before the lock and handed to cachebox's
    ``getsizeof`` through ``_charge``: cachebox calls it once per insert and remembers the size.
    """

    def __init__(self, max_bytes: int) -> None:
        self._charge = 0
        self._cache = cachebox.LRUCache(maxsize=max_bytes, getsizeof=lambda k, v: self._charge)
        self._lock = threading.Lock()
        self.hits = self.misses = self.sets = self.evictions = 0
        self._missing = object()

    def get(self, k: str, default: object = None) -> object:
        self._lock.acquire()
        try:
            value = self._cache.get(k, self._missing)
            if value is self._missing:
                self.misses += 1
                return default
            self.hits += 1
            return value
        finally:
            self._lock.release()

    def set(self, k: str, value: bytes) -> None:
        charge = len(k) + len(value) + ENTRY_OVERHEAD
        self._lock.acquire()
        try:
            new = k not in self._cache
            before = len(self._cache)
            self._charge = charge
            self._cache[k] = value
            self.sets += 1
            self.evictions += before + new - len(self._cache)
        finally:
            self._lock.release()


def _filled(factory: Callable[[], Any], put: Callable[[Any, str, bytes], object], keys: list[str],
            values: list[bytes]) -> Any:
    cache = factory()
    for k, v in zip(keys, values):
        put(cache, k, v)
    return cache


def build_peers(values: list[bytes], keys: list[str], variants: bool = False) -> dict[str, dict[str, Any]]:
    """For each peer, two full caches: one only read ('get': key -> value), one only written ('set': key,
    value -> None, evicting), so reads always meet the layout of a freshly filled cache."""
    per_entry = KEY_LEN + VALUE_SIZE + ENTRY_OVERHEAD
    peers: dict[str, dict[str, Any]] = {}

    def item(cache: Any, k: str, v: bytes) -> None:
        cache[k] = v

    def mem_factory() -> MemoryCache:
        return MemoryCache(size=N * per_entry / 1024**2)

    def mem_put(cache: Any, k: str, v: bytes) -> None:
        cache.set(k, v)

    reader = _filled(mem_factory, mem_put, keys, values)
    writer = _filled(mem_factory, mem_put, keys, values)
    assert len(reader) == len(writer) == N
    peers["MemoryCache"] = {"get": reader.get, "set": writer.set, "caches": (reader, writer)}
    if variants:
        # The general path: other policies, entries with a ttl (deadline checks on every hit), compression
        # (encode on set, decode on get; 100 random bytes do not compress, so frames stay uncompressed).
        for label, kwargs, ttl in (
            ("lfu", {"policy": "lfu"}, None),
            ("fifo", {"policy": "fifo"}, None),
            ("time", {"policy": "time"}, None),
            ("lru+ttl", {}, 1e9),
            ("compressed", {"compression": True}, None),
        ):
            per = per_entry + (192 if "compression" in kwargs else 0)  # room for the frame headers

            def factory(kwargs: dict[str, Any] = kwargs, per: int = per) -> MemoryCache:
                return MemoryCache(size=N * per / 1024**2, **kwargs)

            def put(cache: Any, k: str, v: bytes, ttl: float | None = ttl) -> None:
                cache.set(k, v, ttl=ttl)

            reader, writer = (_filled(factory, put, keys, values) for _ in range(2))
            assert len(reader) == len(writer) == N, (label, len(reader))
            setter = writer.set if ttl is None else functools.partial(writer.set, ttl=ttl)
            peers[f"MemoryCache {label}"] = {"get": reader.get, "set": setter}

    if cachetools is not None:
        for name, getter in (("cachetools.get", "get"), ("cachetools[k]", "__getitem__")):
            reader, writer = (
                _filled(lambda: cachetools.LRUCache(maxsize=N * VALUE_SIZE, getsizeof=len), item, keys, values)
                for _ in range(2)
            )
            assert len(reader) == len(writer) == N
            peers[name] = {"get": getattr(reader, getter), "set": writer.__setitem__}
    if cachebox is not None:
        reader, writer = (
            _filled(lambda: cachebox.LRUCache(maxsize=N * VALUE_SIZE, getsizeof=lambda k, v: len(v)), item, keys,
                    values)
            for _ in range(2)
        )
        assert len(reader) == len(writer) == N
        peers["cachebox"] = {"get": reader.get, "set": writer.__setitem__}
        reader, writer = (_filled(lambda: CacheboxWithStats(N * per_entry), mem_put, keys, values) for _ in range(2))
        assert len(reader._cache) == len(writer._cache) == N
        peers["cachebox+stats"] = {"get": reader.get, "set": writer.set}

    value = values[0]

    @functools.lru_cache(maxsize=N)
    def read(k: str) -> bytes:
        return value

    @functools.lru_cache(maxsize=N)
    def write(k: str) -> bytes:
        return value

    for k in keys:
        read(k)
        write(k)
    # lru_cache has no "set": a call with a new argument (a miss that computes, stores and evicts) stands in.
    peers["functools.lru_cache"] = {"get": read, "set": lambda k, v: write(k)}

    # The floor: a plain dict read (no order kept), and an OrderedDict written FIFO (a plain dict cannot
    # drop its oldest key in O(1) once many were deleted).
    d = dict(zip(keys, values))
    od = OrderedDict(zip(keys, values))

    def od_set(k: str, v: bytes) -> None:
        od[k] = v
        od.popitem(last=False)

    peers["dict"] = {"get": d.get, "set": od_set}
    return peers


def time_gets(fn: Callable[[str], object], keys: list[str]) -> float:
    gc.disable()
    try:
        t0 = time.perf_counter_ns()
        for k in keys:
            fn(k)
        return (time.perf_counter_ns() - t0) / len(keys)
    finally:
        gc.enable()


def time_sets(fn: Callable[[str, bytes], object], keys: list[str], value: bytes) -> float:
    gc.disable()
    try:
        t0 = time.perf_counter_ns()
        for k in keys:
            fn(k, value)
        return (time.perf_counter_ns() - t0) / len(keys)
    finally:
        gc.enable()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 trials, the targets' peers only")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--only", default="", help="comma-separated peer names to run (cachetools.get always runs)")
    args = parser.parse_args(argv)
    trials = args.trials or (8 if args.quick else 30)

    rng = random.Random(42)
    keys = [key("k", i) for i in range(N)]
    values = [rng.randbytes(VALUE_SIZE) for _ in range(N)]
    peers = build_peers(values, keys, variants=not args.quick)
    if args.only:
        wanted = set(args.only.split(",")) | {"cachetools.get", "MemoryCache"}
        peers = {n: p for n, p in peers.items() if n in wanted}
    names = list(peers)
    order = keys[:]
    rng.shuffle(order)

    results: dict[str, dict[str, list[float]]] = {op: {n: [] for n in names} for op in ("get-hit", "set-evict")}
    for t in range(trials):
        # Short batches, many trials: a burst of load on the (shared) machine spoils few samples, and the
        # rotation puts every peer before and after every other one.
        start = (t * BATCH) % N
        reads = order[start:start + BATCH]
        fresh = [key(f"t{t}", i) for i in range(BATCH)]
        rotated = names[t % len(names):] + names[: t % len(names)]
        for name in rotated:
            results["get-hit"][name].append(time_gets(peers[name]["get"], reads))
        for name in rotated:
            results["set-evict"][name].append(time_sets(peers[name]["set"], fresh, values[t % N]))

    print(f"MemoryCache vs peers: {N:,} keys, {VALUE_SIZE} B values, {trials} interleaved trials of {BATCH:,} ops, "
          f"medians in ns/op (loop and call included); python {sys.version.split()[0]}")
    have_base = "cachetools.get" in names
    targets = {"get-hit": 0.6, "set-evict": 0.5}

    def ratio(op: str, name: str) -> float:
        # The median of per-trial ratios: each pair was timed moments apart, so load bursts cancel.
        pairs = zip(results[op][name], results[op]["cachetools.get"])
        return statistics.median(a / b for a, b in pairs)

    print(f"{'peer':22s} {'get-hit':>9s} {'ratio':>6s}   {'set-evict':>9s} {'ratio':>6s}")
    for name in names:
        row = f"{name:22s}"
        for op in ("get-hit", "set-evict"):
            med = statistics.median(results[op][name])
            shown = f"{ratio(op, name):.2f}" if have_base else "-"
            row += f" {med:9.0f} {shown:>6s}  "
        print(row)
    print("ratio: median over trials of (peer / cachetools.get) timed in the same trial")
    print()
    for role, mem in zip(("reader", "writer"), peers["MemoryCache"]["caches"]):
        st = mem.stats
        print(f"MemoryCache {role} stats: entries={st.entries:,} bytes={st.bytes:,} <= max_bytes={st.max_bytes:,}: "
              f"{st.bytes <= st.max_bytes}; hits={st.hits:,} sets={st.sets:,} evictions={st.evictions:,}")
    if have_base:
        for op in ("get-hit", "set-evict"):
            r = ratio(op, "MemoryCache")
            verdict = "met" if r <= targets[op] else "not met"
            print(f"target {op}: MemoryCache/cachetools = {r:.2f} (target <= {targets[op]}): {verdict}")
    print("(cachetools ratio base: cachetools.get, the same API as MemoryCache.get; the machine may be busy)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
