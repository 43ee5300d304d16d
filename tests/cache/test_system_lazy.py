"""SystemCache creates ``temp_dir`` on first use, so a CacheManager that never needs scratch space leaves no
``.cache/temp`` behind (issue 17: the quick start left one)."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from llamahome.cache import CacheConfig, CacheManager
from llamahome.cache.system import SystemCache
from llamahome.errors import StorageError

DAY = 86400


def test_nothing_is_created_until_the_first_scratch_item_or_value(tmp_path: Path) -> None:
    root = tmp_path / "a" / "temp"
    cache = SystemCache(root, size=1, max_age=DAY)
    try:
        assert cache.get("k") is None and "k" not in cache and not cache.delete("k")
        assert cache.items() == []
        assert cache.cleanup().bytes_freed == 0
        cache.clear()
        assert (cache.stats.entries, cache.stats.bytes) == (0, 0)
        assert not (tmp_path / "a").exists()
        cache.set("k", b"v")
        assert cache.get("k") == b"v" and stat.S_IMODE(os.stat(root).st_mode) == 0o700
        with cache.temp_file(".bin") as path:
            assert path.parent == root and path.exists()
    finally:
        cache.close()


def test_items_another_process_made_after_construction_are_seen_and_aged_out(tmp_path: Path, clock: Any) -> None:
    root = tmp_path / "temp"
    late = SystemCache(root, size=1, max_age=DAY, clock=clock)  # constructed before the directory exists
    first = SystemCache(root, size=1, max_age=DAY, clock=clock)
    path = first.new_temp_file(".part")
    first.set("v", b"value")
    assert [item["name"] for item in late.items()] == [path.name]
    clock.advance(2 * DAY)
    report = late.cleanup()
    assert report.expired == 2 and not path.exists()
    late.close()
    first.close()


def test_a_temp_dir_that_can_never_be_created_fails_at_construction(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="pick a writable temp_dir"):
        SystemCache(blocker / "temp")


def test_a_manager_that_uses_no_scratch_space_leaves_only_its_disk_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    async def main() -> None:
        async with CacheManager(CacheConfig(memory_size=1, disk_size=4, disk_path="./cache")) as cache:
            await cache.set("prompt:42", {"text": "Hello"})
            assert await cache.get("prompt:42") == {"text": "Hello"}
            await cache.cleanup()

    asyncio.run(main())
    assert os.listdir(tmp_path) == ["cache"]
