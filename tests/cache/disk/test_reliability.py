"""DiskCache under abuse: kill -9 mid-write, several processes on one directory, damaged files and index,
a full disk and a read-only directory. Every test checks that a read gives the exact value or a miss."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llamahome.cache.disk import _files as disk_files
from llamahome.cache.disk import DiskCache
from llamahome.errors import DiskFullError, StorageError

MIB = 1024 * 1024
SIZES = (100, 5_000, 40_000, 300_000)


def make_value(i: int, n: int) -> bytes:
    """A self-describing value: its header names key and version, so a reader can check it exactly."""
    size = SIZES[(i + n) % len(SIZES)]
    return f"k{i}:{n}:".encode() + random.Random(i * 1_000_003 + n).randbytes(size)


def check_value(key: str, value: Any) -> None:
    assert isinstance(value, bytes), (key, type(value))
    name, n, _ = value.split(b":", 2)
    assert name.decode() == key
    assert value == make_value(int(key[1:]), int(n)), f"torn or wrong value for {key}"


WRITER = textwrap.dedent(
    """
    import os, random, sys
    sys.path.insert(0, {tests!r})
    from llamahome.cache.disk import DiskCache
    from test_reliability import make_value
    cache = DiskCache({path!r}, size=1, policy={policy!r})
    rng = random.Random(os.getpid())
    print("ready", flush=True)
    n = int(sys.argv[1])
    while True:
        n += 1
        i = rng.randrange(16)
        op = rng.random()
        if op < 0.75:
            cache.set(f"k{{i}}", make_value(i, n))
        elif op < 0.85:
            cache.set_many({{f"k{{j}}": make_value(j, n) for j in (i, (i + 1) % 16)}})
        elif op < 0.95:
            cache.get(f"k{{i}}")
        else:
            cache.delete(f"k{{i}}")
    """
)


def _verify(root: Path, caplog: pytest.LogCaptureFixture) -> int:
    caplog.clear()
    with DiskCache(root, size=1) as cache:
        hits = 0
        for i in range(16):
            value = cache.get(f"k{i}")
            if value is not None:
                check_value(f"k{i}", value)
                hits += 1
        assert cache.stats.corrupt == 0
        assert cache.stats.bytes <= cache.stats.max_bytes
    damaged = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not damaged, [r.getMessage() for r in damaged]  # opened cleanly: nothing to repair
    return hits


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["lru", "fifo"])
def test_kill_9_at_random_instants(tmp_path: Path, caplog: pytest.LogCaptureFixture, policy: str) -> None:
    root = tmp_path / "c"
    script = WRITER.format(tests=str(Path(__file__).parent), path=str(root), policy=policy)
    rng = random.Random(7)
    kills = 0
    total_hits = 0
    for round_ in range(20):
        proc = subprocess.Popen([sys.executable, "-c", script, str(round_ * 1_000_000)], stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
            time.sleep(rng.uniform(0.01, 0.15))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL  # it was killed mid-loop, not finished or crashed
        kills += 1
        total_hits += _verify(root, caplog)
    assert kills >= 20 and total_hits > 0
    # Leftovers of the kills (temp files of dead writers, files unlinked too late) go at cleanup; afterwards
    # the directory holds exactly what the index says.
    with DiskCache(root, size=1) as cache:
        cache.cleanup(full=True)
        report = cache.cleanup(full=True)
        assert report.removed == 0 and "reconciled" not in report.details
        rows = {r[0] for r in cache._index.conn().execute("SELECT file FROM entries WHERE file IS NOT NULL")}
        on_disk = {p.name for p in (root / "data").rglob("*") if p.is_file()}
        assert rows == on_disk
        assert list((root / "tmp").iterdir()) == []
        real = sum((root / "data" / n[:2] / n).stat().st_size for n in rows)
        inline = cache._index.conn().execute("SELECT coalesce(sum(length(value)), 0) + sum(length(key)) FROM entries").fetchone()[0]
        assert cache.stats.bytes == real + (inline or 0)


HAMMER = textwrap.dedent(
    """
    import os, random, sys, time
    sys.path.insert(0, {tests!r})
    from llamahome.cache.disk import DiskCache
    from test_reliability import make_value, check_value
    cache = DiskCache({path!r}, size=1)
    rng = random.Random(os.getpid())
    deadline = time.monotonic() + {seconds}
    n = int(sys.argv[1])
    worst = 0
    while time.monotonic() < deadline:
        n += 1
        i = rng.randrange(32)
        if rng.random() < 0.5:
            cache.set(f"k{{i}}", make_value(i, n))
        else:
            value = cache.get(f"k{{i}}")
            if value is not None:
                check_value(f"k{{i}}", value)
        worst = max(worst, cache.stats.bytes)
    assert cache.stats.corrupt == 0 and cache.stats.errors == 0
    cache.close()
    print(worst, n, flush=True)
    """
)


@pytest.mark.slow
def test_four_processes_keep_the_bound(tmp_path: Path) -> None:
    root = tmp_path / "c"
    DiskCache(root, size=1).close()
    script = HAMMER.format(tests=str(Path(__file__).parent), path=str(root), seconds=2.0)
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(p * 1_000_000)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
        for p in range(4)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err.decode()[-2000:]  # never "database is locked", never a wrong value
    worst = max(int(out.split()[0]) for out, _ in outs)
    assert 0 < worst <= MIB
    with DiskCache(root, size=1) as cache:
        report = cache.cleanup()
        assert report.removed == 0 and "reconciled" not in report.details
        on_disk = sum(p.stat().st_size for p in (root / "data").rglob("*") if p.is_file())
        assert on_disk <= cache.stats.bytes <= MIB
        for i in range(32):
            value = cache.get(f"k{i}")
            if value is not None:
                check_value(f"k{i}", value)


# ------------------------------------------------------------------------------------------- damage


def _only_file(root: Path) -> Path:
    (f,) = [p for p in (root / "data").rglob("*") if p.is_file()]
    return f


def test_corrupt_value_file_is_a_logged_counted_miss(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with DiskCache(tmp_path / "c", size=4) as cache:
        cache.set("big", np.arange(50_000, dtype=np.int32))
        f = _only_file(tmp_path / "c")
        data = bytearray(f.read_bytes())
        data[-100] ^= 0x01  # one bit in the array payload
        f.write_bytes(data)
        with caplog.at_level(logging.WARNING, logger="llamahome.cache.disk"):
            assert cache.get("big") is None
        assert cache.stats.corrupt == 1 and cache.stats.misses == 1
        assert "damaged" in caplog.text and "'big'" in caplog.text
        assert not f.exists() and "big" not in cache and cache.stats.entries == 0 and cache.stats.bytes == 0


def test_corrupt_value_read_through_mmap_is_a_miss(tmp_path: Path) -> None:
    with DiskCache(tmp_path / "c", size=4) as cache:
        cache.set("big", np.arange(50_000, dtype=np.int32))
        f = _only_file(tmp_path / "c")
        data = bytearray(f.read_bytes())
        data[200] ^= 0xFF
        f.write_bytes(data)
        assert cache.get("big", mmap=True) is None
        assert cache.stats.corrupt == 1


def test_truncated_value_file_is_a_miss(tmp_path: Path) -> None:
    with DiskCache(tmp_path / "c", size=4) as cache:
        cache.set("big", b"x" * 100_000)
        f = _only_file(tmp_path / "c")
        with open(f, "r+b") as fh:
            fh.truncate(50_000)
        assert cache.get("big", "miss") == "miss"
        assert cache.stats.corrupt == 1


def test_corrupt_inline_value_is_a_miss(tmp_path: Path) -> None:
    with DiskCache(tmp_path / "c", size=4) as cache:
        cache.set("small", b"hello world" * 10)
        spy = sqlite3.connect(tmp_path / "c" / "index.sqlite3")
        spy.execute("UPDATE entries SET value = substr(value, 1, 70) || x'00' || substr(value, 72)")
        spy.commit()
        spy.close()
        assert cache.get("small") is None
        assert cache.stats.corrupt == 1 and cache.stats.entries == 0


def test_missing_value_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with DiskCache(tmp_path / "c", size=4) as cache:
        cache.set("a", b"a" * 100_000)
        _only_file(tmp_path / "c").unlink()
        with caplog.at_level(logging.WARNING, logger="llamahome.cache.disk"):
            assert cache.get("a") is None
        assert "lost its value file" in caplog.text
        assert cache.stats.corrupt == 1 and cache.stats.entries == 0
        # cleanup() finds the same damage without a read, and removes orphan files too.
        cache.set("b", b"b" * 100_000)
        _only_file(tmp_path / "c").unlink()
        orphan = tmp_path / "c" / "data" / "ab" / ("ab" + "0" * 30)
        orphan.parent.mkdir(exist_ok=True)
        orphan.write_bytes(b"LHDV\x01left behind")  # a value file's header: one of ours
        stray_tmp = tmp_path / "c" / "tmp" / f"999999999-{'cd' * 16}.tmp"  # a writer that no longer exists
        stray_tmp.write_bytes(b"LHDV\x01partial")
        report = cache.cleanup(full=True)
        assert (report.missing, report.orphans) == (1, 2)
        assert not orphan.exists() and not stray_tmp.exists()
        assert cache.stats.entries == 0 and cache.stats.bytes == 0


def test_value_files_written_before_cache_files_still_read(tmp_path: Path) -> None:
    # Value files of the LHDV v1 format (the disk tier's own, before the shared cache.files header) stay
    # readable: an upgrade must not turn a warm disk cache into misses.
    import math
    import struct

    from llamahome.cache import files

    with DiskCache(tmp_path / "c", size=4) as cache:
        cache.set("big", b"b" * 100_000)
        path = _only_file(tmp_path / "c")
        header = files.read_header(path)
        assert header is not None and path.read_bytes()[:4] == b"LHVF"
        rest = path.read_bytes()[64:]
        old = struct.pack("<4sB3xI4xddQQ", b"LHDV", 1, len(header.key), math.nan, header.created, header.checksum,
                          header.frame_len)
        path.write_bytes(old + b"\0" * (64 - len(old)) + rest)
        assert cache.get("big") == b"b" * 100_000
        assert cache.cleanup(full=True).corrupt == 0
    (tmp_path / "c" / "index.sqlite3").unlink()  # and a lost index is rebuilt from them
    with DiskCache(tmp_path / "c", size=4) as cache:
        assert cache.get("big") == b"b" * 100_000


def _fill(root: Path) -> None:
    with DiskCache(root, size=4) as cache:
        cache.set("small", b"s" * 100)
        cache.set("big", b"b" * 100_000)
        cache.set("arr", np.arange(10_000, dtype=np.float64), ttl=1e9)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "deleted", "header"])
def test_damaged_index_is_rebuilt_from_value_files(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                   damage: str) -> None:
    root = tmp_path / "c"
    _fill(root)
    index = root / "index.sqlite3"
    size = index.stat().st_size
    if damage == "garbage":
        index.write_bytes(os.urandom(size))
    elif damage == "truncated":
        with open(index, "r+b") as fh:
            fh.truncate(size // 2)
    elif damage == "empty":
        index.write_bytes(b"")
    elif damage == "deleted":
        index.unlink()
    else:
        with open(index, "r+b") as fh:
            fh.seek(0)
            fh.write(b"\0" * 100)
    with caplog.at_level(logging.WARNING, logger="llamahome.cache.disk"):
        cache = DiskCache(root, size=4)  # never raises for a damaged index
    with cache:
        assert "rebuilt" in caplog.text or "rebuilt" in caplog.text.lower()
        # Large values come back from their files (headers carry key, times and checksum); small inline
        # ones may be lost. Whatever is returned is exact.
        assert cache.get("big") == b"b" * 100_000
        np.testing.assert_array_equal(cache.get("arr"), np.arange(10_000, dtype=np.float64))
        assert cache.get("small") in (None, b"s" * 100)
        assert cache.stats.bytes == sum(p.stat().st_size for p in (root / "data").rglob("*") if p.is_file()) + \
            len(b"sbig") + len(b"sarr") + (0 if cache.get("small") is None else 5 + 164)
        cache.set("new", b"n")
        assert cache.get("new") == b"n"


def test_damage_found_at_run_time_is_repaired(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "c"
    _fill(root)
    with DiskCache(root, size=4) as cache:
        for i in range(300):  # enough rows for several table and index pages
            cache.set(f"filler{i}", b"f" * 500)
    index = root / "index.sqlite3"
    pages = index.stat().st_size // 4096
    with open(index, "r+b") as fh:  # the last pages: the schema and totals stay readable, rows do not
        fh.seek((pages - 6) * 4096)
        fh.write(os.urandom(5 * 4096))
    # A big index is not checked on open (check_on_open=False stands in for that): the damage shows up
    # when an operation touches it, and the cache repairs itself then.
    with caplog.at_level(logging.WARNING, logger="llamahome.cache.disk"):
        with DiskCache(root, size=4, check_on_open=False) as cache:
            for key in ("big", "small", "arr", "nothing", *(f"filler{i}" for i in range(300))):
                value = cache.get(key)  # never a raw sqlite3 error, never a wrong value
                if isinstance(value, np.ndarray):
                    np.testing.assert_array_equal(value, np.arange(10_000, dtype=np.float64))
                else:
                    assert value in (None, b"b" * 100_000, b"s" * 100, b"f" * 500)
            cache.set("after", b"ok")
            assert cache.get("after") == b"ok"
            assert cache.get("big") == b"b" * 100_000  # rebuilt from its value file
    assert "reopening it with a check" in caplog.text and "rebuilt" in caplog.text


# ---------------------------------------------------------------------------------- full / read-only


def test_disk_full_on_value_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with DiskCache(tmp_path / "c", size=4) as cache:
        cache.set("big", b"old" * 50_000)
        real_writev = os.writev
        calls = []

        def full(fd: int, buffers: Any) -> int:
            calls.append(fd)
            if len(calls) == 1:
                return real_writev(fd, [memoryview(buffers[0])[:10]])  # a short write first, then ENOSPC
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(disk_files.os, "writev", full)
        with pytest.raises(DiskFullError, match="full"):
            cache.set("big", b"new" * 50_000)
        with pytest.raises(DiskFullError):
            cache.set_many({"x": b"x" * 50_000, "y": b"y"})
        monkeypatch.undo()
        assert cache.get("big") == b"old" * 50_000  # unchanged
        assert "x" not in cache and "y" not in cache  # all or nothing
        assert list((tmp_path / "c" / "tmp").iterdir()) == []  # no partial files left
        assert cache.stats.errors == 2
        assert cache.cleanup().removed == 0
        cache.set("big", b"new" * 50_000)  # and the cache works once space is back
        assert cache.get("big") == b"new" * 50_000


def test_disk_full_in_the_index(tmp_path: Path) -> None:
    with DiskCache(tmp_path / "c", size=16) as cache:
        cache.set("keep", b"k")
        pages = cache._index.conn().execute("PRAGMA page_count").fetchone()[0]
        cache._index.conn().execute(f"PRAGMA max_page_count = {pages}")  # SQLite now reports SQLITE_FULL on growth
        with pytest.raises(DiskFullError):
            for i in range(200):
                cache.set(f"k{i}", os.urandom(20_000))
        with pytest.raises(DiskFullError):
            # The file is written, but its row (with a long key) cannot be: the file is removed again.
            cache.set("big" * 10_000, os.urandom(100_000))
        assert cache.get("keep") == b"k"
        assert not any(p.is_file() for p in (tmp_path / "c" / "data").rglob("*"))
        report = cache.cleanup()
        assert "reconciled" not in report.details


def test_read_only_directory_simulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with DiskCache(tmp_path / "c", size=4) as cache:
        cache.set("small", b"s")
        cache.set("big", b"b" * 100_000)
        real_open = os.open

        def read_only(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(disk_files.os, "open", read_only)
        cache._index.conn().execute("PRAGMA query_only = ON")  # SQLite's view of a read-only database
        with pytest.raises(StorageError, match="not writable"):
            cache.set("big2", b"x" * 100_000)
        with pytest.raises(StorageError, match="not writable"):
            cache.set("small2", b"x")
        with pytest.raises(StorageError):
            cache.delete("small")
        assert cache.get("small") == b"s" and cache.get("big") == b"b" * 100_000  # reads keep working
        monkeypatch.undo()
        cache._index.conn().execute("PRAGMA query_only = OFF")
        cache.set("small2", b"x")
        assert cache.get("small2") == b"x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions; see the simulated test")
def test_read_only_directory_real(tmp_path: Path) -> None:
    root = tmp_path / "c"
    _fill(root)
    os.chmod(root, 0o500)
    try:
        with pytest.raises(StorageError):
            DiskCache(root / "sub", size=1)
    finally:
        os.chmod(root, 0o700)


def test_unusable_path_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"not a directory")
    with pytest.raises(StorageError, match="writable|could not"):
        DiskCache(tmp_path / "file" / "c", size=1)


def test_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "c", size=4)
    try:
        cache.set("parent", b"p")
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                cache.set("child", b"c" * 50_000)
                code = 0 if cache.get("parent") == b"p" else 2
                cache.close()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert cache.get("child") == b"c" * 50_000  # the parent's connection is unharmed
        cache.set("after", b"a")
        assert cache.get("after") == b"a"
    finally:
        cache.close()


SHARER = textwrap.dedent(
    """
    import os, sys, time
    from llamahome.cache.disk import DiskCache
    cache = DiskCache({path!r}, size=4, policy="lru")
    value = os.urandom(1024)
    deadline = time.monotonic() + {seconds}
    i = os.getpid()
    sets = 0
    while time.monotonic() < deadline:
        i += 7
        if i % 10 == 0:
            cache.set(f"k{{i % 2000}}", value + i.to_bytes(8, "little"))
            sets += 1
        else:
            got = cache.get(f"k{{i % 2000}}")
            assert got is None or len(got) == 1032
    assert cache.stats.errors == 0 and cache.stats.corrupt == 0
    print(sets, cache._index.wal_limit, flush=True)
    """
)


@pytest.mark.slow
def test_two_writing_processes_keep_the_wal_bounded(tmp_path: Path) -> None:
    """With SQLite's automatic checkpoint, two writers made the WAL stay over its threshold and every commit
    checkpoint (two fsyncs each); the cache's own checkpoints must still make the WAL start over."""
    root = tmp_path / "c"
    DiskCache(root, size=4).close()
    script = SHARER.format(path=str(root), seconds=2.0)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    wal = root / "index.sqlite3-wal"
    largest = 0
    while any(p.poll() is None for p in procs):
        with contextlib.suppress(FileNotFoundError):
            largest = max(largest, wal.stat().st_size)
        time.sleep(0.01)
    outs = [p.communicate(timeout=60) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err.decode()[-2000:]
    sets = sum(int(out.split()[0]) for out, _ in outs)
    limit = int(outs[0][0].split()[1])
    assert sets * 3 > 2 * limit  # enough writing to need several checkpoints
    # Each process checkpoints after about `limit` pages of its own, and a checkpoint can restart the WAL only
    # when the other process is not mid-transaction, so a few checkpoints in a row may miss. Without restarts
    # the WAL would hold every commit (2+ pages per set: tens of thousands of pages here); it must stay within
    # a small multiple of the limit (the limit is 1/8 of the bound for small caches, so the margin is wide).
    assert largest <= 16 * limit * (4096 + 24), (largest, sets, limit)
    assert largest < sets * 4096 / 4, (largest, sets, limit)  # far below "never restarted"
