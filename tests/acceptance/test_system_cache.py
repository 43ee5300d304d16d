"""Acceptance: ``SystemCache`` hands out scratch files and directories that vanish after ``max_age``.

``temp_file``/``temp_dir`` (as paths or ``with`` blocks), ``put``/``get``, ``in_use`` and ``cleanup``: what
ages out is removed, what is in use is not, and nothing the cache did not create, nor anything behind a
symlink, is ever touched (README "System cache"; issue 5).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llamahome.cache import SystemCache


def test_system_cache_issue_api(tmp_path: Path, clock: Any) -> None:
    temp = tmp_path / "scratch"
    cache = SystemCache(temp, size=16, max_age=100, cleanup_policy="time", clock=clock)
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    try:
        with cache.temp_file(suffix=".bin") as f:
            path = Path(f)
            assert path.suffix == ".bin" and temp in path.parents
            path.write_bytes(b"data")
        assert not path.exists()  # a with block removes its file at the end
        plain = Path(cache.temp_file(suffix=".txt"))
        plain.write_text("kept until max_age")
        with cache.temp_dir() as d:
            assert Path(d).is_dir() and temp in Path(d).parents
        assert not Path(d).exists()
        cache.put("k", b"bytes")
        assert cache.get("k") == b"bytes"
        # Things the cache did not create, and a symlink pointing outside temp_dir.
        foreign = temp / "foreign.txt"
        foreign.write_text("not yours")
        link = temp / "link-out"
        link.symlink_to(outside)

        clock.advance(50)
        cache.cleanup()
        assert plain.exists() and cache.get("k") == b"bytes"
        clock.advance(60)
        cache.cleanup()
        assert not plain.exists()
        assert cache.get("k") is None
        assert foreign.exists() and outside.read_text() == "keep me"
    finally:
        cache.close()


def test_system_cache_never_removes_a_file_in_use(tmp_path: Path, clock: Any) -> None:
    cache = SystemCache(tmp_path / "scratch", size=16, max_age=100, clock=clock)
    try:
        path = Path(cache.temp_file(suffix=".part"))
        path.write_bytes(b"download in progress")
        with cache.in_use(path):
            clock.advance(1000)
            cache.cleanup()
            assert path.exists()
        clock.advance(1000)
        cache.cleanup()
        assert not path.exists()
    finally:
        cache.close()


def test_system_cache_never_follows_a_symlink_out_of_a_scratch_dir(tmp_path: Path, clock: Any) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data.bin").write_bytes(b"precious")
    cache = SystemCache(tmp_path / "scratch", size=16, max_age=10, clock=clock)
    try:
        scratch = Path(cache.temp_dir())
        (scratch / "out").symlink_to(outside, target_is_directory=True)
        (scratch / "file.txt").write_text("mine")
        clock.advance(100)
        cache.cleanup()
        assert not scratch.exists()
        assert (outside / "data.bin").read_bytes() == b"precious"
    finally:
        cache.close()
