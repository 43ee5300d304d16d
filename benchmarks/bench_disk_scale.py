"""DiskCache against diskcache as the cache grows: 10k / 100k / 1M entries of 1 KiB (issue 19).

    .venv/bin/python benchmarks/bench_disk_scale.py           # 10k, 100k and 1M entries (many minutes)
    .venv/bin/python benchmarks/bench_disk_scale.py --quick   # 10k and 100k, shorter mixes

Every figure comes from a fresh process per library (run one after the other, never at once), on a cache
built once per size:

- open: a new process's constructor + first get of an existing cache (the OS cache warm);
- cleanup: ``cleanup()`` with nothing to do (ours) against ``cull()`` (diskcache), median of 3 calls;
- mix: 90% get / 10% set of 1 KiB values over the whole key range, ops/s in one process and in four (and
  four/one with gets only; and a reader's CPU per get alone and while another process sets: each commit
  makes SQLite drop the other processes' page caches);
- evicting set: a set of a new key into a cache at its bound against a set with room (mean us);
- get-hit: random keys, warm (cold when the OS cache can be dropped: root and /proc/sys/vm/drop_caches);
- du: the directory after close over the bound (ours is given a bound of the data's size);
- import: ``from llamahome.cache import DiskCache`` against ``import diskcache`` (ms, median of 5).

Targets (issue 19): open O(1); cleanup proportional to what changed; mix >= 1.5x diskcache and four
processes >= 1.5x one; evicting set <= 1.2x a set with room; du <= 1.1x the bound; import <= 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

KIB = 1024
VALUE = KIB
WRITER_RATE = 2000  # sets a second of the other process in the "reader" figure
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------ in the child


def _open(lib: str, path: str, n: int, bound_factor: float = 2.0) -> Any:
    """``ours`` (lru) and ``diskcache`` (its default, least-recently-stored: no bookkeeping on reads) are the
    figures; ``ours-fifo`` and ``diskcache-lru`` give the like-for-like pairs of the mix."""
    if lib.startswith("ours"):
        from llamahome.cache import DiskCache

        policy = "fifo" if lib == "ours-fifo" else "lru"
        return DiskCache(path, size=n * (VALUE + 64) * bound_factor / 2**20, policy=policy)
    import diskcache

    extra = {"eviction_policy": "least-recently-used"} if lib == "diskcache-lru" else {}
    return diskcache.Cache(path, size_limit=int(n * (VALUE + 64) * bound_factor), **extra)


def _du(path: str) -> int:
    total = os.lstat(path).st_blocks * 512
    for folder, dirs, files in os.walk(path):
        total += sum(os.lstat(os.path.join(folder, f)).st_blocks * 512 for f in dirs + files)
    return total


def child(lib: str, task: str, path: str, n: int, seconds: float, seed: int) -> dict[str, Any]:
    rnd = random.Random(seed)
    value = os.urandom(VALUE)
    if task == "build":
        cache = _open(lib, path, n)
        for i in range(n):
            cache.set(f"key-{i:08d}", value)
        cache.close()
        return {}
    if task == "open":
        t0 = time.perf_counter()
        cache = _open(lib, path, n)
        assert cache.get(f"key-{rnd.randrange(n):08d}") is not None
        ms = (time.perf_counter() - t0) * 1e3
        cache.close()
        return {"ms": ms}
    if task == "cleanup":
        cache = _open(lib, path, n)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            cache.cleanup() if lib == "ours" else cache.cull()
            times.append((time.perf_counter() - t0) * 1e3)
        cache.close()
        return {"ms": statistics.median(times)}
    if task in ("mix", "reads"):
        set_share = 0.1 if task == "mix" else 0.0
        cache = _open(lib, path, n)
        ops = 0
        cpu0 = time.process_time()
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            for _ in range(100):
                key = f"key-{rnd.randrange(n):08d}"
                if rnd.random() < set_share:
                    cache.set(key, value)
                else:
                    cache.get(key)
            ops += 100
        cpu = time.process_time() - cpu0
        cache.close()
        return {"ops": ops, "cpu": cpu}
    if task == "writer":  # sets at WRITER_RATE a second for ``seconds`` (for "reader")
        cache = _open(lib, path, n)
        t0 = time.perf_counter()
        done = 0
        while time.perf_counter() - t0 < seconds:
            cache.set(f"key-{rnd.randrange(n):08d}", value)
            done += 1
            ahead = done / WRITER_RATE - (time.perf_counter() - t0)
            if ahead > 0:
                time.sleep(ahead)
        cache.close()
        return {}
    if task == "reader":  # CPU per get alone, then while another process writes
        cache = _open(lib, path, n)
        keys = [f"key-{rnd.randrange(n):08d}" for _ in range(min(n, 40000))]
        for key in keys:
            cache.get(key)  # the pages this process reads, in its page cache
        out = {}
        for phase in ("alone", "writer"):
            writer = None
            if phase == "writer":
                writer = subprocess.Popen([sys.executable, __file__, "--child", lib, "writer", path, str(n),
                                           str(seconds + 30), str(seed + 1)], stdout=subprocess.DEVNULL)
                time.sleep(1.0)
            cpu0 = time.process_time()
            for key in keys:
                cache.get(key)
            out[phase] = (time.process_time() - cpu0) / len(keys) * 1e6
            if writer is not None:
                writer.kill()
                writer.wait()
        cache.close()
        return out
    if task == "get":
        cache = _open(lib, path, n)
        keys = [f"key-{rnd.randrange(n):08d}" for _ in range(min(n, 20000))]
        t0 = time.perf_counter()
        for key in keys:
            cache.get(key)
        us = (time.perf_counter() - t0) / len(keys) * 1e6
        cache.close()
        return {"us": us}
    if task == "evict":
        # Two caches with the same bound (m entries' worth, so the same WAL and checkpoints): one filled a
        # third (sets have room), one filled to its bound (every set needs room made), then m/3 new keys.
        m = min(n, 20000)
        out = {}
        for mode, fill in (("room", m // 3), ("full", m)):
            p = f"{path}-{mode}"
            shutil.rmtree(p, ignore_errors=True)
            cache = _open(lib, p, m, 1.0)
            for i in range(fill):
                cache.set(f"fill-{i:08d}", value)
            t0 = time.perf_counter()
            for i in range(m // 3):
                cache.set(f"new-{i:08d}", value)
            out[mode] = (time.perf_counter() - t0) / (m // 3) * 1e6
            cache.close()
            if mode == "full":
                out["du"] = _du(p) / (m * (VALUE + 64))
            shutil.rmtree(p, ignore_errors=True)
        return out
    raise SystemExit(f"unknown task {task}")


# ------------------------------------------------------------------------------------------ the driver


def run(lib: str, task: str, path: str, n: int, seconds: float = 0.0, seed: int = 0) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, __file__, "--child", lib, task, path, str(n), str(seconds), str(seed)],
        capture_output=True, text=True, env=env, check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{lib} {task} failed:\n{out.stderr}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def mix(lib: str, path: str, n: int, seconds: float, procs: int, task: str = "mix") -> tuple[float, float]:
    """(ops/s of all processes together, ops per CPU-second of each); ``task="reads"``: gets only."""
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    workers = [
        subprocess.Popen([sys.executable, __file__, "--child", lib, task, path, str(n), str(seconds), str(i)],
                         stdout=subprocess.PIPE, text=True, env=env)
        for i in range(procs)
    ]
    total = 0
    cpu = 0.0
    for w in workers:
        stdout, _ = w.communicate()
        out = json.loads(stdout.strip().splitlines()[-1])
        total += out["ops"]
        cpu += out["cpu"]
    return total / seconds, total / cpu


def import_ms(lib: str) -> float:
    code = ("import time; t = time.perf_counter(); "
            + ("from llamahome.cache import DiskCache" if lib == "ours" else "import diskcache")
            + "; print((time.perf_counter() - t) * 1e3)")
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # measure what a user sees: bytecode cached after the first run
    times = []
    for _ in range(6):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        times.append(float(out.stdout))
    return statistics.median(times[1:])


def warm_os_cache(path: str) -> None:
    """Read every file under ``path`` once, so the OS caches it."""
    for folder, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                while f.read(1 << 20):
                    pass


def drop_os_cache() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10k and 100k entries, 5 s mixes")
    parser.add_argument("--sizes", type=int, nargs="*", help="entry counts (default: 10k 100k 1M)")
    args = parser.parse_args()
    sizes = args.sizes or ([10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000])
    seconds = 5.0 if args.quick else 20.0
    rows: list[tuple[str, float, float, str]] = []

    def row(name: str, ours: float, theirs: float, unit: str) -> None:
        rows.append((name, ours, theirs, unit))
        ratio = ours / theirs if theirs else float("inf")
        print(f"{name:<34} ours {ours:>10.1f} {unit:<6} diskcache {theirs:>10.1f} {unit:<6} ratio {ratio:6.2f}",
              flush=True)

    print(f"# DiskCache vs diskcache, 1 KiB values, each library in its own processes, one after the other; "
          f"{os.cpu_count()} CPUs")
    row("import", import_ms("ours"), import_ms("diskcache"), "ms")
    root = tempfile.mkdtemp(prefix="bench_disk_scale-")
    try:
        for n in sizes:
            label = f"{n // 1000}k" if n < 1_000_000 else f"{n // 1_000_000}M"
            paths = {lib: os.path.join(root, f"{lib}-{n}") for lib in ("ours", "diskcache")}
            for lib, path in paths.items():
                t0 = time.perf_counter()
                run(lib, "build", path, n)
                print(f"  built {lib} {label} in {time.perf_counter() - t0:.1f} s", flush=True)
            # The warm figures first: a dropped OS cache would leave the next "warm" run reading from the disk.
            row(f"open + first get, {label}, warm", *(run(lib, "open", paths[lib], n)["ms"] for lib in paths), "ms")
            row(f"cleanup / cull, nothing to do, {label}", *(run(lib, "cleanup", paths[lib], n)["ms"]
                                                            for lib in paths), "ms")
            row(f"get-hit, {label}, warm", *(run(lib, "get", paths[lib], n)["us"] for lib in paths), "us")
            if drop_os_cache():
                cold = []
                for lib in paths:
                    drop_os_cache()
                    cold.append(run(lib, "open", paths[lib], n)["ms"])
                row(f"open + first get, {label}, cold", cold[0], cold[1], "ms")
            if drop_os_cache():
                cold = []
                for lib in paths:
                    drop_os_cache()
                    cold.append(run(lib, "get", paths[lib], n)["us"])
                row(f"get-hit, {label}, cold", cold[0], cold[1], "us")
            for path in paths.values():
                warm_os_cache(path)  # the mixes start alike: after the cold runs, nothing would be cached
            one_cpu = {lib: mix(lib, paths[lib], n, seconds, 1) for lib in paths}
            four_cpu = {lib: mix(lib, paths[lib], n, seconds, 4) for lib in paths}
            one = {lib: v[0] for lib, v in one_cpu.items()}
            four = {lib: v[0] for lib, v in four_cpu.items()}
            row(f"90/10 mix, {label}, 1 process", one["ours"], one["diskcache"], "ops/s")
            # On a shared machine the wall figure moves with everything else running; ops per CPU-second
            # of the process is what the library itself costs.
            row("  the same, per CPU-second", one_cpu["ours"][1], one_cpu["diskcache"][1], "ops")
            row(f"90/10 mix, {label}, 4 processes", four["ours"], four["diskcache"], "ops/s")
            row("  the same, per CPU-second each", four_cpu["ours"][1], four_cpu["diskcache"][1], "ops")
            print(f"{'':<34} four/one: ours {four['ours'] / one['ours']:.2f}, "
                  f"diskcache {four['diskcache'] / one['diskcache']:.2f} (target >= 1.5; needs idle cores)")
            # Without writes: another process's commit makes SQLite drop each reader's page cache (WAL mode),
            # so with 10% sets every process spends about twice the CPU a read; reads alone show the scaling.
            reads = {lib: (mix(lib, paths[lib], n, seconds / 2, 1, "reads")[0],
                           mix(lib, paths[lib], n, seconds / 2, 4, "reads")[0]) for lib in paths}
            print(f"{'':<34} reads only, four/one: ours {reads['ours'][1] / reads['ours'][0]:.2f}, "
                  f"diskcache {reads['diskcache'][1] / reads['diskcache'][0]:.2f}", flush=True)
            reader = {lib: run(lib, "reader", paths[lib], n, seconds / 2) for lib in paths}
            row(f"reader CPU a get, {label}, alone", reader["ours"]["alone"], reader["diskcache"]["alone"], "us")
            row(f"  while another process sets {WRITER_RATE}/s", reader["ours"]["writer"],
                reader["diskcache"]["writer"], "us")
            if n == sizes[0]:
                ev = {lib: run(lib, "evict", os.path.join(root, f"{lib}-evict"), n) for lib in paths}
                row("set, cache with room", ev["ours"]["room"], ev["diskcache"]["room"], "us")
                row("set, evicting (cache at its bound)", ev["ours"]["full"], ev["diskcache"]["full"], "us")
                print(f"{'':<34} evicting/room: ours {ev['ours']['full'] / ev['ours']['room']:.2f}, diskcache "
                      f"{ev['diskcache']['full'] / ev['diskcache']['room']:.2f} (target <= 1.2)")
                row("du after close / bound", ev["ours"]["du"], ev["diskcache"]["du"], "x")
            # Like for like, last (diskcache stores the policy it was opened with): neither records reads
            # (our fifo, diskcache's default), and both order evictions by use (our lru, diskcache's lru, which
            # writes on every read).
            fifo = mix("ours-fifo", paths["ours"], n, seconds, 1)
            row(f"90/10 mix, {label}, ours fifo / dc default", fifo[0], one["diskcache"], "ops/s")
            lru = mix("diskcache-lru", paths["diskcache"], n, seconds, 1)
            row(f"90/10 mix, {label}, ours lru / dc lru", one["ours"], lru[0], "ops/s")
            for path in paths.values():
                shutil.rmtree(path, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        lib, task, path, n, seconds, seed = sys.argv[2:8]
        print(json.dumps(child(lib, task, path, int(n), float(seconds), int(seed))))
    else:
        main()
