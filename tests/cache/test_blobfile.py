"""blobfile.read_value (the shared read path of the training and system caches) and _procs.pid_alive."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from llamahome.cache._procs import pid_alive
from llamahome.cache.base import key_to_bytes
from llamahome.cache.blobfile import HEADER_SIZE, read_value, write_blob
from llamahome.cache.codecs import encode_parts


def _write(path: Path, key: str, value: object) -> int:
    return write_blob(path, encode_parts(value).parts, created=1.0, seq=1, key=key_to_bytes(key))


def test_read_value_round_trips_under_the_right_key(tmp_path: Path) -> None:
    path = tmp_path / "v.lhb"
    _write(path, "k", {"a": [1, 2], "x": np.arange(4, dtype=np.int32)})
    ok, value = read_value(path, key_to_bytes("k"))
    assert ok is True
    assert value["a"] == [1, 2]
    assert value["x"].tolist() == [0, 1, 2, 3]


def test_read_value_refuses_other_keys_damage_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "v.lhb"
    size = _write(path, "k", "hello")
    assert read_value(path, key_to_bytes("other")) == (False, None)
    assert read_value(path, b"b" + b"k") == (False, None)  # bytes key b"k" is not str key "k"
    assert read_value(tmp_path / "missing.lhb", key_to_bytes("k")) == (False, None)
    data = bytearray(path.read_bytes())
    data[size - 1] ^= 0xFF  # a flipped bit in the frame fails the checksum
    path.write_bytes(bytes(data))
    assert read_value(path, key_to_bytes("k")) == (False, None)
    path.write_bytes(bytes(data[:HEADER_SIZE]))  # truncated
    assert read_value(path, key_to_bytes("k")) == (False, None)


def test_read_value_refuses_a_frame_that_does_not_decode(tmp_path: Path) -> None:
    path = tmp_path / "v.lhb"
    write_blob(path, [b"not a codec frame" * 8], created=1.0, seq=1, key=key_to_bytes("k"))  # checksum is fine
    assert read_value(path, key_to_bytes("k")) == (False, None)


def test_pid_alive_tells_running_from_exited_processes() -> None:
    assert pid_alive(os.getpid()) is True
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)  # reaped: its pid is free again
    assert pid_alive(child.pid) is False
