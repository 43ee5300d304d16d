"""Removal of what older versions of the typed caches wrote and the current ones no longer read.

Before the key-value side of ``SystemCache`` and ``TrainingCache`` became a disk-tier store, each kept its
values as ``<32 hex digits>.lhb`` files in a ``kv/`` directory of its own. Their ``cleanup()`` removes those
files (only names of that exact shape, never following a link) and the directory once it is empty.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

__all__ = ["remove_old_kv_files"]

_OLD_KV_RE = re.compile(r"^[0-9a-f]{32}\.lhb$")


def remove_old_kv_files(directory: Path) -> int:
    """Remove the old layout's value files in ``directory``, then the directory if empty; return files removed."""
    removed = 0
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        with os.scandir(directory) as entries:
            for entry in entries:
                if _OLD_KV_RE.match(entry.name) and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        removed += 1
        with contextlib.suppress(OSError):
            os.rmdir(directory)  # only if empty: anything else in it is not ours
    return removed
