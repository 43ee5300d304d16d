"""TrainingCache read-ahead: does the training loop ever wait on the data pipeline?

A source costs p per batch (tokenize + collate, simulated with time.sleep), the consumer c per batch (a
training step, simulated with time.sleep), N batches. Without read-ahead a pass takes about N x (p + c).

    .venv/bin/python benchmarks/bench_training.py           # N=400, 5 trials (about 2 minutes)
    .venv/bin/python benchmarks/bench_training.py --quick   # N=100, 3 trials

Targets (issue 5), with p = c = 4 ms:
- first pass (source + storing)   <= 1.10 x N x max(p, c)
- cached pass                     <= 1.05 x N x c
- the cost of storing on the first pass < 10% of p
Peers, same batches, interleaved trials: the plain loop (no read-ahead, no cache), read-ahead without a cache,
and diskcache (set on the first pass, get on later ones, no read-ahead).
"""

from __future__ import annotations

import argparse
import ctypes
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import diskcache
import numpy as np

from llamahome.cache.codecs import decode, encode_parts
from llamahome.cache.prefetch import read_ahead
from llamahome.cache.training import TrainingCache
from llamahome.cache.training._pass import snapshot as _snapshot


def precise_sleeps() -> str:
    """Ask Linux for 1 ns timer slack (inherited by threads started later), so sleep(c) costs about c.

    The default 50 us slack, plus wake-up latency on a busy box, makes a simulated 4 ms step cost 4.1-4.2 ms;
    that is noise in the simulation, not work of the pipeline, and it hits every peer alike.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return "timer slack 1 ns" if libc.prctl(29, 1, 0, 0, 0) == 0 else "default timer slack"  # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        return "default timer slack"


def make_batches(n: int, batch: int, seq: int) -> list[dict[str, np.ndarray]]:
    """Collated LM batches: Zipf-distributed token ids (as real text is), a mask and labels."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        ids = np.minimum(rng.zipf(1.2, size=(batch, seq)), 32000).astype(np.int64)
        labels = ids.copy()
        labels[:, : seq // 8] = -100
        out.append({"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels})
    return out


class Source:
    """Re-iterable: each pass costs p per batch before yielding it."""

    def __init__(self, batches: list[Any], p: float) -> None:
        self.batches = batches
        self.p = p

    def __iter__(self) -> Iterator[Any]:
        for b in self.batches:
            time.sleep(self.p)
            yield b


def consume(batches: Iterable[Any], c: float) -> float:
    t0 = time.perf_counter()
    for _ in batches:
        time.sleep(c)
    return time.perf_counter() - t0


def sleep_only(n: int, c: float) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        time.sleep(c)
    return time.perf_counter() - t0


def diskcache_pass(dc: diskcache.Cache, source: Source, dataset: str, c: float) -> float:
    t0 = time.perf_counter()
    if dc.get(f"{dataset}/done") is None:
        for i, b in enumerate(source):
            dc.set(f"{dataset}/{i}", b)
            time.sleep(c)
        dc.set(f"{dataset}/done", len(source.batches))
    else:
        for i in range(dc.get(f"{dataset}/done")):
            dc.get(f"{dataset}/{i}")
            time.sleep(c)
    return time.perf_counter() - t0


def store_costs(batches: list[Any], root: Path) -> tuple[float, float]:
    """Per batch, seconds: the snapshot taken on the critical path, and compress + write (background)."""
    snaps, writes = [], []
    cache = TrainingCache(root, size=4096)
    for i, b in enumerate(batches):
        t0 = time.perf_counter()
        snap, _ = _snapshot(b)
        t1 = time.perf_counter()
        encode_parts(decode(snap), compress=True)
        cache.put(f"b{i}", b)  # encode (compress) + checksum + atomic write
        t2 = time.perf_counter()
        snaps.append(t1 - t0)
        writes.append(t2 - t1)
    ratio = cache.stats.compression_ratio
    cache.close()
    print(f"  stored/raw size: {ratio:.3f} (compression {1 / ratio:.2f}x)")
    return statistics.median(snaps), statistics.median(writes) / 2  # put re-encodes: count one encode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N=100, 3 trials")
    ap.add_argument("-n", type=int, default=None, help="batches per pass")
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument("-p", type=float, default=4.0, help="source cost per batch, ms")
    ap.add_argument("-c", type=float, default=4.0, help="consumer cost per batch, ms")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    args = ap.parse_args()
    n = args.n or (100 if args.quick else 400)
    trials = args.trials or (3 if args.quick else 5)
    p, c = args.p / 1000, args.c / 1000
    slack = precise_sleeps()
    batches = make_batches(n, args.batch, args.seq)
    raw = sum(v.nbytes for v in batches[0].values())
    print(f"N={n} batches of {raw / 1024:.0f} KiB, p={args.p:g} ms, c={args.c:g} ms, {trials} interleaved trials, {slack}")
    print("(the box is shared with other work: figures are medians and still noisy)")

    root = Path(tempfile.mkdtemp(prefix="bench-training-"))
    results: dict[str, list[float]] = {}

    def record(name: str, seconds: float) -> None:
        results.setdefault(name, []).append(seconds)

    try:
        snap_s, write_s = store_costs(batches[: min(n, 100)], root / "costs")
        source = Source(batches, p)
        for trial in range(trials):
            cache = TrainingCache(root / f"t{trial}", size=4096, prefetch=4, batch_buffer=32)
            sync = TrainingCache(root / f"s{trial}", size=4096, prefetch=0)
            dc = diskcache.Cache(str(root / f"dc{trial}"), size_limit=1 << 32)
            record("sleep only: N x c", sleep_only(n, c))
            record("plain loop (no read-ahead)", consume(source, c))
            record("read-ahead, no cache", consume(read_ahead(source, 4), c))
            wrapped = cache.wrap(source, "bench")
            record("TrainingCache first pass", consume(wrapped, c))
            assert wrapped.complete
            record("TrainingCache cached pass", consume(wrapped, c))
            record("TrainingCache cached, shuffled", consume(cache.wrap(source, "bench", shuffle_seed=1), c))
            plain = sync.wrap(source, "bench")
            record("TrainingCache prefetch=0 first", consume(plain, c))
            record("TrainingCache prefetch=0 cached", consume(plain, c))
            record("diskcache first pass", diskcache_pass(dc, source, "bench", c))
            record("diskcache cached pass", diskcache_pass(dc, source, "bench", c))
            cache.close()
            sync.close()
            dc.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in results.items()}
    ideal_first = n * max(p, c)
    ideal_cached = n * c
    print(f"\n{'pass':36s} {'median s':>9s} {'ms/batch':>9s} {'/ N max(p,c)':>13s} {'/ N c':>7s}")
    for name, value in med.items():
        print(f"{name:36s} {value:9.3f} {value / n * 1000:9.3f} {value / ideal_first:13.3f} {value / ideal_cached:7.3f}")

    first = med["TrainingCache first pass"]
    cached = med["TrainingCache cached pass"]
    passthrough = med["read-ahead, no cache"]
    overhead = max(0.0, first - passthrough) / n
    print("\ntargets (p = c = 4 ms in the issue):")
    rows = [
        ("first pass / (N x max(p,c))", first / ideal_first, 1.10),
        ("cached pass / (N x c)", cached / ideal_cached, 1.05),
        ("first-pass storing overhead / p", overhead / p, 0.10),
        ("storing work on the critical path (snapshot) / p", snap_s / p, 0.10),
    ]
    for label, value, target in rows:
        print(f"  {label:52s} {value:7.3f}   target <= {target:.2f}   {'met' if value <= target else 'NOT met'}")
    print(f"  (compress + write per batch, off the critical path: {write_s * 1000:.3f} ms = {write_s / p:.3f} x p)")
    print(f"  against the sleep-only floor: first {first / med['sleep only: N x c']:.3f}, cached {cached / med['sleep only: N x c']:.3f}")
    print(f"  speed-up over the plain loop: first {med['plain loop (no read-ahead)'] / first:.2f}x, "
          f"cached {med['plain loop (no read-ahead)'] / cached:.2f}x; over diskcache cached {med['diskcache cached pass'] / cached:.2f}x")


if __name__ == "__main__":
    main()
