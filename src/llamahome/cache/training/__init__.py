"""The training cache: collated batches stored once, served to later epochs with read-ahead.

    from llamahome.cache.training import TrainingCache

    cache = TrainingCache("/data/cache/training", size="4GB")
    for batch in cache.wrap(collated_batches, "wikitext-train", fingerprint={"tokenizer": "llama3"}):
        train_step(batch)

Inside, one job per module:

- ``_cache``: :class:`TrainingCache` (namespaces, manifests, the byte budget) and :class:`CachedBatches`,
  the iterable ``wrap`` returns.
- ``_pass``: what runs beside the training loop during a pass (the background writer, random access over a
  sequential source); it sees the storage only through its ``Shelf`` protocol.
- ``_prefetch``: read-ahead of any iterator in a background thread (:func:`read_ahead`), also usable alone.
"""

from ._cache import POLICIES, BatchTooLargeError, CachedBatches, TrainingCache, namespace_id, stable_fingerprint
from ._prefetch import THREAD_PREFIX, ReadAhead, Stopped, live_pipelines, read_ahead, stop_all

__all__ = [
    "POLICIES",
    "THREAD_PREFIX",
    "BatchTooLargeError",
    "CachedBatches",
    "ReadAhead",
    "Stopped",
    "TrainingCache",
    "live_pipelines",
    "namespace_id",
    "read_ahead",
    "stable_fingerprint",
    "stop_all",
]
