"""The byte progress bar of long imports, decodes and loads (on a terminal only), and its summary line."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from ..units import MIB

__all__ = ["PROGRESS_MIN_BYTES", "Progress", "mib"]

#: Imports at least this large show a progress bar (when stderr is a terminal).
PROGRESS_MIN_BYTES = 256 * MIB


class Progress:
    """A tqdm bar over bytes, or a no-op; callable with a byte count. Thread-safe (decoders report from a pool).

    The bar itself vanishes when done (``leave=False``); ``summary`` leaves one line in its place.
    """

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self._bar: Any = None
        self._desc = desc
        self._start = time.perf_counter()
        self._lock = threading.Lock()
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False)

    def __call__(self, n: int) -> None:
        self.update(n)

    def update(self, n: int) -> None:
        if self._bar is not None:
            with self._lock:
                self._bar.update(n)

    def summary(self, raw_size: int, stored_size: int) -> None:
        """Print ``cached NAME: 87.3 MiB -> 71.6 MiB (0.82x) in 1.2 s`` where the bar was (if it was shown)."""
        if self._bar is None:
            return
        self._bar.close()
        elapsed = time.perf_counter() - self._start
        sys.stderr.write(
            f"{self._desc}: {mib(raw_size)} -> {mib(stored_size)} ({stored_size / max(raw_size, 1):.2f}x) in {elapsed:.1f} s\n"
        )
        sys.stderr.flush()
        self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


def mib(n: int) -> str:
    return f"{n / MIB:,.1f} MiB"
