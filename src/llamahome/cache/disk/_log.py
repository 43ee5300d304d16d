"""The disk tier's logger, ``llamahome.cache.disk``, imported on first use.

``logging`` (with traceback, linecache, tokenize) is about a sixth of the time ``from llamahome.cache import
DiskCache`` takes, and the disk tier logs only when something is wrong: repairs, a full disk.
"""

from __future__ import annotations

from typing import Any

__all__ = ["log"]


class _Log:
    def __getattr__(self, name: str) -> Any:
        import logging

        return getattr(logging.getLogger("llamahome.cache.disk"), name)


log: Any = _Log()
