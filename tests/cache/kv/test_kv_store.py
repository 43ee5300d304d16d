"""The KV cache's tiers: eviction order and bound on disk, damage, two processes, the network tier, the manager."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from llamahome.cache import CacheConfig, CacheManager, KVCache, MemoryCache

from .helpers import kv_for

B = 16


def prompt(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 32000, n)


def block_file_size(tmp_path: Path) -> int:
    probe = KVCache(tmp_path / "probe", block_tokens=B, compression=False)
    tokens = prompt(999, B)
    probe.store("m", tokens, kv_for(tokens))
    return probe.stats.bytes


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in (root / "blocks").rglob("*.kvb"))


def exact(kv: KVCache, model: str, tokens: np.ndarray) -> int:
    """Look ``tokens`` up and check every value returned; returns the tokens found."""
    prefix = kv.lookup(model, tokens)
    for (k, v), (wk, wv) in zip(prefix.layers, kv_for(tokens[: prefix.tokens])):
        assert np.array_equal(k, wk) and np.array_equal(v, wv)
    return prefix.tokens


# ------------------------------------------------------------------------------------------- eviction
def test_eviction_takes_the_least_recently_used_leaf(tmp_path: Path, clock) -> None:
    fs = block_file_size(tmp_path)
    kv = KVCache(tmp_path / "kv", size=f"{5 * fs}B", block_tokens=B, compression=False, memory_size=0, clock=clock)
    a, b, c = prompt(1, 3 * B), prompt(2, 2 * B), prompt(3, 2 * B)
    kv.store("m", a, kv_for(a))
    clock.advance(10)
    kv.store("m", b, kv_for(b))
    clock.advance(10)
    assert kv.lookup("m", a).tokens == 3 * B  # a use: a is now more recent than b
    clock.advance(10)
    kv.store("m", c[:B], kv_for(c[:B]))  # full: the least recently used leaf (b's 2nd block) goes
    assert (kv.match("m", a), kv.match("m", b), kv.match("m", c)) == (3 * B, B, B)
    clock.advance(10)
    kv.store("m", c, kv_for(c))  # extends c; b's first block is now a leaf and the oldest
    assert (kv.match("m", a), kv.match("m", b), kv.match("m", c)) == (3 * B, 0, 2 * B)
    assert kv.stats.evictions == 2
    assert disk_bytes(tmp_path / "kv") <= 5 * fs


def test_a_block_whose_descendants_are_kept_is_never_evicted_first(tmp_path: Path, clock) -> None:
    fs = block_file_size(tmp_path)
    kv = KVCache(tmp_path / "kv", size=f"{3 * fs}B", block_tokens=B, compression=False, memory_size=0, clock=clock)
    p, x, y, z = prompt(4, 2 * B), prompt(5, B), prompt(6, B), prompt(7, B)
    kv.store("m", p[:B], kv_for(p[:B]))  # p1 at t=0: the oldest block
    clock.advance(10)
    kv.store("m", x, kv_for(x))  # x1 at t=10
    clock.advance(10)
    kv.store("m", p, kv_for(p))  # p2 at t=20, child of the older p1
    clock.advance(10)
    kv.store("m", y, kv_for(y))  # leaves: x1 (10), p2 (20); p1 (0) is older but has a child
    assert (kv.match("m", p), kv.match("m", x), kv.match("m", y)) == (2 * B, 0, B)
    clock.advance(10)
    kv.store("m", z, kv_for(z))  # leaves: p2 (20), y1 (30): p2 goes, p1 stays
    assert (kv.match("m", p), kv.match("m", y), kv.match("m", z)) == (B, B, B)
    clock.advance(10)
    kv.store("m", x, kv_for(x))  # p1 is a leaf now, and the oldest
    assert (kv.match("m", p), kv.match("m", y), kv.match("m", z), kv.match("m", x)) == (0, B, B, B)


def test_the_bound_holds_under_a_random_workload(tmp_path: Path) -> None:
    fs = block_file_size(tmp_path)
    bound = 7 * fs + fs // 2
    kv = KVCache(tmp_path / "kv", size=f"{bound}B", block_tokens=B, compression=False, memory_size=0)
    rng = np.random.default_rng(0)
    heads = [prompt(100 + i, 2 * B) for i in range(4)]
    for i in range(40):
        tokens = np.concatenate([heads[rng.integers(4)], prompt(200 + i, int(rng.integers(0, 4)) * B + 3)])
        exact(kv, "m", tokens)
        kv.store("m", tokens, kv_for(tokens))
        real = disk_bytes(tmp_path / "kv")
        assert real <= bound
        assert kv.stats.bytes == real
    assert kv.stats.evictions > 0


def test_a_prompt_larger_than_the_bound_stores_what_fits(tmp_path: Path) -> None:
    fs = block_file_size(tmp_path)
    kv = KVCache(tmp_path / "kv", size=f"{2 * fs}B", block_tokens=B, compression=False)
    tokens = prompt(8, 5 * B)
    assert kv.store("m", tokens, kv_for(tokens)) == 2 * B  # the first two blocks: later ones need them
    assert kv.match("m", tokens) == 2 * B
    tiny = KVCache(tmp_path / "tiny", size=f"{fs - 1}B", block_tokens=B, compression=False)
    assert tiny.store("m", tokens, kv_for(tokens)) == 0 and tiny.match("m", tokens) == 0


def test_cleanup_evicts_to_a_lowered_bound(tmp_path: Path) -> None:
    fs = block_file_size(tmp_path)
    big = KVCache(tmp_path / "kv", size=f"{6 * fs}B", block_tokens=B, compression=False)
    tokens = prompt(9, 6 * B)
    big.store("m", tokens, kv_for(tokens))
    small = KVCache(tmp_path / "kv", size=f"{2 * fs}B", block_tokens=B, compression=False)
    report = small.cleanup()
    assert report.evicted == 4 and report.bytes_freed == 4 * fs
    assert small.match("m", tokens) == 2 * B  # the leaves went: the first two blocks stay usable


# --------------------------------------------------------------------------------------------- damage
def block_files(root: Path) -> list[Path]:
    return sorted((root / "blocks").rglob("*.kvb"))


def file_of_block(kv: KVCache, tokens: np.ndarray, index: int, root: Path) -> Path:
    """The file holding block ``index`` of ``tokens``: the one whose removal shortens the match to it."""
    for path in block_files(root):
        data = path.read_bytes()
        path.unlink()
        shortened = kv.match("m", tokens)
        path.write_bytes(data)
        os.chmod(path, 0o600)
        if shortened == index * B:
            return path
    raise AssertionError("block file not found")


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "swap"])
def test_a_damaged_block_is_a_miss_and_is_recomputed(tmp_path: Path, damage: str) -> None:
    root = tmp_path / "kv"
    kv = KVCache(root, block_tokens=B, memory_size=0)
    tokens = prompt(10, 3 * B)
    kv.store("m", tokens, kv_for(tokens))
    second = file_of_block(kv, tokens, 1, root)
    data = bytearray(second.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x40
    elif damage == "truncate":
        data = data[: len(data) - 7]
    elif damage == "empty":
        data = bytearray()
    else:  # another block's whole, valid file under this block's name
        data = bytearray(file_of_block(kv, tokens, 2, root).read_bytes())
    second.write_bytes(bytes(data))
    assert exact(kv, "m", tokens) == B  # never a wrong value: the prefix stops before the damage
    assert kv.stats.corrupt == 1 and not second.exists()
    assert kv.store("m", tokens, kv_for(tokens)) == B  # recomputed block written again (the 3rd is intact)
    assert exact(kv, "m", tokens) == 3 * B


def test_links_planted_in_the_cache_are_never_followed(tmp_path: Path) -> None:
    root = tmp_path / "kv"
    kv = KVCache(root, block_tokens=B, memory_size=0)
    tokens = prompt(11, 2 * B)
    kv.store("m", tokens, kv_for(tokens))
    target = file_of_block(kv, tokens, 0, root)
    outside = tmp_path / "outside.kvb"
    outside.write_bytes(target.read_bytes())
    target.unlink()
    target.symlink_to(outside)
    assert kv.match("m", tokens) == 0 and kv.lookup("m", tokens).tokens == 0
    kv.cleanup()
    kv.clear()
    assert outside.exists() and target.is_symlink()


def test_cleanup_sweeps_temp_files_of_dead_writers(tmp_path: Path) -> None:
    root = tmp_path / "kv"
    kv = KVCache(root, block_tokens=B)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    sub = root / "blocks" / "ab"
    sub.mkdir(mode=0o700)
    name = "ab" + "0" * 30 + "-" + "1" * 32 + ".kvb"
    orphan = sub / f".{name}.{dead.pid}.1.tmp"
    live = sub / f".{name}.{os.getpid()}.1.tmp"
    foreign = sub / "notes.txt"
    for path in (orphan, live, foreign):
        path.write_bytes(b"x")
    report = kv.cleanup()
    assert report.orphans == 1 and not orphan.exists() and live.exists() and foreign.exists()


# ---------------------------------------------------------------------------------------- processes
WORKER = textwrap.dedent(
    """
    import sys
    import numpy as np
    sys.path.insert(0, sys.argv[3])
    from helpers import kv_for
    from llamahome.cache import KVCache

    root, seed = sys.argv[1], int(sys.argv[2])
    kv = KVCache(root, size=sys.argv[4] + "B", block_tokens=16, memory_size=0)
    rng = np.random.default_rng(seed)
    heads = [np.random.default_rng(100 + i).integers(0, 32000, 32) for i in range(3)]
    for i in range(25):
        tail = rng.integers(0, 32000, int(rng.integers(0, 3)) * 16 + 5)
        tokens = np.concatenate([heads[rng.integers(3)], tail])
        prefix = kv.lookup("m", tokens)
        for (k, v), (wk, wv) in zip(prefix.layers, kv_for(tokens[: prefix.tokens])):
            assert np.array_equal(k, wk) and np.array_equal(v, wv), "wrong K/V"
        kv.store("m", tokens, kv_for(tokens))
    print("ok", kv.stats.corrupt)
    """
)


def test_two_processes_share_one_directory(tmp_path: Path) -> None:
    fs = block_file_size(tmp_path)
    bound = 10 * fs
    root = tmp_path / "kv"
    KVCache(root, block_tokens=B)  # create it once, as a manager would
    here = str(Path(__file__).parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(root), str(seed), here, str(bound)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for seed in (1, 2)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.split() == ["ok", "0"]
    assert disk_bytes(root) <= bound
    kv = KVCache(root, size=f"{bound}B", block_tokens=B, memory_size=0)
    for i in range(3):
        head = np.random.default_rng(100 + i).integers(0, 32000, 32)
        exact(kv, "m", head)
    assert kv.stats.corrupt == 0


# ---------------------------------------------------------------------------------------- network
def test_a_prefix_stored_on_one_machine_is_reused_on_another(tmp_path: Path) -> None:
    shared = MemoryCache(size=64)  # any Store works as the network tier; RedisCache in production
    one = KVCache(tmp_path / "one", block_tokens=B, remote=shared)
    two = KVCache(tmp_path / "two", block_tokens=B, remote=shared, memory_size=0)
    tokens = prompt(12, 3 * B)
    one.store("m", tokens, kv_for(tokens))
    assert two.match("m", tokens) == 3 * B
    assert exact(two, "m", tokens) == 3 * B
    assert two.stats.bytes > 0  # kept on this machine's disk too
    # A damaged network copy is a miss, never a wrong value.
    three = KVCache(tmp_path / "three", block_tokens=B, remote=shared, memory_size=0)
    key = sorted(shared.keys())[0]
    item = bytearray(shared.get(key))
    item[-3] ^= 0x01
    shared.set(key, bytes(item))
    found = exact(three, "m", tokens)
    assert found < 3 * B and three.stats.corrupt == 1


def test_redis_as_the_network_tier(tmp_path: Path, redis_url: str, redis_namespace: str) -> None:
    from llamahome.cache import RedisCache

    with RedisCache(redis_url, namespace=redis_namespace) as remote:
        one = KVCache(tmp_path / "one", block_tokens=B, remote=remote)
        two = KVCache(tmp_path / "two", block_tokens=B, remote=remote, memory_size=0)
        tokens = prompt(13, 2 * B + 1)
        one.store("m", tokens, kv_for(tokens))
        assert exact(two, "m", tokens) == 2 * B


# ---------------------------------------------------------------------------------------- manager
def test_the_manager_builds_kv_cache_from_its_block(tmp_path: Path) -> None:
    cfg = CacheConfig.from_dict(
        {
            "cache": {"disk": {"path": str(tmp_path / "cache")}},
            "system_cache": {"temp_dir": str(tmp_path / "temp")},
            "kv_cache": {"size": "10MB", "block_tokens": 32, "compression": False},
        }
    )
    with CacheManager(cfg) as manager:
        kv = manager.kv_cache
        assert isinstance(kv, KVCache)
        assert kv.path == tmp_path / "cache" / "kv" and kv.block_tokens == 32 and not kv.compression
        assert kv.stats.max_bytes == 10 * 1024 * 1024
        tokens = prompt(14, 64)
        kv.store("m", tokens, kv_for(tokens))
        assert "kv_cache/disk" in manager.caches
        report = asyncio.run(manager.cleanup())
        assert "kv_cache/disk" in [part.cache for part in report.parts]
    assert kv.closed


def test_a_link_in_place_of_a_block_directory_is_never_written_through(tmp_path: Path) -> None:
    from llamahome.errors import StorageError

    root = tmp_path / "kv"
    kv = KVCache(root, block_tokens=B)
    outside = tmp_path / "outside"
    outside.mkdir()
    for i in range(256):
        (root / "blocks" / f"{i:02x}").symlink_to(outside)
    tokens = prompt(15, B)
    with pytest.raises(StorageError, match="not a directory of the KV cache"):
        kv.store("m", tokens, kv_for(tokens))
    assert list(outside.iterdir()) == []


KILLED_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    sys.path.insert(0, sys.argv[2])
    from helpers import kv_for
    from llamahome.cache import KVCache

    kv = KVCache(sys.argv[1], size="2MB", block_tokens=16, memory_size=0)
    rng = np.random.default_rng(0)
    print("ready", flush=True)
    while True:
        tokens = rng.integers(0, 32000, 16 * int(rng.integers(1, 6)))
        kv.store("m", tokens, kv_for(tokens, layers=8))
    """
)


@pytest.mark.slow
def test_kill_9_mid_write_leaves_only_whole_blocks(tmp_path: Path) -> None:
    import signal
    import time

    root = tmp_path / "kv"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for round_ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", KILLED_WRITER, str(root), str(Path(__file__).parent)],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(0.3 + 0.2 * round_)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    kv = KVCache(root, size="2MB", block_tokens=B, memory_size=0)
    kv.cleanup()
    assert not list((root / "blocks").rglob("*.tmp"))
    assert disk_bytes(root) <= 2 * 1024 * 1024
    rng = np.random.default_rng(0)
    for _ in range(30):  # the writer's prompts, in its order: whatever is found is exact
        tokens = rng.integers(0, 32000, 16 * int(rng.integers(1, 6)))
        prefix = kv.lookup("m", tokens)
        for (k, v), (wk, wv) in zip(prefix.layers, kv_for(tokens[: prefix.tokens], layers=8)):
            assert np.array_equal(k, wk) and np.array_equal(v, wv)
    assert kv.stats.corrupt == 0
