"""A bounded ring of timestamped metric snapshots: recent history for a dashboard, in constant memory."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from llamahome.errors import ConfigError

__all__ = ["Snapshot", "SnapshotRing"]


@dataclass(frozen=True)
class Snapshot:
    """Metrics taken at ``time`` (seconds since the epoch, or the injected clock's reading)."""

    time: float
    data: dict[str, Any]


class SnapshotRing:
    """The last ``maxlen`` snapshots, oldest first; older ones fall off the front.

    Thread-safe: the scheduler appends from a worker thread while a dashboard reads from the loop.
    """

    def __init__(self, maxlen: int = 1440, *, clock: Callable[[], float] = time.time) -> None:
        if maxlen < 1:
            raise ConfigError(f"A snapshot ring needs room for at least one snapshot, not {maxlen}.")
        self._items: deque[Snapshot] = deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self._clock = clock

    @property
    def maxlen(self) -> int:
        return self._items.maxlen or 0

    def append(self, data: dict[str, Any], at: float | None = None) -> Snapshot:
        """Add a snapshot taken now (or ``at``) and return it."""
        snapshot = Snapshot(self._clock() if at is None else at, data)
        with self._lock:
            self._items.append(snapshot)
        return snapshot

    def latest(self) -> Snapshot | None:
        with self._lock:
            return self._items[-1] if self._items else None

    def since(self, t: float) -> list[Snapshot]:
        """Snapshots taken at or after ``t``, oldest first."""
        with self._lock:
            return [s for s in self._items if s.time >= t]

    def to_list(self) -> list[Snapshot]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Snapshot]:
        return iter(self.to_list())

    def __repr__(self) -> str:
        return f"<SnapshotRing {len(self)}/{self.maxlen}>"
