"""cache.files: the one atomic write, temp-name scheme, sweep and value-file header every cache uses."""

from __future__ import annotations

import math
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import xxhash

from llamahome.cache import files
from llamahome.cache._procs import pid_alive
from llamahome.cache.base import key_to_bytes
from llamahome.cache.codecs import decode, encode_parts
from llamahome.errors import StorageError

SRC = str(Path(files.__file__).resolve().parents[2])


def _write(path: Path, key: str, value: object) -> int:
    return files.write_value(path, key_to_bytes(key), encode_parts(value).parts, created=1.0, seq=7)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)  # reaped: its pid is free again
    return child.pid


# ------------------------------------------------------------------------------------------ value files


def test_a_value_file_round_trips_under_its_key(tmp_path: Path) -> None:
    path = tmp_path / "v.lhv"
    size = _write(path, "k", {"a": [1, 2], "x": np.arange(4, dtype=np.int32)})
    assert size == path.stat().st_size
    assert path.stat().st_mode & 0o777 == 0o600
    got = files.read_value_file(path, key_to_bytes("k"))
    assert got is not None
    assert got.header.seq == 7 and got.header.created == 1.0 and got.header.expires is None
    value = decode(got.frame)
    assert value["a"] == [1, 2] and value["x"].tolist() == [0, 1, 2, 3]
    assert files.read_header(path) == got.header
    assert got.header.data_offset % 64 == 0  # frames stay 64-byte aligned for mmap


def test_other_keys_damage_truncation_and_missing_files_read_as_missing(tmp_path: Path) -> None:
    path = tmp_path / "v.lhv"
    size = _write(path, "k", "hello")
    assert files.read_value_file(path, key_to_bytes("other")) is None
    assert files.read_value_file(path, b"b" + b"k") is None  # bytes key b"k" is not str key "k"
    assert files.read_value_file(tmp_path / "missing.lhv", key_to_bytes("k")) is None
    good = path.read_bytes()
    data = bytearray(good)
    data[size - 1] ^= 0xFF  # a flipped bit in the frame fails the checksum
    path.write_bytes(bytes(data))
    assert files.read_value_file(path, key_to_bytes("k")) is None
    path.write_bytes(good[: files.HEADER_SIZE])  # truncated
    assert files.read_value_file(path, key_to_bytes("k")) is None
    assert files.read_header(path) is None


@pytest.mark.parametrize("offset", [8, 16, 24, 40, 48, 56, files.HEADER_SIZE])  # key_len, expires, created,
def test_header_damage_is_detected(tmp_path: Path, offset: int) -> None:  # frame_len, seq, check, key
    path = tmp_path / "v.lhv"
    _write(path, "k", b"x" * 100)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    assert files.read_header(path) is None
    assert files.read_value_file(path, None) is None
    assert not files.names_key(bytes(data[:128]), key_to_bytes("k"))


def test_a_swapped_key_with_a_recomputed_frame_checksum_still_fails_the_header_check(tmp_path: Path) -> None:
    # Two keys of the same length: the key bytes are bound by the header check, not only by the reader's compare.
    path = tmp_path / "v.lhv"
    _write(path, "a", b"x")
    data = bytearray(path.read_bytes())
    at = files.HEADER_SIZE + len(key_to_bytes("a")) - 1
    data[at] = ord("b")
    path.write_bytes(bytes(data))
    assert files.read_value_file(path, key_to_bytes("b")) is None
    assert files.read_value_file(path, None) is None


def test_a_frame_that_does_not_decode_is_the_codec_s_business(tmp_path: Path) -> None:
    path = tmp_path / "v.lhv"
    files.write_value(path, b"k", [b"not a codec frame" * 8], created=1.0)  # the file itself is fine
    got = files.read_value_file(path, b"k")
    assert got is not None
    with pytest.raises(Exception, match="(?i)corrupt|frame|not"):
        decode(got.frame)


def test_files_of_the_replaced_formats_still_read(tmp_path: Path) -> None:
    frame = b"".join(bytes(p) for p in encode_parts(b"old value").parts)
    key = b"bk"
    pad = b"\0" * (-(64 + len(key)) % 64)
    # The blob files of the training and KV caches (LHB1): checksum over key + frame, expires 0.0 = never.
    blob_head = struct.pack("<4sBBHQQdQId", b"LHB1", 1, 0, 0, xxhash.xxh3_64_intdigest(key + frame), len(frame),
                            5.0, 3, len(key), 0.0)
    blob = tmp_path / "old.lhb"
    blob.write_bytes(blob_head + b"\0" * (64 - len(blob_head)) + key + pad + frame)
    got = files.read_value_file(blob, key)
    assert got is not None and decode(got.frame) == b"old value" and got.header.seq == 3
    assert got.header.expires is None and files.is_value_file_head(blob.read_bytes()[:5])
    # The disk tier's value files (LHDV v1): checksum over the frame, expires NaN = never.
    disk_head = struct.pack("<4sB3xI4xddQQ", b"LHDV", 1, len(key), math.nan, 6.0, xxhash.xxh3_64_intdigest(frame),
                            len(frame))
    old = tmp_path / "old.lhdv"
    old.write_bytes(disk_head + b"\0" * (64 - len(disk_head)) + key + pad + frame)
    got = files.read_value_file(old, key)
    assert got is not None and decode(got.frame) == b"old value" and got.header.created == 6.0
    assert files.names_key(old.read_bytes()[:128], key) and not files.names_key(old.read_bytes()[:128], b"xx")


# ------------------------------------------------------------------------------------------ atomic writes


def test_atomic_write_is_private_and_never_writes_through_a_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"theirs")
    cache = tmp_path / "cache"
    files.ensure_private_dir(cache)
    assert cache.stat().st_mode & 0o777 == 0o700
    link = cache / "v"
    link.symlink_to(outside)
    files.write_atomic(link, [b"ours"])  # the link itself is replaced; its target is untouched
    assert outside.read_bytes() == b"theirs"
    assert not link.is_symlink() and link.read_bytes() == b"ours" and link.stat().st_mode & 0o777 == 0o600
    linked_dir = tmp_path / "linked"
    linked_dir.symlink_to(outside.parent)
    with pytest.raises(StorageError, match="symbolic link"):
        files.ensure_private_dir(linked_dir)


def test_a_failed_write_leaves_no_temp_file_and_raises_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        files.write_atomic(tmp_path / "missing-dir" / "v", [b"x"])
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "v").mkdir()  # rename onto a directory fails after the temp file was written
    with pytest.raises(StorageError):
        files.write_atomic(tmp_path / "d" / "v", [b"x"])
    assert os.listdir(tmp_path / "d") == ["v"]


_WRITER = textwrap.dedent("""
    import os, sys
    from llamahome.cache import files
    path, ready = sys.argv[1], sys.argv[2]
    n = 0
    while True:
        files.write_value(path, b"key", [bytes([n % 251]) * (8 << 20)], created=float(n))
        n += 1
        if n == 2:
            open(ready, "w").close()
""")


def test_kill_9_during_writes_leaves_a_whole_file_and_a_sweepable_temp(tmp_path: Path) -> None:
    path, ready = tmp_path / "v.lhv", tmp_path / "ready"
    env = dict(os.environ, PYTHONPATH=SRC)
    for delay in (0.0, 0.01, 0.03):
        ready.unlink(missing_ok=True)
        child = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(ready)], env=env)
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(delay)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        got = files.read_value_file(path, b"key")  # the last complete write, never part of one
        assert got is not None and len(got.frame) == 8 << 20
        assert set(bytes(got.frame)) == {int(got.header.created) % 251}
        leftovers = [n for n in os.listdir(tmp_path) if n not in ("v.lhv", "ready")]
        assert all(files.temp_owner(n) == child.pid for n in leftovers), leftovers
        files.sweep(tmp_path)
        assert sorted(os.listdir(tmp_path)) == ["ready", "v.lhv"]


# ------------------------------------------------------------------------------------------ temp names, sweep


def test_temp_names_carry_the_writer_s_pid() -> None:
    name = files.temp_name("v.lhv")
    assert name.startswith(".v.lhv.") and name.endswith(".tmp")
    assert files.temp_owner(name) == os.getpid()
    assert files.temp_name("v") != files.temp_name("v")
    assert files.temp_owner(".b000000001.lhb.123.456.tmp") == 123  # blob files' names before this module
    assert files.temp_owner(f"77-{'a' * 32}.tmp") == 77  # the disk tier's before this module
    assert files.temp_owner(f"78-{'a' * 32}") == 78  # the model cache's writer directories before it
    for foreign in ("v.lhv", ".v.tmp", "notes.tmp", f".x.12-{'g' * 32}.tmp", "12-abc.tmp", ".x.12.tmp"):
        assert files.temp_owner(foreign) is None, foreign
    with pytest.raises(ValueError):
        files.temp_name("a/b")


def test_sweep_removes_dead_writers_temp_files_only(tmp_path: Path) -> None:
    dead = _dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        outside = tmp_path / "outside"
        outside.write_bytes(b"keep")
        d = tmp_path / "d"
        d.mkdir()
        hexid = "c" * 32
        gone = [f".v.{dead}-{hexid}.tmp", f".v.{dead}.1.tmp", f"{dead}-{hexid}.tmp"]
        kept = [f".v.{os.getpid()}-{hexid}.tmp", f".v.{live.pid}-{hexid}.tmp", "user.tmp", f"v.{dead}", "data"]
        for name in gone + kept:
            (d / name).write_bytes(b"x")
        (d / f".l.{dead}-{hexid}.tmp").symlink_to(outside)  # a link with our name: never followed or removed
        (d / f".dir.{dead}-{hexid}.tmp").mkdir()  # not a file: left alone
        assert files.sweep(d) == (3, 3)
        assert sorted(os.listdir(d)) == sorted([*kept, f".l.{dead}-{hexid}.tmp", f".dir.{dead}-{hexid}.tmp"])
        assert outside.read_bytes() == b"keep"
        # With a grace period, a live-looking writer's file older than it goes too (pids are reused).
        old = time.time() - 7200
        os.utime(d / f".v.{live.pid}-{hexid}.tmp", (old, old))
        assert files.sweep(d, max_age=3600) == (1, 1)
        assert (d / f".v.{os.getpid()}-{hexid}.tmp").exists()
        # A directory that is a link is not entered.
        (tmp_path / "link").symlink_to(d)
        (d / f".w.{dead}-{hexid}.tmp").write_bytes(b"x")
        assert files.sweep(tmp_path / "link") == (0, 0)
        assert files.sweep(d, is_ours=lambda p: False) == (0, 0)
    finally:
        live.kill()
        live.wait(timeout=30)


def test_pid_alive_tells_running_from_exited_processes() -> None:
    assert pid_alive(os.getpid()) is True
    assert pid_alive(_dead_pid()) is False


def test_the_model_cache_names_and_sweeps_its_writers_by_the_shared_scheme(tmp_path: Path) -> None:
    from llamahome.cache.model import ModelCache

    cache = ModelCache(tmp_path, size=4)
    live = cache._new_tmp()
    assert files.temp_owner(live.name) == os.getpid()
    dead = tmp_path / ".tmp" / f".model.{_dead_pid()}-{'e' * 32}.tmp"
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"x" * 100)
    foreign = tmp_path / ".tmp" / "not-ours"
    foreign.mkdir()
    cache.put("ok", {"w": np.arange(1024, dtype=np.uint8)})
    before = sorted(os.listdir(tmp_path / "ok"))
    pid = _dead_pid()
    decode_left = tmp_path / "ok" / f".decoding.{pid}-{'f' * 32}.tmp"  # a get_path() killed mid-decode
    decode_left.write_bytes(b"z" * 10)
    stamp_left = tmp_path / "ok" / f"..verified.{pid}-{'f' * 32}.tmp"  # a stamp file being written
    stamp_left.write_bytes(b"{}")
    assert cache.cleanup().orphans == 3
    assert sorted(os.listdir(tmp_path / ".tmp")) == sorted([live.name, "not-ours"])
    assert sorted(os.listdir(tmp_path / "ok")) == before and cache.list() == ["ok"]
    # Another process's marker being written is not "someone else's file": the directory is still a cache.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / files.temp_name(".llamahome-cache.json")).write_bytes(b"{}")
    ModelCache(fresh, size=4)
