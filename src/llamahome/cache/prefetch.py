"""Read-ahead of any iterator in a background thread: ``from llamahome.cache.prefetch import read_ahead``.

Kept as an import path; the code lives with the training cache that uses it (:mod:`llamahome.cache.training`).
"""

from .training import THREAD_PREFIX, ReadAhead, Stopped, live_pipelines, read_ahead, stop_all

__all__ = ["ReadAhead", "read_ahead", "Stopped", "THREAD_PREFIX", "live_pipelines", "stop_all"]
