"""SystemCache: scratch items age out, in-use items survive, links are never followed, foreign files are left."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llamahome.cache.system import ScratchPath, SystemCache
from llamahome.errors import CacheClosedError, CacheError, ConfigError, ValueTooLargeError

from .store_contract import StoreContract

DAY = 86400


@pytest.fixture
def cache(tmp_path: Path, clock: Any) -> Iterator[SystemCache]:
    c = SystemCache(tmp_path / "temp", size=1, max_age=DAY, clock=clock)
    yield c
    c.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# ------------------------------------------------------------------------------------------ scratch files


def test_temp_file_in_a_with_block_is_private_and_removed_at_the_end(cache: SystemCache) -> None:
    with cache.temp_file(suffix=".bin") as path:
        assert isinstance(path, Path) and path.parent == cache.root and path.name.endswith(".bin")
        assert path.exists() and mode(path) == 0o600
        path.write_bytes(b"x" * 100)
    assert not path.exists()
    with cache.temp_dir() as directory:
        assert directory.is_dir() and mode(directory) == 0o700
        (directory / "inner").write_text("scratch")
    assert not directory.exists()
    assert mode(cache.root) == 0o700
    assert cache.items() == []


def test_keep_and_plain_paths_stay_until_they_age_out(cache: SystemCache, clock: Any) -> None:
    with cache.temp_file(".ckpt", keep=True) as kept:
        kept.write_bytes(b"k")
    plain = cache.temp_file(".part")
    assert isinstance(plain, ScratchPath) and Path(plain).exists()
    with open(plain, "wb") as f:  # usable wherever a path is
        f.write(b"download")
    plain.write_bytes(b"download in progress")  # and it has a Path's methods
    assert plain.suffix == ".part" and plain.stat().st_size == 20
    directory = cache.new_temp_dir()
    file = cache.new_temp_file(suffix=".npy")
    assert {i["name"] for i in cache.items()} == {kept.name, plain.name, directory.name, file.name}
    clock.advance(DAY - 1)
    assert cache.cleanup().removed == 0
    assert all(p.exists() for p in (kept, plain.path, directory, file))
    clock.advance(1)
    report = cache.cleanup()
    assert report.expired == 4 and report.bytes_freed == 1 + len(b"download in progress")
    assert not any(os.path.lexists(p) for p in (kept, plain.path, directory, file))
    assert cache.stats.expirations == 4


def test_a_ttl_shorter_than_max_age_is_honoured(cache: SystemCache, clock: Any) -> None:
    short = cache.new_temp_file(ttl=60)
    long = cache.new_temp_file()
    clock.advance(61)
    assert cache.cleanup().expired == 1
    assert not short.exists() and long.exists()


def test_touch_restarts_the_age(cache: SystemCache, clock: Any) -> None:
    path = cache.new_temp_file()
    clock.advance(DAY - 10)
    cache.touch(path)
    clock.advance(20)
    cache.cleanup()
    assert path.exists()


def test_an_item_in_use_survives_cleanup_until_released(cache: SystemCache, clock: Any) -> None:
    path = cache.new_temp_file()
    clock.advance(2 * DAY)
    with cache.in_use(path):
        report = cache.cleanup()
        assert path.exists() and report.expired == 0 and report.details["in_use"] == [path.name]
        assert cache.remove(path) is False
    with cache.temp_file() as held:
        clock.advance(2 * DAY)
        assert cache.cleanup().expired == 1  # the first one, released
        assert held.exists() and not path.exists()
    assert not held.exists()


def test_an_item_in_use_by_another_process_survives_cleanup(cache: SystemCache, clock: Any, tmp_path: Path) -> None:
    path = cache.new_temp_file()
    ready, release = tmp_path / "ready", tmp_path / "release"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from llamahome.cache.system import SystemCache
        cache = SystemCache({str(cache.root)!r})
        with cache.in_use({str(path)!r}):
            Path({str(ready)!r}).touch()
            deadline = time.monotonic() + 20
            while not Path({str(release)!r}).exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 20
        while not ready.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        assert ready.exists()
        clock.advance(2 * DAY)
        assert cache.cleanup().expired == 0 and path.exists()
    finally:
        release.touch()
        assert proc.wait(timeout=20) == 0
    assert cache.cleanup().expired == 1 and not path.exists()


# ------------------------------------------------------------------------------------------ what cleanup may touch


def test_a_symlink_pointing_outside_temp_dir_never_costs_its_target(cache: SystemCache, clock: Any, tmp_path: Path) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "weights.bin").write_bytes(b"w" * 1000)
    outside_file = tmp_path / "precious.txt"
    outside_file.write_text("keep me")

    scratch = cache.new_temp_dir()
    os.symlink(outside, scratch / "link-to-dir")
    os.symlink(outside_file, scratch / "link-to-file")
    (scratch / "sub").mkdir()
    os.symlink(outside, scratch / "sub" / "nested-link")
    replaced = cache.new_temp_file()
    replaced.unlink()
    os.symlink(outside, replaced)  # a scratch file swapped for a link to somewhere else
    os.symlink(outside, cache.root / "users-own-link")

    clock.advance(2 * DAY)
    report = cache.cleanup()
    assert report.expired == 2
    assert not os.path.lexists(scratch) and not os.path.lexists(replaced)
    assert (outside / "weights.bin").read_bytes() == b"w" * 1000 and outside_file.read_text() == "keep me"
    assert os.path.islink(cache.root / "users-own-link")
    cache.clear()
    assert (outside / "weights.bin").exists() and os.path.islink(cache.root / "users-own-link")


def test_files_the_cache_did_not_create_are_never_removed(cache: SystemCache, clock: Any) -> None:
    cache.root.mkdir()  # the user's own files were there first
    foreign = cache.root / "lh-0123456789abcdef.bin"  # even one that looks like ours
    foreign.write_bytes(b"user data")
    (cache.root / "notes").mkdir()
    clock.advance(10 * DAY)
    cache.cleanup()
    cache.clear()
    assert foreign.read_bytes() == b"user data" and (cache.root / "notes").is_dir()
    with pytest.raises(CacheError, match="not created by the system cache"):
        with cache.in_use(foreign):
            pass
    with pytest.raises(CacheError, match="not a scratch item"):
        cache.touch(cache.root.parent / "elsewhere")
    assert cache.remove(foreign) is False and foreign.exists()


def test_oldest_items_go_first_beyond_size(tmp_path: Path, clock: Any) -> None:
    c = SystemCache(tmp_path / "t", size="10KB", max_age=DAY, clock=clock)
    paths = []
    for i in range(5):
        p = c.new_temp_file(suffix=f".{i}")
        p.write_bytes(b"x" * 3000)
        paths.append(p)
        clock.advance(1)
    with c.in_use(paths[0]):
        report = c.cleanup()
    assert report.evicted == 2 and report.expired == 0
    assert [p.exists() for p in paths] == [True, False, False, True, True]
    assert c.stats.bytes == 9000 <= c.max_bytes
    c.close()


def test_scratch_items_are_remembered_across_instances(tmp_path: Path, clock: Any) -> None:
    first = SystemCache(tmp_path / "t", max_age=60, clock=clock)
    path = first.new_temp_file()
    first.close()
    with pytest.raises(CacheClosedError):
        first.new_temp_file()
    clock.advance(61)
    second = SystemCache(tmp_path / "t", max_age=60, clock=clock)
    assert second.cleanup().expired == 1 and not path.exists()


def test_a_record_whose_item_vanished_is_dropped_after_a_grace_period(cache: SystemCache, clock: Any) -> None:
    path = cache.new_temp_file()
    path.unlink()
    assert cache.cleanup().missing == 0  # it may be an item being created right now
    clock.advance(120)
    assert cache.cleanup().missing == 1 and cache.items() == []


# ------------------------------------------------------------------------------------------ keyed values


def test_put_get_bytes_and_other_values(cache: SystemCache, clock: Any) -> None:
    cache.put("token", b"\x00\x01raw")
    cache.set(b"meta", {"step": 3, "files": ["a", "b"]})
    cache.set("array", np.arange(10, dtype=np.float32))
    assert cache.get("token") == b"\x00\x01raw"
    assert cache.get(b"meta") == {"step": 3, "files": ["a", "b"]}
    np.testing.assert_array_equal(cache.get("array"), np.arange(10, dtype=np.float32))
    assert cache.get("missing", 42) == 42 and "token" in cache
    assert cache.delete("token") and "token" not in cache
    assert (cache.stats.hits, cache.stats.misses, cache.stats.sets) == (3, 1, 3)
    meta = cache.root / ".llamahome-system"
    assert (meta / "values").is_dir()  # keyed values are the disk tier's, inside the private meta directory
    for path in [meta, *meta.rglob("*")]:
        if path.is_dir():
            assert mode(path) == 0o700, path
        elif not path.name.endswith(".lock"):
            assert mode(path) == 0o600, path


def test_values_age_out_by_max_age_or_ttl(cache: SystemCache, clock: Any) -> None:
    cache.set("short", b"s", ttl=10)
    cache.set("long", b"l")
    clock.advance(11)
    assert cache.get("short") is None and cache.get("long") == b"l"
    clock.advance(DAY)
    assert cache.cleanup().expired == 1
    assert cache.get("long") is None and cache.stats.expirations == 2


def test_values_beyond_size_evict_the_oldest_and_a_value_too_large_is_refused(tmp_path: Path, clock: Any) -> None:
    # The values live in a disk tier whose bound also covers its directory's own pages, so how many of the
    # five fit depends on that overhead; what must hold is the order: the oldest go, the newest stay.
    c = SystemCache(tmp_path / "t", size="64KB", clock=clock)
    for i in range(5):
        c.set(f"k{i}", os.urandom(12_000))
        clock.advance(1)
    assert c.stats.bytes <= c.max_bytes
    kept = [c.get(f"k{i}") is not None for i in range(5)]
    assert kept == sorted(kept) and not kept[0] and kept[-2:] == [True, True], kept
    with pytest.raises(ValueTooLargeError, match="raise system_cache.size"):
        c.set("huge", b"x" * 70_000)
    c.close()


def test_a_damaged_value_is_a_miss(cache: SystemCache) -> None:
    cache.set("k", bytes(range(256)) * 400)  # large enough to live in a value file of its own
    [file] = [p for p in (cache.root / ".llamahome-system" / "values" / "data").rglob("*") if p.is_file()]
    data = bytearray(file.read_bytes())
    data[-3] ^= 0x55
    file.write_bytes(bytes(data))
    assert cache.get("k") is None and cache.stats.corrupt == 1


def test_bad_settings_and_names_are_refused(tmp_path: Path, cache: SystemCache) -> None:
    with pytest.raises(ConfigError, match="max_age"):
        SystemCache(tmp_path / "x", max_age=0)
    with pytest.raises(ConfigError, match="cleanup_policy"):
        SystemCache(tmp_path / "x", cleanup_policy="random")
    with pytest.raises(CacheError, match="path separators"):
        cache.temp_file(suffix="/../../etc")


# ------------------------------------------------------------------------------------------ store contract


class TestSystemCacheContract(StoreContract):
    """The keyed values keep the store contract: they are the disk tier inside the private meta directory.

    No opt-outs. One difference the contract does not see: a value set without a ttl lives ``max_age``
    seconds (a day here), not until evicted, because everything in a system cache ages out.
    """

    def make_store(self, tmp_path: Path, clock: Any, size_mb: float = 1.0, policy: str = "lru") -> SystemCache:
        return SystemCache(tmp_path, size=size_mb, cleanup_policy=policy, clock=clock)


def test_cleanup_evicts_scratch_items_to_fit_beside_the_values(tmp_path: Path, clock: Any) -> None:
    c = SystemCache(tmp_path / "t", size="64KB", clock=clock)
    item = Path(c.new_temp_file(suffix=".bin"))
    item.write_bytes(b"s" * 40_000)
    clock.advance(1)
    c.set("v", bytes(range(256)) * 120)  # ~30 KB: items and values now hold more than 64 KB
    report = c.cleanup()
    assert report.evicted == 1 and not item.exists()
    assert c.get("v") is not None and c.stats.bytes <= c.max_bytes
    c.close()


def test_values_of_the_old_layout_are_removed_by_cleanup(tmp_path: Path) -> None:
    old = tmp_path / "t" / ".llamahome-system" / "kv"
    old.mkdir(parents=True)
    (old / ("cd" * 16 + ".lhb")).write_bytes(b"LHB1 old value")
    (old / "not-ours.txt").write_bytes(b"kept")
    c = SystemCache(tmp_path / "t")
    assert c.cleanup().orphans == 1
    assert [p.name for p in old.iterdir()] == ["not-ours.txt"]
    c.close()
