"""SystemCache: scratch files and directories that clean themselves up.

    python examples/system_cache.py

Scratch space for converted checkpoints, downloads in progress and the like: items are private (0600/0700),
removed after max_age or beyond size, never while in use, and the cache only ever removes what it created.
A fake clock ages items here instead of waiting a day.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from llamahome.cache import SystemCache


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def main(directory: Path) -> None:
    clock = Clock()
    scratch = SystemCache(directory / "temp", size=1, max_age="1d", clock=clock)

    # A temporary file removed at the end of the block (keep=True would keep it until it ages out).
    with scratch.temp_file(suffix=".safetensors") as path:
        path.write_bytes(b"converted checkpoint")
    print("temp_file removed after its block:", not path.exists())

    # A plain scratch directory lives until cleanup() finds it older than max_age ...
    download = scratch.temp_dir(prefix="download-")
    (download / "part-0").write_bytes(b"x" * 1000)
    # ... unless it is in use: then no cleanup, in any process, removes it.
    clock.now += 2 * 86400
    with scratch.in_use(download):
        print("while in use, cleanup expired:", scratch.cleanup().expired)
    print("after the block, cleanup expired:", scratch.cleanup().expired, "- gone:", not download.exists())

    # Files the cache did not create are never touched, whatever their age.
    mine = directory / "temp" / "my-notes.txt"
    mine.write_text("not the cache's")
    clock.now += 10 * 86400
    scratch.cleanup()
    print("a user's own file survives:", mine.exists())

    # Small keyed values, aged like the files.
    scratch.set("download:etag", "W/123")
    print("keyed value:", scratch.get("download:etag"))
    scratch.close()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(tmp))
